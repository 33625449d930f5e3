"""NVIDIA DALI pipelines that read JPEG files into FUN inputs (DCT coefficients), on CPU or GPU.

Two decoding backends give identical tensors:

* ``backend="plugin"`` (default): DALI's own readers (``fn.readers.file`` over an ImageFolder or a
  file list, ``fn.readers.webdataset`` over ``funloader prepare --format shards`` output) feed the
  native CPU operator ``fn.funloader.dct_decode`` (C++ in ``dct_decode_op.cc`` around funloader's
  C core, run on DALI's thread pool). The plugin library is compiled on first use into
  ``~/.cache/funloader/dali-<version>-<hash>/`` (see :mod:`funloader.dali.build`) and loaded with
  ``nvidia.dali.plugin_manager.load_library``.
* ``backend="external_source"``: no build; ``fn.external_source(parallel=True, batch=False)`` worker
  processes decode with :func:`funloader.read_batch`.

Then, on the GPU when ``device_id`` is a GPU (on the CPU with ``device_id=None``): block-aligned
random crop, horizontal flip in the DCT domain (reverse the block columns and negate the
coefficients with odd horizontal frequency u), channel zeroing and per-channel normalisation.

Output per sample: ``images`` ``(C, crop_h, crop_w)`` layout CHW, ``C = 192`` (or the kept channels),
``channel = 64 * component + 8 * v + u``; int16 raw quantized coefficients, or float32 when
dequantized / normalised (``dtype`` can ask for float16/float32); ``labels`` int32 ``(1,)``
(-1 when unlabelled). :class:`FUNIterator` turns batches into PyTorch ``(images, labels)``.

Example::

    from funloader.dali import fun_pipeline, FUNIterator
    pipe = fun_pipeline("/data/imagenet-fun/train", 256, num_threads=8, device_id=0,
                        random_shuffle=True, flip=True, decode_grid=32, random_crop=True)
    # dequantised and normalised with the data's stats-dequantized.json, as DCTLoader
    for images, labels in FUNIterator(pipe):   # images: (256, 192, 28, 28) float32 on cuda:0
        ...
"""
from __future__ import annotations

import math
import os
import re
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._process import exit_with_parent
from ..channels import KeepSpec, channel_indices, decode_affine, flip_signs, normalization_affine
from ..errors import JPEGDecodeError, UnsupportedJPEGError
from ..shards import dali_index_path
from ..stats import resolve as resolve_stats

__all__ = ["fun_pipeline", "FUNIterator", "load_plugin", "plugin_available", "resolve_source", "READER_NAME",
           "DALIDecodeError", "DALIUnsupportedJPEGError"]

#: Name of the reader operator in pipelines made by :func:`fun_pipeline` (for ``reader_name``).
READER_NAME = "Reader"

#: DALI takes host buffers larger than ``DALI_MALLOC_POOL_THRESHOLD`` (default 32M) from its own
#: pool and smaller ones from ``malloc``. A FUN batch is 10-20 MB (32 x 192 x 28 x 28 int16/float32),
#: and glibc serves it from a per-thread arena heap that it unmaps again when the batch is freed, so
#: every batch starts on fresh pages: we measured 145 page faults per image and half the CPU
#: throughput of the same pipeline with pooled buffers (1 fault per image). Unless the user chose a
#: value, funloader makes DALI pool buffers from 1 MiB up. DALI reads the variable when it creates
#: its host memory resource, so this holds when ``funloader.dali`` is imported before the process
#: runs its first DALI pipeline.
DALI_POOL_THRESHOLD = "1M"
os.environ.setdefault("DALI_MALLOC_POOL_THRESHOLD", DALI_POOL_THRESHOLD)

_plugin_lock = threading.Lock()
_plugin_path: Optional[str] = None


class DALIDecodeError(JPEGDecodeError):
    """A sample failed to decode inside a DALI pipeline; ``filename`` names it (as DALI's reader
    reports it: the file path, or ``shard.tar:offset`` information for WebDataset shards)."""


class DALIUnsupportedJPEGError(DALIDecodeError, UnsupportedJPEGError):
    """A sample inside a DALI pipeline is a JPEG funloader does not read (CMYK, 12-bit, lossless...)."""


