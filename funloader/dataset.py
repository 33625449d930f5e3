"""``DCTImageFolder``: torchvision's ``ImageFolder`` conventions, returning DCT coefficients.

Sources it accepts (``root``):

- an ImageFolder directory ``root/<class>/**/<file>``: classes are the sorted sub-folder names,
  files are found with :func:`funloader.files.walk_files` (sorted as ``os.walk``, links followed
  once, FIFOs and devices never opened) and filtered by extension
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
import operator
import os
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .codec import read_batch, read_fun, read_sizes
from .errors import JPEGDecodeError, UsageError, user_stacklevel
from .shards import ShardError, read_member, read_shard_index
from .files import FileRefusedError, Listing, is_ancestor_link, read_file, read_head, walk_files

__all__ = ["DCTImageFolder", "IMG_EXTENSIONS", "find_classes", "make_dataset", "sniff_format", "read_shard_index",
           "MAX_CLASSES"]

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
    """Class folders of an ImageFolder root, as torchvision: sorted sub-directory names. A link to
    the root itself or to a folder above it (a loop, e.g. ``root/all -> .``) is not a class: it is
    left out with a warning."""
    classes, loops = [], []
    for entry in os.scandir(directory):
        if entry.is_dir():
            if entry.is_symlink() and is_ancestor_link(entry.path, os.path.join(os.fspath(directory), "")):
                loops.append(entry.path)
            else:
                classes.append(entry.name)
    classes.sort()
    if loops:
        _warn_listing(directory, Listing(links_skipped=sorted(loops)))
    if not classes:
        raise FileNotFoundError(f"{directory}: no class folders (expected root/<class>/<image>)")
    return classes, {name: index for index, name in enumerate(classes)}


def make_dataset(directory, class_to_idx: Dict[str, int], extensions: Sequence[str] = IMG_EXTENSIONS,
                 is_valid_file: Optional[Callable[[str], bool]] = None, allow_empty: bool = False) -> List[Tuple[str, int]]:
    """``(path, class_index)`` pairs in torchvision's order (classes sorted, folders then names sorted).

    Folders are listed with :func:`funloader.files.walk_files` (links followed once, no loops, FIFOs
    and devices never opened); what could not be listed is reported in a warning."""
    samples, listing = _make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty)
    _warn_listing(directory, listing)
    return samples


def _as_label(value, where) -> int:
    """A class index from a file list or index (an integer, or a string of one), else UsageError."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise UsageError(f"{where}: {value!r} is not a class index (an integer)") from None


def _warn_listing(directory, listing: Listing) -> None:
    """Warn (pointing at the user's line) about what a folder walk could not list."""
    problems = listing.problems()
    if problems:
        warnings.warn(f"funloader: {directory}: not every entry was listed: {problems}", stacklevel=user_stacklevel())


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


class _ShardSource:
    """Where sample bytes live inside a shard (read lazily with :func:`funloader.shards.read_member`)."""

    __slots__ = ("shard", "offset", "size", "name")

    def __init__(self, shard: str, offset: int, size: int, name: str):
        self.shard, self.offset, self.size, self.name = shard, offset, size, name

    def read(self) -> bytes:
        return read_member(self.shard, self.offset, self.size, name=self.name)


#: What a bad sample can raise while it is read or decoded (``on_error="skip"`` replaces it).
SAMPLE_ERRORS = (JPEGDecodeError, OSError, MemoryError, ShardError)

