"""What happens when in a long video: labels over time, in one sequential decode.

Offline models (``mode="windows"``): windows of ``window`` seconds start every ``stride``
seconds (``[k * stride, k * stride + window)``); inside each, the TSN test sampling picks the
model's ``num_segments`` frames, and the model scores the window. When the stream of windows
does not end exactly at the video's end, one more window, aligned to the end
(``[duration - window, duration)``), is added so that the last window reaches it; a video
shorter than a window is one window ``[0, duration)``. Every window thus spans ``window``
seconds and the model always sees frames as far apart as in a clip of that length.

Online (uni-directional) models (``mode="stream"``): one pass of the per-frame stream
(:class:`~timeshift.online.OnlineRecognizer`, the stream's :class:`LabelSmoother`); the
``windows`` are bins of ``stride`` seconds holding the mean frame probabilities.

Segments: adjacent windows with the same top-1 label merged. Each window owns the span from the
midpoint between its centre and the previous window's to the midpoint between its centre and
the next one's (the first from 0, the last to the end): for regular windows that is the
stride-long span around its centre, so segments tile ``[0, duration)`` without overlap. A
segment's score is the mean top-1 score of its windows. In stream mode each frame owns the time
until the next frame, and a segment is a run of frames with the same smoothed label (score: the
mean smoothed score).

Memory does not grow with the video: frames are decoded in order; a window is scored as soon as
its last frame has arrived (in batches of ``batch_size``); only the frames of the last
``window`` seconds are held (the last window may need them), and only the frames some window
samples are preprocessed, each once. Where holding a window of decoded frames would take more
than ``max_held_bytes`` (256 MiB: 1080p at 30 fps with a 2 s window takes 362 MiB), frames are
held resized to the model's resize size instead (20 MiB there; the same scores, bit for bit).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timeshift.data.sampling import segment_indices
from timeshift.errors import TimeshiftError
from timeshift.models.preprocessing import InputConfig, resolve_input_config
from timeshift.online.stream import FrameSource, LabelSmoother, frame_preprocessor
from timeshift.ops.protocol import TemporalOp

__all__ = [
    "Timeline",
    "TimelineError",
    "is_streamable",
    "merge_windows",
    "parse_seconds",
    "plot_timeline",
    "predict_timelines",
    "video_timeline",
    "write_timeline",
]

_logger = logging.getLogger(__name__)

_EPS = 1e-6  # seconds: frame times are floats (pts * time_base)


class TimelineError(TimeshiftError, ValueError):
    """A timeline cannot be made as asked (a flow model, a frame folder without fps, ...)."""


# -- durations ----------------------------------------------------------------------------------
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def parse_seconds(text: str | float) -> float:
    """A duration in seconds from ``"2s"``, ``"1.5"``, ``"500ms"``, ``"1m"``, ``"1h"`` or
    ``"0:01:30"`` / ``"1:30"`` (h:mm:ss / m:ss). Raises :class:`TimelineError` on a negative,
    infinite or malformed value."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _checked(float(text), text)
    raw = str(text).strip().lower()
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) > 3 or not all(re.fullmatch(_NUMBER, p) for p in parts):
            raise _bad_duration(text)
        value = 0.0
        for part in parts:
            value = value * 60 + float(part)
        return _checked(value, text)
    match = re.fullmatch(_NUMBER + r"\s*(ms|s|min|m|h)?", raw)
    if match is None:
        raise _bad_duration(text)
    return _checked(float(match.group(1)) * _UNITS[match.group(2) or "s"], text)


def _checked(value: float, text) -> float:
    if not math.isfinite(value) or value < 0:
        raise _bad_duration(text)
    return value


def _bad_duration(text) -> TimelineError:
    return TimelineError(
        f"cannot read {text!r} as a duration: expected seconds such as 2s, 1.5, 500ms, 1m, "
        "1h or 0:01:30 (not negative)"
    )


