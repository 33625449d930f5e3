"""Independent pixel-domain references for the augmentation tests and benchmarks/augment_fidelity.py:
a numpy block IDCT of FUN tensors, JFIF colour conversion, and torchvision's colour, translation,
``ColorJitter`` and RandAugment operations re-implemented in numpy (torchvision is not a dependency).
Each function cites the torchvision function it reproduces."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from funloader import transforms as T


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


def _blend(a, b, ratio, clamp=True):
    """torchvision ``_blend``: ``(ratio * a + (1 - ratio) * b).clamp(0, bound)`` (``clamp=False``:
    the same formula without the clamp, what the coefficients compute)."""
    out = ratio * a + (1.0 - ratio) * b
    return np.clip(out, 0.0, 255.0) if clamp else out


def tv_adjust_brightness(rgb, factor, clamp=True):
    """``torchvision.transforms.functional.adjust_brightness``: blend with black."""
    return _blend(rgb, np.zeros_like(rgb), factor, clamp)


def tv_adjust_contrast(rgb, factor, clamp=True):
    """``adjust_contrast``: blend with the mean of the greyscale image (one value per image)."""
    return _blend(rgb, np.full_like(rgb, tv_grayscale(rgb).mean()), factor, clamp)


def tv_adjust_saturation(rgb, factor, clamp=True):
    """``adjust_saturation``: blend with the greyscale image."""
    return _blend(rgb, np.broadcast_to(tv_grayscale(rgb), rgb.shape), factor, clamp)


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


def cbcr_rotation(rgb, hue_factor):
    """Not torchvision: funloader's hue, the rotation of each pixel's (Cb, Cr) by ``2π hue_factor``
    (``Cb' = cos Cb - sin Cr``, ``Cr' = sin Cb + cos Cr``, Y kept), in pixels (RGB in and out, unclamped)."""
    y, cb, cr = rgb_to_ycbcr(rgb)
    angle = 2 * np.pi * hue_factor
    cb, cr = cb - 128.0, cr - 128.0
    return ycbcr_to_rgb(np.stack([y, 128.0 + np.cos(angle) * cb - np.sin(angle) * cr,
                                  128.0 + np.sin(angle) * cb + np.cos(angle) * cr]))


def tv_color_jitter_steps(rgb, order, factors, clamp=True, hue=tv_adjust_hue):
    """torchvision ``ColorJitter.forward`` for fixed draws: ``order`` a permutation of 0..3 (its
    ``fn_idx``: 0 brightness, 1 contrast, 2 saturation, 3 hue), ``factors`` the four drawn factors
    (None: that op is off). Returns the RGB image after each applied op (a list; the last is the
    result; empty when none applies). ``clamp=False`` leaves out the clamps; ``hue`` is the hue op
    (torchvision's HSV ``adjust_hue``, or ``cbcr_rotation``)."""
    adjust = {0: tv_adjust_brightness, 1: tv_adjust_contrast, 2: tv_adjust_saturation}
    steps = []
    for op in order:
        if factors[op] is None:
            continue
        rgb = adjust[op](rgb, factors[op], clamp) if op in adjust else hue(rgb, factors[op])
        steps.append(rgb)
    return steps


def jitter_draws(jitter, count, generator):
    """The per-item ``(order, factors)`` that funloader's ``ColorJitter`` draws from ``generator``, as
    its docstring defines them (a random permutation per item from ``argsort(rand(count, 4))``, then
    ``rand(count, 4)`` float64 scaled to each range): lists for :func:`tv_color_jitter_steps`."""
    import torch

    order = torch.argsort(torch.rand(count, 4, generator=generator), dim=1).tolist()
    draws = torch.rand(count, 4, generator=generator, dtype=torch.float64).numpy()
    ranges = (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
    factors = [[None if r is None else r[0] + (r[1] - r[0]) * float(draws[i, k]) for k, r in enumerate(ranges)]
               for i in range(count)]
    return order, factors


def tv_translate(rgb, dx, dy, fill=0.0):
    """``torchvision.transforms.functional.affine(img, angle=0, translate=[dx, dy], scale=1, shear=0,
    interpolation=NEAREST, fill=fill)`` for whole-pixel ``dx``, ``dy``: the image moves right ``dx``
    and down ``dy`` pixels, uncovered pixels get ``fill`` (a value or an RGB triple, channels first)."""
    rgb = np.asarray(rgb)
    _, H, W = rgb.shape
    out = np.empty_like(rgb)
    out[...] = np.asarray(fill, rgb.dtype).reshape(-1, 1, 1)
    if abs(dx) < W and abs(dy) < H:
        out[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
            rgb[:, max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
    return out


def tv_randaugment_magnitude(name, num_bins, bin_index, size, wide=False):
    """torchvision's ``RandAugment._augmentation_space`` (``wide``: ``TrivialAugmentWide``'s) magnitude
    of ``name`` at ``bin_index`` of ``num_bins``, for an image of ``size = (height, width)`` pixels
    (unsigned; None for ops without a magnitude)."""
    top = {"Brightness": 0.99 if wide else 0.9, "Color": 0.99 if wide else 0.9, "Contrast": 0.99 if wide else 0.9,
           "TranslateX": 32.0 if wide else 150.0 / 331.0 * size[1],
           "TranslateY": 32.0 if wide else 150.0 / 331.0 * size[0]}.get(name)
    return None if top is None else float(np.linspace(0.0, top, num_bins)[bin_index])


def tv_apply_op(rgb, name, magnitude, fill=0.0, clamp=True):
    """torchvision ``autoaugment._apply_op`` for the ops funloader's policies offer (float RGB)."""
    if name == "Identity":
        return rgb
    if name == "Brightness":
        return tv_adjust_brightness(rgb, 1.0 + magnitude, clamp)
    if name == "Color":
        return tv_adjust_saturation(rgb, 1.0 + magnitude, clamp)
    if name == "Contrast":
        return tv_adjust_contrast(rgb, 1.0 + magnitude, clamp)
    if name == "TranslateX":
        return tv_translate(rgb, int(magnitude), 0, fill)
    if name == "TranslateY":
        return tv_translate(rgb, 0, int(magnitude), fill)
    raise ValueError(f"not a torchvision op here: {name}")


def zigzag_rank() -> np.ndarray:
    """``(64,)`` int: the JPEG zigzag position of the coefficient at ``8*v + u`` (anti-diagonals
    ``u + v`` in turn, odd ones walked downwards, even ones upwards)."""
    cells = sorted(((v, u) for v in range(8) for u in range(8)),
                   key=lambda c: (c[0] + c[1], c[0] if (c[0] + c[1]) % 2 else c[1]))
    rank = np.empty(64, np.int64)
    for position, (v, u) in enumerate(cells):
        rank[8 * v + u] = position
    return rank


def block_lowpass(planes, keep_y, keep_chroma):
    """Keep the lowest ``keep_y`` (Y) / ``keep_chroma`` (Cb, Cr) zigzag frequencies of each 8x8 block
    of YCbCr ``planes`` ``(3, 8*H8, 8*W8)``: forward block DCT, mask, inverse (the pixel definition of
    frequency / chroma dropout)."""
    coefficients = planes_to_fun(planes)
    keep = np.concatenate([np.full(64, keep_y), np.full(128, keep_chroma)])
    coefficients[np.tile(zigzag_rank(), 3) >= keep] = 0.0
    return fun_to_planes(coefficients)


def policy_seed(policy, grid, magnitude, limit=100000):
    """The first seed whose draw for a single item, from ``policy`` (one op, one round), has the signed
    ``magnitude`` (any for None): to measure an op at a chosen magnitude through the policy itself."""
    import torch

    for seed in range(limit):
        (_, drawn), = policy.params(1, grid, torch.Generator().manual_seed(seed))
        if magnitude is None or abs(float(drawn[0]) - magnitude) < 1e-9:
            return seed
    raise AssertionError(f"{policy!r} never drew magnitude {magnitude} in {limit} seeds")


#: jpegtran's lossless transforms and the funloader functions that must give the same coefficients
JPEGTRAN_OPS = {"-transpose": lambda x: T.transpose(x), "-transverse": lambda x: T.transverse(x),
                "-rotate 90": lambda x: T.rotate(x, 90), "-rotate 180": lambda x: T.rotate(x, 180),
                "-rotate 270": lambda x: T.rotate(x, 270)}


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
