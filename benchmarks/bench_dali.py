#!/usr/bin/env python
"""DALI pipelines: funloader's native operator and external_source fallback vs DALI's RGB pipeline.

Builds 224x224 corpora (q90 and q100, 4:2:0) from real photos (``--data DIR``, else
../shared/data/photos, else the bundled samples), then for each corpus and thread count times, with
the same files and the same number of DALI threads, batches of normalised float32 CHW tensors:

* ``fun_plugin``           fn.readers.file -> fn.funloader.dct_decode (dequantize + normalise) -> (N, 192, 28, 28)
* ``fun_external_source``  external_source workers calling funloader.read_batch, DALI ops    -> (N, 192, 28, 28)
* ``dali_rgb``             fn.readers.file -> fn.decoders.image(cpu) -> fn.crop_mirror_normalize -> (N, 3, 224, 224)
* with ``--device-id``     the same with the post-decode ops on the GPU, plus ``dali_rgb_mixed`` (nvJPEG)

Warm-up, round-robin repeats, medians (min-max); prints a table and writes JSON.

    python benchmarks/bench_dali.py --threads 1 2 --repeats 5 --output benchmarks/results/dali_cpu.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from funloader import benchmarking
from funloader.dali.bench import measure_dali

CORPORA = {
    "224_q90_420": dict(size=224, quality=90, subsampling="420"),
    "224_q100_420": dict(size=224, quality=100, subsampling="420"),
}
TARGETS = {"fun_plugin/dali_rgb": 1.5, "fun_plugin/fun_external_source": 1.3}


def print_table(report) -> None:
    for corpus, runs in report.items():
        for run in runs:
            print(f"\n{corpus}: {run['files']} files, {run['threads']} thread(s), batch {run['batch_size']}, "
                  f"{run['batches_per_repeat']} batches x {run['repeats']} repeats, device_id={run['device_id']}")
            print(f"  {'method':<22}{'images/s':>10}   [min-max]")
            for name, stats in run["methods"].items():
                print(f"  {name:<22}{stats['images_per_s']:>10.0f}   [{stats['min']:.0f}-{stats['max']:.0f}]")
            print("  ratios: " + ", ".join(
                f"{k}={v:.2f}" + (f" (target >= {TARGETS[k]})" if k in TARGETS else "") for k, v in run["ratios"].items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder of source photos (default: shared corpus or bundled samples)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=None, help="batches per repeat (default: about 2 epochs)")
    parser.add_argument("--device-id", type=int, default=None, help="GPU index (default: CPU-only pipelines)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many photos")
    parser.add_argument("--output", default="benchmarks/results/dali_cpu.json")
    args = parser.parse_args(argv)

    photos = benchmarking.source_photos(args.data)
    report = {}
    with tempfile.TemporaryDirectory(prefix="funloader-bench-dali-") as tmp:
        for name, spec in CORPORA.items():
            folder = Path(tmp) / name
            benchmarking.make_corpus(photos, folder, limit=args.limit, **spec)
            report[name] = []
            for threads in args.threads:
                print(f"{name}, {threads} thread(s)", file=sys.stderr, flush=True)
                report[name].append(measure_dali(folder, threads=threads, batch_size=args.batch_size,
                                                 repeats=args.repeats, batches=args.batches, device_id=args.device_id,
                                                 progress=lambda m: print("  " + m, file=sys.stderr, flush=True)))
    payload = {"machine": benchmarking.machine_info(threads=max(args.threads)), "targets": TARGETS,
               "command": "python benchmarks/bench_dali.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "corpora": report}
    print_table(report)
    benchmarking.write_json(args.output, payload)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
