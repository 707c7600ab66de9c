"""Temporal aggregation models: TSN + TAM and bLVNet-TAM (Fan et al., NeurIPS 2019).

Importing this module registers

* the ``"tam"`` temporal layer for :func:`~timeshift.models.temporalize` (a
  :class:`~timeshift.ops.aggregation.TemporalAggregation` on the input of the wrapped conv);
* the models ``tam_resnet50`` (TSN + TAM in every residual branch, the paper's Table 5),
  ``blvnet_tam_resnet50`` and ``blvnet_tam_resnet101`` (bLVNet-TAM, alpha=2, beta=4), and the
  tiny test variants ``tam_resnet_tiny`` and ``blvnet_tam_tiny``.

bLVNet-TAM models take ``num_segments = 2T`` frames (16 for the paper's "8x2") and predict from
``T`` frame pairs: the :class:`~timeshift.models.Recognizer` averages ``T`` segment outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from timeshift.models.backbones.bl_resnet import (
    BLResNet,
    bl_resnet50,
    bl_resnet101,
    bl_resnet_tiny,
)
from timeshift.models.recognizer import Recognizer
from timeshift.models.registry import build_recognizer, register_model
from timeshift.models.temporalize import register_temporal_layer
from timeshift.ops.aggregation import Init, TemporalAggregation

__all__ = ["TemporalAggregationWrapper"]

BLVNET_PAPER = (
    "Fan et al., More Is Less: Learning Efficient Video Representations by Big-Little Network "
    "and Depthwise Temporal Aggregation, NeurIPS 2019"
)

# options of the shift that make no sense for a model without shift modules
_SHIFT_ONLY = ("fold_div", "direction", "inplace")
# options of temporalize/build_recognizer that the bLVNet architecture fixes itself
_BLVNET_FIXED = (
    *_SHIFT_ONLY,
    "place",
    "temporal_pool",
    "block_stride",
    "non_local",
    "temporal_layer",
)


class TemporalAggregationWrapper(nn.Module):
    """Temporal aggregation of the input, then the wrapped module.

    Keys: ``<site>.tam.weight`` and the wrapped module's under ``.net``
    (``layer1.0.conv1.net.weight``), like the temporal shift, so 2D weights map onto it.
    """

    def __init__(self, net: nn.Module, tam: TemporalAggregation) -> None:
        super().__init__()
        self.tam = tam
        self.net = net

    @property
    def num_segments(self) -> int:
        return self.tam.num_segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.tam(x))


@register_temporal_layer("tam")
def _tam_layer(
    net: nn.Module, *, num_segments: int, channels: int, r: int = 3, init: Init = "kaiming"
) -> nn.Module:
    return TemporalAggregationWrapper(
        net, TemporalAggregation(channels, num_segments, r, init=init)
    )


def _reject(kwargs: dict[str, Any], names: tuple[str, ...], model: str) -> None:
    given = sorted(k for k in names if k in kwargs)
    if given:
        raise TypeError(f"{model} models do not take the options {given}")


def _tam(backbone: str, *, r: int = 3, tam_init: Init = "kaiming", **kwargs: Any) -> Recognizer:
    """TSN + TAM: a 2D ResNet with temporal aggregation in every residual branch."""
    _reject(kwargs, _SHIFT_ONLY, "TSN + TAM")
    layer: str | Callable[..., nn.Module] = "tam"
    if (r, tam_init) != (3, "kaiming"):
        layer = partial(_tam_layer, r=r, init=tam_init)
    return build_recognizer(backbone, temporal_layer=layer, **kwargs)


def _blvnet(
    make: Callable[..., BLResNet],
    *,
    num_classes: int,
    num_segments: int,
    dropout: float = 0.5,
    partial_bn: bool = False,
    **kwargs: Any,
) -> Recognizer:
    """bLVNet-TAM: a :class:`BLResNet` over ``num_segments = 2T`` frames in a Recognizer.

    ``kwargs`` go to the backbone: ``alpha``, ``beta``, ``r``, ``in_chans``, ``widths``, ...
    """
    _reject(kwargs, _BLVNET_FIXED, "bLVNet-TAM")
    backbone = make(num_segments=num_segments, **kwargs)
    return Recognizer(
        backbone,
        num_classes=num_classes,
        num_segments=num_segments,
        dropout=dropout,
        partial_bn=partial_bn,
    )


@register_model(family="tam", backbone="resnet50", paper=BLVNET_PAPER)
def tam_resnet50(**kwargs: Any) -> Recognizer:
    """TSN + TAM (r=3) in the residual branch of every ResNet-50 block (paper Table 5)."""
    return _tam("resnet50", **kwargs)


@register_model(family="tam", backbone="resnet_tiny", paper=BLVNET_PAPER)
def tam_resnet_tiny(**kwargs: Any) -> Recognizer:
    return _tam("resnet_tiny", **kwargs)


@register_model(family="blvnet", backbone="bl_resnet50", paper=BLVNET_PAPER)
def blvnet_tam_resnet50(**kwargs: Any) -> Recognizer:
    """bLVNet-TAM-50: num_segments=16 is the paper's 8x2 (25.0 M params, 23.85 G MACs)."""
    return _blvnet(bl_resnet50, **kwargs)


@register_model(family="blvnet", backbone="bl_resnet101", paper=BLVNET_PAPER)
def blvnet_tam_resnet101(**kwargs: Any) -> Recognizer:
    """bLVNet-TAM-101: num_segments=16 is the paper's 8x2 (40.2 M params, 32.15 G MACs)."""
    return _blvnet(bl_resnet101, **kwargs)


@register_model(family="blvnet", backbone="bl_resnet_tiny", paper=BLVNET_PAPER)
def blvnet_tam_tiny(**kwargs: Any) -> Recognizer:
    return _blvnet(bl_resnet_tiny, **kwargs)
