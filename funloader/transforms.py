"""Transforms in the DCT domain, on FUN inputs of shape ``(..., C, H8, W8)``.

Every transform exists as a function (``hflip``, ``vflip``, ``crop``, ``center_crop``, ``random_crop``,
``resized_crop``, ``select_frequencies``, ``dequantize``, ``normalize``) and as a class for composing
(``RandomHorizontalFlip``, ``CenterCrop``, ``RandomResizedCrop``, ``Normalize``, ``Compose``, ...).

Layout: ``C`` indexes the FUN channels, ``channel = 64 * component + 8 * v + u`` (component 0=Y,
1=Cb, 2=Cr; ``v`` vertical and ``u`` horizontal frequency, natural order), ``H8 x W8`` is the grid
of 8x8 luma blocks (chroma replicated onto it). ``C`` is 192 unless frequencies were dropped; the
transforms that depend on the frequency of a channel (flips, normalisation, DCT resampling) take a
``channels`` argument (the 192-index of each present channel) for such tensors.

Inputs may be numpy arrays or torch tensors (CPU or CUDA); the functions return the same kind, and
never modify their input. The random classes draw independent parameters for every item of a
batch ``(N, C, H8, W8)`` and one set for a single image ``(C, H8, W8)``; pass a ``torch.Generator``
for reproducible draws (the parameters are drawn on the CPU, then applied on the tensor's device).

Exactness: flips, crops, frequency selection, dequantisation and normalisation are exact. Flipping
reverses the block order and negates the coefficients of odd ``u`` (odd ``v`` for a vertical flip):
the result equals the coefficients of ``jpegtran -flip horizontal -trim`` of the same file.
Scale changes: ``RandomResizedCrop(mode="exact")`` (default) and ``ResizeCenterCrop`` pick a window of
the original image in pixels and the native decode resizes it exactly (decoded YCbCr pixels, Pillow's
bilinear antialias, block DCT: ~56 dB luma PSNR against Pillow); they run inside the decode
(``DCTLoader``, ``read_batch(boxes=)``). ``mode="nearest"`` / ``resized_crop`` repeat whole blocks of
decoded coefficients: approximate (median luma PSNR ~20 dB), see docs/loader.md.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .channels import ALL_CHANNELS as _ALL_CHANNELS, KeepSpec, channel_indices, flip_signs, normalization_affine
from .transform_base import DCTTransform

Array = Union[np.ndarray, torch.Tensor]
SizeLike = Union[int, Tuple[int, int], Sequence[int]]

__all__ = [
    "hflip", "vflip", "crop", "center_crop", "random_crop", "resized_crop", "select_frequencies",
    "dequantize", "qtable_vector", "normalize", "flip_signs",
    "Compose", "RandomHorizontalFlip", "RandomVerticalFlip", "CenterCrop", "RandomCrop",
    "RandomResizedCrop", "ResizeCenterCrop", "SourceTransform", "random_resized_crop_box", "resize_center_crop_box",
    "split_source", "ReadOrResize",
    "SelectFrequencies", "Dequantize", "Normalize", "ToDtype", "GatherPlan",
]

# ----------------------------------------------------------------------------------------------
# helpers
def _pair(size: SizeLike) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width) in blocks, got {size!r}")
    return size  # type: ignore[return-value]


def _channels_of(x: Array, channels: Optional[Sequence[int]]) -> np.ndarray:
    """The 192-index of each channel of ``x`` (dimension -3)."""
    count = x.shape[-3]
    if channels is None:
        if count != 192:
            raise ValueError(
                f"input has {count} channels, not 192: pass channels= (the FUN index of each channel, "
                "e.g. funloader.channels.channel_indices(keep)) or apply this transform before dropping frequencies")
        return _ALL_CHANNELS
    chans = np.asarray(channels, dtype=np.int64)
    if chans.shape != (count,):
        raise ValueError(f"channels has {chans.shape[0] if chans.ndim else 0} entries for an input with {count} channels")
    if chans.size and (chans.min() < 0 or chans.max() > 191):
        raise ValueError("channels must be FUN channel indices in 0..191")
    return chans


def _per_channel(values: np.ndarray, like: Array) -> Array:
    """``(C,)`` values broadcastable against ``like`` ``(..., C, H, W)`` in its kind/dtype/device."""
    if isinstance(like, torch.Tensor):
        dtype = like.dtype if (like.is_floating_point() or values.dtype.kind in "iu") else torch.float32
        return torch.as_tensor(values).to(device=like.device, dtype=dtype)[:, None, None]
    dtype = like.dtype if (like.dtype.kind == "f" or values.dtype.kind in "iu") else np.float32
    return values.astype(dtype)[:, None, None]


def _flip(x: Array, axis: str, channels) -> Array:
    chans = _channels_of(x, channels)
    sign = _per_channel(flip_signs(axis, chans).astype(np.int8), x)  # +-1 in x's dtype
    dim = -1 if axis == "h" else -2
    if isinstance(x, torch.Tensor):
        return x.flip(dim) * sign
    return np.ascontiguousarray(np.flip(x, axis=dim) * sign)


def hflip(x: Array, channels: Optional[Sequence[int]] = None) -> Array:
    """Mirror left-right, exactly: reverse the block columns and negate coefficients with odd ``u``.

    ``x``: ``(..., C, H8, W8)`` array or tensor, any dtype; returns the same shape and dtype.
    """
    return _flip(x, "h", channels)


def vflip(x: Array, channels: Optional[Sequence[int]] = None) -> Array:
    """Mirror top-bottom, exactly: reverse the block rows and negate coefficients with odd ``v``."""
    return _flip(x, "v", channels)


def crop(x: Array, top: int, left: int, height: int, width: int) -> Array:
    """Block-aligned crop of ``height x width`` blocks starting at block ``(top, left)``.

    The window may reach outside the grid (negative ``top``/``left`` or beyond the edge): blocks
    outside are zero (zero padding by whole blocks). Returns ``(..., C, height, width)``, same dtype.
    """
    top, left, height, width = int(top), int(left), int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"crop size must be positive, got {height}x{width} blocks")
    H, W = x.shape[-2], x.shape[-1]
    if top >= 0 and left >= 0 and top + height <= H and left + width <= W:
        out = x[..., top:top + height, left:left + width]
        return out.clone() if isinstance(x, torch.Tensor) else np.ascontiguousarray(out)
    shape = tuple(x.shape[:-2]) + (height, width)
    out = torch.zeros(shape, dtype=x.dtype, device=x.device) if isinstance(x, torch.Tensor) else np.zeros(shape, x.dtype)
    src_r0, src_r1 = max(top, 0), min(top + height, H)
    src_c0, src_c1 = max(left, 0), min(left + width, W)
    if src_r0 < src_r1 and src_c0 < src_c1:
        out[..., src_r0 - top:src_r1 - top, src_c0 - left:src_c1 - left] = x[..., src_r0:src_r1, src_c0:src_c1]
    return out


def center_offsets(blocks: int, size: int) -> int:
    """Top (or left) block offset of a centred window of ``size`` over ``blocks`` blocks; negative
    when padding. Matches ``read_batch``: crop offset ``(blocks - size) // 2``, padding places the
    image at ``(size - blocks) // 2``."""
    if blocks >= size:
        return (blocks - size) // 2
    return -((size - blocks) // 2)


def center_crop(x: Array, size: SizeLike = 28) -> Array:
    """Centre crop (or zero-pad by whole blocks) to ``size`` blocks, the same geometry as ``read_batch``."""
    height, width = _pair(size)
    return crop(x, center_offsets(x.shape[-2], height), center_offsets(x.shape[-1], width), height, width)


def _offset_range(blocks: int, size: int, padding: int) -> Tuple[int, int]:
    lo, hi = -padding, blocks - size + padding
    return (min(lo, hi), max(lo, hi))


def random_crop_params(shape: Tuple[int, int], size: SizeLike, padding: int = 0, count: int = 1,
                       generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``count`` random (top, left) block offsets (int64 tensors) for ``random_crop``: uniform over the
    positions of a ``size`` window inside the grid padded by ``padding`` blocks; when the grid is
    smaller than the window, the image lands at a uniform position inside it."""
    height, width = _pair(size)
    lo_t, hi_t = _offset_range(shape[0], height, padding)
    lo_l, hi_l = _offset_range(shape[1], width, padding)
    tops = torch.randint(lo_t, hi_t + 1, (count,), generator=generator)
    lefts = torch.randint(lo_l, hi_l + 1, (count,), generator=generator)
    return tops, lefts


def _gather_windows(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Per-item block gather: ``x`` (N, C, H, W); ``rows`` (N, h), ``cols`` (N, w) block indices,
    -1 meaning a zero block. Returns (N, C, h, w) (one ``torch.gather`` over the flattened grid)."""
    N, C, H, W = x.shape
    rows = rows.to(device=x.device, dtype=torch.int64)
    cols = cols.to(device=x.device, dtype=torch.int64)
    h, w = rows.shape[1], cols.shape[1]
    if bool((rows < 0).any()) or bool((cols < 0).any()):
        x = F.pad(x, (1, 0, 1, 0))  # index 0 is a zero row/column; real blocks shift by one
        rows, cols, H, W = rows + 1, cols + 1, H + 1, W + 1
    flat = (rows[:, :, None] * W + cols[:, None, :]).reshape(N, 1, h * w).expand(N, C, h * w)
    return x.reshape(N, C, H * W).gather(2, flat).reshape(N, C, h, w)


def _window_indices(starts: torch.Tensor, length: int, blocks: int) -> torch.Tensor:
    idx = starts[:, None] + torch.arange(length)[None, :]
    return torch.where((idx >= 0) & (idx < blocks), idx, torch.full_like(idx, -1))


def random_crop(x: Array, size: SizeLike = 28, padding: int = 0,
                generator: Optional[torch.Generator] = None) -> Array:
    """Block-aligned random crop to ``size`` blocks, zero padding by whole blocks (``padding`` on each
    side, and wherever the image is smaller than the window). A batch ``(N, C, H8, W8)`` gets an
    independent window per item."""
    height, width = _pair(size)
    H, W = x.shape[-2], x.shape[-1]
    if x.ndim == 4:
        was_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(x) if was_numpy else x
        tops, lefts = random_crop_params((H, W), (height, width), padding, t.shape[0], generator)
        out = _gather_windows(t, _window_indices(tops, height, H), _window_indices(lefts, width, W))
        return out.numpy() if was_numpy else out
    tops, lefts = random_crop_params((H, W), (height, width), padding, 1, generator)
    return crop(x, int(tops[0]), int(lefts[0]), height, width)


# ----------------------------------------------------------------------------------------------
# scale: resized crop
def resized_crop_params(shape: Tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), count: int = 1,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``count`` random block windows ``(top, left, height, width)`` (int64 ``(count, 4)``) as in
    torchvision's ``RandomResizedCrop``, in whole blocks: area fraction uniform in ``scale``, aspect
    ratio log-uniform in ``ratio``, 10 tries then the centred largest window of a clamped ratio."""
    H, W = int(shape[0]), int(shape[1])
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    out = torch.empty((count, 4), dtype=torch.int64)
    for item in range(count):
        draws = torch.rand((10, 2), generator=generator, dtype=torch.float64)
        offsets = torch.rand((10, 2), generator=generator, dtype=torch.float64)
        chosen = None
        for attempt in range(10):
            target = area * (scale[0] + (scale[1] - scale[0]) * float(draws[attempt, 0]))
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(draws[attempt, 1]))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= W and 0 < h <= H:
                top = int(float(offsets[attempt, 0]) * (H - h + 1))
                left = int(float(offsets[attempt, 1]) * (W - w + 1))
                chosen = (min(top, H - h), min(left, W - w), h, w)
                break
        if chosen is None:
            in_ratio = W / H
            if in_ratio < min(ratio):
                w, h = W, max(1, int(round(W / min(ratio))))
            elif in_ratio > max(ratio):
                h, w = H, max(1, int(round(H * max(ratio))))
            else:
                h, w = H, W
            h, w = min(h, H), min(w, W)
            chosen = ((H - h) // 2, (W - w) // 2, h, w)
        out[item] = torch.tensor(chosen)
    return out


def random_resized_crop_box(height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            generator: Optional[torch.Generator] = None) -> Tuple[int, int, int, int]:
    """One ``RandomResizedCrop`` window ``(top, left, h, w)`` in pixels of a ``height x width`` image,
    drawn as torchvision's ``RandomResizedCrop.get_params`` draws it (same algorithm and the same
    sequence of torch random calls, so the same generator state gives the same window): up to 10
    attempts of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``,
    the window's position uniform; else the centred window of the ratio clamped to ``ratio``."""
    height, width = int(height), int(width)
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_center_crop_box(height: int, width: int, resize: int, crop: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """The window of a ``height x width`` image that torchvision's ``Resize(resize)`` (shorter side to
    ``resize``, the other ``int(resize * long / short)``) followed by ``CenterCrop(crop)`` (offset
    ``int(round((size - crop) / 2))``) shows, as ``(top, left, h, w)`` in original pixels (floats):
    resizing that window to ``crop`` with the filter reading the image around it (Pillow's
    ``resize(box=)``, ``support="image"``) is ``Resize + CenterCrop``. If the crop does not fit in the
    resized image (a crop longer than ``resize``), the shorter side is resized further, to fit."""
    height, width = int(height), int(width)
    crop_h, crop_w = int(crop[0]), int(crop[1])
    short, long = (width, height) if width <= height else (height, width)
    new_short = int(resize)
    while True:
        new_long = int(new_short * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if new_h >= crop_h and new_w >= crop_w:
            break
        new_short += 1
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    scale_y, scale_x = height / new_h, width / new_w
    return top * scale_y, left * scale_x, crop_h * scale_y, crop_w * scale_x


def _nearest_indices(starts, lengths, blocks_out: int) -> torch.Tensor:
    starts = torch.as_tensor(starts, dtype=torch.int64)
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    pos = (torch.arange(blocks_out, dtype=torch.float64)[None, :] + 0.5) * lengths[:, None].double() / blocks_out
    return starts[:, None] + pos.floor().long().clamp_(max=(lengths[:, None] - 1))


def _resized_crop_batch(x: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-block resized crop of each item's block window ``boxes`` (N, 4) to ``size`` blocks."""
    out_h, out_w = size
    boxes = boxes.to(torch.int64).cpu()
    rows = _nearest_indices(boxes[:, 0], boxes[:, 2], out_h)
    cols = _nearest_indices(boxes[:, 1], boxes[:, 3], out_w)
    return _gather_windows(x, rows, cols)


def resized_crop(x: Array, top: int, left: int, height: int, width: int, size: SizeLike = 28,
                 mode: str = "nearest") -> Array:
    """Approximate resized crop of decoded coefficients: the block window ``(top, left, height, width)``
    resized to ``size`` blocks by repeating or skipping whole blocks (``mode="nearest"``, the only
    mode: object scale changes, the texture inside a block does not; see docs/loader.md for its
    measured fidelity). The exact resized crop is a pixel operation on the JPEG:
    ``RandomResizedCrop(mode="exact")`` / ``read_batch(boxes=)``.

    ``x``: ``(C, H8, W8)`` or ``(N, C, H8, W8)`` (one window for the whole batch here; the class
    ``RandomResizedCrop`` draws one per item)."""
    if mode != "nearest":
        raise ValueError(f"resized_crop on decoded coefficients is mode='nearest' only, got {mode!r} (the exact "
                         "resized crop runs in the decode: read_batch(boxes=) or RandomResizedCrop(mode='exact'))")
    out_size = _pair(size)
    was_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if was_numpy else x
    single = t.ndim == 3
    batch = t[None] if single else t.reshape(-1, *t.shape[-3:])
    if not (0 <= top and 0 <= left and top + height <= t.shape[-2] and left + width <= t.shape[-1] and height > 0 and width > 0):
        raise ValueError(f"window {(top, left, height, width)} is not inside the {t.shape[-2]}x{t.shape[-1]} block grid")
    boxes = torch.tensor([[top, left, height, width]], dtype=torch.int64).expand(batch.shape[0], 4)
    out = _resized_crop_batch(batch, boxes, out_size)
    out = out[0] if single else out.reshape(*t.shape[:-3], *out.shape[-3:])
    return out.numpy() if was_numpy else out


# ----------------------------------------------------------------------------------------------
# frequencies, quantisation, normalisation
def select_frequencies(x: Array, keep: KeepSpec, mode: str = "zero") -> Array:
    """Input compression: keep the lowest ``keep = (y, cb, cr)`` zigzag frequencies of each component
    (``"44/10/10"``, ...). ``mode="zero"`` zeroes the other channels (shape unchanged, 192 channels);
    ``mode="drop"`` removes them (``(..., sum(keep), H8, W8)``, channels in ``channel_indices(keep)``
    order). ``x`` must have all 192 channels."""
    _channels_of(x, None)
    indices = channel_indices(keep)
    if mode == "drop":
        if isinstance(x, torch.Tensor):
            return x.index_select(-3, torch.as_tensor(indices, device=x.device))
        return np.ascontiguousarray(x[..., indices, :, :])
    if mode != "zero":
        raise ValueError(f"mode must be 'zero' or 'drop', got {mode!r}")
    mask = np.zeros(192, dtype=np.int8)
    mask[indices] = 1
    return x * _per_channel(mask, x)


def qtable_vector(qtables: Sequence, components: int = 3) -> np.ndarray:
    """``(192,)`` float32 quantisation step of each FUN channel, from a ``DCTImage``'s ``.qtables``
    (one natural-order ``(64,)`` table per component) or the image itself. Missing components
    (grayscale) get step 1 (their coefficients are zero anyway)."""
    tables = getattr(qtables, "qtables", qtables)
    steps = np.ones(192, dtype=np.float32)
    for component, table in enumerate(list(tables)[:components]):
        table = np.asarray(table, dtype=np.float32).reshape(-1)
        if table.shape != (64,):
            raise ValueError(f"quantisation table {component} has {table.size} entries, expected 64")
        steps[64 * component:64 * component + 64] = table
    return steps


def dequantize(x: Array, qtables: Array) -> Array:
    """Multiply quantised coefficients by their quantisation steps: float32 result.

    ``qtables``: ``(192,)`` (one image, see ``qtable_vector``), ``(N, 192)`` (a batch, one row per
    image), or ``(..., 3, 64)`` per-component natural-order tables.
    The loader gets the same values directly from ``read_batch(..., dequantize=True)``.
    """
    if isinstance(x, torch.Tensor):
        q = torch.as_tensor(np.asarray(qtables) if not isinstance(qtables, torch.Tensor) else qtables)
        q = q.to(device=x.device, dtype=torch.float32)
        if q.shape[-2:] == (3, 64):
            q = q.reshape(*q.shape[:-2], 192)
        return x.to(torch.float32) * q[..., :, None, None]
    q = np.asarray(qtables, dtype=np.float32)
    if q.shape[-2:] == (3, 64):
        q = q.reshape(*q.shape[:-2], 192)
    return x.astype(np.float32) * q[..., :, None, None]


def normalize(x: Array, mean: Sequence[float], std: Sequence[float],
              channels: Optional[Sequence[int]] = None, dtype=None) -> Array:
    """``(x - mean[c]) / std[c]`` per channel, computed as ``x * scale + shift`` with ``scale = 1/std``
    and ``shift = -mean/std`` rounded to the output dtype, multiply then add (each rounded; no fused
    multiply-add): the same bits as ``DCTLoader``, ``read_batch``'s affine and the DALI pipelines.
    ``mean``/``std``: the 192 FUN-channel statistics (see ``funloader.compute_stats``); for an input
    with dropped frequencies pass ``channels``. Output dtype: ``dtype`` if given, else x's float
    dtype, else float32."""
    chans = _channels_of(x, channels)
    if isinstance(x, torch.Tensor):
        out_dtype = dtype or (x.dtype if x.is_floating_point() else torch.float32)
        scale, shift = normalization_affine(mean, std, chans, dtype=np.float64)  # rounded once, to out_dtype
        scale = torch.as_tensor(scale, dtype=out_dtype, device=x.device)[:, None, None]
        shift = torch.as_tensor(shift, dtype=out_dtype, device=x.device)[:, None, None]
        return torch.mul(x.to(out_dtype), scale).add_(shift)
    out_dtype = dtype or (x.dtype if x.dtype.kind == "f" else np.float32)
    scale, shift = normalization_affine(mean, std, chans, dtype=out_dtype)
    scale, shift = scale[:, None, None], shift[:, None, None]
    out = np.multiply(x.astype(out_dtype), scale)
    out += shift
    return out


# ----------------------------------------------------------------------------------------------
# composable classes
class GatherPlan:
    """A batch transform that only moves and negates whole blocks, as one gather:
    ``out[n, c, i, j] = sign[n, c] * x[n, c, rows[n, i], cols[n, j]]`` (index -1: a zero block).

    ``rows`` (N, h) and ``cols`` (N, w) int64, ``sign`` (N, C) float32 or None. Crops, flips and
    nearest-neighbour resized crops produce plans (``transform.plan(shape, generator)``, drawing the
    same random numbers as ``transform(x, generator)``); consecutive plans compose into one."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, sign: Optional[torch.Tensor] = None):
        self.rows, self.cols, self.sign = rows, cols, sign

    @staticmethod
    def _compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        picked = torch.gather(first, 1, second.clamp(min=0))
        return torch.where(second >= 0, picked, torch.full_like(picked, -1))

    def then(self, other: "GatherPlan") -> "GatherPlan":
        """This plan followed by ``other``."""
        if self.sign is None:
            sign = other.sign
        elif other.sign is None:
            sign = self.sign
        else:
            sign = self.sign * other.sign
        return GatherPlan(self._compose(self.rows, other.rows), self._compose(self.cols, other.cols), sign)

    @property
    def shape(self) -> Tuple[int, int]:
        return self.rows.shape[1], self.cols.shape[1]

    def apply(self, x: torch.Tensor, with_sign: bool = True) -> torch.Tensor:
        out = _gather_windows(x, self.rows, self.cols)
        if with_sign and self.sign is not None:
            out.mul_(self.sign.to(device=out.device, dtype=out.dtype)[:, :, None, None])
        return out


def _identity_indices(count: int, length: int) -> torch.Tensor:
    return torch.arange(length).expand(count, length).clone()


class Compose(DCTTransform):
    """Apply transforms in order, passing the same generator to each. On a batch tensor, runs of
    block-moving transforms (crops, flips, ``RandomResizedCrop(mode="nearest")``) are fused into one
    gather (same result, same random draws)."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    @property
    def integer_exact(self) -> bool:
        return all(getattr(t, "integer_exact", False) for t in self.transforms)

    @property
    def plannable(self) -> bool:
        return all(getattr(t, "plannable", False) for t in self.transforms)

    def plan(self, shape, generator=None) -> "GatherPlan":
        """The whole composition as one ``GatherPlan`` (needs ``plannable``)."""
        N, C, H, W = shape
        combined = GatherPlan(_identity_indices(N, H), _identity_indices(N, W))
        for transform in self.transforms:
            step = transform.plan((N, C) + combined.shape, generator)
            combined = combined.then(step)
        return combined

    def __call__(self, x, generator=None):
        if not (isinstance(x, torch.Tensor) and x.ndim == 4):
            for transform in self.transforms:
                x = transform(x, generator=generator) if isinstance(transform, DCTTransform) else transform(x)
            return x
        pending: Optional[GatherPlan] = None
        for transform in self.transforms:
            if getattr(transform, "plannable", False):
                shape = tuple(x.shape[:2]) + (pending.shape if pending is not None else tuple(x.shape[2:]))
                step = transform.plan(shape, generator)
                pending = step if pending is None else pending.then(step)
                continue
            if pending is not None:
                x, pending = pending.apply(x), None
            x = transform(x, generator=generator) if isinstance(transform, DCTTransform) else transform(x)
        if pending is not None:
            x = pending.apply(x)
        return x


def _random_mask(x: Array, p: float, generator) -> torch.Tensor:
    count = x.shape[0] if x.ndim == 4 else 1
    return torch.rand(count, generator=generator) < p


class _RandomFlip(DCTTransform):
    _axis = "h"

    integer_exact = True

    def __init__(self, p: float = 0.5, channels: Optional[Sequence[int]] = None):
        self.p = float(p)
        self.channels = None if channels is None else list(channels)

    def __call__(self, x, generator=None):
        flip = _random_mask(x, self.p, generator)
        if x.ndim != 4:
            return _flip(x, self._axis, self.channels) if bool(flip[0]) else x
        if not bool(flip.any()):
            return x
        if isinstance(x, np.ndarray):
            return np.where(flip.numpy()[:, None, None, None], _flip(x, self._axis, self.channels), x)
        sign = flip_signs(self._axis, _channels_of(x, self.channels))
        if x.device.type == "cpu":  # per item: a flip kernel for the chosen ones, a copy for the rest
            signs = torch.from_numpy(sign).to(x.dtype)[:, None, None]
            out = torch.empty_like(x)
            dim = -1 if self._axis == "h" else -2
            for item in range(x.shape[0]):
                if flip[item]:
                    torch.mul(x[item].flip(dim), signs, out=out[item])
                else:
                    out[item].copy_(x[item])
            return out
        return _flip_gather(x, flip, sign, self._axis)  # on a GPU: one gather kernel

    plannable = True

    def plan(self, shape, generator=None) -> GatherPlan:
        N, C, H, W = shape
        flip = torch.rand(N, generator=generator) < self.p  # the same draw as __call__
        chans = _ALL_CHANNELS if self.channels is None else np.asarray(self.channels)
        if len(chans) != C:
            raise ValueError(f"input has {C} channels, not {len(chans)}: pass channels=")
        sign = torch.from_numpy(flip_signs(self._axis, chans))
        length = W if self._axis == "h" else H
        forward = torch.arange(length)
        order = torch.where(flip[:, None], forward.flip(0)[None, :], forward[None, :])
        signs = torch.where(flip[:, None], sign[None, :], torch.ones(1))
        if self._axis == "h":
            return GatherPlan(_identity_indices(N, H), order, signs)
        return GatherPlan(order, _identity_indices(N, W), signs)


def _flip_gather(x: torch.Tensor, flip: torch.Tensor, sign: np.ndarray, axis: str) -> torch.Tensor:
    """Flip the items of ``x`` (N, C, H, W) where ``flip`` (N,) bool: one gather (reversed block order
    for the flipped items) and one per-item channel sign (``sign``: (C,) +-1)."""
    N, C, H, W = x.shape
    length = W if axis == "h" else H
    forward = torch.arange(length)
    order = torch.where(flip[:, None], forward.flip(0)[None, :], forward[None, :])  # (N, length)
    sign = torch.from_numpy(np.asarray(sign, dtype=np.float32))
    signs = torch.where(flip[:, None], sign[None, :], torch.ones(1))  # (N, C)
    if axis == "h":
        out = _gather_windows(x, torch.arange(H).expand(N, H), order)
    else:
        out = _gather_windows(x, order, torch.arange(W).expand(N, W))
    return out.mul_(signs.to(device=x.device, dtype=out.dtype)[:, :, None, None])


class RandomHorizontalFlip(_RandomFlip):
    """Exact horizontal flip (see ``hflip``) with probability ``p``, independently per batch item."""
    _axis = "h"


class RandomVerticalFlip(_RandomFlip):
    """Exact vertical flip (see ``vflip``) with probability ``p``, independently per batch item."""
    _axis = "v"


class CenterCrop(DCTTransform):
    """Centred block-aligned crop / zero padding to ``size`` blocks (default 28x28 = 224 px)."""

    integer_exact = True

    def __init__(self, size: SizeLike = 28):
        self.size = _pair(size)

    def __call__(self, x, generator=None):
        return center_crop(x, self.size)

    plannable = True

    def plan(self, shape, generator=None) -> GatherPlan:
        N, _, H, W = shape
        h, w = self.size
        tops = torch.full((N,), center_offsets(H, h), dtype=torch.int64)
        lefts = torch.full((N,), center_offsets(W, w), dtype=torch.int64)
        return GatherPlan(_window_indices(tops, h, H), _window_indices(lefts, w, W))


class RandomCrop(DCTTransform):
    """Block-aligned random crop to ``size`` blocks with ``padding`` blocks of zeros on each side
    (see ``random_crop``)."""

    integer_exact = True

    def __init__(self, size: SizeLike = 28, padding: int = 0):
        self.size = _pair(size)
        self.padding = int(padding)

    def __call__(self, x, generator=None):
        return random_crop(x, self.size, self.padding, generator)

    plannable = True

    def plan(self, shape, generator=None) -> GatherPlan:
        N, _, H, W = shape
        h, w = self.size
        tops, lefts = random_crop_params((H, W), (h, w), self.padding, N, generator)
        return GatherPlan(_window_indices(tops, h, H), _window_indices(lefts, w, W))


class SourceTransform(DCTTransform):
    """A transform that reads the JPEG itself: it picks a window of the ORIGINAL image in pixels for
    each item (``boxes``), and the native decode resizes that window exactly (``read_batch(boxes=,
    support=, subsampling=)``: decoded YCbCr pixels, Pillow/torchvision bilinear antialias, block DCT)
    to ``size`` blocks. ``DCTLoader`` learns each image's size from its header and runs it inside the
    decode; it must come first in a ``Compose`` (the block transforms after it work on its output).
    On coefficients that are already decoded it cannot run: it raises ``UsageError``."""

    reads_source = True
    #: whether ``boxes`` draws from the generator (else the windows depend on the image sizes only)
    random = False
    #: ``"box"``: crop, then resize (the filter reads only the window: torchvision ``resized_crop``);
    #: ``"image"``: the filter reads around the window too (Pillow ``resize(box=)``: Resize + CenterCrop).
    support = "box"

    def boxes(self, sizes: np.ndarray, generator: Optional[torch.Generator] = None) -> np.ndarray:
        """``(N, 4)`` float64 windows ``(top, left, height, width)`` in pixels for images of ``sizes``
        ``(N, 2)`` ``(height, width)``, drawn in item order from ``generator``."""
        raise NotImplementedError

    def __call__(self, x, generator=None):
        from .errors import UsageError

        raise UsageError(
            f"{type(self).__name__}(mode='exact') resamples the decoded pixels of the JPEG, so it runs inside the "
            "decode: give it to DCTLoader(transform=...) (first in a Compose), or call "
            "funloader.read_batch(..., boxes=transform.boxes(funloader.codec.read_sizes(files))); on coefficients "
            "already decoded use RandomResizedCrop(mode='nearest') (approximate)")


class RandomResizedCrop(SourceTransform):
    """torchvision's ``RandomResizedCrop(size * 8, scale, ratio)``, in the DCT domain.

    ``mode="exact"`` (default): the window is drawn in pixels on the whole original image exactly as
    torchvision's ``RandomResizedCrop.get_params`` draws it (:func:`random_resized_crop_box`), and the
    native decode resizes it with torchvision's ``resized_crop(..., BILINEAR, antialias=True)``
    semantics per YCbCr component (chroma at half resolution with ``subsampling="420"``, full with
    ``"444"``) and block-DCTs it into ``size`` blocks: the pixel operation itself (see docs/loader.md
    for the measured PSNR and speed). Runs in ``DCTLoader`` (or ``read_batch(boxes=)``), not on a tensor.

    ``mode="nearest"``: approximate. A block-aligned window of the decoded block grid (the same
    area/aspect sampling, in whole blocks), resized by repeating or skipping whole 8x8 blocks: object
    scale changes but the texture inside a block does not (far from the pixel operation: see
    docs/loader.md for its measured PSNR). A gather; runs on any coefficient tensor.

    (``mode="dct"``, a linear DCT-domain resampling of the block window, is gone: ``exact`` is both
    faithful and fast.)
    """

    random = True

    def __init__(self, size: SizeLike = 28, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), mode: str = "exact",
                 subsampling: str = "420"):
        if mode not in ("exact", "nearest"):
            raise ValueError(f"mode must be 'exact' (default) or 'nearest' (approximate), got {mode!r}")
        if subsampling not in ("420", "444"):
            raise ValueError(f"subsampling must be '420' or '444', got {subsampling!r}")
        self.size = _pair(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.mode = mode
        self.subsampling = subsampling

    @property
    def reads_source(self) -> bool:  # type: ignore[override]
        return self.mode == "exact"

    @property
    def integer_exact(self) -> bool:
        return self.mode == "nearest"

    @property
    def plannable(self) -> bool:
        return self.mode == "nearest"

    def boxes(self, sizes, generator=None) -> np.ndarray:
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        out = np.empty((len(sizes), 4), dtype=np.float64)
        for item, (height, width) in enumerate(sizes):
            out[item] = random_resized_crop_box(height, width, self.scale, self.ratio, generator)
        return out

    def plan(self, shape, generator=None) -> GatherPlan:
        if self.mode != "nearest":
            raise ValueError("only mode='nearest' is a block gather")
        N, _, H, W = shape
        boxes = resized_crop_params((H, W), self.scale, self.ratio, N, generator)
        return GatherPlan(_nearest_indices(boxes[:, 0], boxes[:, 2], self.size[0]),
                          _nearest_indices(boxes[:, 1], boxes[:, 3], self.size[1]))

    def __call__(self, x, generator=None):
        if self.mode == "exact":
            return super().__call__(x, generator)
        was_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(x)) if was_numpy else x
        batch = t if t.ndim == 4 else t[None]
        boxes = resized_crop_params(tuple(batch.shape[-2:]), self.scale, self.ratio, batch.shape[0], generator)
        out = _resized_crop_batch(batch, boxes, self.size)
        out = out if t.ndim == 4 else out[0]
        return out.numpy() if was_numpy else out


def split_source(transform) -> Tuple[Optional["SourceTransform"], Optional[DCTTransform]]:
    """``(source, rest)``: the transform that reads the JPEG itself (``RandomResizedCrop(mode="exact")``,
    ``ResizeCenterCrop``), which must come first, and the transforms that follow it (or None)."""
    if transform is None:
        return None, None
    if getattr(transform, "reads_source", False):
        return transform, None
    if isinstance(transform, Compose):
        items = list(transform.transforms)
        late = [t for t in items[1:] if getattr(t, "reads_source", False)]
        if late:
            from .errors import UsageError

            raise UsageError(f"{type(late[0]).__name__} reads the JPEG (it resizes a window of the original image): "
                             "it must be the first transform of the Compose")
        if items and getattr(items[0], "reads_source", False):
            return items[0], (Compose(items[1:]) if len(items) > 1 else None)
    return None, transform


class ResizeCenterCrop(SourceTransform):
    """The evaluation transform: torchvision's ``Resize(resize) + CenterCrop(8 * size)`` on the original
    image, in pixels, done by the native decode (default ``resize = round(8 * min(size) * 256 / 224)``,
    i.e. ``Resize(256) + CenterCrop(224)`` for 28 blocks). The filter reads the image around the
    crop, as Resize then CenterCrop does (Pillow's ``resize(box=)``). Deterministic."""

    support = "image"

    def __init__(self, size: SizeLike = 28, resize: Optional[int] = None, subsampling: str = "420"):
        if subsampling not in ("420", "444"):
            raise ValueError(f"subsampling must be '420' or '444', got {subsampling!r}")
        self.size = _pair(size)
        self.resize = int(resize) if resize is not None else int(round(8 * min(self.size) * 256 / 224))
        if self.resize <= 0:
            raise ValueError(f"resize must be a positive side length in pixels, got {resize!r}")
        self.subsampling = subsampling

    def boxes(self, sizes, generator=None) -> np.ndarray:
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        crop = (8 * self.size[0], 8 * self.size[1])
        out = np.empty((len(sizes), 4), dtype=np.float64)
        for item, (height, width) in enumerate(sizes):
            out[item] = resize_center_crop_box(height, width, self.resize, crop)
        return out


class ReadOrResize(ResizeCenterCrop):
    """What ``DCTLoader`` (and ``fun_pipeline``) do without a transform: a file whose block grid is
    ``size`` (e.g. prepared 224x224 files at 28 blocks) is read as it is (its window is a NaN row:
    no resampling, the stored coefficients); any other file gets the evaluation transform
    :class:`ResizeCenterCrop` (``Resize(256) + CenterCrop(224)`` for 28 blocks), not a centre crop."""

    def boxes(self, sizes, generator=None) -> np.ndarray:
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        grids = (sizes + 7) // 8
        as_is = (grids[:, 0] == self.size[0]) & (grids[:, 1] == self.size[1])
        out = np.full((len(sizes), 4), np.nan)
        if not as_is.all():
            out[~as_is] = super().boxes(sizes[~as_is])
        return out


class SelectFrequencies(DCTTransform):
    """Keep the lowest zigzag frequencies per component (``keep="44/10/10"``), zeroing (``mode="zero"``)
    or dropping (``mode="drop"``) the others; see ``select_frequencies``."""

    integer_exact = True

    def __init__(self, keep: KeepSpec, mode: str = "zero"):
        if mode not in ("zero", "drop"):
            raise ValueError(f"mode must be 'zero' or 'drop', got {mode!r}")
        self.keep = keep
        self.mode = mode

    def __call__(self, x, generator=None):
        return select_frequencies(x, self.keep, self.mode)


class Dequantize(DCTTransform):
    """Multiply by fixed quantisation steps ``qtables`` (``(192,)`` or ``(3, 64)``), e.g. for a
    dataset encoded with one known quality; per-image tables: use ``dequantize`` or
    ``read_fun(..., dequantize=True)``."""

    def __init__(self, qtables):
        self.qtables = np.asarray(qtables, dtype=np.float32).reshape(192)

    def __call__(self, x, generator=None):
        return dequantize(x, self.qtables)


class Normalize(DCTTransform):
    """Per-channel ``(x - mean) / std`` with the 192 FUN-channel statistics (``channels`` for
    inputs with dropped frequencies); float output (``dtype`` or float32)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: Optional[Sequence[int]] = None,
                 dtype=None):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(192)
        self.std = np.asarray(std, dtype=np.float64).reshape(192)
        self.channels = None if channels is None else list(channels)
        self.dtype = dtype

    def __call__(self, x, generator=None):
        return normalize(x, self.mean, self.std, self.channels, self.dtype)

    def __repr__(self):
        return f"Normalize(mean=<192>, std=<192>, channels={self.channels!r}, dtype={self.dtype!r})"


class ToDtype(DCTTransform):
    """Convert to a torch dtype (numpy input becomes a tensor)."""

    def __init__(self, dtype=torch.float32):
        self.dtype = dtype

    def __call__(self, x, generator=None):
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        return t.to(self.dtype)


# ----------------------------------------------------------------------------------------------
# augmentations that live in their own modules (issue 16), re-exported here
from . import autoaugment as _autoaugment, color as _color, geometry as _geometry, mixing as _mixing  # noqa: E402
from .autoaugment import *  # noqa: E402,F401,F403
from .color import *  # noqa: E402,F401,F403
from .geometry import *  # noqa: E402,F401,F403
from .mixing import *  # noqa: E402,F401,F403

__all__ += _autoaugment.__all__ + _color.__all__ + _geometry.__all__ + _mixing.__all__
