"""compute_stats / load_stats / `funloader stats`: values against a direct numpy computation."""
from __future__ import annotations

import json
import os
import shutil
import tarfile

import numpy as np
import pytest

import funloader
from funloader import transforms as T
from funloader.errors import UsageError
from funloader.stats import StatsError, cache_path, compute_stats, load_stats, main, resolve, stats_filename


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
    assert main([str(johns_copy / "missing"), "--no-progress"]) == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- resolve
GOOD_MEAN, GOOD_STD = np.linspace(-3, 3, 192), np.linspace(0.5, 9, 192)


def _with(values, index, value):
    values = list(values)
    values[index] = value
    return values


@pytest.mark.parametrize("spec, message", [
    ({"mean": _with(GOOD_MEAN, 7, float("nan")), "std": GOOD_STD}, r"normalize \(dict\): 'mean' channel 7 is nan"),
    ((GOOD_MEAN, _with(GOOD_STD, 3, float("nan"))), r"normalize \(mean, std\): 'std' channel 3 is nan"),
    ((GOOD_MEAN, _with(GOOD_STD, 9, 1e-300)), r"'std' channel 9 is 1e-300; a std must be 0 .* at least 1e-06"),
    ((GOOD_MEAN, _with(GOOD_STD, 0, -1.0)), r"'std' channel 0 is -1.0"),
    ((GOOD_MEAN, _with(GOOD_STD, 0, 1e39)), r"'std' channel 0 is 1e\+39 \(not a finite float32"),
    ({"mean": ["1.0"] * 192, "std": GOOD_STD}, r"'mean' must be 192 numbers, got <U3 values"),
    ({"mean": [[0.0, 1.0]] * 192, "std": GOOD_STD}, r"'mean' must be 192 numbers, got shape \(192, 2\)"),
    ({"mean": [0.0] * 191 + [[0.0]], "std": GOOD_STD}, r"'mean' must be 192 numbers"),
    ({"mean": GOOD_MEAN}, r"'std' must be 192 numbers, got NoneType"),
    ((GOOD_MEAN[:100], GOOD_STD), r"shape \(100,\)"),
    ("auto-ish", "no funloader statistics file there"),
    (42, "normalize must be 'auto', True"),
])
def test_resolve_refuses_unusable_statistics_naming_the_argument(spec, message, sample_jpegs):
    """#19: NaN, a std of 1e-300, strings and nested lists used to give NaN batches or a TypeError
    without a name; every in-memory path now raises a typed error naming the argument."""
    with pytest.raises((StatsError, FileNotFoundError), match=message):
        resolve(spec, None, True)
    if not isinstance(spec, (str, int)):
        with pytest.raises(StatsError):  # the loader and DALI bring statistics in through resolve too
            funloader.DCTLoader([(sample_jpegs[0], 0)], batch_size=1, normalize=spec)


def test_resolve_accepts_lists_arrays_tensors_and_zero_std():
    import torch

    for spec in ({"mean": GOOD_MEAN.tolist(), "std": GOOD_STD.tolist()}, (torch.tensor(GOOD_MEAN), GOOD_STD),
                 [GOOD_MEAN.astype(np.float32), GOOD_STD.astype(np.float32)]):
        mean, std = resolve(spec, None, True)
        np.testing.assert_allclose(mean, GOOD_MEAN, rtol=1e-6) and np.testing.assert_allclose(std, GOOD_STD, rtol=1e-6)
        assert mean.dtype == np.float64 and mean.shape == (192,)
    zero = resolve((GOOD_MEAN, _with(GOOD_STD, 4, 0.0)), None, True)  # a constant channel: centred only
    assert zero.std[4] == 0.0 and zero.source == "normalize"
    assert resolve(None, None, True) is None and resolve(False, None, True) is None


def test_stats_files_are_validated_and_named(tmp_path):
    nan_file = tmp_path / "nan.json"
    nan_file.write_text('{"mean": [NaN' + ", 0" * 191 + '], "std": [1' + ", 1" * 191 + "]}")
    with pytest.raises(StatsError, match=r"nan.json: 'mean' channel 0 is nan"):
        resolve(str(nan_file), None, True)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"mean": [[1, 2]] * 192, "std": [1] * 192}))
    with pytest.raises(StatsError, match="nested.json: 'mean' must be 192 numbers"):
        resolve(nested, None, True)
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\xff\xd8\xff\xe0 not json")
    with pytest.raises(StatsError, match="garbage.json: not a JSON statistics file"):
        resolve(garbage, None, True)
    raw = tmp_path / "stats-raw.json"
    raw.write_text(json.dumps({"dequantized": False, "mean": GOOD_MEAN.tolist(), "std": GOOD_STD.tolist()}))
    with pytest.raises(StatsError, match="statistics of raw coefficients, but the data is read as dequantized"):
        resolve(raw, None, True)
    assert resolve(raw, None, False).source == str(raw)
    with pytest.raises(StatsError, match="larger than"):  # the size cap of every reader applies
        big = tmp_path / "big.json"
        with open(big, "wb") as handle:
            handle.truncate(64 << 20)
        resolve(big, None, True)


