"""MBConv networks: the eFUN family, its ablation variants, EfficientNet-B0/B1 and MobileNetV2.

Every network here is one :class:`MBConvNet` built from a :class:`MBConvNetSpec`: an optional
stem (RGB baselines only; FUN models have none, the first MBConv takes the 192 DCT channels
directly), a table of :class:`MBStage` rows, and a head (1x1 conv to ``num_features``, BN, act,
global average pool, dropout, Linear).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch
from torch import nn

from .layers import ClassifierNet, ConvBNAct, MBConv, init_efficientnet_weights

__all__ = ["MBStage", "MBConvNetSpec", "MBConvNet", "MBCONV_SPECS"]

_ACTIVATIONS = {"silu": nn.SiLU, "relu6": nn.ReLU6, "relu": nn.ReLU}


@dataclass(frozen=True)
class MBStage:
    """One stage row: ``repeats`` MBConv blocks; ``stride`` applies to the first block only."""

    kernel: int
    expansion: float
    stride: int
    out_channels: int
    repeats: int
    se_ratio: float = 0.25


@dataclass(frozen=True)
class MBConvNetSpec:
    """A whole MBConv network.

    ``stem_channels``: None for FUN models (no stem), else a 3x3 stride-2 conv + BN + act to that width.
    ``drop_rate`` is the dropout before the classifier, ``drop_path_rate`` the stochastic-depth
    probability of the last block (block ``i`` of ``n`` gets ``drop_path_rate * i / n``).
    """

    stages: Tuple[MBStage, ...]
    head_channels: int
    stem_channels: Optional[int] = None
    activation: str = "silu"
    drop_rate: float = 0.2
    drop_path_rate: float = 0.2
    in_channels: int = 192

    def scaled_depth(self, multiplier: float) -> "MBConvNetSpec":
        """EfficientNet compound-scaling depth: ``ceil(repeats * multiplier)`` per stage."""
        import math

        stages = tuple(replace(s, repeats=int(math.ceil(s.repeats * multiplier))) for s in self.stages)
        return replace(self, stages=stages)


class MBConvNet(ClassifierNet):
    """MBConv classifier. ``(N, in_channels, H, W)`` float -> ``(N, num_classes)`` logits.

    FUN models take ``(N, 192, 28, 28)`` (``channel = 64*component + 8*v + u``) and end at 14x14
    (eFUN) or 7x7 (variants); RGB models take ``(N, 3, 224, 224)``.
    """

    def __init__(self, spec: MBConvNetSpec, num_classes: int = 1000, in_channels: Optional[int] = None,
                 drop_rate: Optional[float] = None, drop_path_rate: Optional[float] = None):
        super().__init__()
        self._set_options(spec, in_channels, drop_rate, drop_path_rate)
        in_channels = self.in_channels
        act_layer = _ACTIVATIONS[spec.activation]

        if spec.stem_channels is None:
            self.stem = nn.Identity()
            width = in_channels
        else:
            self.stem = ConvBNAct(in_channels, spec.stem_channels, 3, 2, act_layer=act_layer)
            width = spec.stem_channels

        width = self._build_stages(width, lambda stage, in_width, stride, drop_path: MBConv(
            in_width, stage.out_channels, kernel_size=stage.kernel, stride=stride, expansion=stage.expansion,
            se_ratio=stage.se_ratio, drop_path=drop_path, act_layer=act_layer))
        self.head = ConvBNAct(width, spec.head_channels, 1, act_layer=act_layer)
        self._build_head(spec.head_channels, num_classes)
        init_efficientnet_weights(self)

    def init_classifier(self, classifier: nn.Module) -> None:
        init_efficientnet_weights(classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, num_features, H', W')`` feature map before pooling."""
        return self.head(self.blocks(self.stem(x)))


def _stages(*rows) -> Tuple[MBStage, ...]:
    return tuple(MBStage(*row) for row in rows)


