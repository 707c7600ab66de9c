"""Temporal aggregation models: TSN + TAM and bLVNet-TAM (Fan et al., NeurIPS 2019).

Importing this module registers

* the ``"tam"`` temporal layer for :func:`~timeshift.models.temporalize` (a
  :class:`~timeshift.ops.aggregation.TemporalAggregation` on the input of the wrapped conv);
* the models ``tam_resnet50`` (TSN + TAM in every residual branch, the paper's Table 5),
  ``blvnet_tam_resnet50`` and ``blvnet_tam_resnet101`` (bLVNet-TAM, alpha=2, beta=4), and the
  tiny test variants ``tam_resnet_tiny`` and ``blvnet_tam_tiny``.

bLVNet-TAM models take ``num_segments = 2T`` frames (16 for the paper's "8x2") and predict from
``T`` frame pairs: the :class:`~timeshift.models.Recognizer` averages ``T`` segment outputs. Their
TAMs are part of the backbone (:mod:`timeshift.models.backbones.bl_resnet`), so nothing is
inserted; the backbone takes ``alpha``, ``beta``, ``r``, ``in_chans``, ``widths``, ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from timeshift.models.recognizer import Recognizer
from timeshift.models.registry import build_recognizer, register_model
from timeshift.models.temporalize import register_temporal_layer
from timeshift.ops.aggregation import Init, TemporalAggregation

__all__ = ["TemporalAggregationWrapper"]

# offline ONNX export verified; not causal: the op reads later frames (see timeshift.online)
_TAGS = ("exportable",)
BLVNET_PAPER = (
    "Fan et al., More Is Less: Learning Efficient Video Representations by Big-Little Network "
    "and Depthwise Temporal Aggregation, NeurIPS 2019"
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


def _tam(backbone: str, *, tam_init: Init = "kaiming", **kwargs: Any) -> Recognizer:
    """TSN + TAM: a 2D ResNet with temporal aggregation in every residual branch; ``r`` goes to
    the layer like any other option, ``tam_init`` is the model's name for its ``init``."""
    return build_recognizer(
        backbone, temporal_layer="tam", layer_options={"init": tam_init}, **kwargs
    )


@register_model(family="tam", backbone="resnet50", paper=BLVNET_PAPER, tags=_TAGS)
def tam_resnet50(**kwargs: Any) -> Recognizer:
    """TSN + TAM (r=3) in the residual branch of every ResNet-50 block (paper Table 5)."""
    return _tam("resnet50", **kwargs)


@register_model(family="tam", backbone="resnet_tiny", paper=BLVNET_PAPER, tags=_TAGS)
def tam_resnet_tiny(**kwargs: Any) -> Recognizer:
    return _tam("resnet_tiny", **kwargs)


@register_model(family="blvnet", backbone="bl_resnet50", paper=BLVNET_PAPER, tags=_TAGS)
def blvnet_tam_resnet50(**kwargs: Any) -> Recognizer:
    """bLVNet-TAM-50: num_segments=16 is the paper's 8x2 (25.0 M params, 23.85 G MACs)."""
    return build_recognizer("bl_resnet50", **kwargs)


@register_model(family="blvnet", backbone="bl_resnet101", paper=BLVNET_PAPER, tags=_TAGS)
def blvnet_tam_resnet101(**kwargs: Any) -> Recognizer:
    """bLVNet-TAM-101: num_segments=16 is the paper's 8x2 (40.2 M params, 32.15 G MACs)."""
    return build_recognizer("bl_resnet101", **kwargs)


@register_model(family="blvnet", backbone="bl_resnet_tiny", paper=BLVNET_PAPER, tags=_TAGS)
def blvnet_tam_tiny(**kwargs: Any) -> Recognizer:
    return build_recognizer("bl_resnet_tiny", **kwargs)
