"""Insert a temporal operation into the residual blocks of a 2D CNN.

Works on any module built like torchvision's ResNet (stages are ``nn.Sequential`` of blocks with a
``conv1``) or MobileNetV2 (``InvertedResidual`` blocks with ``use_res_connect`` and ``conv``),
including the in-project backbones. The operation is injected through a ``temporal_layer``
factory with one mapping of options, the way timm blocks take ``norm_layer``/``attn_layer``:
``"shift"`` is the TSM shift; other modules register their own names with
:func:`register_temporal_layer`. A factory declares the options it accepts by its keyword
parameters, so a wrong option is refused with the accepted ones named.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from timeshift.ops.pool import TemporalPool, pooled_segments
from timeshift.ops.shift import TemporalShift

__all__ = [
    "TEMPORALIZE_OPTIONS",
    "TEMPORAL_LAYERS",
    "BlockSite",
    "TemporalLayerFactory",
    "declared_options",
    "layer_name",
    "register_temporal_layer",
    "resolve_temporal_layer",
    "temporalize",
]

_logger = logging.getLogger(__name__)

PLACES = ("residual", "inplace")
# the reference shifts every 2nd block of very deep ResNets (layer3 with >= 23 blocks)
DEEP_LAYER3_BLOCKS = 23
# what temporalize itself takes besides the layer's options (model builders route these to it)
TEMPORALIZE_OPTIONS = ("place", "block_stride", "temporal_pool")
# what every factory is called with; not options a caller chooses
_CALL_ARGUMENTS = frozenset({"net", "num_segments", "channels", "num_classes"})


class TemporalLayerFactory(Protocol):
    def __call__(self, net: nn.Module, *, num_segments: int, channels: int, **options) -> nn.Module:
        """Wrap ``net`` so that the temporal op runs on its input of ``channels`` channels."""


TEMPORAL_LAYERS: dict[str, TemporalLayerFactory] = {}


def register_temporal_layer(name: str) -> Callable[[TemporalLayerFactory], TemporalLayerFactory]:
    """Register a temporal layer factory under a short name usable in ``temporalize`` and
    ``build_recognizer``. Its keyword parameters besides ``num_segments`` and ``channels`` are
    the options it accepts."""

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


def layer_name(layer: str | Callable[..., Any]) -> str:
    """How messages name a temporal layer: its registered name, else its function's name."""
    if isinstance(layer, str):
        return layer
    name = next((n for n, f in TEMPORAL_LAYERS.items() if f is layer), None)
    return name or getattr(layer, "__name__", type(layer).__name__)


def declared_options(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword options ``fn`` accepts (factories, backbones, builders), or ``None`` when it
    takes ``**kwargs`` and so accepts any."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(
        p.name
        for p in params
        if p.kind in keyword and p.default is not inspect.Parameter.empty
        and p.name not in _CALL_ARGUMENTS
    )  # fmt: skip


def _layer_options(
    layer: str | TemporalLayerFactory, factory: TemporalLayerFactory, options: Mapping[str, Any]
) -> dict[str, Any]:
    accepted = declared_options(factory)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if unknown:
        raise TypeError(
            f"temporal layer {layer_name(layer)!r} takes the options {sorted(accepted)}, "
            f"not {unknown}"
        )
    return dict(options)


@dataclass
class BlockSite:
    """A residual block ``temporalize`` can give a temporal op (what ``select`` is shown)."""

    stage_name: str  # the stage's module name, e.g. "layer3" or "features"
    stage: nn.Sequential
    index: int  # position of the block in its stage
    block: nn.Module


def _is_resnet_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "conv1", None), nn.Module) and hasattr(module, "downsample")


def _is_inverted_residual(module: nn.Module) -> bool:
    return hasattr(module, "use_res_connect") and isinstance(
        getattr(module, "conv", None), nn.Sequential
    )


