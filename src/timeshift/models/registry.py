"""Model registry: ``@register_model`` entrypoints, ``create_model`` and ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from timeshift.models.backbones import add_non_local, create_backbone
from timeshift.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from timeshift.models.recognizer import Recognizer
from timeshift.models.temporalize import temporalize
from timeshift.ops.pool import pooled_segments

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TAGS",
    "ModelInfo",
    "build_recognizer",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is, beyond its weights."""

    name: str
    family: str  # "tsn", "tsm", ...
    backbone: str
    paper: str = ""
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    defaults: dict[str, Any] = field(default_factory=dict)
    # what the model can be used for, for callers and tests that iterate the registry:
    # "tiny" (test-sized), "causal" (streams frame by frame when built causal, see
    # timeshift.online), "exportable" (ONNX export verified)
    tags: frozenset[str] = frozenset()


TAGS = ("tiny", "causal", "exportable")


_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    family: str = "",
    backbone: str = "",
    paper: str = "",
    tags: Iterable[str] = (),
):
    """Register a model entrypoint under its function name; duplicate names raise.

    ``tags`` (see :data:`TAGS`) say what the model can be used for; ``"tiny"`` is added for
    backbones whose name says so.
    """
    tags = frozenset(tags) | ({"tiny"} if "tiny" in backbone else set())
    unknown = sorted(tags - set(TAGS))
    if unknown:
        raise ValueError(f"unknown model tags {unknown}; known: {list(TAGS)}")

    def decorator(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _ENTRYPOINTS:
            raise ValueError(f"model {name!r} is already registered")
        _ENTRYPOINTS[name] = f
        _INFO[name] = ModelInfo(
            name=name,
            family=family or name.split("_")[0],
            backbone=backbone,
            paper=paper,
            tags=tags,
        )
        return f

    return decorator(fn) if fn is not None else decorator


def list_models(pattern: str | None = None, *, tags: Iterable[str] = ()) -> list[str]:
    """Registered model names, sorted, optionally filtered by a shell-style ``pattern`` and by
    ``tags`` (a model is listed when it has all of them)."""
    wanted = frozenset([tags] if isinstance(tags, str) else tags)
    names = sorted(n for n in _ENTRYPOINTS if wanted <= _INFO[n].tags)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_info(name: str) -> ModelInfo:
    _entrypoint(name)
    return _INFO[name]


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    try:
        return _ENTRYPOINTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_ENTRYPOINTS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (see timeshift.list_models())") from None


def create_model(name: str, *, num_classes: int, num_segments: int, **kwargs: Any) -> Recognizer:
    """Build a registered video model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"tsm_resnet50"``.
        num_classes: classifier outputs.
        num_segments: frames per clip ``T``.
        **kwargs: model options: ``direction`` ("bidirectional"/"unidirectional"), ``fold_div``,
            ``place`` ("residual"/"inplace"), ``inplace``, ``temporal_pool``, ``non_local``,
            ``dropout``, ``partial_bn``, and backbone options such as ``width_mult``.

    Returns:
        A :class:`~timeshift.models.Recognizer` whose ``config`` rebuilds it.
    """
    if "every" in kwargs:  # its name before 0.2: older checkpoints carry it
        kwargs = dict(kwargs)
        kwargs["block_stride"] = kwargs.pop("every")
    model = _entrypoint(name)(num_classes=num_classes, num_segments=num_segments, **kwargs)
    model.config = {
        "name": name,
        "num_classes": num_classes,
        "num_segments": num_segments,
        "kwargs": _plain(kwargs),
    }
    return model


def _plain(value: Any) -> Any:
    """Plain dicts/lists/scalars (checkpoints are read with weights_only=True, which accepts
    nothing else), whatever container types the caller used (e.g. OmegaConf's)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or (
        isinstance(value, Sequence) and not isinstance(value, str | bytes)
    ):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"model option of type {type(value).__name__} cannot be stored: {value!r}")


def build_recognizer(
    backbone: str,
    *,
    num_classes: int,
    num_segments: int,
    temporal_layer: str | None = None,
    place: str = "residual",
    fold_div: int = 8,
    direction: str = "bidirectional",
    inplace: bool = False,
    temporal_pool: bool = False,
    non_local: bool = False,
    dropout: float = 0.5,
    partial_bn: bool = False,
    block_stride: int | None = None,
    **backbone_kwargs: Any,
) -> Recognizer:
    """Backbone by name -> optional temporal modules -> optional non-local -> Recognizer."""
    net = create_backbone(backbone, num_classes=0, **backbone_kwargs)
    stage_segments: dict[str, int] = {}
    if temporal_layer is not None:
        temporalize(
            net,
            num_segments=num_segments,
            temporal_layer=temporal_layer,
            place=place,
            fold_div=fold_div,
            direction=direction,
            inplace=inplace,
            temporal_pool=temporal_pool,
            block_stride=block_stride,
        )
        if temporal_pool:
            pooled = pooled_segments(num_segments)
            stage_segments = {"layer2": pooled, "layer3": pooled}
    if non_local:
        add_non_local(net, num_segments=stage_segments or num_segments)
    return Recognizer(
        net,
        num_classes=num_classes,
        num_segments=num_segments,
        dropout=dropout,
        partial_bn=partial_bn,
    )


_SHIFT_OPTIONS = ("place", "fold_div", "direction", "inplace", "temporal_pool", "block_stride")


def _tsn(backbone: str, **kwargs: Any) -> Recognizer:
    given = sorted(k for k in _SHIFT_OPTIONS if k in kwargs)
    if given:
        raise TypeError(f"TSN models have no temporal modules; unexpected options {given}")
    return build_recognizer(backbone, temporal_layer=None, **kwargs)


def _tsm(backbone: str, **kwargs: Any) -> Recognizer:
    return build_recognizer(backbone, temporal_layer="shift", **kwargs)


_TSN_PAPER = "Wang et al., Temporal Segment Networks, ECCV 2016"
_TSM_PAPER = "Lin et al., TSM: Temporal Shift Module for Efficient Video Understanding, ICCV 2019"


@register_model(family="tsn", backbone="resnet18", paper=_TSN_PAPER)
def tsn_resnet18(**kwargs: Any) -> Recognizer:
    return _tsn("resnet18", **kwargs)


@register_model(family="tsn", backbone="resnet34", paper=_TSN_PAPER)
def tsn_resnet34(**kwargs: Any) -> Recognizer:
    return _tsn("resnet34", **kwargs)


@register_model(family="tsn", backbone="resnet50", paper=_TSN_PAPER)
def tsn_resnet50(**kwargs: Any) -> Recognizer:
    return _tsn("resnet50", **kwargs)


@register_model(family="tsn", backbone="resnet101", paper=_TSN_PAPER)
def tsn_resnet101(**kwargs: Any) -> Recognizer:
    return _tsn("resnet101", **kwargs)


@register_model(family="tsn", backbone="mobilenet_v2", paper=_TSN_PAPER)
def tsn_mobilenet_v2(**kwargs: Any) -> Recognizer:
    return _tsn("mobilenet_v2", **kwargs)


@register_model(family="tsn", backbone="resnet_tiny", paper=_TSN_PAPER)
def tsn_resnet_tiny(**kwargs: Any) -> Recognizer:
    return _tsn("resnet_tiny", **kwargs)


@register_model(family="tsn", backbone="mobilenet_v2_tiny", paper=_TSN_PAPER)
def tsn_mobilenet_v2_tiny(**kwargs: Any) -> Recognizer:
    return _tsn("mobilenet_v2_tiny", **kwargs)


@register_model(family="tsm", backbone="resnet18", paper=_TSM_PAPER)
def tsm_resnet18(**kwargs: Any) -> Recognizer:
    return _tsm("resnet18", **kwargs)


@register_model(family="tsm", backbone="resnet34", paper=_TSM_PAPER)
def tsm_resnet34(**kwargs: Any) -> Recognizer:
    return _tsm("resnet34", **kwargs)


@register_model(family="tsm", backbone="resnet50", paper=_TSM_PAPER)
def tsm_resnet50(**kwargs: Any) -> Recognizer:
    return _tsm("resnet50", **kwargs)


@register_model(family="tsm", backbone="resnet101", paper=_TSM_PAPER)
def tsm_resnet101(**kwargs: Any) -> Recognizer:
    return _tsm("resnet101", **kwargs)


@register_model(family="tsm", backbone="resnet152", paper=_TSM_PAPER)
def tsm_resnet152(**kwargs: Any) -> Recognizer:
    return _tsm("resnet152", **kwargs)


@register_model(family="tsm", backbone="resnext50_32x4d", paper=_TSM_PAPER)
def tsm_resnext50_32x4d(**kwargs: Any) -> Recognizer:
    return _tsm("resnext50_32x4d", **kwargs)


@register_model(family="tsm", backbone="resnext101_32x8d", paper=_TSM_PAPER)
def tsm_resnext101_32x8d(**kwargs: Any) -> Recognizer:
    return _tsm("resnext101_32x8d", **kwargs)


@register_model(family="tsm", backbone="mobilenet_v2", paper=_TSM_PAPER)
def tsm_mobilenet_v2(**kwargs: Any) -> Recognizer:
    return _tsm("mobilenet_v2", **kwargs)


@register_model(family="tsm", backbone="resnet_tiny", paper=_TSM_PAPER)
def tsm_resnet_tiny(**kwargs: Any) -> Recognizer:
    return _tsm("resnet_tiny", **kwargs)


@register_model(family="tsm", backbone="mobilenet_v2_tiny", paper=_TSM_PAPER)
def tsm_mobilenet_v2_tiny(**kwargs: Any) -> Recognizer:
    return _tsm("mobilenet_v2_tiny", **kwargs)


@register_model(family="tsm", backbone="resnet50", paper=_TSM_PAPER)
def tsm_resnet50_nl(**kwargs: Any) -> Recognizer:
    """TSM-ResNet50 with 5 embedded-Gaussian non-local blocks (layer2: 0,2; layer3: 0,2,4)."""
    kwargs.setdefault("non_local", True)
    return _tsm("resnet50", **kwargs)


@register_model(family="tsm", backbone="resnet_bottleneck_tiny", paper=_TSM_PAPER)
def tsm_resnet_nl_tiny(**kwargs: Any) -> Recognizer:
    """Tiny bottleneck ResNet with non-local blocks in the reference placement (tests)."""
    kwargs.setdefault("non_local", True)
    return _tsm("resnet_bottleneck_tiny", **kwargs)
