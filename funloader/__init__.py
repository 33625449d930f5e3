"""funloader: JPEG-native data loading for PyTorch.

Reads the quantized 8x8 DCT coefficients straight out of JPEG files (entropy decoding only, no
IDCT, colour conversion or resize) and feeds them to FUN models as ``(192, H/8, W/8)`` tensors:
``channel = 64 * component + 8 * v + u`` with components Y, Cb, Cr and chroma replicated onto the
luma block grid.

Core API (see each docstring for shapes and dtypes)::

    funloader.read_dct(source)            -> DCTImage (per-component coefficients + qtables)
    funloader.read_fun(source)            -> (192, H8, W8) int16 (or float32 dequantized)
    funloader.read_batch(sources, out)    -> decodes N files into out (N, 192, H8, W8), native threads
    funloader.DCTImageFolder, funloader.DCTLoader, funloader.compute_stats, funloader.prepare
    funloader.models.create_model(name)   -> FUN models and RGB baselines
"""
from __future__ import annotations

import importlib

from ._version import __version__
from .errors import FunloaderError, JPEGDecodeError, JPEGWarning, UnsupportedJPEGError, UsageError
try:
    from . import _jpegdct  # noqa: F401 - the C extension, built by pip install / setup.py build_ext
except ImportError as _error:  # pragma: no cover - exercised by a test in a subprocess
    raise ImportError(
        f"funloader's C extension funloader._jpegdct is not built or cannot load ({_error}). Build it with "
        "'pip install -e .' (or 'python setup.py build_ext --inplace') in the source tree; it needs a C compiler "
        "and the libjpeg-turbo headers (Debian/Ubuntu: apt-get install libjpeg62-turbo-dev).") from _error
from .codec import DCTImage, get_max_pixels, libjpeg_info, read_batch, read_dct, read_fun, set_max_pixels

# Heavier parts (torch, the loader, preparation) load on first use.
_LAZY = {
    "DCTImageFolder": "funloader.dataset",
    "DCTLoader": "funloader.loader",
    "compute_stats": "funloader.stats",
    "load_stats": "funloader.stats",
    "prepare": "funloader.preparation",
}

__all__ = [
    "__version__", "read_dct", "read_fun", "read_batch", "DCTImage", "libjpeg_info", "set_max_pixels", "get_max_pixels",
    "FunloaderError", "UsageError", "JPEGDecodeError", "UnsupportedJPEGError", "JPEGWarning", *sorted(_LAZY),
]


_SUBMODULES = ("models", "transforms", "dali")


def __dir__():
    """The module's names plus the lazily loaded ones (``DCTLoader``, ``models``...)."""
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


def __getattr__(name):
    if name in _SUBMODULES:  # subpackages, imported on first use
        return importlib.import_module(f"funloader.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'funloader' has no attribute {name!r}")
