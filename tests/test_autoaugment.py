"""RandAugment / TrivialAugmentWide over the exact ops, and the JPEG-only dropouts, against pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import funloader
from funloader import transforms as T
from funloader.errors import UsageError
from PIL import Image

from pixel_reference import (block_lowpass, fun_to_planes, photos, policy_seed, psnr, rgb_to_ycbcr, tv_apply_op,
                             tv_randaugment_magnitude, ycbcr_to_rgb)


@pytest.fixture(scope="module")
def batch(shared_data):
    paths = photos(shared_data, "4:4:4", limit=8)
    out = np.empty((8, 192, 12, 12), np.float64)
    buffer = np.empty((8, 192, 12, 12), np.float32)
    assert funloader.read_batch([str(p) for p in paths], buffer, dequantize=True) == [None] * 8
    out[:] = buffer
    return torch.from_numpy(out)


def _pixel_policy(planes, ops, magnitudes, names, fill_rgb=0.0):
    """torchvision's op sequence on float RGB pixels, without clamps; translations by whole blocks."""
    rgb = ycbcr_to_rgb(planes)
    for op, m in zip(ops, magnitudes):
        name = names[op]
        if name.startswith("Translate"):
            m = 8 * int(round(int(m) / 8))
        rgb = tv_apply_op(rgb, name, m, fill_rgb, clamp=False)
    return rgb_to_ycbcr(rgb)


@pytest.mark.parametrize("policy", [T.RandAugment(2, 9), T.RandAugment(3, 25, fill=(255, 0, 0)), T.TrivialAugmentWide()])
def test_policy_equals_torchvision_ops_in_pixels(batch, policy):
    out = policy(batch, torch.Generator().manual_seed(7))
    params = policy.params(8, (12, 12), torch.Generator().manual_seed(7))
    drawn = {policy.ops[int(op)] for op, _ in params for op in op}
    assert {"Brightness", "Contrast", "TranslateX"} <= drawn or {"Color", "TranslateY"} <= drawn, drawn
    fill = np.asarray(policy.fill, np.float64).reshape(-1, 1, 1)
    for item in range(8):
        ops = [int(op[item]) for op, _ in params]
        magnitudes = [float(m[item]) for _, m in params]
        expected = _pixel_policy(fun_to_planes(batch[item].numpy()), ops, magnitudes, policy.ops, fill)
        assert psnr(fun_to_planes(out[item].numpy()), expected) >= 100.0, (item, ops, magnitudes)


def test_magnitude_tables_follow_torchvision():
    params = T.RandAugment(1, 9, ops=["Brightness"]).params(64, (28, 28), torch.Generator().manual_seed(0))
    assert set(np.round(np.abs(params[0][1].numpy()), 6)) == {round(0.9 * 9 / 30, 6)}
    assert set(np.sign(params[0][1].numpy())) == {-1.0, 1.0}
    wide = T.TrivialAugmentWide(ops=["TranslateX"]).params(256, (28, 28), torch.Generator().manual_seed(0))
    assert np.abs(wide[0][1].numpy()).max() <= 32.0 and len(set(np.abs(wide[0][1].numpy()))) > 10
    with pytest.raises(UsageError, match="Solarize"):
        T.RandAugment(ops=["Solarize"])
    with pytest.raises(UsageError, match="magnitude"):
        T.RandAugment(2, 31)


def test_frequency_and_chroma_dropout_in_pixels(batch):
    x = batch[:2]
    flat = fun_to_planes(T.drop_frequencies(x, 1)[0].numpy())  # keep the DC only: every block is its mean
    pixels = fun_to_planes(x[0].numpy())
    means = pixels.reshape(3, 12, 8, 12, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(flat, np.repeat(np.repeat(means, 8, 1), 8, 2), atol=1e-6)
    chroma_flat = fun_to_planes(T.drop_chroma(x, 1)[0].numpy())
    np.testing.assert_allclose(chroma_flat[0], pixels[0], atol=1e-9)  # luma untouched
    np.testing.assert_allclose(chroma_flat[1:], np.repeat(np.repeat(means[1:], 8, 1), 8, 2), atol=1e-6)
    # the random classes: per-item keep counts, the same draws through channel_affine
    dropout = T.FrequencyDropout(p=0.8, keep=(4, 20))
    out = dropout(x.float(), torch.Generator().manual_seed(1))
    gain, bias = dropout.channel_affine(2, torch.Generator().manual_seed(1))
    assert not bias.any()
    torch.testing.assert_close(out, x.float() * gain.float()[:, :, None, None])
    raw = (x * 0.1).to(torch.int16)
    assert T.ChromaDropout(p=1.0)(raw).dtype == torch.int16


def test_policy_draws_do_not_depend_on_threads(batch):
    policy = T.RandAugment(2, 9, ops=T.RANDAUGMENT_OPS + T.JPEG_OPS)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(policy(batch.float(), torch.Generator().manual_seed(3)))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_policy_same_draws_on_cuda(batch):
    policy = T.RandAugment(2, 9, ops=T.RANDAUGMENT_OPS + T.JPEG_OPS)
    cpu = policy(batch.float(), torch.Generator().manual_seed(3))
    gpu = policy(batch.float().cuda(), torch.Generator().manual_seed(3))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-3)


