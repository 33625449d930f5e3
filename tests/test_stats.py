"""compute_stats / load_stats / `funloader stats`: values against a direct numpy computation."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import funloader
from funloader import transforms as T
from funloader.stats import compute_stats, load_stats, main, stats_filename


@pytest.fixture()
def johns_copy(tmp_path, shared_data):
    root = tmp_path / "johns"
    shutil.copytree(shared_data / "labelled" / "dlib_johns", root)
    return root


def _reference(root, dequantize, size):
    dataset = funloader.DCTImageFolder(root, dequantize=dequantize)
    stack = np.stack([T.center_crop(funloader.read_fun(p, dequantize=dequantize), size) for p, _ in dataset.samples])
    values = stack.astype(np.float64).transpose(1, 0, 2, 3).reshape(192, -1)
    return values.mean(axis=1), values.std(axis=1)


@pytest.mark.parametrize("dequantize", [True, False])
def test_stats_equal_numpy_reference_and_are_saved(johns_copy, dequantize):
    stats = compute_stats(johns_copy, dequantize=dequantize, size=16, batch_size=7, progress=False)
    mean, std = _reference(johns_copy, dequantize, 16)
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-9, atol=1e-9)
    assert stats["count"] == 55 and stats["positions"] == 256 and stats["dequantized"] is dequantize
    saved = johns_copy / stats_filename(dequantize)
    assert json.loads(saved.read_text())["mean"] == stats["mean"]
    loaded = load_stats(johns_copy, dequantize=dequantize)
    assert loaded["std"] == stats["std"] and loaded["path"] == str(saved)
    assert load_stats(johns_copy, dequantize=not dequantize) is None
    sums = np.asarray(stats["mean"]) * 55 * 256
    if dequantize:
        assert std[0] > 50  # DC of Y spreads widely
    else:  # raw coefficients are integers, so are their sums
        np.testing.assert_allclose(sums, np.round(sums), atol=1e-6)


def test_subset_and_failed_files_and_prepare_style_file(johns_copy):
    (johns_copy / "John_Simm" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    stats = compute_stats(johns_copy, max_images=20, seed=1, output=None, progress=False, size=19)
    assert stats["count"] + stats["failed"] == 20 and "path" not in stats
    full = compute_stats(johns_copy, output=None, progress=False, size=19)
    assert full["failed"] == 1 and full["count"] == 55
    # a stats.json as written by `funloader prepare --stats` (raw) is found for the raw mode only
    (johns_copy / "stats.json").write_text(json.dumps({"dequantized": False, "mean": [0.0] * 192, "std": [1.0] * 192}))
    assert load_stats(johns_copy, dequantize=False)["path"].endswith("stats.json")
    assert load_stats(johns_copy, dequantize=True) is None
    (johns_copy / "bad.json").write_text(json.dumps({"mean": [0.0] * 3, "std": [1.0] * 3}))
    with pytest.raises(ValueError, match="192"):
        load_stats(johns_copy / "bad.json")


def test_cli(johns_copy, capsys):
    assert main([str(johns_copy), "--raw", "--size", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "55 images" in out and "raw" in out and "stats-raw.json" in out
    assert (johns_copy / "stats-raw.json").is_file()
    assert main([str(johns_copy / "missing"), "--no-progress"]) == 1
    assert "error" in capsys.readouterr().err
