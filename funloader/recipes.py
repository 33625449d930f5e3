"""Training recipes of the FUN paper (Section 3.5) and the pieces they need.

Two recipes, picked by ``recipe="paper"`` from the model family:

``efun`` (eFUN-S+/S/base/L, the ablation variants, LeFUN and any MBConv model)
    The EfficientNet (TPU) recipe the paper follows: RMSProp with decay 0.9, momentum 0.9 and
    epsilon 1e-3 in TensorFlow's convention (:class:`RMSpropTF`, see below); weight decay 1e-5;
    learning rate 0.048 at a global batch of 512, scaled linearly with the global batch size,
    multiplied by 0.97 every 2.4 epochs (staircase, counted in steps); linear warm-up; stochastic
    depth 0.2 (0.3 for eFUN-L, the model defaults); exponential moving average of the weights;
    label smoothing 0.1; 450 epochs.
``resfun`` (ResFUN and any ResNet)
    SGD with momentum 0.9: learning rate 0.1 for 90 epochs, 0.01 for 20 and 0.001 for 20
    (130 epochs).

Choices the paper leaves open, and what we use (each is a :class:`~funloader.train.TrainConfig`
field that can be overridden):

* **RMSProp epsilon.** The paper says "as EfficientNet": TensorFlow's ``RMSPropOptimizer`` with
  ``epsilon=1e-3``, which adds epsilon *inside* the square root, starts the mean square at 1 (not
  0) and applies the learning rate inside the momentum buffer. :class:`RMSpropTF` implements
  exactly that. In ``torch.optim.RMSprop`` terms the closest match is ``alpha=0.9, momentum=0.9,
  eps=sqrt(1e-3) ~= 0.0316`` (epsilon outside the root) -- not the same: PyTorch's mean square starts
  at 0, so its first steps are ~3x larger, and a learning-rate change acts on the whole momentum
  buffer at once. ``optimizer="rmsprop"`` selects PyTorch's optimizer with that mapping.
* **Weight decay 1e-5** is TensorFlow's L2 term ``1e-5 * sum(w**2) / 2`` added to the loss, i.e.
  ``1e-5 * w`` added to the gradient (coupled, not AdamW-style), applied to conv/linear weights and
  not to BatchNorm parameters or biases (as in the reference TPU code, which excludes
  ``batch_normalization`` variables).
* **Warm-up**: 5 epochs, linear from 0 (the reference implementation's default; the paper only
  says "warm-up"). ResFUN: no warm-up (the paper gives none).
* **Learning rate of ResFUN**: 0.1 at a global batch of 256, scaled linearly (the paper gives no
  batch size for ResFUN; 256 is the standard ResNet setting).
* **EMA**: decay 0.9999 per step with TensorFlow's ``num_updates`` warm-up
  (``decay_t = min(decay, (1 + t) / (10 + t))``), over parameters and BatchNorm running statistics;
  validation reports both the raw and the EMA weights, the EMA ones being the headline numbers.
* **Dropout** before the classifier: the model defaults (0.2, 0.3 for eFUN-L).
* **Augmentation** (not described in the paper): random resized crop done in the DCT domain
  (``funloader.transforms.RandomResizedCrop``, scale 0.08-1, an approximation of the pixel-domain
  one) and exact horizontal flips; evaluation uses the centre 28x28 blocks.
* **Batch normalisation**: the models package's layers (PyTorch defaults, momentum 0.1, eps 1e-5;
  the TensorFlow reference uses 0.01 / 1e-3); no synchronised BN across GPUs (per-GPU batch
  statistics, as in the reference code).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

__all__ = [
    "Recipe", "RECIPES", "recipe_for_model", "RMSpropTF", "build_optimizer", "parameter_groups",
    "lr_multiplier", "ModelEma", "soft_target_cross_entropy",
]


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one paper recipe. ``lr`` is for a global batch of ``reference_batch``."""

    name: str
    optimizer: str            # "rmsprop_tf" | "rmsprop" | "sgd"
    lr: float
    reference_batch: int
    epochs: int
    weight_decay: float
    momentum: float
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1e-3  # TensorFlow convention (inside the square root)
    schedule: str = "step"    # "exponential": * decay_rate every decay_epochs; "step": * 0.1 at milestones
    decay_rate: float = 0.97
    decay_epochs: float = 2.4
    milestones: Tuple[int, ...] = ()
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0     # 0 = no EMA
    augment: str = "rrc-flip"


RECIPES: Dict[str, Recipe] = {
    "efun": Recipe("efun", "rmsprop_tf", lr=0.048, reference_batch=512, epochs=450, weight_decay=1e-5,
                   momentum=0.9, schedule="exponential", decay_rate=0.97, decay_epochs=2.4,
                   warmup_epochs=5.0, label_smoothing=0.1, ema_decay=0.9999),
    "resfun": Recipe("resfun", "sgd", lr=0.1, reference_batch=256, epochs=130, weight_decay=1e-4,
                     momentum=0.9, schedule="step", milestones=(90, 110), decay_rate=0.1,
                     warmup_epochs=0.0, label_smoothing=0.0, ema_decay=0.0),
}
# ResFUN's weight decay (1e-4) is not in the paper either: it is the standard ResNet value.


def recipe_for_model(model_name: str, recipe: str = "paper") -> Recipe:
    """``recipe``: "paper" (pick by model: ResNets/ResFUN -> "resfun", everything else -> "efun"),
    or a key of :data:`RECIPES`."""
    if recipe == "paper":
        recipe = "resfun" if model_name.startswith(("resfun", "resnet")) else "efun"
    try:
        return RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}; known: paper, {', '.join(RECIPES)}") from None


