"""Input compression (paper Section 4.5, Table 7): run a trained FUN model on fewer DCT channels.

The paper zeroes the dropped channels at inference. :func:`select_input_channels` instead returns
a model that takes only the kept channels, in the order of
``funloader.channels.channel_indices(keep)`` (ascending channel index), so the loader can drop them
before they ever reach the GPU:

* ``mode="slice"`` (default, exact): the first layer keeps only the weights of the kept input
  channels and everything else is shared. Its logits on ``x[:, channel_indices(keep)]`` equal the
  full model's logits on ``x`` with the dropped channels zeroed (in eval mode, to float rounding).
  For eFUN the first layer is the first block's 1x1 expand conv, so each dropped channel saves
  ``mid`` weights (768 for eFUN): 192 -> 64 channels gives 4,135,144 parameters.
* ``mode="rebuild"``: the architecture of Table 7's parameter column, whose first MBConv is rebuilt
  for ``k`` input channels (expand width ``make_divisible(e * k)``, squeeze-excite
  ``int(0.25 * k)``): 192/88/64/48/24 channels give 4,233,448 / 3,992,974 / 3,955,912 /
  3,935,044 / 3,909,502 parameters (paper: 4.23/3.99/3.96/3.93/3.91M). It reuses the trained weights
  of the kept inputs and of the expanded (and squeeze-excite) channels with the largest L1 weight
  norm; this is structured pruning, not exact, and usually wants fine-tuning.

ResFUN's first layer is a BatchNorm over the inputs; a zeroed channel leaves it as a constant, which
the slice mode folds into the running means of the next BatchNorms (exact in eval mode).
"""
from __future__ import annotations

import copy
from typing import List

import torch
from torch import nn

from funloader.channels import KeepSpec, channel_indices

from .efficientnet import MBConvNet
from .layers import Bottleneck, ConvBNAct, MBConv
from .lefun import LeFUN
from .resnet import ResNet

__all__ = ["select_input_channels"]


def select_input_channels(model: nn.Module, keep: KeepSpec = "44/10/10", *, mode: str = "slice") -> nn.Module:
    """Return a copy of ``model`` whose input is only the channels kept by ``keep``.

    ``model``: a FUN MBConvNet whose first block has an expand conv (the eFUN family and
    efun_variant_b; not efun_variant_a or fun_test, whose first block has expansion 1) or ResFUN,
    taking 192 channels.
    ``keep``: ``"Y/Cb/Cr"`` counts, e.g. ``"44/10/10"`` (see :func:`funloader.channels.parse_keep`).
    The result takes ``(N, len(channel_indices(keep)), H, W)`` with channels in ascending order of
    the original index. ``model`` itself is not modified.
    """
    if mode not in ("slice", "rebuild"):
        raise ValueError(f"mode must be 'slice' or 'rebuild', got {mode!r}")
    if isinstance(model, LeFUN):
        raise TypeError("select_input_channels: LeFUN takes a YCbCr image, not DCT channels; "
                        "apply it to LeFUN.backbone instead")
    if getattr(model, "in_channels", None) != 192:
        raise ValueError(f"select_input_channels needs a model taking the 192 DCT channels, "
                         f"got in_channels={getattr(model, 'in_channels', None)}")
    kept = channel_indices(keep)
    pruned = copy.deepcopy(model)
    if isinstance(model, MBConvNet):
        if not isinstance(model.stem, nn.Identity):
            raise TypeError("select_input_channels: this MBConvNet has a stem (an RGB model)")
        first: MBConv = pruned.blocks[0][0]
        if isinstance(first.expand, nn.Identity):
            raise ValueError("select_input_channels: the first block has no expand conv (expansion 1, e.g. "
                             "efun_variant_a); its depthwise conv turns a zeroed channel into an input-dependent "
                             "squeeze-excite term, so channels cannot be dropped exactly")
        if mode == "slice":
            first.expand.conv = _slice_conv_inputs(first.expand.conv, kept)
            first.in_channels = len(kept)
        else:
            pruned.blocks[0][0] = _rebuild_mbconv(first, kept)
    elif isinstance(model, ResNet) and model.spec.stem == "input_bn":
        _slice_resfun(pruned, kept)
    else:
        raise TypeError(f"select_input_channels: unsupported model type {type(model).__name__}")
    pruned.in_channels = len(kept)
    if hasattr(pruned, "default_cfg"):
        cfg = dict(pruned.default_cfg)
        cfg["input_size"] = (len(kept),) + tuple(cfg["input_size"][1:])
        cfg["keep"] = "/".join(str(c) for c in _counts(kept))
        pruned.default_cfg = cfg
    return pruned


