"""funloader/codec.py: coefficients checked against references we did not write.

* jpeg2dct (``loads(data, normalized=False)``) must agree bit for bit on 4:2:0 photos;
* ``jpegtran`` lossless transcodes (progressive, arithmetic, restart markers, optimized Huffman)
  must give identical coefficients;
* a numpy inverse DCT of our coefficients must reproduce libjpeg's own pixels (Pillow);
* the FUN layout must equal an independent numpy replication of ``read_dct``'s planes.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import funloader
from funloader import JPEGDecodeError, JPEGWarning, UnsupportedJPEGError, read_batch, read_dct, read_fun
from reference import centre_fit, fun_from_dct

JPEGTRAN = shutil.which("jpegtran")
needs_jpegtran = pytest.mark.skipif(JPEGTRAN is None, reason="jpegtran (libjpeg-turbo-progs) not installed")


def _photos(shared_data, subsampling=None):
    import csv

    rows = []
    with open(shared_data / "MANIFEST.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["file"].startswith("photos/") and (subsampling is None or row["subsampling"] == subsampling):
                rows.append(shared_data / row["file"])
    assert rows, "no photos found in the manifest"
    return rows


def _encode(image: Image.Image, quality=90, subsampling=2, progressive=False) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=subsampling, progressive=progressive)
    return buffer.getvalue()


# ---------------------------------------------------------------- jpeg2dct


def test_read_dct_equals_jpeg2dct_on_420_photos(shared_data):
    jpeg2dct = pytest.importorskip("jpeg2dct.numpy")
    photos = _photos(shared_data, "4:2:0")
    assert len(photos) >= 30
    for path in photos:
        image = read_dct(path)
        assert image.sampling == [(2, 2), (1, 1), (1, 1)]
        reference = jpeg2dct.loads(path.read_bytes(), normalized=False)
        for component, (ours, theirs) in enumerate(zip(image.coefficients, reference)):
            assert ours.dtype == np.int16
            assert ours.shape == theirs.shape, (path.name, component)
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{path.name} component {component}")


def test_bundled_samples_equal_jpeg2dct(sample_jpegs):
    jpeg2dct = pytest.importorskip("jpeg2dct.numpy")
    checked = 0
    for path in sample_jpegs:
        image = read_dct(path)
        if image.sampling != [(2, 2), (1, 1), (1, 1)]:
            continue
        for ours, theirs in zip(image.coefficients, jpeg2dct.loads(path.read_bytes(), normalized=False)):
            np.testing.assert_array_equal(ours, theirs)
        checked += 1
    assert checked >= 8


# ---------------------------------------------------------------- jpegtran lossless transcodes


@needs_jpegtran
@pytest.mark.parametrize("options", [["-progressive"], ["-arithmetic"], ["-restart", "1"], ["-optimize"],
                                     ["-progressive", "-restart", "2"]])
def test_lossless_transcodes_keep_coefficients(sample_jpegs, tmp_path, options):
    for path in sample_jpegs[:6] + sample_jpegs[-3:]:
        copy = tmp_path / f"copy_{path.name}"
        subprocess.run([JPEGTRAN, "-copy", "none", *options, "-outfile", str(copy), str(path)], check=True)
        original, transcoded = read_dct(path), read_dct(copy)
        if "-arithmetic" in options:
            assert transcoded.arithmetic
        if "-progressive" in options:
            assert transcoded.progressive
        assert transcoded.sampling == original.sampling
        for a, b in zip(original.coefficients, transcoded.coefficients):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(original.qtables, transcoded.qtables):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(read_fun(path), read_fun(copy))


def test_shared_lossless_oracles(shared_data):
    source = read_dct(shared_data / "photos" / "sklearn__china.jpg")
    arith = read_dct(shared_data / "edge" / "derived" / "B_arith_restart2rows.jpg")
    assert arith.arithmetic
    for a, b in zip(source.coefficients, arith.coefficients):
        np.testing.assert_array_equal(a, b)
    crop = read_dct(shared_data / "edge" / "derived" / "B_crop_7x9_444.jpg")
    for a, b in zip(source.coefficients, crop.coefficients):
        assert b.shape == (2, 1, 64)
        np.testing.assert_array_equal(a[:1, :1], b[:1, :1])


# ---------------------------------------------------------------- numpy IDCT vs libjpeg's own decode


def _idct_matrix():
    n = np.arange(8)
    basis = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16)  # [frequency, position]
    scale = np.full(8, np.sqrt(2 / 8))
    scale[0] = np.sqrt(1 / 8)
    return basis * scale[:, None]


def _pixels_from_plane(plane, qtable):
    """(bh, bw, 64) quantized coefficients -> (8*bh, 8*bw) float pixels (orthonormal IDCT + 128)."""
    basis = _idct_matrix()
    coefficients = plane.astype(np.float64) * qtable.astype(np.float64)
    blocks = coefficients.reshape(plane.shape[0], plane.shape[1], 8, 8)  # [..., v, u]
    spatial = np.einsum("vy,ux,abvu->abyx", basis, basis, blocks)
    return spatial.transpose(0, 2, 1, 3).reshape(plane.shape[0] * 8, plane.shape[1] * 8) + 128.0


def test_numpy_idct_reproduces_libjpeg_luma(shared_data):
    for path in _photos(shared_data)[:25]:
        image = read_dct(path)
        luma = _pixels_from_plane(image.coefficients[0], image.qtables[0])
        with Image.open(path) as pil:
            pil.draft("YCbCr", pil.size)  # libjpeg output without colour conversion
            reference = np.asarray(pil.convert("YCbCr") if pil.mode != "YCbCr" else pil)
        reference_y = reference[..., 0] if reference.ndim == 3 else reference
        ours = np.clip(np.round(luma), 0, 255)[: image.height, : image.width]
        difference = np.abs(ours - reference_y.astype(np.float64))
        assert difference.max() <= 2, (path.name, difference.max())
        assert difference.mean() < 0.5, (path.name, difference.mean())  # libjpeg islow rounding


def test_numpy_idct_and_colour_conversion_reproduce_pillow_rgb(sample_jpegs, tmp_path):
    """4:4:4 (no chroma upsampling involved): IDCT + level shift + YCbCr->RGB vs Pillow's RGB."""
    photo = Image.open(sample_jpegs[0]).convert("RGB").resize((256, 192))
    path = tmp_path / "444.jpg"
    path.write_bytes(_encode(photo, quality=95, subsampling=0))
    image = read_dct(path)
    assert image.sampling == [(1, 1)] * 3
    y, cb, cr = (_pixels_from_plane(p, q)[:192, :256] for p, q in zip(image.coefficients, image.qtables))
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], -1)
    ours = np.clip(np.round(rgb), 0, 255)
    reference = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    difference = np.abs(ours - reference)
    assert difference.max() <= 3, difference.max()
    assert difference.mean() < 0.5


