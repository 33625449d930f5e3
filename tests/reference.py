"""Independent references shared by the tests and the fuzz harness: numpy FUN layouts and a JPEG
marker-segment scanner."""
from __future__ import annotations

import struct
import warnings

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


def segments(data: bytes):
    """Marker segments of a JPEG as ``(marker, start, end)``; a scan's entropy-coded data is folded
    into its SOS segment. Standalone markers (SOI, EOI, TEM) span 2 bytes; stuffed bytes, fill bytes
    and restart markers inside scans are skipped."""
    found = []
    if len(data) < 2 or data[:2] != b"\xff\xd8":
        return found
    found.append((0xD8, 0, 2))
    position, length = 2, len(data)
    while position + 1 < length:
        if data[position] != 0xFF or data[position + 1] in (0x00, 0xFF) or 0xD0 <= data[position + 1] <= 0xD7:
            position += 1
            continue
        marker = data[position + 1]
        if marker in (0xD9, 0x01):
            found.append((marker, position, position + 2))
            position += 2
            continue
        if position + 4 > length:
            found.append((marker, position, length))
            break
        end = min(length, position + 2 + struct.unpack(">H", data[position + 2:position + 4])[0])
        if marker == 0xDA:
            scan = end
            while scan + 1 < length and not (data[scan] == 0xFF and data[scan + 1] not in (0x00, 0xFF)
                                             and not 0xD0 <= data[scan + 1] <= 0xD7):
                scan += 1
            end = scan if scan + 1 < length else length
        found.append((marker, position, end))
        position = max(end, position + 2)
    return found


def decode_recording(function, *args, **kwargs):
    """Call ``function``; return ``(result or JPEGDecodeError, [JPEGWarning messages])``."""
    from funloader.errors import JPEGDecodeError, JPEGWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = function(*args, **kwargs)
        except JPEGDecodeError as error:
            result = error
    return result, [str(w.message) for w in caught if issubclass(w.category, JPEGWarning)]
