"""atheris fuzz harness for funloader's native JPEG coefficient reader.

Every input is decoded through ``read_dct``, ``read_fun`` and ``read_batch`` (strict or lenient,
int16 or dequantized float32, cropped or padded batch grids, 1 or 2 native threads; the choice is a
function of the input's CRC so a crasher replays exactly). The only acceptable failures are
``funloader.JPEGDecodeError`` and its subclass ``UnsupportedJPEGError``: any other exception, a
crash, a sanitizer report, a hang (``-timeout``) or an RSS blow-up (``-rss_limit_mb``) is a finding.

Besides "does not crash" it checks that the three entry points agree with each other (the same
image decoded three ways gives the same coefficients, and read_batch marks the same items failed),
so silently wrong tensors are findings too.  It is also a differential harness for funloader's own
baseline entropy decoder (funloader/csrc/huffman.c): every input is decoded with ``decoder="auto"``
and ``decoder="libjpeg"``, and the outcomes must be equal (the same coefficients, or the same error
and warnings: the own decoder either decodes exactly as libjpeg or hands the file over).

The machine's compiler is gcc, which cannot emit libFuzzer's edge counters, so coverage feedback
from inside C is not available; to compensate the harness has a JPEG-structure-aware custom
mutator (drop / duplicate / swap marker segments, cut a segment short, patch SOF dimensions,
sampling factors and component counts, patch quantization and Huffman bytes, truncate, splice
entropy data between corpus files) mixed with libFuzzer's byte-level mutations, and it turns what
the decoder reports (status, libjpeg's message, coding, sampling) into Python branches that
atheris does see as coverage.

Usage (see tests/fuzz/README.md):
    python tests/fuzz/fuzz_decode.py CORPUS_DIR [SEED_DIR ...] -max_total_time=600 -max_len=131072
    python tests/fuzz/fuzz_decode.py crash-<sha1>          # replay one input
    python tests/fuzz/fuzz_decode.py --loop 600 1 ARTIFACT_DIR CORPUS_DIR...   # no libFuzzer (ASan builds)
"""
from __future__ import annotations

import os
import random
import struct
import sys
import warnings
import zlib

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))  # tests/
from reference import centre_fit, decode_recording, fun_from_dct, segments  # noqa: E402  (the numpy reference the tests use too)

with atheris.instrument_imports(include=["funloader"]):
    import numpy as np

    import funloader
    from funloader import codec
    from funloader.errors import JPEGDecodeError, JPEGWarning

#: Bomb guard used while fuzzing. A mutated 200-byte file can declare any size up to the limit and
#: lenient mode decodes it (missing data reads as zeros), so the limit sets the cost of one input:
#: at 16 Mpx the numpy cross-checks alone took seconds (a libFuzzer "timeout" that was the harness,
#: not the decoder). 2 Mpx keeps ~50-100 executions/s and still exercises the guard itself.
FUZZ_MAX_PIXELS = 2_000_000
#: Limit on the FUN grid the harness allocates for read_fun (blocks), to keep RSS bounded.
FUZZ_MAX_GRID_BLOCKS = 40_000

warnings.simplefilter("ignore", JPEGWarning)


# ----------------------------------------------------------------------------- decoding checks




def _note(outcome: str, message: str, image) -> None:
    """Branch on what the decoder reported so atheris sees new native behaviour as new coverage."""
    if outcome == "ok":
        if image.progressive:
            if image.arithmetic:
                pass
            elif len(image.coefficients) == 1:
                pass
        elif image.arithmetic:
            pass
        for h, v in image.sampling:
            if h == 1 and v == 1:
                pass
            elif h == 2 and v == 2:
                pass
            elif h == 2 and v == 1:
                pass
            elif h == 1 and v == 2:
                pass
            elif h >= 3 or v >= 3:
                pass
        if image.warnings:
            if len(image.warnings) > 2:
                pass
        if image.width < 8 or image.height < 8:
            pass
        return
    words = message.split()
    for word in words[:6]:  # the first words of libjpeg's message identify its error code
        if word.startswith("Bogus"):
            pass
        elif word.startswith("Corrupt"):
            pass
        elif word.startswith("Huffman"):
            pass
        elif word.startswith("Premature"):
            pass
        elif word.startswith("Unsupported"):
            pass
        elif word.startswith("Invalid"):
            pass
        elif word.startswith("Quantization"):
            pass
        elif word.startswith("Sampling"):
            pass
        elif word.startswith("component"):
            pass
        elif word.startswith("scan"):
            pass
        elif word.startswith("marker"):
            pass
        elif word.startswith("progression"):
            pass
        elif word.startswith("max_pixels"):
            pass
        elif word.startswith("arithmetic"):
            pass
        elif word.startswith("restart"):
            pass


