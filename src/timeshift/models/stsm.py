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

from timeshift.models.backbones import add_non_local, create_backbone
from timeshift.models.recognizer import Recognizer
from timeshift.models.registry import register_model
from timeshift.models.temporalize import register_temporal_layer, temporalize
from timeshift.ops.pool import pooled_segments
from timeshift.ops.st_shift import SpatioTemporalShift, st_shift_fold

__all__ = ["build_stsm"]

_logger = logging.getLogger(__name__)

_STSM_PAPER = (
    "Yang and An, STSM: Spatio-Temporal Shift Module for Efficient Action Recognition, 2021"
)
# options of the TSM shift that mean nothing for STSM (alpha and dims replace them)
_TSM_ONLY_OPTIONS = ("fold_div", "direction", "inplace")


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


def build_stsm(
    backbone: str,
    *,
    num_classes: int,
    num_segments: int,
    alpha: float = 3 / 8,
    dims: str = "T+H+W",
    place: str = "residual",
    block_stride: int | None = None,
    temporal_pool: bool = False,
    non_local: bool = False,
    dropout: float = 0.5,
    partial_bn: bool = False,
    **backbone_kwargs: Any,
) -> Recognizer:
    """Backbone by name -> spatio-temporal shifts -> optional non-local -> Recognizer.

    Args:
        backbone: a name from ``timeshift.models.backbones.BACKBONES``.
        num_classes: classifier outputs.
        num_segments: frames per clip ``T``.
        alpha: fraction of the channels shifted (3/8 in the paper).
        dims: shift parts, one of ``timeshift.ops.st_shift.DIMS`` (``"T+H+W"`` in the paper).
        place, block_stride, temporal_pool: as for :func:`~timeshift.temporalize`.
        non_local: add the TSM non-local blocks (the paper's "STSM+TSN+NL").
        dropout, partial_bn: Recognizer options.
        **backbone_kwargs: backbone options such as ``width_mult``.
    """
    given = sorted(k for k in _TSM_ONLY_OPTIONS if k in backbone_kwargs)
    if given:
        raise TypeError(f"STSM models take alpha and dims instead of the TSM shift options {given}")
    net = create_backbone(backbone, num_classes=0, **backbone_kwargs)
    temporalize(
        net,
        num_segments=num_segments,
        temporal_layer="stshift",
        place=place,
        block_stride=block_stride,
        temporal_pool=temporal_pool,
        alpha=alpha,
        dims=dims,
    )
    if non_local:
        stage_segments: dict[str, int] = {}
        if temporal_pool:
            pooled = pooled_segments(num_segments)
            stage_segments = {"layer2": pooled, "layer3": pooled}
        add_non_local(net, num_segments=stage_segments or num_segments)
    return Recognizer(
        net,
        num_classes=num_classes,
        num_segments=num_segments,
        dropout=dropout,
        partial_bn=partial_bn,
    )


@register_model(family="stsm", backbone="resnet50", paper=_STSM_PAPER)
def stsm_resnet50(**kwargs: Any) -> Recognizer:
    return build_stsm("resnet50", **kwargs)


@register_model(family="stsm", backbone="mobilenet_v2", paper=_STSM_PAPER)
def stsm_mobilenet_v2(**kwargs: Any) -> Recognizer:
    return build_stsm("mobilenet_v2", **kwargs)


@register_model(family="stsm", backbone="resnet_tiny", paper=_STSM_PAPER)
def stsm_resnet_tiny(**kwargs: Any) -> Recognizer:
    return build_stsm("resnet_tiny", **kwargs)


@register_model(family="stsm", backbone="mobilenet_v2_tiny", paper=_STSM_PAPER)
def stsm_mobilenet_v2_tiny(**kwargs: Any) -> Recognizer:
    return build_stsm("mobilenet_v2_tiny", **kwargs)
