"""Measure model size, multiply-adds and inference speed (used by ``benchmarks/bench_models.py``).

:func:`measure_models` returns one dict per model::

    {"name", "family", "input", "input_size": [C, H, W], "params", "mmacs",
     "reference_params", "reference_mmacs", "paper_top1", "paper_params_m",
     "paper_images_per_s", "paper_mflops",
     "timings": [{"batch", "repeats", "median_s", "min_s", "latency_ms", "images_per_s"}, ...]}

Speeds are medians over ``repeats`` timed forward passes after ``warmup`` untimed ones (models
timed interleaved, round by round, so that drifting load from other processes hits all alike), under
``torch.inference_mode()`` with the model in eval mode, on random inputs of the model's
``default_cfg["input_size"]`` (FUN: 192x28x28 DCT, RGB: 3x224x224, EfficientNet-B1 3x240x240).
On CUDA every pass is synchronised. Multiply-adds are ``FlopCounterMode`` total / 2 at batch 1.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch

from .registry import create_model, list_models

__all__ = ["measure_models", "describe_machine", "format_table", "plot_results", "count_mmacs"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str = "cpu", threads: Optional[int] = None) -> Dict[str, object]:
    """The machine a benchmark ran on: CPU model and cores, torch build, threads, GPU if used."""
    info: Dict[str, object] = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()), "device": device,
    }
    if hasattr(os, "getloadavg"):
        # Other processes competing for the cores make CPU timings noisy: record the load.
        info["load_average_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
    return info


def count_mmacs(model: torch.nn.Module, input_size: Sequence[int]) -> float:
    """Multiply-adds in millions for one ``(1, *input_size)`` forward pass (FlopCounterMode / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros((1,) + tuple(input_size), device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 2e6


def _run_once(model, x: torch.Tensor) -> float:
    cuda = x.device.type == "cuda"
    start = time.perf_counter()
    model(x)
    if cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def measure_models(names: Optional[Sequence[str]] = None, device: str = "cpu", batch_sizes: Sequence[int] = (1, 64),
                   repeats: int = 20, threads: Optional[int] = None, warmup: int = 3,
                   channels_last: bool = False, progress: bool = True,
                   flush_denormal: bool = True) -> List[Dict[str, object]]:
    """Benchmark ``names`` (default: every registered model except ``fun_test``) on ``device``.

    ``flush_denormal``: flush denormal floats to zero on the CPU during the run (restored after).
    Randomly initialised networks fed unnormalised inputs (LeFUN's raw DCT of a [0, 255] image)
    saturate sigmoids/SiLUs into denormals, which x86 cores process ~5x slower; FTZ removes that
    artefact (measured: LeFUN batch 1, 1 thread: 157 ms without, 29 ms with).

    ``batch_sizes``: batches to time. For each batch size every model first runs ``warmup``
    untimed passes, then the models are timed *interleaved*: ``repeats`` rounds, each timing one
    pass of every model in turn, so that load from other processes drifting over time hits all
    models alike (the median per model is reported). ``threads``: ``torch.set_num_threads`` for
    the run (restored afterwards), None = leave as is. Returns one dict per model (see the module
    docstring).
    """
    if names is None:
        names = [n for n in list_models() if n != "fun_test"]
    names = list(names)
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("measure_models: device 'cuda' requested but CUDA is not available")
    from tqdm import tqdm

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    flushing = bool(flush_denormal) and torch.set_flush_denormal(True)
    try:
        models, results = [], []
        for name in names:
            model = create_model(name).eval().to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            cfg = model.default_cfg
            input_size = tuple(cfg["input_size"])
            row: Dict[str, object] = {
                "name": name, "family": cfg["family"], "input": cfg["input"], "input_size": list(input_size),
                "params": sum(p.numel() for p in model.parameters()),
                "mmacs": round(count_mmacs(model, input_size), 2),
            }
            for key in ("reference_params", "reference_mmacs", "paper_top1", "paper_params_m",
                        "paper_images_per_s", "paper_mflops"):
                row[key] = cfg[key]
            row["timings"] = []
            models.append(model)
            results.append(row)
        with torch.inference_mode():
            for batch in batch_sizes:
                inputs = []
                for model, row in tqdm(list(zip(models, results)), desc=f"batch {batch} warm-up",
                                       disable=not progress):
                    x = torch.randn((batch,) + tuple(row["input_size"]), device=device)
                    if row["input"] == "ycbcr":
                        x = x.uniform_(0, 255)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    inputs.append(x)
                    for _ in range(warmup):
                        _run_once(model, x)
                times: List[List[float]] = [[] for _ in models]
                for _ in tqdm(range(repeats), desc=f"batch {batch} rounds", disable=not progress):
                    for index, (model, x) in enumerate(zip(models, inputs)):
                        times[index].append(_run_once(model, x))
                for row, model_times in zip(results, times):
                    median = statistics.median(model_times)
                    row["timings"].append({
                        "batch": batch, "repeats": repeats, "median_s": median, "min_s": min(model_times),
                        "latency_ms": round(median * 1000, 3), "images_per_s": round(batch / median, 2)})
                del inputs
    finally:
        torch.set_num_threads(previous_threads)
        if flushing:
            torch.set_flush_denormal(False)
    for row in results:
        row["flush_denormal"] = flushing
    return results


def _timing(row, batch):
    for timing in row["timings"]:
        if timing["batch"] == batch:
            return timing
    return None


def format_table(results: Sequence[Dict[str, object]]) -> str:
    """A plain-text table of :func:`measure_models` results."""
    batches = sorted({t["batch"] for row in results for t in row["timings"]})
    header = f"{'model':<17}{'input':>12}{'params':>12}{'MMACs':>9}{'ref MMACs':>10}{'top-1':>7}{'V100 img/s':>11}"
    for batch in batches:
        header += f"{f'b{batch} ms':>11}{f'b{batch} img/s':>12}"
    lines = [header, "-" * len(header)]
    for row in results:
        size = "x".join(str(s) for s in row["input_size"])
        line = (f"{row['name']:<17}{size:>12}{row['params']:>12,}{row['mmacs']:>9.1f}"
                f"{_fmt(row['reference_mmacs'], '.1f'):>10}{_fmt(row['paper_top1'], '.1f'):>7}"
                f"{_fmt(row['paper_images_per_s'], '.0f'):>11}")
        for batch in batches:
            timing = _timing(row, batch)
            line += f"{timing['latency_ms']:>11.2f}{timing['images_per_s']:>12.1f}" if timing else " " * 23
        lines.append(line)
    return "\n".join(lines)


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def plot_results(results: Sequence[Dict[str, object]], path: str, title: str = "") -> None:
    """Two panels like the paper's Figures 1 and 4: params vs paper top-1, and measured
    images/s (batch 1, and the largest batch measured) vs paper top-1. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["paper_top1"] is not None]
    largest = max((t["batch"] for r in rows for t in r["timings"]), default=1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = {"fun": dict(color="tab:red", marker="o", label="FUN (DCT input)"),
              "rgb": dict(color="tab:blue", marker="s", label="RGB baselines")}
    for family, style in styles.items():
        members = [r for r in rows if r["family"] == family]
        if not members:
            continue
        axes[0].scatter([r["params"] / 1e6 for r in members], [r["paper_top1"] for r in members], **style)
        b1 = [r for r in members if _timing(r, 1)]
        axes[1].scatter([_timing(r, 1)["images_per_s"] for r in b1], [r["paper_top1"] for r in b1],
                        color=style["color"], marker=style["marker"], label=f"{style['label']}, batch 1")
        if largest != 1:
            bl = [r for r in members if _timing(r, largest)]
            axes[1].scatter([_timing(r, largest)["images_per_s"] for r in bl], [r["paper_top1"] for r in bl],
                            facecolors="none", edgecolors=style["color"], marker=style["marker"],
                            label=f"{style['label']}, batch {largest}")
        for r in members:
            axes[0].annotate(r["name"], (r["params"] / 1e6, r["paper_top1"]), fontsize=7,
                             xytext=(3, 3), textcoords="offset points")
            if _timing(r, 1):
                axes[1].annotate(r["name"], (_timing(r, 1)["images_per_s"], r["paper_top1"]), fontsize=7,
                                 xytext=(3, 3), textcoords="offset points")
    # Join the scaled families like the paper's figures.
    by_name = {r["name"]: r for r in rows}
    for family, color in ((("efun_s_plus", "efun_s", "efun", "efun_l"), "tab:red"),
                          (("efficientnet_b0", "efficientnet_b1"), "tab:blue"),
                          (("resnet18", "resnet34"), "tab:blue")):
        members = [by_name[n] for n in family if n in by_name]
        if len(members) < 2:
            continue
        axes[0].plot([r["params"] / 1e6 for r in members], [r["paper_top1"] for r in members], color=color, alpha=0.4)
        if all(_timing(r, 1) for r in members):
            axes[1].plot([_timing(r, 1)["images_per_s"] for r in members], [r["paper_top1"] for r in members],
                         color=color, alpha=0.4)
    axes[0].set_xlabel("parameters (M, our builders)")
    axes[0].set_ylabel("ImageNet top-1 (%, paper)")
    axes[0].set_title("Size vs accuracy (paper Fig. 1)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("measured images / s (log)")
    axes[1].set_ylabel("ImageNet top-1 (%, paper)")
    axes[1].set_title("Measured throughput vs accuracy (paper Fig. 4)")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
