"""Box-aware clip transforms for detection: one random choice per clip.

A transform is called as ``transform(frames, boxes, rng) -> (frames, boxes, info)``: ``frames``
uint8 ``(T, H, W, 3)`` NumPy or ``(T, 3, H, W)`` tensor, ``boxes`` one
:class:`~timeshift.detection.structures.FrameBoxes` per frame, ``rng`` a ``random.Random``.
It returns normalised float ``(T, 3, H', W')``, the boxes in the new pixels and ``info``, the
map between the two (:func:`boxes_to_original`). Every random choice (crop window, flip) is
drawn **once per clip** and applied to all its frames: a per-frame flip or crop would make
objects jump between frames and teach a temporal model nothing about motion.

Order in training: random crop (on the source pixels) -> resize -> horizontal flip ->
normalise. A crop clips boxes to its window; an object left with less than ``min_visible`` of
its area is kept with the flag ``"ignore"`` (neither a positive nor a negative for the loss
and the metrics: a sliver of a cat is not a cat, but it is not background either), an object
left with nothing is dropped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from timeshift.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
from timeshift.detection.structures import FrameBoxes

__all__ = [
    "DetectionCompose",
    "Geometry",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "boxes_to_input",
    "boxes_to_original",
    "detection_eval_transforms",
    "detection_train_transforms",
]


@dataclass
class Geometry:
    """Where the current pixels come from: ``x_now = ax * x_source + bx`` (``ax < 0`` once
    flipped), likewise for ``y``; ``height, width`` the current frame size."""

    height: int
    width: int
    ax: float = 1.0
    bx: float = 0.0
    ay: float = 1.0
    by: float = 0.0

    def info(self, source: tuple[int, int]) -> dict:
        """What :func:`boxes_to_original` needs: ``x_in = x * sx + ox``, then mirrored
        (``x_in = W_in - x_in``) when ``flip``."""
        flip = self.ax < 0
        scale_x = -self.ax if flip else self.ax
        offset_x = self.width - self.bx if flip else self.bx
        return {
            "original_size": (int(source[0]), int(source[1])),
            "input_size": (self.height, self.width),
            "scale": (scale_x, self.ay),
            "offset": (offset_x, self.by),
            "flip": flip,
        }


def _with_boxes(frame: FrameBoxes, boxes: np.ndarray, keep=None, **flags) -> FrameBoxes:
    """``frame`` with new boxes (and, with ``keep``, only those objects); extra flags set."""
    if keep is not None:
        frame = frame.select(keep)
        boxes = boxes[keep]
    values = dict(frame.flags)
    values.update(flags)
    return FrameBoxes(boxes.astype(np.float32), frame.labels, frame.track_ids, values)


def _mirror(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes of the mirrored frame: ``x1' = W - x2``, ``x2' = W - x1``."""
    out = np.array(boxes, dtype=np.float64)
    out[:, [0, 2]] = width - out[:, [2, 0]]
    return out


def _resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    return F.interpolate(
        frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )


class Resize:
    """Resize every frame to ``size``: a pair ``(height, width)``, or an int, the shorter
    side (aspect kept), with the longer side capped at ``max_size`` (FGFA's 600 / 1000).
    Boxes scale with the pixels (``sx = W' / W``, ``sy = H' / H``)."""

    def __init__(self, size: int | Sequence[int], *, max_size: int | None = None) -> None:
        if not isinstance(size, int) and max_size is not None:
            raise ValueError("max_size is for a shorter-side size (an int), not a fixed size")
        self.size = size if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.max_size = max_size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if not isinstance(self.size, int):
            return self.size
        ratio = self.size / min(height, width)
        if self.max_size is not None:
            ratio = min(ratio, self.max_size / max(height, width))
        return max(1, round(height * ratio)), max(1, round(width * ratio))

    def __call__(self, frames, boxes, geometry: Geometry, rng):
        height, width = self.output_size(geometry.height, geometry.width)
        sx, sy = width / geometry.width, height / geometry.height
        scale = np.array([sx, sy, sx, sy], dtype=np.float64)
        boxes = [_with_boxes(f, f.boxes * scale) for f in boxes]
        geometry.ax, geometry.bx = geometry.ax * sx, geometry.bx * sx
        geometry.ay, geometry.by = geometry.ay * sy, geometry.by * sy
        geometry.height, geometry.width = height, width
        return _resize_frames(frames, height, width), boxes

    def __repr__(self) -> str:
        return f"Resize({self.size}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the whole clip with probability ``p`` (one draw per clip):
    ``x1' = W - x2``, ``x2' = W - x1``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, frames, boxes, geometry: Geometry, rng):
        if rng.random() >= self.p:
            return frames, boxes
        width = geometry.width
        boxes = [_with_boxes(f, _mirror(f.boxes, width)) for f in boxes]
        geometry.ax, geometry.bx = -geometry.ax, width - geometry.bx
        return frames.flip(-1), boxes

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomCrop:
    """Crop one window per clip covering a fraction of the frame area drawn uniformly from
    ``scale`` (the frame's aspect kept), at a uniform position.

    Boxes are clipped to the window. An object keeping less than ``min_visible`` of its area
    gets the flag ``"ignore"``; one keeping nothing is dropped. Every frame gets the
    ``"ignore"`` flag (all ``False`` where nothing was cut) so that a clip's frames carry the
    same flags.
    """

    def __init__(self, scale: tuple[float, float] = (0.5, 1.0), *, min_visible: float = 0.5):
        low, high = scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 <= min_visible <= 1:
            raise ValueError(f"min_visible must be a fraction in [0, 1], got {min_visible}")
        self.scale = (float(low), float(high))
        self.min_visible = min_visible

    def window(self, height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` of the crop."""
        side = math.sqrt(rng.uniform(*self.scale))
        w, h = max(1, round(width * side)), max(1, round(height * side))
        return rng.randint(0, width - w), rng.randint(0, height - h), w, h

    def _crop_boxes(self, frame: FrameBoxes, x: int, y: int, w: int, h: int) -> FrameBoxes:
        shifted = frame.boxes.astype(np.float64) - [x, y, x, y]
        clipped = np.clip(shifted, 0, [w, h, w, h])
        area = np.prod(shifted[:, 2:] - shifted[:, :2], axis=1)
        sides = clipped[:, 2:] - clipped[:, :2]
        visible = np.prod(np.maximum(sides, 0), axis=1)
        keep = (sides > 0).all(axis=1)
        cut = visible < self.min_visible * area
        ignore = (frame.flag("ignore") | cut)[keep]
        return _with_boxes(frame, clipped, keep, ignore=ignore)

    def __call__(self, frames, boxes, geometry: Geometry, rng):
        x, y, w, h = self.window(geometry.height, geometry.width, rng)
        boxes = [self._crop_boxes(f, x, y, w, h) for f in boxes]
        geometry.bx, geometry.by = geometry.bx - x, geometry.by - y
        geometry.height, geometry.width = h, w
        return frames[..., y : y + h, x : x + w], boxes

    def __repr__(self) -> str:
        return f"RandomCrop(scale={self.scale}, min_visible={self.min_visible})"


def _as_tensor(frames) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` from ``(T, H, W, 3)`` NumPy or a ``(T, 3, H, W)`` tensor."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected NumPy frames (T, H, W, 3), got shape {frames.shape}")
        frames = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    elif frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames (T, 3, H, W), got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames (0..255), got {frames.dtype}")
    return frames


