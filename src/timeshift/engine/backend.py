"""How a model runs at inference (``predict``, ``test``, ``stream``): backend and memory format.

``auto`` is the fastest path measured on CPU by ``timeshift bench latency`` / ``throughput`` /
``online`` (see docs/benchmarks.md): onnxruntime when it is installed, and eager PyTorch in
channels_last otherwise (and on GPU). ``torch.compile`` is available on request; on the CPUs
measured it was not faster than eager channels_last and costs a minute or more of compilation.

onnxruntime runs an ONNX export of the model, made once and verified against eager PyTorch,
then cached under ``$TIMESHIFT_CACHE`` (default ``~/.cache/timeshift``) keyed by a hash of the
weights, the model configuration and the input size, so later runs start at once. ``openvino``
runs the same export with OpenVINO.

Precision (``fp32`` by default, so that ``auto`` is exact to PyTorch's fp32 up to rounding):
``bf16`` is OpenVINO's inference precision hint (``auto`` then means OpenVINO); ``int8`` runs
a statically quantised export (QDQ, per-channel weights, :mod:`timeshift.export.quantize`),
calibrated on clips of a list (:class:`Calibration`) and cached like the fp32 export, on
onnxruntime (``auto``) or OpenVINO. Lower precision is only ever chosen explicitly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BACKENDS",
    "FORMATS",
    "PRECISIONS",
    "Calibration",
    "ExportedModel",
    "OnnxClips",
    "cache_dir",
    "exported_onnx",
    "inference_model",
    "load_for_inference",
    "model_digest",
    "online_recognizer",
    "onnx_or_pytorch",
    "quantized_onnx",
    "resolve_backend",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compile", "onnxruntime", "openvino")
FORMATS = ("auto", "contiguous", "channels_last")
PRECISIONS = ("fp32", "bf16", "int8")
# the backends that run an ONNX export (and so a quantised one)
_ONNX_BACKENDS = ("onnxruntime", "openvino")


def cache_dir() -> Path:
    """Where exported models are cached: the timeshift cache (``$TIMESHIFT_CACHE``, else
    ``$XDG_CACHE_HOME/timeshift``, else ``~/.cache/timeshift``), as for downloaded weights."""
    from timeshift.models.download import cache_dir as timeshift_cache

    return timeshift_cache()


def _onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return _onnxruntime_available()  # the export it runs is made with onnx


def resolve_backend(backend: str, device: str | torch.device, precision: str = "fp32") -> str:
    """The backend that runs: ``auto`` -> onnxruntime on CPU when installed, else eager (fp32);
    OpenVINO for bf16; onnxruntime for int8. Others are checked against the precision."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "auto":
        if precision == "fp32":
            return "onnxruntime" if on_cpu and _onnxruntime_available() else "eager"
        backend = "openvino" if precision == "bf16" else "onnxruntime"
    if precision == "bf16" and backend != "openvino":
        raise ValueError(
            f"bf16 is OpenVINO's inference precision: use --backend openvino (not {backend})"
        )
    if precision == "int8" and backend not in _ONNX_BACKENDS:
        raise ValueError(
            f"int8 runs a quantised ONNX export: use --backend onnxruntime or openvino "
            f"(not {backend})"
        )
    if backend in _ONNX_BACKENDS and not on_cpu:
        raise ValueError(f"the {backend} backend runs on the CPU here; use --device cpu")
    if backend == "onnxruntime" and not _onnxruntime_available():
        raise ImportError(
            "the onnxruntime backend needs onnx and onnxruntime: pip install 'timeshift[export]'"
        )
    if backend == "openvino" and not _openvino_available():
        raise ImportError("the openvino backend needs OpenVINO: pip install 'timeshift[openvino]'")
    return backend


