"""2D backbones with torchvision-compatible keys, built by name."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from timeshift.models.backbones.bl_resnet import bl_resnet50, bl_resnet101, bl_resnet_tiny
from timeshift.models.backbones.mobilenet_v2 import InvertedResidual, MobileNetV2
from timeshift.models.backbones.non_local import NonLocalBlock3d, NonLocalWrapper, add_non_local
from timeshift.models.backbones.resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "MobileNetV2",
    "NonLocalBlock3d",
    "NonLocalWrapper",
    "ResNet",
    "add_non_local",
    "create_backbone",
]

_TINY_WIDTHS = (8, 16, 32, 64)
_TINY_MBV2 = ((1, 8, 1, 1), (6, 8, 2, 2), (6, 16, 2, 2), (6, 24, 2, 2))

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": partial(ResNet, BasicBlock, (2, 2, 2, 2)),
    "resnet34": partial(ResNet, BasicBlock, (3, 4, 6, 3)),
    "resnet50": partial(ResNet, Bottleneck, (3, 4, 6, 3)),
    "resnet101": partial(ResNet, Bottleneck, (3, 4, 23, 3)),
    "resnet152": partial(ResNet, Bottleneck, (3, 8, 36, 3)),
    "resnext50_32x4d": partial(ResNet, Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4),
    "resnext101_32x8d": partial(ResNet, Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=8),
    "mobilenet_v2": MobileNetV2,
    # tiny variants: same block structure and key layout, narrow widths, for fast tests
    "resnet_tiny": partial(ResNet, BasicBlock, (1, 1, 1, 1), widths=_TINY_WIDTHS, stem_width=8),
    "resnet_bottleneck_tiny": partial(
        ResNet, Bottleneck, (1, 3, 5, 1), widths=(4, 8, 16, 32), stem_width=8
    ),
    "mobilenet_v2_tiny": partial(MobileNetV2, setting=_TINY_MBV2, last_channel=64),
    # video backbones: they take num_segments (bLVNet-TAM's big-little ResNets)
    "bl_resnet50": bl_resnet50,
    "bl_resnet101": bl_resnet101,
    "bl_resnet_tiny": bl_resnet_tiny,
}


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Build a 2D backbone by name (see ``BACKBONES``); kwargs go to its constructor."""
    try:
        factory = BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; available: {sorted(BACKBONES)}") from None
    return factory(**kwargs)
