"""``VideoDetectionDataset``: annotated videos -> clips of consecutive frames with their boxes.

Training draws one clip of ``num_frames`` consecutive frames (every ``frame_stride``-th) at a
random start in a video; testing returns whole videos (or consecutive chunks of them) in
order, as an online detector sees them. Frames are decoded with PIL (frame images) or the
video backends (video files), never larger than ``max_frame_pixels``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from timeshift.data.dataset import sample_seed
from timeshift.data.decode import VideoDecodeError, open_video, read_image
from timeshift.data.decode import max_frame_pixels as max_frame_pixels_limit
from timeshift.detection.structures import DetectionAnnotations, FrameBoxes, VideoRecord
from timeshift.detection.transforms import Geometry

__all__ = ["MODES", "VideoDetectionDataset", "clip_indices", "collate_clips"]

MODES = ("train", "test")


def clip_indices(
    num_frames: int, *, length: int, stride: int = 1, rng: random.Random | None = None
) -> list[int]:
    """Frame indices of one clip: ``length`` frames ``stride`` apart from a uniform random
    start (``rng``; ``None``: from frame 0); a video too short for the span repeats its last
    frame."""
    span = (length - 1) * stride + 1
    starts = max(1, num_frames - span + 1)
    start = rng.randrange(starts) if rng is not None else 0
    return [min(start + k * stride, num_frames - 1) for k in range(length)]


class VideoDetectionDataset(Dataset):
    """Clips (training) or whole videos (testing) of a video detection dataset.

    Args:
        annotations: the videos (e.g. from
            :func:`~timeshift.detection.formats.read_detection_data`).
        mode: ``"train"``: each item is a clip from a random start; ``"test"``: each item a
            whole video in order (or a chunk of ``test_chunk`` frames of it).
        num_frames: frames per training clip ``T``.
        frame_stride: distance between a training clip's frames (1: consecutive).
        transform: ``transform(frames, boxes, rng) -> (frames, boxes, info)``, e.g.
            :func:`~timeshift.detection.transforms.detection_train_transforms`; ``None``
            returns uint8 frames and the boxes as read.
        seed: base seed; a clip's draws are a function of ``(seed, epoch, index)`` (call
            :meth:`set_epoch` every epoch), whichever worker loads it.
        clips_per_video: training items per video and epoch.
        test_chunk: in test mode, split videos into consecutive chunks of at most this many
            frames (bounded memory for long videos; an online detector carries its state
            across the chunks of a video, ``info["frame_range"]`` says where each lies).
        max_frame_pixels: refuse frames larger than this (``width * height``); ``None``:
            ``TIMESHIFT_MAX_FRAME_PIXELS`` or 4096x4096, as the recognition data.

    Returns (per item):
        train: ``(clip, targets)``: ``clip`` ``(T, 3, H, W)`` (float after the transform),
        ``targets`` ``T`` :class:`FrameBoxes` in the clip's pixels.
        test: ``(frames, targets, info)``: ``frames`` ``(F, 3, H, W)``, ``targets`` ``F``
        :class:`FrameBoxes` in the model's input pixels, ``info`` a dict with ``video_id``,
        ``video_index``, ``frame_range`` ``(start, stop)``, ``num_frames`` (of the whole
        video) and the transform's map (``original_size``, ``input_size``, ``scale``,
        ``offset``, ``flip``) that :func:`~timeshift.detection.transforms.boxes_to_original`
        uses to bring detections back to the original frame pixels.
    """

    def __init__(
        self,
        annotations: DetectionAnnotations,
        *,
        mode: str = "train",
        num_frames: int = 8,
        frame_stride: int = 1,
        transform: Callable | None = None,
        seed: int = 0,
        clips_per_video: int = 1,
        test_chunk: int | None = None,
        max_frame_pixels: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for name, value in (("num_frames", num_frames), ("frame_stride", frame_stride)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if clips_per_video < 1 or (test_chunk is not None and test_chunk < 1):
            raise ValueError("clips_per_video and test_chunk must be >= 1")
        self.classes = list(annotations.classes)
        self.videos: list[VideoRecord] = list(annotations.videos)
        if not self.videos:
            raise ValueError(f"no videos in {annotations.source or 'the annotations'}")
        self.mode = mode
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.transform = transform
        self.seed = seed
        self.max_frame_pixels = max_frame_pixels_limit(max_frame_pixels)
        # shared memory, so that set_epoch reaches persistent DataLoader workers too
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._items = self._index(clips_per_video, test_chunk)

    def _index(self, clips_per_video: int, test_chunk: int | None) -> list[tuple[int, int, int]]:
        """``(video, start, stop)`` per item (train: the whole video to sample from)."""
        if self.mode == "train":
            return [
                (v, 0, video.num_frames)
                for v, video in enumerate(self.videos)
                for _ in range(clips_per_video)
            ]
        items = []
        for v, video in enumerate(self.videos):
            step = test_chunk or video.num_frames
            items += [
                (v, s, min(s + step, video.num_frames)) for s in range(0, video.num_frames, step)
            ]
        return items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of ``epoch`` (reproducible, different for every epoch)."""
        self._epoch[0] = epoch

    def frame_indices(self, index: int, rng: random.Random | None = None) -> list[int]:
        """The frames of item ``index`` (train: drawn with ``rng``, as ``__getitem__`` does)."""
        video, start, stop = self._items[index]
        if self.mode == "test":
            return list(range(start, stop))
        if rng is None:
            rng = random.Random(sample_seed(self.seed, self.epoch, index))
        count = self.videos[video].num_frames
        return clip_indices(count, length=self.num_frames, stride=self.frame_stride, rng=rng)

    def read_frames(self, video: VideoRecord, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``(len(indices), H, W, 3)``; each distinct frame decoded once.

        Raises:
            VideoDecodeError: a frame is missing, unreadable, over ``max_frame_pixels`` or not
                the size the annotations give (its boxes would be misplaced).
        """
        wanted = sorted(set(indices))
        if video.frames:
            decoded = {i: self._read_image(video, i) for i in wanted}
        else:
            with open_video(video.path, max_frame_pixels=self.max_frame_pixels) as reader:
                decoded = dict(zip(wanted, reader.get_frames(wanted), strict=True))
                _check_size(video, video.path, decoded[wanted[0]])
        return np.stack([decoded[i] for i in indices])

    def _read_image(self, video: VideoRecord, index: int) -> np.ndarray:
        file = Path(video.frames[index])
        what = f"frame {index} of video {video.video_id}"
        image = read_image(file, mode="RGB", max_pixels=self.max_frame_pixels, what=what)
        _check_size(video, file, image)
        return image

    def _transform(self, frames: np.ndarray, targets: list[FrameBoxes], rng: random.Random):
        if self.transform is not None:
            return self.transform(frames, targets, rng)
        height, width = frames.shape[1:3]
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
        return clip, targets, Geometry(height, width).info((height, width))

    def __getitem__(self, index: int):
        rng = random.Random(sample_seed(self.seed, self.epoch, index))
        video_index, start, stop = self._items[index]
        video = self.videos[video_index]
        indices = self.frame_indices(index, rng)
        frames = self.read_frames(video, indices)
        targets = [video.annotations[i] for i in indices]
        clip, targets, info = self._transform(frames, targets, rng)
        if self.mode == "train":
            return clip, targets
        info = {
            "video_id": video.video_id,
            "video_index": video_index,
            "frame_range": (start, stop),
            "num_frames": video.num_frames,
            **info,
        }
        return clip, targets, info


def _check_size(video: VideoRecord, file, image: np.ndarray) -> None:
    if tuple(image.shape[:2]) != tuple(video.size):
        raise VideoDecodeError(
            file,
            f"the frame is {image.shape[1]}x{image.shape[0]} but the annotations of video "
            f"{video.video_id} give {video.size[1]}x{video.size[0]} (its boxes would be "
            "misplaced); fix the annotation's width/height",
        )


def _pad_to(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # bottom/right only: box coordinates stay valid
    return F.pad(clip, (0, width - clip.shape[-1], 0, height - clip.shape[-2]))


def collate_clips(batch: Sequence[tuple], *, size_divisor: int = 1):
    """``collate_fn`` for a DataLoader over :class:`VideoDetectionDataset`.

    Clips are stacked to ``(N, T, 3, H, W)``, zero-padded at the bottom and right to the
    largest frame of the batch (rounded up to a multiple of ``size_divisor``; zeros are the
    mean colour after normalisation) when their sizes differ; targets stay a list of lists
    of :class:`FrameBoxes` (and test items' ``info`` a list of dicts).
    """
    columns = list(zip(*batch, strict=True))
    clips = columns[0]
    lengths = {c.shape[0] for c in clips}
    if len(lengths) > 1:
        raise ValueError(
            f"clips of {sorted(lengths)} frames cannot be stacked: test items are whole videos, "
            "use batch_size=1 (or test_chunk with videos of equal length)"
        )
    height = max(c.shape[-2] for c in clips)
    width = max(c.shape[-1] for c in clips)
    height, width = (-(-s // size_divisor) * size_divisor for s in (height, width))
    stacked = torch.stack([_pad_to(c, height, width) for c in clips])
    return (stacked, *(list(c) for c in columns[1:]))
