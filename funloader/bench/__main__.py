"""``funloader bench`` / ``python -m funloader.bench``: run the sections, print the user's report,
write ``bench.json``, ``bench.md`` and the PNG plots.

Without ``--data`` it runs on real photos (the shared corpus next to the repository, else the
photos bundled in the package), re-encoded in a temporary folder to the FUN setting (224x224 q100
4:2:0) and to ImageNet-like originals (shorter side 375, mixed aspect, q90 4:2:0).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import DEFAULT_SECTIONS, SECTIONS, Context, measure
from .corpus import CORPORA
from .harness import busy_reasons, cpus_available, load_average, log, machine_info, write_json
from .report import evaluate_targets, plot, to_markdown


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="funloader bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder of JPEG photos to measure on (default: the shared or bundled photos)")
    p.add_argument("--quick", action="store_true",
                   help="the short run: 12 photos, 3 repeats, 4 models at batch 1 and 16")
    p.add_argument("--sections", type=_names, default=list(DEFAULT_SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default {','.join(DEFAULT_SECTIONS)})")
    p.add_argument("--corpora", type=_names, default=None,
                   help=f"corpora to use ({', '.join(CORPORA)}); "
                        "default: each section's own")
    p.add_argument("--threads", type=_int_list, default=None,
                   help="comma-separated thread counts (default: the CPUs available)")
    p.add_argument("--batch-size", type=int, default=64, help="loader and DALI batch size (default 64)")
    p.add_argument("--loader-images", type=int, default=None,
                   help="images per loader epoch (default: 4 batches, at least the corpus)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 7, quick 3)")
    p.add_argument("--device", default="cpu", help="device for the model section: cpu or cuda[:i]")
    p.add_argument("--models", type=_names, default=None, help="comma-separated model names")
    p.add_argument("--targets", action="store_true",
                   help="also check the project's speed targets (for funloader's developers)")
    p.add_argument("--output", default="bench-out",
                   help="folder for bench.json, bench.md and the plots; or a FILE.json (FILE.md and "
                        "FILE-*.png go next to it)")
    return p


def run(args, argv: List[str]) -> Dict[str, object]:
    """Runs the selected sections and returns the report (what ``bench.json`` holds)."""
    from ..errors import UsageError

    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise UsageError(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    for name, value in (("--repeats", args.repeats), ("--batch-size", args.batch_size),
                        ("--loader-images", args.loader_images)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    unknown = [c for c in args.corpora or () if c not in CORPORA]
    if unknown:
        raise UsageError(f"--corpora: unknown {', '.join(unknown)}; choose from {', '.join(CORPORA)}")
    if args.device != "cpu":
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise UsageError(f"--device {args.device}: not a device name (cpu, cuda, cuda:1...)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: torch sees no CUDA device here")
    threads = args.threads or [cpus_available()]
    repeats = args.repeats or (3 if args.quick else 7)
    workdir = Path(tempfile.mkdtemp(prefix="funloader-bench-"))
    context = Context(repeats=repeats, quick=args.quick, threads=threads, batch_size=args.batch_size,
                      device=args.device, data=args.data, corpora=args.corpora or [], models=args.models,
                      loader_images=args.loader_images, workdir=workdir, progress=log)
    context.photos()  # a bad --data fails now, before any work
    report: Dict[str, object] = {"command": "funloader bench " + " ".join(argv), "quick": bool(args.quick),
                                 "repeats": repeats, "machine": machine_info(threads=max(threads), device=args.device),
                                 "load_before": load_average()}
    started = time.perf_counter()
    sections = {}
    try:
        for number, name in enumerate(args.sections, 1):
            log(f"section {number}/{len(args.sections)}: {name}")
            sections[name] = measure(name, context)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["corpora"] = {name: len(files) for name, files in context._built.items()}
    report["sections"] = {name: section.to_dict() for name, section in sections.items()}
    report["load_after"] = load_average()
    reasons = busy_reasons(report["load_before"], report["load_after"], cpus_available(),
                           [s for section in sections.values() for s in section.summaries()])
    report["reliability"] = {"busy": bool(reasons), "reasons": reasons}
    if args.targets:
        report["targets"] = evaluate_targets(report)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    output = Path(args.output)
    report = run(args, argv)
    if output.suffix == ".json":
        json_path, md_path, folder, prefix = output, output.with_suffix(".md"), output.parent, output.stem + "-"
    else:
        json_path, md_path, folder, prefix = output / "bench.json", output / "bench.md", output, ""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(json_path, report)
    markdown = to_markdown(report, targets=args.targets)
    md_path.write_text(markdown)
    images = plot(report, folder, prefix)
    print(markdown)
    print(f"wrote {json_path}, {md_path}" + "".join(f", {p}" for p in images))
    return 0


if __name__ == "__main__":
    from ..errors import FunloaderError

    try:
        sys.exit(main())
    except FunloaderError as error:
        print(f"funloader bench: error: {error}", file=sys.stderr)
        sys.exit(2)
