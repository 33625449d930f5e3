"""FUN models (Frequency-domain Utilization Networks) and the RGB baselines they are compared with.

Imported as ``funloader.models``::

    from funloader.models import create_model, list_models, select_input_channels
    model = create_model("efun")                 # (N, 192, 28, 28) DCT input -> (N, 1000) logits
    small = select_input_channels(model, "44/10/10")   # takes x[:, channel_indices("44/10/10")]

See ``models/README.md`` for the families, their stage tables and measured speeds.
"""
from funloader.channels import channel_indices, channel_mask, parse_keep

from .compression import select_input_channels
from .efficientnet import MBCONV_SPECS, MBConvNet, MBConvNetSpec, MBStage
from .layers import BasicBlock, Bottleneck, DropPath, MBConv, SqueezeExcite, make_divisible
from .lefun import LeFUN, jpeg_dct_basis, jpeg_dct_weight
from .registry import ModelInfo, create_model, list_models, model_info
from .resnet import RESNET_SPECS, ResNet, ResNetSpec, ResStage

__all__ = [
    "create_model", "list_models", "model_info", "ModelInfo", "select_input_channels",
    "channel_indices", "channel_mask", "parse_keep",
    "MBConvNet", "MBConvNetSpec", "MBStage", "MBCONV_SPECS", "ResNet", "ResNetSpec", "ResStage", "RESNET_SPECS",
    "LeFUN", "jpeg_dct_basis", "jpeg_dct_weight",
    "MBConv", "Bottleneck", "BasicBlock", "SqueezeExcite", "DropPath", "make_divisible",
]
