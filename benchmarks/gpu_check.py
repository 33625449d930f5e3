#!/usr/bin/env python3
"""GPU validation: every CUDA path of funloader checked, and the paper's GPU claims measured, in one
command that writes ``OUTDIR/gpu_check.json`` and ``OUTDIR/gpu_check.log``.

    benchmarks/gpu_check.sh OUTDIR                        # on a CUDA machine (< 8 minutes on an H200)
    python benchmarks/gpu_check.py OUTDIR --device cpu --quick   # dry run on a CPU (the test suite does this)

Steps (each recorded as ``ok``, ``failed: ...`` or ``skipped: <reason>``; a failing step does not
stop the others):

1. ``load``: import funloader from this checkout; if the C extension is missing, build it in place
   (``JPEG_INCLUDE_DIR`` / ``JPEG_LIBRARY_DIR`` honoured, e.g. from ``benchmarks/gpu_bundle.sh``),
   else copy a prebuilt one from the bundle;
2. ``tests``: the test suite's ``gpu``-marked tests, then the loader / transform / train tests,
   on this machine (CUDA visible);
3. ``loader_equality``: ``DCTLoader(device="cuda")`` batches equal the CPU batches (same seed),
   raw integers bit for bit, normalised floats to float32 rounding;
4. ``train``: a 1-epoch ``funloader train --device cuda --amp bf16 --channels-last`` on the
   Fashion-MNIST JPEGs;
5. ``loader_throughput``: ``DCTLoader`` images/s into CUDA tensors at 1/4/8/16 threads on
   ImageNet-like originals, with the torchvision-style Pillow pipeline as the baseline;
6. ``models``: batch-1 latency and batch-256 throughput, fp32 and bf16, channels_last, of the FUN
   models against our RGB baselines and timm's own ``efficientnet_b0``, ``mobilenetv2_100`` and
   ``resnet18`` (our parameter counts checked equal to timm's), plus ``torch.compile`` for eFUN and
   EfficientNet-B0; the paper's Table 2 ratios side by side;
7. ``train_step``: training-step images/s (forward + backward + SGD step, bf16, channels_last) of
   eFUN against EfficientNet-B0.

The dry run (``--device cpu --quick``) does every step it can on tiny sizes (float32 training steps,
no ``torch.compile``, no test suite) so that the script cannot rot.

Nothing here needs NVIDIA DALI: the library must not assume that a CUDA device means DALI.
The timings use funloader's one benchmark harness (``funloader.bench.harness``).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
BUNDLE = Path(os.environ.get("FUNLOADER_GPU_BUNDLE", REPO / "gpu_bundle"))
#: our RGB baselines that timm also has (the parameter counts must be equal)
TIMM_TWINS = ["efficientnet_b0", "efficientnet_b1", "mobilenetv2_100", "resnet18", "resnet34", "resnet50"]
#: timm models timmed alongside ours
TIMM_TIMED = ["efficientnet_b0", "mobilenetv2_100", "resnet18"]
FUN_MODELS = ["efun_s_plus", "efun_s", "efun", "efun_l", "resfun"]
OUR_BASELINES = ["efficientnet_b0", "efficientnet_b1", "mobilenetv2_100", "resnet18", "resnet50"]
#: the paper's Table 2 claim checked first: eFUN / EfficientNet-B0 images/s at batch 1 on a V100
PAPER_EFUN_OVER_B0 = 124 / 77


class Check:
    """The run's record: steps in order, written to JSON after every step; log lines to both the
    console and the log file."""

    def __init__(self, output: Path, args):
        self.output = output
        output.mkdir(parents=True, exist_ok=True)
        self.log_file = open(output / "gpu_check.log", "a", buffering=1)
        self.started = time.perf_counter()
        self.budget_s = args.budget_s
        self.record: Dict[str, object] = {"command": " ".join([sys.argv[0]] + (args.argv or [])),
                                          "device": args.device, "quick": args.quick, "steps": {}}

    def log(self, message: str) -> None:
        line = f"[gpu_check {time.strftime('%H:%M:%S')} +{self.elapsed():.0f}s] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def save(self) -> None:
        self.record["wall_s"] = round(self.elapsed(), 1)
        path = self.output / "gpu_check.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        os.replace(temporary, path)

    def step(self, name: str, function: Callable[[], Dict[str, object]], *, needs_s: float = 0) -> None:
        self.log(f"step {name}")
        started = time.perf_counter()
        if needs_s and self.left() < needs_s:
            result = {"status": f"skipped: {self.left():.0f} s of the time budget left, this step needs ~{needs_s:.0f} s"}
        else:
            try:
                result = function()
                result.setdefault("status", "ok")
            except Skip as reason:
                result = {"status": f"skipped: {reason}"}
            except Exception as error:  # record, keep going: one broken path must not hide the others
                result = {"status": f"failed: {type(error).__name__}: {error}",
                          "traceback": traceback.format_exc().splitlines()[-12:]}
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.record["steps"][name] = result
        self.log(f"step {name}: {result['status']} ({result['seconds']} s)")
        self.save()


class Skip(Exception):
    """A step that cannot run here (e.g. it needs CUDA in a dry run)."""


def _run(command: List[str], check: Check, timeout: float, env: Optional[dict] = None, cwd=REPO) -> dict:
    """Run a command, its output going to the log; returns rc, wall time and the output's tail."""
    check.log("$ " + " ".join(str(c) for c in command))
    started = time.perf_counter()
    try:
        done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=max(timeout, 1))
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        rc = "timeout"
        output = (expired.stdout or b"").decode(errors="replace") if isinstance(expired.stdout, bytes) else (expired.stdout or "")
    check.log_file.write(output + "\n")
    return {"rc": rc, "seconds": round(time.perf_counter() - started, 1), "tail": output.strip().splitlines()[-15:]}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    shared = BUNDLE / "data"
    if "FUNLOADER_SHARED_DATA" not in env and (shared / "MANIFEST.tsv").exists():
        env["FUNLOADER_SHARED_DATA"] = str(shared)
    return env