# -- the result ---------------------------------------------------------------------------------
@dataclass
class Timeline:
    """Labels over time of one video (times in seconds from its first frame).

    ``windows``: ``{"start", "end", "top": [{"label", "index", "score"}, ...]}`` in time order
    (stream mode: the ``stride``-long bins). ``segments``: ``{"label", "index", "start", "end",
    "score"}``, tiling ``[0, duration)``. ``stats``: ``frames_held_max`` (decoded frames held
    at once), ``preprocessed_held_max``, ``seconds`` (wall time), ``frames_per_second``.
    """

    source: str
    fps: float
    duration: float
    num_frames: int
    mode: str
    window: float
    stride: float
    windows: list[dict]
    segments: list[dict]
    classes: list[str] = field(default_factory=list, repr=False)
    stats: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain data (times rounded to the millisecond), as the JSON file holds it."""
        return {
            "source": self.source,
            "fps": self.fps,
            "duration": _ms(self.duration),
            "num_frames": self.num_frames,
            "mode": self.mode,
            "window": self.window,
            "stride": self.stride,
            "windows": [
                {**w, "start": _ms(w["start"]), "end": _ms(w["end"])} for w in self.windows
            ],
            "segments": [
                {**s, "start": _ms(s["start"]), "end": _ms(s["end"])} for s in self.segments
            ],
            "stats": dict(self.stats),
        }


def _ms(seconds: float) -> float:
    return round(float(seconds), 3)


# -- segments -----------------------------------------------------------------------------------
def merge_windows(windows: Sequence[dict], duration: float) -> list[dict]:
    """Segments of adjacent windows with the same top-1 label (see the module doc: each window
    owns the span between the midpoints to its neighbours' centres; the first starts at 0, the
    last ends at ``duration``; the score is the mean top-1 score of the merged windows)."""
    if not windows:
        return []
    centres = [(w["start"] + w["end"]) / 2 for w in windows]
    bounds = [0.0, *((a + b) / 2 for a, b in itertools.pairwise(centres)), float(duration)]
    segments: list[dict] = []
    scores: list[float] = []
    for k, w in enumerate(windows):
        top = w["top"][0]
        if segments and segments[-1]["index"] == top["index"]:
            segments[-1]["end"] = bounds[k + 1]
            scores.append(top["score"])
        else:
            _close(segments, scores)
            segments.append(
                {
                    "label": top["label"],
                    "index": top["index"],
                    "start": bounds[k],
                    "end": bounds[k + 1],
                }
            )
            scores = [top["score"]]
    _close(segments, scores)
    return segments


def _close(segments: list[dict], scores: list[float]) -> None:
    if segments:
        segments[-1]["score"] = float(np.mean(scores))


class _FrameRuns:
    """Stream mode's segments, built as the frames come: runs of frames with the same
    smoothed label; each frame owns the time until the next one (the first from 0)."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = classes
        self.segments: list[dict] = []
        self.total = 0.0  # the sum of the smoothed scores of the open run's frames
        self.count = 0

    def add(self, seconds: float, label: int, score: float) -> None:
        if self.segments and self.segments[-1]["index"] == label:
            self.total += score
            self.count += 1
            return
        self._close(seconds)
        start = seconds if self.segments else 0.0
        self.segments.append({"label": self.classes[label], "index": label, "start": start})
        self.total, self.count = score, 1

    def _close(self, end: float) -> None:
        if self.segments:
            self.segments[-1].update(end=end, score=self.total / self.count)

    def close(self, duration: float) -> list[dict]:
        self._close(duration)
        return self.segments


def _top(probabilities: torch.Tensor, classes: Sequence[str], top_k: int) -> list[dict]:
    values, indices = probabilities.topk(min(top_k, len(classes)))
    return [
        {"label": classes[c], "index": int(c), "score": float(v)}
        for c, v in zip(indices.tolist(), values.tolist(), strict=True)
    ]


# -- sources ------------------------------------------------------------------------------------
@dataclass
class _Source:
    """A frame source whose every frame has a time, and what is known before decoding."""

    frames: FrameSource
    fps: float | None
    duration: float | None  # for the progress bar only


def _open(video, fps: float | None) -> _Source:
    """The frames of ``video``; ``fps`` is used where the source knows no frame rate."""
    if isinstance(video, FrameSource):
        return _Source(video, video.fps or fps, None)
    path = Path(str(video))
    if path.is_dir():
        return _frame_folder(path, fps)
    from timeshift.online.stream import URL_SCHEMES, open_source

    source = open_source(str(video))
    is_url = str(video).lower().startswith(URL_SCHEMES)  # probing would connect twice
    return _Source(source, source.fps or fps, None if is_url else _probe_duration(str(video)))


