"""Small real photos bundled with funloader for the demo and stand-alone tests (licences in this folder)."""
from __future__ import annotations

from pathlib import Path
from typing import List

DATA_DIR = Path(__file__).resolve().parent


def sample_paths() -> List[Path]:
    """Paths of the bundled sample JPEGs, sorted by name."""
    return sorted(DATA_DIR.glob("*.jpg"))
