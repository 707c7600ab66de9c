"""Model registry: ``@register_model`` entrypoints, ``create_model`` and ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from timeshift.models.backbones import BACKBONES, add_non_local, create_backbone
from timeshift.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from timeshift.models.recognizer import DEFAULT_NEW_LENGTH, MODALITY_CHANNELS, Recognizer
from timeshift.models.temporalize import (
    TEMPORAL_LAYERS,
    TEMPORALIZE_OPTIONS,
    TemporalLayerFactory,
    declared_options,
    layer_name,
    resolve_temporal_layer,
    temporalize,
)
from timeshift.ops.pool import TemporalPool, pooled_segments

__all__ = [
    "DEFAULT_NEW_LENGTH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODALITIES",
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


# what a checkpoint's ``config["task"]`` is rebuilt with: ``"module:function"``, imported when
# needed (the detection package builds on this one, not the reverse)
TASK_BUILDERS = {
    "recognition": "timeshift.models.registry:create_model",
    "detection": "timeshift.detection.model:create_detector",
}


def task_builder(task: str) -> Callable[..., nn.Module]:
    """The function that builds models of ``task`` from ``(name, num_classes=, num_segments=,
    **kwargs)``, as stored in a checkpoint's config."""
    import importlib

    if task not in TASK_BUILDERS:
        raise ValueError(f"unknown model task {task!r}; expected one of {list(TASK_BUILDERS)}")
    module, _, function = TASK_BUILDERS[task].partition(":")
    return getattr(importlib.import_module(module), function)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    num_segments: int | None = None,
    pretrained: str | None = None,
    **kwargs: Any,
) -> Recognizer:
    """Build a registered video model, with published weights when ``pretrained`` names them.

    Args:
        name: a name from :func:`list_models`, e.g. ``"tsm_resnet50"``.
        num_classes: classifier outputs (with ``pretrained``: default the weights' own; another
            count re-initialises the classifier for fine-tuning).
        num_segments: frames per clip ``T`` (with ``pretrained``: default the weights' own).
        pretrained: a tag of the weights registry for this model (``"kinetics400_8f"``: see
            ``timeshift models --pretrained``); loaded by
            :func:`~timeshift.models.pretrained.load_pretrained`.
        **kwargs: model options: ``direction`` ("bidirectional"/"unidirectional"), ``fold_div``,
            ``place`` ("residual"/"inplace"), ``inplace``, ``temporal_pool``, ``non_local``,
            ``dropout``, ``partial_bn``, ``modality`` ("rgb"/"flow") and ``new_length``
            (frames stacked per segment, default 1 for RGB and 5 for flow: the first conv
            takes ``2 * new_length`` channels for flow), and backbone options such as
            ``width_mult``.

    Returns:
        A :class:`~timeshift.models.Recognizer` whose ``config`` rebuilds it.
    """
    if pretrained is not None:
        from timeshift.models.pretrained import load_pretrained

        return load_pretrained(
            f"{name}.{pretrained}", num_classes=num_classes, num_segments=num_segments, **kwargs
        )
    if num_classes is None or num_segments is None:
        raise TypeError(
            f"create_model({name!r}) needs num_classes and num_segments (or pretrained=TAG, "
            "whose weights give them)"
        )
    if "every" in kwargs:  # its name before 0.2: older checkpoints carry it
        kwargs = dict(kwargs)
        kwargs["block_stride"] = kwargs.pop("every")
    model = _entrypoint(name)(num_classes=num_classes, num_segments=num_segments, **kwargs)
    stored = _plain(kwargs)
    if "modality" in kwargs or "new_length" in kwargs:
        # both, resolved: a checkpoint rebuilds the same first conv whatever the defaults become
        stored.update(modality=model.modality, new_length=model.new_length)
    model.config = {
        "name": name,
        "num_classes": num_classes,
        "num_segments": num_segments,
        "kwargs": stored,
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
    temporal_layer: str | TemporalLayerFactory | None = None,
    layer_options: Mapping[str, Any] | None = None,
    transform: Callable[..., nn.Module] | None = None,
    non_local: bool = False,
    dropout: float = 0.5,
    partial_bn: bool = False,
    modality: str = "rgb",
    new_length: int | None = None,
    **options: Any,
) -> Recognizer:
    """Backbone by name -> temporal modules -> optional non-local -> Recognizer: every
    registered family is built here.

    Args:
        backbone: a name from ``timeshift.models.backbones.BACKBONES``; video backbones
            (bLResNet) get ``num_segments`` too.
        num_classes: classifier outputs.
        num_segments: frames per clip ``T``.
        temporal_layer: a registered temporal layer name (``"shift"``, ``"stshift"``, ``"tam"``,
            ``"inflate"``, ...) or a factory, inserted by :func:`~timeshift.temporalize`;
            ``None`` inserts none (TSN).
        layer_options: options of the temporal layer fixed by the entrypoint.
        transform: ``(backbone, *, num_segments, **its options) -> backbone`` for modules that
            choose their own places (VSN's shuffle blocks, I3D's inflation); instead of
            ``temporal_layer``.
        non_local: wrap the TSM-NL blocks (layer2: 0, 2; layer3: 0, 2, 4) in non-local blocks.
        dropout, partial_bn: Recognizer options.
        modality, new_length: the input frames (:func:`input_channels`); the backbone's
            ``in_chans`` follows from them.
        **options: given to whoever declares them by a keyword parameter: the temporal layer
            (``fold_div``, ``direction``, ``alpha``, ...), ``temporalize`` (``place``,
            ``block_stride``, ``temporal_pool``), the transform, then the backbone
            (``width_mult``, ``widths``, ...). An option nobody takes raises a ``TypeError``
            naming the accepted ones.
    """
    if temporal_layer is not None and transform is not None:
        raise ValueError("give a temporal_layer or a transform, not both")
    make_backbone = BACKBONES.get(backbone)
    if make_backbone is None:
        create_backbone(backbone)  # raises the unknown-backbone error
    consumers = _consumers(backbone, make_backbone, temporal_layer, transform)
    routed = _route_options(options, consumers, subject=_subject(temporal_layer, transform))
    new_length = _stacked_input(routed["backbone"], backbone, make_backbone, modality, new_length)
    if "num_segments" in inspect.signature(make_backbone).parameters:
        routed["backbone"]["num_segments"] = num_segments
    net = create_backbone(backbone, num_classes=0, **routed["backbone"])
    if temporal_layer is not None:
        temporalize(
            net,
            num_segments=num_segments,
            temporal_layer=temporal_layer,
            layer_options=layer_options,
            **routed["temporalize"],
            **routed["layer"],
        )
    if transform is not None:
        transform(net, num_segments=num_segments, **routed["transform"])
    if non_local:
        add_non_local(net, num_segments=_stage_segments(net, num_segments))
    return Recognizer(
        net,
        num_classes=num_classes,
        num_segments=num_segments,
        dropout=dropout,
        partial_bn=partial_bn,
        modality=modality,
        new_length=new_length,
    )