# ---------------------------------------------------------------- FUN layout


def test_fun_layout_all_sampling_factors(shared_data):
    derived = shared_data / "edge" / "derived"
    names = ["B_sample_420.jpg", "B_sample_422.jpg", "B_sample_440.jpg", "B_sample_444.jpg", "B_sample_411.jpg",
             "B_sample_410.jpg", "B_sample_311.jpg", "B_sample_1x4_vertical_quarter.jpg",
             "B_sample_chroma_above_luma.jpg", "B_sample_mixed_Cb1x2_Cr1x1.jpg", "B_15x17_411.jpg", "B_17x15_440.jpg",
             "B_1x1_420.jpg", "B_3x427_420.jpg", "B_640x3_420.jpg", "B_7x9_420.jpg", "B_9x7_422.jpg"]
    for name in names:
        image = read_dct(derived / name)
        fun = read_fun(derived / name)
        assert fun.shape == (192, (image.height + 7) // 8, (image.width + 7) // 8), name
        np.testing.assert_array_equal(fun, fun_from_dct(image), err_msg=name)


def test_fun_420_chroma_is_block_replicated(sample_jpegs):
    path = next(p for p in sample_jpegs if read_dct(p).sampling[0] == (2, 2))
    image, fun = read_dct(path), read_fun(path)
    y, cb, cr = image.coefficients
    np.testing.assert_array_equal(fun[:64], y.transpose(2, 0, 1))
    np.testing.assert_array_equal(fun[64:128, 0::2, 0::2], cb[: fun.shape[1] // 2 + fun.shape[1] % 2, : (fun.shape[2] + 1) // 2].transpose(2, 0, 1))
    np.testing.assert_array_equal(fun[64:128, 1::2, 1::2], fun[64:128, 0::2, 0::2][:, : fun.shape[1] // 2, : fun.shape[2] // 2])
    np.testing.assert_array_equal(fun[128:, ::2, ::2], cr.transpose(2, 0, 1)[:, : (fun.shape[1] + 1) // 2, : (fun.shape[2] + 1) // 2])


def test_grayscale_gives_zero_chroma(shared_data):
    path = shared_data / "edge" / "derived" / "B_grayscale.jpg"
    image = read_dct(path)
    assert image.colorspace == "gray" and image.num_components == 1
    fun = read_fun(path)
    np.testing.assert_array_equal(fun[:64], image.coefficients[0].transpose(2, 0, 1))
    assert not fun[64:].any()


def test_dequantize(sample_jpegs):
    for path in sample_jpegs[:3]:
        image = read_dct(path)
        raw = read_fun(path)
        dequantized = read_fun(path, dequantize=True)
        assert dequantized.dtype == np.float32
        qtable = np.concatenate([image.qtables[c] for c in range(3)]).astype(np.float32)
        np.testing.assert_array_equal(dequantized, raw.astype(np.float32) * qtable[:, None, None])
        np.testing.assert_array_equal(image.dequantized()[0], image.coefficients[0] * image.qtables[0].astype(np.float32))


def test_qtables_match_pillow(sample_jpegs):
    for path in sample_jpegs:
        image = read_dct(path)
        with Image.open(path) as pil:
            tables = pil.quantization  # natural order, like libjpeg's quantval (Pillow >= 8.3)
        np.testing.assert_array_equal(image.qtables[0], np.asarray(tables[0], np.uint16))
        if image.num_components == 3:
            np.testing.assert_array_equal(image.qtables[1], np.asarray(tables[1], np.uint16))


# ---------------------------------------------------------------- sources, out=, read_batch


def test_sources_path_bytes_fileobj_memoryview(sample_jpegs):
    path = sample_jpegs[0]
    expected = read_fun(path)
    data = path.read_bytes()
    np.testing.assert_array_equal(read_fun(str(path)), expected)
    np.testing.assert_array_equal(read_fun(data), expected)
    np.testing.assert_array_equal(read_fun(bytearray(data)), expected)
    np.testing.assert_array_equal(read_fun(memoryview(data)), expected)
    with open(path, "rb") as handle:
        np.testing.assert_array_equal(read_fun(handle), expected)
    np.testing.assert_array_equal(read_fun(io.BytesIO(data)), expected)


def test_read_fun_into_out(sample_jpegs):
    import torch

    path = sample_jpegs[1]
    expected = read_fun(path)
    out = np.full(expected.shape, 7, np.int16)
    assert read_fun(path, out=out) is out
    np.testing.assert_array_equal(out, expected)
    tensor = torch.empty(expected.shape, dtype=torch.float32)
    read_fun(path, out=tensor)
    np.testing.assert_array_equal(tensor.numpy(), expected.astype(np.float32))
    with pytest.raises(ValueError, match=r"needs .*\(192 x 54 x 80\)"):
        read_fun(path, out=np.zeros((192, 3, 3), np.int16))
    with pytest.raises(ValueError, match="grid"):
        read_fun(path, out=np.zeros((192, 80, 54), np.int16))
    with pytest.raises(ValueError, match="float32"):
        read_fun(path, out=np.zeros(expected.shape, np.int16), dequantize=True)




@pytest.mark.parametrize("dequantize", [False, True])
@pytest.mark.parametrize("grid", [(28, 28), (16, 90), (70, 20), (27, 33), (5, 7)])
def test_read_batch_crops_and_pads_like_slicing(sample_jpegs, grid, dequantize):
    dtype = np.float32 if dequantize else np.int16
    out = np.empty((len(sample_jpegs), 192, *grid), dtype)
    errors = read_batch(sample_jpegs, out, threads=2, dequantize=dequantize)
    assert errors == [None] * len(sample_jpegs)
    for index, path in enumerate(sample_jpegs):
        expected = centre_fit(read_fun(path, dequantize=dequantize), grid)
        np.testing.assert_array_equal(out[index], expected, err_msg=path.name)


_MAPPED_FILES = ["B_sample_420.jpg", "B_sample_422.jpg", "B_sample_444.jpg", "B_sample_411.jpg",
                 "B_sample_chroma_above_luma.jpg", "B_grayscale.jpg", "B_1x1_420.jpg", "B_15x17_411.jpg"]


@pytest.mark.parametrize("maps", ["none", "flip", "random"])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("grid", [(28, 28), (6, 9), (70, 20)])
def test_read_batch_block_maps_and_affine(shared_data, sample_jpegs, grid, maps, affine):
    """read_batch's row/col maps and per-channel affine against gathering and scaling read_fun in numpy
    (float32, multiply then add, each rounded): crops, pads, mirrored columns, zero blocks, all sampling
    factors and grayscale; the affine alone takes the in-place layout path, with maps the mapped one."""
    derived = shared_data / "edge" / "derived"
    paths = list(sample_jpegs[:3]) + [derived / name for name in _MAPPED_FILES]
    rng = np.random.default_rng(sum(grid) + len(maps) + affine)
    count = len(paths)
    row_maps = col_maps = None
    if maps == "flip":
        col_maps = np.tile(np.arange(grid[1])[::-1], (count, 1))
    elif maps == "random":
        row_maps = rng.integers(-1, grid[0], size=(count, grid[0]))
        col_maps = rng.integers(-1, grid[1], size=(count, grid[1]))
    gain = bias = None
    if affine:
        gain = (rng.normal(0, 0.05, size=(count, 192)) * rng.choice([-1, 1], size=(count, 192))).astype(np.float32)
        bias = rng.normal(0, 1, size=192).astype(np.float32)
    for dequantize in (False, True):
        out = np.full((count, 192, *grid), 7.0, np.float32)
        errors = read_batch(paths, out, threads=2, dequantize=dequantize, row_maps=row_maps, col_maps=col_maps,
                            gain=gain, bias=bias)
        assert errors == [None] * count
        for index, path in enumerate(paths):
            fitted = centre_fit(read_fun(path, dequantize=dequantize), grid).astype(np.float32)
            rows = row_maps[index] if row_maps is not None else np.arange(grid[0])
            cols = col_maps[index] if col_maps is not None else np.arange(grid[1])
            padded = np.zeros((192, grid[0] + 1, grid[1] + 1), np.float32)  # index -1: the zero row/column
            padded[:, :-1, :-1] = fitted
            expected = padded[:, rows][:, :, cols]
            if affine:
                expected = expected * gain[index][:, None, None] + bias[:, None, None]
            np.testing.assert_array_equal(out[index], expected, err_msg=f"{path.name} dequantize={dequantize}")


def test_read_batch_threads_agree_and_errors_are_per_item(sample_jpegs, tmp_path):
    import torch

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    missing = tmp_path / "missing.jpg"
    sources = list(sample_jpegs) + [bad, missing, sample_jpegs[0].read_bytes()]
    one = np.full((len(sources), 192, 28, 28), 5, np.float32)
    errors = read_batch(sources, one, threads=1, dequantize=True)
    two = torch.full((len(sources), 192, 28, 28), 9.0)
    errors_two = read_batch(sources, two, threads=4, dequantize=True)
    np.testing.assert_array_equal(one, two.numpy())
    assert [type(e) for e in errors] == [type(e) for e in errors_two]
    assert errors[: len(sample_jpegs)] == [None] * len(sample_jpegs)
    assert isinstance(errors[-3], JPEGDecodeError) and str(bad) in str(errors[-3]) and "Not a JPEG" in str(errors[-3])
    assert isinstance(errors[-2], FileNotFoundError) and errors[-2].filename == str(missing)
    assert errors[-1] is None
    assert not one[-3].any() and not one[-2].any()
    np.testing.assert_array_equal(one[-1], one[0])


def test_read_batch_validates_out(sample_jpegs):
    with pytest.raises(ValueError, match="shape"):
        read_batch(sample_jpegs[:2], np.zeros((3, 192, 28, 28), np.int16))
    with pytest.raises(ValueError, match="dtype"):
        read_batch(sample_jpegs[:2], np.zeros((2, 192, 28, 28), np.int32))
    with pytest.raises(ValueError, match="contiguous"):
        read_batch(sample_jpegs[:2], np.zeros((2, 192, 28, 56), np.int16)[..., ::2])


# ---------------------------------------------------------------- errors, strictness, limits


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "not_a.jpg"
    path.write_bytes(b"GIF89a" + b"\0" * 64)
    with pytest.raises(JPEGDecodeError) as info:
        read_fun(path)
    assert str(path) in str(info.value) and "Not a JPEG file" in str(info.value)
    assert info.value.filename == str(path)
    with pytest.raises(JPEGDecodeError, match="empty"):
        read_dct(b"")
    with pytest.raises(FileNotFoundError):
        read_fun(tmp_path / "nope.jpg")
    with pytest.raises(TypeError):
        read_fun(12345)


def test_truncated_strict_raises_lenient_warns(sample_jpegs):
    data = sample_jpegs[-1].read_bytes()  # baseline
    truncated = data[: len(data) * 2 // 3]
    with pytest.raises(JPEGDecodeError, match="Premature end"):
        read_fun(truncated)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fun = read_fun(truncated, strict=False)
    assert any(issubclass(w.category, JPEGWarning) and "Premature end" in str(w.message) for w in caught)
    full = read_fun(data)
    assert fun.shape == full.shape
    np.testing.assert_array_equal(fun[:, :2], full[:, :2])  # the top rows were intact
    out = np.zeros((1, 192, 16, 16), np.int16)
    assert read_batch([truncated], out, strict=False, warn=False) == [None]
    assert isinstance(read_batch([truncated], out)[0], JPEGDecodeError)


def test_unsupported_kinds(shared_data, tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (10, 20, 30, 40)).save(cmyk, quality=90)
    with pytest.raises(UnsupportedJPEGError, match="CMYK") as info:
        read_fun(cmyk)
    assert str(cmyk) in str(info.value)
    with pytest.raises(UnsupportedJPEGError, match="precision 12"):
        read_dct(shared_data / "edge" / "ljt__testorig12.jpg")
    with pytest.raises(UnsupportedJPEGError, match="RGB"):
        read_fun(shared_data / "edge" / "derived" / "B_rgb_no_transform.jpg")
    assert issubclass(UnsupportedJPEGError, JPEGDecodeError) and issubclass(JPEGDecodeError, ValueError)


def _with_dimensions(data: bytes, height: int, width: int) -> bytes:
    """Patch the SOF marker of a JPEG to declare another size."""
    array = bytearray(data)
    index = 2
    while index < len(array):
        marker = array[index + 1]
        length = int.from_bytes(array[index + 2: index + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            array[index + 5: index + 7] = height.to_bytes(2, "big")
            array[index + 7: index + 9] = width.to_bytes(2, "big")
            return bytes(array)
        index += 2 + length
    raise AssertionError("no SOF marker")


def test_decompression_bomb_fails_fast(sample_jpegs):
    import time

    bomb = _with_dimensions(sample_jpegs[-1].read_bytes(), 64250, 64250)
    start = time.perf_counter()
    with pytest.raises(JPEGDecodeError, match="max_pixels"):
        read_fun(bomb)
    assert time.perf_counter() - start < 1.0
    small = sample_jpegs[-1]  # 128x128 = 16384 pixels
    with pytest.raises(JPEGDecodeError, match="max_pixels"):
        read_dct(small, max_pixels=10_000)
    assert read_dct(small, max_pixels=16_384).width == 128
    funloader.codec.set_max_pixels(1000)
    try:
        with pytest.raises(JPEGDecodeError):
            read_fun(small)
        assert read_fun(small, max_pixels=0).shape == (192, 16, 16)
    finally:
        funloader.codec.set_max_pixels(funloader.codec.DEFAULT_MAX_PIXELS)


def test_libjpeg_info():
    info = funloader.libjpeg_info()
    assert info["version_number"] > 0 and info["version"].count(".") == 2


def test_layout_avx2_and_sse2_paths_give_the_same_bits(sample_jpegs, tmp_path):
    """read_batch's FUN layout transposes 16 blocks at a time with AVX2 and 8 with SSE2
    (FUNLOADER_SIMD=sse2): int16, dequantised float32 and a per-item affine come out bit-identical, for
    a centre crop and a centre pad, with either decoder."""
    import os
    import sys

    paths = [str(p) for p in sample_jpegs[:6]]
    script = (
        "import sys, numpy as np, funloader\n"
        "paths, target = eval(sys.argv[1]), sys.argv[2]\n"
        "rng = np.random.default_rng(0)\n"
        "gain = rng.uniform(0.5, 2, (len(paths), 192)).astype(np.float32)\n"
        "bias = rng.uniform(-1, 1, (len(paths), 192)).astype(np.float32)\n"
        "arrays = {}\n"
        "for decoder in ('auto', 'libjpeg'):\n"
        "    for grid, count in ((28, len(paths)), (84, 2)):  # 84 blocks = 672 px: wider than the photos (pad)\n"
        "        raw = np.zeros((count, 192, grid, grid), np.int16)\n"
        "        funloader.read_batch(paths[:count], raw, threads=1, decoder=decoder)\n"
        "        scaled = np.zeros((count, 192, grid, grid), np.float32)\n"
        "        funloader.read_batch(paths[:count], scaled, threads=2, dequantize=True, decoder=decoder)\n"
        "        affine = np.zeros((count, 192, grid, grid), np.float32)\n"
        "        funloader.read_batch(paths[:count], affine, dequantize=True, gain=gain[:count], bias=bias[:count],\n"
        "                             decoder=decoder)\n"
        "        arrays.update({f'{decoder}{grid}raw': raw, f'{decoder}{grid}scaled': scaled,\n"
        "                       f'{decoder}{grid}affine': affine})\n"
        "np.savez(target, **arrays)\n"
        "print(funloader.codec._jpegdct.resize_simd())\n")
    results = {}
    for simd in ("sse2", "native"):
        target = tmp_path / f"{simd}.npz"
        run = subprocess.run([sys.executable, "-c", script, repr(paths), str(target)],
                             env=dict(os.environ, FUNLOADER_SIMD=simd), stdout=subprocess.PIPE, check=True, text=True)
        results[run.stdout.strip()] = dict(np.load(target))
    assert "sse2" in results
    for arrays in results.values():
        assert arrays.keys() == results["sse2"].keys()
        for name, array in arrays.items():
            assert np.abs(array).sum() > 0, name
            np.testing.assert_array_equal(array, results["sse2"][name], err_msg=name)


def test_staged_items_reach_slots_off_a_cache_line_boundary(sample_jpegs):
    """read_batch lays each item out in a cached stage and streams it to its slot (64-byte
    non-temporal stores framed by plain head and tail copies): a batch that does not start on a
    64-byte boundary gets the same values, and nothing outside it is written."""
    paths = [str(p) for p in sample_jpegs[:5]]
    for dtype, dequantize in ((np.int16, False), (np.float32, True)):
        aligned = np.zeros((len(paths), 192, 28, 28), dtype)
        assert read_batch(paths, aligned, threads=1, dequantize=dequantize) == [None] * len(paths)
        assert np.abs(aligned).sum() > 0
        for offset in (1, 3, 31):  # elements
            buffer = np.full(aligned.size + offset + 40, 7, dtype)
            out = buffer[offset:offset + aligned.size].reshape(aligned.shape)
            assert out.ctypes.data % 64 != 0
            read_batch(paths, out, threads=2, dequantize=dequantize)
            np.testing.assert_array_equal(out, aligned, err_msg=f"{np.dtype(dtype).name} offset {offset}")
            assert (buffer[:offset] == 7).all() and (buffer[offset + aligned.size:] == 7).all()
