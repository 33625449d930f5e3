"""The one safe file layer: a folder walker and a capped reader, used by every path that lists or
reads input files (``DCTImageFolder``, ``funloader prepare``, shards, statistics).

Walking (:func:`walk_files`):

- links to files and directories are followed, but every directory is entered once: directories
  are tracked by ``(st_dev, st_ino)``, so a link to a folder already listed is never followed, and
  a link into an ancestor of its own folder (``loop -> ..``, even above the walked folder) is
  never followed either (both are reported in ``Listing.links_skipped``); real directories are
  walked before linked ones, so a link never hides the real folder it points to;
- entries that are not regular files (FIFO, socket, device, broken link) are never opened: they
  are reported in ``Listing.not_regular``;
- a sub-directory that cannot be listed (permission denied, I/O error) is reported in
  ``Listing.unreadable`` with the reason, instead of being skipped silently.

Reading (:func:`read_file`, :func:`read_head`): the file is opened with ``O_NONBLOCK`` (opening a
FIFO does not wait for a writer), checked with ``fstat`` and refused BEFORE any byte is read when
it is not a regular file (FIFO, ``/dev/zero``, a directory) or larger than ``MAX_FILE_BYTES``
(2 GiB, the C core's own limit, so every path refuses the same files). A refusal raises
:class:`FileRefusedError`, which names the file and the cause; it is an ``OSError`` (so code that
treats unreadable files as bad samples keeps doing so) and a ``FunloaderError`` (so the CLI prints
it in one line).
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from .errors import FunloaderError

__all__ = ["MAX_FILE_BYTES", "FileRefusedError", "Listing", "walk_files", "open_regular", "read_file", "read_head",
           "check_size", "cache_root", "untrusted_reason", "is_ancestor_link"]

#: Largest input file (an image, a shard member, a stats or index file) any reader accepts, in
#: bytes: 2 GiB, the same limit as the C core's ``FL_MAX_FILE_BYTES`` (``jpegdct_core.c``).
MAX_FILE_BYTES = 1 << 31

PathLike = Union[str, "os.PathLike[str]"]


class FileRefusedError(FunloaderError, OSError):
    """A file was refused before reading: not a regular file, or larger than the size cap.

    ``filename`` names the file (or ``shard.tar::key``), ``reason`` says why."""

    def __init__(self, filename, reason, code: int = errno.EINVAL):
        OSError.__init__(self, code, str(reason), None if filename is None else str(filename))
        self.reason = str(reason)

    def __str__(self) -> str:
        return f"{self.filename}: {self.reason}"

    def __reduce__(self):  # keep the arguments through pickling (DataLoader workers, process pools)
        return (type(self), (self.filename, self.reason, self.errno))


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def check_size(size: int, name, limit: Optional[int] = None) -> None:
    """Raise :class:`FileRefusedError` naming ``name`` when ``size`` bytes exceed the cap."""
    limit = MAX_FILE_BYTES if limit is None else int(limit)
    if size > limit:
        raise FileRefusedError(name, f"{size} bytes, larger than the {limit}-byte limit "
                                     f"({limit / 2 ** 30:g} GiB); refused before reading", errno.EFBIG)


def open_regular(path: PathLike, *, limit: Optional[int] = None, name=None) -> Tuple[int, int]:
    """Open ``path`` read-only without blocking and return ``(fd, size)`` of a regular file within
    the cap; the caller closes ``fd``. Raises :class:`FileRefusedError` (FIFO, device, directory,
    too large) or ``OSError`` (missing, permission denied...), both naming the file."""
    name = os.fspath(path) if name is None else name
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL
            raise FileRefusedError(name, f"{_kind(info.st_mode)}, not a regular file; refused without reading", code)
        check_size(info.st_size, name, limit)
    except BaseException:
        os.close(fd)
        raise
    return fd, int(info.st_size)


def read_file(path: PathLike, *, limit: Optional[int] = None, name=None) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``, default ``MAX_FILE_BYTES``).

    Refuses a FIFO, a device, a directory or a file over the cap before reading anything. A file
    that grows while it is read is read up to the size ``fstat`` reported."""
    fd, size = open_regular(path, limit=limit, name=name)
    try:
        chunks, done = [], 0
        while done < size:
            chunk = os.read(fd, min(size - done, 1 << 26))
            if not chunk:  # shrank while reading: what is there
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_head(path: PathLike, count: int = 16, *, name=None) -> bytes:
    """The first ``count`` bytes of the regular file ``path``, with :func:`read_file`'s refusals
    (a FIFO or device is never read; the size cap applies to the whole file)."""
    fd, _ = open_regular(path, name=name)
    try:
        return os.pread(fd, int(count), 0)
    finally:
        os.close(fd)


@dataclass
class Listing:
    """What :func:`walk_files` found under a folder.

    ``files``: paths (under ``top``, links not resolved) of regular files, sorted by
    ``(folder, name)`` (the order of torchvision's ``sorted(os.walk(...))``).
    ``unreadable``: ``(folder, reason)`` of sub-folders that could not be listed.
    ``not_regular``: entries skipped without opening (FIFO, socket, device, broken link).
    ``links_skipped``: links to a folder already walked (an ancestor included), not followed."""

    files: List[str] = field(default_factory=list)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)
    not_regular: List[str] = field(default_factory=list)
    links_skipped: List[str] = field(default_factory=list)

    def problems(self, limit: int = 5) -> Optional[str]:
        """A one-paragraph summary of what was not listed (None when nothing), naming up to ``limit``
        entries per kind, for a warning or an "ignored" report."""
        parts = []
        for label, entries in (("unreadable sub-folder(s)", [f"{p} ({r})" for p, r in self.unreadable]),
                               ("entries that are not regular files (FIFO, device, socket, broken link), not opened",
                                self.not_regular),
                               ("links to an ancestor or to a folder already listed, not followed",
                                self.links_skipped)):
            if entries:
                shown = ", ".join(entries[:limit]) + (f", ... ({len(entries) - limit} more)" if len(entries) > limit else "")
                parts.append(f"{len(entries)} {label}: {shown}")
        return "; ".join(parts) or None