MODALITIES = tuple(MODALITY_CHANNELS)


def input_channels(modality: str = "rgb", new_length: int | None = None) -> int:
    """Channels of one input frame: ``new_length`` stacked images of ``modality`` (3 for RGB,
    2 for a flow field's x and y images; 10 for the reference flow models)."""
    if modality not in MODALITY_CHANNELS:
        raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    length = DEFAULT_NEW_LENGTH[modality] if new_length is None else new_length
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"new_length must be a whole number >= 1, got {new_length!r}")
    return MODALITY_CHANNELS[modality] * length


def _stacked_input(
    backbone_options: dict[str, Any],
    backbone: str,
    make_backbone: Callable[..., nn.Module],
    modality: str,
    new_length: int | None,
) -> int:
    """Set the backbone's ``in_chans`` for ``modality`` / ``new_length`` (left alone for plain
    RGB); returns the resolved ``new_length``."""
    channels = input_channels(modality, new_length)
    length = channels // MODALITY_CHANNELS[modality]
    if (modality, length) == ("rgb", 1):
        return length
    if "in_chans" in backbone_options:
        raise TypeError(
            f"give modality/new_length or in_chans, not both (in_chans="
            f"{backbone_options['in_chans']}; {modality} with new_length={length} is {channels})"
        )
    if "in_chans" not in (declared_options(make_backbone) or {"in_chans"}):
        raise TypeError(f"backbone {backbone!r} takes no in_chans: it cannot take {modality} input")
    backbone_options["in_chans"] = channels
    return length


