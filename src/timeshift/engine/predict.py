"""Predicting videos: top-k classes of raw videos (or frame folders) with one checkpoint, or
with a two-stream pair whose flow stream sees the flow computed on the fly."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from timeshift.data.flow import FlowSettings
from timeshift.data.formats import VIDEO_EXTENSIONS, Annotations, SampleRecord
from timeshift.engine.backend import Calibration, load_for_inference
from timeshift.engine.evaluate import (
    EvalOptions,
    _check_fusion,
    _meta,
    _model_scores,
    _preprocessing,
    load_stream_pair,
)
from timeshift.engine.fusion import TSN_WEIGHTS, ScoreSet, fuse_scores
from timeshift.engine.loaders import eval_dataset
from timeshift.models.preprocessing import resolve_input_config

__all__ = ["flow_settings_of", "predict_videos"]

_logger = logging.getLogger(__name__)


def _expand(inputs: Sequence[str | Path]) -> list[tuple[str, str | None]]:
    """``(path, error)`` per video to predict: folders searched for videos (or read as a frame
    folder); an input that cannot be used gets its own error and never stops the others."""
    entries: list[tuple[str, str | None]] = []
    for item in inputs:
        path = Path(item)
        try:
            if path.is_dir():
                videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
                if videos:
                    entries += [(str(v), _input_problem(v)) for v in videos]
                elif any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in path.iterdir()):
                    entries.append((str(path), None))  # a frame folder
                else:
                    entries.append((str(item), f"no videos or frames in {path}"))
            else:
                entries.append((str(item), _input_problem(path)))
        except OSError as exc:  # an unreadable folder
            entries.append((str(item), f"{path}: cannot be read ({exc.strerror or exc})"))
    return entries


def _input_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a video, found without opening it (a FIFO would block)."""
    if not path.exists():
        return f"{path}: not found"
    if not path.is_file():
        return f"{path}: not a regular file (a FIFO, socket or device cannot be decoded)"
    if not os.access(path, os.R_OK):
        return f"{path}: permission denied"
    return None


def _decode_error(model, meta: dict, record: SampleRecord, flow_settings=None) -> str:
    """The cause a video failed with (decoding ran in worker processes, which log it only):
    decode it once more here and keep the message."""
    dataset = eval_dataset(
        Annotations([record], meta["classes"]),
        num_segments=model.num_segments,
        **_preprocessing(resolve_input_config(model, meta=meta)),
        flow_settings=flow_settings,
    )
    try:
        dataset.load(0, random.Random(0))
    except Exception as exc:  # any failure: its message is the result
        return str(exc) or type(exc).__name__
    return f"{record.path}: cannot be decoded"


@dataclass
class _Stream:
    """One model of a prediction and what it reads."""

    name: str  # "rgb", "flow", or "" for a single model
    checkpoint: str
    model: torch.nn.Module
    meta: dict
    flow_settings: FlowSettings | None = None


def flow_settings_of(meta: dict, given: FlowSettings | None = None) -> FlowSettings:
    """The flow settings to feed a flow model: ``given``, else those its checkpoint recorded
    (``meta["flow"]``, from the ``.done`` markers of its training data), else the defaults of
    ``extract-flow`` (DIS, bound 20, short side 256). A ``given`` that differs from the
    recorded ones is used, with a warning: the model sees flow unlike its training data."""
    recorded = FlowSettings.from_dict(meta["flow"]) if meta.get("flow") else None
    if given is not None:
        if recorded is not None and given != recorded:
            _logger.warning(
                "flow computed with %s, but the flow model was trained on flow made with %s: "
                "its accuracy may drop",
                given,
                recorded,
            )
        return given
    if recorded is None:
        _logger.info(
            "the flow checkpoint records no flow settings: computing flow as extract-flow's "
            "defaults (%s)",
            FlowSettings(),
        )
    return recorded or FlowSettings()


