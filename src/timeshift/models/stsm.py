"""STSM models: the spatio-temporal shift inserted where TSM puts its temporal shift.

Yang and An, *STSM: Spatio-Temporal Shift Module for Efficient Action Recognition* (2021): one
:class:`~timeshift.ops.st_shift.SpatioTemporalShift` before the first conv of each residual
branch (ResNet ``conv1``; MobileNetV2 residual ``InvertedResidual`` ``conv[0]``), in a TSN
recognizer. The shift has no parameters, so an STSM model has exactly the parameters of the TSM
model on the same backbone, and TSM checkpoints load into it.

This module registers the temporal layer ``"stshift"`` for :func:`~timeshift.temporalize` and
the models ``stsm_resnet50``, ``stsm_mobilenet_v2`` and their tiny test variants.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from timeshift.models.recognizer import Recognizer
from timeshift.models.registry import build_recognizer, register_model
from timeshift.models.temporalize import register_temporal_layer
from timeshift.ops.st_shift import SpatioTemporalShift, st_shift_fold

__all__ = ["build_stsm"]

_logger = logging.getLogger(__name__)

# offline ONNX export verified; not causal: the op reads later frames (see timeshift.online)
_TAGS = ("exportable",)
_STSM_PAPER = (
    "Yang and An, STSM: Spatio-Temporal Shift Module for Efficient Action Recognition, 2021"
)


@register_temporal_layer("stshift")
def _stshift_layer(
    net: nn.Module,
    *,
    num_segments: int,
    channels: int,
    alpha: float = 3 / 8,
    dims: str = "T+H+W",
) -> nn.Module:
    if st_shift_fold(channels, alpha, dims) == 0:
        _logger.debug(
            "stshift: %d channels with alpha=%s, dims=%s shift nothing (fewer than one channel "
            "per half-part)",
            channels,
            alpha,
            dims,
        )
    return SpatioTemporalShift(net, num_segments, alpha=alpha, dims=dims)


def build_stsm(backbone: str, **kwargs: Any) -> Recognizer:
    """Backbone by name -> spatio-temporal shifts -> optional non-local -> Recognizer.

    :func:`~timeshift.models.build_recognizer` with ``temporal_layer="stshift"``: ``alpha``
    (fraction of the channels shifted, 3/8 in the paper) and ``dims`` (shift parts, one of
    ``timeshift.ops.st_shift.DIMS``, ``"T+H+W"`` in the paper) go to the layer; ``place``,
    ``block_stride``, ``temporal_pool``, ``non_local`` (the paper's "STSM+TSN+NL"), ``dropout``,
    ``partial_bn`` and backbone options as for every model.
    """
    return build_recognizer(backbone, temporal_layer="stshift", **kwargs)


@register_model(family="stsm", backbone="resnet50", paper=_STSM_PAPER, tags=_TAGS)
def stsm_resnet50(**kwargs: Any) -> Recognizer:
    return build_stsm("resnet50", **kwargs)


@register_model(family="stsm", backbone="mobilenet_v2", paper=_STSM_PAPER, tags=_TAGS)
def stsm_mobilenet_v2(**kwargs: Any) -> Recognizer:
    return build_stsm("mobilenet_v2", **kwargs)


@register_model(family="stsm", backbone="resnet_tiny", paper=_STSM_PAPER, tags=_TAGS)
def stsm_resnet_tiny(**kwargs: Any) -> Recognizer:
    return build_stsm("resnet_tiny", **kwargs)


@register_model(family="stsm", backbone="mobilenet_v2_tiny", paper=_STSM_PAPER, tags=_TAGS)
def stsm_mobilenet_v2_tiny(**kwargs: Any) -> Recognizer:
    return build_stsm("mobilenet_v2_tiny", **kwargs)