def _counts(kept: List[int]):
    return [sum(1 for k in kept if 64 * c <= k < 64 * (c + 1)) for c in range(3)]


def _slice_conv_inputs(conv: nn.Conv2d, kept: List[int]) -> nn.Conv2d:
    if conv.groups != 1:
        raise ValueError("cannot slice the inputs of a grouped conv")
    new = nn.Conv2d(len(kept), conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, kept])
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.weight.requires_grad_(conv.weight.requires_grad)
    return new


def _slice_resfun(model: ResNet, kept: List[int]) -> None:
    """ResFUN: input BatchNorm -> first bottleneck's conv1 and shortcut conv (1x1, followed by BN)."""
    input_bn: nn.BatchNorm2d = model.stem
    dropped = [c for c in range(input_bn.num_features) if c not in set(kept)]
    with torch.no_grad():
        # Eval-mode output of the input BN on a zeroed channel: beta - gamma * mean / sqrt(var + eps).
        constant = input_bn.bias - input_bn.weight * input_bn.running_mean / torch.sqrt(input_bn.running_var + input_bn.eps)
        new_bn = nn.BatchNorm2d(len(kept), eps=input_bn.eps, momentum=input_bn.momentum).to(
            input_bn.weight.device, input_bn.weight.dtype)
        new_bn.weight.copy_(input_bn.weight[kept])
        new_bn.bias.copy_(input_bn.bias[kept])
        new_bn.running_mean.copy_(input_bn.running_mean[kept])
        new_bn.running_var.copy_(input_bn.running_var[kept])
        new_bn.num_batches_tracked.copy_(input_bn.num_batches_tracked)
        model.stem = new_bn
        first: Bottleneck = model.blocks[0][0]
        for branch in (first.conv1, first.shortcut):
            if not isinstance(branch, ConvBNAct):
                raise ValueError("ResFUN's first block must project its input (conv1 and shortcut)")
            conv = branch.conv
            # The dropped channels' constant reaches each output as sum_j W[:, j] * constant[j]; a
            # BatchNorm absorbs a per-channel input offset by shifting its running mean (in training
            # mode the batch mean removes it anyway).
            offset = torch.einsum("oi,i->o", conv.weight[:, dropped, 0, 0], constant[dropped])
            branch.bn.running_mean.sub_(offset)
            branch.conv = _slice_conv_inputs(conv, kept)


def _rebuild_mbconv(block: MBConv, kept: List[int]) -> MBConv:
    """A new first MBConv built for ``len(kept)`` inputs, reusing the largest-norm channels."""
    act_layer = type(block.depthwise.act)
    se_ratio = block.se_ratio
    new = MBConv(len(kept), block.out_channels, kernel_size=block.kernel_size, stride=block.stride,
                 expansion=block.expansion, se_ratio=se_ratio, act_layer=act_layer,
                 drop_path=block.drop_path.p if hasattr(block.drop_path, "p") else 0.0)
    new = new.to(block.project.conv.weight.device, block.project.conv.weight.dtype)
    with torch.no_grad():
        expand_weight = block.expand.conv.weight[:, kept]  # (mid, k, 1, 1)
        mid = torch.argsort(expand_weight.abs().sum((1, 2, 3)), descending=True)[:new.mid_channels].sort().values
        new.expand.conv.weight.copy_(expand_weight[mid])
        _copy_bn(new.expand.bn, block.expand.bn, mid)
        new.depthwise.conv.weight.copy_(block.depthwise.conv.weight[mid])
        _copy_bn(new.depthwise.bn, block.depthwise.bn, mid)
        if isinstance(block.se, nn.Module) and hasattr(block.se, "conv_reduce"):
            reduce_weight = block.se.conv_reduce.weight[:, mid]
            reduced = torch.argsort(reduce_weight.abs().sum((1, 2, 3)), descending=True)[
                :new.se.conv_reduce.out_channels].sort().values
            new.se.conv_reduce.weight.copy_(reduce_weight[reduced])
            new.se.conv_reduce.bias.copy_(block.se.conv_reduce.bias[reduced])
            new.se.conv_expand.weight.copy_(block.se.conv_expand.weight[mid][:, reduced])
            new.se.conv_expand.bias.copy_(block.se.conv_expand.bias[mid])
        new.project.conv.weight.copy_(block.project.conv.weight[:, mid])
        new.project.bn.load_state_dict(block.project.bn.state_dict())
    return new


def _copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, index: torch.Tensor) -> None:
    target.weight.copy_(source.weight[index])
    target.bias.copy_(source.bias[index])
    target.running_mean.copy_(source.running_mean[index])
    target.running_var.copy_(source.running_var[index])
    target.num_batches_tracked.copy_(source.num_batches_tracked)