def load_plugin(build: bool = True) -> str:
    """Load the funloader DALI plugin into this process (once) and return its path.

    Builds it into the cache first when needed (``build=True``; a few seconds with g++).
    Raises :class:`funloader.dali.build.PluginBuildError` if it cannot be built.
    """
    global _plugin_path
    with _plugin_lock:
        if _plugin_path is None:
            from nvidia.dali import plugin_manager

            from . import build as plugin_build

            # both paths check the cached library (owner, modes, build manifest) before dlopen runs its code
            path = plugin_build.build() if build else plugin_build.verified_library()
            try:
                plugin_manager.load_library(str(path))
            except RuntimeError as error:
                raise plugin_build.PluginBuildError(f"{path}: DALI could not load the plugin ({error}); rebuild it "
                                                    f"with python -m funloader.dali.build --force") from None
            _plugin_path = str(path)
        return _plugin_path


def plugin_available() -> bool:
    """Whether the plugin is loaded or can be built and loaded here."""
    try:
        load_plugin()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


# ----------------------------------------------------------------------------------------------
# sources
class ResolvedSource:
    """What a pipeline reads: ``names`` (paths or ``shard.tar::key``), ``labels`` (int, -1: none),
    ``shards`` (the .tar files when the data is WebDataset shards, else empty) and ``dataset``
    (the :class:`funloader.DCTImageFolder` describing it, used by the external_source backend)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.names: List[str] = [name for name, _ in dataset.samples]
        self.labels: List[int] = [int(label) for _, label in dataset.samples]
        self.shards: List[str] = list(dataset.shards)
        self.classes: List[str] = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.names)


def resolve_source(source) -> ResolvedSource:
    """Interpret ``source`` as :class:`funloader.DCTImageFolder` does: an ImageFolder root
    (``root/<class>/<image>``, classes sorted), a ``funloader prepare`` output (``index.json``), a
    folder of ``.tar`` shards, a ``.tar`` shard or a list of them, or a list of ``(path, label)``."""
    from ..dataset import DCTImageFolder

    if isinstance(source, ResolvedSource):
        return source
    if isinstance(source, DCTImageFolder):
        return ResolvedSource(source)
    if isinstance(source, (str, os.PathLike)) or (isinstance(source, (list, tuple)) and source):
        return ResolvedSource(DCTImageFolder(source, dequantize=False))
    raise TypeError(f"source must be a folder, .tar shard(s), (path, label) list or DCTImageFolder, not {source!r}")


def shard_bounds(count: int, shard_id: int, num_shards: int) -> Tuple[int, int]:
    """Sample range ``[begin, end)`` of shard ``shard_id`` of ``count`` samples, as DALI's readers split them."""
    return (count * shard_id) // num_shards, (count * (shard_id + 1)) // num_shards