def _options(data: bytes):
    crc = zlib.crc32(data)
    strict = bool(crc & 1)
    dequantize = bool(crc & 2)
    threads = 1 + ((crc >> 2) & 1)
    grid = (1 + (crc >> 3) % 48, 1 + (crc >> 9) % 48)
    return strict, dequantize, threads, grid


#: Differential statistics of this process: inputs checked, and how many the own decoder decoded.
STATS = {"inputs": 0, "own_decoder": 0}


def check_differential(data: bytes, strict: bool, dequantize: bool, grid) -> None:
    """The own decoder against libjpeg: equal outcomes through read_dct, read_fun and read_batch."""
    ours, our_warnings = decode_recording(codec.read_dct, data, strict=strict, max_pixels=FUZZ_MAX_PIXELS, decoder="auto")
    theirs, their_warnings = decode_recording(codec.read_dct, data, strict=strict, max_pixels=FUZZ_MAX_PIXELS,
                                      decoder="libjpeg")
    STATS["inputs"] += 1
    assert our_warnings == their_warnings, f"divergence: warnings {our_warnings} vs libjpeg {their_warnings}"
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs) and str(ours) == str(theirs), f"divergence: {ours!r} vs libjpeg {theirs!r}"
        return
    assert not isinstance(ours, Exception), f"divergence: {ours!r}, libjpeg decoded"
    STATS["own_decoder"] += ours.decoder == "funloader"
    assert (ours.width, ours.height, ours.sampling, ours.colorspace) == \
        (theirs.width, theirs.height, theirs.sampling, theirs.colorspace), "divergence: header"
    assert all(np.array_equal(a, b) for a, b in zip(ours.qtables, theirs.qtables)), "divergence: qtables"
    assert len(ours.coefficients) == len(theirs.coefficients)
    for a, b in zip(ours.coefficients, theirs.coefficients):
        assert a.shape == b.shape and np.array_equal(a, b), "divergence: coefficients"
    if ours.grid[0] * ours.grid[1] <= FUZZ_MAX_GRID_BLOCKS:
        fun = [codec.read_fun(data, strict=strict, dequantize=dequantize, max_pixels=FUZZ_MAX_PIXELS, decoder=name)
               for name in ("auto", "libjpeg")]
        assert np.array_equal(fun[0], fun[1]), "divergence: read_fun"
    batches = []
    for name in ("auto", "libjpeg"):
        out = np.full((1, 192, *grid), 5, dtype=np.float32 if dequantize else np.int16)
        errors = codec.read_batch([data], out, threads=1, dequantize=dequantize, strict=strict,
                                  max_pixels=FUZZ_MAX_PIXELS, warn=False, decoder=name)
        batches.append((repr(errors), out))
    assert batches[0][0] == batches[1][0] and np.array_equal(batches[0][1], batches[1][1]), "divergence: read_batch"


def check_one(data: bytes) -> None:
    """Decode ``data`` every way; raise AssertionError/any non-JPEGDecodeError on a finding."""
    strict, dequantize, threads, grid = _options(data)
    check_differential(data, strict, dequantize, grid)
    try:
        image = codec.read_dct(data, strict=strict, max_pixels=FUZZ_MAX_PIXELS)
    except JPEGDecodeError as error:
        _note("error", error.reason, None)
        image = None
    else:
        _note("ok", "", image)
        for plane, (h, v), table in zip(image.coefficients, image.sampling, image.qtables):
            assert plane.dtype == np.int16 and plane.ndim == 3 and plane.shape[2] == 64
            assert h in (1, 2, 3, 4) and v in (1, 2, 3, 4), image.sampling
            assert table.shape == (64,)

    fun = None
    if image is None or image.grid[0] * image.grid[1] <= FUZZ_MAX_GRID_BLOCKS:
        try:
            fun = codec.read_fun(data, strict=strict, dequantize=dequantize, max_pixels=FUZZ_MAX_PIXELS)
        except JPEGDecodeError as error:
            # read_dct and read_fun run the same decoder with the same options: they must agree.
            assert image is None, f"read_dct decoded but read_fun raised {error!r}"
        else:
            assert image is not None, "read_fun decoded but read_dct raised"
            assert fun.shape == (192, *image.grid)
            reference = fun_from_dct(image)
            if dequantize:
                scale = np.zeros(192, dtype=np.float32)
                for component, table in enumerate(image.qtables[:3]):
                    scale[64 * component:64 * component + 64] = table
                reference = reference.astype(np.float32) * scale[:, None, None]
            assert np.array_equal(fun, reference), "read_fun disagrees with read_dct"

    out = np.full((2, 192, *grid), 7, dtype=np.float32 if dequantize else np.int16)
    errors = codec.read_batch([data, bytearray(data)], out, threads=threads, dequantize=dequantize,
                              strict=strict, max_pixels=FUZZ_MAX_PIXELS, warn=False)
    assert len(errors) == 2
    for error in errors:
        assert error is None or isinstance(error, JPEGDecodeError), repr(error)
    assert (errors[0] is None) == (errors[1] is None), errors
    assert (errors[0] is None) == (image is not None), f"read_batch: {errors[0]!r}, read_dct ok: {image is not None}"
    assert np.array_equal(out[0], out[1]), "read_batch gave different results for the same bytes"
    if errors[0] is not None:
        assert not out.any(), "a failed batch slot was not zero-filled"
    elif fun is not None:
        _check_crop(fun, out[0], grid)


