"""``funloader train``: train FUN models straight from JPEG files.

One config dataclass (:class:`TrainConfig`, from which the command line is generated), and a loop
split into its steps: :func:`_build` (data, model, optimizer...), :func:`_restore` (``--resume``),
:func:`_run_epoch`, :func:`_end_epoch` (validation, checkpoint, metrics) and :func:`_summary`, all
working on one :class:`_Run` that holds the run's state. The data is read by
:class:`funloader.DCTLoader` (or the DALI pipeline of :mod:`funloader.dali` with ``--loader dali``)
as ``(N, C, H8, W8)`` float batches of DCT coefficients (``C = 192``, or the kept channels of
``--keep-channels``), normalised with the 192 per-channel statistics of the training set.
Evaluation (the validation metric loop, ``funloader eval``) lives in :mod:`funloader.evaluate`.

Run directory (``--output``), written by rank 0 only:

* ``config.json``: the resolved configuration and the command-line overrides (also echoed at start);
* ``last.pt`` (every epoch, and on SIGTERM mid-epoch) and ``best.pt`` (best validation top-1):
  atomic checkpoints (temporary file + ``os.replace``) holding model, EMA, optimizer, scheduler,
  grad scaler, epoch, step, the position inside the epoch, every rank's RNG state and the history
  -- tensors and plain data only, loaded with ``torch.load(weights_only=True)``;
* ``metrics.csv`` (one row per epoch; rewritten from the checkpointed history, so a resumed run
  has no duplicate rows), TensorBoard events in ``tb/`` when ``tensorboard`` is installed;
* at the end ``summary.json`` and ``curves.png`` (loss and top-1 per epoch).

A run never replaces an earlier run's files silently: an ``--output`` that holds one is refused
unless ``--resume`` (continue it) or ``--overwrite`` (delete its files first) is given.

Determinism and resume: the sample order of an epoch is a function of ``(seed, epoch, rank)`` and
the augmentation (and mixup/cutmix draw) of batch ``b`` a function of ``(seed, epoch, rank, b)``
(see :class:`funloader.DCTLoader`); dropout / stochastic depth draw from the torch RNG, whose
state is checkpointed per rank. A run killed (even with SIGKILL) and resumed with ``--resume``
therefore computes the same steps as an uninterrupted one: on CPU the final weights and metrics
are equal bit for bit (tested); on GPUs they agree within the float non-determinism of cuDNN /
atomics (typically last-digit differences in the metrics). ``--loader dali`` resumes at epoch
boundaries without this guarantee (DALI's reader keeps its own shuffling state).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import signal
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import distributed as fdist
from .channels import channel_indices, format_keep
from .checkpoint import (CheckpointError, load_checkpoint, remove_stale_temporaries, rng_state, save_atomic,
                         set_rng_state)
from .errors import UsageError
from .evaluate import autocast, eval_loader, evaluate, have_matplotlib
from .loader import mixing_generator
from .recipes import RECIPES, ModelEma, build_optimizer, lr_multiplier, recipe_for_model, soft_target_cross_entropy

__all__ = ["TrainConfig", "PRESETS", "train", "resolve_config", "main_train", "TrainingInterrupted"]

CHECKPOINT_FORMAT = "funloader-train"
CHECKPOINT_VERSION = 2  # 2: RNG states as plain lists (loadable with weights_only=True)
METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                  "ema_val_loss", "ema_val_top1", "ema_val_top5", "train_images", "epoch_seconds", "images_per_s")
AUGMENTATIONS = ("none", "flip", "crop-flip", "rrc-flip")
DEFAULT_BATCH_SIZE = 512
#: What a run writes into ``--output``: their presence means the directory holds a run.
RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.csv", "summary.json", "curves.png")
RUN_DIRS = ("samples", "tb")
#: An epoch with fewer optimizer steps than this gets a warning (batch size / drop_last).
MIN_STEPS_PER_EPOCH = 10

#: ``--preset NAME``: values for the fields the command line leaves unset.
PRESETS: Dict[str, Dict[str, Any]] = {
    # "does my data work": a short run at a small batch (many steps per epoch), a short warm-up
    "quick": {"batch_size": 64, "epochs": 5, "warmup_epochs": 0.5, "stats_images": 2000},
}


def _option(default=None, help="", *, group, **argparse_kwargs):
    """A :class:`TrainConfig` field with its command-line help (``group``: the ``--help`` section;
    ``argparse_kwargs``: ``choices``, ``metavar``, ``nargs``, ``const``, ``default_help``)."""
    return field(default=default, metadata={"help": help, "group": group, **argparse_kwargs})


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` fields take the preset's, then the recipe's
    value (see :mod:`funloader.recipes`); the resolved values are saved in ``config.json`` and the
    checkpoint. The ``funloader train`` options are generated from these fields (``--batch-size``
    for ``batch_size``...)."""

    # data
    data: Optional[str] = _option(None, "root holding train/ and val/ (or test/): ImageFolder trees, funloader-"
                                        "prepared folders or WebDataset shard folders", group="data")
    train_data: Optional[str] = _option(None, "training split (overrides DATA/train)", group="data")
    val_data: Optional[str] = _option(None, "validation split (overrides DATA/val or DATA/test; 'none' to skip)",
                                      group="data")
    input_blocks: int = _option(28, "block grid fed to the model (28 blocks = 224 px)", group="data")
    dequantize: bool = _option(True, "dequantised coefficients, or raw quantised integers (--no-dequantize)",
                               group="data")
    stats: Optional[str] = _option(None, "channel statistics JSON ('none': no normalisation)", group="data",
                                   default_help="next to the data, else computed into the run directory")
    stats_images: Optional[int] = _option(None, "images used when the statistics have to be computed", group="data",
                                          default_help="20000")
    keep_channels: Optional[str] = _option(None, "train on the lowest zigzag frequencies only, e.g. 64/12/12",
                                           group="data")
    augment: Optional[str] = _option(None, "training augmentation", group="data", choices=AUGMENTATIONS)
    loader: str = _option("torch", "DCTLoader (torch) or the DALI pipeline (dali, needs nvidia-dali)", group="data",
                          choices=("torch", "dali"))
    num_threads: Optional[int] = _option(None, "decoding threads per process", group="data",
                                         default_help="the process' CPUs")
    # model
    model: str = _option("efun", "model name: funloader.models.list_models()", group="model")
    drop_rate: Optional[float] = _option(None, "dropout before the classifier", group="model",
                                         default_help="the model's")
    drop_path_rate: Optional[float] = _option(None, "stochastic depth of the last block", group="model",
                                              default_help="the model's")
    finetune: Optional[str] = _option(None, "start from this checkpoint's weights, classifier reset to the new number "
                                            "of classes", group="model", metavar="CKPT")
    # recipe
    preset: Optional[str] = _option(None, "quick: a short 'does my data work' run (batch 64, 5 epochs, warm-up 0.5; "
                                          "options given explicitly win)", group="recipe", choices=tuple(PRESETS))
    recipe: str = _option("paper", "paper: efun for MBConv models, resfun for ResNets", group="recipe",
                          choices=("paper",) + tuple(RECIPES))
    epochs: Optional[int] = _option(None, "epochs", group="recipe")
    batch_size: Optional[int] = _option(None, "global batch over all processes", group="recipe",
                                        default_help=str(DEFAULT_BATCH_SIZE))
    lr: Optional[float] = _option(None, "peak learning rate", group="recipe",
                                  default_help="the recipe's, scaled linearly to the batch: " + ", ".join(
                                      f"{r.name} {r.lr:g} per {r.reference_batch}" for r in RECIPES.values()))
    optimizer: Optional[str] = _option(None, "optimizer", group="recipe", choices=("rmsprop_tf", "rmsprop", "sgd", "adamw"))
    weight_decay: Optional[float] = _option(None, "L2 weight decay (not on BatchNorm parameters and biases)",
                                            group="recipe")
    momentum: Optional[float] = _option(None, "momentum", group="recipe")
    rmsprop_decay: Optional[float] = _option(None, "RMSProp decay", group="recipe")
    rmsprop_eps: Optional[float] = _option(None, "RMSProp epsilon, TensorFlow convention (inside the square root)",
                                           group="recipe")
    schedule: Optional[str] = _option(None, "learning-rate schedule", group="recipe",
                                      choices=("exponential", "step", "cosine", "constant"))
    decay_rate: Optional[float] = _option(None, "learning-rate decay factor", group="recipe")
    decay_epochs: Optional[float] = _option(None, "epochs between exponential decays", group="recipe")
    milestones: Optional[Tuple[int, ...]] = _option(None, "epochs of the step schedule's decays", group="recipe")
    warmup_epochs: Optional[float] = _option(None, "linear warm-up (epochs)", group="recipe")
    label_smoothing: Optional[float] = _option(None, "label smoothing s: targets (1-s)*onehot + s/classes (applied "
                                                     "before mixup/cutmix mixing)", group="recipe")
    mixup: float = _option(0.0, "mixup with lam ~ Beta(ALPHA, ALPHA) (0: off)", group="recipe", metavar="ALPHA")
    cutmix: float = _option(0.0, "cutmix (block-aligned boxes) with lam ~ Beta(ALPHA, ALPHA) (0: off); with --mixup "
                                 "too, one of the two per batch", group="recipe", metavar="ALPHA")
    ema_decay: Optional[float] = _option(None, "EMA decay per step (0 disables)", group="recipe")
    # execution
    device: str = _option("auto", "auto: cuda:LOCAL_RANK when CUDA is available, else the CPU", group="execution",
                          choices=("auto", "cpu", "cuda"))
    amp: str = _option("none", "mixed precision", group="execution", choices=("none", "bf16", "fp16"))
    channels_last: bool = _option(False, "channels_last memory format", group="execution")
    compile: bool = _option(False, "torch.compile the model", group="execution")
    torch_threads: Optional[int] = _option(None, "torch.set_num_threads (CPU training)", group="execution")
    seed: int = _option(0, "seed of the weights, the data order and the augmentation", group="execution")
    output: str = _option("runs/fun", "run directory", group="execution")
    resume: Optional[str] = _option(None, "continue OUTPUT/last.pt (or the checkpoint given)", group="execution",
                                    nargs="?", const="auto", metavar="CKPT")
    overwrite: bool = _option(False, "delete the run already in OUTPUT (its checkpoints, metrics and config) "
                                     "instead of refusing", group="execution")
    progress: bool = _option(True, "tqdm progress bars", group="execution")
    log_every: int = _option(10, "refresh the progress bar's loss / speed every N steps", group="execution")
    log_samples: bool = _option(False, "record every rank's sample indices per epoch in OUTPUT/samples/",
                                group="execution")