#: Largest class index accepted when the class names are not given (``classes=``, ``index.json``):
#: the loader builds one name per index up to the largest, so ``300000000`` in a ``.cls`` file
#: would have built 300 million names.
MAX_CLASSES = 1 << 20


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
                _warn_listing(path, self.walk_problems)
                self._sources = [p for p, _ in self.samples]
        if not self.samples and not allow_empty:
            raise FileNotFoundError(f"{root}: no images found")
        self.targets = [label for _, label in self.samples]
        self.imgs = self.samples

    # ------------------------------------------------------------------ construction
    def _set_classes(self, classes: Optional[Sequence[str]], labels: Sequence[int], where):
        """Set ``classes`` after checking every label against them (or against ``MAX_CLASSES`` when
        the names are not given and are made up as ``"0"``, ``"1"``, ...). -1 means unlabelled."""
        limit = len(classes) if classes is not None else MAX_CLASSES
        for position, label in enumerate(labels):
            if label < -1 or label >= limit:
                name = self.samples[position][0] if position < len(self.samples) else f"item {position}"
                if label < -1:
                    why = "a class index must be non-negative (-1: unlabelled)"
                elif classes is not None:
                    why = f"there are {len(classes)} classes"
                else:
                    why = (f"above {MAX_CLASSES - 1}, the largest class index accepted without class names; "
                           f"pass classes= (or list them in index.json) for more")
                raise UsageError(f"{where}: sample {name} has label {label}: {why}")
        if classes is None:
            top = max(labels, default=-1)
            classes = [str(i) for i in range(top + 1)]
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def _load_pairs(self, pairs, classes):
        samples = []
        for entry in pairs:
            try:
                path, label = entry
            except (TypeError, ValueError):
                raise UsageError(f"file list entries must be (path, label) pairs, got {entry!r}") from None
            samples.append((os.fspath(path), _as_label(label, f"the label of {os.fspath(path)}")))
        self.samples = samples
        self._sources = [p for p, _ in samples]
        self._set_classes(classes, [label for _, label in samples], "file list")

    def _load_shards(self, shards: Sequence[str], classes, labels_by_key: Optional[Dict[str, int]] = None,
                     where="shards") -> List[int]:
        """Samples of ``shards``; returns how many each shard holds."""
        self.shards = list(shards)
        samples, sources, counts = [], [], []
        for shard in self.shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"{shard}: shard not found")
            members = read_shard_index(shard)
            counts.append(len(members))
            for key, offset, size, label in members:
                if label is None and labels_by_key is not None:
                    label = labels_by_key.get(key)
                name = f"{shard}::{key}"
                samples.append((name, -1 if label is None else int(label)))
                sources.append(_ShardSource(shard, offset, size, name))
        self.samples = samples
        self._sources = sources
        self._set_classes(classes, [label for _, label in samples], where)
        return counts

    def _load_index(self, path: Path, classes) -> bool:
        """A ``funloader prepare`` output: folder layout (files listed) or shards. False: an
        ``index.json`` that lists neither (not ours: the folder is read as an ImageFolder)."""
        where = path / "index.json"
        try:
            index = json.loads(read_file(where, limit=1 << 30))
        except ValueError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(index, dict) or not (index.get("shards") or index.get("files")):
            return False
        index_classes = classes if classes is not None else index.get("classes")
        if index_classes is not None and (not isinstance(index_classes, list)
                                          or not all(isinstance(c, str) for c in index_classes)):
            raise UsageError(f"{where}: 'classes' must be a list of names")
        try:
            shards = index.get("shards")
            if shards:
                names = [str(s["name"]) if isinstance(s, dict) else str(s) for s in shards]
                labels = {str(f["key"]): _as_label(f["label"], f"{where}: label of {f['key']}")
                          for f in index.get("files", []) if "key" in f and "label" in f}
                counts = self._load_shards([str(path / name) for name in names], index_classes or None, labels, where)
                self._check_shard_counts(where, shards, counts)
                return True
            files = index["files"]
            self.samples = [(str(path / f["path"]), _as_label(f.get("label", -1), f"{where}: label of {f['path']}"))
                            for f in files]
        except (KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{where}: malformed funloader index ({type(exc).__name__}: {exc})") from None
        self._sources = [p for p, _ in self.samples]
        self._set_classes(index_classes or None, [label for _, label in self.samples], where)
        return True

    def _check_shard_counts(self, where, shards, counts) -> None:
        """Compare each shard's samples (and size) with what ``index.json`` records: a shard cut at a
        member boundary used to lose samples silently. An error, or a warning under ``on_error="skip"``."""
        problems = []
        for entry, found in zip(shards, counts):
            if not isinstance(entry, dict):
                continue
            shard = str(where.parent / str(entry["name"]))
            expected, size = entry.get("count"), entry.get("bytes")
            if expected is not None and int(expected) != found:
                problems.append(f"{shard} holds {found} samples, the index records {expected}")
            elif size is not None and (actual := os.path.getsize(shard)) != int(size):
                problems.append(f"{shard} is {actual} bytes, the index records {size}")
        if not problems:
            return
        message = (f"{where}: {len(problems)} shard(s) do not match the index (truncated or replaced?): "
                   + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
        if self.on_error != "skip":
            raise UsageError(message + ". Re-create them, or pass on_error='skip' (DCTImageFolder, DCTLoader) "
                                       "to load what is there")
        logger.warning(message)
        warnings.warn(message + f"; loading the {len(self.samples)} samples that are there", stacklevel=user_stacklevel())

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        """The path (or ``shard.tar::key``) of sample ``index``, as used in error messages."""
        return self.samples[index][0]

    def source(self, index: int):
        """What ``read_fun``/``read_batch`` take for sample ``index``: a path, or the bytes of a shard member."""
        source = self._sources[index]
        return source.read() if isinstance(source, _ShardSource) else source

    def sources(self, indices: Sequence[int]) -> list:
        return [self.source(int(i)) for i in indices]

    def describe_error(self, index: int, error: BaseException) -> BaseException:
        """A clear error for sample ``index``: names the file; says what a non-JPEG looks like.
        Reads at most 16 bytes, never from a FIFO or device (:func:`funloader.files.read_head`)."""
        name = self.sample_name(index)
        try:
            source = self._sources[index]
            if isinstance(source, _ShardSource):
                head = read_member(source.shard, source.offset, min(16, source.size), name=name)
            else:
                head = read_head(source, 16)
            better = _not_jpeg_error(head, name)
            if better is not None:
                return better
        except (OSError, ShardError):
            pass
        if isinstance(error, JPEGDecodeError) and error.filename is None:
            return type(error)(error.reason, name)
        return error

    def _decode(self, index: int, source_transform=None) -> np.ndarray:
        name = self.sample_name(index)
        source = self._sources[index]
        try:
            data = source.read() if isinstance(source, _ShardSource) else read_file(source)
        except FileRefusedError as exc:
            raise JPEGDecodeError(exc.reason, name) from None
        except ShardError as exc:
            raise JPEGDecodeError(str(exc), name) from None
        except OSError as exc:
            raise JPEGDecodeError(f"cannot read: {exc.strerror or exc}", name) from exc
        problem = _not_jpeg_error(data[:16], name)
        if problem is not None:
            raise problem
        try:
            if source_transform is not None:  # an exact resized crop of a window of this image (transforms.py)
                box = source_transform.boxes(read_sizes([data], threads=1, strict=self.strict))[0]
                if not np.isnan(box[0]):
                    return read_fun(data, box=tuple(box), size=source_transform.size, strict=self.strict,
                                    subsampling=source_transform.subsampling, support=source_transform.support,
                                    dtype=np.float32 if self.dequantize else np.int16)
            return read_fun(data, dequantize=self.dequantize, strict=self.strict)
        except JPEGDecodeError as exc:
            raise type(exc)(exc.reason, name) from None
        except MemoryError as exc:
            raise JPEGDecodeError(f"out of memory decoding it ({exc})", name) from None

    def mark_bad(self, index: int, error: BaseException, *, replaced: bool = True) -> None:
        """Record a bad sample (logged once per file); ``replaced``: count one replacement."""
        with self._lock:
            self.skipped += int(replaced)
            if index not in self.bad_samples:
                self.bad_samples[index] = str(error)
                logger.warning("funloader: skipping bad sample %d: %s", index, error)

    def recover(self, index: int, error: BaseException, decode: Callable[[int], object], *,
                on_error: Optional[str] = None):
        """The error policy, in one place, for a sample ``index`` that failed with ``error``: raise it
        (``"raise"``), or record it and return ``(decode(candidate), label)`` for the first
        replacement candidate that decodes (``"skip"``). ``decode(i)`` raises one of
        ``SAMPLE_ERRORS`` for a bad sample. ``on_error``: the caller's policy (default: the dataset's)."""
        if (self.on_error if on_error is None else on_error) == "raise":
            raise error
        self.mark_bad(index, error)
        for candidate in self.replacement_candidates(index):
            try:
                return decode(candidate), self.targets[candidate]
            except SAMPLE_ERRORS as exc:
                self.mark_bad(candidate, exc, replaced=False)
        raise JPEGDecodeError("no decodable sample left in the dataset", self.root)

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
            return self.recover(index, exc, self._decode)

    def __getitem__(self, index: int):
        from .transforms import split_source

        source, transform = split_source(self.transform)  # a first step that reads the JPEG (exact crops)
        if source is None:
            coefficients, label = self.load(int(index))
        else:
            decode = lambda i: self._decode(i, source)  # noqa: E731
            try:
                coefficients, label = decode(int(index)), self.targets[int(index)]
            except JPEGDecodeError as exc:
                coefficients, label = self.recover(int(index), exc, decode)
        tensor = torch.from_numpy(coefficients)
        if transform is not None:
            tensor = transform(tensor)
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
                on_error: Optional[str] = None, box_for: Optional[Callable[[int, int], Sequence[float]]] = None):
    """Decode samples ``indices`` of ``dataset`` into ``out`` ``(len(indices), 192, H8, W8)`` (int16,
    or float32 when dequantized) with ``read_batch`` (centre crop / zero padding to the grid),
    applying the error policy (:meth:`DCTImageFolder.recover`). Returns the labels (list of int)
    actually placed, which differ from ``dataset.targets[indices]`` where a bad sample was replaced.
    ``layout``: per-item ``row_maps``/``col_maps``/``gain``/``boxes``/``bias`` arrays (a ``(192,)``
    bias, ``subsampling`` and ``support`` are shared) passed on to ``read_batch``. ``dequantize``,
    ``strict``, ``on_error``: the caller's settings (default: the dataset's; the dataset is not
    changed). ``box_for(candidate, slot)``: the pixel window of a replacement sample ``candidate``
    placed in ``slot`` (with ``boxes``)."""
    indices = [int(i) for i in indices]
    layout = layout or {}
    dequantize = dataset.dequantize if dequantize is None else bool(dequantize)
    strict = dataset.strict if strict is None else bool(strict)
    on_error = dataset.on_error if on_error is None else on_error

    def item_layout(slot, candidate):
        def shared(key, value):  # strings and a (192,) bias serve every item; the rest has a row per item
            return value is None or key in ("subsampling", "support") or (key == "bias" and len(value.shape) == 1)
        entries = {key: (value if shared(key, value) else value[slot:slot + 1]) for key, value in layout.items()}
        if box_for is not None:
            entries["boxes"] = np.asarray([box_for(candidate, slot)], dtype=np.float64)
        return entries

    sources, unreadable = [], {}
    for slot, index in enumerate(indices):
        try:
            sources.append(dataset.source(index))
        except (OSError, ShardError) as exc:  # a shard member that cannot be read: a bad sample
            sources.append(b"")
            unreadable[slot] = JPEGDecodeError(str(exc), dataset.sample_name(index))
    errors = read_batch(sources, out, threads=threads, dequantize=dequantize, strict=strict, **layout)
    labels = [dataset.targets[i] for i in indices]
    for slot, error in enumerate(errors):
        error = unreadable.get(slot, error)
        if error is None:
            continue

        def decode_slot(candidate, slot=slot):
            retry = read_batch([dataset.source(candidate)], out[slot:slot + 1], threads=1,
                               dequantize=dequantize, strict=strict, **item_layout(slot, candidate))[0]
            if retry is not None:
                raise dataset.describe_error(candidate, retry)

        _, labels[slot] = dataset.recover(indices[slot], dataset.describe_error(indices[slot], error), decode_slot,
                                          on_error=on_error)
    return labels
