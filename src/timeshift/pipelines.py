"""``timeshift.pipeline``: video in, labels out, in one call.

>>> classify = timeshift.pipeline("tsm_resnet50.kinetics400_8f")   # or a checkpoint, or a model
>>> classify("cooking.mp4")
[{'label': 'making tea', 'score': 0.81}, {'label': 'cooking egg', 'score': 0.07}, ...]
>>> classify(["a.mp4", "frames/b/", array_T_H_W_3], top_k=1)       # batched: one list each
>>> classify("match.mp4", timeline=True)                          # labelled segments over time
[{'label': 'dribbling basketball', 'score': 0.74, 'start': 0.0, 'end': 12.5}, ...]

Results have the shape of the Hugging Face ``video-classification`` pipeline: a list of
``{"label", "score"}`` dicts, best first, for one input; a list of such lists for a list of
inputs. Inputs are decoded and preprocessed the way the model's checkpoint (or registry entry)
records (frames, resize, crop, mean/std, clips x crops), so a prediction here is the one
``timeshift predict`` and ``timeshift test`` make. The model runs on the fastest backend
measured (onnxruntime when installed, else PyTorch channels_last) unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from timeshift.errors import TimeshiftError

__all__ = ["PipelineInputError", "VideoClassificationPipeline", "pipeline"]

_logger = logging.getLogger(__name__)

_URL_SCHEMES = ("http://", "https://")
# a video fetched from a URL is kept in a temporary file while it is classified; a larger
# answer is refused rather than filling the disk
MAX_URL_BYTES = int(os.environ.get("TIMESHIFT_MAX_URL_BYTES", 4 << 30))


class PipelineInputError(TimeshiftError, ValueError):
    """An input the pipeline cannot read; the message names it (its position in a batch)."""


def pipeline(
    model: nn.Module | str | os.PathLike,
    *,
    top_k: int = 5,
    device: str = "cpu",
    backend: str = "auto",
    batch_size: int = 4,
    workers: int = 2,
    progress: bool = False,
    precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
) -> VideoClassificationPipeline:
    """A callable that classifies videos with ``model``.

    Args:
        model: a model from ``load_model`` / ``create_model`` (its ``checkpoint_meta`` gives
            the class names and preprocessing), a checkpoint path, or the name of published
            weights (``"tsm_resnet50.kinetics400_8f"``, fetched once into the cache).
        top_k: labels per result (each call may override it).
        device: where the model runs.
        backend: ``auto`` (the fastest: onnxruntime when installed), ``eager``, ``compile``,
            ``onnxruntime``.
        batch_size, workers: clips per forward pass and decoding processes for lists of files.
        progress: a progress bar over the inputs (and over the seconds of a timeline).
        precision: ``fp32`` (exact), ``bf16`` (OpenVINO) or ``int8`` (quantised once on the
            clips of the ``calibration`` list and cached; its agreement with fp32 is logged).
    """
    return VideoClassificationPipeline(
        model,
        top_k=top_k,
        device=device,
        backend=backend,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        precision=precision,
        calibration=calibration,
    )


class VideoClassificationPipeline:
    """See :func:`pipeline`. ``model``, ``classes`` and ``meta`` (the checkpoint metadata it
    follows) are public."""

    def __init__(
        self,
        model: nn.Module | str | os.PathLike,
        *,
        top_k: int = 5,
        device: str = "cpu",
        backend: str = "auto",
        batch_size: int = 4,
        workers: int = 2,
        progress: bool = False,
        precision: str = "fp32",
        calibration: str | os.PathLike | None = None,
    ) -> None:
        from timeshift.engine.backend import Calibration, load_for_inference

        if not isinstance(model, nn.Module):
            model = load_for_inference(str(model))
        self.model = model.to(torch.device(device)).eval()
        meta = dict(getattr(model, "checkpoint_meta", None) or {})
        if not meta.get("classes"):
            # a bare model: its outputs are named by index
            meta["classes"] = [str(i) for i in range(model.num_classes)]
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.top_k = top_k
        self.device = device
        self.backend = backend
        self.batch_size = batch_size
        self.workers = workers
        self.progress = progress
        self.precision = precision
        self.calibration = Calibration(str(calibration)) if calibration is not None else None

    def __call__(
        self,
        inputs: Any,
        *,
        top_k: int | None = None,
        timeline: bool = False,
        window: float | str = 2.0,
        stride: float | str = 1.0,
        fps: float | None = None,
    ) -> list:
        """Classify ``inputs``: a video path or URL, a frame folder, a ``(T, H, W, 3)`` uint8
        array or tensor, or a list of these (then one result per input, in order).

        Args:
            top_k: labels per result (default: the pipeline's).
            timeline: return labelled segments over time instead
                (``{"label", "score", "start", "end"}`` in seconds; see
                :func:`~timeshift.engine.timeline.video_timeline`): sliding windows for
                offline models, the smoothed per-frame stream for online ones.
            window, stride: the timeline's window length and step (seconds, or ``"2s"``).
            fps: frame rate of arrays and frame folders, needed for a timeline.
        """
        k = self.top_k if top_k is None else top_k
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        batch = isinstance(inputs, list | tuple)
        items = list(inputs) if batch else [inputs]
        if timeline:
            results = [self._timeline(x, i, k, window, stride, fps) for i, x in enumerate(items)]
        else:
            results = self._classify(items, k)
        return results if batch else results[0]

    # -- whole videos -----------------------------------------------------------------------
    def _classify(self, items: list, top_k: int) -> list[list[dict]]:
        from timeshift.data.formats import Annotations, SampleRecord
        from timeshift.engine.evaluate import EvalOptions, _model_scores

        if not items:
            return []
        with ExitStack() as stack:
            paths, arrays = [], {}
            for index, item in enumerate(items):
                path, array = _as_video(item, index, stack)
                paths.append(path)
                if array is not None:
                    arrays[path] = array
            files = len(paths) - len(arrays)
            options = EvalOptions(
                batch_size=self.batch_size,
                workers=min(self.workers, files),
                backend=self.backend,
                precision=self.precision,
                calibration=self.calibration,
            )
            records = [SampleRecord(p, -1) for p in paths]
            result = _model_scores(
                self.model,
                self.meta,
                Annotations(records, self.classes),
                options,
                torch.device(self.device),
                self.progress,
                arrays=arrays,
            )
            scored = dict(zip(result.indices.tolist(), result.scores, strict=True))
            missing = [i for i in range(len(items)) if i not in scored]
            if missing:
                raise self._unreadable(records, missing, arrays)
        return [self._top(scored[i].softmax(dim=0), top_k) for i in range(len(items))]

    def _unreadable(self, records, missing: list[int], arrays) -> PipelineInputError:
        """The cause for the first input that could not be read (decoding ran in worker
        processes, which only log it): read it once more here."""
        from timeshift.data.formats import Annotations
        from timeshift.engine.evaluate import _preprocessing
        from timeshift.engine.loaders import eval_dataset
        from timeshift.models.preprocessing import resolve_input_config

        first = missing[0]
        dataset = eval_dataset(
            Annotations([records[first]], self.classes),
            num_segments=self.model.num_segments,
            **_preprocessing(resolve_input_config(self.model, meta=self.meta)),
            arrays=arrays,
        )
        try:
            dataset.load(0, random.Random(0))
            cause = "it could not be decoded"
        except Exception as exc:  # the message is the answer
            cause = str(exc) or type(exc).__name__
        more = f" (and {len(missing) - 1} more inputs)" if len(missing) > 1 else ""
        return PipelineInputError(f"input {first} ({records[first].path}): {cause}{more}")

    def _top(self, probabilities: torch.Tensor, top_k: int) -> list[dict]:
        values, indices = probabilities.topk(min(top_k, len(self.classes)))
        return [
            {"label": self.classes[c], "score": float(v)}
            for c, v in zip(indices.tolist(), values.tolist(), strict=True)
        ]

    # -- timelines --------------------------------------------------------------------------
    def _timeline(self, item, index: int, top_k: int, window, stride, fps) -> list[dict]:
        from timeshift.engine.timeline import video_timeline
        from timeshift.online.stream import FrameSource

        if _is_array(item):
            frames = _checked_array(item, index)
            if not fps:
                raise PipelineInputError(f"input {index}: a timeline of an array needs fps=")
            video = FrameSource(f"array {index}", iter(frames), fps)
        else:
            video = str(item)
        timeline = video_timeline(
            self.model,
            video,
            window=window,
            stride=stride,
            top_k=top_k,
            batch_size=self.batch_size,
            device=self.device,
            classes=self.classes,
            fps=fps,
            progress=self.progress,
            backend=self.backend,
            precision=self.precision,
            calibration=self.calibration,
        )
        return [
            {"label": s["label"], "score": s["score"], "start": s["start"], "end": s["end"]}
            for s in timeline.segments
        ]


def _is_array(item) -> bool:
    return isinstance(item, np.ndarray | torch.Tensor)


def _checked_array(item, index: int) -> np.ndarray:
    """A ``(T, H, W, 3)`` uint8 array from an array or tensor, or an error naming the input."""
    frames = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else item
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise PipelineInputError(
            f"input {index}: expected a (T, H, W, 3) uint8 RGB array or tensor, got shape "
            f"{tuple(frames.shape)} and dtype {frames.dtype}"
        )
    if frames.shape[0] == 0:
        raise PipelineInputError(f"input {index}: the array has no frames")
    return frames


def _as_video(item, index: int, stack: ExitStack) -> tuple[str, np.ndarray | None]:
    """``(record path, frames)`` of one input: arrays are named ``<array i>`` and read from
    memory; URLs are fetched into a temporary file removed when ``stack`` closes."""
    if _is_array(item):
        return f"<array {index}>", _checked_array(item, index)
    if not isinstance(item, str | os.PathLike):
        raise PipelineInputError(
            f"input {index}: expected a path, URL, frame folder or (T, H, W, 3) uint8 array, "
            f"got {type(item).__name__}"
        )
    text = str(item)
    if text.lower().startswith(_URL_SCHEMES):
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="timeshift-url-")))
        return str(_fetch_video(text, folder, index)), None
    if not Path(text).exists():
        raise PipelineInputError(f"input {index}: {text} not found")
    return text, None


def _fetch_video(url: str, folder: Path, index: int) -> Path:
    """Download ``url`` into ``folder`` (bounded by :data:`MAX_URL_BYTES`)."""
    name = Path(urllib.parse.urlparse(url).path).name or "video"
    target = folder / name
    request = urllib.request.Request(url, headers={"User-Agent": "timeshift"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response, target.open("wb") as out:
            size = int(response.headers.get("Content-Length") or 0)
            if size > MAX_URL_BYTES:
                raise PipelineInputError(
                    f"input {index}: {url} is {size} bytes, over the {MAX_URL_BYTES}-byte limit "
                    "(TIMESHIFT_MAX_URL_BYTES); download it and pass the file"
                )
            copied = _copy_bounded(response, out, url, index)
    except OSError as exc:  # urllib's errors (HTTP status, refused, timeout) are OSErrors
        raise PipelineInputError(f"input {index}: cannot fetch {url} ({exc})") from exc
    _logger.info("fetched %s (%d bytes)", url, copied)
    return target


def _copy_bounded(response, out, url: str, index: int) -> int:
    copied = 0
    while chunk := response.read(1 << 20):
        copied += len(chunk)
        if copied > MAX_URL_BYTES:
            raise PipelineInputError(
                f"input {index}: {url} sent more than {MAX_URL_BYTES} bytes "
                "(TIMESHIFT_MAX_URL_BYTES); download it and pass the file"
            )
        out.write(chunk)
    return copied