def is_ancestor_link(link: str, folder: str) -> bool:
    """Whether ``link`` (in ``folder``) points to ``folder`` itself or to a folder above it."""
    target, here = os.path.realpath(link), os.path.realpath(folder)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)


def _next_linked(linked: List[str], visited: set, listing: Listing) -> Optional[str]:
    """The next linked folder whose target was not walked yet (marked walked), or None."""
    while linked:
        candidate = linked.pop(0)
        try:
            info = os.stat(candidate)
        except OSError as exc:
            listing.unreadable.append((candidate, exc.strerror or str(exc)))
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in visited:
            listing.links_skipped.append(candidate)
            continue
        visited.add(identity)
        return candidate
    return None


def walk_files(top: PathLike, *, skip_hidden: bool = False) -> Listing:
    """List every regular file under ``top`` (see the module docstring for the rules).

    ``skip_hidden``: ignore names starting with ``.`` (files and folders). Raises ``OSError`` when
    ``top`` itself cannot be listed."""
    top = os.fspath(top)
    listing = Listing()
    info = os.stat(top)
    visited = {(info.st_dev, info.st_ino)}
    found: List[Tuple[str, str]] = []
    pending = [top]        # real folders: walked first
    linked: List[str] = []  # folders reached through a link: walked after every real one
    while True:
        if pending:
            folder = pending.pop()
        else:
            folder = _next_linked(linked, visited, listing)
            if folder is None:
                break
        try:
            with os.scandir(folder) as iterator:
                entries = list(iterator)
        except OSError as exc:
            if folder is top:
                raise
            listing.unreadable.append((folder, exc.strerror or str(exc)))
            continue
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink():
                    try:
                        mode = os.stat(entry.path).st_mode  # follows the link; never opens the target
                    except OSError:
                        listing.not_regular.append(entry.path)  # broken link, or a loop of links
                        continue
                    if stat.S_ISREG(mode):
                        found.append((folder, entry.name))
                    elif stat.S_ISDIR(mode):
                        if is_ancestor_link(entry.path, folder):
                            listing.links_skipped.append(entry.path)  # a loop, even above the walked folder
                        else:
                            linked.append(entry.path)
                    else:
                        listing.not_regular.append(entry.path)
                elif entry.is_file(follow_symlinks=False):  # the directory entry's type: no stat call
                    found.append((folder, entry.name))
                elif entry.is_dir(follow_symlinks=False):
                    own = entry.stat(follow_symlinks=False)
                    identity = (own.st_dev, own.st_ino)
                    if identity in visited:  # a bind mount back into the tree
                        listing.links_skipped.append(entry.path)
                    else:
                        visited.add(identity)
                        pending.append(entry.path)
                else:
                    listing.not_regular.append(entry.path)
            except OSError as exc:
                listing.unreadable.append((entry.path, exc.strerror or str(exc)))
    found.sort()
    listing.files = [os.path.join(folder, name) for folder, name in found]
    listing.unreadable.sort()
    listing.not_regular.sort()
    listing.links_skipped.sort()
    return listing


# ----------------------------------------------------------------------------------------------
# caches: where funloader keeps what it builds or computes for the user, and whether to trust it
def cache_root() -> "Path":
    """Where funloader keeps caches (the DALI plugin, statistics of read-only datasets):
    ``$FUNLOADER_CACHE_DIR``, else ``$XDG_CACHE_HOME/funloader``, else ``~/.cache/funloader``."""
    from pathlib import Path

    explicit = os.environ.get("FUNLOADER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "funloader"


def untrusted_reason(path: PathLike, *, levels: int = 2) -> Optional[str]:
    """Why a cached file must not be trusted, or None when it may be.

    Refused: a file (or a folder: ``path`` itself when it is one, then up to ``levels`` folders
    above it) that is not owned by the current user (or root), or that is group- or world-writable,
    except a folder with the sticky bit (``/tmp``-like, where nobody can replace another user's
    entries). Another user who can write there could have planted or swapped it. Symbolic links
    are judged by what they point to."""
    me = os.geteuid()
    current = os.path.abspath(os.fspath(path))
    for level in range(levels + 1):
        try:
            info = os.stat(current)
        except OSError as exc:
            return f"{current}: cannot be checked ({exc.strerror or exc})"
        shared_folder = stat.S_ISDIR(info.st_mode) and bool(info.st_mode & stat.S_ISVTX)
        if info.st_uid not in (me, 0) and not shared_folder:
            return f"{current} is owned by uid {info.st_uid}, not by you (uid {me})"
        if info.st_mode & 0o022 and not shared_folder:
            what = "folder" if stat.S_ISDIR(info.st_mode) else "file"
            return (f"{current} is a {what} writable by other users (mode {stat.S_IMODE(info.st_mode):04o}"
                    + (", no sticky bit)" if what == "folder" else ")"))
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return None
