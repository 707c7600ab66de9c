"""Streaming recognition on a video file, a camera or a stream URL.

Frames are read in order, preprocessed like the test protocol (shorter side resized, centre
crop, normalised), fed one at a time to an online recognizer (:class:`OnlineRecognizer` in
PyTorch or :class:`~timeshift.export.OnnxOnlineRecognizer`), and the per-frame class
probabilities are smoothed over a history window with hysteresis so the shown label does not
flicker. Optionally every frame is annotated and written to a video, or shown in a window.

:func:`recognize_stream` yields every frame read, with the record of the model's result on the
frames it processed; sinks consume them (:class:`StreamSummary`, :class:`JsonLinesSink`,
:class:`VideoSink`, :class:`WindowSink`, :class:`CallbackSink`), :func:`drain` feeds the sinks,
and :func:`run_stream` composes the usual ones.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from timeshift.data.decode import (
    VideoDecodeError,
    _require,
    check_frame_size,
    check_regular_file,
    max_frame_pixels,
)
from timeshift.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms
from timeshift.errors import TimeshiftError

__all__ = [
    "CallbackSink",
    "FrameSource",
    "JsonLinesSink",
    "LabelSmoother",
    "Sink",
    "StreamFrame",
    "StreamSummary",
    "VideoSink",
    "WindowSink",
    "annotate",
    "drain",
    "frame_preprocessor",
    "open_source",
    "recognize_stream",
    "run_stream",
]

_logger = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


# -- sources ------------------------------------------------------------------------------------
@dataclass
class FrameSource:
    """Frames in order as ``(H, W, 3)`` uint8 RGB arrays; ``fps`` when the source knows it.

    ``frames`` may also yield ``(image, seconds)`` pairs: the frame's own presentation time
    from the start of the stream (what the built-in sources do, so that variable-frame-rate
    videos get true times); plain images are timed ``index / fps``.
    """

    name: str
    frames: Iterator[np.ndarray | tuple[np.ndarray, float | None]]
    fps: float | None
    close: Callable[[], None] = lambda: None

    def timed(self) -> Iterator[tuple[np.ndarray, float | None]]:
        """``(image, seconds from the first frame)``; ``None`` when the time is unknown."""
        for index, item in enumerate(self.frames):
            image, seconds = item if isinstance(item, tuple) else (item, None)
            if seconds is None and self.fps:
                seconds = index / self.fps
            yield image, seconds

    def __iter__(self) -> Iterator[np.ndarray]:
        return (image for image, _ in self.timed())


def open_source(source: str | int, *, max_frame_pixels: int | None = None) -> FrameSource:
    """A video file, a camera index (``0``, ``"1"``) or a stream URL (``rtsp://...``).

    Files and URLs are decoded with PyAV (FFmpeg) when installed, else OpenCV; cameras with
    OpenCV. A file must be a regular file (a FIFO or device would block or never end), and
    frames larger than ``max_frame_pixels`` (default: ``TIMESHIFT_MAX_FRAME_PIXELS`` or
    4096x4096) are refused.
    """
    text = str(source)
    limit = _pixel_limit(max_frame_pixels)
    if text.isdigit():
        return _opencv_source(int(text), f"camera {text}", limit)
    is_url = text.lower().startswith(URL_SCHEMES)
    if not is_url:
        if not Path(text).exists():
            raise FileNotFoundError(f"video not found: {text}")
        check_regular_file(text)
    try:
        import av  # noqa: F401
    except ImportError:
        return _opencv_source(text, text, limit)
    return _pyav_source(text, limit)


_pixel_limit = max_frame_pixels  # the keyword argument of the same name hides the function


class _Clock:
    """Seconds since the first frame from each frame's own timestamp."""

    def __init__(self) -> None:
        self.origin: float | None = None

    def __call__(self, seconds: float | None) -> float | None:
        if seconds is None:
            return None
        if self.origin is None:
            self.origin = seconds
        return seconds - self.origin


def _pyav_source(path: str, limit: int) -> FrameSource:
    import av

    try:
        container = av.open(path, metadata_errors="ignore", timeout=10.0)
        stream = container.streams.video[0]
    except (av.FFmpegError, IndexError, OSError) as exc:
        raise VideoDecodeError(path, f"cannot open as a video ({exc})") from exc
    try:
        check_frame_size(path, stream.codec_context.width, stream.codec_context.height, limit)
    except VideoDecodeError:
        container.close()
        raise
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    clock = _Clock()

    def frames() -> Iterator[tuple[np.ndarray, float | None]]:
        try:
            for frame in container.decode(stream):
                check_frame_size(path, frame.width, frame.height, limit)
                # the frame's own time: variable-frame-rate videos are not index / fps
                yield frame.to_ndarray(format="rgb24"), clock(frame.time)
        except av.FFmpegError as exc:
            raise VideoDecodeError(path, f"decoding failed ({exc})") from exc

    return FrameSource(path, frames(), fps, container.close)


def _opencv_source(source: str | int, name: str, limit: int) -> FrameSource:
    cv2 = _require("cv2")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise VideoDecodeError(name, "cannot be opened (OpenCV)")
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        check_frame_size(name, width, height, limit)
    except VideoDecodeError:
        capture.release()
        raise
    fps = capture.get(cv2.CAP_PROP_FPS) or None
    clock = _Clock()

    def frames() -> Iterator[tuple[np.ndarray, float | None]]:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            check_frame_size(name, bgr.shape[1], bgr.shape[0], limit)
            seconds = None
            if not isinstance(source, int):  # cameras report no reliable position
                # after a read, the position is the frame's own presentation time
                msec = capture.get(cv2.CAP_PROP_POS_MSEC)
                seconds = clock(msec / 1000) if msec is not None and msec >= 0 else None
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), seconds

    return FrameSource(name, frames(), fps, capture.release)


