"""Section 2, loader: images/s from JPEG files on disk to augmented, normalised float batches.

Every pipeline reads the same files, does a random resized crop + horizontal flip + per-channel
normalisation, and uses the same number of CPU threads; the pipelines are timed round-robin, one
epoch per call (harness). To compare one more pipeline, add a :class:`Row` to :data:`PIPELINES`.
"""
from __future__ import annotations

import io
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import Context, Result, Row, Section, make_rows
from .harness import round_robin

TITLE = "Loader: images/s from JPEG files to augmented, normalised batches (higher is better)"

_RGB_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_RGB_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass
class Setup:
    """One image folder and thread count, shared by the pipelines of a setting."""

    folder: Path
    files: List[str]
    batch_size: int
    threads: int
    grid: int
    pool: ThreadPoolExecutor
    stats: Dict[str, list]
    raw_stats: Dict[str, list]
    device: str = "cpu"
    epochs: Dict[str, int] = field(default_factory=dict)

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def next_epoch(self, name: str) -> int:
        self.epochs[name] = self.epochs.get(name, 0) + 1
        return self.epochs[name]


# ------------------------------------------------------------------------------------- funloader
def _dct_loader(setup: Setup, name: str, crop, dequantize: bool = True):
    from .. import transforms as T
    from ..dataset import DCTImageFolder
    from ..loader import DCTLoader

    stats = setup.stats if dequantize else setup.raw_stats
    loader = DCTLoader(DCTImageFolder(setup.folder, dequantize=dequantize), setup.batch_size, shuffle=True,
                       num_threads=setup.threads, prefetch=2, size=setup.grid, device=setup.device,
                       normalize=(stats["mean"], stats["std"]), transform=T.Compose([crop, T.RandomHorizontalFlip()]))

    def run():
        loader.set_epoch(setup.next_epoch(name))
        done = sum(x.shape[0] for x, _ in loader)
        setup.synchronize()
        return done
    return run


def _funloader(mode: str, name: str, dequantize: bool = True):
    def make(setup):
        from .. import transforms as T

        return _dct_loader(setup, name, T.RandomResizedCrop(28, mode=mode), dequantize)
    return make


def _funloader_exact(setup):
    from .. import transforms as T

    try:
        crop = T.RandomResizedCrop(28, mode="exact")
    except (TypeError, ValueError):  # this version has no exact resized crop
        return None
    return _dct_loader(setup, "funloader_exact", crop)


def _funloader_augment(setup):
    """The exact-crop pipeline (nearest when this version has no exact crop) + RandAugment(2, 9) on
    the coefficients + Mixup on each batch, through the loader's ``mixing=`` option (the user-facing
    way: the decoding threads mix each piece of the batch in place; issue 16's speed target: at most
    25% over the same pipeline without RandAugment/mixup)."""
    from .. import transforms as T
    from ..dataset import DCTImageFolder
    from ..loader import DCTLoader

    try:
        crop = T.RandomResizedCrop(28, mode="exact")
    except (TypeError, ValueError):  # this version has no exact resized crop
        crop = T.RandomResizedCrop(28, mode="nearest")
    dataset = DCTImageFolder(setup.folder)
    transform = T.Compose([crop, T.RandomHorizontalFlip(), T.RandAugment(2, 9)])
    mixup = T.Mixup(num_classes=max(1, len(dataset.classes)))
    options = dict(shuffle=True, num_threads=setup.threads, prefetch=2, size=setup.grid, device=setup.device,
                   normalize=(setup.stats["mean"], setup.stats["std"]), transform=transform)
    try:
        loader = DCTLoader(dataset, setup.batch_size, mixing=mixup, **options)
        mix_after = None
    except TypeError:  # this version's loader has no mixing option: mix each finished batch
        loader, mix_after = DCTLoader(dataset, setup.batch_size, **options), mixup

    def run():
        epoch = setup.next_epoch("funloader_augment")
        loader.set_epoch(epoch)
        generator = torch.Generator().manual_seed(epoch)
        done = 0
        for x, y in loader:
            if mix_after is not None:
                x, _ = mix_after(x, y, generator)
            done += x.shape[0]
        setup.synchronize()
        return done
    return run


