"""timeshift: efficient video recognition with temporal shift and related temporal modules."""

import logging

from timeshift import ops
from timeshift.models import (
    CheckpointError,
    DownloadError,
    Recognizer,
    create_model,
    list_models,
    list_pretrained,
    load_checkpoint,
    load_model,
    load_pretrained,
    save_model,
    temporalize,
)
from timeshift.online import OnlineRecognizer
from timeshift.pipelines import pipeline

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DownloadError",
    "OnlineRecognizer",
    "Recognizer",
    "__version__",
    "create_model",
    "list_models",
    "list_pretrained",
    "load_checkpoint",
    "load_model",
    "load_pretrained",
    "ops",
    "pipeline",
    "save_model",
    "temporalize",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
