"""The report: what a user reads (markdown tables with every row explained, a plain summary of
what funloader buys here, a warning when the machine was too busy to trust), the plots, and the
project's speed targets (one table, shown only with ``--targets``).

``report`` below is the dict that ``bench.json`` holds: ``{"command", "machine", "corpora",
"sections": {name: Section.to_dict()}, "reliability": {"busy": bool, "reasons": [...]}, ...}``.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Dict, List, Optional

from . import Section
from .corpus import DESCRIPTIONS

#: The project's speed targets: (section, setting patterns separated by "|", ratio, threshold, sense,
#: text).  ``sense``: "ge" ratio >= threshold, "gt" ratio > threshold, "le" ratio <= threshold.
TARGETS = [
    ("decode", "224_q100_420", "read_fun_over_floor", 1.10, "le",
     "read_fun within 1.10x of the jpeg_read_coefficients floor (224 q100)"),
    ("decode", "224_q100_420", "speedup_vs_pillow_rgb", 1.3, "ge", "read_fun >= 1.3x faster than Pillow decode to RGB"),
    ("decode", "*", "speedup_vs_jpeg2dct", 1.0, "gt", "read_fun faster than jpeg2dct on every corpus"),
    ("decode", "224_q100_420", "batch_2t_over_1t", 1.8, "ge", "read_batch with 2 threads >= 1.8x one thread"),
    ("decode", "224_q100_420|224_q100_444|224_q90_420|originals_q90_420", "batch_1t_speedup_vs_floor_tuned", 1.3, "ge",
     "read_batch at 1 thread >= 1.3x faster than the jpeg_read_coefficients floor (own Huffman decoder)"),
    ("loader", "*", "speedup_vs_pillow_pipeline", 2.0, "ge", "DCTLoader >= 2x the torchvision-style Pillow pipeline"),
    ("loader", "*", "speedup_vs_paper_pipeline", 5.0, "ge", "DCTLoader >= 5x the paper's re-encode pipeline"),
    ("loader", "originals_q90_420", "exact_speedup_vs_pillow_pipeline", 2.0, "ge",
     "DCTLoader with exact RandomResizedCrop >= 2x the Pillow pipeline on originals"),
    ("loader", "originals_q90_420", "exact_speedup_vs_paper_pipeline", 6.0, "ge",
     "DCTLoader with exact RandomResizedCrop >= 6x the paper's pipeline on originals"),
    ("loader", "224_q100_420", "exact_over_nearest", 0.7, "ge", "exact RandomResizedCrop >= 0.7x nearest (224 q100)"),
    ("loader", "*", "randaugment_mixup_cost_vs_funloader_exact", 1.25, "le",
     "RandAugment(2, 9) + Mixup cost <= 1.25x the exact-crop pipeline"),
    ("dali", "*", "plugin_over_dali_rgb", 1.5, "ge", "DALI plugin >= 1.5x DALI's CPU RGB pipeline"),
    ("dali", "*", "plugin_over_fallback", 1.3, "ge", "DALI plugin >= 1.3x the external_source fallback"),
]
#: method names that are funloader's own (red in the plots); everything else is a baseline
OURS_PREFIXES = ("read_fun", "read_batch", "funloader", "fun_")
#: a baseline compared with another of our methods than the panel's first (it does the same work)
#: (the pixel pipelines do a real RandomResizedCrop, so they are compared with the exact crop, the default)
COMPARED_WITH = {"pillow_rrc": "read_fun_exact", "pillow": "funloader_exact", "paper": "funloader_exact",
                 "dctnet": "funloader_exact"}


def is_ours(method: str) -> bool:
    return method.startswith(OURS_PREFIXES)


def sections_of(report: Dict[str, object]) -> Dict[str, Section]:
    return {name: Section.from_dict(data) for name, data in report.get("sections", {}).items()}


def setting_label(key: str) -> str:
    """``"224_q100_420/2t"`` -> ``"224x224 q100 4:2:0 (the paper's prepared input), 2 threads"``."""
    corpus, _, threads = key.partition("/")
    text = DESCRIPTIONS.get(corpus, corpus)
    if threads.endswith("t") and threads[:-1].isdigit():
        text += f", {threads[:-1]} thread{'s' if threads != '1t' else ''}"
    return text


# ---------------------------------------------------------------- targets


def evaluate_targets(report: Dict[str, object]) -> List[Dict[str, object]]:
    """Each speed target with the measured ratio and whether it is met here (None: not measured)."""
    sections = report.get("sections", {})
    rows = []
    for name, pattern, key, threshold, sense, text in TARGETS:
        if name not in sections:  # the section did not run
            continue
        section = sections.get(name)
        settings = [] if not section or section.get("skipped") else \
            [s for s in section["results"]
             if any(fnmatch.fnmatch(s, p) or fnmatch.fnmatch(s, p + "/*") for p in pattern.split("|"))]
        if not settings:
            rows.append({"target": text, "where": f"{name}:{pattern}", "key": key, "ratio": None, "threshold": threshold,
                         "sense": sense, "met": None})
        for setting in settings:
            ratio = section["results"][setting]["ratios"].get(key)
            met = None if ratio is None else {"ge": ratio >= threshold, "gt": ratio > threshold,
                                              "le": ratio <= threshold}[sense]
            rows.append({"target": text, "where": f"{name}:{setting}", "key": key, "ratio": ratio, "threshold": threshold,
                         "sense": sense, "met": met})
    return rows


def targets_markdown(rows: List[Dict[str, object]]) -> str:
    lines = ["## The project's speed targets", "", "| target | where | ratio | threshold | met |", "|---|---|---:|---:|---|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        ratio = "-" if row["ratio"] is None else row["ratio"]
        lines.append(f"| {row['target']} | {row['where']} | {ratio} | {row['threshold']} | {met} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the user's report


def _x(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def headline(sections: Dict[str, Section]) -> List[str]:
    """Plain sentences: what funloader buys on this machine (from the ratios)."""
    lines = []
    decode = sections.get("decode")
    if decode and not decode.skipped:
        for key, result in decode.results.items():
            r = result.ratios
            parts = [f"{_x(r.get('speedup_vs_pillow_rgb'))} faster than Pillow's decode to RGB"]
            if "speedup_vs_jpeg2dct" in r:
                parts.append(f"{_x(r['speedup_vs_jpeg2dct'])} faster than jpeg2dct")
            if "read_fun_over_floor" in r:
                parts.append(f"{r['read_fun_over_floor']:.2f}x the cost of the floor (1.00 = libjpeg-turbo's jpeg_read_coefficients alone)")
            if "speedup_vs_libjpeg_decoder" in r:
                parts.append(f"its own Huffman decoder {_x(r['speedup_vs_libjpeg_decoder'])} as fast as "
                             "libjpeg-turbo's coefficient reader")
            lines.append(f"Reading coefficients ({setting_label(key)}): funloader is " + ", ".join(parts) + ".")
    loader = sections.get("loader")
    if loader and not loader.skipped:
        for key, result in loader.results.items():
            ours = result.methods.get("funloader", {}).get("images_per_s")
            r = result.ratios
            if ours:
                text = f"Loading augmented batches ({setting_label(key)}): DCTLoader (block-aligned crop) {ours:,.0f} images/s"
                versus = [f"{_x(r[k])} the {label}" for k, label in (
                    ("speedup_vs_pillow_pipeline", "torchvision-style Pillow pipeline"),
                    ("speedup_vs_paper_pipeline", "paper's pipeline"),
                    ("speedup_vs_dctnet_pipeline", "DCTNet-style pipeline")) if k in r]
                exact = result.methods.get("funloader_exact", {}).get("images_per_s")
                if exact and "exact_speedup_vs_pillow_pipeline" in r:
                    versus.append(f"with the exact RandomResizedCrop (torchvision's, from the coefficients) "
                                  f"{exact:,.0f} images/s, {_x(r['exact_speedup_vs_pillow_pipeline'])} the Pillow pipeline")
                lines.append(text + (", " + ", ".join(versus) if versus else "") + ".")
    dali = sections.get("dali")
    if dali and not dali.skipped:
        for key, result in dali.results.items():
            r = result.ratios
            if "plugin_over_dali_rgb" in r:
                lines.append(f"In DALI ({setting_label(key)}): funloader's operator delivers "
                             f"{_x(r['plugin_over_dali_rgb'])} the images/s of DALI's own RGB pipeline.")
    models = sections.get("models")
    if models and not models.skipped:
        for key, result in models.results.items():
            pairs = [f"{fun} runs at {_x(v)} the images/s of {rgb}" for k, v in result.ratios.items()
                     for fun, rgb in [k.split("_vs_")]]
            if pairs:
                lines.append(f"Models at {key} on {models.extra.get('device')} (the FUN model against the RGB "
                             "baseline of about its accuracy): " + "; ".join(pairs) + ".")
    return lines


def _methods_table(section: Section, key: str) -> List[str]:
    result = section.results[key]
    if section.name == "decode":
        header = ["| method | µs per image | range (min-max) | images/s |", "|---|---:|---:|---:|"]
        rows = [f"| {name} | {s['median_us']:.1f} | {s['min_us']:.1f}-{s['max_us']:.1f} | {s['images_per_s']:,.0f} |"
                for name, s in result.methods.items()]
    else:
        header = ["| method | images/s | range (min-max) |", "|---|---:|---:|"]
        rows = [f"| {name} | {s['images_per_s']:,.0f} | {1e6 / s['max_us']:,.0f}-{1e6 / s['min_us']:,.0f} |"
                for name, s in result.methods.items()]
    lines = header + rows
    missing = result.extra.get("not_measured") or {}
    if missing:
        lines += ["", "not measured here: " + ", ".join(f"`{k}` ({v})" for k, v in missing.items())]
    if result.ratios:
        lines += ["", "ratios: " + ", ".join(f"`{k}` = {v}" for k, v in result.ratios.items())]
    return lines


def _models_table(section: Section) -> List[str]:
    batches = [key for key in section.results]
    info = section.extra.get("models", {})
    header = "| model | params (M) | MMACs | paper top-1 | " + " | ".join(
        f"{b}: ms | {b}: images/s" for b in batches) + " |"
    lines = [header, "|---|---:|---:|---:|" + "---:|---:|" * len(batches)]
    for name, row in info.items():
        cells = []
        for b in batches:
            s = section.results[b].methods.get(name)
            cells += [f"{s['latency_ms']:.1f}", f"{s['images_per_s']:,.1f}"] if s else ["-", "-"]
        lines.append(f"| {name} | {row['params'] / 1e6:.2f} | {row['mmacs']:.0f} | {row['paper_top1'] or '-'} | "
                     + " | ".join(cells) + " |")
    for key, result in section.results.items():
        if result.ratios:
            lines += ["", f"{key}: " + ", ".join(f"`{k}` = {v}" for k, v in result.ratios.items())]
    return lines


def to_markdown(report: Dict[str, object], *, targets: bool = False) -> str:
    """The user's report (and the targets table when ``targets``)."""
    machine = report["machine"]
    sections = sections_of(report)
    reliability = report.get("reliability", {})
    lines = ["# funloader bench", "",
             f"`{report['command']}`: {report.get('wall_s', '?')} s on {machine.get('cpu')}, "
             f"{machine.get('cpus_available')} CPUs available, load average (1, 5, 15 min) "
             f"{report.get('load_before')} before and {report.get('load_after')} after.", ""]
    if reliability.get("busy"):
        lines += ["**These numbers are unreliable: the machine was busy.** " + " ".join(
                      reason[0].upper() + reason[1:] + "." for reason in reliability["reasons"]) +
                  " Other programs took CPU time from the measurements, so the ratios below may be wrong in "
                  "either direction; no conclusions are drawn. Rerun on an idle machine.", ""]
    else:
        lines += ["## What funloader buys on this machine", ""] + [f"- {line}" for line in headline(sections)] + [""]
    number = 0
    for name, section in sections.items():
        number += 1
        lines += [f"## {number}. {section.title}", ""]
        if section.skipped:
            lines += [f"not measured: {section.skipped}", ""]
            continue
        if name == "models":
            lines += [f"On {section.extra.get('device')}, {section.extra.get('dtype')}; median of the repeats.", ""]
            lines += _models_table(section) + [""]
        else:
            for key, result in section.results.items():
                extra = result.extra
                count = extra.get("files") or extra.get("images")
                detail = f"{count} files" if count else ""
                if name == "decode" and extra.get("decodes_per_pass", count) != count:
                    detail += f", each decoded {extra['decodes_per_pass'] // count}x per pass"
                if extra.get("batch_size"):
                    detail += f", batch {extra['batch_size']}"
                lines += [f"### {setting_label(key)} ({detail})", ""] + _methods_table(section, key) + [""]
        used = {m for result in section.results.values() for m in result.methods}
        explained = [(m, text) for m, text in section.explained.items()
                     if m in used or m.endswith("Nt") or name in ("models", "prepare")]
        if explained:
            lines += ["What the rows are:", ""] + [f"- `{m}`: {text}" for m, text in explained] + [""]
    if targets:
        lines += [targets_markdown(report.get("targets") or evaluate_targets(report))]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------- plots


