"""Section 3, DALI: images/s of funloader's DALI pipelines against DALI's own RGB pipeline.

All methods read the same JPEG files with the same number of DALI threads and produce normalised
float32 CHW batches. Each timed call runs ``batches`` iterations of ``Pipeline.run()`` (steady
state with DALI's prefetching) after a warm-up; methods are timed round-robin with a pause
(``settle_s``) before each call: an idle pipeline keeps filling its prefetch queue for a moment
after its run, and that work must not land in the next method's time. At least 48 batches per call
keep the few batches a call starts with already prefetched to a few percent, alike for every method.
To compare one more pipeline, add a :class:`Row` to :data:`METHODS`.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import Context, Result, Row, Section, make_rows
from .harness import round_robin

TITLE = "DALI pipelines: images/s to normalised batches (higher is better)"
IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


@dataclass
class Setup:
    files: List[str]
    batch_size: int
    threads: int
    device_id: Optional[int]
    stats: Dict[str, list]


def _channel_stats(files: Sequence[str], grid=(28, 28)) -> Dict[str, list]:
    """Per-channel mean/std of the dequantized coefficients of ``files`` (the normalisation)."""
    from ..codec import read_batch

    out = np.zeros((len(files), 192, *grid), np.float32)
    read_batch(list(files), out, dequantize=True)
    return {"mean": out.mean(axis=(0, 2, 3)).tolist(), "std": out.std(axis=(0, 2, 3)).tolist()}


def _fun(backend: str):
    def make(setup: Setup):
        from ..dali import fun_pipeline

        extra = {"py_num_workers": setup.threads} if backend == "external_source" else {}
        # resize=None: the 224 corpora are on the 28x28 grid, where it equals the default "auto" without the
        # Python window step that makes DALI run synchronously (like for like with DALI's RGB pipeline)
        return fun_pipeline([(f, 0) for f in setup.files], setup.batch_size, num_threads=setup.threads,
                            device_id=setup.device_id, backend=backend, dequantize=True,
                            normalize_stats=setup.stats, resize=None, **extra)
    return make


def _rgb(decoder_device: str):
    def make(setup: Setup):
        if decoder_device == "mixed" and setup.device_id is None:
            return None
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=setup.batch_size, num_threads=setup.threads, device_id=setup.device_id,
                      prefetch_queue_depth=2)
        def rgb():
            jpegs, labels = fn.readers.file(files=setup.files, labels=[0] * len(setup.files), name="Reader",
                                            pad_last_batch=True)
            images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
            if setup.device_id is not None and decoder_device == "cpu":
                images = images.gpu()
            images = fn.crop_mirror_normalize(images, crop=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                              dtype=types.FLOAT, output_layout="CHW")
            return images, labels

        pipe = rgb()
        pipe.build()
        return pipe
    return make


METHODS: List[Row] = [  # make(setup) -> a built DALI pipeline (None: not here)
    Row("fun_plugin", "funloader's native DALI operator fn.funloader.dct_decode (dequantise + normalise) "
        "-> (N, 192, 28, 28)", _fun("plugin")),
    Row("fun_external_source", "the same through DALI's external_source with funloader.read_batch in worker "
        "processes (the fallback without a compiler)", _fun("external_source")),
    Row("dali_rgb", "DALI's own CPU pipeline: fn.decoders.image + fn.crop_mirror_normalize (224x224, ImageNet "
        "mean/std) -> (N, 3, 224, 224)", _rgb("cpu")),
    Row("dali_rgb_mixed", "DALI's GPU decoder (nvJPEG, device='mixed') + crop_mirror_normalize (GPU runs only)",
        _rgb("mixed")),
]


def _runner(pipe, batches: int, batch_size: int) -> Callable[[], int]:
    def run() -> int:
        done = 0
        while done < batches:
            try:
                outputs = pipe.run()
            except StopIteration:  # external_source: the epoch ended; start the next one
                pipe.reset()
                continue
            del outputs
            done += 1
        return batches * batch_size
    return run


def measure_files(files: Sequence[str], *, threads: int = 2, batch_size: int = 32, repeats: int = 5,
                  device_id: Optional[int] = None, batches: Optional[int] = None, warmup_batches: int = 3,
                  methods: Optional[Sequence[str]] = None, settle_s: float = 0.3, label: str = "",
                  progress: Callable[[str], None] = lambda message: None,
                  section: Optional[Section] = None) -> Section:
    """Images/s of the rows of :data:`METHODS` on ``files``; adds one :class:`Result` to ``section``."""
    import time

    from ..dali import load_plugin

    section = section or Section("dali", TITLE, explained={row.name: row.explanation for row in METHODS})
    files = [str(f) for f in files]
    batches = int(batches or max(48, -(-4 * len(files) // batch_size)))
    started = time.perf_counter()
    load_plugin()
    build_s = time.perf_counter() - started
    setup = Setup(files, batch_size, threads, device_id, _channel_stats(files))
    pipes, _ = make_rows(METHODS, setup, methods)
    runners = {}
    for name, pipe in pipes.items():
        progress(f"dali: built {name}")
        runners[name] = _runner(pipe, batches, batch_size)
        _runner(pipe, warmup_batches, batch_size)()
    summaries = round_robin(runners, repeats, warmup=0, settle_s=settle_s, progress=progress)
    del runners, pipes
    gc.collect()
    found = {}
    plugin = summaries.get("fun_plugin", {}).get("images_per_s")
    for other, key in (("dali_rgb", "plugin_over_dali_rgb"), ("fun_external_source", "plugin_over_fallback"),
                       ("dali_rgb_mixed", "plugin_over_dali_rgb_mixed")):
        if plugin and other in summaries:
            found[key] = round(plugin / summaries[other]["images_per_s"], 3)
    section.results[f"{label}/{threads}t" if label else f"{threads}t"] = Result(summaries, found, {
        "corpus": label, "files": len(files), "threads": threads, "batch_size": batch_size,
        "batches_per_call": batches, "settle_s": settle_s, "device_id": device_id,
        "plugin_build_or_load_s": round(build_s, 2)})
    return section


def measure(context: Context) -> Section:
    try:
        import nvidia.dali  # noqa: F401
    except Exception as error:  # DALI is optional
        return Section("dali", TITLE, skipped=f"NVIDIA DALI is not installed ({type(error).__name__})")
    from .corpus import image_folder

    device_id = 0 if context.device.startswith("cuda") else None
    batch_size = min(context.batch_size, 32) if context.quick else context.batch_size
    section = None
    for name in context.corpora or ["224_q100_420"]:
        files = context.corpus(name)
        folder = image_folder(files, context.workdir / f"dali_{name}", count=max(len(files), 4 * batch_size))
        paths = sorted(str(p) for p in folder.rglob("*.jpg"))
        for threads in context.threads:
            try:
                section = measure_files(paths, threads=threads, batch_size=batch_size, repeats=context.repeats,
                                        device_id=device_id, label=name, progress=context.progress, section=section)
            except Exception as error:  # e.g. no compiler for the plugin: say so, keep the rest of the run
                return Section("dali", TITLE, skipped=f"{type(error).__name__}: {error}")
    return section
