"""Training configuration: a typed schema, YAML recipes and dotted overrides (OmegaConf).

A recipe file only states what differs from the defaults below; ``--set train.lr=0.005`` style
overrides are applied last. Unknown keys and missing mandatory values raise
:class:`ConfigError` naming the key and the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from timeshift.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from timeshift.errors import TimeshiftError

__all__ = [
    "RESUME_FREE_KEYS",
    "Config",
    "ConfigError",
    "check_resume_config",
    "load_config",
    "shipped_configs",
    "to_dict",
]


class ConfigError(TimeshiftError, ValueError):
    """A configuration is invalid; the message names the key (and file)."""


@dataclass
class ModelConfig:
    name: str = MISSING  # a registered model, e.g. tsm_resnet50
    num_segments: int = 8
    dropout: float = 0.5
    partial_bn: bool = False
    # initial weights: a checkpoint in any format load_checkpoint understands (torchvision
    # ImageNet, reference TSM, MMAction2, ours); new classifiers are initialised fresh
    pretrained: str | None = None
    channels_last: bool = True
    # what a frame is: "rgb", or "flow" (a flow list: data.format rawframes over the folders
    # of 'timeshift data extract-flow'); new_length images stacked per frame, null: the
    # reference default (1 for RGB, 5 for flow: a 10-channel first conv)
    modality: str = "rgb"
    new_length: int | None = None
    # further create_model options (direction, fold_div, place, backbone widths, ...)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SyntheticConfig:
    cache_dir: str = "~/.cache/timeshift"
    videos_per_class: int = 40
    val_videos_per_class: int = 10
    size: int = 64
    frames: int = 16
    seed: int = 0
    families: list[str] | None = None


@dataclass
class DataConfig:
    # videos | rawframes | folder | sthv2 | kinetics | ucf101 | hmdb51 | synthetic
    format: str = "videos"
    train: str | None = None  # list / annotation file / split file (per format)
    val: str | None = None
    root: str | None = None  # folder the train paths are relative to
    val_root: str | None = None  # default: root
    classes: str | None = None  # class-name file (sthv2: labels.json; ucf101: classInd.txt)
    size: int = 224
    scale_size: int | None = None  # shorter side before the eval crop (default size * 256/224)
    scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    random_resized_crop: bool = False
    flip: bool = True
    flip_map: str | None = None  # sthv1 | sthv2 | jester | synthetic: swap direction labels
    # the labels name directions (a mirrored or reversed clip is another class); None: inferred
    # (synthetic, sthv2, or any flip_map). Test-time mirrors and dense wrap-around adapt to it
    direction_sensitive: bool | None = None
    dense: bool = False
    backend: str | None = None
    workers: int = 4
    on_error: str = "skip"
    cache: bool = False  # keep decoded videos in memory (small datasets of short videos)
    frame_template: str = "img_{:05d}.jpg"
    # normalisation; for model.modality=flow these ImageNet defaults stand for the reference's
    # flow values, mean [0.5] and std [0.226] on every channel
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 8  # per process
    lr: float = 0.01
    # lr is given for this total batch and scaled linearly with the real one (null: no scaling)
    lr_batch: int | None = None
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"  # step | cosine
    milestones: list[int] = field(default_factory=lambda: [20, 40])
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    clip_grad: float | None = 20.0
    accumulate: int = 1
    amp: bool = True  # autocast + GradScaler on CUDA; fp32 on CPU
    sync_bn: bool = False
    # new classifier weight lr x5 and bias lr x10 (reference, when fine-tuning from ImageNet)
    fc_lr5: bool = False
    eval_every: int = 1
    seed: int = 0
    log_every: int = 20  # loss read from the device, bar + TensorBoard every N iterations


@dataclass
class EvalConfig:
    clips: int = 1
    crops: int = 1
    full_res: bool = False
    twice: bool = False
    batch_size: int = 8


@dataclass
class DetectionConfig:
    """``task: detection`` only. The data: ``data.format`` ``video_json`` (``data.train`` /
    ``data.val`` the JSON files, ``data.root`` their image root), ``imagenet_vid``
    (``data.root`` the folder holding ``Data/VID``; ``data.train`` / ``data.val`` optional
    list files, default the devkit's) or ``synthetic_detection`` (generated from
    ``synthetic``); frames resized to ``data.size`` (shorter side, ``max_size`` cap), clips of
    ``model.num_segments`` frames."""

    frame_stride: int = 1  # distance between a training clip's frames
    crop_scale: list[float] | None = field(default_factory=lambda: [0.5, 1.0])
    min_visible: float = 0.5  # a cropped object keeping less of its area is ignored
    max_size: int | None = None  # cap on the longer side (ImageNet-VID: 600 / 1000)
    clips_per_video: int = 1  # training clips per video and epoch
    score_threshold: float = 0.01  # detections kept for AP
    max_detections: int = 100  # per frame
    # SyntheticDetectionSpec fields (train_videos, val_videos, frames, size, classes, ...)
    synthetic: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    # recognition (clips -> classes) or detection (frames -> boxes, timeshift.detection)
    task: str = "recognition"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults <- YAML file <- ``key=value`` overrides, validated against the schema.

    ``path`` may name a file or a shipped recipe (``synthetic-tsm`` for
    ``configs/synthetic-tsm.yaml``).
    """
    cfg = OmegaConf.structured(Config)
    origin = "defaults"
    try:
        if path is not None:
            file = _resolve(path)
            origin = str(file)
            cfg = OmegaConf.merge(cfg, OmegaConf.load(file))
        if overrides:
            origin = f"{origin} with overrides {list(overrides)}"
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value, got {bad}")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{origin}: {exc}".replace("\n", " ")) from exc
    if missing:
        raise ConfigError(f"{origin}: missing config key(s) {missing}")
    return cfg


