"""funloader/bench/: one small test per section, the harness, the corpora and the report; plus the
whole ``funloader bench --quick`` end to end (slow). Structure and real work only: no timing
thresholds (speed targets are measured by benchmarks, never asserted in tests)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import funloader
from funloader.bench import SECTIONS, Context, Result, Section, harness
from funloader.bench import corpus as bench_corpus
from funloader.errors import UsageError


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_summary(summary):
    assert summary["min_us"] <= summary["median_us"] <= summary["max_us"]
    assert _positive(summary["images_per_s"]) and summary["spread"] >= 1.0


# ----------------------------------------------------------------------------- harness


def test_round_robin_interleaves_after_warmup_and_self_timed_methods():
    calls = []

    def method(name, images):
        def run():
            calls.append(name)
            return images
        return run

    def self_timed():
        calls.append("c")
        return harness.Timed(images=10, seconds=0.5)

    result = harness.round_robin({"a": method("a", 4), "b": method("b", 2), "c": self_timed}, repeats=3, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 3  # warm-up once each, then round-robin
    assert result["c"]["median_us"] == pytest.approx(50_000) and result["c"]["images_per_s"] == pytest.approx(20)
    assert "images_per_cpu_s" in result["a"] and "images_per_cpu_s" not in result["c"]
    for summary in result.values():
        _check_summary(summary)
        assert summary["repeats"] == 3
    with pytest.raises(ValueError):
        harness.round_robin({"a": method("a", 1)}, repeats=0)


def test_summarize_and_busy_machine():
    stats = harness.summarize([300.0, 100.0, 200.0])
    assert (stats["median_us"], stats["min_us"], stats["max_us"], stats["images_per_s"], stats["spread"]) == \
        (200.0, 100.0, 300.0, 5000.0, 3.0)
    assert harness.busy_reasons([0.5, 0, 0], [1.0, 0, 0], 2, [harness.summarize([100, 110])]) == []
    reasons = harness.busy_reasons([3.5, 0, 0], [0.2, 0, 0], 2, [stats, harness.summarize([100, 101])])
    assert len(reasons) == 2 and "3.50 on 2 cores" in reasons[0] and "1 of 2" in reasons[1]


def test_machine_info():
    info = harness.machine_info(threads=2)
    assert info["libjpeg_turbo"].count(".") == 2 and info["threads_used"] == 2
    assert info["cpus_available"] >= 1 and len(info["load_average_1_5_15min"]) == 3
    assert info["torch"] and info["numpy"] and info["cpu"]


# ----------------------------------------------------------------------------- corpora


def test_corpora_from_real_photos(tmp_path, sample_jpegs):
    square = bench_corpus.build("224_q100_444", sample_jpegs[:3], tmp_path / "sq")
    assert [funloader.read_dct(p).sampling for p in square] == [[(1, 1)] * 3] * 3
    assert all((funloader.read_dct(p).height, funloader.read_dct(p).width) == (224, 224) for p in square)
    originals = bench_corpus.build("originals_q90_420", sample_jpegs, tmp_path / "orig", limit=7)
    sizes = [(funloader.read_dct(p).height, funloader.read_dct(p).width) for p in originals]
    assert len(sizes) == 7 and all(min(s) == 375 for s in sizes)
    aspects = {round(w / h, 2) for h, w in sizes}
    assert {1.33, 0.75, 1.0, 1.5, 0.67} <= aspects  # mixed aspect ratios, landscape and portrait
    assert all(funloader.read_dct(p).sampling[0] == (2, 2) for p in originals)
    folder = bench_corpus.image_folder(square, tmp_path / "tree", count=5)
    assert sorted(p.parent.name for p in folder.rglob("*.jpg")) == ["class_0"] * 3 + ["class_1"] * 2


def test_bad_data_folder_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        bench_corpus.source_photos(tmp_path / "nonexistent")
    with pytest.raises(UsageError, match="no .jpg"):
        bench_corpus.source_photos(tmp_path)
    result = subprocess.run([sys.executable, "-m", "funloader", "bench", "--data", str(tmp_path / "nonexistent")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"funloader bench: error: --data {tmp_path / 'nonexistent'}: no such folder"]
    for arguments, message in ((["--corpora", "nope"], "--corpora: unknown nope"), (["--sections", "x"], "--sections"),
                               (["--batch-size", "0"], "--batch-size must be at least 1")):
        result = subprocess.run([sys.executable, "-m", "funloader", "bench", *arguments], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr


# ----------------------------------------------------------------------------- sections


def test_registry_names_a_module_with_measure_per_section():
    import importlib

    for name, module_name in SECTIONS.items():
        module = importlib.import_module(module_name)
        assert callable(module.measure) and module.TITLE, name
    with pytest.raises(UsageError, match="unknown section"):
        funloader.bench.section_module("nope")


def test_decode_section(tmp_path, sample_jpegs):
    from funloader.bench import decode

    files = bench_corpus.build("224_q100_420", sample_jpegs[:3], tmp_path / "c")
    floor = decode.build_floor_program(tmp_path)
    section = decode.measure_corpora({"224_q100_420": files}, repeats=1, threads=[2], floor_binary=floor,
                                     methods=["read_fun", "read_fun_out", "read_batch_Nt", "pillow_rgb", "floor"])
    result = section.results["224_q100_420"]
    assert result.extra["files"] == 3 and result.extra["decodes_per_pass"] == decode.MIN_ITEMS
    assert set(result.extra["not_measured"]) == (set() if floor else {"floor"})
    expected = {"read_fun", "read_fun_out", "read_batch_1t", "read_batch_2t", "pillow_rgb"} | ({"floor"} if floor else set())
    assert set(result.methods) == expected
    for summary in result.methods.values():
        _check_summary(summary)
    assert _positive(result.ratios["speedup_vs_pillow_rgb"]) and _positive(result.ratios["batch_2t_over_1t"])
    assert ("read_fun_over_floor" in result.ratios) == (floor is not None)
    assert set(section.explained) == {row.name for row in decode.METHODS}


def test_floor_program_reports_its_own_time(tmp_path, sample_jpegs):
    from funloader.bench import decode

    assert decode.floor_source().name == "floor.c"
    binary = decode.build_floor_program(tmp_path)
    if binary is None:
        pytest.skip("no C compiler")
    timed = decode.run_floor(binary, sample_jpegs[:3], repeats=2)
    assert timed.images == 6 and timed.seconds > 0
    assert decode.run_floor(binary, sample_jpegs[:2], rgb=True, tuned=True).images == 2


def test_loader_section_and_dctnet_baseline(tmp_path, sample_jpegs):
    from PIL import Image

    from funloader.bench import loader

    files = bench_corpus.build("224_q100_420", sample_jpegs[:4], tmp_path / "c")
    folder = bench_corpus.image_folder(files, tmp_path / "tree", count=12)
    section = loader.measure_folder(folder, threads=[1], batch_size=8, repeats=1,
                                    pipelines=["funloader", "funloader_exact", "pillow", "dctnet"], label="224_q100_420")
    result = section.results["224_q100_420/1t"]
    assert {"funloader", "pillow", "dctnet"} <= set(result.methods)
    assert set(result.methods) | set(result.extra["not_measured"]) == {"funloader", "funloader_exact", "pillow", "dctnet"}
    for summary in result.methods.values():
        _check_summary(summary)
    assert {"speedup_vs_pillow_pipeline", "speedup_vs_dctnet_pipeline"} <= set(result.ratios)
    assert result.extra["images"] == 12 and result.extra["grid_blocks"] == 28
    # the DCTNet-style baseline does real work: its block DCT of decoded pixels matches the file's coefficients
    rgb = torch.from_numpy(np.array(Image.open(files[0]).convert("RGB")))[None]
    from_pixels = loader.dctnet_batch(rgb)[0]
    from_file = torch.from_numpy(funloader.read_fun(files[0], dequantize=True))
    luma_error = (from_pixels[:64] - from_file[:64]).abs()
    assert from_pixels.shape == (192, 28, 28)
    assert float(luma_error.mean()) < 1.0 and float(luma_error[0].max()) < 8  # q100: steps of 1; pixels rounded
    with pytest.raises(UsageError, match="unknown pipelines"):
        loader.measure_folder(folder, pipelines=["nope"])


def test_dali_section(tmp_path, sample_jpegs):
    pytest.importorskip("nvidia.dali")
    from funloader.bench import dali

    files = bench_corpus.build("224_q100_420", sample_jpegs[:4], tmp_path / "c")
    section = dali.measure_files(files, threads=1, batch_size=4, repeats=1, batches=2, warmup_batches=1,
                                 methods=["fun_plugin", "dali_rgb"], settle_s=0.0, label="224_q100_420")
    result = section.results["224_q100_420/1t"]
    assert set(result.methods) == {"fun_plugin", "dali_rgb"}
    assert all(s["repeats"] == 1 and _positive(s["images_per_s"]) for s in result.methods.values())
    assert set(result.ratios) == {"plugin_over_dali_rgb"}


def test_models_section_and_plot(tmp_path):
    from funloader.bench import models
    from funloader.bench.report import plot_models

    section = models.measure_models(["fun_test", "efun_s_plus", "mobilenetv2_100"], batch_sizes=(1, 2), repeats=2,
                                    threads=1, warmup=1)
    assert list(section.results) == ["batch 1", "batch 2"]
    efun = section.extra["models"]["efun_s_plus"]
    assert efun["params"] == 2_540_728 and efun["mmacs"] == pytest.approx(516.4, abs=0.06)
    for key, batch in (("batch 1", 1), ("batch 2", 2)):
        result = section.results[key]
        assert set(result.methods) == {"fun_test", "efun_s_plus", "mobilenetv2_100"}
        for summary in result.methods.values():
            _check_summary(summary)
            assert summary["latency_ms"] == pytest.approx(summary["median_us"] * batch / 1000, rel=1e-3)
        assert set(result.ratios) == {"efun_s_plus_vs_mobilenetv2_100"}
    pytest.importorskip("matplotlib")
    plot_models(section, tmp_path / "models.png")
    assert (tmp_path / "models.png").stat().st_size > 10_000


def test_prepare_section(sample_jpegs):
    from funloader.bench import prepare

    section = prepare.measure_photos(sample_jpegs[:2], workers=(1,), copies=1, repeats=1, formats=("folder",))
    summary = section.results["photos"].methods["folder 1w"]
    _check_summary(summary)
    assert section.results["photos"].extra["images"] == 2 and _positive(summary["images_per_cpu_s"])


# ----------------------------------------------------------------------------- report


def _report(busy=False):
    decode = Section("decode", "Decode", explained={"read_fun": "ours", "pillow_rgb": "Pillow", "unused": "x"})
    decode.results["224_q100_420"] = Result(
        {"read_fun": harness.summarize([100, 110]), "pillow_rgb": harness.summarize([250, 260])},
        {"speedup_vs_pillow_rgb": 2.5, "read_fun_over_floor": 1.2, "speedup_vs_jpeg2dct": 0.9},
        {"files": 12, "decodes_per_pass": 48})
    loader = Section("loader", "Loader", explained={"funloader": "ours", "pillow": "theirs"})
    loader.results["originals_q90_420/2t"] = Result(
        {"funloader": harness.summarize([300, 310]), "pillow": harness.summarize([900, 1000])},
        {"speedup_vs_pillow_pipeline": 3.1}, {"images": 256, "batch_size": 64})
    dali = Section("dali", "DALI", skipped="NVIDIA DALI is not installed")
    reasons = ["the 1-minute load average before the run was 5.00 on 2 cores"] if busy else []
    return {"command": "funloader bench", "machine": harness.machine_info(), "load_before": [0.1, 0, 0],
            "load_after": [0.2, 0, 0], "wall_s": 1.0, "reliability": {"busy": busy, "reasons": reasons},
            "sections": {s.name: s.to_dict() for s in (decode, loader, dali)}}


def test_report_speaks_to_users_and_targets_only_on_request(tmp_path):
    from funloader.bench import report as bench_report

    report = json.loads(json.dumps(_report()))  # what bench.json holds
    text = bench_report.to_markdown(report)
    assert "## What funloader buys on this machine" in text
    assert "2.50x faster than Pillow's decode to RGB" in text and "3.10x the torchvision-style Pillow pipeline" in text
    assert "(12 files, each decoded 4x per pass)" in text
    assert "- `pillow_rgb`: Pillow" in text and "`unused`" not in text  # every shown row explained, only those
    assert "not measured: NVIDIA DALI is not installed" in text
    assert "target" not in text.lower()
    targets = bench_report.evaluate_targets(report)
    met = {(row["where"], row["key"]): row["met"] for row in targets}
    assert met[("decode:224_q100_420", "read_fun_over_floor")] is False
    assert met[("decode:224_q100_420", "speedup_vs_pillow_rgb")] is True
    assert met[("decode:224_q100_420", "speedup_vs_jpeg2dct")] is False
    assert met[("decode:224_q100_420", "batch_2t_over_1t")] is None
    assert met[("loader:originals_q90_420/2t", "speedup_vs_pillow_pipeline")] is True
    assert met[("loader:originals_q90_420/2t", "speedup_vs_paper_pipeline")] is None
    assert met[("dali:*", "plugin_over_dali_rgb")] is None and not any(r["where"].startswith("models") for r in targets)
    assert "| read_fun within 1.10x" in bench_report.to_markdown(report, targets=True)
    busy = bench_report.to_markdown(_report(busy=True))
    assert "These numbers are unreliable" in busy and "What funloader buys" not in busy
    assert "The 1-minute load average before the run was 5.00" in busy
    pytest.importorskip("matplotlib")
    written = bench_report.plot(report, tmp_path)
    assert [p.name for p in written] == ["throughput.png"] and written[0].stat().st_size > 10_000


def test_context_builds_corpora_once(tmp_path, sample_jpegs):
    context = Context(quick=True, data=str(sample_jpegs[0].parent), workdir=tmp_path)
    first = context.corpus("224_q90_420")
    assert len(first) == 12 and context.corpus("224_q90_420") is first
    with pytest.raises(UsageError, match="unknown corpus"):
        context.corpus("nope")


@pytest.mark.slow
def test_bench_quick_end_to_end(tmp_path):
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "funloader", "bench", "--quick", "--output", str(output)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "bench.json").read_text())
    assert list(report["sections"]) == ["decode", "loader", "dali", "models"]
    assert (output / "bench.md").read_text() in result.stdout
    assert "target" not in (output / "bench.md").read_text().lower()
    for name in ("throughput.png", "models.png"):
        assert (output / name).stat().st_size > 10_000
    sections = report["sections"]
    assert set(sections["decode"]["results"]) == {"224_q100_420", "originals_q90_420"}
    for result_ in sections["decode"]["results"].values():
        assert {"read_fun", "read_batch_1t", "pillow_rgb", "jpeg2dct", "floor", "floor_tuned", "libjpeg_rgb"} <= \
            set(result_["methods"])
        assert all(_positive(v) for v in result_["ratios"].values())
    for result_ in sections["loader"]["results"].values():
        assert {"speedup_vs_pillow_pipeline", "speedup_vs_paper_pipeline"} <= set(result_["ratios"])
    assert set(sections["models"]["results"]) == {"batch 1", "batch 16"}
    assert report["reliability"]["busy"] in (True, False)


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """benchmarks/gpu_check.py in its dry mode (--device cpu --quick) does every step it can and
    writes one JSON and a log, so that the GPU script cannot rot between GPU sessions."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "--device", "cpu", "--quick",
                             "--budget-s", "900"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = record["steps"]
    assert list(steps) == ["load", "tests", "loader_equality", "train", "loader_throughput", "models", "train_step"]
    assert steps["tests"]["status"].startswith("skipped: ")
    for name in ("load", "loader_equality", "loader_throughput", "models", "train_step"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert steps["train"]["status"] in ("ok",) or steps["train"]["status"].startswith("skipped: ")
    assert steps["loader_equality"]["raw_int16"]["bit_identical"] is True
    assert record["machine"]["cpus_available"] >= 1 and record["summary"]["load"] == "ok"
    assert all(_positive(v) for row in steps["loader_throughput"]["images_per_s"].values() for v in row.values())
    models = steps["models"]
    assert set(models["table"]) == {"fp32 batch 1", "fp32 batch 2", "bf16 batch 1", "bf16 batch 2"}
    if "parameter_counts_vs_timm" in models:  # timm installed: our baselines have its parameter counts
        assert all(row["equal"] for row in models["parameter_counts_vs_timm"].values())
    else:
        assert models["timm"].startswith("skipped: ")
    assert _positive(steps["train_step"]["efun_over_efficientnet_b0"])
    log = (tmp_path / "gpu_check.log").read_text()
    assert "step train_step: ok" in log
