"""Models: 2D backbones, temporalize, the Recognizer, the registry and checkpoint loading."""

from timeshift.models.checkpoints import (
    CheckpointError,
    LoadReport,
    load_checkpoint,
    load_model,
    save_model,
)
from timeshift.models.download import DownloadError
from timeshift.models.preprocessing import InputConfig, resolve_input_config
from timeshift.models.pretrained import (
    PretrainedEntry,
    class_names,
    list_pretrained,
    load_pretrained,
    pretrained_entry,
    register_pretrained,
)
from timeshift.models.recognizer import Recognizer, first_conv
from timeshift.models.registry import (
    MODALITIES,
    ModelInfo,
    build_recognizer,
    create_model,
    input_channels,
    list_models,
    model_info,
    register_model,
)
from timeshift.models.temporalize import BlockSite, register_temporal_layer, temporalize

# model families beyond TSN/TSM register themselves on import
from timeshift.models import blvnet, i3d, stsm, vsn  # noqa: F401  isort: skip

__all__ = [
    "MODALITIES",
    "BlockSite",
    "CheckpointError",
    "DownloadError",
    "InputConfig",
    "LoadReport",
    "ModelInfo",
    "PretrainedEntry",
    "Recognizer",
    "build_recognizer",
    "class_names",
    "create_model",
    "first_conv",
    "input_channels",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "model_info",
    "pretrained_entry",
    "register_model",
    "register_pretrained",
    "register_temporal_layer",
    "resolve_input_config",
    "save_model",
    "temporalize",
]
