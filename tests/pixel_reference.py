"""Independent pixel-domain references for the augmentation tests: a numpy block IDCT of FUN tensors,
JFIF colour conversion, and torchvision's colour operations re-implemented in numpy (torchvision is
not a dependency). Each function cites the torchvision function it reproduces."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def dct8() -> np.ndarray:
    """Orthonormal 8-point DCT-II matrix ``D[k, n]`` (float64): JPEG's block transform is ``D @ P @ D.T``."""
    k = np.arange(8)[:, None]
    n = np.arange(8)[None, :]
    D = np.sqrt(2 / 8) * np.cos((2 * n + 1) * k * np.pi / 16)
    D[0] /= np.sqrt(2)
    return D


def fun_to_planes(fun: np.ndarray) -> np.ndarray:
    """``(192, H8, W8)`` dequantised FUN coefficients -> ``(3, 8*H8, 8*W8)`` float64 Y, Cb, Cr pixel
    planes (level shift +128 undone, no rounding, no clamping)."""
    D = dct8()
    C, H, W = fun.shape
    blocks = np.asarray(fun, np.float64).reshape(3, 8, 8, H, W).transpose(0, 3, 4, 1, 2)  # (3,H,W,v,u)
    pixels = np.einsum("vy,chwvu,ux->chwyx", D, blocks, D)
    return pixels.transpose(0, 1, 3, 2, 4).reshape(3, 8 * H, 8 * W) + 128.0


def planes_to_fun(planes: np.ndarray) -> np.ndarray:
    """Inverse of ``fun_to_planes``: ``(3, 8*H8, 8*W8)`` pixels -> ``(192, H8, W8)`` coefficients."""
    D = dct8()
    _, PH, PW = planes.shape
    H, W = PH // 8, PW // 8
    blocks = (np.asarray(planes, np.float64) - 128.0).reshape(3, H, 8, W, 8).transpose(0, 1, 3, 2, 4)
    coeffs = np.einsum("vy,chwyx,ux->chwvu", D, blocks, D)
    return coeffs.transpose(0, 3, 4, 1, 2).reshape(192, H, W)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """JFIF (ITU-R BT.601 full range) RGB -> YCbCr, float64, channels first ``(3, H, W)``."""
    r, g, b = np.asarray(rgb, np.float64)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168735892 * r - 0.331264108 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418687589 * g - 0.081312411 * b
    return np.stack([y, cb, cr])


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """JFIF YCbCr -> RGB, float64, channels first, unclamped."""
    y, cb, cr = np.asarray(ycc, np.float64)
    cb, cr = cb - 128.0, cr - 128.0
    return np.stack([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb])


# ---------------------------------------------------------------- torchvision, in numpy (RGB in [0, 255] floats)
def tv_grayscale(rgb):
    """``torchvision.transforms.functional.rgb_to_grayscale`` (float image) with Pillow's / JPEG's
    weights 0.299/0.587/0.114 (torchvision's tensor backend uses 0.2989 for red)."""
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _blend(a, b, ratio):
    """torchvision ``_blend``: ``(ratio * a + (1 - ratio) * b).clamp(0, bound)``."""
    return np.clip(ratio * a + (1.0 - ratio) * b, 0.0, 255.0)


def tv_adjust_brightness(rgb, factor):
    """``torchvision.transforms.functional.adjust_brightness``: blend with black."""
    return _blend(rgb, np.zeros_like(rgb), factor)


def tv_adjust_contrast(rgb, factor):
    """``adjust_contrast``: blend with the mean of the greyscale image (one value per image)."""
    return _blend(rgb, np.full_like(rgb, tv_grayscale(rgb).mean()), factor)


def tv_adjust_saturation(rgb, factor):
    """``adjust_saturation``: blend with the greyscale image."""
    return _blend(rgb, np.broadcast_to(tv_grayscale(rgb), rgb.shape), factor)


def tv_rgb_to_grayscale3(rgb):
    """``rgb_to_grayscale(img, num_output_channels=3)``."""
    return np.broadcast_to(tv_grayscale(rgb), rgb.shape).copy()


def tv_adjust_hue(rgb, hue_factor):
    """``adjust_hue`` (tensor backend): RGB -> HSV, hue shifted by ``hue_factor`` turns, -> RGB."""
    img = np.asarray(rgb, np.float64) / 255.0
    r, g, b = img
    maxc, minc = img.max(0), img.min(0)
    eqc = maxc == minc
    cr = maxc - minc
    ones = np.ones_like(maxc)
    s = cr / np.where(eqc, ones, maxc)
    cr_divisor = np.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = np.fmod(h + hue_factor, 1.0)
    h = np.where(h < 0, h + 1.0, h)
    v = maxc
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1.0 - s), 0, 1)
    q = np.clip(v * (1.0 - s * f), 0, 1)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0, 1)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros_like(img)
    for index, (a, bb, c) in enumerate(table):
        mask = i == index
        out[0][mask], out[1][mask], out[2][mask] = a[mask], bb[mask], c[mask]
    return out * 255.0


# ---------------------------------------------------------------- metrics and photos
def psnr(a, b, mask=None, peak: float = 255.0) -> float:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if mask is not None:
        diff = diff[..., mask]
    mse = float(np.mean(diff ** 2)) if diff.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def photos(shared_data: Path, subsampling: str = "4:4:4", limit: int = 8):
    """Real photos of the shared corpus with the given subsampling (MANIFEST order)."""
    found = []
    with open(shared_data / "MANIFEST.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["file"].startswith("photos/") and row["subsampling"] == subsampling and row["progressive"] == "no":
                found.append(shared_data / row["file"])
    return found[:limit]
