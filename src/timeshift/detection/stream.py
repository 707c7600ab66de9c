"""Streaming detection on a video file, a camera or a stream URL: the detection counterpart of
:func:`timeshift.online.stream.recognize_stream`.

Frames are read in order, resized as the detector's test protocol does
(:func:`~timeshift.detection.transforms.detection_eval_transforms`: the shorter side to the
checkpoint's ``input_size``, aspect kept, or a fixed ``(H, W)``), normalised, and fed one at a
time to an online detector (:class:`~timeshift.detection.online.OnlineDetector` in PyTorch, or
:class:`OnnxOnlineDetector` for an exported online detector) whose per-layer caches carry the
past. The boxes are mapped back to the source frame's pixels
(:func:`~timeshift.detection.transforms.boxes_to_original`).

:func:`detect_stream` yields a :class:`DetectionFrame` per frame read -- a
:class:`~timeshift.online.stream.StreamFrame`, so the sinks of :mod:`timeshift.online.stream`
(:class:`~timeshift.online.stream.VideoSink`, :class:`~timeshift.online.stream.JsonLinesSink`,
:class:`~timeshift.online.stream.WindowSink`, :class:`~timeshift.online.stream.StreamSummary`)
take it unchanged; its annotated image has the boxes, labels and scores drawn
(:func:`~timeshift.detection.draw.draw_detections`). :func:`~timeshift.online.stream.run_stream`
streams detections when given a detector.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timeshift.detection.draw import draw_detections, enlarge
from timeshift.detection.model import Detector, decode_maps
from timeshift.detection.online import OnlineDetector
from timeshift.detection.structures import Detections, FrameBoxes
from timeshift.detection.transforms import boxes_to_original, detection_eval_transforms
from timeshift.export.onnx_models import OnnxOnlineRecognizer
from timeshift.online.stream import MIN_ANNOTATED_WIDTH, FrameSource, StreamFrame, annotate

__all__ = [
    "DetectionFrame",
    "DetectionInputs",
    "OnnxOnlineDetector",
    "detect_stream",
    "detection_inputs",
    "detection_preprocessor",
    "detection_record",
    "stream_detector",
]

_logger = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLD = 0.3  # what is drawn (and printed): the confident detections


# -- the exported online detector -----------------------------------------------------------------
def _default_out_stride() -> int:
    """The detector's default output stride (a config records only the options it was given)."""
    return int(inspect.signature(Detector).parameters["out_stride"].default)


