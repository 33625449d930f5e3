"""funloader/csrc/huffman.c: our own baseline entropy decoder gives libjpeg's coefficients bit for bit.

The reference is libjpeg-turbo itself (``decoder="libjpeg"``), through the same entry points:
every file of the shared corpus, ``jpegtran`` transcodes (restart intervals in rows and blocks,
optimized tables, copied metadata), files from Pillow and ``cjpeg`` at several qualities and
subsamplings.  Every comparison also checks that the own decoder really decoded the file (else the
test would only compare libjpeg with itself), and that a file it hands over comes out identical,
errors and warnings included.  Plus: the decoder switch, crop-aware stopping, and truncated inputs
placed against a PROT_NONE page (no read past the buffer).
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from funloader import JPEGDecodeError, codec, read_batch, read_dct, read_fun
from funloader.errors import UsageError
from reference import decode_recording

JPEGTRAN = shutil.which("jpegtran")
CJPEG = shutil.which("cjpeg")
DJPEG = shutil.which("djpeg")


def _assert_same_dct(source, strict=True, expect_own=None, where=""):
    """read_dct with both decoders: same outcome, warnings, header and coefficients. Returns the
    decoder that decoded it under auto."""
    ours, our_warnings = decode_recording(read_dct, source, strict=strict, decoder="auto")
    theirs, their_warnings = decode_recording(read_dct, source, strict=strict, decoder="libjpeg")
    assert our_warnings == their_warnings, where
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs) and str(ours) == str(theirs), f"{where}: {ours!r} vs {theirs!r}"
        return "libjpeg"
    assert not isinstance(ours, Exception), f"{where}: {ours!r}"
    assert theirs.decoder == "libjpeg"
    for name in ("width", "height", "sampling", "colorspace", "progressive", "arithmetic"):
        assert getattr(ours, name) == getattr(theirs, name), f"{where}: {name}"
    for a, b in zip(ours.qtables, theirs.qtables):
        np.testing.assert_array_equal(a, b, err_msg=where)
    assert len(ours.coefficients) == len(theirs.coefficients)
    for a, b in zip(ours.coefficients, theirs.coefficients):
        assert a.shape == b.shape, where
        assert np.array_equal(a, b), f"{where}: coefficients differ"
    if expect_own is not None:
        assert (ours.decoder == "funloader") == expect_own, f"{where}: decoded by {ours.decoder}"
    return ours.decoder


def _assert_same_fun(source, where="", dequantize=False):
    ours = read_fun(source, decoder="auto", dequantize=dequantize)
    theirs = read_fun(source, decoder="libjpeg", dequantize=dequantize)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, where
    assert np.array_equal(ours, theirs), f"{where}: read_fun differs"


# ---------------------------------------------------------------- the shared corpus


def _manifest(shared_data):
    with open(shared_data / "MANIFEST.tsv", newline="") as handle:
        return [row["file"] for row in csv.DictReader(handle, delimiter="\t")]


@pytest.mark.timeout(600)
def test_every_manifest_file_is_bit_exact(shared_data):
    """All 4,257 rows, strict and lenient: same outcome, warnings and coefficients with both decoders;
    read_fun equal on every decodable file; the own decoder takes the baseline files."""
    files = _manifest(shared_data)
    assert len(files) >= 4000
    taken = {"funloader": 0, "libjpeg": 0}
    for name in files:
        path = shared_data / name
        decoder = _assert_same_dct(path, strict=True, where=f"{name} strict")
        taken[decoder] += 1
        _assert_same_dct(path, strict=False, where=f"{name} lenient")
        if decoder == "funloader":
            _assert_same_fun(path, where=name)
    # 4,175 of 4,257 measured (the rest: progressive, arithmetic, Adobe, 16-bit tables, corrupt)
    assert taken["funloader"] >= 4000, taken


# ---------------------------------------------------------------- transcodes and other encoders


def _photo_sources(sample_jpegs, shared_data=None, count=6):
    paths = list(sample_jpegs[:count])
    if shared_data is not None:
        paths += sorted((shared_data / "photos").glob("*.jpg"))[:3]
    return paths


@pytest.mark.skipif(JPEGTRAN is None, reason="jpegtran (libjpeg-turbo-progs) not installed")
@pytest.mark.parametrize("options", [["-restart", "1"], ["-restart", "2"], ["-restart", "5"], ["-restart", "1B"],
                                     ["-restart", "3B"], ["-restart", "17B"], ["-optimize"], ["-copy", "all"],
                                     ["-optimize", "-restart", "3B", "-copy", "all"], ["-grayscale"]])
def test_jpegtran_transcodes(sample_jpegs, shared_data, tmp_path, options):
    for path in _photo_sources(sample_jpegs, shared_data):
        copy = tmp_path / f"t_{path.name}"
        subprocess.run([JPEGTRAN, *options, "-outfile", str(copy), str(path)], check=True)
        _assert_same_dct(copy, expect_own=True, where=f"{path.name} {options}")
        _assert_same_fun(copy, where=f"{path.name} {options}")
        if "-restart" in options and "-grayscale" not in options:
            assert b"\xff\xdd" in copy.read_bytes()


def _baseline(sample_jpegs):
    """The bundled photos our own decoder reads (the others are progressive)."""
    paths = [p for p in sample_jpegs if codec.decoder_path(p)[0] == "funloader"]
    assert len(paths) >= 3
    return paths


def _pillow_photo(sample_jpegs, index=0):
    with Image.open(sample_jpegs[index]) as image:
        return image.convert("RGB")


@pytest.mark.parametrize("quality", [30, 75, 90, 95, 100])
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_pillow_encodes(sample_jpegs, quality, subsampling):
    photo = _pillow_photo(sample_jpegs, quality % len(sample_jpegs))
    for size in [photo.size, (231, 97), (17, 9), (8, 8), (1, 1)]:
        data = io.BytesIO()
        photo.resize(size).save(data, format="JPEG", quality=quality, subsampling=subsampling)
        where = f"q{quality} subsampling {subsampling} {size}"
        _assert_same_dct(data.getvalue(), expect_own=True, where=where)
        _assert_same_fun(data.getvalue(), where=where, dequantize=True)
    gray = io.BytesIO()
    photo.convert("L").save(gray, format="JPEG", quality=quality, optimize=bool(subsampling))
    _assert_same_dct(gray.getvalue(), expect_own=True, where=f"gray q{quality}")
    _assert_same_fun(gray.getvalue(), where=f"gray q{quality}")


@pytest.mark.skipif(CJPEG is None or DJPEG is None, reason="cjpeg/djpeg (libjpeg-turbo-progs) not installed")
@pytest.mark.parametrize("options", [[], ["-optimize"], ["-restart", "1"], ["-restart", "2B"], ["-quality", "100"],
                                     ["-sample", "2x1"], ["-sample", "1x2"], ["-sample", "4x1"], ["-sample", "1x1"],
                                     ["-sample", "2x2,1x2,2x1"], ["-sample", "3x2"], ["-grayscale"],
                                     ["-quality", "60", "-optimize", "-restart", "4B", "-sample", "2x2"]])
def test_cjpeg_encodes(sample_jpegs, tmp_path, options):
    for path in sample_jpegs[:3]:
        pixels = tmp_path / "image.ppm"
        subprocess.run([DJPEG, "-outfile", str(pixels), str(path)], check=True)
        encoded = tmp_path / "encoded.jpg"
        subprocess.run([CJPEG, *options, "-outfile", str(encoded), str(pixels)], check=True)
        _assert_same_dct(encoded, expect_own=True, where=f"{path.name} cjpeg {options}")
        _assert_same_fun(encoded, where=f"{path.name} cjpeg {options}")


def test_tables_that_change_from_image_to_image(sample_jpegs):
    """One reused decoder rebuilds its derived tables whenever an image's DHT differs from the
    previous image's: per-image optimised tables (Pillow optimize=True, jpegtran -optimize) shuffled
    among standard-table files, through read_batch at 1 thread (one decoder): equal to libjpeg."""
    sources = []
    for path in _baseline(sample_jpegs):
        with Image.open(path) as image:
            photo = image.convert("RGB").resize((224, 224))
        for quality, optimize, subsampling in [(90, False, 2), (90, True, 2), (50, True, 0), (97, True, 2), (75, False, 0)]:
            data = io.BytesIO()
            photo.save(data, format="JPEG", quality=quality, optimize=optimize, subsampling=subsampling)
            sources.append(data.getvalue())
        if JPEGTRAN is not None:
            sources.append(subprocess.run([JPEGTRAN, "-optimize", str(path)], check=True, capture_output=True).stdout)
    np.random.default_rng(11).shuffle(sources)
    assert all(codec.decoder_path(source)[0] == "funloader" for source in sources)
    ours = np.full((len(sources), 192, 28, 28), 7, np.int16)
    theirs = np.full_like(ours, -7)
    read_batch(sources, ours, threads=1, decoder="auto")
    read_batch(sources, theirs, threads=1, decoder="libjpeg")
    assert np.array_equal(ours, theirs)
    for source in sources[:6]:
        _assert_same_dct(source, expect_own=True)


def test_read_batch_with_maps_and_affine_equals_libjpeg(sample_jpegs):
    """Block maps (windows, flips, zero blocks), the affine and centre crop/pad: bit-identical."""
    rng = np.random.default_rng(5)
    sources = [p.read_bytes() for p in sample_jpegs]
    for grid in [(28, 28), (7, 40), (60, 9)]:
        count = len(sources)
        rows = np.stack([np.sort(rng.integers(-1, 40, grid[0])) for _ in range(count)]).astype(np.int32)
        cols = np.stack([rng.integers(-1, 40, grid[1])[::-1] for _ in range(count)]).astype(np.int32)
        gain = rng.normal(size=(count, 192)).astype(np.float32)
        bias = rng.normal(size=192).astype(np.float32)
        for kwargs in [{}, {"row_maps": rows}, {"row_maps": rows, "col_maps": cols}, {"gain": gain, "bias": bias},
                       {"row_maps": rows, "col_maps": cols, "gain": gain, "bias": bias}]:
            for dtype, dequantize in [(np.int16, False), (np.float32, True)]:
                if "gain" in kwargs and dtype == np.int16:
                    continue
                ours = np.full((count, 192, *grid), 3, dtype=dtype)
                theirs = np.full((count, 192, *grid), 3, dtype=dtype)
                assert read_batch(sources, ours, threads=2, dequantize=dequantize, decoder="auto", **kwargs) == [None] * count
                assert read_batch(sources, theirs, threads=2, dequantize=dequantize, decoder="libjpeg",
                                  **kwargs) == [None] * count
                assert np.array_equal(ours, theirs), f"{grid} {sorted(kwargs)} {dtype}"


def _segments_replaced(data: bytes, keep_app0: bool, extra: bytes = b"", ids: bytes = b"") -> bytes:
    """``data`` with its APP0 kept or dropped, ``extra`` segments inserted after SOI and the SOF's
    component ids replaced."""
    from reference import segments

    out = bytearray(data[:2]) + extra
    body_start = None
    for marker, start, end in segments(data):
        if marker == 0xD8 or (marker == 0xE0 and not keep_app0):
            continue
        if marker == 0xDA:
            body_start = start
            break
        piece = bytearray(data[start:end])
        if marker == 0xC0 and ids:
            for index, value in enumerate(ids):
                piece[10 + 3 * index] = value
        out += piece
    scan = bytearray(data[body_start:])
    if ids:
        for index, value in enumerate(ids):
            scan[5 + 2 * index] = value
    return bytes(out + scan)


@pytest.mark.parametrize("keep_app0", [True, False])
def test_colour_space_markers(sample_jpegs, keep_app0):
    """JFIF / Adobe transform / RGB component ids decide libjpeg's colour space (and its warnings):
    the own decoder takes what libjpeg reads as YCbCr without a warning, and hands over the rest."""
    buffer = io.BytesIO()
    _pillow_photo(sample_jpegs).resize((64, 48)).save(buffer, format="JPEG", quality=85)
    data = buffer.getvalue()
    for transform in (None, 0, 1, 2):
        extra = b"" if transform is None else b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00" + bytes([transform])
        for ids in (b"", b"RGB", b"\x00\x01\x02"):
            variant = _segments_replaced(data, keep_app0, extra, ids)
            decoder = _assert_same_dct(variant, where=f"app0={keep_app0} adobe={transform} ids={ids!r}")
            expect_own = keep_app0 or transform == 1 or (transform is None and ids != b"RGB")
            assert (decoder == "funloader") == expect_own, (keep_app0, transform, ids, decoder)
    jfif2 = bytearray(data)
    jfif2[jfif2.index(b"JFIF\x00") + 5] = 2  # major version 2: libjpeg warns
    assert _assert_same_dct(bytes(jfif2), strict=False, where="JFIF 2.1") == "libjpeg"


# ---------------------------------------------------------------- hand-over, switch, crop-aware stop


def test_hand_over_reasons_and_info(sample_jpegs, tmp_path):
    data = _baseline(sample_jpegs)[0].read_bytes()
    assert codec.decoder_path(data) == ("funloader", "")
    assert read_dct(data).decoder == "funloader"
    assert read_dct(data, decoder="libjpeg").decoder == "libjpeg"
    progressive = io.BytesIO()
    _pillow_photo(sample_jpegs).save(progressive, format="JPEG", progressive=True)
    assert codec.decoder_path(progressive.getvalue()) == ("libjpeg", "progressive JPEG")
    # a bad Huffman code in the scan data: handed over mid-scan, libjpeg's own error/warning
    scan = data.index(b"\xff\xda")
    broken = bytearray(data)
    broken[scan + 200:scan + 216] = b"\xfe" * 16
    path, reason = codec.decoder_path(bytes(broken))
    assert path == "libjpeg" and reason, reason
    _assert_same_dct(bytes(broken), strict=True, where="bad code strict")
    _assert_same_dct(bytes(broken), strict=False, where="bad code lenient")
    # truncated: hand-over, libjpeg's premature-end warning in lenient mode
    _assert_same_dct(data[:len(data) // 2], strict=False, where="truncated lenient")
    _assert_same_dct(data[:len(data) // 2], strict=True, where="truncated strict")
    from funloader.info import describe

    file = tmp_path / "p.jpg"
    file.write_bytes(progressive.getvalue())
    assert describe(str(file))["decoder"] == "libjpeg (progressive JPEG)"
    assert describe(str(_baseline(sample_jpegs)[0]))["decoder"] == "funloader"


def test_decoder_switch(sample_jpegs, monkeypatch):
    data = _baseline(sample_jpegs)[1].read_bytes()
    monkeypatch.setenv("FUNLOADER_DECODER", "libjpeg")
    assert read_dct(data).decoder == "libjpeg"
    assert read_dct(data, decoder="auto").decoder == "funloader"
    monkeypatch.setenv("FUNLOADER_DECODER", "auto")
    assert read_dct(data).decoder == "funloader"
    monkeypatch.setenv("FUNLOADER_DECODER", "fast")
    with pytest.raises(UsageError, match="FUNLOADER_DECODER"):
        read_fun(data)
    monkeypatch.delenv("FUNLOADER_DECODER")
    with pytest.raises(UsageError, match="decoder='turbo'"):
        read_batch([data], np.zeros((1, 192, 4, 4), np.int16), decoder="turbo")


def test_crop_aware_stop(sample_jpegs):
    """With row maps inside the top of the image, the own decoder stops early: the window equals
    libjpeg's, and damage below it is not seen (documented); without maps the whole file is read."""
    data = _baseline(sample_jpegs)[0].read_bytes()
    image = read_dct(data)
    grid_h, grid_w = image.grid
    assert grid_h >= 16
    rows = np.full((1, grid_h), -1, dtype=np.int32)
    rows[0, :4] = np.arange(4)  # the top 4 block rows, then zero blocks
    cols = np.arange(grid_w, dtype=np.int32)[None]
    full = np.zeros((1, 192, grid_h, grid_w), np.int16)
    assert read_batch([data], full) == [None]
    cut = data[:int(len(data) * 0.8)]  # the top rows are well inside the first 80%
    window = np.zeros((1, 192, grid_h, grid_w), np.int16)
    assert read_batch([cut], window, row_maps=rows, col_maps=cols) == [None]
    assert np.array_equal(window[:, :, :4], full[:, :, :4]) and not window[:, :, 4:].any()
    errors = read_batch([cut], window, row_maps=rows, col_maps=cols, decoder="libjpeg")
    assert isinstance(errors[0], JPEGDecodeError)  # libjpeg reads to the end
    errors = read_batch([cut], window)  # no maps: the whole file, strict
    assert isinstance(errors[0], JPEGDecodeError)


