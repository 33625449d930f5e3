"""WebDataset-style ``.tar`` shards: all shard reading and writing (a deterministic, atomically
finalised writer; the member scan, sample grouping, label parsing and bounded member reads used by
``DCTImageFolder``, ``funloader prepare`` and the DALI path).

A shard is a plain POSIX (ustar) tar archive whose members are grouped by *key*: every sample is
``<key>.jpg`` (the JPEG bytes) plus, for labelled data, ``<key>.cls`` (the class index as ASCII
decimal, e.g. ``b"3"``).  Keys contain no dot and no slash, so the ``webdataset`` package, DALI's
``fn.readers.webdataset`` and :func:`iter_shard` all split ``<key>.<ext>`` the same way.

The writer makes byte-reproducible archives: members are written in the order given, with
``mtime=0``, ``uid=gid=0``, empty user/group names and mode ``0644``.  It writes to a temporary
path and only :meth:`ShardWriter.commit` moves the finished archive to its final name with
``os.replace`` (after ``fsync``), so a killed process never leaves a partial shard under a final name.

Reading rules (one place, the same for every reader):

- members are grouped into samples as WebDataset and DALI's ``fn.readers.webdataset`` do: consecutive
  members sharing a key form one sample; a key that comes back later (or a field that repeats
  inside a group) starts a NEW sample, so both copies are kept, and a warning names the shard;
- members whose name has no extension, and non-file members, are skipped;
- every member's claimed size is checked against the shard's real size and the size cap
  (:data:`funloader.files.MAX_FILE_BYTES`) before anything is read: a header claiming 10**15 bytes
  raises :class:`ShardError` naming the shard and the member;
- a ``.cls`` member holds a non-negative decimal class index (at most 64 bytes), else ShardError;
- a shard that ends without tar's end-of-archive blocks (truncated at a member boundary) is reported;
- member bytes are read with ``os.pread`` through a bounded LRU of open descriptors
  (:data:`MAX_OPEN_SHARDS` per process), so thousands of shards never exhaust the descriptor limit.
"""
from __future__ import annotations

import hashlib
import io
import os
import resource
import tarfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from .errors import UsageError, user_stacklevel
from .files import check_size, open_regular

__all__ = ["ShardWriter", "iter_shard", "split_member_name", "dali_index_path", "write_dali_index", "ShardError",
           "Member", "scan_shard", "shard_samples", "read_shard_index", "read_member", "MAX_OPEN_SHARDS"]

#: Largest shard file accepted (members are capped separately at ``files.MAX_FILE_BYTES``).
MAX_SHARD_BYTES = 1 << 44
#: Largest ``.cls`` member (a decimal class index).
MAX_LABEL_BYTES = 64


class ShardError(UsageError):
    """A shard that cannot be read as WebDataset samples (corrupt header, bad label, truncated), named."""


