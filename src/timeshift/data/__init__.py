"""Video data: decoding, annotation formats, segment sampling, clip transforms, datasets."""

from timeshift.data.dataset import VideoDataset, sample_seed, seed_worker
from timeshift.data.decode import VideoDecodeError, VideoReader, open_video
from timeshift.data.flip_maps import flip_label_map
from timeshift.data.formats import (
    AnnotationError,
    Annotations,
    SampleRecord,
    read_annotations,
    read_class_names,
    read_folder_tree,
    read_hmdb51_split,
    read_kinetics_csv,
    read_rawframe_list,
    read_sthv2,
    read_ucf101_split,
    read_video_list,
)
from timeshift.data.sampling import segment_indices
from timeshift.data.transforms import eval_transforms, train_transforms

__all__ = [
    "AnnotationError",
    "Annotations",
    "SampleRecord",
    "VideoDataset",
    "VideoDecodeError",
    "VideoReader",
    "eval_transforms",
    "flip_label_map",
    "open_video",
    "read_annotations",
    "read_class_names",
    "read_folder_tree",
    "read_hmdb51_split",
    "read_kinetics_csv",
    "read_rawframe_list",
    "read_sthv2",
    "read_ucf101_split",
    "read_video_list",
    "sample_seed",
    "seed_worker",
    "segment_indices",
    "train_transforms",
]
