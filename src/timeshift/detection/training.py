"""Training detectors through :func:`timeshift.engine.trainer.fit` (``task: detection``).

The loop, the run directory, checkpoints, resume, learning-rate schedules, torchrun and the
curves are the recognition ones; this task supplies the data (ImageNet-VID, COCO-video JSON or
the synthetic set), the detector, its loss and its validation (AP50 on whole videos run in order,
as deployed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from timeshift.detection.dataset import VideoDetectionDataset, collate_clips
from timeshift.detection.evaluate import evaluate_detector
from timeshift.detection.formats import read_imagenet_vid, read_video_json
from timeshift.detection.loss import center_loss
from timeshift.detection.model import create_detector
from timeshift.detection.structures import DetectionAnnotations
from timeshift.detection.synthetic import SyntheticDetectionSpec, make_synthetic_detection
from timeshift.detection.transforms import detection_train_transforms
from timeshift.engine.config import ConfigError, to_dict
from timeshift.engine.distributed import run_on_main
from timeshift.engine.evaluate import mixed_precision
from timeshift.engine.loaders import train_sampler_loader
from timeshift.engine.trainer import (
    StepResult,
    TrainingTask,
    Validation,
    initialise_from,
    prepare_directory,
)

__all__ = ["DETECTION_FORMATS", "DetectionTask", "detection_data", "detection_step"]

_logger = logging.getLogger(__name__)

DETECTION_FORMATS = ("synthetic_detection", "video_json", "imagenet_vid")


def synthetic_detection_paths(cfg: DictConfig, *, progress: bool = True) -> dict[str, Path]:
    """The synthetic detection set of ``cfg.detection.synthetic``, generated once into the
    cache directory (one folder per spec)."""
    try:
        spec = SyntheticDetectionSpec(**to_dict(cfg.detection.synthetic))
    except TypeError as exc:
        raise ConfigError(f"detection.synthetic: {exc}") from None
    root = Path(cfg.data.synthetic.cache_dir).expanduser() / spec.folder_name()
    return make_synthetic_detection(root, spec=spec, progress=progress)


def detection_data(cfg: DictConfig, split: str, *, progress: bool = True) -> DetectionAnnotations:
    """The ``split`` (``"train"`` or ``"val"``) of a detection config's data."""
    data = cfg.data
    if data.format == "synthetic_detection":
        return read_video_json(synthetic_detection_paths(cfg, progress=progress)[split])
    if data.format == "video_json":
        path = data.train if split == "train" else data.val
        return read_video_json(path, image_root=data.root)
    if data.format == "imagenet_vid":
        if not data.root:
            raise ConfigError("data.root: the ImageNet-VID folder (holding Data/VID) is required")
        lists = data.train if split == "train" else data.val
        return read_imagenet_vid(data.root, split, list_file=lists)
    raise ConfigError(
        f"data.format {data.format!r} is not a detection format; expected one of "
        f"{list(DETECTION_FORMATS)}"
    )


def _has_val(cfg: DictConfig) -> bool:
    return cfg.data.format in ("synthetic_detection", "imagenet_vid") or bool(cfg.data.val)


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model here


def detection_step(model: nn.Module, batch, device: torch.device, amp: bool) -> StepResult:
    """CenterNet loss of a ``(clips, targets)`` batch (:func:`collate_clips`)."""
    clips, targets = batch
    clips = clips.to(device, non_blocking=True)
    frames = [frame for clip in targets for frame in clip]
    with mixed_precision(device, amp):
        maps = model(clips)
    losses = center_loss(maps.flatten(0, 1).float(), frames, stride=_unwrapped(model).out_stride)
    return StepResult(losses["loss"], clips.shape[0], None, clips[:2])


@dataclass
class _ValData:
    """What validation reads: the annotations of the validation videos."""

    annotations: DetectionAnnotations


class DetectionTask(TrainingTask):
    """``task: detection``: a :class:`~timeshift.detection.model.Detector` trained on clips
    of ``model.num_segments`` frames with CenterNet's loss and validated by AP50 on whole
    videos (``val_ap50``, and the subsets the data allows)."""

    name = "detection"
    step = staticmethod(detection_step)

    def load_data(self, cfg, directory, previous, *, info, progress):
        def prepare() -> DetectionAnnotations:
            prepare_directory(directory, previous)
            return detection_data(cfg, "train", progress=progress)

        train = run_on_main(info, prepare)
        if not info.is_main:
            train = detection_data(cfg, "train", progress=False)
        if not train.videos:
            raise ValueError(f"the training set is empty (no videos in {train.source})")
        val = detection_data(cfg, "val", progress=False) if _has_val(cfg) else None
        if val is not None and val.classes != train.classes:
            raise ValueError(
                f"the validation classes {val.classes} differ from the training classes "
                f"{train.classes} ({val.source} / {train.source})"
            )
        return train, val

    def classes(self, train: DetectionAnnotations) -> list[str]:
        return list(train.classes)

    def build_model(self, cfg: DictConfig, num_classes: int) -> nn.Module:
        model = create_detector(
            cfg.model.name,
            num_classes=num_classes,
            num_segments=cfg.model.num_segments,
            **to_dict(cfg.model.kwargs),
        )
        if cfg.model.pretrained:  # a recognizer's or an ImageNet backbone: same backbone keys
            initialise_from(model, cfg.model.pretrained, strict=False)
        return model

    def train_loader(self, cfg: DictConfig, train: DetectionAnnotations, info):
        d = cfg.detection
        dataset = VideoDetectionDataset(
            train,
            mode="train",
            num_frames=cfg.model.num_segments,
            frame_stride=d.frame_stride,
            transform=detection_train_transforms(
                cfg.data.size,
                flip=cfg.data.flip,
                crop_scale=tuple(d.crop_scale) if d.crop_scale else None,
                min_visible=d.min_visible,
                max_size=d.max_size,
                mean=list(cfg.data.mean),
                std=list(cfg.data.std),
            ),
            seed=cfg.train.seed,
            clips_per_video=d.clips_per_video,
        )
        sampler, loader = train_sampler_loader(dataset, cfg, info, collate_fn=collate_clips)
        return dataset, sampler, loader

    def val_loader(self, cfg: DictConfig, val: DetectionAnnotations | None, info):
        return _ValData(val) if val is not None and val.videos else None

    def validate(self, run, model: nn.Module) -> Validation:
        cfg = run.cfg
        model = _unwrapped(model)
        training = model.training
        report, _ = evaluate_detector(
            model.eval(),
            run.val_loader.annotations,
            size=cfg.data.size,
            max_size=cfg.detection.max_size,
            mean=list(cfg.data.mean),
            std=list(cfg.data.std),
            score_threshold=cfg.detection.score_threshold,
            max_detections=cfg.detection.max_detections,
            device=run.device,
            progress=run.progress and run.info.is_main,
        )
        model.train(training)
        row = {
            f"val_{key}": float(value)
            for key, value in report.items()
            if key.startswith("ap") and isinstance(value, float)
        }
        scores = torch.tensor([v for v in row.values() if v == v], dtype=torch.float32)
        return Validation(row, scores)

    def checkpoint_meta(self, cfg: DictConfig, classes, train) -> dict:
        return {
            "task": "detection",
            "classes": list(classes),
            "input_size": cfg.data.size,
            "max_size": cfg.detection.max_size,
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
            "config": to_dict(cfg),
        }
