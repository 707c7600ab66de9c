"""The one place that saves, loads and adapts checkpoints.

Formats understood by :func:`load_checkpoint`:

* ``timeshift``: our own, ``{"format": "timeshift", "config", "state_dict", "meta"}`` (or a bare
  ``Recognizer.state_dict()``);
* ``tsm``: the reference TSM code, ``{"epoch", "arch", "state_dict", "best_prec1"}`` with keys
  ``module.base_model.layer1.0.conv1.net.weight`` and ``module.new_fc.weight``;
* ``mmaction2``: ``{"meta", "state_dict"}`` with ``backbone.layer1.0.conv1.conv.net.weight``,
  ``backbone.layer1.0.conv1.bn.weight`` and ``cls_head.fc_cls.weight``;
* ``blvnet``: the official bLVNet-TAM code (IBM/bLVNet-TAM): its released models are bare state
  dicts with keys ``baseline_model.layer1.big.0.conv1.weight``, ``baseline_model.tam.prev.weight``
  and ``new_fc.weight`` (``baseline_model.fc.weight`` when trained without dropout); its training
  checkpoints wrap them as ``{"epoch", "arch", "state_dict", "best_top1", "optimizer"}`` with a
  ``module.`` prefix. The three depthwise convolutions of each TAM (``prev``/``curr``/``next``,
  or ``blending_layers.<i>`` for another range) become the rows of our ``tam.weight``;
* ``torchvision``: a 2D ImageNet ResNet/MobileNetV2 state dict, used to initialise a backbone (its
  classifier is dropped). A ``module.`` prefix (DataParallel) is ignored, so IBM/BigLittleNet's
  ImageNet bLResNet checkpoints initialise a bLVNet-TAM the same way (its TAMs start fresh).

All of them are matched against the model through *canonical* key names with the wrapper segments
(``.net`` of temporal shift/pool, ``.block`` of non-local) removed, which is what lets TSN weights
load into TSM models and back. A classifier whose shape differs (another class count) is dropped
with a warning; any other mismatch raises :class:`CheckpointError` listing the keys.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "SOURCES",
    "CheckpointError",
    "LoadReport",
    "atomic_save",
    "detect_source",
    "load_checkpoint",
    "load_model",
    "read_checkpoint",
    "save_model",
]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SOURCES = ("auto", "timeshift", "tsm", "mmaction2", "blvnet", "torchvision")
_WRAPPER_SEGMENTS = frozenset({"net", "block"})
_CLASSIFIER_PREFIXES = ("fc.",)
_MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    source: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # in the checkpoint, deliberately unused
    initialised: list[str] = field(default_factory=list)  # in the model, left at their init
    missing: list[str] = field(default_factory=list)  # only when strict=False
    unexpected: list[str] = field(default_factory=list)  # only when strict=False


# -- writing ------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then rename it into place.

    A crash mid-write leaves the previous file intact, never a truncated checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    meta: Mapping | None = None,
    extra: Mapping | None = None,
) -> Path:
    """Write weights plus construction config so that :func:`load_model` can rebuild the model.

    Args:
        model: a model built by :func:`timeshift.create_model` (it carries ``config``).
        path: destination file, written atomically.
        meta: extra plain data to store (class names, training epoch, accuracy, ...).
        extra: further top-level entries (the trainer's ``train_state``); ignored by
            :func:`load_model`.
    """
    config = getattr(model, "config", None)
    if not config:
        raise ValueError(
            "save_model needs a model built by timeshift.create_model (it records the "
            "construction config); for other modules save model.state_dict() with atomic_save"
        )
    payload = {
        "format": "timeshift",
        "format_version": FORMAT_VERSION,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
        **dict(extra or {}),
    }
    return atomic_save(payload, path)


# -- reading ------------------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling/zip errors come in many types
        raise CheckpointError(
            f"cannot read checkpoint {path}: {exc}. It must be a torch.save file loadable with "
            "weights_only=True (tensors and plain containers only)"
        ) from exc


def load_model(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    num_segments: int = 8,
    **kwargs: Any,
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` and load its weights (strictly).

    The stored ``meta`` is attached to the model as ``model.checkpoint_meta``. With ``name``
    (and ``num_classes``), the model is built with ``create_model(name, ...)`` instead and the
    weights are loaded from any supported format (reference TSM, MMAction2, ...); its
    ``checkpoint_meta`` is then empty (no class names).
    """
    from timeshift.models.registry import create_model

    if name is not None:
        if num_classes is None:
            raise ValueError(f"loading {path} into {name} needs num_classes")
        model = create_model(name, num_classes=num_classes, num_segments=num_segments, **kwargs)
        load_checkpoint(model, path)
        model.checkpoint_meta = {}
        return model
    payload = read_checkpoint(path)
    if not (isinstance(payload, Mapping) and payload.get("format") == "timeshift"):
        raise CheckpointError(
            f"{path} is not a timeshift checkpoint (no 'format': 'timeshift'); to load weights "
            "from another format (reference TSM, MMAction2, ...), pass the model: "
            "load_model(path, name=..., num_classes=...), on the command line --model NAME "
            "--num-classes K --frames T"
        )
    version = payload.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version}; this timeshift reads up to {FORMAT_VERSION}"
        )
    config = payload["config"]
    model = create_model(
        config["name"],
        num_classes=config["num_classes"],
        num_segments=config["num_segments"],
        **config.get("kwargs", {}),
    )
    load_checkpoint(model, payload, source="timeshift")
    model.checkpoint_meta = dict(payload.get("meta", {}))
    return model