def _shared_data() -> Optional[Path]:
    for candidate in (os.environ.get("FUNLOADER_SHARED_DATA", ""), BUNDLE / "data", REPO.parent / "shared" / "data",
                      Path("/work/shared/data")):
        if candidate and (Path(candidate) / "labelled").is_dir():
            return Path(candidate)
    return None


# ------------------------------------------------------------------------------------------ steps


def step_load(check: Check, args) -> dict:
    """Import funloader from this checkout, building (or copying) the C extension when missing."""
    sys.path.insert(0, str(REPO))
    how = "already built"
    probe = [sys.executable, "-c", "import funloader._jpegdct"]
    if subprocess.run(probe, cwd=REPO, env=_env(), capture_output=True).returncode != 0:
        env = _env()
        library = env.get("JPEG_LIBRARY_DIR")
        if library:  # find libjpeg at run time where it was found at build time
            env["LDFLAGS"] = (env.get("LDFLAGS", "") + f" -Wl,-rpath,{library}").strip()
        build = _run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], check, timeout=300, env=env)
        how = f"built in place (rc {build['rc']})"
        if build["rc"] != 0:
            prebuilt = sorted((BUNDLE / "ext" / "funloader").glob(f"_jpegdct.cpython-{sys.version_info[0]}{sys.version_info[1]}*.so"))
            if not prebuilt:
                raise RuntimeError("the C extension did not build and the bundle has no prebuilt one: "
                                   + " | ".join(build["tail"][-5:]))
            shutil.copy2(prebuilt[0], REPO / "funloader" / prebuilt[0].name)
            how = f"copied prebuilt {prebuilt[0].name} from the bundle (the build failed: {build['tail'][-1:]})"
    import torch

    import funloader
    from funloader.bench.harness import machine_info

    check.record["machine"] = machine_info(threads=os.cpu_count(), device=args.device)
    try:
        importlib.import_module("nvidia.dali")
        dali = "installed"
    except Exception:
        dali = "not installed (nothing below needs it)"
    return {"how": how, "funloader": funloader.__version__, "libjpeg": funloader.libjpeg_info()["version"],
            "torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "dali": dali}


def step_tests(check: Check, args) -> dict:
    if not args.device.startswith("cuda"):
        raise Skip("the test suite runs on CUDA machines only (the dry run is itself part of the test suite)")
    env = _env()
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    with contextlib.suppress(ImportError):
        importlib.import_module("xdist")
        base += ["-n", str(min(8, os.cpu_count() or 1))]
    result = {"gpu_marked": _run(base + ["-m", "gpu", "tests"], check, timeout=min(120, check.left() - 330), env=env)}
    files = ["tests/test_loader.py", "tests/test_transforms.py", "tests/test_train.py"]
    result["loader_transforms_train"] = _run(base + files, check, timeout=min(200, check.left() - 300), env=env)
    failed = [name for name, run in result.items() if run["rc"] not in (0, 5)]  # 5: no test selected
    result["status"] = "ok" if not failed else f"failed: {', '.join(failed)} (see the tails and the log)"
    return result


def _small_folder(check: Check, args, name: str, count: int) -> Path:
    from funloader.bench.corpus import build, image_folder, source_photos

    photos = source_photos(None)
    work = Path(tempfile.mkdtemp(prefix=f"gpu-check-{name}-"))
    files = build(name, photos, work / "corpus", limit=12 if args.quick else None)
    return image_folder(files, work / "tree", count=count)


def step_loader_equality(check: Check, args) -> dict:
    """DCTLoader(device=cuda) batches equal the CPU batches for the same seed."""
    import torch

    import funloader
    from funloader import transforms as T

    if not args.device.startswith("cuda"):
        check.log("dry run: the 'device' side is the CPU (the code path is exercised, the comparison is trivial)")
    folder = _small_folder(check, args, "224_q100_420", 48 if args.quick else 256)
    stats = funloader.compute_stats(folder, output=None, progress=False)
    result = {}
    for name, options in (("raw_int16", dict(dequantize=False, normalize=False)),
                          ("normalised_float32", dict(normalize=(stats["mean"], stats["std"])))):
        def batches(device):
            loader = funloader.DCTLoader(folder, batch_size=16, shuffle=True, seed=7, num_threads=4, device=device,
                                         transform=T.Compose([T.RandomResizedCrop(28, mode="nearest"),
                                                              T.RandomHorizontalFlip()]), **options)
            loader.set_epoch(1)
            got = [(x.cpu(), y.cpu(), x.device.type, x.dtype) for x, y in loader]
            return got

        cpu, other = batches("cpu"), batches(args.device)
        assert len(cpu) == len(other)
        exact = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(cpu, other))
        worst = max(float((a[0].float() - b[0].float()).abs().max()) for a, b in zip(cpu, other))
        close = all(torch.allclose(a[0].float(), b[0].float(), rtol=1e-6, atol=1e-5) for a, b in zip(cpu, other))
        result[name] = {"batches": len(cpu), "bit_identical": exact, "max_abs_difference": worst,
                        "device": other[0][2], "dtype": str(other[0][3])}
        if name == "raw_int16" and not exact:
            result["status"] = "failed: raw int16 batches differ between the CPU and the device"
        elif not close:
            result["status"] = f"failed: normalised batches differ by up to {worst}"
    return result