# (key in the routed options, label in messages, accepted names or None for any)
_Consumer = tuple[str, str, frozenset[str] | None]
_ROUTES = ("layer", "temporalize", "transform", "backbone")


def _consumers(backbone: str, make_backbone, temporal_layer, transform) -> list[_Consumer]:
    consumers: list[_Consumer] = []
    if temporal_layer is not None:
        factory = resolve_temporal_layer(temporal_layer)
        label = f"temporal layer {layer_name(temporal_layer)!r}"
        consumers.append(("layer", label, declared_options(factory)))
        consumers.append(("temporalize", "temporalize", frozenset(TEMPORALIZE_OPTIONS)))
    if transform is not None:
        consumers.append(("transform", transform.__name__, declared_options(transform)))
    consumers.append(("backbone", f"backbone {backbone!r}", declared_options(make_backbone)))
    return consumers


def _subject(temporal_layer, transform) -> str:
    if temporal_layer is not None:
        return f"models with temporal layer {layer_name(temporal_layer)!r}"
    if transform is not None:
        return f"models built with {transform.__name__}"
    return "models with no temporal modules inserted"


def _route_options(
    options: Mapping[str, Any], consumers: list[_Consumer], *, subject: str
) -> dict[str, dict[str, Any]]:
    """Each option to the first consumer that declares it (one taking ``**kwargs`` takes what
    is left); options nobody takes raise one ``TypeError`` that names the accepted ones."""
    routed: dict[str, dict[str, Any]] = {key: {} for key in _ROUTES}
    left = dict(options)
    for key, _, accepted in consumers:
        for name in [n for n in left if accepted is not None and n in accepted]:
            routed[key][name] = left.pop(name)
    open_ended = next((key for key, _, accepted in consumers if accepted is None), None)
    if open_ended is not None:
        routed[open_ended].update(left)
    elif left:
        raise TypeError(_unknown_options_message(sorted(left), consumers, subject))
    return routed


def _unknown_options_message(unknown: list[str], consumers: list[_Consumer], subject: str) -> str:
    # options of another registered temporal layer: the commonest mistake (fold_div on STSM)
    owners = {
        name: layer
        for name in unknown
        for layer, factory in TEMPORAL_LAYERS.items()
        if name in (declared_options(factory) or ())
    }
    layers = _and([repr(layer) for layer in sorted(set(owners.values()))])
    hint = f" instead of {sorted(owners)} (options of {layers})"
    takes = [
        f"{label} takes {_and(sorted(accepted))}" + (hint if key == "layer" and owners else "")
        for key, label, accepted in consumers
        if accepted is not None
    ]
    if owners and not any(key == "layer" for key, _, _ in consumers):
        takes.insert(0, f"{sorted(owners)} are options of temporal layer {layers}")
    takes.append("the recognizer takes dropout, non_local, partial_bn, modality and new_length")
    return f"{subject} do not take {unknown}: " + "; ".join(takes)