# Fields that may differ when a run is resumed (they do not change what is computed).
_RESUME_MUTABLE = {"output", "resume", "progress", "log_every", "num_threads", "torch_threads", "epochs",
                   "log_samples", "data", "train_data", "val_data", "stats", "overwrite"}
_RESUME_RUNTIME = {"output", "resume", "progress", "log_every", "num_threads", "torch_threads", "log_samples",
                   "overwrite"}


# ----------------------------------------------------------------------------------------------
# configuration
def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill every ``None`` field from the preset, then the recipe; scale the learning rate to the batch."""
    if cfg.preset is not None:
        if cfg.preset not in PRESETS:
            raise UsageError(f"--preset: unknown preset {cfg.preset!r}; known: {', '.join(PRESETS)}")
        cfg = dataclasses.replace(cfg, **{name: value for name, value in PRESETS[cfg.preset].items()
                                          if getattr(cfg, name) is None})
    try:
        recipe = recipe_for_model(cfg.model, cfg.recipe)
    except ValueError as exc:
        raise UsageError(f"--recipe: {exc}") from None
    batch_size = cfg.batch_size if cfg.batch_size is not None else DEFAULT_BATCH_SIZE
    lr = cfg.lr if cfg.lr is not None else recipe.lr * batch_size / recipe.reference_batch
    defaults = {
        "epochs": recipe.epochs, "optimizer": recipe.optimizer, "weight_decay": recipe.weight_decay,
        "momentum": recipe.momentum, "rmsprop_decay": recipe.rmsprop_decay, "rmsprop_eps": recipe.rmsprop_eps,
        "schedule": recipe.schedule, "decay_rate": recipe.decay_rate, "decay_epochs": recipe.decay_epochs,
        "milestones": tuple(recipe.milestones), "warmup_epochs": recipe.warmup_epochs,
        "label_smoothing": recipe.label_smoothing, "ema_decay": recipe.ema_decay, "augment": recipe.augment,
        "stats_images": 20000,
    }
    values = {name: getattr(cfg, name) if getattr(cfg, name) is not None else default
              for name, default in defaults.items()}
    values.update(lr=float(lr), batch_size=int(batch_size), recipe=recipe.name,
                  milestones=tuple(int(m) for m in values["milestones"]))
    if cfg.keep_channels is not None:
        try:
            values["keep_channels"] = format_keep(cfg.keep_channels)
        except ValueError as exc:
            raise UsageError(f"--keep-channels: {exc}") from None
    resolved = dataclasses.replace(cfg, **values)
    _validate(resolved)
    return resolved


def _validate(cfg: TrainConfig) -> None:
    from funloader.models import list_models

    if cfg.model not in list_models():
        raise UsageError(f"--model: unknown model {cfg.model!r}; known: {', '.join(list_models())}")
    for name in ("batch_size", "epochs", "input_blocks", "log_every", "stats_images"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("num_threads", "torch_threads"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("lr", "warmup_epochs", "weight_decay", "mixup", "cutmix", "ema_decay"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.data is None and cfg.train_data is None:
        raise UsageError("give --data ROOT (with train/ and val/ or test/) or --train-data DIR")
    if cfg.resume and cfg.overwrite:
        raise UsageError("--resume continues the run in --output and --overwrite deletes it: give one of them")


def _split_dirs(cfg: TrainConfig) -> Tuple[str, Optional[str]]:
    """(train source, validation source or None)."""
    train_dir = cfg.train_data
    val_dir = cfg.val_data
    if cfg.data is not None:
        root = Path(cfg.data)
        if not root.exists():
            raise UsageError(f"--data {root}: no such directory")
        if train_dir is None:
            if not (root / "train").exists():
                raise UsageError(f"--data {root}: no train/ inside (use --train-data to name it)")
            train_dir = str(root / "train")
        if val_dir is None:
            for name in ("val", "validation", "test"):
                if (root / name).exists():
                    val_dir = str(root / name)
                    break
    for option, path in (("--train-data", train_dir), ("--val-data", val_dir)):
        if path is not None and path != "none" and not Path(path).exists():
            raise UsageError(f"{option} {path}: no such file or directory")
    if val_dir == "none":
        val_dir = None
    return train_dir, val_dir


def _overrides(cfg: TrainConfig) -> Dict[str, Any]:
    default = TrainConfig()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(default, f.name)}


def _config_dict(cfg: TrainConfig) -> Dict[str, Any]:
    out = dataclasses.asdict(cfg)
    out["milestones"] = list(out["milestones"]) if out["milestones"] is not None else None
    return out


def _config_from_dict(values: Dict[str, Any]) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kept = {k: v for k, v in values.items() if k in names}
    if kept.get("milestones") is not None:
        kept["milestones"] = tuple(kept["milestones"])
    return TrainConfig(**kept)


# ----------------------------------------------------------------------------------------------
# data
def _channel_stats(cfg: TrainConfig, train_dataset, info: fdist.DistInfo, run_dir: Path) -> Optional[dict]:
    """``{"mean": [192], "std": [192], "source": ...}`` for normalisation (None with ``--stats none``)."""
    from .stats import compute_stats, resolve, stats_filename

    if cfg.stats == "none":
        return None
    found = (resolve(cfg.stats, None, cfg.dequantize, argument="--stats") if cfg.stats
             else resolve("auto", train_dataset.root, cfg.dequantize, warn=False) if train_dataset.root else None)
    stats = None if found is None else {"mean": found.mean.tolist(), "std": found.std.tolist(), "path": found.source}
    if stats is None:
        if info.is_main:
            out = run_dir / stats_filename(cfg.dequantize)
            print(f"funloader train: no channel statistics next to the data for dequantize={cfg.dequantize}; "
                  f"computing them from {min(cfg.stats_images, len(train_dataset))} images -> {out}", file=sys.stderr)
            stats = compute_stats(train_dataset, dequantize=cfg.dequantize, size=cfg.input_blocks,
                                  max_images=cfg.stats_images, seed=cfg.seed, output=str(out),
                                  progress=cfg.progress, threads=cfg.num_threads)
            stats["path"] = str(out)
        stats = fdist.broadcast_object(stats)
    return {"mean": [float(v) for v in stats["mean"]], "std": [float(v) for v in stats["std"]],
            "source": str(stats.get("path", cfg.stats or "")), "dequantized": bool(cfg.dequantize)}


def _train_transform(cfg: TrainConfig):
    from . import transforms as T

    size = cfg.input_blocks
    if cfg.augment == "none":
        return None
    if cfg.augment == "flip":
        return T.Compose([T.RandomHorizontalFlip()])
    if cfg.augment == "crop-flip":
        return T.Compose([T.RandomCrop(size, padding=max(1, size // 8)), T.RandomHorizontalFlip()])
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()])


class _TorchTrainData:
    """Training batches of one rank through ``DCTLoader``; ``epoch(e, first)`` iterates batches
    ``first..`` of epoch ``e`` (``DCTLoader.start_batch``: same contents and augmentation as in an
    uninterrupted epoch)."""

    def __init__(self, cfg: TrainConfig, dataset, stats, info: fdist.DistInfo, per_rank_batch: int):
        from .loader import DCTLoader

        self.loader = DCTLoader(dataset, per_rank_batch, shuffle=True, drop_last=True, num_threads=cfg.num_threads,
                                device=info.device, channels_last=cfg.channels_last, seed=cfg.seed,
                                rank=info.rank, world_size=info.world_size, size=cfg.input_blocks,
                                transform=_train_transform(cfg), dequantize=cfg.dequantize,
                                normalize=(stats["mean"], stats["std"]) if stats else False,
                                keep=cfg.keep_channels, keep_mode="drop")

    def steps_per_epoch(self) -> int:
        self.loader.start_batch = 0
        return len(self.loader)

    def epoch(self, epoch: int, first: int):
        self.loader.start_batch = first
        self.loader.set_epoch(epoch)
        return iter(self.loader)

    def indices(self, epoch: int) -> List[int]:
        self.loader.set_epoch(epoch)
        return self.loader.indices()


class _DaliTrainData:
    """Training batches from a :func:`funloader.dali.fun_pipeline` (GPU augmentation when on CUDA).

    DALI has no resized crop: ``rrc-flip`` and ``crop-flip`` become a random block-aligned crop of
    the image zero-padded by ``input_blocks // 8`` blocks each side, plus flips."""

    def __init__(self, cfg: TrainConfig, dataset, stats, info: fdist.DistInfo, per_rank_batch: int):
        try:
            from .dali import FUNIterator, fun_pipeline
        except ImportError as exc:
            raise UsageError(f"--loader dali needs NVIDIA DALI (pip install funloader[dali]): {exc}") from None

        pad = 0 if cfg.augment in ("none", "flip") else max(1, cfg.input_blocks // 8)
        pipe = fun_pipeline(dataset, per_rank_batch, num_threads=cfg.num_threads,
                            device_id=info.device.index if info.device.type == "cuda" else None,
                            shard_id=info.rank, num_shards=info.world_size, random_shuffle=True,
                            crop=cfg.input_blocks, decode_grid=cfg.input_blocks + 2 * pad, random_crop=pad > 0,
                            flip=cfg.augment != "none", keep_channels=cfg.keep_channels, keep_mode="drop",
                            dequantize=cfg.dequantize, normalize_stats=(stats["mean"], stats["std"]) if stats else None,
                            dtype="float32", seed=cfg.seed + info.rank)
        self.iterator = FUNIterator(pipe, last_batch_policy="drop")
        self.channels_last = cfg.channels_last

    def steps_per_epoch(self) -> int:
        return len(self.iterator)

    def epoch(self, epoch: int, first: int):
        for number, (x, y) in enumerate(self.iterator):
            if number < first:
                continue
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def indices(self, epoch: int) -> List[int]:
        return []


def _mixing(cfg: TrainConfig, num_classes: int):
    """The batch mixing of ``--mixup`` / ``--cutmix`` (None when both are 0). Label smoothing goes
    into the mixed targets (see docs/training.md for the formula)."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    from . import transforms as T

    parts = []
    if cfg.mixup:
        parts.append(T.Mixup(num_classes=num_classes, alpha=cfg.mixup, label_smoothing=cfg.label_smoothing))
    if cfg.cutmix:
        parts.append(T.Cutmix(num_classes=num_classes, alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing))
    return parts[0] if len(parts) == 1 else T.RandomMixing(parts)


def _typical_grid(dataset, samples: int = 16) -> Optional[Tuple[int, int]]:
    """Median block grid ``(H8, W8)`` of up to ``samples`` training images spread over the set."""
    count = len(dataset)
    grids = []
    for index in sorted({int(i) for i in np.linspace(0, count - 1, min(samples, count))}):
        try:
            grids.append(dataset.load(index)[0].shape[-2:])
        except Exception:  # a bad sample is reported by the loader itself
            continue
    if not grids:
        return None
    return int(np.median([g[0] for g in grids])), int(np.median([g[1] for g in grids]))


def _setup_warnings(cfg: TrainConfig, steps_per_epoch: int, train_images: int, grid) -> List[str]:
    """Settings that silently give a useless run (issue 14): each with what to do instead."""
    notes = []
    if cfg.warmup_epochs > 0 and cfg.warmup_epochs >= cfg.epochs:
        notes.append(f"the warm-up ({cfg.warmup_epochs:g} epochs) is not shorter than the run ({cfg.epochs} epochs): "
                     f"the learning rate never reaches its peak ({cfg.lr:g}); use --warmup-epochs "
                     f"{max(0.1, round(cfg.epochs / 10, 1)):g} (or --preset quick)")
    if steps_per_epoch < MIN_STEPS_PER_EPOCH:
        used = steps_per_epoch * cfg.batch_size
        suggestion = 2 ** max(0, int(np.log2(max(1, train_images // MIN_STEPS_PER_EPOCH))))
        notes.append(f"an epoch has only {steps_per_epoch} optimizer steps: {train_images} images in full batches of "
                     f"{cfg.batch_size} (incomplete batches are dropped: {train_images - used} images unused per "
                     f"epoch); use a smaller --batch-size (e.g. {min(suggestion, cfg.batch_size)}) or --preset quick")
    if grid is not None:
        height, width = grid
        area = min(height, cfg.input_blocks) * min(width, cfg.input_blocks)
        padding = 1 - area / cfg.input_blocks ** 2
        if padding > 0.5:
            notes.append(f"the training images are about {height}x{width} blocks ({8 * height}x{8 * width} px) but the "
                         f"model input is {cfg.input_blocks}x{cfg.input_blocks} blocks: {100 * padding:.0f}% of every "
                         f"input is zero padding; use --input-blocks {max(height, width)} (or prepare the data "
                         f"at a larger --size)")
    return notes


# ----------------------------------------------------------------------------------------------
# outputs
def _write_metrics_csv(path: Path, history: List[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(METRIC_COLUMNS))
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
    os.replace(tmp, path)


def _plot_curves(path: Path, history: List[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("ema_val_loss", "val (EMA)")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=label)
    for key, label in (("train_top1", "train"), ("val_top1", "val"), ("ema_val_top1", "val (EMA)")):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            ax_acc.plot(epochs, [np.nan if v is None else 100 * v for v in values], marker="o", label=label)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _TensorBoard:
    """Scalars to ``RUN/tb`` when ``tensorboard`` is installed (rank 0), else nothing."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _param_checksum(model: nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() * (i + 1) for i, p in enumerate(model.parameters())))


def _claim_run_dir(cfg: TrainConfig, info: fdist.DistInfo) -> Path:
    """Make ``--output`` ready (rank 0 decides, every rank gets the same answer): refuse to replace an
    earlier run unless ``--resume`` / ``--overwrite``; delete it with ``--overwrite``; remove the
    temporary files of a checkpoint write that was killed."""
    run_dir = Path(cfg.output)
    problem = None
    if info.is_main:
        try:
            if run_dir.exists() and not run_dir.is_dir():
                raise UsageError(f"--output {run_dir}: exists and is not a directory")
            found = [name for name in RUN_FILES if (run_dir / name).exists()]
            if found and not cfg.resume:
                if not cfg.overwrite:
                    raise UsageError(f"--output {run_dir} already holds a training run ({', '.join(found)}): continue "
                                     f"it with --resume, replace it with --overwrite, or choose another --output")
                for name in found:
                    (run_dir / name).unlink()
                for name in RUN_DIRS:
                    if (run_dir / name).is_dir():
                        shutil.rmtree(run_dir / name)
                print(f"funloader train: --overwrite: deleted the earlier run's {', '.join(found)} in {run_dir}",
                      file=sys.stderr)
            run_dir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temporaries(run_dir):
                print(f"funloader train: removed {stale.name}, left by a checkpoint write that was killed",
                      file=sys.stderr)
        except OSError as exc:
            problem = f"--output {run_dir}: cannot use it as the run directory ({exc.strerror or exc})"
        except UsageError as exc:
            problem = str(exc)
    problem = fdist.broadcast_object(problem)
    if problem:
        raise UsageError(problem)
    return run_dir


# ----------------------------------------------------------------------------------------------
# training
class _StopFlag:
    """Set by SIGTERM (and SIGUSR1): the loop checkpoints at the next step and exits."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous = {}

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        self.signal = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGUSR1 arrived; ``checkpoint`` holds the state to ``--resume`` from."""

    def __init__(self, checkpoint: Path, signum: int):
        super().__init__(f"interrupted by signal {signum}; checkpoint saved to {checkpoint} (resume with --resume)")
        self.checkpoint = checkpoint
        self.signum = signum


@dataclass
class _Run:
    """Everything a run holds between steps (built by :func:`_build`, advanced by the epoch steps)."""

    cfg: TrainConfig
    info: fdist.DistInfo
    run_dir: Path
    train_set: Any
    val_set: Any
    stats: Optional[dict]
    kept: Optional[List[int]]
    model: nn.Module
    ema: Optional[ModelEma]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    train_data: Any
    steps_per_epoch: int
    per_rank_batch: int
    mixing: Any = None
    train_model: Optional[nn.Module] = None
    val_loader: Any = None
    finetuned_from: Optional[dict] = None
    # progress (restored by --resume)
    start_epoch: int = 0
    first_batch: int = 0
    global_step: int = 0
    history: List[dict] = field(default_factory=list)
    partial: Optional[dict] = None
    best_top1: float = -1.0
    # this invocation
    notes: List[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @property
    def num_classes(self) -> int:
        return len(self.train_set.classes)

    def checkpoint_state(self, epoch: int, batch_in_epoch: int, partial: Optional[dict], rng_states: list) -> dict:
        """The checkpoint of the position ``(epoch, batch_in_epoch)``: tensors and plain data only."""
        cfg = self.cfg
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": _config_dict(cfg),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": self.global_step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if cfg.amp == "fp16" else None,
            "rng": rng_states, "history": self.history, "partial": partial, "best_top1": self.best_top1,
            "stats": self.stats, "classes": list(self.train_set.classes), "num_classes": self.num_classes,
            "model_name": cfg.model, "keep_channels": cfg.keep_channels,
            "in_channels": len(self.kept) if self.kept else 192, "input_blocks": cfg.input_blocks,
            "dequantize": cfg.dequantize, "finetuned_from": self.finetuned_from, "world_size": self.info.world_size,
        }


def _load_states(cfg: TrainConfig, info: fdist.DistInfo) -> Tuple[TrainConfig, Optional[dict], Optional[dict]]:
    """Read the ``--resume`` / ``--finetune`` checkpoints first (before any data or output is
    touched); a resumed run takes its configuration from the checkpoint. Returns
    ``(config, resume state, finetune state)``."""
    resume_state = None
    if cfg.resume:
        resume_path = Path(cfg.output) / "last.pt" if cfg.resume == "auto" else Path(cfg.resume)
        resume_state = load_checkpoint(resume_path)
        if resume_state.get("format") != CHECKPOINT_FORMAT or "config" not in resume_state:
            raise CheckpointError(f"{resume_path}: not a resumable funloader training checkpoint")
        saved = _config_from_dict(resume_state["config"])
        changed = {name: (getattr(saved, name), getattr(cfg, name)) for name in _overrides(cfg)
                   if name not in _RESUME_MUTABLE and getattr(cfg, name) != getattr(saved, name)}
        if changed and info.is_main:
            print(f"funloader train: --resume keeps the checkpoint's settings; ignoring {sorted(changed)}",
                  file=sys.stderr)
        # runtime settings come from this invocation; epochs and data paths only when given again
        mutable = {name: getattr(cfg, name) for name in _RESUME_MUTABLE
                   if name in _RESUME_RUNTIME or getattr(cfg, name) is not None}
        cfg = dataclasses.replace(saved, **mutable)
    finetune_state = load_checkpoint(cfg.finetune) if cfg.finetune and resume_state is None else None
    return cfg, resume_state, finetune_state


def _finetune_weights(model: nn.Module, state: dict, path: str, num_classes: int) -> Dict[str, Any]:
    """Load a checkpoint's weights (its EMA when present) into ``model`` except the classifier,
    which is reset to ``num_classes``."""
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    source_classes = int(state.get("num_classes", -1))
    body = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit model {model.default_cfg['name']}: "
                              f"{str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit model {model.default_cfg['name']}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.reset_classifier(num_classes)
    return {"checkpoint": str(path), "source_classes": source_classes, "weights": "ema" if state.get("ema") else "model"}


def _check_same_classes(resume_state: dict, train_set, train_dir: str) -> None:
    """``--resume`` continues on the data it started on: same class count and names, in order."""
    saved = resume_state.get("classes")
    if saved is None:
        return
    current = list(train_set.classes)
    if len(saved) != len(current):
        raise UsageError(f"--resume: the checkpoint was trained on {len(saved)} classes, {train_dir} has "
                         f"{len(current)}; resume on the same data (to start from these weights on new classes, "
                         f"use --finetune CHECKPOINT with a new --output)")
    if list(saved) != current:
        index = next(i for i, (a, b) in enumerate(zip(saved, current)) if a != b)
        raise UsageError(f"--resume: the class names of {train_dir} differ from the checkpoint's (class {index} is "
                         f"{current[index]!r} here, {saved[index]!r} in the checkpoint): the labels would mean other "
                         f"classes; resume on the same data, or use --finetune CHECKPOINT with a new --output")


def _build(cfg: TrainConfig, info: fdist.DistInfo, resume_state: Optional[dict],
           finetune_state: Optional[dict]) -> _Run:
    """Resolve the configuration, claim the run directory, and build the data, model, EMA,
    optimizer, schedule and loaders (fresh state: :func:`_restore` then loads a checkpoint into it)."""
    from funloader.models import create_model

    from .dataset import DCTImageFolder

    user_overrides = _overrides(cfg)
    cfg = resolve_config(cfg)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    train_dir, val_dir = _split_dirs(cfg)
    if cfg.batch_size % info.world_size:
        raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    run_dir = _claim_run_dir(cfg, info)
    if info.is_main:
        print(f"funloader train: {cfg.model} recipe={cfg.recipe} on {info.world_size} process(es) "
              f"({info.device}, backend={info.backend or 'none'}); overrides: "
              + ", ".join(f"{k}={v}" for k, v in user_overrides.items()), file=sys.stderr)

    train_set = DCTImageFolder(train_dir, dequantize=cfg.dequantize)
    val_set = DCTImageFolder(val_dir, dequantize=cfg.dequantize) if val_dir else None
    num_classes = len(train_set.classes)
    if num_classes < 2:
        raise UsageError(f"{train_dir}: needs at least 2 classes, found {num_classes}")
    if val_set is not None and list(val_set.classes) != list(train_set.classes):
        raise UsageError(f"{val_dir}: classes differ from {train_dir}")
    if resume_state is not None:
        _check_same_classes(resume_state, train_set, train_dir)
    stats = resume_state["stats"] if resume_state is not None else _channel_stats(cfg, train_set, info, run_dir)

    kept = channel_indices(cfg.keep_channels) if cfg.keep_channels else None
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = create_model(cfg.model, num_classes=num_classes, in_channels=len(kept) if kept else None,
                         drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    finetuned_from = None
    if finetune_state is not None:
        finetuned_from = _finetune_weights(model, finetune_state, cfg.finetune, num_classes)
    elif resume_state is not None:
        finetuned_from = resume_state.get("finetuned_from")
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay and cfg.ema_decay > 0 else None
    optimizer = build_optimizer(cfg.optimizer, model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum, rmsprop_decay=cfg.rmsprop_decay, rmsprop_eps=cfg.rmsprop_eps)
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")

    per_rank_batch = cfg.batch_size // info.world_size
    data_cls = _DaliTrainData if cfg.loader == "dali" else _TorchTrainData
    train_data = data_cls(cfg, train_set, stats, info, per_rank_batch)
    steps_per_epoch = int(fdist.all_reduce_max(torch.tensor([-train_data.steps_per_epoch()], device=info.device)).neg().item())
    if steps_per_epoch < 1:
        raise UsageError(f"{train_dir}: {len(train_set)} images give no full batch of {per_rank_batch} per process; "
                         f"use a smaller --batch-size")

    def multiplier(step: int) -> float:
        return lr_multiplier(step, steps_per_epoch, schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                             decay_rate=cfg.decay_rate, decay_epochs=cfg.decay_epochs, milestones=cfg.milestones,
                             total_epochs=cfg.epochs)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    run = _Run(cfg=cfg, info=info, run_dir=run_dir, train_set=train_set, val_set=val_set, stats=stats, kept=kept,
               model=model, ema=ema, optimizer=optimizer, scheduler=scheduler, scaler=scaler, train_data=train_data,
               steps_per_epoch=steps_per_epoch, per_rank_batch=per_rank_batch, finetuned_from=finetuned_from,
               mixing=_mixing(cfg, num_classes))
    if info.is_main:
        if resume_state is None:
            run.notes = _setup_warnings(cfg, steps_per_epoch, len(train_set), _typical_grid(train_set))
            for note in run.notes:
                print(f"funloader train: warning: {note}", file=sys.stderr)
        # written once the data and settings are known to work (a failed start leaves no run behind)
        (run_dir / "config.json").write_text(json.dumps(
            {"config": _config_dict(cfg), "overrides": {k: (list(v) if isinstance(v, tuple) else v)
                                                         for k, v in user_overrides.items()},
             "world_size": info.world_size, "device": str(info.device), "argv": sys.argv}, indent=2) + "\n")
    fdist.barrier()
    return run


def _restore(run: _Run, resume_state: Optional[dict]) -> None:
    """Load ``--resume``'s state into the freshly built run (or seed a new run's dropout draws)."""
    info, cfg = run.info, run.cfg
    if resume_state is None:
        torch.manual_seed(cfg.seed * 1000 + info.rank)  # per-rank dropout / drop-path draws
        np.random.seed((cfg.seed * 1000 + info.rank) % 2**32)
        return
    run.model.load_state_dict(resume_state["model"])
    if run.ema is not None and resume_state.get("ema"):
        run.ema.load_state_dict(resume_state["ema"])
    run.optimizer.load_state_dict(resume_state["optimizer"])
    run.scheduler.load_state_dict(resume_state["scheduler"])
    if resume_state.get("scaler"):
        run.scaler.load_state_dict(resume_state["scaler"])
    run.start_epoch, run.first_batch = int(resume_state["epoch"]), int(resume_state["batch_in_epoch"])
    run.global_step = int(resume_state["global_step"])
    run.history = list(resume_state["history"])
    run.best_top1 = float(resume_state.get("best_top1", -1.0))
    run.partial = resume_state.get("partial")
    rngs = resume_state.get("rng") or []
    if len(rngs) == info.world_size:
        set_rng_state(rngs[info.rank])
    else:
        torch.manual_seed(cfg.seed * 1000 + info.rank + 7919 * run.start_epoch)
        if info.is_main:
            print(f"funloader train: checkpoint has RNG states of {len(rngs)} processes, this run has "
                  f"{info.world_size}: dropout draws are re-seeded (the run is no longer bit-exact)", file=sys.stderr)
    if info.is_main:
        print(f"funloader train: resumed from epoch {run.start_epoch + 1}, batch {run.first_batch}, "
              f"step {run.global_step}", file=sys.stderr)


def _prepare_step(run: _Run) -> None:
    """Wrap the model for the loop (DDP, ``torch.compile``) and build the validation loader."""
    cfg, info = run.cfg, run.info
    run.train_model = run.model
    if info.distributed:
        run.train_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if cfg.compile:
        run.train_model = torch.compile(run.train_model)
    if run.val_set is not None:
        run.val_loader = eval_loader(run.val_set, run.stats, info, run.per_rank_batch, keep=cfg.keep_channels,
                                     channels_last=cfg.channels_last, num_threads=cfg.num_threads,
                                     input_blocks=cfg.input_blocks, dequantize=cfg.dequantize)


def _stop_requested(run: _Run, stop: _StopFlag) -> bool:
    """Whether any rank got SIGTERM/SIGUSR1 (every rank stops together)."""
    flag = torch.tensor([1 if stop.signal is not None else 0], device=run.info.device)
    return bool(int(fdist.all_reduce_max(flag).item()))


@dataclass
class _EpochResult:
    totals: torch.Tensor      # this rank's loss sum, top-1 hits, images (float64)
    batch_number: int         # batches done in the epoch
    seconds: float            # wall time of the epoch (a resumed partial epoch's included)
    interrupted: bool         # stopped by a signal before the epoch's end


def _run_epoch(run: _Run, epoch: int, stop: _StopFlag) -> _EpochResult:
    """Train one epoch (from ``run.first_batch`` when it is the resumed one)."""
    from tqdm import tqdm

    cfg, info = run.cfg, run.info
    run.model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=info.device)
    seconds_before = 0.0
    if run.partial is not None and epoch == run.start_epoch and info.is_main:  # rank 0 carries a resumed epoch's sums
        totals += torch.tensor(run.partial["totals"], dtype=torch.float64, device=info.device)
        seconds_before = float(run.partial["seconds"])
    run.partial = None
    first = run.first_batch if epoch == run.start_epoch else 0
    if cfg.log_samples:
        gathered = fdist.gather_objects(run.train_data.indices(epoch))
        if info.is_main:
            (run.run_dir / "samples").mkdir(exist_ok=True)
            (run.run_dir / "samples" / f"epoch-{epoch + 1}.json").write_text(json.dumps(
                {"epoch": epoch + 1, "batch_size": run.per_rank_batch, "steps": run.steps_per_epoch,
                 "ranks": gathered}))
    bar = tqdm(total=run.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=not (info.is_main and cfg.progress), dynamic_ncols=True, file=sys.stderr)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    epoch_start = time.time()
    images_seen_here = 0
    interrupted = False
    batch_number = first
    iterator = run.train_data.epoch(epoch, first)
    try:
        for x, y in iterator:
            if batch_number >= run.steps_per_epoch:
                break
            with autocast(info.device, cfg.amp):
                if run.mixing is not None:  # soft targets, label smoothing already in them
                    # (not DCTLoader(mixing=): train_top1 below needs the hard labels y)
                    x, targets = run.mixing(x, y, generator=mixing_generator(cfg.seed, epoch, info.rank, batch_number))
                    logits = run.train_model(x)
                    loss = soft_target_cross_entropy(logits, targets)
                else:
                    logits = run.train_model(x)
                    loss = criterion(logits, y)
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.scheduler.step()
            run.global_step += 1
            batch_number += 1
            if run.ema is not None:
                run.ema.update(run.model, run.global_step)
            with torch.no_grad():
                totals[0] += loss.detach().double() * y.numel()
                totals[1] += (logits.detach().argmax(1) == y).sum().double()
                totals[2] += y.numel()
            images_seen_here += y.numel()
            bar.update(1)
            if batch_number % cfg.log_every == 0 or batch_number == run.steps_per_epoch:
                elapsed = max(1e-9, time.time() - epoch_start)
                bar.set_postfix(loss=f"{totals[0].item() / max(1.0, totals[2].item()):.4f}",
                                img_s=f"{images_seen_here * info.world_size / elapsed:.0f}",
                                lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
            if _stop_requested(run, stop):
                interrupted = batch_number < run.steps_per_epoch
                break
    finally:
        bar.close()
        if hasattr(iterator, "close"):
            iterator.close()
    return _EpochResult(totals, batch_number, seconds_before + time.time() - epoch_start, interrupted)


def _save_interrupted(run: _Run, epoch: int, result: _EpochResult, signum: int) -> None:
    """Checkpoint the position inside the epoch (with its partial sums) and raise :class:`TrainingInterrupted`."""
    rng_states = fdist.gather_objects(rng_state())
    summed = fdist.all_reduce_sum(result.totals.clone())
    path = run.run_dir / "last.pt"
    if run.info.is_main:
        save_atomic(run.checkpoint_state(epoch, result.batch_number,
                                         {"totals": summed.tolist(), "seconds": result.seconds}, rng_states), path)
    fdist.barrier()
    raise TrainingInterrupted(path, signum)


def _end_epoch(run: _Run, epoch: int, result: _EpochResult, tensorboard: _TensorBoard) -> None:
    """Validate (raw and EMA weights), append the metrics row, save ``last.pt`` (and ``best.pt``
    when the headline top-1 improved), rewrite ``metrics.csv``."""
    cfg, info = run.cfg, run.info
    totals = fdist.all_reduce_sum(result.totals)
    train_images = int(totals[2].item())
    row: Dict[str, Any] = {
        "epoch": epoch + 1, "step": run.global_step, "lr": run.scheduler.get_last_lr()[0],
        "train_loss": totals[0].item() / max(1, train_images), "train_top1": totals[1].item() / max(1, train_images),
        "train_images": train_images, "epoch_seconds": round(result.seconds, 3),
        "images_per_s": round(train_images / max(1e-9, result.seconds), 1),
    }
    if run.val_loader is not None:
        metrics = evaluate(run.model, run.val_loader, info.device, cfg.amp)
        row.update(val_loss=metrics["loss"], val_top1=metrics["top1"], val_top5=metrics["top5"])
        if run.ema is not None:
            metrics = evaluate(run.ema.module, run.val_loader, info.device, cfg.amp)
            row.update(ema_val_loss=metrics["loss"], ema_val_top1=metrics["top1"], ema_val_top5=metrics["top5"])
    run.history.append(row)
    headline = row.get("ema_val_top1", row.get("val_top1"))
    improved = headline is not None and headline > run.best_top1
    if improved:
        run.best_top1 = headline
    rng_states = fdist.gather_objects(rng_state())
    if info.is_main:
        state = run.checkpoint_state(epoch + 1, 0, None, rng_states)
        save_atomic(state, run.run_dir / "last.pt")
        if improved:
            save_atomic(state, run.run_dir / "best.pt")
        _write_metrics_csv(run.run_dir / "metrics.csv", run.history)
        tensorboard.log(row)
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        print(f"funloader train: {shown}", file=sys.stderr)


def _summary(run: _Run) -> Dict[str, Any]:
    """``summary.json`` (and ``curves.png``) of the finished run; returned on every rank."""
    cfg, info, history = run.cfg, run.info, run.history
    checksums = fdist.gather_objects(_param_checksum(run.model))
    seconds = sum(row["epoch_seconds"] for row in history)
    summary = {
        "model": cfg.model, "recipe": cfg.recipe, "epochs": cfg.epochs, "global_step": run.global_step,
        "world_size": info.world_size, "device": str(info.device),
        "device_name": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu",
        "num_params": sum(p.numel() for p in run.model.parameters()), "num_classes": run.num_classes,
        "train_images": len(run.train_set), "val_images": len(run.val_set) if run.val_set is not None else 0,
        "final": history[-1] if history else None, "best_top1": run.best_top1 if run.best_top1 >= 0 else None,
        "wall_seconds_this_process": round(time.time() - run.started, 2),
        "train_seconds_total": round(seconds, 2),
        "mean_images_per_s": round(sum(r["train_images"] for r in history) / max(1e-9, seconds), 1) if history else None,
        "rank_param_checksums": checksums, "finetuned_from": run.finetuned_from,
        "keep_channels": cfg.keep_channels, "warnings": run.notes, "config": _config_dict(cfg),
    }
    if info.is_main:
        if len(set(checksums)) > 1:
            print(f"funloader train: WARNING the ranks' weights differ: {checksums}", file=sys.stderr)
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if history:
            if have_matplotlib():
                _plot_curves(run.run_dir / "curves.png", history, f"{cfg.model} ({cfg.recipe} recipe)")
            else:
                print("funloader train: matplotlib is not installed (pip install funloader[plot]); "
                      "no curves.png", file=sys.stderr)
    return summary


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Run (or resume) a training run; returns the summary dict (rank 0 also writes it).

    Raises :class:`TrainingInterrupted` after checkpointing when SIGTERM/SIGUSR1 arrives (the CLI
    then exits with 128 + the signal number), and :class:`~funloader.errors.UsageError` (or
    :class:`~funloader.checkpoint.CheckpointError`) naming a bad option, folder or checkpoint."""
    info = fdist.setup(cfg.device)
    try:
        cfg, resume_state, finetune_state = _load_states(cfg, info)
        run = _build(cfg, info, resume_state, finetune_state)
        _restore(run, resume_state)
        del resume_state, finetune_state
        _prepare_step(run)
        tensorboard = _TensorBoard(run.run_dir, info.is_main)
        stop = _StopFlag()
        stop.install()
        try:
            for epoch in range(run.start_epoch, run.cfg.epochs):
                result = _run_epoch(run, epoch, stop)
                if result.interrupted:
                    _save_interrupted(run, epoch, result, stop.signal or signal.SIGTERM)
                _end_epoch(run, epoch, result, tensorboard)
                if _stop_requested(run, stop) and epoch + 1 < run.cfg.epochs:
                    raise TrainingInterrupted(run.run_dir / "last.pt", stop.signal or signal.SIGTERM)
        finally:
            stop.restore()
            tensorboard.close()
        return _summary(run)
    finally:
        fdist.cleanup()


# ----------------------------------------------------------------------------------------------
# command line (generated from TrainConfig)
def _option_type(annotation):
    """The argparse kind of a field annotation: int, float, str, bool or tuple (of int)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    return tuple if origin is tuple else annotation


def _default_text(config_field: dataclasses.Field) -> Optional[str]:
    meta = config_field.metadata
    if "default_help" in meta:
        return meta["default_help"]
    recipe_values = {r.name: getattr(r, config_field.name) for r in RECIPES.values() if hasattr(r, config_field.name)}
    if config_field.default is None and recipe_values:
        shown = {name: (" ".join(str(v) for v in value) or "none") if isinstance(value, tuple) else f"{value:g}"
                 if isinstance(value, float) else str(value) for name, value in recipe_values.items()}
        return "recipe " + ", ".join(f"{name} {value}" for name, value in shown.items())
    if config_field.default is None:
        return None
    if isinstance(config_field.default, bool):
        return "on" if config_field.default else "off"
    return str(config_field.default)


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funloader train",
        description="Train a FUN model from JPEG files (DCT coefficients, no pixel decoding). Recipe defaults are "
                    "the paper's (docs/training.md). Multi-GPU / multi-node: launch with torchrun.")
    hints = typing.get_type_hints(TrainConfig)
    groups: Dict[str, Any] = {}
    for config_field in dataclasses.fields(TrainConfig):
        meta = config_field.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kind = _option_type(hints[config_field.name])
        text = meta["help"]
        default = _default_text(config_field)
        if default is not None:
            text = f"{text} (default: {default})"
        kwargs: Dict[str, Any] = {"default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            kwargs.update(type=int, nargs="+")
        else:
            kwargs["type"] = kind
        for key in ("choices", "metavar", "nargs", "const"):
            if key in meta:
                kwargs[key] = meta[key]
        group.add_argument("--" + config_field.name.replace("_", "-"), **kwargs)
    return parser


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = dict(vars(args))
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])
    return TrainConfig(**values)


def main_train(argv: Optional[List[str]] = None) -> int:
    """``funloader train``: see ``funloader train --help`` and docs/training.md. A bad option,
    folder or checkpoint raises :class:`~funloader.errors.UsageError` (the CLI prints it in one
    line and exits 2); SIGTERM/SIGUSR1 exits with 128 + the signal after checkpointing."""
    cfg = _config_from_args(_train_parser().parse_args(argv))
    try:
        summary = train(cfg)
    except TrainingInterrupted as exc:
        print(f"funloader train: {exc}", file=sys.stderr)
        return 128 + int(exc.signum)
    final = summary.get("final") or {}
    if int(os.environ.get("RANK", "0")) == 0:
        shown = {k: final.get(k) for k in ("epoch", "val_top1", "val_top5", "ema_val_top1", "ema_val_top5")}
        print(f"funloader train: done: {json.dumps(shown)}; run directory {cfg.output}")
    return 0
