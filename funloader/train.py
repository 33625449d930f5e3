"""``funloader train`` / ``funloader eval``: train and evaluate FUN models straight from JPEG files.

One flat loop around one config dataclass (:class:`TrainConfig`). The data is read by
:class:`funloader.DCTLoader` (or the DALI pipeline of :mod:`funloader.dali` with ``--loader dali``)
as ``(N, C, H8, W8)`` float batches of DCT coefficients (``C = 192``, or the kept channels of
``--keep-channels``), normalised with the 192 per-channel statistics of the training set.

Run directory (``--output``), written by rank 0 only:

* ``config.json``: the resolved configuration and the command-line overrides (also echoed at start);
* ``last.pt`` (every epoch, and on SIGTERM mid-epoch) and ``best.pt`` (best validation top-1):
  atomic checkpoints (temporary file + ``os.replace``) holding model, EMA, optimizer, scheduler,
  grad scaler, epoch, step, the position inside the epoch, every rank's RNG state and the history;
* ``metrics.csv`` (one row per epoch; rewritten from the checkpointed history, so a resumed run
  has no duplicate rows), TensorBoard events in ``tb/`` when ``tensorboard`` is installed;
* at the end ``summary.json`` and ``curves.png`` (loss and top-1 per epoch).

Determinism and resume: the sample order of an epoch is a function of ``(seed, epoch, rank)`` and
the augmentation of batch ``b`` a function of ``(seed, epoch, rank, b)`` (see
:class:`funloader.DCTLoader`); dropout / stochastic depth draw from the torch RNG, whose state is
checkpointed per rank. A run killed (even with SIGKILL) and resumed with ``--resume`` therefore
computes the same steps as an uninterrupted one: on CPU the final weights and metrics are equal
bit for bit (tested); on GPUs they agree within the float non-determinism of cuDNN / atomics
(typically last-digit differences in the metrics). ``--loader dali`` resumes at epoch boundaries
without this guarantee (DALI's reader keeps its own shuffling state).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as fdist
from .channels import TABLE7_SPECS, channel_indices, format_keep, parse_keep
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_atomic, set_rng_state
from .recipes import ModelEma, build_model, build_optimizer, lr_multiplier, recipe_for_model

__all__ = ["TrainConfig", "train", "evaluate_checkpoint", "main_train", "main_eval", "TABLE7_SPECS"]

CHECKPOINT_FORMAT = "funloader-train"
CHECKPOINT_VERSION = 1
METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                  "ema_val_loss", "ema_val_top1", "ema_val_top5", "train_images", "epoch_seconds", "images_per_s")
AUGMENTATIONS = ("none", "flip", "crop-flip", "rrc-flip")


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` fields take the recipe's value (see
    :mod:`funloader.recipes`); the resolved values are saved in ``config.json`` and the checkpoint."""

    # data
    data: Optional[str] = None          # root holding train/ and val/ (or test/); or use train_data/val_data
    train_data: Optional[str] = None    # ImageFolder, prepared folder or WebDataset shard dir / .tar
    val_data: Optional[str] = None      # same kinds; "none" = no validation
    input_blocks: int = 28              # block grid fed to the model (28 = 224 px)
    dequantize: bool = True             # dequantised coefficients (False: raw quantised integers)
    stats: Optional[str] = None         # channel statistics JSON; None = next to the data, else computed
    stats_images: int = 20000           # images used when the statistics have to be computed
    keep_channels: Optional[str] = None  # "64/12/12": train on the lowest zigzag frequencies only
    augment: Optional[str] = None       # none | flip | crop-flip | rrc-flip (recipe default rrc-flip)
    loader: str = "torch"               # torch (DCTLoader) | dali (funloader.dali, when installed)
    num_threads: Optional[int] = None   # decoding threads per process (default: its CPUs)
    # model
    model: str = "efun"
    drop_rate: Optional[float] = None
    drop_path_rate: Optional[float] = None
    finetune: Optional[str] = None      # checkpoint whose weights start the run (classifier reset)
    # recipe
    recipe: str = "paper"               # paper (by model family) | efun | resfun
    epochs: Optional[int] = None
    batch_size: int = 512               # global batch (all ranks together)
    lr: Optional[float] = None          # None: recipe lr scaled linearly to batch_size
    optimizer: Optional[str] = None     # rmsprop_tf | rmsprop | sgd | adamw
    weight_decay: Optional[float] = None
    momentum: Optional[float] = None
    rmsprop_decay: Optional[float] = None
    rmsprop_eps: Optional[float] = None  # TensorFlow convention (inside the square root)
    schedule: Optional[str] = None      # exponential | step | cosine | constant
    decay_rate: Optional[float] = None
    decay_epochs: Optional[float] = None
    milestones: Optional[Tuple[int, ...]] = None
    warmup_epochs: Optional[float] = None
    label_smoothing: Optional[float] = None
    ema_decay: Optional[float] = None   # 0 disables the EMA
    # execution
    device: str = "auto"                # auto | cpu | cuda
    amp: str = "none"                   # none | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    torch_threads: Optional[int] = None  # torch.set_num_threads for CPU training
    seed: int = 0
    output: str = "runs/fun"
    resume: Optional[str] = None        # "auto" = OUTPUT/last.pt, or a checkpoint path
    progress: bool = True
    log_every: int = 10                 # tqdm postfix refresh (steps)
    log_samples: bool = False           # write each epoch's per-rank sample indices (samples/epoch-E.json)


