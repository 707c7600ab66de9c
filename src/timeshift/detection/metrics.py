"""Video object detection metrics: VOC / ImageNet-VID average precision, subsets of the ground
truth (FGFA's motion-speed split, the synthetic set's ``degraded`` frames), the report.

Protocol (what each rule follows):

* **Matching** (ImageNet-VID devkit / FGFA ``vid_eval``, COCO ``evaluateImg``): per class, the
  detections of all frames in decreasing score order (stable: ties keep the input order, frame
  after frame); each takes the highest-IoU object of its frame and class not matched yet with
  ``IoU >= threshold`` (a true positive); failing that it is a false positive (so a duplicate is
  one). Pascal VOC's ``voc_eval`` differs in two corner cases: it needs ``IoU > threshold`` and
  takes the best-overlapping object even when already matched (then a false positive).
* **Ignored ground truth** (flag ``"ignore"``, VOC's "difficult"; and everything outside a
  subset): not in the recall denominator. A detection takes a counted object first (as COCO
  does with its ignored objects); one that only overlaps ignored objects of its class
  (``IoU >= threshold``) is neither a true nor a false positive, however many do (VOC's rule
  for difficult objects).
* **AP**: ``"all"``: VOC2010+ / ImageNet-VID devkit (FGFA ``vid_ap``), the area under the
  monotone precision envelope at every recall step; ``"coco101"``: COCO's mean of the envelope
  at recall 0, 0.01, ..., 1. A class without (counted) ground truth has AP NaN and is left out of
  the mean, as FGFA does.
* **Small objects** (``vid_threshold=True``): the ImageNet-VID devkit / FGFA
  ``parse_vid_rec`` threshold ``min(0.5, w h / ((w + 10) (h + 10)))`` per ground-truth box
  (``w, h`` its size in pixels; the devkit's ``+ 1`` widths are our continuous widths).
* **FGFA's variant** (``protocol="fgfa"``, ``vid_eval_motion``), for speed buckets comparable
  with published ImageNet-VID numbers: a detection takes the best free object of its class,
  ignored or not, and an unmatched one weighs as a false positive by what it overlaps most
  (a counted object: 1, an ignored one: 0, neither: the ignored fraction of the frame's
  objects, or the counted fraction of all objects in a frame without any).
* **Motion speed** (FGFA, ImageNet-VID): an object's motion IoU in frame ``t`` is the mean IoU of
  its box with the boxes of the same track in every frame of ``t - 10 .. t + 10`` (``t``
  excluded) where the track appears; slow ``> 0.9``, medium ``0.7 .. 0.9``, fast ``< 0.7``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from timeshift.detection.boxes import box_iou, paired_box_iou
from timeshift.detection.structures import DetectionAnnotations, Detections, FrameBoxes
from timeshift.errors import TimeshiftError

__all__ = [
    "MOTION_BUCKETS",
    "APResult",
    "MetricsError",
    "average_precision",
    "detection_report",
    "motion_buckets",
    "motion_iou",
]

_logger = logging.getLogger(__name__)

IGNORE = "ignore"
MOTION_BUCKETS = ("slow", "medium", "fast")
SLOW_ABOVE = 0.9  # FGFA motion_ranges: fast [0, 0.7], medium [0.7, 0.9], slow [0.9, 1]
FAST_BELOW = 0.7
VID_PIXEL_TOLERANCE = 10  # ImageNet-VID devkit / FGFA parse_vid_rec pixelTolerance
COCO_RECALLS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs, bit for bit

Interpolation = Literal["all", "coco101"]
Protocol = Literal["voc", "fgfa"]


class MetricsError(TimeshiftError, ValueError):
    """Detections and ground truth that cannot be evaluated together (counts, classes)."""


@dataclass(frozen=True)
class APResult:
    """Average precision per class and its mean.

    Attributes:
        per_class: ``(num_classes,)`` AP; NaN for a class without counted ground truth.
        mean: mean of ``per_class`` over the classes with ground truth (NaN when none has).
        num_positives: ``(num_classes,)`` counted (not ignored) ground-truth objects.
        num_detections: ``(num_classes,)`` detections that counted (true or false positives,
            or, under ``protocol="fgfa"``, partly false).
    """

    per_class: np.ndarray
    mean: float
    num_positives: np.ndarray
    num_detections: np.ndarray


def _check_labels(labels: np.ndarray, num_classes: int, what: str, frame: int) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise MetricsError(
            f"frame {frame}: {what} class index {int(labels.min())}..{int(labels.max())} "
            f"outside 0..{num_classes - 1}; pass num_classes = the dataset's class count"
        )


def _gt_thresholds(boxes: np.ndarray, iou_threshold: float, vid_threshold: bool) -> np.ndarray:
    """The IoU each ground-truth box needs to be matched (the devkit's rule when asked)."""
    if not vid_threshold:
        return np.full(len(boxes), iou_threshold)
    w = (boxes[:, 2] - boxes[:, 0]).astype(np.float64)
    h = (boxes[:, 3] - boxes[:, 1]).astype(np.float64)
    tol = VID_PIXEL_TOLERANCE
    return np.minimum(iou_threshold, w * h / ((w + tol) * (h + tol)))


def _match_frame(
    det: Detections,
    gt: FrameBoxes,
    ignore: np.ndarray,
    thresholds: np.ndarray,
    *,
    protocol: Protocol,
    empty_weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(true_positive, false_positive)`` per detection of one frame: a bool and a weight
    (0 or 1; a fraction for FGFA's unmatched detections), both 0 for an ignored detection."""
    m = len(det)
    true_positive = np.zeros(m, dtype=bool)
    if m == 0 or len(gt) == 0:
        return true_positive, np.full(m, empty_weight if protocol == "fgfa" else 1.0)
    iou = box_iou(det.boxes.astype(np.float64), gt.boxes.astype(np.float64))
    candidate = (iou >= thresholds[None, :]) & (det.labels[:, None] == gt.labels[None, :])
    # "voc" takes a counted object before an ignored one (COCO); FGFA takes the best of all
    takeable = ~ignore if protocol == "voc" else np.ones(len(gt), dtype=bool)
    taken = np.zeros(len(gt), dtype=bool)
    hit = np.zeros(m, dtype=bool)  # matched: a true positive, or on an ignored object
    order = np.argsort(-det.scores, kind="stable")
    # only detections with a candidate can be anything but a false positive: loop over those
    for j in order[candidate[order].any(axis=1)]:
        free = candidate[j] & ~taken & takeable
        if free.any():
            k = int(np.argmax(np.where(free, iou[j], -1.0)))
            taken[k] = hit[j] = True
            true_positive[j] = not ignore[k]
        elif protocol == "voc":
            hit[j] = (candidate[j] & ignore).any()  # VOC's difficult objects absorb any number
    false_positive = (~hit).astype(np.float64)
    if protocol == "fgfa":
        false_positive[~hit] = _fgfa_weights(iou[~hit], ignore)
    return true_positive, false_positive


def _fgfa_weights(iou: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """FGFA ``vid_eval_motion``: an unmatched detection is a whole false positive when it
    overlaps a counted object (any class) more than an ignored one, none in the opposite
    case, and on a tie (no overlap at all, usually) the fraction of ignored objects."""
    counted_best = np.where(ignore, -1.0, iou).max(axis=1)
    ignored_best = np.where(ignore, iou, -1.0).max(axis=1)
    tie = float(ignore.mean())
    return np.where(
        counted_best > ignored_best, 1.0, np.where(ignored_best > counted_best, 0.0, tie)
    )


def _precision_recall(true_positive: np.ndarray, false_positive: np.ndarray, num_positives: int):
    tp = np.cumsum(true_positive, dtype=np.float64)
    fp = np.cumsum(false_positive, dtype=np.float64)
    recall = tp / num_positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision


def _interpolated_ap(recall: np.ndarray, precision: np.ndarray, mode: Interpolation) -> float:
    """AP from a precision-recall curve (detections in score order)."""
    if mode == "all":
        # VOC2010+ / ImageNet-VID devkit: sentinels, monotone envelope, sum over recall steps
        r = np.concatenate(([0.0], recall, [1.0]))
        p = np.concatenate(([0.0], precision, [0.0]))
        p = np.maximum.accumulate(p[::-1])[::-1]
        steps = np.flatnonzero(r[1:] != r[:-1])
        return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
    # COCO: envelope read at the first detection reaching each recall threshold, 0 past the end
    p = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    at = np.searchsorted(recall, COCO_RECALLS, side="left")
    reached = at < len(p)
    q = np.zeros(len(COCO_RECALLS))
    q[reached] = p[at[reached]]
    return float(q.mean())


def average_precision(
    detections: Sequence[Detections],
    ground_truth: Sequence[FrameBoxes],
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
    interpolation: Interpolation = "all",
    vid_threshold: bool = False,
    subset: Sequence[np.ndarray] | None = None,
    protocol: Protocol = "voc",
    progress: bool = False,
) -> APResult:
    """Per-class average precision over frames (VOC / ImageNet-VID protocol, module docstring).

    Args:
        detections: one :class:`Detections` per frame.
        ground_truth: the frames' objects, parallel to ``detections``; objects flagged
            ``"ignore"`` are VOC's difficult ones.
        num_classes: the dataset's class count (class indices are ``0..num_classes - 1``).
        iou_threshold: the IoU a detection needs with a ground-truth box to match it.
        interpolation: ``"all"`` (VOC2010+ all-point AP) or ``"coco101"`` (COCO's 101 points).
        vid_threshold: lower the threshold of small objects as the ImageNet-VID devkit does,
            ``min(iou_threshold, w h / ((w + 10) (h + 10)))``.
        subset: per frame, a boolean mask over its objects: evaluate on those only (the others
            become ignored, so detecting them is neither right nor wrong).
        protocol: ``"voc"`` (the rules above) or ``"fgfa"``: FGFA's ``vid_eval_motion``, to
            compare speed buckets with published ImageNet-VID numbers (FGFA, TSM Table 7): a
            detection takes the best free object of its class, ignored or not, and an
            unmatched one is a false positive only as far as it overlaps counted objects
            (see ``_fgfa_weights``). Without ignored objects both give the same AP.
        progress: show a progress bar over the frames.

    Returns:
        :class:`APResult`.
    """
    if interpolation not in ("all", "coco101"):
        raise MetricsError(f"interpolation {interpolation!r}: use 'all' or 'coco101'")
    if protocol not in ("voc", "fgfa"):
        raise MetricsError(f"protocol {protocol!r}: use 'voc' or 'fgfa'")
    if len(detections) != len(ground_truth):
        raise MetricsError(
            f"{len(detections)} frames of detections for {len(ground_truth)} annotated frames: "
            "give one Detections per annotated frame, in the same order"
        )
    if subset is not None and len(subset) != len(ground_truth):
        raise MetricsError(f"subset has {len(subset)} frames, the ground truth {len(ground_truth)}")
    ignores = [_ignored(gt, subset, t) for t, gt in enumerate(ground_truth)]
    total = sum(len(i) for i in ignores)
    # FGFA: an unmatched detection in a frame without objects weighs the counted fraction
    empty_weight = 1.0 - sum(int(i.sum()) for i in ignores) / total if total else 1.0
    scores, labels, true_positive, false_positive = [], [], [], []
    num_positives = np.zeros(num_classes, dtype=np.int64)
    frames = zip(detections, ground_truth, ignores, strict=True)
    bar = tqdm(frames, total=len(ground_truth), desc="AP", unit="frame", leave=False,
               disable=None if progress else True)  # fmt: skip
    for t, (det, gt, ignore) in enumerate(bar):
        _check_labels(det.labels, num_classes, "detection", t)
        _check_labels(gt.labels, num_classes, "ground-truth", t)
        thresholds = _gt_thresholds(gt.boxes, iou_threshold, vid_threshold)
        tp, fp = _match_frame(
            det, gt, ignore, thresholds, protocol=protocol, empty_weight=empty_weight
        )
        num_positives += np.bincount(gt.labels[~ignore], minlength=num_classes)
        keep = tp | (fp > 0)  # ignored detections leave the curve (no step in recall)
        scores.append(det.scores[keep])
        labels.append(det.labels[keep])
        true_positive.append(tp[keep])
        false_positive.append(fp[keep])
    return _per_class_ap(
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        np.concatenate(true_positive) if true_positive else np.zeros(0, bool),
        np.concatenate(false_positive) if false_positive else np.zeros(0),
        num_positives,
        interpolation,
    )


def _ignored(gt: FrameBoxes, subset: Sequence[np.ndarray] | None, t: int) -> np.ndarray:
    """The objects of frame ``t`` left out: flagged ``ignore``, or outside the subset."""
    ignore = gt.flag(IGNORE)
    if subset is None:
        return ignore
    mask = np.asarray(subset[t], dtype=bool)
    if mask.shape != ignore.shape:
        raise MetricsError(
            f"frame {t}: the subset mask has shape {mask.shape} for {len(gt)} objects: "
            "one boolean per object"
        )
    return ignore | ~mask


def _per_class_ap(
    scores: np.ndarray,
    labels: np.ndarray,
    true_positive: np.ndarray,
    false_positive: np.ndarray,
    num_positives: np.ndarray,
    interpolation: Interpolation,
) -> APResult:
    order = np.argsort(-scores, kind="stable")  # ties keep the frame order, as COCO's mergesort
    labels, true_positive, false_positive = (
        labels[order],
        true_positive[order],
        false_positive[order],
    )
    per_class = np.full(len(num_positives), np.nan)
    for c in np.flatnonzero(num_positives):
        mine = labels == c
        curve = _precision_recall(true_positive[mine], false_positive[mine], int(num_positives[c]))
        per_class[c] = _interpolated_ap(*curve, interpolation)
    present = ~np.isnan(per_class)
    return APResult(
        per_class=per_class,
        mean=float(per_class[present].mean()) if present.any() else float("nan"),
        num_positives=num_positives,
        num_detections=np.bincount(labels, minlength=len(num_positives)),
    )


def motion_iou(video_annotations: Sequence[FrameBoxes], *, window: int = 10) -> list[np.ndarray]:
    """FGFA's motion IoU of every object of one video.

    Args:
        video_annotations: the video's frames in order.
        window: frames each side (FGFA: 10).

    Returns:
        Per frame, a float64 array with one value per object: the mean IoU of its box with its
        own boxes (same track id) in the other frames of ``t - window .. t + window`` where the
        track appears. NaN for an object without a track id (``-1``) or alone in its window: its
        speed is unknown, so it is in no speed bucket (it still counts in the overall AP).
    """
    sums = [np.zeros(len(f)) for f in video_annotations]
    pairs = [np.zeros(len(f)) for f in video_annotations]
    for frames, objects, boxes in _tracks(video_annotations):
        total, count = np.zeros(len(frames)), np.zeros(len(frames))
        for step in range(1, window + 1):
            later = np.searchsorted(frames, frames + step)
            ok = later < len(frames)
            ok[ok] = frames[later[ok]] == frames[ok] + step
            a, b = np.flatnonzero(ok), later[ok]
            iou = paired_box_iou(boxes[a], boxes[b])
            for idx in (a, b):  # the pair counts for both ends
                np.add.at(total, idx, iou)
                np.add.at(count, idx, 1)
        for t, i, s, n in zip(frames, objects, total, count, strict=True):
            sums[t][i], pairs[t][i] = s, n
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.where(n > 0, s / n, np.nan) for s, n in zip(sums, pairs, strict=True)]


def _tracks(video: Sequence[FrameBoxes]):
    """``(frames, object indices, boxes)`` of each track, frames increasing, one box a frame."""
    members: dict[int, list[tuple[int, int]]] = {}
    for t, frame in enumerate(video):
        for i, track in enumerate(frame.track_ids):
            if track >= 0:
                members.setdefault(int(track), []).append((t, i))
    for track, found in members.items():
        frames = np.array([t for t, _ in found])
        first = np.flatnonzero(np.diff(frames, prepend=-1) > 0)
        if len(first) < len(found):
            _logger.warning(
                "track id %d appears more than once in a frame; motion IoU uses its first box "
                "there (a track id should name one object per frame)",
                track,
            )
        found = [found[k] for k in first]
        boxes = np.stack([video[t].boxes[i] for t, i in found]).astype(np.float64)
        yield frames[first], np.array([i for _, i in found]), boxes


def motion_buckets(motion_ious: Sequence[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """FGFA's speed buckets as subsets: ``{"slow" | "medium" | "fast": per-frame masks}``.

    Slow ``> 0.9``, medium ``0.7 <= m <= 0.9``, fast ``< 0.7`` (FGFA's ranges share their
    end points; here each object is in one bucket). NaN (unknown speed) is in none.
    """
    with np.errstate(invalid="ignore"):
        return {
            "slow": [m > SLOW_ABOVE for m in motion_ious],
            "medium": [(m >= FAST_BELOW) & (m <= SLOW_ABOVE) for m in motion_ious],
            "fast": [m < FAST_BELOW for m in motion_ious],
        }


def _flag_subsets(frames: Sequence[FrameBoxes], flags: Sequence[str]) -> dict[str, list]:
    """``{flag: masks}`` for each flag the data carries, plus ``"clean"`` (none of them)."""
    present = [f for f in flags if any(f in frame.flags for frame in frames)]
    if not present:
        return {}
    subsets = {f: [frame.flag(f) for frame in frames] for f in present}
    subsets["clean"] = [
        ~np.any([frame.flag(f) for f in present], axis=0).astype(bool) for frame in frames
    ]
    return subsets


def _motion_subsets(annotations: DetectionAnnotations, window: int) -> dict[str, list]:
    """Speed buckets over all videos, or ``{}`` when the data has no track ids."""
    if not any((f.track_ids >= 0).any() for f in annotations.frames()):
        return {}
    ious = [m for v in annotations.videos for m in motion_iou(v.annotations, window=window)]
    return {**motion_buckets(ious), "unknown_motion": [np.isnan(m) for m in ious]}


def _frame_detections(
    detections_per_video: Sequence[Sequence[Detections]], annotations: DetectionAnnotations
) -> list[Detections]:
    if len(detections_per_video) != len(annotations.videos):
        raise MetricsError(
            f"detections for {len(detections_per_video)} videos, {len(annotations.videos)} "
            f"videos in {annotations.source or 'the annotations'}: one list per video, in order"
        )
    for dets, video in zip(detections_per_video, annotations.videos, strict=True):
        if len(dets) != video.num_frames:
            raise MetricsError(
                f"video {video.video_id}: {len(dets)} frames of detections for "
                f"{video.num_frames} annotated frames; run the detector on every frame"
            )
    return [d for dets in detections_per_video for d in dets]


def detection_report(
    detections_per_video: Sequence[Sequence[Detections]],
    annotations: DetectionAnnotations,
    *,
    iou_threshold: float = 0.5,
    flags: Sequence[str] = ("degraded",),
    interpolation: Interpolation = "all",
    vid_threshold: bool = False,
    protocol: Protocol = "voc",
    motion_window: int = 10,
    progress: bool = False,
) -> dict:
    """AP of a detector on a dataset split, overall and on each subset of the ground truth.

    Args:
        detections_per_video: per video of ``annotations``, one :class:`Detections` per frame.
        annotations: the split's classes and videos.
        iou_threshold: the matching IoU; names the keys (``0.5`` -> ``ap50``).
        flags: per-object flags that make subsets when the data carries them: ``ap50_<flag>``
            (the flagged objects) and ``ap50_clean`` (objects with none of them).
        interpolation, vid_threshold, protocol: as :func:`average_precision`.
        motion_window: frames each side for the motion IoU (FGFA: 10).
        progress: a progress bar per evaluation.

    Returns:
        A JSON-ready dict (NaN stays a float: ``engine.metrics.json_dumps`` writes null):
        ``ap50`` (mAP, all objects), ``per_class`` ``{class name: AP}``, ``ap50_slow`` /
        ``ap50_medium`` / ``ap50_fast`` when the data has track ids, ``ap50_<flag>`` and
        ``ap50_clean`` for the flags present, ``num_objects`` ``{"all" | subset: count}``
        (counted objects; ``unknown_motion``: objects with no speed), ``num_frames``,
        ``iou_threshold``.
    """
    frames = annotations.frames()
    detections = _frame_detections(detections_per_video, annotations)
    key = f"ap{round(iou_threshold * 100)}"
    subsets: dict[str, list | None] = {"all": None}
    subsets.update(_motion_subsets(annotations, motion_window))
    subsets.update(_flag_subsets(frames, flags))
    report: dict = {}
    for name, masks in subsets.items():
        if name == "unknown_motion":
            continue  # a count, not a bucket
        result = average_precision(
            detections,
            frames,
            num_classes=len(annotations.classes),
            iou_threshold=iou_threshold,
            interpolation=interpolation,
            vid_threshold=vid_threshold,
            subset=masks,
            protocol=protocol,
            progress=progress,
        )
        report[key if name == "all" else f"{key}_{name}"] = result.mean
        if name == "all":
            report["per_class"] = _per_class(annotations.classes, result.per_class)
    num_objects = {name: _count(frames, masks) for name, masks in subsets.items()}
    report["num_objects"] = num_objects
    report["num_frames"] = len(frames)
    report["iou_threshold"] = float(iou_threshold)
    return report


def _count(frames: Sequence[FrameBoxes], masks: Sequence[np.ndarray] | None) -> int:
    """Counted (not ignored) objects in a subset (``None``: all)."""
    counted = [~f.flag(IGNORE) for f in frames]
    if masks is not None:
        counted = [c & m for c, m in zip(counted, masks, strict=True)]
    return int(sum(c.sum() for c in counted))


def _per_class(classes: Sequence[str], ap: np.ndarray) -> Mapping[str, float]:
    return {name: float(value) for name, value in zip(classes, ap, strict=True)}