# -- smoothing ----------------------------------------------------------------------------------
class LabelSmoother:
    """Average the class probabilities of the last ``window`` frames, and change the shown
    label only when another class's averaged probability beats it by ``margin`` (hysteresis).

    ``update(probs) -> (label, score)`` with ``score`` the averaged probability of ``label``.
    """

    def __init__(self, window: int = 8, margin: float = 0.1) -> None:
        if window < 1:
            raise ValueError(f"the smoothing window must be >= 1 frame, got {window}")
        if not 0 <= margin < 1:
            raise ValueError(f"the hysteresis margin must be in [0, 1), got {margin}")
        self.history: deque[np.ndarray] = deque(maxlen=window)
        self.margin = margin
        self.label: int | None = None

    def reset(self) -> None:
        self.history.clear()
        self.label = None

    def update(self, probs) -> tuple[int, float]:
        self.history.append(np.asarray(probs, dtype=np.float64))
        mean = np.mean(self.history, axis=0)
        top = int(mean.argmax())
        if self.label is None or mean[top] - mean[self.label] >= self.margin:
            self.label = top
        return self.label, float(mean[self.label])


# -- annotation ---------------------------------------------------------------------------------
MIN_ANNOTATED_WIDTH = 320


def annotate(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Text lines on a dark band at the top-left of an ``(H, W, 3)`` uint8 RGB image; images
    narrower than 320 px are first enlarged (nearest neighbour, integer factor) so the text
    fits."""
    from PIL import Image, ImageDraw, ImageFont

    factor = -(-MIN_ANNOTATED_WIDTH // image.shape[1])
    if factor > 1:
        image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    size = max(10, image.shape[0] // 24)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
    width = max(b[2] for b in boxes) + 2 * (pad := size // 3)
    height = sum(b[3] for b in boxes) + pad * (len(lines) + 1)
    draw.rectangle((0, 0, width, height), fill=(0, 0, 0))
    y = pad
    for line, box in zip(lines, boxes, strict=True):
        draw.text((pad, y), line, fill=(255, 255, 255), font=font)
        y += box[3] + pad
    return np.asarray(canvas)


# -- the recognised frames ----------------------------------------------------------------------
@dataclass
class StreamFrame:
    """One frame read from the source, as the sinks see it.

    ``record`` is set on the frames the model processed (see :func:`recognize_stream`) and
    ``None`` on the frames ``every`` skips; ``text`` is the annotation, the latest label, so a
    skipped frame shows the last one. ``time`` and ``latency_ms`` are unrounded.
    """

    index: int
    time: float | None
    image: np.ndarray = field(repr=False)
    text: tuple[str, ...]
    record: dict | None = None
    latency_ms: float | None = None

    @cached_property
    def annotated(self) -> np.ndarray:
        """The image with its text drawn (computed once for the video and the window)."""
        return annotate(self.image, self.text)


def frame_preprocessor(
    *,
    input_size: int,
    scale_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[np.ndarray], torch.Tensor]:
    """``(H, W, 3)`` uint8 RGB image -> ``(3, S, S)`` float frame, preprocessed like the test
    protocol (shorter side resized to ``scale_size``, centre crop, normalised)."""
    transform = eval_transforms(input_size, scale_size=scale_size, mean=mean, std=std)
    rng = random.Random(0)  # the eval transform draws nothing, but takes one

    def preprocess(image: np.ndarray) -> torch.Tensor:
        views = torch.from_numpy(image).permute(2, 0, 1)[None, None]  # (1, 1, 3, H, W)
        frame, _ = transform(views, -1, rng)
        return frame[0, 0]

    return preprocess


def recognize_stream(
    source: FrameSource,
    recognizer,
    *,
    preprocess: Callable[[np.ndarray], torch.Tensor],
    smoother: LabelSmoother | None = None,
    classes: Sequence[str] | None = None,
    every: int = 1,
    max_frames: int | None = None,
) -> Generator[StreamFrame, None, None]:
    """Every frame of ``source`` in order, the ``every``-th ones recognised.

    ``every`` is checked and the recognizer reset here; frames are read as the returned
    generator is consumed. A processed frame's ``record``: ``frame``, ``time`` (seconds from
    the first frame, from the frame's own timestamp where the source has one),
    ``label``/``index``/``score`` (smoothed), ``raw_label``/``raw_score`` (this frame),
    ``latency_ms`` (the model's step on the preprocessed frame).

    Args:
        recognizer: ``step(frame (3, S, S)) -> logits`` and ``reset()``.
        preprocess: image -> model input, e.g. :func:`frame_preprocessor`.
        smoother: default ``LabelSmoother()`` (8 frames, margin 0.1).
    """
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    recognizer.reset()
    return _recognize(
        source, recognizer, preprocess, smoother or LabelSmoother(), classes, every, max_frames
    )


def _recognize(
    source: FrameSource,
    recognizer,
    preprocess: Callable[[np.ndarray], torch.Tensor],
    smoother: LabelSmoother,
    classes: Sequence[str] | None,
    every: int,
    max_frames: int | None,
) -> Generator[StreamFrame, None, None]:
    text = ("(waiting for the first frame)",)
    start, processed = time.perf_counter(), 0
    for index, (image, seconds) in enumerate(source.timed()):
        if max_frames is not None and index >= max_frames:
            return
        if index % every:
            yield StreamFrame(index, seconds, image, text)
            continue
        frame = preprocess(image)
        tick = time.perf_counter()
        logits = recognizer.step(frame)
        latency = (time.perf_counter() - tick) * 1e3
        probs = torch.softmax(logits.float(), dim=-1).numpy()
        label, score = smoother.update(probs)
        processed += 1
        fps = processed / (time.perf_counter() - start)
        raw = int(probs.argmax())
        record = {
            "frame": index,
            "time": round(seconds, 3) if seconds is not None else None,
            "label": _name(classes, label),
            "index": label,
            "score": round(score, 4),
            "raw_label": _name(classes, raw),
            "raw_score": round(float(probs[raw]), 4),
            "latency_ms": round(latency, 3),
        }
        text = (f"{record['label']}  {score:.2f}", f"{fps:.1f} fps  {latency:.1f} ms/frame")
        yield StreamFrame(index, seconds, image, text, record, latency)


def _name(classes: Sequence[str] | None, index: int) -> str:
    return classes[index] if classes and index < len(classes) else str(index)


# -- sinks --------------------------------------------------------------------------------------
class Sink:
    """Consumes the frames of a stream: ``write(frame)`` for each (``False`` stops the stream),
    ``close()`` once. A context manager; :func:`drain` feeds several."""

    def write(self, frame: StreamFrame) -> bool | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the sink holds (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drain(frames: Iterable[StreamFrame], sinks: Sequence[Sink]) -> None:
    """Give every frame to every sink in turn, until the frames end or a sink returns False.

    The sinks are not closed: whoever made them closes them."""
    for frame in frames:
        for sink in sinks:
            if sink.write(frame) is False:
                return


@dataclass
class StreamSummary(Sink):
    """What :func:`run_stream` did, counted as a sink. Latency is the model's step on one
    preprocessed frame; ``fps`` counts processed frames per second of wall time, decoding and
    drawing included."""

    source: str
    frames_read: int = 0
    frames_processed: int = 0
    seconds: float = 0.0
    latency_ms: list[float] = field(default_factory=list, repr=False)
    label_changes: int = 0
    final_label: str | None = None
    output: str | None = None

    @property
    def fps(self) -> float:
        return self.frames_processed / self.seconds if self.seconds else 0.0

    def write(self, frame: StreamFrame) -> None:
        self.frames_read += 1
        if frame.record is None:
            return
        name = frame.record.get("label")  # a detection stream's records have none
        if name is not None:
            if self.final_label is not None and name != self.final_label:
                self.label_changes += 1
            self.final_label = name
        self.frames_processed += 1
        self.latency_ms.append(frame.latency_ms)

    def as_dict(self) -> dict:
        lat = sorted(self.latency_ms) or [float("nan")]
        return {
            "source": self.source,
            "frames_read": self.frames_read,
            "frames_processed": self.frames_processed,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "latency_ms_median": round(statistics.median(lat), 3),
            "latency_ms_p90": round(lat[int(0.9 * (len(lat) - 1))], 3),
            "label_changes": self.label_changes,
            "final_label": self.final_label,
            "output": self.output,
        }


class CallbackSink(Sink):
    """Calls ``on_frame(record)`` for every processed frame."""

    def __init__(self, on_frame: Callable[[dict], None]) -> None:
        self.on_frame = on_frame

    def write(self, frame: StreamFrame) -> None:
        if frame.record is not None:
            self.on_frame(frame.record)


class JsonLinesSink(Sink):
    """One JSON record per processed frame, a line each (the file is created at once)."""

    def __init__(self, path: str | Path) -> None:
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write(self, frame: StreamFrame) -> None:
        if frame.record is not None:
            self.file.write(json.dumps(frame.record) + "\n")

    def close(self) -> None:
        self.file.close()


class VideoSink(Sink):
    """Every frame, annotated, to a video file: H.264 (or MPEG-4 when libx264 is missing)
    through PyAV, at the source's rate; even frame sizes. Opened at the first frame."""

    def __init__(self, path: str | Path, fps: float | None) -> None:
        self.av = _require("av")
        self.path, self.fps = Path(path), fps
        self.container = self.stream = None

    def write(self, frame: StreamFrame) -> None:
        image = frame.annotated
        if self.container is None:
            self._open(width=image.shape[1], height=image.shape[0])
        image = np.ascontiguousarray(image[: self.stream.height, : self.stream.width])
        for packet in self.stream.encode(self.av.VideoFrame.from_ndarray(image, format="rgb24")):
            self.container.mux(packet)

    def _open(self, *, width: int, height: int) -> None:
        from fractions import Fraction

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = self.av.open(str(self.path), "w")
        rate = Fraction(self.fps or 25.0).limit_denominator(1001)
        try:
            self.stream = self.container.add_stream("libx264", rate=rate)
        except (self.av.FFmpegError, ValueError):  # an FFmpeg build without libx264
            self.stream = self.container.add_stream("mpeg4", rate=rate)
        self.stream.width, self.stream.height = width - width % 2, height - height % 2
        self.stream.pix_fmt = "yuv420p"

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None


class WindowSink(Sink):
    """Every frame, annotated, in an OpenCV window; q or Esc stops the stream."""

    def __init__(self, title: str) -> None:
        self.cv2 = _require("cv2")
        self.title = title
        try:
            self.cv2.namedWindow(title, self.cv2.WINDOW_NORMAL)
        except self.cv2.error as exc:
            raise TimeshiftError(
                "--show needs OpenCV with GUI support (pip install opencv-python, not the "
                f"headless build) and a display: {exc}"
            ) from exc

    def write(self, frame: StreamFrame) -> bool:
        """False once the user pressed q or Esc."""
        self.cv2.imshow(self.title, self.cv2.cvtColor(frame.annotated, self.cv2.COLOR_RGB2BGR))
        return self.cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    def close(self) -> None:
        self.cv2.destroyWindow(self.title)


# -- the convenience function -------------------------------------------------------------------
def run_stream(
    source: str | int | FrameSource,
    recognizer,
    *,
    input_size: int | Sequence[int],
    classes: Sequence[str] | None = None,
    scale_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    every: int = 1,
    smooth: int = 8,
    margin: float = 0.1,
    output: str | Path | None = None,
    show: bool = False,
    max_frames: int | None = None,
    on_frame: Callable[[dict], None] | None = None,
    sinks: Sequence[Sink] = (),
    score_threshold: float = 0.3,
) -> StreamSummary:
    """Recognise a stream frame by frame: :func:`recognize_stream` (with
    :func:`frame_preprocessor` and a :class:`LabelSmoother`) drained into a
    :class:`StreamSummary` and the sinks the arguments ask for.

    Args:
        recognizer: ``step(frame (3, S, S)) -> logits`` and ``reset()``: an
            :class:`OnlineRecognizer` or :class:`~timeshift.export.OnnxOnlineRecognizer`.
        every: feed every ``every``-th frame to the model. The model was trained on frames a
            segment apart, so at 30 fps a stride of a few frames often matches training
            better; skipped frames are annotated with the last label.
        smooth, margin: :class:`LabelSmoother` window (processed frames) and hysteresis.
        output: write every frame, annotated, to this video file (:class:`VideoSink`).
        show: show the annotated frames in a window, q or Esc stops (:class:`WindowSink`).
        max_frames: stop after reading this many frames.
        on_frame: called with the record of every processed frame (see
            :func:`recognize_stream`).
        sinks: more sinks, given every frame after ``on_frame`` and before the video and the
            window; the caller closes them.
        score_threshold: a detector's boxes drawn (see below).

    A detector (anything with ``detect(frame)``: :class:`~timeshift.detection.OnlineDetector`,
    :class:`~timeshift.detection.stream.OnnxOnlineDetector`) is streamed by
    :func:`~timeshift.detection.stream.detect_stream` instead: boxes in the source's pixels,
    drawn when at least ``score_threshold``; ``input_size`` is then the detector's (the
    shorter side, or ``(H, W)``); ``scale_size``, ``smooth`` and ``margin`` do not apply.
    """
    src = source if isinstance(source, FrameSource) else open_source(source)
    summary = StreamSummary(src.name, output=str(output) if output else None)
    with ExitStack() as own:
        own.callback(src.close)
        if hasattr(recognizer, "detect"):
            from timeshift.detection.stream import detect_stream

            frames = detect_stream(
                src,
                recognizer,
                input_size=input_size,
                mean=mean,
                std=std,
                classes=classes,
                every=every,
                max_frames=max_frames,
                score_threshold=score_threshold,
            )
        else:
            frames = recognize_stream(
                src,
                recognizer,
                preprocess=frame_preprocessor(
                    input_size=input_size, scale_size=scale_size, mean=mean, std=std
                ),
                smoother=LabelSmoother(smooth, margin),
                classes=classes,
                every=every,
                max_frames=max_frames,
            )
        own.callback(frames.close)  # closed before the source it reads
        chain: list[Sink] = [summary, *([CallbackSink(on_frame)] if on_frame else []), *sinks]
        if output is not None:
            chain.append(own.enter_context(VideoSink(output, src.fps)))
        if show:
            chain.append(own.enter_context(WindowSink(f"timeshift: {src.name}")))
        start = time.perf_counter()
        try:
            drain(frames, chain)
        finally:
            summary.seconds = time.perf_counter() - start
    if summary.frames_read == 0:
        raise VideoDecodeError(src.name, "no frames could be read")
    return summary
