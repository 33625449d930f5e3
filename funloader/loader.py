"""``DCTLoader``: batched, threaded loading of JPEG DCT coefficients into (pinned) batches.

Per batch: the sample indices of the epoch (shuffled with ``seed + epoch``, split by rank) are read
with ``read_batch`` (native threads, GIL released) into one slot of a reused ring of CPU buffers
(pinned when CUDA is used), every image centre-cropped / zero-padded to ``size`` blocks; then, as
torch ops on the whole batch (on ``device``): conversion to float, the batch ``transform``
(random parameters drawn per item from a generator seeded by ``(seed, epoch, rank, batch)``, so
results do not depend on thread timing), normalisation with the 192 channel statistics,
frequency selection (``keep``), ``channels_last`` and ``dtype``.

A background thread prepares up to ``prefetch`` batches ahead. On the CPU it does all the work (the
caller gets finished batches); with ``device="cuda"`` it decodes into pinned memory and the caller's
thread copies (``non_blocking``) and transforms on the GPU. The thread stops when the epoch ends,
when the iterator is closed or garbage-collected (``break`` out of the loop), on an exception or
``KeyboardInterrupt`` in the caller, and at interpreter exit (it is a daemon thread).

Last partial batch: with ``drop_last=False`` (default) the last batch of an epoch holds the
remaining ``len(samples) % batch_size`` items (smaller first dimension); with ``drop_last=True`` it
is dropped, so every batch has exactly ``batch_size`` items.
"""
from __future__ import annotations

import math
import queue
import threading
import weakref
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import transforms as T
from .channels import KeepSpec, channel_indices, normalization_affine
from .dataset import DCTImageFolder, decode_into
from .errors import UsageError
from .mixing import copy_item as mixing_copy
from .stats import resolve as resolve_stats

__all__ = ["DCTLoader", "BatchDataset", "epoch_indices", "mixing_generator"]

_POLL_S = 0.1
_STOP = object()


def epoch_indices(length: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> List[int]:
    """The sample order of one epoch for one rank — the same as ``torch.utils.data.DistributedSampler``
    (``shuffle``, ``seed``, ``drop_last=False``): ``randperm(length)`` from a generator seeded with
    ``seed + epoch``, padded by repeating its start to a multiple of ``world_size``, then every
    ``world_size``-th index from ``rank``. Ranks are disjoint except for the padding."""
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(int(seed) + int(epoch))
        order = torch.randperm(length, generator=generator).tolist()
    else:
        order = list(range(length))
    if world_size > 1:
        total = int(math.ceil(length / world_size)) * world_size
        padding = total - len(order)
        if padding > 0 and order:
            order += (order * int(math.ceil(padding / len(order))))[:padding]
        order = order[rank:total:world_size]
    return order


def _batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(rank), int(batch)])
    return int(mixed.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF)


def mixing_generator(seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    """The generator of batch ``batch``'s mixing draws (``DCTLoader(mixing=)``, the training harness):
    a function of ``(seed, epoch, rank, batch)`` only, a stream apart from the augmentation's, so a
    resumed run draws the same."""
    mixed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(rank), int(batch), 0x6D6978])
    generator = torch.Generator()
    generator.manual_seed(int(mixed.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF))
    return generator


