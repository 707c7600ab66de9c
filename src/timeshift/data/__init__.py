"""Video data: decoding, annotation formats, segment sampling, clip transforms, datasets."""

from timeshift.data.dataset import (
    MODALITIES,
    VideoDataset,
    default_new_length,
    sample_seed,
    seed_worker,
)
from timeshift.data.decode import VideoDecodeError, VideoReader, open_video
from timeshift.data.flip_maps import flip_label_map
from timeshift.data.flow import compute_flow, dequantize_flow, extract_flow, quantize_flow
from timeshift.data.flow_frames import (
    FLOW_NAMINGS,
    FlowFolderReader,
    FlowNaming,
    detect_flow_naming,
)
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
from timeshift.data.sampling import segment_indices, snippet_indices
from timeshift.data.transforms import (
    FLOW_MEAN,
    FLOW_STD,
    eval_transforms,
    train_transforms,
)

__all__ = [
    "FLOW_MEAN",
    "FLOW_NAMINGS",
    "FLOW_STD",
    "MODALITIES",
    "AnnotationError",
    "Annotations",
    "FlowFolderReader",
    "FlowNaming",
    "SampleRecord",
    "VideoDataset",
    "VideoDecodeError",
    "VideoReader",
    "compute_flow",
    "default_new_length",
    "dequantize_flow",
    "detect_flow_naming",
    "eval_transforms",
    "extract_flow",
    "flip_label_map",
    "open_video",
    "quantize_flow",
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
    "snippet_indices",
    "train_transforms",
]
