"""INT8 static quantisation of an ONNX export, calibrated on real clips and checked on others.

The model is exported to fp32 ONNX first (:func:`~timeshift.export.export_model`, verified
against eager PyTorch), prepared with onnxruntime's ``quant_pre_process`` (shape inference and
graph optimisation) and quantised by ``quantize_static`` into the QDQ format: int8 weights (per
output channel) and 8-bit activations whose ranges come from running the fp32 model on the
first ``calibration_clips`` clips of a list file, decoded with the checkpoint's own
preprocessing. The ``heldout_clips`` clips that follow (never seen by the calibration) then run
through both files and the report says how often the int8 model's top-1 class is the fp32
model's, and by how much their logits differ.

Online (streaming) models take a frame and the caches of the previous frame; both are
calibrated: each calibration clip is streamed frame by frame through the fp32 online export
(reset per clip) and every frame is fed together with the caches the fp32 model produced for
it. Their held-out check streams every frame through each file (each with its own caches) and
compares the per-frame logits.

The defaults follow the CPU. On x86 onnxruntime's int8 kernels multiply uint8 activations by
int8 weights: with int8 activations TSM-ResNet18 and TSM-ResNet50 ran 1.7-1.8x *slower* than
fp32 on an AVX2 CPU, with uint8 1.3-1.8x faster, so activations are uint8 on x86 (int8
elsewhere). Without VNNI (AVX2 only) those kernels use ``vpmaddubsw``, whose 16-bit sums
saturate: there the int8 model's logits differed from fp32 twice as much as the quantisation
itself explains (the same graph run without the int8 kernels), and 7-bit weights
(``reduce_range``), which cannot saturate, removed the excess; they are the default there.

The graph's inputs and outputs stay float32 (QuantizeLinear / DequantizeLinear nodes sit at
its edges), so the int8 file runs with the same code as the fp32 one
(:class:`~timeshift.export.OnnxRecognizer`, :class:`~timeshift.export.OnnxOnlineRecognizer`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from timeshift.errors import TimeshiftError
from timeshift.export.exporter import (
    _onnx_session,
    _write_onnx_meta,
    export_model,
    read_export_meta,
)

__all__ = [
    "CALIBRATION_METHODS",
    "QuantizationError",
    "QuantizationReport",
    "calibration_feeds",
    "calibration_split",
    "cpu_has_vnni",
    "quantize_model",
    "quantize_onnx",
]

_logger = logging.getLogger(__name__)

# MinMax by default: Entropy gave the same logits and Percentile no better agreement on our
# models (benchmarks), while both keep every activation of every calibration run in memory
# (MinMax keeps a min and a max per tensor and run)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class QuantizationError(TimeshiftError):
    """The int8 model disagrees with the fp32 one more than allowed, or cannot be made."""


@dataclass
class QuantizationReport:
    """What :func:`quantize_model` wrote and how the int8 model compares with the fp32 one.

    ``top1_agreement``: the fraction of held-out predictions (clips offline, frames online)
    whose top-1 class is the fp32 model's; ``*_logit_difference``: max and mean
    ``|int8 - fp32|`` over those logits; ``*_latency_ms``: onnxruntime's mean time per run (a
    batch of clips offline, a frame online) during the held-out check, the first run excluded.
    """

    path: Path
    fp32_path: Path
    mode: str
    calibration_clips: int
    heldout_clips: int
    top1_agreement: float
    max_logit_difference: float
    mean_logit_difference: float
    fp32_bytes: int
    int8_bytes: int
    threshold: float
    passed: bool
    compared: int = 0
    calibration_method: str = "minmax"
    activation_type: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = False
    pre_processed: str = "symbolic"
    fp32_latency_ms: float | None = None
    int8_latency_ms: float | None = None
    calibration_seconds: float = 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["path"], out["fp32_path"] = str(self.path), str(self.fp32_path)
        return out


def _quantization_api():
    try:
        from onnxruntime import quantization
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ImportError(
            f"INT8 quantisation needs onnxruntime: pip install 'timeshift[export]' ({exc})"
        ) from exc
    return quantization, quant_pre_process


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI), whose int8 dot products do not
    saturate; ``False`` where ``/proc/cpuinfo`` cannot tell (not Linux/x86)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return bool({"avx512_vnni", "avx_vnni"} & set(flags))


def calibration_split(
    count: int, *, calibration_clips: int, heldout_clips: int, source: object = "the list"
) -> tuple[range, range]:
    """Indices of the calibration clips (the first ``calibration_clips`` of the list) and of
    the held-out clips (the ``heldout_clips`` that follow): disjoint and deterministic."""
    if calibration_clips < 1 or heldout_clips < 1:
        raise ValueError(
            f"calibration_clips and heldout_clips must be at least 1, got {calibration_clips} "
            f"and {heldout_clips}"
        )
    if count < 2:
        raise ValueError(
            f"{source}: {count} clip(s); quantisation needs calibration clips and held-out "
            "clips after them to check the result: list at least 2 (tens are better)"
        )
    calibration = range(min(calibration_clips, count - 1))
    heldout = range(len(calibration), min(count, len(calibration) + heldout_clips))
    if len(calibration) < calibration_clips or len(heldout) < heldout_clips:
        _logger.warning(
            "%s has %d clips: calibrating on %d and checking on %d (asked %d + %d)",
            source,
            count,
            len(calibration),
            len(heldout),
            calibration_clips,
            heldout_clips,
        )
    return calibration, heldout


def _clips_dataset(model: nn.Module, calibration, root, size: int | None):
    """The list's clips decoded as ``timeshift test`` decodes them for this checkpoint (its
    size, resize, mean and std; one centre crop)."""
    from timeshift.data.formats import read_annotations
    from timeshift.engine.evaluate import _preprocessing
    from timeshift.engine.loaders import eval_dataset
    from timeshift.models.preprocessing import resolve_input_config

    classes = (getattr(model, "checkpoint_meta", None) or {}).get("classes")
    # labels are not needed; the checkpoint's classes let lines name them
    ann = read_annotations(calibration, root=root, classes=classes)
    inputs = resolve_input_config(model, input_size=size)
    return eval_dataset(ann, num_segments=model.num_segments, **_preprocessing(inputs))


def _batches(dataset, indices: Sequence[int], batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(batch, T, C, H, W)`` float32 clips and how many of them are real: a short last
    batch of a fixed-batch graph is filled with clips from the start of ``indices``."""
    indices = list(indices)
    for start in range(0, len(indices), batch):
        chosen = indices[start : start + batch]
        real = len(chosen)
        chosen += [indices[i % len(indices)] for i in range(batch - real)]
        clips = np.stack([dataset[i][0].numpy() for i in chosen]).astype(np.float32)
        yield clips, real


