"""LeFUN (paper Section 4.6, Table 8): a learnable 8x8/stride-8 transform in front of eFUN.

Input: a YCbCr image ``(N, 3, H, W)`` float with samples in ``[0, 255]`` (JPEG/JFIF full-range
YCbCr, ``H`` and ``W`` multiples of 8, 224x224 in the paper). The module first subtracts the JPEG
level shift (``level_shift``, 128 by default; a fixed constant, not a parameter) from every sample,
exactly as a JPEG encoder does before its forward DCT, then applies ``transform``, a bias-free
``Conv2d(3, 192, kernel_size=8, stride=8)`` (36,864 weights) giving ``(N, 192, H/8, W/8)``, which is
fed to the eFUN backbone. Because the shift happens before the conv, the conv needs no bias to
reproduce the JPEG DC coefficient (DC = 8 * mean(block - 128)).

DCT initialisation (:func:`jpeg_dct_weight`): output channel ``64*c + 8*v + u`` is the
orthonormal 8x8 DCT-II basis function of vertical frequency ``v`` and horizontal frequency ``u``
applied to input component ``c`` (zero weights on the other two components). This is the JPEG
forward DCT exactly: ``F(v,u) = 1/4 C(v) C(u) sum_{y,x} f(y,x) cos((2y+1)v pi/16) cos((2x+1)u pi/16)``
with ``C(0) = 1/sqrt(2)``, ``C(k>0) = 1`` (which equals the orthonormal DCT-II), before quantization;
i.e. the coefficients of a quality-100 JPEG (all quantization steps 1) without rounding, or
``funloader.read_fun(..., dequantize=True)`` up to quantization error.

Chroma choice: the conv computes the chroma DCT on the full-resolution grid (one 8x8 chroma block
per 8x8 luma block), which is what a 4:4:4 JPEG stores. A 4:2:0 JPEG (the paper's pipeline) instead
takes the DCT of 2x-downsampled chroma, one block per 16x16 pixels, replicated onto the luma grid by
the loader; that cannot be written as an 8x8 stride-8 conv, so the DCT-initialised LeFUN matches
eFUN's input exactly for 4:4:4 images only (the learnt conv is free to approximate either).

``lefun``: the eFUN backbone is frozen (``requires_grad=False``, its BatchNorms and dropout kept in
eval mode even under ``model.train()``); only ``transform`` (and a classifier replaced by
:meth:`LeFUN.reset_classifier`) trains. ``lefun_e2e``: everything trains.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .efficientnet import MBConvNet

__all__ = ["LeFUN", "jpeg_dct_basis", "jpeg_dct_weight"]


def jpeg_dct_basis(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 64 JPEG DCT basis functions as a ``(64, 8, 8)`` tensor, index ``[8*v + u, y, x]``.

    ``basis[8v+u, y, x] = a(v) a(u) cos((2y+1) v pi / 16) cos((2x+1) u pi / 16)``,
    ``a(0) = sqrt(1/8)``, ``a(k) = 1/2``: orthonormal, so ``coefficients = basis . block``.
    """
    k = torch.arange(8, dtype=torch.float64)
    scale = torch.full((8,), 0.5, dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / 8.0)
    # cosines[freq, position]
    cosines = scale[:, None] * torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16)
    basis = cosines[:, None, :, None] * cosines[None, :, None, :]  # (v, u, y, x)
    return basis.reshape(64, 8, 8).to(dtype)


def jpeg_dct_weight(channel_scale: Optional[Sequence[float]] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(192, 3, 8, 8)`` conv weight computing the JPEG DCT of each YCbCr component (4:4:4 grid).

    ``channel_scale``: optional ``(192,)`` per-output-channel factor folded into the weights (e.g.
    ``1 / qtable`` to emit quantization-step units, or ``1 / std`` of the training statistics).
    """
    basis = jpeg_dct_basis(torch.float64)
    weight = torch.zeros(192, 3, 8, 8, dtype=torch.float64)
    for component in range(3):
        weight[64 * component:64 * (component + 1), component] = basis
    if channel_scale is not None:
        scale = torch.as_tensor(channel_scale, dtype=torch.float64).reshape(-1)
        if scale.numel() != 192:
            raise ValueError(f"channel_scale must have 192 entries, got {scale.numel()}")
        weight = weight * scale[:, None, None, None]
    return weight.to(dtype)


class LeFUN(nn.Module):
    """Learnable 8x8 transform + eFUN. ``(N, 3, H, W)`` YCbCr in [0, 255] -> ``(N, num_classes)``.

    ``backbone``: an eFUN :class:`MBConvNet` taking 192 channels (e.g. a trained one).
    ``freeze_backbone``: True for LeFUN, False for LeFUN-e2e. ``dct_init``: start ``transform``
    from the exact JPEG DCT (else EfficientNet-style random init).
    """

    def __init__(self, backbone: MBConvNet, *, freeze_backbone: bool, dct_init: bool = True,
                 level_shift: float = 128.0):
        super().__init__()
        if backbone.in_channels != 192:
            raise ValueError(f"LeFUN needs a backbone taking 192 channels, got {backbone.in_channels}")
        self.in_channels = 3
        self.level_shift = float(level_shift)
        self.freeze_backbone = bool(freeze_backbone)
        self.transform = nn.Conv2d(3, 192, kernel_size=8, stride=8, bias=False)
        self.backbone = backbone
        self.num_features = backbone.num_features
        if dct_init:
            self.init_dct()
        else:
            fan_out = 8 * 8 * 192
            nn.init.normal_(self.transform.weight, 0.0, math.sqrt(2.0 / fan_out))
        if self.freeze_backbone:
            for parameter in self.backbone.parameters():
                parameter.requires_grad_(False)
            self.backbone.eval()

    @torch.no_grad()
    def init_dct(self, channel_scale: Optional[Sequence[float]] = None) -> None:
        """Set ``transform`` to the JPEG DCT (see :func:`jpeg_dct_weight`)."""
        self.transform.weight.copy_(jpeg_dct_weight(channel_scale, self.transform.weight.dtype))

    def train(self, mode: bool = True) -> "LeFUN":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
            # A classifier replaced for fine-tuning stays trainable and follows ``mode``.
            self.backbone.classifier.train(mode)
        return self

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (kept trainable even when the backbone is frozen)."""
        self.backbone.reset_classifier(num_classes)

    def forward_transform(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` YCbCr [0, 255] -> ``(N, 192, H/8, W/8)`` DCT-like coefficients."""
        return self.transform(x - self.level_shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.forward_transform(x))