# Fields that may differ when a run is resumed (they do not change what is computed).
_RESUME_MUTABLE = {"output", "resume", "progress", "log_every", "num_threads", "torch_threads", "epochs",
                   "log_samples", "data", "train_data", "val_data", "stats"}
_RESUME_RUNTIME = {"output", "resume", "progress", "log_every", "num_threads", "torch_threads", "log_samples"}


# ----------------------------------------------------------------------------------------------
# configuration
def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill every ``None`` recipe field from the recipe; scale the learning rate to the batch size."""
    recipe = recipe_for_model(cfg.model, cfg.recipe)
    values = {}
    lr = cfg.lr if cfg.lr is not None else recipe.lr * cfg.batch_size / recipe.reference_batch
    defaults = {
        "epochs": recipe.epochs, "optimizer": recipe.optimizer, "weight_decay": recipe.weight_decay,
        "momentum": recipe.momentum, "rmsprop_decay": recipe.rmsprop_decay, "rmsprop_eps": recipe.rmsprop_eps,
        "schedule": recipe.schedule, "decay_rate": recipe.decay_rate, "decay_epochs": recipe.decay_epochs,
        "milestones": tuple(recipe.milestones), "warmup_epochs": recipe.warmup_epochs,
        "label_smoothing": recipe.label_smoothing, "ema_decay": recipe.ema_decay, "augment": recipe.augment,
    }
    for name, default in defaults.items():
        values[name] = getattr(cfg, name) if getattr(cfg, name) is not None else default
    values["lr"] = float(lr)
    values["recipe"] = recipe.name
    values["milestones"] = tuple(int(m) for m in values["milestones"])
    if cfg.keep_channels is not None:
        values["keep_channels"] = format_keep(cfg.keep_channels)
    resolved = dataclasses.replace(cfg, **values)
    _validate(resolved)
    return resolved


def _validate(cfg: TrainConfig) -> None:
    if cfg.augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {cfg.augment!r}")
    if cfg.loader not in ("torch", "dali"):
        raise ValueError(f"loader must be 'torch' or 'dali', got {cfg.loader!r}")
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {cfg.amp!r}")
    if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.input_blocks < 1:
        raise ValueError("batch_size, epochs and input_blocks must be positive")
    if cfg.data is None and cfg.train_data is None:
        raise ValueError("give --data ROOT (with train/ and val/ or test/) or --train-data DIR")


def _split_dirs(cfg: TrainConfig) -> Tuple[str, Optional[str]]:
    """(train source, validation source or None)."""
    train_dir = cfg.train_data
    val_dir = cfg.val_data
    if cfg.data is not None:
        root = Path(cfg.data)
        if not root.exists():
            raise FileNotFoundError(f"--data {root}: no such directory")
        if train_dir is None:
            if not (root / "train").exists():
                raise FileNotFoundError(f"--data {root}: no train/ inside (use --train-data to name it)")
            train_dir = str(root / "train")
        if val_dir is None:
            for name in ("val", "validation", "test"):
                if (root / name).exists():
                    val_dir = str(root / name)
                    break
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


def _make_skipping_loader_class():
    from .loader import DCTLoader

    class ResumableLoader(DCTLoader):
        """A ``DCTLoader`` that starts the epoch at batch ``skip`` with the same batch contents and
        augmentation as an uninterrupted epoch (used to resume inside an epoch)."""

        skip = 0

        def batches(self):
            return super().batches()[self.skip:]

        def finish(self, raw, labels, batch_number, epoch=None):
            return super().finish(raw, labels, batch_number + self.skip, epoch)

        def fused_layout(self, count, batch_number, epoch=None):  # the CPU path's random draws
            return super().fused_layout(count, batch_number + self.skip, epoch)

        def decode(self, batch_indices, out, batch_number=None, epoch=None, layout=None):  # exact-crop windows
            number = None if batch_number is None else batch_number + self.skip
            return super().decode(batch_indices, out, number, epoch, layout)

        def __len__(self):
            return max(0, super().__len__() - self.skip)

    return ResumableLoader


class _TorchTrainData:
    """Training batches of one rank through ``DCTLoader``; ``epoch(e, skip)`` iterates batches
    ``skip..`` of epoch ``e``."""

    def __init__(self, cfg: TrainConfig, dataset, stats, info: fdist.DistInfo, per_rank_batch: int):
        cls = _make_skipping_loader_class()
        self.loader = cls(dataset, per_rank_batch, shuffle=True, drop_last=True, num_threads=cfg.num_threads,
                          device=info.device, channels_last=cfg.channels_last, seed=cfg.seed,
                          rank=info.rank, world_size=info.world_size, size=cfg.input_blocks,
                          transform=_train_transform(cfg), dequantize=cfg.dequantize,
                          normalize=(stats["mean"], stats["std"]) if stats else False,
                          keep=cfg.keep_channels, keep_mode="drop")

    def steps_per_epoch(self) -> int:
        self.loader.skip = 0
        return len(self.loader)

    def epoch(self, epoch: int, skip: int):
        self.loader.skip = skip
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
        from .dali import FUNIterator, fun_pipeline

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

    def epoch(self, epoch: int, skip: int):
        for number, (x, y) in enumerate(self.iterator):
            if number < skip:
                continue
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def indices(self, epoch: int) -> List[int]:
        return []


def _eval_loader(dataset, stats, info: fdist.DistInfo, batch_size: int, *, keep=None,
                 channels_last: bool = False, num_threads=None, input_blocks: int = 28, dequantize: bool = True):
    """Validation batches of this rank: samples ``rank, rank + world, ...`` (no padding, so counts
    summed over ranks are exact), centre ``input_blocks`` grid, no augmentation."""
    from .loader import DCTLoader

    indices = list(range(info.rank, len(dataset), info.world_size))
    return DCTLoader(dataset, batch_size, shuffle=False, drop_last=False, num_threads=num_threads,
                     device=info.device, channels_last=channels_last, sampler=indices, size=input_blocks,
                     transform=None, dequantize=dequantize,
                     normalize=(stats["mean"], stats["std"]) if stats else False,
                     keep=keep, keep_mode="drop")


# ----------------------------------------------------------------------------------------------
# metrics
def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none") -> Dict[str, float]:
    """Top-1, top-5 and mean cross-entropy of ``model`` (eval mode) over every rank's share of
    ``loader``, summed over ranks. Returns ``{"loss", "top1", "top5", "count"}`` (top-k as fractions)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    for x, y in loader:
        with _autocast(device, amp):
            logits = model(x)
        totals += _batch_totals(logits.float(), y)
    fdist.all_reduce_sum(totals)
    model.train(was_training)
    loss, top1, top5, count = totals.tolist()
    count = max(count, 1.0)
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(totals[3].item())}


