#!/usr/bin/env python
"""Decode cost per image: funloader vs the libjpeg floor, jpeg2dct and Pillow (issue: core speed).

Builds corpora from real photos (``--data DIR``, else ../shared/data/photos, else the bundled
samples): 224x224 q100 4:2:0, 224x224 q100 4:4:4, 224x224 q90 4:2:0 and ImageNet-like (shorter
side 400, q90, 4:2:0); times every method side by side (warm-up, round-robin repeats, medians with
min-max), prints a table and writes JSON.

    python benchmarks/bench_decode.py --repeats 7 --output benchmarks/results/decode.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from funloader import benchmarking

CORPORA = {
    "224_q100_420": dict(size=224, quality=100, subsampling="420"),
    "224_q100_444": dict(size=224, quality=100, subsampling="444"),
    "224_q90_420": dict(size=224, quality=90, subsampling="420"),
    "imagenet_q90_420": dict(size=None, shorter=400, quality=90, subsampling="420"),
}


def print_table(report, threads):
    for corpus, section in report.items():
        print(f"\n{corpus} ({section['files']} files) — µs per image, median [min-max]")
        for name, stats in section["methods"].items():
            print(f"  {name:<16} {stats['median_us']:>9.1f}  [{stats['min_us']:.1f}-{stats['max_us']:.1f}]  {stats['images_per_s']:>8.0f} img/s")
        print("  ratios: " + ", ".join(f"{k}={v}" for k, v in section["ratios"].items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder of source photos (default: shared corpus or bundled samples)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="threads for the multi-threaded read_batch row")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--output", default="benchmarks/results/decode.json")
    args = parser.parse_args(argv)

    photos = benchmarking.source_photos(args.data)
    with tempfile.TemporaryDirectory(prefix="funloader-bench-decode-") as tmp:
        corpora = {name: benchmarking.make_corpus(photos, Path(tmp) / name, limit=args.limit, **spec)
                   for name, spec in CORPORA.items()}
        floor = benchmarking.build_floor_program(Path(tmp))
        report = benchmarking.measure_decode(corpora, repeats=args.repeats, threads=args.threads, floor_binary=floor,
                                             progress=lambda m: print(m, file=sys.stderr, flush=True))
    payload = {"machine": benchmarking.machine_info(threads=args.threads), "repeats": args.repeats,
               "command": "python benchmarks/bench_decode.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "corpora": report}
    print_table(report, args.threads)
    benchmarking.write_json(args.output, payload)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
