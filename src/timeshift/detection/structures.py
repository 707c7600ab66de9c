"""What a detection dataset, a detector and the metrics exchange: boxes per frame, per video.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the frame they belong to, ``x2 > x1`` and
``y2 > y1`` (continuous coordinates: a box covering pixel columns 0..9 is ``x1 = 0, x2 = 10``).
Class indices are 0-based into the dataset's ``classes``. ImageNet-VID's XML (inclusive integer
corners) and COCO's ``[x, y, w, h]`` are converted when read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DetectionAnnotations", "Detections", "FrameBoxes", "VideoRecord"]


def _array(values, dtype, shape: tuple[int, ...]) -> np.ndarray:
    out = np.asarray(values, dtype=dtype)
    if out.size == 0:
        return np.zeros(shape, dtype=dtype)
    return out


@dataclass
class FrameBoxes:
    """The ground-truth objects of one frame.

    Attributes:
        boxes: ``(n, 4)`` float32 ``x1, y1, x2, y2`` pixels.
        labels: ``(n,)`` int64 class indices.
        track_ids: ``(n,)`` int64 identity of each object across the video's frames (ImageNet-VID
            ``trackid``, COCO-video ``instance_id``); ``-1`` where unknown.
        flags: per-object boolean arrays ``(n,)`` by name: ``"degraded"`` (the synthetic set:
            the class cue was removed in this frame), ``"occluded"``, ``"ignore"`` (not counted
            by the metrics, neither as a miss nor as a false positive when matched).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    track_ids: np.ndarray | None = None
    flags: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = _array(self.boxes, np.float32, (0, 4)).reshape(-1, 4)
        self.labels = _array(self.labels, np.int64, (0,)).reshape(-1)
        n = len(self.boxes)
        if len(self.labels) != n:
            raise ValueError(f"{n} boxes but {len(self.labels)} labels")
        if self.track_ids is None:
            self.track_ids = np.full(n, -1, dtype=np.int64)
        self.track_ids = _array(self.track_ids, np.int64, (0,)).reshape(-1)
        if len(self.track_ids) != n:
            raise ValueError(f"{n} boxes but {len(self.track_ids)} track ids")
        for name, values in self.flags.items():
            values = _array(values, bool, (0,)).reshape(-1)
            if len(values) != n:
                raise ValueError(f"{n} boxes but {len(values)} values of flag {name!r}")
            self.flags[name] = values

    def __len__(self) -> int:
        return len(self.boxes)

    def flag(self, name: str) -> np.ndarray:
        """Flag ``name`` per object (all ``False`` when the dataset does not give it)."""
        return self.flags.get(name, np.zeros(len(self), dtype=bool))

    def select(self, keep: np.ndarray) -> FrameBoxes:
        """The objects where ``keep`` (a boolean mask or indices)."""
        return FrameBoxes(
            self.boxes[keep],
            self.labels[keep],
            self.track_ids[keep],
            {k: v[keep] for k, v in self.flags.items()},
        )


@dataclass
class Detections:
    """A detector's output for one frame: ``boxes (m, 4)`` (as :class:`FrameBoxes`),
    ``scores (m,)`` in 0..1 and ``labels (m,)`` class indices, best first."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        self.boxes = _array(self.boxes, np.float32, (0, 4)).reshape(-1, 4)
        self.scores = _array(self.scores, np.float32, (0,)).reshape(-1)
        self.labels = _array(self.labels, np.int64, (0,)).reshape(-1)
        if not len(self.boxes) == len(self.scores) == len(self.labels):
            raise ValueError(
                f"{len(self.boxes)} boxes, {len(self.scores)} scores and {len(self.labels)} "
                "labels: one of each per detection"
            )

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class VideoRecord:
    """One annotated video: its frames in order and the objects of each.

    Attributes:
        video_id: the video's name (unique in its dataset; ImageNet-VID's snippet path).
        frames: the frame image files in order (or, for a video file, ``[]`` and ``path``).
        annotations: one :class:`FrameBoxes` per frame (an empty one for a frame without
            objects).
        size: ``(height, width)`` of the frames.
        path: the video file when the frames are not images.
    """

    video_id: str
    frames: list[str]
    annotations: list[FrameBoxes]
    size: tuple[int, int]
    path: str | None = None

    def __post_init__(self) -> None:
        if self.frames and len(self.frames) != len(self.annotations):
            raise ValueError(
                f"video {self.video_id}: {len(self.frames)} frames but "
                f"{len(self.annotations)} frame annotations"
            )

    @property
    def num_frames(self) -> int:
        return len(self.annotations)


@dataclass
class DetectionAnnotations:
    """A video detection dataset split: class names and annotated videos."""

    classes: list[str]
    videos: list[VideoRecord]
    source: str = ""  # the file or folder it was read from, for messages

    def frames(self) -> Sequence[FrameBoxes]:
        """Every frame's objects, video after video."""
        return [a for v in self.videos for a in v.annotations]
