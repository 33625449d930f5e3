"""Which shorter side should ``funloader prepare`` store a training set at?

On the real photos of the shared corpus (``photos/``: 70 JPEGs, shorter side 128-1545, median 512),
for each shorter side S (aspect ratio kept, never enlarged, as ``prepare --resize-shorter S``) and
quality 90 / 100 (4:2:0), this measures:

- bytes per image of the JPEG that prepare writes (its own ``encode_image``);
- µs per image of ``funloader.read_fun`` on it (the whole coefficient decode), and of the exact
  resized crop a training loader takes from it, ``read_fun(box=..., size=(28, 28))`` (one
  torchvision ``RandomResizedCrop`` window per photo, scale 0.08-1, ratio 3/4-4/3, drawn with a
  fixed seed on the original and scaled to each S, so every S crops the same part of the photo);
  configurations are timed round-robin (interleaved), median over the rounds;
- the luma PSNR of that crop against the same crop taken from the original photo (JPEG's 8x8 DCT
  is orthonormal, so the mean squared error of the dequantized Y coefficients is the pixel one):
  what storing at S loses for the crops training actually sees.

    python benchmarks/prepare_shorter_side.py [--data ../shared/data] [--rounds 15]
        [--output benchmarks/results/prepare_shorter_side.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import funloader  # noqa: E402
from funloader.bench.harness import machine_info, round_robin  # noqa: E402
from funloader.preparation import EncodeSettings, encode_image  # noqa: E402

SIDES = (224, 256, 320, 384, 512)
QUALITIES = (90, 100)
GRID = (28, 28)  # 224 x 224 model input


def rrc_window(height: int, width: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision ``RandomResizedCrop.get_params``: ``(top, left, height, width)`` in pixels."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def scaled_box(box, original, stored):
    """The same relative window in an image stored at ``stored`` = (height, width)."""
    fy, fx = stored[0] / original[0], stored[1] / original[1]
    top, left, h, w = box
    top, left = top * fy, left * fx
    return (top, left, min(h * fy, stored[0] - top), min(w * fx, stored[1] - left))


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a[:64].astype(np.float64) - b[:64].astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "prepare_shorter_side.json")
    args = parser.parse_args(argv)

    photos = sorted((args.data / "photos").glob("*.jpg"))
    originals = [path.read_bytes() for path in photos]
    sizes = funloader.codec.read_sizes(originals)  # (height, width)
    rng = random.Random(0)
    windows = [rrc_window(int(h), int(w), rng) for h, w in sizes]
    references = [funloader.read_fun(data, box=box, size=GRID) for data, box in zip(originals, windows)]

    configs = [(side, quality) for side in SIDES for quality in QUALITIES]
    stored, rows = {}, {}
    for side, quality in configs:
        settings = EncodeSettings.from_options(resize_shorter=side, quality=quality)
        started = time.perf_counter()
        encoded = [encode_image(data, settings)[0] for data in originals]
        encode_us = (time.perf_counter() - started) / len(encoded) * 1e6
        stored_sizes = funloader.codec.read_sizes(encoded)
        boxes = [scaled_box(box, tuple(o), tuple(s)) for box, o, s in zip(windows, sizes, stored_sizes)]
        crops = [funloader.read_fun(data, box=box, size=GRID) for data, box in zip(encoded, boxes)]
        psnrs = [luma_psnr(crop, ref) for crop, ref in zip(crops, references)]
        stored[(side, quality)] = (encoded, boxes)
        rows[(side, quality)] = {
            "shorter_side": side, "quality": quality,
            "images_smaller_than_side": int(sum(min(h, w) < side for h, w in sizes)),
            "bytes_per_image_mean": float(np.mean([len(e) for e in encoded])),
            "bytes_per_image_median": float(np.median([len(e) for e in encoded])),
            "pixels_per_image_mean": float(np.mean([h * w for h, w in stored_sizes])),
            "crop_luma_psnr_vs_original_median_db": float(np.median(psnrs)),
            "crop_luma_psnr_vs_original_p10_db": float(np.percentile(psnrs, 10)),
            "encode_us_per_image_one_pass": encode_us,
            "read_fun_us": [], "exact_crop_us": [],
        }

    def decode_all(encoded):
        def run():
            for data in encoded:
                funloader.read_fun(data)
            return len(encoded)
        return run

    def crop_all(encoded, boxes):
        def run():
            for data, box in zip(encoded, boxes):
                funloader.read_fun(data, box=box, size=GRID)
            return len(encoded)
        return run

    methods = {}
    for key in configs:
        methods[("read_fun", key)] = decode_all(stored[key][0])
        methods[("exact_crop", key)] = crop_all(*stored[key])
    load_before = os.getloadavg()
    timed = round_robin(methods, repeats=args.rounds)  # funloader's one benchmark timer
    load_after = os.getloadavg()

    results = []
    for key in configs:
        row = rows[key]
        for name in ("read_fun", "exact_crop"):
            row.pop(f"{name}_us")
            row[f"{name}_us_median"] = timed[(name, key)]["median_us"]
            row[f"{name}_us_spread"] = timed[(name, key)]["spread"]
        results.append(row)
    for row in results:
        base = rows[(SIDES[0], row["quality"])]
        row["bytes_vs_224"] = row["bytes_per_image_mean"] / base["bytes_per_image_mean"]
        row["read_fun_vs_224"] = row["read_fun_us_median"] / base["read_fun_us_median"]
        row["exact_crop_vs_224"] = row["exact_crop_us_median"] / base["exact_crop_us_median"]

    report = {"photos": len(photos), "rounds": args.rounds, "grid": list(GRID),
              "photo_shorter_side_median": float(np.median(sizes.min(axis=1))),
              "load_average_before": load_before, "load_average_after": load_after,
              "machine": machine_info(threads=1), "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{len(photos)} photos (median shorter side {report['photo_shorter_side_median']:.0f}), "
          f"{args.rounds} interleaved rounds, load {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'S':>4} {'q':>4} {'<S':>3} {'KB/img':>7} {'x224':>5} {'read_fun us':>11} {'x224':>5} "
          f"{'exact crop us':>13} {'x224':>5} {'crop PSNR':>9} {'p10':>6}")
    for row in results:
        print(f"{row['shorter_side']:>4} {row['quality']:>4} {row['images_smaller_than_side']:>3} "
              f"{row['bytes_per_image_mean'] / 1000:>7.1f} {row['bytes_vs_224']:>5.2f} "
              f"{row['read_fun_us_median']:>11.0f} {row['read_fun_vs_224']:>5.2f} "
              f"{row['exact_crop_us_median']:>13.0f} {row['exact_crop_vs_224']:>5.2f} "
              f"{row['crop_luma_psnr_vs_original_median_db']:>9.2f} {row['crop_luma_psnr_vs_original_p10_db']:>6.2f}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
