r"""Photometric augmentations on FUN coefficients: exact colour algebra in the DCT domain.

Input: **dequantised** FUN coefficients ``(..., 192, H8, W8)`` float (``read_fun(dequantize=True)``,
``DCTLoader``'s default), before ``Normalize``; channels ``64*component + 8*v + u`` (Y, Cb, Cr).

The algebra. JPEG stores, per 8x8 block and component, the orthonormal 2-D DCT of the level-shifted
samples ``Y - 128``, ``Cb - 128``, ``Cr - 128``, where (JFIF, ITU-R BT.601 full range)::

    Y  =       0.299 R + 0.587 G + 0.114 B
    Cb = 128 - 0.1687 R - 0.3313 G + 0.5 B
    Cr = 128 + 0.5 R - 0.4187 G - 0.0813 B

The DC coefficient of a block is ``8 * mean(sample - 128)``, so adding a constant ``t`` to every
pixel of a component adds ``8 t`` to its DC coefficient and nothing to the 63 AC ones; multiplying
the samples by ``k`` multiplies all 64 coefficients by ``k``. torchvision's colour operations are
affine in RGB with weights that sum to one per output pixel, and the RGB -> YCbCr map is affine, so
each operation is an affine map of ``(Y, Cb, Cr)``, hence of the coefficients (``DC_LEVEL = 1024 =
8 * 128`` is the DC of a mid-grey block)::

    brightness b  (adjust_brightness: b * RGB)
        Y' - 128 = b (Y - 128) + 128 (b - 1)   ->  Y coeffs * b,  Y DC += 1024 (b - 1)
        C' - 128 = b (C - 128)                 ->  Cb, Cr coeffs * b
    contrast c    (adjust_contrast: c * RGB + (1 - c) * m, m = mean grey level of the image)
        Y' = c Y + (1 - c) m, m = 128 + mean(Y DC) / 8  ->  Y coeffs * c,  Y DC += (1 - c) * mean(Y DC)
        C' - 128 = c (C - 128)                 ->  Cb, Cr coeffs * c
    saturation s  (adjust_saturation: s * RGB + (1 - s) * grey(RGB))
        Y' = Y (grey(RGB) has luma Y and no chroma)  ->  Cb, Cr coeffs * s
    grayscale     (rgb_to_grayscale, 3 output channels: R = G = B = Y)  ->  Cb, Cr coeffs = 0
    hue θ         (NOT torchvision's adjust_hue, see ``adjust_hue``)
        (Cb', Cr') = R(θ) (Cb, Cr) per frequency, θ = 2π hue_factor; Y unchanged

The grey level: the Y weights 0.299/0.587/0.114 are JPEG's, Pillow's ``convert("L")`` and
torchvision's PIL backend (``to_grayscale``); torchvision's tensor backend uses 0.2989 for red, a
difference of at most 0.0001 R <= 0.026 grey levels. ``adjust_contrast``'s mean is the mean of the
float grey image (torchvision's float-tensor path; its uint8 path truncates the grey image first and
Pillow rounds the mean to an integer, each a shift of at most (1 - c) * 0.5 grey levels).

**The clamp** is the one difference, and the only one: torchvision clamps RGB to [0, 1] after every
operation, coefficients have no clamp. Where an operation pushes a pixel's R, G or B outside
[0, 255] the pixel result here is the unclamped value (it differs by exactly the clipped amount);
everywhere else it is identical up to float rounding. With ``ColorJitter`` the composition is one
affine map, so where torchvision clamps between two operations the difference can propagate
through the later ones. The measured effect on the shared corpus is in docs/loader.md.

All per-item factors are drawn on the CPU from the given ``torch.Generator`` (the loader's), then
applied on the tensor's device: a seed gives the same batch on CPU and CUDA.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import UsageError
from .transform_base import DCTTransform

__all__ = [
    "DC_LEVEL", "ColorAffine", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
    "rgb_to_grayscale", "ColorJitter", "RandomBrightness", "RandomContrast", "RandomSaturation", "RandomHue",
    "RandomGrayscale", "Grayscale", "is_fusable", "fused_plan", "fold_affine", "split_fusable",
]

#: The JPEG level shift in DC units, ``8 * 128``: a block of constant sample value ``p`` has DC ``8 * (p - 128)``.
DC_LEVEL = 1024.0

Factor = Union[float, Sequence[float], torch.Tensor, np.ndarray]


def _as_batch(x, name: str):
    """``x`` as a float tensor ``(N, 192, H8, W8)`` plus a function restoring the input's kind/shape."""
    was_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if was_numpy else x
    if not isinstance(t, torch.Tensor):
        raise UsageError(f"{name}: expected a tensor or numpy array, got {type(x).__name__}")
    if t.ndim < 3 or t.shape[-3] != 192:
        raise UsageError(f"{name}: expected dequantised FUN coefficients (..., 192, H8, W8), got shape {tuple(t.shape)} "
                         "(colour operations need all 192 channels: apply them before selecting frequencies)")
    if not t.is_floating_point():
        raise UsageError(f"{name}: needs dequantised float coefficients (read_fun(dequantize=True), DCTLoader's "
                         f"default), got {t.dtype}: the level shift of the DC coefficient is in dequantised units")
    shape = t.shape
    batch = t.reshape(-1, *shape[-3:])

    def restore(out: torch.Tensor):
        out = out.reshape(shape)
        return out.numpy() if was_numpy else out
    return batch, restore


