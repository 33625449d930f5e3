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
from .codec import DCTImage, libjpeg_info, read_batch, read_dct, read_fun

# Heavier parts (torch, the loader, preparation) load on first use.
_LAZY = {
    "DCTImageFolder": "funloader.dataset",
    "DCTLoader": "funloader.loader",
    "compute_stats": "funloader.stats",
    "load_stats": "funloader.stats",
    "prepare": "funloader.preparation",
}

__all__ = [
    "__version__", "read_dct", "read_fun", "read_batch", "DCTImage", "libjpeg_info",
    "FunloaderError", "UsageError", "JPEGDecodeError", "UnsupportedJPEGError", "JPEGWarning", *sorted(_LAZY),
]


def __getattr__(name):
    if name in ("models", "transforms", "dali"):  # subpackages, imported on first use
        return importlib.import_module(f"funloader.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'funloader' has no attribute {name!r}")