SHIPPED = Path(__file__).resolve().parents[1] / "configs"


def shipped_configs() -> list[str]:
    """Names of the recipes shipped with the package (``configs/`` in the repository)."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def _resolve(path: str | os.PathLike) -> Path:
    file = Path(path)
    if file.is_file():
        return file
    shipped = SHIPPED / f"{file.stem}.yaml"
    if not file.suffix and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"config not found: {path} (shipped recipes: {', '.join(shipped_configs())})"
    )


def to_dict(cfg: DictConfig) -> dict:
    """Plain containers (for JSON, checkpoints, TensorBoard)."""
    return OmegaConf.to_container(cfg, resolve=True)


# keys that change how a run is carried out, not what it computes: free to change on resume
RESUME_FREE_KEYS = frozenset(
    {"data.workers", "data.cache", "train.log_every", "eval.batch_size", "eval.full_res"}
)
_ABSENT = object()


def check_resume_config(
    saved: Mapping, new: DictConfig | Mapping, *, allow_change: bool = False
) -> list[str]:
    """Compare the configuration a run was trained with (``saved``, from its ``last.pt``) with
    the one it is resumed with.

    :data:`RESUME_FREE_KEYS` may change freely. ``train.epochs`` may change with the ``step``
    schedule, whose learning rate does not depend on the run's length, so a longer run
    continues it exactly. Any other difference -- ``train.epochs`` with the ``cosine``
    schedule included, which spans the whole run -- raises :class:`ConfigError` listing every
    changed key as ``key: old -> new``, unless ``allow_change``.

    Returns:
        the accepted differences (``"key: old -> new"``), for the log.
    """
    old_flat = _flatten(saved)
    new_flat = _flatten(to_dict(new) if isinstance(new, DictConfig) else new)
    # a key the schema gained after the run was saved, at its default, is no change
    defaults = _flatten(to_dict(OmegaConf.structured(Config)))
    for key in new_flat.keys() - old_flat.keys():
        if key in defaults and new_flat[key] == defaults[key]:
            old_flat[key] = defaults[key]
    schedules = {old_flat.get("train.schedule"), new_flat.get("train.schedule")}
    accepted, refused = [], []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        old, value = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        if old == value or key in RESUME_FREE_KEYS:
            continue
        line = f"{key}: {_show(old)} -> {_show(value)}"
        continue_exactly = key == "train.epochs" and schedules == {"step"}
        (accepted if continue_exactly or allow_change else refused).append(line)
    if refused:
        raise ConfigError(_refusal(refused, cosine="cosine" in schedules))
    return accepted


def _refusal(refused: list[str], *, cosine: bool) -> str:
    message = (
        "cannot resume: the configuration differs from the one the run was trained with "
        f"(recorded in its last.pt): {'; '.join(refused)}. Resume with the run's configuration, "
        "or allow the change (timeshift train --allow-config-change, "
        "fit(..., allow_config_change=True)): the weights and optimiser state are kept and "
        "the new values apply from the next epoch"
    )
    if cosine and any(line.startswith("train.epochs:") for line in refused):
        message += (
            ". The cosine schedule spans the whole run: with another train.epochs it is "
            "stretched over the new length and the learning rate jumps to that curve; to "
            "train further with a schedule of its own, start a new run from the weights "
            "(model.pretrained=DIR/last.pt)"
        )
    return message


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value)
