"""Export for deployment (ONNX, TorchScript) and onnxruntime runners."""

from timeshift.export.exporter import (
    EXPORT_FORMAT_VERSION,
    ExportError,
    ExportResult,
    export_model,
    read_export_meta,
)
from timeshift.export.onnx_models import OnnxOnlineRecognizer, OnnxRecognizer

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "ExportError",
    "ExportResult",
    "OnnxOnlineRecognizer",
    "OnnxRecognizer",
    "export_model",
    "read_export_meta",
]
