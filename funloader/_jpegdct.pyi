"""Type stub of the C extension ``funloader._jpegdct`` (funloader/csrc/jpegdct_module.c).

Private: ``funloader.codec`` is its only caller and holds every policy (sources, errors, warnings,
shape checks). The functions take positional arguments only, in the order below.

A *result* is ``(status, errno, message, warnings)``: ``status`` one of the ``OK``/``ERR_*``
codes, ``errno`` the OS error number for ``ERR_IO`` (else 0), ``message`` libjpeg's or the core's
reason, ``warnings`` the recoverable problems libjpeg reported (lenient mode).
A *header* is a dict: ``width``, ``height``, ``num_components``, ``colorspace`` (``"YCbCr"`` or
``"gray"``), ``progressive``, ``arithmetic``, ``sampling`` [(h, v)] and ``blocks``
[(blocks_h, blocks_w)] per component, ``qtables`` (bytes: uint16 natural order, 64 per component),
``grid`` (H8, W8), ``decoder`` (``"funloader"`` or ``"libjpeg"``: which entropy decoder read it),
``handover`` (why funloader's own decoder handed the file to libjpeg, or "").
*decoder* arguments: ``DECODER_AUTO`` (default: the own decoder for baseline files, libjpeg for the
rest) or ``DECODER_LIBJPEG``.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

_Buffer = Any  # a writable C-contiguous buffer (numpy array, bytearray, CPU tensor's numpy view)
_Source = Union[str, bytes, bytearray, memoryview]  # a file path or the file's bytes
_Result = Tuple[int, int, str, List[str]]
_Header = Dict[str, Any]

OK: int
ERR_DECODE: int
ERR_UNSUPPORTED: int
ERR_TOO_LARGE: int
ERR_IO: int
ERR_NOMEM: int
ERR_ARGUMENT: int
ERR_BOX: int
SUPPORT_BOX: int
SUPPORT_IMAGE: int
CHROMA_420: int
CHROMA_444: int
DTYPE_INT16: int
DTYPE_FLOAT32: int
MAX_COMPONENTS: int
DECODER_AUTO: int
DECODER_LIBJPEG: int


class Decoder:
    """One libjpeg decompressor (and its buffers), reused across calls; one thread at a time."""

    def read_fun(self, source: _Source, out: Optional[_Buffer], dtype: int, dequantize: bool, strict: bool,
                 max_pixels: int, max_scans: int, decoder: int = ..., /
                 ) -> Tuple[Optional[Any], Optional[_Header], _Result]:
        """The FUN layout ``(192, H8, W8)`` of ``dtype`` (``DTYPE_*``) into ``out`` (or a new bytearray
        when ``out`` is None); ``max_pixels`` 0: no limit. Returns ``(buffer, header, result)``,
        ``buffer`` and ``header`` None on failure."""

    def read_resized(self, source: _Source, out: _Buffer, out_h8: int, out_w8: int, dtype: int,
                     box: Tuple[float, float, float, float], support: int, chroma: int, strict: bool,
                     max_pixels: int, max_scans: int, decoder: int = ..., /) -> Tuple[Optional[_Header], _Result]:
        """The exact resized crop of ``box`` (top, left, height, width) into ``out`` ``(192, out_h8, out_w8)``
        (``SUPPORT_*``, ``CHROMA_*``; see funloader/csrc/resize.h); ``header`` None on failure
        (``ERR_BOX``: the box is outside the image or empty)."""

    def read_dct(self, source: _Source, strict: bool, max_pixels: int, max_scans: int, decoder: int = ..., /
                 ) -> Tuple[Optional[_Header], List[bytearray], _Result]:
        """Every component's coefficients ``(blocks_h, blocks_w, 64)`` int16, one bytearray each."""

    def decoder_path(self, source: _Source, max_pixels: int, /) -> Tuple[bool, str, _Result]:
        """Whether ``DECODER_AUTO`` decodes the file with the own decoder (its entropy data decoded to
        find out), the hand-over reason otherwise, and the result of reading the source."""


def decode_batch(sources: Sequence[_Source], out: _Buffer, out_h8: int, out_w8: int, dtype: int, dequantize: bool,
                 threads: int, strict: bool, max_pixels: int, max_scans: int,
                 row_maps: Optional[_Buffer] = None, col_maps: Optional[_Buffer] = None,
                 gains: Optional[_Buffer] = None, bias: Optional[_Buffer] = None, boxes: Optional[_Buffer] = None,
                 support: int = ..., chroma: int = ..., decoder: int = ..., /) -> List[Optional[_Result]]:
    """Decode N sources into ``out`` ``(N, 192, out_h8, out_w8)`` on ``threads`` native threads, GIL
    released; each image centre-cropped / zero-padded by whole blocks to the grid.

    ``row_maps`` int32 ``(N, out_h8)``, ``col_maps`` int32 ``(N, out_w8)``: output block ``i`` takes
    block ``maps[n, i]`` of that grid (-1: zero block). ``gains`` float32 ``(N, 192)`` and ``bias``
    float32 ``(192,)`` (together, float32 ``out`` only): ``x * gains[n, c] + bias[c]``.
    ``boxes`` float64 ``(N, 4)``: item ``n`` is the exact resized crop of ``boxes[n]`` (``support``,
    ``chroma`` as ``Decoder.read_resized``), the maps and affine applied to its resized grid.
    Returns one entry per item: None (decoded, no warnings) or a result (failed: its slot is zeroed;
    or decoded with warnings)."""


def read_sizes(sources: Sequence[_Source], sizes: _Buffer, threads: int, strict: bool, max_pixels: int,
               max_scans: int, /) -> List[Optional[_Result]]:
    """Headers only: ``sizes`` int64 ``(N, 2)`` gets ``(height, width)``; None per readable item, else its result."""


def resize_simd() -> str:
    """The SIMD path of the exact resized-crop kernel on this CPU (``"avx2"``, ``"sse2"``, ``"scalar"``)."""


def libjpeg_version() -> int:
    """libjpeg-turbo's version number, e.g. 2001005 for 2.1.5."""