def _frame_folder(path: Path, fps: float | None) -> _Source:
    from timeshift.data.decode import open_video

    if not fps:
        raise TimelineError(
            f"{path} is a frame folder, which records no frame rate: give its fps (fps= / "
            "--fps 30) so that the timeline can be in seconds"
        )
    reader = open_video(path, backend="frames", fps=fps)
    frames = (reader.get_frames([i])[0] for i in range(reader.num_frames))
    return _Source(FrameSource(str(path), frames, fps, reader.close), fps, reader.num_frames / fps)


def _probe_duration(path: str) -> float | None:
    """The container's duration, for the progress bar (``None`` when it says none)."""
    try:
        import av

        with av.open(path, metadata_errors="ignore", timeout=10.0) as container:
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            return container.duration / 1e6 if container.duration else None
    except Exception:  # only a progress bar's total: any failure means unknown
        return None


def _timed(source: _Source) -> Iterator[tuple[np.ndarray, float]]:
    """``(image, seconds)``: the frame's own time, else ``index / fps``."""
    for index, item in enumerate(source.frames.frames):
        image, seconds = item if isinstance(item, tuple) else (item, None)
        if seconds is None:
            if not source.fps:
                raise TimelineError(
                    f"{source.frames.name}: its frames have no times and no frame rate is "
                    "known: give fps= (--fps) so that the timeline can be in seconds"
                )
            seconds = index / source.fps
        yield image, float(seconds)


class _Progress:
    """A tqdm bar in seconds of video."""

    def __init__(self, source: _Source, enabled: bool) -> None:
        from tqdm.auto import tqdm

        total = round(source.duration, 1) if source.duration else None
        self.bar = tqdm(
            total=total,
            unit="s",
            desc=Path(source.frames.name).name,
            disable=not enabled,
            # seconds of video read, and how many per second of wall time (x real time)
            bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s [{elapsed}<{remaining}, {rate_fmt}]",
        )
        self.shown = 0.0

    def to(self, seconds: float) -> None:
        if seconds > self.shown:
            self.bar.update(round(seconds - self.shown, 3))
            self.shown = seconds

    def close(self) -> None:
        self.bar.close()


# -- the entry point ----------------------------------------------------------------------------
def video_timeline(
    model: nn.Module | str | Path,
    video: str | Path | FrameSource,
    *,
    window: float | str = 2.0,
    stride: float | str = 1.0,
    top_k: int = 5,
    batch_size: int = 4,
    device: str = "cpu",
    classes: Sequence[str] | None = None,
    online: bool | None = None,
    fps: float | None = None,
    progress: bool = True,
    smoother: LabelSmoother | None = None,
    backend: str = "auto",
    memory_format: str = "auto",
    max_held_bytes: int = 256 * 2**20,
    precision: str = "fp32",
    calibration=None,
) -> Timeline:
    """The labels of ``video`` over time (see the module doc for the rules).

    Args:
        model: a model from ``load_model`` / ``create_model`` (its checkpoint's preprocessing
            is used; it is moved to ``device`` and put in eval mode), or a checkpoint path.
        video: a video file or URL, a frame folder (give ``fps``), or a
            :class:`~timeshift.online.stream.FrameSource`.
        window, stride: seconds (or text such as ``"2s"``, ``"500ms"``).
        classes: class names (default: the checkpoint's, else the class indices).
        online: stream the model frame by frame (default: when every temporal op of the model
            is causal, i.e. a uni-directional TSM; a TSN has none and is windowed).
        fps: the frame rate of a source that has none (frame folders, arrays); times then are
            ``index / fps``.
        smoother: stream mode's label smoothing (default ``LabelSmoother()``, as ``stream``).
        backend, memory_format: how the model runs (:func:`~timeshift.engine.backend.
            inference_model`; ``auto``: onnxruntime when installed).
        precision, calibration: ``fp32``, ``bf16`` (OpenVINO) or ``int8`` (a quantised
            export calibrated on a :class:`~timeshift.engine.backend.Calibration`).
        max_held_bytes: windows mode holds the frames of the last ``window`` seconds; when
            that would take more memory than this, they are held resized (same scores).

    Raises:
        TimelineError: a flow model, a bad window or stride, a source without frame times.
        VideoDecodeError: the video cannot be opened or decoded (or has no frames).
    """
    if not isinstance(model, nn.Module):
        from timeshift.models.checkpoints import load_model

        model = load_model(model)
    window, stride = _window_and_stride(window, stride)
    if top_k < 1 or batch_size < 1:
        raise TimelineError(f"top_k and batch_size must be >= 1, got {top_k}, {batch_size}")
    inputs = resolve_input_config(model)
    _check_rgb(inputs)
    names = _class_names(model, classes)
    if online is None:
        online = is_streamable(model)
    source = _open(video, fps)
    try:
        job = _Job(
            model,
            source,
            inputs,
            names,
            window=window,
            stride=stride,
            top_k=top_k,
            batch_size=batch_size,
            device=device,
            progress=progress,
            backend=backend,
            memory_format=memory_format,
            max_held_bytes=max_held_bytes,
            precision=precision,
            calibration=calibration,
        )
        if online:
            return _stream_timeline(job, smoother or LabelSmoother())
        return _window_timeline(job)
    finally:
        source.frames.close()


