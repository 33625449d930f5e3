"""Model registry: :func:`create_model` and :func:`list_models`.

Every model carries ``model.default_cfg``, a dict with:

* ``name``, ``family`` ("fun" or "rgb"), ``input`` ("dct": ``(192, 28, 28)`` FUN channels,
  "rgb", or "ycbcr": a ``[0, 255]`` YCbCr image for LeFUN), ``input_size`` ``(C, H, W)``;
* ``reference_params`` / ``reference_mmacs``: exact counts from ``shared/design/models.md``
  (multiply-adds = ``FlopCounterMode`` total / 2 at ``input_size``, batch 1);
* ``paper_top1`` (ImageNet top-1 %, None when the paper does not report it), ``paper_params_m``,
  ``paper_images_per_s`` (V100, batch 1, paper Tables 1/2), ``paper_mflops`` (Table 2);
* ``drop_rate``, ``drop_path_rate`` actually used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from torch import nn

from .efficientnet import MBCONV_SPECS, MBConvNet
from .lefun import LeFUN
from .resnet import RESNET_SPECS, ResNet

__all__ = ["create_model", "list_models", "model_info", "ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a registered model (see the module docstring for the fields)."""

    family: str
    input: str
    input_size: tuple
    reference_params: int
    reference_mmacs: Optional[float]
    paper_top1: Optional[float] = None
    paper_params_m: Optional[float] = None
    paper_images_per_s: Optional[float] = None
    paper_mflops: Optional[float] = None


_DCT = (192, 28, 28)
_RGB = (3, 224, 224)

_INFO: Dict[str, ModelInfo] = {
    "resfun": ModelInfo("fun", "dct", _DCT, 10_398_056, 2009.7, 72.8, 10.4, 167),
    "efun_s_plus": ModelInfo("fun", "dct", _DCT, 2_540_728, 516.4, 73.3, 2.5, 145, 520),
    "efun_s": ModelInfo("fun", "dct", _DCT, 3_394_390, 602.7, 75.6, 3.4, 132, 600),
    "efun": ModelInfo("fun", "dct", _DCT, 4_233_448, 837.5, 77.0, 4.2, 124, 850),
    "efun_l": ModelInfo("fun", "dct", _DCT, 6_209_180, 1602.7, 78.8, 6.2, 101, 1600),
    "efun_variant_a": ModelInfo("fun", "dct", _DCT, 5_310_060, 315.8, 75.0, 5.3),
    "efun_variant_b": ModelInfo("fun", "dct", _DCT, 5_625_960, 454.0, 74.9, 5.6),
    "lefun": ModelInfo("fun", "ycbcr", _RGB, 4_270_312, None, 72.8, 4.3),
    "lefun_e2e": ModelInfo("fun", "ycbcr", _RGB, 4_270_312, None, 77.2, 4.3),
    # Not in models.md: the tiny test network (its count is pinned by tests/test_models.py).
    "fun_test": ModelInfo("fun", "dct", _DCT, 68_898, None),
    # Not in models.md: the small network of funloader train's CPU learning check.
    "fun_small": ModelInfo("fun", "dct", _DCT, 303_788, None),
    "efficientnet_b0": ModelInfo("rgb", "rgb", _RGB, 5_288_548, 385.8, 77.4, 5.3, 77, 400),
    # timm's EfficientNet-B1 runs at 240x240 (models.md's 686.8 MMACs are at 240).
    "efficientnet_b1": ModelInfo("rgb", "rgb", (3, 240, 240), 7_794_184, 686.8, 79.3, 7.8, 56, 700),
    "mobilenetv2_100": ModelInfo("rgb", "rgb", _RGB, 3_504_872, 300.8, 73.0, 3.5, 148, 300),
    "resnet18": ModelInfo("rgb", "rgb", _RGB, 11_689_512, 1814.1, 69.8, 11.7, 330),
    "resnet34": ModelInfo("rgb", "rgb", _RGB, 21_797_672, 3663.8, 73.3, 21.8, 180),
    # ResNet-50 is not in the paper's tables.
    "resnet50": ModelInfo("rgb", "rgb", _RGB, 25_557_032, 4089.2),
}


def list_models(family: Optional[str] = None) -> List[str]:
    """Registered model names (optionally only ``family`` "fun" or "rgb"), in registry order."""
    if family not in (None, "fun", "rgb"):
        raise ValueError(f"family must be None, 'fun' or 'rgb', got {family!r}")
    return [name for name, info in _INFO.items() if family is None or info.family == family]


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model."""
    try:
        return _INFO[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def _build_lefun(name: str, num_classes: int, in_channels: Optional[int], drop_rate, drop_path_rate,
                 backbone: Optional[MBConvNet] = None, dct_init: bool = True, level_shift: float = 128.0) -> LeFUN:
    if in_channels not in (None, 3):
        raise ValueError(f"{name} takes a 3-channel YCbCr image, got in_channels={in_channels}")
    if backbone is None:
        backbone = MBConvNet(MBCONV_SPECS["efun"], num_classes=num_classes, drop_rate=drop_rate,
                             drop_path_rate=drop_path_rate)
    elif backbone.num_classes != num_classes:
        backbone.reset_classifier(num_classes)
    return LeFUN(backbone, freeze_backbone=(name == "lefun"), dct_init=dct_init, level_shift=level_shift)


def create_model(name: str, *, num_classes: int = 1000, in_channels: Optional[int] = None,
                 drop_rate: Optional[float] = None, drop_path_rate: Optional[float] = None, **kwargs) -> nn.Module:
    """Build a registered model with fresh (EfficientNet-style / ResNet-style) weights.

    ``in_channels``: None = the model's natural input (192 DCT channels for FUN models, 3 for RGB
    baselines and LeFUN's YCbCr image); FUN models accept fewer (e.g. 64 for a ``"44/10/10"``
    input, the first block then being built for it, as in Table 7).
    ``drop_rate`` (dropout before the classifier) / ``drop_path_rate`` (stochastic depth of the
    last block): None = the paper's defaults (eFUN S+/S/base 0.2/0.2, L 0.3/0.3; EfficientNets 0.2/0.2).
    ``kwargs``: LeFUN only: ``backbone`` (a trained eFUN to wrap), ``dct_init`` (default True),
    ``level_shift`` (default 128).
    """
    info = model_info(name)
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if name in ("lefun", "lefun_e2e"):
        model = _build_lefun(name, num_classes, in_channels, drop_rate, drop_path_rate, **kwargs)
        drop_rate, drop_path_rate = model.backbone.drop_rate, model.backbone.drop_path_rate
    else:
        if kwargs:
            raise TypeError(f"create_model({name!r}): unexpected arguments {sorted(kwargs)}")
        if name in MBCONV_SPECS:
            model = MBConvNet(MBCONV_SPECS[name], num_classes, in_channels, drop_rate, drop_path_rate)
        else:
            model = ResNet(RESNET_SPECS[name], num_classes, in_channels, drop_rate, drop_path_rate)
        drop_rate, drop_path_rate = model.drop_rate, model.drop_path_rate
    input_size = info.input_size
    if in_channels is not None:
        input_size = (int(in_channels),) + tuple(input_size[1:])
    model.default_cfg = {
        "name": name, "family": info.family, "input": info.input, "input_size": input_size,
        "num_classes": num_classes, "reference_params": info.reference_params,
        "reference_mmacs": info.reference_mmacs, "paper_top1": info.paper_top1,
        "paper_params_m": info.paper_params_m, "paper_images_per_s": info.paper_images_per_s,
        "paper_mflops": info.paper_mflops, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate,
    }
    return model

