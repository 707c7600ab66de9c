"""Insert a temporal operation into the residual blocks of a 2D CNN.

Works on any module built like torchvision's ResNet (stages are ``nn.Sequential`` of blocks with a
``conv1``) or MobileNetV2 (``InvertedResidual`` blocks with ``use_res_connect`` and ``conv``),
including the in-project backbones. The operation is injected through a ``temporal_layer``
factory, the way timm blocks take ``norm_layer``; ``"shift"`` is the TSM shift, and later temporal
modules register their own names with :func:`register_temporal_layer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import nn

from timeshift.ops.pool import TemporalPool, pooled_segments
from timeshift.ops.shift import TemporalShift

__all__ = [
    "TEMPORAL_LAYERS",
    "TemporalLayerFactory",
    "register_temporal_layer",
    "resolve_temporal_layer",
    "temporalize",
]

_logger = logging.getLogger(__name__)

PLACES = ("residual", "inplace")
# the reference shifts every 2nd block of very deep ResNets (layer3 with >= 23 blocks)
DEEP_LAYER3_BLOCKS = 23


class TemporalLayerFactory(Protocol):
    def __call__(self, net: nn.Module, *, num_segments: int, channels: int, **options) -> nn.Module:
        """Wrap ``net`` so that the temporal op runs on its input of ``channels`` channels."""


TEMPORAL_LAYERS: dict[str, TemporalLayerFactory] = {}


def register_temporal_layer(name: str) -> Callable[[TemporalLayerFactory], TemporalLayerFactory]:
    """Register a temporal layer factory under a short name usable in ``temporalize``."""

    def decorator(factory: TemporalLayerFactory) -> TemporalLayerFactory:
        if name in TEMPORAL_LAYERS:
            raise ValueError(f"temporal layer {name!r} is already registered")
        TEMPORAL_LAYERS[name] = factory
        return factory

    return decorator


@register_temporal_layer("shift")
def _shift_layer(
    net: nn.Module,
    *,
    num_segments: int,
    channels: int,
    fold_div: int = 8,
    direction: str = "bidirectional",
    inplace: bool = False,
) -> nn.Module:
    del channels  # the shift needs no parameters
    return TemporalShift(net, num_segments, fold_div=fold_div, direction=direction, inplace=inplace)


def resolve_temporal_layer(layer: str | TemporalLayerFactory) -> TemporalLayerFactory:
    if callable(layer):
        return layer
    try:
        return TEMPORAL_LAYERS[layer]
    except KeyError:
        raise ValueError(
            f"unknown temporal_layer {layer!r}; registered: {sorted(TEMPORAL_LAYERS)}"
        ) from None


@dataclass
class _Site:
    stage_name: str
    stage: nn.Sequential
    index: int  # position of the block in its stage
    block: nn.Module


def _is_resnet_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "conv1", None), nn.Module) and hasattr(module, "downsample")


def _is_inverted_residual(module: nn.Module) -> bool:
    return hasattr(module, "use_res_connect") and isinstance(
        getattr(module, "conv", None), nn.Sequential
    )


def _find_sites(backbone: nn.Module) -> list[list[_Site]]:
    """Residual blocks grouped by the ``nn.Sequential`` stage that holds them."""
    stages = []
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        sites = [
            _Site(name, module, i, child)
            for i, child in enumerate(module)
            if _is_resnet_block(child) or (_is_inverted_residual(child) and child.use_res_connect)
        ]
        if sites:
            stages.append(sites)
    return stages


def _first_conv(module: nn.Module) -> nn.Conv2d:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise TypeError(f"no Conv2d found in {type(module).__name__}")


def _block_step(stages: list[list[_Site]]) -> int:
    for sites in stages:
        if sites[0].stage_name.endswith("layer3") and len(sites[0].stage) >= DEEP_LAYER3_BLOCKS:
            return 2
    return 1


def _pool_stage(backbone: nn.Module, stages: list[list[_Site]]) -> str:
    """The stage in front of which temporal pooling goes: layer2 of a ResNet, as the reference."""
    if isinstance(getattr(backbone, "layer2", None), nn.Sequential):
        return "layer2"
    raise ValueError(
        "temporal_pool=True needs a ResNet-like backbone with a 'layer2' stage; "
        f"{type(backbone).__name__} has stages {[s[0].stage_name for s in stages]}"
    )


def temporalize(
    backbone: nn.Module,
    *,
    num_segments: int,
    temporal_layer: str | TemporalLayerFactory = "shift",
    place: str = "residual",
    fold_div: int = 8,
    direction: str = "bidirectional",
    inplace: bool = False,
    temporal_pool: bool = False,
    block_stride: int | None = None,
    **layer_options,
) -> nn.Module:
    """Insert a temporal op into the residual blocks of a 2D CNN, in place.

    Args:
        backbone: a torchvision-style ResNet/ResNeXt or MobileNetV2 (ours or a user's).
        num_segments: frames per video ``T``.
        temporal_layer: ``"shift"`` or another registered name, or a factory
            ``(net, *, num_segments, channels, **options) -> nn.Module`` wrapping ``net``.
        place: ``"residual"`` wraps the first conv of the residual branch, so the shortcut keeps
            the current frame (TSM's choice); ``"inplace"`` wraps the whole block, shortcut
            included.
        fold_div, direction, inplace: options of the shift (passed to the factory).
        temporal_pool: max-pool time by 2 before ``layer2`` (ResNets); later ops see ``T/2``.
        block_stride: op in every k-th block of each stage; default 1, or 2 for ResNets whose layer3
            has >= 23 blocks (ResNet-101/152), as the reference.
        **layer_options: extra options for a non-shift factory.

    Returns:
        The same ``backbone``, modified.

    Raises:
        ValueError: no residual block was found, or the options are inconsistent.
    """
    if place not in PLACES:
        raise ValueError(f"place must be one of {PLACES}, got {place!r}")
    if inplace and place == "residual":
        raise ValueError(
            "inplace=True with place='residual' would shift the shortcut too (the block input is "
            "both the residual branch input and the identity); use place='inplace' or an "
            "out-of-place shift"
        )
    factory = resolve_temporal_layer(temporal_layer)
    options = dict(layer_options)
    if factory is _shift_layer:
        options.update(fold_div=fold_div, direction=direction, inplace=inplace)
    stages = _find_sites(backbone)
    if not stages:
        raise ValueError(
            f"temporalize found no residual block in {type(backbone).__name__}: expected "
            "torchvision-style ResNet blocks (conv1 + downsample inside nn.Sequential stages) "
            "or MobileNetV2 InvertedResidual blocks (use_res_connect + conv)"
        )
    step = block_stride or _block_step(stages)
    pool_before = _pool_stage(backbone, stages) if temporal_pool else None
    segments = num_segments
    wrapped = 0
    for sites in stages:
        if pool_before is not None and sites[0].stage_name == pool_before:
            segments = pooled_segments(num_segments)
        for site in sites:
            if site.index % step:
                continue
            _wrap_site(site, factory, place=place, num_segments=segments, options=options)
            wrapped += 1
    if pool_before is not None:
        setattr(backbone, pool_before, TemporalPool(getattr(backbone, pool_before), num_segments))
    _logger.debug("temporalize: wrapped %d blocks of %s", wrapped, type(backbone).__name__)
    return backbone


def _wrap_site(site: _Site, factory, *, place: str, num_segments: int, options: dict) -> None:
    block = site.block
    if place == "inplace":
        channels = _first_conv(block).in_channels
        site.stage[site.index] = factory(
            block, num_segments=num_segments, channels=channels, **options
        )
    elif _is_resnet_block(block):
        block.conv1 = factory(
            block.conv1,
            num_segments=num_segments,
            channels=_first_conv(block.conv1).in_channels,
            **options,
        )
    else:
        first = block.conv[0]
        block.conv[0] = factory(
            first, num_segments=num_segments, channels=_first_conv(first).in_channels, **options
        )
