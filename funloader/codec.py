"""Read quantized DCT coefficients from JPEG files: ``read_dct``, ``read_fun``, ``read_batch``.

The C extension (``funloader._jpegdct``) entropy-decodes with the GIL released and copies straight
into buffers it is handed: baseline files with funloader's own Huffman decoder, everything else (and
any file in which that decoder meets anything unexpected) with libjpeg-turbo's
``jpeg_read_coefficients``, which then gives exactly libjpeg's output, errors and warnings. The
choice is the ``decoder`` argument or the ``FUNLOADER_DECODER`` environment variable (``auto``,
the default, or ``libjpeg``). This module holds the policy: what a source is, which exception a
failure becomes, how warnings surface, and the shape checks.

Layouts
-------
* ``DCTImage.coefficients[c]``: ``(blocks_h, blocks_w, 64)`` int16 per component, coefficient
  ``k = 8 * v + u`` (v vertical, u horizontal frequency; natural order, as jpeg2dct).
* FUN input: ``(192, H8, W8)`` with ``H8 = ceil(H / 8)``, ``channel = 64 * component + 8 * v + u``
  (Y, Cb, Cr); every component nearest-neighbour replicated onto the full-resolution block grid.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _jpegdct
from .errors import JPEGDecodeError, JPEGWarning, UnsupportedJPEGError, UsageError

#: Default decompression-bomb limit, in pixels (Pillow's error threshold, 2 * 89,478,485).
DEFAULT_MAX_PIXELS = 178_956_970
#: Default limit on the number of scans of a progressive JPEG (CPU-bomb guard).
DEFAULT_MAX_SCANS = 1000

_max_pixels = DEFAULT_MAX_PIXELS

#: Entropy decoders: ``auto`` (funloader's own for baseline files, libjpeg-turbo for the rest and on
#: anything unexpected) and ``libjpeg`` (libjpeg-turbo for every file, for debugging and benchmarks).
DECODERS = ("auto", "libjpeg")
#: The environment variable that picks the decoder when a call does not.
DECODER_ENV = "FUNLOADER_DECODER"

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, io.IOBase]


def set_max_pixels(limit: Optional[int]) -> None:
    """Set the process-wide default decompression-bomb limit (None or 0: no limit)."""
    global _max_pixels
    _max_pixels = int(limit or 0)


def get_max_pixels() -> int:
    """The process-wide default decompression-bomb limit in pixels (0: none)."""
    return _max_pixels


@dataclass
class DCTImage:
    """Quantized DCT coefficients of one JPEG, per component.

    Attributes:
        coefficients: one ``(blocks_h, blocks_w, 64)`` int16 array per component (Y, Cb, Cr or a
            single gray plane), ``k = 8 * v + u``; ``blocks_h = ceil(ceil(H * v_c / v_max) / 8)``
            (the component's own block count, not MCU-padded).
        qtables: one ``(64,)`` uint16 quantization table per component, natural order.
        width, height: image size in pixels.
        sampling: per-component ``(h, v)`` sampling factors.
        colorspace: ``"YCbCr"`` or ``"gray"``.
        progressive, arithmetic: coding of the file.
        filename: the path it came from, when it came from a path.
    """

    coefficients: List[np.ndarray]
    qtables: List[np.ndarray]
    width: int
    height: int
    sampling: List[Tuple[int, int]]
    colorspace: str
    progressive: bool
    arithmetic: bool = False
    filename: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    #: which entropy decoder produced the coefficients: ``"funloader"`` or ``"libjpeg"``
    decoder: str = "libjpeg"

    @property
    def num_components(self) -> int:
        return len(self.coefficients)

    @property
    def grid(self) -> Tuple[int, int]:
        """The full-resolution block grid ``(ceil(H/8), ceil(W/8))`` of the FUN input."""
        return ((self.height + 7) // 8, (self.width + 7) // 8)

    def __repr__(self) -> str:
        """One line: size, colourspace, sampling, coding and file, not the coefficients."""
        coding = ("progressive" if self.progressive else "baseline") + (", arithmetic" if self.arithmetic else "")
        where = f", file={self.filename!r}" if self.filename else ""
        sampling = f" {_sampling_name(self.sampling)}" if len(self.sampling) > 1 else ""
        return f"DCTImage({self.width}x{self.height}, {self.colorspace}{sampling}, {coding}{where})"

    def dequantized(self) -> List[np.ndarray]:
        """Coefficients multiplied by their quantization tables, float32, same shapes."""
        return [plane.astype(np.float32) * table.astype(np.float32) for plane, table in zip(self.coefficients, self.qtables)]


_SAMPLING_NAMES = {(1, 1): "4:4:4", (2, 1): "4:2:2", (1, 2): "4:4:0", (2, 2): "4:2:0", (4, 1): "4:1:1", (4, 2): "4:1:0"}


def _sampling_name(sampling: Sequence[Tuple[int, int]]) -> str:
    """``"4:2:0"`` etc. for the usual factors (chroma 1x1), else the factors, e.g. ``"3x1,1x1,1x1"``."""
    factors = [tuple(f) for f in sampling]
    if len(factors) == 3 and factors[1] == factors[2] == (1, 1) and factors[0] in _SAMPLING_NAMES:
        return _SAMPLING_NAMES[factors[0]]
    return ",".join(f"{h}x{v}" for h, v in factors)


_local = threading.local()


def _decoder():
    decoder = getattr(_local, "decoder", None)
    if decoder is None:
        decoder = _local.decoder = _jpegdct.Decoder()
    return decoder


def _resolve(source) -> Tuple[Any, Optional[str]]:
    """Turn a user source into what the extension takes (str path or bytes-like) and a filename."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return path, path
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source, None
    if isinstance(source, np.ndarray):
        return np.ascontiguousarray(source).view(np.uint8).reshape(-1), None
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("file object must be opened in binary mode")
        return data, name if isinstance(name, str) else None
    raise TypeError(f"a JPEG source must be a path, bytes-like or binary file object, not {type(source).__name__}")


def _error(result, filename) -> Exception:
    status, os_errno, message, _ = result
    if status == _jpegdct.ERR_UNSUPPORTED:
        return UnsupportedJPEGError(message, filename)
    if status == _jpegdct.ERR_IO:
        return OSError(os_errno or None, f"cannot read JPEG: {message}", filename)
    if status == _jpegdct.ERR_NOMEM:
        return MemoryError(f"{filename or '<buffer>'}: {message}")
    if status == _jpegdct.ERR_ARGUMENT:
        return ValueError(message)
    if status == _jpegdct.ERR_BOX:
        return UsageError(f"{filename or '<buffer>'}: {message}")
    return JPEGDecodeError(message, filename)


def _warn(result, filename, stacklevel=3) -> List[str]:
    messages = list(result[3])
    for message in messages:
        warnings.warn(JPEGWarning(f"{filename or '<buffer>'}: {message}"), stacklevel=stacklevel)
    return messages


def _limit(max_pixels: Optional[int]) -> int:
    return int(_max_pixels if max_pixels is None else (max_pixels or 0))


def decoder_code(decoder: Optional[str] = None) -> int:
    """The C core's code for ``decoder`` (None: ``$FUNLOADER_DECODER``, default ``auto``)."""
    name = decoder
    if name is None:
        name = os.environ.get(DECODER_ENV, "").strip().lower() or "auto"
        if name not in DECODERS:
            raise UsageError(f"{DECODER_ENV}={os.environ[DECODER_ENV]!r}: must be one of {', '.join(DECODERS)}")
    elif name not in DECODERS:
        raise UsageError(f"decoder={decoder!r}: must be one of {', '.join(DECODERS)} (or None for ${DECODER_ENV})")
    return _jpegdct.DECODER_LIBJPEG if name == "libjpeg" else _jpegdct.DECODER_AUTO


def decoder_path(source: Source, *, max_pixels: Optional[int] = None) -> Tuple[str, str]:
    """Which entropy decoder ``decoder="auto"`` uses for a file: ``("funloader", "")``, or
    ``("libjpeg", reason)`` with the reason funloader's own decoder handed the file over (it decodes
    the file's entropy-coded data to find out). Raises ``OSError`` when the file cannot be read."""
    data, filename = _resolve(source)
    own, reason, result = _decoder().decoder_path(data, _limit(max_pixels))
    if result[0] != _jpegdct.OK:
        raise _error(result, filename)
    return ("funloader", "") if own else ("libjpeg", reason)


def read_dct(source: Source, *, strict: bool = True, max_pixels: Optional[int] = None,
             max_scans: int = DEFAULT_MAX_SCANS, decoder: Optional[str] = None) -> DCTImage:
    """Read the quantized DCT coefficients of every component of a JPEG.

    Args:
        source: a path, a bytes-like object, or a binary file object.
        strict: raise on recoverable corruption (truncation, bad Huffman codes, ...); with
            ``strict=False`` such problems are issued as :class:`JPEGWarning` and decoding goes on
            (missing data reads as zeros).
        max_pixels: decompression-bomb limit checked from the header before any large allocation
            (None: the process default, :data:`DEFAULT_MAX_PIXELS`; 0: no limit).
        max_scans: refuse progressive files with more scans than this.
        decoder: ``"auto"`` or ``"libjpeg"`` (None: ``$FUNLOADER_DECODER``, default ``auto``); the
            coefficients, errors and warnings are the same either way.

    Returns:
        :class:`DCTImage` (coefficients ``(blocks_h, blocks_w, 64)`` int16 per component).

    Raises:
        JPEGDecodeError: not a JPEG, corrupt, truncated (strict) or over ``max_pixels``.
        UnsupportedJPEGError: CMYK/YCCK, RGB-coded, 12-bit or lossless JPEG.
        OSError: the file cannot be read.
    """
    data, filename = _resolve(source)
    header, planes, result = _decoder().read_dct(data, strict, _limit(max_pixels), max_scans, decoder_code(decoder))
    if header is None:
        raise _error(result, filename)
    messages = _warn(result, filename)
    coefficients = [np.frombuffer(plane, dtype=np.int16).reshape(bh, bw, 64)
                    for plane, (bh, bw) in zip(planes, header["blocks"])]
    qtables = np.frombuffer(header["qtables"], dtype=np.uint16).reshape(-1, 64)
    return DCTImage(
        coefficients=coefficients,
        qtables=[table.copy() for table in qtables],
        width=header["width"],
        height=header["height"],
        sampling=[tuple(s) for s in header["sampling"]],
        colorspace=header["colorspace"],
        progressive=bool(header["progressive"]),
        arithmetic=bool(header["arithmetic"]),
        filename=filename,
        warnings=messages,
        decoder=header["decoder"],
    )


def _dtype_code(dtype, dequantize: bool) -> int:
    dtype = np.dtype(dtype)
    if dtype == np.int16:
        if dequantize:
            raise ValueError("dequantize=True needs a float32 output (int16 would overflow)")
        return _jpegdct.DTYPE_INT16
    if dtype == np.float32:
        return _jpegdct.DTYPE_FLOAT32
    raise ValueError(f"output dtype must be int16 or float32, not {dtype}")


def _as_numpy(out):
    """A numpy view of ``out`` (numpy array or CPU torch tensor), sharing memory."""
    if isinstance(out, np.ndarray):
        return out
    module = type(out).__module__
    if module.startswith("torch"):
        if out.device.type != "cpu":
            raise ValueError("out must be a CPU tensor (pinned memory is fine); copy to the GPU afterwards")
        return out.numpy()  # shares memory; fails for tensors that need grad
    raise TypeError(f"out must be a numpy array or a CPU torch tensor, not {type(out).__name__}")


def read_fun(source: Source, *, out=None, dequantize: bool = False, strict: bool = True,
             max_pixels: Optional[int] = None, max_scans: int = DEFAULT_MAX_SCANS, box=None, size=None,
             subsampling: str = "420", support: str = "box", dtype=None,
             decoder: Optional[str] = None) -> np.ndarray:
    """Decode a JPEG to the FUN input ``(192, H8, W8)`` with ``H8 = ceil(H/8)``, ``W8 = ceil(W/8)``.

    Channels are Y0..Y63, Cb0..Cb63, Cr0..Cr63 (``64 * component + 8 * v + u``); chroma is
    upsampled to the luma block grid by nearest-neighbour block replication, for any sampling
    factors; grayscale JPEGs give zero chroma. ``int16`` raw quantized coefficients, or
    ``float32`` multiplied by the quantization tables with ``dequantize=True``.

    Args:
        out: optional C-contiguous ``(192, H8, W8)`` array/CPU tensor (int16, or float32) to write
            into (no allocation); its dtype decides the output type (float32 without
            ``dequantize`` holds the raw integers as floats).
        strict, max_pixels, max_scans, decoder: as :func:`read_dct`.
        box: ``(top, left, height, width)`` in pixels of the original image (floats allowed): return the
            EXACT resized crop of that window instead (see :ref:`exact resized crop <exact>` below);
            needs ``size`` (or ``out``).
        size: ``(H8, W8)`` output grid in blocks for ``box``: the window is resized to ``8*H8 x 8*W8``.
        subsampling: with ``box``: ``"420"`` (default) chroma resized to ``4*H8 x 4*W8`` and replicated onto
            the luma block grid (as for a 4:2:0 file), or ``"444"`` chroma at full resolution.
        support: with ``box``: ``"box"`` (default) is torchvision's ``resized_crop`` (crop, then resize: the
            filter reads only the box's pixels); ``"image"`` is Pillow's ``resize(size, box=...)`` (the
            filter reads outside the box, inside the image; ``Resize(256) + CenterCrop(224)``).
        dtype: with ``box``: ``np.float32`` (default; dequantized units) or ``np.int16`` (rounded, the
            coefficients of a quality-100 re-encode: its quantization table is all ones).

    Exact resized crop (``box=``): each YCbCr component of the decoded image (what libjpeg/Pillow decode,
    without a colour round trip) is resized with Pillow's antialiased BILINEAR filter to ``8*H8 x 8*W8``
    (``"420"`` chroma: ``4*H8 x 4*W8``), then block-DCT'd (the orthonormal JPEG DCT of level-shifted
    samples: the same units as ``dequantize=True``). Only the blocks under the window plus the filter
    margin are decoded to pixels; everything runs natively with the GIL released.

    Raises:
        JPEGDecodeError, UnsupportedJPEGError, OSError: as :func:`read_dct`.
        UsageError (a ValueError): a box outside the image, or of zero/negative size.
    """
    if box is not None:
        return _read_resized(source, out=out, box=box, size=size, subsampling=subsampling, support=support,
                             dtype=dtype, strict=strict, max_pixels=max_pixels, max_scans=max_scans,
                             decoder=decoder)
    if size is not None or dtype is not None:
        raise UsageError("read_fun: size= and dtype= go with box= (the exact resized crop)")
    data, filename = _resolve(source)
    if out is None:
        dtype = np.float32 if dequantize else np.int16
        target = None
    else:
        array = _as_numpy(out)
        if array.ndim != 3 or array.shape[0] != 192 or not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError(f"out must be a writable C-contiguous (192, H8, W8) array, got shape {array.shape}")
        dtype = array.dtype
        target = array
    code = _dtype_code(dtype, dequantize)
    buffer, header, result = _decoder().read_fun(data, target, code, dequantize, strict, _limit(max_pixels), max_scans,
                                                 decoder_code(decoder))
    if header is None:
        raise _error(result, filename)
    _warn(result, filename)
    grid_h, grid_w = header["grid"]
    if target is not None:
        if target.shape[1:] != (grid_h, grid_w):
            raise ValueError(f"{filename or '<buffer>'}: out has grid {target.shape[1:]}, the image has {(grid_h, grid_w)}; "
                             "use read_batch to crop or pad to a fixed grid")
        return out
    return np.frombuffer(buffer, dtype=dtype).reshape(192, grid_h, grid_w)


_SUBSAMPLING = {"420": _jpegdct.CHROMA_420, "444": _jpegdct.CHROMA_444}
_SUPPORT = {"box": _jpegdct.SUPPORT_BOX, "image": _jpegdct.SUPPORT_IMAGE}


def _resize_codes(subsampling, support) -> Tuple[int, int]:
    if subsampling not in _SUBSAMPLING:
        raise UsageError(f"subsampling must be '420' or '444', not {subsampling!r}")
    if support not in _SUPPORT:
        raise UsageError(f"support must be 'box' (crop then resize) or 'image' (Pillow's resize box=), not {support!r}")
    return _SUBSAMPLING[subsampling], _SUPPORT[support]


def _as_boxes(boxes, count: int) -> np.ndarray:
    """``boxes`` (an (N, 4) array, list or tensor of (top, left, height, width)) as C-contiguous float64,
    with every box finite and of positive size (``UsageError`` naming the item and the box otherwise)."""
    if type(boxes).__module__.startswith("torch"):
        boxes = boxes.detach().cpu().numpy()
    try:
        array = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    except (TypeError, ValueError) as error:
        raise UsageError(f"boxes must be an (N, 4) array of (top, left, height, width): {error}") from None
    if np.ndim(boxes) != 2 or array.shape != (count, 4):
        raise UsageError(f"boxes must have shape ({count}, 4) (top, left, height, width), got {np.shape(boxes)}")
    bad = ~np.isfinite(array).all(axis=1) | (array[:, 2] <= 0) | (array[:, 3] <= 0) | (array[:, 0] < 0) | (array[:, 1] < 0)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise UsageError(f"boxes[{index}] = {tuple(float(v) for v in array[index])} (top, left, height, width) is not a "
                         "window with a finite, positive size inside the image")
    return np.ascontiguousarray(array)


def _read_resized(source, *, out, box, size, subsampling, support, dtype, strict, max_pixels, max_scans, decoder):
    chroma, support_code = _resize_codes(subsampling, support)
    if out is not None:
        array = _as_numpy(out)
        if array.ndim != 3 or array.shape[0] != 192 or not array.flags.c_contiguous or not array.flags.writeable:
            raise ValueError(f"out must be a writable C-contiguous (192, H8, W8) array, got shape {array.shape}")
        if size is not None and tuple(size) != array.shape[1:]:
            raise UsageError(f"size {tuple(size)} differs from out's grid {array.shape[1:]}")
        if dtype is not None and np.dtype(dtype) != array.dtype:
            raise UsageError(f"dtype {np.dtype(dtype)} differs from out's {array.dtype}")
        target = array
    else:
        if size is None:
            raise UsageError("read_fun(box=...) needs size=(H8, W8) (the output grid in blocks) or out=")
        grid = tuple(int(v) for v in size)
        if len(grid) != 2 or min(grid) <= 0:
            raise UsageError(f"size must be two positive block counts (H8, W8), got {size!r}")
        target = np.empty((192,) + grid, np.float32 if dtype is None else np.dtype(dtype))
    if target.dtype not in (np.float32, np.int16):
        raise UsageError(f"the exact resized crop gives float32 or int16, not {target.dtype}")
    code = _jpegdct.DTYPE_FLOAT32 if target.dtype == np.float32 else _jpegdct.DTYPE_INT16
    boxes = _as_boxes([box], 1)
    data, filename = _resolve(source)
    header, result = _decoder().read_resized(data, target, target.shape[1], target.shape[2], code,
                                             tuple(boxes[0]), support_code, chroma, strict, _limit(max_pixels),
                                             max_scans, decoder_code(decoder))
    if header is None:
        raise _error(result, filename)
    _warn(result, filename)
    return out if out is not None else target


def read_sizes(sources: Sequence[Source], *, threads: Optional[int] = None, strict: bool = True,
               max_pixels: Optional[int] = None, max_scans: int = DEFAULT_MAX_SCANS) -> np.ndarray:
    """Image sizes from the JPEG headers only (native threads, GIL released), for drawing crop windows.

    Returns:
        ``(N, 2)`` int64 array of ``(height, width)`` in pixels.

    Raises:
        The error :func:`read_fun` would raise for the first item whose header is unreadable (not a JPEG,
        unsupported, over ``max_pixels``, missing file...), naming the file.
    """
    resolved = [_resolve(source) for source in sources]
    sizes = np.zeros((len(resolved), 2), np.int64)
    threads = _default_threads() if threads is None else max(1, int(threads))
    results = _jpegdct.read_sizes([data for data, _ in resolved], sizes, threads, strict, _limit(max_pixels), max_scans)
    for (data, filename), result in zip(resolved, results):
        if result is not None and result[0] != _jpegdct.OK:
            raise _error(result, filename)
    return sizes


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def read_batch(sources: Sequence[Source], out, *, threads: Optional[int] = None, dequantize: bool = False,
               strict: bool = True, max_pixels: Optional[int] = None, max_scans: int = DEFAULT_MAX_SCANS,
               warn: bool = True, row_maps=None, col_maps=None, gain=None, bias=None, boxes=None,
               subsampling: str = "420", support: str = "box",
               decoder: Optional[str] = None) -> List[Optional[Exception]]:
    """Decode many JPEGs into a preallocated batch with native threads (GIL released).

    Args:
        sources: N paths and/or bytes-like objects (file objects are read first).
        out: C-contiguous ``(N, 192, H8, W8)`` int16 or float32 numpy array or CPU torch tensor
            (pinned memory is fine). An image whose block grid differs from ``(H8, W8)`` is
            centre-cropped (first block ``(grid - H8) // 2``) or zero-padded (placed at
            ``(H8 - grid) // 2``) by whole blocks, independently per axis.
        threads: native decoding threads (default: the CPUs this process may use).
        dequantize: multiply by the quantization tables (float32 ``out`` only).
        strict, max_pixels, max_scans, decoder: as :func:`read_dct`.
        warn: issue :class:`JPEGWarning` for recoverable problems (lenient mode).
        row_maps, col_maps: optional ``(N, H8)`` / ``(N, W8)`` integer block maps, applied while laying
            out: output block row ``i`` of item ``n`` is row ``row_maps[n, i]`` of the centre-cropped /
            padded grid described above (``-1``: a zero block); columns likewise. This is how
            block-aligned crops, flips (reversed columns) and nearest-block resized crops are done
            without a second pass; the caller draws them (``funloader.transforms.GatherPlan``).
            With maps, funloader's own decoder stops entropy decoding after the last MCU row the maps
            use (crop-aware decoding), so damage after that row goes unreported, even when strict.
        gain, bias: optional ``(N, 192)`` and ``(192,)`` or ``(N, 192)`` float32 (float32 ``out``
            only): each output value becomes ``x * gain[n, c] + bias[n, c]`` (``bias[c]`` for a
            ``(192,)`` bias) with ``x`` the (dequantized) coefficient, evaluated in float32 in that
            order (a zero block gives ``bias``). Folds normalisation ``(x - mean) / std``, the sign
            flips of mirrored coefficients and per-item colour maps (brightness needs a per-item
            bias on the Y DC channel: the JPEG level shift) into the decode.
        boxes: optional ``(N, 4)`` array, list or tensor of ``(top, left, height, width)`` pixel windows of the
            original images: item ``n`` is then the exact resized crop of ``boxes[n]`` to ``out``'s ``(H8, W8)``
            (as :func:`read_fun` with ``box=``; float32 ``out`` holds dequantized units whatever
            ``dequantize`` says, int16 the rounded q100 coefficients), and ``row_maps``/``col_maps``/``gain``/
            ``bias`` apply to that resized grid. A box outside its image raises ``UsageError`` naming the item.
        subsampling, support: with ``boxes``, as :func:`read_fun`.

    Returns:
        A list of N entries: ``None`` where the image decoded, or the exception
        (:class:`JPEGDecodeError`, :class:`UnsupportedJPEGError`, ``OSError``) for an item that
        failed; a failed item's slot in ``out`` is zero-filled. The batch never aborts part-way.
    """
    array = _as_numpy(out)
    count = len(sources)
    if array.ndim != 4 or array.shape[0] != count or array.shape[1] != 192:
        raise ValueError(f"out must have shape (N={count}, 192, H8, W8), got {tuple(array.shape)}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError("out must be writable and C-contiguous")
    if boxes is not None:
        code = _jpegdct.DTYPE_FLOAT32 if array.dtype == np.float32 else _dtype_code(array.dtype, False)
        chroma, support_code = _resize_codes(subsampling, support)
        resize = (_as_boxes(boxes, count), support_code, chroma)
    else:
        code = _dtype_code(array.dtype, dequantize)
        resize = (None, _jpegdct.SUPPORT_BOX, _jpegdct.CHROMA_420)
    resolved = [_resolve(source) for source in sources]
    threads = _default_threads() if threads is None else max(1, int(threads))
    maps = _batch_maps(count, array.shape[2], array.shape[3], array.dtype, row_maps, col_maps, gain, bias)
    results = _jpegdct.decode_batch([data for data, _ in resolved], array, array.shape[2], array.shape[3], code,
                                    dequantize, threads, strict, _limit(max_pixels), max_scans, *maps, *resize,
                                    decoder_code(decoder))
    for index, result in enumerate(results):
        if result is not None and result[0] == _jpegdct.ERR_BOX:
            raise UsageError(f"boxes[{index}]: {resolved[index][1] or '<buffer>'}: {result[2]}")
    errors: List[Optional[Exception]] = []
    for (data, filename), result in zip(resolved, results):
        if result is None:
            errors.append(None)
        elif result[0] != _jpegdct.OK:
            errors.append(_error(result, filename))
        else:
            if warn:
                _warn(result, filename)
            errors.append(None)
    return errors


def _batch_maps(count, height, width, dtype, row_maps, col_maps, gain, bias):
    """Validated C-contiguous int32/float32 copies (or None) of read_batch's optional maps."""
    def as_array(value, kind, shape, name):
        if value is None:
            return None
        if type(value).__module__.startswith("torch"):
            value = value.detach().cpu().numpy()
        array = np.ascontiguousarray(value, dtype=kind)
        if array.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
        return array

    if (gain is None) != (bias is None):
        raise ValueError("gain and bias go together")
    if gain is not None and np.dtype(dtype) != np.float32:
        raise ValueError("gain/bias need a float32 out")
    if bias is not None:  # one (192,) bias for every item, or one row per item: the C core takes (N, 192)
        if type(bias).__module__.startswith("torch"):
            bias = bias.detach().cpu().numpy()
        bias = np.asarray(bias, dtype=np.float32)
        if bias.shape == (192,):
            bias = np.broadcast_to(bias, (count, 192))
    return (as_array(row_maps, np.int32, (count, height), "row_maps"),
            as_array(col_maps, np.int32, (count, width), "col_maps"),
            as_array(gain, np.float32, (count, 192), "gain"),
            as_array(bias, np.float32, (count, 192), "bias"))


def libjpeg_info() -> dict:
    """Version of the libjpeg-turbo the extension was built against, e.g. ``{'version': '2.1.5'}``."""
    number = _jpegdct.libjpeg_version()
    version = f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}" if number > 1000000 else str(number)
    return {"version": version, "version_number": number}
