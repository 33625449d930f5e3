"""End-to-end loading throughput: JPEG files on disk -> normalised float batches ``(B, 192, 28, 28)``
(or ``(B, 3, 224, 224)`` for the pixel pipeline), funloader against three pixel-decoding baselines.

Pipelines (all read the same files, all with random-resized-crop + horizontal-flip augmentation and
per-channel normalisation, all using ``threads`` CPU threads):

- ``funloader``: ``DCTLoader`` (``read_batch`` native threads) with ``RandomResizedCrop(28,
  mode="nearest")`` + ``RandomHorizontalFlip`` in the DCT domain, normalised with 192 channel stats.
- ``funloader_raw``: the same on raw quantised integers (``dequantize=False``: what the paper's
  released models take, and what (b) produces); int16 stays int16 through crop and flip.
- ``funloader_dct``: the same with the exact DCT-domain resampling (``mode="dct"``, matrix products).
- ``pillow``: (a) the torchvision-style pipeline written with Pillow + torch: decode, RandomResizedCrop
  to 224 (bilinear), flip, to tensor, normalise (3 channels); images decoded in a thread pool.
- ``paper``: (b) the FUN paper's released pipeline: decode to RGB, RandomResizedCrop + flip, re-encode as
  JPEG q100 4:4:4 with Pillow, read the coefficients with ``jpeg2dct``, upsample chroma and stack to
  ``(192, 28, 28)``, normalise. Needs the ``jpeg2dct`` package (skipped when missing).
- ``dctnet``: (c) the DCTNet way: decode + augment as (a), RGB -> YCbCr and an 8x8 block DCT in torch
  (matrix products on the batch), normalise.

``measure_loaders`` returns images/s (median over ``repeats`` timed epochs after one warm-up epoch).
``make_imagenet_like`` writes a folder of 224x224 4:2:0 JPEGs from real photos.
"""
from __future__ import annotations

import io
import math
import os
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["measure_loaders", "make_imagenet_like", "machine_description", "PIPELINES"]

PIPELINES = ("funloader", "funloader_raw", "funloader_dct", "pillow", "paper", "dctnet")
_RGB_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_RGB_STD = np.array([0.229, 0.224, 0.225], np.float32)


def machine_description() -> dict:
    """CPU model, cores, load and library versions (:func:`funloader.benchmarking.machine_info`)."""
    from .benchmarking import machine_info

    return machine_info()


