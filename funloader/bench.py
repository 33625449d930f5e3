"""``funloader bench``: the side-by-side report of what funloader buys on this machine.

Sections, each measured side by side in one run (warm-up, round-robin repeats, medians with the
min-max range): (1) decode, µs per image; (2) loader, images/s to normalised batches; (3) DALI
pipelines when NVIDIA DALI is installed; (4) models, images/s at batch 1 and batch 64; plus the
machine. Writes ``bench.json``, ``bench.md`` and PNG plots to ``--output`` and prints the tables.

Without ``--data`` it runs on the photos bundled in the package, re-encoded in a temporary folder
to the FUN setting (224x224, q100, 4:2:0) and to ImageNet-like sizes (shorter side 400, q90).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import benchmarking

QUICK_MODELS = ["efun_s_plus", "efun", "efficientnet_b0", "mobilenetv2_100"]

#: The issues' speed targets: (section path, ratio key, threshold, "ge" = ratio must be >= threshold).
TARGETS = [
    ("decode:224_q100_420", "read_fun_over_floor", 1.10, "le", "read_fun within 1.10x of the jpeg_read_coefficients floor (224 q100)"),
    ("decode:224_q100_420", "speedup_vs_pillow_rgb", 1.3, "ge", "read_fun >= 1.3x faster than Pillow decode to RGB"),
    ("decode:*", "speedup_vs_jpeg2dct", 1.0, "gt", "read_fun faster than jpeg2dct on every corpus"),
    ("decode:224_q100_420", "batch_2t_over_1t", 1.8, "ge", "read_batch with 2 threads >= 1.8x one thread"),
    ("loader", "speedup_vs_pillow_pipeline", 2.0, "ge", "DCTLoader >= 2x the torchvision-style Pillow pipeline"),
    ("loader", "speedup_vs_paper_pipeline", 5.0, "ge", "DCTLoader >= 5x the paper's re-encode pipeline"),
    ("dali", "plugin_over_dali_rgb", 1.5, "ge", "DALI plugin >= 1.5x DALI's CPU RGB pipeline"),
    ("dali", "plugin_over_fallback", 1.3, "ge", "DALI plugin >= 1.3x the external_source fallback"),
]


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="funloader bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder of JPEG photos to measure on (default: the bundled samples)")
    parser.add_argument("--threads", type=int, default=None, help="decoding threads (default: CPUs available)")
    parser.add_argument("--batch-size", type=int, default=64, help="loader batch size (default 64)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, files and models (< 2 minutes on 2 cores)")
    parser.add_argument("--output", default="bench-out", help="folder for bench.json, bench.md and the plots")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device for the model section")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 7, quick 3)")
    parser.add_argument("--sections", default="decode,loader,dali,models",
                        help="comma-separated subset of decode,loader,dali,models")
    parser.add_argument("--models", default=None, help="comma-separated model names (default: all, quick: a few)")
    return parser


def run(args) -> Dict[str, object]:
    """Runs the selected sections and returns the report (also what ``bench.json`` holds)."""
    threads = args.threads or len(os.sched_getaffinity(0))
    repeats = args.repeats or (3 if args.quick else 7)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    report: Dict[str, object] = {
        "command": "funloader bench " + " ".join(args.argv),
        "quick": bool(args.quick),
        "repeats": repeats,
        "machine": benchmarking.machine_info(threads=threads),
    }
    started = time.perf_counter()
    photos = benchmarking.source_photos(args.data)
    limit = 12 if args.quick else None
    with tempfile.TemporaryDirectory(prefix="funloader-bench-") as tmp:
        tmp_path = Path(tmp)
        _log(f"re-encoding {min(len(photos), limit or len(photos))} photos into the benchmark corpora")
        corpora = {
            "224_q100_420": benchmarking.make_corpus(photos, tmp_path / "224_q100_420", size=224, quality=100,
                                                     subsampling="420", limit=limit),
            "imagenet_q90_420": benchmarking.make_corpus(photos, tmp_path / "imagenet_q90_420", size=None, shorter=400,
                                                         quality=90, subsampling="420", limit=limit),
        }
        if not args.quick:
            corpora["224_q90_420"] = benchmarking.make_corpus(photos, tmp_path / "224_q90_420", size=224, quality=90,
                                                              subsampling="420")
            corpora["224_q100_444"] = benchmarking.make_corpus(photos, tmp_path / "224_q100_444", size=224,
                                                               quality=100, subsampling="444")
        report["corpora"] = {name: len(files) for name, files in corpora.items()}

        if "decode" in sections:
            _log("section 1/4: decode (µs per image)")
            floor = benchmarking.build_floor_program(tmp_path)
            report["decode"] = benchmarking.measure_decode(corpora, repeats=repeats, threads=min(threads, 2) if threads > 1 else 1,
                                                           floor_binary=floor, progress=_log)
        if "loader" in sections:
            _log("section 2/4: loader (images/s to normalised batches)")
            report["loader"] = _loader_section(corpora["224_q100_420"], tmp_path, threads, args.batch_size, repeats,
                                               args.quick)
        if "dali" in sections:
            report["dali"] = _dali_section(corpora["224_q100_420"], tmp_path, threads,
                                           min(args.batch_size, 32) if args.quick else args.batch_size, repeats)
        if "models" in sections:
            _log(f"section 4/4: models on {args.device}")
            report["models"] = _models_section(args, threads, repeats)
    report["targets"] = evaluate_targets(report)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def _image_folder(files: List[Path], folder: Path, count: int) -> Path:
    """A two-class ImageFolder of ``count`` files cycled from ``files`` (so a small corpus still makes
    several full batches; each copy is a real file, decoded from disk like any other)."""
    for index in range(count):
        source = files[index % len(files)]
        target = folder / f"class_{index % 2}" / f"{index:05d}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(source.read_bytes())
    return folder


def _loader_section(files: List[Path], tmp_path: Path, threads: int, batch_size: int, repeats: int,
                    quick: bool) -> Dict[str, object]:
    from .loader_bench import PIPELINES, measure_loaders

    folder = _image_folder(files, tmp_path / "loader_folder", count=max(len(files), 4 * batch_size))
    pipelines = [p for p in PIPELINES if not (quick and p in ("funloader_dct", "dctnet"))]
    raw = measure_loaders(folder, threads=(threads,), batch_size=batch_size, repeats=repeats, pipelines=pipelines,
                          progress=_log)
    results = raw["results"][str(threads)]
    methods = {name: {"images_per_s": round(stats["images_per_s"], 1),
                      "min_images_per_s": round(min(stats.get("images_per_s_all", [stats["images_per_s"]])), 1),
                      "max_images_per_s": round(max(stats.get("images_per_s_all", [stats["images_per_s"]])), 1)}
               for name, stats in results.items()}
    speedup = raw.get("speedup", {}).get(str(threads), {})
    ratios = {}
    for key, name in (("vs_pillow", "speedup_vs_pillow_pipeline"), ("vs_paper", "speedup_vs_paper_pipeline"),
                      ("vs_dctnet", "speedup_vs_dctnet_pipeline"), ("raw_vs_paper", "raw_speedup_vs_paper_pipeline")):
        if speedup.get(key):
            ratios[name] = round(speedup[key], 3)
    return {"threads": threads, "batch_size": batch_size, "images": raw.get("images"), "methods": methods,
            "ratios": ratios}


def _dali_section(files: List[Path], tmp_path: Path, threads: int, batch_size: int, repeats: int) -> Dict[str, object]:
    try:
        import nvidia.dali  # noqa: F401
    except Exception as error:  # DALI is optional
        return {"skipped": f"NVIDIA DALI not installed ({type(error).__name__})"}
    _log("section 3/4: DALI pipelines")
    from .dali.bench import measure_dali

    folder = _image_folder(files, tmp_path / "dali_folder", count=max(len(files), 4 * batch_size))
    try:
        raw = measure_dali(folder, threads=threads, batch_size=batch_size, repeats=repeats, progress=_log)
    except Exception as error:  # e.g. no compiler for the plugin: report, keep the rest of the run
        return {"skipped": f"{type(error).__name__}: {error}"}
    methods = {name: {"images_per_s": round(stats["images_per_s"], 1), "min_images_per_s": round(stats["min"], 1),
                      "max_images_per_s": round(stats["max"], 1)} for name, stats in raw["methods"].items()}
    names = {"fun_plugin/dali_rgb": "plugin_over_dali_rgb", "fun_plugin/fun_external_source": "plugin_over_fallback",
             "fun_plugin/dali_rgb_mixed": "plugin_over_dali_rgb_mixed"}
    ratios = {names.get(key, key): value for key, value in raw["ratios"].items()}
    return {"threads": threads, "batch_size": batch_size, "files": raw["files"], "methods": methods, "ratios": ratios,
            "plugin_build_or_load_s": raw.get("plugin_build_or_load_s")}


def _models_section(args, threads: int, repeats: int) -> Dict[str, object]:
    from .models.benchmark import measure_models

    if args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    elif args.quick:
        names = QUICK_MODELS
    else:
        names = None
    rows = measure_models(names, device=args.device, batch_sizes=(1, 64), repeats=max(2, repeats - 1 if args.quick else repeats),
                          threads=threads if args.device == "cpu" else None, warmup=1, progress=True)
    by_name = {row["name"]: row for row in rows}
    ratios = {}
    for fun, rgb in (("efun", "efficientnet_b0"), ("efun_s_plus", "mobilenetv2_100"), ("resfun", "resnet18"),
                     ("efun_l", "efficientnet_b1")):
        if fun in by_name and rgb in by_name:
            for batch in (1, 64):
                ours = _images_per_s(by_name[fun], batch)
                theirs = _images_per_s(by_name[rgb], batch)
                if ours and theirs:
                    ratios[f"{fun}_vs_{rgb}_batch{batch}"] = round(ours / theirs, 3)
    return {"device": args.device, "rows": rows, "ratios": ratios}


def _images_per_s(row, batch) -> Optional[float]:
    for timing in row["timings"]:
        if timing["batch"] == batch:
            return timing["images_per_s"]
    return None


def evaluate_targets(report: Dict[str, object]) -> List[Dict[str, object]]:
    """Each speed target of the issues with the measured ratio and whether it is met here."""
    rows = []
    for where, key, threshold, sense, text in TARGETS:
        section_name, _, corpus = where.partition(":")
        section = report.get(section_name)
        if not isinstance(section, dict) or "skipped" in section:
            rows.append({"target": text, "ratio": None, "threshold": threshold, "met": None, "where": where})
            continue
        if section_name == "decode":
            names = list(section) if corpus == "*" else [corpus]
            for name in names:
                ratio = section.get(name, {}).get("ratios", {}).get(key)
                rows.append(_target_row(text, ratio, threshold, sense, f"decode:{name}"))
        else:
            rows.append(_target_row(text, section.get("ratios", {}).get(key), threshold, sense, where))
    return rows


def _target_row(text, ratio, threshold, sense, where):
    met = None
    if ratio is not None:
        met = {"ge": ratio >= threshold, "gt": ratio > threshold, "le": ratio <= threshold}[sense]
    return {"target": text, "ratio": ratio, "threshold": threshold, "sense": sense, "met": met, "where": where}


# ---------------------------------------------------------------- output


def to_markdown(report: Dict[str, object]) -> str:
    machine = report["machine"]
    lines = ["# funloader bench", "", f"`{report['command']}` — {report['wall_s']} s", "",
             "## Machine", "", "| | |", "|---|---|"]
    for key, value in machine.items():
        lines.append(f"| {key} | {value} |")
    decode = report.get("decode")
    if decode:
        lines += ["", "## 1. Decode (µs per image, median [min-max] of repeats)", ""]
        for corpus, section in decode.items():
            lines += [f"### {corpus} ({section['files']} files)", "", "| method | µs/image | range | images/s |", "|---|---:|---:|---:|"]
            for name, stats in section["methods"].items():
                lines.append(f"| {name} | {stats['median_us']:.1f} | {stats['min_us']:.1f}-{stats['max_us']:.1f} | {stats['images_per_s']:.0f} |")
            lines += ["", "ratios: " + ", ".join(f"`{k}` = {v}" for k, v in section["ratios"].items()), ""]
    for name, title in (("loader", "2. Loader (images/s to normalised batches)"), ("dali", "3. DALI pipelines")):
        section = report.get(name)
        if not section:
            continue
        lines += ["", f"## {title}", ""]
        if "skipped" in section:
            lines.append(f"skipped: {section['skipped']}")
            continue
        lines += ["| method | images/s | range |", "|---|---:|---:|"]
        for method, stats in section.get("methods", {}).items():
            lines.append(f"| {method} | {stats.get('images_per_s', '-')} | {stats.get('min_images_per_s', '')}-{stats.get('max_images_per_s', '')} |")
        lines += ["", "ratios: " + ", ".join(f"`{k}` = {v}" for k, v in section.get("ratios", {}).items())]
    models = report.get("models")
    if models:
        lines += ["", f"## 4. Models on {models['device']} (images/s)", "",
                  "| model | params (M) | MMACs | paper top-1 | batch 1 img/s | batch 64 img/s |", "|---|---:|---:|---:|---:|---:|"]
        for row in models["rows"]:
            lines.append(f"| {row['name']} | {row['params'] / 1e6:.2f} | {row['mmacs']:.0f} | {row['paper_top1'] or '-'} | "
                         f"{_images_per_s(row, 1) or '-'} | {_images_per_s(row, 64) or '-'} |")
        lines += ["", "ratios: " + ", ".join(f"`{k}` = {v}" for k, v in models["ratios"].items())]
    lines += ["", "## Targets", "", "| target | where | ratio | threshold | met |", "|---|---|---:|---:|---|"]
    for row in report["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['target']} | {row['where']} | {row['ratio'] if row['ratio'] is not None else '-'} | {row['threshold']} | {met} |")
    return "\n".join(lines) + "\n"


def print_report(report: Dict[str, object]) -> None:
    print(to_markdown(report))


def plot(report: Dict[str, object], output: Path) -> List[Path]:
    """Throughput bars with speed-up ratios, and the models' accuracy-vs-size / -latency scatter."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    written = []
    bars = []  # (section title, {method: images/s}, reference method)
    for corpus, section in (report.get("decode") or {}).items():
        reference = "read_fun_out" if "read_fun_out" in section["methods"] else "read_fun"
        bars.append((f"decode {corpus} (ratios: {reference} over each baseline)",
                     {k: v["images_per_s"] for k, v in section["methods"].items()}, reference))
    for name in ("loader", "dali"):
        section = report.get(name)
        if section and "methods" in section:
            reference = next((m for m in ("funloader", "fun_plugin") if m in section["methods"]), next(iter(section["methods"])))
            bars.append((f"{name} (ratios: {reference} over each baseline)",
                         {k: v["images_per_s"] for k, v in section["methods"].items() if v.get("images_per_s")}, reference))
    if bars:
        fig, axes = plt.subplots(len(bars), 1, figsize=(9, 2.2 + 0.45 * sum(len(b[1]) for b in bars)), squeeze=False)
        for axis, (title, values, reference) in zip(axes[:, 0], bars):
            names = list(values)
            speeds = [values[n] for n in names]
            ours_flags = [n.startswith(("read_", "fun")) or n == reference for n in names]
            colours = ["tab:red" if flag else "tab:gray" for flag in ours_flags]
            axis.barh(names, speeds, color=colours)
            ours = values.get(reference)
            for index, speed in enumerate(speeds):
                label = f"{speed:,.0f}/s"
                if ours and not ours_flags[index]:
                    label += f"  (ours {ours / speed:.2f}x)"
                axis.text(speed, index, " " + label, va="center", fontsize=8)
            axis.set_title(title, fontsize=10)
            axis.set_xlabel("images / s (higher is better)")
            axis.set_xlim(0, max(speeds) * 1.45)
            axis.invert_yaxis()
        fig.tight_layout()
        path = output / "throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    models = report.get("models")
    if models and models["rows"]:
        from .models.benchmark import plot_results

        path = output / "models.png"
        plot_results(models["rows"], str(path), title=f"measured on {report['machine']['cpu']} ({models['device']})")
        written.append(path)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    report = run(args)
    benchmarking.write_json(output / "bench.json", report)
    (output / "bench.md").write_text(to_markdown(report))
    images = plot(report, output)
    print_report(report)
    print(f"wrote {output / 'bench.json'}, {output / 'bench.md'}" + "".join(f", {p}" for p in images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
