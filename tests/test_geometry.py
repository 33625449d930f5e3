"""Block-exact geometry: rotations/transposes equal jpegtran's lossless transforms coefficient for
coefficient; erasing and translation equal the pixel operations on 8-aligned boxes."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

import funloader
from funloader import transforms as T
from funloader.errors import UsageError
from pixel_reference import JPEGTRAN_OPS, fun_to_planes, photos, psnr, rgb_to_ycbcr, ycbcr_to_rgb


def _jpegtran(args, source, target):
    subprocess.run(["jpegtran", *args.split(), "-outfile", str(target), str(source)], check=True, timeout=60)


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:2:2", "4:4:0", "4:4:4"])
def test_rotations_and_transposes_equal_jpegtran(shared_data, tmp_path, subsampling):
    source = photos(shared_data, subsampling, limit=1)[0]
    aligned = tmp_path / "aligned.jpg"
    _jpegtran("-crop 256x176+0+0", source, aligned)  # whole MCUs (16x16 covers every sampling), non-square
    original = funloader.read_fun(str(aligned))
    assert original.shape == (192, 22, 32)
    for args, ours in JPEGTRAN_OPS.items():
        rotated = tmp_path / "rotated.jpg"
        _jpegtran(args, aligned, rotated)  # perfect transform: the sizes are MCU multiples
        expected = funloader.read_fun(str(rotated))
        result = ours(original)
        assert result.dtype == np.int16
        np.testing.assert_array_equal(result, expected, err_msg=f"{source.name} {args}")
        # dequantised too (jpegtran transposes the quantisation tables along with the coefficients)
        np.testing.assert_array_equal(ours(funloader.read_fun(str(aligned), dequantize=True)),
                                      funloader.read_fun(str(rotated), dequantize=True))


def test_random_rotation_per_item(shared_data):
    paths = photos(shared_data, "4:2:0", limit=6)
    batch = np.empty((6, 192, 12, 12), np.float32)
    funloader.read_batch([str(p) for p in paths], batch, dequantize=True)
    x = torch.from_numpy(batch)
    out = T.RandomRotation()(x, torch.Generator().manual_seed(1))
    angles = T.RandomRotation().angles(6, torch.Generator().manual_seed(1))
    assert len(set(angles.tolist())) > 1
    for item, angle in enumerate(angles.tolist()):
        torch.testing.assert_close(out[item], T.rotate(x[item], angle), rtol=0, atol=0)
        # pixel check: the inverse DCT of the rotated coefficients is the rotated image
        np.testing.assert_allclose(fun_to_planes(out[item].numpy()),
                                   np.rot90(fun_to_planes(batch[item]), k=-angle // 90, axes=(1, 2)), atol=1e-3)
    with pytest.raises(UsageError, match="multiples of 90"):
        T.RandomRotation(degrees=(0, 45))


def test_erase_and_translate_equal_pixel_operations(shared_data):
    path = photos(shared_data, "4:4:4", limit=1)[0]
    x = funloader.read_fun(str(path), dequantize=True)[:, :10, :12]
    pixels = fun_to_planes(x)
    erased = fun_to_planes(T.erase(x, 2, 3, 4, 5, fill=(200, 90, 140)))
    expected = pixels.copy()
    fill = rgb_to_ycbcr(np.array([200.0, 90.0, 140.0])[:, None, None])  # torchvision erase(v=fill), in YCbCr
    expected[:, 16:48, 24:64] = fill
    np.testing.assert_allclose(erased, expected, atol=1e-3)
    moved = fun_to_planes(T.translate(x, -2, 3))
    expected = np.full_like(pixels, 128.0)  # affine(translate=(24, -16), fill=128)
    expected[:, :64, 24:] = pixels[:, 16:, :72]
    np.testing.assert_allclose(moved, expected, atol=1e-3)


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:0"])
def test_erase_pixels_equals_the_pixel_erase(shared_data, subsampling):
    """A box on the pixel grid that no block edge aligns with: equal to torchvision's ``erase`` of our
    float decode (the edge blocks went through the inverse DCT and back), and to the same erase of
    Pillow's decode (4:4:4: both sides see the same pixels) >= 45 dB where the decode does not clamp."""
    from PIL import Image

    path = photos(shared_data, subsampling, limit=1)[0]
    x = funloader.read_fun(str(path), dequantize=True)[:, :10, :12]
    pixels = fun_to_planes(x)
    fill = (200, 90, 140)
    for top, left, height, width in ((13, 21, 37, 50), (0, 0, 5, 3), (3, 90, 77, 6), (16, 24, 32, 40)):
        erased = T.erase_pixels(x, top, left, height, width, fill=fill)
        assert erased.dtype == np.float32 and erased.shape == x.shape
        expected = pixels.copy()
        expected[:, top:top + height, left:left + width] = rgb_to_ycbcr(np.array(fill, np.float64)[:, None, None])
        np.testing.assert_allclose(fun_to_planes(erased), expected, atol=2e-3, err_msg=str((top, left, height, width)))
        untouched = np.ones((10, 12), bool)
        untouched[top // 8:-(-(top + height) // 8), left // 8:-(-(left + width) // 8)] = False
        np.testing.assert_array_equal(erased[:, untouched], x[:, untouched])  # blocks the box misses are not rewritten
    if subsampling == "4:4:4":
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), np.float64)[:80, :96].transpose(2, 0, 1)
        rgb[:, 13:50, 21:71] = np.array(fill, np.float64)[:, None, None]  # torchvision erase(v=fill)
        ours = fun_to_planes(T.erase_pixels(torch.from_numpy(x).double(), 13, 21, 37, 50, fill=fill).numpy())
        decode_ok = np.all((ycbcr_to_rgb(ours) >= -0.5) & (ycbcr_to_rgb(ours) <= 255.5), axis=0)
        assert psnr(ours, rgb_to_ycbcr(rgb), decode_ok) >= 45.0
    aligned = T.erase_pixels(x, 16, 24, 32, 40, fill=fill)  # whole blocks: the block erase
    np.testing.assert_allclose(aligned, T.erase(x, 2, 3, 4, 5, fill=fill), atol=1e-3)
    with pytest.raises(UsageError, match="pixel grid"):
        T.erase_pixels(x, 70, 0, 20, 5)
    with pytest.raises(UsageError, match="dequantised float"):
        T.erase_pixels(funloader.read_fun(str(path))[:, :10, :12], 1, 1, 3, 3)


