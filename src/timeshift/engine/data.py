"""Datasets and loaders from a training configuration."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, DistributedSampler, Sampler, default_collate

from timeshift.data.dataset import VideoDataset
from timeshift.data.decode import VideoDecodeError
from timeshift.data.flip_maps import flip_label_map
from timeshift.data.formats import (
    Annotations,
    read_annotations,
    read_class_names,
    read_hmdb51_split,
    read_kinetics_csv,
    read_sthv2,
    read_ucf101_split,
)
from timeshift.data.synthetic import SyntheticSpec, make_synthetic
from timeshift.data.transforms import eval_transforms, train_transforms
from timeshift.engine.distributed import DistInfo

__all__ = [
    "DATA_FORMATS",
    "IndexedSamples",
    "ShardSampler",
    "build_eval_dataset",
    "build_train_loader",
    "build_val_loader",
    "collate_present",
    "load_split",
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
        f"synthetic-v3-{families}-n{spec.videos_per_class}-{spec.val_videos_per_class}"
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


def load_split(data: DictConfig, split: str, *, progress: bool = True) -> Annotations:
    """Annotations of ``split`` ("train" or "val") for any supported ``data.format``."""
    fmt = data.format
    path = data.train if split == "train" else data.val
    root = data.root if split == "train" else (data.val_root or data.root)
    if fmt == "synthetic":
        paths = synthetic_paths(data, progress=progress)
        return read_annotations(paths[split], root=paths["root"], classes=paths["classes"])
    if path is None:
        raise ValueError(f"data.{split} is not set (the {split} annotation file)")
    if fmt in ("videos", "rawframes", "folder"):
        kind = {"videos": "videos", "rawframes": "rawframes", "folder": "folder"}[fmt]
        return read_annotations(path, format=kind, root=root, classes=data.classes)
    if fmt == "sthv2":
        if data.classes is None:
            raise ValueError("data.classes must name Something-Something's labels.json")
        return read_sthv2(data.classes, path, video_root=root)
    if fmt == "kinetics":
        classes = read_class_names(data.classes) if data.classes else None
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


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``, in order, no padding: each sample evaluated once
    across processes (DistributedSampler would repeat some to even the shards out)."""

    def __init__(self, length: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, length, info.world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _loader(dataset, *, batch_size, sampler, workers, seed, drop_last=False) -> DataLoader:
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
    )


def build_train_loader(cfg: DictConfig, ann: Annotations, info: DistInfo):
    """Training dataset, sampler (deterministic per epoch and rank) and loader."""
    data = cfg.data
    flip_map = flip_label_map(ann.classes, data.flip_map) if data.flip_map else None
    dataset = VideoDataset(
        ann,
        num_segments=cfg.model.num_segments,
        mode="train",
        transform=train_transforms(
            data.size,
            scales=data.scales,
            flip=data.flip,
            flip_map=flip_map,
            random_resized=data.random_resized_crop,
            mean=data.mean,
            std=data.std,
        ),
        backend=data.backend,
        on_error=data.on_error,
        dense=data.dense,
        seed=cfg.train.seed,
        frame_template=data.frame_template,
        cache=data.cache,
    )
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
        workers=data.workers,
        seed=cfg.train.seed,
        drop_last=True,
    )
    return dataset, sampler, loader


def eval_dataset(
    ann: Annotations,
    *,
    num_segments: int,
    size: int = 224,
    scale_size: int | None = None,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    clips: int = 1,
    crops: int = 1,
    full_res: bool = False,
    twice: bool = False,
    dense: bool = False,
    backend: str | None = None,
    frame_template: str = "img_{:05d}.jpg",
    observed: float = 1.0,
) -> VideoDataset:
    """A test-protocol dataset: fixed sampling, resize + 1/3/10 crops, normalisation;
    ``observed < 1`` samples from the first part of each video only (early recognition)."""
    transform = eval_transforms(
        size, crops=crops, full_res=full_res, scale_size=scale_size, mean=mean, std=std
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
    )


def build_eval_dataset(cfg: DictConfig, ann: Annotations) -> VideoDataset:
    """The validation dataset of a training configuration."""
    data, ev = cfg.data, cfg.eval
    return eval_dataset(
        ann,
        num_segments=cfg.model.num_segments,
        size=data.size,
        scale_size=data.scale_size,
        mean=data.mean,
        std=data.std,
        clips=ev.clips,
        crops=ev.crops,
        full_res=ev.full_res,
        twice=ev.twice,
        dense=data.dense,
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