_EFFICIENTNET_B0 = MBConvNetSpec(
    stages=_stages((3, 1, 1, 16, 1), (3, 6, 2, 24, 2), (5, 6, 2, 40, 2), (3, 6, 2, 80, 3),
                   (5, 6, 1, 112, 3), (5, 6, 2, 192, 4), (3, 6, 1, 320, 1)),
    head_channels=1280, stem_channels=32, in_channels=3, drop_rate=0.2, drop_path_rate=0.2)

#: Stage tables of every MBConv model (rows: kernel, expansion, stride, out_channels, repeats).
MBCONV_SPECS = {
    # eFUN family (models.md; the authors' released configurations). No stem, input 192x28x28.
    "efun_s_plus": MBConvNetSpec(_stages((5, 4, 1, 96, 3), (5, 4, 2, 120, 4), (3, 6, 1, 192, 1)),
                                 head_channels=960, drop_rate=0.2, drop_path_rate=0.2),
    "efun_s": MBConvNetSpec(_stages((5, 3, 1, 120, 3), (5, 4, 2, 144, 5), (3, 5, 1, 192, 1)),
                            head_channels=1280, drop_rate=0.2, drop_path_rate=0.2),
    "efun": MBConvNetSpec(_stages((5, 4, 1, 128, 3), (5, 4, 2, 160, 6), (3, 6, 1, 192, 1)),
                          head_channels=1280, drop_rate=0.2, drop_path_rate=0.2),
    "efun_l": MBConvNetSpec(_stages((5, 4, 1, 144, 3), (5, 5, 1, 184, 2), (5, 4, 2, 184, 5), (3, 6, 1, 216, 2)),
                            head_channels=1280, drop_rate=0.3, drop_path_rate=0.3),
    # Ablations (paper Tables 4 and 5): EfficientNet-B0 stages fed the DCT directly.
    "efun_variant_a": MBConvNetSpec(
        _stages((3, 1, 1, 16, 1), (3, 6, 1, 24, 2), (5, 6, 1, 40, 2), (3, 6, 2, 80, 3),
                (5, 6, 1, 112, 3), (5, 6, 2, 192, 4), (3, 6, 1, 320, 1)),
        head_channels=1280, drop_rate=0.2, drop_path_rate=0.2),
    "efun_variant_b": MBConvNetSpec(
        _stages((3, 6, 2, 80, 3), (5, 6, 1, 112, 3), (5, 6, 2, 192, 4), (3, 6, 1, 320, 1)),
        head_channels=1280, drop_rate=0.2, drop_path_rate=0.2),
    # Tiny FUN network for fast CPU tests: same block types, 192 input channels, < 100k parameters.
    "fun_test": MBConvNetSpec(_stages((3, 1, 1, 16, 1), (3, 4, 2, 24, 2)),
                              head_channels=32, drop_rate=0.2, drop_path_rate=0.2),
    # Small FUN network for quick CPU training runs: like fun_test, but its first block expands, so
    # that select_input_channels (Table 7's pruned first layer) applies to it.
    "fun_small": MBConvNetSpec(_stages((3, 2, 1, 32, 1), (3, 4, 2, 48, 2)),
                               head_channels=128, drop_rate=0.2, drop_path_rate=0.1),
    # RGB baselines (timm definitions; input 3x224x224).
    "efficientnet_b0": _EFFICIENTNET_B0,
    "efficientnet_b1": _EFFICIENTNET_B0.scaled_depth(1.1),
    "mobilenetv2_100": MBConvNetSpec(
        _stages((3, 1, 1, 16, 1, 0.0), (3, 6, 2, 24, 2, 0.0), (3, 6, 2, 32, 3, 0.0), (3, 6, 2, 64, 4, 0.0),
                (3, 6, 1, 96, 3, 0.0), (3, 6, 2, 160, 3, 0.0), (3, 6, 1, 320, 1, 0.0)),
        head_channels=1280, stem_channels=32, activation="relu6", in_channels=3, drop_rate=0.2,
        drop_path_rate=0.0),
}
