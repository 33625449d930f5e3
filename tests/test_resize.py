"""The exact resized crop (``read_fun(box=)``, ``read_batch(boxes=)``, ``read_sizes``) against an oracle.

Oracle: Pillow decodes the JPEG straight to YCbCr (``draft("YCbCr")``: libjpeg's own decode, fancy
upsampling, no colour round trip), crops and resizes each band with BILINEAR (crop then resize for
``support="box"``, ``resize(box=)`` for ``support="image"``); our output is turned back into pixels
with a numpy inverse block DCT. Thresholds: luma >= 40 dB, chroma >= 35 dB (issue 18). Measured on
420 windows of the 70 shared photos: luma median 56.8 dB (min 54.2), chroma median 57.3-57.9 dB
(min 51.5) for both "444" and "420" and both supports: what is left is libjpeg's integer IDCT and
Pillow's 8-bit rounding against our float pipeline.
"""
from __future__ import annotations

import functools
import io
import math
import random
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import funloader
from funloader import codec
from funloader.errors import JPEGDecodeError, UsageError

DCT = np.array([[(math.sqrt(0.125) if u == 0 else 0.5) * math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)]
                for u in range(8)])


def inverse_blocks(planes: np.ndarray) -> np.ndarray:
    """(64, gh, gw) coefficients (k = 8 v + u) -> (8 gh, 8 gw) pixels, level shift undone (numpy, float64)."""
    _, gh, gw = planes.shape
    coefficients = planes.reshape(8, 8, gh, gw).transpose(2, 3, 0, 1).astype(np.float64)
    pixels = np.einsum("vy,abvu,ux->abyx", DCT, coefficients, DCT)
    return pixels.transpose(0, 2, 1, 3).reshape(8 * gh, 8 * gw) + 128.0


@functools.lru_cache(maxsize=4)
def pillow_ycbcr(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.draft("YCbCr", image.size)
    image.load()
    assert image.mode in ("YCbCr", "L"), image.mode
    return image


def pillow_resized(image, box, width, height, support):
    top, left, h, w = box
    if support == "box":  # crop the whole pixels the box touches, then resize the box inside the crop
        x0, y0, x1, y1 = math.floor(left), math.floor(top), math.ceil(left + w), math.ceil(top + h)
        crop = image.crop((x0, y0, x1, y1))
        result = crop.resize((width, height), Image.BILINEAR, box=(left - x0, top - y0, left - x0 + w, top - y0 + h))
    else:
        result = image.resize((width, height), Image.BILINEAR, box=(left, top, left + w, top + h))
    array = np.asarray(result, dtype=np.float64)
    return array[..., None] if array.ndim == 2 else array


def psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - b) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def fidelity(data: bytes, box, grid, subsampling="444", support="box"):
    """[luma PSNR, Cb PSNR, Cr PSNR] (chroma only for colour files) of read_fun(box=) against Pillow."""
    image = pillow_ycbcr(data)
    h8, w8 = grid
    ours = funloader.read_fun(data, box=box, size=grid, subsampling=subsampling, support=support)
    assert ours.shape == (192, h8, w8) and ours.dtype == np.float32
    reference = pillow_resized(image, box, 8 * w8, 8 * h8, support)
    scores = [psnr(inverse_blocks(ours[:64]), reference[..., 0])]
    if image.mode == "YCbCr":
        if subsampling == "420":
            reference = pillow_resized(image, box, 4 * w8, 4 * h8, support)
        for c in (1, 2):
            planes = ours[64 * c:64 * c + 64]
            if subsampling == "420":  # one chroma block per 2x2 luma blocks (replicated)
                pixels = inverse_blocks(planes[:, ::2, ::2])[:4 * h8, :4 * w8]
            else:
                pixels = inverse_blocks(planes)
            scores.append(psnr(pixels, reference[..., c]))
    else:
        assert not ours[64:].any(), "a grayscale JPEG has zero chroma"
    return scores


