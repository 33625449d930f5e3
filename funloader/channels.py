"""The FUN layout rules, written once: channels, keep-specs, flip signs and the normalisation affine.

The FUN input has 192 channels: ``channel = 64 * component + 8 * v + u`` (component 0=Y, 1=Cb,
2=Cr; v vertical, u horizontal frequency; natural, not zigzag, order). Input compression (paper
Section 4.5, Table 7) keeps the lowest ``k`` frequencies of each component in JPEG zigzag order,
e.g. ``"44/10/10"`` keeps 44 Y, 10 Cb and 10 Cr channels (64 in all).

Every backend takes these rules from here (the transforms, ``DCTLoader``'s fused decode, the DALI
pipelines and the DALI C++ operator, which is handed the arrays and never recomputes them):

* :func:`flip_signs`: a mirrored block negates its coefficients of odd ``u`` (horizontal flip) or
  odd ``v`` (vertical flip);
* :func:`normalization_affine`: ``(x - mean) / std`` is evaluated as ``x * scale + shift`` with
  ``scale = 1/std`` and ``shift = -mean/std`` rounded to float32 (multiply, then add);
* :func:`decode_affine`: both folded into the per-channel ``gain``/``bias`` of ``read_batch``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

#: JPEG zigzag scan: ZIGZAG[i] is the natural index ``8*v + u`` of the i-th coefficient in zigzag order.
ZIGZAG: Tuple[int, ...] = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
)

KeepSpec = Union[str, Sequence[int], None]


def block_dct_matrix() -> np.ndarray:
    """``(8, 8)`` float64 orthonormal DCT-II matrix ``D[k, n] = c_k cos((2n + 1) k π / 16)``: JPEG's
    block transform of an 8x8 pixel block ``P`` (level-shifted) is ``D @ P @ D.T`` (rows ``v``,
    columns ``u``), its inverse ``D.T @ C @ D``."""
    k = np.arange(8, dtype=np.float64)[:, None]
    n = np.arange(8, dtype=np.float64)[None, :]
    matrix = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    matrix[0] /= np.sqrt(2)
    return matrix

#: The keep-specs of the paper's Table 7 (192, 88, 64, 48 and 24 input channels).
TABLE7_SPECS: Tuple[str, ...] = ("64/64/64", "64/12/12", "44/10/10", "32/8/8", "14/5/5")

ALL_CHANNELS = np.arange(192)


def parse_keep(keep: KeepSpec) -> Tuple[int, int, int]:
    """Parse a keep-spec (``"44/10/10"``, ``(44, 10, 10)``, ``"192"`` or None = all) into (y, cb, cr)."""
    if keep is None:
        return (64, 64, 64)
    if isinstance(keep, str):
        text = keep.strip()
        parts = text.split("/")
        if len(parts) == 1 and text.isdigit() and int(text) == 192:
            return (64, 64, 64)
        if len(parts) != 3:
            raise ValueError(f"keep-spec {keep!r}: expected 'Y/Cb/Cr', e.g. '44/10/10'")
        try:
            counts = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"keep-spec {keep!r}: counts must be integers") from None
    else:
        counts = tuple(int(p) for p in keep)
        if len(counts) != 3:
            raise ValueError(f"keep-spec {keep!r}: expected three counts (Y, Cb, Cr)")
    for count in counts:
        if not 0 <= count <= 64:
            raise ValueError(f"keep-spec {keep!r}: each count must be in 0..64")
    if sum(counts) == 0:
        raise ValueError(f"keep-spec {keep!r}: keeps no channel")
    return counts  # type: ignore[return-value]


def channel_indices(keep: KeepSpec) -> List[int]:
    """Indices into the 192 FUN channels kept by ``keep``, sorted ascending (component-major).

    >>> len(channel_indices("44/10/10"))
    64
    """
    counts = parse_keep(keep)
    indices = []
    for component, count in enumerate(counts):
        indices.extend(64 * component + natural for natural in ZIGZAG[:count])
    return sorted(indices)


def channel_mask(keep: KeepSpec) -> np.ndarray:
    """Boolean ``(192,)`` mask, True for the channels kept by ``keep``."""
    mask = np.zeros(192, dtype=bool)
    mask[channel_indices(keep)] = True
    return mask


def format_keep(keep: KeepSpec) -> str:
    """Canonical ``"Y/Cb/Cr"`` string of a keep-spec."""
    return "/".join(str(c) for c in parse_keep(keep))


def _channel_array(channels: Optional[Sequence[int]]) -> np.ndarray:
    if channels is None:
        return ALL_CHANNELS
    chans = np.asarray(channels, dtype=np.int64).reshape(-1)
    if chans.size and (chans.min() < 0 or chans.max() > 191):
        raise ValueError("channels must be FUN channel indices in 0..191")
    return chans


def flip_signs(axis: str, channels: Optional[Sequence[int]] = None) -> np.ndarray:
    """``(C,)`` float32 of +1/-1: the sign each channel takes when its block is mirrored.

    ``axis="h"`` (left-right): coefficients of odd horizontal frequency ``u`` are negated;
    ``axis="v"`` (top-bottom): odd vertical frequency ``v``. ``channels``: the FUN index of each
    channel (default all 192, in order)."""
    chans = _channel_array(channels)
    if axis == "h":
        odd = (chans % 8) % 2 == 1
    elif axis == "v":
        odd = ((chans % 64) // 8) % 2 == 1
    else:
        raise ValueError(f"axis must be 'h' or 'v', got {axis!r}")
    return np.where(odd, -1.0, 1.0).astype(np.float32)


def normalization_affine(mean: Sequence[float], std: Sequence[float], channels: Optional[Sequence[int]] = None,
                         dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)``, each ``(C,)`` of ``dtype`` (float32): the normalised value of a
    coefficient ``x`` of channel ``c`` is ``x * scale[c] + shift[c]`` (multiply, then add, each
    rounded), which is ``(x - mean) / std`` with ``scale = 1/std`` and ``shift = -mean/std`` computed
    in float64 and rounded once. A channel with ``std <= 0`` (constant, e.g. all zero) is only
    centred (``std`` taken as 1).

    ``mean``/``std``: the 192 FUN-channel statistics (see ``funloader.compute_stats``);
    ``channels``: the FUN index of each output channel (default all 192)."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (192,) or std.shape != (192,):
        raise ValueError(f"normalisation needs 192 means and stds, got {mean.shape[0]} and {std.shape[0]}")
    chans = _channel_array(channels)
    std_c = np.where(std[chans] <= 0, 1.0, std[chans])
    return (1.0 / std_c).astype(dtype), (-mean[chans] / std_c).astype(dtype)


def decode_affine(normalization: Optional[Tuple[np.ndarray, np.ndarray]] = None, flip: bool = False,
                  axis: str = "h") -> Tuple[np.ndarray, np.ndarray]:
    """``(gain, bias)``, ``(192,)`` float32 each: ``read_batch``'s per-channel affine for one item.

    ``gain = scale * flip_signs(axis)`` (the sign of a mirrored block folded into the scale; exact,
    as the signs are +-1) and ``bias = shift``; ``normalization``: ``(scale, shift)`` from
    :func:`normalization_affine` over all 192 channels, or None (scale 1, shift 0)."""
    if normalization is None:
        scale, shift = np.ones(192, np.float32), np.zeros(192, np.float32)
    else:
        scale, shift = (np.asarray(v, dtype=np.float32).reshape(192) for v in normalization)
    gain = scale * flip_signs(axis) if flip else scale.copy()
    return gain.astype(np.float32), shift.astype(np.float32)


def map_on_normalized(gain, bias, scale, shift):
    """A per-channel map ``x -> gain * x + bias`` of unnormalised coefficients, written for the
    normalised batch ``y = scale * x + shift`` (:func:`normalization_affine`): ``y -> gain * y +
    (scale * bias + shift - gain * shift)``. A zeroed channel (``gain = bias = 0``) becomes ``shift``,
    the normalised zero. ``gain``/``bias`` ``(N, 192)``, ``scale``/``shift`` ``(192,)`` tensors;
    returns ``(gain, new_bias)`` in float64."""
    import torch

    scale = torch.as_tensor(scale, dtype=torch.float64).reshape(1, -1)
    shift = torch.as_tensor(shift, dtype=torch.float64).reshape(1, -1)
    gain = torch.as_tensor(gain, dtype=torch.float64)
    return gain, scale * torch.as_tensor(bias, dtype=torch.float64) + shift - gain * shift


def unnormalized(y, scale, shift, channels=slice(None)):
    """The unnormalised coefficients ``(y - shift) / scale`` of the normalised batch ``y`` (N, C, H8, W8)
    restricted to ``channels`` (a slice of the 192; ``scale``/``shift`` (192,) tensors), float64."""
    import torch

    s = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)[channels]
    t = torch.as_tensor(shift, dtype=torch.float64).reshape(-1)[channels]
    return (y[:, channels].to(torch.float64) - t[:, None, None]) / s[:, None, None]


def normalized_value(coefficients, scale, shift):
    """The normalised value ``scale * c + shift`` of fixed coefficients ``c`` (192,) (e.g. a fill colour), float64."""
    import torch

    return (torch.as_tensor(scale, dtype=torch.float64).reshape(-1) * torch.as_tensor(coefficients, dtype=torch.float64)
            + torch.as_tensor(shift, dtype=torch.float64).reshape(-1))
