"""Shared benchmark plumbing: the machine description, repeat/median timing, test corpora, and the
decode section (``measure_decode``) used by ``benchmarks/bench_decode.py`` and ``funloader bench``.

Every measurement runs the methods side by side in one process, round-robin over repeats (so a
slow moment of the machine hits all of them alike), after a warm-up pass, and reports the median
with the min-max range.
"""
from __future__ import annotations

import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

CSRC = Path(__file__).resolve().parent / "csrc"

#: glibc settings that keep libjpeg's per-image coefficient arrays in the heap (see README, "Speed").
TUNED_MALLOC_ENV = "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=67108864"


# ---------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module_name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(module_name)
    except Exception:
        return None


def machine_info(threads: Optional[int] = None) -> Dict[str, object]:
    """What ran the benchmark: CPU, cores, load, library versions, GPU (when torch sees one)."""
    from . import libjpeg_info, __version__

    info: Dict[str, object] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_used": threads,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "funloader": __version__,
        "libjpeg_turbo": libjpeg_info()["version"],
        "libjpeg_simd": _libjpeg_simd(),
        "numpy": np.__version__,
        "pillow": _version("pillow"),
        "torch": _version("torch"),
        "nvidia_dali": _version("nvidia-dali-cuda120") or _version("nvidia-dali-cuda110"),
        "jpeg2dct": _version("jpeg2dct"),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except Exception:
        pass
    return info


def _libjpeg_simd() -> Optional[str]:
    """libjpeg-turbo's SIMD flavour as its build says it (jconfig.h WITH_SIMD) and the CPU flags."""
    compiled = None
    for candidate in Path("/usr/include").glob("**/jconfig.h"):
        text = candidate.read_text(errors="replace")
        compiled = "WITH_SIMD" in text and "#define WITH_SIMD" in text
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


# ---------------------------------------------------------------- timing


