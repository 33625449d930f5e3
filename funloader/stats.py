"""Per-channel statistics of the FUN input, for normalisation: ``compute_stats``, ``load_stats``,
and the ``funloader stats DIR`` command.

The statistics are the mean and standard deviation of each of the 192 channels over every block
position of every image, exactly as the loader reads them: each image centre-cropped / zero-padded
to the ``size`` block grid (default 28x28 = 224 px), coefficients either dequantised (float:
quantised value times its quantisation step, the loader's default, comparable across JPEG
qualities) or raw quantised integers (``dequantize=False``, what the paper's released models take).

Files (JSON, next to the data): ``stats-dequantized.json`` and ``stats-raw.json``; ``load_stats``
also accepts a ``stats.json`` (as written by ``funloader prepare --stats``) whose ``dequantized``
field matches. Content: ``{"format": "funloader-stats", "version": 1, "dequantized": bool,
"size": [h, w], "count": images, "positions": blocks per channel, "failed": n, "mean": [192],
"std": [192]}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ["compute_stats", "load_stats", "stats_filename", "main"]

STATS_FORMAT = "funloader-stats"


def stats_filename(dequantize: bool = True) -> str:
    """Default file name of the statistics for a coefficient mode."""
    return "stats-dequantized.json" if dequantize else "stats-raw.json"


def _validate(stats: dict, where) -> dict:
    for field in ("mean", "std"):
        values = stats.get(field)
        if not isinstance(values, (list, tuple)) or len(values) != 192:
            raise ValueError(f"{where}: '{field}' must be a list of 192 numbers")
    if any(not np.isfinite(v) for v in list(stats["mean"]) + list(stats["std"])) or min(stats["std"]) < 0:
        raise ValueError(f"{where}: statistics contain non-finite or negative values")
    return stats


def load_stats(path_or_root, *, dequantize: bool = True) -> Optional[dict]:
    """Load channel statistics.

    ``path_or_root``: a stats JSON file (returned whatever its mode), or a data directory
    (searched for ``stats_filename(dequantize)``, then ``stats.json`` if its ``dequantized``
    field equals ``dequantize``; missing field = raw). Returns the dict (``mean``/``std`` lists of
    192 floats, ...) or None when the directory has none. Raises ValueError for a malformed file.
    """
    if path_or_root is None:
        return None
    path = Path(path_or_root)
    if path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = [path / stats_filename(dequantize), path / "stats.json"]
    else:
        return None
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            stats = json.loads(candidate.read_text())
        except ValueError as exc:
            raise ValueError(f"{candidate}: not valid JSON ({exc})") from None
        if not isinstance(stats, dict):
            raise ValueError(f"{candidate}: expected a JSON object")
        if candidate != path and candidate.name == "stats.json" and bool(stats.get("dequantized", False)) != bool(dequantize):
            continue
        stats = _validate(stats, candidate)
        stats.setdefault("dequantized", False)
        stats["path"] = str(candidate)
        return stats
    return None


def compute_stats(dataset_or_root, *, dequantize: bool = True, size=28, batch_size: int = 128,
                  threads: Optional[int] = None, max_images: Optional[int] = None, seed: int = 0,
                  output="auto", progress: bool = True) -> dict:
    """Mean and std of each of the 192 FUN channels over a dataset (see the module docstring).

    Args:
        dataset_or_root: a ``DCTImageFolder`` or anything it accepts (folder, prepared folder, shards).
        dequantize: dequantised coefficients (default, the loader's default) or raw integers.
        size: block grid every image is centre-cropped / zero-padded to (as the loader reads it).
        batch_size, threads: ``read_batch`` batch and native threads.
        max_images: use a random subset of this many images (drawn with ``seed``), default all.
        output: ``"auto"`` writes ``stats_filename(dequantize)`` into the data directory (when there
            is one), a path writes there, None writes nothing.
        progress: show a tqdm bar.

    Bad files are skipped (counted in ``failed``). Accumulation is in float64, merged batch by batch
    (Chan's parallel variance), so the result does not depend on ``batch_size`` beyond rounding.
    Returns the stats dict (also what is written).
    """
    from tqdm import tqdm

    from .codec import read_batch
    from .dataset import DCTImageFolder
    from .transforms import _pair

    dataset = dataset_or_root if isinstance(dataset_or_root, DCTImageFolder) else DCTImageFolder(dataset_or_root)
    grid = _pair(size)
    indices = np.arange(len(dataset))
    if max_images is not None and max_images < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(len(indices), size=int(max_images), replace=False))
    buffer = np.empty((batch_size, 192) + grid, dtype=np.float32 if dequantize else np.int16)
    count = 0
    mean = np.zeros(192, np.float64)
    m2 = np.zeros(192, np.float64)
    images = failed = 0
    bar = tqdm(total=len(indices), desc="stats", unit="img", disable=not progress, file=sys.stderr)
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            out = buffer[:len(chunk)]
            errors = read_batch(dataset.sources(chunk), out, threads=threads, dequantize=dequantize, strict=dataset.strict)
            good = np.array([e is None for e in errors])
            failed += int((~good).sum())
            bar.update(len(chunk))
            if not good.any():
                continue
            values = torch.from_numpy(out[good]).to(torch.float64).transpose(0, 1).reshape(192, -1)
            n_b = values.shape[1]
            mean_b = values.mean(dim=1).numpy()
            m2_b = ((values - torch.from_numpy(mean_b)[:, None]) ** 2).sum(dim=1).numpy()
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
            count = total
            images += int(good.sum())
    finally:
        bar.close()
    if images == 0:
        raise ValueError(f"{dataset.root}: no decodable image to compute statistics from")
    std = np.sqrt(m2 / count)
    stats = {"format": STATS_FORMAT, "version": 1, "dequantized": bool(dequantize), "size": list(grid),
             "count": images, "positions": int(count // images), "failed": failed,
             "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    target = None
    if output == "auto":
        if dataset.root and Path(dataset.root).is_dir():
            target = Path(dataset.root) / stats_filename(dequantize)
    elif output is not None:
        target = Path(output)
    if target is not None:
        temporary = target.with_name(target.name + f".tmp{os.getpid()}")
        temporary.write_text(json.dumps(stats, indent=1) + "\n")
        os.replace(temporary, target)
        stats["path"] = str(target)
    return stats


def main(argv: Optional[List[str]] = None) -> int:
    """``funloader stats DIR``: compute and save the 192 channel means/stds of a dataset."""
    parser = argparse.ArgumentParser(prog="funloader stats",
                                     description="Compute the 192 per-channel means/stds the loader normalises with "
                                                 "and save them as JSON next to the data.")
    parser.add_argument("data", help="ImageFolder root, 'funloader prepare' output or directory of .tar shards")
    parser.add_argument("--raw", action="store_true",
                        help="statistics of the raw quantised integers (paper's released models) instead of "
                             "dequantised coefficients")
    parser.add_argument("--size", type=int, default=28, help="block grid (default 28 = 224 px)")
    parser.add_argument("--max-images", type=int, default=None, help="random subset of this many images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="native decoding threads (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help=f"JSON path (default: DATA/{stats_filename(True)} "
                                                        f"or DATA/{stats_filename(False)})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        stats = compute_stats(args.data, dequantize=not args.raw, size=args.size, batch_size=args.batch_size,
                              threads=args.threads, max_images=args.max_images, seed=args.seed,
                              output=args.output or "auto", progress=not args.no_progress)
    except (OSError, ValueError) as exc:
        print(f"funloader stats: error: {exc}", file=sys.stderr)
        return 1
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    kind = "dequantized" if stats["dequantized"] else "raw"
    print(f"{stats['count']} images ({stats['failed']} failed), {kind} coefficients, grid {stats['size'][0]}x{stats['size'][1]}")
    for component, name in enumerate(("Y", "Cb", "Cr")):
        lo = 64 * component
        print(f"  {name:2s} DC mean {mean[lo]:10.3f} std {std[lo]:9.3f} | AC std range {std[lo + 1:lo + 64].min():.3f}"
              f" .. {std[lo + 1:lo + 64].max():.3f}")
    print(f"saved {stats.get('path', '(not saved)')}")
    return 0