# ----------------------------------------------------------------------------------------------
# the external_source fallback
class _FallbackSource:
    """Per-sample callable for ``fn.external_source(parallel=True, batch=False)``.

    It emulates the plugin path's reader (``pad_last_batch=True``, shards rotating every epoch as
    DALI's readers do without ``stick_to_shard``): an epoch of shard ``(shard_id + epoch) % num_shards``
    padded to whole batches by repeating its last sample, so outputs and epoch lengths match.
    """

    def __init__(self, resolved: ResolvedSource, batch_size: int, shard_id: int, num_shards: int, shuffle: bool,
                 seed: int, grid: Tuple[int, int], out_dtype, dequantize: bool, channels: Optional[List[int]],
                 strict: bool, max_pixels: Optional[int], on_error: str, stick_to_shard: bool,
                 flip_probability: float = 0.0, normalization: Optional[Tuple[np.ndarray, np.ndarray]] = None,
                 resize=None):
        self.dataset = resolved.dataset
        self.labels = resolved.labels
        self.batch_size = batch_size
        self.shard_id, self.num_shards = shard_id, num_shards
        self.shuffle, self.seed = shuffle, seed
        self.grid = grid
        self.out_dtype = np.dtype(out_dtype)
        self.dequantize = dequantize
        self.channels = channels
        self.strict, self.max_pixels, self.on_error = strict, max_pixels, on_error
        self.stick_to_shard = stick_to_shard
        self.resize = resize
        self.flip_probability = flip_probability
        self.normalized = normalization is not None
        # read_batch's affine over the 192 decoded channels (funloader.channels.decode_affine):
        # gain[flip] = scale (or 1) with the flip signs folded in, bias = shift (or 0).
        self.gain = self.bias = None
        self.signs = flip_signs("h")
        if normalization is not None or flip_probability > 0:  # (used for float32 output only)
            affine = None if normalization is None else _decoded_affine(normalization, channels)
            unflipped, self.bias = decode_affine(affine)
            self.gain = (unflipped[None], decode_affine(affine, flip=True)[0][None])
        self._orders: Dict[int, np.ndarray] = {}
        self._parent_pid = os.getpid()

    def __setstate__(self, state) -> None:
        # Unpickled in each external_source worker process: exit when the pipeline's process dies
        # (even by SIGKILL).  Polling, not PR_SET_PDEATHSIG: the thread that built the pipeline may end.
        self.__dict__.update(state)
        exit_with_parent(self._parent_pid, death_signal=False)

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices read in ``epoch`` (without the padding)."""
        cached = self._orders.get(epoch)
        if cached is None:
            shard = self.shard_id if self.stick_to_shard else (self.shard_id + epoch) % self.num_shards
            begin, end = shard_bounds(len(self.labels), shard, self.num_shards)
            cached = np.arange(begin, end)
            if self.shuffle:
                cached = np.random.default_rng([max(self.seed, 0), epoch]).permutation(cached)
            self._orders = {epoch: cached}
        return cached

    def box(self, index: int, epoch: int, position: int) -> Optional[np.ndarray]:
        """The window ``(1, 4)`` of sample ``index`` read at ``position`` of ``epoch`` (``resize``'s draw
        from a generator seeded by ``(seed, epoch, position)``), or None without ``resize`` or when the
        header cannot be read (the decode then reports the file's error)."""
        import torch

        from ..codec import read_sizes

        if self.resize is None:
            return None
        try:
            size = read_sizes([self.dataset.source(index)], threads=1, strict=self.strict, max_pixels=self.max_pixels)
        except (ValueError, OSError, MemoryError):
            return None
        generator = None
        if self.resize.random:
            generator = torch.Generator()
            generator.manual_seed(int(np.random.SeedSequence([max(self.seed, 0), epoch, position]).generate_state(1)[0]))
        box = self.resize.boxes(size, generator)
        return None if np.isnan(box[0, 0]) else box

    def __call__(self, sample_info):
        from ..codec import read_batch

        order = self.order(sample_info.epoch_idx)
        padded = math.ceil(len(order) / self.batch_size) * self.batch_size
        if sample_info.idx_in_epoch >= padded or len(order) == 0:
            raise StopIteration
        index = int(order[min(sample_info.idx_in_epoch, len(order) - 1)])
        out = np.empty((1, 192, *self.grid), dtype=self.out_dtype)
        layout = {}
        flip = self.flip_probability > 0 and bool(
            np.random.default_rng([max(self.seed, 0), sample_info.epoch_idx, sample_info.idx_in_epoch]).random()
            < self.flip_probability)
        if flip:
            layout["col_maps"] = np.arange(self.grid[1])[None, ::-1]
        if self.gain is not None and out.dtype == np.float32 and (flip or self.normalized):
            layout.update(gain=self.gain[int(flip)], bias=self.bias)
        box = self.box(index, sample_info.epoch_idx, sample_info.idx_in_epoch)
        if box is not None:
            layout.update(boxes=box, subsampling=self.resize.subsampling, support=self.resize.support)
        error = read_batch([self.dataset.source(index)], out, threads=1, dequantize=self.dequantize,
                           strict=self.strict, max_pixels=self.max_pixels, warn=False, **layout)[0]
        if error is None and flip and out.dtype == np.int16:  # the sign half of the flip
            out[0] *= self.signs.astype(np.int16)[:, None, None]
        elif error is not None and self.normalized and layout:  # zero coefficients, normalised like the rest
            out[0] = self.bias[:, None, None]
        if error is not None and self.on_error == "raise":
            name = self.dataset.sample_name(index)
            reason = getattr(error, "reason", None) or str(error)
            raise JPEGDecodeError(f"funloader: {type(error).__name__} in '{name}': {reason} [external_source]", name)
        coefficients = out[0] if self.channels is None else out[0, self.channels]
        return np.ascontiguousarray(coefficients), np.array([self.labels[index]], dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# pipeline
def _pair(value) -> Tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected a block count or (height, width) in blocks, got {value!r}")
    return pair  # type: ignore[return-value]


def _decoded_affine(normalization: Tuple[np.ndarray, np.ndarray], channels: Optional[Sequence[int]]):
    """``(scale, shift)`` over all 192 decoded channels from a per-output-channel affine (channels not
    output keep scale 1, shift 0)."""
    scale, shift = np.ones(192, np.float32), np.zeros(192, np.float32)
    chans = list(range(192)) if channels is None else list(channels)
    scale[chans] = np.asarray(normalization[0], np.float32).reshape(-1)
    shift[chans] = np.asarray(normalization[1], np.float32).reshape(-1)
    return scale, shift


def _dali_dtype(dtype):
    """``(name, DALI type)`` of an output dtype given as a string, numpy or torch dtype."""
    from nvidia.dali import types

    table = {"int16": types.INT16, "float32": types.FLOAT, "float16": types.FLOAT16}
    text = str(dtype)
    if text.startswith("torch."):
        name = {"torch.int16": "int16", "torch.float32": "float32", "torch.float16": "float16"}.get(text, text)
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = text
    if name not in table:
        raise ValueError(f"dtype must be int16, float32 or float16, not {dtype!r}")
    return name, table[name]


def fun_pipeline(source, batch_size: int, *, num_threads: Optional[int] = None, device_id: Optional[int] = None,
                 shard_id: int = 0, num_shards: int = 1, random_shuffle: bool = False,
                 crop: Union[int, Tuple[int, int]] = 28, decode_grid: Union[int, Tuple[int, int], None] = None,
                 random_crop: bool = False, flip: Union[bool, float] = False, keep_channels: KeepSpec = None,
                 keep_mode: str = "drop", dequantize: bool = True, normalize_stats="auto", dtype=None, seed: int = -1,
                 backend: str = "plugin", on_error: str = "raise", strict: bool = True,
                 max_pixels: Optional[int] = None, stick_to_shard: bool = False, initial_fill: int = 1024,
                 prefetch_queue_depth: int = 2, py_num_workers: Optional[int] = None,
                 py_start_method: Optional[str] = None, color_jitter: Optional[Dict[str, Any]] = None,
                 resize="auto"):
    """Build a DALI pipeline reading JPEGs into FUN inputs; outputs ``(images, labels)``.

    Args:
        source: ImageFolder root, ``funloader prepare`` output, ``.tar`` shard(s), ``(path, label)``
            list or a :class:`funloader.DCTImageFolder` (see :func:`resolve_source`).
        batch_size: samples per batch.
        num_threads: DALI CPU threads (decoding threads of the plugin); default: CPUs available.
        device_id: GPU index (crop/flip/normalise run there, outputs on the GPU) or None (CPU only).
        shard_id, num_shards: this rank's part of the data (contiguous split, as DALI's readers).
        random_shuffle: shuffle (plugin: DALI reader's buffer of ``initial_fill`` samples;
            external_source: a seeded permutation of the shard per epoch).
        crop: output block grid ``(H8, W8)`` (int or pair); 28 = 224 pixels.
        decode_grid: grid every image is first centre-cropped/zero-padded to (default ``crop``); with
            ``random_crop`` a random ``crop`` window of it is taken (block-aligned).
        random_crop: random block-aligned ``crop`` window of the ``decode_grid`` (else centred).
        flip: random horizontal flip in the DCT domain with probability 0.5 (or the float given)
            (plugin: DALI's ``coin_flip``; external_source on CPU: drawn per sample from ``seed``,
            epoch and position, so the same for every run with the same seed; 0 when seed is -1).
        keep_channels: keep-spec (``"44/10/10"``) of the lowest zigzag frequencies to keep; with
            ``keep_mode="drop"`` only those channels are output (sorted channel order), with
            ``"zero"`` all 192 with the others zeroed.
        dequantize: multiply by the quantization tables (float32; default True, as ``DCTLoader``).
        normalize_stats: as ``DCTLoader(normalize=)``: ``"auto"`` (default: the statistics file next to
            the data for this ``dequantize`` mode, ``stats-dequantized.json`` / ``stats-raw.json``, if
            present, else no normalisation with a warning), True (require it), None/False, a stats
            file path, a dict with ``mean``/``std`` or ``(mean, std)``; found and validated by
            :func:`funloader.stats.resolve`. Applied as ``x * scale + shift``
            (:func:`funloader.channels.normalization_affine`, float32), the same bits as ``DCTLoader``.
        dtype: output dtype: int16 (default for raw coefficients), float32 (default when dequantized
            or normalised) or float16.
        seed: random seed of shuffling and augmentation (-1: DALI picks one).
        backend: ``"plugin"`` (native operator) or ``"external_source"`` (no build).
        on_error: ``"raise"``: a bad file stops the pipeline with an error naming it (FUNIterator
            raises :class:`DALIDecodeError`); ``"zero"``: its coefficients are all zeros (a flat grey
            image; with ``normalize_stats`` the output is then ``-mean/std``, as for any zero coefficient).
        strict, max_pixels: as :func:`funloader.read_fun`.
        stick_to_shard: keep reading the same shard every epoch (DALI's readers otherwise move to the
            next shard each epoch).
        resize: what the decode reads of each file, as ``DCTLoader`` does: ``"auto"`` (default, as
            ``DCTLoader`` without a transform: ``funloader.transforms.ReadOrResize``: a file whose block
            grid is the decode grid is read as it is, any other gets the evaluation transform
            ``Resize(256) + CenterCrop(224)``, natively), a ``RandomResizedCrop(size)`` (exact mode) or
            ``ResizeCenterCrop(size)`` (``crop`` is then its size), or None (every file centre-cropped /
            zero-padded by whole blocks: no per-file window, see below). Windows are drawn in Python by
            the transform (the plugin reads each file's size with ``fn.funloader.image_size`` and draws in a
            ``fn.python_function``, which makes DALI run the pipeline without its asynchronous
            execution; external_source draws per sample from ``(seed, epoch, position)``) and resized by
            the native kernel, bit for bit as ``read_batch(boxes=)``; the windows the plugin drew last are
            in ``pipe.funloader_boxes``. ``resize=None`` keeps DALI's asynchronous execution and gives the
            same tensors as ``"auto"`` on files whose grid is the decode grid (e.g. prepared 224 sets).
        py_num_workers, py_start_method: external_source worker processes (default ``num_threads``;
            ``"spawn"``: forking a process that already runs threads (a DCTLoader, torch) can deadlock).
        color_jitter: ``{"brightness": .., "contrast": .., "saturation": .., "hue": ..}`` (torchvision
            ``ColorJitter``'s arguments): per-sample colour jitter on the dequantised coefficients,
            before normalisation, in the fixed order brightness, contrast, saturation, hue (see
            :mod:`funloader.dali.color`; needs ``dequantize=True`` and all 192 channels decoded).

    Returns:
        A built ``nvidia.dali.Pipeline`` with outputs ``images`` and ``labels``, and attributes
        ``funloader_reader_name`` (``"Reader"``, or None for external_source),
        ``funloader_shard_size`` (samples this shard reads per epoch) and ``funloader_source``.
    """
    from nvidia.dali import fn, pipeline_def, types

    if backend not in ("plugin", "external_source"):
        raise ValueError(f"backend must be 'plugin' or 'external_source', got {backend!r}")
    if on_error not in ("raise", "zero"):
        raise ValueError(f"on_error must be 'raise' or 'zero', got {on_error!r}")
    if keep_mode not in ("drop", "zero"):
        raise ValueError(f"keep_mode must be 'drop' or 'zero', got {keep_mode!r}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} out of range for num_shards {num_shards}")
    resolved = resolve_source(source)
    if len(resolved) == 0:
        raise ValueError("the source holds no samples")
    if isinstance(resize, str) and resize == "auto":
        from ..transforms import ReadOrResize

        resize = ReadOrResize(_pair(decode_grid) if decode_grid is not None else _pair(crop))
    elif resize is not None:
        if not getattr(resize, "reads_source", False):
            raise ValueError("resize must be 'auto', None or a transform that reads the JPEG: "
                             "RandomResizedCrop(size) (mode='exact') or ResizeCenterCrop(size)")
        if decode_grid is not None or random_crop:
            raise ValueError("resize replaces decode_grid/random_crop (its window is already random or centred)")
        crop = resize.size
    crop_hw = _pair(crop)
    grid = _pair(decode_grid) if decode_grid is not None else crop_hw
    if grid[0] < crop_hw[0] or grid[1] < crop_hw[1]:
        raise ValueError(f"decode_grid {grid} must be at least crop {crop_hw}")
    flip_probability = 0.5 if flip is True else float(flip or 0.0)
    kept = channel_indices(keep_channels) if keep_channels is not None else list(range(192))
    all_channels = len(kept) == 192
    decode_channels = None if (all_channels or keep_mode == "zero") else kept
    out_channels = kept if decode_channels is not None else list(range(192))
    stats = resolve_stats(normalize_stats, resolved.dataset.root, dequantize, argument="normalize_stats")
    decode_float = dequantize or stats is not None
    if dtype is None:
        dtype = "float32" if decode_float else "int16"
    dtype_name, dali_out_dtype = _dali_dtype(dtype)
    if dtype_name == "int16" and decode_float:
        raise ValueError("dtype int16 cannot hold dequantized or normalised values; use float32/float16")
    decode_np_dtype = np.float32 if (decode_float or dtype_name != "int16") else np.int16
    if resize is not None and not dequantize:  # raw mode: the resized crop rounded to int16 (q100), as DCTLoader
        decode_np_dtype = np.int16
    decode_dali_dtype = types.FLOAT if decode_np_dtype == np.float32 else types.INT16
    threads = int(num_threads or max(1, len(os.sched_getaffinity(0))))
    limit = None if max_pixels is None else int(max_pixels)
    if backend == "plugin":
        load_plugin()
    from ..codec import get_max_pixels

    effective_limit = get_max_pixels() if limit is None else limit
    gpu = device_id is not None

    normalization = None  # (scale, shift) float32 (C,) per output channel: x * scale + shift
    if stats is not None:
        normalization = normalization_affine(stats[0], stats[1], out_channels)
    # On CPU the decode itself flips and normalises (the plugin on DALI's threads, the fallback in its
    # workers: no extra pass over the batch) when that equals flip-after-crop: the crop is random or
    # absent (a centred crop of an odd margin is not symmetric under the flip).
    fuse = not gpu and (flip_probability == 0 or grid == crop_hw or random_crop)
    if decode_np_dtype == np.int16 and stats is not None:
        fuse = False  # normalisation of rounded integers: after the decode, as DCTLoader
    jitter = None
    if color_jitter is not None:  # colour maps come before normalisation: not fused into the operator
        from .color import jitter_ranges

        jitter = jitter_ranges(**color_jitter)
        if not dequantize or decode_channels is not None:
            raise ValueError("color_jitter needs dequantize=True and all 192 channels (keep_mode='zero')")
        fuse = False
    feeder = None
    if backend == "external_source":
        feeder = _FallbackSource(resolved, batch_size, shard_id, num_shards, random_shuffle, seed, grid,
                                 decode_np_dtype, dequantize, decode_channels, strict, limit, on_error, stick_to_shard,
                                 flip_probability=flip_probability if fuse else 0.0,
                                 normalization=normalization if fuse else None, resize=resize)
    drawer = _BoxDrawer(resize, seed) if resize is not None and backend == "plugin" else None

    synchronous = {"exec_async": False, "exec_pipelined": False} if drawer is not None else {}

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id,
                  seed=None if seed is None or seed < 0 else int(seed), **synchronous,
                  prefetch_queue_depth=prefetch_queue_depth,
                  py_num_workers=int(py_num_workers or threads),
                  py_start_method=py_start_method or "spawn")
    def _pipeline():
        if backend == "plugin":
            if resolved.shards:
                index_paths = [dali_index_path(p) for p in resolved.shards]
                extra = {"index_paths": index_paths} if all(os.path.exists(p) for p in index_paths) else {}
                jpegs, label_bytes = fn.readers.webdataset(
                    paths=resolved.shards, ext=["jpg;jpeg", "cls"], missing_component_behavior="empty",
                    shard_id=shard_id, num_shards=num_shards, random_shuffle=random_shuffle,
                    initial_fill=initial_fill, pad_last_batch=True, stick_to_shard=stick_to_shard,
                    case_sensitive_extensions=False, name=READER_NAME, **extra)
                labels = fn.funloader.parse_label(label_bytes)
            else:
                jpegs, labels = fn.readers.file(
                    files=resolved.names, labels=resolved.labels, shard_id=shard_id, num_shards=num_shards,
                    random_shuffle=random_shuffle, initial_fill=initial_fill, pad_last_batch=True,
                    stick_to_shard=stick_to_shard, name=READER_NAME)
            op_args: Dict[str, Any] = dict(crop=list(grid), dequantize=dequantize, dtype=decode_dali_dtype,
                                           strict=strict, max_pixels=int(effective_limit), on_error=on_error)
            if decode_channels is not None:
                op_args["channels"] = list(decode_channels)
            if fuse:  # CPU pipeline: flip and normalise inside the operator, on its threads
                if flip_probability > 0:
                    op_args["flip"] = fn.random.coin_flip(probability=flip_probability, dtype=types.INT32)
                    op_args["flip_signs"] = flip_signs("h").tolist()  # the operator never derives them
                if normalization is not None:
                    op_args["scale"] = normalization[0].tolist()
                    op_args["shift"] = normalization[1].tolist()
            if drawer is not None:  # the windows: each file's size from its header, drawn in Python
                sizes = fn.funloader.image_size(jpegs, max_pixels=int(effective_limit))
                boxes = fn.python_function(sizes, function=drawer, batch_processing=True, num_outputs=1)
                op_args.update(support=resize.support, subsampling=resize.subsampling)
                images = fn.funloader.dct_decode(jpegs, boxes, **op_args)
            else:
                images = fn.funloader.dct_decode(jpegs, **op_args)
        else:
            images, labels = fn.external_source(source=feeder, num_outputs=2, parallel=True, batch=False,
                                                layout=["CHW", None], dtype=[decode_dali_dtype, types.INT32],
                                                ndim=[3, 1])
        if gpu:
            images = images.gpu()
            labels = labels.gpu()
        device = "gpu" if gpu else "cpu"
        if random_crop and grid != crop_hw:
            top = fn.random.uniform(values=[float(v) for v in range(grid[0] - crop_hw[0] + 1)])
            left = fn.random.uniform(values=[float(v) for v in range(grid[1] - crop_hw[1] + 1)])
            images = fn.slice(images, start=fn.cast(fn.stack(top, left), dtype=types.INT32), shape=list(crop_hw),
                              axes=[1, 2])
        elif grid != crop_hw:
            top, left = (grid[0] - crop_hw[0]) // 2, (grid[1] - crop_hw[1]) // 2
            images = fn.slice(images, start=[top, left], shape=list(crop_hw), axes=[1, 2])
        if flip_probability > 0 and not fuse:
            coin = fn.random.coin_flip(probability=flip_probability, dtype=types.INT32)
            negated = (flip_signs("h", out_channels) < 0).astype(np.int32).reshape(-1, 1, 1)
            signs = 1 - 2 * coin * types.Constant(negated, device=device)
            images = fn.flip(images, horizontal=coin) * fn.cast(signs, dtype=decode_dali_dtype)
        if jitter is not None:
            from .color import color_jitter as _color_jitter

            images = _color_jitter(images, jitter, device)
        if normalization is not None and not fuse:
            images = fn.cast(images, dtype=types.FLOAT) * types.Constant(normalization[0].reshape(-1, 1, 1), device=device) \
                + types.Constant(normalization[1].reshape(-1, 1, 1), device=device)
        if keep_mode == "zero" and not all_channels:  # after normalisation, as DCTLoader
            mask = np.zeros((192, 1, 1), dtype=np.float32 if (decode_float or normalization is not None)
                            else decode_np_dtype)
            mask[kept] = 1
            images = images * types.Constant(mask, device=device)
        if dtype_name == "float16" or (dtype_name == "float32" and decode_dali_dtype != types.FLOAT):
            images = fn.cast(images, dtype=dali_out_dtype)
        return images, labels

    pipe = _pipeline()
    pipe.funloader_reader_name = READER_NAME if backend == "plugin" else None
    shard_sizes = [end - begin for begin, end in (shard_bounds(len(resolved), s, num_shards) for s in range(num_shards))]
    pipe.funloader_shard_size = shard_sizes[shard_id]
    pipe.funloader_source = resolved
    pipe.funloader_backend = backend
    pipe.funloader_feeder = feeder
    pipe.funloader_boxes = drawer.drawn if drawer is not None else None
    _build(pipe)
    return pipe


class _BoxDrawer:
    """``fn.python_function`` of the plugin pipeline: the windows of a batch from the image sizes read
    in the headers (``fn.funloader.image_size``), drawn by the transform in sample order from one
    generator seeded with ``seed`` (the batches of a run follow each other); NaN (read as is) for a
    file whose header is unreadable (its decode reports the error). Keeps the last batches' windows."""

    def __init__(self, transform, seed: int):
        import collections

        import torch

        self.transform = transform
        self.generator = torch.Generator()
        self.generator.manual_seed(max(int(seed), 0))
        self.drawn = collections.deque(maxlen=64)

    def __call__(self, sizes):
        sizes = np.stack([np.asarray(size).reshape(2) for size in sizes]).astype(np.int64)
        good = sizes.min(axis=1) > 0
        boxes = np.full((len(sizes), 4), np.nan)
        boxes[good] = self.transform.boxes(sizes[good], self.generator if self.transform.random else None)
        self.drawn.append(boxes)
        return [np.ascontiguousarray(box) for box in boxes]


_ERROR_PATTERN = re.compile(r"funloader: (\w+) in '(.*?)': (.*?) \[(?:sample|external_source)", re.DOTALL)


def translate_error(error: BaseException) -> BaseException:
    """Turn a DALI error raised for a bad sample into :class:`DALIDecodeError` naming the file;
    other errors are returned unchanged."""
    match = _ERROR_PATTERN.search(str(error))
    if match is None:
        return error
    kind, name, reason = match.groups()
    if kind == "UnsupportedJPEGError":
        return DALIUnsupportedJPEGError(reason, name)
    return DALIDecodeError(f"{reason} ({kind})" if kind != "JPEGDecodeError" else reason, name)


class _translated_errors:
    """Context manager: a DALI error for a bad sample leaves as :class:`DALIDecodeError` (see
    :func:`translate_error`), chained to DALI's; anything else passes unchanged."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, Exception):
            translated = translate_error(error)
            if translated is not error:
                raise translated from error
        return False


def _build(pipe) -> None:
    with _translated_errors():
        pipe.build()


class FUNIterator:
    """PyTorch iterator over a :func:`fun_pipeline` pipeline: yields ``(images, labels)``.

    ``images``: ``(N, C, H8, W8)`` tensor (dtype as the pipeline; on ``cuda:<device_id>`` for GPU
    pipelines, CPU otherwise); ``labels``: ``(N,)`` int64 on the same device. Wraps
    ``nvidia.dali.plugin.pytorch.DALIGenericIterator``: with ``reader_name="Reader"`` for the plugin
    backend (DALI applies the last-batch policy); for external_source pipelines (which emit whole
    batches padded with the shard's last sample) the policy is applied here, with the same result.

    Args:
        pipeline: a pipeline from :func:`fun_pipeline`.
        last_batch_policy: ``"partial"`` (default: the last batch is smaller), ``"drop"`` (dropped) or
            ``"fill"`` (filled up to ``batch_size`` by repeating the shard's last sample), or a
            ``nvidia.dali.plugin.base_iterator.LastBatchPolicy``.
        auto_reset: start the next epoch when one ends (iterate the object again); otherwise call
            :meth:`reset`.
        mixing: a batch mixing transform (``funloader.transforms.Mixup``, ``Cutmix``,
            ``RandomMixing``): each batch becomes ``(mixed images, soft targets (N, num_classes))``,
            drawn from a generator seeded by ``(seed, batch number)``, on the batch's device.
    Errors for bad samples raise :class:`DALIDecodeError` naming the file.
    """

    def __init__(self, pipeline, *, last_batch_policy="partial", auto_reset: bool = True, mixing=None,
                 seed: int = 0):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        policies = {"partial": LastBatchPolicy.PARTIAL, "drop": LastBatchPolicy.DROP, "fill": LastBatchPolicy.FILL}
        if isinstance(last_batch_policy, str):
            if last_batch_policy not in policies:
                raise ValueError(f"last_batch_policy must be one of {sorted(policies)}, got {last_batch_policy!r}")
            last_batch_policy = policies[last_batch_policy]
        self.pipeline = pipeline
        self.last_batch_policy = last_batch_policy
        self._policies = LastBatchPolicy
        self._reader_name = getattr(pipeline, "funloader_reader_name", None)
        self._feeder = getattr(pipeline, "funloader_feeder", None)
        self._epoch = 0
        self._batch_in_epoch = 0
        self.mixing, self.seed, self._mixed = mixing, int(seed), 0
        kwargs: Dict[str, Any] = dict(output_map=["images", "labels"], auto_reset=auto_reset)
        if self._reader_name is not None:
            kwargs.update(reader_name=self._reader_name, last_batch_policy=last_batch_policy)
        with _translated_errors():
            self._iterator = DALIGenericIterator([pipeline], **kwargs)

    def _epoch_size(self) -> int:
        if self._feeder is not None:
            return len(self._feeder.order(self._epoch))
        return int(self.pipeline.funloader_shard_size)

    def __len__(self) -> int:
        """Batches in the current epoch for this shard."""
        if self._reader_name is not None:
            return len(self._iterator)
        size, batch = self._epoch_size(), int(self.pipeline.max_batch_size)
        return size // batch if self.last_batch_policy == self._policies.DROP else math.ceil(size / batch)

    def __iter__(self):
        return self

    def _next_batch(self):
        try:
            with _translated_errors():
                return next(self._iterator)[0]
        except StopIteration:
            self._epoch += 1
            self._batch_in_epoch = 0
            raise

    def __next__(self):
        outputs = self._next_batch()
        images, labels = outputs["images"], outputs["labels"].reshape(-1).long()
        if self._feeder is not None:
            batch = int(self.pipeline.max_batch_size)
            remaining = self._epoch_size() - self._batch_in_epoch * batch
            self._batch_in_epoch += 1
            if remaining < batch:  # the padded last batch of the epoch
                if self.last_batch_policy == self._policies.DROP:
                    self._drain()
                    return self.__next__()
                if self.last_batch_policy == self._policies.PARTIAL:
                    images, labels = images[:remaining], labels[:remaining]
        if self.mixing is not None:
            import torch

            from ..loader import _batch_seed

            generator = torch.Generator().manual_seed(_batch_seed(self.seed, 0, 0, self._mixed))
            self._mixed += 1
            images, labels = self.mixing(images, labels, generator)
        return images, labels

    def _drain(self) -> None:
        """Consume the end of the epoch (the external_source pipeline raises StopIteration next)."""
        while True:
            self._next_batch()  # raises StopIteration at the epoch's end

    def reset(self) -> None:
        """Restart the epoch (needed only with ``auto_reset=False``)."""
        self._iterator.reset()