def _window_and_stride(window: float | str, stride: float | str) -> tuple[float, float]:
    window, stride = parse_seconds(window), parse_seconds(stride)
    if window <= 0 or stride <= 0:
        raise TimelineError(f"window and stride must be > 0 seconds, got {window}, {stride}")
    return window, stride


def is_streamable(model: nn.Module) -> bool:
    """Whether the model has temporal ops and all of them are causal (it was trained to run
    online, and scoring it on windows offline would not match its training)."""
    ops = [m for m in model.modules() if isinstance(m, TemporalOp)]
    return bool(ops) and all(op.causal for op in ops)


def _check_rgb(inputs: InputConfig) -> None:
    if (inputs.modality, inputs.new_length) != ("rgb", 1):
        raise TimelineError(
            f"a timeline needs an RGB model (this one reads {inputs.modality} frames, "
            f"{inputs.new_length} stacked): a flow timeline would need the flow of the whole "
            "video computed on the fly; use the RGB stream's checkpoint"
        )


def _class_names(model: nn.Module, classes: Sequence[str] | None) -> list[str]:
    names = classes or (getattr(model, "checkpoint_meta", None) or {}).get("classes")
    count = getattr(model, "num_classes", None)
    if not names:
        return [str(i) for i in range(count or 0)]
    if count is not None and len(names) != count:
        raise TimelineError(f"{len(names)} class names given for a model of {count} classes")
    return list(names)


def _finish(source: _Source, *, last: float | None, previous: float | None, read: int) -> tuple:
    """``(duration, fps)`` once the frames ended: the last frame's time plus one frame."""
    if last is None:
        from timeshift.data.decode import VideoDecodeError

        raise VideoDecodeError(source.frames.name, "no frames could be read")
    step = 1 / source.fps if source.fps else (last - previous if previous is not None else 0.0)
    duration = last + step
    rate = source.fps or (read / duration if duration > 0 else 0.0)
    return duration, float(rate)