# ------------------------------------------------------------------------------------- pixel pipelines
def _rrc_box(width: int, height: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop.get_params`` in pixels: (left, top, right, bottom)."""
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
    """Decode, RandomResizedCrop to 224 (bilinear, scale 0.08-1), random horizontal flip: PIL RGB."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image = image.resize((224, 224), Image.BILINEAR, box=_rrc_box(image.width, image.height, rng))
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
    from ..channels import block_dct_matrix

    return torch.from_numpy(block_dct_matrix()).float()


_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def dctnet_batch(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """(N, 224, 224, 3) uint8 -> (N, 192, 28, 28) float32: YCbCr (JPEG's), level shift, 8x8 block DCT."""
    x = rgb_uint8.to(torch.float32)
    ycc = x @ _YCBCR.T  # (N, H, W, 3)
    ycc[..., 0] -= 128.0
    n, h, w, _ = ycc.shape
    blocks = ycc.permute(0, 3, 1, 2).reshape(n, 3, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    matrix = _block_dct_matrix()
    coefficients = matrix @ blocks @ matrix.T  # (N, 3, bh, bw, 8v, 8u)
    return coefficients.permute(0, 1, 4, 5, 2, 3).reshape(n, 192, h // 8, w // 8)


def _affine(stats) -> tuple:
    mean = torch.tensor(stats["mean"], dtype=torch.float32)[None, :, None, None]
    inv_std = 1 / torch.tensor(stats["std"], dtype=torch.float32).clamp(min=1e-6)[None, :, None, None]
    return mean, inv_std


def _pixel(kind: str):
    def make(setup: Setup):
        if kind == "paper":
            try:
                import jpeg2dct.numpy  # noqa: F401
            except ImportError:
                return None
        rgb_mean = torch.from_numpy(_RGB_MEAN * 255)[None, :, None, None]
        rgb_inv_std = torch.from_numpy(1 / (_RGB_STD * 255))[None, :, None, None]
        mean, inv_std = _affine(setup.raw_stats if kind == "paper" else setup.stats)

        def run():
            epoch = setup.next_epoch(kind)
            done = 0
            order = list(setup.files)
            random.Random(epoch).shuffle(order)
            for number in range(0, len(order), setup.batch_size):
                batch = order[number:number + setup.batch_size]
                seeds = [hash((epoch, number, i)) & 0xFFFFFFFF for i in range(len(batch))]
                if kind == "paper":
                    x = torch.from_numpy(np.stack(list(setup.pool.map(_paper_item, batch, seeds))))
                    x = (x - mean) * inv_std
                else:
                    rgb = torch.from_numpy(np.stack(list(setup.pool.map(_pillow_item, batch, seeds))))
                    if kind == "dctnet":
                        x = (dctnet_batch(rgb) - mean) * inv_std
                    else:
                        x = (rgb.permute(0, 3, 1, 2).to(torch.float32) - rgb_mean) * rgb_inv_std
                x = x.to(setup.device)
                done += x.shape[0]
            setup.synchronize()
            return done
        return run
    return make


PIPELINES: List[Row] = [  # make(setup) -> run one epoch, return images (None: not here)
    Row("funloader", "DCTLoader: funloader.read_batch in native threads, DCT-domain RandomResizedCrop "
        "(mode='nearest', block-aligned; on originals within the centre square of whole blocks) + flip + "
        "normalisation fused into the decode -> (B, 192, 28, 28)",
        _funloader("nearest", "funloader")),
    Row("funloader_raw", "the same on raw quantised integers (dequantize=False: what the paper's released "
        "models take)", _funloader("nearest", "funloader_raw", dequantize=False)),
    Row("funloader_exact", "the same with RandomResizedCrop(mode='exact'): torchvision's resized crop "
        "computed from the coefficients", _funloader_exact),
    Row("funloader_augment", "funloader_exact (funloader when there is no exact crop) + RandAugment(2, 9) "
        "over the exact DCT-domain ops + Mixup per batch (DCTLoader(mixing=Mixup(...)))", _funloader_augment),
    Row("pillow", "torchvision-style pixel pipeline: Pillow decode, RandomResizedCrop(224, scale 0.08-1, "
        "bilinear), flip, to tensor, normalise -> (B, 3, 224, 224)", _pixel("pillow")),
    Row("paper", "the FUN paper's released pipeline: the Pillow pipeline's image re-encoded as JPEG q100 "
        "4:4:4, read with jpeg2dct, upsampled and stacked -> (B, 192, 28, 28)", _pixel("paper")),
    Row("dctnet", "DCTNet-style: the Pillow pipeline's pixels, YCbCr and an 8x8 block DCT in torch -> "
        "(B, 192, 28, 28)", _pixel("dctnet")),
]
#: pipelines left out of --quick (the other funloader modes and DCTNet)
QUICK_SKIP = ("dctnet", "funloader_augment")


def _image_grid(files: Sequence[str]) -> int:
    """Blocks of the smallest image side (at least 28): the loader's centre window on originals."""
    from ..codec import read_fun

    return max(28, min(min(read_fun(f).shape[1:]) for f in files[:64]))


def measure_folder(folder, *, threads: Sequence[int] = (1, 2), batch_size: int = 256, repeats: int = 3,
                   pipelines: Optional[Sequence[str]] = None, label: Optional[str] = None, device: str = "cpu",
                   progress: Callable[[str], None] = lambda message: None, section: Optional[Section] = None) -> Section:
    """Images/s of each pipeline over all images of ``folder`` (an ImageFolder tree), per thread
    count, batches delivered on ``device``; adds one :class:`Result` per thread count to
    ``section`` (a new one by default)."""
    from ..dataset import DCTImageFolder
    from ..stats import compute_stats

    names = [row.name for row in PIPELINES]
    unknown = set(pipelines or ()) - set(names)
    if unknown:
        from ..errors import UsageError

        raise UsageError(f"unknown pipelines {sorted(unknown)}; choose from {names}")
    section = section or Section("loader", TITLE, explained={row.name: row.explanation for row in PIPELINES})
    label = label or Path(folder).name
    dataset = DCTImageFolder(folder)
    files = [path for path, _ in dataset.samples]
    grid = _image_grid(files)
    stats = compute_stats(dataset, output=None, progress=False)
    raw_stats = compute_stats(dataset, dequantize=False, output=None, progress=False)
    previous_threads = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(int(count))
            with ThreadPoolExecutor(int(count)) as pool:
                setup = Setup(Path(folder), files, batch_size, int(count), grid, pool, stats, raw_stats, device)
                runs, absent = make_rows(PIPELINES, setup, pipelines)
                missing = {name: "not available here (package or feature missing)" for name in absent}
                progress(f"loader: {label}, {count} thread(s), {len(files)} images, batch {batch_size}: "
                         f"{', '.join(runs)} x {repeats} epochs")
                summaries = round_robin(runs, repeats, progress=progress)
            section.results[f"{label}/{count}t"] = Result(summaries, ratios(summaries), {
                "corpus": label, "threads": int(count), "images": len(files), "batch_size": batch_size, "device": device,
                "grid_blocks": grid, "not_measured": missing})
    finally:
        torch.set_num_threads(previous_threads)
    return section


def ratios(results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Speed-ups of the funloader pipelines over the pixel pipelines (> 1: funloader faster)."""
    def rate(name):
        return results[name]["images_per_s"] if name in results else None

    found = {}
    for ours, prefix in (("funloader", ""), ("funloader_raw", "raw_"), ("funloader_exact", "exact_")):
        if not rate(ours):
            continue
        for other in ("pillow", "paper", "dctnet"):
            if rate(other) and (prefix != "raw_" or other == "paper"):
                found[f"{prefix}speedup_vs_{other}_pipeline"] = round(rate(ours) / rate(other), 3)
    if rate("funloader_exact") and rate("funloader"):  # the exact crop's price over block-nearest
        found["exact_over_nearest"] = round(rate("funloader_exact") / rate("funloader"), 3)
    base = "funloader_exact" if rate("funloader_exact") else "funloader"
    if rate(base) and rate("funloader_augment"):  # issue 16: RandAugment(2, 9) + mixup cost, target <= 1.25
        found[f"randaugment_mixup_cost_vs_{base}"] = round(rate(base) / rate("funloader_augment"), 3)
    return found


def measure(context: Context) -> Section:
    from .corpus import image_folder

    corpora = context.corpora or ["224_q100_420", "originals_q90_420"]
    pipelines = [row.name for row in PIPELINES if not (context.quick and row.name in QUICK_SKIP)]
    section = None
    for name in corpora:
        files = context.corpus(name)
        count = context.loader_images or max(len(files), 4 * context.batch_size)
        folder = image_folder(files, context.workdir / f"loader_{name}", count=count)
        section = measure_folder(folder, threads=context.threads, batch_size=context.batch_size,
                                 repeats=context.repeats, pipelines=pipelines, label=name,
                                 progress=context.progress, section=section)
    return section
