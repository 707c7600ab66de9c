"""Detecting whole videos and scoring the detections (``timeshift test`` for detectors).

A video is run in order, the way it is deployed: a causal detector (uni-directional TSM, or TSN
with no temporal op) streams it frame by frame through
:class:`~timeshift.online.OnlineModule`, its caches carried across the whole video (and across
the chunks of a long one); a bi-directional detector, which needs the future, sees the video in
consecutive windows of its ``num_segments`` frames (the last one padded by repeating its last
frame). Boxes are mapped back to the original frame pixels and scored with
:func:`~timeshift.detection.metrics.detection_report` (VOC AP at IoU 0.5, motion-speed and flag
subsets).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from timeshift.detection.dataset import VideoDetectionDataset, collate_clips
from timeshift.detection.metrics import detection_report
from timeshift.detection.model import decode_maps
from timeshift.detection.structures import DetectionAnnotations, Detections
from timeshift.detection.transforms import boxes_to_original, detection_eval_transforms
from timeshift.engine.metrics import json_dumps
from timeshift.ops.protocol import TemporalOp

__all__ = [
    "VideoDetector",
    "detect_videos",
    "evaluate_detector",
    "is_causal",
    "write_detection_outputs",
]

_logger = logging.getLogger(__name__)


def is_causal(model: nn.Module) -> bool:
    """Whether every temporal op of ``model`` reads past frames only (it can stream)."""
    return all(op.causal for op in model.modules() if isinstance(op, TemporalOp))


class VideoDetector:
    """Per-frame maps of a video, in order: streamed with the caches for a causal detector,
    in windows of ``num_segments`` frames otherwise; a detector without temporal ops (2D)
    takes its frames in batches, each on its own. :meth:`reset` before a new video."""

    def __init__(self, model: nn.Module, *, batch: int = 32) -> None:
        from timeshift.online import OnlineModule

        self.model = model.eval()
        self.per_frame = not any(isinstance(m, TemporalOp) for m in model.modules())
        self.streaming = is_causal(model) and not self.per_frame
        self.online = OnlineModule(model) if self.streaming else None
        self.batch = batch
        self.caches: list[torch.Tensor] = []

    def reset(self) -> None:
        self.caches = []

    @torch.no_grad()
    def maps(self, frames: torch.Tensor) -> torch.Tensor:
        """``(F, C, H, W)`` frames (the next ones of the video) -> ``(F, K + 4, h, w)``."""
        if self.per_frame:
            model = self.model
            return torch.cat(
                [
                    model.forward_frame_head(model.forward_frames(part))
                    for part in frames.split(self.batch)
                ]
            )
        if self.streaming:
            out = []
            for frame in frames:
                maps, *self.caches = self.online(frame[None], *self.caches)
                out.append(maps[0])
            return torch.stack(out)
        t = self.model.num_segments
        count = frames.shape[0]
        pad = (-count) % t
        if pad:  # the last window: its last frame repeated
            frames = torch.cat([frames, frames[-1:].expand(pad, *frames.shape[1:])])
        windows = frames.unflatten(0, (-1, t))
        return self.model(windows).flatten(0, 1)[:count]


def _mode(runner: VideoDetector) -> str:
    if runner.per_frame:
        return "per frame (no temporal op)"
    return "online (streamed with caches)" if runner.streaming else "windows of frames"


def detect_videos(
    model: nn.Module,
    dataset: VideoDetectionDataset,
    *,
    score_threshold: float = 0.01,
    max_detections: int = 100,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = True,
) -> dict[int, list[Detections]]:
    """The detections of every frame of every video of a test-mode dataset, in the original
    frames' pixels: ``{video index: [Detections per frame]}``.

    The dataset's chunks of one video arrive in order; the streaming state is carried across
    them and reset between videos."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    runner = VideoDetector(model.to(device))
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_clips)
    found: dict[int, list[Detections]] = {}
    for frames, _, infos in tqdm(loader, desc="detecting", unit="video part", disable=not progress):
        info = infos[0]
        video = info["video_index"]
        if info["frame_range"][0] == 0:
            runner.reset()
        maps = runner.maps(frames[0].to(device))
        detections = decode_maps(
            maps.cpu(),
            num_classes=model.num_classes,
            stride=model.out_stride,
            max_detections=max_detections,
            score_threshold=score_threshold,
        )
        found.setdefault(video, []).extend(
            Detections(boxes_to_original(d.boxes, info), d.scores, d.labels) for d in detections
        )
    return found


