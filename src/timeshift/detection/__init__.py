"""Video object detection (TSM Appendix A): detectors on the temporal backbones, online with
the per-layer caches, their data, metrics and training."""

from timeshift.detection.boxes import batched_nms, box_iou, nms
from timeshift.detection.dataset import VideoDetectionDataset, collate_clips
from timeshift.detection.formats import (
    IMAGENET_VID_CLASSES,
    read_detection_data,
    read_imagenet_vid,
    read_video_json,
    write_video_json,
)
from timeshift.detection.metrics import average_precision, detection_report, motion_iou
from timeshift.detection.model import Detector, create_detector
from timeshift.detection.online import OnlineDetector
from timeshift.detection.structures import (
    DetectionAnnotations,
    Detections,
    FrameBoxes,
    VideoRecord,
)
from timeshift.detection.synthetic import (
    SyntheticDetectionSpec,
    make_synthetic_detection,
    render_video,
)
from timeshift.detection.transforms import (
    boxes_to_original,
    detection_eval_transforms,
    detection_train_transforms,
)

__all__ = [
    "IMAGENET_VID_CLASSES",
    "DetectionAnnotations",
    "Detections",
    "Detector",
    "FrameBoxes",
    "OnlineDetector",
    "SyntheticDetectionSpec",
    "VideoDetectionDataset",
    "VideoRecord",
    "average_precision",
    "batched_nms",
    "box_iou",
    "boxes_to_original",
    "collate_clips",
    "create_detector",
    "detection_eval_transforms",
    "detection_report",
    "detection_train_transforms",
    "make_synthetic_detection",
    "motion_iou",
    "nms",
    "read_detection_data",
    "read_imagenet_vid",
    "read_video_json",
    "render_video",
    "write_video_json",
]