# -- windows mode -------------------------------------------------------------------------------
class _Windows:
    """Scores windows as their last frame arrives; holds the frames of the last ``window``
    seconds and the preprocessed frames that open windows sample."""

    def __init__(
        self,
        runner,
        *,
        window,
        stride,
        num_segments,
        preprocess,
        batch_size,
        top_k,
        classes,
        hold: _Hold,
    ) -> None:
        self.runner, self.window, self.stride = runner, window, stride
        self.num_segments, self.preprocess = num_segments, preprocess
        self.batch_size, self.top_k, self.classes = batch_size, top_k, classes
        self.hold = hold
        self.held: deque[tuple[int, float, np.ndarray]] = deque()  # (index, time, image)
        self.held_bytes = self.peak_bytes = 0
        self.cache: dict[int, torch.Tensor] = {}  # preprocessed frames by index
        self.pending: list[tuple[float, float, torch.Tensor]] = []  # (start, end, clip)
        self.windows: list[dict] = []
        self.next = 0  # the next regular window to score
        self.last_end: float | None = None
        self.peak_held = self.peak_cache = 0

    def push(self, index: int, seconds: float, image: np.ndarray) -> None:
        while seconds >= self._end(self.next) - _EPS:
            self._score(self.next * self.stride, self._end(self.next))
            self.next += 1
        # frames older than one window before this one: no open window nor the last (aligned)
        # window can need them any more
        while self.held and self.held[0][1] < seconds - self.window - _EPS:
            self.held_bytes -= self.held.popleft()[2].nbytes
        image = self.hold(image)
        self.held.append((index, seconds, image))
        self.held_bytes += image.nbytes
        first = self.held[0][0]
        for key in [k for k in self.cache if k < first]:
            del self.cache[key]
        self.peak_held = max(self.peak_held, len(self.held))
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)

    def finish(self, duration: float, frame_step: float) -> None:
        tolerance = frame_step / 2 + _EPS
        while self._end(self.next) <= duration + tolerance:
            self._score(self.next * self.stride, min(self._end(self.next), duration))
            self.next += 1
        if self.last_end is None or self.last_end < duration - tolerance:
            self._score(max(0.0, duration - self.window), duration)  # reaches the end
        self._flush()

    def _end(self, k: int) -> float:
        return k * self.stride + self.window

    def _score(self, start: float, end: float) -> None:
        frames = [f for f in self.held if start - _EPS <= f[1] < end - _EPS]
        if not frames:  # a gap in a variable-frame-rate video: nothing to score
            return
        picked = segment_indices(len(frames), self.num_segments, mode="test")[0]
        clip = torch.stack([self._frame(*frames[i]) for i in picked])
        self.pending.append((start, end, clip))
        self.last_end = end
        if len(self.pending) >= self.batch_size:
            self._flush()

    def _frame(self, index: int, seconds: float, image: np.ndarray) -> torch.Tensor:
        if index not in self.cache:
            self.cache[index] = self.preprocess(image)
            self.peak_cache = max(self.peak_cache, len(self.cache))
        return self.cache[index]

    def _flush(self) -> None:
        if not self.pending:
            return
        probabilities = self.runner(torch.stack([clip for _, _, clip in self.pending]))
        for (start, end, _), p in zip(self.pending, probabilities, strict=True):
            self.windows.append(
                {"start": start, "end": end, "top": _top(p, self.classes, self.top_k)}
            )
        self.pending = []


def _clip_runner(job: _Job):
    """``clips (N, T, 3, S, S) -> probabilities (N, K)`` on the chosen backend."""
    from timeshift.engine.backend import inference_model

    runnable = inference_model(
        job.model,
        backend=job.backend,
        memory_format=job.memory_format,
        precision=job.precision,
        calibration=job.calibration,
        device=job.device,
        size=job.inputs.input_size,
    )
    torch_device = torch.device(job.device)

    @torch.inference_mode()
    def run(clips: torch.Tensor) -> torch.Tensor:
        logits = runnable(clips.to(torch_device))
        return torch.as_tensor(logits).float().softmax(dim=-1).cpu()

    return run


@dataclass
class _Run:
    """A pass over the frames: how many, the video's duration and frame rate, when it began."""

    frames: int
    duration: float
    fps: float
    started: float


@dataclass(frozen=True)
class _Job:
    """What one timeline is made of and how the model runs."""

    model: nn.Module
    source: _Source
    inputs: InputConfig
    classes: list[str]
    window: float
    stride: float
    top_k: int
    batch_size: int
    device: str
    progress: bool
    backend: str
    memory_format: str
    max_held_bytes: int
    precision: str = "fp32"
    calibration: object = None

    def result(self, mode: str, run: _Run, windows: list, segments: list, stats: dict):
        window = self.window if mode == "windows" else self.stride  # stream: the bins
        return Timeline(
            self.source.frames.name,
            run.fps,
            run.duration,
            run.frames,
            mode,
            window,
            self.stride,
            windows,
            segments,
            self.classes,
            stats,
        )


def _window_timeline(job: _Job) -> Timeline:
    scorer = _Windows(
        _clip_runner(job),
        window=job.window,
        stride=job.stride,
        num_segments=job.model.num_segments,
        preprocess=_preprocessor(job.inputs),
        batch_size=job.batch_size,
        top_k=job.top_k,
        classes=job.classes,
        hold=_Hold(job),
    )
    run = _drive(job.source, scorer.push, progress=job.progress, at_end=scorer.finish)
    stats = _stats(run, held=scorer.peak_held, preprocessed=scorer.peak_cache)
    stats.update(held_mib_max=round(scorer.peak_bytes / 2**20, 2), held_resized=scorer.hold.resize)
    segments = merge_windows(scorer.windows, run.duration)
    return job.result("windows", run, scorer.windows, segments, stats)


