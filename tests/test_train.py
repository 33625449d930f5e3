"""Tests of ``funloader train`` / ``funloader eval`` (funloader/train.py, recipes.py, checkpoint.py).

Data: ``../shared/data/labelled/fashion_mnist`` (28x28 gray product photos, 10 classes, 3000 train /
1000 test) prepared once per session with ``funloader.prepare`` at 64x64 (an 8x8 block grid),
plus a 640/200-image subset (and its WebDataset shards) for the resume and DDP runs.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from funloader.checkpoint import CheckpointError, load_checkpoint, save_atomic
from funloader.recipes import RMSpropTF, build_model, lr_multiplier, recipe_for_model
from funloader.train import TrainConfig, main_eval, main_train, resolve_config

REPO = Path(__file__).resolve().parents[1]
LEARNING_THRESHOLD = 0.70  # test top-1 the learning check must reach (chance: 0.10)
TIME_COLUMNS = {"epoch_seconds", "images_per_s"}


# ----------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="session")
def fashion64(shared_data, tmp_path_factory):
    """Fashion-MNIST prepared at 64x64 (8x8 blocks): ``root/train`` (3000), ``root/test`` (1000)."""
    from funloader import prepare

    src = shared_data / "labelled" / "fashion_mnist"
    root = tmp_path_factory.mktemp("fashion64")
    for split in ("train", "test"):
        prepare(src / split, root / split, size=64, workers=2, progress=False, verbose=False)
    return root


@pytest.fixture(scope="session")
def fashion64_small(fashion64, tmp_path_factory):
    """64 train / 20 test images per class (symlinks into ``fashion64``), and ``shards/train``: the
    same 640 training images as WebDataset shards of 100."""
    from funloader import prepare

    root = tmp_path_factory.mktemp("fashion64_small")
    for split, per_class in (("train", 64), ("test", 20)):
        for class_dir in sorted(p for p in (fashion64 / split).iterdir() if p.is_dir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for image in sorted(class_dir.glob("*.jpg"))[:per_class]:
                (target / image.name).symlink_to(image)
    prepare(root / "train", root / "shards" / "train", size=64, format="shards", shard_size=100, workers=2,
            progress=False, verbose=False)
    return root


def _train_args(data, output, *extra):
    return ["--data", str(data), "--input-blocks", "8", "--augment", "flip", "--batch-size", "64",
            "--output", str(output), "--no-progress", "--torch-threads", "2", "--num-threads", "1", *extra]


def _metrics(run_dir: Path):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def learning_run(fashion64, tmp_path_factory):
    """fun_small trained 4 epochs on the 3000 training images with the eFUN recipe (RMSProp-TF,
    EMA, label smoothing) at lr 0.03 for batch 64, half an epoch of warm-up."""
    out = tmp_path_factory.mktemp("learning") / "run"
    started = time.time()
    code = main_train(_train_args(fashion64, out, "--model", "fun_small", "--epochs", "4", "--lr", "0.03",
                                  "--warmup-epochs", "0.5"))
    assert code == 0
    return out, time.time() - started


# ----------------------------------------------------------------------------------------------
# recipes (fast)
def test_efun_recipe_lr_schedule():
    steps = 100  # per epoch
    kw = dict(schedule="exponential", warmup_epochs=5, decay_rate=0.97, decay_epochs=2.4)
    assert lr_multiplier(0, steps, **kw) == pytest.approx(1 / 500)
    assert lr_multiplier(249, steps, **kw) == pytest.approx(250 / 500 * 0.97 ** 1)  # 249 // 240 = 1
    assert lr_multiplier(500, steps, **kw) == pytest.approx(0.97 ** 2)
    assert lr_multiplier(2400, steps, **kw) == pytest.approx(0.97 ** 10)
    assert lr_multiplier(2399, steps, **kw) == pytest.approx(0.97 ** 9)


def test_resfun_recipe_steps():
    recipe = recipe_for_model("resfun")
    assert recipe.optimizer == "sgd" and recipe.epochs == 130 and recipe.milestones == (90, 110)
    kw = dict(schedule="step", milestones=recipe.milestones, decay_rate=0.1)
    assert lr_multiplier(89 * 10 + 9, 10, **kw) == pytest.approx(1.0)
    assert lr_multiplier(90 * 10, 10, **kw) == pytest.approx(0.1)
    assert lr_multiplier(110 * 10, 10, **kw) == pytest.approx(0.01)
    cfg = resolve_config(TrainConfig(data="x", model="resfun", batch_size=512))
    assert cfg.lr == pytest.approx(0.2) and cfg.recipe == "resfun" and cfg.ema_decay == 0


def test_efun_recipe_resolution_scales_lr():
    cfg = resolve_config(TrainConfig(data="x", model="efun", batch_size=1024))
    assert cfg.recipe == "efun" and cfg.optimizer == "rmsprop_tf"
    assert cfg.lr == pytest.approx(0.096)
    assert (cfg.weight_decay, cfg.momentum, cfg.rmsprop_decay, cfg.rmsprop_eps) == (1e-5, 0.9, 0.9, 1e-3)
    assert (cfg.decay_rate, cfg.decay_epochs, cfg.label_smoothing, cfg.ema_decay) == (0.97, 2.4, 0.1, 0.9999)
    override = resolve_config(TrainConfig(data="x", model="efun_l", lr=0.5, epochs=3))
    assert override.lr == 0.5 and override.epochs == 3
    assert build_model("efun_l", num_classes=10).drop_path_rate == 0.3
    assert build_model("efun", num_classes=10).drop_path_rate == 0.2


def test_rmsprop_tf_matches_tensorflow_update():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    g1, g2 = torch.randn(5), torch.randn(5)
    opt = RMSpropTF([p], lr=0.1, decay=0.9, momentum=0.9, eps=1e-3, weight_decay=1e-2)
    start = p.detach().clone()
    ms, mom, w = torch.ones(5), torch.zeros(5), start.clone()
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        grad = g + 1e-2 * w
        ms = 0.9 * ms + 0.1 * grad ** 2
        mom = 0.9 * mom + 0.1 * grad / torch.sqrt(ms + 1e-3)
        w = w - mom
    torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-7)


def test_model_ema_follows_tensorflow_num_updates():
    from funloader.recipes import ModelEma

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ema = ModelEma(model, decay=0.9999)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(2, 3, 4, 4))  # train mode: updates the BN running statistics
    ema.update(model, step=90)
    d = min(0.9999, 91 / 100)
    torch.testing.assert_close(ema.module[0].weight, d * start + (1 - d) * model[0].weight)
    torch.testing.assert_close(ema.module[1].running_mean, (1 - d) * model[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == 1  # integer buffers copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_atomic_checkpoint_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"model": Unpicklable()}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


# ----------------------------------------------------------------------------------------------
# checkpoints are data, never code (issue 19)
class _RunsCommand:
    """Pickles as a call to ``os.system(command)``: what a hostile checkpoint would hold."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _hostile_checkpoint(tmp_path) -> tuple:
    marker = tmp_path / "code-ran"
    path = tmp_path / "hostile.pt"
    torch.save({"format": "funloader-train", "model": {"w": torch.ones(2)}, "model_name": "fun_test",
                "num_classes": 2, "payload": _RunsCommand(f"touch {marker}")}, path)
    return path, marker