def _find_sites(backbone: nn.Module) -> list[list[BlockSite]]:
    """Residual blocks grouped by the ``nn.Sequential`` stage that holds them."""
    stages = []
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        sites = [
            BlockSite(name, module, i, child)
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


def _block_step(stages: list[list[BlockSite]]) -> int:
    for sites in stages:
        if sites[0].stage_name.endswith("layer3") and len(sites[0].stage) >= DEEP_LAYER3_BLOCKS:
            return 2
    return 1


def _pool_stage(backbone: nn.Module, stages: list[list[BlockSite]]) -> str:
    """The stage in front of which temporal pooling goes: layer2 of a ResNet, as the reference."""
    if isinstance(getattr(backbone, "layer2", None), nn.Sequential):
        return "layer2"
    raise ValueError(
        "temporal_pool=True needs a ResNet-like backbone with a 'layer2' stage; "
        f"{type(backbone).__name__} has stages {[s[0].stage_name for s in stages]}"
    )


def _check_place(place: str, options: Mapping[str, Any]) -> None:
    if place not in PLACES:
        raise ValueError(f"place must be one of {PLACES}, got {place!r}")
    if options.get("inplace") and place == "residual":
        raise ValueError(
            "inplace=True with place='residual' would shift the shortcut too (the block input is "
            "both the residual branch input and the identity); use place='inplace' or an "
            "out-of-place shift"
        )


def temporalize(
    backbone: nn.Module,
    *,
    num_segments: int,
    temporal_layer: str | TemporalLayerFactory = "shift",
    layer_options: Mapping[str, Any] | None = None,
    place: str = "residual",
    block_stride: int | None = None,
    temporal_pool: bool = False,
    select: Callable[[BlockSite], bool] | None = None,
    **options: Any,
) -> nn.Module:
    """Insert a temporal op into the residual blocks of a 2D CNN, in place.

    Args:
        backbone: a torchvision-style ResNet/ResNeXt or MobileNetV2 (ours or a user's).
        num_segments: frames per video ``T``.
        temporal_layer: ``"shift"`` or another registered name, or a factory
            ``(net, *, num_segments, channels, **options) -> nn.Module`` wrapping ``net``.
        layer_options: the factory's options, e.g. ``{"fold_div": 8, "direction":
            "unidirectional"}`` for the shift; options it does not declare raise a ``TypeError``.
        place: ``"residual"`` wraps the first conv of the residual branch, so the shortcut keeps
            the current frame (TSM's choice); ``"inplace"`` gives the factory the whole block,
            shortcut included (its result replaces the block).
        block_stride: op in every k-th block of each stage; default 1, or 2 for ResNets whose layer3
            has >= 23 blocks (ResNet-101/152), as the reference.
        temporal_pool: max-pool time by 2 before ``layer2`` (ResNets); later ops see ``T/2``.
        select: which blocks get the op (among those ``block_stride`` keeps), for ops placed
            their own way: VSN's last blocks of each stage, I3D's inflation pattern.
        **options: the factory's options given directly (merged with ``layer_options``), e.g.
            ``temporalize(net, num_segments=8, fold_div=4)``.

    Returns:
        The same ``backbone``, modified.

    Raises:
        ValueError: no residual block was found, or the options are inconsistent.
        TypeError: an option the factory does not take.
    """
    both = sorted(set(options) & set(layer_options or {}))
    if both:
        raise TypeError(f"temporal layer options {both} given twice (layer_options and keywords)")
    factory = resolve_temporal_layer(temporal_layer)
    options = _layer_options(temporal_layer, factory, {**(layer_options or {}), **options})
    _check_place(place, options)
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
            if site.index % step or (select is not None and not select(site)):
                continue
            _wrap_site(site, factory, place=place, num_segments=segments, options=options)
            wrapped += 1
    if pool_before is not None:
        setattr(backbone, pool_before, TemporalPool(getattr(backbone, pool_before), num_segments))
    _logger.debug("temporalize: wrapped %d blocks of %s", wrapped, type(backbone).__name__)
    return backbone


def _wrap_site(site: BlockSite, factory, *, place: str, num_segments: int, options: dict) -> None:
    block = site.block
    if place == "inplace":
        parent, name, target = site.stage, str(site.index), block
    elif _is_resnet_block(block):
        parent, name, target = block, "conv1", block.conv1
    else:
        parent, name, target = block.conv, "0", block.conv[0]
    channels = _first_conv(target).in_channels
    wrapped = factory(target, num_segments=num_segments, channels=channels, **options)
    setattr(parent, name, wrapped)