# ----------------------------------------------------------------------------------------------
# optimizer
class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with TensorFlow 1.x semantics (the EfficientNet recipe), per parameter ``p``::

        ms  = decay * ms + (1 - decay) * g**2          # ms starts at 1, not 0
        mom = momentum * mom + lr * g / sqrt(ms + eps)  # eps inside the root, lr inside the buffer
        p  -= mom

    ``weight_decay`` adds ``weight_decay * p`` to the gradient first (TensorFlow's L2 loss term).
    """

    def __init__(self, params, lr: float = 0.016, decay: float = 0.9, momentum: float = 0.9, eps: float = 1e-3,
                 weight_decay: float = 0.0):
        if lr < 0 or eps <= 0 or not 0 <= decay < 1 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"RMSpropTF: invalid hyper-parameters lr={lr} decay={decay} momentum={momentum} "
                             f"eps={eps} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, momentum, eps, wd = (group[k] for k in ("lr", "decay", "momentum", "eps", "weight_decay"))
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                if wd:
                    grad = grad.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                square_avg = state["square_avg"]
                square_avg.mul_(decay).addcmul_(grad, grad, value=1 - decay)
                update = grad / square_avg.add(eps).sqrt_()
                buf = state["momentum_buffer"]
                if momentum > 0:
                    buf.mul_(momentum).add_(update, alpha=lr)
                    p.sub_(buf)
                else:
                    p.sub_(update, alpha=lr)
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Two groups: conv/linear weights with ``weight_decay``, BatchNorm parameters and biases (all
    1-D parameters) without."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(name: str, model: nn.Module, *, lr: float, weight_decay: float, momentum: float,
                    rmsprop_decay: float = 0.9, rmsprop_eps: float = 1e-3) -> torch.optim.Optimizer:
    """``name``: "rmsprop_tf" (:class:`RMSpropTF`, eps in TF convention), "rmsprop"
    (``torch.optim.RMSprop`` with ``eps = sqrt(rmsprop_eps)``, see the module docstring), "sgd"
    (Nesterov off) or "adamw"."""
    groups = parameter_groups(model, weight_decay)
    if name == "rmsprop_tf":
        return RMSpropTF(groups, lr=lr, decay=rmsprop_decay, momentum=momentum, eps=rmsprop_eps)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=rmsprop_decay, momentum=momentum, eps=math.sqrt(rmsprop_eps))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; known: rmsprop_tf, rmsprop, sgd, adamw")


def lr_multiplier(step: int, steps_per_epoch: int, *, schedule: str, warmup_epochs: float = 0.0,
                  decay_rate: float = 0.97, decay_epochs: float = 2.4, milestones: Iterable[int] = (),
                  total_epochs: Optional[int] = None) -> float:
    """Factor applied to the base learning rate at optimizer step ``step`` (0-based).

    ``schedule``: "exponential" (``decay_rate ** floor(step / (decay_epochs * steps_per_epoch))``,
    staircase, the eFUN recipe), "step" (``decay_rate ** (number of milestones <= epoch)``, epochs
    counted in steps, ResFUN), "cosine" (half cosine to 0 over ``total_epochs``) or "constant".
    Warm-up: linear from ``1 / warmup_steps`` to 1 over the first ``warmup_epochs``, then the schedule
    (which counts steps from 0, as the reference implementation does).
    """
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if warmup_steps > 0 and step < warmup_steps:
        warm = (step + 1) / warmup_steps
    else:
        warm = 1.0
    if schedule == "exponential":
        factor = decay_rate ** math.floor(step / max(1e-9, decay_epochs * steps_per_epoch))
    elif schedule == "step":
        epoch = step / steps_per_epoch
        factor = decay_rate ** sum(1 for m in milestones if epoch >= m)
    elif schedule == "cosine":
        if not total_epochs:
            raise ValueError("cosine schedule needs total_epochs")
        progress = min(1.0, step / (total_epochs * steps_per_epoch))
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}; known: exponential, step, cosine, constant")
    return warm * factor


# ----------------------------------------------------------------------------------------------
# EMA
class ModelEma:
    """Exponential moving average of a model's parameters and floating-point buffers.

    ``update(model, step)`` uses TensorFlow's ``num_updates`` form: ``d = min(decay, (1 + step) / (10 + step))``,
    ``ema = d * ema + (1 - d) * value``; integer buffers (BatchNorm's ``num_batches_tracked``) are
    copied. ``module`` is a full copy of the model (eval mode) usable for inference.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        import copy

        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        ema_state = self.module.state_dict()
        targets, values = [], []
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                targets.append(target)
                values.append(value.detach().to(target.dtype))
            else:
                target.copy_(value)
        if targets:  # ema += (1 - d) * (value - ema), one fused kernel per dtype/device
            torch._foreach_lerp_(targets, values, 1.0 - d)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.module.load_state_dict(state["module"])


# ----------------------------------------------------------------------------------------------
# loss
def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k targets[:, k] * log_softmax(logits)[:, k]``: cross-entropy
    against soft targets ``(N, classes)`` (the mixed, smoothed targets of mixup / cutmix), computed
    in float32. With one-hot targets smoothed by ``s`` it equals
    ``cross_entropy(logits, y, label_smoothing=s)``."""
    log_probs = torch.log_softmax(logits.float(), dim=1)
    return -(targets.to(log_probs.dtype) * log_probs).sum(dim=1).mean()