def _batch_totals(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hit = topk == y[:, None]
    loss = F.cross_entropy(logits, y, reduction="sum")
    return torch.stack([loss.double(), hit[:, 0].sum().double(), hit.any(dim=1).sum().double(),
                        torch.tensor(float(y.numel()), dtype=torch.float64, device=logits.device)])


def _write_metrics_csv(path: Path, history: List[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(METRIC_COLUMNS))
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
    os.replace(tmp, path)


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plot_curves(path: Path, history: List[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    from matplotlib.ticker import MaxNLocator

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


# ----------------------------------------------------------------------------------------------
# training
class _StopFlag:
    """Set by SIGTERM (and SIGINT/SIGUSR1): the loop checkpoints at the next step and exits."""

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


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _load_finetune_weights(model: nn.Module, state: dict, path: str, num_classes: int) -> Dict[str, Any]:
    weights = state["ema"]["module"] if state.get("ema") else state["model"]
    source_classes = int(state.get("num_classes", -1))
    classifier_keys = [k for k in weights if k.startswith("classifier.")]
    body = {k: v for k, v in weights.items() if k not in classifier_keys}
    try:
        missing, unexpected = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit model {getattr(model, 'default_cfg', {}).get('name')}: "
                              f"{str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit model {state.get('config', {}).get('model')}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
    return {"checkpoint": str(path), "source_classes": source_classes, "weights": "ema" if state.get("ema") else "model"}


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Run (or resume) a training run; returns the summary dict (rank 0 also writes it).

    Raises :class:`TrainingInterrupted` after checkpointing when SIGTERM/SIGUSR1 arrives (the CLI
    then exits with 128 + the signal number)."""
    info = fdist.setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        fdist.cleanup()


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGUSR1 arrived; ``checkpoint`` holds the state to ``--resume`` from."""

    def __init__(self, checkpoint: Path, signum: int):
        super().__init__(f"interrupted by signal {signum}; checkpoint saved to {checkpoint} (resume with --resume)")
        self.checkpoint = checkpoint
        self.signum = signum


def _train(cfg: TrainConfig, info: fdist.DistInfo) -> Dict[str, Any]:
    from .dataset import DCTImageFolder

    run_dir = Path(cfg.output)
    resume_state = None
    if cfg.resume:
        resume_path = run_dir / "last.pt" if cfg.resume == "auto" else Path(cfg.resume)
        resume_state = load_checkpoint(resume_path)
        if resume_state.get("format") != CHECKPOINT_FORMAT:
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
    user_overrides = _overrides(cfg)
    cfg = resolve_config(cfg)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    train_dir, val_dir = _split_dirs(cfg)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = user_overrides
        print(f"funloader train: {cfg.model} recipe={cfg.recipe} on {info.world_size} process(es) "
              f"({info.device}, backend={info.backend or 'none'}); overrides: "
              + ", ".join(f"{k}={v}" for k, v in overrides.items()), file=sys.stderr)
        (run_dir / "config.json").write_text(json.dumps(
            {"config": _config_dict(cfg), "overrides": {k: (list(v) if isinstance(v, tuple) else v)
                                                         for k, v in overrides.items()},
             "world_size": info.world_size, "device": str(info.device), "argv": sys.argv}, indent=2) + "\n")
    fdist.barrier()

    train_set = DCTImageFolder(train_dir, dequantize=cfg.dequantize)
    val_set = DCTImageFolder(val_dir, dequantize=cfg.dequantize) if val_dir else None
    num_classes = len(train_set.classes)
    if num_classes < 2:
        raise ValueError(f"{train_dir}: needs at least 2 classes, found {num_classes}")
    if val_set is not None and list(val_set.classes) != list(train_set.classes):
        raise ValueError(f"{val_dir}: classes differ from {train_dir}")
    stats = resume_state["stats"] if resume_state is not None else _channel_stats(cfg, train_set, info, run_dir)

    kept = channel_indices(cfg.keep_channels) if cfg.keep_channels else None
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, num_classes=num_classes, in_channels=len(kept) if kept else None,
                        drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    finetuned_from = None
    if finetune_state is not None:
        finetuned_from = _load_finetune_weights(model, finetune_state, cfg.finetune, num_classes)
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

    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    per_rank_batch = cfg.batch_size // info.world_size
    data_cls = _DaliTrainData if cfg.loader == "dali" else _TorchTrainData
    train_data = data_cls(cfg, train_set, stats, info, per_rank_batch)
    steps_per_epoch = int(fdist.all_reduce_max(torch.tensor([-train_data.steps_per_epoch()], device=info.device)).neg().item())
    if steps_per_epoch < 1:
        raise ValueError(f"{train_dir}: {len(train_set)} images give no full batch of {per_rank_batch} per process")

    def multiplier(step: int) -> float:
        return lr_multiplier(step, steps_per_epoch, schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                             decay_rate=cfg.decay_rate, decay_epochs=cfg.decay_epochs, milestones=cfg.milestones,
                             total_epochs=cfg.epochs)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)

    start_epoch, skip, global_step = 0, 0, 0
    history: List[dict] = []
    partial = None
    best_top1 = -1.0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        if ema is not None and resume_state.get("ema"):
            ema.load_state_dict(resume_state["ema"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        start_epoch, skip = int(resume_state["epoch"]), int(resume_state["batch_in_epoch"])
        global_step = int(resume_state["global_step"])
        history = list(resume_state["history"])
        best_top1 = float(resume_state.get("best_top1", -1.0))
        partial = resume_state.get("partial")
        rngs = resume_state.get("rng") or []
        if len(rngs) == info.world_size:
            set_rng_state(rngs[info.rank])
        else:
            torch.manual_seed(cfg.seed * 1000 + info.rank + 7919 * start_epoch)
            if info.is_main:
                print(f"funloader train: checkpoint has RNG states of {len(rngs)} processes, this run has "
                      f"{info.world_size}: dropout draws are re-seeded (the run is no longer bit-exact)", file=sys.stderr)
        if info.is_main:
            print(f"funloader train: resumed from epoch {start_epoch + 1}, batch {skip}, step {global_step}",
                  file=sys.stderr)
    else:
        torch.manual_seed(cfg.seed * 1000 + info.rank)  # per-rank dropout / drop-path draws
        np.random.seed((cfg.seed * 1000 + info.rank) % 2**32)

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    val_loaders = None
    if val_set is not None:
        val_loaders = _eval_loader(val_set, stats, info, per_rank_batch, keep=cfg.keep_channels,
                                   channels_last=cfg.channels_last, num_threads=cfg.num_threads,
                                   input_blocks=cfg.input_blocks, dequantize=cfg.dequantize)
    tensorboard = _TensorBoard(run_dir, info.is_main)
    stop = _StopFlag()
    stop.install()
    num_params = sum(p.numel() for p in model.parameters())
    started = time.time()
    from tqdm import tqdm

    def checkpoint_state(epoch: int, batch_in_epoch: int, partial_totals) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": _config_dict(cfg),
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
            "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if cfg.amp == "fp16" else None,
            "rng": rng_states, "history": history, "partial": partial_totals, "best_top1": best_top1,
            "stats": stats, "classes": list(train_set.classes), "num_classes": num_classes,
            "model_name": cfg.model, "keep_channels": cfg.keep_channels, "in_channels": len(kept) if kept else 192,
            "input_blocks": cfg.input_blocks, "dequantize": cfg.dequantize, "finetuned_from": finetuned_from,
            "world_size": info.world_size,
        }

    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            # loss sum, top-1 hits, images, seconds (this rank; rank 0 carries a resumed partial epoch)
            totals = torch.zeros(3, dtype=torch.float64, device=info.device)
            seconds_before = 0.0
            if partial is not None and epoch == start_epoch and info.is_main:
                totals += torch.tensor(partial["totals"], dtype=torch.float64, device=info.device)
                seconds_before = float(partial["seconds"])
            partial = None
            first = skip if epoch == start_epoch else 0
            if cfg.log_samples:
                gathered = fdist.gather_objects(train_data.indices(epoch))
                if info.is_main:
                    (run_dir / "samples").mkdir(exist_ok=True)
                    (run_dir / "samples" / f"epoch-{epoch + 1}.json").write_text(json.dumps(
                        {"epoch": epoch + 1, "batch_size": per_rank_batch, "steps": steps_per_epoch,
                         "ranks": gathered}))
            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                       disable=not (info.is_main and cfg.progress), dynamic_ncols=True, file=sys.stderr)
            epoch_start = time.time()
            images_seen_here = 0
            interrupted = False
            batch_number = first
            iterator = train_data.epoch(epoch, first)
            for x, y in iterator:
                if batch_number >= steps_per_epoch:
                    break
                with _autocast(info.device, cfg.amp):
                    logits = train_model(x)
                    loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                global_step += 1
                batch_number += 1
                if ema is not None:
                    ema.update(model, global_step)
                with torch.no_grad():
                    totals[0] += loss.detach().double() * y.numel()
                    totals[1] += (logits.detach().argmax(1) == y).sum().double()
                    totals[2] += y.numel()
                images_seen_here += y.numel()
                bar.update(1)
                if batch_number % cfg.log_every == 0 or batch_number == steps_per_epoch:
                    elapsed = max(1e-9, time.time() - epoch_start)
                    bar.set_postfix(loss=f"{totals[0].item() / max(1.0, totals[2].item()):.4f}",
                                    img_s=f"{images_seen_here * info.world_size / elapsed:.0f}",
                                    lr=f"{scheduler.get_last_lr()[0]:.2e}")
                flag = torch.tensor([1 if stop.signal is not None else 0], device=info.device)
                if int(fdist.all_reduce_max(flag).item()):
                    interrupted = batch_number < steps_per_epoch
                    break
            bar.close()
            if hasattr(iterator, "close"):
                iterator.close()
            epoch_seconds = seconds_before + time.time() - epoch_start
            rng_states = fdist.gather_objects(rng_state())
            if interrupted:
                summed = fdist.all_reduce_sum(totals.clone())
                if info.is_main:
                    path = save_atomic(checkpoint_state(epoch, batch_number,
                                                        {"totals": summed.tolist(), "seconds": epoch_seconds}),
                                       run_dir / "last.pt")
                else:
                    path = run_dir / "last.pt"
                fdist.barrier()
                raise TrainingInterrupted(path, stop.signal or signal.SIGTERM)
            fdist.all_reduce_sum(totals)
            train_images = int(totals[2].item())
            row: Dict[str, Any] = {
                "epoch": epoch + 1, "step": global_step, "lr": scheduler.get_last_lr()[0],
                "train_loss": totals[0].item() / max(1, train_images), "train_top1": totals[1].item() / max(1, train_images),
                "train_images": train_images, "epoch_seconds": round(epoch_seconds, 3),
                "images_per_s": round(train_images / max(1e-9, epoch_seconds), 1),
            }
            if val_loaders is not None:
                result = evaluate(model, val_loaders, info.device, cfg.amp)
                row.update(val_loss=result["loss"], val_top1=result["top1"], val_top5=result["top5"])
                if ema is not None:
                    result = evaluate(ema.module, val_loaders, info.device, cfg.amp)
                    row.update(ema_val_loss=result["loss"], ema_val_top1=result["top1"], ema_val_top5=result["top5"])
            history.append(row)
            headline = row.get("ema_val_top1", row.get("val_top1"))
            improved = headline is not None and headline > best_top1
            if improved:
                best_top1 = headline
            rng_states = fdist.gather_objects(rng_state())
            if info.is_main:
                state = checkpoint_state(epoch + 1, 0, None)
                save_atomic(state, run_dir / "last.pt")
                if improved:
                    save_atomic(state, run_dir / "best.pt")
                _write_metrics_csv(run_dir / "metrics.csv", history)
                tensorboard.log(row)
                shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                print(f"funloader train: {shown}", file=sys.stderr)
            flag = torch.tensor([1 if stop.signal is not None else 0], device=info.device)
            if int(fdist.all_reduce_max(flag).item()) and epoch + 1 < cfg.epochs:  # every rank stops together
                raise TrainingInterrupted(run_dir / "last.pt", stop.signal or signal.SIGTERM)
    finally:
        stop.restore()
        tensorboard.close()

    checksums = fdist.gather_objects(_param_checksum(model))
    summary = {
        "model": cfg.model, "recipe": cfg.recipe, "epochs": cfg.epochs, "global_step": global_step,
        "world_size": info.world_size, "device": str(info.device),
        "device_name": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu",
        "num_params": num_params, "num_classes": num_classes, "train_images": len(train_set),
        "val_images": len(val_set) if val_set is not None else 0,
        "final": history[-1] if history else None, "best_top1": best_top1 if best_top1 >= 0 else None,
        "wall_seconds_this_process": round(time.time() - started, 2),
        "train_seconds_total": round(sum(row["epoch_seconds"] for row in history), 2),
        "mean_images_per_s": round(sum(r["train_images"] for r in history) / max(1e-9, sum(r["epoch_seconds"] for r in history)), 1)
        if history else None,
        "rank_param_checksums": checksums, "finetuned_from": finetuned_from,
        "keep_channels": cfg.keep_channels, "config": _config_dict(cfg),
    }
    if info.is_main:
        if len(set(checksums)) > 1:
            print(f"funloader train: WARNING the ranks' weights differ: {checksums}", file=sys.stderr)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if history:
            if _have_matplotlib():
                _plot_curves(run_dir / "curves.png", history, f"{cfg.model} ({cfg.recipe} recipe)")
            else:
                print("funloader train: matplotlib is not installed (pip install funloader[plot]); "
                      "no curves.png", file=sys.stderr)
    return summary


# ----------------------------------------------------------------------------------------------
# evaluation
def _load_model_from_checkpoint(state: dict, weights: str) -> Tuple[nn.Module, str]:
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights must be auto, ema or model, got {weights!r}")
    use_ema = weights == "ema" or (weights == "auto" and state.get("ema"))
    if weights == "ema" and not state.get("ema"):
        raise CheckpointError("the checkpoint has no EMA weights")
    model = build_model(state["model_name"], num_classes=int(state["num_classes"]),
                        in_channels=int(state.get("in_channels", 192)) if state.get("keep_channels") else None)
    model.load_state_dict(state["ema"]["module"] if use_ema else state["model"])
    return model.eval(), "ema" if use_ema else "model"


def _prunable(model: nn.Module, spec: str):
    """(pruned model, None) or (None, reason)."""
    from funloader.models import select_input_channels

    try:
        return select_input_channels(model, spec), None
    except (TypeError, ValueError) as exc:
        return None, str(exc)


@torch.no_grad()
def evaluate_checkpoint(checkpoint, data, *, split: Optional[str] = None, batch_size: int = 256,
                        weights: str = "auto", keep_channels: Optional[str] = None,
                        sweep: Optional[Sequence[str]] = None, device: str = "auto", amp: str = "none",
                        num_threads: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Top-1/top-5 of a training checkpoint on ``data`` and, for each keep-spec in ``sweep`` (and
    ``keep_channels``), the accuracy with the other input channels zeroed and with the pruned first
    layer (:func:`funloader.models.select_input_channels`) on the kept channels only.

    ``data``: a split directory (ImageFolder / prepared / shards) or a root holding ``val/`` or
    ``test/`` (``split`` names it). Zeroing acts on the normalised network input (the paper zeroes
    the model's input channels), which is what the pruned first layer computes exactly; both columns
    are computed from the same decoded batches. Returns a dict (see ``funloader eval --help``)."""
    from tqdm import tqdm

    from .dataset import DCTImageFolder

    state = load_checkpoint(checkpoint)
    model, used = _load_model_from_checkpoint(state, weights)
    info = fdist.DistInfo(device=torch.device("cuda" if (device == "auto" and torch.cuda.is_available())
                                              or device.startswith("cuda") else "cpu"))
    model.to(info.device)
    root = Path(data)
    if split is not None:
        root = root / split
    elif not (root / "index.json").exists() and not any(root.glob("*.tar")):
        for name in ("val", "validation", "test"):
            if (root / name).is_dir():
                root = root / name
                break
    dataset = DCTImageFolder(str(root), dequantize=bool(state.get("dequantize", True)))
    classes = state.get("classes")
    if classes is not None and list(dataset.classes) != list(classes):
        raise ValueError(f"{root}: classes {dataset.classes[:5]}... differ from the checkpoint's {classes[:5]}...")
    trained_keep = state.get("keep_channels")
    specs: List[str] = []
    if sweep:
        if trained_keep:
            raise ValueError(f"--sweep-channels needs a model trained on all 192 channels; this one was trained on "
                             f"{trained_keep}")
        specs.extend(format_keep(s) for s in sweep)
    if keep_channels and not trained_keep:
        spec = format_keep(keep_channels)
        if spec not in specs:
            specs.append(spec)
    if keep_channels and trained_keep and format_keep(keep_channels) != format_keep(trained_keep):
        raise ValueError(f"the model was trained on channels {trained_keep}; it cannot take {keep_channels}")
    loader = _eval_loader(dataset, state.get("stats"), info, batch_size,
                          keep=trained_keep, num_threads=num_threads,
                          input_blocks=int(state.get("input_blocks", 28)),
                          dequantize=bool(state.get("dequantize", True)))
    variants = []  # (spec, indices, mask, pruned model, reason)
    for spec in specs:
        kept = channel_indices(spec)
        mask = torch.zeros(1, 192, 1, 1, device=info.device)
        mask[:, kept] = 1
        pruned, reason = _prunable(model, spec)
        if pruned is not None:
            pruned.to(info.device).eval()
        variants.append((spec, torch.tensor(kept, device=info.device), mask, pruned, reason))
    full = torch.zeros(4, dtype=torch.float64, device=info.device)
    zero_totals = [torch.zeros(4, dtype=torch.float64, device=info.device) for _ in variants]
    pruned_totals = [torch.zeros(4, dtype=torch.float64, device=info.device) for _ in variants]
    max_logit_diff = [0.0 for _ in variants]
    started = time.time()
    for x, y in tqdm(loader, desc="eval", unit="batch", disable=not progress, file=sys.stderr):
        with _autocast(info.device, amp):
            full += _batch_totals(model(x).float(), y)
            for i, (spec, kept, mask, pruned, _) in enumerate(variants):
                zero_logits = model(x * mask).float()
                zero_totals[i] += _batch_totals(zero_logits, y)
                if pruned is not None:
                    pruned_logits = pruned(x.index_select(1, kept).contiguous()).float()
                    pruned_totals[i] += _batch_totals(pruned_logits, y)
                    max_logit_diff[i] = max(max_logit_diff[i], (pruned_logits - zero_logits).abs().max().item())
    seconds = time.time() - started

    def summarise(t: torch.Tensor) -> Dict[str, float]:
        loss, top1, top5, count = t.tolist()
        return {"loss": loss / max(count, 1), "top1": top1 / max(count, 1), "top5": top5 / max(count, 1),
                "count": int(count)}

    rows = []
    for i, (spec, kept, _, pruned, reason) in enumerate(variants):
        zeroed = summarise(zero_totals[i])
        row = {"keep": spec, "channels": int(kept.numel()), "compression": 192 / int(kept.numel()),
               "zeroed_top1": zeroed["top1"], "zeroed_top5": zeroed["top5"], "zeroed_loss": zeroed["loss"],
               "pruned_top1": None, "pruned_top5": None, "pruned_params": None, "max_logit_diff": None,
               "pruned_unavailable": reason}
        if pruned is not None:
            result = summarise(pruned_totals[i])
            row.update(pruned_top1=result["top1"], pruned_top5=result["top5"],
                       pruned_params=sum(p.numel() for p in pruned.parameters()), max_logit_diff=max_logit_diff[i])
        rows.append(row)
    return {"checkpoint": str(checkpoint), "data": str(root), "weights": used, "model": state["model_name"],
            "keep_channels_trained": trained_keep, "params": sum(p.numel() for p in model.parameters()),
            "device": str(info.device), "seconds": round(seconds, 3), **summarise(full), "channels": rows}


def _sweep_table(result: Dict[str, Any]) -> str:
    lines = ["| input channels | Y/Cb/Cr | top-1 zeroed (%) | top-1 pruned (%) | top-5 zeroed (%) | params pruned |",
             "|---:|---|---:|---:|---:|---:|"]
    for row in result["channels"]:
        pruned = "n/a" if row["pruned_top1"] is None else f"{100 * row['pruned_top1']:.2f}"
        params = "n/a" if row["pruned_params"] is None else f"{row['pruned_params']:,}"
        lines.append(f"| {row['channels']} | {row['keep']} | {100 * row['zeroed_top1']:.2f} | {pruned} | "
                     f"{100 * row['zeroed_top5']:.2f} | {params} |")
    return "\n".join(lines)


def _plot_sweep(path: Path, result: Dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = sorted(result["channels"], key=lambda r: r["channels"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["channels"] for r in rows], [100 * r["zeroed_top1"] for r in rows], marker="o",
            label="zeroed input channels")
    pruned = [r for r in rows if r["pruned_top1"] is not None]
    if pruned:
        ax.plot([r["channels"] for r in pruned], [100 * r["pruned_top1"] for r in pruned], marker="x",
                linestyle="--", label="pruned first layer")
    for r in rows:
        ax.annotate(r["keep"], (r["channels"], 100 * r["zeroed_top1"]), textcoords="offset points", xytext=(4, -12),
                    fontsize=7)
    ax.set_xlabel("kept input channels (of 192)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{result['model']}: accuracy vs input channels (no retraining)")
    secondary = ax.secondary_xaxis("top", functions=(lambda c: 192 / np.maximum(c, 1e-9),
                                                     lambda r: 192 / np.maximum(r, 1e-9)))
    largest_ratio = 192 / max(1, min(r["channels"] for r in rows))
    secondary.set_xticks([r for r in (1, 1.5, 2, 3, 4, 8, 16) if r <= largest_ratio + 1e-9])
    secondary.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    secondary.set_xlabel("compression ratio (192 / kept)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# command line
def _bool_flag(parser, name: str, help_text: str):
    parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="funloader train",
        description="Train a FUN model from JPEG files (DCT coefficients, no pixel decoding). "
                    "Multi-GPU / multi-node: launch with torchrun (see docs/training.md).")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="root holding train/ and val/ (or test/): ImageFolder, funloader-prepared "
                                  "folders or WebDataset shard folders")
    g.add_argument("--train-data", help="training split (overrides DATA/train)")
    g.add_argument("--val-data", help="validation split (overrides DATA/val or DATA/test; 'none' to skip)")
    g.add_argument("--input-blocks", type=int, help="block grid fed to the model (default 28 = 224 px)")
    _bool_flag(g, "dequantize", "dequantised coefficients (default) or raw quantised integers (--no-dequantize)")
    g.add_argument("--stats", help="channel statistics JSON ('none': no normalisation; default: next to the data, "
                                   "else computed into the run directory)")
    g.add_argument("--keep-channels", help="train on the lowest zigzag frequencies only, e.g. 64/12/12")
    g.add_argument("--augment", choices=AUGMENTATIONS, help="training augmentation (recipe default rrc-flip)")
    g.add_argument("--loader", choices=("torch", "dali"), help="DCTLoader (default) or the DALI pipeline")
    g.add_argument("--num-threads", type=int, help="decoding threads per process")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="model name (funloader.models.list_models(), or fun_small); default efun")
    g.add_argument("--drop-rate", type=float, help="dropout before the classifier (model default)")
    g.add_argument("--drop-path-rate", type=float, help="stochastic depth of the last block (model default)")
    g.add_argument("--finetune", metavar="CKPT", help="start from this checkpoint's weights, classifier reset to "
                                                      "the new number of classes")
    g = p.add_argument_group("recipe (defaults: the paper's, see docs/training.md)")
    g.add_argument("--recipe", choices=("paper", "efun", "resfun"), help="paper: efun for MBConv models, resfun for ResNets")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch over all processes (default 512)")
    g.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, scaled linearly to the batch)")
    g.add_argument("--optimizer", choices=("rmsprop_tf", "rmsprop", "sgd", "adamw"))
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--rmsprop-decay", type=float)
    g.add_argument("--rmsprop-eps", type=float, help="TensorFlow convention, inside the square root (default 1e-3)")
    g.add_argument("--schedule", choices=("exponential", "step", "cosine", "constant"))
    g.add_argument("--decay-rate", type=float)
    g.add_argument("--decay-epochs", type=float)
    g.add_argument("--milestones", type=int, nargs="+")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--ema-decay", type=float, help="EMA decay per step (0 disables)")
    g = p.add_argument_group("execution")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"))
    g.add_argument("--amp", choices=("none", "bf16", "fp16"))
    _bool_flag(g, "channels-last", "channels_last memory format")
    _bool_flag(g, "compile", "torch.compile the model")
    g.add_argument("--torch-threads", type=int, help="torch.set_num_threads (CPU training)")
    g.add_argument("--seed", type=int)
    g.add_argument("--output", help="run directory (default runs/fun)")
    g.add_argument("--resume", nargs="?", const="auto", help="continue OUTPUT/last.pt (or the checkpoint given)")
    _bool_flag(g, "progress", "tqdm progress bars")
    g.add_argument("--log-every", type=int)
    _bool_flag(g, "log-samples", "record every rank's sample indices per epoch in OUTPUT/samples/")
    return p


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if v is not None}
    if "milestones" in values:
        values["milestones"] = tuple(values["milestones"])
    return TrainConfig(**values)


def main_train(argv: Optional[List[str]] = None) -> int:
    """``funloader train``: see ``funloader train --help`` and docs/training.md."""
    args = _train_parser().parse_args(argv)
    cfg = _config_from_args(args)
    try:
        summary = train(cfg)
    except TrainingInterrupted as exc:
        print(f"funloader train: {exc}", file=sys.stderr)
        return 128 + int(exc.signum)
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        print(f"funloader train: error: {exc}", file=sys.stderr)
        return 2
    final = summary.get("final") or {}
    if int(os.environ.get("RANK", "0")) == 0:
        shown = {k: final.get(k) for k in ("epoch", "val_top1", "val_top5", "ema_val_top1", "ema_val_top5")}
        print(f"funloader train: done: {json.dumps(shown)}; run directory {cfg.output}")
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="funloader eval",
                                description="Evaluate a funloader training checkpoint: top-1/top-5, and accuracy "
                                            "against kept input channels (paper Table 7 / Figure 6).")
    p.add_argument("--checkpoint", required=True, help="last.pt / best.pt of a run")
    p.add_argument("--data", required=True, help="split directory, or a root holding val/ or test/")
    p.add_argument("--split", help="sub-directory of DATA to evaluate")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto", help="auto: EMA when present")
    p.add_argument("--keep-channels", help="also evaluate with only these channels, e.g. 44/10/10")
    p.add_argument("--sweep-channels", nargs="*", metavar="SPEC",
                   help=f"accuracy vs kept channels (default specs: {' '.join(TABLE7_SPECS)})")
    p.add_argument("--output", help="directory for eval.json, sweep.csv/.md/.png (default: next to the checkpoint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--num-threads", type=int)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


def main_eval(argv: Optional[List[str]] = None) -> int:
    """``funloader eval``: see ``funloader eval --help``."""
    args = _eval_parser().parse_args(argv)
    sweep = None
    if args.sweep_channels is not None:
        sweep = list(args.sweep_channels) or list(TABLE7_SPECS)
    try:
        for spec in (sweep or []) + ([args.keep_channels] if args.keep_channels else []):
            parse_keep(spec)
        result = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, batch_size=args.batch_size,
                                     weights=args.weights, keep_channels=args.keep_channels, sweep=sweep,
                                     device=args.device, amp=args.amp, num_threads=args.num_threads,
                                     progress=args.progress)
    except (FileNotFoundError, ValueError, CheckpointError) as exc:
        print(f"funloader eval: error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.output) if args.output else Path(args.checkpoint).resolve().parent / \
        f"eval-{Path(args.checkpoint).stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['model']} ({result['weights']} weights) on {result['data']}: {result['count']} images, "
          f"top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}%, loss {result['loss']:.4f}")
    if result["channels"]:
        table = _sweep_table(result)
        print(table)
        (out_dir / "sweep.md").write_text(table + "\n")
        with open(out_dir / "sweep.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(result["channels"][0]))
            writer.writeheader()
            writer.writerows(result["channels"])
        if sweep and _have_matplotlib():
            _plot_sweep(out_dir / "sweep.png", result)
        elif sweep:
            print("matplotlib is not installed (pip install funloader[plot]); no sweep.png")
        for row in result["channels"]:
            if row["pruned_unavailable"]:
                print(f"  {row['keep']}: pruned first layer not available ({row['pruned_unavailable']})")
    print(f"results in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main_train())
