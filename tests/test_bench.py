"""funloader/bench.py and funloader/benchmarking.py: `funloader bench --quick` runs end to end and its
JSON carries every section's numbers and ratios (structure and positivity only: no timing thresholds)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from funloader import benchmarking


def _positive_number(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_bench_quick_report(tmp_path):
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "funloader", "bench", "--quick", "--output", str(output)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output / "bench.json").read_text())
    assert (output / "bench.md").read_text().startswith("# funloader bench")
    assert (output / "throughput.png").stat().st_size > 10_000
    assert (output / "models.png").stat().st_size > 10_000
    machine = report["machine"]
    for key in ("cpu", "cpus_available", "libjpeg_turbo", "torch", "numpy"):
        assert machine[key], key

    assert set(report["decode"]) == {"224_q100_420", "imagenet_q90_420"}
    for corpus in report["decode"].values():
        for name in ("read_fun", "read_batch_1t", "pillow_rgb", "jpeg2dct", "floor", "floor_tuned", "libjpeg_rgb"):
            stats = corpus["methods"][name]
            assert stats["min_us"] <= stats["median_us"] <= stats["max_us"], name
            assert _positive_number(stats["images_per_s"]), name
        assert len(corpus["ratios"]) >= 5
        assert all(_positive_number(v) for v in corpus["ratios"].values()), corpus["ratios"]

    loader = report["loader"]
    assert loader["methods"] and all(_positive_number(v) for v in loader["ratios"].values())
    assert {"speedup_vs_pillow_pipeline", "speedup_vs_paper_pipeline"} <= set(loader["ratios"])
    dali = report["dali"]
    if "skipped" not in dali:
        assert {"plugin_over_dali_rgb", "plugin_over_fallback"} <= set(dali["ratios"])
        assert all(_positive_number(v) for v in dali["ratios"].values())

    rows = report["models"]["rows"]
    assert {r["name"] for r in rows} >= {"efun", "efficientnet_b0"}
    for row in rows:
        assert row["params"] > 1e6 and _positive_number(row["mmacs"])
        assert {t["batch"] for t in row["timings"]} == {1, 64}
        assert all(_positive_number(t["images_per_s"]) for t in row["timings"])
    assert all(_positive_number(v) for v in report["models"]["ratios"].values())

    targets = report["targets"]
    assert len(targets) >= 8
    for target in targets:
        if target["ratio"] is not None:
            assert _positive_number(target["ratio"]) and isinstance(target["met"], bool)


def test_summarize_and_targets():
    stats = benchmarking.summarize([300.0, 100.0, 200.0])
    assert stats["median_us"] == 200.0 and stats["min_us"] == 100.0 and stats["max_us"] == 300.0
    assert stats["images_per_s"] == 5000.0
    from funloader.bench import evaluate_targets

    report = {"decode": {"224_q100_420": {"ratios": {"read_fun_over_floor": 1.2, "speedup_vs_pillow_rgb": 1.5,
                                                     "speedup_vs_jpeg2dct": 0.9, "batch_2t_over_1t": 1.9}}},
              "loader": {"ratios": {"speedup_vs_pillow_pipeline": 2.5}}, "dali": {"skipped": "no DALI"}}
    met = {r["where"] + "|" + r["target"]: r["met"] for r in evaluate_targets(report)}
    assert met["decode:224_q100_420|read_fun within 1.10x of the jpeg_read_coefficients floor (224 q100)"] is False
    assert met["decode:224_q100_420|read_fun >= 1.3x faster than Pillow decode to RGB"] is True
    assert met["decode:224_q100_420|read_fun faster than jpeg2dct on every corpus"] is False
    assert met["loader|DCTLoader >= 2x the torchvision-style Pillow pipeline"] is True
    assert met["loader|DCTLoader >= 5x the paper's re-encode pipeline"] is None
    assert met["dali|DALI plugin >= 1.5x DALI's CPU RGB pipeline"] is None


def test_machine_info_and_floor_program(tmp_path, sample_jpegs):
    info = benchmarking.machine_info(threads=2)
    assert info["libjpeg_turbo"].count(".") == 2 and info["threads_used"] == 2
    binary = benchmarking.build_floor_program(tmp_path)
    if binary is None:
        pytest.skip("no C compiler")
    per_image = benchmarking.run_floor(binary, sample_jpegs[:3], repeats=2)
    assert len(per_image) == 2 and all(v > 0 for v in per_image)
    corpus = benchmarking.make_corpus(sample_jpegs[:3], tmp_path / "c", size=224, quality=100, subsampling="444")
    from funloader import read_dct

    assert [read_dct(p).sampling for p in corpus] == [[(1, 1)] * 3] * 3
    assert all(read_dct(p).width == 224 for p in corpus)
