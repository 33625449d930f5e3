"""Block-exact geometric augmentations on FUN coefficients ``(..., C, H8, W8)``.

Each of these moves, permutes, negates or replaces whole 8x8 blocks, so the result is exactly the
coefficients of the same operation done on the pixels (8-pixel steps), with no resampling:

* ``transpose``: a block's pixel matrix ``P`` becomes ``P.T``, whose DCT is the transposed
  coefficient matrix, so channel ``64*comp + 8*v + u`` takes the value of ``64*comp + 8*u + v``
  (u and v swap) and the block grid is transposed. Equals ``jpegtran -transpose`` (tested).
* ``rotate(x, 90)`` (clockwise, as ``jpegtran -rotate 90``) = transpose then horizontal flip;
  ``180`` = horizontal + vertical flip; ``270`` = transpose then vertical flip; ``transverse``
  = transpose then rotate 180. The flips (block order reversed, odd frequencies negated with the
  signs of ``funloader.channels.flip_signs``) are ``funloader.transforms.hflip``/``vflip``.
* ``erase``: a block-aligned box filled with a constant colour (``fill``, an RGB value in 0..255
  like torchvision's ``fill``; default 128 = mid grey = all-zero coefficients; a constant block has
  ``DC = 8 * (sample - 128)`` per YCbCr component and no AC).
* ``erase_pixels``: any pixel box: the blocks inside get the fill's coefficients, each block the
  box edge cuts goes through the inverse block DCT, its pixels inside the box are set to the fill
  and it is transformed back (float64), so the result is the pixel erase exactly (up to float
  rounding). Needs dequantised float coefficients with all 192 channels.
* ``translate``: shift by whole blocks, uncovered blocks get ``fill``.

Draws (``RandomErasing``, ``RandomTranslate``, ``RandomRotation``) are made per item on the CPU
from the given ``torch.Generator`` and applied on the tensor's device.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import UsageError
from .transform_base import DCTTransform

__all__ = [
    "transpose", "rotate", "transverse", "erase", "erase_pixels", "translate", "fill_coefficients", "transpose_permutation",
    "RandomErasing", "RandomTranslate", "RandomRotation", "RandomTranspose",
]

Fill = Union[float, Sequence[float]]


def transpose_permutation(channels: Optional[Sequence[int]] = None) -> np.ndarray:
    """``(C,)`` int64: output channel ``k`` of a transpose takes input channel ``perm[k]`` (u and v
    swapped within each component: ``64*comp + 8*v + u -> 64*comp + 8*u + v``). With ``channels``
    (the FUN index of each present channel) the swapped channel must be present too."""
    chans = np.arange(192) if channels is None else np.asarray(channels, dtype=np.int64).reshape(-1)
    swapped = 64 * (chans // 64) + 8 * (chans % 8) + (chans % 64) // 8
    position = {int(c): i for i, c in enumerate(chans)}
    missing = [int(c) for c in swapped if int(c) not in position]
    if missing:
        raise UsageError(f"transpose needs channel {missing[0]} (the u/v swap of a present channel): "
                         "transpose before selecting frequencies, or keep a symmetric set")
    return np.array([position[int(c)] for c in swapped], dtype=np.int64)


def _tensor(x):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    if not isinstance(x, torch.Tensor):
        raise UsageError(f"expected a tensor or numpy array, got {type(x).__name__}")
    if x.ndim < 3:
        raise UsageError(f"expected FUN coefficients (..., C, H8, W8), got shape {tuple(x.shape)}")
    return x, False


def transpose(x, channels: Optional[Sequence[int]] = None):
    """Transpose the image (swap rows and columns), exactly: block grid transposed, ``u`` and ``v``
    swapped in every block. ``(..., C, H8, W8) -> (..., C, W8, H8)``; numpy in, numpy out."""
    t, was_numpy = _tensor(x)
    perm = torch.from_numpy(transpose_permutation(_channels_for(t, channels)))
    out = t.index_select(-3, perm.to(t.device)).transpose(-1, -2).contiguous()
    return out.numpy() if was_numpy else out


def _channels_for(t: torch.Tensor, channels):
    """``channels`` as given, None for a 192-channel input; a smaller input must name its channels."""
    if channels is not None or t.shape[-3] == 192:
        return channels
    raise UsageError(f"input has {t.shape[-3]} channels, not 192: pass channels= (the FUN index of each channel)")


def rotate(x, angle: int, channels: Optional[Sequence[int]] = None):
    """Rotate clockwise by ``angle`` in {0, 90, 180, 270} degrees (``jpegtran -rotate``), exactly.
    90/270 turn ``(H8, W8)`` into ``(W8, H8)``. Other angles are not block-exact and raise."""
    from .transforms import hflip, vflip

    angle = int(angle) % 360
    if angle == 0:
        t, was_numpy = _tensor(x)
        return x.copy() if was_numpy else t.clone()
    if angle == 90:
        return hflip(transpose(x, channels), channels)
    if angle == 180:
        return vflip(hflip(x, channels), channels)
    if angle == 270:
        return vflip(transpose(x, channels), channels)
    raise UsageError(f"rotation by {angle} degrees is not exact in the DCT domain: use a multiple of 90")


def transverse(x, channels: Optional[Sequence[int]] = None):
    """Transpose across the anti-diagonal (``jpegtran -transverse``): transpose, then rotate 180."""
    return rotate(transpose(x, channels), 180, channels)


def fill_coefficients(fill: Fill = 128.0, channels: Optional[Sequence[int]] = None) -> np.ndarray:
    """``(C,)`` float32 coefficients of a block of constant colour ``fill``, an RGB value in 0..255 as
    torchvision's ``fill`` (one number = that grey level, or an ``(R, G, B)`` triple): converted to
    YCbCr with the JFIF matrix, then ``DC = 8 * (sample - 128)`` per component, AC zero. The default
    grey 128 is the all-zero block."""
    rgb = np.asarray(fill, dtype=np.float64).reshape(-1)
    if rgb.size == 1:
        rgb = np.repeat(rgb, 3)
    if rgb.shape != (3,):
        raise UsageError(f"fill must be one value or an (R, G, B) triple, got {fill!r}")
    ycbcr = _JFIF_RGB_TO_YCBCR @ rgb + np.array([0.0, 128.0, 128.0])
    coefficients = np.zeros(192, dtype=np.float32)
    coefficients[[0, 64, 128]] = 8.0 * (ycbcr - 128.0)
    coefficients[np.abs(coefficients) < 1e-4] = 0.0  # grey fills give exact zeros (rounding of the matrix)
    chans = np.arange(192) if channels is None else np.asarray(channels, dtype=np.int64)
    return coefficients[chans]


#: JFIF RGB -> YCbCr (ITU-R BT.601 full range), without the +128 chroma offset.
_JFIF_RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                               [-0.168735892, -0.331264108, 0.5],
                               [0.5, -0.418687589, -0.081312411]])


def _fill_like(fill, channels, t: torch.Tensor) -> Optional[torch.Tensor]:
    """``(C, 1, 1)`` fill coefficients for ``t``, or None for all-zero (grey) fill."""
    values = fill_coefficients(fill, _channels_for(t, channels))
    if not values.any():
        return None
    if not t.is_floating_point():
        raise UsageError("a non-grey fill needs dequantised float coefficients")
    return torch.from_numpy(values).to(device=t.device, dtype=t.dtype)[:, None, None]


def _box_masks(boxes: torch.Tensor, H: int, W: int, device) -> torch.Tensor:
    """``(N, 1, H, W)`` bool masks of ``boxes`` ``(N, 4)`` = (top, left, height, width) in blocks."""
    rows = torch.arange(H)[None, :]
    cols = torch.arange(W)[None, :]
    inside_r = (rows >= boxes[:, :1]) & (rows < boxes[:, :1] + boxes[:, 2:3])
    inside_c = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 1:2] + boxes[:, 3:4])
    return (inside_r[:, :, None] & inside_c[:, None, :])[:, None].to(device)


def erase(x, top: int, left: int, height: int, width: int, fill: Fill = 128.0,
          channels: Optional[Sequence[int]] = None):
    """Fill the block box ``(top, left, height, width)`` with the constant pixel value ``fill``
    (torchvision ``erase`` of the 8-aligned pixel box ``8*top, 8*left, 8*height, 8*width`` with
    ``v = fill``), exactly. Returns a new array/tensor."""
    t, was_numpy = _tensor(x)
    H, W = t.shape[-2:]
    if not (0 <= top and 0 <= left and height >= 0 and width >= 0 and top + height <= H and left + width <= W):
        raise UsageError(f"erase box {(top, left, height, width)} is not inside the {H}x{W} block grid")
    out = t.clone()
    value = _fill_like(fill, channels, t)
    out[..., top:top + height, left:left + width] = 0 if value is None else value
    return out.numpy() if was_numpy else out


def _erase_pixel_box(image: torch.Tensor, top: int, left: int, height: int, width: int, level: torch.Tensor) -> None:
    """In place on one image ``(192, H8, W8)`` float: the pixel box ``(top, left, height, width)``
    set to ``level`` ``(3,)`` float64 (the fill's YCbCr minus 128). Only the blocks the box touches
    are read; the blocks it covers entirely get the fill's coefficients directly."""
    from .channels import block_dct_matrix

    if height <= 0 or width <= 0:
        return
    r0, r1 = top // 8, -(-(top + height) // 8)
    c0, c1 = left // 8, -(-(left + width) // 8)
    Hb, Wb = r1 - r0, c1 - c0
    D = torch.from_numpy(block_dct_matrix()).to(image.device)
    blocks = image[:, r0:r1, c0:c1].to(torch.float64).reshape(3, 8, 8, Hb, Wb).permute(0, 3, 4, 1, 2)  # (3,Hb,Wb,v,u)
    pixels = D.T @ blocks @ D  # (3, Hb, Wb, y, x), level-shifted samples
    rows = torch.arange(8 * r0, 8 * r1, device=image.device)
    cols = torch.arange(8 * c0, 8 * c1, device=image.device)
    inside = ((rows >= top) & (rows < top + height))[:, None] & ((cols >= left) & (cols < left + width))[None, :]
    inside = inside.reshape(Hb, 8, Wb, 8).permute(0, 2, 1, 3)  # (Hb, Wb, y, x)
    level = level.to(device=image.device, dtype=torch.float64)[:, None, None, None, None]
    pixels = torch.where(inside, level, pixels)
    coefficients = D @ pixels @ D.T  # (3, Hb, Wb, v, u)
    covered = inside.all(dim=-1).all(dim=-1)  # (Hb, Wb) blocks inside the box: the exact constant block
    flat = torch.zeros_like(coefficients)
    flat[..., 0, 0] = 8.0 * level[:, :, :, 0, 0]
    coefficients = torch.where(covered[None, :, :, None, None], flat, coefficients)
    image[:, r0:r1, c0:c1] = coefficients.permute(0, 3, 4, 1, 2).reshape(192, Hb, Wb).to(image.dtype)


def _fill_level(fill: Fill) -> torch.Tensor:
    """``(3,)`` float64: the fill's Y, Cb, Cr sample values minus 128 (its coefficients' DC / 8)."""
    return torch.from_numpy(fill_coefficients(fill)[[0, 64, 128]].astype(np.float64) / 8.0)


def _check_pixel_erasable(t: torch.Tensor, channels, name: str) -> None:
    if (channels is not None and list(channels) != list(range(192))) or t.shape[-3] != 192:
        raise UsageError(f"{name}: a pixel box needs all 192 channels (the inverse DCT of the edge blocks), "
                         f"got {t.shape[-3]} channels: erase before selecting frequencies")
    if not t.is_floating_point():
        raise UsageError(f"{name}: a pixel box needs dequantised float coefficients (read_fun(dequantize=True), "
                         f"DCTLoader's default), got {t.dtype}")


def erase_pixels(x, top: int, left: int, height: int, width: int, fill: Fill = 128.0):
    """torchvision ``erase(img, top, left, height, width, v=fill)`` for any pixel box on the
    ``8*H8 x 8*W8`` pixel grid, exactly (up to float rounding): whole blocks inside the box get the
    fill's coefficients; each block the edge cuts is inverse transformed, its pixels inside the box
    set to ``fill`` and transformed back. Needs dequantised float coefficients ``(..., 192, H8, W8)``.
    Returns a new array/tensor (every item gets the same box)."""
    t, was_numpy = _tensor(x)
    _check_pixel_erasable(t, None, "erase_pixels")
    H, W = t.shape[-2:]
    top, left, height, width = (int(v) for v in (top, left, height, width))
    if not (0 <= top and 0 <= left and height >= 0 and width >= 0 and top + height <= 8 * H and left + width <= 8 * W):
        raise UsageError(f"erase_pixels box {(top, left, height, width)} is not inside the {8 * H}x{8 * W} pixel grid")
    out = t.clone()
    level = _fill_level(fill)
    for image in out.reshape(-1, *t.shape[-3:]):
        _erase_pixel_box(image, top, left, height, width, level)
    return out.numpy() if was_numpy else out


def _shift_indices(shift: torch.Tensor, length: int) -> torch.Tensor:
    """``(N, length)`` source index of each output position after shifting by ``shift`` (-1: uncovered)."""
    source = torch.arange(length)[None, :] - shift[:, None]
    return torch.where((source >= 0) & (source < length), source, torch.full_like(source, -1))


def translate(x, dy: int, dx: int, fill: Fill = 128.0, channels: Optional[Sequence[int]] = None):
    """Shift the image down by ``dy`` and right by ``dx`` whole blocks (negative: up / left); the
    uncovered blocks get ``fill`` (torchvision ``affine(img, 0, [8*dx, 8*dy], 1, 0, fill=fill)``),
    exactly."""
    t, was_numpy = _tensor(x)
    batch = t.reshape(-1, *t.shape[-3:])
    N, _, H, W = batch.shape
    out = _translate_batch(batch, torch.full((N,), int(dy)), torch.full((N,), int(dx)), fill, channels)
    out = out.reshape(t.shape)
    return out.numpy() if was_numpy else out


def _translate_batch(batch, dy, dx, fill, channels):
    from .transforms import GatherPlan

    N, _, H, W = batch.shape
    plan = GatherPlan(_shift_indices(dy, H), _shift_indices(dx, W))
    out = plan.apply(batch)
    value = _fill_like(fill, channels, batch)
    if value is not None:
        uncovered = ((plan.rows < 0)[:, :, None] | (plan.cols < 0)[:, None, :])[:, None].to(batch.device)
        out = torch.where(uncovered, value.expand_as(out[:1]), out)
    return out


# ----------------------------------------------------------------------------------------------
# random classes
class RandomErasing(DCTTransform):
    """torchvision ``RandomErasing(p, scale, ratio, value)`` with block-aligned boxes: per item, with
    probability ``p``, up to 10 attempts of area fraction ``U(scale)`` and aspect ratio log-uniform
    in ``ratio``, sides ``round(sqrt(area*ratio))`` blocks (torchvision's rule on the block grid); a
    box that does not fit after 10 attempts leaves the item unchanged, as torchvision does. The box
    is filled with the constant pixel value ``fill`` (default grey; torchvision's ``value``).

    ``pixel_boxes=True``: the same rule on the pixel grid ``8*H8 x 8*W8`` (torchvision's boxes
    exactly), each box erased with ``erase_pixels`` (edge blocks through the inverse DCT); needs
    dequantised float coefficients with all 192 channels. ``boxes`` then returns pixel boxes."""

    def __init__(self, p: float = 0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), fill: Fill = 128.0,
                 channels: Optional[Sequence[int]] = None, pixel_boxes: bool = False):
        if not 0.0 <= float(p) <= 1.0:
            raise UsageError(f"p must be in [0, 1], got {p}")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise UsageError(f"scale must be within (0, 1] and ratio positive, both (min, max); got {scale}, {ratio}")
        self.p, self.scale, self.ratio, self.fill = float(p), tuple(scale), tuple(ratio), fill
        self.channels = None if channels is None else list(channels)
        self.pixel_boxes = bool(pixel_boxes)
        fill_coefficients(fill)  # validate now

    @property
    def integer_exact(self) -> bool:
        return not self.pixel_boxes

    def boxes(self, count: int, grid: Tuple[int, int], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(count, 4)`` int64 boxes (top, left, height, width) on ``grid`` (blocks, or pixels with
        ``pixel_boxes``: pass the pixel grid); height 0 = not erased."""
        H, W = grid
        apply = torch.rand(count, generator=generator) < self.p
        attempts = 10
        area = H * W * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(count, attempts, generator=generator,
                                                                                      dtype=torch.float64))
        log_ratio = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * torch.rand(
            count, attempts, generator=generator, dtype=torch.float64)
        aspect = torch.exp(log_ratio)
        h = torch.round(torch.sqrt(area * aspect)).long()
        w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (h < H) & (w < W) & (h > 0) & (w > 0)
        u_top = torch.rand(count, attempts, generator=generator, dtype=torch.float64)
        u_left = torch.rand(count, attempts, generator=generator, dtype=torch.float64)
        first = torch.where(fits.any(1), fits.double().argmax(1), torch.full((count,), -1))
        a = first.clamp(min=0)[:, None]  # each item's first fitting attempt, gathered for all items at once
        hh, ww = h.gather(1, a)[:, 0], w.gather(1, a)[:, 0]
        top = (u_top.gather(1, a)[:, 0] * (H - hh + 1)).long()  # truncation, as int() (values are >= 0)
        left = (u_left.gather(1, a)[:, 0] * (W - ww + 1)).long()
        boxes = torch.stack([top, left, hh, ww], 1)
        return boxes.masked_fill_(~(apply & (first >= 0))[:, None], 0)

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        t, was_numpy = _tensor(x)
        batch = t.reshape(-1, *t.shape[-3:])
        if self.pixel_boxes:
            _check_pixel_erasable(batch, self.channels, "RandomErasing(pixel_boxes=True)")
            boxes = self.boxes(batch.shape[0], (8 * batch.shape[-2], 8 * batch.shape[-1]), generator)
            out = batch.clone()
            level = _fill_level(self.fill)
            for item in torch.nonzero(boxes[:, 2] > 0).flatten().tolist():
                _erase_pixel_box(out[item], *boxes[item].tolist(), level)
            out = out.reshape(t.shape)
            return out.numpy() if was_numpy else out
        boxes = self.boxes(batch.shape[0], tuple(batch.shape[-2:]), generator)
        mask = _box_masks(boxes, batch.shape[-2], batch.shape[-1], batch.device)
        value = _fill_like(self.fill, self.channels, batch)
        out = batch.masked_fill(mask, 0) if value is None else torch.where(mask, value.expand_as(batch[:1]), batch)
        out = out.reshape(t.shape)
        return out.numpy() if was_numpy else out

    def __repr__(self) -> str:
        return (f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, fill={self.fill!r}"
                + (", pixel_boxes=True)" if self.pixel_boxes else ")"))


class RandomTranslate(DCTTransform):
    """Per-item shift by whole blocks, ``dy`` and ``dx`` uniform integers in ``[-max_dy, max_dy]`` and
    ``[-max_dx, max_dx]`` (``max_blocks`` an int or ``(max_dy, max_dx)``); uncovered blocks get ``fill``.
    With the default grey fill it is a block gather (``plan``), fused with the other block moves
    into the decode on the CPU loader path."""

    integer_exact = True

    def __init__(self, max_blocks: Union[int, Tuple[int, int]], fill: Fill = 128.0):
        dy, dx = (max_blocks, max_blocks) if isinstance(max_blocks, (int, np.integer)) else tuple(max_blocks)
        if int(dy) < 0 or int(dx) < 0:
            raise UsageError(f"max_blocks must be >= 0, got {max_blocks!r}")
        self.max_blocks = (int(dy), int(dx))
        self.fill = fill
        fill_coefficients(fill)

    @property
    def plannable(self) -> bool:
        return not fill_coefficients(self.fill).any()

    def shifts(self, count: int, generator=None) -> Tuple[torch.Tensor, torch.Tensor]:
        dy = torch.randint(-self.max_blocks[0], self.max_blocks[0] + 1, (count,), generator=generator)
        dx = torch.randint(-self.max_blocks[1], self.max_blocks[1] + 1, (count,), generator=generator)
        return dy, dx

    def plan(self, shape, generator=None):
        from .transforms import GatherPlan

        N, _, H, W = shape
        dy, dx = self.shifts(N, generator)
        return GatherPlan(_shift_indices(dy, H), _shift_indices(dx, W))

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        t, was_numpy = _tensor(x)
        batch = t.reshape(-1, *t.shape[-3:])
        dy, dx = self.shifts(batch.shape[0], generator)
        out = _translate_batch(batch, dy, dx, self.fill, None).reshape(t.shape)
        return out.numpy() if was_numpy else out

    def __repr__(self) -> str:
        return f"RandomTranslate(max_blocks={self.max_blocks}, fill={self.fill!r})"


class RandomRotation(DCTTransform):
    """Per item, rotate clockwise by an angle drawn uniformly from ``degrees`` (multiples of 90; default
    ``(0, 90, 180, 270)``), exactly (see ``rotate``). 90/270 need a square block grid in a batch."""

    integer_exact = True

    def __init__(self, degrees: Sequence[int] = (0, 90, 180, 270), channels: Optional[Sequence[int]] = None):
        degrees = [int(d) % 360 for d in (degrees if isinstance(degrees, (list, tuple)) else [degrees])]
        if not degrees or any(d % 90 for d in degrees):
            raise UsageError(f"RandomRotation: only multiples of 90 degrees are exact in the DCT domain, got {degrees}")
        self.degrees = degrees
        self.channels = None if channels is None else list(channels)

    def angles(self, count: int, generator=None) -> torch.Tensor:
        choice = torch.randint(len(self.degrees), (count,), generator=generator)
        return torch.as_tensor(self.degrees)[choice]

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        t, was_numpy = _tensor(x)
        batch = t.reshape(-1, *t.shape[-3:])
        angles = self.angles(batch.shape[0], generator)
        if batch.shape[-1] != batch.shape[-2] and bool(((angles == 90) | (angles == 270)).any()):
            raise UsageError(f"RandomRotation by 90/270 degrees needs a square block grid in a batch, got {tuple(batch.shape[-2:])}")
        out = batch.clone()
        for angle in sorted(set(angles.tolist()) - {0}):
            chosen = torch.nonzero(angles == angle).flatten().to(batch.device)
            out[chosen] = rotate(batch.index_select(0, chosen), angle, self.channels)
        out = out.reshape(t.shape)
        return out.numpy() if was_numpy else out

    def __repr__(self) -> str:
        return f"RandomRotation(degrees={self.degrees})"


class RandomTranspose(DCTTransform):
    """Per item, transpose (``jpegtran -transpose``) with probability ``p``; needs a square grid."""

    integer_exact = True

    def __init__(self, p: float = 0.5, channels: Optional[Sequence[int]] = None):
        self.p = float(p)
        self.channels = None if channels is None else list(channels)

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        t, was_numpy = _tensor(x)
        batch = t.reshape(-1, *t.shape[-3:])
        chosen = torch.nonzero(torch.rand(batch.shape[0], generator=generator) < self.p).flatten()
        if chosen.numel() and batch.shape[-1] != batch.shape[-2]:
            raise UsageError(f"RandomTranspose needs a square block grid in a batch, got {tuple(batch.shape[-2:])}")
        out = batch.clone()
        if chosen.numel():
            chosen = chosen.to(batch.device)
            out[chosen] = transpose(batch.index_select(0, chosen), self.channels)
        out = out.reshape(t.shape)
        return out.numpy() if was_numpy else out

    def __repr__(self) -> str:
        return f"RandomTranspose(p={self.p})"
