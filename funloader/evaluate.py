"""``funloader eval``: top-1/top-5 of a training checkpoint, and the input-channel sweep of Table 7.

:func:`evaluate` is the metric loop the training run also uses for validation (loss, top-1, top-5
summed over ranks); :func:`evaluate_checkpoint` loads a ``funloader train`` checkpoint (safely:
tensors and plain data only, see :mod:`funloader.checkpoint`), builds its model with
:func:`funloader.models.create_model`, and measures it on a split -- optionally for several
keep-specs, each both with the dropped input channels zeroed (the paper's method) and with the
first layer pruned to the kept channels (:func:`funloader.models.select_input_channels`).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as fdist
from .channels import TABLE7_SPECS, channel_indices, format_keep, parse_keep
from .checkpoint import CheckpointError, load_checkpoint
from .errors import UsageError

__all__ = ["evaluate", "evaluate_checkpoint", "eval_loader", "main", "TABLE7_SPECS"]


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` ("none", "bf16", "fp16") on ``device``'s type."""
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def batch_totals(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float64 ``[cross-entropy sum, top-1 hits, top-5 hits, count]`` of one batch (``y``: int labels)."""
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hit = topk == y[:, None]
    loss = F.cross_entropy(logits, y, reduction="sum")
    return torch.stack([loss.double(), hit[:, 0].sum().double(), hit.any(dim=1).sum().double(),
                        torch.tensor(float(y.numel()), dtype=torch.float64, device=logits.device)])


def _summarise(totals: torch.Tensor) -> Dict[str, float]:
    loss, top1, top5, count = totals.tolist()
    return {"loss": loss / max(count, 1), "top1": top1 / max(count, 1), "top5": top5 / max(count, 1),
            "count": int(count)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str = "none") -> Dict[str, float]:
    """Top-1, top-5 and mean cross-entropy of ``model`` (eval mode) over every rank's share of
    ``loader``, summed over ranks. Returns ``{"loss", "top1", "top5", "count"}`` (top-k as fractions)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for x, y in loader:
        with autocast(device, amp):
            logits = model(x)
        totals += batch_totals(logits.float(), y)
    fdist.all_reduce_sum(totals)
    model.train(was_training)
    return _summarise(totals)


def eval_loader(dataset, stats, info: fdist.DistInfo, batch_size: int, *, keep=None,
                channels_last: bool = False, num_threads=None, input_blocks: int = 28, dequantize: bool = True):
    """Evaluation batches of this rank: samples ``rank, rank + world, ...`` (no padding, so counts
    summed over ranks are exact), centre ``input_blocks`` grid, no augmentation."""
    from .loader import DCTLoader

    indices = list(range(info.rank, len(dataset), info.world_size))
    return DCTLoader(dataset, batch_size, shuffle=False, drop_last=False, num_threads=num_threads,
                     device=info.device, channels_last=channels_last, sampler=indices, size=input_blocks,
                     transform=None, dequantize=dequantize,
                     normalize=(stats["mean"], stats["std"]) if stats else False,
                     keep=keep, keep_mode="drop")


def model_from_checkpoint(state: dict, weights: str = "auto", path="checkpoint") -> Tuple[nn.Module, str]:
    """``(model in eval mode, "ema" | "model")`` rebuilt from a ``funloader train`` checkpoint with
    :func:`funloader.models.create_model`; ``weights``: "auto" (EMA when present), "ema" or "model"."""
    from funloader.models import create_model

    if weights not in ("auto", "ema", "model"):
        raise UsageError(f"weights must be auto, ema or model, got {weights!r}")
    missing = [key for key in ("model_name", "num_classes") if key not in state]
    if missing:
        raise CheckpointError(f"{path}: no {' / '.join(repr(k) for k in missing)} entry: not a checkpoint written by "
                              f"'funloader train', so the model to build is unknown")
    use_ema = weights == "ema" or (weights == "auto" and bool(state.get("ema")))
    if weights == "ema" and not state.get("ema"):
        raise CheckpointError(f"{path}: the checkpoint has no EMA weights (use --weights model)")
    try:
        model = create_model(state["model_name"], num_classes=int(state["num_classes"]),
                             in_channels=int(state.get("in_channels", 192)) if state.get("keep_channels") else None)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(state["ema"]["module"] if use_ema else state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the weights do not fit model {state['model_name']} "
                              f"({str(exc).strip().splitlines()[-1].strip()})") from None
    return model.eval(), "ema" if use_ema else "model"


def _prunable(model: nn.Module, spec: str):
    """(pruned model, None) or (None, reason)."""
    from funloader.models import select_input_channels

    try:
        return select_input_channels(model, spec), None
    except (TypeError, ValueError) as exc:
        return None, str(exc)


def _eval_split(data, split: Optional[str]) -> Path:
    root = Path(data)
    if split is not None:
        return root / split
    if not (root / "index.json").exists() and not any(root.glob("*.tar")):
        for name in ("val", "validation", "test"):
            if (root / name).is_dir():
                return root / name
    return root


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
    model, used = model_from_checkpoint(state, weights, checkpoint)
    info = fdist.DistInfo(device=fdist.resolve_device(device))
    model.to(info.device)
    root = _eval_split(data, split)
    if not root.exists():
        raise UsageError(f"--data {root}: no such file or directory")
    dataset = DCTImageFolder(str(root), dequantize=bool(state.get("dequantize", True)))
    classes = state.get("classes")
    if classes is not None and list(dataset.classes) != list(classes):
        raise UsageError(f"{root}: classes {dataset.classes[:5]}... differ from the checkpoint's {classes[:5]}...")
    trained_keep = state.get("keep_channels")
    specs: List[str] = []
    if sweep:
        if trained_keep:
            raise UsageError(f"--sweep-channels needs a model trained on all 192 channels; this one was trained on "
                             f"{trained_keep}")
        specs.extend(format_keep(s) for s in sweep)
    if keep_channels and not trained_keep:
        spec = format_keep(keep_channels)
        if spec not in specs:
            specs.append(spec)
    if keep_channels and trained_keep and format_keep(keep_channels) != format_keep(trained_keep):
        raise UsageError(f"the model was trained on channels {trained_keep}; it cannot take {keep_channels}")
    loader = eval_loader(dataset, state.get("stats"), info, batch_size, keep=trained_keep, num_threads=num_threads,
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
        with autocast(info.device, amp):
            full += batch_totals(model(x).float(), y)
            for i, (spec, kept, mask, pruned, _) in enumerate(variants):
                zero_logits = model(x * mask).float()
                zero_totals[i] += batch_totals(zero_logits, y)
                if pruned is not None:
                    pruned_logits = pruned(x.index_select(1, kept).contiguous()).float()
                    pruned_totals[i] += batch_totals(pruned_logits, y)
                    max_logit_diff[i] = max(max_logit_diff[i], (pruned_logits - zero_logits).abs().max().item())
    seconds = time.time() - started

    rows = []
    for i, (spec, kept, _, pruned, reason) in enumerate(variants):
        zeroed = _summarise(zero_totals[i])
        row = {"keep": spec, "channels": int(kept.numel()), "compression": 192 / int(kept.numel()),
               "zeroed_top1": zeroed["top1"], "zeroed_top5": zeroed["top5"], "zeroed_loss": zeroed["loss"],
               "pruned_top1": None, "pruned_top5": None, "pruned_params": None, "max_logit_diff": None,
               "pruned_unavailable": reason}
        if pruned is not None:
            result = _summarise(pruned_totals[i])
            row.update(pruned_top1=result["top1"], pruned_top5=result["top5"],
                       pruned_params=sum(p.numel() for p in pruned.parameters()), max_logit_diff=max_logit_diff[i])
        rows.append(row)
    return {"checkpoint": str(checkpoint), "data": str(root), "weights": used, "model": state["model_name"],
            "keep_channels_trained": trained_keep, "params": sum(p.numel() for p in model.parameters()),
            "device": str(info.device), "seconds": round(seconds, 3), **_summarise(full), "channels": rows}


def sweep_table(result: Dict[str, Any]) -> str:
    """The channel rows of an :func:`evaluate_checkpoint` result as a Markdown table."""
    lines = ["| input channels | Y/Cb/Cr | top-1 zeroed (%) | top-1 pruned (%) | top-5 zeroed (%) | params pruned |",
             "|---:|---|---:|---:|---:|---:|"]
    for row in result["channels"]:
        pruned = "n/a" if row["pruned_top1"] is None else f"{100 * row['pruned_top1']:.2f}"
        params = "n/a" if row["pruned_params"] is None else f"{row['pruned_params']:,}"
        lines.append(f"| {row['channels']} | {row['keep']} | {100 * row['zeroed_top1']:.2f} | {pruned} | "
                     f"{100 * row['zeroed_top5']:.2f} | {params} |")
    return "\n".join(lines)


def unavailable_notes(result: Dict[str, Any]) -> List[str]:
    """One line per distinct reason the pruned column is missing (not one per spec)."""
    by_reason: Dict[str, List[str]] = {}
    for row in result["channels"]:
        if row["pruned_unavailable"]:
            by_reason.setdefault(row["pruned_unavailable"], []).append(row["keep"])
    total = len(result["channels"])
    return [f"pruned first layer not available for {'any spec' if len(specs) == total else ', '.join(specs)}: "
            f"{reason}" for reason, specs in by_reason.items()]


def plot_sweep(path: Path, result: Dict[str, Any]) -> None:
    """``sweep.png``: top-1 against kept channels (zeroed and pruned), compression on the top axis."""
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


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def writable_directory(directory: Path, option: str = "--output") -> Path:
    """Create ``directory`` if needed and check that a file can be written in it, before any work
    whose results would go there; raises :class:`UsageError` saying which ``option`` to give instead."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".funloader-write-test.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write results to {directory} ({exc.strerror or exc}); "
                         f"give {option} DIR in a writable place") from None
    return directory


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="funloader eval",
                                description="Evaluate a funloader training checkpoint: top-1/top-5, and accuracy "
                                            "against kept input channels (paper Table 7 / Figure 6).")
    p.add_argument("--checkpoint", required=True, help="last.pt / best.pt of a run")
    p.add_argument("--data", required=True, help="split directory, or a root holding val/ or test/")
    p.add_argument("--split", help="sub-directory of DATA to evaluate")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default: 256)")
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                   help="which weights (default: auto = the EMA weights when present)")
    p.add_argument("--keep-channels", help="also evaluate with only these channels, e.g. 44/10/10")
    p.add_argument("--sweep-channels", nargs="*", metavar="SPEC",
                   help=f"accuracy vs kept channels (specs: {' '.join(TABLE7_SPECS)} when none are given)")
    p.add_argument("--output", help="directory for eval.json, sweep.csv/.md/.png (default: eval-<checkpoint name>/ "
                                    "next to the checkpoint)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available, else the CPU (default: auto)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision (default: none)")
    p.add_argument("--num-threads", type=int, help="decoding threads (default: the process' CPUs)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar (default: on)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``funloader eval``: see ``funloader eval --help``. Bad inputs raise :class:`UsageError`
    (the CLI prints them in one line and exits 2)."""
    args = _parser().parse_args(argv)
    sweep = None
    if args.sweep_channels is not None:
        sweep = list(args.sweep_channels) or list(TABLE7_SPECS)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    for spec in (sweep or []) + ([args.keep_channels] if args.keep_channels else []):
        try:
            parse_keep(spec)
        except ValueError as exc:
            raise UsageError(f"--keep-channels/--sweep-channels {spec!r}: {exc}") from None
    fdist.resolve_device(args.device)  # a missing GPU is named before any work
    checkpoint = Path(args.checkpoint)
    out_dir = Path(args.output) if args.output else checkpoint.resolve().parent / f"eval-{checkpoint.stem}"
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: no such checkpoint file")
    # results are only worth computing if they can be written: check before the (long) evaluation
    writable_directory(out_dir, "--output")
    result = evaluate_checkpoint(checkpoint, args.data, split=args.split, batch_size=args.batch_size,
                                 weights=args.weights, keep_channels=args.keep_channels, sweep=sweep,
                                 device=args.device, amp=args.amp, num_threads=args.num_threads,
                                 progress=args.progress)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['model']} ({result['weights']} weights) on {result['data']}: {result['count']} images, "
          f"top-1 {100 * result['top1']:.2f}%, top-5 {100 * result['top5']:.2f}%, loss {result['loss']:.4f}")
    if result["channels"]:
        table = sweep_table(result)
        print(table)
        (out_dir / "sweep.md").write_text(table + "\n")
        with open(out_dir / "sweep.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(result["channels"][0]))
            writer.writeheader()
            writer.writerows(result["channels"])
        if sweep and have_matplotlib():
            plot_sweep(out_dir / "sweep.png", result)
        elif sweep:
            print("matplotlib is not installed (pip install funloader[plot]); no sweep.png")
        for note in unavailable_notes(result):
            print(f"  {note}")
    print(f"results in {out_dir}")
    return 0
