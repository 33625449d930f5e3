"""``funloader prepare``: turn any image folder into a FUN-ready JPEG dataset, resumably.

FUN models read the quantized DCT coefficients of JPEGs (224x224: a 28x28 block grid).  This module
re-encodes an arbitrary image collection (anything Pillow opens: JPEG of any kind, CMYK, PNG,
EXIF-rotated photos, ...) into uniform JPEGs:

1. decode with Pillow, apply the EXIF orientation (``ImageOps.exif_transpose``), convert to RGB;
2. training sets (default): keep the aspect ratio, shorter side ``resize_shorter`` (default
   :data:`TRAIN_SHORTER_SIDE`, 320; a smaller image is not enlarged), for exact
   ``RandomResizedCrop`` at load time; evaluation sets (``size=224``): resize the shorter side to
   ``resize_shorter`` (default ``size``), then centre-crop ``size x size``.  Lanczos, after large
   JPEGs are reduced in the DCT domain by libjpeg to no less than twice the target (as Pillow's
   ``thumbnail`` does);
3. encode with Pillow's libjpeg-turbo at ``quality`` (default 100, as in the paper) and chroma
   ``subsampling`` ``"420"`` (paper) or ``"444"`` (the authors' released models), baseline unless
   ``progressive``; no EXIF/ICC metadata is copied.

Input layout
    * **ImageFolder**: ``SRC/<class>/**/<image>`` -> classes are the sorted top-level folder names
      and labels their indices (like ``torchvision.datasets.ImageFolder``).  Image files directly in
      ``SRC`` are then ignored (reported as ignored).
    * **flat**: ``SRC/<image>`` with no image in any sub-folder -> unlabelled: ``classes == []``,
      every label is ``-1`` and shards carry no ``.cls`` member.
    Image files are recognised by the extensions Pillow can open (case-insensitive); hidden files
    and folders (``.name``) and other files are ignored.

Output (``DST``)
    * ``format="folder"``: the same tree, each file renamed to ``.jpg`` (``a.png`` -> ``a.jpg``; when
      two inputs would collide, e.g. ``a.png`` and ``a.jpg``, both keep their suffix: ``a.png.jpg``).
    * ``format="shards"``: WebDataset tars ``shard-000000.tar`` ... with members ``<key>.jpg`` and
      ``<key>.cls``; the key is the image's index in the sorted input list, zero-padded to 8 digits.
      Samples are spread over shards in a fixed pseudo-random order (sha256 of the relative path) so
      every shard mixes classes (``shuffle=False`` keeps sorted order).  Each shard holds a fixed
      number of images (``shard_size`` as a count, or a byte size such as ``"1GB"`` which is turned
      into a count from the mean encoded size of 16 sample images) so that shard contents never
      depend on how the work was split or interrupted. With DALI installed, each tar also gets DALI's
      index ``shard-000000.idx`` (its ``wds2idx`` format), which :func:`funloader.dali.fun_pipeline`
      passes to ``fn.readers.webdataset`` so that building a pipeline does not scan the tars.
    * ``index.json`` (settings, classes, shards, one entry per image: key, path, source, label,
      width, height, bytes, sha256 of the output bytes), ``index.tsv`` (the same rows),
      ``failures.tsv`` (source, reason) and, with ``stats``, ``stats-dequantized.json`` and/or
      ``stats-raw.json``: the 192 per-channel means/stds of :func:`funloader.compute_stats` over the
      outputs (found by ``funloader.load_stats(DST)``).

Robustness
    Every output is written under ``DST/.funloader-prepare/tmp-*`` and ``os.replace``-d into place;
    a journal (``journal-I-of-N.jsonl``, one JSON line per finished file or shard, fsync'd every
    second; a torn last line is ignored) records progress.  Re-running the same command verifies the journal
    against the files on disk (size), skips what is done and finishes the rest; the final files and
    manifests are byte-identical to an uninterrupted run (sorted inputs, deterministic names, keys
    and shard contents, timestamp-free tar headers, no timestamps in manifests).  An input that
    kills a worker process (decoder crash, OOM kill) is listed as failed and the job goes on.
    Bookkeeping costs about 2 KB of memory per image in the main process (~2.5 GB for ImageNet's
    1.28M training images).

Distributed
    ``shard=(I, N)`` (CLI ``--shard I/N``) processes work units ``u`` with ``u % N == I`` (a unit is one
    image for folders, one tar for shards) and leaves ``DST/.funloader-prepare/part-I-of-N.json``;
    when all N parts are in ``DST`` (a shared filesystem, or moved there by :func:`merge`'s
    ``parts``), :func:`merge` (CLI ``funloader prepare --merge DST [PART_DIR ...]``) checks them and
    writes the same manifests a single run writes.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import stat
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from ._process import exit_with_parent
from .errors import UsageError
from .files import open_regular, read_file, walk_files
from .shards import ShardWriter, write_dali_index

__all__ = [
    "prepare", "merge", "main", "PrepareResult", "PrepareError", "PrepareFailures",
    "parse_byte_size", "parse_shard", "scan_source", "encode_image", "read_tsv",
]

MANIFEST_FORMAT = "funloader-prepared"
MANIFEST_VERSION = 1
STATE_DIR = ".funloader-prepare"
INDEX_JSON, INDEX_TSV, FAILURES_TSV = "index.json", "index.tsv", "failures.tsv"
KEY_DIGITS = 8
CALIBRATION_SAMPLES = 16
TAR_OVERHEAD_PER_SAMPLE = 1536  # 512-byte header + padding for .jpg, header + block for .cls
TSV_COLUMNS = ("key", "path", "source", "label", "class", "width", "height", "bytes", "sha256")


class PrepareError(UsageError, RuntimeError):
    """A preparation cannot start or finish (bad arguments, incompatible or busy DST, bad or missing
    parts, a full or read-only disk); the message names the file or argument and what to do.  The
    CLI prints it in one line and exits 2."""


class PrepareFailures(RuntimeError):
    """Some inputs failed (listed in ``failures.tsv``); everything else was written. ``.result`` holds the summary."""

    def __init__(self, result: "PrepareResult"):
        self.result = result
        shown = "; ".join(f"{f['source']}: {f['reason']}" for f in result.failures[:3])
        more = f" (+{len(result.failures) - 3} more)" if len(result.failures) > 3 else ""
        super().__init__(f"{len(result.failures)} input(s) failed, listed in {result.failures_path}: {shown}{more}")


@dataclass
class PrepareResult:
    """Summary of one :func:`prepare` or :func:`merge` call (counts are images)."""

    dst: Path
    total: int = 0          # images this job is responsible for
    converted: int = 0      # converted by this call
    skipped: int = 0        # already done by an earlier (interrupted) run
    failed: int = 0         # inputs that could not be converted (all, including earlier runs)
    ignored: int = 0        # files in SRC that are not images of the layout
    bytes_in: int = 0       # source bytes read by this call
    bytes_out: int = 0      # JPEG bytes written by this call
    seconds: float = 0.0            # wall time of the whole call
    convert_seconds: float = 0.0    # of which converting images (the images/s of the summary)
    complete: bool = False  # index.json written (single run or merge)
    failures: List[Dict[str, str]] = field(default_factory=list)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)  # (folder, reason): could not be listed


    @property
    def failures_path(self) -> Path:
        return self.dst / FAILURES_TSV if self.complete else self.dst / STATE_DIR

    def summary(self) -> str:
        rate = self.converted / self.convert_seconds if self.convert_seconds > 0 else 0.0
        unreadable = f" ({len(self.unreadable)} unreadable folder(s))" if self.unreadable else ""
        return (f"prepare {self.dst}: converted {self.converted}, skipped {self.skipped}, failed {self.failed}, "
                f"ignored {self.ignored}{unreadable}; read {_human(self.bytes_in)}, wrote {_human(self.bytes_out)} "
                f"in {self.seconds:.1f} s ({rate:.1f} images/s converting)")


# --------------------------------------------------------------------------------------------- parsing

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_byte_size(text) -> int:
    """``"1GB"`` -> 10**9, ``"512MiB"`` -> 2**29, ``"2.5 MB"`` -> 2500000 (decimal and binary units)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a byte size: {text!r} (examples: 1GB, 500MB, 256MiB)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"byte size must be positive: {text!r}")
    return value


def _parse_shard_size(value) -> Tuple[str, int]:
    """A bare integer (``5000`` or ``"5000"``) is images per tar; anything with a unit is bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"shard size must be positive: {value}")
        return "count", value
    text = str(value).strip()
    if text.isdigit():
        return _parse_shard_size(int(text))
    return "bytes", parse_byte_size(text)


def parse_shard(value) -> Tuple[int, int]:
    """``"1/4"`` or ``(1, 4)`` -> ``(1, 4)``: job index I in ``0..N-1`` of N jobs."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not match:
            raise ValueError(f"--shard wants I/N (e.g. 0/4), got {value!r}")
        value = (int(match.group(1)), int(match.group(2)))
    index, count = (int(v) for v in value)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard I/N needs 0 <= I < N, got {index}/{count}")
    return index, count