def test_loader_with_policy_equals_the_policy_then_normalisation(shared_data):
    from funloader.loader import DCTLoader, _batch_seed

    samples = [(str(p), i % 2) for i, p in enumerate(photos(shared_data, "4:2:0", limit=8))]
    stats = (np.linspace(-10, 10, 192), np.linspace(1, 20, 192))
    pipeline = T.Compose([T.RandomResizedCrop(16, mode="nearest"), T.RandomHorizontalFlip(),
                          T.RandAugment(2, 15, ops=T.RANDAUGMENT_OPS + T.JPEG_OPS)])
    loader = DCTLoader(samples, batch_size=8, size=16, transform=pipeline, normalize=stats, seed=4, chunk_size=4)
    x, _ = next(iter(loader))
    buffer = torch.empty((8, 192, 16, 16))
    loader.decode(list(range(8)), buffer)
    generator = torch.Generator().manual_seed(_batch_seed(4, 0, 0, 0))
    stepwise = torch.cat([pipeline(buffer[i:i + 4].double(), generator) for i in (0, 4)])
    torch.testing.assert_close(x, T.normalize(stepwise, *stats).float(), rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("in_place", [False, True])
def test_policy_on_a_normalised_batch_equals_policy_then_normalisation(batch, in_place):
    """``split(normalization=)`` on ``y = scale * x + shift``: fill, contrast mean, dropped channels
    and the trailing colour map carried over, so ``normalise(policy(x)) == policy_normalised(normalise(x))``."""
    from funloader.channels import normalization_affine

    scale, shift = (torch.from_numpy(v).to(torch.float64) for v in
                    normalization_affine(np.linspace(-30, 30, 192), np.linspace(0.5, 40, 192)))
    policy = T.RandAugment(3, 20, ops=T.RANDAUGMENT_OPS + T.JPEG_OPS, fill=(250, 10, 60))
    for seed in range(4):
        moved, gain, bias = policy.split(batch, torch.Generator().manual_seed(seed))
        expected = moved * scale[:, None, None] + shift[:, None, None]
        if gain is not None:
            expected = (moved * gain[:, :, None, None] + bias[:, :, None, None]) * scale[:, None, None] + shift[:, None, None]
        y = batch * scale[:, None, None] + shift[:, None, None]
        moved_y, gain_y, bias_y = policy.split(y, torch.Generator().manual_seed(seed),
                                               normalization=(scale, shift), in_place=in_place)
        if in_place:  # shifted inside y's memory
            assert moved_y.data_ptr() == y.data_ptr()
        out = moved_y if gain_y is None else moved_y * gain_y[:, :, None, None] + bias_y[:, :, None, None]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("normalized", [False, True])
def test_fused_policy_equals_the_policy(batch, normalized):
    """``fused(drawn)`` as a decode would do it (block maps with -1 = a zero block, then ``x * gain +
    bias`` per item and channel, then the normalisation) followed by ``FusedPolicy.finish`` equals
    the policy itself with the same draws (float64: to 1e-9), including items whose contrast
    precedes a shift (``rolled``) and, with three rounds, items with a contrast between two shifts
    (``slow``)."""
    from funloader.channels import normalization_affine

    scale = shift = None
    if normalized:
        scale, shift = (torch.from_numpy(v).to(torch.float64) for v in
                        normalization_affine(np.linspace(-30, 30, 192), np.linspace(0.5, 40, 192)))
    seen = {"rolled": 0, "slow": 0, "fills": 0}
    policies = [T.RandAugment(2, 9), T.RandAugment(3, 20, ops=T.RANDAUGMENT_OPS + T.JPEG_OPS, fill=(250, 10, 60)),
                T.TrivialAugmentWide(fill=17), T.RandAugment(3, 20, ops=("Contrast", "TranslateX", "TranslateY"))]
    for policy in policies:
        for seed in range(6):
            expected = policy(batch, torch.Generator().manual_seed(seed))
            drawn = policy.params(batch.shape[0], tuple(batch.shape[-2:]), torch.Generator().manual_seed(seed))
            fused = policy.fused(drawn, tuple(batch.shape[-2:]))
            rows, cols = fused.rows, fused.cols
            moved = batch[torch.arange(batch.shape[0])[:, None, None, None], torch.arange(192)[None, :, None, None],
                          rows.clamp(min=0)[:, None, :, None], cols.clamp(min=0)[:, None, None, :]]
            moved = moved * ((rows >= 0)[:, None, :, None] & (cols >= 0)[:, None, None, :])
            decoded = moved * fused.gain[:, :, None, None] + fused.bias[:, :, None, None]
            if normalized:
                decoded = decoded * scale[:, None, None] + shift[:, None, None]
                expected = expected * scale[:, None, None] + shift[:, None, None]
            for start in (0, 4):  # in two pieces, as the loader finishes them
                fused.finish(decoded[start:start + 4], (scale, shift) if normalized else None, start)
            torch.testing.assert_close(decoded, expected, rtol=0, atol=1e-9)
            seen["rolled"] += int(fused.rolled.sum())
            seen["slow"] += int(fused.slow.sum())
            seen["fills"] += int(((rows < 0).any(1) | (cols < 0).any(1)).sum())
    assert seen["rolled"] > 0 and seen["slow"] > 0 and seen["fills"] > 0, seen


# ---------------------------------------------------------------- each op against torchvision on Pillow's decode
WINDOW = 24  # blocks: a 192x192 px window of each photo


@pytest.fixture(scope="module")
def pillow_pairs(shared_data):
    """4 photos as ``(name, (1, 192, 24, 24) float64 coefficients, (3, 192, 192) Pillow RGB)``."""
    found = []
    for path in photos(shared_data, "4:4:4", limit=4):
        fun = funloader.read_fun(str(path), dequantize=True)[None, :, :WINDOW, :WINDOW]
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), np.float64)[:8 * WINDOW, :8 * WINDOW].transpose(2, 0, 1)
        found.append((path.name, torch.from_numpy(np.ascontiguousarray(fun)), rgb))
    assert len(found) == 4
    return found


