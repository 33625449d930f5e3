"""Atomic checkpoints, safe loading, and the RNG state that makes a resumed run repeat an uninterrupted one.

``save_atomic(obj, path)`` writes ``torch.save(obj)`` to a temporary file in the same directory
(``.<name>.<random>.tmp``), flushes and fsyncs it, then ``os.replace``-s it over ``path`` (and
fsyncs the directory), so a reader -- or a run killed at any instant, even by SIGKILL -- sees
either the previous complete checkpoint or the new complete one, never a torn file. The file gets
the usual mode of a new file (``0666`` minus the umask, so ``0644`` typically), like every other
output of a run. :func:`remove_stale_temporaries` deletes the temporary files a killed write left.

``load_checkpoint`` reads with ``torch.load(..., weights_only=True)``: a checkpoint is tensors and
plain Python data (dicts, lists, tuples, numbers, strings), never arbitrary pickled objects, so
loading a downloaded or shared checkpoint cannot run code. A file that holds anything else is
refused with :class:`CheckpointError` before any of it is built.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .errors import UsageError

__all__ = ["save_atomic", "load_checkpoint", "remove_stale_temporaries", "rng_state", "set_rng_state",
           "CheckpointError"]


class CheckpointError(UsageError):
    """A checkpoint file is missing, unreadable, unsafe to load or not a funloader training checkpoint."""


def _new_file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open(path, "w")`` would give a new file."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def save_atomic(obj, path) -> Path:
    """``torch.save(obj)`` into ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass
    return path


def remove_stale_temporaries(directory, names=("last.pt", "best.pt")) -> List[Path]:
    """Delete the ``.<name>.<random>.tmp`` files that :func:`save_atomic` left in ``directory`` when
    its process was killed mid-write (call it at the start of a run, before anything writes there).
    Returns the removed paths."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = re.compile(r"^\.(%s)\.[A-Za-z0-9_]+\.tmp$" % "|".join(re.escape(name) for name in names))
    removed = []
    for entry in directory.iterdir():
        if pattern.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink()
            removed.append(entry)
    return removed


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by ``funloader train`` (a dict with at least ``model``).

    Uses ``torch.load(weights_only=True)``: only tensors and plain data are rebuilt, so a file that
    pickles anything else (an object whose ``__reduce__`` calls ``os.system``, say) is refused
    before any of it runs.

    Raises :class:`CheckpointError` naming the file when it is missing, unsafe or not such a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = " ".join(str(exc).split())
        found = re.search(r"GLOBAL ([\w.]+)", reason)
        raise CheckpointError(
            f"{path}: refused: the file holds pickled objects other than tensors and plain data "
            f"({'it references ' + found.group(1) if found else 'not loadable with weights_only=True'}); loading it could run code. "
            f"funloader checkpoints never need that (checkpoints of funloader 0.1.0 stored NumPy RNG objects; "
            f"re-save such a file from a session that trusts it)") from None
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:300]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a funloader training checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict:
    """The state of every random generator a training step uses (Python, NumPy, torch CPU and CUDA),
    as tensors and plain lists (what ``torch.load(weights_only=True)`` rebuilds)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [str(kind), [int(k) for k in keys], int(position), int(has_gauss), float(cached_gaussian)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Optional[dict]) -> None:
    """Restore what :func:`rng_state` returned (missing parts are left alone)."""
    if not state:
        return
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    if "numpy" in state:
        kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((str(kind), np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss),
                             float(cached_gaussian)))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:  # one device per process under torchrun
            torch.cuda.set_rng_state(saved[torch.cuda.current_device() % len(saved)])