def _human(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


# --------------------------------------------------------------------------------------------- settings

#: Shorter side of a training set's images by default (aspect kept, never enlarged): see
#: docs/prepare.md "Image size" for the measurements behind it.
TRAIN_SHORTER_SIDE = 320
#: Side of the square centre crop of ``--size`` without a value (evaluation sets: 28x28 blocks).
EVAL_SIZE = 224


@dataclass(frozen=True)
class EncodeSettings:
    """How every image is turned into the output JPEG (recorded in the manifest).

    ``crop="center"``: resize the shorter side to ``resize_shorter`` (default ``size``), then take the
    centre ``size x size`` square.  ``crop="none"``: keep the aspect ratio with the shorter side
    ``resize_shorter`` (default ``size``), never enlarging a smaller image.  :meth:`from_options`
    fills in prepare's defaults.
    """

    size: int = 224
    resize_shorter: Optional[int] = None
    crop: str = "center"
    quality: int = 100
    subsampling: str = "420"
    progressive: bool = False

    def validate(self) -> "EncodeSettings":
        if self.size < 8:
            raise ValueError(f"size must be >= 8 pixels, got {self.size}")
        if self.crop not in ("center", "none"):
            raise ValueError(f"crop must be 'center' or 'none', got {self.crop!r}")
        if self.resize_shorter is not None and self.resize_shorter < 1:
            raise ValueError(f"resize_shorter must be positive, got {self.resize_shorter}")
        if self.crop == "center" and self.resize_shorter is not None and self.resize_shorter < self.size:
            raise ValueError(f"resize_shorter ({self.resize_shorter}) must be >= size ({self.size}) for a centre crop")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.subsampling not in ("420", "444"):
            raise ValueError(f"subsampling must be '420' or '444', got {self.subsampling!r}")
        return self

    @property
    def shorter_side(self) -> int:
        return self.resize_shorter if self.resize_shorter is not None else self.size

    @classmethod
    def from_options(cls, size: Optional[int] = None, resize_shorter: Optional[int] = None, crop: Optional[str] = None,
                     **encoding) -> "EncodeSettings":
        """Prepare's defaults: with ``size`` (or ``crop="center"``) a ``size x size`` centre crop (default
        224, evaluation sets); otherwise a training set keeping the aspect ratio with the shorter side
        ``resize_shorter`` (default :data:`TRAIN_SHORTER_SIDE`, never enlarged)."""
        if crop is None:
            crop = "center" if size is not None else "none"
        if crop == "center":
            size = EVAL_SIZE if size is None else size
        elif crop == "none":
            resize_shorter = resize_shorter or size or TRAIN_SHORTER_SIDE
            size = resize_shorter
        return cls(size=int(size), resize_shorter=None if resize_shorter is None else int(resize_shorter), crop=crop,
                   **encoding).validate()


def _encoder_description() -> str:
    import PIL
    from PIL import features

    return f"Pillow {PIL.__version__} / libjpeg-turbo {features.version('libjpeg_turbo') or 'absent (libjpeg)'}"


# --------------------------------------------------------------------------------------------- scanning

@dataclass(frozen=True)
class SourceItem:
    index: int      # position in the sorted input list (the shard key)
    source: str     # path relative to SRC, '/'-separated
    label: int      # class index, -1 when unlabelled
    path: str       # output path relative to DST (folder format)


def _image_extensions() -> frozenset:
    from PIL import Image

    Image.init()
    # MPO (multi-picture JPEG) files are opened through the JPEG plugin, so MPO has no OPEN entry of its own.
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN or fmt == "MPO")


class SourceScan(NamedTuple):
    """What :func:`scan_source` found: the inputs, and everything under SRC that is not one."""

    classes: List[str]             # sorted class names ([] for a flat folder)
    items: List[SourceItem]        # the inputs, sorted by path
    ignored: List[str]             # relative paths of files that are not inputs, and of skipped links/folders
    unreadable: List[Tuple[str, str]]  # (relative folder, reason) of sub-folders that could not be listed
    links_skipped: List[str]       # relative paths of links to a folder already walked (loops), not followed


def scan_source(src) -> SourceScan:
    """List the images under ``src`` (see :class:`SourceScan`), with :func:`funloader.files.walk_files`.

    ImageFolder layout when any sub-folder holds an image (classes = sorted top-level folder
    names), else flat/unlabelled (``classes == []``, labels ``-1``).  Links to files and folders are
    followed, each folder once (a link into an ancestor or to a folder already walked is skipped and
    reported); FIFOs, devices and broken links with an image extension are inputs that fail
    without being opened; unreadable sub-folders are reported.  Deterministic: depends only on the
    names of the files.
    """
    root = Path(src)
    if not root.is_dir():
        raise PrepareError(f"source folder not found: {root}")
    try:
        listing = walk_files(root, skip_hidden=True)
    except OSError as exc:
        raise PrepareError(f"cannot list the source folder {root}: {exc.strerror or exc}") from None
    top = len(os.fspath(root).rstrip(os.sep)) + 1

    def relative(path: str) -> str:
        return path[top:].replace(os.sep, "/")

    extensions = _image_extensions()
    images: List[Tuple[str, ...]] = []
    ignored: List[str] = []
    # Special files with an image name (FIFO, device, broken link) are inputs that fail, never opened.
    for path in listing.files + listing.not_regular:
        parts = tuple(relative(path).split("/"))
        if os.path.splitext(parts[-1])[1].lower() in extensions:
            images.append(parts)
        else:
            ignored.append("/".join(parts))
    unreadable = [(relative(path), reason) for path, reason in listing.unreadable]
    links_skipped = [relative(path) for path in listing.links_skipped]
    ignored.extend(path + "/" for path, _ in unreadable)
    ignored.extend(links_skipped)
    labelled = any(len(parts) > 1 for parts in images)
    if labelled:
        ignored.extend("/".join(parts) for parts in images if len(parts) == 1)
        images = [parts for parts in images if len(parts) > 1]
    images.sort()
    classes = sorted({parts[0] for parts in images}) if labelled else []
    class_index = {name: i for i, name in enumerate(classes)}

    outputs = ["/".join(parts[:-1] + (os.path.splitext(parts[-1])[0] + ".jpg",)) for parts in images]
    counts: Dict[str, int] = {}
    for out in outputs:
        counts[out] = counts.get(out, 0) + 1
    items = []
    for index, (parts, out) in enumerate(zip(images, outputs)):
        source = "/".join(parts)
        if counts[out] > 1:
            out = source + ".jpg"
        items.append(SourceItem(index, source, class_index[parts[0]] if labelled else -1, out))
    seen = set()
    for item in items:
        if item.path in seen:
            raise PrepareError(f"two inputs map to the same output {item.path!r}; rename one of them")
        seen.add(item.path)
    return SourceScan(classes, items, sorted(ignored), unreadable, links_skipped)