def _through_policy(policy, fun, magnitude):
    """``policy`` (one op) on one item, with the seed whose draw is ``magnitude``."""
    return policy(fun, torch.Generator().manual_seed(policy_seed(policy, tuple(fun.shape[-2:]), magnitude)))


def _in_range(rgb, margin):
    return np.all((rgb >= -margin) & (rgb <= 255 + margin), axis=0)


OP_CASES = [(policy, name, sign) for policy in ("RandAugment(2, 9)", "TrivialAugmentWide extreme")
            for name in ("Brightness", "Color", "Contrast") for sign in (1.0, -1.0)] + [("RandAugment(2, 9)", "Identity", 1.0)]


def _policy_and_magnitude(kind, name, sign):
    wide = kind.startswith("Trivial")
    policy = T.TrivialAugmentWide(ops=[name]) if wide else T.RandAugment(1, 9, ops=[name])
    magnitude = tv_randaugment_magnitude(name, 31, 30 if wide else 9, (8 * WINDOW, 8 * WINDOW), wide)
    return policy, None if magnitude is None else sign * magnitude


@pytest.mark.parametrize("kind, name, sign", OP_CASES)
def test_policy_colour_ops_against_torchvision_on_pillow(pillow_pairs, kind, name, sign):
    """Each colour op of the policies, alone, at torchvision's magnitude (RandAugment(2, 9): bin 9 of 31;
    TrivialAugmentWide's largest, bin 30, both signs) against torchvision's ``_apply_op`` on Pillow's
    decode: >= 45 dB where nothing clamps, and equal (>= 100 dB) to the unclamped formula on our decode."""
    policy, magnitude = _policy_and_magnitude(kind, name, sign)
    covered = []
    for photo, fun, rgb in pillow_pairs:
        ours = fun_to_planes(_through_policy(policy, fun, magnitude)[0].numpy())
        decoded = ycbcr_to_rgb(fun_to_planes(fun[0].numpy()))
        formula = tv_apply_op(decoded, name, magnitude, clamp=False)
        assert psnr(ours, rgb_to_ycbcr(formula)) >= 100.0, photo
        nothing_clamps = _in_range(decoded, 0.5) & _in_range(formula, 0.0)
        covered.append(nothing_clamps.mean())
        assert psnr(ours, rgb_to_ycbcr(tv_apply_op(rgb, name, magnitude)), nothing_clamps) >= 45.0, photo
    assert np.mean(covered) > 0.3, covered