def _and(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _stage_segments(net: nn.Module, num_segments: int) -> int | dict[str, int]:
    """Frames seen by the non-local stages: halved from layer2 on when time is pooled there."""
    if isinstance(getattr(net, "layer2", None), TemporalPool):
        pooled = pooled_segments(num_segments)
        return {"layer2": pooled, "layer3": pooled}
    return num_segments


def _tsn(backbone: str, **kwargs: Any) -> Recognizer:
    return build_recognizer(backbone, temporal_layer=None, **kwargs)


def _tsm(backbone: str, **kwargs: Any) -> Recognizer:
    return build_recognizer(backbone, temporal_layer="shift", **kwargs)


_TSN_PAPER = "Wang et al., Temporal Segment Networks, ECCV 2016"
_TSM_PAPER = "Lin et al., TSM: Temporal Shift Module for Efficient Video Understanding, ICCV 2019"
# TSN has no temporal op and TSM built with direction="unidirectional" only looks back: both
# stream frame by frame (timeshift.online); non-local blocks attend to every frame
_TSN = {"family": "tsn", "paper": _TSN_PAPER, "tags": ("causal", "exportable")}
_TSM = {"family": "tsm", "paper": _TSM_PAPER, "tags": ("causal", "exportable")}
_TSM_NL = {"family": "tsm", "paper": _TSM_PAPER, "tags": ("exportable",)}


@register_model(backbone="resnet18", **_TSN)
def tsn_resnet18(**kwargs: Any) -> Recognizer:
    return _tsn("resnet18", **kwargs)


@register_model(backbone="resnet34", **_TSN)
def tsn_resnet34(**kwargs: Any) -> Recognizer:
    return _tsn("resnet34", **kwargs)


@register_model(backbone="resnet50", **_TSN)
def tsn_resnet50(**kwargs: Any) -> Recognizer:
    return _tsn("resnet50", **kwargs)


@register_model(backbone="resnet101", **_TSN)
def tsn_resnet101(**kwargs: Any) -> Recognizer:
    return _tsn("resnet101", **kwargs)


@register_model(backbone="mobilenet_v2", **_TSN)
def tsn_mobilenet_v2(**kwargs: Any) -> Recognizer:
    return _tsn("mobilenet_v2", **kwargs)


@register_model(backbone="resnet_tiny", **_TSN)
def tsn_resnet_tiny(**kwargs: Any) -> Recognizer:
    return _tsn("resnet_tiny", **kwargs)


@register_model(backbone="mobilenet_v2_tiny", **_TSN)
def tsn_mobilenet_v2_tiny(**kwargs: Any) -> Recognizer:
    return _tsn("mobilenet_v2_tiny", **kwargs)


@register_model(backbone="resnet18", **_TSM)
def tsm_resnet18(**kwargs: Any) -> Recognizer:
    return _tsm("resnet18", **kwargs)


@register_model(backbone="resnet34", **_TSM)
def tsm_resnet34(**kwargs: Any) -> Recognizer:
    return _tsm("resnet34", **kwargs)


@register_model(backbone="resnet50", **_TSM)
def tsm_resnet50(**kwargs: Any) -> Recognizer:
    return _tsm("resnet50", **kwargs)


@register_model(backbone="resnet101", **_TSM)
def tsm_resnet101(**kwargs: Any) -> Recognizer:
    return _tsm("resnet101", **kwargs)


@register_model(backbone="resnet152", **_TSM)
def tsm_resnet152(**kwargs: Any) -> Recognizer:
    return _tsm("resnet152", **kwargs)


@register_model(backbone="resnext50_32x4d", **_TSM)
def tsm_resnext50_32x4d(**kwargs: Any) -> Recognizer:
    return _tsm("resnext50_32x4d", **kwargs)


@register_model(backbone="resnext101_32x8d", **_TSM)
def tsm_resnext101_32x8d(**kwargs: Any) -> Recognizer:
    return _tsm("resnext101_32x8d", **kwargs)


@register_model(backbone="mobilenet_v2", **_TSM)
def tsm_mobilenet_v2(**kwargs: Any) -> Recognizer:
    return _tsm("mobilenet_v2", **kwargs)


@register_model(backbone="resnet_tiny", **_TSM)
def tsm_resnet_tiny(**kwargs: Any) -> Recognizer:
    return _tsm("resnet_tiny", **kwargs)


@register_model(backbone="mobilenet_v2_tiny", **_TSM)
def tsm_mobilenet_v2_tiny(**kwargs: Any) -> Recognizer:
    return _tsm("mobilenet_v2_tiny", **kwargs)


@register_model(backbone="resnet50", **_TSM_NL)
def tsm_resnet50_nl(**kwargs: Any) -> Recognizer:
    """TSM-ResNet50 with 5 embedded-Gaussian non-local blocks (layer2: 0,2; layer3: 0,2,4)."""
    kwargs.setdefault("non_local", True)
    return _tsm("resnet50", **kwargs)


@register_model(backbone="resnet_bottleneck_tiny", **_TSM_NL)
def tsm_resnet_nl_tiny(**kwargs: Any) -> Recognizer:
    """Tiny bottleneck ResNet with non-local blocks in the reference placement (tests)."""
    kwargs.setdefault("non_local", True)
    return _tsm("resnet_bottleneck_tiny", **kwargs)
