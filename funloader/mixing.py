"""Batch mixing augmentations on FUN coefficients: ``Mixup`` and ``Cutmix`` with soft targets.

Both follow ``torchvision.transforms.v2.MixUp`` / ``CutMix`` (torchvision 0.16+): one mixing weight
``lam ~ Beta(alpha, alpha)`` per batch, each item mixed with its neighbour in the batch rolled by
one (``x.roll(1, 0)``), and the one-hot labels mixed with the same weight. Called as
``x, soft_targets = transform(x, y, generator)`` on a batch ``x`` ``(N, C, H8, W8)`` and labels ``y``
(``(N,)`` integers, or ``(N, num_classes)`` soft targets from an earlier mixing step).

Why they are exact in the DCT domain:

* Mixup is linear, and the inverse block DCT is linear: ``IDCT(lam*a + (1-lam)*b) = lam*IDCT(a) +
  (1-lam)*IDCT(b)`` for every block, DC level shift included (``lam + (1-lam) = 1``), so mixing
  coefficients is mixing pixels (before the pixel clamp, which a blend of two in-range images never
  reaches). It also commutes with normalisation ``x*scale + shift`` for the same reason, so it
  may run before or after ``Normalize``.
* Cutmix pastes whole 8x8 blocks, so the pasted coefficients are the pixels of the pasted box. The
  box is drawn with torchvision's rule on the block grid (centre ``r_x ~ U{0..W8-1}``, half-size
  ``int(0.5*sqrt(1-lam)*W8)`` blocks, clipped), and ``lam`` is corrected to the pasted area, as
  torchvision does: ``lam = 1 - box_area / (H8*W8)``.

Draws: ``lam`` comes from numpy's Beta sampler seeded by one draw of the given ``torch.Generator``
(torch has no generator-driven Beta), the box from the same generator; everything is drawn on the
CPU, so a seeded generator gives the same batch on CPU and CUDA tensors.

Label smoothing: ``label_smoothing=s`` replaces the one-hot targets by ``(1-s)*onehot + s/K`` before
mixing (as timm's ``Mixup`` does). Smoothing is linear, so this equals passing the unsmoothed mixed
targets to ``torch.nn.functional.cross_entropy(..., label_smoothing=s)``: use one of the two, not both.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from .errors import UsageError

__all__ = ["mixup", "cutmix", "cutmix_box", "mixup_item", "cutmix_item", "one_hot_targets", "Mixup", "Cutmix",
           "RandomMixing"]


def _as_tensor(x) -> Tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"expected a batch tensor or numpy array, got {type(x).__name__}")
    return x, False


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise UsageError(f"{name} works on a batch (N, C, H8, W8); got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise UsageError(f"{name}: empty batch")


def one_hot_targets(y, num_classes: int, label_smoothing: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """``(N, num_classes)`` targets from integer labels ``(N,)`` (or soft targets ``(N, num_classes)``,
    returned as ``dtype``), smoothed to ``(1-s)*onehot + s/num_classes``. A label outside
    ``0..num_classes-1`` raises ``UsageError`` naming it."""
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if y.ndim == 2:
        if y.shape[1] != num_classes:
            raise UsageError(f"soft targets have {y.shape[1]} classes, expected num_classes={num_classes}")
        return y.to(dtype)
    if y.ndim != 1 or y.is_floating_point():
        raise UsageError(f"labels must be (N,) integers or (N, {num_classes}) soft targets, got {tuple(y.shape)} {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][0]
        raise UsageError(f"label {int(bad)} is outside 0..{num_classes - 1} (num_classes={num_classes})")
    targets = torch.nn.functional.one_hot(y.long(), num_classes).to(dtype)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return targets


def _mix_targets(targets: torch.Tensor, lam: float) -> torch.Tensor:
    # torchvision: label.roll(1, 0).mul_(1 - lam).add_(label.mul(lam))
    return targets.roll(1, 0).mul_(1.0 - lam).add_(targets.mul(lam))


def mixup(x, lam: float, in_place: bool = False):
    """``lam * x + (1 - lam) * x.roll(1, 0)`` on a batch ``(N, C, H8, W8)``: exactly the pixel mix of
    the decoded items (the block DCT is linear). Integer input gives float32; numpy in, numpy out.
    ``in_place``: overwrite a float tensor ``x`` (same values, no new batch)."""
    t, was_numpy = _as_tensor(x)
    _check_batch(t, "mixup")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    elif in_place and not was_numpy and t.shape[0] > 1:  # last to first, each item from the previous one
        last = t[-1].clone()
        for i in range(t.shape[0] - 1, 0, -1):
            mixup_item(t[i], t[i - 1], lam)
        mixup_item(t[0], last, lam)
        return t
    # torchvision: batch.roll(1, 0).mul_(1.0 - lam).add_(batch.mul(lam)); here one pass without the
    # rolled copy: out[i] = t[i-1] + lam * (t[i] - t[i-1]) (equal up to float rounding; the same
    # elementwise formula as mixup_item, so the in-place and chunked versions give the same bits)
    out = torch.empty_like(t)
    torch.lerp(t[:-1], t[1:], float(lam), out=out[1:])
    torch.lerp(t[-1:], t[:1], float(lam), out=out[:1])
    return out.numpy() if was_numpy else out


def mixup_item(item: torch.Tensor, partner: torch.Tensor, lam: float, out: Optional[torch.Tensor] = None) -> None:
    """One item of :func:`mixup`: ``out = partner + lam * (item - partner)`` (``partner``: the original
    of the item before it, cyclically; ``out`` default ``item``, in place). Also for runs of items:
    ``item``, ``partner`` and ``out`` of the same shape (``out`` must not overlap ``partner``)."""
    torch.lerp(partner, item, float(lam), out=item if out is None else out)


def copy_item(out: torch.Tensor, item: torch.Tensor) -> None:
    """``out.copy_(item)``: one item of :func:`cutmix` with nothing pasted (or a saved partner)."""
    out.copy_(item)


def cutmix_item(item: torch.Tensor, partner: torch.Tensor, box: Tuple[int, int, int, int],
                out: Optional[torch.Tensor] = None) -> None:
    """One item of :func:`cutmix`: ``item`` with ``partner``'s block window ``box`` pasted, into ``out``
    (default ``item``, in place). Also for runs of items, as :func:`mixup_item`."""
    top, left, bottom, right = (int(v) for v in box)
    if out is not None:
        copy_item(out, item)
    else:
        out = item
    out[..., top:bottom, left:right] = partner[..., top:bottom, left:right]


def cutmix_box(lam: float, grid: Tuple[int, int], generator: Optional[torch.Generator] = None):
    """torchvision's ``CutMix`` box on the block grid ``(H8, W8)``: ``(top, left, bottom, right)`` in
    blocks (exclusive ends) and the area-corrected ``lam = 1 - box_area / (H8*W8)``."""
    H, W = int(grid[0]), int(grid[1])
    r_x = int(torch.randint(W, (1,), generator=generator))
    r_y = int(torch.randint(H, (1,), generator=generator))
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * W), int(r * H)
    left, top = max(r_x - half_w, 0), max(r_y - half_h, 0)
    right, bottom = min(r_x + half_w, W), min(r_y + half_h, H)
    corrected = 1.0 - (right - left) * (bottom - top) / (W * H)
    return (top, left, bottom, right), float(corrected)


def cutmix(x, box: Tuple[int, int, int, int], in_place: bool = False):
    """Paste block window ``box = (top, left, bottom, right)`` of ``x.roll(1, 0)`` into ``x`` (a new
    tensor; ``in_place``: into the tensor ``x`` itself): exactly the pixel paste of an 8-pixel-aligned
    box. Any dtype; numpy in, numpy out."""
    t, was_numpy = _as_tensor(x)
    _check_batch(t, "cutmix")
    top, left, bottom, right = (int(v) for v in box)
    H, W = t.shape[-2:]
    if not (0 <= top <= bottom <= H and 0 <= left <= right <= W):
        raise UsageError(f"cutmix box {box} is not inside the {H}x{W} block grid")
    out = t if in_place and not was_numpy else t.clone()
    out[..., top:bottom, left:right] = t[..., top:bottom, left:right].roll(1, 0)
    return out.numpy() if was_numpy else out


def _draw_beta(alpha: float, generator: Optional[torch.Generator]) -> float:
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    return float(np.random.Generator(np.random.PCG64(seed)).beta(alpha, alpha))


class _Mixing:
    """Shared argument checks and the apply/skip draw of ``Mixup`` and ``Cutmix``."""

    def __init__(self, *, num_classes: int, alpha: float = 1.0, p: float = 1.0, label_smoothing: float = 0.0,
                 in_place: bool = False):
        if int(num_classes) < 1:
            raise UsageError(f"num_classes must be >= 1, got {num_classes}")
        if not float(alpha) > 0:
            raise UsageError(f"alpha must be > 0, got {alpha}")
        if not 0.0 <= float(p) <= 1.0:
            raise UsageError(f"p must be in [0, 1], got {p}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise UsageError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self.p = float(p)
        self.label_smoothing = float(label_smoothing)
        self.in_place = bool(in_place)  # overwrite the batch tensor (e.g. a loader's fresh batch): no new batch

    def draw(self, grid: Tuple[int, int], generator: Optional[torch.Generator] = None) -> dict:
        """This batch's random parameters (always the same number of draws, applied or not)."""
        raise NotImplementedError

    def apply(self, x, params: dict):
        raise NotImplementedError

    def mix_item(self, item: torch.Tensor, partner: torch.Tensor, params: dict,
                 out: Optional[torch.Tensor] = None) -> None:
        """Item ``i`` of :meth:`apply`, given ``partner``, the original item ``i - 1`` (cyclically), into
        ``out`` (default ``item``, in place): the same values as ``apply`` (how a loader mixes a batch
        piece by piece). Also for a run of items ``i..j`` with their partners ``i-1..j-1`` (same
        shapes; ``out`` must not overlap ``partner``)."""
        raise NotImplementedError

    def choose(self, grid: Tuple[int, int], generator: Optional[torch.Generator] = None):
        """``(mixing, params)``: the transform that mixes this batch and its :meth:`draw` (the
        draws ``__call__`` makes, in the same order), before any item is touched."""
        return self, self.draw(grid, generator)

    def soft_targets(self, y, params: dict, dtype=torch.float32) -> torch.Tensor:
        """The ``(N, num_classes)`` targets ``__call__`` returns for labels ``y`` and ``params``."""
        targets = one_hot_targets(y, self.num_classes, self.label_smoothing, dtype)
        return _mix_targets(targets, params["lam"]) if params["apply"] else targets

    def __call__(self, x, y, generator: Optional[torch.Generator] = None):
        """``(x, y) -> (mixed x, soft targets (N, num_classes))``; targets are float32 (float64 for a
        float64 batch) on ``y``'s device."""
        t, was_numpy = _as_tensor(x)
        _check_batch(t, type(self).__name__)
        y_t = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
        if y_t.shape[0] != t.shape[0]:
            raise UsageError(f"{type(self).__name__}: {t.shape[0]} items but {y_t.shape[0]} labels")
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        one_hot_targets(y_t, self.num_classes)  # bad labels raise before any draw
        params = self.draw(tuple(t.shape[-2:]), generator)
        out = self.apply(t, params) if params["apply"] else t
        return (out.numpy() if was_numpy else out), self.soft_targets(y_t, params, dtype)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_classes={self.num_classes}, alpha={self.alpha}, p={self.p}, "
                f"label_smoothing={self.label_smoothing})")