def evaluate_detector(
    model: nn.Module,
    annotations: DetectionAnnotations,
    *,
    size: int | Sequence[int],
    max_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    score_threshold: float = 0.01,
    max_detections: int = 100,
    device: torch.device | str = "cpu",
    workers: int = 0,
    test_chunk: int | None = 64,
    progress: bool = True,
) -> tuple[dict, dict[int, list[Detections]]]:
    """Detect every video of ``annotations`` and score it: ``(report, detections)`` with
    :func:`~timeshift.detection.metrics.detection_report`'s report (``ap50``, ``per_class``,
    ``ap50_slow/medium/fast``, ``ap50_degraded`` / ``ap50_clean`` where the data has them)."""
    norm = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    dataset = VideoDetectionDataset(
        annotations,
        mode="test",
        transform=detection_eval_transforms(size, max_size=max_size, **norm),
        test_chunk=test_chunk,
    )
    found = detect_videos(
        model,
        dataset,
        score_threshold=score_threshold,
        max_detections=max_detections,
        device=device,
        workers=workers,
        progress=progress,
    )
    per_video = [found.get(i, []) for i in range(len(annotations.videos))]
    report = detection_report(per_video, annotations)
    return report, found


def write_detection_outputs(
    output_dir: str | Path,
    summary: dict,
    annotations: DetectionAnnotations,
    detections: dict[int, list[Detections]],
) -> None:
    """``metrics.json`` (the report), ``per_class.csv`` (AP per class) and
    ``detections.json`` (every kept box: video, frame, class, score, ``[x1, y1, x2, y2]``)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json_dumps(summary, indent=2) + "\n")
    with open(out / "per_class.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "ap50"])
        for name, ap in summary["per_class"].items():
            writer.writerow([name, "" if ap is None or ap != ap else f"{ap:.6f}"])
    rows = []
    for v, video in enumerate(annotations.videos):
        for frame, dets in enumerate(detections.get(v, [])):
            rows += [
                {
                    "video": video.video_id,
                    "frame": frame,
                    "label": annotations.classes[int(label)],
                    "score": round(float(score), 5),
                    "box": [round(float(x), 2) for x in box],
                }
                for box, score, label in zip(dets.boxes, dets.scores, dets.labels, strict=True)
            ]
    (out / "detections.json").write_text(json_dumps(rows) + "\n")


def test_detector(
    checkpoint: str | Path,
    data: str | Path,
    *,
    image_root: str | Path | None = None,
    split: str = "val",
    output_dir: str | Path | None = None,
    device: str = "cpu",
    workers: int = 0,
    score_threshold: float = 0.01,
    max_detections: int = 100,
    progress: bool = True,
) -> dict:
    """Test a detector checkpoint on ``data`` (a COCO-video JSON file, or an ImageNet-VID
    folder and its ``split``), preprocessing as the checkpoint records; writes the outputs of
    :func:`write_detection_outputs` to ``output_dir`` when given. Returns the summary: the
    report of :func:`evaluate_detector` with ``checkpoint``, ``data``, ``videos``, ``frames``."""
    from timeshift.detection.formats import read_detection_data
    from timeshift.detection.model import Detector
    from timeshift.engine.evaluate import check_writable
    from timeshift.models.checkpoints import load_model

    if output_dir is not None:
        check_writable(output_dir)
    model = load_model(checkpoint)
    if not isinstance(model, Detector):
        raise ValueError(f"{checkpoint} is not a detector (its config has no task 'detection')")
    meta = model.checkpoint_meta
    kwargs = {"image_root": image_root} if str(data).endswith(".json") else {"split": split}
    annotations = read_detection_data(data, **kwargs)
    if meta.get("classes") and list(meta["classes"]) != list(annotations.classes):
        raise ValueError(
            f"{data} has the classes {annotations.classes}; {checkpoint} was trained on "
            f"{meta['classes']}"
        )
    report, found = evaluate_detector(
        model,
        annotations,
        size=meta.get("input_size") or 600,
        max_size=meta.get("max_size"),
        mean=meta.get("mean"),
        std=meta.get("std"),
        score_threshold=score_threshold,
        max_detections=max_detections,
        device=device,
        workers=workers,
        progress=progress,
    )
    summary = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "videos": len(annotations.videos),
        "frames": sum(v.num_frames for v in annotations.videos),
        "mode": _mode(VideoDetector(model)),
        **report,
    }
    if output_dir is not None:
        write_detection_outputs(output_dir, summary, annotations, found)
    return summary