def make_imagenet_like(source_dir, target_dir, count: int = 512, *, quality: int = 90, classes: int = 10,
                       seed: int = 0) -> Path:
    """Write ``count`` 224x224 4:2:0 JPEGs at ``quality`` into an ImageFolder tree ``target_dir/cNN/``:
    random square crops (40-100% of the shorter side) of the photos in ``source_dir``, resized with
    Lanczos. Deterministic for a seed. Returns ``target_dir``."""
    from PIL import Image, ImageOps

    sources = sorted(p for p in Path(source_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not sources:
        raise FileNotFoundError(f"{source_dir}: no JPEG photos")
    target = Path(target_dir)
    rng = random.Random(seed)
    opened = {}
    for index in range(count):
        path = sources[index % len(sources)]
        if path not in opened:
            image = ImageOps.exif_transpose(Image.open(path))
            opened[path] = image.convert("RGB")
        image = opened[path]
        side = int(min(image.size) * rng.uniform(0.4, 1.0))
        left = rng.randint(0, image.width - side)
        top = rng.randint(0, image.height - side)
        tile = image.resize((224, 224), Image.LANCZOS, box=(left, top, left + side, top + side))
        folder = target / f"c{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        tile.save(folder / f"img{index:06d}.jpg", format="JPEG", quality=quality, subsampling=2)
    return target


# ------------------------------------------------------------------------------------- pixel helpers
def _rrc_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params, in pixels: (left, top, right, bottom)."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2


def _augmented_rgb(path: str, rng: random.Random):
    """Decode, RandomResizedCrop to 224 (bilinear), random horizontal flip: a PIL RGB image."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        box = _rrc_box(image.width, image.height, rng)
        image = image.resize((224, 224), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def _pillow_item(path: str, seed: int) -> np.ndarray:
    return np.asarray(_augmented_rgb(path, random.Random(seed)))  # (224, 224, 3) uint8


def _paper_item(path: str, seed: int) -> np.ndarray:
    import jpeg2dct.numpy as j2d

    image = _augmented_rgb(path, random.Random(seed))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=100, subsampling=0)
    y, cb, cr = j2d.loads(buffer.getvalue(), normalized=False)

    def to_grid(plane):  # (bh, bw, 64) -> (64, 28, 28), nearest upsampling when subsampled
        plane = np.moveaxis(plane, -1, 0)
        if plane.shape[1:] != (28, 28):
            plane = plane.repeat(28 // plane.shape[1], axis=1).repeat(28 // plane.shape[2], axis=2)
        return plane[:, :28, :28]

    return np.concatenate([to_grid(y), to_grid(cb), to_grid(cr)]).astype(np.float32)


def _block_dct_matrix() -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    matrix = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return matrix.float()


_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _dctnet_batch(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 224, 224, 3) uint8 -> (N, 192, 28, 28) float32: YCbCr (JPEG's), level shift, 8x8 block DCT."""
    x = rgb_uint8.to(torch.float32)
    ycc = x @ _YCBCR.T  # (N, H, W, 3)
    ycc[..., 0] -= 128.0
    n, h, w, _ = ycc.shape
    blocks = ycc.permute(0, 3, 1, 2).reshape(n, 3, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    D = _block_dct_matrix()
    coefficients = D @ blocks @ D.T  # (N, 3, bh, bw, 8v, 8u)
    return coefficients.permute(0, 1, 4, 5, 2, 3).reshape(n, 192, h // 8, w // 8)


# ------------------------------------------------------------------------------------- epoch runners
def _batches(items: Sequence, batch_size: int) -> List[Sequence]:
    return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def _pixel_epoch(files: List[str], batch_size: int, pool: ThreadPoolExecutor, epoch: int, kind: str,
                 dct_stats) -> int:
    mean = torch.from_numpy(_RGB_MEAN * 255)[None, :, None, None]
    inv_std = torch.from_numpy(1 / (_RGB_STD * 255))[None, :, None, None]
    done = 0
    for number, batch in enumerate(_batches(files, batch_size)):
        seeds = [hash((epoch, number, i)) & 0xFFFFFFFF for i in range(len(batch))]
        if kind == "paper":
            arrays = list(pool.map(_paper_item, batch, seeds))
            x = torch.from_numpy(np.stack(arrays))
            x = (x - dct_stats[0]) * dct_stats[1]
        else:
            arrays = list(pool.map(_pillow_item, batch, seeds))
            rgb = torch.from_numpy(np.stack(arrays))  # (N, 224, 224, 3) uint8
            if kind == "dctnet":
                x = (_dctnet_batch(rgb) - dct_stats[0]) * dct_stats[1]
            else:
                x = (rgb.permute(0, 3, 1, 2).to(torch.float32) - mean) * inv_std
        done += x.shape[0]
    return done


def _time_epochs(run_epoch: Callable[[int], int], repeats: int) -> dict:
    run_epoch(-1)  # warm-up: file cache, allocations, thread pools
    rates, seconds, cpu_rates = [], [], []
    for repeat in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        images = run_epoch(repeat)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        rates.append(images / elapsed)
        cpu_rates.append(images / max(cpu, 1e-9))
        seconds.append(elapsed)
    # images per CPU-second (all threads of this process): the cost, less sensitive to other load
    return {"images_per_s": statistics.median(rates), "images_per_s_all": rates, "seconds": seconds,
            "images_per_cpu_s": statistics.median(cpu_rates), "images_per_epoch": images}


def measure_loaders(folder, threads: Sequence[int] = (1, 2), batch_size: int = 256, repeats: int = 3,
                    pipelines: Sequence[str] = PIPELINES, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Images/s of each pipeline over all images of ``folder`` (ImageFolder tree), for each thread count.

    Returns ``{"folder", "images", "batch_size", "repeats", "machine", "results": {str(threads):
    {pipeline: {"images_per_s" (median), "images_per_s_all", "seconds", "images_per_epoch"}}},
    "speedup": {str(threads): {"vs_pillow": x, "vs_paper": x, "vs_dctnet": x}}}`` (speedups of
    ``funloader``, and ``raw_vs_paper``: ``funloader_raw`` against ``paper``; ``paper`` is skipped
    when ``jpeg2dct`` is not installed)."""
    from . import transforms as T
    from .dataset import DCTImageFolder
    from .loader import DCTLoader
    from .stats import compute_stats

    unknown = set(pipelines) - set(PIPELINES)
    if unknown:
        raise ValueError(f"unknown pipelines {sorted(unknown)}; choose from {PIPELINES}")
    dataset = DCTImageFolder(folder)
    files = [path for path, _ in dataset.samples]
    stats = compute_stats(dataset, output=None, progress=False)
    dct_mean = torch.tensor(stats["mean"], dtype=torch.float32)[None, :, None, None]
    dct_inv_std = (1 / torch.tensor(stats["std"], dtype=torch.float32).clamp(min=1e-6))[None, :, None, None]
    raw_stats = compute_stats(dataset, dequantize=False, output=None, progress=False)
    raw = (torch.tensor(raw_stats["mean"], dtype=torch.float32)[None, :, None, None],
           (1 / torch.tensor(raw_stats["std"], dtype=torch.float32).clamp(min=1e-6))[None, :, None, None])
    selected = list(pipelines)
    if "paper" in selected:
        try:
            import jpeg2dct.numpy  # noqa: F401
        except ImportError:
            selected.remove("paper")
    load_before = list(os.getloadavg())
    previous_threads = torch.get_num_threads()
    results: Dict[str, dict] = {}
    try:
        for count in threads:
            torch.set_num_threads(int(count))
            row: Dict[str, dict] = {}
            for name in selected:
                if progress:
                    progress(f"{name} threads={count}")
                if name.startswith("funloader"):
                    mode = "dct" if name == "funloader_dct" else "nearest"
                    use_raw = name == "funloader_raw"
                    chosen = raw_stats if use_raw else stats
                    source = DCTImageFolder(folder, dequantize=not use_raw)
                    loader = DCTLoader(source, batch_size, shuffle=True, num_threads=int(count), prefetch=2,
                                       normalize=(chosen["mean"], chosen["std"]),
                                       transform=T.Compose([T.RandomResizedCrop(28, mode=mode), T.RandomHorizontalFlip()]))

                    def run(epoch, loader=loader):
                        loader.set_epoch(epoch + 1)
                        return sum(x.shape[0] for x, _ in loader)

                    row[name] = _time_epochs(run, repeats)
                else:
                    with ThreadPoolExecutor(int(count)) as pool:
                        stats_for = raw if name == "paper" else (dct_mean, dct_inv_std)
                        row[name] = _time_epochs(
                            lambda epoch, name=name, pool=pool, s=stats_for: _pixel_epoch(files, batch_size, pool, epoch, name, s),
                            repeats)
            results[str(count)] = row
    finally:
        torch.set_num_threads(previous_threads)
    speedup = {}
    for count, row in results.items():
        if "funloader" in row:
            ours = row["funloader"]["images_per_s"]
            speedup[count] = {f"vs_{name}": ours / row[name]["images_per_s"] for name in ("pillow", "paper", "dctnet")
                              if name in row}
            if "funloader_raw" in row and "paper" in row:  # like for like: both yield raw integer coefficients
                speedup[count]["raw_vs_paper"] = row["funloader_raw"]["images_per_s"] / row["paper"]["images_per_s"]
        if "funloader" in row:
            ours_cpu = row["funloader"]["images_per_cpu_s"]
            speedup[count].update({f"cpu_vs_{name}": ours_cpu / row[name]["images_per_cpu_s"]
                                   for name in ("pillow", "paper", "dctnet") if name in row})
    return {"folder": str(folder), "images": len(files), "batch_size": batch_size, "repeats": repeats,
            "machine": machine_description(), "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()), "results": results, "speedup": speedup}


def format_table(report: dict, title: str = "") -> str:
    """A plain-text table of ``measure_loaders``' result."""
    lines = [title] if title else []
    names = [n for n in PIPELINES if any(n in row for row in report["results"].values())]
    lines.append(f"{'threads':>7} " + " ".join(f"{n:>14}" for n in names) + f" {'vs (a)':>7} {'vs (b)':>7} {'vs (c)':>7} {'raw/(b)':>7}")
    for count, row in report["results"].items():
        cells = " ".join(f"{row[n]['images_per_s']:14.0f}" if n in row else f"{'-':>14}" for n in names)
        ratio = report["speedup"].get(count, {})
        extra = " ".join(f"{ratio[k]:6.1f}x" if k in ratio else f"{'-':>7}" for k in ("vs_pillow", "vs_paper", "vs_dctnet", "raw_vs_paper"))
        lines.append(f"{count:>7} {cells} {extra}")
    lines.append("images per CPU-second (all threads of the process; less sensitive to other load):")
    for count, row in report["results"].items():
        cells = " ".join(f"{row[n]['images_per_cpu_s']:14.0f}" if n in row else f"{'-':>14}" for n in names)
        ratio = report["speedup"].get(count, {})
        extra = " ".join(f"{ratio[k]:6.1f}x" if k in ratio else f"{'-':>7}" for k in ("cpu_vs_pillow", "cpu_vs_paper", "cpu_vs_dctnet"))
        lines.append(f"{count:>7} {cells} {extra}")
    lines.append(f"load average (1, 5, 15 min) before {report['load_average_before']}, after {report['load_average_after']}")
    return "\n".join(lines)
