"""Atomic checkpoints and the RNG state that makes a resumed run repeat an uninterrupted one.

``save_atomic(obj, path)`` writes ``torch.save(obj)`` to a temporary file in the same directory,
flushes and fsyncs it, then ``os.replace``-s it over ``path`` (and fsyncs the directory), so a
reader -- or a run killed at any instant, even by SIGKILL -- sees either the previous complete
checkpoint or the new complete one, never a torn file.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["save_atomic", "load_checkpoint", "rng_state", "set_rng_state", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a funloader training checkpoint."""


def save_atomic(obj, path) -> Path:
    """``torch.save(obj)`` into ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by ``funloader train`` (a dict with at least ``model``).

    Checkpoints are pickles (they hold RNG states): load only files you trust.

    Raises :class:`CheckpointError` naming the file when it is missing or not such a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a funloader training checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict:
    """The state of every random generator a training step uses (Python, NumPy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Optional[dict]) -> None:
    """Restore what :func:`rng_state` returned (missing parts are left alone)."""
    if not state:
        return
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)
        else:  # one device per process under torchrun
            torch.cuda.set_rng_state(saved[torch.cuda.current_device() % len(saved)])