def test_exact_resized_crop_equals_libjpeg(sample_jpegs):
    """The exact resized crop reads its coefficient window from the own decoder (only the window's
    blocks kept, decoding stopped after its last MCU row): identical to libjpeg's window."""
    rng = np.random.default_rng(7)
    sources = [p.read_bytes() for p in _baseline(sample_jpegs)]
    sizes = codec.read_sizes(sources)
    boxes = []
    for height, width in sizes:
        h, w = rng.uniform(0.2, 0.9) * height, rng.uniform(0.2, 0.9) * width
        boxes.append((rng.uniform(0, height - h), rng.uniform(0, width - w), h, w))
    boxes.append((0.0, 0.0, float(sizes[0][0]) / 5, float(sizes[0][1]) / 3))  # top rows only
    sources.append(sources[0])
    for subsampling in ("420", "444"):
        ours = np.zeros((len(sources), 192, 14, 14), np.float32)
        theirs = np.ones_like(ours)
        assert read_batch(sources, ours, boxes=boxes, subsampling=subsampling, decoder="auto") == [None] * len(sources)
        assert read_batch(sources, theirs, boxes=boxes, subsampling=subsampling, decoder="libjpeg") == [None] * len(sources)
        assert np.array_equal(ours, theirs), subsampling
        single = read_fun(sources[0], box=boxes[0], size=(14, 14), subsampling=subsampling)
        assert np.array_equal(single, read_fun(sources[0], box=boxes[0], size=(14, 14), subsampling=subsampling,
                                               decoder="libjpeg"))
    # crop-aware: a box in the top fifth decodes from a file cut at 60%; libjpeg reads to the end
    cut = sources[0][:int(len(sources[0]) * 0.6)]
    window = read_fun(cut, box=boxes[-1], size=(14, 14))
    assert np.array_equal(window, read_fun(sources[0], box=boxes[-1], size=(14, 14)))
    with pytest.raises(JPEGDecodeError):
        read_fun(cut, box=boxes[-1], size=(14, 14), decoder="libjpeg")