def _per_item(value, count: int, name: str) -> torch.Tensor:
    """A factor as ``(count,)`` float64 on the CPU (a scalar is broadcast)."""
    t = torch.as_tensor(np.asarray(value) if isinstance(value, (list, tuple)) else value, dtype=torch.float64).cpu()
    if t.ndim == 0:
        return t.expand(count)
    t = t.reshape(-1)
    if t.shape[0] != count:
        raise UsageError(f"{name}: {t.shape[0]} factors for {count} items")
    return t


class ColorAffine:
    """A per-item affine colour map of FUN coefficients, the composition of any sequence of the
    operations in this module (all tensors ``(N,)`` float64 on the CPU)::

        Y coeffs        -> y_gain * Y coeffs
        Y DC            += dc_bias + dc_mean_gain * mean(Y DC of the input image)
        (Cb, Cr) coeffs -> chroma_gain * R(chroma_angle) (Cb, Cr)   (same 2x2 map for all 64 frequencies)

    ``dc_mean_gain`` is nonzero only after a contrast change (its grey level is the image's mean).
    """

    def __init__(self, count: int):
        self.y_gain = torch.ones(count, dtype=torch.float64)
        self.dc_bias = torch.zeros(count, dtype=torch.float64)
        self.dc_mean_gain = torch.zeros(count, dtype=torch.float64)
        self.chroma_gain = torch.ones(count, dtype=torch.float64)
        self.chroma_angle = torch.zeros(count, dtype=torch.float64)

    # each step maps the current output through one more operation (masked per item)
    def brightness(self, factor: torch.Tensor, where: Optional[torch.Tensor] = None) -> "ColorAffine":
        f = factor if where is None else torch.where(where, factor, torch.ones_like(factor))
        self.y_gain = self.y_gain * f
        self.dc_bias = self.dc_bias * f + DC_LEVEL * (f - 1.0)
        self.dc_mean_gain = self.dc_mean_gain * f
        self.chroma_gain = self.chroma_gain * f
        return self

    def contrast(self, factor: torch.Tensor, where: Optional[torch.Tensor] = None) -> "ColorAffine":
        # new DC = c * DC + (1 - c) * mean(DC), with DC = y_gain * DC0 + dc_bias + dc_mean_gain * mean(DC0):
        # mean(DC) = (y_gain + dc_mean_gain) * mean(DC0) + dc_bias, so dc_bias is unchanged.
        f = factor if where is None else torch.where(where, factor, torch.ones_like(factor))
        self.dc_mean_gain = self.dc_mean_gain + (1.0 - f) * self.y_gain
        self.y_gain = self.y_gain * f
        self.chroma_gain = self.chroma_gain * f
        return self

    def saturation(self, factor: torch.Tensor, where: Optional[torch.Tensor] = None) -> "ColorAffine":
        f = factor if where is None else torch.where(where, factor, torch.ones_like(factor))
        self.chroma_gain = self.chroma_gain * f
        return self

    def hue(self, hue_factor: torch.Tensor, where: Optional[torch.Tensor] = None) -> "ColorAffine":
        h = hue_factor if where is None else torch.where(where, hue_factor, torch.zeros_like(hue_factor))
        self.chroma_angle = self.chroma_angle + 2.0 * math.pi * h
        return self

    _FIELDS = ("y_gain", "dc_bias", "dc_mean_gain", "chroma_gain", "chroma_angle")

    def subset(self, items: torch.Tensor) -> "ColorAffine":
        """The maps of ``items`` (indices) only."""
        part = ColorAffine(0)
        for name in self._FIELDS:
            setattr(part, name, getattr(self, name)[items])
        return part

    def reset(self, items: torch.Tensor) -> None:
        """Set the maps of ``items`` back to the identity."""
        fresh = ColorAffine(len(items))
        for name in self._FIELDS:
            getattr(self, name)[items] = getattr(fresh, name)

    @property
    def diagonal(self) -> bool:
        """True when every channel is only scaled and shifted independently of the image (no hue, no
        contrast): then the map is ``x * gain + bias`` per channel (see ``gain_bias``)."""
        return bool(torch.all(self.chroma_angle == 0) and torch.all(self.dc_mean_gain == 0))

    def gain_bias(self, x: Optional[torch.Tensor] = None,
                  mean_dc: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(N, 192)`` float64 ``gain`` and ``bias`` with ``out = x * gain + bias``. Needs ``diagonal``,
        or, for a contrast change, the batch ``x`` it applies to (its mean Y DC gives the bias) or that
        mean itself, ``mean_dc`` ``(N,)`` (zeros give the map without its contrast mean term); a hue
        rotation is never per-channel."""
        if not bool(torch.all(self.chroma_angle == 0)) or (x is None and mean_dc is None and not self.diagonal):
            raise ValueError("a hue rotation, or a contrast change without its image, is not a per-channel affine")
        N = self.y_gain.shape[0]
        gain = torch.empty(N, 192, dtype=torch.float64)
        gain[:, :64] = self.y_gain[:, None]
        gain[:, 64:] = self.chroma_gain[:, None]
        bias = torch.zeros(N, 192, dtype=torch.float64)
        bias[:, 0] = self.dc_bias
        if mean_dc is None and x is not None and bool(torch.any(self.dc_mean_gain != 0)):
            mean_dc = x[:, 0].to(torch.float64).mean(dim=(-2, -1)).cpu()
        if mean_dc is not None:
            bias[:, 0] += self.dc_mean_gain * torch.as_tensor(mean_dc, dtype=torch.float64)
        return gain, bias

    def apply(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Apply to a batch ``(N, 192, H8, W8)`` float tensor, into a new tensor or ``out`` (which may
        be ``x`` itself: in place); computed in x's dtype."""
        dev, dt = x.device, x.dtype

        def col(values):
            return values.to(device=dev, dtype=dt)[:, None, None, None]

        out = torch.empty_like(x) if out is None else out
        dc_shift = self.dc_bias
        if bool(torch.any(self.dc_mean_gain != 0)):
            mean_dc = x[:, 0].to(torch.float64).mean(dim=(-2, -1)).cpu()
            dc_shift = dc_shift + self.dc_mean_gain * mean_dc
        torch.mul(x[:, :64], col(self.y_gain), out=out[:, :64])
        out[:, 0] += dc_shift.to(device=dev, dtype=dt)[:, None, None]
        if bool(torch.all(self.chroma_angle == 0)):
            torch.mul(x[:, 64:], col(self.chroma_gain), out=out[:, 64:])
        else:
            cos = col(self.chroma_gain * torch.cos(self.chroma_angle))
            sin = col(self.chroma_gain * torch.sin(self.chroma_angle))
            cb, cr = x[:, 64:128], x[:, 128:]
            new_cb, new_cr = cb * cos - cr * sin, cb * sin + cr * cos  # both before writing (out may be x)
            out[:, 64:128] = new_cb
            out[:, 128:] = new_cr
        return out


def _single(x, name, build):
    batch, restore = _as_batch(x, name)
    affine = ColorAffine(batch.shape[0])
    build(affine, batch.shape[0])
    return restore(affine.apply(batch))


def adjust_brightness(x, brightness_factor: Factor):
    """torchvision ``adjust_brightness`` (``b * RGB``, clamped) on coefficients: all coefficients
    times ``b``, Y DC plus ``1024 (b - 1)`` (the level shift). Exact up to the clamp. The factor is
    a scalar or one per item (``(N,)``) for a batch."""
    return _single(x, "adjust_brightness", lambda a, n: a.brightness(_per_item(brightness_factor, n, "brightness_factor")))


def adjust_contrast(x, contrast_factor: Factor):
    """torchvision ``adjust_contrast`` (blend with the image's mean grey level ``m``, clamped): all
    coefficients times ``c``, Y DC plus ``(1 - c) * mean(Y DC)`` (``m = 128 + mean(Y DC) / 8`` is the
    mean luma of the whole ``H8 x W8`` image). Exact up to the clamp."""
    return _single(x, "adjust_contrast", lambda a, n: a.contrast(_per_item(contrast_factor, n, "contrast_factor")))


def adjust_saturation(x, saturation_factor: Factor):
    """torchvision ``adjust_saturation`` (blend with the greyscale image, clamped): chroma
    coefficients times ``s``, luma unchanged. Exact up to the clamp."""
    return _single(x, "adjust_saturation", lambda a, n: a.saturation(_per_item(saturation_factor, n, "saturation_factor")))


def rgb_to_grayscale(x):
    """torchvision ``rgb_to_grayscale(img, num_output_channels=3)`` with weights 0.299/0.587/0.114
    (= JPEG's luma): chroma coefficients zeroed (chroma 128), luma unchanged. Exact (no clamp)."""
    return _single(x, "rgb_to_grayscale", lambda a, n: a.saturation(torch.zeros(n, dtype=torch.float64)))


def adjust_hue(x, hue_factor: Factor):
    """Rotate the chroma plane: ``(Cb, Cr) -> R(2π hue_factor) (Cb, Cr)`` (``Cb' = cos Cb - sin Cr``,
    ``Cr' = sin Cb + cos Cr``) for every frequency; ``hue_factor`` in [-0.5, 0.5] turns, as torchvision's.

    This is NOT torchvision's ``adjust_hue``, which shifts the H of HSV (a piecewise-linear map
    of RGB that keeps each pixel's max(R,G,B) and min(R,G,B) and changes its luma). The rotation here
    keeps luma Y and chroma magnitude exactly, and is linear, so it is exact on coefficients. The
    direction matches torchvision's (positive factors go red -> yellow -> green: in the (Cb, Cr)
    plane red is at 109°, green at 232°, blue at 351°, 120° apart like HSV's hues), but the hue
    spacing of other colours and the luma differ: measured against torchvision's ``adjust_hue`` on
    the corpus the PSNR is given in docs/loader.md (documented-approximate)."""
    return _single(x, "adjust_hue", lambda a, n: a.hue(_per_item(hue_factor, n, "hue_factor")))


# ----------------------------------------------------------------------------------------------
# random classes
def _range(value, name: str, center: float = 1.0, bound: Tuple[float, float] = (0.0, math.inf), clip_first=True):
    """torchvision ``ColorJitter._check_input``: a number ``v`` means ``[center - v, center + v]``."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise UsageError(f"{name}: if it is a single number, it must be non negative, got {value}")
        low, high = center - float(value), center + float(value)
        if clip_first:
            low = max(low, 0.0)
    else:
        values = [float(v) for v in value]
        if len(values) != 2:
            raise UsageError(f"{name} should be a number or a (min, max) pair, got {value!r}")
        low, high = values
    if not bound[0] <= low <= high <= bound[1]:
        raise UsageError(f"{name} values should be between {bound}, got ({low}, {high})")
    if low == high == center:
        return None
    return (low, high)


class ColorJitter(DCTTransform):
    """torchvision ``ColorJitter(brightness, contrast, saturation, hue)`` on FUN coefficients, drawn
    independently per batch item: factors uniform in ``[max(0, 1 - v), 1 + v]`` (hue in ``[-h, h]``,
    h <= 0.5), applied in a random order (torchvision's ``randperm(4)`` per image). Brightness,
    contrast, saturation: exact up to the clamp; hue: the chroma rotation of ``adjust_hue``
    (documented-approximate against torchvision's HSV hue). The whole sequence is one
    ``ColorAffine`` per item, applied in one pass."""

    def __init__(self, brightness=0, contrast=0, saturation=0, hue=0):
        self.brightness = _range(brightness, "brightness")
        self.contrast = _range(contrast, "contrast")
        self.saturation = _range(saturation, "saturation")
        self.hue = _range(hue, "hue", center=0.0, bound=(-0.5, 0.5), clip_first=False)

    integer_exact = False

    def affine(self, count: int, generator: Optional[torch.Generator] = None) -> ColorAffine:
        """Draw ``count`` items' maps (the same draws as ``__call__``)."""
        order = torch.argsort(torch.rand(count, 4, generator=generator), dim=1)  # a random permutation per item
        draws = torch.rand(count, 4, generator=generator, dtype=torch.float64)
        affine = ColorAffine(count)
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        steps = (affine.brightness, affine.contrast, affine.saturation, affine.hue)
        factors = [None if r is None else r[0] + (r[1] - r[0]) * draws[:, k] for k, r in enumerate(ranges)]
        for position in range(4):
            for op in range(4):
                if factors[op] is not None:
                    steps[op](factors[op], where=order[:, position] == op)
        return affine

    @property
    def fusable(self) -> bool:
        """True when the drawn maps are per-channel affines (no contrast, no hue): the CPU loader then
        folds them into ``read_batch``'s gain/bias (see ``channel_affine``)."""
        return self.contrast is None and self.hue is None

    def channel_affine(self, count: int, generator: Optional[torch.Generator] = None):
        """``(gain, bias)`` ``(count, 192)`` float64 with ``out = x * gain + bias`` per item and channel,
        from the same draws as ``__call__`` (needs ``fusable``)."""
        return self.affine(count, generator).gain_bias()

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        batch, restore = _as_batch(x, type(self).__name__)
        return restore(self.affine(batch.shape[0], generator).apply(batch))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue})")


class RandomBrightness(ColorJitter):
    """``ColorJitter(brightness=...)``: per-item factor in ``[max(0, 1 - v), 1 + v]`` or ``(min, max)``."""

    def __init__(self, brightness):
        super().__init__(brightness=brightness)


class RandomContrast(ColorJitter):
    """``ColorJitter(contrast=...)``."""

    def __init__(self, contrast):
        super().__init__(contrast=contrast)


class RandomSaturation(ColorJitter):
    """``ColorJitter(saturation=...)``."""

    def __init__(self, saturation):
        super().__init__(saturation=saturation)


class RandomHue(ColorJitter):
    """``ColorJitter(hue=...)``: chroma rotation (see ``adjust_hue``), per-item angle in ``[-h, h]`` turns."""

    def __init__(self, hue):
        super().__init__(hue=hue)


class RandomGrayscale(DCTTransform):
    """torchvision ``RandomGrayscale(p)``: each item becomes greyscale (chroma zeroed) with probability ``p``."""

    integer_exact = True  # zeroing is exact on raw integers too

    def __init__(self, p: float = 0.1):
        if not 0.0 <= float(p) <= 1.0:
            raise UsageError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    fusable = True

    def affine(self, count: int, generator: Optional[torch.Generator] = None) -> ColorAffine:
        chosen = torch.rand(count, generator=generator) < self.p
        return ColorAffine(count).saturation(torch.zeros(count, dtype=torch.float64), where=chosen)

    def channel_affine(self, count: int, generator: Optional[torch.Generator] = None):
        """``(gain, bias)`` ``(count, 192)`` float64 (chroma gain 0 for the chosen items), same draws as ``__call__``."""
        return self.affine(count, generator).gain_bias()

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        was_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(x)) if was_numpy else x
        if t.ndim < 3 or t.shape[-3] != 192:
            raise UsageError(f"RandomGrayscale: expected FUN coefficients (..., 192, H8, W8), got {tuple(t.shape)}")
        batch = t.reshape(-1, *t.shape[-3:])
        chosen = (torch.rand(batch.shape[0], generator=generator) < self.p).to(batch.device)
        out = batch.clone()
        out[:, 64:] *= (~chosen).to(batch.dtype)[:, None, None, None]
        out = out.reshape(t.shape)
        return out.numpy() if was_numpy else out

    def __repr__(self) -> str:
        return f"RandomGrayscale(p={self.p})"