def step_train(check: Check, args) -> dict:
    data = _shared_data()
    if data is None:
        raise Skip("the Fashion-MNIST JPEGs (shared data labelled/fashion_mnist) are not here; run gpu_bundle.sh")
    output = check.output / "train_run"
    cuda = args.device.startswith("cuda")
    source = data / "labelled" / "fashion_mnist"
    if args.quick:  # the dry run: 20 training and 10 test images per class
        subset = Path(tempfile.mkdtemp(prefix="gpu-check-fashion-"))
        for split, count in (("train", 20), ("test", 10)):
            for folder in sorted((source / split).iterdir()):
                (subset / split / folder.name).mkdir(parents=True)
                for path in sorted(folder.glob("*.jpg"))[:count]:
                    shutil.copy2(path, subset / split / folder.name / path.name)
        source = subset
    command = [sys.executable, "-m", "funloader", "train", "--data", source,
               "--model", "efun" if cuda and not args.quick else "fun_test", "--epochs", "1", "--warmup-epochs", "0",
               "--batch-size", "256" if cuda else "20", "--input-blocks", "4",
               "--device", "cuda" if cuda else "cpu", "--amp", "bf16" if cuda else "none", "--channels-last",
               "--num-threads", str(min(8, os.cpu_count() or 1)), "--no-progress", "--output", output]
    if args.quick and not cuda:
        command += ["--torch-threads", "1"]
    run = _run(command, check, timeout=min(150, check.left() - 150), env=_env())
    run["status"] = "ok" if run["rc"] == 0 else f"failed: rc {run['rc']}"
    metrics = sorted(output.rglob("*.csv"))
    if metrics:
        run["metrics"] = metrics[0].read_text().strip().splitlines()[-2:]
    return run


