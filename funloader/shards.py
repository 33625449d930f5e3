"""WebDataset-style ``.tar`` shards: a deterministic, atomically finalised writer and a small reader.

A shard is a plain POSIX (ustar) tar archive whose members are grouped by *key*: every sample is
``<key>.jpg`` (the JPEG bytes) plus, for labelled data, ``<key>.cls`` (the class index as ASCII
decimal, e.g. ``b"3"``).  Keys contain no dot and no slash, so the ``webdataset`` package, DALI's
``fn.readers.webdataset`` and :func:`iter_shard` all split ``<key>.<ext>`` the same way.

The writer makes byte-reproducible archives: members are written in the order given, with
``mtime=0``, ``uid=gid=0``, empty user/group names and mode ``0644``.  It writes to a temporary
path and only :meth:`ShardWriter.commit` moves the finished archive to its final name with
``os.replace`` (after ``fsync``), so a killed process never leaves a partial shard under a final name.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from typing import Dict, Iterator, Tuple

__all__ = ["ShardWriter", "iter_shard", "split_member_name", "dali_index_path", "write_dali_index"]


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


def iter_shard(path) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for each sample of a shard, in archive order.

    Consecutive members sharing a key form one sample (the WebDataset convention); non-file
    members are skipped.
    """
    with tarfile.open(os.fspath(path), mode="r:") as archive:
        key, fields = None, {}
        for member in archive:
            if not member.isfile():
                continue
            member_key, ext = split_member_name(member.name)
            if member_key != key:
                if key is not None:
                    yield key, fields
                key, fields = member_key, {}
            handle = archive.extractfile(member)
            fields[ext] = handle.read() if handle is not None else b""
        if key is not None:
            yield key, fields
