"""``DCTTransform``, the base class of every DCT-domain transform (``funloader.transforms`` and the
augmentation modules ``color``, ``geometry``, ``autoaugment`` build on it; kept apart so that those
modules and ``transforms``, which re-exports them, import in any order)."""
from __future__ import annotations

from typing import Optional

import torch


class DCTTransform:
    """Base class: ``transform(x, generator=None)`` on ``(C, H8, W8)`` or ``(N, C, H8, W8)``.

    ``integer_exact``: True when the transform only moves, negates or zeroes coefficients, so it can
    run on raw int16 coefficients (half the memory traffic) with the same result as on floats."""

    integer_exact = False

    def __call__(self, x, generator: Optional[torch.Generator] = None):
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"