@pytest.mark.parametrize("kind", ["RandAugment(2, 9)", "TrivialAugmentWide extreme"])
@pytest.mark.parametrize("name", ["TranslateX", "TranslateY"])
def test_policy_translation_is_torchvisions_rounded_to_blocks(pillow_pairs, kind, name):
    """Translation on coefficients moves whole blocks: torchvision's ``int(m)`` pixels rounded to the
    nearest multiple of 8. Exact for that amount (the pixel translate of our decode; Pillow's decode
    >= 45 dB); against torchvision's un-rounded translate it is off by ``|rounded - int(m)|`` <= 4 px
    (0 at TrivialAugmentWide's 32 px extreme)."""
    for sign in (1.0, -1.0):
        policy, magnitude = _policy_and_magnitude(kind, name, sign)
        requested = int(magnitude)
        applied = 8 * int(round(requested / 8))
        assert abs(applied - requested) <= 4
        if kind.startswith("Trivial"):
            assert applied == requested == sign * 32
        else:
            assert (requested, applied) == (sign * 26, sign * 24)  # 150/331 * 192 px * 9/30 = 26.1 px
        for photo, fun, rgb in pillow_pairs:
            ours = fun_to_planes(_through_policy(policy, fun, magnitude)[0].numpy())
            decoded = ycbcr_to_rgb(fun_to_planes(fun[0].numpy()))
            np.testing.assert_allclose(ours, rgb_to_ycbcr(tv_apply_op(decoded, name, applied)), atol=1e-6, err_msg=photo)
            moved_rgb = tv_apply_op(rgb, name, applied)
            decode_ok = _in_range(tv_apply_op(decoded, name, applied), 0.5)
            assert psnr(ours, rgb_to_ycbcr(moved_rgb), decode_ok) >= 45.0, photo
            unrounded = psnr(ours, rgb_to_ycbcr(tv_apply_op(rgb, name, requested)))
            if applied == requested:
                assert unrounded >= 45.0, photo
            else:  # a real difference: content misplaced by 2 px
                assert unrounded < 40.0, (photo, unrounded)


@pytest.mark.parametrize("kind", ["RandAugment(2, 9)", "TrivialAugmentWide extreme"])
def test_policy_dropouts_equal_the_block_lowpass_of_pillows_decode(pillow_pairs, kind):
    """FrequencyDropout at magnitude m keeps the lowest ``64 - round(63 m)`` zigzag frequencies (m from
    linspace(0, 0.9, 31)), ChromaDropout the chroma DC: the pixel definition (block DCT, mask, inverse)
    of our decode exactly, of Pillow's decode >= 45 dB."""
    bin_index = 30 if kind.startswith("Trivial") else 9
    magnitude = float(np.linspace(0.0, 0.9, 31)[bin_index])
    keep = 64 - int(round(63 * magnitude))
    assert keep == (7 if bin_index == 30 else 47)
    make = (lambda ops: T.TrivialAugmentWide(ops=ops)) if bin_index == 30 else (lambda ops: T.RandAugment(1, 9, ops=ops))
    for name, magnitude_drawn, keeps in (("FrequencyDropout", magnitude, (keep, keep)), ("ChromaDropout", None, (64, 1))):
        policy = make([name])
        for photo, fun, rgb in pillow_pairs:
            ours = fun_to_planes(_through_policy(policy, fun, magnitude_drawn)[0].numpy())
            np.testing.assert_allclose(ours, block_lowpass(fun_to_planes(fun[0].numpy()), *keeps), atol=1e-6)
            decode_ok = _in_range(ycbcr_to_rgb(fun_to_planes(fun[0].numpy())), 0.5)
            assert psnr(ours, block_lowpass(rgb_to_ycbcr(rgb), *keeps), decode_ok) >= 45.0, (name, photo)