class OnnxOnlineDetector(OnnxOnlineRecognizer):
    """An exported online detector (``timeshift export CKPT --online``) run frame by frame
    with onnxruntime: the API of :class:`~timeshift.detection.online.OnlineDetector`.

    ``step(frame)`` -> the frame's dense maps ``(K + 4, h, w)`` (or ``(N, K + 4, h, w)``);
    ``detect(frame)`` -> its boxes in the frame's input pixels. Frames must have the exported
    size, :attr:`frame_size`.

    Args:
        path: the ``.onnx`` file; its metadata says ``task: "detection"``.
        max_detections, score_threshold: as :meth:`Detector.decode`.
    """

    task = "detection"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_detections: int = 100,
        score_threshold: float = 0.01,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        spinning: bool = True,
    ) -> None:
        super().__init__(path, threads=threads, providers=providers, spinning=spinning)
        task = self.meta.get("task", "recognition")
        if task != "detection":
            raise ValueError(
                f"{self.path} is a {task} export, not a detector: stream it with "
                "OnnxOnlineRecognizer (timeshift stream does so by itself)"
            )
        kwargs = (self.meta.get("config") or {}).get("kwargs") or {}
        self.stride = int(kwargs.get("out_stride", _default_out_stride()))
        self.max_detections = max_detections
        self.score_threshold = score_threshold

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` the graph was exported for (its caches depend on it)."""
        height, width = self.session.get_inputs()[0].shape[-2:]
        if isinstance(height, int) and isinstance(width, int):
            return height, width
        size = int(self.meta["input_size"])
        return size, size

    def decode(self, maps: torch.Tensor) -> list[Detections]:
        """Maps ``(M, K + 4, h, w)`` -> one :class:`Detections` per frame (input pixels)."""
        return decode_maps(
            maps,
            num_classes=self.num_classes,
            stride=self.stride,
            max_detections=self.max_detections,
            score_threshold=self.score_threshold,
        )

    def detect(self, frame) -> Detections | list[Detections]:
        """Boxes of ``frame`` ``(C, H, W)`` (a :class:`Detections`) or ``(N, C, H, W)`` (a
        list), in the frame's input pixels."""
        maps = self.step(frame)
        single = np.ndim(frame) == 3
        found = self.decode(maps.unsqueeze(0) if single else maps)
        return found[0] if single else found


# -- what the frames need -------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionInputs:
    """How a streamed detector's frames are prepared: ``input_size`` (an int: the shorter
    side, aspect kept; a pair: ``(height, width)`` exactly), normalisation and class names."""

    input_size: int | tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] | None


def detection_inputs(detector, *, size: int | Sequence[int] | None = None) -> DetectionInputs:
    """What ``detector`` (an :class:`OnlineDetector`, :class:`OnnxOnlineDetector` or
    :class:`Detector`) expects, from its checkpoint's or export's metadata.

    An export's frame size is fixed (its caches depend on it): frames are resized to exactly
    that ``(H, W)`` (a source of another aspect ratio is stretched); ``size`` must then agree.
    Otherwise ``size`` (``--size``) wins over the checkpoint's ``input_size``.
    """
    from timeshift.models.preprocessing import resolve_input_config

    model = _model_of(detector)
    meta = dict(getattr(detector, "meta", None) or getattr(model, "checkpoint_meta", None) or {})
    stored = meta.pop("input_size", None)
    meta.pop("scale_size", None)  # the recognition crop protocol: no meaning here
    resolved = resolve_input_config(model, meta=meta)  # mean / std, registry defaults
    fixed = getattr(detector, "frame_size", None)
    if fixed is not None:
        if size is not None and _pair(size) != tuple(fixed):
            raise ValueError(
                f"{detector.path} was exported for {fixed[1]}x{fixed[0]} frames; --size "
                f"{size} needs an export of that size (timeshift export --online --size)"
            )
        input_size: int | tuple[int, int] = tuple(fixed)
    else:
        input_size = size or stored or resolved.input_size
        input_size = input_size if isinstance(input_size, int) else _pair(input_size)
    classes = meta.get("classes")
    return DetectionInputs(input_size, resolved.mean, resolved.std, classes)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _model_of(detector) -> nn.Module | None:
    if isinstance(detector, OnlineDetector):
        return detector.detector
    return detector if isinstance(detector, nn.Module) else None


def detection_preprocessor(
    *,
    input_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> Callable[[np.ndarray], tuple[torch.Tensor, dict]]:
    """``(H, W, 3)`` uint8 RGB image -> ``(frame (3, H', W'), info)``: the detector's test
    transform, and the map :func:`boxes_to_original` takes back to the image's pixels."""
    size = input_size if isinstance(input_size, int) else _pair(input_size)
    transform = detection_eval_transforms(size, mean=mean, std=std)
    rng = random.Random(0)  # the eval transform draws nothing, but takes one
    warned: list[bool] = []

    def preprocess(image: np.ndarray) -> tuple[torch.Tensor, dict]:
        frames, _, info = transform(image[None], [FrameBoxes()], rng)
        if not warned and not isinstance(size, int):
            warned.append(True)
            _warn_if_stretched(image.shape[:2], size)
        return frames[0], info

    return preprocess


def _warn_if_stretched(source: tuple[int, int], size: tuple[int, int]) -> None:
    ratio = (source[1] / source[0]) / (size[1] / size[0])
    if abs(ratio - 1) > 0.02:
        _logger.warning(
            "%dx%d frames are stretched to %dx%d (the detector's fixed input size): boxes are "
            "mapped back, but expect lower accuracy than at the training aspect ratio",
            source[1],
            source[0],
            size[1],
            size[0],
        )


# -- the stream -----------------------------------------------------------------------------------
@dataclass
class DetectionFrame(StreamFrame):
    """A :class:`~timeshift.online.stream.StreamFrame` with boxes: ``detections`` in the source
    frame's pixels -- this frame's when the detector processed it (``record`` set), else those
    of the last processed frame, which is what its annotated image shows."""

    detections: Detections = field(default_factory=Detections, repr=False)
    classes: Sequence[str] | None = field(default=None, repr=False)
    score_threshold: float = DEFAULT_SCORE_THRESHOLD

    @cached_property
    def annotated(self) -> np.ndarray:
        """The text band, then boxes, labels and scores (at least ``score_threshold``) over it
        (an object in the top-left corner stays visible); frames narrower than 320 px are
        first enlarged so that labels stay readable."""
        image, factor = enlarge(self.image, MIN_ANNOTATED_WIDTH)
        found = self.detections
        found = Detections(found.boxes * factor, found.scores, found.labels)
        return draw_detections(
            annotate(image, self.text), found, self.classes, score_threshold=self.score_threshold
        )


def detection_record(
    index: int,
    seconds: float | None,
    detections: Detections,
    classes: Sequence[str] | None,
) -> dict:
    """The JSON-ready record of a processed frame: ``frame``, ``time`` (seconds from the first
    frame), ``detections``: ``[{"box": [x1, y1, x2, y2], "label", "index", "score"}]`` best
    first, boxes in source pixels (2 decimals), scores 4."""
    return {
        "frame": index,
        "time": round(seconds, 3) if seconds is not None else None,
        "detections": [
            {
                "box": [round(float(v), 2) for v in box],
                "label": _name(classes, int(label)),
                "index": int(label),
                "score": round(float(score), 4),
            }
            for box, label, score in zip(
                detections.boxes, detections.labels, detections.scores, strict=True
            )
        ],
    }


def _name(classes: Sequence[str] | None, index: int) -> str:
    return classes[index] if classes and index < len(classes) else str(index)


def detect_stream(
    source: FrameSource,
    detector,
    *,
    input_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    every: int = 1,
    max_frames: int | None = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> Generator[DetectionFrame, None, None]:
    """Every frame of ``source`` in order, the ``every``-th ones run through the detector.

    ``every`` is checked and the detector reset here; frames are read as the returned
    generator is consumed. A processed frame's ``record`` is :func:`detection_record` plus
    ``latency_ms`` (the detector's step and box decoding on the preprocessed frame). Every
    detection the detector keeps is recorded (its own ``score_threshold``, default 0.01, and
    ``max_detections``, 100, as for evaluation); ``score_threshold`` here selects those drawn.

    Args:
        source: the frames (:func:`~timeshift.online.stream.open_source`).
        detector: :class:`OnlineDetector`, :class:`OnnxOnlineDetector` (anything with
            ``detect(frame (3, H, W)) -> Detections`` in input pixels and ``reset()``), or a
            :class:`Detector` (streamed by an :class:`OnlineDetector`).
        input_size, mean, std, classes: default: :func:`detection_inputs` of the detector
            (its checkpoint's; an export's fixed frame size always wins).
        every: feed every ``every``-th frame to the detector; the others show the last boxes.
        max_frames: stop after reading this many frames.
        score_threshold: the score a box needs to be drawn.
    """
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    if not 0 <= score_threshold <= 1:
        raise ValueError(f"--score-threshold must be in [0, 1], got {score_threshold}")
    if isinstance(detector, nn.Module):
        detector, _ = stream_detector(detector, backend="eager")
    resolved = detection_inputs(detector, size=input_size)
    preprocess = detection_preprocessor(
        input_size=resolved.input_size,
        mean=resolved.mean if mean is None else mean,
        std=resolved.std if std is None else std,
    )
    detector.reset()
    shown = _Shown(classes or resolved.classes, score_threshold)
    return _detect(source, detector, preprocess, shown, every, max_frames)


@dataclass(frozen=True)
class _Shown:
    """What the annotated frames show: class names, the score a box needs."""

    classes: Sequence[str] | None
    score_threshold: float

    def frame(self, index, seconds, image, text, boxes, record=None, latency=None):
        return DetectionFrame(
            index,
            seconds,
            image,
            text,
            record,
            latency,
            detections=boxes,
            classes=self.classes,
            score_threshold=self.score_threshold,
        )


def _detect(
    source: FrameSource,
    detector,
    preprocess: Callable[[np.ndarray], tuple[torch.Tensor, dict]],
    shown: _Shown,
    every: int,
    max_frames: int | None,
) -> Generator[DetectionFrame, None, None]:
    text = ("(waiting for the first frame)",)
    boxes = Detections()
    start, processed = time.perf_counter(), 0
    for index, (image, seconds) in enumerate(source.timed()):
        if max_frames is not None and index >= max_frames:
            return
        if index % every:
            yield shown.frame(index, seconds, image, text, boxes)
            continue
        frame, info = preprocess(image)
        tick = time.perf_counter()
        found = detector.detect(frame)
        latency = (time.perf_counter() - tick) * 1e3
        boxes = Detections(boxes_to_original(found.boxes, info), found.scores, found.labels)
        processed += 1
        fps = processed / (time.perf_counter() - start)
        record = detection_record(index, seconds, boxes, shown.classes)
        record["latency_ms"] = round(latency, 3)
        count = int((boxes.scores >= shown.score_threshold).sum())
        text = (
            f"{count} object{'s' * (count != 1)} (score >= {shown.score_threshold:.2f})",
            f"{fps:.1f} fps  {latency:.1f} ms/frame",
        )
        yield shown.frame(index, seconds, image, text, boxes, record, latency)


# -- a runner for a checkpoint or an export -------------------------------------------------------
def stream_detector(
    model: nn.Module | str | os.PathLike,
    *,
    backend: str = "auto",
    drop_future: bool = False,
    size: int | Sequence[int] | None = None,
) -> tuple[OnlineDetector | OnnxOnlineDetector, str]:
    """``(online detector, backend name)`` for a :class:`Detector` or an exported online
    detector (``.onnx``).

    Args:
        backend: ``"eager"`` (PyTorch), ``"onnxruntime"`` (the detector exported online once,
            cached as for recognizers) or ``"auto"``: PyTorch, because the online ONNX graph
            is fixed to a square frame while the detector's test protocol keeps the aspect
            ratio of the source.
        drop_future: stream a bi-directional detector with zeros for the future's channels
            (it was not trained that way; without it such a detector is refused with
            :class:`~timeshift.ops.protocol.NotCausalError`).
        size: the frame size the onnxruntime backend exports for (default: the checkpoint's).

    Raises:
        NotCausalError: the detector's temporal ops read future frames.
    """
    from timeshift.engine.backend import onnx_or_pytorch, resolve_backend

    if not isinstance(model, nn.Module):
        return OnnxOnlineDetector(Path(model)), "onnxruntime"
    if not isinstance(model, Detector):
        raise TypeError(f"expected a Detector, got {type(model).__name__}: a recognizer?")
    model = model.eval()
    if backend != "auto" and resolve_backend(backend, "cpu") == "onnxruntime":
        square = detection_inputs(model, size=size).input_size
        if not isinstance(square, int):
            raise ValueError(
                f"the online ONNX export is square; this detector takes {square[1]}x"
                f"{square[0]} frames: use --backend eager, or --size S for S x S frames"
            )
        path = onnx_or_pytorch(
            model, backend=backend, size=square, online=True, drop_future=drop_future
        )
        return OnnxOnlineDetector(path), "onnxruntime"
    return OnlineDetector(model, drop_future=drop_future), "pytorch"
