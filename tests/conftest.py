"""Shared fixtures: the bundled sample photos and the read-only shared corpus (``../shared/data``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir():
    candidates = [os.environ.get("FUNLOADER_SHARED_DATA", ""), REPO.parent / "shared" / "data", Path("/work/shared/data")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "MANIFEST.tsv").exists():
            return Path(candidate)
    return None


SHARED_DATA = _shared_data_dir()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (photos/, edge/, labelled/, MANIFEST.tsv); skips when the corpus is absent."""
    if SHARED_DATA is None:
        pytest.skip("shared corpus ../shared/data not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_jpegs():
    """The small real photos bundled in funloader/data (always present)."""
    from funloader.data import sample_paths

    paths = sample_paths()
    assert len(paths) >= 8
    return paths


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


requires_cuda = pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")