def plot(report: Dict[str, object], output: Path, prefix: str = "") -> List[Path]:
    """``throughput.png`` (images/s bars, funloader red, baselines grey) and ``models.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except Exception:
        return []
    sections = sections_of(report)
    written = []
    panels = []  # (title, {method: images/s}, reference method)
    for name in ("decode", "loader", "dali"):
        section = sections.get(name)
        if not section or section.skipped:
            continue
        for key, result in section.results.items():
            values = {m: s["images_per_s"] for m, s in result.methods.items()}
            reference = next((m for m in ("read_fun_out", "read_fun", "funloader", "fun_plugin") if m in values), None)
            panels.append((f"{name}: {setting_label(key)}", values, reference))
    if panels:
        fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                                 figsize=(10, 1.4 + 0.33 * sum(len(p[1]) + 2 for p in panels)))
        for axis, (title, values, reference) in zip(axes[:, 0], panels):
            names = list(values)
            speeds = [values[n] for n in names]
            colours = ["tab:red" if is_ours(n) else "tab:gray" for n in names]
            axis.barh(names, speeds, color=colours)
            for index, (method, speed) in enumerate(zip(names, speeds)):
                label = f" {speed:,.0f}/s"
                compared = COMPARED_WITH.get(method) if COMPARED_WITH.get(method) in values else reference
                if values.get(compared) and not is_ours(method):
                    label += f"   {compared} is {values[compared] / speed:.2f}x this"
                axis.text(speed, index, label, va="center", fontsize=8)
            axis.set_title(title, fontsize=10, loc="left")
            axis.set_xlim(0, max(speeds) * 1.6)
            axis.invert_yaxis()
            axis.tick_params(axis="y", labelsize=8)
        axes[-1, 0].set_xlabel("images / s (higher is better)")
        fig.legend(handles=[Patch(color="tab:red", label="funloader"), Patch(color="tab:gray", label="baselines")],
                   loc="upper right", fontsize=9, ncol=2)
        if report.get("reliability", {}).get("busy"):
            fig.suptitle("machine busy: these numbers are unreliable", x=0.02, ha="left", fontsize=10, color="tab:red")
        fig.tight_layout(rect=(0, 0, 1, 0.985 - 0.25 / fig.get_size_inches()[1]))
        path = output / f"{prefix}throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    models = sections.get("models")
    if models and not models.skipped and models.results:
        path = output / f"{prefix}models.png"
        busy = " (machine busy: these numbers are unreliable)" if report.get("reliability", {}).get("busy") else ""
        plot_models(models, path, title=f"measured on {report['machine'].get('gpu') or report['machine'].get('cpu')} "
                                        f"({models.extra.get('device')}){busy}")
        written.append(path)
    return written


def plot_models(section: Section, path: Path, title: str = "") -> None:
    """Like the paper's Figures 1 and 4: parameters vs paper top-1, and measured images/s at each
    batch size vs paper top-1 (one panel per batch size, every point labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    info = {n: r for n, r in section.extra.get("models", {}).items() if r.get("paper_top1") is not None}
    batches = list(section.results)
    fig, axes = plt.subplots(1, 1 + len(batches), figsize=(5.2 * (1 + len(batches)), 6.0), squeeze=False)
    axes = axes[0]
    styles = {"fun": ("tab:red", "o"), "rgb": ("tab:blue", "s")}

    labels = []

    def scatter(axis, points, log):
        for name, x, y in points:
            colour, marker = styles.get(info[name]["family"], ("tab:gray", "^"))
            axis.scatter([x], [y], color=colour, marker=marker, zorder=3)
            labels.append(axis.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points"))
        if points:
            xs = [p[1] for p in points]
            ys = [p[2] for p in points]
            low, high = min(xs), max(xs)
            if log:
                from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

                axis.set_xscale("log")
                axis.set_xlim(low / 1.3, high * 2.2)
                axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
                axis.xaxis.set_minor_formatter(NullFormatter())
            else:
                axis.set_xlim(low - 0.05 * (high - low + 1), high + 0.35 * (high - low + 1))
            axis.set_ylim(min(ys) - 1, max(ys) + 1)
        axis.grid(alpha=0.3)

    scatter(axes[0], [(n, r["params"] / 1e6, r["paper_top1"]) for n, r in info.items()], log=False)
    axes[0].set_xlabel("parameters (M, our builders)")
    axes[0].set_ylabel("ImageNet top-1 (%, from the paper)")
    axes[0].set_title("Size vs accuracy (paper Fig. 1)", fontsize=10)
    for axis, key in zip(axes[1:], batches):
        methods = section.results[key].methods
        scatter(axis, [(n, methods[n]["images_per_s"], r["paper_top1"]) for n, r in info.items() if n in methods],
                log=True)
        axis.set_xlabel(f"measured images / s at {key} (log; higher is better)")
        axis.set_title(f"Throughput vs accuracy at {key} (paper Fig. 4)", fontsize=10)
    fig.legend(handles=[Line2D([], [], color="tab:red", marker="o", linestyle="", label="FUN models (DCT input)"),
                        Line2D([], [], color="tab:blue", marker="s", linestyle="", label="RGB baselines")],
               loc="lower center", ncol=2, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _separate_labels(fig, labels)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _separate_labels(fig, labels, rounds: int = 30) -> None:
    """Move point labels of one axes apart vertically until no two overlap (a few rounds)."""
    renderer = fig.canvas.get_renderer()
    points_per_pixel = 72.0 / fig.dpi
    for _ in range(rounds):
        moved = False
        boxes = [label.get_window_extent(renderer) for label in labels]
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                if labels[i].axes is not labels[j].axes or not boxes[i].overlaps(boxes[j]):
                    continue
                upper, lower = (i, j) if boxes[i].y0 >= boxes[j].y0 else (j, i)
                shift = (min(boxes[upper].y1, boxes[lower].y1) - max(boxes[upper].y0, boxes[lower].y0)) / 2 + 1
                for index, sign in ((upper, 1), (lower, -1)):
                    x, y = labels[index].xyann
                    labels[index].xyann = (x, y + sign * shift * points_per_pixel)
                moved = True
                boxes = [label.get_window_extent(renderer) for label in labels]
        if not moved:
            return