def _drive(source: _Source, consume, *, progress: bool, at_end=None) -> _Run:
    """Feed every frame of ``source`` to ``consume(index, seconds, image)`` in order under a
    progress bar in seconds of video; then ``at_end(duration, frame_step)``."""
    bar, started = _Progress(source, progress), time.perf_counter()
    last = previous = None
    read = 0
    try:
        for image, seconds in _timed(source):
            consume(read, seconds, image)
            previous, last, read = last, seconds, read + 1
            bar.to(seconds)
        duration, fps = _finish(source, last=last, previous=previous, read=read)
        if at_end is not None:
            at_end(duration, 1 / fps if fps else 0.0)
        bar.to(duration)
    finally:
        bar.close()
    return _Run(read, duration, fps, started)


class _Hold:
    """How the frames of the last window are held: as decoded, or -- when a window of them
    would take more than ``max_held_bytes`` (large frames, long windows) -- resized to the
    model's resize size (``scale_size``) at once. The preprocessing resizes to that size
    first, and resizing a frame already at that size is the identity, so the scores are the
    same bit for bit; the price is resizing every frame instead of the sampled ones (about a
    third more CPU per frame at 1080p, ~18x less memory)."""

    def __init__(self, job: _Job) -> None:
        self.budget, self.window = job.max_held_bytes, job.window
        self.fps = job.source.fps or 60.0  # unknown: assume a high rate
        self.scale = job.inputs.scale_size
        self.resize: bool | None = None  # decided at the first frame

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.resize is None:
            frames = self.window * self.fps + 2
            self.resize = image.nbytes * frames > self.budget and min(image.shape[:2]) > self.scale
        if not self.resize:
            return image
        from timeshift.data.transforms import ResizeShorter

        views = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None, None]
        resized, _ = ResizeShorter(self.scale)(views, -1, None)
        return resized[0, 0].permute(1, 2, 0).contiguous().numpy()


def _preprocessor(inputs: InputConfig):
    return frame_preprocessor(
        input_size=inputs.input_size, scale_size=inputs.scale_size, mean=inputs.mean, std=inputs.std
    )


def _stats(run: _Run, *, held: int, preprocessed: int) -> dict:
    read, seconds = run.frames, time.perf_counter() - run.started
    return {
        "frames_held_max": held,
        "preprocessed_held_max": preprocessed,
        "seconds": round(seconds, 3),
        "frames_per_second": round(read / seconds, 2) if seconds > 0 else None,
    }


# -- stream mode --------------------------------------------------------------------------------
def _online_recognizer(job: _Job):
    """An :class:`OnlineRecognizer`, or its onnxruntime export (as ``timeshift stream``)."""
    from timeshift.engine.backend import online_recognizer

    recognizer, _ = online_recognizer(
        job.model,
        backend=job.backend,
        memory_format=job.memory_format,
        precision=job.precision,
        calibration=job.calibration,
        device=job.device,
        size=job.inputs.input_size,
    )
    return recognizer


def _stream_timeline(job: _Job, smoother: LabelSmoother) -> Timeline:
    recognizer = _online_recognizer(job)
    recognizer.reset()
    smoother.reset()
    preprocess, device = _preprocessor(job.inputs), torch.device(job.device)
    bins, runs = _Bins(job.stride, job.classes, job.top_k), _FrameRuns(job.classes)

    def consume(index: int, seconds: float, image: np.ndarray) -> None:
        logits = recognizer.step(preprocess(image).to(device))
        probs = torch.as_tensor(logits).float().softmax(dim=-1).cpu()
        runs.add(seconds, *smoother.update(probs.numpy()))
        bins.add(seconds, probs)

    run = _drive(job.source, consume, progress=job.progress)
    stats = _stats(run, held=1, preprocessed=1)
    return job.result("stream", run, bins.close(run.duration), runs.close(run.duration), stats)


