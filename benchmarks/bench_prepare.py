"""Throughput of ``funloader prepare`` (images/s) on real photos, for 1 and 2 (or more) worker processes.

The input is ``../shared/data/photos`` (~70 real photographs, thumbnails to 13 MP, baseline and
progressive, assorted subsamplings) linked ``--copies`` times into an ImageFolder tree so that a run
lasts long enough to measure.  Each configuration runs once to warm the page cache, then
``--repeats`` times into a fresh output folder; the table shows the median wall time (process-pool
start-up included: that is what a user sees), images/s, and the CPU seconds used (this process plus
its workers), which gives images per CPU-second even on a machine shared with other jobs.  Results go to
``benchmarks/results/prepare.json``.

    python benchmarks/bench_prepare.py [--workers 1 2] [--copies 4] [--repeats 3] [--format folder shards]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from funloader import benchmarking  # noqa: E402
from funloader.preparation import _encoder_description, prepare  # noqa: E402


def _photos_dir() -> Path:
    for candidate in (os.environ.get("FUNLOADER_SHARED_DATA", ""), HERE.parents[1] / "shared" / "data",
                      Path("/work/shared/data")):
        if candidate and (Path(candidate) / "photos").is_dir():
            return Path(candidate) / "photos"
    sys.exit("bench_prepare: ../shared/data/photos not found (set FUNLOADER_SHARED_DATA)")


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _machine() -> dict:
    """funloader's benchmark machine description plus the encoder prepare uses."""
    return {**benchmarking.machine_info(), "encoder": _encoder_description()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--copies", type=int, default=4, help="how many times the photo set is linked in")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", nargs="+", default=["folder", "shards"], choices=["folder", "shards"])
    parser.add_argument("--output", default=str(HERE / "results" / "prepare.json"))
    args = parser.parse_args(argv)

    photos = sorted(p for p in _photos_dir().iterdir() if p.is_file() and not p.name.startswith("."))
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    rows = []
    try:
        src = work / "src"
        for copy in range(args.copies):
            (src / f"class{copy}").mkdir(parents=True)
            for photo in photos:
                os.symlink(photo, src / f"class{copy}" / photo.name)
        images = len(photos) * args.copies
        source_bytes = sum(p.stat().st_size for p in photos) * args.copies
        configs = [(layout, workers) for layout in args.format for workers in args.workers]
        times = {config: [] for config in configs}
        cpu = {config: [] for config in configs}
        load_before = os.getloadavg()
        for run in range(args.repeats + 1):  # run 0 warms the page cache and is not counted
            for layout, workers in configs:  # interleaved, so that load changes hit every configuration alike
                dst = work / f"out_{layout}_{workers}_{run}"
                cpu_before = _cpu_seconds()
                started = time.perf_counter()
                result = prepare(src, dst, workers=workers, format=layout, shard_size="100MB",
                                 progress=False, verbose=False, allow_failures=True)
                elapsed = time.perf_counter() - started
                cpu_used = _cpu_seconds() - cpu_before  # this process + its (joined) worker processes
                assert result.converted == images, (result.converted, images)
                shutil.rmtree(dst)
                if run:
                    times[(layout, workers)].append(elapsed)
                    cpu[(layout, workers)].append(cpu_used)
        load_after = os.getloadavg()
        for layout, workers in configs:
            median = statistics.median(times[(layout, workers)])
            rows.append({"format": layout, "workers": workers, "images": images, "source_bytes": source_bytes,
                         "seconds_median": median, "seconds_all": times[(layout, workers)],
                         "images_per_s": images / median,
                         "cpu_seconds_median": statistics.median(cpu[(layout, workers)]),
                         "images_per_cpu_s": images / statistics.median(cpu[(layout, workers)])})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    machine = _machine()
    machine["loadavg_1min_before_after"] = [load_before[0], load_after[0]]
    print(f"funloader prepare on {len(photos)} real photos x {args.copies} copies "
          f"({rows[0]['images']} images, {rows[0]['source_bytes'] / 1e6:.1f} MB), 224x224 q100 4:2:0")
    print(f"machine: {machine['cpu']}, {machine['cpus_available']} CPUs, load average {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f}; {machine['encoder']}")
    print(f"{'format':<8} {'workers':>7} {'median s':>9} {'images/s':>9} {'CPU s':>7} {'images/CPU-s':>12}")
    for row in rows:
        print(f"{row['format']:<8} {row['workers']:>7} {row['seconds_median']:>9.2f} {row['images_per_s']:>9.1f} "
              f"{row['cpu_seconds_median']:>7.2f} {row['images_per_cpu_s']:>12.1f}")
    print("images/s is wall-clock throughput (pool start-up included); images/CPU-s counts the CPU time of this "
          "process and its workers, which stays meaningful when other jobs share the CPUs.")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"benchmark": "prepare", "settings": {"size": 224, "quality": 100,
                                  "subsampling": "420", "copies": args.copies, "repeats": args.repeats},
                                  "machine": machine, "results": rows}, indent=1) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
