"""Residual networks: ResFUN (paper Table 1) and the RGB ResNet-18/34/50 baselines.

One :class:`ResNet` builder reads a :class:`ResNetSpec`: a stem, a table of :class:`ResStage`
rows of basic or bottleneck blocks, global average pooling, dropout and a Linear classifier.

ResFUN is ResNet-50 without conv1, the max-pool and conv2_x: a BatchNorm on the 192 DCT input
channels takes their place, then bottleneck stages of widths 512/768/1024 (not 512/1024/2048).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from .layers import ClassifierNet, BasicBlock, Bottleneck, init_resnet_weights

__all__ = ["ResStage", "ResNetSpec", "ResNet", "RESNET_SPECS"]


@dataclass(frozen=True)
class ResStage:
    """``repeats`` residual blocks of output width ``out_channels``; ``stride`` on the first block."""

    out_channels: int
    repeats: int
    stride: int


@dataclass(frozen=True)
class ResNetSpec:
    """``block``: "basic" or "bottleneck". ``stem``: "rgb" (7x7/2 conv 64 + BN + ReLU + 3x3/2 max-pool)
    or "input_bn" (a BatchNorm over the input channels, ResFUN)."""

    block: str
    stages: Tuple[ResStage, ...]
    stem: str = "rgb"
    in_channels: int = 3
    stem_channels: int = 64
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0


class ResNet(ClassifierNet):
    """ResNet classifier. ``(N, in_channels, H, W)`` float -> ``(N, num_classes)`` logits.

    ResFUN takes ``(N, 192, 28, 28)`` and ends at 7x7; RGB ResNets take ``(N, 3, 224, 224)``.
    """

    def __init__(self, spec: ResNetSpec, num_classes: int = 1000, in_channels: Optional[int] = None,
                 drop_rate: Optional[float] = None, drop_path_rate: Optional[float] = None):
        super().__init__()
        if spec.block not in ("basic", "bottleneck"):
            raise ValueError(f"unknown residual block {spec.block!r}")
        self._set_options(spec, in_channels, drop_rate, drop_path_rate)
        in_channels = self.in_channels
        if spec.stem == "rgb":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, spec.stem_channels, 7, 2, 3, bias=False),
                nn.BatchNorm2d(spec.stem_channels), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            width = spec.stem_channels
        elif spec.stem == "input_bn":
            self.stem = nn.BatchNorm2d(in_channels)
            width = in_channels
        else:
            raise ValueError(f"unknown stem {spec.stem!r}")
        block_type = BasicBlock if spec.block == "basic" else Bottleneck
        width = self._build_stages(width, lambda stage, in_width, stride, drop_path: block_type(
            in_width, stage.out_channels, stride=stride, drop_path=drop_path))
        self._build_head(width, num_classes)
        init_resnet_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, num_features, H', W')`` feature map before pooling."""
        return self.blocks(self.stem(x))


def _stages(*rows) -> Tuple[ResStage, ...]:
    return tuple(ResStage(*row) for row in rows)


#: Stage tables (rows: out_channels, repeats, stride).
RESNET_SPECS = {
    "resfun": ResNetSpec("bottleneck", _stages((512, 4, 1), (768, 6, 2), (1024, 3, 2)),
                         stem="input_bn", in_channels=192),
    "resnet18": ResNetSpec("basic", _stages((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))),
    "resnet34": ResNetSpec("basic", _stages((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))),
    "resnet50": ResNetSpec("bottleneck", _stages((256, 3, 1), (512, 4, 2), (1024, 6, 2), (2048, 3, 2))),
}