class _Bins:
    """Mean frame probabilities per ``stride``-long bin ``[k * stride, (k + 1) * stride)``."""

    def __init__(self, stride: float, classes, top_k: int) -> None:
        self.stride, self.classes, self.top_k = stride, classes, top_k
        self.windows: list[dict] = []
        self.current: int | None = None
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, seconds: float, probs: torch.Tensor) -> None:
        k = int((seconds + _EPS) // self.stride)
        if k != self.current:
            self._emit(k * self.stride)
            self.current, self.total, self.count = k, torch.zeros_like(probs), 0
        self.total += probs
        self.count += 1

    def _emit(self, end: float) -> None:
        if self.current is None:
            return
        start = self.current * self.stride
        mean = self.total / self.count
        self.windows.append(
            {
                "start": start,
                "end": min(end, start + self.stride),
                "top": _top(mean, self.classes, self.top_k),
            }
        )

    def close(self, duration: float) -> list[dict]:
        self._emit(duration)
        return self.windows


# -- outputs ------------------------------------------------------------------------------------
def write_timeline(
    timeline: Timeline, prefix: str | Path, *, reference: Sequence[dict] | None = None
) -> dict[str, Path]:
    """``<prefix>.json`` (:meth:`Timeline.as_dict`), ``<prefix>.csv`` (one row per window:
    ``start, end`` then ``label_k, score_k`` for each rank k), ``<prefix>.segments.csv``
    (``start, end, label, index, score``) and ``<prefix>.png`` (:func:`plot_timeline`, with
    the ``reference`` segments as a second band when given)."""
    from timeshift.models.checkpoints import atomic_write

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": prefix.with_name(prefix.name + ".json"),
        "csv": prefix.with_name(prefix.name + ".csv"),
        "segments_csv": prefix.with_name(prefix.name + ".segments.csv"),
        "png": prefix.with_name(prefix.name + ".png"),
    }
    text = json.dumps(timeline.as_dict(), indent=1) + "\n"
    atomic_write(paths["json"], lambda f: f.write(text.encode()))
    atomic_write(paths["csv"], lambda f: f.write(_windows_csv(timeline).encode()))
    atomic_write(paths["segments_csv"], lambda f: f.write(_segments_csv(timeline).encode()))
    plot_timeline(timeline, paths["png"], reference=reference)
    return paths


def _csv_text(header: list[str], rows: list[list]) -> str:
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _windows_csv(timeline: Timeline) -> str:
    ranks = max((len(w["top"]) for w in timeline.windows), default=0)
    header = ["start", "end"] + [
        f"{kind}_{r}" for r in range(1, ranks + 1) for kind in ("label", "score")
    ]
    rows = []
    for w in timeline.windows:
        tops = [v for t in w["top"] for v in (t["label"], f"{t['score']:.6f}")]
        rows.append([_ms(w["start"]), _ms(w["end"]), *tops])
    return _csv_text(header, rows)


def _segments_csv(timeline: Timeline) -> str:
    rows = [
        [_ms(s["start"]), _ms(s["end"]), s["label"], s["index"], f"{s['score']:.6f}"]
        for s in timeline.segments
    ]
    return _csv_text(["start", "end", "label", "index", "score"], rows)


def plot_timeline(
    timeline: Timeline, path: str | Path, *, reference: Sequence[dict] | None = None
) -> Path:
    """A PNG: one coloured band per segment, labelled where the label fits, over the time axis
    (m:ss); under it the top-1 score of each window (stream mode: each bin) as a line.

    ``reference``: segments known to be true (``{"start", "end", "label"}``), drawn as a second
    band in the same colours, so that a reader sees where the timeline is right."""
    from timeshift._plotting import pyplot, save_png

    plt = pyplot()
    rows = 3 if reference else 2
    fig, axes = plt.subplots(
        rows,
        1,
        sharex=True,
        figsize=(12, 1.3 * rows + 0.6),
        gridspec_kw={"height_ratios": [1] * (rows - 1) + [1.4]},
    )
    index = {name: i for i, name in enumerate(timeline.classes)}
    colour = _colours(plt, index)
    _band(axes[0], timeline.segments, timeline.duration, colour, "predicted")
    if reference:
        _band(axes[1], reference, timeline.duration, colour, "true")
    axes[0].set_title(
        f"{Path(timeline.source).name}: {_plural(len(timeline.segments), 'segment')} "
        f"({timeline.mode}, window {timeline.window:g} s, stride "
        f"{timeline.stride:g} s)",
        fontsize=9,
    )
    scores = axes[-1]
    centres = [(w["start"] + w["end"]) / 2 for w in timeline.windows]
    scores.plot(centres, [w["top"][0]["score"] for w in timeline.windows], marker=".", lw=1)
    scores.set_ylim(0, 1.02)
    scores.set_ylabel("top-1 score")
    scores.set_xlim(0, max(timeline.duration, 1e-3))
    scores.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: _clock(x)))
    scores.set_xlabel("time (m:ss)")
    scores.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    return Path(path)