def _inventory_digest(classes: Sequence[str], items: Sequence[SourceItem]) -> str:
    digest = hashlib.sha256(json.dumps(classes).encode())  # ASCII: json.dumps escapes what is not
    for item in items:  # os.fsencode: a file name that is not UTF-8 keeps its own bytes
        digest.update(b"\n" + os.fsencode(item.source) + f"\t{item.label}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- encoding

def _to_rgb(image):
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        array = np.asarray(image).astype(np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(np.round(array * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def encode_image(data: bytes, settings: EncodeSettings) -> Tuple[bytes, Tuple[int, int], Tuple[int, int]]:
    """Decode any Pillow-readable image from ``data`` and return ``(jpeg_bytes, (w, h) out, (w, h) source)``.

    The source size is after EXIF orientation.  Raises ``ValueError``/``OSError`` (from Pillow) on
    unreadable data.
    """
    from PIL import Image, ImageOps

    if not data:
        raise ValueError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's EXIF/ICC chatter; real damage raises below
        with Image.open(io.BytesIO(data)) as opened:
            shorter = settings.shorter_side
            if opened.format in ("JPEG", "MPO"):
                opened.draft("RGB", (2 * shorter, 2 * shorter))  # DCT-domain reduction, keeps >= 2x target
            opened.load()
            image = ImageOps.exif_transpose(opened)
    source_size = image.size
    width, height = image.size
    image = _to_rgb(image)
    scale = shorter / min(width, height)
    if settings.crop == "center":
        side = min(settings.size / scale, width, height)  # the crop in source pixels (clamped: float rounding)
        left, top = max(0.0, (width - side) / 2.0), max(0.0, (height - side) / 2.0)
        image = image.resize((settings.size, settings.size), Image.Resampling.LANCZOS,
                             box=(left, top, left + side, top + side))
    elif scale < 1:  # keep the aspect ratio; an image already smaller than the target is not enlarged
        target = (shorter, max(1, round(height * scale))) if width <= height else (max(1, round(width * scale)), shorter)
        image = image.resize(target, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=settings.quality, subsampling=2 if settings.subsampling == "420" else 0,
               progressive=settings.progressive, optimize=False)
    return buffer.getvalue(), image.size, source_size


def _failure_reason(exc: BaseException, absolute: str, relative: str) -> str:
    text = str(exc).replace(absolute, relative).replace("\t", " ").replace("\n", " ")
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", text).strip()  # object reprs differ run to run
    if type(exc).__name__ == "UnidentifiedImageError":
        text = "not an image format Pillow can read (" + text + ")"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: Tests set FUNLOADER_PREPARE_TEST_CRASH=<file name> to make a worker process die on that input.
_CRASH_TEST_NAME = os.environ.get("FUNLOADER_PREPARE_TEST_CRASH", "")


def _convert_task(task):
    """Worker: ``(src_root, SourceItem, settings, out_file or None, tmp_dir)`` -> result dict.

    With ``out_file`` the JPEG is written there atomically (temp file + os.replace) and only
    its metadata comes back; without, the JPEG bytes come back in ``"data"``.
    """
    src_root, item, settings, out_file, tmp_dir = task
    absolute = os.path.join(src_root, *item.source.split("/"))
    if _CRASH_TEST_NAME and item.source.endswith(_CRASH_TEST_NAME) and multiprocessing.parent_process() is not None:
        os._exit(70)  # testing hook: simulate a worker killed by a decoder crash (see tests)
    result = {"index": item.index, "ok": False, "source_bytes": 0}
    try:
        data = read_file(absolute)  # never opens a FIFO/device; files over the size cap are refused unread
        result["source_bytes"] = len(data)
        jpeg, (width, height), (source_width, source_height) = encode_image(data, settings)
    except Exception as exc:  # any decoder/IO error is a per-file failure, the job goes on
        result["reason"] = _failure_reason(exc, absolute, item.source)
        return result
    result.update(ok=True, width=width, height=height, bytes=len(jpeg), sha256=hashlib.sha256(jpeg).hexdigest())
    if out_file is None:
        result["data"] = jpeg
        return result
    tmp_file = os.path.join(tmp_dir, f"{item.index}.{os.getpid()}.jpg")
    try:
        os.makedirs(os.path.dirname(out_file), exist_ok=True)
        # No per-file fsync (it would cost ~30% of the throughput): os.replace makes the file appear
        # whole or not at all to any later process, and on resume each journalled file is checked
        # against its recorded size, so a file lost to a power cut is simply converted again.
        with open(tmp_file, "wb") as handle:
            handle.write(jpeg)
        os.replace(tmp_file, out_file)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_file)
        if exc.errno not in (errno.ENAMETOOLONG, errno.EILSEQ):
            raise  # disk full, read-only...: the run stops with a message (see prepare)
        # This output's name is not possible on DST's file system: one failed input, the run goes on.
        name = os.fsencode(item.path.rsplit("/", 1)[-1])
        result = {"index": item.index, "ok": False, "source_bytes": result["source_bytes"],
                  "reason": f"cannot write the output {item.path!r} ({len(name)}-byte name): "
                            f"{exc.strerror or exc}"}
    return result


# --------------------------------------------------------------------------------------------- journal

class _Journal:
    """Append-only JSON-lines log of finished units; fsync'd at most every ``sync_seconds``.

    The first line is a header (settings, inventory digest, job); every further line is one
    finished unit.  A torn last line (killed mid-write) is dropped and truncated away on open.
    """

    def __init__(self, path: Path, header: dict, sync_seconds: float = 1.0):
        self.path = path
        self.sync_seconds = sync_seconds
        self.units: Dict[int, dict] = {}
        good_bytes = 0
        existing_header = None
        if path.exists():
            raw = read_file(path)  # refuses a FIFO or device planted under the journal's name
            for number, line in enumerate(raw.split(b"\n")[:-1] if raw else [], start=1):  # last chunk: torn or ''
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if existing_header is None:
                    problem = None if isinstance(record, dict) and isinstance(record.get("settings"), dict) else "bad header"
                    existing_header = record
                else:
                    problem = _record_problem(record, header["settings"].get("format", "folder"), None)
                if problem:
                    raise PrepareError(f"{path}, line {number}: not a journal record written by funloader prepare "
                                       f"({problem}); delete this file to start the job over (its outputs are "
                                       f"then converted again)")
                if number > 1:
                    self.units[int(record["unit"])] = record
                good_bytes += len(line) + 1
        if existing_header is not None and existing_header != header and self.units:
            raise PrepareError(f"{path} was written with other settings or inputs; use another DST or delete it")
        self._handle = open(path, "ab")
        self._handle.truncate(good_bytes)
        self._handle.seek(good_bytes)
        if existing_header != header:  # new journal, or one a mistaken command left with no finished unit
            good_bytes = 0
            self._handle.truncate(0)
            self._handle.seek(0)
            self._write(header)
            self.sync()
        self._last_sync = time.monotonic()

    def _write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n")

    def append(self, record: dict) -> None:
        self._write(record)
        self.units[int(record["unit"])] = record
        if time.monotonic() - self._last_sync >= self.sync_seconds:
            self.sync()

    def sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if not self._handle.closed:
            try:
                self.sync()
            finally:  # closed even when the disk is full (the run then stops with a message)
                self._handle.close()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _json_bytes(obj) -> bytes:
    """Deterministic JSON: sorted keys, one line per element of any top-level list of objects.

    (``index.json`` holds one entry per image: one line each keeps it greppable, diffable and about
    half the size of fully indented JSON.)
    """
    if not isinstance(obj, dict):
        return _utf8(json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    compact = dict(sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    lines = []
    for key in sorted(obj):
        value = obj[key]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            body = ",\n".join("  " + json.dumps(v, **compact) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{body}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, **compact)}")
    return _utf8("{\n" + ",\n".join(lines) + "\n}\n")


def _utf8(text: str) -> bytes:
    r"""UTF-8 of JSON text; a file name that is not UTF-8 (its bytes held as lone surrogates by
    ``os.fsdecode``) is written as a ``\udcXX`` JSON escape, which ``json.loads`` turns back into
    the same name."""
    return text.encode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------------- planning

@dataclass
class _Plan:
    src: Path
    dst: Path
    settings: EncodeSettings
    layout: str                     # "folder" | "shards"
    classes: List[str]
    items: List[SourceItem]
    ignored: List[str]
    inventory: str
    order: List[SourceItem]         # unit order: unit u = order[u * per_unit:(u + 1) * per_unit]
    per_unit: int                   # 1 for folders, images per tar for shards
    shard_size: Optional[str]
    shuffle: bool

    @property
    def unit_count(self) -> int:
        return math.ceil(len(self.order) / self.per_unit) if self.order else 0

    def unit_items(self, unit: int) -> List[SourceItem]:
        return self.order[unit * self.per_unit:(unit + 1) * self.per_unit]

    def key(self, item: SourceItem) -> str:
        return f"{item.index:0{max(KEY_DIGITS, len(str(len(self.items))))}d}"

    def shard_name(self, unit: int) -> str:
        return f"shard-{unit:06d}.tar"

    def settings_record(self) -> dict:
        """Everything that determines the output bytes (compared on resume and merge)."""
        record = {
            "size": self.settings.size, "resize_shorter": self.settings.resize_shorter, "crop": self.settings.crop,
            "quality": self.settings.quality, "subsampling": self.settings.subsampling,
            "progressive": self.settings.progressive, "format": self.layout,
            "resample": "lanczos (after libjpeg DCT-domain reduction to >= 2x the shorter side)",
            "orientation": "exif_transpose", "encoder": _encoder_description(),
        }
        if self.settings.crop == "none":
            record["enlarge"] = False  # an image smaller than the shorter side is kept at its size
        if self.layout == "shards":
            record.update(shard_size=self.shard_size, images_per_shard=self.per_unit, shuffle=self.shuffle)
        return record


def _shuffled(items: List[SourceItem]) -> List[SourceItem]:
    return sorted(items, key=lambda item: hashlib.sha256(os.fsencode(item.source)).digest())


def _calibrate_per_shard(plan_order: List[SourceItem], src: Path, settings: EncodeSettings, shard_bytes: int,
                         labelled: bool, pool) -> int:
    """Images per tar so that tars come out near ``shard_bytes``: mean size of up to 16 evenly spread samples."""
    if not plan_order:
        return 1
    count = min(CALIBRATION_SAMPLES, len(plan_order))
    samples = [plan_order[(i * len(plan_order)) // count] for i in range(count)]
    tasks = [(str(src), item, settings, None, None) for item in samples]
    results = list(_ordered_outcomes(pool, tasks))
    sizes = [r["bytes"] for r in results if r["ok"]]
    mean = sum(sizes) / len(sizes) if sizes else settings.size * settings.size  # ~1 byte/pixel if nothing decodes
    per_sample = mean + TAR_OVERHEAD_PER_SAMPLE - (0 if labelled else 1024)
    return max(1, int(shard_bytes // per_sample))


# --------------------------------------------------------------------------------------------- helpers

def _state_dir(dst: Path) -> Path:
    return dst / STATE_DIR


def _job_name(shard: Tuple[int, int]) -> str:
    return f"{shard[0]}-of-{shard[1]}"


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class _Pool:
    """A ``spawn`` process pool that can be rebuilt after a worker dies (segfault, OOM kill)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.executor = None
        self.restart()

    def restart(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        # Workers exit when this process dies, even by SIGKILL (then the resource tracker goes too).
        self.executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=exit_with_parent, initargs=(os.getpid(),))

    def submit(self, function, *args):
        return self.executor.submit(function, *args)

    def map(self, function, iterable):
        return self.executor.map(function, iterable)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _os_error_message(exc: OSError, default_path, what: str) -> str:
    """One line for an OS error while writing a dataset: the file, the cause, and what to do."""
    where = exc.filename if exc.filename is not None else default_path
    cause = exc.strerror or str(exc)
    text = f"{what}: {where}: {cause}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (disk full: free some space or choose another DST)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        text += " (DST must be a writable folder)"
    return text


def _flock(descriptor: int, path: Path, exclusive: bool, busy: str) -> Optional[int]:
    """``flock`` ``descriptor`` without waiting; returns it, or None (closed, with a warning) on a file
    system that cannot lock (some network file systems: runs are then not protected).  Raises
    :class:`PrepareError` with ``busy`` when another process holds a conflicting lock."""
    import fcntl

    try:
        fcntl.flock(descriptor, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise PrepareError(busy) from None
    except OSError as exc:
        os.close(descriptor)
        warnings.warn(f"cannot lock {path} ({exc.strerror}): concurrent runs on it are not detected", stacklevel=4)
        return None
    return descriptor


def _lock_directory(path: Path, *, exclusive: bool) -> Optional[int]:
    """``flock`` a folder, shared or exclusive; returns the descriptor to :func:`_unlock` (see :func:`_flock`)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise PrepareError(_os_error_message(exc, path, "cannot open the folder")) from None
    return _flock(descriptor, path, exclusive,
                  f"{path} is in use by another funloader prepare run or merge; wait for it to finish (two runs "
                  f"writing the same folder would destroy each other's work)")


def _lock_job(path: Path) -> Optional[int]:
    """Exclusive ``flock`` of a job's lock file (created; its holder deletes it at the end)."""
    while True:
        path.parent.mkdir(exist_ok=True)
        descriptor = _flock(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), path, True,
                            f"job {path.name[len('lock-'):]} is already running on {path.parent.parent}; wait for "
                            f"it to finish")
        if descriptor is None:
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)  # its holder finished and deleted it while we took the lock: take a fresh one


def _unlock(descriptor: Optional[int]) -> None:
    if descriptor is not None:
        os.close(descriptor)


def _make_pool(workers: int) -> Optional[_Pool]:
    return _Pool(workers) if workers > 1 else None


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", dynamic_ncols=True, smoothing=0.1,
                disable=not enabled, file=sys.stderr)


def _file_entry(plan: _Plan, item: SourceItem, result: dict, shard_name: Optional[str]) -> dict:
    entry = {"key": plan.key(item), "source": item.source, "label": item.label, "width": result["width"],
             "height": result["height"], "bytes": result["bytes"], "sha256": result["sha256"]}
    entry["path"] = shard_name if shard_name is not None else item.path
    return entry


def _unit_is_intact(plan: _Plan, record: dict) -> bool:
    """A journalled unit still counts as done if its outputs exist with the recorded sizes."""
    try:
        if plan.layout == "shards":
            shard = record["shard"]
            return (plan.dst / shard["name"]).stat().st_size == shard["bytes"]
        return all((plan.dst / entry["path"]).stat().st_size == entry["bytes"] for entry in record["files"])
    except (OSError, KeyError):
        return False


def _records_from_index(plan: _Plan, index: dict, failures: List[dict]) -> Dict[int, dict]:
    """Rebuild per-unit journal records from a finished index.json (re-running a completed command)."""
    unit_of: Dict[int, int] = {}
    for position, item in enumerate(plan.order):
        unit_of[item.index] = position // plan.per_unit
    by_source = {item.source: item for item in plan.items}
    records: Dict[int, dict] = {}

    def record_for(unit):
        return records.setdefault(unit, {"unit": unit, "files": [], "failures": []})

    for entry in index.get("files", []):
        item = by_source.get(entry["source"])
        if item is None:
            return {}
        record_for(unit_of[item.index])["files"].append(entry)
    for failure in failures:
        item = by_source.get(failure["source"])
        if item is None:
            return {}
        record_for(unit_of[item.index])["failures"].append(failure)
    for shard in index.get("shards", []):
        unit = int(shard["name"][len("shard-"):-len(".tar")])
        record_for(unit)["shard"] = shard
    return records


_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_UNESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)
_TSV_SPECIAL = re.compile(r"[\\\t\n\r\udc80-\udcff]")


def _tsv_field(value) -> str:
    r"""One TSV field: backslash, tab, newline and carriage return as ``\\``, ``\t``, ``\n``, ``\r``,
    and each byte of a file name that is not UTF-8 as ``\xNN`` (see :func:`read_tsv`)."""
    return _TSV_SPECIAL.sub(lambda m: _TSV_ESCAPES.get(m.group(), f"\\x{ord(m.group()) - 0xDC00:02x}"), str(value))


def _tsv_bytes(rows: Sequence[Sequence]) -> bytes:
    return "".join("\t".join(_tsv_field(value) for value in row) + "\n" for row in rows).encode("utf-8")


def _tsv_unfield(text: str) -> str:
    def replace(match):
        code = match.group(1)
        if code[0] == "x" and len(code) == 3:
            return chr(0xDC00 + int(code[1:], 16))  # a byte of a non-UTF-8 name, as os.fsdecode holds it
        return {"t": "\t", "n": "\n", "r": "\r"}.get(code, code)

    return _TSV_UNESCAPE.sub(replace, text)


def read_tsv(path) -> List[Dict[str, str]]:
    r"""Rows of an ``index.tsv`` or ``failures.tsv`` written by prepare, as ``{column: text}``.

    Fields are unescaped (``\t``, ``\n``, ``\r``, ``\\`` and ``\xNN`` for the bytes of a file name
    that is not UTF-8), so every name comes back exactly as it is in ``index.json`` and on disk
    (``os.fsencode(row["source"])`` gives the original bytes).  A row with the wrong number of
    fields raises :class:`PrepareError` naming the file and line.
    """
    path = Path(path)
    try:
        lines = read_file(path).decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise PrepareError(f"{path} is not a TSV file written by funloader prepare ({exc})") from None
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return []
    header = lines[0].split("\t")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise PrepareError(f"{path}, line {number}: {len(fields)} fields, expected {len(header)}")
        rows.append(dict(zip(header, map(_tsv_unfield, fields))))
    return rows


def _read_failures_tsv(path: Path) -> List[dict]:
    if not path.exists():
        return []
    return [{"source": row.get("source", ""), "reason": row.get("reason", "")} for row in read_tsv(path)]


# --------------------------------------------------------------------------------------------- prepare

def prepare(src, dst, *, size: Optional[int] = None, resize_shorter: Optional[int] = None, crop: Optional[str] = None,
            quality: int = 100, subsampling: str = "420", progressive: bool = False,
            workers: Optional[int] = None, format: str = "folder", shard_size="1GB", shuffle: bool = True,
            shard=None, stats=False, allow_failures: bool = False,
            progress: bool = True, verbose: bool = True) -> PrepareResult:
    """Convert the images under ``src`` into FUN-ready JPEGs under ``dst`` (see the module docstring).

    Args:
        src: image folder (ImageFolder layout ``class/**/file`` or flat).
        dst: output folder (created; must not lie inside ``src``).  Re-running with the same
            arguments resumes an interrupted run; other settings into the same ``dst`` raise
            :class:`PrepareError`.
        size: ``size x size`` centre crops (224 -> a 28x28 block grid), for evaluation sets.  Without
            ``size`` (and ``crop``) the images keep their aspect ratio with the shorter side
            ``resize_shorter`` (default :data:`TRAIN_SHORTER_SIDE` = 320, never enlarged): a training set
            for exact ``RandomResizedCrop``.
        resize_shorter: shorter side (before the crop with ``size``; default ``size`` there;
            ``resize_shorter=256, size=224`` is ``Resize(256) + CenterCrop(224)``).
        crop: ``"center"`` or ``"none"``; default ``"center"`` when ``size`` is given, else ``"none"``.
        quality / subsampling / progressive: JPEG encoding (``subsampling`` ``"420"`` or ``"444"``).
        workers: processes (default: the CPUs available); 1 converts in this process.  Workers are
            started with ``spawn``, so a script calling ``prepare`` needs the usual
            ``if __name__ == "__main__":`` guard.
        format: ``"folder"`` or ``"shards"`` (WebDataset tars).
        shard_size: tar size: ``"1GB"``-style bytes (turned into an image count) or an image count.
        shuffle: shards only: spread images over tars in a fixed hash order (mixes classes per tar).
        shard: ``(I, N)`` or ``"I/N"``: this job's share of a distributed run; finish with :func:`merge`.
        stats: also write the 192 per-channel means/stds with :func:`funloader.compute_stats`:
            ``True``/``"dequantized"`` (the loader's default) -> ``stats-dequantized.json``,
            ``"raw"`` (quantised integers, the paper's released models) -> ``stats-raw.json``, or ``"both"``.
        allow_failures: do not raise :class:`PrepareFailures` when some inputs could not be converted.
        progress / verbose: tqdm bar / printed summary (stderr).

    Returns:
        :class:`PrepareResult`.  Raises :class:`PrepareFailures` (after writing everything) when inputs
        failed and ``allow_failures`` is false.
    """
    started = time.monotonic()
    try:
        settings = EncodeSettings.from_options(size, resize_shorter, crop, quality=int(quality),
                                               subsampling=str(subsampling), progressive=bool(progressive))
        job = parse_shard(shard) if shard is not None else (0, 1)
        shard_kind, shard_value = _parse_shard_size(shard_size)
    except ValueError as exc:
        raise PrepareError(str(exc)) from None
    if format not in ("folder", "shards"):
        raise PrepareError(f"format must be 'folder' or 'shards', got {format!r}")
    src_path, dst_path = Path(src).resolve(), Path(dst).resolve()
    if dst_path == src_path or src_path in dst_path.parents:
        raise PrepareError(f"DST {dst_path} must not be inside SRC {src_path}")
    workers = _default_workers() if workers is None else max(1, int(workers))
    stats_modes = _stats_modes(stats)

    scan = scan_source(src_path)
    classes, items, ignored = scan.classes, scan.items, scan.ignored
    if not items:
        raise PrepareError(f"no images found under {src_path} (looked for {', '.join(sorted(_image_extensions())[:8])}, ...)")
    order = _shuffled(items) if format == "shards" and shuffle else list(items)
    state = _state_dir(dst_path)
    try:
        dst_path.mkdir(parents=True, exist_ok=True)
        state.mkdir(exist_ok=True)
    except OSError as exc:
        raise PrepareError(_os_error_message(exc, dst_path, "cannot create DST")) from None
    # One run per DST (a job of a --shard I/N run shares DST with the other jobs, not with itself).
    dir_lock = _lock_directory(dst_path, exclusive=job[1] == 1)
    job_lock, job_lock_path = None, state / f"lock-{_job_name(job)}"
    try:
        if job[1] > 1:
            job_lock = _lock_job(job_lock_path)
        return _prepare_locked(src_path, dst_path, settings, job, format, shard_kind, shard_value, shard_size,
                               shuffle, workers, stats_modes, allow_failures, progress, verbose, started, scan, order)
    except OSError as exc:
        raise PrepareError(_os_error_message(exc, dst_path, "prepare stopped") + "; run the same command again "
                           "to resume: finished outputs are kept") from None
    finally:
        if job_lock is not None:
            with contextlib.suppress(OSError):
                job_lock_path.unlink()
            _unlock(job_lock)
        with contextlib.suppress(OSError):
            state.rmdir()  # only when empty: nothing of this or another job is left in it
        _unlock(dir_lock)


def _prepare_locked(src_path: Path, dst_path: Path, settings: EncodeSettings, job: Tuple[int, int], format: str,
                    shard_kind: str, shard_value: int, shard_size, shuffle: bool, workers: int,
                    stats_modes: Tuple[str, ...], allow_failures: bool, progress: bool, verbose: bool, started: float,
                    scan: SourceScan, order: List[SourceItem]) -> PrepareResult:
    """The body of :func:`prepare`, run while this job holds its locks on DST."""
    classes, items, ignored = scan.classes, scan.items, scan.ignored
    state = _state_dir(dst_path)
    job_name = _job_name(job)
    journal_path = state / f"journal-{job_name}.jsonl"
    part_path = state / f"part-{job_name}.json"
    tmp_dir = state / f"tmp-{job_name}"
    shutil.rmtree(tmp_dir, ignore_errors=True)  # leftovers of a killed run are never valid outputs
    tmp_dir.mkdir()

    pool = _make_pool(workers)
    journal = None
    try:
        per_unit = 1
        shard_size_text = None
        if format == "shards":
            shard_size_text = str(shard_size)
            if shard_kind == "count":
                per_unit = shard_value
            else:
                per_unit = _previous_per_unit(journal_path, part_path, dst_path / INDEX_JSON, shard_size_text)
                if per_unit is None:
                    per_unit = _calibrate_per_shard(order, src_path, settings, shard_value, bool(classes), pool)
        plan = _Plan(src_path, dst_path, settings, format, classes, items, ignored,
                     _inventory_digest(classes, items), order, per_unit, shard_size_text, bool(shuffle))
        header = {"journal": MANIFEST_VERSION, "settings": plan.settings_record(), "inventory": plan.inventory,
                  "job": list(job)}
        try:
            index_records = _index_records(plan, header)  # DST made with other settings: refuse, write nothing
        except PrepareError:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            try:
                state.rmdir()
            except OSError:
                pass
            raise
        journal = _Journal(journal_path, header)
        done, from_index = _load_done(plan, journal, part_path, header, index_records)
        my_units = [u for u in range(plan.unit_count) if u % job[1] == job[0]]
        pending = [u for u in my_units if u not in done]
        # Re-running a finished command (index.json already covers this job's share): change nothing.
        finished = (not pending and all(u in from_index for u in my_units)
                    and all((dst_path / f"stats-{mode}.json").exists() for mode in stats_modes))
        for unit, record in done.items():
            if not finished and unit not in journal.units and unit % job[1] == job[0]:
                journal.append(record)  # adopt units known from index.json / an old part file
        journal.sync()

        result = PrepareResult(dst=dst_path, ignored=len(ignored), unreadable=list(scan.unreadable))
        result.total = sum(len(plan.unit_items(u)) for u in my_units)
        result.skipped = sum(len(done[u]["files"]) + len(done[u]["failures"]) for u in my_units if u in done)
        if verbose and ignored:
            print(f"funloader prepare: ignoring {len(ignored)} entries that are not images of the layout "
                  f"(e.g. {ignored[0]})", file=sys.stderr)
        if scan.links_skipped and verbose:
            print(f"funloader prepare: not following {len(scan.links_skipped)} link(s) to a folder already listed "
                  f"or to an ancestor (a loop), e.g. {scan.links_skipped[0]}", file=sys.stderr)
        if scan.unreadable:
            shown = ", ".join(f"{path} ({reason})" for path, reason in scan.unreadable[:5])
            message = (f"{len(scan.unreadable)} sub-folder(s) of {src_path} could not be listed; their images are "
                       f"not in this dataset: {shown}")
            if verbose:
                print(f"funloader prepare: warning: {message}", file=sys.stderr)
            else:
                warnings.warn(message, stacklevel=3)
        bar = _progress(result.total, result.skipped, f"prepare {job_name}" if job[1] > 1 else "prepare",
                        progress)
        convert_started = time.monotonic()
        try:
            if format == "folder":
                _run_folder(plan, pending, pool, journal, tmp_dir, result, bar)
            else:
                _run_shards(plan, pending, pool, journal, tmp_dir, result, bar)
        finally:
            bar.close()
            result.convert_seconds = time.monotonic() - convert_started
        journal.close()
        if finished:
            journal_path.unlink()
            shutil.rmtree(tmp_dir, ignore_errors=True)
            try:
                state.rmdir()  # only if no other job's files are in it
            except OSError:
                pass
            result.complete = True
            result.failures = _read_failures_tsv(dst_path / FAILURES_TSV)
            result.failed = len(result.failures)
            if verbose:
                print(f"{dst_path / INDEX_JSON} is complete and matches these settings: nothing to do",
                      file=sys.stderr)
            return _finish(result, started, verbose, allow_failures, job, job_name, part_path)

        part = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "job": list(job),
                "settings": plan.settings_record(), "inventory": plan.inventory, "classes": classes,
                "ignored": ignored, "total_images": len(items), "units": [journal.units[u] for u in my_units],
                "stats_requested": list(stats_modes)}
        _write_atomic(part_path, _json_bytes(part))
        journal_path.unlink()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        result.failures = [f for u in my_units for f in journal.units[u]["failures"]]
        result.failed = len(result.failures)
        if job[1] == 1:
            merged = _merge_parts(dst_path, [part], stats=stats_modes, progress=progress)
            result.complete = True
            result.failures = merged["failures"]
            result.failed = len(result.failures)
    finally:
        if journal is not None:
            journal.close()
        if pool is not None:
            pool.shutdown()
    return _finish(result, started, verbose, allow_failures, job, job_name, part_path)


def _finish(result: PrepareResult, started: float, verbose: bool, allow_failures: bool, job, job_name: str,
            part_path: Path) -> PrepareResult:
    result.seconds = time.monotonic() - started
    if verbose:
        print(result.summary(), file=sys.stderr)
        if not result.complete:
            print(f"job {job_name} done; when all {job[1]} jobs are done run: funloader prepare --merge {result.dst}",
                  file=sys.stderr)
        if result.failed:
            print(f"{result.failed} failure(s) listed in {result.failures_path if result.complete else part_path}",
                  file=sys.stderr)
    if result.failed and not allow_failures:
        raise PrepareFailures(result)
    return result


def _previous_per_unit(journal_path: Path, part_path: Path, index_path: Path, shard_size_text: str) -> Optional[int]:
    """Images per tar recorded by an earlier run with the same ``shard_size`` (skips recalibration)."""
    candidates = []
    for path in (journal_path, part_path, index_path):  # journal: its first line, the header
        if path.exists():
            try:
                text = read_file(path)
                candidates.append(json.loads(text.split(b"\n", 1)[0] if path == journal_path else text)["settings"])
            except (ValueError, KeyError, TypeError):
                pass  # damaged: named by the check that reads it in full
    for record in candidates:
        if (isinstance(record, dict) and record.get("format") == "shards" and record.get("shard_size") == shard_size_text
                and _is_int(record.get("images_per_shard")) and record["images_per_shard"] >= 1):
            return record["images_per_shard"]
    return None


def _index_records(plan: _Plan, header: dict) -> Dict[int, dict]:
    """Per-unit records of a finished ``index.json`` in DST made with the same settings and inputs.

    Raises :class:`PrepareError` when DST holds a dataset made with other settings or inputs.
    """
    index_path = plan.dst / INDEX_JSON
    if not index_path.exists():
        return {}
    index = _load_json(index_path, "index")
    if not isinstance(index, dict) or index.get("format") != MANIFEST_FORMAT:
        raise PrepareError(f"{index_path} is not an index written by funloader prepare; choose another DST or "
                           f"delete it")
    if index.get("settings") != header["settings"] or index.get("inventory") != plan.inventory:
        raise PrepareError(f"{plan.dst} already holds a dataset prepared with other settings or inputs "
                           f"({index_path}); choose another DST or delete it")
    try:
        records = _records_from_index(plan, index, _read_failures_tsv(plan.dst / FAILURES_TSV))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        records, problem = None, f"{type(exc).__name__}: {exc}"
    else:
        problem = next(filter(None, (_record_problem(r, plan.layout, len(plan.classes)) for r in records.values())),
                       None)
    if problem:
        raise PrepareError(f"{index_path} is damaged ({problem}); delete it (and index.tsv, failures.tsv) to "
                           f"prepare DST again")
    return records


def _load_done(plan: _Plan, journal: _Journal, part_path: Path, header: dict,
               index_records: Dict[int, dict]) -> Tuple[Dict[int, dict], set]:
    """Units finished earlier (a finished index.json, this job's part file, the journal), verified on disk.

    Returns ``(unit -> record, units that came from index.json)``.
    """
    candidates: Dict[int, dict] = dict(index_records)
    from_index = set(candidates)
    if part_path.exists():
        part = _load_part(part_path)
        if part.get("settings") != header["settings"] or part.get("inventory") != plan.inventory:
            raise PrepareError(f"{part_path} was written with other settings or inputs; use another DST or delete it")
        candidates.update({int(record["unit"]): record for record in part["units"]})
    candidates.update(journal.units)
    done = {unit: record for unit, record in candidates.items() if _unit_is_intact(plan, record)}
    return done, from_index & set(done)


def _convert_many(tasks):
    """Worker: a small chunk of :func:`_convert_task` calls (amortises the inter-process round trip)."""
    return [_convert_task(task) for task in tasks]


def _ordered_outcomes(pool: Optional[_Pool], tasks: Iterable, chunk: int = 8):
    """Results of :func:`_convert_task` over ``tasks`` in order, with a bounded number in flight.

    At most ``4 * workers`` chunks are submitted ahead of the consumer, so memory stays bounded
    (JPEG bytes of shards travel back to this process) however many images there are.  If a worker
    process dies (a crash inside a decoder, an OOM kill), the pool is rebuilt and the images that
    were in flight are converted again one at a time, so that only the image that kills a worker
    is reported as failed and the job goes on.
    """
    if pool is None:
        yield from map(_convert_task, tasks)
        return
    from collections import deque
    from concurrent.futures.process import BrokenProcessPool
    from itertools import islice

    iterator = iter(tasks)
    in_flight = deque()  # (future, batch)

    def submit() -> bool:
        batch = list(islice(iterator, chunk))
        if batch:
            in_flight.append((pool.submit(_convert_many, batch), batch))
        return bool(batch)

    for _ in range(4 * pool.workers):
        if not submit():
            break
    while in_flight:
        future, batch = in_flight.popleft()
        try:
            outcomes = future.result()
        except BrokenProcessPool:
            suspects = batch + [task for _, other in in_flight for task in other]
            in_flight.clear()
            pool.restart()
            outcomes = [_convert_isolated(pool, task) for task in suspects]
        for _ in range(len(in_flight), 4 * pool.workers):
            if not submit():
                break
        yield from outcomes


def _convert_isolated(pool: _Pool, task) -> dict:
    """Convert one image alone in the pool; a worker death becomes this image's failure."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return pool.submit(_convert_task, task).result()
    except BrokenProcessPool:
        pool.restart()
        item = task[1]
        return {"index": item.index, "ok": False, "source_bytes": 0,
                "reason": "worker process died while converting this image (crash in the decoder or out of memory)"}


def _run_folder(plan, pending, pool, journal, tmp_dir, result, bar) -> None:
    items = [(unit, plan.unit_items(unit)[0]) for unit in pending]
    tasks = ((str(plan.src), item, plan.settings, str(plan.dst / item.path), str(tmp_dir)) for _, item in items)
    for (unit, item), outcome in zip(items, _ordered_outcomes(pool, tasks)):
        record = {"unit": unit, "files": [], "failures": []}
        if outcome["ok"]:
            record["files"].append(_file_entry(plan, item, outcome, None))
            result.bytes_out += outcome["bytes"]
        else:
            record["failures"].append({"source": item.source, "reason": outcome["reason"]})
        result.bytes_in += outcome["source_bytes"]
        journal.append(record)
        result.converted += outcome["ok"]
        bar.update(1)


def _run_shards(plan, pending, pool, journal, tmp_dir, result, bar) -> None:
    # One ordered stream over the images of all pending tars: workers convert, this process writes the tars.
    tasks = ((str(plan.src), item, plan.settings, None, None) for unit in pending for item in plan.unit_items(unit))
    outcomes = _ordered_outcomes(pool, tasks)
    for unit in pending:
        name = plan.shard_name(unit)
        writer = ShardWriter(plan.dst / name, tmp_dir / name)
        record = {"unit": unit, "files": [], "failures": []}
        try:
            for item in plan.unit_items(unit):
                outcome = next(outcomes)
                key = plan.key(item)
                if outcome["ok"]:
                    writer.add(f"{key}.jpg", outcome["data"])
                    if item.label >= 0:
                        writer.add(f"{key}.cls", str(item.label).encode("ascii"))
                    record["files"].append(_file_entry(plan, item, outcome, name))
                    result.converted += 1
                else:
                    record["failures"].append({"source": item.source, "reason": outcome["reason"]})
                result.bytes_in += outcome["source_bytes"]
                bar.update(1)
            size, digest = writer.commit()
        except BaseException:
            writer.abort()
            raise
        record["shard"] = {"name": name, "bytes": size, "sha256": digest, "count": len(record["files"])}
        result.bytes_out += size
        journal.append(record)


# --------------------------------------------------------------------------------------------- merge

def merge(dst, parts: Sequence = (), *, stats=None, allow_failures: bool = False, progress: bool = True,
          verbose: bool = True) -> PrepareResult:
    """Join the ``--shard I/N`` jobs of one preparation into the final manifests in ``dst``.

    ``dst`` must hold ``.funloader-prepare/part-I-of-N.json`` for every ``I`` in ``0..N-1`` (jobs that
    all wrote to ``dst``), or ``parts`` names the output folders of jobs that wrote elsewhere: their
    outputs and part files are moved into ``dst``.  Every part file is validated before anything
    moves (complete set of jobs, same settings and inputs, counts that add up, every output a
    regular file inside its job's folder with its recorded size), so a bad or hostile part file
    changes nothing.  A merge stopped part-way (killed, disk full) is finished by running the same
    command again.  Writes ``index.json``, ``index.tsv``, ``failures.tsv`` (and the statistics the
    jobs asked for, or ``stats`` as in :func:`prepare` when given), removes the part files, and returns
    the summary; raises :class:`PrepareFailures` when inputs failed unless ``allow_failures``.
    """
    started = time.monotonic()
    dst_path = Path(dst).resolve()
    part_dirs = []
    for part_dir in parts:
        path = Path(part_dir).resolve()
        if not path.is_dir():
            raise PrepareError(f"part folder not found: {path}")
        if path == dst_path or path in part_dirs:
            continue
        part_dirs.append(path)
    if part_dirs:
        try:
            dst_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrepareError(_os_error_message(exc, dst_path, "cannot create the merge target")) from None
    if not dst_path.is_dir():
        raise PrepareError(f"merge target not found: {dst_path}")
    locks = [_lock_directory(dst_path, exclusive=True)]
    try:
        locks.extend(_lock_directory(path, exclusive=True) for path in part_dirs)
        try:
            return _merge_locked(dst_path, part_dirs, stats, allow_failures, progress, verbose, started)
        except OSError as exc:
            raise PrepareError(_os_error_message(exc, dst_path, "merge stopped") + "; fix this and run the same "
                               "merge command again: it carries on where it stopped") from None
    finally:
        for lock in locks:
            _unlock(lock)


def _merge_locked(dst_path: Path, part_dirs: List[Path], stats, allow_failures: bool, progress: bool, verbose: bool,
                  started: float) -> PrepareResult:
    state = _state_dir(dst_path)
    # (folder the part's outputs are in now, part file, its contents)
    sources: List[Tuple[Path, Path, dict]] = []
    for path in sorted(state.glob("part-*-of-*.json")) if state.is_dir() else []:
        sources.append((dst_path, path, _load_part(path)))
    gathered_already = []
    for part_dir in part_dirs:
        found = sorted(_state_dir(part_dir).glob("part-*-of-*.json")) if _state_dir(part_dir).is_dir() else []
        if not found:
            gathered_already.append(part_dir)  # nothing left there: moved by an earlier (interrupted) merge
        sources.extend((part_dir, path, _load_part(path)) for path in found)
    if not sources:
        if (dst_path / INDEX_JSON).exists() and not any(_state_dir(d).is_dir() for d in part_dirs):
            index = _load_json(dst_path / INDEX_JSON, "index")
            if not (isinstance(index, dict) and isinstance(index.get("files"), list)
                    and isinstance(index.get("counts"), dict) and _is_int(index["counts"].get("ignored"))):
                raise PrepareError(f"{dst_path / INDEX_JSON} is not an index written by funloader prepare")
            failures = _read_failures_tsv(dst_path / FAILURES_TSV)
            if verbose:
                print(f"{dst_path / INDEX_JSON} is already merged: nothing to do", file=sys.stderr)
            result = PrepareResult(dst=dst_path, total=len(index["files"]) + len(failures), complete=True,
                                   failures=failures, failed=len(failures), ignored=index["counts"]["ignored"],
                                   seconds=time.monotonic() - started)
            result.skipped = result.total
            if result.failed and not allow_failures:
                raise PrepareFailures(result)
            return result
        where = [str(dst_path)] + [str(d) for d in part_dirs]
        hint = "" if part_dirs else ("; if the jobs wrote to other folders, name them: funloader prepare --merge "
                                     "DST PART_DIR ...")
        raise PrepareError(f"no part files (.funloader-prepare/part-I-of-N.json) in {', '.join(where)}{hint}")
    moves = _check_parts(dst_path, sources, gathered_already)  # raises before anything is moved
    for part_dir, part_file, names in moves:
        for name in names:
            _move_file(part_dir / name, dst_path / name)
        state.mkdir(exist_ok=True)
        _move_file(part_file, state / part_file.name)
        _remove_empty_dirs(part_dir, set(names) | {f"{STATE_DIR}/{part_file.name}"})
    loaded = [part for _, _, part in sources]
    merged = _merge_parts(dst_path, loaded, stats=None if stats is None else _stats_modes(stats), progress=progress,
                          checked=True)
    result = PrepareResult(dst=dst_path, total=merged["total"], skipped=merged["total"], ignored=merged["ignored"],
                           complete=True, failures=merged["failures"], failed=len(merged["failures"]),
                           seconds=time.monotonic() - started)
    if verbose:
        print(f"merged {len(loaded)} part(s) into {dst_path / INDEX_JSON}: {merged['images']} images, "
              f"{result.failed} failed", file=sys.stderr)
    if result.failed and not allow_failures:
        raise PrepareFailures(result)
    return result


def _load_json(path: Path, what: str):
    """Parse a JSON file we wrote (part file, index.json); anything unreadable is a named :class:`PrepareError`."""
    try:
        return json.loads(read_file(path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PrepareError(f"{path} is not a valid {what} file ({exc}); it was damaged or not written by "
                           f"funloader prepare") from None


def _load_part(path: Path) -> dict:
    part = _load_json(path, "part")
    problem = _part_problem(part)
    if problem:
        raise PrepareError(f"{path} is not a valid part file: {problem}; refusing to use it")
    return part


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _part_problem(part) -> Optional[str]:
    """What is structurally wrong with a loaded part file (None when it has every field with the right type)."""
    if not isinstance(part, dict) or part.get("format") != MANIFEST_FORMAT:
        return f"not a {MANIFEST_FORMAT!r} manifest"
    job = part.get("job")
    if not (isinstance(job, list) and len(job) == 2 and all(_is_int(v) for v in job) and 0 <= job[0] < job[1]):
        return f"bad job {job!r}"
    settings = part.get("settings")
    if not isinstance(settings, dict) or settings.get("format") not in ("folder", "shards"):
        return "bad settings"
    if settings["format"] == "shards" and not (_is_int(settings.get("images_per_shard"))
                                               and settings["images_per_shard"] >= 1):
        return "bad images_per_shard"
    if not isinstance(part.get("inventory"), str):
        return "bad inventory"
    classes = part.get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return "bad classes"
    if not (isinstance(part.get("ignored"), list) and all(isinstance(v, str) for v in part["ignored"])):
        return "bad ignored list"
    if not (_is_int(part.get("total_images")) and part["total_images"] >= 0):
        return "bad total_images"
    if not isinstance(part.get("stats_requested", []), list):
        return "bad stats_requested"
    units = part.get("units")
    if not isinstance(units, list):
        return "bad units"
    for record in units:
        problem = _record_problem(record, settings["format"], len(classes))
        if problem:
            return problem
    return None


def _record_problem(record, layout: str, class_count: Optional[int]) -> Optional[str]:
    """What is wrong with one finished-unit record (journal line or part file), or None.

    ``class_count``: labels must be ``0..class_count-1`` (``-1`` when 0); None checks only ``>= -1``."""
    if not (isinstance(record, dict) and _is_int(record.get("unit")) and record["unit"] >= 0
            and isinstance(record.get("files"), list) and isinstance(record.get("failures"), list)):
        return f"bad unit record {str(record)[:80]}"
    for entry in record["files"]:
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("key", "path", "source", "sha256"))
                and all(_is_int(entry.get(k)) and entry[k] >= 0 for k in ("width", "height", "bytes"))
                and _is_int(entry.get("label")) and entry["label"] >= -1
                and (class_count is None or (entry["label"] < class_count if class_count else entry["label"] == -1))
                and (class_count is None or not class_count or entry["label"] >= 0)):
            return f"bad file entry {str(entry)[:80]} in unit {record['unit']}"
        problem = _relative_problem(entry["path"])
        if problem:
            return f"the output {entry['path']!r} of unit {record['unit']} {problem}"
    for failure in record["failures"]:
        if not (isinstance(failure, dict) and isinstance(failure.get("source"), str)
                and isinstance(failure.get("reason"), str)):
            return f"bad failure entry {str(failure)[:80]} in unit {record['unit']}"
    if layout == "shards":
        shard = record.get("shard")
        if not (isinstance(shard, dict) and shard.get("name") == f"shard-{record['unit']:06d}.tar"
                and _is_int(shard.get("bytes")) and shard["bytes"] >= 0 and shard.get("count") == len(record["files"])
                and isinstance(shard.get("sha256"), str)):
            return f"bad shard record in unit {record['unit']}"
        if any(entry["path"] != shard["name"] for entry in record["files"]):
            return f"a file of unit {record['unit']} is not in its shard {shard['name']}"
    return None


def _part_outputs(part: dict) -> List[Tuple[str, int]]:
    """``(path relative to the job's folder, bytes)`` of every output file a (checked) part file lists."""
    outputs = []
    for record in part["units"]:
        if "shard" in record:
            outputs.append((record["shard"]["name"], record["shard"]["bytes"]))
        else:
            outputs.extend((entry["path"], entry["bytes"]) for entry in record["files"])
    return outputs


def _relative_problem(name: str) -> Optional[str]:
    """Why ``name`` is not a plain relative output path (None when it is)."""
    components = name.split("/")
    if not name or name.startswith("/") or "\0" in name:
        return "not a relative path"
    if any(c in ("", ".", "..") for c in components):
        return "has an empty, '.' or '..' component"
    if components[0] == STATE_DIR or components[-1] in (INDEX_JSON, INDEX_TSV, FAILURES_TSV):
        return "names funloader's own bookkeeping"
    if len(components) == 1 and components[0].startswith("stats-"):
        return "names funloader's own bookkeeping"
    return None


def _regular_file_inside(base: Path, name: str, checked_dirs: Dict[str, bool]) -> Optional[os.stat_result]:
    """``lstat`` of ``base/name`` when it is a regular file reached without leaving ``base``, else None.

    Every folder between ``base`` and the file must be a real directory (not a symbolic link), so
    the path cannot resolve outside ``base``; ``checked_dirs`` caches folders already seen.
    """
    components = name.split("/")
    prefix = ""
    for component in components[:-1]:
        prefix = f"{prefix}/{component}" if prefix else component
        known = checked_dirs.get(prefix)
        if known is None:
            try:
                mode = os.lstat(base / prefix).st_mode
                known = stat.S_ISDIR(mode)
            except FileNotFoundError:
                known = False
            checked_dirs[prefix] = known
        if not known:
            return None
    try:
        info = os.lstat(base / name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _target_path_problem(base: Path, name: str) -> Optional[str]:
    """Why ``base/name`` cannot be written without leaving ``base`` (a symlinked or non-folder parent)."""
    prefix = base
    for component in name.split("/")[:-1]:
        prefix = prefix / component
        try:
            mode = os.lstat(prefix).st_mode
        except FileNotFoundError:
            return None  # created by the move, inside base
        if not stat.S_ISDIR(mode):
            return f"{prefix} is not a folder (a symbolic link or a file)"
    try:
        if stat.S_ISLNK(os.lstat(base / name).st_mode):
            return f"{base / name} is a symbolic link"
    except FileNotFoundError:
        pass
    return None


def _check_parts(dst: Path, sources: List[Tuple[Path, Path, dict]],
                 gathered_already: Sequence[Path] = ()) -> List[Tuple[Path, Path, List[str]]]:
    """Validate a set of part files completely, before anything is moved; return what must move.

    ``sources`` holds ``(folder holding the job's outputs, part file, part)``.  Raises
    :class:`PrepareError` naming the part file at fault.  Returns ``(part folder, part file, output
    names still to move)`` for every part that lies outside ``dst``.
    """
    first_dir, first_file, first = sources[0]
    count = first["job"][1]
    by_job: Dict[int, Path] = {}
    for _, part_file, part in sources:
        index = part["job"][0]
        if part["job"][1] != count:
            raise PrepareError(f"{part_file} is job {index}/{part['job'][1]} but {first_file} is one of {count} jobs")
        if index in by_job:
            raise PrepareError(f"job {index}/{count} appears twice: {by_job[index]} and {part_file}")
        by_job[index] = part_file
        if (part["settings"] != first["settings"] or part["inventory"] != first["inventory"]
                or part["classes"] != first["classes"] or part["total_images"] != first["total_images"]):
            raise PrepareError(f"job {index}/{count} ({part_file}) used other settings or saw other input files than "
                               f"job {first['job'][0]}/{count} ({first_file}); they cannot be merged")
    missing = sorted(set(range(count)) - set(by_job))
    if missing:
        note = (f"; {', '.join(map(str, gathered_already))} held no part file (already moved?)"
                if gathered_already else "")
        if all(part_dir == dst for part_dir, _, _ in sources):
            note += "; if the jobs wrote to other folders, name them: funloader prepare --merge DST PART_DIR ..."
        raise PrepareError(f"the parts do not form a complete set of {count} jobs (missing --shard "
                           f"{', '.join(f'{i}/{count}' for i in missing)}){note}")
    total = first["total_images"]
    per_unit = first["settings"]["images_per_shard"] if first["settings"]["format"] == "shards" else 1
    unit_count = math.ceil(total / per_unit) if total else 0
    seen_units: Dict[int, Path] = {}
    seen_keys, seen_sources, seen_outputs = set(), set(), {}
    moves = []
    for part_dir, part_file, part in sources:
        index = part["job"][0]
        for record in part["units"]:
            unit = record["unit"]
            if unit >= unit_count or unit % count != index:
                raise PrepareError(f"{part_file} lists unit {unit}, which is not job {index}/{count}'s")
            if unit in seen_units:
                raise PrepareError(f"unit {unit} is listed twice ({seen_units[unit]}, {part_file})")
            seen_units[unit] = part_file
            expected = min(per_unit, total - unit * per_unit)
            if len(record["files"]) + len(record["failures"]) != expected:
                raise PrepareError(f"{part_file}: unit {unit} accounts for {len(record['files']) + len(record['failures'])} "
                                   f"of its {expected} image(s)")
            for entry in record["files"]:
                if entry["key"] in seen_keys or entry["source"] in seen_sources:
                    raise PrepareError(f"{part_file}: image {entry['key']} ({entry['source']!r}) is listed twice")
                seen_keys.add(entry["key"])
                seen_sources.add(entry["source"])
            for failure in record["failures"]:
                if failure["source"] in seen_sources:
                    raise PrepareError(f"{part_file}: input {failure['source']!r} is listed twice")
                seen_sources.add(failure["source"])
        to_move = []
        checked_src: Dict[str, bool] = {}
        checked_dst: Dict[str, bool] = {}
        for name, size in _part_outputs(part):
            problem = _relative_problem(name)
            if problem:
                raise PrepareError(f"{part_file} lists the output {name!r}, which {problem}; refusing to merge")
            if name in seen_outputs:
                raise PrepareError(f"the output {name!r} is listed twice ({seen_outputs[name]}, {part_file})")
            seen_outputs[name] = part_file
            problem = _target_path_problem(dst, name)
            if problem:
                raise PrepareError(f"{part_file} lists {name!r}, but {problem}; refusing to write through it")
            here = _regular_file_inside(part_dir, name, checked_src)
            if part_dir == dst:
                if here is None or here.st_size != size:
                    raise PrepareError(f"{part_file} lists {dst / name} ({size} bytes), which is missing, not a "
                                       f"regular file or of another size; re-run job {index}/{count}")
                continue
            there = _regular_file_inside(dst, name, checked_dst)
            if here is not None and here.st_size == size:
                if there is not None and not _same_bytes(part_dir / name, dst / name):
                    raise PrepareError(f"{dst / name} already exists with other contents; it would be overwritten "
                                       f"by {part_dir / name} (listed in {part_file})")
                to_move.append(name)
            elif here is None and there is not None and there.st_size == size:
                pass  # moved by an earlier merge that was interrupted
            else:
                raise PrepareError(f"{part_file} lists {part_dir / name} ({size} bytes), which is missing, not a "
                                   f"regular file inside {part_dir}, or of another size; re-run job {index}/{count} "
                                   f"there")
        if part_dir != dst:
            moves.append((part_dir, part_file, to_move))
    if len(seen_units) != unit_count:
        raise PrepareError(f"the parts account for {len(seen_units)} of {unit_count} work units; re-run the "
                           f"unfinished jobs")
    return moves


def _same_bytes(a: Path, b: Path) -> bool:
    """Whether two regular files hold the same bytes (never opening a FIFO or device in their place)."""
    no_cap = 1 << 62  # shards may exceed the input cap
    first, size = open_regular(a, limit=no_cap)
    try:
        second, other_size = open_regular(b, limit=no_cap)
        try:
            offset = 0
            while size == other_size and offset < size:
                chunk = os.pread(first, 1 << 20, offset)
                if not chunk or chunk != os.pread(second, len(chunk), offset):
                    return False
                offset += len(chunk)
            return size == other_size
        finally:
            os.close(second)
    finally:
        os.close(first)


def _move_file(source: Path, target: Path) -> None:
    """Move one checked file; the target appears whole or not at all (a copy across file systems is
    written under a temporary name first), and an identical target left by an interrupted move is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = target.with_name(f".{target.name}.merge-tmp.{os.getpid()}")
    try:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.unlink(source)


def _remove_empty_dirs(base: Path, names) -> None:
    """After a gather: remove the folders under ``base`` that the moved files left empty."""
    folders = {str(Path(name).parent) for name in names} - {"."}
    for folder in sorted(folders, key=lambda f: -f.count("/")):
        path = base / folder
        while path != base:
            try:
                path.rmdir()
            except OSError:
                break
            path = path.parent


def _merge_parts(dst: Path, parts: List[dict], *, stats: Optional[Sequence[str]], progress: bool,
                 checked: bool = False) -> dict:
    """Write the final manifests of ``dst`` from a complete set of parts (checked by :func:`_check_parts`
    unless ``checked``), then remove the bookkeeping folder."""
    if not checked:
        state = _state_dir(dst)
        _check_parts(dst, [(dst, state / f"part-{_job_name(part['job'])}.json", part) for part in parts])
    first = parts[0]
    units = sorted((record for part in parts for record in part["units"]), key=lambda r: int(r["unit"]))
    files = sorted((entry for record in units for entry in record["files"]), key=lambda e: e["key"])
    failures = sorted((f for record in units for f in record["failures"]), key=lambda f: f["source"])
    settings = first["settings"]
    classes = first["classes"]
    index = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "settings": settings,
             "inventory": first["inventory"], "classes": classes,
             "counts": {"images": len(files), "failed": len(failures), "ignored": len(first["ignored"])},
             "files": files}
    if settings["format"] == "shards":
        index["shards"] = [record["shard"] for record in units]
        for shard in index["shards"]:  # DALI's readers.webdataset index files, when DALI is installed
            write_dali_index(dst / shard["name"])
    if stats is None:  # what the jobs asked for
        stats = [mode for mode in STATS_MODES if any(mode in (part.get("stats_requested") or []) for part in parts)]
    stats_files = _write_stats(dst, index, stats, progress)
    if stats_files:
        index["stats"] = stats_files
    rows = [TSV_COLUMNS]
    for entry in files:
        class_name = classes[entry["label"]] if entry["label"] >= 0 else ""
        rows.append((entry["key"], entry["path"], entry["source"], entry["label"], class_name,
                     entry["width"], entry["height"], entry["bytes"], entry["sha256"]))
    _write_atomic(dst / INDEX_TSV, _tsv_bytes(rows))
    _write_atomic(dst / FAILURES_TSV, _tsv_bytes([("source", "reason")] + [(f["source"], f["reason"]) for f in failures]))
    _write_atomic(dst / INDEX_JSON, _json_bytes(index))  # last: its presence marks a finished dataset
    shutil.rmtree(_state_dir(dst), ignore_errors=True)
    return {"failures": failures, "total": first["total_images"], "images": len(files),
            "ignored": len(first["ignored"])}


# --------------------------------------------------------------------------------------------- stats

STATS_MODES = ("dequantized", "raw")


def _stats_modes(stats) -> Tuple[str, ...]:
    """``False``/``None`` -> (); ``True``/``"dequantized"`` -> loader default; ``"raw"``; ``"both"``."""
    if stats is None or stats is False:
        return ()
    if stats is True:
        return ("dequantized",)
    if isinstance(stats, (list, tuple)):
        modes = tuple(stats)
    else:
        modes = STATS_MODES if stats == "both" else (stats,)
    for mode in modes:
        if mode not in STATS_MODES:
            raise PrepareError(f"stats must be true, 'dequantized', 'raw' or 'both', got {stats!r}")
    return tuple(m for m in STATS_MODES if m in modes)


def _write_stats(dst: Path, index: dict, modes: Sequence[str], progress: bool) -> List[str]:
    """Run :func:`funloader.compute_stats` over the outputs for each mode; returns the file names written.

    Same files and format as ``funloader stats DST``: ``stats-dequantized.json`` / ``stats-raw.json``
    (192 per-channel means/stds over the size grid), found by ``funloader.load_stats(DST)``.
    """
    if not modes or not index["files"]:
        return []
    from .dataset import DCTImageFolder
    from .stats import compute_stats, stats_filename

    if index["settings"]["format"] == "shards":
        dataset = DCTImageFolder([str(dst / shard["name"]) for shard in index["shards"] if shard["count"]])
    else:
        dataset = DCTImageFolder([(str(dst / entry["path"]), entry["label"]) for entry in index["files"]])
    settings = index["settings"]
    if settings["crop"] == "center":
        grid = -(-settings["size"] // 8)
    else:  # sizes vary: the centre of the model's input size (224 px), as a centre-cropped evaluation reads it
        grid = min(EVAL_SIZE // 8, -(-(settings["resize_shorter"] or settings["size"]) // 8))
    names = []
    for mode in modes:
        name = stats_filename(mode == "dequantized")
        compute_stats(dataset, dequantize=mode == "dequantized", size=grid, output=dst / name, progress=progress)
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="funloader prepare",
        description="Turn an image folder (ImageFolder layout or flat) into FUN-ready JPEGs: "
                    "RGB, resized + centre-cropped, re-encoded at the chosen quality and subsampling.",
        epilog="Distributed: run 'funloader prepare SRC DST --shard I/N' for I = 0..N-1 (same DST on a "
               "shared filesystem, or different DSTs), then 'funloader prepare --merge DST [PART_DST ...]'. "
               "Re-running an interrupted command resumes it.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="SRC DST, or with --merge: DST [PART_DST ...]")
    parser.add_argument("--size", type=int, default=None,
                        help=f"SIZE x SIZE centre crops, for evaluation sets (e.g. 224). Without it: a training "
                             f"set, aspect ratio kept, shorter side --resize-shorter (default {TRAIN_SHORTER_SIDE}, "
                             f"never enlarged)")
    parser.add_argument("--resize-shorter", type=int, default=None,
                        help="shorter side in pixels (with --size: before the centre crop, default --size; "
                             "--resize-shorter 256 --size 224 is Resize(256) + CenterCrop(224))")
    parser.add_argument("--crop", choices=("center", "none"), default=None,
                        help="center (default with --size) or none (default without)")
    parser.add_argument("--quality", type=int, default=100, help="JPEG quality 1..100 (default 100, as in the paper)")
    parser.add_argument("--subsampling", choices=("420", "444"), default="420",
                        help="chroma subsampling (420: paper; 444: the authors' released models)")
    parser.add_argument("--progressive", action="store_true", help="write progressive JPEGs")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    parser.add_argument("--format", choices=("folder", "shards"), default="folder")
    parser.add_argument("--shard-size", default="1GB",
                        help="tar size for --format shards: bytes like 1GB (turned into a fixed image count) "
                             "or an image count like 5000")
    parser.add_argument("--no-shuffle", action="store_true", help="shards: keep sorted order instead of mixing classes")
    parser.add_argument("--shard", default=None, metavar="I/N", help="process only job I of N (0-based)")
    parser.add_argument("--merge", action="store_true", help="join the parts of a --shard I/N run into DST")
    parser.add_argument("--stats", action="store_true",
                        help="also write the 192 per-channel means/stds the loader normalises with (as 'funloader stats')")
    parser.add_argument("--stats-mode", choices=("dequantized", "raw", "both"), default="dequantized",
                        help="with --stats: stats-dequantized.json (default, the loader's default input), "
                             "stats-raw.json (raw quantised integers, the paper's released models) or both")
    parser.add_argument("--allow-failures", action="store_true", help="exit 0 even if some inputs failed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """CLI entry point; returns 0 on success, 1 when inputs failed (without --allow-failures), 2 on usage errors."""
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        if args.merge:
            merge(args.paths[0], args.paths[1:], stats=args.stats_mode if args.stats else None,
                  allow_failures=args.allow_failures, progress=not args.no_progress)
        else:
            if len(args.paths) != 2:
                parser.error("expected SRC DST (or --merge DST [PART_DST ...])")
            prepare(args.paths[0], args.paths[1], size=args.size, resize_shorter=args.resize_shorter, crop=args.crop,
                    quality=args.quality, subsampling=args.subsampling, progressive=args.progressive,
                    workers=args.workers, format=args.format, shard_size=args.shard_size,
                    shuffle=not args.no_shuffle, shard=args.shard, stats=args.stats_mode if args.stats else False,
                    allow_failures=args.allow_failures, progress=not args.no_progress)
    except PrepareFailures as exc:
        print(f"funloader prepare: {exc}", file=sys.stderr)
        return 1
    except PrepareError as exc:
        print(f"funloader prepare: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