def _state_dict_of(payload: Any, origin: str) -> dict[str, torch.Tensor]:
    state = payload
    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        state = payload["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{origin}: no state dict found (expected a 'state_dict' mapping)")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{origin}: the state dict holds no tensors")
    return tensors


def detect_source(payload: Any) -> str:
    """Guess which format a loaded checkpoint is in (one of ``SOURCES`` but ``"auto"``)."""
    if isinstance(payload, Mapping) and payload.get("format") == "timeshift":
        return "timeshift"
    keys = list(_state_dict_of(payload, "checkpoint"))
    stripped = [k.removeprefix("module.") for k in keys]
    if any(k.startswith("baseline_model.") for k in stripped):
        return "blvnet"  # checked before "tsm": both name their classifier new_fc
    if any(k.startswith(("base_model.", "new_fc.")) for k in stripped):
        return "tsm"
    if any(k.startswith("cls_head.") for k in keys) or "backbone.conv1.conv.weight" in keys:
        return "mmaction2"
    if any(k.startswith("backbone.") for k in keys):
        return "timeshift"
    if any(re.match(r"^features\.\d+\.conv\.0\.weight$", k) for k in keys):
        return "tsm"  # the reference online demo's bare MobileNetV2 (plain Sequential blocks)
    if any(k.startswith(("conv1.", "layer1.", "features.")) for k in stripped):
        return "torchvision"
    raise CheckpointError(
        "cannot tell the checkpoint format from its keys (first: "
        f"{keys[:3]}); pass source= one of {SOURCES[1:]}"
    )


# -- key adaptation -------------------------------------------------------------------------------
def _canonical(key: str) -> str:
    return ".".join(p for p in key.split(".") if p not in _WRAPPER_SEGMENTS)


def _from_tsm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("new_fc."):
            key = "fc." + key.removeprefix("new_fc.")
        elif key.startswith(("base_model.fc.", "base_model.classifier.")):
            # with dropout=0 the reference replaces the backbone's last layer by the classifier
            key = "fc." + key.split(".", 2)[2]
        elif key.startswith("base_model."):
            key = "backbone." + key.removeprefix("base_model.")
        elif key.startswith("classifier."):
            # the online demo's bare MobileNetV2: features.* and a plain Linear classifier
            key = "fc." + key.removeprefix("classifier.")
        else:
            key = "backbone." + key
        out[key] = value
    return out


_MM_CONV = re.compile(r"\.conv(\d)\.conv\.")
_MM_BN = re.compile(r"\.conv(\d)\.bn\.")
# mmcv NonLocal3d (ConvModule-based) -> the reference layout (plain convs, W = conv + BN)
_MM_NON_LOCAL = {
    ".non_local_block.theta.conv.": ".nl.theta.",
    ".non_local_block.phi.0.conv.": ".nl.phi.0.",
    ".non_local_block.g.0.conv.": ".nl.g.0.",
    ".non_local_block.conv_out.conv.": ".nl.W.0.",
    ".non_local_block.conv_out.bn.": ".nl.W.1.",
}