def test_loader_rejects_a_non_floating_dtype(sample_jpegs):
    import torch

    for dtype in (torch.int8, torch.int16, "float32"):
        with pytest.raises(UsageError, match="dtype must be a floating torch dtype"):
            funloader.DCTLoader([(sample_jpegs[0], 0)], batch_size=1, normalize=False, dtype=dtype)


def test_a_single_tar_shard_is_not_read_as_a_stats_file(tmp_path, sample_jpegs):
    """#14: DCTLoader("shard-000001.tar") with normalize="auto" read the tar as JSON and crashed.
    The statistics of a shard are those of its folder."""
    shard = tmp_path / "shard-000001.tar"
    with tarfile.open(shard, "w") as archive:
        for i, path in enumerate(sample_jpegs[:3]):
            archive.add(path, f"{i:06d}.jpg")
    with pytest.warns(UserWarning, match="no channel statistics next to"):
        loader = funloader.DCTLoader(str(shard), batch_size=3, size=4)
    assert loader.stats is None and next(iter(loader))[0].shape == (3, 192, 4, 4)
    stats = compute_stats(str(shard), size=4, progress=False)
    assert stats["path"] == str(tmp_path / "stats-dequantized.json")
    loader = funloader.DCTLoader(str(shard), batch_size=3, size=4)
    np.testing.assert_array_equal(loader.stats.mean, stats["mean"])


def test_split_folders_are_refused_with_a_suggestion(tmp_path, shared_data, capsys):
    """#14: `funloader stats DATA` on train/ + test/ used to treat the splits as classes and mix the
    test images into the statistics."""
    root = tmp_path / "data"
    johns = shared_data / "labelled" / "dlib_johns"
    shutil.copytree(johns, root / "train")
    shutil.copytree(johns, root / "test")
    assert main([str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds the split folders test, train" in err and f"use {root / 'train'} (--split train)" in err
    assert not (root / "stats-dequantized.json").exists()
    assert main([str(root), "--split", "train", "--size", "8", "--no-progress"]) == 0
    assert (root / "train" / "stats-dequantized.json").is_file()
    with pytest.raises(UsageError, match="no split folder 'val'"):
        compute_stats(root, split="val", progress=False)


def test_cli_refuses_a_zero_batch_size(johns_copy, capsys):
    with pytest.raises(SystemExit) as exited:
        main([str(johns_copy), "--batch-size", "0"])
    assert exited.value.code == 2 and "--batch-size: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(UsageError, match="batch_size must be at least 1"):
        compute_stats(johns_copy, batch_size=0)


def test_read_only_data_folder_falls_back_to_the_cache(johns_copy, tmp_path, monkeypatch, capsys):
    """#14: compute_stats on a read-only or shared dataset folder writes to the cache, says where,
    and resolve finds it there. Tests run as root on CI, where permission bits do not stop a write:
    the read-only folder is simulated by making ``os.access(folder, W_OK)`` false, which is what a
    normal user sees on a read-only or another user's folder."""
    import funloader.stats as stats_module

    cache = tmp_path / "cache"
    monkeypatch.setenv("FUNLOADER_CACHE_DIR", str(cache))
    real_access = os.access
    monkeypatch.setattr(stats_module.os, "access",
                        lambda path, mode, **kw: False if os.fspath(path) == str(johns_copy) else real_access(path, mode, **kw))
    stats = compute_stats(johns_copy, size=8, progress=False)
    message = capsys.readouterr().err
    expected = cache_path(johns_copy, True)
    assert stats["path"] == str(expected) and expected.is_file() and str(cache) in str(expected)
    assert f"cannot write into {johns_copy}" in message and str(expected) in message
    assert not (johns_copy / "stats-dequantized.json").exists()
    found = resolve("auto", johns_copy, True)
    assert found.source == str(expected) and found.mean.tolist() == stats["mean"]
    assert resolve("auto", johns_copy, False, warn=False) is None  # per mode
    loader = funloader.DCTLoader(johns_copy, batch_size=4, size=8)
    assert loader.stats.source == str(expected)
    # a cached file others can write is not trusted (it could have been planted): ignored with a warning
    os.chmod(expected, 0o666)
    with pytest.warns(UserWarning, match="ignoring cached statistics .* writable by other users"):
        assert resolve("auto", johns_copy, True, warn=False) is None


def test_constant_channels_have_std_zero_and_resolve_accepts_them(tmp_path):
    """Flat grey images: every channel is constant, its std is written as exactly 0 (compute_stats
    also snaps a std below MIN_STD to 0), and resolve accepts the file (a 0 std is only centred)."""
    from PIL import Image

    root = tmp_path / "flat" / "a"
    root.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (90, 90, 90)).save(root / f"{i}.jpg", quality=75)
    stats = compute_stats(tmp_path / "flat", size=8, progress=False)
    std = np.asarray(stats["std"])
    assert (std == 0).sum() == 192 and resolve("auto", tmp_path / "flat", True).std.max() == 0