class _HashingWriter:
    """File wrapper that feeds everything written through SHA-256 (tarfile needs write + tell)."""

    def __init__(self, handle):
        self._handle = handle
        self._digest = hashlib.sha256()
        self._position = 0

    def write(self, data) -> int:
        self._handle.write(data)
        self._digest.update(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


class ShardWriter:
    """Write one tar shard to ``tmp_path``; :meth:`commit` renames it to ``final_path`` atomically.

    Use as ``writer.add("00000012.jpg", jpeg_bytes)`` ... ``size, sha256 = writer.commit()``;
    :meth:`abort` (or leaving a ``with`` block by an exception) deletes the temporary file.
    """

    def __init__(self, final_path, tmp_path):
        self.final_path = os.fspath(final_path)
        self.tmp_path = os.fspath(tmp_path)
        self._handle = open(self.tmp_path, "wb")
        self._hashing = _HashingWriter(self._handle)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0  # members written

    def add(self, name: str, data: bytes) -> None:
        """Append a regular-file member ``name`` holding ``data`` (fixed, timestamp-free header)."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def commit(self) -> Tuple[int, str]:
        """Finish the archive, fsync it, move it to ``final_path``; returns ``(bytes, sha256 hex)``."""
        self._tar.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        size = self._hashing.tell()
        os.replace(self.tmp_path, self.final_path)
        _fsync_directory(os.path.dirname(self.final_path) or ".")
        return size, self._hashing.hexdigest()

    def abort(self) -> None:
        """Drop the unfinished archive (the final path is never touched)."""
        try:
            self._handle.close()
        finally:
            if os.path.exists(self.tmp_path):
                os.unlink(self.tmp_path)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._handle.closed:
            self.abort()


def _fsync_directory(path: str) -> None:
    """Make a rename durable (best effort: some filesystems refuse fsync on directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dali_index_path(shard) -> str:
    """``shard-000000.tar`` -> ``shard-000000.idx``: where DALI's index of a shard lives (what
    :func:`funloader.dali.fun_pipeline` passes to ``fn.readers.webdataset(index_paths=...)``)."""
    path = os.fspath(shard)
    return (path[:-4] if path.endswith(".tar") else path) + ".idx"


def write_dali_index(shard) -> bool:
    """Write DALI's index of ``shard`` (member offsets and sizes, DALI's ``wds2idx`` format v1.2) next
    to it, atomically; returns False without writing when DALI's ``wds2idx`` module is not installed.

    Without an index ``fn.readers.webdataset`` scans every tar when a pipeline is built."""
    try:
        from wds2idx import IndexCreator  # ships with nvidia-dali
    except ImportError:
        return False
    final = dali_index_path(shard)
    tmp = final + ".tmp"
    try:
        with IndexCreator(os.fspath(shard), tmp, verbose=False) as creator:
            creator.create_index()
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def split_member_name(name: str) -> Tuple[str, str]:
    """``"dir/00000012.jpg"`` -> ``("dir/00000012", "jpg")``: the key ends at the basename's first dot."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        raise ValueError(f"tar member {name!r} has no extension, so it names no WebDataset field")
    return (directory + "/" + stem if directory else stem), ext


@dataclass(frozen=True)
class Member:
    """One file member of a shard: ``key`` and ``ext`` (``"dir/000012"``, ``"jpg"``, extension as
    written), where its bytes start (``offset``) and how many there are (``size``)."""

    name: str
    key: str
    ext: str
    offset: int
    size: int


def scan_shard(path) -> List[Member]:
    """The file members of a shard, in archive order, after checking every header's claimed size
    against the shard's size and the cap (nothing but headers is read). Raises :class:`ShardError`
    naming the shard for a corrupt or truncated archive, FileRefusedError for a FIFO/device."""
    shard = os.fspath(path)
    fd, shard_bytes = open_regular(shard, limit=MAX_SHARD_BYTES)
    members: List[Member] = []
    try:
        with os.fdopen(fd, "rb", closefd=True) as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > shard_bytes:
                    raise ShardError(f"{shard}: member {member.name!r} claims {member.size} bytes at offset "
                                     f"{member.offset_data}, past the end of the {shard_bytes}-byte shard "
                                     f"(corrupt or truncated shard)")
                try:
                    key, ext = split_member_name(member.name)
                except ValueError:
                    continue  # no extension: names no field (skipped, as WebDataset does)
                check_size(member.size, f"{shard}::{member.name}")
                members.append(Member(member.name, key, ext, member.offset_data, member.size))
            end = archive.offset
    except tarfile.TarError as exc:
        raise ShardError(f"{shard}: not a readable tar shard ({exc})") from None
    except (OverflowError, MemoryError) as exc:
        raise ShardError(f"{shard}: corrupt tar header ({type(exc).__name__}: {exc})") from None
    if members and shard_bytes - end < 1024:
        warnings.warn(f"funloader: {shard} ends without tar's end-of-archive blocks: it was probably truncated "
                      f"(after member {members[-1].name!r}); samples after that point are missing", stacklevel=user_stacklevel())
    return members


def shard_samples(members: List[Member], shard="shard", fold=None) -> List[Tuple[str, Dict[str, Member]]]:
    """Group members into samples (see the module docstring): ``[(key, {field: Member})]``.
    ``fold`` maps an extension to its field name (default: lower case). Warns once per shard when a
    key makes more than one sample."""
    fold = fold or str.lower
    samples: List[Tuple[str, Dict[str, Member]]] = []
    seen = set()
    repeated = []
    for member in members:
        field = fold(member.ext)
        if samples and samples[-1][0] == member.key and field not in samples[-1][1]:
            samples[-1][1][field] = member
            continue
        if member.key in seen:
            repeated.append(member.key)
        seen.add(member.key)
        samples.append((member.key, {field: member}))
    if repeated:
        shown = ", ".join(repr(k) for k in repeated[:5]) + (", ..." if len(repeated) > 5 else "")
        warnings.warn(f"funloader: {shard}: {len(repeated)} key(s) appear in more than one sample ({shown}); each "
                      f"copy is kept as its own sample, as WebDataset and DALI do", stacklevel=user_stacklevel())
    return samples


def _image_field(ext: str) -> str:
    ext = ext.lower()
    return "jpg" if ext == "jpeg" else ext


def read_shard_index(shard) -> List[Tuple[str, int, int, Optional[int]]]:
    """Samples of one shard that have an image: ``[(key, data_offset, size, label), ...]`` in archive
    order; ``<key>.jpg``/``.jpeg`` (any case) is the image, ``label`` comes from ``<key>.cls`` (a
    non-negative decimal integer) or is None. Raises :class:`ShardError` naming the shard."""
    shard = os.fspath(shard)
    out = []
    for key, fields in shard_samples(scan_shard(shard), shard, fold=_image_field):
        image = fields.get("jpg")
        if image is None:
            continue  # a .cls (or anything else) without its image is ignored
        label = fields.get("cls")
        out.append((key, image.offset, image.size, None if label is None else _parse_label(shard, label)))
    return out


def _parse_label(shard: str, member: Member) -> int:
    if member.size > MAX_LABEL_BYTES:
        raise ShardError(f"{shard}: member {member.name!r} is {member.size} bytes, not a class index")
    text = read_member(shard, member.offset, member.size).decode("ascii", "replace").strip()
    try:
        label = int(text)
    except ValueError:
        raise ShardError(f"{shard}: member {member.name!r} holds {text[:20]!r}, not a class index") from None
    if label < 0:
        raise ShardError(f"{shard}: member {member.name!r} holds the negative class index {label}")
    return label


def iter_shard(path) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for each sample of a shard, in archive order (the grouping
    of :func:`shard_samples`: consecutive members sharing a key form one sample)."""
    shard = os.fspath(path)
    for key, fields in shard_samples(scan_shard(shard), shard, fold=lambda ext: ext):
        yield key, {ext: read_member(shard, m.offset, m.size, name=f"{shard}::{m.name}") for ext, m in fields.items()}


# ---------------------------------------------------------------------------------------------- member reads
def _default_open_shards() -> int:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 64
    return 64 if soft == resource.RLIM_INFINITY else max(4, min(64, soft // 8))


#: Shard descriptors kept open per process (least recently used ones are closed beyond it).
MAX_OPEN_SHARDS = _default_open_shards()


class _Descriptor:
    __slots__ = ("fd", "users", "evicted")

    def __init__(self, fd: int):
        self.fd, self.users, self.evicted = fd, 0, False


class _DescriptorCache:
    """A bounded LRU of read-only shard descriptors, safe under threads and ``fork``: a descriptor in
    use by a ``pread`` is closed only after that read (never reused under it)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._open: "OrderedDict[str, _Descriptor]" = OrderedDict()

    def _acquire(self, shard: str) -> _Descriptor:
        with self._lock:
            entry = self._open.get(shard)
            if entry is not None:
                self._open.move_to_end(shard)
            else:
                fd, _ = open_regular(shard, limit=MAX_SHARD_BYTES)
                entry = self._open[shard] = _Descriptor(fd)
                while len(self._open) > max(1, MAX_OPEN_SHARDS):
                    _, oldest = self._open.popitem(last=False)
                    oldest.evicted = True
                    if oldest.users == 0:
                        os.close(oldest.fd)
            entry.users += 1
            return entry

    def _release(self, entry: _Descriptor) -> None:
        with self._lock:
            entry.users -= 1
            if entry.evicted and entry.users == 0:
                os.close(entry.fd)

    def pread(self, shard: str, size: int, offset: int) -> bytes:
        entry = self._acquire(shard)
        try:
            return os.pread(entry.fd, size, offset)
        finally:
            self._release(entry)

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held); the inherited
        descriptors stay usable (``pread`` does not share a file offset)."""
        self._lock = threading.Lock()
        for entry in self._open.values():
            entry.users = 0


_DESCRIPTORS = _DescriptorCache()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_DESCRIPTORS.after_fork)


def read_member(shard, offset: int, size: int, *, name=None) -> bytes:
    """``size`` bytes at ``offset`` of ``shard`` (through the descriptor LRU), capped at
    ``files.MAX_FILE_BYTES``; raises ``ShardError`` naming ``name`` when the shard is shorter."""
    name = name or os.fspath(shard)
    check_size(size, name)
    data = _DESCRIPTORS.pread(os.fspath(shard), int(size), int(offset))
    if len(data) != size:
        raise ShardError(f"{name}: shard member truncated ({len(data)} of {size} bytes)")
    return data
