"""Datasets and loaders from a training configuration."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate

from timeshift.data.dataset import VideoDataset
from timeshift.data.decode import VideoDecodeError
from timeshift.data.flip_maps import flip_label_map
from timeshift.data.flow import FlowSettings
from timeshift.data.formats import (
    AnnotationError,
    Annotations,
    check_paths,
    read_annotations,
    read_class_names,
    read_hmdb51_split,
    read_kinetics_csv,
    read_sthv2,
    read_ucf101_split,
    require_labels,
)
from timeshift.data.sampling import segment_indices
from timeshift.data.synthetic import FORMAT_VERSION, SyntheticSpec, make_synthetic
from timeshift.data.transforms import (
    FLOW_MEAN,
    FLOW_SCALES,
    FLOW_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RGB_SCALES,
    eval_transforms,
    mirrored_views,
    train_transforms,
)
from timeshift.engine.config import ConfigError
from timeshift.engine.distributed import DistInfo
from timeshift.models.registry import DEFAULT_NEW_LENGTH, input_channels

__all__ = [
    "DATA_FORMATS",
    "DIRECTION_SENSITIVE_FORMATS",
    "IndexedSamples",
    "ShardSampler",
    "UnmirroredViews",
    "build_eval_dataset",
    "build_train_loader",
    "build_val_loader",
    "checkpoint_direction",
    "collate_present",
    "direction_meta",
    "direction_protocol",
    "direction_sensitive",
    "flip_map_name",
    "frame_options",
    "input_modality",
    "load_split",
    "normalisation",
    "synthetic_paths",
]

_logger = logging.getLogger(__name__)

DATA_FORMATS = (
    "videos",
    "rawframes",
    "folder",
    "sthv2",
    "kinetics",
    "ucf101",
    "hmdb51",
    "synthetic",
)

# formats whose labels name directions (a mirror image or a reversed clip changes the class)
DIRECTION_SENSITIVE_FORMATS = ("synthetic", "sthv2")
# the flip map each of them ships (timeshift.data.flip_maps)
_FORMAT_FLIP_MAPS = {"synthetic": "synthetic", "sthv2": "sthv2"}


def synthetic_paths(data: DictConfig, *, progress: bool = True) -> dict[str, Path]:
    """The synthetic dataset of this config, generated on first use into the cache directory
    (one folder per spec, so changing the spec never mixes datasets)."""
    s = data.synthetic
    spec = SyntheticSpec(
        videos_per_class=s.videos_per_class,
        val_videos_per_class=s.val_videos_per_class,
        size=s.size,
        frames=s.frames,
        seed=s.seed,
        **({"families": tuple(s.families)} if s.families else {}),
    )
    families = "all" if not s.families else "-".join(spec.families)
    name = (
        f"synthetic-v{FORMAT_VERSION}-{families}-n{spec.videos_per_class}-{spec.val_videos_per_class}"
        f"-s{spec.size}-f{spec.frames}-seed{spec.seed}"
    )
    root = Path(s.cache_dir).expanduser() / name
    if (root / "meta.json").is_file():  # written last: the dataset is complete
        return {
            "root": root,
            "train": root / "train.txt",
            "val": root / "val.txt",
            "classes": root / "classes.txt",
        }
    _logger.info("generating the synthetic dataset in %s (once)", root)
    return make_synthetic(root, spec, progress=progress)


def load_split(
    data: DictConfig,
    split: str,
    *,
    progress: bool = True,
    classes: Sequence[str] | None = None,
) -> Annotations:
    """Annotations of ``split`` ("train" or "val") for any supported ``data.format``, checked
    before any work: every sample labelled (no ``-1``), at most a few paths missing.

    Args:
        classes: the class list the labels must follow -- the training set's, for "val": a
            validation folder is then labelled by these names and a validation list may not use
            other labels, so validation never scores against another class order.
    """
    ann = _read_split(data, split, progress=progress, classes=classes)
    if classes is not None and list(ann.classes) != list(classes):
        raise AnnotationError(
            f"{ann.source}: the {split} classes ({len(ann.classes)}: {ann.classes[:5]}...) are "
            f"not the training classes ({len(classes)}: {list(classes)[:5]}...): use the same "
            "class list (data.classes) for both"
        )
    require_labels(ann, purpose="training" if split == "train" else "validation")
    if data.format not in ("videos", "rawframes", "folder", "synthetic", "kinetics"):
        check_paths(ann)  # the list formats were checked by read_annotations; kinetics skips
    return ann


def _read_split(data: DictConfig, split: str, *, progress: bool, classes) -> Annotations:
    fmt = data.format
    path = data.train if split == "train" else data.val
    root = data.root if split == "train" else (data.val_root or data.root)
    if fmt == "synthetic":
        paths = synthetic_paths(data, progress=progress)
        return read_annotations(paths[split], root=paths["root"], classes=paths["classes"])
    if path is None:
        raise ValueError(f"data.{split} is not set (the {split} annotation file)")
    if fmt in ("videos", "rawframes", "folder"):
        names = classes if classes is not None else data.classes
        return read_annotations(path, format=fmt, root=root, classes=names)
    if fmt == "sthv2":
        if data.classes is None:
            raise ValueError("data.classes must name Something-Something's labels.json")
        return read_sthv2(data.classes, path, video_root=root)
    if fmt == "kinetics":
        if classes is None and data.classes:
            classes = read_class_names(data.classes)
        # without a class file the CSV's sorted labels are the classes: validation must use the
        # training set's (a validation CSV missing a class would shift every label after it)
        return read_kinetics_csv(path, video_root=root, classes=classes)
    if fmt == "ucf101":
        if data.classes is None:
            raise ValueError("data.classes must name UCF101's classInd.txt")
        return read_ucf101_split(data.classes, path, video_root=root)
    if fmt == "hmdb51":
        return read_hmdb51_split(
            path, subset="train" if split == "train" else "test", video_root=root
        )
    raise ValueError(f"data.format must be one of {DATA_FORMATS}, got {fmt!r}")


def _get(config, key: str, default=None):
    """``config[key]`` of a DictConfig or a plain mapping (a checkpoint's stored config),
    ``default`` where the key is absent (configs and checkpoints older than the key)."""
    if config is None:
        return default
    value = config.get(key, default)
    return default if value is None else value


def direction_sensitive(data: DictConfig | Mapping) -> bool:
    """Whether the labels of this data config name directions, so that a mirrored or
    reversed clip belongs to another class: ``data.direction_sensitive`` when set, else true
    for the synthetic set and Something-Something (:data:`DIRECTION_SENSITIVE_FORMATS`) and for
    any config with a flip map."""
    explicit = _get(data, "direction_sensitive")
    if explicit is not None:
        return bool(explicit)
    return _get(data, "format") in DIRECTION_SENSITIVE_FORMATS or bool(_get(data, "flip_map"))


def flip_map_name(data: DictConfig | Mapping) -> str | None:
    """The flip map (:data:`timeshift.data.flip_maps.FLIP_PAIRS` name) of a data config:
    ``data.flip_map``, else the one its format ships (synthetic, sthv2), else ``None``."""
    return _get(data, "flip_map") or _FORMAT_FLIP_MAPS.get(_get(data, "format"))


def direction_meta(data: DictConfig) -> dict:
    """What a checkpoint records so that the test protocol can respect directions:
    ``{"direction_sensitive": bool, "flip_map": name or None}``."""
    sensitive = direction_sensitive(data)
    return {
        "direction_sensitive": sensitive,
        "flip_map": flip_map_name(data) if sensitive else None,
    }


def checkpoint_direction(meta: Mapping) -> tuple[bool, str | None]:
    """``(direction_sensitive, flip map name)`` of a checkpoint's meta: the recorded keys, or
    for checkpoints saved before they existed, what the stored training config implies."""
    if "direction_sensitive" in meta:
        sensitive = bool(meta["direction_sensitive"])
        return sensitive, (meta.get("flip_map") if sensitive else None)
    data = (meta.get("config") or {}).get("data")
    if not data:
        return False, None
    sensitive = direction_sensitive(data)
    return sensitive, (flip_map_name(data) if sensitive else None)


def input_modality(cfg: DictConfig | Mapping) -> tuple[str, int]:
    """``(modality, new_length)`` of a training config: ``model.modality`` and
    ``model.new_length`` (``None``: the reference default, 1 for RGB and 5 for flow)."""
    model = cfg["model"] if isinstance(cfg, Mapping) else cfg.model
    modality = _get(model, "modality", "rgb")
    try:
        input_channels(modality, _get(model, "new_length"))
    except ValueError as exc:
        raise ConfigError(f"model.modality / model.new_length: {exc}") from None
    return modality, int(_get(model, "new_length", DEFAULT_NEW_LENGTH[modality]))


def normalisation(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """``(mean, std)`` of a training config's frames: ``data.mean`` / ``data.std``; for flow,
    the ImageNet defaults stand for the reference's flow values (``FLOW_MEAN`` 0.5,
    ``FLOW_STD`` 0.226 on every channel), and RGB values given for flow are refused."""
    modality, _ = input_modality(cfg)
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    if modality != "flow":
        return mean, std
    if (mean, std) == (list(IMAGENET_MEAN), list(IMAGENET_STD)):
        return list(FLOW_MEAN), list(FLOW_STD)
    if len(mean) == len(IMAGENET_MEAN) or len(std) == len(IMAGENET_STD):
        raise ConfigError(
            f"data.mean {mean} / data.std {std} have 3 values (one per RGB channel) but "
            "model.modality is flow: give one value for every flow channel (the reference: "
            f"data.mean={list(FLOW_MEAN)} data.std={list(FLOW_STD)}), or leave both unset"
        )
    return mean, std


def _scales(cfg: DictConfig) -> list[float]:
    """Multi-scale crop scales; for flow the RGB default stands for the reference's flow ones
    (``GroupMultiScaleCrop(size, [1, .875, .75])``)."""
    scales = list(cfg.data.scales)
    flow = input_modality(cfg)[0] == "flow"
    return list(FLOW_SCALES) if flow and scales == list(RGB_SCALES) else scales


def frame_options(modality: str, new_length: int) -> dict:
    """``VideoDataset`` / ``create_model`` options for the frames; none for single RGB frames,
    which datasets, models and stored configs mean without them."""
    if (modality, new_length) == ("rgb", 1):
        return {}
    return {"modality": modality, "new_length": new_length}


def _flip_map(classes: Sequence[str], name: str | None) -> dict[int, int] | None:
    if name is None:
        return None
    # pairs absent as a whole are fine (a subset of the classes); half a pair raises
    mapping = flip_label_map(classes, name, allow_absent=True)
    if not mapping:
        _logger.warning("flip map %r swaps none of these classes: mirrors keep every label", name)
    return mapping


class UnmirroredViews(nn.Module):
    """A model whose logits for the mirrored test views are swapped back through the flip map
    (a mirrored "moving left" scores as "moving right"), so that averaging over views adds like
    with like. Exact when the flip map is complete.

    Args:
        model: takes the ``(N * V, T, C, H, W)`` views of ``N`` samples, ``V`` per sample in the
            order the eval transform makes them.
        mirrored: one flag per view of a sample (:func:`~timeshift.data.transforms.mirrored_views`).
        flip_map: ``{class: mirrored class}``.
    """

    def __init__(self, model, *, mirrored: Sequence[bool], flip_map: Mapping[int, int]) -> None:
        super().__init__()
        self.model = model
        self.num_classes = model.num_classes
        self.num_segments = model.num_segments
        self.mirrored = [bool(m) for m in mirrored]
        self.permutation = [flip_map.get(k, k) for k in range(self.num_classes)]

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        logits = self.model(views)
        v, k = len(self.mirrored), logits.shape[-1]
        if logits.shape[0] % v:
            raise ValueError(
                f"{logits.shape[0]} views are not whole samples of {v} views each; "
                "UnmirroredViews needs every view of a sample in one call"
            )
        per_sample = logits.view(-1, v, k)
        mask = torch.tensor(self.mirrored, device=logits.device).view(1, v, 1)
        permutation = torch.tensor(self.permutation, device=logits.device)
        return torch.where(mask, per_sample[..., permutation], per_sample).view(-1, k)


def _eval_clip_count(*, num_segments: int, clips: int, dense: bool | str, twice: bool) -> int:
    """Clips per video that the test sampling takes (dense test sampling defaults to 10)."""
    probe = segment_indices(
        1, num_segments, mode="test", clips=clips, dense=dense, twice=twice
    )  # the count does not depend on the video length
    return len(probe)


def direction_protocol(
    meta: Mapping,
    *,
    num_segments: int,
    crops: int,
    clips: int = 1,
    dense: bool = False,
    twice: bool = False,
    source: str = "the checkpoint",
) -> tuple[bool | str, dict[int, int] | None, list[bool]]:
    """The test protocol for a checkpoint, adapted to direction-sensitive labels before any
    work: ``(dense sampling mode, flip map for the mirrored views or None, mirrored flags)``.

    For a direction-sensitive checkpoint dense sampling never wraps a short video out of
    order (``"ordered"``), and 10-crop testing swaps the scores of its mirrored views back
    through the checkpoint's flip map (:class:`UnmirroredViews`); without a complete flip map
    10 crops are refused (:class:`ValueError`), since they would report a wrong number.
    """
    sensitive, name = checkpoint_direction(meta)
    if not sensitive:
        return dense, None, []
    mode = "ordered" if dense else False
    count = _eval_clip_count(num_segments=num_segments, clips=clips, dense=mode, twice=twice)
    mirrored = mirrored_views(crops, count)
    if not any(mirrored):
        return mode, None, mirrored
    classes = list(meta.get("classes") or [])
    try:
        mapping = _flip_map(classes, name)
    except ValueError as exc:
        mapping, why = None, f"its flip map {name!r} does not fit its classes ({exc})"
    else:
        why = "it has no flip map (data.flip_map)"
    if mapping is None:
        raise ValueError(
            f"{source} is direction-sensitive (its labels name directions) and {why}: --crops 10 "
            "mirrors half of the views, which turns e.g. 'left' into 'right' and reports a wrong "
            "accuracy. Test with --crops 1 or --crops 3 (no mirrored views), or train with "
            "data.flip_map naming the class pairs a mirror swaps"
        )
    return mode, mapping, mirrored


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``, in order, no padding: each sample evaluated once
    across processes (DistributedSampler would repeat some to even the shards out)."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, length, info.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _loader(
    dataset, *, batch_size, sampler, workers, seed, drop_last=False, collate_fn=None
) -> DataLoader:
    # an explicit generator keeps the global torch RNG untouched by the loader (exact resume)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        generator=generator,
        collate_fn=collate_fn,
    )


def train_sampler_loader(
    dataset, cfg: DictConfig, info: DistInfo, *, collate_fn=None
) -> tuple[DistributedSampler, DataLoader]:
    """The sampler (shuffled, deterministic per epoch and rank, whole batches) and loader of a
    training dataset; a dataset too small for one batch per process is an error."""
    sampler = DistributedSampler(
        dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=cfg.train.seed,
        drop_last=True,
    )
    batches = len(sampler) // cfg.train.batch_size
    if batches == 0:
        raise ValueError(
            f"{len(dataset)} training samples make no batch of {cfg.train.batch_size} per "
            f"process ({info.world_size} processes): lower train.batch_size"
        )
    loader = _loader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        workers=cfg.data.workers,
        seed=cfg.train.seed,
        drop_last=True,
        collate_fn=collate_fn,
    )
    return sampler, loader


def build_train_loader(cfg: DictConfig, ann: Annotations, info: DistInfo):
    """Training dataset, sampler (deterministic per epoch and rank) and loader."""
    data = cfg.data
    sensitive = direction_sensitive(data)
    flip_map = _flip_map(ann.classes, flip_map_name(data)) if sensitive else None
    if data.flip and sensitive and flip_map is None:
        raise ValueError(
            "data.flip=true mirrors training clips of a direction-sensitive dataset without "
            "swapping their labels ('left' would be trained as 'right'): set data.flip=false, "
            "or data.flip_map to the class pairs a mirror swaps"
        )
    modality, new_length = input_modality(cfg)
    mean, std = normalisation(cfg)
    dataset = VideoDataset(
        ann,
        num_segments=cfg.model.num_segments,
        mode="train",
        transform=train_transforms(
            data.size,
            scales=_scales(cfg),
            flip=data.flip,
            flip_map=flip_map,
            random_resized=data.random_resized_crop,
            mean=mean,
            std=std,
            **({"modality": modality} if modality != "rgb" else {}),
        ),
        backend=data.backend,
        on_error=data.on_error,
        dense=_dense_mode(data),
        seed=cfg.train.seed,
        frame_template=data.frame_template,
        cache=data.cache,
        **frame_options(modality, new_length),
    )
    sampler, loader = train_sampler_loader(dataset, cfg, info)
    return dataset, sampler, loader


def _dense_mode(data) -> bool | str:
    """Dense sampling of a data config: never wrapped out of order for direction-sensitive
    labels (a wrapped short video plays partly backwards)."""
    if not data.dense:
        return False
    return "ordered" if direction_sensitive(data) else True


def eval_dataset(
    ann: Annotations,
    *,
    num_segments: int,
    size: int = 224,
    scale_size: int | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    clips: int = 1,
    crops: int = 1,
    full_res: bool = False,
    twice: bool = False,
    dense: bool | str = False,
    backend: str | None = None,
    frame_template: str = "img_{:05d}.jpg",
    observed: float = 1.0,
    modality: str = "rgb",
    new_length: int = 1,
    flow_settings: FlowSettings | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> VideoDataset:
    """A test-protocol dataset: fixed sampling, resize + 1/3/10 crops, normalisation;
    ``observed < 1`` samples from the first part of each video only (early recognition);
    ``dense="ordered"`` never wraps a short video (see :func:`segment_indices`);
    ``modality`` / ``new_length``: what a frame is (``InputConfig``; flow folders for
    ``"flow"``, whose 10-crop mirrors invert the x images; with ``flow_settings``, videos whose
    flow is computed on the fly; ``arrays``: records read from frames in memory)."""
    transform = eval_transforms(
        size,
        crops=crops,
        full_res=full_res,
        scale_size=scale_size,
        mean=mean,
        std=std,
        **({"modality": modality} if modality != "rgb" else {}),
    )
    return VideoDataset(
        ann,
        num_segments=num_segments,
        mode="test",
        transform=transform,
        backend=backend,
        clips=clips,
        twice=twice,
        dense=dense,
        frame_template=frame_template,
        observed=observed,
        **frame_options(modality, new_length),
        **({"flow_settings": flow_settings} if flow_settings is not None else {}),
        arrays=arrays,
    )


def build_eval_dataset(cfg: DictConfig, ann: Annotations) -> VideoDataset:
    """The validation dataset of a training configuration.

    Validation during training averages every view's logits as they are, so 10 crops (half of
    them mirrored) are refused for direction-sensitive data: the mirrored views would vote for
    the opposite direction. ``timeshift test --crops 10`` swaps them back with the flip map.
    """
    data, ev = cfg.data, cfg.eval
    if ev.crops == 10 and direction_sensitive(data):
        raise ValueError(
            "eval.crops=10 mirrors half of the validation views of a direction-sensitive "
            "dataset ('left' scored as 'right'): use eval.crops=1 or 3 for validation during "
            "training ('timeshift test --crops 10' un-mirrors them with the flip map)"
        )
    modality, new_length = input_modality(cfg)
    mean, std = normalisation(cfg)
    return eval_dataset(
        ann,
        num_segments=cfg.model.num_segments,
        size=data.size,
        scale_size=data.scale_size,
        mean=mean,
        std=std,
        modality=modality,
        new_length=new_length,
        clips=ev.clips,
        crops=ev.crops,
        full_res=ev.full_res,
        twice=ev.twice,
        dense=_dense_mode(data),
        backend=data.backend,
        frame_template=data.frame_template,
    )


class IndexedSamples(torch.utils.data.Dataset):
    """``(index, views, label)`` per sample, or ``None`` for a sample that cannot be read (it is
    dropped from the evaluation, never replaced by another video, and counted)."""

    def __init__(self, dataset: VideoDataset) -> None:
        self.dataset = dataset
        self.failed = torch.zeros(len(dataset), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            views, label = self.dataset[index]
        except (VideoDecodeError, OSError) as exc:
            if not self.failed[index]:
                _logger.warning("evaluation skips an unreadable sample: %s", exc)
            self.failed[index] = True
            return None
        return index, views, label


def collate_present(batch):
    """Default collation of the samples that could be read; ``None`` if none could."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


def eval_loader(
    dataset: VideoDataset, *, batch_size: int, workers: int, info: DistInfo | None = None
) -> DataLoader:
    """Evaluation loader over this process's shard, yielding ``(indices, views, labels)``."""
    return DataLoader(
        IndexedSamples(dataset),
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), info or DistInfo()),
        num_workers=workers,
        collate_fn=collate_present,
        generator=torch.Generator().manual_seed(0),
    )


def build_val_loader(cfg: DictConfig, dataset: VideoDataset, info: DistInfo) -> DataLoader:
    return eval_loader(dataset, batch_size=cfg.eval.batch_size, workers=cfg.data.workers, info=info)