def predict_videos(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    *,
    top_k: int = 5,
    batch_size: int = 4,
    workers: int = 2,
    device: str = "cpu",
    backend: str = "auto",
    memory_format: str = "auto",
    progress: bool = True,
    flow_checkpoint: str | Path | None = None,
    flow_settings: FlowSettings | None = None,
    fusion_weights: Sequence[float] | None = None,
    fuse: str = "logits",
    clips: int | None = None,
    crops: int | None = None,
    full_res: bool | None = None,
    dense: bool | None = None,
    twice: bool = False,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> list[dict]:
    """Top-k classes with softmax scores for every video (folders are searched for videos).

    Decoding runs in ``workers`` processes. An input that is missing, unreadable or cannot be
    decoded gets an ``error`` entry (with the cause) instead of predictions, and the others
    are still predicted. ``backend`` and ``memory_format`` choose how the model runs
    (:func:`timeshift.engine.backend.inference_model`; ``auto``: the fastest measured path).

    Two streams: ``checkpoint`` is the RGB model and ``flow_checkpoint`` the flow model; the
    flow of each video is computed on the fly (:class:`~timeshift.data.flow.VideoFlowReader`,
    with :func:`flow_settings_of`), both streams score it and their scores are fused as
    :func:`~timeshift.engine.fusion.fuse_scores` (default: TSN's 1 : 1.5 on logits). Each
    entry's ``top`` is then the fusion's, and ``streams`` holds each stream's own top-k. A
    single flow checkpoint also predicts videos, computing their flow the same way.

    ``clips``, ``crops``, ``full_res``, ``dense``, ``twice``: the test protocol; each left at
    ``None`` takes the checkpoint's (``EvalOptions.for_checkpoint``), e.g. the 10 dense clips x
    3 crops a published dense model was evaluated with. ``precision``: ``fp32``, ``bf16``
    (OpenVINO) or ``int8`` (quantised on ``calibration`` clips, or an int8 ONNX export given as
    ``checkpoint``).
    """
    torch_device = torch.device(device)
    options = EvalOptions(
        clips=clips,
        crops=crops,
        full_res=full_res,
        dense=dense,
        twice=twice,
        batch_size=batch_size,
        workers=workers,
        backend=backend,
        memory_format=memory_format,
        precision=precision,
        calibration=calibration,
    )
    weights = list(fusion_weights or (TSN_WEIGHTS["rgb"], TSN_WEIGHTS["flow"]))
    if flow_checkpoint is not None:
        _check_fusion(fuse, weights, 2)  # before any work
    elif fusion_weights is not None:
        raise ValueError("fusion_weights are for a two-stream pair: give flow_checkpoint too")
    streams = _streams(checkpoint, flow_checkpoint, torch_device, flow_settings)
    classes = streams[0].meta["classes"]
    entries = _expand(inputs)
    records = [SampleRecord(path, -1) for path, error in entries if error is None]
    logits = {s.name: _stream_logits(s, records, options, torch_device, progress) for s in streams}
    out = []
    for path, error in entries:
        if error is None:
            error = _first_error(streams, logits, SampleRecord(path, -1))
        if error is not None:
            out.append({"path": path, "error": error})
            continue
        found = {name: by_path[path] for name, by_path in logits.items()}
        if len(streams) == 1:
            probabilities = found[streams[0].name].softmax(dim=0)
            out.append({"path": path, "top": _top(probabilities, classes, top_k)})
            continue
        fused = _fuse_one(path, found, classes, weights=weights, mode=fuse)
        out.append(
            {
                "path": path,
                "top": _top(fused, classes, top_k),
                "streams": {
                    name: _top(v.softmax(dim=0), classes, top_k) for name, v in found.items()
                },
            }
        )
    return out


def _streams(checkpoint, flow_checkpoint, device, flow_settings) -> list[_Stream]:
    if flow_checkpoint is None:
        model = load_for_inference(checkpoint).to(device).eval()
        meta = _meta(model, checkpoint)
        flow = None
        if resolve_input_config(model, meta=meta).modality == "flow":
            flow = flow_settings_of(meta, flow_settings)
        return [_Stream("", str(checkpoint), model, meta, flow)]
    models, _ = load_stream_pair(checkpoint, flow_checkpoint, device)
    (_, rgb), (_, flow_model) = models
    flow_meta = _meta(flow_model, flow_checkpoint)
    return [
        _Stream("rgb", str(checkpoint), rgb, _meta(rgb, checkpoint)),
        _Stream(
            "flow",
            str(flow_checkpoint),
            flow_model,
            flow_meta,
            flow_settings_of(flow_meta, flow_settings),
        ),
    ]


def _stream_logits(
    stream: _Stream, records: list[SampleRecord], options: EvalOptions, device, progress
) -> dict[str, torch.Tensor]:
    """Logits by path of the records ``stream`` could read."""
    if not records:
        return {}
    result = _model_scores(
        stream.model,
        stream.meta,
        Annotations(records, stream.meta["classes"]),
        options,
        device,
        progress,
        flow_settings=stream.flow_settings,
    )
    return {records[i].path: s for i, s in zip(result.indices.tolist(), result.scores, strict=True)}


def _first_error(streams: list[_Stream], logits: dict, record: SampleRecord) -> str | None:
    """Why a stream could not score ``record`` (``None``: every stream did)."""
    for stream in streams:
        if record.path not in logits[stream.name]:
            error = _decode_error(stream.model, stream.meta, record, stream.flow_settings)
            return f"{stream.name} stream: {error}" if stream.name else error
    return None


def _fuse_one(path: str, found: dict, classes: list[str], *, weights, mode: str) -> torch.Tensor:
    """The fused class probabilities of one video's streams: the softmax of the weighted mean
    of their logits, or the weighted mean of their softmax scores (``mode="softmax"``)."""
    label = torch.tensor([-1])
    sets = [
        ScoreSet([path], label, classes, found[name][None], modality=name, meta={"source": name})
        for name in ("rgb", "flow")
    ]
    fused = fuse_scores(sets, weights=weights, mode=mode)
    return fused.probabilities()[0]


def _top(probabilities: torch.Tensor, classes: list[str], top_k: int) -> list[dict]:
    values, indices = probabilities.topk(min(top_k, len(classes)))
    return [
        {"label": classes[c], "index": int(c), "score": float(v)}
        for c, v in zip(indices.tolist(), values.tolist(), strict=True)
    ]
