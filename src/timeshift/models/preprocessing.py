"""What a model expects of its input frames, resolved in one place.

A model's frames are resized (shorter side to ``scale_size``), cropped to ``input_size`` and
normalised by ``mean`` / ``std``. :func:`resolve_input_config` takes each value from the
checkpoint the model was loaded from (``model.checkpoint_meta``, written by training and
export) over the default of its registered architecture (:class:`~timeshift.models.ModelInfo`),
the way timm's ``resolve_data_config`` reads a model's pretrained config. ``test``, ``predict``,
``export`` and ``stream`` all ask it, so no call site re-types a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputConfig",
    "default_scale_size",
    "resolve_input_config",
]

# the models layer's copy of the ImageNet statistics (timeshift.data.transforms holds the data
# layer's: models never import data)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_scale_size(input_size: int) -> int:
    """The shorter side before the test crop when nothing says otherwise: 256 for 224 (the
    reference test protocol), in proportion for other sizes."""
    return input_size * 256 // 224


@dataclass(frozen=True)
class InputConfig:
    """Frame preprocessing of a model: crop size, resize size, normalisation."""

    input_size: int
    scale_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_meta(self) -> dict[str, Any]:
        """The form checkpoints and exports store (plain lists)."""
        return {
            "input_size": self.input_size,
            "scale_size": self.scale_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def resolve_input_config(
    model: nn.Module | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
    input_size: int | None = None,
) -> InputConfig:
    """The preprocessing ``model`` expects.

    Args:
        model: a model built by ``create_model`` / ``load_model`` (its ``checkpoint_meta`` and
            registered architecture are read); ``None`` for the registry defaults.
        meta: metadata to read instead of ``model.checkpoint_meta`` (an export's metadata).
        input_size: an explicit crop size (``--size``), over everything else; the resize size
            then follows it unless the metadata gives one for that same size.
    """
    from timeshift.models.registry import ModelInfo, model_info

    config = getattr(model, "config", None) or {}
    name = config.get("name")
    info = model_info(name) if name else ModelInfo(name="", family="", backbone="")
    stored = dict(meta if meta is not None else getattr(model, "checkpoint_meta", None) or {})
    size = int(input_size or stored.get("input_size") or info.input_size)
    scale = stored.get("scale_size") if size == stored.get("input_size") else None
    return InputConfig(
        input_size=size,
        scale_size=int(scale or default_scale_size(size)),
        mean=_floats(stored.get("mean") or info.mean),
        std=_floats(stored.get("std") or info.std),
    )


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
