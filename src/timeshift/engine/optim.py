"""Parameter groups, optimiser and learning-rate schedules of the reference TSM recipes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from timeshift.models.recognizer import first_conv

__all__ = ["FIRST_CONV_LR_MULT", "ParamGroup", "build_optimizer", "build_scheduler", "param_groups"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.SyncBatchNorm,
)


@dataclass
class ParamGroup:
    name: str
    params: list[nn.Parameter]
    lr_mult: float
    decay_mult: float


# the first conv's (weight, bias) lr multipliers per input modality (reference
# get_optim_policies: 5 and 10 for Flow, whose first conv is a new cross-modality kernel)
FIRST_CONV_LR_MULT = {"rgb": (1, 2), "flow": (5, 10)}


def param_groups(
    model: nn.Module, *, fc_lr5: bool = False, modality: str | None = None
) -> list[ParamGroup]:
    """The reference TSM grouping (``get_optim_policies``).

    first conv weight (lr x1, decay x1) and bias (lr x2, no decay), for flow x5 and x10; other
    conv / linear weights (x1, x1) and biases (x2, no decay); normalisation layers (x1, no
    decay); with ``fc_lr5`` the classifier weight x5 and bias x10 (a new head trained faster
    than an ImageNet-initialised backbone). Parameters that do not require gradients (frozen by
    partial BN) are left out. ``modality`` defaults to the model's (``Recognizer.modality``).
    """
    weight_mult, bias_mult = FIRST_CONV_LR_MULT[modality or _modality(model)]
    groups = {
        "first_conv_weight": ParamGroup("first_conv_weight", [], weight_mult, 1),
        "first_conv_bias": ParamGroup("first_conv_bias", [], bias_mult, 0),
        "normal_weight": ParamGroup("normal_weight", [], 1, 1),
        "normal_bias": ParamGroup("normal_bias", [], 2, 0),
        "norm": ParamGroup("norm", [], 1, 0),
        "fc_weight": ParamGroup("fc_weight", [], 5 if fc_lr5 else 1, 1),
        "fc_bias": ParamGroup("fc_bias", [], 10 if fc_lr5 else 2, 0),
        "other": ParamGroup("other", [], 1, 1),
    }
    head = getattr(model, "fc", None)
    head_modules = set(head.modules()) if isinstance(head, nn.Module) else set()
    stem = _first_conv(model)
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if module in head_modules and isinstance(module, nn.Linear):
            _add(groups["fc_weight"], module.weight)
            _add(groups["fc_bias"], module.bias)
        elif module is stem or isinstance(module, (*_CONV, nn.Linear)):
            prefix = "first_conv" if module is stem else "normal"
            _add(groups[f"{prefix}_weight"], module.weight)
            _add(groups[f"{prefix}_bias"], getattr(module, "bias", None))
        elif isinstance(module, _NORM):
            for p in own:
                _add(groups["norm"], p)
        else:
            for p in own:
                _add(groups["other"], p)
    return [g for g in groups.values() if g.params]


def _modality(model: nn.Module) -> str:
    # DDP / DataParallel wrap the model under .module
    inner = getattr(model, "module", model)
    return getattr(inner, "modality", "rgb")


def _first_conv(model: nn.Module) -> nn.Module | None:
    try:
        return first_conv(model)[1]
    except ValueError:
        return None


def _add(group: ParamGroup, param: nn.Parameter | None) -> None:
    if param is not None and param.requires_grad:
        group.params.append(param)


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "sgd",
    lr: float,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    nesterov: bool = False,
    fc_lr5: bool = False,
) -> torch.optim.Optimizer:
    """SGD (or AdamW) over :func:`param_groups`, each with ``lr * lr_mult`` and
    ``weight_decay * decay_mult``."""
    groups = [
        {
            "params": g.params,
            "lr": lr * g.lr_mult,
            "weight_decay": weight_decay * g.decay_mult,
            "name": g.name,
        }
        for g in param_groups(model, fc_lr5=fc_lr5)
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    kind: str = "step",
    epochs: int,
    steps_per_epoch: int,
    milestones: list[int] | tuple[int, ...] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_factor: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: linear warmup from ``warmup_factor`` x lr, then step decay at
    epoch ``milestones`` or cosine decay to zero. Every group keeps its own multiplier."""
    total = max(1, epochs * steps_per_epoch)
    warmup = round(warmup_epochs * steps_per_epoch)
    if kind not in ("step", "cosine"):
        raise ValueError(f"schedule must be 'step' or 'cosine', got {kind!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return warmup_factor + (1 - warmup_factor) * step / warmup
        if kind == "step":
            epoch = step // steps_per_epoch
            return gamma ** sum(epoch >= m for m in milestones)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