def _from_mmaction2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith("cls_head.fc_cls."):
            key = "fc." + key.removeprefix("cls_head.fc_cls.")
        else:
            key = _MM_CONV.sub(r".conv\1.", key)
            key = _MM_BN.sub(r".bn\1.", key)
            key = key.replace(".downsample.conv.", ".downsample.0.")
            key = key.replace(".downsample.bn.", ".downsample.1.")
            for old, new in _MM_NON_LOCAL.items():
                key = key.replace(old, new)
        out[key] = value
    # mmcv's conv_out has no bias (a norm follows it): the reference's W.0 bias is then zero
    for key in [k for k in out if k.endswith(".nl.W.0.weight")]:
        bias = key.removesuffix("weight") + "bias"
        if bias not in out:
            out[bias] = out[key].new_zeros(out[key].shape[0])
    if any(".nl." in k for k in out):
        _logger.info(
            "MMAction2 non-local blocks mapped assuming its TSM-NL config "
            "(embedded_gaussian, sub_sample=True, use_scale=False)"
        )
    return out


def _from_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        if key.startswith(("fc.", "classifier.1.")):
            # the 2D ImageNet classifier: kept only if the model has the same classes
            key = "fc." + key.split(".")[-1]
        else:
            key = "backbone." + key
        out[key] = value
    return out


# official bLVNet-TAM: one depthwise conv per temporal offset, (C, 1, 1, 1) each
_BLV_TAM = re.compile(
    r"^(?P<module>(?:.+\.)?tam)\.(?:(?P<named>prev|curr|next)|blending_layers\.(?P<index>\d+))"
    r"\.weight$"
)
_BLV_TAM_ROWS = {"prev": 0, "curr": 1, "next": 2}


def _from_blvnet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    tams: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("new_fc."):
            key = "fc." + key.removeprefix("new_fc.")
        elif key.startswith("baseline_model.fc."):
            # without dropout the official code keeps the classifier inside the backbone
            key = "fc." + key.removeprefix("baseline_model.fc.")
        else:
            key = "backbone." + key.removeprefix("baseline_model.")
        m = _BLV_TAM.match(key)
        if m:
            row = _BLV_TAM_ROWS[m["named"]] if m["named"] else int(m["index"])
            tams.setdefault(m["module"], {})[row] = value
        else:
            out[key] = value
    for module, rows in tams.items():
        if sorted(rows) != list(range(len(rows))):
            raise CheckpointError(
                f"bLVNet checkpoint: {module} has temporal aggregation weights for offsets "
                f"{sorted(rows)}; expected prev/curr/next or blending_layers.0..r-1"
            )
        # row i weights input frame t + i - r//2 of output frame t, as TemporalAggregation
        out[module + ".weight"] = torch.stack([rows[i].reshape(-1) for i in range(len(rows))])
    return out


_REF_MBV2_CONV = re.compile(r"^(backbone\.features\.(\d+)\.conv\.)(\d+)\.(.+)$")
# reference TSM MobileNetV2 (plain Sequential) -> torchvision layout (Conv2dNormActivation)
_REF_MBV2_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_REF_MBV2_NO_EXPAND = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