def test_random_erasing_with_pixel_boxes():
    x = torch.randn(12, 192, 7, 9, dtype=torch.float64) * 40
    erasing = T.RandomErasing(p=0.8, fill=(10, 200, 30), pixel_boxes=True)
    assert not erasing.integer_exact and "pixel_boxes=True" in repr(erasing)
    out = erasing(x, torch.Generator().manual_seed(5))
    boxes = erasing.boxes(12, (56, 72), torch.Generator().manual_seed(5))  # torchvision's rule on the pixel grid
    assert (boxes[:, 2] > 0).sum() > 5 and (boxes % 8 != 0).any()
    for item, box in enumerate(boxes.tolist()):
        expected = T.erase_pixels(x[item], *box, fill=(10, 200, 30)) if box[2] else x[item]
        torch.testing.assert_close(out[item], expected, rtol=0, atol=0)
    with pytest.raises(UsageError, match="192 channels"):
        erasing(x[:, :64], torch.Generator().manual_seed(5))


def test_random_erasing_and_translate_draws(shared_data):
    x = torch.randn(16, 192, 14, 14)
    erasing = T.RandomErasing(p=0.7, fill=128)
    out = erasing(x, torch.Generator().manual_seed(3))
    boxes = erasing.boxes(16, (14, 14), torch.Generator().manual_seed(3))
    assert (boxes[:, 2] > 0).sum() > 5
    for item, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = x[item].clone()
        expected[:, top:top + h, left:left + w] = 0
        assert torch.equal(out[item], expected)
        area = h * w / 196
        assert h == 0 or 0.02 * 0.5 <= area <= 0.33 * 1.5
    translate = T.RandomTranslate(3)
    assert translate.plannable
    fused = T.Compose([translate, T.RandomHorizontalFlip()])
    a = fused(x, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    b = T.RandomHorizontalFlip()(translate(x, generator), generator)
    assert torch.equal(a, b)  # the plan and the direct path draw and move the same


def test_geometry_on_cuda_same_draws():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.randn(8, 192, 6, 6)
    for transform in (T.RandomRotation(), T.RandomErasing(p=1.0), T.RandomErasing(p=1.0, pixel_boxes=True),
                      T.RandomTranslate(2), T.RandomTranspose()):
        cpu = transform(x, torch.Generator().manual_seed(0))
        gpu = transform(x.cuda(), torch.Generator().manual_seed(0))
        torch.testing.assert_close(gpu.cpu(), cpu)


def test_bad_arguments():
    with pytest.raises(UsageError, match="not exact"):
        T.rotate(torch.zeros(192, 2, 2), 45)
    with pytest.raises(UsageError, match="not inside"):
        T.erase(torch.zeros(192, 2, 2), 1, 1, 2, 2)
    with pytest.raises(UsageError, match="square"):
        T.RandomRotation(degrees=90)(torch.zeros(2, 192, 2, 3))
    with pytest.raises(UsageError, match="channel"):
        T.transpose(torch.zeros(192, 2, 2)[:10])