class Grayscale(RandomGrayscale):
    """torchvision ``Grayscale(num_output_channels=3)``: chroma zeroed for every item."""

    def __init__(self):
        super().__init__(p=1.0)

    def __repr__(self) -> str:
        return "Grayscale()"


# ----------------------------------------------------------------------------------------------
# composition with the loader's fused path (block maps + per-channel affine in read_batch)
def _steps(transform):
    from .transforms import Compose

    if isinstance(transform, (list, tuple)):
        return list(transform)
    return list(transform.transforms) if isinstance(transform, Compose) else [transform]


def _moves_blocks(step) -> bool:
    return bool(getattr(step, "plannable", False)) and hasattr(step, "plan")


def _channel_affine_step(step) -> bool:
    return bool(getattr(step, "fusable", False)) and hasattr(step, "channel_affine")


def is_fusable(transform) -> bool:
    """True when ``transform`` (or each step of a ``Compose``) is block moves (crops, flips, nearest
    resized crops, ``RandomTranslate``) followed by per-item per-channel affines (``ColorJitter``
    without contrast/hue, ``RandomGrayscale``, ``FrequencyDropout``, ``ChromaDropout``): then
    :func:`fused_plan` gives it as one gather plus one ``x * gain + bias``."""
    if transform is None:
        return False
    seen_affine = False
    for step in _steps(transform):
        if _moves_blocks(step) and not seen_affine:
            continue
        if _channel_affine_step(step):
            seen_affine = True
            continue
        return False
    return True