@pytest.mark.parametrize("command", ["eval", "resume", "finetune"])
def test_checkpoint_that_runs_code_is_refused(tmp_path, capsys, command):
    from funloader.cli import main

    path, marker = _hostile_checkpoint(tmp_path)
    data = tmp_path / "data"  # never reached: the checkpoint is read first
    args = {"eval": ["eval", "--checkpoint", str(path), "--data", str(data)],
            "resume": ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--resume", str(path)],
            "finetune": ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--finetune", str(path)]}
    assert main(args[command] + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()  # the command in the pickle never ran
    assert len(err.splitlines()) == 1 and "refused" in err and "hostile.pt" in err and "system" in err, err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_no_torch_load_without_weights_only():
    """Every ``torch.load`` in the package passes ``weights_only=True`` (a literal)."""
    import ast

    calls = []
    for source in sorted((REPO / "funloader").rglob("*.py")) + sorted((REPO / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                keywords = {k.arg: k.value for k in node.keywords}
                safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                calls.append((f"{source.relative_to(REPO)}:{node.lineno}", safe))
    assert calls, "expected the checkpoint loader's torch.load"
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]


def test_rng_state_survives_a_safe_load(tmp_path):
    import random

    import numpy as np

    from funloader.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    save_atomic({"model": {}, "rng": [rng_state()]}, tmp_path / "c.pt")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_file_mode_follows_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = save_atomic({"model": {}}, tmp_path / "last.pt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------------------------
# the learning check
@pytest.mark.slow
def test_learns_fashion_mnist(learning_run):
    run_dir, seconds = learning_run
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final"]
    print(f"fun_small, 4 epochs on 3000 images (CPU): test top-1 {final['val_top1']:.3f} (raw), "
          f"{final['ema_val_top1']:.3f} (EMA); {seconds:.0f} s wall")
    assert final["ema_val_top1"] >= LEARNING_THRESHOLD
    assert final["val_top1"] >= LEARNING_THRESHOLD - 0.1
    assert final["ema_val_top5"] >= 0.95
    rows = _metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert int(rows[0]["train_images"]) == (3000 // 64) * 64
    for name in ("curves.png", "last.pt", "best.pt", "config.json"):
        assert (run_dir / name).stat().st_size > 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["overrides"]["model"] == "fun_small" and config["config"]["optimizer"] == "rmsprop_tf"
    state = load_checkpoint(run_dir / "last.pt")
    assert state["epoch"] == 4 and state["global_step"] == 4 * (3000 // 64) and state["ema"] is not None


@pytest.mark.slow
def test_eval_matches_training_metrics(learning_run, fashion64, capsys):
    run_dir, _ = learning_run
    out = run_dir / "eval-full"
    assert main_eval(["--checkpoint", str(run_dir / "last.pt"), "--data", str(fashion64), "--output", str(out),
                      "--no-progress"]) == 0
    assert "top-1" in capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["count"] == 1000 and result["weights"] == "ema" and result["data"].endswith("test")
    assert result["top1"] == pytest.approx(summary["final"]["ema_val_top1"], abs=0.002)  # eval batch 256 vs 64
    assert result["top5"] == pytest.approx(summary["final"]["ema_val_top5"], abs=0.002)


@pytest.mark.slow
def test_eval_sweep_zeroed_equals_pruned(learning_run, fashion64_small, capsys):
    run_dir, _ = learning_run
    out = run_dir / "sweep"
    code = main_eval(["--checkpoint", str(run_dir / "last.pt"), "--data", str(fashion64_small), "--split", "test",
                      "--sweep-channels", "--keep-channels", "20/4/4", "--output", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| 88 | 64/12/12 |" in printed
    result = json.loads((out / "eval.json").read_text())
    assert result["count"] == 200
    rows = {row["keep"]: row for row in result["channels"]}
    assert list(rows) == ["64/64/64", "64/12/12", "44/10/10", "32/8/8", "14/5/5", "20/4/4"]
    for row in rows.values():
        # zeroing the dropped inputs and pruning the first layer: the same predictions
        assert row["pruned_top1"] == row["zeroed_top1"], row
        assert row["pruned_top5"] == row["zeroed_top5"], row
        assert row["max_logit_diff"] < 1e-3
    assert rows["64/64/64"]["zeroed_top1"] == pytest.approx(result["top1"])
    assert rows["64/64/64"]["pruned_params"] == result["params"]
    assert rows["14/5/5"]["pruned_params"] < rows["44/10/10"]["pruned_params"] < result["params"]
    assert (out / "sweep.png").stat().st_size > 0 and (out / "sweep.csv").exists()


# ----------------------------------------------------------------------------------------------
# resume after SIGKILL / SIGTERM
def _cli(*args):
    return [sys.executable, "-m", "funloader", "train", *args]


def _wait_for(predicate, process, timeout=180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the training process")


def _epochs_done(run_dir: Path) -> int:
    try:
        return len(_metrics(run_dir))
    except (FileNotFoundError, csv.Error):
        return 0


def _assert_same_run(a: Path, b: Path):
    state_a, state_b = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert state_a["global_step"] == state_b["global_step"]
    for key, value in state_a["model"].items():
        assert torch.equal(value, state_b["model"][key]), key  # CPU: bit-identical
    for key, value in state_a["ema"]["module"].items():
        assert torch.equal(value, state_b["ema"]["module"][key]), key
    rows_a, rows_b = _metrics(a), _metrics(b)
    assert len(rows_a) == len(rows_b)
    for row_a, row_b in zip(rows_a, rows_b):
        assert {k: v for k, v in row_a.items() if k not in TIME_COLUMNS} == \
               {k: v for k, v in row_b.items() if k not in TIME_COLUMNS}


@pytest.mark.slow
def test_resume_after_sigkill_and_sigterm_matches_uninterrupted(fashion64_small, tmp_path):
    common = ["--model", "fun_test", "--epochs", "3", "--lr", "0.03", "--warmup-epochs", "0.5"]
    straight = tmp_path / "straight"
    assert subprocess.run(_cli(*_train_args(fashion64_small, straight, *common)), capture_output=True).returncode == 0

    run = tmp_path / "interrupted"
    # 1) SIGKILL as soon as the first epoch's checkpoint and metrics are written.
    process = subprocess.Popen(_cli(*_train_args(fashion64_small, run, *common)), stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _epochs_done(run) >= 1, process), "run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed_at = load_checkpoint(run / "last.pt")["epoch"]
    assert killed_at in (1, 2)  # killed after its first epoch, before the last
    # 2) resume; SIGTERM it inside its next epoch (after a few steps, seen on the progress bar).
    args = _train_args(fashion64_small, run, *common, "--resume", "--log-every", "1")
    args[args.index("--no-progress")] = "--progress"
    process = subprocess.Popen(_cli(*args), stderr=subprocess.PIPE)
    pattern = re.compile(rf"epoch {killed_at + 1}/3:.*?\| *([0-9]+)/10")
    seen = []

    def watch():
        buffer = b""
        while True:
            chunk = process.stderr.read1(4096) if hasattr(process.stderr, "read1") else process.stderr.read(1)
            if not chunk:
                return
            buffer = (buffer + chunk)[-4096:]
            match = None
            for match in pattern.finditer(buffer.decode(errors="replace")):
                pass
            if match and int(match.group(1)) >= 3 and not seen:
                seen.append(int(match.group(1)))
                process.send_signal(signal.SIGTERM)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    code = process.wait(timeout=300)
    watcher.join(timeout=10)
    assert seen, "the resumed run never reached step 3 of its epoch"
    assert code == 128 + signal.SIGTERM
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == killed_at and 3 <= state["batch_in_epoch"] < 10  # saved mid-epoch
    # 3) resume again to the end.
    result = subprocess.run(_cli(*_train_args(fashion64_small, run, *common, "--resume")), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from epoch {killed_at + 1}, batch {state['batch_in_epoch']}" in result.stderr
    _assert_same_run(straight, run)


# ----------------------------------------------------------------------------------------------
# DDP (two CPU processes, Gloo)
@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(fashion64_small, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "funloader", "train", "--train-data", str(fashion64_small / "shards" / "train"),
               "--val-data", str(fashion64_small / "test"), "--model", "fun_test", "--epochs", "1",
               "--input-blocks", "8", "--augment", "flip", "--batch-size", "64", "--lr", "0.03",
               "--device", "cpu", "--output", str(out), "--no-progress", "--torch-threads", "1",
               "--num-threads", "1", "--log-samples"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    checksums = summary["rank_param_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # identical weights on both ranks
    samples = json.loads((out / "samples" / "epoch-1.json").read_text())
    rank0, rank1 = samples["ranks"]
    assert len(rank0) == len(rank1) == 320
    assert not set(rank0) & set(rank1)  # disjoint shards
    assert sorted(rank0 + rank1) == list(range(640))
    assert samples["steps"] == 10  # 320 images per rank / 32 per rank and step
    final = summary["final"]
    assert final["train_images"] == 640  # all-reduced over the ranks
    assert summary["val_images"] == 200
    state = load_checkpoint(out / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    # rank 0 alone wrote the run directory
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best.pt", "config.json", "curves.png", "last.pt", "metrics.csv", "samples", "stats-dequantized.json",
         "summary.json"])


# ----------------------------------------------------------------------------------------------
# fine-tuning and training on kept channels
@pytest.mark.slow
def test_finetune_resets_classifier(learning_run, fashion64_small, tmp_path):
    run_dir, _ = learning_run
    two = tmp_path / "two"
    for split in ("train", "test"):
        for name in ("0_tshirt_top", "1_trouser"):
            (two / split).mkdir(parents=True, exist_ok=True)
            (two / split / name).symlink_to(fashion64_small / split / name)
    out = tmp_path / "ft"
    code = main_train(_train_args(two, out, "--model", "fun_small", "--finetune", str(run_dir / "last.pt"),
                                  "--epochs", "2", "--batch-size", "32", "--lr", "0.005", "--warmup-epochs", "0"))
    assert code == 0
    state = load_checkpoint(out / "last.pt")
    assert state["num_classes"] == 2 and state["model"]["classifier.weight"].shape == (2, 128)
    assert state["finetuned_from"]["source_classes"] == 10
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["val_top1"] >= 0.9  # T-shirt vs trouser from pretrained features


@pytest.mark.slow
def test_train_on_kept_channels_then_eval(fashion64_small, tmp_path):
    out = tmp_path / "keep"
    code = main_train(_train_args(fashion64_small, out, "--model", "fun_small", "--epochs", "1",
                                  "--keep-channels", "44/10/10", "--amp", "bf16", "--channels-last"))
    assert code == 0
    state = load_checkpoint(out / "last.pt")
    assert state["in_channels"] == 64 and state["model"]["blocks.0.0.expand.conv.weight"].shape[1] == 64
    code = main_eval(["--checkpoint", str(out / "last.pt"), "--data", str(fashion64_small), "--keep-channels",
                      "44/10/10", "--output", str(tmp_path / "eval"), "--no-progress"])
    assert code == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["count"] == 200 and result["keep_channels_trained"] == "44/10/10"
    assert main_eval(["--checkpoint", str(out / "last.pt"), "--data", str(fashion64_small), "--sweep-channels",
                      "--no-progress", "--output", str(tmp_path / "eval2")]) == 2  # needs a 192-channel model


def test_train_reports_bad_data(tmp_path, capsys):
    assert main_train(["--data", str(tmp_path / "missing"), "--output", str(tmp_path / "run")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow
def test_dali_loader_trains(fashion64_small, tmp_path):
    pytest.importorskip("nvidia.dali")
    out = tmp_path / "dali"
    command = _cli(*_train_args(fashion64_small, out, "--model", "fun_test", "--epochs", "1", "--loader", "dali",
                                "--augment", "crop-flip", "--device", "cpu"))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["train_images"] == 640 and summary["val_images"] == 200
    assert summary["config"]["loader"] == "dali"
    assert math.isfinite(summary["final"]["train_loss"])
