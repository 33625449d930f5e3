"""Benchmark: end-to-end images/s from JPEG files to normalised float batches (256, 192, 28, 28).

funloader's DCTLoader against (a) a torchvision-style Pillow + torch pipeline, (b) the FUN paper's
released pipeline (decode, augment, re-encode q100 4:4:4, jpeg2dct) and (c) a DCTNet-style block DCT
of decoded pixels in torch, at 1 and 2 threads, on ImageNet-like 224x224 4:2:0 photos at q90 and q100
made from ../shared/data/photos (or --data FOLDER). The work is in funloader.loader_bench.

    python benchmarks/bench_loader.py --output benchmarks/results/loader.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

# Large batch tensors (154 MB) are allocated every batch by every pipeline; transparent huge pages
# cut their page-fault cost (read once by torch at its first allocation). Same setting for all pipelines.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from funloader.loader_bench import PIPELINES, format_table, make_imagenet_like, measure_loaders  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", default=None,
                        help="ImageFolder tree to measure on (repeatable); default: make q90 and q100 sets")
    parser.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"),
                        help="photos to make the ImageNet-like sets from")
    parser.add_argument("--images", type=int, default=512, help="images per generated set (default 512)")
    parser.add_argument("--qualities", default="90,100")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per measurement (median reported)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--output", default=None, help="write the JSON report here")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    pipelines = [p for p in args.pipelines.split(",") if p]
    reports = {}
    with tempfile.TemporaryDirectory(prefix="funloader-bench-") as scratch:
        sets = {}
        if args.data:
            sets = {Path(d).name: Path(d) for d in args.data}
        else:
            for quality in (int(q) for q in args.qualities.split(",")):
                print(f"making {args.images} 224x224 4:2:0 q{quality} JPEGs from {args.photos} ...", file=sys.stderr)
                sets[f"q{quality}"] = make_imagenet_like(args.photos, Path(scratch) / f"q{quality}", args.images,
                                                         quality=quality)
        for name, folder in sets.items():
            report = measure_loaders(folder, threads, args.batch_size, args.repeats, pipelines,
                                     progress=lambda text: print(f"  [{name}] {text}", file=sys.stderr))
            reports[name] = report
            print(format_table(report, f"\n{name}: {report['images']} images, batch {args.batch_size}, "
                                       f"median images/s of {args.repeats} epochs"))
    machine = next(iter(reports.values()))["machine"] if reports else {}
    print(f"\nmachine: {machine.get('cpu')} ({machine.get('cpus_available')} CPUs available), torch {machine.get('torch')}, "
          f"Pillow {machine.get('pillow')}")
    print("(a) pillow: Pillow decode + RandomResizedCrop + flip + normalise (3x224x224); (b) paper: + re-encode q100 4:4:4 "
          "+ jpeg2dct; (c) dctnet: Pillow decode + augment + torch YCbCr/block DCT; funloader: DCTLoader with "
          "DCT-domain RandomResizedCrop(mode='nearest') + flip; funloader_dct: mode='dct'")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"machine": machine, "sets": reports, "settings": vars(args),
                                                 "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE")},
                                                indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