def step_loader_throughput(check: Check, args) -> dict:
    from funloader.bench.loader import measure_folder

    threads = [1, 2] if args.quick else [t for t in (1, 4, 8, 16) if t <= (os.cpu_count() or 1)]
    folder = _small_folder(check, args, "originals_q90_420", 64 if args.quick else 512)
    section = measure_folder(folder, threads=threads, batch_size=16 if args.quick else 128,
                             repeats=1 if args.quick else 3, pipelines=["funloader", "funloader_exact", "pillow"],
                             label="originals_q90_420", device=args.device, progress=check.log)
    table = {key: {name: summary["images_per_s"] for name, summary in result.methods.items()} | result.ratios
             for key, result in section.results.items()}
    return {"images_per_s": table, "section": section.to_dict()}


def _timm_builders() -> Dict[str, Callable]:
    timm = importlib.import_module("timm")
    return {f"timm:{name}": (lambda name=name: timm.create_model(name, pretrained=False)) for name in TIMM_TIMED}


def step_models(check: Check, args) -> dict:
    import torch

    from funloader.bench.models import measure_models
    from funloader.models import create_model

    result: Dict[str, object] = {}
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        timm = None
        result["timm"] = "skipped: timm is not installed"
    if timm is not None:  # our builders must have timm's parameter counts
        counts = {}
        for name in TIMM_TWINS:
            ours = sum(p.numel() for p in create_model(name).parameters())
            theirs = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
            counts[name] = {"ours": ours, "timm": theirs, "equal": ours == theirs}
        result["parameter_counts_vs_timm"] = counts
    cuda = args.device.startswith("cuda")
    names = ["fun_test", "efun_s_plus"] if args.quick else FUN_MODELS + OUR_BASELINES
    builders = _timm_builders() if timm is not None and not args.quick else None
    big = 2 if args.quick else 256
    runs = {}
    for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        for batch, passes, repeats in ((1, 1 if args.quick else 20, 2 if args.quick else 5),
                                       (big, 1 if args.quick else 2, 2 if args.quick else 5)):
            if check.left() < 200:
                runs[f"{dtype_name} batch {batch}"] = "skipped: time budget"
                continue
            section = measure_models(names, device=args.device, batch_sizes=(batch,), repeats=repeats, warmup=2,
                                     channels_last=True, dtype=dtype, passes=passes, builders=builders,
                                     threads=None if cuda else 1, progress=check.log)
            runs[f"{dtype_name} batch {batch}"] = section.to_dict()
    if cuda and not args.quick and check.left() > 240:
        for dtype_name, dtype in (("bf16", torch.bfloat16),):
            for batch, passes in ((1, 20), (256, 2)):
                section = measure_models(["efun", "efficientnet_b0"], device=args.device, batch_sizes=(batch,),
                                         repeats=5, warmup=3, channels_last=True, dtype=dtype, compile=True,
                                         passes=passes, progress=check.log)
                runs[f"{dtype_name} compiled batch {batch}"] = section.to_dict()
    else:
        runs["compiled"] = "skipped: torch.compile runs on CUDA machines only (minutes on a CPU)" if not cuda \
            else "skipped: time budget"
    result["runs"] = runs
    result["table"] = _models_table(runs)
    result["paper_table2"] = _paper_comparison(runs)
    counts = result.get("parameter_counts_vs_timm", {})
    if any(not row["equal"] for row in counts.values()):
        result["status"] = "failed: parameter counts differ from timm's for " + ", ".join(
            name for name, row in counts.items() if not row["equal"])
    return result


