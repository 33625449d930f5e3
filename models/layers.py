"""Building blocks shared by every model family: MBConv, residual blocks, squeeze-excite, drop-path.

All tensors are ``(N, C, H, W)`` float (any float dtype; channels_last memory format works).
Convolutions are bias-free and followed by BatchNorm (eps 1e-5, PyTorch's default: a documented
choice; TF EfficientNets use 1e-3, which does not change parameter counts). Only the
squeeze-excite convolutions carry a bias.
"""
from __future__ import annotations

import math
from typing import Optional, Type

import torch
from torch import nn

__all__ = [
    "make_divisible", "DropPath", "SqueezeExcite", "ConvBNAct", "MBConv", "BasicBlock", "Bottleneck",
    "init_efficientnet_weights", "init_resnet_weights",
]


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Round a channel count to a multiple of ``divisor`` like EfficientNet/MobileNet do.

    Never rounds down by more than 10% (140 -> 144, 180 -> 184, 352 -> 352).
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ClassifierNet(nn.Module):
    """Shared frame of every network here: options resolved against the spec, stages of blocks with
    linearly growing drop-path, ``forward_features`` (defined by the subclass), then global average
    pooling, dropout and the ``classifier`` (attributes ``pool``, ``dropout``, ``classifier``)."""

    def _set_options(self, spec, in_channels: Optional[int], drop_rate: Optional[float],
                     drop_path_rate: Optional[float]) -> None:
        """``spec``'s defaults for the options left as None; sets ``spec``, ``in_channels``,
        ``drop_rate`` and ``drop_path_rate``."""
        in_channels = spec.in_channels if in_channels is None else int(in_channels)
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        self.spec = spec
        self.in_channels = in_channels
        self.drop_rate = spec.drop_rate if drop_rate is None else float(drop_rate)
        self.drop_path_rate = spec.drop_path_rate if drop_path_rate is None else float(drop_path_rate)

    def _build_stages(self, width: int, make_block) -> int:
        """``self.blocks``: one ``nn.Sequential`` per row of ``self.spec.stages`` (fields ``repeats``,
        ``out_channels``, ``stride``) of ``make_block(stage, in_width, stride, drop_path)``; the stride
        goes to each stage's first block, drop-path grows linearly from 0 over all blocks. Returns the
        output width."""
        total_blocks = sum(stage.repeats for stage in self.spec.stages)
        block_index = 0
        stages = []
        for stage in self.spec.stages:
            blocks = []
            for repeat in range(stage.repeats):
                blocks.append(make_block(stage, width, stage.stride if repeat == 0 else 1,
                                         self.drop_path_rate * block_index / total_blocks))
                width = stage.out_channels
                block_index += 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        return width

    def _build_head(self, num_features: int, num_classes: int) -> None:
        """Pooling, dropout (``self.drop_rate``) and a Linear classifier over ``num_features``."""
        self.num_features = num_features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.drop_rate)
        self.num_classes = num_classes
        self.classifier = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def init_classifier(self, classifier: nn.Module) -> None:
        """Initialise a new classifier (default: PyTorch's own Linear initialisation)."""

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final Linear by a freshly initialised one with ``num_classes`` outputs (0: features)."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_classifier(self.classifier)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pool, dropout and classify ``(N, num_features, H', W')`` -> ``(N, num_classes)``."""
        return self.classifier(self.dropout(torch.flatten(self.pool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero whole samples of a residual branch with probability ``p``.

    Kept samples are scaled by ``1 / (1 - p)`` so the expectation is unchanged; identity in eval mode.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average pool, 1x1 reduce (bias) + act, 1x1 expand (bias), sigmoid gate.

    ``channels`` is the width being gated, ``reduced`` the bottleneck width (EfficientNet uses
    ``int(0.25 * block_input_channels)``).
    """

    def __init__(self, channels: int, reduced: int, act_layer: Type[nn.Module] = nn.SiLU):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.conv_expand(self.act(self.conv_reduce(scale)))
        return x * torch.sigmoid(scale)


class ConvBNAct(nn.Sequential):
    """``kxk`` conv (no bias, 'same' padding for odd k), BatchNorm, optional activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, act_layer: Optional[Type[nn.Module]] = nn.SiLU):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2 / EfficientNet "MBConv").

    ``(N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)``:
    1x1 expand to ``make_divisible(expansion * in_channels)`` + BN + act (skipped when expansion == 1),
    ``kernel_size`` depthwise conv (stride) + BN + act, squeeze-excite with
    ``int(se_ratio * in_channels)`` reduced channels (skipped when se_ratio == 0), 1x1 project + BN
    (no activation), and a residual connection through :class:`DropPath` when ``stride == 1`` and
    ``in_channels == out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1,
                 expansion: float = 6.0, se_ratio: float = 0.25, drop_path: float = 0.0,
                 act_layer: Type[nn.Module] = nn.SiLU, mid_channels: Optional[int] = None,
                 se_channels: Optional[int] = None):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size, self.expansion, self.se_ratio = kernel_size, expansion, se_ratio
        if mid_channels is None:
            mid_channels = in_channels if expansion == 1 else make_divisible(expansion * in_channels)
        if se_channels is None:
            se_channels = int(se_ratio * in_channels) if se_ratio > 0 else 0
        self.mid_channels = mid_channels
        if expansion == 1 and mid_channels == in_channels:
            self.expand = nn.Identity()
        else:
            self.expand = ConvBNAct(in_channels, mid_channels, 1, act_layer=act_layer)
        self.depthwise = ConvBNAct(mid_channels, mid_channels, kernel_size, stride, groups=mid_channels, act_layer=act_layer)
        self.se = SqueezeExcite(mid_channels, se_channels, nn.SiLU) if se_channels > 0 else nn.Identity()
        self.project = ConvBNAct(mid_channels, out_channels, 1, act_layer=None)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path) if self.has_residual and drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.has_residual:
            out = self.drop_path(out) + x
        return out