def split_fusable(transform) -> Tuple[list, list]:
    """``(prefix, rest)``: the longest prefix of ``transform``'s steps that :func:`is_fusable` accepts
    (block moves, then per-channel colour maps; a list :func:`fused_plan` takes), and the steps after it."""
    steps = [] if transform is None else _steps(transform)
    seen_affine = False
    for index, step in enumerate(steps):
        if _moves_blocks(step) and not seen_affine:
            continue
        if _channel_affine_step(step):
            seen_affine = True
            continue
        return steps[:index], steps[index:]
    return steps, []


def fused_plan(transform, shape, generator: Optional[torch.Generator] = None):
    """``(plan, gain, bias)`` for an :func:`is_fusable` transform on a batch of ``shape``
    ``(N, 192, H8, W8)``: ``transform(x) == x_moved * gain + bias`` where ``x_moved = plan.apply(x)``
    (a ``GatherPlan``; its flip signs are part of the plan) and ``gain``/``bias`` are ``(N, 192)``
    float64 (None when there is no affine step). Draws the same random numbers, in the same order,
    as ``transform(x, generator)``. The affine comes after the block moves, so zero (padding) blocks
    get ``bias``: a grey block recoloured, as the pixel operation would."""
    from .transforms import GatherPlan, _identity_indices

    N, C, H, W = shape
    plan = GatherPlan(_identity_indices(N, H), _identity_indices(N, W))
    gain = bias = None
    for step in _steps(transform):
        if gain is None and _moves_blocks(step):
            plan = plan.then(step.plan((N, C) + plan.shape, generator))
        elif _channel_affine_step(step):
            if C != 192:
                raise UsageError("per-channel colour maps need all 192 channels")
            g, b = step.channel_affine(N, generator)
            gain, bias = (g, b) if gain is None else (gain * g, bias * g + b)
        else:
            raise UsageError(f"{step!r} is neither a block move nor a per-channel affine: not fusable")
    return plan, gain, bias


def fold_affine(sign: Optional[torch.Tensor], gain: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                scale: torch.Tensor, shift: torch.Tensor, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The one formula for a fused batch's ``read_batch`` affine, used by the decode and by the
    loader's torch path alike (so both give the same bits): ``out = x * total_gain + total_bias``
    with, in float32, ``total_gain = (sign * gain) * scale`` and ``total_bias = bias * scale + shift``
    (``sign`` (N, 192) flip signs or None; ``gain``/``bias`` (N, 192) colour maps or None;
    ``scale``/``shift`` the (192,) normalisation). Returns ``(N, 192)`` gain and ``(N, 192)`` or
    ``(192,)`` bias (the latter when there is no colour bias)."""
    scale = scale.reshape(1, 192).to(torch.float32)
    shift = shift.reshape(192).to(torch.float32)
    total = torch.ones(count, 192) if sign is None else sign.to(torch.float32)
    if gain is not None:
        total = total * gain.to(torch.float32)
    total = total * scale
    if bias is None:
        return total, shift
    return total, bias.to(torch.float32) * scale + shift

