"""Per-channel statistics of the FUN input, for normalisation: ``compute_stats``, ``load_stats``,
``resolve`` (the one place that finds, loads and validates statistics for every backend), and the
``funloader stats DIR`` command.

The statistics are the mean and standard deviation of each of the 192 channels over every block
position of every image, exactly as the loader reads them: each image centre-cropped / zero-padded
to the ``size`` block grid (default 28x28 = 224 px), coefficients either dequantised (float:
quantised value times its quantisation step, the loader's default, comparable across JPEG
qualities) or raw quantised integers (``dequantize=False``, what the paper's released models take).

Files (JSON, next to the data): ``stats-dequantized.json`` and ``stats-raw.json``; ``load_stats``
also accepts a ``stats.json`` (as written by ``funloader prepare --stats``) whose ``dequantized``
field matches. Content: ``{"format": "funloader-stats", "version": 1, "dequantized": bool,
"size": [h, w], "count": images, "positions": blocks per channel, "failed": n, "mean": [192],
"std": [192]}``. When the data folder cannot be written (read-only, or shared without write
permission), the file goes to the cache instead (:func:`cache_path`:
``$FUNLOADER_CACHE_DIR/stats/...``), and ``resolve`` looks there too.

Validation (every path that brings statistics in: files, dicts, ``(mean, std)`` pairs, tensors):
192 finite numbers each, no strings or nested lists, every std 0 (a constant channel: centred only)
or at least ``MIN_STD``; anything else raises :class:`StatsError` naming the file or argument.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import UsageError, user_stacklevel
from .files import FileRefusedError, cache_root, read_file, untrusted_reason

__all__ = ["compute_stats", "load_stats", "resolve", "stats_filename", "cache_path", "StatsError", "ChannelStats",
           "MIN_STD", "main"]

STATS_FORMAT = "funloader-stats"
#: Smallest non-zero channel std accepted: ``1 / std`` must stay a sane float32 gain (a std of
#: 1e-300 made every batch NaN). A std of exactly 0 marks a constant channel, which is only centred.
MIN_STD = 1e-6
#: Largest statistics file read (192 means and stds are a few kB).
MAX_STATS_BYTES = 16 << 20


class StatsError(UsageError):
    """Channel statistics that cannot be used (malformed, non-finite, wrong mode), naming their source."""


class ChannelStats(tuple):
    """``(mean, std)``: float64 numpy arrays of shape ``(192,)``; ``source`` says where they came
    from (a file path, or the argument's name)."""

    def __new__(cls, mean: np.ndarray, std: np.ndarray, source: str):
        pair = super().__new__(cls, (mean, std))
        pair.source = source
        return pair

    @property
    def mean(self) -> np.ndarray:
        return self[0]

    @property
    def std(self) -> np.ndarray:
        return self[1]


def stats_filename(dequantize: bool = True) -> str:
    """Default file name of the statistics for a coefficient mode."""
    return "stats-dequantized.json" if dequantize else "stats-raw.json"


def _vector(values, field: str, where) -> np.ndarray:
    """``values`` as 192 finite float64, or StatsError naming ``where`` and ``field``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if values is None or isinstance(values, (str, bytes, dict)):
        raise StatsError(f"{where}: '{field}' must be 192 numbers, got {type(values).__name__}")
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged nesting
        raise StatsError(f"{where}: '{field}' must be 192 numbers ({exc})") from None
    if array.dtype.kind not in "iuf":
        kind = "nested or mixed lists" if array.dtype.kind == "O" else f"{array.dtype} values"
        raise StatsError(f"{where}: '{field}' must be 192 numbers, got {kind}")
    if array.shape != (192,):
        raise StatsError(f"{where}: '{field}' must be 192 numbers, got shape {array.shape}")
    array = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array) | (np.abs(array) > np.finfo(np.float32).max))
    if bad.size:
        raise StatsError(f"{where}: '{field}' channel {bad[0]} is {float(array[bad[0]])!r} (not a finite float32 number; "
                         f"{bad.size} such channel(s))")
    return array


def _validate_pair(mean, std, where) -> Tuple[np.ndarray, np.ndarray]:
    mean, std = _vector(mean, "mean", where), _vector(std, "std", where)
    bad = np.flatnonzero((std < 0) | ((std > 0) & (std < MIN_STD)))
    if bad.size:
        raise StatsError(f"{where}: 'std' channel {bad[0]} is {float(std[bad[0]])!r}; a std must be 0 (constant channel) or "
                         f"at least {MIN_STD:g} ({bad.size} such channel(s))")
    return mean, std


def _read_stats_file(candidate: Path) -> dict:
    try:
        data = read_file(candidate, limit=MAX_STATS_BYTES)
    except FileRefusedError as exc:
        raise StatsError(f"{candidate}: not a statistics file ({exc.reason})") from None
    try:
        stats = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        hint = " (a .tar shard is data, not statistics)" if data[257:262] == b"ustar" else ""
        raise StatsError(f"{candidate}: not a JSON statistics file{hint} ({exc})") from None
    if not isinstance(stats, dict):
        raise StatsError(f"{candidate}: expected a JSON object with 'mean' and 'std'")
    return stats


def _data_dir(root) -> Optional[Path]:
    """The folder statistics of ``root`` live in: ``root`` itself, or the folder of a ``.tar`` shard."""
    if root is None:
        return None
    path = Path(os.path.expanduser(os.fspath(root)))
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    return None


def cache_path(root, dequantize: bool = True) -> Path:
    """Where statistics of the data folder ``root`` go when that folder cannot be written:
    ``<cache>/stats/<name>-<hash of its real path>/stats-*.json`` (see :func:`funloader.files.cache_root`)."""
    real = os.path.realpath(os.fspath(root))
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(real))[:40] or "root"
    return cache_root() / "stats" / f"{name}-{digest}" / stats_filename(dequantize)


def _find_stats(path_or_root, dequantize: bool) -> Optional[Tuple[dict, Path, ChannelStats]]:
    """``(dict as written, its path, its validated (mean, std))`` or None; see :func:`load_stats` for the search."""
    if path_or_root is None:
        return None
    path = Path(os.path.expanduser(os.fspath(path_or_root)))
    if path.is_file() and path.suffix != ".tar":
        candidates = [path]
    else:
        folder = _data_dir(path)
        if folder is None:
            return None
        candidates = [folder / stats_filename(dequantize), folder / "stats.json", cache_path(folder, dequantize)]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if candidate == candidates[-1] and len(candidates) > 1:
            reason = untrusted_reason(candidate)
            if reason is not None:
                warnings.warn(f"funloader: ignoring cached statistics {candidate}: {reason}", stacklevel=user_stacklevel())
                continue
        stats = _read_stats_file(candidate)
        if candidate != path and candidate.name == "stats.json" and bool(stats.get("dequantized", False)) != bool(dequantize):
            continue
        return stats, candidate, ChannelStats(*_validate_pair(stats.get("mean"), stats.get("std"), candidate),
                                              str(candidate))
    return None


def load_stats(path_or_root, *, dequantize: bool = True) -> Optional[dict]:
    """Load channel statistics.

    ``path_or_root``: a stats JSON file (returned whatever its mode), or a data directory
    (searched for ``stats_filename(dequantize)``, then ``stats.json`` if its ``dequantized``
    field equals ``dequantize``; missing field = raw; then the cache location of that folder,
    :func:`cache_path`). A ``.tar`` shard stands for its folder. Returns the dict (``mean``/``std``
    lists of 192 floats, ``path``...) or None when there is none. Raises :class:`StatsError` for a
    malformed file.
    """
    found = _find_stats(path_or_root, dequantize)
    if found is None:
        return None
    stats, where, _ = found
    stats.setdefault("dequantized", False)
    stats["path"] = str(where)
    return stats


def resolve(spec, root, dequantize: bool, *, argument: str = "normalize", warn: bool = True) -> Optional[ChannelStats]:
    """The one place that finds, loads and validates channel statistics (CPU loader, DALI, training).

    ``spec``:
      - ``None`` / ``False``: no normalisation, returns None;
      - ``"auto"``: the statistics of ``root`` for this ``dequantize`` mode (:func:`load_stats`: next to
        the data, else in the cache); None when there are none (with a warning when ``warn``);
      - ``True``: the same, but missing statistics raise ``FileNotFoundError``;
      - a path: that stats file (or the statistics of that folder); a file whose ``dequantized``
        field contradicts ``dequantize`` is refused;
      - a dict with ``mean``/``std``, or a ``(mean, std)`` pair (lists, arrays or tensors).
    ``root``: the data location (a folder or a ``.tar`` shard, whose folder is used), may be None.
    ``argument``: the name used in error messages for an in-memory ``spec``.

    Returns :class:`ChannelStats` ``(mean, std)`` float64 ``(192,)`` with ``.source``, or None.
    Raises :class:`StatsError` (a ``UsageError``) for unusable statistics, naming the file or argument.
    """
    if spec is None or spec is False:
        return None
    if spec is True or (isinstance(spec, str) and spec == "auto"):
        found = _find_stats(root, dequantize) if root is not None else None
        if found is None:
            mode = "dequantized" if dequantize else "raw"
            if spec is True:
                raise FileNotFoundError(f"{root}: no channel statistics for {mode} coefficients "
                                        f"(dequantize={dequantize}); run 'funloader stats {root}' first")
            if warn:
                warnings.warn(f"funloader: no channel statistics next to {root} for {mode} coefficients "
                              f"(dequantize={dequantize}): batches are not normalised (run 'funloader stats DIR' "
                              f"to compute them)", stacklevel=user_stacklevel())
            return None
        return found[2]
    if isinstance(spec, (str, os.PathLike)):
        found = _find_stats(spec, dequantize)
        if found is None:
            raise FileNotFoundError(f"{argument}={os.fspath(spec)!r}: no funloader statistics file there")
        stats, where, pair = found
        recorded = stats.get("dequantized")
        if recorded is not None and bool(recorded) != bool(dequantize):
            have, want = ("dequantized", "raw") if recorded else ("raw", "dequantized")
            raise StatsError(f"{where}: statistics of {have} coefficients, but the data is read as {want} "
                             f"coefficients (dequantize={dequantize}); use {stats_filename(dequantize)}")
        return pair
    if isinstance(spec, dict):
        return ChannelStats(*_validate_pair(spec.get("mean"), spec.get("std"), f"{argument} (dict)"),
                            str(spec.get("path", argument)))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return ChannelStats(*_validate_pair(spec[0], spec[1], f"{argument} (mean, std)"), argument)
    raise StatsError(f"{argument} must be 'auto', True, False/None, a stats file path, a dict with 'mean'/'std' "
                     f"or a (mean, std) pair, not {type(spec).__name__}")


def compute_stats(dataset_or_root, *, dequantize: bool = True, size=28, batch_size: int = 128,
                  threads: Optional[int] = None, max_images: Optional[int] = None, seed: int = 0,
                  output="auto", progress: bool = True, split: Optional[str] = None) -> dict:
    """Mean and std of each of the 192 FUN channels over a dataset (see the module docstring).

    Args:
        dataset_or_root: a ``DCTImageFolder`` or anything it accepts (folder, prepared folder, shards).
        dequantize: dequantised coefficients (default, the loader's default) or raw integers.
        size: block grid every image is centre-cropped / zero-padded to (as the loader reads it).
        batch_size, threads: ``read_batch`` batch and native threads.
        max_images: use a random subset of this many images (drawn with ``seed``), default all.
        output: ``"auto"`` writes ``stats_filename(dequantize)`` into the data directory (when there
            is one; when that folder cannot be written, into :func:`cache_path` instead, with a
            message saying where; :func:`resolve` finds it there), a path writes there, None writes
            nothing.
        progress: show a tqdm bar.
        split: a sub-folder of ``dataset_or_root`` to use (``"train"``). A folder holding split
            folders (``train/`` with ``val/`` or ``test/``) is refused without it: their images are
            not classes, and test images must not leak into the statistics.

    Bad files are skipped (counted in ``failed``). Accumulation is in float64, merged batch by batch
    (Chan's parallel variance), so the result does not depend on ``batch_size`` beyond rounding.
    Returns the stats dict (also what is written).
    """
    from tqdm import tqdm

    from .codec import read_batch
    from .dataset import DCTImageFolder
    from .transforms import _pair

    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if max_images is not None and int(max_images) < 1:
        raise UsageError(f"max_images must be at least 1, got {max_images}")
    if isinstance(dataset_or_root, DCTImageFolder):
        dataset = dataset_or_root
    else:
        dataset = DCTImageFolder(_split_root(dataset_or_root, split))
    grid = _pair(size)
    indices = np.arange(len(dataset))
    if max_images is not None and max_images < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(len(indices), size=int(max_images), replace=False))
    buffer = np.empty((batch_size, 192) + grid, dtype=np.float32 if dequantize else np.int16)
    count = 0
    mean = np.zeros(192, np.float64)
    m2 = np.zeros(192, np.float64)
    images = failed = 0
    bar = tqdm(total=len(indices), desc="stats", unit="img", disable=not progress, file=sys.stderr)
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            out = buffer[:len(chunk)]
            errors = read_batch(dataset.sources(chunk), out, threads=threads, dequantize=dequantize, strict=dataset.strict)
            good = np.array([e is None for e in errors])
            failed += int((~good).sum())
            bar.update(len(chunk))
            if not good.any():
                continue
            values = torch.from_numpy(out[good]).to(torch.float64).transpose(0, 1).reshape(192, -1)
            n_b = values.shape[1]
            mean_b = values.mean(dim=1).numpy()
            m2_b = ((values - torch.from_numpy(mean_b)[:, None]) ** 2).sum(dim=1).numpy()
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta ** 2 * (count * n_b / total)
            count = total
            images += int(good.sum())
    finally:
        bar.close()
    if images == 0:
        raise ValueError(f"{dataset.root}: no decodable image to compute statistics from")
    std = np.sqrt(m2 / count)
    std[std < MIN_STD] = 0.0  # constant up to float rounding: a constant channel (only centred), as resolve expects
    stats = {"format": STATS_FORMAT, "version": 1, "dequantized": bool(dequantize), "size": list(grid),
             "count": images, "positions": int(count // images), "failed": failed,
             "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    folder = _data_dir(dataset.root)
    if output == "auto" and folder is not None:
        target = folder / stats_filename(dequantize)
        try:
            if not os.access(folder, os.W_OK):
                raise PermissionError(13, "the folder is not writable", str(folder))
            _write_json(target, stats)
        except OSError as exc:
            target = cache_path(folder, dequantize)
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_json(target, stats)
            print(f"funloader stats: cannot write into {folder} ({exc.strerror or exc}); saved the statistics to "
                  f"{target} instead (found there automatically for this folder)", file=sys.stderr)
        stats["path"] = str(target)
    elif output not in (None, "auto"):
        _write_json(Path(output), stats)
        stats["path"] = str(output)
    return stats


def _write_json(target: Path, stats: dict) -> None:
    """Write ``stats`` to ``target`` atomically (temporary file, then rename)."""
    temporary = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        temporary.write_text(json.dumps(stats, indent=1) + "\n")
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


#: Folder names that mark dataset splits rather than classes.
SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def _split_root(root, split: Optional[str]):
    """``root/split``, or ``root`` itself after checking that it does not hold split folders."""
    if isinstance(root, (list, tuple)) or root is None:
        return root
    path = Path(os.path.expanduser(os.fspath(root)))
    if split is not None:
        chosen = path / split
        if not chosen.is_dir():
            raise UsageError(f"{path}: no split folder {split!r} (have: "
                             f"{', '.join(sorted(p.name for p in path.iterdir() if p.is_dir())) or 'none'})")
        return chosen
    if not path.is_dir() or (path / "index.json").is_file():
        return root
    present = sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and entry.name.lower() in SPLIT_NAMES)
    if len(present) > 1:
        train = next((name for name in present if name.lower() == "train"), None)
        hint = f"use {path / train} (--split {train})" if train else "choose one with --split NAME (split=)"
        raise UsageError(f"{path} holds the split folders {', '.join(present)}, not classes: statistics must come "
                         f"from the training images only; {hint}")
    return root


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    """``funloader stats DIR``: compute and save the 192 channel means/stds of a dataset."""
    parser = argparse.ArgumentParser(prog="funloader stats",
                                     description="Compute the 192 per-channel means/stds the loader normalises with "
                                                 "and save them as JSON next to the data (or in the cache when the "
                                                 "data folder cannot be written).")
    parser.add_argument("data", help="ImageFolder root, 'funloader prepare' output or directory of .tar shards")
    parser.add_argument("--split", default=None,
                        help="sub-folder of DATA to use (e.g. train) when DATA holds split folders train/ val/ test/")
    parser.add_argument("--raw", action="store_true",
                        help="statistics of the raw quantised integers (paper's released models) instead of "
                             "dequantised coefficients")
    parser.add_argument("--size", type=_positive_int, default=28, help="block grid (default 28 = 224 px)")
    parser.add_argument("--max-images", type=_positive_int, default=None, help="random subset of this many images")
    parser.add_argument("--batch-size", type=_positive_int, default=128)
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="native decoding threads (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help=f"JSON path (default: DATA/{stats_filename(True)} "
                                                        f"or DATA/{stats_filename(False)})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        stats = compute_stats(args.data, dequantize=not args.raw, size=args.size, batch_size=args.batch_size,
                              threads=args.threads, max_images=args.max_images, seed=args.seed,
                              output=args.output or "auto", progress=not args.no_progress, split=args.split)
    except (OSError, ValueError) as exc:  # FunloaderError included: a named bad input, one line
        print(f"funloader stats: error: {exc}", file=sys.stderr)
        return 2
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    kind = "dequantized" if stats["dequantized"] else "raw"
    print(f"{stats['count']} images ({stats['failed']} failed), {kind} coefficients, grid {stats['size'][0]}x{stats['size'][1]}")
    for component, name in enumerate(("Y", "Cb", "Cr")):
        lo = 64 * component
        print(f"  {name:2s} DC mean {mean[lo]:10.3f} std {std[lo]:9.3f} | AC std range {std[lo + 1:lo + 64].min():.3f}"
              f" .. {std[lo + 1:lo + 64].max():.3f}")
    print(f"saved {stats.get('path', '(not saved)')}")
    return 0