# ---------------------------------------------------------------- no read past the buffer

_GUARDED = textwrap.dedent("""
    import ctypes, mmap, sys, warnings
    import numpy as np
    from funloader import codec, JPEGDecodeError, JPEGWarning
    warnings.simplefilter("ignore", JPEGWarning)
    page = mmap.PAGESIZE
    paths = sys.argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    decoded = failed = 0
    for path in paths:
        data = open(path, "rb").read()
        pages = (len(data) + page - 1) // page + 1
        region = mmap.mmap(-1, (pages + 1) * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(region))
        assert libc.mprotect(base + pages * page, page, 0) == 0  # PROT_NONE after the data
        view = memoryview(region)
        end = pages * page
        for cut in range(1, len(data) + 1):
            start = end - cut
            region[start:end] = data[:cut]
            piece = view[start:end]
            for strict in (True, False):
                try:
                    codec.read_fun(piece, strict=strict)
                    decoded += 1
                except JPEGDecodeError:
                    failed += 1
            del piece
        view.release()
    print(decoded, failed)
""")


@pytest.mark.timeout(300)
def test_inputs_against_a_guard_page(sample_jpegs, tmp_path):
    """Every truncation of small real files (a bundled photo, a resized colour and a gray photo, one
    with restart markers every block), placed so that its last byte is the last readable byte before
    a PROT_NONE page, through read_fun (strict and lenient): no fault."""
    smallest = min(_baseline(sample_jpegs), key=lambda p: p.stat().st_size)
    files = [str(smallest)]
    for mode, size in (("RGB", (64, 48)), ("L", (40, 24))):
        buffer = io.BytesIO()
        _pillow_photo(sample_jpegs).resize(size).convert(mode).save(buffer, format="JPEG", quality=90)
        path = tmp_path / f"{mode}.jpg"
        path.write_bytes(buffer.getvalue())
        files.append(str(path))
    if JPEGTRAN:
        restart = tmp_path / "restart.jpg"
        subprocess.run([JPEGTRAN, "-restart", "1B", "-outfile", str(restart), files[1]], check=True)
        files.append(str(restart))
    process = subprocess.run([sys.executable, "-c", _GUARDED, *files], capture_output=True, text=True, timeout=280)
    assert process.returncode == 0, process.stderr[-3000:]
    decoded, failed = map(int, process.stdout.split())
    assert decoded > 0 and failed > 0