class DetectionCompose:
    """Run box-aware steps in order, then normalise: ``(frames, boxes, rng) -> (float
    (T, 3, H', W'), boxes, info)`` with ``info`` as :func:`boxes_to_original` reads it."""

    def __init__(
        self,
        steps: Sequence,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.steps = list(steps)
        self.normalize = Normalize(mean, std)

    def __call__(self, frames, boxes: Sequence[FrameBoxes], rng: random.Random):
        frames = _as_tensor(frames)
        if len(boxes) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(boxes)} FrameBoxes: one per frame")
        source = tuple(frames.shape[-2:])
        geometry = Geometry(*source)
        boxes = list(boxes)
        for step in self.steps:
            frames, boxes = step(frames, boxes, geometry, rng)
        frames, _ = self.normalize(frames.contiguous(), None, rng)
        return frames, boxes, geometry.info(source)

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in [*self.steps, self.normalize])
        return f"DetectionCompose([{inner}])"


def detection_train_transforms(
    size: int | Sequence[int],
    *,
    flip: bool = True,
    crop_scale: tuple[float, float] | None = (0.5, 1.0),
    min_visible: float = 0.5,
    max_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> DetectionCompose:
    """Training: random crop (``crop_scale``: area fraction, ``None`` for none), resize to
    ``size`` (``(H, W)``, or the shorter side with ``max_size``), horizontal flip, normalise;
    one random choice per clip.

    Args:
        size: output ``(height, width)``, or the shorter side (int).
        flip: mirror half of the clips.
        crop_scale: range of the crop's area fraction; ``None``: no crop.
        min_visible: objects keeping less of their area in the crop are flagged ``"ignore"``.
        max_size: with an int ``size``, cap on the longer side.
        mean, std: normalisation (default ImageNet's, as the recognition transforms).
    """
    steps: list = []
    if crop_scale is not None:
        steps.append(RandomCrop(crop_scale, min_visible=min_visible))
    steps.append(Resize(size, max_size=max_size))
    if flip:
        steps.append(RandomHorizontalFlip())
    return DetectionCompose(steps, mean=mean, std=std)


def detection_eval_transforms(
    size: int | Sequence[int],
    *,
    max_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> DetectionCompose:
    """Evaluation: resize to ``size`` (as :func:`detection_train_transforms`) and normalise;
    no random choice."""
    return DetectionCompose([Resize(size, max_size=max_size)], mean=mean, std=std)


def _as_boxes(boxes) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def boxes_to_original(boxes, info: dict) -> np.ndarray:
    """Map ``(n, 4)`` boxes from the model's input pixels back to the original frame's
    (undo the flip, then the scale and offset), clipped to the original frame; float32."""
    out = _as_boxes(boxes)
    if info["flip"]:
        out = _mirror(out, info["input_size"][1])
    (sx, sy), (ox, oy) = info["scale"], info["offset"]
    out = (out - [ox, oy, ox, oy]) / [sx, sy, sx, sy]
    height, width = info["original_size"]
    return np.clip(out, 0, [width, height, width, height]).astype(np.float32)


def boxes_to_input(boxes, info: dict) -> np.ndarray:
    """Map ``(n, 4)`` boxes of the original frame to the model's input pixels (the inverse
    of :func:`boxes_to_original`, before clipping); float32."""
    (sx, sy), (ox, oy) = info["scale"], info["offset"]
    out = _as_boxes(boxes) * [sx, sy, sx, sy] + [ox, oy, ox, oy]
    if info["flip"]:
        out = _mirror(out, info["input_size"][1])
    return out.astype(np.float32)
