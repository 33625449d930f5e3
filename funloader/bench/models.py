"""Section 4, models: parameters, multiply-adds and inference speed of the FUN models against the
RGB baselines, all from ``funloader.models.create_model``.

Speeds: for each batch size every model runs ``warmup`` untimed passes, then the models are timed
round-robin (harness), one forward pass per call, under ``torch.inference_mode()`` in eval mode on
random inputs of the model's ``default_cfg["input_size"]`` (FUN: 192x28x28 DCT coefficients, RGB:
3x224x224, EfficientNet-B1 3x240x240); on CUDA every pass is synchronised. Multiply-adds are
``FlopCounterMode``'s total / 2 at batch 1. Denormal floats are flushed to zero on the CPU during the
run: randomly initialised networks fed unnormalised inputs saturate into denormals, which x86 cores
process ~5x slower (LeFUN batch 1: 157 ms without, 29 ms with).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Optional, Sequence

import torch

from . import Context, Result, Section
from .harness import round_robin

TITLE = "Models: images/s of forward passes (higher is better)"
QUICK_MODELS = ["efun_s_plus", "efun", "efficientnet_b0", "mobilenetv2_100"]
#: (FUN model, the RGB baseline of about its accuracy) pairs whose speed ratio the report gives
PAIRS = [("efun", "efficientnet_b0"), ("efun_s_plus", "mobilenetv2_100"), ("resfun", "resnet18"),
         ("efun_l", "efficientnet_b1")]
_CFG_KEYS = ("reference_params", "reference_mmacs", "paper_top1", "paper_params_m", "paper_images_per_s",
             "paper_mflops")


def count_mmacs(model: torch.nn.Module, input_size: Sequence[int]) -> float:
    """Multiply-adds in millions for one ``(1, *input_size)`` forward pass (FlopCounterMode / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros((1,) + tuple(input_size), device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 2e6


def describe(name: str, model: torch.nn.Module) -> Dict[str, object]:
    """A model's size and the paper's numbers for it (from ``default_cfg``; models from elsewhere,
    e.g. timm's, count as family ``"other"`` on RGB input)."""
    cfg = model.default_cfg
    row = {"family": cfg.get("family", "other"), "input": cfg.get("input", "rgb"),
           "input_size": list(cfg["input_size"]),
           "params": sum(p.numel() for p in model.parameters()),
           "mmacs": round(count_mmacs(model, tuple(cfg["input_size"])), 2)}
    row.update({key: cfg.get(key) for key in _CFG_KEYS})
    return row


def _forward(model, x, autocast, passes: int) -> Callable[[], int]:
    cuda = x.device.type == "cuda"

    def run():
        with autocast():
            for _ in range(passes):
                model(x)
        if cuda:
            torch.cuda.synchronize(x.device)
        return x.shape[0] * passes
    return run


def measure_models(names: Optional[Sequence[str]] = None, *, device: str = "cpu", batch_sizes: Sequence[int] = (1, 64),
                   repeats: int = 20, threads: Optional[int] = None, warmup: int = 3, channels_last: bool = False,
                   dtype: Optional[torch.dtype] = None, compile: bool = False, passes: int = 1,
                   builders: Optional[Dict[str, Callable[[], torch.nn.Module]]] = None,
                   progress: Callable[[str], None] = lambda message: None, flush_denormal: bool = True) -> Section:
    """Time ``names`` (default: every model but the test networks ``fun_test`` and ``fun_small``) at
    each batch size; one :class:`Result` per batch size (``"batch B"``: model -> summary, with ``latency_ms`` per pass), the models'
    sizes in ``extra["models"]``. ``dtype``: autocast dtype (e.g. ``torch.bfloat16``), None for
    float32; ``compile``: ``torch.compile`` each model; ``passes``: forward passes per timed call
    (short GPU passes); ``builders``: more models to time alongside, name -> factory of a model
    with a ``default_cfg`` holding ``input_size`` (e.g. timm's); ``threads``:
    ``torch.set_num_threads`` for the run (restored afterwards)."""
    from ..models import create_model, list_models

    names = list(names or [n for n in list_models() if n not in ("fun_test", "fun_small")])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("measure_models: device 'cuda' requested but CUDA is not available")
    section = Section("models", TITLE, explained={
        "FUN models": "the paper's networks on DCT coefficients (192x28x28 from read_fun)",
        "RGB baselines": "our builders of the same architectures as timm (equal parameter counts) on 3x224x224 pixels",
    })
    section.extra.update({"device": device, "channels_last": channels_last, "compile": compile,
                          "dtype": str(dtype or torch.float32).replace("torch.", ""), "models": {}})
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    flushing = bool(flush_denormal) and device == "cpu" and torch.set_flush_denormal(True)
    section.extra["flush_denormal"] = flushing

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
    try:
        models = {}
        factories = {name: (lambda name=name: create_model(name)) for name in names}
        factories.update(builders or {})
        for name, factory in factories.items():
            model = factory().eval().to(device)
            section.extra["models"][name] = describe(name, model)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            models[name] = torch.compile(model) if compile else model
        with torch.inference_mode():
            for batch in batch_sizes:
                runs = {}
                for name, model in models.items():
                    info = section.extra["models"][name]
                    x = torch.randn((batch,) + tuple(info["input_size"]), device=device)
                    if info["input"] == "ycbcr":
                        x = x.uniform_(0, 255)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    runs[name] = _forward(model, x, autocast, passes)
                progress(f"models: batch {batch}, {len(runs)} models x {repeats} repeats on {device}")
                summaries = round_robin(runs, repeats, warmup=warmup)
                for summary in summaries.values():
                    summary["latency_ms"] = round(summary["median_us"] * batch / 1000, 3)  # one pass
                section.results[f"batch {batch}"] = Result(summaries, ratios(summaries), {"batch": batch})
    finally:
        torch.set_num_threads(previous_threads)
        if flushing:
            torch.set_flush_denormal(False)
    return section


def ratios(summaries: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """images/s of each FUN model over its RGB counterpart of :data:`PAIRS` (> 1: FUN faster)."""
    return {f"{fun}_vs_{rgb}": round(summaries[fun]["images_per_s"] / summaries[rgb]["images_per_s"], 3)
            for fun, rgb in PAIRS if fun in summaries and rgb in summaries}


def measure(context: Context) -> Section:
    names = context.models or (QUICK_MODELS if context.quick else None)
    batch_sizes = (1, 16) if context.quick else (1, 64)
    threads = max(context.threads) if context.device == "cpu" else None
    return measure_models(names, device=context.device, batch_sizes=batch_sizes,
                          repeats=max(3, context.repeats) if context.quick else context.repeats, threads=threads,
                          warmup=2, progress=context.progress)
