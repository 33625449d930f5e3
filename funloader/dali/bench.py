"""Throughput of funloader's DALI pipelines against DALI's own RGB pipeline on the same files.

:func:`measure_dali` is what ``benchmarks/bench_dali.py`` (and ``funloader bench``) call. Methods,
all reading the same JPEG files with ``fn.readers.file`` (or external_source) and the same number
of DALI threads, producing normalised float32 CHW batches:

* ``fun_plugin``: ``fn.funloader.dct_decode`` (dequantized) + per-channel normalisation ->
  ``(N, 192, 28, 28)``;
* ``fun_external_source``: the same with the external_source fallback (``threads`` worker processes);
* ``dali_rgb``: ``fn.decoders.image(device="cpu")`` + ``fn.crop_mirror_normalize`` (224x224 centre
  crop, ImageNet mean/std) -> ``(N, 3, 224, 224)``;
* with a GPU (``device_id`` given): the post-decode ops run on the GPU for every method, and
  ``dali_rgb_mixed`` (nvJPEG ``device="mixed"`` decoding) is added.

Each repeat times ``batches`` calls of ``Pipeline.run()`` after a warm-up (steady state with DALI's
prefetching); methods are interleaved round-robin; the result holds medians, min and max. Between
timed runs the harness waits ``settle_s``: an idle pipeline keeps filling its prefetch queue (and the
external_source workers theirs) for a moment after its run, and that work must not land in the next
method's timing. The default run length (at least 48 batches) keeps the few prefetched batches
a timed run starts with to a few percent, the same for every method.
"""
from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def _files(folder) -> List[str]:
    folder = Path(folder)
    files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise FileNotFoundError(f"no .jpg/.jpeg files under {folder}")
    return files


def _channel_stats(files: Sequence[str], grid=(28, 28)) -> Dict[str, list]:
    """Per-channel mean/std of the dequantized coefficients of ``files`` (for the normalisation step)."""
    from ..codec import read_batch

    out = np.zeros((len(files), 192, *grid), np.float32)
    read_batch(list(files), out, dequantize=True)
    return {"mean": out.mean(axis=(0, 2, 3)).tolist(), "std": out.std(axis=(0, 2, 3)).tolist()}


def _rgb_pipeline(files, batch_size, threads, device_id, decoder_device):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=2)
    def rgb():
        jpegs, labels = fn.readers.file(files=files, labels=[0] * len(files), name="Reader", pad_last_batch=True)
        images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
        if device_id is not None and decoder_device == "cpu":
            images = images.gpu()
        images = fn.crop_mirror_normalize(images, crop=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                          dtype=types.FLOAT, output_layout="CHW")
        return images, labels

    pipe = rgb()
    pipe.build()
    return pipe


def _runner(pipe, batches: int) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        done = 0
        while done < batches:
            try:
                outputs = pipe.run()
            except StopIteration:  # external_source: the epoch ended; start the next one
                pipe.reset()
                continue
            del outputs
            done += 1
        return time.perf_counter() - started

    return run


def measure_dali(folder, threads: int = 2, batch_size: int = 32, repeats: int = 5, *,
                 device_id: Optional[int] = None, batches: Optional[int] = None, warmup_batches: int = 3,
                 methods: Optional[Sequence[str]] = None, progress: Optional[Callable[[str], None]] = None,
                 settle_s: float = 0.3) -> dict:
    """Images/s of funloader's DALI pipelines and DALI's RGB pipeline on the JPEGs under ``folder``.

    Args:
        folder: JPEG files (searched recursively), e.g. 224x224 photos from ``funloader prepare``.
        threads: DALI CPU threads (and external_source worker processes) for every method.
        batch_size: samples per batch.
        repeats: timed repeats per method (round-robin); medians are reported.
        device_id: GPU index, or None for CPU-only pipelines.
        batches: batches per repeat (default: enough for about 4 epochs, at least 48).
        methods: subset of the method names (default: all that apply).
        settle_s: idle seconds before each timed run (see the module docstring).

    Returns:
        ``{"files", "threads", "batch_size", "batches_per_repeat", "device_id", "methods": {name:
        {"images_per_s" (median), "min", "max", "runs": [...]}}, "ratios": {...}, "plugin_build_s"}``.
    """
    from . import fun_pipeline, load_plugin

    say = progress or (lambda message: None)
    files = _files(folder)
    batches = int(batches or max(48, -(-4 * len(files) // batch_size)))
    started = time.perf_counter()
    load_plugin()
    plugin_build_s = time.perf_counter() - started
    stats = _channel_stats(files)
    pairs = [(f, 0) for f in files]
    builders = {
        "fun_plugin": lambda: fun_pipeline(pairs, batch_size, num_threads=threads, device_id=device_id,
                                           backend="plugin", dequantize=True, normalize_stats=stats),
        "fun_external_source": lambda: fun_pipeline(pairs, batch_size, num_threads=threads, device_id=device_id,
                                                    backend="external_source", dequantize=True,
                                                    normalize_stats=stats, py_num_workers=threads),
        "dali_rgb": lambda: _rgb_pipeline(files, batch_size, threads, device_id, "cpu"),
    }
    if device_id is not None:
        builders["dali_rgb_mixed"] = lambda: _rgb_pipeline(files, batch_size, threads, device_id, "mixed")
    if methods is not None:
        unknown = set(methods) - set(builders)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {sorted(builders)}")
        builders = {name: builders[name] for name in methods}
    pipes = {}
    runners = {}
    for name, make in builders.items():
        say(f"building {name}")
        pipes[name] = make()
        runners[name] = _runner(pipes[name], batches)
        _runner(pipes[name], warmup_batches)()
    seconds: Dict[str, List[float]] = {name: [] for name in runners}
    for repeat in range(repeats):
        for name, run in runners.items():
            time.sleep(settle_s)  # let the other pipelines' background prefetching finish first
            seconds[name].append(run())
        say(f"repeat {repeat + 1}/{repeats}: " + ", ".join(
            f"{name} {batches * batch_size / seconds[name][-1]:.0f} img/s" for name in runners))
    del runners, pipes
    gc.collect()
    results = {}
    for name, runs in seconds.items():
        rates = [batches * batch_size / s for s in runs]
        results[name] = {"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                         "runs": [round(r, 1) for r in rates]}
    ratios = {}
    plugin = results.get("fun_plugin", {}).get("images_per_s")
    if plugin:
        for other in ("dali_rgb", "fun_external_source", "dali_rgb_mixed"):
            if other in results:
                ratios[f"fun_plugin/{other}"] = round(plugin / results[other]["images_per_s"], 3)
    return {"files": len(files), "threads": threads, "batch_size": batch_size, "batches_per_repeat": batches,
            "repeats": repeats, "settle_s": settle_s, "device_id": device_id, "methods": results, "ratios": ratios,
            "plugin_build_or_load_s": round(plugin_build_s, 2)}