def random_boxes(height, width, rng, count=6):
    """Windows: the whole image, border-touching, a few pixels, strong down/up-scaling, non-integer."""
    boxes = [(0, 0, height, width), (height - 3, width - 2, 3, 2), (0, width // 3, max(1, height // 2), width - width // 3)]
    for _ in range(count):
        h = rng.uniform(1, height) if rng.random() < 0.7 else rng.uniform(1, min(height, 6))
        w = rng.uniform(1, width) if rng.random() < 0.7 else rng.uniform(1, min(width, 6))
        top, left = rng.uniform(0, height - h), rng.uniform(0, width - w)
        if rng.random() < 0.5:
            top, left, h, w = int(top), int(left), max(1, int(h)), max(1, int(w))
        boxes.append((top, left, h, w))
    return boxes


def encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def run_tool(arguments, data: bytes) -> bytes:
    return subprocess.run(arguments, input=data, stdout=subprocess.PIPE, check=True).stdout


@pytest.fixture(scope="module")
def generated(sample_jpegs):
    """Files of every subsampling, odd sizes with partial MCUs, grayscale and progressive."""
    with Image.open(sample_jpegs[0]) as source:
        rgb = source.convert("RGB")
    odd = rgb.crop((3, 5, 3 + 61, 5 + 45))  # 61 x 45: partial MCUs on both axes
    files = {
        "420_odd": encoded(odd, quality=90, subsampling=2),
        "422_odd": encoded(odd, quality=90, subsampling=1),
        "444_odd": encoded(odd, quality=95, subsampling=0),
        "gray_odd": encoded(odd.convert("L"), quality=90),
        "420_progressive": encoded(rgb, quality=85, subsampling=2, progressive=True),
        "tiny_420": encoded(rgb.crop((0, 0, 5, 3)), quality=90, subsampling=2),
    }
    ppm = io.BytesIO()
    odd.save(ppm, "PPM")
    for name, sample in (("440_odd", "1x2"), ("411_odd", "4x1")):
        files[name] = run_tool(["cjpeg", "-quality", "90", "-sample", sample], ppm.getvalue())
    files["422_jpegtran_progressive"] = run_tool(["jpegtran", "-progressive"], files["422_odd"])
    return files


LUMA_DB, CHROMA_DB = 40.0, 35.0


@pytest.mark.parametrize("subsampling", ["444", "420"])
@pytest.mark.parametrize("support", ["box", "image"])
def test_generated_files_match_pillow(generated, subsampling, support):
    rng = random.Random(7)
    worst = {}
    for name, data in generated.items():
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        for box in random_boxes(height, width, rng, count=3):
            grid = rng.choice([(28, 28), (3, 5), (1, 1), (7, 4)])
            scores = fidelity(data, box, grid, subsampling, support)
            assert scores[0] >= LUMA_DB, (name, box, grid, scores)
            assert min(scores[1:], default=99) >= CHROMA_DB, (name, box, grid, scores)
            worst[name] = min(worst.get(name, 99), *scores)
    assert len(worst) == len(generated)


def _photos(shared_data, count_per_kind=1):
    """Real photos of every subsampling in the shared corpus (MANIFEST.tsv), progressive ones included."""
    rows = [line.split("\t") for line in (shared_data / "MANIFEST.tsv").read_text().splitlines()[1:]]
    chosen, seen = [], {}
    for row in rows:
        if not row[0].startswith("photos/"):
            continue
        kind = (row[5], row[6])
        if seen.get(kind, 0) < count_per_kind:
            seen[kind] = seen.get(kind, 0) + 1
            chosen.append(shared_data / row[0])
    return chosen


def test_real_photos_match_pillow(shared_data):
    rng = random.Random(3)
    photos = _photos(shared_data)
    kinds = set()
    luma, chroma = [], []
    for path in photos:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            kinds.add(image.info.get("progressive", 0))
        for box in random_boxes(height, width, rng, count=2):
            for subsampling, support in (("444", "box"), ("420", "image")):
                scores = fidelity(data, box, (28, 28), subsampling, support)
                luma.append(scores[0])
                chroma.extend(scores[1:])
                assert scores[0] >= LUMA_DB and min(scores[1:], default=99) >= CHROMA_DB, (path.name, box, scores)
    assert len(photos) >= 5 and kinds == {0, 1}  # several subsamplings, baseline and progressive
    assert np.median(luma) > 50 and np.median(chroma) > 50  # measured: ~57 dB (float vs integer IDCT, uint8)


def test_upscale_100x_and_one_pixel_windows(sample_jpegs):
    data = open(sample_jpegs[1], "rb").read()
    image = pillow_ycbcr(data)
    height, width = image.size[1], image.size[0]
    for box in [(10, 20, 2.24, 2.24), (height - 1, width - 1, 1, 1), (0, 0, 1, 1), (5.5, 7.25, 0.5, 0.75)]:
        for support in ("box", "image"):
            scores = fidelity(data, box, (28, 28), "444", support)
            assert min(scores) >= CHROMA_DB and scores[0] >= LUMA_DB, (box, support, scores)
    # a 1-pixel window in box semantics is that pixel everywhere: a flat image, DC only
    out = funloader.read_fun(data, box=(3, 4, 1, 1), size=(4, 4), subsampling="444")
    assert np.allclose(out.reshape(3, 64, 16)[:, 1:], 0, atol=1e-3)
    ycbcr = np.asarray(image, np.float64)[3, 4]
    assert np.allclose(out.reshape(3, 64, 16)[:, 0] / 8 + 128, ycbcr[:, None], atol=1.0)


def test_int16_is_the_rounded_float(sample_jpegs):
    data = open(sample_jpegs[2], "rb").read()
    box = (4.5, 9.0, 100.25, 80.0)
    floats = funloader.read_fun(data, box=box, size=(6, 5))
    ints = funloader.read_fun(data, box=box, size=(6, 5), dtype=np.int16)
    assert ints.dtype == np.int16
    np.testing.assert_array_equal(ints, np.rint(floats).astype(np.int16))


def test_batch_equals_read_fun_bit_for_bit(sample_jpegs):
    rng = random.Random(11)
    paths = [str(p) for p in sample_jpegs[:6]] * 2
    sizes = codec.read_sizes(paths)
    boxes = []
    for height, width in sizes:
        h, w = rng.uniform(1, height), rng.uniform(1, width)
        boxes.append((rng.uniform(0, height - h), rng.uniform(0, width - w), h, w))
    for subsampling in ("420", "444"):
        for dtype in (np.float32, np.int16):
            batch = np.full((len(paths), 192, 7, 9), 99, dtype)
            errors = funloader.read_batch(paths, batch, boxes=np.array(boxes), subsampling=subsampling, threads=3)
            assert errors == [None] * len(paths)
            for i, path in enumerate(paths):
                single = funloader.read_fun(path, box=boxes[i], size=(7, 9), subsampling=subsampling, dtype=dtype)
                np.testing.assert_array_equal(batch[i], single)
    # boxes as a list and as a torch tensor
    torch = pytest.importorskip("torch")
    as_list = np.zeros((len(paths), 192, 7, 9), np.float32)
    as_tensor = torch.zeros((len(paths), 192, 7, 9))
    funloader.read_batch(paths, as_list, boxes=[list(b) for b in boxes])
    funloader.read_batch(paths, as_tensor, boxes=torch.tensor(boxes, dtype=torch.float64))
    np.testing.assert_array_equal(as_list, as_tensor.numpy())


def test_maps_and_affine_apply_to_the_resized_grid(sample_jpegs):
    paths = [str(p) for p in sample_jpegs[:3]]
    boxes = [(0, 0, 50, 60), (10, 10, 80, 40), (2.5, 3.5, 30, 30)]
    plain = np.zeros((3, 192, 4, 6), np.float32)
    funloader.read_batch(paths, plain, boxes=boxes)
    rng = np.random.default_rng(0)
    rows = np.array([[3, 2, 1, 0], [0, -1, 1, 2], [1, 1, 3, 3]], np.int32)
    cols = np.array([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5], [-1, 0, 2, 2, 5, 1]], np.int32)
    gain = rng.uniform(-2, 2, (3, 192)).astype(np.float32)
    bias = rng.uniform(-1, 1, 192).astype(np.float32)
    mapped = np.zeros_like(plain)
    funloader.read_batch(paths, mapped, boxes=boxes, row_maps=rows, col_maps=cols, gain=gain, bias=bias)
    for n in range(3):
        expected = np.zeros((192, 4, 6), np.float32)
        for y in range(4):
            for x in range(6):
                if rows[n, y] >= 0 and cols[n, x] >= 0:
                    expected[:, y, x] = plain[n, :, rows[n, y], cols[n, x]]
        expected = expected * gain[n][:, None, None] + bias[:, None, None]
        np.testing.assert_allclose(mapped[n], expected, rtol=1e-6, atol=1e-4)


def test_grayscale_chroma_is_bias(generated):
    data = generated["gray_odd"]
    out = np.zeros((1, 192, 2, 2), np.float32)
    bias = np.arange(192, dtype=np.float32)
    funloader.read_batch([data], out, boxes=[(0, 0, 10, 10)], gain=np.ones((1, 192), np.float32), bias=bias)
    np.testing.assert_array_equal(out[0, 64:], np.broadcast_to(bias[64:, None, None], (128, 2, 2)))


@pytest.mark.parametrize("box", [(0, 0, 0, 10), (0, 0, 10, -1), (-1, 0, 5, 5), (0, 0, 10_000, 5), (0, 630, 5, 11),
                                 (float("nan"), 0, 5, 5), (0, 0, float("inf"), 5)])
def test_bad_boxes_name_the_item(sample_jpegs, box):
    path = str(sample_jpegs[0])
    good = (0, 0, 5, 5)
    with pytest.raises(ValueError, match=r"boxes\[1\]") as caught:
        funloader.read_batch([path, path], np.zeros((2, 192, 2, 2), np.float32), boxes=[good, box])
    assert isinstance(caught.value, UsageError)
    with pytest.raises(ValueError, match="box"):
        funloader.read_fun(path, box=box, size=(2, 2))


def test_bad_arguments(sample_jpegs):
    path = str(sample_jpegs[0])
    with pytest.raises(UsageError, match="subsampling"):
        funloader.read_fun(path, box=(0, 0, 5, 5), size=(2, 2), subsampling="422")
    with pytest.raises(UsageError, match="support"):
        funloader.read_fun(path, box=(0, 0, 5, 5), size=(2, 2), support="edge")
    with pytest.raises(UsageError, match="size"):
        funloader.read_fun(path, box=(0, 0, 5, 5))
    with pytest.raises(UsageError, match="shape"):
        funloader.read_batch([path], np.zeros((1, 192, 2, 2), np.float32), boxes=[(0, 0, 5, 5)] * 2)


def test_read_sizes(sample_jpegs, tmp_path):
    paths = [str(p) for p in sample_jpegs]
    sizes = codec.read_sizes(paths, threads=2)
    assert sizes.dtype == np.int64 and sizes.shape == (len(paths), 2)
    for path, (height, width) in zip(paths, sizes):
        with Image.open(path) as image:
            assert image.size == (width, height)
    bad = tmp_path / "not.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(JPEGDecodeError, match="not.jpg"):
        codec.read_sizes([paths[0], str(bad)])
    with pytest.raises(FileNotFoundError):
        codec.read_sizes([str(tmp_path / "missing.jpg")])
    assert codec.read_sizes([]).shape == (0, 2)


def test_corrupt_file_in_a_boxed_batch_is_reported_not_raised(sample_jpegs):
    data = open(sample_jpegs[0], "rb").read()
    out = np.full((2, 192, 3, 3), 7, np.float32)
    errors = funloader.read_batch([data, data[: len(data) // 3]], out, boxes=[(0, 0, 20, 20)] * 2)
    assert errors[0] is None and isinstance(errors[1], JPEGDecodeError)
    assert not out[1].any()


def test_baseline_and_avx2_paths_give_the_same_bits(sample_jpegs, tmp_path):
    """The kernel's SSE2 build (FUNLOADER_SIMD=sse2) and its AVX2 build use the same operations in the same
    order (no fused multiply-add), so every CPU gives the same tensors."""
    paths = [str(p) for p in sample_jpegs[:4]]
    boxes = [(1.5, 2.0, 40.0, 60.5), (0, 0, 100, 100), (10, 20, 3, 2), (5, 5, 50, 30)]
    script = (
        "import sys, numpy as np, funloader\n"
        "paths, boxes, target = eval(sys.argv[1]), eval(sys.argv[2]), sys.argv[3]\n"
        "out = np.zeros((len(paths), 192, 5, 6), np.float32)\n"
        "funloader.read_batch(paths, out, boxes=boxes, subsampling='444')\n"
        "np.save(target, out)\n"
        "print(funloader.codec._jpegdct.resize_simd())\n")
    results = {}
    for simd in ("sse2", "native"):
        environment = dict(os.environ, FUNLOADER_SIMD=simd)
        target = tmp_path / f"{simd}.npy"
        run = subprocess.run([sys.executable, "-c", script, repr(paths), repr(boxes), str(target)], env=environment,
                             stdout=subprocess.PIPE, check=True, text=True)
        results[run.stdout.strip()] = np.load(target)
    assert "sse2" in results
    for array in results.values():
        np.testing.assert_array_equal(array, results["sse2"])


def test_every_edge_file_gives_a_crop_or_a_typed_error(shared_data):
    """The shared hostile/odd corpus (edge/: truncated, CMYK, odd factors, 4:1:0, tiny, huge...) through
    read_sizes and read_batch(boxes=), strict and lenient: every item is a crop or a typed error."""
    import warnings

    from funloader.errors import JPEGDecodeError

    files = sorted(str(p) for p in (shared_data / "edge").rglob("*") if p.is_file())
    assert len(files) > 50
    crops = 0
    for path in files:
        try:
            (height, width), = codec.read_sizes([path], max_pixels=50_000_000)
        except (JPEGDecodeError, OSError):
            continue
        boxes = [(0, 0, height, width), (height / 3, width / 4, height / 2, max(width / 3, 0.5))]
        for strict in (True, False):
            out = np.zeros((2, 192, 3, 2), np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                errors = funloader.read_batch([path, path], out, boxes=boxes, strict=strict, subsampling="444",
                                              max_pixels=50_000_000)
            for error, item in zip(errors, out):
                assert error is None or isinstance(error, (JPEGDecodeError, OSError)), (path, error)
                assert np.isfinite(item).all()
                crops += error is None
    assert crops > 50