def _stream(session, clips: np.ndarray, names: Sequence[str]):
    """Stream ``clips`` frame by frame from zero caches: ``(feed, outputs)`` per frame, each
    frame fed with the caches the previous one produced."""
    caches = [np.zeros((clips.shape[0], *s), np.float32) for s in _cache_shapes(session)]
    for t in range(clips.shape[1]):
        feed = dict(zip(names, [np.ascontiguousarray(clips[:, t]), *caches], strict=True))
        outputs = session.run(None, feed)
        yield feed, outputs
        caches = outputs[1:]


def _cache_shapes(session) -> list[tuple[int, ...]]:
    return [tuple(i.shape[1:]) for i in session.get_inputs()[1:]]


def calibration_feeds(
    fp32_path: str | os.PathLike | None,
    dataset,
    indices: Sequence[int],
    *,
    online: bool,
    batch: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """The inputs the calibration runs: a batch of clips per feed offline; online, every frame
    of each clip (in order, from zero caches) with the caches the fp32 export ``fp32_path``
    produced for it, so that the cache inputs get calibrated ranges too."""
    if not online:  # the fp32 model is not needed: the clips are the input ``video``
        for clips, _ in _batches(dataset, indices, batch):
            yield {"video": clips}
        return
    session = _onnx_session(Path(fp32_path))
    names = [i.name for i in session.get_inputs()]
    for clips, _ in _batches(dataset, indices, batch):
        for feed, _ in _stream(session, clips, names):
            yield feed


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol (``get_next``) over the feeds, with a
    progress bar."""

    def __init__(self, feeds: Iterator[dict], total: int, progress: bool) -> None:
        self.feeds = feeds
        self.bar = tqdm(total=total, desc="calibrating", unit="run", disable=not progress)

    def get_next(self) -> dict | None:
        feed = next(self.feeds, None)
        if feed is None:
            self.bar.close()
        else:
            self.bar.update()
        return feed


class _Timed:
    """A session whose runs are timed, the first (warm-up) one excluded."""

    def __init__(self, path: Path) -> None:
        self.session = _onnx_session(path)
        self.seconds, self.runs = 0.0, -1

    def run(self, names: Sequence[str] | None, feed: dict) -> list[np.ndarray]:
        start = time.perf_counter()
        outputs = self.session.run(names, feed)
        if self.runs >= 0:
            self.seconds += time.perf_counter() - start
        self.runs += 1
        return outputs

    def get_inputs(self):
        return self.session.get_inputs()

    @property
    def ms(self) -> float | None:
        return 1000 * self.seconds / self.runs if self.runs > 0 else None


def _heldout_logits(sessions, dataset, indices, *, online: bool, batch: int, progress: bool):
    """Each session's logits on the held-out clips: ``(clips, K)`` offline, ``(frames, K)``
    online (every frame streamed through each session with its own caches)."""
    names = [i.name for i in sessions[0].get_inputs()]
    results: list[list[np.ndarray]] = [[] for _ in sessions]
    for clips, real in tqdm(
        _batches(dataset, indices, batch),
        total=-(-len(indices) // batch),
        desc="checking",
        unit="batch",
        disable=not progress,
    ):
        for session, out in zip(sessions, results, strict=True):
            if online:  # (T, B, K) -> the real streams' frames
                frames = [o[0] for _, o in _stream(session, clips, names)]
                out.append(np.stack(frames)[:, :real].reshape(-1, frames[0].shape[-1]))
            else:
                out.append(session.run(None, {names[0]: clips})[0][:real])
    return [np.concatenate(r) for r in results]


def _pre_process(quant_pre_process, source: Path, target: Path) -> str:
    """Shape inference and graph optimisation before quantising (onnxruntime's advice: the
    quantiser then sees every tensor's shape, and BatchNorm is fused into Conv). Symbolic
    shape inference fails on the legacy exporter's offline Reshape (a shape computed at run
    time): ONNX's own shape inference is used then, and a graph neither handles is quantised
    as exported. Returns which ran: ``"symbolic"``, ``"onnx"`` or ``"none"``."""
    chatty = logging.getLogger("onnxruntime.quantization.shape_inference")
    for kind, options in (("symbolic", {}), ("onnx", {"skip_symbolic_shape": True})):
        try:
            with _log_level(chatty, logging.WARNING):  # "Performing symbolic shape inference"
                quant_pre_process(str(source), str(target), **options)
        except Exception as exc:  # its failures (asserts in shape inference) have no common type
            _logger.debug("quant_pre_process (%s shapes) failed: %r", kind, exc)
            continue
        return kind
    _logger.warning("quant_pre_process failed on %s; quantising the graph as exported", source)
    return "none"


@contextlib.contextmanager
def _log_level(logger: logging.Logger, level: int) -> Iterator[None]:
    previous = logger.level
    logger.setLevel(max(level, previous))
    try:
        yield
    finally:
        logger.setLevel(previous)


def _quantize(
    quantization,
    source: Path,
    target: Path,
    reader,
    *,
    per_channel,
    reduce_range,
    method,
    activation,
):
    """``quantize_static`` into QDQ with int8 weights; ``quantization``: its module."""
    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }
    types = {"int8": quantization.QuantType.QInt8, "uint8": quantization.QuantType.QUInt8}
    # the histogram calibrators print their progress: into our log, not the user's terminal
    noise = io.StringIO()
    with contextlib.redirect_stdout(noise):
        quantization.quantize_static(
            str(source),
            str(target),
            reader,
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=types[activation],
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=methods[method],
            # not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops the collected ranges when
            # it is reached instead of merging them (MinMax keeps only per-tensor min and max
            # per run anyway; the histogram methods hold every activation of every run)
        )
    if noise.getvalue().strip():
        _logger.debug("quantize_static: %s", noise.getvalue().strip())


def quantize_model(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    calibration: str | os.PathLike,
    root: str | os.PathLike | None = None,
    calibration_clips: int = 32,
    heldout_clips: int = 16,
    online: bool = False,
    size: int | None = None,
    min_agreement: float = 0.9,
    allow_low_agreement: bool = False,
    per_channel: bool = True,
    progress: bool = True,
    batch: int = 1,
    calibration_method: str = "minmax",
    activation_type: str | None = None,
    reduce_range: bool | None = None,
    export_options: Mapping[str, Any] | None = None,
) -> QuantizationReport:
    """Write an INT8 ONNX model of ``model`` calibrated on the clips of a list file.

    Also writes the verified fp32 export next to it (``NAME.fp32.onnx``) and the report as
    ``<output>.quantization.json``; the report is in the int8 file's metadata too
    (``read_export_meta(output)["quantization"]``, with ``"precision": "int8"``).

    Args:
        model: a loaded model (:func:`~timeshift.models.load_model`): its classes and
            preprocessing decode the clips.
        output: the int8 ``.onnx`` file to write.
        calibration: a list file in any format ``timeshift test --data`` reads (labels are not
            used); ``root``: the folder its relative paths start from.
        calibration_clips: the first clips of the list, used to calibrate.
        heldout_clips: the clips after them, used only to compare int8 with fp32.
        online: quantise the streaming export (frame + caches).
        size: frame size (default: the checkpoint's).
        min_agreement: the least top-1 agreement with fp32 on the held-out clips; below it
            :class:`QuantizationError` is raised and no int8 file is written, unless
            ``allow_low_agreement`` (then a warning).
        per_channel: one weight scale per output channel (else per tensor).
        batch: clips (offline) or streams (online) per run of the exported graph.
        calibration_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        activation_type: ``"int8"`` or ``"uint8"`` activations (weights are int8). Default:
            ``"uint8"`` on x86, whose onnxruntime kernels multiply uint8 by int8 (int8
            activations ran TSM-ResNet18 slower than fp32 on an AVX2 CPU), else ``"int8"``.
        reduce_range: 7-bit weights. onnxruntime's x86 int8 kernels without VNNI
            (``vpmaddubsw``) saturate 16-bit sums of 8-bit products; 7-bit weights cannot.
            Default: on an x86 CPU without VNNI (the agreement check runs here); pass ``True``
            for a file that will run on such CPUs.
        export_options: more arguments of :func:`~timeshift.export.export_model` for the fp32
            export (``exporter``, ``opset``, ``split``, ``drop_future``, ``dynamic_batch``).
    """
    activation_type, reduce_range = _settings(calibration_method, activation_type, reduce_range)
    quantization, quant_pre_process = _quantization_api()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"the int8 model is an ONNX file: name it NAME.onnx, got {output}")
    dataset = _clips_dataset(model, calibration, root, size)
    calibrate, heldout = calibration_split(
        len(dataset),
        calibration_clips=calibration_clips,
        heldout_clips=heldout_clips,
        source=calibration,
    )
    fp32_path = output.with_name(f"{output.stem}.fp32.onnx")
    export_model(model, fp32_path, online=online, batch=batch, size=size, **(export_options or {}))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        prepared, int8 = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        pre_processed = _pre_process(quant_pre_process, fp32_path, prepared)
        feeds = calibration_feeds(fp32_path, dataset, calibrate, online=online, batch=batch)
        runs = -(-len(calibrate) // batch) * (model.num_segments if online else 1)
        start = time.perf_counter()
        _quantize(
            quantization,
            prepared if pre_processed != "none" else fp32_path,
            int8,
            _Reader(feeds, runs, progress),
            per_channel=per_channel,
            reduce_range=reduce_range,
            method=calibration_method,
            activation=activation_type,
        )
        seconds = time.perf_counter() - start
        report = QuantizationReport(
            path=output,
            fp32_path=fp32_path,
            mode="online" if online else "offline",
            calibration_clips=len(calibrate),
            heldout_clips=len(heldout),
            **_compare(fp32_path, int8, dataset, heldout, online, batch, progress),
            fp32_bytes=fp32_path.stat().st_size,
            int8_bytes=0,  # written with the metadata
            threshold=min_agreement,
            passed=False,
            calibration_method=calibration_method,
            activation_type=activation_type,
            per_channel=per_channel,
            reduce_range=reduce_range,
            pre_processed=pre_processed,
            calibration_seconds=seconds,
        )
        report.passed = report.top1_agreement >= min_agreement
        _check(report, allow_low_agreement)
        _write_meta(fp32_path, int8, report)
        os.replace(int8, output)
    output.with_name(output.name + ".quantization.json").write_text(
        json.dumps(report.as_dict(), indent=2) + "\n"
    )
    _logger.info(
        "quantised %s: top-1 agreement %.3f on %d held-out %s, max |logit difference| %.3g",
        output,
        report.top1_agreement,
        report.compared,
        "frames" if online else "clips",
        report.max_logit_difference,
    )
    return report


def quantize_onnx(
    source: str | os.PathLike,
    target: str | os.PathLike,
    clips: Sequence[np.ndarray],
    *,
    online: bool = False,
    per_channel: bool = True,
    calibration_method: str = "minmax",
    activation_type: str | None = None,
    reduce_range: bool | None = None,
) -> Path:
    """Quantise the fp32 export ``source`` into ``target`` as :func:`quantize_model` does, on
    ``clips`` given as arrays (``(B, T, C, H, W)`` float32 for the export's batch B; online:
    streamed frame by frame with the caches ``source`` produces), without the agreement check:
    for benchmarks, whose speed does not depend on the calibration. The export's metadata is
    carried over, with ``"precision": "int8"``."""
    activation_type, reduce_range = _settings(calibration_method, activation_type, reduce_range)
    quantization, quant_pre_process = _quantization_api()
    source, target = Path(source), Path(target)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        prepared, int8 = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        pre_processed = _pre_process(quant_pre_process, source, prepared)
        feeds = _array_feeds(source, clips, online)
        _quantize(
            quantization,
            prepared if pre_processed != "none" else source,
            int8,
            _Reader(feeds, 0, progress=False),
            per_channel=per_channel,
            reduce_range=reduce_range,
            method=calibration_method,
            activation=activation_type,
        )
        meta = read_export_meta(source)
        _write_onnx_meta(int8, {**meta, "precision": "int8"})
        os.replace(int8, target)
    return target


def _array_feeds(source: Path, clips: Sequence[np.ndarray], online: bool) -> Iterator[dict]:
    if not online:
        for clip in clips:
            yield {"video": np.ascontiguousarray(clip, dtype=np.float32)}
        return
    session = _onnx_session(source)
    names = [i.name for i in session.get_inputs()]
    for clip in clips:
        for feed, _ in _stream(session, np.asarray(clip, dtype=np.float32), names):
            yield feed


def _settings(method: str, activation: str | None, reduce_range: bool | None):
    """The activation type and weight range to use on this CPU, unless given."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration_method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if activation not in (None, "int8", "uint8"):
        raise ValueError(f"activation_type must be 'int8' or 'uint8', got {activation!r}")
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
    if activation is None:
        activation = "uint8" if x86 else "int8"
    if reduce_range is None:  # ARM's int8 dot products do not saturate
        reduce_range = x86 and not cpu_has_vnni()
    return activation, reduce_range


def _compare(fp32_path: Path, int8: Path, dataset, heldout, online, batch, progress) -> dict:
    """Top-1 agreement, logit differences and latencies of the two files on the held-out
    clips."""
    sessions = [_Timed(fp32_path), _Timed(int8)]
    fp32, quantised = _heldout_logits(
        sessions, dataset, heldout, online=online, batch=batch, progress=progress
    )
    diff = np.abs(fp32 - quantised)
    return {
        "top1_agreement": float((fp32.argmax(1) == quantised.argmax(1)).mean()),
        "max_logit_difference": float(diff.max()),
        "mean_logit_difference": float(diff.mean()),
        "compared": len(fp32),
        "fp32_latency_ms": sessions[0].ms,
        "int8_latency_ms": sessions[1].ms,
    }


def _check(report: QuantizationReport, allow_low_agreement: bool) -> None:
    if report.passed:
        return
    unit = "frames" if report.mode == "online" else "clips"
    message = (
        f"the int8 model agrees with fp32 on {report.top1_agreement:.1%} of {report.compared} "
        f"held-out {unit} (top-1), below the threshold {report.threshold:.1%}; max |logit "
        f"difference| {report.max_logit_difference:.3g}, mean "
        f"{report.mean_logit_difference:.3g}"
    )
    if not allow_low_agreement:
        raise QuantizationError(
            f"{message}. No int8 file was written; calibrate on more (or more typical) clips, "
            "try another calibration method, use the fp32 export, or pass "
            "--allow-low-agreement to keep it anyway"
        )
    _logger.warning("%s; kept because low agreement is allowed", message)


def _write_meta(fp32_path: Path, path: Path, report: QuantizationReport) -> None:
    """The fp32 export's metadata (which quantize_static may drop), marked int8, with the
    report: ``read_export_meta`` and the onnxruntime runners read the file as before."""
    meta = read_export_meta(fp32_path)
    # the report holds the file's own size, which its digits change: rewrite until it holds
    for _ in range(3):
        meta.update(precision="int8", quantization=report.as_dict())
        _write_onnx_meta(path, meta)
        if report.int8_bytes == path.stat().st_size:
            return
        report.int8_bytes = path.stat().st_size
    raise QuantizationError(f"the size of {path} does not settle as its metadata is written")