def model_digest(model: nn.Module, *parts: object) -> str:
    """A hash of the weights, the model's configuration and ``parts`` (e.g. input size)."""
    h = hashlib.sha256()
    h.update(json.dumps([getattr(model, "config", None), *parts], default=str).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


class OnnxClips(nn.Module):
    """An offline ONNX export behind the interface of a :class:`Recognizer` at inference:
    clips ``(N, T, 3, H, W)`` -> logits ``(N, K)``, any batch size."""

    def __init__(self, path: str | os.PathLike, *, num_segments: int, threads: int | None = None):
        super().__init__()
        from timeshift.export import OnnxRecognizer

        self.session = OnnxRecognizer(path, threads=threads)
        self.path = Path(path)
        self.num_classes = self.session.num_classes
        self.num_segments = num_segments

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.session(clips).to(clips.device)


def exported_onnx(
    model: nn.Module, *, size: int, online: bool = False, drop_future: bool = False
) -> Path:
    """The cached ONNX export of ``model`` (offline with a dynamic batch, or online), made and
    verified on first use.

    A cached file is used only if its SHA-256 matches the one stored next to it when it was
    written (``<file>.sha256``); an empty, truncated, corrupt or unhashed file is rebuilt.
    Raises ``OSError`` when the cache folder cannot be written (see :func:`onnx_or_pytorch`).
    """
    from timeshift.export import export_model
    from timeshift.export.exporter import EXPORT_FORMAT_VERSION

    mode = "online" if online else "offline"
    # the graph form is part of the key: exports made before the split offline graph are redone
    digest = model_digest(model, size, mode, drop_future, EXPORT_FORMAT_VERSION, "split-offline")
    path = cache_dir() / "onnx" / f"{digest}-{mode}-{size}.onnx"
    if path.exists():
        problem = _cache_problem(path)
        if problem is None:
            _logger.info("onnxruntime: using the cached export %s", path)
            return path
        _logger.warning("onnxruntime: the cached export %s is %s; rebuilding it", path, problem)
        _hash_file(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _logger.info("onnxruntime: exporting the model once (cached in %s)", path.parent)
    options = {"online": True, "drop_future": drop_future} if online else {"dynamic_batch": True}
    # export_model writes to a temporary file, flushes it and moves it into place once verified;
    # the hash is written last, so a file without one was never finished
    export_model(model, path, size=size, exporter="legacy", **options)
    _write_hash(path)
    return path


def _hash_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_hash(path: Path) -> None:
    target = _hash_file(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_sha256(path) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _cache_problem(path: Path) -> str | None:
    """Why a cached export cannot be trusted, or None."""
    if not path.is_file() or path.stat().st_size == 0:
        return "empty"
    try:
        stored = _hash_file(path).read_text(encoding="utf-8").strip()
    except OSError:
        return "without its hash (an interrupted or older export)"
    if stored != _sha256(path):
        return "corrupt (its content does not match its hash)"
    return None


@dataclass(frozen=True)
class Calibration:
    """Where an int8 model's calibration clips come from: a list file (any format ``test
    --data`` reads), decoded with the checkpoint's own preprocessing; the first ``clips`` are
    calibrated on, the next ``heldout`` measure the agreement with fp32."""

    data: str
    root: str | None = None
    clips: int = 32
    heldout: int = 16
    progress: bool = True  # calibration's progress bars (not part of what is calibrated on)

    def digest(self) -> str:
        """What the calibration is made of: the list's content, not only its name."""
        path = Path(self.data)
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else self.data
        return json.dumps([content, self.root, self.clips, self.heldout])


def quantized_onnx(
    model: nn.Module, *, size: int, calibration: Calibration | None, online: bool = False
) -> Path:
    """The cached int8 export of ``model`` (:func:`timeshift.export.quantize.quantize_model`),
    made on first use from ``calibration`` and reused while the weights, the size and the
    calibration list are the same. Its agreement with fp32 on held-out clips is logged."""
    from timeshift.export.exporter import EXPORT_FORMAT_VERSION, read_export_meta
    from timeshift.export.quantize import quantize_model

    if calibration is None:
        raise ValueError(
            "int8 needs calibration clips: give --calibration LIST (clips of your data, e.g. the "
            "training or validation list), or an int8 export made with 'timeshift export "
            "--quantize int8'"
        )
    mode = "online" if online else "offline"
    digest = model_digest(model, size, mode, EXPORT_FORMAT_VERSION, "int8", calibration.digest())
    path = cache_dir() / "onnx" / f"{digest}-{mode}-{size}-int8.onnx"
    if path.exists() and _cache_problem(path) is None:
        _logger.info("int8: using the cached quantised export %s", path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        quantize_model(
            model,
            path,
            calibration=calibration.data,
            root=calibration.root,
            calibration_clips=calibration.clips,
            heldout_clips=calibration.heldout,
            online=online,
            size=size,
            progress=calibration.progress,
            # any batch size at inference (test's --batch-size); online exports step 1 frame
            export_options=None if online else {"dynamic_batch": True},
        )
        _write_hash(path)
    _log_quantization(path, read_export_meta(path))
    return path


def _log_quantization(path: Path, meta: dict) -> None:
    """Lower precision is never silent: the agreement the int8 file was measured with."""
    report = meta.get("quantization") or {}
    if "top1_agreement" in report:
        _logger.info(
            "int8 %s: top-1 agreement with fp32 %.3f, largest logit difference %.3g "
            "(%s held-out clips)",
            path.name,
            report["top1_agreement"],
            report.get("max_logit_difference", float("nan")),
            report.get("heldout_clips", "?"),
        )
    else:
        _logger.warning("int8 %s: no agreement with fp32 recorded in the file", path)


class ExportedModel(nn.Module):
    """An ONNX export (``timeshift export``, fp32 or ``--quantize int8``) loaded where a
    checkpoint is expected (``test``, ``predict``): the export's metadata stands for the
    checkpoint's (classes, preprocessing, sampling), and :func:`inference_model` runs the file
    itself on onnxruntime or OpenVINO."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        from timeshift.export.exporter import read_export_meta

        self.path = Path(path)
        self.meta = read_export_meta(self.path)
        self.checkpoint_meta = dict(self.meta)
        self.config = dict(self.meta.get("config") or {})
        self.num_classes = int(self.meta["num_classes"])
        self.num_segments = int(self.meta["num_segments"])
        self.precision = self.meta.get("precision", "fp32")
        self.online = self.meta.get("mode") == "online"

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"{self.path} runs through inference_model (an ONNX export)")


def load_for_inference(path: str | os.PathLike, **kwargs) -> nn.Module:
    """A checkpoint (``load_model``, registry names included) or an ONNX export
    (:class:`ExportedModel`), for ``test`` and ``predict``."""
    if Path(path).suffix.lower() == ".onnx" and Path(path).is_file():
        if kwargs:
            raise ValueError(f"{sorted(kwargs)} do not apply to an ONNX export ({path})")
        return ExportedModel(path)
    from timeshift.models.checkpoints import load_model

    return load_model(path, **kwargs)


def _onnx_clips(path: Path, backend: str, precision: str, num_segments: int) -> nn.Module:
    threads = torch.get_num_threads()
    if backend == "openvino":
        from timeshift.export.openvino_models import OpenVinoClips

        # an int8 file runs at its own precision; fp32 / bf16 are OpenVINO's hint
        hint = "fp32" if precision == "int8" else precision
        return OpenVinoClips(path, num_segments=num_segments, precision=hint, threads=threads)
    return OnnxClips(path, num_segments=num_segments, threads=threads)


def _onnx_stepper(path: Path, backend: str, precision: str):
    if backend == "openvino":
        from timeshift.export.openvino_models import OpenVinoOnlineRecognizer

        hint = "fp32" if precision == "int8" else precision
        return OpenVinoOnlineRecognizer(path, precision=hint, threads=torch.get_num_threads())
    from timeshift.export import OnnxOnlineRecognizer

    return OnnxOnlineRecognizer(path)


def onnx_or_pytorch(
    model: nn.Module,
    *,
    backend: str,
    size: int,
    online: bool = False,
    drop_future: bool = False,
) -> Path | None:
    """The cached ONNX export for the ``onnxruntime`` backend, or ``None`` to run PyTorch.

    With ``backend="auto"`` anything that stops the export -- an unsupported model, a cache
    folder that cannot be written, a full disk -- falls back to PyTorch with a warning; with
    ``backend="onnxruntime"`` it raises.
    """
    try:
        return exported_onnx(model, size=size, online=online, drop_future=drop_future)
    except (OSError, RuntimeError, ValueError, TypeError) as exc:  # ExportError: RuntimeError
        if backend != "auto":
            raise
        where = f" (cache: {cache_dir()}; set TIMESHIFT_CACHE)" if isinstance(exc, OSError) else ""
        _logger.warning("onnxruntime: cannot export this model (%s)%s; running PyTorch", exc, where)
        return None


def inference_model(
    model: nn.Module,
    *,
    backend: str = "auto",
    memory_format: str = "auto",
    device: str | torch.device = "cpu",
    size: int = 224,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> nn.Module:
    """``model`` (a Recognizer, or an :class:`ExportedModel`) prepared to run clips the chosen
    way; the result takes ``(N, T, 3, H, W)`` and has ``num_classes`` and ``num_segments``.

    Args:
        backend: ``auto``, ``eager``, ``compile``, ``onnxruntime`` or ``openvino`` (see the
            module doc).
        memory_format: ``auto`` (channels_last), ``contiguous`` or ``channels_last``; PyTorch
            backends only (onnxruntime and OpenVINO pick their own layout).
        size: frame height and width, fixed in the ONNX export.
        precision: ``fp32``, ``bf16`` (OpenVINO) or ``int8`` (a quantised export, made from
            ``calibration`` and cached).
    """
    if memory_format not in FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; expected one of {FORMATS}")
    if isinstance(model, ExportedModel):
        return _exported_clips(model, backend, device, precision)
    chosen = resolve_backend(backend, device, precision)
    model = model.to(torch.device(device)).eval()
    if precision == "int8":
        path = quantized_onnx(model, size=size, calibration=calibration)
        return _onnx_clips(path, chosen, precision, model.num_segments)
    if chosen in _ONNX_BACKENDS:
        path = onnx_or_pytorch(model, backend=backend, size=size)
        if path is not None:
            return _onnx_clips(path, chosen, precision, model.num_segments)
        chosen = "eager"
    model.set_channels_last(memory_format != "contiguous")
    # the compiled module forwards attribute reads (num_classes, ...) to the model
    return torch.compile(model) if chosen == "compile" else model


def _exported_clips(model: ExportedModel, backend: str, device, precision: str) -> nn.Module:
    """An export runs as it was made: its own precision (an int8 file), on onnxruntime
    (``auto``) or OpenVINO."""
    if model.online:
        raise ValueError(f"{model.path} is an online export: test/predict run offline exports")
    own = model.precision if precision == "fp32" else precision
    if (model.precision == "int8") != (own == "int8"):
        raise ValueError(
            f"{model.path} is an {model.precision} export, asked for {own}: an int8 export "
            "runs at int8 only, and int8 needs one ('timeshift export --quantize int8')"
        )
    chosen = resolve_backend("onnxruntime" if backend == "auto" else backend, device, own)
    if own == "int8":
        _log_quantization(model.path, model.meta)
    return _onnx_clips(model.path, chosen, own, model.num_segments)


def online_recognizer(
    model: nn.Module,
    *,
    backend: str = "auto",
    memory_format: str = "auto",
    device: str | torch.device = "cpu",
    size: int = 224,
    drop_future: bool = False,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> tuple[object, str]:
    """``(recognizer, backend used)``: ``model`` stepped frame by frame, the online form of
    :func:`inference_model`: its cached online ONNX export (int8: quantised, the caches
    calibrated on streamed clips) on onnxruntime or OpenVINO when the backend resolves to one,
    else an :class:`~timeshift.online.OnlineRecognizer` in PyTorch (``"pytorch"``). All have
    ``step(frame) -> logits`` and ``reset()``."""
    from timeshift.online import OnlineRecognizer

    if memory_format not in FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; expected one of {FORMATS}")
    chosen = resolve_backend(backend, device, precision)
    if precision == "int8":
        if drop_future:
            raise ValueError("int8 streams uni-directional models only (not --drop-future)")
        path = quantized_onnx(model, size=size, calibration=calibration, online=True)
        return _onnx_stepper(path, chosen, precision), chosen
    if chosen in _ONNX_BACKENDS:
        path = onnx_or_pytorch(
            model, backend=backend, size=size, online=True, drop_future=drop_future
        )
        if path is not None:
            return _onnx_stepper(path, chosen, precision), chosen
    model = model.to(torch.device(device)).eval()
    if hasattr(model, "set_channels_last"):
        model.set_channels_last(memory_format != "contiguous")
    return OnlineRecognizer(model, drop_future=drop_future), "pytorch"
