"""Mixup / Cutmix on FUN coefficients equal their pixel-domain definitions (torchvision v2 semantics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import funloader
from funloader import transforms as T
from funloader.errors import UsageError
from funloader.mixing import copy_item
from pixel_reference import fun_to_planes, photos


@pytest.fixture(scope="module")
def batch(shared_data):
    paths = photos(shared_data, "4:2:0", limit=4)
    assert len(paths) == 4
    out = np.empty((4, 192, 16, 16), np.float32)
    assert funloader.read_batch([str(p) for p in paths], out, dequantize=True) == [None] * 4
    return torch.from_numpy(out)


def _pixels(x):
    return np.stack([fun_to_planes(item) for item in np.asarray(x)])


def test_mixup_equals_pixel_mix(batch):
    generator = torch.Generator().manual_seed(3)
    mixed, targets = T.Mixup(num_classes=5, alpha=0.4)(batch, torch.tensor([0, 1, 2, 3]), generator)
    generator = torch.Generator().manual_seed(3)
    torch.rand(1, generator=generator)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    lam = np.random.Generator(np.random.PCG64(seed)).beta(0.4, 0.4)
    pixels = _pixels(batch)
    expected = lam * pixels + (1 - lam) * np.roll(pixels, 1, axis=0)  # pixel-domain mixup
    np.testing.assert_allclose(_pixels(mixed), expected, atol=1e-3)
    # torchvision's soft targets: lam on the own class, 1-lam on the neighbour's
    for i in range(4):
        row = np.zeros(5)
        row[i] += lam
        row[(i - 1) % 4] += 1 - lam
        np.testing.assert_allclose(targets[i].numpy(), row, atol=1e-6)
    assert targets.dtype == torch.float32 and torch.allclose(targets.sum(1), torch.ones(4))


def test_cutmix_equals_pixel_paste_and_corrects_lambda(batch):
    for seed in range(6):
        generator = torch.Generator().manual_seed(seed)
        mixed, targets = T.Cutmix(num_classes=4, alpha=1.0)(batch, torch.arange(4), generator)
        changed = (mixed != batch).any(dim=(0, 1))  # (H8, W8) blocks that were pasted
        rows = torch.nonzero(changed.any(1)).flatten()
        cols = torch.nonzero(changed.any(0)).flatten()
        if rows.numel() == 0:
            assert torch.allclose(targets, torch.eye(4))
            continue
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        pixels = _pixels(batch)
        expected = pixels.copy()
        s = (slice(None), slice(None), slice(8 * top, 8 * bottom), slice(8 * left, 8 * right))
        expected[s] = np.roll(pixels, 1, axis=0)[s]  # pixel-domain paste of the 8-aligned box
        np.testing.assert_allclose(_pixels(mixed), expected, atol=1e-3)
        lam = 1 - (bottom - top) * (right - left) / (16 * 16)
        np.testing.assert_allclose(targets[1].numpy(), [1 - lam, lam, 0, 0], atol=1e-6)


def test_cutmix_box_follows_torchvision_rule():
    generator = torch.Generator().manual_seed(0)
    (top, left, bottom, right), lam = T.cutmix_box(0.75, (28, 28), generator)
    generator = torch.Generator().manual_seed(0)
    r_x, r_y = int(torch.randint(28, (1,), generator=generator)), int(torch.randint(28, (1,), generator=generator))
    half = int(0.5 * math.sqrt(0.25) * 28)
    assert (top, left, bottom, right) == (max(r_y - half, 0), max(r_x - half, 0), min(r_y + half, 28), min(r_x + half, 28))
    assert lam == pytest.approx(1 - (bottom - top) * (right - left) / 784)


def test_mixing_probability_label_smoothing_and_soft_inputs(batch):
    x, targets = T.Mixup(num_classes=4, p=0.0, label_smoothing=0.1)(batch, torch.arange(4), torch.Generator().manual_seed(0))
    assert torch.equal(x, batch)
    np.testing.assert_allclose(targets.numpy(), 0.9 * np.eye(4) + 0.025, atol=1e-7)
    # soft targets from a first mixing step pass through a second one and stay distributions
    _, soft = T.Cutmix(num_classes=4)(batch, torch.arange(4), torch.Generator().manual_seed(1))
    _, twice = T.Mixup(num_classes=4)(batch, soft, torch.Generator().manual_seed(2))
    assert torch.allclose(twice.sum(1), torch.ones(4))
    # RandomMixing picks one per batch, deterministically for a seed
    choice = T.RandomMixing([T.Mixup(num_classes=4), T.Cutmix(num_classes=4)])
    a = choice(batch, torch.arange(4), torch.Generator().manual_seed(5))
    b = choice(batch, torch.arange(4), torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mixing_bad_arguments_are_named(batch):
    with pytest.raises(UsageError, match="label 7"):
        T.Mixup(num_classes=4)(batch, torch.tensor([0, 1, 2, 7]))
    with pytest.raises(UsageError, match="alpha"):
        T.Cutmix(num_classes=4, alpha=0)
    with pytest.raises(UsageError, match="batch"):
        T.Mixup(num_classes=4)(batch[0], torch.tensor([0]))
    with pytest.raises(UsageError, match="3 labels"):
        T.Mixup(num_classes=4)(batch, torch.tensor([0, 1, 2]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixing_same_draws_on_cuda(batch):
    for transform in (T.Mixup(num_classes=4), T.Cutmix(num_classes=4)):
        cpu = transform(batch, torch.arange(4), torch.Generator().manual_seed(9))
        gpu = transform(batch.cuda(), torch.arange(4).cuda(), torch.Generator().manual_seed(9))
        torch.testing.assert_close(gpu[0].cpu(), cpu[0])
        torch.testing.assert_close(gpu[1].cpu(), cpu[1])


@pytest.mark.parametrize("kind", ["Mixup", "Cutmix"])
def test_in_place_mixing_equals_the_new_batch(batch, kind):
    """``in_place=True`` overwrites the batch tensor with exactly the values of the default (new batch)."""
    for seed in range(4):
        source = batch.to(torch.float32)
        expected, expected_targets = getattr(T, kind)(num_classes=4)(source, torch.arange(4), torch.Generator().manual_seed(seed))
        work = source.clone()
        out, targets = getattr(T, kind)(num_classes=4, in_place=True)(work, torch.arange(4), torch.Generator().manual_seed(seed))
        assert out.data_ptr() == work.data_ptr()
        assert torch.equal(out, expected) and torch.equal(targets, expected_targets)
        assert not torch.equal(out, source)  # it did mix


@pytest.mark.parametrize("kind", ["Mixup", "Cutmix", "RandomMixing"])
def test_item_by_item_mixing_equals_the_call(batch, kind):
    """What a loader does piece by piece: ``choose`` (the call's draws), ``mix_item`` from the last
    item to the first with a copy of the original last item, ``soft_targets``: the same values as
    calling the transform on the whole batch (bit-equal), also into another tensor (``out=``), on a
    grid whose item size is not a multiple of 16."""
    transforms = {"Mixup": T.Mixup(num_classes=4, alpha=0.7), "Cutmix": T.Cutmix(num_classes=4),
                  "RandomMixing": T.RandomMixing([T.Mixup(num_classes=4), T.Cutmix(num_classes=4)])}
    source = torch.cat([batch, batch.flip(-1)])[:, :, :15, :13].to(torch.float32).contiguous()
    labels = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    chosen = set()
    for seed in range(6):
        expected, expected_targets = transforms[kind](source, labels, torch.Generator().manual_seed(seed))
        mixing, params = transforms[kind].choose((15, 13), torch.Generator().manual_seed(seed))
        chosen.add(type(mixing).__name__)
        work = source.clone()
        last = torch.empty_like(work[-1])
        copy_item(last, work[-1])
        into = torch.empty_like(work)
        if params["apply"]:
            mixing.mix_item(work[0], work[-1], params, out=into[0])  # into another tensor, as a loader does
            mixing.mix_item(work[1:], work[:-1], params, out=into[1:])  # a run of items in one call
            for i in range(work.shape[0] - 1, 0, -1):  # in place, last to first
                mixing.mix_item(work[i], work[i - 1], params)
            mixing.mix_item(work[0], last, params)
            assert torch.equal(into, expected)
        assert torch.equal(work, expected)
        assert torch.equal(mixing.soft_targets(labels, params), expected_targets)
    assert len(chosen) == (2 if kind == "RandomMixing" else 1)
