"""How a model runs at inference (``predict``, ``test``, ``stream``): backend and memory format.

``auto`` is the fastest path measured on CPU by ``timeshift bench latency`` / ``throughput`` /
``online`` (see docs/benchmarks.md): onnxruntime when it is installed, and eager PyTorch in
channels_last otherwise (and on GPU). ``torch.compile`` is available on request; on the CPUs
measured it was not faster than eager channels_last and costs a minute or more of compilation.

onnxruntime runs an ONNX export of the model, made once and verified against eager PyTorch,
then cached under ``$TIMESHIFT_CACHE`` (default ``~/.cache/timeshift``) keyed by a hash of the
weights, the model configuration and the input size, so later runs start at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BACKENDS",
    "FORMATS",
    "OnnxClips",
    "cache_dir",
    "exported_onnx",
    "inference_model",
    "model_digest",
    "onnx_or_pytorch",
    "resolve_backend",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compile", "onnxruntime")
FORMATS = ("auto", "contiguous", "channels_last")


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


def resolve_backend(backend: str, device: str | torch.device) -> str:
    """``auto`` -> onnxruntime on CPU when installed, else eager; others are checked."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "auto":
        return "onnxruntime" if on_cpu and _onnxruntime_available() else "eager"
    if backend == "onnxruntime":
        if not on_cpu:
            raise ValueError("the onnxruntime backend runs on the CPU; use --device cpu")
        if not _onnxruntime_available():
            raise ImportError(
                "the onnxruntime backend needs onnx and onnxruntime: "
                "pip install 'timeshift[export]'"
            )
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
) -> nn.Module:
    """``model`` (a Recognizer) prepared to run clips the chosen way; the result takes
    ``(N, T, 3, H, W)`` and has ``num_classes`` and ``num_segments``.

    Args:
        backend: ``auto``, ``eager``, ``compile`` or ``onnxruntime`` (see the module doc).
        memory_format: ``auto`` (channels_last), ``contiguous`` or ``channels_last``; PyTorch
            backends only (onnxruntime picks its own layout).
        size: frame height and width, fixed in the ONNX export.
    """
    if memory_format not in FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; expected one of {FORMATS}")
    chosen = resolve_backend(backend, device)
    model = model.to(torch.device(device)).eval()
    if chosen == "onnxruntime":
        path = onnx_or_pytorch(model, backend=backend, size=size)
        if path is not None:
            threads = torch.get_num_threads()
            return OnnxClips(path, num_segments=model.num_segments, threads=threads)
        chosen = "eager"
    model.set_channels_last(memory_format != "contiguous")
    # the compiled module forwards attribute reads (num_classes, ...) to the model
    return torch.compile(model) if chosen == "compile" else model


def online_recognizer(
    model: nn.Module,
    *,
    backend: str = "auto",
    memory_format: str = "auto",
    device: str | torch.device = "cpu",
    size: int = 224,
    drop_future: bool = False,
) -> tuple[object, str]:
    """``(recognizer, backend used)``: ``model`` stepped frame by frame, the online form of
    :func:`inference_model`: its cached online ONNX export on onnxruntime
    (:class:`~timeshift.export.OnnxOnlineRecognizer`) when the backend resolves to it, else an
    :class:`~timeshift.online.OnlineRecognizer` in PyTorch (``"pytorch"``). Both have
    ``step(frame) -> logits`` and ``reset()``."""
    from timeshift.online import OnlineRecognizer

    if memory_format not in FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; expected one of {FORMATS}")
    if resolve_backend(backend, device) == "onnxruntime":
        path = onnx_or_pytorch(
            model, backend=backend, size=size, online=True, drop_future=drop_future
        )
        if path is not None:
            from timeshift.export import OnnxOnlineRecognizer

            return OnnxOnlineRecognizer(path), "onnxruntime"
    model = model.to(torch.device(device)).eval()
    if hasattr(model, "set_channels_last"):
        model.set_channels_last(memory_format != "contiguous")
    return OnlineRecognizer(model, drop_future=drop_future), "pytorch"
