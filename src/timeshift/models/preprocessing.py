"""What a model expects of its input frames, resolved in one place.

A model's frames are resized (shorter side to ``scale_size``), cropped to ``input_size`` and
normalised by ``mean`` / ``std``; a frame is ``new_length`` stacked images of its
``modality`` (RGB, or the x and y images of optical flow). :func:`resolve_input_config` takes
each value from the checkpoint the model was loaded from (``model.checkpoint_meta``, written by
training and export) over the default of its registered architecture
(:class:`~timeshift.models.ModelInfo`; for flow the reference's flow normalisation), the way
timm's ``resolve_data_config`` reads a model's pretrained config. ``test``, ``predict``,
``export`` and ``stream`` all ask it, so no call site re-types a default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from timeshift.models.recognizer import DEFAULT_NEW_LENGTH

__all__ = [
    "FLOW_MEAN",
    "FLOW_STD",
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
# flow images (0..255, zero motion 128) as the reference TSM/TSN ResNet/MobileNet models take
# them: input_mean [0.5], input_std [np.mean(IMAGENET_STD)] = 0.226, for every channel
FLOW_MEAN = (0.5,)
FLOW_STD = (0.226,)


def default_scale_size(input_size: int) -> int:
    """The shorter side before the test crop when nothing says otherwise: 256 for 224 (the
    reference test protocol), in proportion for other sizes."""
    return input_size * 256 // 224


@dataclass(frozen=True)
class InputConfig:
    """Frame preprocessing of a model: crop size, resize size, normalisation, and what a
    frame is (``modality``: "rgb" or "flow"; ``new_length`` images stacked per frame)."""

    input_size: int
    scale_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    modality: str = "rgb"
    new_length: int = 1

    def as_meta(self) -> dict[str, Any]:
        """The form checkpoints and exports store (plain lists); the modality only when it is
        not single RGB frames, which is what metadata without it means."""
        meta = {
            "input_size": self.input_size,
            "scale_size": self.scale_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if (self.modality, self.new_length) != ("rgb", 1):
            meta.update(modality=self.modality, new_length=self.new_length)
        return meta


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
    modality, new_length = _input_kind(model, config, stored)
    # normalisation defaults per modality: the registry's (ImageNet) for RGB, the reference's
    # for flow; a checkpoint's own values win
    mean, std = (info.mean, info.std) if modality == "rgb" else (FLOW_MEAN, FLOW_STD)
    return InputConfig(
        input_size=size,
        scale_size=int(scale or default_scale_size(size)),
        mean=_floats(stored.get("mean") or mean),
        std=_floats(stored.get("std") or std),
        modality=modality,
        new_length=new_length,
    )


def _input_kind(
    model: nn.Module | None, config: Mapping[str, Any], stored: Mapping[str, Any]
) -> tuple[str, int]:
    """``(modality, new_length)``: the metadata's, else the model's own (its first conv was
    built for them), else its construction config's, else RGB single frames."""
    kwargs = config.get("kwargs") or {}
    modality = stored.get("modality") or getattr(model, "modality", None)
    modality = str(modality or kwargs.get("modality") or "rgb")
    length = stored.get("new_length") or getattr(model, "new_length", None)
    length = length or kwargs.get("new_length") or DEFAULT_NEW_LENGTH[modality]
    return modality, int(length)


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
