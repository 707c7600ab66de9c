"""Box operations in plain PyTorch: IoU, greedy NMS, clipping, format conversion.

Boxes are ``(..., 4)`` ``x1, y1, x2, y2`` in continuous pixel coordinates (see
:mod:`timeshift.detection.structures`): width is ``x2 - x1``, no ``+ 1``. No torchvision and no
compiled ops (torchvision does not import against the CPU torch here), so the same code runs in
eager PyTorch, on any device, and next to an exported graph.

Every function takes torch tensors or NumPy arrays and answers in kind, from one implementation:
IoU and areas use only operations both libraries spell alike; the others are written in torch
and NumPy inputs are viewed as tensors (``torch.from_numpy``, no copy) and come back as arrays.
So the metrics (NumPy) and the detector (torch) share the code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "nms",
    "paired_box_iou",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

Array = TypeVar("Array", torch.Tensor, np.ndarray)


def _accepts_numpy(fn: Callable) -> Callable:
    """Run ``fn`` (written for tensors) on NumPy arrays too: arrays in -> arrays out."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        numpy_in = any(isinstance(a, np.ndarray) for a in args)
        args = tuple(
            torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
            for a in args
        )
        out = fn(*args, **kwargs)
        return out.numpy() if numpy_in else out

    return wrapper


def _namespace(*arrays):
    """The arrays as one kind: NumPy when all are, else tensors (IoU and areas are written
    for both: the metrics call them per frame, where a torch round trip would dominate)."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        return arrays
    return tuple(a if isinstance(a, torch.Tensor) else torch.as_tensor(a) for a in arrays)


def box_area(boxes: Array) -> Array:
    """Area of each box, ``(...)`` from ``(..., 4)``; an inverted box has area 0."""
    (boxes,) = _namespace(boxes)
    wh = (boxes[..., 2:] - boxes[..., :2]).clip(min=0)
    return wh[..., 0] * wh[..., 1]


def _iou(a: Array, b: Array) -> Array:
    """IoU of boxes ``a`` and ``b`` broadcast against each other (last dim 4)."""
    xp = np if isinstance(a, np.ndarray) else torch
    top_left = xp.maximum(a[..., :2], b[..., :2])
    bottom_right = xp.minimum(a[..., 2:], b[..., 2:])
    wh = (bottom_right - top_left).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    # two zero-area boxes have union 0 (and intersection 0): their IoU is 0, never NaN
    return inter / xp.where(union > 0, union, xp.ones_like(union))


def box_iou(a: Array, b: Array) -> Array:
    """Pairwise IoU: ``(n, 4)`` x ``(m, 4)`` -> ``(n, m)``; zero-area boxes give 0.

    Continuous coordinates (IoU of ``[0, 0, 10, 10]`` and ``[5, 0, 10, 10]`` is 1/2), as
    torchvision's ``box_iou`` and pycocotools; the ImageNet-VID devkit's ``+ 1`` pixel widths
    are the same numbers once its inclusive corners are converted (``x2 + 1``) on reading.
    """
    a, b = _namespace(a, b)
    return _iou(a.reshape(-1, 1, 4), b.reshape(1, -1, 4))


def paired_box_iou(a: Array, b: Array) -> Array:
    """IoU of ``a[i]`` with ``b[i]``: ``(n, 4)`` x ``(n, 4)`` -> ``(n,)``."""
    a, b = _namespace(a, b)
    if a.shape != b.shape:
        raise ValueError(f"paired_box_iou needs boxes of one shape, got {a.shape} and {b.shape}")
    return _iou(a, b)


@_accepts_numpy
def nms(boxes: Array, scores: Array, iou_threshold: float) -> Array:
    """Greedy non-maximum suppression, as torchvision's ``nms``.

    Boxes are visited by decreasing score (ties: the earlier box first); a box is dropped when
    its IoU with an already kept box is ``> iou_threshold``.

    Args:
        boxes: ``(n, 4)`` xyxy.
        scores: ``(n,)``.
        iou_threshold: the overlap above which the lower-scored box is suppressed.

    Returns:
        int64 indices into ``boxes`` of the kept boxes, best first.

    The ``(n, n)`` IoU matrix is one batched op on the boxes' device; the greedy pass then runs
    over its boolean form on the CPU (as torchvision's CUDA kernel does with its bit mask), so
    keep ``n`` to a pre-NMS top-k (a few thousand at most).
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = boxes[order]
    overlaps = (box_iou(ranked, ranked) > iou_threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        removed |= overlaps[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)]


@_accepts_numpy
def batched_nms(boxes: Array, scores: Array, labels: Array, iou_threshold: float) -> Array:
    """NMS within each class: boxes of different ``labels`` never suppress each other.

    Returns the kept indices, best first, as torchvision's ``batched_nms``. Done as one
    :func:`nms` over boxes moved apart per class (offset by ``label * (max coordinate + 1)``),
    torchvision's own trick, so it costs a single pass.
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    span = boxes.max() - boxes.min() + 1
    offsets = (labels.to(boxes.dtype) * span)[:, None]
    return nms(boxes + offsets, scores, iou_threshold)


@_accepts_numpy
def clip_boxes(boxes: Array, size: tuple[int, int]) -> Array:
    """Boxes clipped to a ``size = (height, width)`` frame: ``0 <= x <= width``,
    ``0 <= y <= height`` (continuous coordinates: the right edge is ``width``)."""
    height, width = size
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


@_accepts_numpy
def xywh_to_xyxy(boxes: Array) -> Array:
    """COCO's ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``."""
    return torch.cat((boxes[..., :2], boxes[..., :2] + boxes[..., 2:]), dim=-1)


@_accepts_numpy
def xyxy_to_xywh(boxes: Array) -> Array:
    """``[x1, y1, x2, y2]`` -> COCO's ``[x, y, w, h]``."""
    return torch.cat((boxes[..., :2], boxes[..., 2:] - boxes[..., :2]), dim=-1)
