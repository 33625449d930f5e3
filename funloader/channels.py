"""Frequency channels of the FUN input and the ``"Y/Cb/Cr"`` keep-specs of input compression.

The FUN input has 192 channels: ``channel = 64 * component + 8 * v + u`` (component 0=Y, 1=Cb,
2=Cr; v vertical, u horizontal frequency; natural, not zigzag, order). Input compression (paper
Section 4.5, Table 7) keeps the lowest ``k`` frequencies of each component in JPEG zigzag order,
e.g. ``"44/10/10"`` keeps 44 Y, 10 Cb and 10 Cr channels (64 in all).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np

#: JPEG zigzag scan: ZIGZAG[i] is the natural index ``8*v + u`` of the i-th coefficient in zigzag order.
ZIGZAG: Tuple[int, ...] = (
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
)

KeepSpec = Union[str, Sequence[int], None]


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