class Mixup(_Mixing):
    """torchvision v2 ``MixUp`` on FUN batches: with probability ``p`` (per batch; torchvision has
    no ``p``, i.e. ``p=1``) draw ``lam ~ Beta(alpha, alpha)`` and return
    ``lam*x + (1-lam)*x.roll(1, 0)`` with the targets mixed the same way. Exact (see the module)."""

    def draw(self, grid, generator=None):
        apply = bool(torch.rand(1, generator=generator) < self.p)
        return {"apply": apply, "lam": _draw_beta(self.alpha, generator)}

    def apply(self, x, params):
        return mixup(x, params["lam"], in_place=self.in_place)

    def mix_item(self, item, partner, params, out=None):
        mixup_item(item, partner, params["lam"], out)


class Cutmix(_Mixing):
    """torchvision v2 ``CutMix`` on FUN batches, with block-aligned boxes: with probability ``p``
    (per batch) paste one box of ``x.roll(1, 0)`` (torchvision's box rule on the block grid) into
    every item; targets mixed with the area-corrected ``lam``. Exact (see the module)."""

    def draw(self, grid, generator=None):
        apply = bool(torch.rand(1, generator=generator) < self.p)
        box, lam = cutmix_box(_draw_beta(self.alpha, generator), grid, generator)
        return {"apply": apply, "box": box, "lam": lam}

    def apply(self, x, params):
        return cutmix(x, params["box"], in_place=self.in_place)

    def mix_item(self, item, partner, params, out=None):
        cutmix_item(item, partner, params["box"], out)


class RandomMixing:
    """One of ``transforms`` per batch, chosen uniformly (``torchvision.transforms.v2.RandomChoice``
    of ``[MixUp, CutMix]``, the usual way to use both); same call signature as ``Mixup``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        if not self.transforms:
            raise UsageError("RandomMixing needs at least one transform")

    def _pick(self, generator: Optional[torch.Generator]):
        """The transform of this batch (the first draw of the batch)."""
        return self.transforms[int(torch.randint(len(self.transforms), (1,), generator=generator))]

    def __call__(self, x, y, generator: Optional[torch.Generator] = None):
        return self._pick(generator)(x, y, generator)

    def choose(self, grid: Tuple[int, int], generator: Optional[torch.Generator] = None):
        """``(mixing, params)``: the transform chosen for this batch and its draws (as ``__call__``)."""
        return self._pick(generator).choose(grid, generator)

    def __repr__(self) -> str:
        return f"RandomMixing({self.transforms!r})"
