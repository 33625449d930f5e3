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