def _models_table(runs: Dict[str, object]) -> Dict[str, Dict[str, float]]:
    """run label -> model -> images/s (and ms per pass)."""
    table = {}
    for label, section in runs.items():
        if not isinstance(section, dict):
            continue
        for key, result in section["results"].items():
            table[label] = {name: {"images_per_s": s["images_per_s"], "ms_per_pass": s["latency_ms"]}
                            for name, s in result["methods"].items()}
    return table


def _paper_comparison(runs: Dict[str, object]) -> Dict[str, object]:
    """The paper's Table 2 (V100, batch 1) next to ours: each model's images/s over EfficientNet-B0's."""
    comparison = {}
    for label, section in runs.items():
        if not isinstance(section, dict) or "batch 1" not in label:
            continue
        methods = section["results"]["batch 1"]["methods"]
        base = methods.get("efficientnet_b0", {}).get("images_per_s")
        if not base:
            continue
        rows = {}
        for name, info in section["extra"]["models"].items():
            paper = info.get("paper_images_per_s")
            if name in methods:
                rows[name] = {"ours_over_b0": round(methods[name]["images_per_s"] / base, 3),
                              "paper_over_b0": round(paper / 77, 3) if paper else None}
        comparison[label] = rows
    comparison["paper_efun_over_b0_batch1"] = round(PAPER_EFUN_OVER_B0, 3)
    return comparison


def step_train_step(check: Check, args) -> dict:
    import torch

    from funloader.bench.harness import round_robin
    from funloader.models import create_model

    cuda = args.device.startswith("cuda")
    batch = 2 if args.quick else 256
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 autocast is very slow on most CPUs
    runs = {}
    for name in ("efun", "efficientnet_b0"):
        model = create_model(name).to(args.device).train().to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn((batch,) + tuple(model.default_cfg["input_size"]), device=args.device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,), device=args.device)
        steps = 1 if args.quick else 5

        def run(model=model, optimizer=optimizer, x=x, y=y, steps=steps):
            for _ in range(steps):
                with torch.autocast(device_type=torch.device(args.device).type, dtype=dtype):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if cuda:
                torch.cuda.synchronize()
            return x.shape[0] * steps
        runs[name] = run
    summaries = round_robin(runs, repeats=2 if args.quick else 5, warmup=1)
    return {"batch": batch, "dtype": str(dtype).replace("torch.", ""), "channels_last": True,
            "images_per_s": {name: s["images_per_s"] for name, s in summaries.items()},
            "efun_over_efficientnet_b0": round(summaries["efun"]["images_per_s"] /
                                               summaries["efficientnet_b0"]["images_per_s"], 3),
            "summaries": summaries}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the dry run in the test suite)")
    parser.add_argument("--budget-s", type=float, default=450,
                        help="seconds the whole run may take; late steps are skipped past it (default 450)")
    args = parser.parse_args(argv)
    args.argv = argv
    check = Check(Path(args.output), args)
    check.log(f"gpu_check in {REPO}, device {args.device}, budget {args.budget_s:.0f} s")
    check.step("load", lambda: step_load(check, args))
    if check.record["steps"]["load"]["status"] != "ok":
        check.log("funloader could not be loaded: nothing else can run")
        return 1
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            check.record["steps"]["load"]["status"] = "failed: --device cuda but torch sees no CUDA device"
            check.save()
            return 1
    if args.quick and not args.device.startswith("cuda"):
        import torch

        torch.set_num_threads(1)  # the dry run shares small CPUs with other work: no spinning threads
    check.step("tests", lambda: step_tests(check, args))
    check.step("loader_equality", lambda: step_loader_equality(check, args), needs_s=20)
    check.step("train", lambda: step_train(check, args), needs_s=40)
    check.step("loader_throughput", lambda: step_loader_throughput(check, args), needs_s=40)
    check.step("models", lambda: step_models(check, args), needs_s=60)
    check.step("train_step", lambda: step_train_step(check, args), needs_s=20)
    statuses = {name: step["status"] for name, step in check.record["steps"].items()}
    check.record["summary"] = statuses
    check.save()
    check.log("summary: " + json.dumps(statuses))
    return 0 if all(s == "ok" or s.startswith("skipped") for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
