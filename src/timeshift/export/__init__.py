"""Export for deployment (ONNX, TorchScript), INT8 quantisation, and the onnxruntime and
OpenVINO runners. TVM compilation is :mod:`timeshift.export.tvm_compile` (imported on use: it
loads TVM)."""

from timeshift.export.exporter import (
    EXPORT_FORMAT_VERSION,
    ExportError,
    ExportResult,
    export_model,
    read_export_meta,
)
from timeshift.export.onnx_models import OnnxOnlineRecognizer, OnnxRecognizer
from timeshift.export.openvino_models import OpenVinoOnlineRecognizer, OpenVinoRecognizer
from timeshift.export.quantize import QuantizationError, QuantizationReport, quantize_model

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "ExportError",
    "ExportResult",
    "OnnxOnlineRecognizer",
    "OnnxRecognizer",
    "OpenVinoOnlineRecognizer",
    "OpenVinoRecognizer",
    "QuantizationError",
    "QuantizationReport",
    "export_model",
    "quantize_model",
    "read_export_meta",
]
