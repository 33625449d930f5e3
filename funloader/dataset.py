"""``DCTImageFolder``: torchvision's ``ImageFolder`` conventions, returning DCT coefficients.

Sources it accepts (``root``):

- an ImageFolder directory ``root/<class>/**/<file>``: classes are the sorted sub-folder names,
  files are found with ``os.walk`` (sorted, symlinks followed) and filtered by extension
  (``IMG_EXTENSIONS``, case-insensitive, so ImageNet's ``.JPEG`` is included) — exactly the
  ``samples`` list torchvision builds for the same folder;
- a directory written by ``funloader prepare`` (its ``index.json`` lists files or ``.tar`` shards);
- WebDataset-style ``.tar`` shards (``<key>.jpg`` + ``<key>.cls``): a directory of ``*.tar`` files,
  one ``.tar`` path, or a list of them;
- a list of ``(path, label)`` pairs.

Whether a file is a JPEG is decided by its bytes (the SOI marker ``FF D8 FF``), not its name: a PNG
named ``.JPEG`` raises ``JPEGDecodeError`` naming the file and the format it looks like; CMYK JPEGs
raise ``UnsupportedJPEGError``. With ``on_error="skip"`` a bad sample is replaced by the next good
one in index order (deterministic, so batch sizes stay fixed), counted in ``skipped`` and logged
once per file (logger ``funloader.dataset``).
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .codec import read_batch, read_fun
from .errors import JPEGDecodeError
from .files import FileRefusedError, Listing, read_file, read_head, walk_files

__all__ = ["DCTImageFolder", "IMG_EXTENSIONS", "find_classes", "make_dataset", "sniff_format", "read_shard_index"]

logger = logging.getLogger("funloader.dataset")

#: torchvision's ``IMG_EXTENSIONS`` (matched case-insensitively, so ``.JPEG`` is included).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
]


def sniff_format(head: bytes) -> Optional[str]:
    """``None`` when ``head`` starts with a JPEG SOI marker (``FF D8 FF``), else a short description
    of what the bytes look like (``"PNG"``, ``"GIF"``, ``"WebP"``, ``"empty file"``, ...)."""
    head = bytes(head[:16])
    if head[:3] == b"\xff\xd8\xff":
        return None
    if not head:
        return "empty file"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return "unknown format (first bytes " + head[:8].hex(" ") + ")"


def _not_jpeg_error(head: bytes, name: str) -> Optional[JPEGDecodeError]:
    kind = sniff_format(head)
    if kind is None:
        return None
    return JPEGDecodeError(f"not a JPEG file: no SOI marker FF D8 FF, looks like {kind}", name)


def find_classes(directory: Union[str, os.PathLike]) -> Tuple[List[str], Dict[str, int]]:
    """Class folders of an ImageFolder root, as torchvision: sorted sub-directory names."""
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{directory}: no class folders (expected root/<class>/<image>)")
    return classes, {name: index for index, name in enumerate(classes)}


def make_dataset(directory, class_to_idx: Dict[str, int], extensions: Sequence[str] = IMG_EXTENSIONS,
                 is_valid_file: Optional[Callable[[str], bool]] = None, allow_empty: bool = False) -> List[Tuple[str, int]]:
    """``(path, class_index)`` pairs in torchvision's order (classes sorted, folders then names sorted).

    Folders are listed with :func:`funloader.files.walk_files` (links followed once, no loops, FIFOs
    and devices never opened); what could not be listed is reported in a warning."""
    samples, listing = _make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty)
    _warn_listing(directory, listing, stacklevel=3)
    return samples


def _warn_listing(directory, listing: Listing, stacklevel: int = 4) -> None:
    """Warn (pointing at the caller's caller) about what a folder walk could not list."""
    problems = listing.problems()
    if problems:
        warnings.warn(f"funloader: {directory}: not every entry was listed: {problems}", stacklevel=stacklevel)


def _make_dataset(directory, class_to_idx: Dict[str, int], extensions: Sequence[str],
                  is_valid_file: Optional[Callable[[str], bool]], allow_empty: bool) -> Tuple[List[Tuple[str, int]], Listing]:
    """``make_dataset`` without the warning: also returns what the walk could not list."""
    directory = os.path.expanduser(os.fspath(directory))
    if is_valid_file is None:
        lowered = tuple(ext.lower() for ext in extensions)

        def is_valid_file(path: str) -> bool:
            return path.lower().endswith(lowered)

    samples: List[Tuple[str, int]] = []
    problems = Listing()
    empty = []
    for class_name in sorted(class_to_idx):
        class_index = class_to_idx[class_name]
        class_dir = os.path.join(directory, class_name)
        if not os.path.isdir(class_dir):
            continue
        try:
            listing = walk_files(class_dir)
        except OSError as exc:
            listing = Listing(unreadable=[(class_dir, exc.strerror or str(exc))])
        problems.unreadable += listing.unreadable
        problems.not_regular += listing.not_regular
        problems.links_skipped += listing.links_skipped
        found = 0
        for path in listing.files:
            if is_valid_file(path):
                samples.append((path, class_index))
                found += 1
        if found == 0:
            empty.append(class_name)
    if empty and not allow_empty:
        unreadable = f"; {problems.problems()}" if problems.problems() else ""
        raise FileNotFoundError(f"{directory}: no valid image file in class folder(s) {', '.join(empty)}; "
                                f"extensions: {', '.join(extensions)}{unreadable}")
    return samples, problems


def read_shard_index(shard: Union[str, os.PathLike]) -> List[Tuple[str, int, int, Optional[int]]]:
    """Members of one WebDataset ``.tar`` shard: ``[(key, data_offset, size, label), ...]`` in tar order
    for every ``<key>.jpg``/``.jpeg`` member; ``label`` from ``<key>.cls`` (ASCII integer) or None.
    The key is the member name up to the first dot of its last path component."""
    samples: Dict[str, List] = {}
    order: List[str] = []
    try:
        with tarfile.open(shard, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                ext = ext.lower()
                if key not in samples and ext in ("jpg", "jpeg", "cls"):
                    samples[key] = [None, None]
                    order.append(key)
                if ext in ("jpg", "jpeg"):
                    samples[key][0] = (member.offset_data, member.size)
                elif ext == "cls":
                    text = archive.extractfile(member).read().decode("ascii", "replace").strip()
                    try:
                        label = int(text)
                    except ValueError:
                        raise ValueError(f"{shard}: member {member.name} holds {text[:20]!r}, not a class index") from None
                    samples[key][1] = label
    except tarfile.TarError as exc:
        raise ValueError(f"{shard}: not a readable tar shard ({exc})") from exc
    out = []
    for key in order:
        location, label = samples[key]
        if location is not None:  # a .cls without its image is ignored
            out.append((key, location[0], location[1], label))
    return out


class _ShardSource:
    """Lazily read bytes of a shard member with ``os.pread``; one descriptor per process and shard."""

    __slots__ = ("shard", "offset", "size", "name")

    def __init__(self, shard: str, offset: int, size: int, name: str):
        self.shard, self.offset, self.size, self.name = shard, offset, size, name


_FD_CACHE: Dict[Tuple[int, str], int] = {}
_FD_LOCK = threading.Lock()


def _read_member(source: _ShardSource) -> bytes:
    key = (os.getpid(), source.shard)
    with _FD_LOCK:
        fd = _FD_CACHE.get(key)
        if fd is None:
            fd = os.open(source.shard, os.O_RDONLY)
            _FD_CACHE[key] = fd
    data = os.pread(fd, source.size, source.offset)
    if len(data) != source.size:
        raise JPEGDecodeError(f"shard member truncated ({len(data)} of {source.size} bytes)", source.name)
    return data


def _is_shard_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.tar")) and not any(p.is_dir() for p in path.iterdir() if not p.name.startswith("."))


class DCTImageFolder(torch.utils.data.Dataset):
    """A map-style dataset of JPEGs returning ``(coefficients, label)``.

    ``coefficients``: the FUN input of the whole image, a ``(192, ceil(H/8), ceil(W/8))`` tensor,
    float32 dequantised coefficients (``dequantize=True``, the default) or int16 raw quantised ones
    (``dequantize=False``, the paper's released models); then ``transform`` (e.g.
    ``funloader.transforms.CenterCrop(28)`` so that a ``DataLoader`` can stack items). ``label``: the
    class index (``target_transform`` applied), -1 for unlabelled data.

    Attributes (as torchvision): ``classes``, ``class_to_idx``, ``samples`` (``(path, label)``; for
    shards ``"shard.tar::key"``), ``targets``, ``root``. Also ``skipped`` (replacements made under
    ``on_error="skip"``) and ``bad_samples`` (index -> reason). In ``DataLoader`` worker processes
    each worker keeps its own counts.
    """

    def __init__(self, root, transform: Optional[Callable] = None, target_transform: Optional[Callable] = None, *,
                 strict: bool = True, on_error: str = "raise", dequantize: bool = True,
                 extensions: Sequence[str] = IMG_EXTENSIONS, is_valid_file: Optional[Callable[[str], bool]] = None,
                 classes: Optional[Sequence[str]] = None, allow_empty: bool = False):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.transform = transform
        self.target_transform = target_transform
        self.strict = bool(strict)
        self.on_error = on_error
        self.dequantize = bool(dequantize)
        self.skipped = 0
        self.bad_samples: Dict[int, str] = {}
        self._lock = threading.Lock()
        self._sources: List[Union[str, _ShardSource]] = []
        #: what the folder walk could not list (unreadable sub-folders, FIFOs/devices, looping links)
        self.walk_problems = Listing()
        self.root: Optional[str] = None
        self.shards: List[str] = []
        if isinstance(root, (list, tuple)) and root and all(isinstance(r, (str, os.PathLike)) for r in root) \
                and all(os.fspath(r).endswith(".tar") for r in root):
            self._load_shards([os.fspath(r) for r in root], classes)
            self.root = os.path.dirname(os.path.abspath(self.shards[0]))
        elif isinstance(root, (list, tuple)):
            self._load_pairs(root, classes)
        else:
            path = Path(os.path.expanduser(os.fspath(root)))
            self.root = str(path)
            if path.is_file() and path.suffix == ".tar":
                self._load_shards([str(path)], classes)
            elif not path.is_dir():
                raise FileNotFoundError(f"{path}: no such directory, .tar shard or index")
            elif (path / "index.json").is_file() and self._load_index(path, classes):
                pass
            elif _is_shard_dir(path):
                self._load_shards(sorted(str(p) for p in path.glob("*.tar")), classes)
            else:
                found, self.class_to_idx = find_classes(path)
                self.classes = list(found)
                self.samples, self.walk_problems = _make_dataset(path, self.class_to_idx, extensions, is_valid_file,
                                                                 allow_empty)
                _warn_listing(path, self.walk_problems, stacklevel=3)
                self._sources = [p for p, _ in self.samples]
        if not self.samples and not allow_empty:
            raise FileNotFoundError(f"{root}: no images found")
        self.targets = [label for _, label in self.samples]
        self.imgs = self.samples

    # ------------------------------------------------------------------ construction
    def _set_classes(self, classes: Optional[Sequence[str]], labels: Sequence[int]):
        if classes is None:
            top = max((label for label in labels if label is not None and label >= 0), default=-1)
            classes = [str(i) for i in range(top + 1)]
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def _load_pairs(self, pairs, classes):
        samples = []
        for entry in pairs:
            try:
                path, label = entry
            except (TypeError, ValueError):
                raise ValueError(f"file list entries must be (path, label) pairs, got {entry!r}") from None
            samples.append((os.fspath(path), int(label)))
        self.samples = samples
        self._sources = [p for p, _ in samples]
        self._set_classes(classes, [l for _, l in samples])

    def _load_shards(self, shards: Sequence[str], classes, labels_by_key: Optional[Dict[str, int]] = None):
        self.shards = list(shards)
        samples, sources = [], []
        for shard in self.shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"{shard}: shard not found")
            for key, offset, size, label in read_shard_index(shard):
                if label is None and labels_by_key is not None:
                    label = labels_by_key.get(key)
                name = f"{shard}::{key}"
                samples.append((name, -1 if label is None else int(label)))
                sources.append(_ShardSource(shard, offset, size, name))
        self.samples = samples
        self._sources = sources
        self._set_classes(classes, [l for _, l in samples])

    def _load_index(self, path: Path, classes) -> bool:
        """A ``funloader prepare`` output: folder layout (files listed) or shards. False: not usable."""
        try:
            index = json.loads((path / "index.json").read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(index, dict):
            return False
        index_classes = classes if classes is not None else index.get("classes")
        shards = index.get("shards")
        if shards:
            names = [s["name"] if isinstance(s, dict) else str(s) for s in shards]
            labels = {str(f["key"]): int(f["label"]) for f in index.get("files", []) if "key" in f and "label" in f}
            self._load_shards([str(path / name) for name in names], index_classes or None, labels)
            return True
        files = index.get("files")
        if not files:
            return False
        self.samples = [(str(path / f["path"]), int(f.get("label", -1))) for f in files]
        self._sources = [p for p, _ in self.samples]
        self._set_classes(index_classes or None, [l for _, l in self.samples])
        return True

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        """The path (or ``shard.tar::key``) of sample ``index``, as used in error messages."""
        return self.samples[index][0]

    def source(self, index: int):
        """What ``read_fun``/``read_batch`` take for sample ``index``: a path, or the bytes of a shard member."""
        source = self._sources[index]
        return _read_member(source) if isinstance(source, _ShardSource) else source

    def sources(self, indices: Sequence[int]) -> list:
        return [self.source(int(i)) for i in indices]

    def describe_error(self, index: int, error: BaseException) -> BaseException:
        """A clear error for sample ``index``: names the file; says what a non-JPEG looks like."""
        name = self.sample_name(index)
        try:
            source = self._sources[index]
            if isinstance(source, _ShardSource):
                head = _read_member(source)[:16]
            else:
                head = read_head(source, 16)
            better = _not_jpeg_error(head, name)
            if better is not None:
                return better
        except OSError:
            pass
        if isinstance(error, JPEGDecodeError) and error.filename is None:
            return type(error)(error.reason, name)
        return error

    def _decode(self, index: int) -> np.ndarray:
        name = self.sample_name(index)
        source = self._sources[index]
        try:
            data = _read_member(source) if isinstance(source, _ShardSource) else read_file(source)
        except FileRefusedError as exc:
            raise JPEGDecodeError(exc.reason, name) from None
        except OSError as exc:
            raise JPEGDecodeError(f"cannot read: {exc.strerror or exc}", name) from exc
        problem = _not_jpeg_error(data[:16], name)
        if problem is not None:
            raise problem
        try:
            return read_fun(data, dequantize=self.dequantize, strict=self.strict)
        except JPEGDecodeError as exc:
            raise type(exc)(exc.reason, name) from None

    def mark_bad(self, index: int, error: BaseException) -> None:
        """Record a bad sample (logged once per file) and count one replacement."""
        with self._lock:
            self.skipped += 1
            if index not in self.bad_samples:
                self.bad_samples[index] = str(error)
                logger.warning("funloader: skipping bad sample %d: %s", index, error)

    def replacement_candidates(self, index: int):
        """Indices tried, in order, to replace a bad sample ``index``: the following ones, cyclically."""
        count = len(self.samples)
        for step in range(1, count):
            candidate = (index + step) % count
            if candidate not in self.bad_samples:
                yield candidate

    def load(self, index: int) -> Tuple[np.ndarray, int]:
        """Decode sample ``index`` (with the ``on_error`` policy): ``(coefficients, label)``, numpy."""
        try:
            return self._decode(index), self.targets[index]
        except JPEGDecodeError as exc:
            if self.on_error == "raise":
                raise
            self.mark_bad(index, exc)
        for candidate in self.replacement_candidates(index):
            try:
                return self._decode(candidate), self.targets[candidate]
            except JPEGDecodeError as exc:
                with self._lock:
                    if candidate not in self.bad_samples:
                        self.bad_samples[candidate] = str(exc)
                        logger.warning("funloader: skipping bad sample %d: %s", candidate, exc)
        raise JPEGDecodeError("no decodable sample left in the dataset", self.root)

    def __getitem__(self, index: int):
        coefficients, label = self.load(int(index))
        tensor = torch.from_numpy(coefficients)
        if self.transform is not None:
            tensor = self.transform(tensor)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return tensor, label

    def __repr__(self) -> str:
        kind = "shards" if self.shards else "files"
        return (f"DCTImageFolder(root={self.root!r}, {len(self)} samples from {kind}, {len(self.classes)} classes, "
                f"dequantize={self.dequantize}, on_error={self.on_error!r}, transform={self.transform!r})")

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def decode_into(dataset: DCTImageFolder, indices: Sequence[int], out, *, threads: Optional[int] = None,
                layout: Optional[dict] = None, dequantize: Optional[bool] = None, strict: Optional[bool] = None,
                on_error: Optional[str] = None):
    """Decode samples ``indices`` of ``dataset`` into ``out`` ``(len(indices), 192, H8, W8)`` (int16,
    or float32 when dequantized) with ``read_batch`` (centre crop / zero padding to the grid),
    applying the error policy. Returns the labels (list of int) actually placed, which differ from
    ``dataset.targets[indices]`` where a bad sample was replaced. ``layout``: per-item
    ``row_maps``/``col_maps``/``gain`` arrays (and a shared ``bias``) passed on to ``read_batch``.
    ``dequantize``, ``strict``, ``on_error``: the caller's settings (default: the dataset's; the
    dataset is not changed)."""
    indices = [int(i) for i in indices]
    layout = layout or {}
    dequantize = dataset.dequantize if dequantize is None else bool(dequantize)
    strict = dataset.strict if strict is None else bool(strict)
    on_error = dataset.on_error if on_error is None else on_error

    def item_layout(slot):
        return {key: (value if key == "bias" or value is None else value[slot:slot + 1]) for key, value in layout.items()}

    errors = read_batch(dataset.sources(indices), out, threads=threads, dequantize=dequantize, strict=strict,
                        **layout)
    labels = [dataset.targets[i] for i in indices]
    for slot, error in enumerate(errors):
        if error is None:
            continue
        index = indices[slot]
        error = dataset.describe_error(index, error)
        if on_error == "raise":
            raise error
        dataset.mark_bad(index, error)
        for candidate in dataset.replacement_candidates(index):
            retry = read_batch([dataset.source(candidate)], out[slot:slot + 1], threads=1,
                               dequantize=dequantize, strict=strict, **item_layout(slot))[0]
            if retry is None:
                labels[slot] = dataset.targets[candidate]
                break
            retry = dataset.describe_error(candidate, retry)
            with dataset._lock:
                if candidate not in dataset.bad_samples:
                    dataset.bad_samples[candidate] = str(retry)
                    logger.warning("funloader: skipping bad sample %d: %s", candidate, retry)
        else:
            raise JPEGDecodeError("no decodable sample left in the dataset", dataset.root)
    return labels
