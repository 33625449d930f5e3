"""``funloader bench``: what funloader buys on this machine, measured side by side in one run.

Layout (one concern per module):

* ``harness.py``  the one machine description, round-robin timer (warm-up, repeats, settle),
  summary of repeats, busy-machine check and JSON writer;
* ``corpus.py``   the benchmark corpora made from real photos (224x224 q100/q90, ImageNet-like
  originals) and the image-folder trees the loaders read;
* ``decode.py``, ``loader.py``, ``dali.py``, ``models.py``, ``prepare.py``: one section each;
* ``report.py``   the user's tables, markdown and plots, and the project's speed targets (shown only
  with ``--targets``);
* ``__main__.py`` the command line (``funloader bench`` / ``python -m funloader.bench``).

**The rule for the next person: a benchmark is one module with ``measure(context) -> Section``,
registered in** :data:`SECTIONS`. Inside a section the compared methods are a list
(``METHODS`` / ``PIPELINES``) of rows, each with a one-line explanation that the report prints: to
compare one more thing, add a row there, not a new timing loop.
"""
from __future__ import annotations

import importlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

#: section name -> module (imported only when the section runs); the order is the report's order
SECTIONS: Dict[str, str] = {
    "decode": "funloader.bench.decode",
    "loader": "funloader.bench.loader",
    "dali": "funloader.bench.dali",
    "models": "funloader.bench.models",
    "prepare": "funloader.bench.prepare",
}

#: what ``funloader bench`` runs without ``--sections``
DEFAULT_SECTIONS = ("decode", "loader", "dali", "models")


@dataclass
class Row:
    """A compared method of a section: its name, the one-line explanation the report prints, and
    ``make(setup)``, which builds what the section times from the section's setup (or returns
    None / an empty dict when it cannot run here, e.g. its package is not installed)."""

    name: str
    explanation: str
    make: Callable


def make_rows(rows: List[Row], setup, only=None) -> Tuple[Dict[str, object], List[str]]:
    """``(made, missing)``: ``row.make(setup)`` of each row (only those named in ``only`` when given),
    by name; ``missing``: the rows whose ``make`` returned None or an empty dict (not available here)."""
    made: Dict[str, object] = {}
    missing: List[str] = []
    for row in rows:
        if only is not None and row.name not in only:
            continue
        thing = row.make(setup)
        if thing is None or (isinstance(thing, dict) and not thing):
            missing.append(row.name)
        else:
            made[row.name] = thing
    return made, missing


@dataclass
class Result:
    """The methods compared in one setting (a corpus, a thread count, a batch size).

    ``methods``: name -> summary from :func:`harness.summarize` (``median_us`` per image, ``min_us``,
    ``max_us``, ``images_per_s``, ``repeats``, ``spread``, maybe ``images_per_cpu_s``) plus any
    method-specific fields; ``ratios``: name -> float (> 1: funloader faster, unless the name says
    ``over``); ``extra``: anything else worth keeping (files, batch size, threads...).
    """

    methods: Dict[str, Dict[str, object]] = field(default_factory=dict)
    ratios: Dict[str, float] = field(default_factory=dict)
    extra: Dict[str, object] = field(default_factory=dict)


@dataclass
class Section:
    """One section of the report: its results per setting, each method explained in one line."""

    name: str
    title: str
    results: Dict[str, Result] = field(default_factory=dict)
    explained: Dict[str, str] = field(default_factory=dict)
    extra: Dict[str, object] = field(default_factory=dict)
    skipped: Optional[str] = None

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, object]) -> "Section":
        data = dict(data)
        data["results"] = {key: Result(**value) for key, value in data.get("results", {}).items()}
        return cls(**data)

    def summaries(self) -> List[Dict[str, object]]:
        """Every method summary of every setting (for the busy-machine check)."""
        return [summary for result in self.results.values() for summary in result.methods.values()
                if "spread" in summary]


@dataclass
class Context:
    """What a section's ``measure`` gets: the run's settings and the corpora (built on first use)."""

    repeats: int = 7
    quick: bool = False
    threads: List[int] = field(default_factory=lambda: [len(os.sched_getaffinity(0))])
    batch_size: int = 64
    device: str = "cpu"
    data: Optional[str] = None
    corpora: List[str] = field(default_factory=list)
    models: Optional[List[str]] = None
    loader_images: Optional[int] = None
    workdir: Optional[Path] = None
    progress: Callable[[str], None] = lambda message: None
    _built: Dict[str, List[Path]] = field(default_factory=dict, repr=False)
    _photos: Optional[List[Path]] = field(default=None, repr=False)

    def photos(self) -> List[Path]:
        from .corpus import source_photos

        if self._photos is None:
            self._photos = source_photos(self.data)
        return self._photos

    def corpus(self, name: str) -> List[Path]:
        """The files of corpus ``name`` (see ``corpus.CORPORA``), encoded on first use."""
        from .corpus import build

        if name not in self._built:
            if self.workdir is None:
                self.workdir = Path(tempfile.mkdtemp(prefix="funloader-bench-"))
            limit = 12 if self.quick else None
            self.progress(f"encoding the corpus {name} from {min(len(self.photos()), limit or 10**9)} photos")
            self._built[name] = build(name, self.photos(), self.workdir / name, limit=limit)
        return self._built[name]


def section_module(name: str):
    """The module of section ``name`` (raises ``UsageError`` naming the known sections)."""
    if name not in SECTIONS:
        from ..errors import UsageError

        raise UsageError(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    return importlib.import_module(SECTIONS[name])


def measure(name: str, context: Context) -> Section:
    """Run section ``name``."""
    return section_module(name).measure(context)


__all__ = ["SECTIONS", "DEFAULT_SECTIONS", "Row", "make_rows", "Section", "Result", "Context", "measure", "section_module"]
