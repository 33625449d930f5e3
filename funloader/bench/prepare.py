"""Section 5, prepare: ``funloader prepare`` images/s on real photos, per worker count and format.

The photos (all of them: thumbnails to 13 MP, baseline and progressive, assorted subsamplings) are
linked ``copies`` times into an ImageFolder tree so a run lasts long enough to measure. Each call
prepares the whole tree into a fresh folder (process-pool start-up included: what a user sees) at
224x224 q100 4:2:0; configurations are timed round-robin after a warm-up run (page cache). The
summaries' ``images_per_cpu_s`` counts this process and its workers, meaningful on a shared machine.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from . import Context, Result, Section
from .harness import round_robin

TITLE = "Prepare: images/s of funloader prepare to 224x224 q100 4:2:0 (higher is better)"


def measure_photos(photos: Sequence[Path], *, workers: Sequence[int] = (1, 2), copies: int = 4, repeats: int = 3,
                   formats: Sequence[str] = ("folder", "shards"),
                   progress: Callable[[str], None] = lambda message: None) -> Section:
    from ..preparation import _encoder_description, prepare

    section = Section("prepare", TITLE, explained={
        "folder Nw": "funloader prepare --format folder with N worker processes",
        "shards Nw": "funloader prepare --format shards (WebDataset tars) with N worker processes"})
    work = Path(tempfile.mkdtemp(prefix="funloader-bench-prepare-"))
    counter = itertools.count()
    try:
        source = work / "src"
        for copy in range(copies):
            (source / f"class{copy}").mkdir(parents=True)
            for photo in photos:
                os.symlink(Path(photo).resolve(), source / f"class{copy}" / Path(photo).name)
        images = len(photos) * copies

        def config(layout, count):
            def run():
                target = work / f"out_{next(counter)}"
                result = prepare(source, target, size=224, workers=count, format=layout, shard_size="100MB",
                                 progress=False, verbose=False, allow_failures=True)
                shutil.rmtree(target)
                return result.converted
            return run

        runs = {f"{layout} {count}w": config(layout, count) for layout in formats for count in workers}
        progress(f"prepare: {images} images, {', '.join(runs)} x {repeats} repeats")
        summaries = round_robin(runs, repeats, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = {}
    for layout in formats:
        one, most = f"{layout} {min(workers)}w", f"{layout} {max(workers)}w"
        if one != most:
            found[f"{layout}_{max(workers)}w_over_{min(workers)}w"] = round(
                summaries[most]["images_per_s"] / summaries[one]["images_per_s"], 3)
    section.results["photos"] = Result(summaries, found, {"images": images, "photos": len(photos), "copies": copies,
                                                          "encoder": _encoder_description()})
    return section


def measure(context: Context) -> Section:
    workers = sorted({1, *context.threads})
    return measure_photos(context.photos(), workers=workers, copies=1 if context.quick else 4,
                          repeats=context.repeats, progress=context.progress)