class DCTLoader:
    """Iterate over ``(coefficients, labels)`` batches of a JPEG dataset without decoding pixels.

    Args:
        dataset_or_root: a ``DCTImageFolder`` or anything it accepts (ImageFolder root, prepared
            folder, shard directory / ``.tar`` list, ``(path, label)`` list).
        batch_size: items per batch.
        shuffle: reshuffle the order every epoch (``seed + epoch``, see ``set_epoch``).
        drop_last: drop the last partial batch (else it is smaller, see the module docstring).
        num_threads: native decoding threads per batch (default: all CPUs of this process).
        prefetch: batches prepared ahead by the background thread (>= 1).
        pin_memory: pin the CPU decode buffers (default: when CUDA is available and ``device`` is CUDA).
        device: where the transforms run and batches are returned (``"cpu"``, ``"cuda"``, ...).
        dtype: floating dtype of the returned coefficients (float32, bfloat16, float16).
        channels_last: return batches in ``torch.channels_last`` memory format.
        sampler: an iterable of indices (e.g. ``DistributedSampler``) replacing the built-in order;
            its ``set_epoch`` is called by ``set_epoch``; ``shuffle`` / ``rank`` are then ignored.
        seed, epoch: determine the order and the random augmentation of an epoch.
        start_batch: the first batch an epoch's iteration yields (to resume inside an epoch): batch
            ``b`` holds the same items and augmentation as in an uninterrupted epoch; ``len()``
            counts the batches from ``start_batch`` on. An attribute, like ``epoch``: set it back to 0
            for the next epoch.
        rank, world_size: this process' share of the data (default: from ``torch.distributed`` when
            initialised, else 0 and 1); each rank sees a disjoint ``1/world_size`` of the samples.
        size: block grid ``(H8, W8)`` every image is centre-cropped / zero-padded to by ``read_batch``
            before ``transform`` (default 28 = 224 px).
        transform: batch transform from ``funloader.transforms`` (e.g. ``Compose([RandomResizedCrop(28),
            RandomHorizontalFlip()])``), applied to float coefficients before normalisation
            (default: the dataset's ``transform``).
        dequantize: dequantised float coefficients (default, True) or raw quantised integers (the
            paper's released models); default: the dataset's setting.
        normalize: ``"auto"`` (default: the statistics file next to the data for this ``dequantize``
            mode if present, else no normalisation with a warning), True (require it), False/None,
            a stats file path, a dict with ``mean``/``std``, or ``(mean, std)``.
        keep, keep_mode: frequency selection after normalisation (``"44/10/10"``; ``"drop"`` removes
            the other channels, ``"zero"`` zeroes them).
        on_error, strict: the loader's error policy (``"raise"`` / ``"skip"``) and strictness
            (default: the dataset's). The loader keeps ``dequantize``, ``on_error`` and ``strict`` as
            its own settings: a dataset passed in is never modified.
        chunk_size: CPU only: items transformed together (cache-sized pieces of the batch; the
            random draws depend on it).
        mixing: a batch mixing transform (``funloader.transforms.Mixup``, ``Cutmix``,
            ``RandomMixing``): each batch becomes ``(x mixed, soft targets (B, num_classes) float32)``,
            equal to ``mixing(x, y, mixing_generator(seed, epoch, rank, batch))`` on the unmixed batch
            (bit-identical). On the CPU fused path each piece of the batch is mixed in place by the
            decoding threads right after its decode (no pass over the finished batch).

    Each item is ``(x, y)``: ``x`` ``(B, C, size[0], size[1])`` of ``dtype`` on ``device`` (``C`` = 192, or
    the kept count with ``keep_mode="drop"``), ``y`` int64 ``(B,)`` labels on ``device``.
    """

    def __init__(self, dataset_or_root, batch_size: int = 256, *, shuffle: bool = False, drop_last: bool = False,
                 num_threads: Optional[int] = None, prefetch: int = 2, pin_memory: Optional[bool] = None,
                 device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, sampler=None, seed: int = 0, epoch: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None, size=28,
                 transform: Optional[Callable] = None, dequantize: Optional[bool] = None, normalize="auto",
                 keep: KeepSpec = None, keep_mode: str = "drop", on_error: Optional[str] = None,
                 strict: Optional[bool] = None, chunk_size: int = 8, start_batch: int = 0, mixing=None):
        if mixing is not None and not callable(getattr(mixing, "choose", None)):
            raise UsageError(f"mixing must be a funloader Mixup, Cutmix or RandomMixing, got {mixing!r}")
        if isinstance(dataset_or_root, DCTImageFolder):
            dataset = dataset_or_root
        else:
            if on_error is not None and on_error not in ("raise", "skip"):
                raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
            # the dataset built here takes the loader's policies (they also govern its construction checks)
            dataset = DCTImageFolder(dataset_or_root, dequantize=True if dequantize is None else dequantize,
                                     on_error=on_error or "raise", strict=True if strict is None else strict)
        if on_error is not None and on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        # The loader's own settings (default: the dataset's); the caller's dataset is left unchanged.
        self.dequantize = dataset.dequantize if dequantize is None else bool(dequantize)
        self.on_error = dataset.on_error if on_error is None else on_error
        self.strict = dataset.strict if strict is None else bool(strict)
        if int(batch_size) < 1:
            raise ValueError("batch_size must be >= 1")
        if keep_mode not in ("drop", "zero"):
            raise ValueError(f"keep_mode must be 'drop' or 'zero', got {keep_mode!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_threads = num_threads
        self.prefetch = max(1, int(prefetch))
        self.device = torch.device(device)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise UsageError(f"dtype must be a floating torch dtype (torch.float32, torch.bfloat16, torch.float16), "
                             f"got {dtype!r}")
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        self.sampler = sampler
        self.seed = int(seed)
        self.epoch = int(epoch)
        if int(start_batch) < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.start_batch = int(start_batch)
        if world_size is None or rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            world_size = world_size if world_size is not None else (torch.distributed.get_world_size() if distributed else 1)
            rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank {rank} is not in 0..{int(world_size) - 1}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.transform = transform if transform is not None else dataset.transform
        # A transform that reads the JPEG (exact resized crops) runs inside the decode; the rest after it.
        self._source, self._rest = T.split_source(self.transform)
        self.size = self._source.size if self._source is not None else T._pair(size)
        self._default_source = T.ReadOrResize(self.size) if self.transform is None else None
        self._sizes: dict = {}
        self._sizes_lock = threading.Lock()
        self.stats = resolve_stats(normalize, dataset.root, self.dequantize)  # (mean, std) float64 or None
        self.keep = keep
        self.keep_mode = keep_mode
        self.chunk_size = int(chunk_size)
        self.mixing = mixing
        self._scratch: "queue.SimpleQueue[torch.Tensor]" = queue.SimpleQueue()  # decode_fused's scratch buffers
        self._normalizers: dict = {}
        self._kept = None if keep is None else channel_indices(keep)
        if pin_memory is None:
            pin_memory = self.device.type == "cuda" and torch.cuda.is_available()
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self._buffers: List[torch.Tensor] = []
        self._live: "weakref.WeakSet[_EpochIterator]" = weakref.WeakSet()

    # ------------------------------------------------------------------ epoch bookkeeping
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (reshuffles deterministically with ``seed + epoch``; forwarded to ``sampler``)."""
        self.epoch = int(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def indices(self) -> List[int]:
        """The sample indices this rank reads in the current epoch, in order."""
        if self.sampler is not None:
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(self.epoch)
            return [int(i) for i in self.sampler]
        return epoch_indices(len(self.dataset), shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                             rank=self.rank, world_size=self.world_size)

    def batches(self) -> List[List[int]]:
        """The index lists of the current epoch's batches (the last one partial unless ``drop_last``)."""
        order = self.indices()
        chunks = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks.pop()
        return chunks

    def __len__(self) -> int:
        count = len(self.sampler) if self.sampler is not None else (
            int(math.ceil(len(self.dataset) / self.world_size)) if self.world_size > 1 else len(self.dataset))
        full = count // self.batch_size if self.drop_last else int(math.ceil(count / self.batch_size))
        return max(0, full - self.start_batch)

    # ------------------------------------------------------------------ batch work
    def _buffer_dtype(self):
        return torch.float32 if self.dequantize else torch.int16

    def _allocate(self, count: int) -> List[torch.Tensor]:
        shape = (self.batch_size, 192) + self.size
        needed = [b for b in self._buffers if b.shape == shape and b.dtype == self._buffer_dtype()]
        while len(needed) < count:
            buffer = torch.empty(shape, dtype=self._buffer_dtype())
            if self.pin_memory:
                buffer = buffer.pin_memory()
            needed.append(buffer)
        self._buffers = needed
        return needed[:count]

    def decode(self, batch_indices: Sequence[int], out: torch.Tensor, batch_number: Optional[int] = None,
               epoch: Optional[int] = None, layout: Optional[dict] = None) -> List[int]:
        """Decode ``batch_indices`` into ``out[:len]`` (CPU); returns the labels placed (see ``on_error``).

        Each item is read as the loader's first step defines it: the exact resized crop of its window
        when the transform reads the JPEG (``RandomResizedCrop(mode="exact")``, ``ResizeCenterCrop``;
        the windows of batch ``batch_number`` are :meth:`source_boxes`), with no transform the
        evaluation transform for an image whose block grid is not ``size`` (as is otherwise), else the
        centre crop / zero padding by whole blocks to ``size``. ``layout``: ``read_batch`` block maps
        and affine applied in the same pass (see :meth:`fused_layout`)."""
        count = len(batch_indices)
        boxes = self.source_boxes(batch_indices, batch_number, epoch)
        return self._decode_items(list(batch_indices), out[:count], boxes, layout or {}, batch_number, epoch)

    def _source_generator(self, batch_number: int, epoch: Optional[int], *extra: int) -> torch.Generator:
        """The generator of a batch's windows: its own stream (the block transforms that follow draw
        from ``_batch_seed``), so decoding and finishing a batch can happen apart."""
        mixed = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch if epoch is None else int(epoch), self.rank,
                                        int(batch_number), 1, *extra])
        generator = torch.Generator()
        generator.manual_seed(int(mixed.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF))
        return generator

    def image_sizes(self, indices: Sequence[int]) -> np.ndarray:
        """``(N, 2)`` int64 ``(height, width)`` of samples ``indices`` from their JPEG headers (cached per
        index); ``(0, 0)`` for a sample whose header cannot be read (its decode then fails as usual)."""
        from .codec import read_sizes

        with self._sizes_lock:
            missing = sorted({int(i) for i in indices if int(i) not in self._sizes})
        if missing:
            try:
                found = read_sizes(self.dataset.sources(missing), threads=self.num_threads, strict=self.strict)
            except (ValueError, OSError, MemoryError):  # one bad header: find it item by item
                found = np.zeros((len(missing), 2), np.int64)
                for row, index in enumerate(missing):
                    try:
                        found[row] = read_sizes([self.dataset.source(index)], threads=1, strict=self.strict)[0]
                    except (ValueError, OSError, MemoryError):
                        pass
            with self._sizes_lock:
                self._sizes.update((index, (int(h), int(w))) for index, (h, w) in zip(missing, found))
        with self._sizes_lock:
            return np.array([self._sizes[int(i)] for i in indices], dtype=np.int64).reshape(-1, 2)

    def source_boxes(self, batch_indices: Sequence[int], batch_number: Optional[int] = None,
                     epoch: Optional[int] = None) -> Optional[np.ndarray]:
        """The pixel windows ``(N, 4)`` float64 ``(top, left, height, width)`` the decode resizes for
        batch ``batch_number`` (rows of NaN: read as is), or None when every item is read as is.
        Random windows (``RandomResizedCrop``) are drawn per item, in order, from a generator seeded
        by ``(seed, epoch, rank, batch_number)``, whatever the thread count."""
        source = self._source if self._source is not None else self._default_source
        if source is None or not len(batch_indices):
            return None
        sizes = self.image_sizes(batch_indices)
        good = sizes.min(axis=1) > 0  # an unreadable header gives (0, 0)
        generator = None
        if source.random:
            if batch_number is None:
                raise ValueError("random windows are drawn per batch: pass batch_number (and epoch)")
            generator = self._source_generator(batch_number, epoch)
        boxes = np.full((len(sizes), 4), np.nan)  # NaN: read as is
        boxes[good] = source.boxes(sizes[good], generator)
        if np.isnan(boxes[:, 0]).all():
            return None
        boxes[~good] = (0.0, 0.0, 1.0, 1.0)  # decoded with the others: fails with the file's error, is replaced
        return boxes

    def _replacement_box(self, batch_number, epoch):
        """``box_for`` of ``decode_into``: the window of a replacement sample (its own generator stream)."""
        source = self._source if self._source is not None else self._default_source

        def box_for(candidate: int, slot: int):
            size = self.image_sizes([candidate])
            if size.min() <= 0:
                return (0.0, 0.0, 1.0, 1.0)
            generator = self._source_generator(batch_number or 0, epoch, 2, slot, candidate) if source.random else None
            box = source.boxes(size, generator)[0]
            if np.isnan(box[0]):  # read as is elsewhere; among resized items: its whole image, resized
                return (0.0, 0.0, float(size[0, 0]), float(size[0, 1]))
            return tuple(box)
        return box_for

    def _decode_items(self, indices: List[int], out: torch.Tensor, boxes: Optional[np.ndarray], layout: dict,
                      batch_number, epoch, threads: Optional[int] = None, box_for=None) -> List[int]:
        """``threads``: default ``num_threads``; ``box_for``: default the batch's replacement windows."""
        threads = self.num_threads if threads is None else threads
        policy = {"dequantize": self.dequantize, "strict": self.strict, "on_error": self.on_error}
        if boxes is None:
            return decode_into(self.dataset, indices, out, threads=threads, layout=layout, **policy)
        source = self._source if self._source is not None else self._default_source
        resized = {"subsampling": source.subsampling, "support": source.support}
        boxed = ~np.isnan(boxes[:, 0])
        box_for = self._replacement_box(batch_number, epoch) if box_for is None else box_for
        if boxed.all():
            return decode_into(self.dataset, indices, out, threads=threads, box_for=box_for,
                               layout={**layout, "boxes": boxes, **resized}, **policy)
        labels: List[int] = [0] * len(indices)  # some items as is, some resized: two decodes, then placed
        for mask, with_boxes in ((~boxed, False), (boxed, True)):
            rows = np.flatnonzero(mask)
            if not len(rows):
                continue
            part = torch.empty((len(rows),) + tuple(out.shape[1:]), dtype=out.dtype)
            part_layout = {key: (value if key == "bias" and value.ndim == 1 else value[torch.from_numpy(rows)])
                           for key, value in layout.items()}
            if with_boxes:
                part_layout.update(boxes=boxes[rows], **resized)
            placed = decode_into(self.dataset, [indices[r] for r in rows], part, threads=threads,
                                 layout=part_layout, **policy,
                                 box_for=(lambda candidate, slot, rows=rows: box_for(candidate, int(rows[slot])))
                                 if with_boxes else None)
            out[torch.from_numpy(rows)] = part
            for row, label in zip(rows, placed):
                labels[row] = label
        return labels

    def finish(self, raw: torch.Tensor, labels: Sequence[int], batch_number: int, epoch: Optional[int] = None):
        """Float conversion, transform, normalisation, frequency selection, layout — on ``raw``'s device.

        On the CPU the batch is processed in chunks of ``chunk_size`` items (so each step works in
        cache instead of streaming the whole batch through memory once per operation); the
        transform's generator is passed to the chunks in order, so the result is deterministic for
        a given ``(seed, epoch, rank, batch)`` and ``chunk_size``."""
        generator = None
        transform = self._rest
        if transform is not None:
            generator = torch.Generator()
            generator.manual_seed(_batch_seed(self.seed, self.epoch if epoch is None else epoch, self.rank, batch_number))
        count = raw.shape[0]
        step = count if raw.device.type != "cpu" else max(1, int(self.chunk_size))
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        direct = self.stats is not None and self._kept is None and self.dtype == torch.float32 and not self.channels_last
        out = None
        fused = T.is_fusable(transform)  # block moves, then per-channel colour maps (funloader.color)
        keep_integers = not raw.is_floating_point() and (transform is None or getattr(transform, "integer_exact", False))
        for start in range(0, count, step):
            x = raw[start:start + step]
            if not keep_integers and x.dtype != torch.float32:
                x = x.to(torch.float32)  # raw int16 stays int16 through integer-exact transforms
            signs = gain = bias = None
            if fused:  # crops/flips/nearest resized crops as one gather; flip signs and colour maps folded into the scale
                plan, gain, bias = T.fused_plan(transform, tuple(x.shape), generator)
                x = plan.apply(x, with_sign=not direct)
                signs = plan.sign if direct else None
                if not direct and gain is not None:  # raw integers only meet 0/1 masks (integer_exact steps)
                    x = x * gain.to(device=x.device, dtype=x.dtype)[:, :, None, None]
                    if x.is_floating_point():
                        x = x + bias.to(device=x.device, dtype=x.dtype)[:, :, None, None]
            elif transform is not None:
                x = transform(x, generator=generator) if isinstance(transform, T.DCTTransform) else transform(x)
            if direct:  # normalise straight into the output: x * (1/std) + (-mean/std)
                if out is None:
                    out = torch.empty((count,) + tuple(x.shape[1:]), dtype=torch.float32, device=x.device)
                    scale, shift = self._normalizer(x.device)
                dest = out[start:start + step]
                if signs is None and gain is None:
                    torch.mul(x, scale, out=dest)
                    dest.add_(shift)
                    continue
                total_gain, total_bias = T.fold_affine(signs, gain, bias, scale.cpu(), shift.cpu(), x.shape[0])
                torch.mul(x, total_gain.to(device=x.device)[:, :, None, None], out=dest)
                dest.add_(total_bias.to(device=x.device)[..., None, None])
                continue
            if not x.is_floating_point():
                x = x.to(torch.float32)
            if self.stats is not None:
                x = T.normalize(x, self.stats[0], self.stats[1])
            if self._kept is not None:
                x = T.select_frequencies(x, self.keep, self.keep_mode)
            if out is None:
                if step >= count and x.dtype == self.dtype and not _shares_memory(x, raw):
                    out = x.contiguous(memory_format=memory_format)
                    break
                out = torch.empty((count,) + tuple(x.shape[1:]), dtype=self.dtype, device=x.device,
                                  memory_format=memory_format)
            out[start:start + step].copy_(x)
        y = torch.as_tensor(labels, dtype=torch.int64)
        if self.device.type != "cpu":
            y = y.to(self.device, non_blocking=True)
        if self.mixing is not None:
            return self.mixing(out, y, mixing_generator(self.seed, self._epoch(epoch), self.rank, batch_number))
        return out, y

    def _epoch(self, epoch: Optional[int]) -> int:
        return self.epoch if epoch is None else int(epoch)

    def fused_layout(self, count: int, batch_number: int, epoch: Optional[int] = None,
                     indices: Optional[Sequence[int]] = None) -> Optional[dict]:
        """``read_batch`` block maps and affine that make the decode itself produce what
        :meth:`finish` would (same random draws, bit-identical values), or None when the batch needs
        :meth:`finish`: only on the CPU, for normalised float32 output without frequency selection
        or channels_last, with no transform or a plannable one (crops, flips, nearest resized crops)
        that keeps the grid, after an exact resized crop if the transform starts with one (its windows
        go to ``read_batch(boxes=)``, see :meth:`decode`). In raw mode (``dequantize=False``) a resized
        crop is rounded to int16 first, so it is not fused (``indices``: the batch, checked with
        :meth:`fusable`). Saves the gather and normalisation passes over the batch.

        A policy after that prefix (``RandAugment``, ``TrivialAugmentWide``: ``runs_normalized``) draws
        here too, chunk by chunk as :meth:`finish` would; with one policy the layout then holds only
        those draws, and :meth:`decode_fused`'s threads make each piece's maps and affine with the
        policy's shifts and colour maps in them (``fused``), results equal up to float32 rounding."""
        if (self.device.type != "cpu" or self.stats is None or self._kept is not None or self.dtype != torch.float32
                or self.channels_last):
            return None
        if indices is not None and not self.fusable(indices):
            return None
        scale, shift = self._normalizer(torch.device("cpu"))
        scale = scale.reshape(1, 192)
        transform = self._rest
        if transform is None:
            return {"gain": scale.expand(count, 192), "bias": shift.reshape(192)}
        prefix, after = T.split_fusable(transform)
        if not all(_on_normalized(step) for step in after):
            return None
        generator = torch.Generator()
        generator.manual_seed(_batch_seed(self.seed, self.epoch if epoch is None else epoch, self.rank, batch_number))
        step = max(1, int(self.chunk_size))  # the chunks finish() plans, in the same order
        chunks, states, draws = [], [], []
        for start in range(0, count, step):
            items = min(step, count - start)
            chunks.append(T.fused_plan(prefix, (items, 192) + self.size, generator))
            if after:  # the steps after the prefix draw next (as in finish()); replayed after the decode
                states.append(generator.get_state())
                draws.append([later.params(items, tuple(chunks[-1][0].shape), generator) for later in after])
        if any(tuple(plan.shape) != self.size for plan, _, _ in chunks):
            return None
        ac_bias = any(bias is not None and bool(bias[:, _AC_CHANNELS].any()) for _, _, bias in chunks)
        if len(after) != 1 or ac_bias:  # (the policy's fill blocks rely on no AC bias before it: see its fused())
            affines = [T.fold_affine(plan.sign, gain, bias, scale, shift, plan.rows.shape[0])
                       for plan, gain, bias in chunks]
            layout = {"row_maps": torch.cat([plan.rows for plan, _, _ in chunks]),
                      "col_maps": torch.cat([plan.cols for plan, _, _ in chunks]),
                      "gain": torch.cat([g for g, _ in affines]),
                      "bias": torch.cat([b.expand(g.shape[0], 192) for g, b in affines])}
            policy = None
        else:  # one policy: its shifts and colour maps go into the decode too; the maps, gain and bias of
            # each piece are made by the decoding thread of the piece (_policy_layout), from these draws
            layout = {}
            policy = [(plan, gain, bias, drawn[0]) for (plan, gain, bias), drawn in zip(chunks, draws)]
        if after:
            layout[_AFTER] = (after, states, step, policy)
        return layout

    def _policy_layout(self, policy, chunks, scale, shift):
        """``(read_batch layout, FusedPolicy)`` of consecutive chunks ``[(prefix plan, gain, bias, policy
        draws)]``: the prefix's block maps and per-channel map followed by ``policy.fused``'s."""
        rounds = len(chunks[0][3])
        drawn = [tuple(torch.cat([chunk[3][r][k] for chunk in chunks]) for k in range(2)) for r in range(rounds)]
        fused = policy.fused(drawn, self.size)
        gains, biases = [], []
        for plan, gain, bias, _ in chunks:  # x * sign * gain + bias: the prefix's per-channel map, float64
            items = plan.rows.shape[0]
            sign = torch.ones(items, 192, dtype=torch.float64) if plan.sign is None else plan.sign.to(torch.float64)
            gains.append(sign if gain is None else sign * gain)
            biases.append(torch.zeros(items, 192, dtype=torch.float64) if bias is None else bias)
        plan = T.GatherPlan(torch.cat([chunk[0].rows for chunk in chunks]),
                            torch.cat([chunk[0].cols for chunk in chunks])).then(T.GatherPlan(fused.rows, fused.cols))
        gain, bias = T.fold_affine(None, fused.gain * torch.cat(gains), fused.gain * torch.cat(biases) + fused.bias,
                                   scale.reshape(1, 192), shift, fused.gain.shape[0])
        return {"row_maps": plan.rows, "col_maps": plan.cols, "gain": gain, "bias": bias}, fused

    def fusable(self, batch_indices: Sequence[int]) -> bool:
        """False when the batch's decode cannot take the affine: in raw mode (``dequantize=False``) a
        resized crop is rounded to int16 (q100 coefficients) before normalisation, which a float32
        decode would skip."""
        if self.dequantize:
            return True
        return self._source is None and (self._default_source is None or self.source_boxes(batch_indices) is None)

    def decode_fused(self, batch_indices: Sequence[int], layout: dict, batch_number: int, epoch: Optional[int] = None):
        """Decode straight into a new normalised, augmented float32 batch (see :meth:`fused_layout`);
        ``(x, labels)``, or ``(x, soft targets)`` with ``mixing``.

        Without steps after the decode (and without ``mixing``) it is one ``read_batch`` of the whole
        batch. Otherwise the batch is decoded in pieces (whole chunks) by ``num_threads`` threads,
        each of which also makes its piece's block maps and affine with the policy in them and
        finishes the piece (the policy's rest), so that work runs in parallel too. With ``mixing``
        a thread decodes and finishes ``_SCRATCH_ITEMS`` items at a time in a reused scratch and
        writes each item mixed into the batch (the batch is written once); the first item of each
        piece is mixed at the end, with a copy of the item before it. The values do not depend on
        the thread count or timing. The policy plan's torch calls stay under torch's grain size
        (``_BLOCK_ITEMS``), so they run on the decoding thread itself."""
        layout = dict(layout)
        after, states, step, policy = layout.pop(_AFTER, ((), (), max(1, int(self.chunk_size)), None))
        count = len(batch_indices)
        out = torch.empty((count, 192) + self.size, dtype=torch.float32)
        if not after and self.mixing is None:
            labels = self.decode(batch_indices, out, batch_number, epoch, layout=layout)
            return out, torch.as_tensor(labels, dtype=torch.int64)
        mixing = params = None
        if self.mixing is not None:
            mixing, params = self.mixing.choose(self.size, mixing_generator(self.seed, self._epoch(epoch), self.rank,
                                                                           batch_number))
            if not params["apply"]:
                mixing = None
        boxes = self.source_boxes(batch_indices, batch_number, epoch)
        box_for = self._replacement_box(batch_number, epoch) if boxes is not None else None
        scale, shift = (v.reshape(192) for v in self._normalizer(torch.device("cpu")))
        from .codec import _default_threads

        threads = max(1, int(self.num_threads or _default_threads()))
        # pieces: whole chunks of the draws (chunk_size); one with one thread, else _PIECES_PER_THREAD
        per_piece = step * max(1, -(-count // (step * (1 if threads == 1 else _PIECES_PER_THREAD * threads))))
        if policy:  # a piece's policy plan in small torch ops (see _BLOCK_ITEMS)
            per_piece = min(per_piece, step * max(1, _BLOCK_ITEMS // step))
        pieces = [(start, min(start + per_piece, count)) for start in range(0, count, per_piece)]
        last_items: List[Optional[torch.Tensor]] = [None] * len(pieces)

        per_decode = step * max(1, _SCRATCH_ITEMS // step)  # items decoded at a time into a scratch (mixing)

        def piece(number: int) -> List[int]:
            start, stop = pieces[number]
            fused = None
            if policy:  # this piece's block maps and affine, with the policy's (pieces are whole chunks)
                part_layout, fused = self._policy_layout(after[0], policy[start // step:-(-stop // step)], scale, shift)
            else:
                part_layout = {key: (value if key == "bias" and value.ndim == 1 else value[start:stop])
                               for key, value in layout.items()}

            def decode_and_finish(first: int, last: int, into: torch.Tensor) -> List[int]:
                """Items ``first..last-1`` (whole chunks from ``start``) decoded and finished into ``into``."""
                sub_layout = {key: (value if key == "bias" and value.ndim == 1 else value[first - start:last - start])
                              for key, value in part_layout.items()}
                labels = self._decode_items([int(i) for i in batch_indices[first:last]], into,
                                            None if boxes is None else boxes[first:last], sub_layout, batch_number,
                                            epoch, threads=1, box_for=None if box_for is None else
                                            (lambda candidate, slot: box_for(candidate, slot + first)))
                if fused is not None:  # the policy's rest on the normalised items: fills, contrast means, slow items
                    fused.finish(into, (scale, shift), first - start)
                for chunk in range(first, last, step) if after and not policy else ():  # chunk by chunk
                    self._finish_normalized(into[chunk - first:chunk - first + step], after, states[chunk // step],
                                            scale, shift)
                return labels

            if mixing is None:
                return decode_and_finish(start, stop, out[start:stop])
            # mixing: a few items at a time decoded and finished in a reused scratch (in cache), then each
            # item written mixed into the batch, so the batch is written once; the piece's first item is
            # written unmixed and mixed at the end (its partner is the previous piece's last item)
            labels: List[int] = []
            scratch = self._take_scratch(per_decode)
            try:
                previous = None
                for round_number, first in enumerate(range(start, stop, per_decode)):
                    last = min(first + per_decode, stop)
                    work = scratch[round_number % 2][:last - first]
                    labels += decode_and_finish(first, last, work)
                    if previous is None:  # the piece's first item: mixed at the end
                        mixing_copy(out[first], work[0])
                    else:
                        mixing.mix_item(work[0], previous, params, out=out[first])
                    if work.shape[0] > 1:  # the rest in one call: items 1.. with partners 0..
                        mixing.mix_item(work[1:], work[:-1], params, out=out[first + 1:last])
                    previous = work[-1]
                last_items[number] = torch.empty_like(previous)  # the partner of the next piece's first item
                mixing_copy(last_items[number], previous)
            finally:
                self._scratch.put(scratch)
            return labels

        if threads == 1 or len(pieces) == 1:
            labels = [label for number in range(len(pieces)) for label in piece(number)]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(threads, len(pieces)), thread_name_prefix="funloader-piece") as pool:
                labels = [label for part in pool.map(piece, range(len(pieces))) for label in part]
        y = torch.as_tensor(labels, dtype=torch.int64)
        if self.mixing is None:
            return out, y
        if mixing is not None:
            for number, (start, _) in enumerate(pieces):
                mixing.mix_item(out[start], last_items[number - 1], params)
        return out, (mixing or self.mixing).soft_targets(y, params)

    def _take_scratch(self, items: int) -> torch.Tensor:
        """A ``(2, items, 192, H8, W8)`` float32 scratch of :meth:`decode_fused` (reused: a new one would
        cost its page faults every batch); give it back with ``self._scratch.put``."""
        shape = (2, items, 192) + self.size
        try:
            scratch = self._scratch.get_nowait()
        except queue.Empty:
            scratch = None
        return scratch if scratch is not None and tuple(scratch.shape) == shape else torch.empty(shape)

    def _finish_normalized(self, chunk: torch.Tensor, after, state, scale, shift) -> None:
        """The steps after the fused prefix on a normalised chunk, in place, with the draws of
        :meth:`finish` (the generator ``state`` recorded by :meth:`fused_layout`)."""
        generator = torch.Generator()
        generator.set_state(state)
        for later in after:
            moved, gain, bias = later.split(chunk, generator, normalization=(scale, shift), in_place=True)
            if moved.data_ptr() != chunk.data_ptr():  # in place normally (a view of chunk's memory)
                chunk.copy_(moved)
            if gain is not None:  # in place (mul_ + add_ measured faster than an aliased addcmul)
                chunk.mul_(gain.to(torch.float32)[:, :, None, None])
                chunk.add_(bias.to(torch.float32)[:, :, None, None])

    def _normalizer(self, device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(1/std, -mean/std)`` as ``(192, 1, 1)`` float32 tensors on ``device`` (cached)."""
        cached = self._normalizers.get(str(device))
        if cached is None:
            scale, shift = normalization_affine(*self.stats)
            cached = (torch.as_tensor(scale, device=device)[:, None, None],
                      torch.as_tensor(shift, device=device)[:, None, None])
            self._normalizers[str(device)] = cached
        return cached

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for old in list(self._live):
            old.close()
        iterator = _EpochIterator(self)
        self._live.add(iterator)
        return iterator

    def close(self) -> None:
        """Stop the background threads of any running epoch."""
        for old in list(self._live):
            old.close()

    def batch_dataset(self) -> "BatchDataset":
        """A map-style ``Dataset`` whose item ``b`` is batch ``b`` of the current epoch (CPU), for a
        ``torch.utils.data.DataLoader(..., batch_size=None, num_workers=k)`` with worker processes."""
        return BatchDataset(self)

    def __repr__(self) -> str:
        return (f"DCTLoader({len(self.dataset)} samples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, size={self.size}, device={self.device}, rank={self.rank}/{self.world_size}, "
                f"normalized={self.stats is not None}, transform={self.transform!r})")


#: most items per piece with a fused policy: its plan's (items, 192) tensors stay under torch's grain
#: size (32768 values), so its many small torch ops run on the calling thread (torch's intra-op
#: threads, woken for each op, measured 0.45 ms per op on a busy 2-core machine)
_BLOCK_ITEMS = 32768 // 192
#: pieces per decoding thread in decode_fused: 1, 2, 3 measured 1.20x, 1.25x, 1.34x the exact pipeline
#: at 2 threads (RandAugment + mixup, 224 px; fixed costs per piece outweigh the better balance)
_PIECES_PER_THREAD = 1
#: items decoded at a time into a scratch when mixing (decode_fused): 4, 8, 16 and 32 measured within 4%
#: (fewer calls per batch with 32),
#: all much faster than mixing the batch after the decode (the batch then written twice, read once)
_SCRATCH_ITEMS = 32
_AC_CHANNELS = torch.tensor([c for c in range(192) if c % 64])  # the 189 FUN channels that are not a DC
_AFTER = "after_decode"  # fused_layout key (not a read_batch argument): the steps decode_fused applies after the decode


def _on_normalized(step) -> bool:
    """True when ``step`` can run on the normalised batch (``runs_normalized``): it draws with
    ``params(count, grid, generator)`` alone, applies with ``split(batch, generator,
    normalization=, in_place=)`` and gives its draws as decode work with ``fused(drawn, grid)``
    (the RandAugment / TrivialAugmentWide policies)."""
    return bool(getattr(step, "runs_normalized", False))


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class _State:
    """What the producer thread shares with the iterator (the thread holds no reference to the iterator)."""

    def __init__(self, slots: int, prefetch: int):
        self.stop = threading.Event()
        self.free: "queue.Queue[int]" = queue.Queue()
        for slot in range(slots):
            self.free.put(slot)
        self.ready: "queue.Queue" = queue.Queue(maxsize=prefetch)
        self.events: List[Optional[object]] = [None] * slots


def _put(state: _State, item) -> bool:
    while not state.stop.is_set():
        try:
            state.ready.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(loader: DCTLoader, batches: List[List[int]], buffers: List[torch.Tensor], state: _State,
             finish_here: bool, epoch: int, first: int) -> None:
    try:
        for number, batch in enumerate(batches, first):
            slot = None
            while slot is None:
                if state.stop.is_set():
                    return
                try:
                    slot = state.free.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
            event = state.events[slot]
            if event is not None:
                event.synchronize()  # the GPU copy out of this pinned slot has finished
                state.events[slot] = None
            buffer = buffers[slot]
            layout = loader.fused_layout(len(batch), number, epoch) if finish_here and loader.fusable(batch) else None
            if layout is not None:  # CPU: augmentation and normalisation done by the decode itself
                item = loader.decode_fused(batch, layout, number, epoch)
                state.free.put(slot)
                if not _put(state, ("batch", item)):
                    return
                continue
            labels = loader.decode(batch, buffer, number, epoch)
            if finish_here:
                item = loader.finish(buffer[:len(batch)], labels, number, epoch)
                state.free.put(slot)
                if not _put(state, ("batch", item)):
                    return
            elif not _put(state, ("slot", slot, len(batch), labels, number)):
                return
        _put(state, ("end",))
    except BaseException as exc:  # handed to the caller's thread
        _put(state, ("error", exc))


class _EpochIterator:
    """One epoch of a ``DCTLoader``; ``close()`` (or dropping it) stops its thread."""

    def __init__(self, loader: DCTLoader):
        self._loader = loader
        first = loader.start_batch
        self._batches = loader.batches()[first:]
        self._remaining = len(self._batches)
        finish_here = loader.device.type == "cpu"
        slots = 1 if finish_here else loader.prefetch + 1
        buffers = loader._allocate(slots)
        self._buffers = buffers
        self._state = _State(slots, loader.prefetch)
        self._finish_here = finish_here
        self._epoch = loader.epoch
        self._thread = threading.Thread(target=_produce, name="funloader-DCTLoader", daemon=True,
                                        args=(loader, self._batches, buffers, self._state, finish_here, loader.epoch,
                                              first))
        self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._state, self._thread)

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return self._remaining

    def __next__(self):
        if self._remaining == 0 or self._state.stop.is_set():
            self.close()
            raise StopIteration
        try:
            while True:
                try:
                    item = self._state.ready.get(timeout=_POLL_S)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._state.ready.empty():
                        raise RuntimeError("funloader: the loader thread ended unexpectedly") from None
            kind = item[0]
            if kind == "end":
                self.close()
                raise StopIteration
            if kind == "error":
                self.close()
                raise item[1]
            self._remaining -= 1
            if kind == "batch":
                return item[1]
            _, slot, count, labels, number = item
            loader = self._loader
            pinned = self._buffers[slot][:count]
            raw = pinned.to(loader.device, non_blocking=True)
            if loader.device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
                self._state.events[slot] = event
            self._state.free.put(slot)
            return loader.finish(raw, labels, number, self._epoch)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the producer thread and wait for it (bounded)."""
        self._finalizer()

    @property
    def thread(self) -> threading.Thread:
        return self._thread


def _shutdown(state: _State, thread: threading.Thread) -> None:
    state.stop.set()
    while True:  # unblock a producer waiting to put
        try:
            state.ready.get_nowait()
        except queue.Empty:
            break
    if thread is not threading.current_thread():
        thread.join(timeout=30)
    for event in state.events:  # GPU copies still reading a pinned slot must end before the slot is reused
        if event is not None:
            event.synchronize()
    state.events = [None] * len(state.events)


class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset over the batches of a ``DCTLoader``'s current epoch (CPU tensors).

    Item ``b`` decodes batch ``b`` with ``read_batch`` and applies the loader's batch transforms;
    use with ``DataLoader(batch_dataset, batch_size=None, num_workers=k)`` to spread batches over
    worker processes (set ``loader.num_threads`` to 1 or 2 then)."""

    def __init__(self, loader: DCTLoader):
        self.loader = loader
        self.epoch = loader.epoch
        self._batches = loader.batches()

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, number: int):
        batch = self._batches[number]
        loader = self.loader
        buffer = torch.empty((len(batch), 192) + loader.size, dtype=loader._buffer_dtype())
        labels = loader.decode(batch, buffer, number, self.epoch)
        x, y = loader.finish(buffer, labels, number, self.epoch)
        return x.cpu(), y.cpu()
