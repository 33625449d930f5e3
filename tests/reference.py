"""Independent numpy references shared by the tests and the fuzz harness."""
from __future__ import annotations

import numpy as np


def fun_from_dct(image) -> np.ndarray:
    """The FUN layout ``(192, H8, W8)`` int16 rebuilt in numpy from ``read_dct``'s per-component planes:
    component block = floor(full-resolution block * sampling / max sampling), clamped."""
    grid_h, grid_w = image.grid
    fun = np.zeros((192, grid_h, grid_w), dtype=np.int16)
    h_max = max(h for h, _ in image.sampling)
    v_max = max(v for _, v in image.sampling)
    for component, (plane, (h, v)) in enumerate(zip(image.coefficients[:3], image.sampling[:3])):
        rows = np.minimum(np.arange(grid_h) * v // v_max, plane.shape[0] - 1)
        cols = np.minimum(np.arange(grid_w) * h // h_max, plane.shape[1] - 1)
        fun[64 * component:64 * component + 64] = plane[rows][:, cols].transpose(2, 0, 1)
    return fun


def centre_fit(fun: np.ndarray, grid) -> np.ndarray:
    """``fun`` ``(C, h, w)`` centre-cropped (first block ``(h - H) // 2``) or zero-padded (placed at
    ``(H - h) // 2``) by whole blocks to ``grid = (H, W)``, per axis: read_batch's documented rule."""
    out = np.zeros((fun.shape[0], *grid), dtype=fun.dtype)
    src, dst = [], []
    for size, target in zip(fun.shape[1:], grid):
        if size >= target:
            start = (size - target) // 2
            src.append(slice(start, start + target))
            dst.append(slice(0, target))
        else:
            start = (target - size) // 2
            src.append(slice(0, size))
            dst.append(slice(start, start + size))
    out[:, dst[0], dst[1]] = fun[:, src[0], src[1]]
    return out