def _check_crop(fun: np.ndarray, slot: np.ndarray, grid) -> None:
    """read_batch's slot must be read_fun's array centre-cropped/padded by whole blocks."""
    assert np.array_equal(slot, centre_fit(fun, grid)), "read_batch crop/pad disagrees with read_fun"


def TestOneInput(data: bytes) -> None:
    check_one(data)


# ----------------------------------------------------------------------------- JPEG-aware mutator

_INTERESTING_DIMS = (0, 1, 2, 7, 8, 9, 15, 16, 17, 255, 256, 4096, 32767, 32768, 64250, 65535)


def _mutate_structure(data: bytes, rng: random.Random) -> bytes:
    parts = segments(data)
    if len(parts) < 2:
        return data[:rng.randrange(len(data) + 1)] if data else data
    choice = rng.randrange(11)
    marker, start, end = parts[rng.randrange(len(parts))]
    if choice == 0:  # drop a segment
        return data[:start] + data[end:]
    if choice == 1:  # duplicate a segment
        return data[:end] + data[start:end] + data[end:]
    if choice == 2:  # swap two segments
        other = parts[rng.randrange(len(parts))]
        a, b = sorted([(start, end), (other[1], other[2])])
        if a[1] > b[0]:
            return data
        return data[:a[0]] + data[b[0]:b[1]] + data[a[1]:b[0]] + data[a[0]:a[1]] + data[b[1]:]
    if choice == 3:  # cut a segment's payload short (e.g. a Huffman table) and fix up its length
        if end - start > 6:
            keep = rng.randrange(4, min(end - start, 65537))  # a scan's span includes its entropy data
            body = bytearray(data[start:start + keep])
            body[2:4] = struct.pack(">H", keep - 2)
            return data[:start] + bytes(body) + data[end:]
        return data
    if choice == 4:  # lie about a segment's length
        if end - start >= 4:
            buffer = bytearray(data)
            buffer[start + 2:start + 4] = struct.pack(">H", rng.choice((0, 1, 2, 3, 0xFFFF, rng.randrange(65536))))
            return bytes(buffer)
        return data
    sofs = [p for p in parts if p[0] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB, 0xC5)]
    if choice in (5, 6, 7) and sofs:
        buffer = bytearray(data)
        _, sof_start, sof_end = sofs[rng.randrange(len(sofs))]
        if sof_end - sof_start < 10:
            return data
        if choice == 5:  # dimensions
            offset = sof_start + rng.choice((5, 7))
            buffer[offset:offset + 2] = struct.pack(">H", rng.choice(_INTERESTING_DIMS))
        elif choice == 6:  # sampling factors / quant table of one component
            count = buffer[sof_start + 9]
            if count and sof_start + 10 + 3 * count <= sof_end:
                comp = sof_start + 10 + 3 * rng.randrange(count)
                if rng.random() < 0.7:
                    buffer[comp + 1] = rng.choice((0x11, 0x12, 0x21, 0x22, 0x41, 0x14, 0x44, 0x31, 0x13,
                                                   0x33, 0x00, 0x10, 0x01, 0x55, 0xFF, rng.randrange(256)))
                else:
                    buffer[comp + 2] = rng.randrange(6)
        else:  # precision / component count / marker type
            which = rng.randrange(3)
            if which == 0:
                buffer[sof_start + 4] = rng.choice((8, 12, 16, 0, 255))
            elif which == 1:
                buffer[sof_start + 9] = rng.choice((0, 1, 2, 3, 4, 5, 255))
            else:
                buffer[sof_start + 1] = rng.choice((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC9, 0xCA, 0xCB, 0xCF))
        return bytes(buffer)
    if choice == 8:  # truncate anywhere
        return data[:rng.randrange(1, len(data) + 1)]
    if choice == 9:  # patch bytes inside a header segment (tables, scan parameters)
        if end - start > 4:
            buffer = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                buffer[rng.randrange(start + 4, end) if end - start > 4 else start] = rng.choice(
                    (0, 1, 0x0F, 0x10, 0x3F, 0x40, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            return bytes(buffer)
        return data
    # choice 10: insert a restart interval segment or an extra EOI/SOI at a segment boundary
    insert = rng.choice((b"\xff\xdd\x00\x04" + struct.pack(">H", rng.choice((0, 1, 2, 7, 65535))),
                         b"\xff\xd9", b"\xff\xd8", b"\xff\xd0", b"\xff"))
    return data[:start] + insert + data[start:]


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.45:
        mutated = _mutate_structure(data, rng)
        if rng.random() < 0.3:
            mutated = _mutate_structure(mutated, rng)
    else:
        mutated = atheris.Mutate(data, max_size)
    return mutated[:max_size]


def CustomCrossOver(data1: bytes, data2: bytes, max_out_size: int, seed: int) -> bytes:
    """Headers of one file with the entropy-coded data of another (mismatched tables, sizes, scans)."""
    rng = random.Random(seed)
    first, second = segments(data1), segments(data2)
    scans_first = [p for p in first if p[0] == 0xDA]
    scans_second = [p for p in second if p[0] == 0xDA]
    if scans_first and scans_second:
        cut = scans_first[0][1]
        _, start, end = scans_second[rng.randrange(len(scans_second))]
        return (data1[:cut] + data2[start:])[:max_out_size]
    cut1 = rng.randrange(len(data1) + 1)
    cut2 = rng.randrange(len(data2) + 1)
    return (data1[:cut1] + data2[cut2:])[:max_out_size]


def _flip_bytes(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randrange(1, 9)):
        if not buffer:
            break
        position = rng.randrange(len(buffer))
        buffer[position] = rng.choice((rng.randrange(256), buffer[position] ^ (1 << rng.randrange(8)), 0xFF, 0x00))
    return bytes(buffer)


def mutation_loop(directories, seconds: float, seed: int, artifacts: str) -> int:
    """Coverage-blind fuzzing without libFuzzer, for sanitizer builds (gcc's libasan breaks atheris'
    coverage): mutate random corpus files with the JPEG-aware mutator and byte flips for ``seconds``,
    check each with :func:`check_one`; a failing input is written to ``artifacts`` and re-raised.
    Returns the number of inputs run."""
    import time

    rng = random.Random(seed)
    corpus = []
    for directory in directories:
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    corpus.append(handle.read())
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        data = rng.choice(corpus)
        for _ in range(rng.randrange(1, 4)):
            if rng.random() < 0.6:
                data = _mutate_structure(data, rng)
            elif rng.random() < 0.5:
                data = CustomCrossOver(data, rng.choice(corpus), 1 << 17, rng.randrange(1 << 30))
            else:
                data = _flip_bytes(data, rng)
        try:
            check_one(data)
        except BaseException:
            os.makedirs(artifacts, exist_ok=True)
            path = os.path.join(artifacts, f"loop-crash-{zlib.crc32(data):08x}")
            with open(path, "wb") as handle:
                handle.write(data)
            print(f"finding after {count} inputs written to {path}", file=sys.stderr)
            raise
        count += 1
        if count % 5000 == 0:
            print(f"#{count} inputs, {STATS['own_decoder']} decoded by the own decoder", file=sys.stderr, flush=True)
    print(f"mutation loop: {count} inputs in {seconds:.0f} s, no finding; differential: {STATS['inputs']} inputs, "
          f"{STATS['own_decoder']} decoded by the own decoder, 0 divergences", file=sys.stderr)
    return count


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--loop":
        # python fuzz_decode.py --loop SECONDS SEED ARTIFACT_DIR CORPUS_DIR [CORPUS_DIR ...]
        mutation_loop(sys.argv[5:], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    atheris.instrument_func(_note)
    atheris.Setup(sys.argv, TestOneInput, custom_mutator=CustomMutator, custom_crossover=CustomCrossOver)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