def run_round_robin(methods: Dict[str, Callable[[], int]], repeats: int, warmup: int = 1,
                    progress: Optional[Callable[[str], None]] = None) -> Dict[str, Dict[str, float]]:
    """Time each method ``repeats`` times, interleaved; each call returns the number of images it did.

    Returns ``{name: {"median_us", "min_us", "max_us", "images_per_s", "repeats"}}`` (per image).
    """
    samples: Dict[str, List[float]] = {name: [] for name in methods}
    for name, method in methods.items():
        for _ in range(warmup):
            method()
    for repeat in range(repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            images = method()
            elapsed = time.perf_counter() - start
            samples[name].append(elapsed * 1e6 / max(images, 1))
        if progress:
            progress(f"repeat {repeat + 1}/{repeats}")
    return {name: summarize(values) for name, values in samples.items()}


def summarize(per_image_us: Sequence[float]) -> Dict[str, float]:
    median = statistics.median(per_image_us)
    return {
        "median_us": round(median, 2),
        "min_us": round(min(per_image_us), 2),
        "max_us": round(max(per_image_us), 2),
        "images_per_s": round(1e6 / median, 1),
        "repeats": len(per_image_us),
    }


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---------------------------------------------------------------- corpora


def source_photos(data: Optional[os.PathLike] = None) -> List[Path]:
    """Real photos to build corpora from: ``data`` (a folder, searched recursively), else the
    shared corpus next to the repository when present, else the bundled samples."""
    from .data import sample_paths

    if data is not None:
        found = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if not found:
            raise FileNotFoundError(f"no .jpg/.jpeg files under {data}")
        return found
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"
    if shared.is_dir() and any(shared.glob("*.jpg")):
        return sorted(shared.glob("*.jpg"))
    return sample_paths()


def make_corpus(photos: Iterable[Path], folder: Path, *, size: Optional[int] = 224, shorter: Optional[int] = None,
                quality: int = 90, subsampling: str = "420", limit: Optional[int] = None) -> List[Path]:
    """Re-encode photos with Pillow: ``size`` -> centre square crop resized to size x size;
    ``shorter`` -> resized so the shorter side is ``shorter`` (ImageNet-like). Returns the paths."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    chroma = {"420": 2, "422": 1, "444": 0}[str(subsampling)]
    written = []
    for index, path in enumerate(photos):
        if limit is not None and len(written) >= limit:
            break
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
        except Exception:
            continue
        width, height = image.size
        if size is not None:
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        elif shorter is not None:
            scale = shorter / min(width, height)
            image = image.resize((max(8, round(width * scale)), max(8, round(height * scale))), Image.BICUBIC)
        target = folder / f"{index:05d}_{path.stem}.jpg"
        image.save(target, format="JPEG", quality=quality, subsampling=chroma)
        written.append(target)
    return written


# ---------------------------------------------------------------- the libjpeg floor program


def build_floor_program(directory: Optional[Path] = None) -> Optional[Path]:
    """Compile ``csrc/jpeg_floor.c`` (jpeg_read_coefficients only) with the system cc; None if no compiler."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    directory = Path(directory or tempfile.mkdtemp(prefix="funloader-floor-"))
    binary = directory / "jpeg_floor"
    result = subprocess.run([compiler, "-O2", "-o", str(binary), str(CSRC / "jpeg_floor.c"), "-ljpeg"],
                            capture_output=True, text=True)
    return binary if result.returncode == 0 else None


def run_floor(binary: Path, files: Sequence[Path], repeats: int, *, rgb: bool = False, tuned: bool = False) -> List[float]:
    """µs per image of each repeat of the floor program (its first repeat is dropped as warm-up)."""
    env = dict(os.environ)
    if tuned:
        env["GLIBC_TUNABLES"] = TUNED_MALLOC_ENV
    else:
        env.pop("GLIBC_TUNABLES", None)
    command = [str(binary)] + (["--rgb"] if rgb else []) + [str(repeats + 1)] + [str(f) for f in files]
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    return [float(line) for line in output.split()][1:]


# ---------------------------------------------------------------- decode section


def measure_decode(corpora: Dict[str, Sequence[Path]], *, repeats: int = 7, threads: int = 2,
                   floor_binary: Optional[Path] = None, progress: Optional[Callable[[str], None]] = None,
                   min_items: int = 48) -> Dict[str, object]:
    """Decode cost per image, side by side, for each corpus (files read into memory first).

    Methods: ``read_fun`` (allocating), ``read_fun_out`` (into a reused buffer; corpora of one image
    size only, where a user can reuse one buffer), ``read_batch_1t`` /
    ``read_batch_{threads}t`` (into a reused (N,192,28,28) batch; grid-cropped/padded),
    ``jpeg2dct`` (when installed), ``pillow_rgb`` (full decode to an RGB numpy array), and the C
    floor programs (``floor``: jpeg_read_coefficients with default malloc settings,
    ``floor_tuned``: with glibc thresholds raised, ``libjpeg_rgb``: libjpeg's full RGB decode).
    """
    from PIL import Image

    from .codec import read_batch, read_fun

    try:
        import jpeg2dct.numpy as jpeg2dct
    except Exception:  # optional reference
        jpeg2dct = None

    report: Dict[str, object] = {}
    for corpus_name, files in corpora.items():
        files = list(files)
        if len(files) < min_items:  # small corpora (the bundled samples) are cycled so threads balance
            files = [files[i % len(files)] for i in range(min_items)]
        datas = [Path(f).read_bytes() for f in files]
        shapes = [read_fun(d).shape for d in datas]
        buffers = {shape: np.empty(shape, np.int16) for shape in set(shapes)}  # reused outputs
        batch = np.empty((len(datas), 192, 28, 28), np.int16)

        def fun_alloc():
            for d in datas:
                read_fun(d)
            return len(datas)

        def fun_out():
            for d, shape in zip(datas, shapes):
                read_fun(d, out=buffers[shape])
            return len(datas)

        def batch_threads(count):
            def run():
                read_batch(datas, batch, threads=count)
                return len(datas)
            return run

        def pillow_rgb():
            for d in datas:
                with Image.open(io.BytesIO(d)) as image:
                    np.asarray(image.convert("RGB"))
            return len(datas)

        methods = {"read_fun": fun_alloc}
        if len(buffers) == 1:  # read_fun(out=) needs the image's own grid: only for equal-sized corpora
            methods["read_fun_out"] = fun_out
        methods["read_batch_1t"] = batch_threads(1)
        if threads > 1:
            methods[f"read_batch_{threads}t"] = batch_threads(threads)
        if jpeg2dct is not None:
            def j2d():
                for d in datas:
                    jpeg2dct.loads(d, normalized=False)
                return len(datas)
            methods["jpeg2dct"] = j2d
        methods["pillow_rgb"] = pillow_rgb
        if progress:
            progress(f"decode: {corpus_name} ({len(datas)} files)")
        faults_before = minor_faults()
        fun_alloc()
        faults_per_image = (minor_faults() - faults_before) / len(datas)
        results = run_round_robin(methods, repeats)
        results["read_fun"]["minor_faults_per_image_after_warmup"] = round(faults_per_image, 2)
        if floor_binary is not None:
            for name, kwargs in (("floor", {}), ("floor_tuned", {"tuned": True}), ("libjpeg_rgb", {"rgb": True})):
                results[name] = summarize(run_floor(floor_binary, files, repeats, **kwargs))
        report[corpus_name] = {"files": len(set(map(str, files))), "items_per_pass": len(datas), "methods": results, "ratios": decode_ratios(results, threads)}
    return report


def decode_ratios(results: Dict[str, Dict[str, float]], threads: int) -> Dict[str, float]:
    """The issue's targets as ratios (>1 means funloader is faster, except read_fun_vs_floor)."""
    def median(name):
        return results[name]["median_us"] if name in results else None

    ratios: Dict[str, float] = {}
    ours = median("read_fun_out") or median("read_fun")
    if median("floor"):
        ratios["read_fun_over_floor"] = round(ours / median("floor"), 3)  # target <= 1.10
        ratios["read_fun_over_floor_tuned"] = round(ours / median("floor_tuned"), 3)
    if median("pillow_rgb"):
        ratios["speedup_vs_pillow_rgb"] = round(median("pillow_rgb") / ours, 3)  # target >= 1.3
    if median("jpeg2dct"):
        ratios["speedup_vs_jpeg2dct"] = round(median("jpeg2dct") / ours, 3)  # target > 1
    if median("libjpeg_rgb"):
        ratios["speedup_vs_libjpeg_rgb"] = round(median("libjpeg_rgb") / ours, 3)
    many = f"read_batch_{threads}t"
    if many in results:
        ratios[f"batch_{threads}t_over_1t"] = round(median("read_batch_1t") / median(many), 3)  # target >= 1.8
    return ratios


def write_json(path: os.PathLike, payload: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, path)
