"""Section 1, decode: µs per image, funloader's readers against the libjpeg floor and other readers.

Each corpus is read into memory first (no file I/O timed); every method decodes the same images
side by side (harness round-robin). To compare one more reader, add a :class:`Row` to
:data:`METHODS`.
"""
from __future__ import annotations

import inspect
import io
import os
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import Context, Result, Row, Section, make_rows
from .harness import Method, Timed, minor_faults, round_robin

TITLE = "Decode: µs per image (lower is better)"

#: glibc settings that keep libjpeg's per-image coefficient arrays in the heap (README, "Speed")
TUNED_MALLOC_ENV = "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=67108864"
#: small corpora (the bundled photos) are cycled to this many decodes per pass so threads balance
MIN_ITEMS = 48


@dataclass
class Inputs:
    """One corpus, ready to decode: file paths (cycled to ``MIN_ITEMS``), their bytes, shapes."""

    files: List[Path]
    datas: List[bytes]
    shapes: List[tuple]
    threads: List[int]
    floor_binary: Optional[Path]
    buffers: Dict[tuple, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.buffers = {shape: np.empty(shape, np.int16) for shape in set(self.shapes)}
        self.batch = np.empty((len(self.datas), 192, 28, 28), np.int16)


def _loop(datas, decode) -> Method:
    def run():
        for data in datas:
            decode(data)
        return len(datas)
    return run


def _read_fun(inputs):
    from ..codec import read_fun

    return {"read_fun": _loop(inputs.datas, read_fun)}


def _read_fun_out(inputs):
    from ..codec import read_fun

    if len(inputs.buffers) != 1:  # read_fun(out=) needs the image's own grid: one-size corpora only
        return {}
    out = next(iter(inputs.buffers.values()))
    return {"read_fun_out": _loop(inputs.datas, lambda data: read_fun(data, out=out))}


def _read_fun_libjpeg(inputs):
    from ..codec import read_fun

    if "decoder" not in inspect.signature(read_fun).parameters:
        return {}
    return {"read_fun_libjpeg": _loop(inputs.datas, lambda data: read_fun(data, decoder="libjpeg"))}


def _read_batch(inputs):
    from ..codec import read_batch

    def threads(count):
        def run():
            read_batch(inputs.datas, inputs.batch, threads=count)
            return len(inputs.datas)
        return run

    return {f"read_batch_{count}t": threads(count) for count in sorted({1, *inputs.threads})}


def _read_batch_libjpeg(inputs):
    from ..codec import read_batch

    def run():
        read_batch(inputs.datas, inputs.batch, threads=1, decoder="libjpeg")
        return len(inputs.datas)

    return {"read_batch_1t_libjpeg": run}


def rrc_maps(count: int, grid: int = 28, seed: int = 0):
    """``count`` RandomResizedCrop windows (scale 0.08-1, ratio 3/4-4/3, torchvision's ranges) on a
    ``grid x grid`` block grid, as nearest-block row/column maps resizing each window to the grid."""
    rng = np.random.default_rng(seed)
    rows = np.empty((count, grid), np.int32)
    cols = np.empty((count, grid), np.int32)
    steps = np.arange(grid)
    for n in range(count):
        area = rng.uniform(0.08, 1.0) * grid * grid
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        height = int(np.clip(round(np.sqrt(area / ratio)), 1, grid))
        width = int(np.clip(round(np.sqrt(area * ratio)), 1, grid))
        top, left = rng.integers(0, grid - height + 1), rng.integers(0, grid - width + 1)
        rows[n] = top + steps * height // grid
        cols[n] = left + steps * width // grid
    return rows, cols


def _read_batch_rrc(inputs):
    """RandomResizedCrop windows as block maps: the own decoder stops after each window's last MCU
    row (crop-aware). The "_to_end" twin maps its last output row to the grid's last row, so the same
    layout work is done but every file is decoded to the end of the grid: their ratio is the gain."""
    from ..codec import read_batch

    rows, cols = rrc_maps(len(inputs.datas))
    to_end = rows.copy()
    to_end[:, -1] = inputs.batch.shape[2] - 1

    def run(maps):
        def timed():
            read_batch(inputs.datas, inputs.batch, threads=1, row_maps=maps, col_maps=cols)
            return len(inputs.datas)
        return timed

    return {"read_batch_rrc_1t": run(rows), "read_batch_rrc_to_end_1t": run(to_end)}


def _rrc_boxes(inputs, seed: int = 0) -> List[tuple]:
    """One torchvision ``RandomResizedCrop`` window per image (scale 0.08-1, ratio 3/4-4/3), drawn from a
    seeded generator: ``(top, left, height, width)`` in pixels, the same for every method that uses them."""
    from ..codec import read_sizes
    from .loader import _rrc_box

    rng = random.Random(seed)
    boxes = []
    for height, width in read_sizes(inputs.datas):
        left, top, right, bottom = _rrc_box(int(width), int(height), rng)
        boxes.append((top, left, bottom - top, right - left))
    return boxes


def _read_fun_exact(inputs):
    from ..codec import read_fun

    boxes = _rrc_boxes(inputs)
    out = np.empty((192, 28, 28), np.float32)

    def run():
        for data, box in zip(inputs.datas, boxes):
            read_fun(data, box=box, out=out)
        return len(inputs.datas)
    return {"read_fun_exact": run}


def _read_batch_exact(inputs):
    from ..codec import read_batch

    boxes = np.array(_rrc_boxes(inputs), np.float64)
    batch = np.empty((len(inputs.datas), 192, 28, 28), np.float32)

    def threads(count):
        def run():
            read_batch(inputs.datas, batch, boxes=boxes, threads=count)
            return len(inputs.datas)
        return run

    return {f"read_batch_exact_{count}t": threads(count) for count in sorted({1, *inputs.threads})}


def _read_batch_exact_libjpeg(inputs):
    from ..codec import read_batch

    boxes = np.array(_rrc_boxes(inputs), np.float64)
    batch = np.empty((len(inputs.datas), 192, 28, 28), np.float32)

    def run():
        read_batch(inputs.datas, batch, boxes=boxes, threads=1, decoder="libjpeg")
        return len(inputs.datas)
    return {"read_batch_exact_1t_libjpeg": run}


def _pillow_rrc(inputs):
    from PIL import Image

    boxes = _rrc_boxes(inputs)

    def run():
        for data, (top, left, height, width) in zip(inputs.datas, boxes):
            with Image.open(io.BytesIO(data)) as image:
                image = image.convert("RGB").crop((left, top, left + width, top + height))
                np.asarray(image.resize((224, 224), Image.BILINEAR))
        return len(inputs.datas)
    return {"pillow_rrc": run}


def _jpeg2dct(inputs):
    try:
        import jpeg2dct.numpy as jpeg2dct
    except Exception:  # an optional reference
        return {}
    return {"jpeg2dct": _loop(inputs.datas, lambda data: jpeg2dct.loads(data, normalized=False))}


def _pillow(inputs):
    from PIL import Image

    def decode(data):
        with Image.open(io.BytesIO(data)) as image:
            np.asarray(image.convert("RGB"))

    return {"pillow_rgb": _loop(inputs.datas, decode)}


def _floor(name, **kwargs):
    def make(inputs):
        if inputs.floor_binary is None:
            return {}
        return {name: lambda: run_floor(inputs.floor_binary, inputs.files, **kwargs)}
    return make


#: why a row gives no number here (shown in the report)
NOT_HERE = {
    "read_fun_out": "images of several sizes: no one reusable buffer",
    "read_fun_libjpeg": "this version has one decoder",
    "jpeg2dct": "jpeg2dct is not installed",
    "floor": "needs benchmarks/floor.c (in the source tree) and a C compiler",
    "floor_tuned": "needs benchmarks/floor.c (in the source tree) and a C compiler",
    "libjpeg_rgb": "needs benchmarks/floor.c (in the source tree) and a C compiler",
}

METHODS: List[Row] = [  # make(inputs) -> {name: method}
    Row("read_fun", "funloader.read_fun: one file's coefficients in the FUN layout, a new array each call", _read_fun),
    Row("read_fun_out", "read_fun into a reused out= buffer (one-size corpora)", _read_fun_out),
    Row("read_fun_libjpeg", "read_fun with libjpeg-turbo's coefficient reader instead of funloader's own "
        "Huffman decoder (FUNLOADER_DECODER=libjpeg)", _read_fun_libjpeg),
    Row("read_batch_Nt", "funloader.read_batch with N native threads into a reused (items, 192, 28, 28) batch", _read_batch),
    Row("read_batch_1t_libjpeg", "read_batch, 1 thread, with libjpeg-turbo's coefficient reader instead of "
        "funloader's own Huffman decoder (decoder='libjpeg')", _read_batch_libjpeg),
    Row("read_batch_rrc_1t", "read_batch, 1 thread, RandomResizedCrop windows as block maps (crop-aware: "
        "decoding stops after each window's last MCU row)", _read_batch_rrc),
    Row("read_batch_rrc_to_end_1t", "the same windows, but each decoded to the end of the 28x28 grid (its last "
        "output row maps to the grid's last row): the reference for the crop-aware gain", _read_batch_rrc),
    Row("read_fun_exact", "read_fun(box=...): the exact resized crop of a torchvision RandomResizedCrop window to "
        "28x28 blocks (224 pixels, Pillow's antialiased bilinear, chroma 4:2:0), float32", _read_fun_exact),
    Row("read_batch_exact_Nt", "read_batch(boxes=...) with N native threads: the same exact crops into a reused "
        "(items, 192, 28, 28) float32 batch", _read_batch_exact),
    Row("read_batch_exact_1t_libjpeg", "read_batch(boxes=...), 1 thread, the window's coefficients read by libjpeg "
        "(whole file) instead of the own decoder (only the window's MCU rows, only its blocks kept)",
        _read_batch_exact_libjpeg),
    Row("pillow_rrc", "Pillow: decode to RGB, then the same RandomResizedCrop windows cropped and resized to 224x224 "
        "(BILINEAR): what read_fun_exact replaces", _pillow_rrc),
    Row("floor", "the floor: a C program doing only libjpeg's jpeg_read_coefficients (no layout, no copy), "
        "what every libjpeg-based coefficient reader pays at least", _floor("floor")),
    Row("floor_tuned", "the same floor with glibc told to keep freed memory (GLIBC_TUNABLES), which removes "
        "the page faults of libjpeg's per-image arrays", _floor("floor_tuned", tuned=True)),
    Row("libjpeg_rgb", "libjpeg's full decode to RGB pixels in C: what any pixel pipeline pays at least",
        _floor("libjpeg_rgb", rgb=True)),
    Row("jpeg2dct", "jpeg2dct.loads (Uber's DCT reader used by the FUN paper's code)", _jpeg2dct),
    Row("pillow_rgb", "Pillow: decode to an RGB numpy array (what torchvision pipelines start from)", _pillow),
]


# ---------------------------------------------------------------- the floor program


def floor_source() -> Optional[Path]:
    """``benchmarks/floor.c`` of the source tree (next to the package, or under the current folder)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "benchmarks" / "floor.c"
        if candidate.is_file():
            return candidate
    return None


def build_floor_program(directory: Optional[Path] = None) -> Optional[Path]:
    """Compile ``benchmarks/floor.c`` with the system C compiler (``JPEG_INCLUDE_DIR`` /
    ``JPEG_LIBRARY_DIR`` honoured); None without the source or a compiler."""
    source = floor_source()
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if source is None or compiler is None:
        return None
    directory = Path(directory or tempfile.mkdtemp(prefix="funloader-floor-"))
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "floor"
    command = [compiler, "-O2", "-o", str(binary), str(source)]
    if os.environ.get("JPEG_INCLUDE_DIR"):
        command.append("-I" + os.environ["JPEG_INCLUDE_DIR"])
    if os.environ.get("JPEG_LIBRARY_DIR"):
        command += ["-L" + os.environ["JPEG_LIBRARY_DIR"], "-Wl,-rpath," + os.environ["JPEG_LIBRARY_DIR"]]
    command.append("-ljpeg")
    result = subprocess.run(command, capture_output=True, text=True)
    return binary if result.returncode == 0 else None


def run_floor(binary: Path, files: Sequence[Path], repeats: int = 1, *, rgb: bool = False,
              tuned: bool = False) -> Timed:
    """One timed pass of the floor program over ``files`` (after one untimed pass in the same
    process), as measured by its own clock."""
    env = dict(os.environ)
    if tuned:
        env["GLIBC_TUNABLES"] = TUNED_MALLOC_ENV
    else:
        env.pop("GLIBC_TUNABLES", None)
    command = [str(binary)] + (["--rgb"] if rgb else []) + [str(repeats + 1)] + [str(f) for f in files]
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    per_image_us = [float(line) for line in output.split()][1:]
    return Timed(len(files) * repeats, sum(per_image_us) * len(files) / 1e6)


# ---------------------------------------------------------------- measuring


def measure_corpora(corpora: Dict[str, Sequence[Path]], *, repeats: int = 7, threads: Sequence[int] = (2,),
                    floor_binary: Optional[Path] = None, methods: Optional[Sequence[str]] = None,
                    progress: Callable[[str], None] = lambda message: None) -> Section:
    """Decode cost per image of every available row of :data:`METHODS`, for each corpus."""
    from ..codec import read_fun

    section = Section("decode", TITLE, explained={row.name: row.explanation for row in METHODS})
    for corpus_name, files in corpora.items():
        files = [Path(f) for f in files]
        distinct = len(files)
        if len(files) < MIN_ITEMS:
            files = [files[i % len(files)] for i in range(MIN_ITEMS)]
        datas = [f.read_bytes() for f in files]
        inputs = Inputs(files, datas, [read_fun(d).shape for d in datas], [t for t in threads if t > 1],
                        floor_binary)
        made, absent = make_rows(METHODS, inputs, methods)
        timed: Dict[str, Method] = {name: method for group in made.values() for name, method in group.items()}
        missing = {name: NOT_HERE.get(name, "not available here") for name in absent}
        cycled = "" if distinct == len(files) else f", each decoded {len(files) // distinct}x per pass"
        progress(f"decode: {corpus_name} ({distinct} files{cycled}; {len(timed)} methods x {repeats} repeats)")
        faults_before = minor_faults()
        for data in datas:
            read_fun(data)
        faults_per_image = (minor_faults() - faults_before) / len(datas)
        summaries = round_robin(timed, repeats)
        if "read_fun" in summaries:
            summaries["read_fun"]["minor_faults_per_image_after_warmup"] = round(faults_per_image, 2)
        section.results[corpus_name] = Result(summaries, ratios(summaries),
                                              {"files": distinct, "decodes_per_pass": len(datas), "not_measured": missing})
    return section


def ratios(results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """Speed-ups of funloader (> 1: funloader faster), and ``read_fun_over_floor`` (cost / floor)."""
    def median(name):
        return results[name]["median_us"] if name in results else None

    ours = median("read_fun_out") or median("read_fun")
    found: Dict[str, float] = {}
    if ours is None:
        return found
    if median("floor"):
        found["read_fun_over_floor"] = round(ours / median("floor"), 3)
    if median("floor_tuned"):
        found["read_fun_over_floor_tuned"] = round(ours / median("floor_tuned"), 3)
    for name in ("pillow_rgb", "jpeg2dct", "libjpeg_rgb"):
        if median(name):
            found[f"speedup_vs_{name}"] = round(median(name) / ours, 3)
    if median("read_fun_exact") and median("read_fun"):
        found["exact_crop_adds_us"] = round(median("read_fun_exact") - median("read_fun"), 1)
        if median("pillow_rrc"):
            found["exact_speedup_vs_pillow_rrc"] = round(median("pillow_rrc") / median("read_fun_exact"), 3)
    if median("read_batch_exact_1t") and median("read_batch_1t"):
        found["exact_batch_1t_over_batch_1t"] = round(median("read_batch_1t") / median("read_batch_exact_1t"), 3)
    if median("read_fun_libjpeg"):
        found["speedup_vs_libjpeg_decoder"] = round(median("read_fun_libjpeg") / median("read_fun"), 3)
    if median("read_batch_1t") and median("floor_tuned"):
        found["batch_1t_speedup_vs_floor_tuned"] = round(median("floor_tuned") / median("read_batch_1t"), 3)
    if median("read_batch_1t") and median("read_batch_1t_libjpeg"):
        found["batch_1t_speedup_vs_libjpeg_decoder"] = round(median("read_batch_1t_libjpeg") / median("read_batch_1t"), 3)
    if median("read_batch_exact_1t") and median("read_batch_exact_1t_libjpeg"):
        found["exact_speedup_vs_libjpeg_decoder"] = round(median("read_batch_exact_1t_libjpeg") /
                                                          median("read_batch_exact_1t"), 3)
    if median("read_batch_rrc_1t") and median("read_batch_rrc_to_end_1t"):
        found["crop_aware_gain"] = round(median("read_batch_rrc_to_end_1t") / median("read_batch_rrc_1t"), 3)
    many = [name for name in results if re.fullmatch(r"read_batch_\d+t", name) and name != "read_batch_1t"]
    for name in many:
        count = name[len("read_batch_"):-1]
        found[f"batch_{count}t_over_1t"] = round(median("read_batch_1t") / median(name), 3)
    return found


def default_corpora(context: Context) -> List[str]:
    if context.corpora:
        return context.corpora
    return ["224_q100_420", "originals_q90_420"] if context.quick else \
        ["224_q100_420", "224_q100_444", "224_q90_420", "originals_q90_420"]


def measure(context: Context) -> Section:
    corpora = {name: context.corpus(name) for name in default_corpora(context)}
    floor = build_floor_program(context.workdir)
    return measure_corpora(corpora, repeats=context.repeats, threads=context.threads, floor_binary=floor,
                           progress=context.progress)
