"""Fidelity of the resized-crop modes against the pixel operation (Pillow), for docs/loader.md.

For random RandomResizedCrop windows (torchvision's sampling on each photo's block grid, so that
``mode="nearest"`` can take the same window), the luma of each mode's output (numpy inverse block
DCT) is compared with Pillow's bilinear resize of the same pixel window of Pillow's own YCbCr decode:

- ``nearest``: ``T.RandomResizedCrop(mode="nearest")`` on the image's whole block grid (block repetition);
- ``exact``: ``read_fun(box=)``, the native exact resized crop (what ``mode="exact"`` runs).

Run ``python tests/fidelity.py [--photos N] [--windows K]`` for the numbers quoted in docs/loader.md;
``tests/test_transforms.py`` runs a small version and checks the ordering.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

import funloader
from funloader import transforms as T

_DCT = np.array([[(math.sqrt(0.125) if u == 0 else 0.5) * math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)]
                 for u in range(8)])


def luma_pixels(coefficients: np.ndarray) -> np.ndarray:
    """(>=64, gh, gw) FUN coefficients -> (8 gh, 8 gw) luma pixels (inverse block DCT, level shift undone)."""
    _, gh, gw = coefficients.shape
    blocks = coefficients[:64].reshape(8, 8, gh, gw).transpose(2, 3, 0, 1).astype(np.float64)
    return np.einsum("vy,abvu,ux->abyx", _DCT, blocks, _DCT).transpose(0, 2, 1, 3).reshape(8 * gh, 8 * gw) + 128


def psnr(a, b) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def measure(photos, windows: int = 20, size: int = 28, seed: int = 0):
    """``{"nearest": [psnr...], "exact": [psnr...]}`` luma PSNR (dB) over ``windows`` windows per photo."""
    from PIL import Image

    scores = {"nearest": [], "exact": []}
    generator = torch.Generator().manual_seed(seed)
    nearest = T.RandomResizedCrop(size, mode="nearest")
    out_px = 8 * size
    for photo in photos:
        image = Image.open(photo)
        image.draft("YCbCr", image.size)
        image.load()
        luma = image.getchannel(0)
        width, height = image.size
        grid = torch.from_numpy(funloader.read_fun(photo, dequantize=True))[None]
        boxes = T.resized_crop_params(tuple(grid.shape[-2:]), nearest.scale, nearest.ratio, windows, generator)
        for top, left, h, w in boxes.tolist():
            # the window in pixels, clipped to the image (a partial edge block holds no image pixels)
            y0, x0 = 8 * top, 8 * left
            y1, x1 = min(8 * (top + h), height), min(8 * (left + w), width)
            reference = np.asarray(luma.resize((out_px, out_px), Image.BILINEAR, box=(x0, y0, x1, y1)), np.float64)
            plan = T.GatherPlan(T._nearest_indices(torch.tensor([top]), torch.tensor([h]), size),
                                T._nearest_indices(torch.tensor([left]), torch.tensor([w]), size))
            scores["nearest"].append(psnr(luma_pixels(plan.apply(grid)[0].numpy()), reference))
            exact = funloader.read_fun(photo, box=(y0, x0, y1 - y0, x1 - x0), size=(size, size))
            scores["exact"].append(psnr(luma_pixels(exact), reference))
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"))
    parser.add_argument("--photos", type=int, default=10)
    parser.add_argument("--windows", type=int, default=20)
    args = parser.parse_args(argv)
    photos = sorted(Path(args.data).glob("*.jpg"))
    step = max(1, len(photos) // args.photos)
    chosen = photos[::step][:args.photos]
    scores = measure(chosen, args.windows)
    for mode, values in scores.items():
        values = np.asarray(values)
        print(f"{mode:8s} luma PSNR over {len(values)} windows of {len(chosen)} photos: median {np.median(values):.1f} dB, "
              f"10th percentile {np.percentile(values, 10):.1f} dB, min {values.min():.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