def _mobilenet_reference_layout(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the reference TSM MobileNetV2 keys (``features.3.conv.0.weight``) to torchvision's."""
    depth: dict[str, int] = {}
    for key in state:
        m = _REF_MBV2_CONV.match(key)
        if m:
            depth[m.group(2)] = max(depth.get(m.group(2), 0), int(m.group(3)))
    out = {}
    for key, value in state.items():
        m = _REF_MBV2_CONV.match(key)
        if m:
            table = _REF_MBV2_EXPAND if depth[m.group(2)] >= 6 else _REF_MBV2_NO_EXPAND
            key = f"{m.group(1)}{table[m.group(3)]}.{m.group(4)}"
        out[key] = value
    return out


def _is_reference_mobilenet(state: Mapping[str, torch.Tensor]) -> bool:
    return any(
        re.match(r"^backbone\.features\.\d+\.conv\.0\.weight$", k) and v.dim() == 4
        for k, v in state.items()
    )


def _to_canonical(payload: Any, source: str, origin: str) -> dict[str, torch.Tensor]:
    state = _state_dict_of(payload, origin)
    if source == "tsm":
        state = _from_tsm(state)
    elif source == "mmaction2":
        state = _from_mmaction2(state)
    elif source == "blvnet":
        state = _from_blvnet(state)
    elif source == "torchvision":
        state = _from_torchvision(state)
    canonical = {_canonical(k): v for k, v in state.items()}
    if source in ("tsm", "torchvision") and _is_reference_mobilenet(canonical):
        canonical = _mobilenet_reference_layout(canonical)
    return canonical


def _listing(title: str, keys: list[str]) -> str:
    if not keys:
        return f"\n  {title}: none"
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"\n  {title} ({len(keys)}): {shown}{more}"


def load_checkpoint(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping,
    *,
    source: str = "auto",
    strict: bool = True,
) -> LoadReport:
    """Load weights from any supported format into ``model``.

    Args:
        model: a :class:`~timeshift.models.Recognizer` (keys ``backbone.*``, ``fc.*``).
        checkpoint: a file path, or an already loaded checkpoint object.
        source: ``"auto"`` or one of ``"timeshift"``, ``"tsm"``, ``"mmaction2"``,
            ``"blvnet"``, ``"torchvision"``.
        strict: raise :class:`CheckpointError` on missing/unexpected keys (the 2D classifier of
            torchvision weights, a classifier with another class count, and new non-local
            blocks or temporal aggregation modules when initialising from 2D weights are
            expected and never an error).

    Returns:
        A :class:`LoadReport`.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    origin = str(checkpoint) if isinstance(checkpoint, str | os.PathLike) else "checkpoint"
    payload = (
        read_checkpoint(checkpoint) if isinstance(checkpoint, str | os.PathLike) else checkpoint
    )
    if source == "auto":
        source = detect_source(payload)
    report = LoadReport(source=source)
    incoming = _to_canonical(payload, source, origin)

    target = model.state_dict()
    by_canonical: dict[str, str] = {}
    for key in target:
        canon = _canonical(key)
        if canon in by_canonical:
            raise CheckpointError(f"model keys {by_canonical[canon]} and {key} are ambiguous")
        by_canonical[canon] = key

    mapped: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    for canon, value in incoming.items():
        key = by_canonical.get(canon)
        if key is None:
            unexpected.append(canon)
        elif target[key].shape != value.shape and not _inflatable(target[key], value):
            if key.startswith(_CLASSIFIER_PREFIXES):
                report.dropped.append(canon)
            else:
                mismatched.append(
                    f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}"
                )
        else:
            mapped[key] = value
    if any(k.startswith(_CLASSIFIER_PREFIXES) for k in report.dropped):
        log = _logger.info if source == "torchvision" else _logger.warning
        log(
            "%s: classifier shape differs from the model's (%d classes); it was not loaded and "
            "keeps its fresh initialisation",
            origin,
            getattr(model, "num_classes", -1),
        )

    missing = [k for k in target if k not in mapped]
    allowed_missing = [k for k in missing if _may_stay_initialised(k, source, report)]
    missing = [k for k in missing if k not in allowed_missing]
    report.initialised = allowed_missing
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"{origin} ({source} format) does not fit {type(model).__name__}"
            + (_listing("shape mismatches", mismatched) if mismatched else "")
            + _listing("missing in checkpoint", missing)
            + _listing("unexpected in checkpoint", unexpected)
        )
    report.missing, report.unexpected = missing, unexpected
    model.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    # our own checkpoints load silently; conversions from other formats are worth a line
    (_logger.debug if source == "timeshift" else _logger.info)(
        "loaded %d tensors from %s (%s format); %d left initialised, %d dropped",
        len(mapped),
        origin,
        source,
        len(report.initialised),
        len(report.dropped),
    )
    return report


def _inflatable(target: torch.Tensor, value: torch.Tensor) -> bool:
    """A 2D conv kernel for an inflated (3D) one: ``InflatedConv`` inflates it on load."""
    return (
        target.dim() == 5
        and value.dim() == 4
        and target.shape[:2] == value.shape[:2]
        and target.shape[3:] == value.shape[2:]
    )


def _may_stay_initialised(key: str, source: str, report: LoadReport) -> bool:
    if key.endswith("num_batches_tracked"):
        return True  # absent from checkpoints written by old PyTorch versions
    classifier_dropped = any(k.startswith(_CLASSIFIER_PREFIXES) for k in report.dropped)
    if key.startswith(_CLASSIFIER_PREFIXES) and (source == "torchvision" or classifier_dropped):
        return True
    # non-local blocks and temporal aggregation modules added on top of 2D ImageNet weights
    # start fresh
    return source == "torchvision" and (".nl." in key or ".tam." in key)
