"""Running exported ONNX models with OpenVINO on the CPU, with the API of the onnxruntime runners.

The same verified ONNX files (:func:`timeshift.export.export_model`) are compiled by OpenVINO
for the CPU: offline clips with :class:`OpenVinoRecognizer` (and :class:`OpenVinoClips`, the form
:func:`timeshift.engine.backend.inference_model` returns), online frames with
:class:`OpenVinoOnlineRecognizer` (``step``/``reset``, the caches kept between frames).

Precision: ``fp32`` or ``bf16``, asked for through OpenVINO's inference precision hint. A CPU
without bf16 instructions (no AVX-512 BF16 or AMX) runs the model in fp32 instead: the precision
OpenVINO really uses is read back from the compiled model (``precision``) and a fallback is
logged. INT8 is not a hint: a quantised (QDQ) ONNX file runs its quantised layers in int8 on any
CPU OpenVINO supports (``int8_layers`` counts them), the rest at ``precision``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timeshift.errors import TimeshiftError
from timeshift.export.exporter import read_export_meta
from timeshift.export.onnx_models import OnlineCaches, _as_numpy, checked_frames

__all__ = [
    "PRECISIONS",
    "OpenVinoClips",
    "OpenVinoError",
    "OpenVinoOnlineRecognizer",
    "OpenVinoRecognizer",
    "openvino_available",
]

_logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
# OpenVINO element type names <-> ours
_HINTS = {"fp32": "f32", "bf16": "bf16"}
_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# the layers whose runtime precision tells whether a quantised file really runs in int8
_COMPUTE_LAYERS = {"Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution"}


class OpenVinoError(TimeshiftError, ValueError):
    """A file or input OpenVINO cannot run as asked (wrong export mode, precision or shape)."""


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported (``pip install 'timeshift[openvino]'``)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(
            "running models with OpenVINO needs the openvino package: "
            "pip install 'timeshift[openvino]'"
        ) from exc
    return openvino


def _compile(path: Path, precision: str, threads: int | None):
    """``(compiled model, precision OpenVINO uses)`` for the CPU."""
    if precision not in PRECISIONS:
        raise OpenVinoError(
            f"unknown precision {precision!r}; expected one of {PRECISIONS} (for int8, pass a "
            "quantised ONNX file: it runs in int8 at either precision)"
        )
    ov = _openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {
        hints.inference_precision: getattr(ov.Type, _HINTS[precision]),
        # every call is synchronous, one request at a time: the latency hint (one stream, all
        # the threads on it) is the fastest for that, batch 1 or not
        hints.performance_mode: hints.PerformanceMode.LATENCY,
    }
    if threads:
        config[props.inference_num_threads] = int(threads)
    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", config)
    used = compiled.get_property(hints.inference_precision).get_type_name()
    used = _NAMES.get(used, used)
    if used != precision:
        capabilities = core.get_property("CPU", props.device.capabilities)
        _logger.warning(
            "openvino: %s asked for but this CPU runs %s (its capabilities: %s); no bf16 "
            "instructions (AVX-512 BF16 or AMX), so OpenVINO falls back",
            precision,
            used,
            ", ".join(capabilities),
        )
    return compiled, used


def _int8_layers(compiled) -> int:
    """How many compute layers (convolutions, fully connected) OpenVINO runs in int8: > 0 for a
    quantised file whose quantisation the CPU plugin kept."""
    count = 0
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        runtime = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        count += kind in _COMPUTE_LAYERS and runtime in ("i8", "u8")
    return count


class _OpenVinoModel:
    mode = ""

    def __init__(
        self, path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.meta = read_export_meta(self.path)
        if self.meta.get("mode") != self.mode:
            other = "OpenVinoOnlineRecognizer" if self.mode == "offline" else "OpenVinoRecognizer"
            raise OpenVinoError(
                f"{self.path} is an {self.meta.get('mode')} export; {type(self).__name__} runs "
                f"{self.mode} exports (use {other}, or export with"
                f"{'' if self.mode == 'online' else 'out'} --online)"
            )
        self.requested_precision = precision
        self.compiled, self.precision = _compile(self.path, precision, threads)
        self.int8_layers = _int8_layers(self.compiled)
        if self.meta.get("quantization") and not self.int8_layers:
            _logger.warning(
                "openvino: %s is quantised but OpenVINO runs none of its layers in int8 on "
                "this CPU (capabilities without INT8?): expect fp32 speed",
                self.path,
            )
        # one request reused for every call: creating one per call costs more than a small frame
        self._request = self.compiled.create_infer_request()
        self.input_names = [port.any_name for port in self.compiled.inputs]
        self.output_names = [port.any_name for port in self.compiled.outputs]
        _logger.info(
            "openvino: %s compiled for the CPU in %s (%d int8 layers)",
            self.path.name,
            self.precision,
            self.int8_layers,
        )

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def in_chans(self) -> int:
        """Channels of a frame, read from the graph's input (3 for RGB, ``2 * new_length`` for
        flow)."""
        return self.compiled.inputs[0].partial_shape[-3].get_length()

    def _check_batch(self, n: int, what: str) -> None:
        fixed = self.meta.get("batch")
        if fixed is not None and n != fixed:
            raise OpenVinoError(
                f"{self.path} was exported for {what} of {fixed}, got {n}; export with "
                "--dynamic-batch to vary it"
            )


class OpenVinoRecognizer(_OpenVinoModel):
    """An offline export run by OpenVINO: ``recognizer(clips)`` with ``clips (N, T, C, H, W)``
    (float, normalised) -> logits ``(N, K)``; any N when exported with ``dynamic_batch=True``.

    Args:
        path: an offline ONNX export (fp32, or quantised QDQ for int8).
        precision: ``fp32`` or ``bf16`` (see the module doc for CPUs without bf16).
        threads: OpenVINO's inference threads (default: all the cores).
    """

    mode = "offline"

    @property
    def num_segments(self) -> int:
        return self.meta["num_segments"]

    def __call__(self, clips) -> torch.Tensor:
        clips = _as_numpy(clips)
        size = self.meta["input_size"]
        expected = (self.num_segments, self.in_chans, size, size)
        if clips.ndim != 5 or clips.shape[1:] != expected:
            raise OpenVinoError(
                f"expected clips (N, T, C, H, W) with T={expected[0]} (num_segments), "
                f"C={expected[1]}, H=W={size} (the exported size), got {tuple(clips.shape)}"
            )
        if clips.shape[0] == 0:  # nothing to compute
            return torch.zeros(0, self.num_classes)
        self._check_batch(clips.shape[0], "batches")
        # share_inputs: OpenVINO reads the clips where they are instead of copying them
        result = self._request.infer({0: clips}, share_inputs=True)
        return torch.from_numpy(np.array(result[0], dtype=np.float32))


class _Slot:
    """One of the two requests of an online recognizer, bound to the cache tensors it reads and
    the output tensors it writes (kept here: the request does not hold the numpy memory)."""

    def __init__(self, request, reads: tuple[list, list], writes: tuple[list, list]) -> None:
        self.request, self.reads, self.writes = request, reads, writes
        self.written: list[np.ndarray] = writes[0]
        self.frame = None
        for index, tensor in enumerate(reads[1][1:], start=1):
            request.set_input_tensor(index, tensor)
        for index, tensor in enumerate(writes[1]):
            request.set_output_tensor(index, tensor)


class OpenVinoOnlineRecognizer(OnlineCaches, _OpenVinoModel):
    """An online export run by OpenVINO frame by frame: the ``step``/``reset`` API and cache
    sizes of :class:`~timeshift.export.OnnxOnlineRecognizer`.

    ``step(frame)`` takes ``(C, H, W)`` or ``(N, C, H, W)`` (torch or numpy, float) and returns
    torch logits ``(K,)`` or ``(N, K)``; H and W are the exported size. Arguments as for
    :class:`OpenVinoRecognizer`.
    """

    mode = "online"

    def __init__(
        self, path: str | os.PathLike, *, precision: str = "fp32", threads: int | None = None
    ) -> None:
        super().__init__(path, precision=precision, threads=threads)
        self.cache_shapes = [tuple(s) for s in self.meta["cache_shapes"]]
        self.cache: list[np.ndarray] | None = None
        self._batch: int | None = None

    def reset(self) -> None:
        """Forget the past: the next frame starts new streams."""
        self.cache = None
        self._batch = None

    def step(self, frame) -> torch.Tensor:
        size = self.meta["input_size"]
        frames, single = checked_frames(frame, size, self.in_chans, OpenVinoError)
        n = frames.shape[0]
        if n == 0:  # no stream: nothing to compute, the caches stay as they are
            return torch.zeros(0, self.num_classes)
        self._check_batch(n, "streams")
        if self.cache is None:
            self._start(n)
        elif n != self._batch:
            raise OpenVinoError(
                f"{n} frames do not continue the {self._batch} streams; call reset() to start "
                "new streams"
            )
        # this frame's request reads the caches of one buffer set and writes its outputs into
        # the other; the next frame's request the other way round
        slot = self._slots[0]
        # the frame is read where it is (shared memory); the slot holds it until its next
        # frame, so a request never points at freed memory
        slot.frame = self._ov.Tensor(frames, shared_memory=True)
        slot.request.set_input_tensor(0, slot.frame)
        slot.request.infer(share_outputs=True)  # the outputs are our arrays: no copies
        self._slots.reverse()
        arrays = slot.written
        self.cache = arrays[1:]
        out = torch.from_numpy(arrays[0].copy())
        return out[0] if single else out

    def _start(self, n: int) -> None:
        """Two buffer sets (logits and caches) and two requests bound to them crosswise, once
        per set of streams: a frame then only sets its own input, nothing is bound, copied or
        allocated between frames but the logits. (The second request has its own intermediate
        memory, a few MB for a frame at 224; rebinding one request's 2 x (1 + caches) tensors
        every frame instead cost twice the per-frame overhead, ~0.16 vs ~0.08 ms measured.)"""
        ov = self._ov = _openvino()
        # the output per stream: a recognizer's (K,) logits, a detector's (K + 4, h, w) maps
        shape = self.compiled.outputs[0].partial_shape[1:]
        shape = [d.get_length() for d in shape] if shape.is_static else [self.num_classes]
        sets = []
        for _ in range(2):
            arrays = [np.zeros((n, *shape), np.float32)]
            arrays += [np.zeros((n, *s), np.float32) for s in self.cache_shapes]
            sets.append((arrays, [ov.Tensor(a, shared_memory=True) for a in arrays]))
        requests = [self._request, self.compiled.create_infer_request()]
        pairs = zip(requests, sets, sets[::-1], strict=True)
        self._slots = [_Slot(request, reads, writes) for request, reads, writes in pairs]
        self._batch = n


class OpenVinoClips(nn.Module):
    """An offline export on OpenVINO behind the interface of a Recognizer at inference (as
    :class:`~timeshift.engine.backend.OnnxClips` for onnxruntime): clips ``(N, T, 3, H, W)`` ->
    logits ``(N, K)`` on the clips' device.

    Args:
        path: an offline ONNX export (a dynamic batch for any N).
        num_segments: the model's segments (the export's T).
        precision: ``fp32`` or ``bf16``; the one OpenVINO uses is ``precision`` after.
        threads: OpenVINO's inference threads (default: all the cores).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_segments: int,
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.recognizer = OpenVinoRecognizer(path, precision=precision, threads=threads)
        self.path = Path(path)
        self.num_classes = self.recognizer.num_classes
        self.num_segments = num_segments
        self.precision = self.recognizer.precision

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.recognizer(clips).to(clips.device)