class BasicBlock(nn.Module):
    """ResNet basic block: 3x3 conv (stride) + BN + ReLU, 3x3 conv + BN, residual, ReLU.

    ``(N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)``; a 1x1 strided conv + BN
    projects the shortcut when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, stride, act_layer=nn.ReLU)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, act_layer=None)
        self.shortcut = (ConvBNAct(in_channels, out_channels, 1, stride, act_layer=None)
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop_path(self.conv2(self.conv1(x))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck (v1.5: the stride sits on the 3x3 conv).

    ``(N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)``: 1x1 to ``out_channels // 4``
    + BN + ReLU, 3x3 (stride) + BN + ReLU, 1x1 to ``out_channels`` + BN, residual (1x1 strided conv +
    BN projection when the shape changes), ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, drop_path: float = 0.0,
                 bottleneck_ratio: int = 4):
        super().__init__()
        inner = out_channels // bottleneck_ratio
        self.conv1 = ConvBNAct(in_channels, inner, 1, act_layer=nn.ReLU)
        self.conv2 = ConvBNAct(inner, inner, 3, stride, act_layer=nn.ReLU)
        self.conv3 = ConvBNAct(inner, out_channels, 1, act_layer=None)
        self.shortcut = (ConvBNAct(in_channels, out_channels, 1, stride, act_layer=None)
                         if stride != 1 or in_channels != out_channels else nn.Identity())
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop_path(self.conv3(self.conv2(self.conv1(x)))) + self.shortcut(x))


def init_efficientnet_weights(module: nn.Module) -> None:
    """EfficientNet (TF reference) init: convs normal(0, sqrt(2 / fan_out)) with
    ``fan_out = k*k*out/groups``, conv biases 0, BN weight 1 / bias 0, Linear uniform(+-1/sqrt(out))."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            fan_out = layer.kernel_size[0] * layer.kernel_size[1] * layer.out_channels // layer.groups
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / fan_out))
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            bound = 1.0 / math.sqrt(layer.weight.shape[0])
            nn.init.uniform_(layer.weight, -bound, bound)
            nn.init.zeros_(layer.bias)


def init_resnet_weights(module: nn.Module, zero_init_last_bn: bool = True) -> None:
    """ResNet init: convs Kaiming-normal (fan_out, ReLU), BN 1/0, Linear default; optionally zero the
    last BN gamma of each residual branch so every block starts as the identity."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    if zero_init_last_bn:
        for layer in module.modules():
            if isinstance(layer, Bottleneck):
                nn.init.zeros_(layer.conv3.bn.weight)
            elif isinstance(layer, BasicBlock):
                nn.init.zeros_(layer.conv2.bn.weight)

