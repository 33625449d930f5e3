#!/usr/bin/env python
"""Benchmark FUN models against the RGB baselines: parameters, multiply-adds, inference speed.

Prints a table and writes JSON (``--output``) and a plot (``--plot``: params vs paper top-1, and
measured images/s vs paper top-1). FUN models run on 192x28x28 DCT inputs, RGB baselines on
3x224x224 (EfficientNet-B1 on its 240x240); LeFUN on a 3x224x224 YCbCr image.

    python benchmarks/bench_models.py --threads 2 --output benchmarks/results/models_cpu.json \
        --plot benchmarks/results/models_cpu.png
    python benchmarks/bench_models.py --quick --threads 1     # fewer repeats (~10 min on 2 busy cores)
    python benchmarks/bench_models.py --device cuda --batch-sizes 1 64   # the paper's setting: batch 1

Speeds: medians of ``--repeats`` timed passes after ``--warmup`` untimed ones, under
``torch.inference_mode()``, with ``torch.set_num_threads(--threads)``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from funloader.models import list_models
from funloader.models.benchmark import describe_machine, format_table, measure_models, plot_results


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, choices=list_models(), metavar="NAME",
                        help="models to run (default: all but fun_test)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes first")
    parser.add_argument("--quick", action="store_true",
                        help="batch 1: 10 repeats after 2 warm-up; larger batches: 2 after 1 (coarse but short)")
    parser.add_argument("--channels-last", action="store_true", help="run in channels_last memory format")
    parser.add_argument("--output", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the two-panel PNG here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = args.models or [n for n in list_models() if n != "fun_test"]
    started = time.time()
    machine_before = describe_machine(args.device, args.threads)
    if args.quick:
        # Batch 1 is cheap, so it gets more repeats than the big batches.
        results = measure_models(names, args.device, [1], repeats=10, threads=args.threads, warmup=2,
                                 channels_last=args.channels_last)
        large = [b for b in args.batch_sizes if b != 1]
        if large:
            big = measure_models(names, args.device, large, repeats=2, threads=args.threads, warmup=1,
                                 channels_last=args.channels_last)
            for row, extra in zip(results, big):
                row["timings"] += extra["timings"]
    else:
        results = measure_models(names, args.device, args.batch_sizes, repeats=args.repeats,
                                 threads=args.threads, warmup=args.warmup, channels_last=args.channels_last)
    machine = describe_machine(args.device, args.threads)
    if "load_average_1_5_15min" in machine_before:
        machine["load_average_at_start"] = machine_before["load_average_1_5_15min"]
    print(f"device {args.device}: {machine.get('gpu', machine['cpu'])}, {args.threads} threads, torch {machine['torch']}")
    print(format_table(results))
    report = {
        "benchmark": "funloader.models inference", "machine": machine,
        "settings": {"device": args.device, "threads": args.threads, "batch_sizes": args.batch_sizes,
                     "repeats": "quick: batch 1 x10 after 2 warm-up, larger batches x2 after 1" if args.quick else args.repeats,
                     "warmup": args.warmup, "quick": args.quick, "channels_last": args.channels_last,
                     "inference_mode": True, "statistic": "median", "interleaved_rounds": True,
                     "flush_denormal": bool(results and results[0].get("flush_denormal"))},
        "wall_s": round(time.time() - started, 1), "results": results,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.output}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_results(results, str(args.plot),
                     title=f"{machine.get('gpu', machine['cpu'])}, {args.threads} threads, torch {machine['torch']}"
                           + (" (quick run)" if args.quick else ""))
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