def _colours(plt, index: dict[str, int]):
    """A colour per class name: tab20 pairs a strong and a pale shade, the ten strong first."""
    cmap = plt.get_cmap("tab20")

    def colour(label: str):
        i = index.get(label, hash(label) % 20)
        return cmap((2 * i + i // 10) % 20)

    return colour


def _band(ax, segments: Sequence[dict], duration: float, colour, name: str) -> None:
    for s in segments:
        width = s["end"] - s["start"]
        ax.barh(0, width, left=s["start"], color=colour(s["label"]), edgecolor="white")
        text = _fitted(s["label"], width / max(duration, 1e-9))
        if text:
            ax.text(s["start"] + width / 2, 0, text, ha="center", va="center", fontsize=8,
                    clip_on=True)  # fmt: skip
    ax.set_yticks([0])
    ax.set_yticklabels([name], fontsize=8)


def _fitted(label: str, share: float) -> str | None:
    """``label`` as it fits a band ``share`` of the axis wide: on one line, else on two, else
    not at all (about 1/160 of the axis per character at this size), rather than drawn over
    its neighbours."""
    if len(label) / 160 <= share:
        return label
    words = label.split()
    if len(words) > 1:
        cut = min(
            range(1, len(words)), key=lambda i: abs(len(" ".join(words[:i])) - len(label) / 2)
        )
        lines = [" ".join(words[:cut]), " ".join(words[cut:])]
        if max(map(len, lines)) / 160 <= share:
            return "\n".join(lines)
    return None


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` past an hour), tenths of a second where not whole."""
    tenths = round(max(0.0, seconds) * 10)
    whole = tenths % 10 == 0
    minutes, rest = divmod(tenths / 10, 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{rest:02.0f}" if whole else f"{rest:04.1f}"
    return f"{hours}:{minutes:02d}:{text}" if hours else f"{minutes}:{text}"


# -- many videos (the CLI) ----------------------------------------------------------------------
def predict_timelines(
    checkpoint: str | Path | nn.Module,
    inputs: Sequence[str | Path],
    *,
    output_dir: str | Path = ".",
    **options,
) -> list[dict]:
    """The timeline of every video (folders searched as ``predict`` does), written to
    ``<output_dir>/<video stem>.timeline.{json,csv,segments.csv,png}``.

    Returns per input ``{"path", "files", "timeline"}`` (the :class:`Timeline`), or ``{"path",
    "error"}``: an input that cannot be read or decoded gets its error and the others go on.
    ``options``: those of :func:`video_timeline`.
    """
    from timeshift.data.decode import VideoDecodeError
    from timeshift.engine.predict import _expand
    from timeshift.models.checkpoints import load_model

    model = checkpoint if isinstance(checkpoint, nn.Module) else load_model(checkpoint)
    # the problems of the whole run once, not once per video
    _window_and_stride(options.get("window", 2.0), options.get("stride", 1.0))
    _check_rgb(resolve_input_config(model))
    used: set[str] = set()
    results = []
    for path, error in _expand(inputs):
        if error is not None:
            results.append({"path": path, "error": error})
            continue
        try:
            timeline = video_timeline(model, path, **options)
        except (VideoDecodeError, TimelineError, OSError) as exc:
            _logger.info("%s: no timeline (%s)", path, exc)
            results.append({"path": path, "error": str(exc) or type(exc).__name__})
            continue
        prefix = Path(output_dir) / _unique(Path(path).stem, used)
        files = write_timeline(timeline, prefix)
        results.append({"path": path, "files": files, "timeline": timeline})
    return results


def _unique(stem: str, used: set[str]) -> str:
    """``<stem>.timeline``, numbered when two inputs of a run share a stem."""
    name, n = f"{stem}.timeline", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.timeline"
    used.add(name)
    return name
