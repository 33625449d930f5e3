"""The one benchmark harness: the machine description, the round-robin timer, the summary of a
method's repeats, the busy-machine check and the JSON writer. Every section uses these.

The timer runs the methods side by side in one process: a warm-up pass of each, then ``repeats``
rounds, each timing one call of every method in turn (so a slow moment of the machine hits all of
them alike), with an optional idle pause (``settle_s``) before each timed call for methods that keep
working in the background (DALI's prefetching). A method is a callable that does some images' worth
of work and returns how many images it did (the harness times it), or a :class:`Timed` when it
times itself (a separate program that reports its own inner loop).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

#: a method's repeats whose slowest is this many times its fastest make its numbers noisy
NOISY_SPREAD = 1.5


class Timed(NamedTuple):
    """What a self-timing method returns: images done and the seconds its own clock measured."""

    images: int
    seconds: float


Method = Callable[[], Union[int, Timed]]


def log(message: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(distribution)
    except Exception:
        return None


def _libjpeg_simd() -> str:
    """libjpeg-turbo's SIMD flavour as its build says it (jconfig.h WITH_SIMD) and the CPU flags."""
    compiled = None
    for candidate in Path("/usr/include").glob("**/jconfig.h"):
        compiled = "#define WITH_SIMD" in candidate.read_text(errors="replace")
        break
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    best = "avx2" if " avx2" in flags else ("sse2" if " sse2" in flags else ("neon" if platform.machine() == "aarch64" else "none"))
    if compiled is None:
        return f"unknown build, cpu {best}"
    return f"{best} (WITH_SIMD)" if compiled else "no SIMD in build"


def cpus_available() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average() -> Optional[List[float]]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(threads: Optional[int] = None, device: str = "cpu") -> Dict[str, object]:
    """What ran the benchmark: CPU, cores, load (1, 5, 15 min), library versions, GPU when used."""
    from .. import __version__, libjpeg_info

    info: Dict[str, object] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": cpus_available(),
        "threads_used": threads,
        "load_average_1_5_15min": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "funloader": __version__,
        "libjpeg_turbo": libjpeg_info()["version"],
        "libjpeg_simd": _libjpeg_simd(),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
        "torch": _version("torch"),
        "nvidia_dali": next((v for v in (_version(f"nvidia-dali-cuda{c}") for c in (130, 120, 110)) if v), None),
        "jpeg2dct": _version("jpeg2dct"),
        "device": device,
        "gpu": None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            index = torch.device(device).index or 0 if device.startswith("cuda") else 0
            props = torch.cuda.get_device_properties(index)
            info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                         "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
    except Exception:
        pass
    return info


# ---------------------------------------------------------------- timing


def _cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (all threads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def round_robin(methods: Dict[str, Method], repeats: int, *, warmup: int = 1, settle_s: float = 0.0,
                progress: Optional[Callable[[str], None]] = None) -> Dict[str, Dict[str, float]]:
    """Time each method ``repeats`` times, interleaved, after ``warmup`` untimed calls of each.

    Returns ``{name: summary}`` (see :func:`summarize`), per image.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    for method in methods.values():
        for _ in range(warmup):
            method()
    per_image_us: Dict[str, List[float]] = {name: [] for name in methods}
    per_image_cpu_us: Dict[str, List[float]] = {name: [] for name in methods}
    for repeat in range(repeats):
        for name, method in methods.items():
            if settle_s:
                time.sleep(settle_s)
            cpu_before = _cpu_seconds()
            start = time.perf_counter()
            done = method()
            elapsed = time.perf_counter() - start
            cpu = _cpu_seconds() - cpu_before
            if isinstance(done, Timed):
                images, elapsed = done.images, done.seconds
            else:
                images = int(done)
                per_image_cpu_us[name].append(cpu * 1e6 / max(images, 1))
            per_image_us[name].append(elapsed * 1e6 / max(images, 1))
        if progress:
            progress(f"repeat {repeat + 1}/{repeats}")
    return {name: summarize(per_image_us[name], per_image_cpu_us[name]) for name in methods}


def summarize(per_image_us: Sequence[float], per_image_cpu_us: Sequence[float] = ()) -> Dict[str, float]:
    """Median, min and max µs per image of the repeats, images/s of the median, and ``spread``
    (slowest / fastest repeat); ``images_per_cpu_s`` when the CPU time was measured (all threads
    of the process: the cost, less sensitive to other load on the machine)."""
    median = statistics.median(per_image_us)
    summary = {
        "median_us": round(median, 2),
        "min_us": round(min(per_image_us), 2),
        "max_us": round(max(per_image_us), 2),
        "images_per_s": round(1e6 / median, 1),
        "repeats": len(per_image_us),
        "spread": round(max(per_image_us) / max(min(per_image_us), 1e-9), 3),
    }
    if per_image_cpu_us:
        summary["images_per_cpu_s"] = round(1e6 / max(statistics.median(per_image_cpu_us), 1e-9), 1)
    return summary


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---------------------------------------------------------------- trust


def busy_reasons(load_before: Optional[Sequence[float]], load_after: Optional[Sequence[float]], cpus: int,
                 summaries: Sequence[Dict[str, float]] = ()) -> List[str]:
    """Why the numbers of a run cannot be trusted: a 1-minute load average above the core count
    before or after the run, or a method whose repeats spread more than ``NOISY_SPREAD`` x."""
    reasons = []
    for when, load in (("before", load_before), ("after", load_after)):
        if load and load[0] > cpus:
            reasons.append(f"the 1-minute load average {when} the run was {load[0]:.2f} on {cpus} cores "
                           "(other programs were competing for the CPUs)")
    noisy = [s for s in summaries if s.get("spread", 1.0) > NOISY_SPREAD]
    if noisy:
        worst = max(s["spread"] for s in noisy)
        reasons.append(f"{len(noisy)} of {len(summaries)} measurements varied by more than {NOISY_SPREAD}x between "
                       f"repeats (worst {worst:.1f}x)")
    return reasons


def write_json(path: os.PathLike, payload: object) -> None:
    """Write ``payload`` as indented JSON, atomically (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(temporary, path)
