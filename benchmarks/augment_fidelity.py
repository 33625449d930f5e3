"""Fidelity of the DCT-domain colour operations against torchvision's pixel definitions, on real photos.

For every 4:4:4 photo of the shared corpus (full resolution chroma, so both sides see the same
pixels) and each operation: the inverse block DCT of our output, in YCbCr, against the torchvision
formula applied to Pillow's RGB decode (converted to YCbCr). Reports, per operation, the share of
pixels torchvision clamps, the PSNR over all pixels (the clamp effect included) and over the pixels
where nothing clamps (neither the decode nor the operation). The oracle formulas are the tests'
(tests/pixel_reference.py, each citing the torchvision function it reproduces).

    python benchmarks/augment_fidelity.py [--data ../shared/data] [--output benchmarks/results/augment_fidelity.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import funloader  # noqa: E402
from funloader import transforms as T  # noqa: E402
from pixel_reference import (fun_to_planes, photos, psnr, rgb_to_ycbcr, tv_adjust_brightness,  # noqa: E402
                             tv_adjust_contrast, tv_adjust_hue, tv_adjust_saturation, tv_rgb_to_grayscale3,
                             ycbcr_to_rgb)

OPERATIONS = [  # name, ours, torchvision formula, factor
    ("identity (decode only)", lambda x, f: x, lambda rgb, f: rgb, None),
    ("brightness 0.6", T.adjust_brightness, tv_adjust_brightness, 0.6),
    ("brightness 1.4", T.adjust_brightness, tv_adjust_brightness, 1.4),
    ("contrast 0.6", T.adjust_contrast, tv_adjust_contrast, 0.6),
    ("contrast 1.4", T.adjust_contrast, tv_adjust_contrast, 1.4),
    ("saturation 0.6", T.adjust_saturation, tv_adjust_saturation, 0.6),
    ("saturation 1.4", T.adjust_saturation, tv_adjust_saturation, 1.4),
    ("grayscale", lambda x, f: T.rgb_to_grayscale(x), lambda rgb, f: tv_rgb_to_grayscale3(rgb), None),
    ("hue 0.05 (CbCr rotation vs HSV)", T.adjust_hue, tv_adjust_hue, 0.05),
    ("hue 0.1 (CbCr rotation vs HSV)", T.adjust_hue, tv_adjust_hue, 0.1),
    ("hue -0.1 (CbCr rotation vs HSV)", T.adjust_hue, tv_adjust_hue, -0.1),
]


def _in_range(rgb, margin=0.5):
    return np.all((rgb >= -margin) & (rgb <= 255 + margin), axis=0)


def measure(data: Path, max_blocks: int = 64):
    rows = {name: {"clamped": [], "all": [], "unclamped": []} for name, *_ in OPERATIONS}
    files = photos(data, "4:4:4", limit=1000)
    for path in files:
        fun = funloader.read_fun(str(path), dequantize=True)
        with Image.open(path) as im:
            H, W = min(im.height // 8, max_blocks), min(im.width // 8, max_blocks)
            rgb = np.asarray(im.convert("RGB"), np.float64)[:8 * H, :8 * W].transpose(2, 0, 1)
        fun = torch.from_numpy(np.ascontiguousarray(fun[:, :H, :W])).double()
        decode_ok = _in_range(ycbcr_to_rgb(fun_to_planes(fun.numpy())))
        for name, ours, reference, factor in OPERATIONS:
            planes = fun_to_planes(ours(fun, factor).numpy())
            expected = rgb_to_ycbcr(reference(rgb, factor))
            # what torchvision clamps: the operation's unclamped result leaves [0, 255]
            clamped = ~_in_range(ycbcr_to_rgb(planes), 0.0)
            mask = decode_ok & ~clamped
            rows[name]["clamped"].append(float(clamped.mean()))
            rows[name]["all"].append(psnr(planes, expected))
            rows[name]["unclamped"].append(psnr(planes, expected, mask))
    summary = {}
    for name, row in rows.items():
        summary[name] = {"photos": len(files), "clamped_pixels_mean": float(np.mean(row["clamped"])),
                         "psnr_all_median": float(np.median(row["all"])), "psnr_all_min": float(np.min(row["all"])),
                         "psnr_unclamped_median": float(np.median(row["unclamped"])),
                         "psnr_unclamped_min": float(np.min(row["unclamped"]))}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    summary = measure(args.data)
    print(f"{'operation':34s} {'clamped px':>10s} {'PSNR all (median/min)':>22s} {'PSNR unclamped (median/min)':>28s}")
    for name, row in summary.items():
        print(f"{name:34s} {100 * row['clamped_pixels_mean']:9.2f}% {row['psnr_all_median']:10.1f} / {row['psnr_all_min']:5.1f}"
              f" {row['psnr_unclamped_median']:15.1f} / {row['psnr_unclamped_min']:5.1f}")
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
