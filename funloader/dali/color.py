"""DALI graph form of ``funloader.color``: per-sample colour jitter on dequantised FUN coefficients.

The same algebra as :mod:`funloader.color` (see its docstring), as DALI arithmetic on ``images``
``(192, H8, W8)`` per sample, before normalisation, on the pipeline's device:

* brightness ``b``: every coefficient times ``b``, Y DC plus ``1024 (b - 1)``;
* contrast ``c``: every coefficient times ``c``, Y DC plus ``(1 - c) * mean(Y DC)``;
* saturation ``s``: chroma coefficients times ``s``;
* hue ``h``: (Cb, Cr) rotated by ``2π h`` (not torchvision's HSV hue, see ``funloader.color.adjust_hue``).

Factors are drawn per sample by DALI's ``fn.random.uniform`` (torchvision's ranges:
``[max(0, 1 - v), 1 + v]``, hue ``[-h, h]``). The ops apply in the fixed order brightness,
contrast, saturation, hue (torchvision's ``ColorJitter`` draws a random order per image: here the
order is fixed, the only difference from ``funloader.transforms.ColorJitter``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..color import DC_LEVEL, _range

Jitter = Union[float, Sequence[float], None]


def jitter_ranges(brightness: Jitter = 0, contrast: Jitter = 0, saturation: Jitter = 0, hue: Jitter = 0):
    """torchvision ``ColorJitter``'s ranges (None for an op that is off), validated as ``ColorJitter`` does."""
    return (_range(brightness, "brightness"), _range(contrast, "contrast"), _range(saturation, "saturation"),
            _range(hue, "hue", center=0.0, bound=(-0.5, 0.5), clip_first=False))


def color_jitter(images, ranges: Tuple[Optional[Tuple[float, float]], ...], device: str):
    """Apply per-sample brightness, contrast, saturation, hue (``ranges`` from :func:`jitter_ranges`)
    to a DALI node of float ``(192, H8, W8)`` dequantised coefficients; returns the new node."""
    from nvidia.dali import fn, math as dmath, types

    def constant(values):
        return types.Constant(np.asarray(values, dtype=np.float32).reshape(-1, 1, 1), device=device)

    dc = np.zeros(192, np.float32)
    dc[0] = 1.0
    chroma = np.zeros(192, np.float32)
    chroma[64:] = 1.0
    def draw(bounds):  # one factor per sample; a fixed value for a degenerate range
        return float(bounds[0]) if bounds[0] == bounds[1] else fn.random.uniform(range=[float(v) for v in bounds])

    brightness, contrast, saturation, hue = ranges
    if brightness is not None:
        b = draw(brightness)
        images = images * b + constant(dc) * (DC_LEVEL * (b - 1.0))
    if contrast is not None:
        c = draw(contrast)
        mean_dc = fn.reductions.mean(fn.slice(images, start=[0], shape=[1], axes=[0]))
        images = images * c + constant(dc) * ((1.0 - c) * mean_dc)
    if saturation is not None:
        s = draw(saturation)
        images = images * (constant(1.0 - chroma) + constant(chroma) * s)
    if hue is not None:
        angle = draw(hue) * (2.0 * math.pi)
        cos, sin = (math.cos(angle), math.sin(angle)) if isinstance(angle, float) else (dmath.cos(angle), dmath.sin(angle))
        luma = fn.slice(images, start=[0], shape=[64], axes=[0])
        cb = fn.slice(images, start=[64], shape=[64], axes=[0])
        cr = fn.slice(images, start=[128], shape=[64], axes=[0])
        images = fn.cat(luma, cb * cos - cr * sin, cb * sin + cr * cos, axis=0)
    return images
