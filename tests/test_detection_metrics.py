"""Boxes (IoU, NMS) and detection metrics (AP, subsets, motion speed, the report)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from timeshift.detection.boxes import (
    batched_nms,
    box_iou,
    clip_boxes,
    nms,
    paired_box_iou,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from timeshift.detection.metrics import (
    MetricsError,
    average_precision,
    detection_report,
    motion_buckets,
    motion_iou,
)
from timeshift.detection.structures import (
    DetectionAnnotations,
    Detections,
    FrameBoxes,
    VideoRecord,
)
from timeshift.engine.metrics import json_dumps

# ----------------------------------------------------------------------------- helpers


def _random_boxes(rng: np.random.Generator, n: int, size: float = 100.0) -> np.ndarray:
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(2, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def _iou_one(a, b) -> float:
    """IoU of two boxes, written out scalar by scalar (the brute-force reference)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_brute(boxes, scores, threshold) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(_iou_one(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


def _random_case(rng: np.random.Generator, frames: int, classes: int, ignore: bool = False):
    """Frames of ground truth and detections: jittered copies of the objects (some with the
    wrong class, some duplicated, scored higher) and boxes of nothing."""
    gts, dets = [], []
    for _ in range(frames):
        n = int(rng.integers(0, 6))
        boxes = _random_boxes(rng, n)
        labels = rng.integers(0, classes, n)
        flags = {"ignore": rng.random(n) < 0.2} if ignore else {}
        gts.append(FrameBoxes(boxes, labels, flags=flags))
        copies = np.repeat(np.arange(n), rng.integers(0, 3, n))
        jitter = boxes[copies] + rng.normal(0, 4, (len(copies), 4))
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        det_labels = np.where(
            rng.random(len(copies)) < 0.8, labels[copies], rng.integers(0, classes)
        )
        extra = int(rng.integers(0, 4))
        dets.append(
            Detections(
                np.concatenate([jitter, _random_boxes(rng, extra)]),
                # copies of objects tend to score higher than boxes of nothing
                np.concatenate([rng.uniform(0.3, 1, len(copies)), rng.uniform(0, 0.7, extra)]),
                np.concatenate([det_labels, rng.integers(0, classes, extra)]),
            )
        )
    return dets, gts


def _coco_ap(dets, gts, classes: int) -> np.ndarray:
    """Per-class AP at IoU 0.5 from pycocotools (101 points, area "all", no detection cap);
    -1 where a class has no ground truth, as COCOeval writes it."""
    images = [{"id": t + 1} for t in range(len(gts))]
    annotations = []
    for t, gt in enumerate(gts):
        for box, label in zip(xyxy_to_xywh(gt.boxes.astype(np.float64)), gt.labels, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": t + 1,
                    "category_id": int(label) + 1,
                    "bbox": box.tolist(),
                    "area": float(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    results = [
        {"image_id": t + 1, "category_id": int(c) + 1, "bbox": b.tolist(), "score": float(s)}
        for t, det in enumerate(dets)
        for b, s, c in zip(
            xyxy_to_xywh(det.boxes.astype(np.float64)), det.scores, det.labels, strict=True
        )
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1} for c in range(classes)],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluation.params.iouThrs = np.array([0.5])
        evaluation.params.maxDets = [10_000]
        evaluation.params.areaRng = [[0, 1e10]]
        evaluation.params.areaRngLbl = ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, 0]  # (recall thresholds, classes)
    return np.where((precision == -1).all(axis=0), -1.0, precision.mean(axis=0))


def _box(x: float, y: float = 0.0, w: float = 10.0, h: float = 10.0) -> list[float]:
    return [x, y, x + w, y + h]


# ----------------------------------------------------------------------------- boxes


def test_box_iou_matches_brute_force_and_numpy_matches_torch():
    rng = np.random.default_rng(0)
    a, b = _random_boxes(rng, 7), _random_boxes(rng, 5)
    b[0] = a[0]  # one identical pair: IoU 1
    a[1, 2:] = a[1, :2]  # a zero-area box
    expected = np.array([[_iou_one(x, y) for y in b] for x in a])
    ours = box_iou(a, b)
    assert isinstance(ours, np.ndarray)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    assert ours[0, 0] == pytest.approx(1.0)
    assert (ours[1] == 0).all()
    torch.testing.assert_close(box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), ours)
    np.testing.assert_allclose(paired_box_iou(a[:5], b), np.diag(expected[:5]), atol=1e-12)


def test_box_iou_of_zero_area_boxes_is_zero_not_nan():
    point = np.array([[3.0, 3.0, 3.0, 3.0]])
    line = np.array([[0.0, 3.0, 5.0, 3.0]])
    assert box_iou(point, point)[0, 0] == 0.0
    assert box_iou(line, point)[0, 0] == 0.0
    assert box_iou(np.zeros((0, 4)), point).shape == (0, 1)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(threshold):
    rng = np.random.default_rng(1)
    for _ in range(5):
        boxes = _random_boxes(rng, 40, size=60)
        scores = rng.random(40)
        expected = _nms_brute(boxes.tolist(), scores.tolist(), threshold)
        assert nms(boxes, scores, threshold).tolist() == expected
        kept = nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(), threshold)
        assert kept.dtype == torch.int64
        assert kept.tolist() == expected


def test_nms_ties_keep_the_earlier_box_and_empty_input():
    boxes = np.array([_box(0), _box(1), _box(50)], dtype=np.float64)
    assert nms(boxes, np.array([0.5, 0.5, 0.9]), 0.5).tolist() == [2, 0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    # suppression needs IoU > threshold (torchvision): IoU exactly 1/2 keeps both at 0.5
    half = np.array([_box(0), _box(0, h=5)])
    assert nms(half, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(half, np.array([0.9, 0.8]), 0.49).tolist() == [0]


def test_batched_nms_is_nms_within_each_class():
    rng = np.random.default_rng(2)
    boxes = _random_boxes(rng, 60, size=40)
    scores = rng.random(60)
    labels = rng.integers(0, 3, 60)
    expected = []
    for c in range(3):
        members = np.flatnonzero(labels == c)
        kept = _nms_brute(boxes[members].tolist(), scores[members].tolist(), 0.5)
        expected.extend(members[kept].tolist())
    expected.sort(key=lambda i: -scores[i])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == expected


def test_clip_and_format_conversion():
    boxes = np.array([[-5.0, 2.0, 30.0, 50.0], [10.0, -1.0, 12.0, 3.0]])
    clipped = clip_boxes(boxes, (40, 20))  # height 40, width 20
    np.testing.assert_array_equal(clipped, [[0, 2, 20, 40], [10, 0, 12, 3]])
    xywh = xyxy_to_xywh(boxes)
    np.testing.assert_array_equal(xywh, [[-5, 2, 35, 48], [10, -1, 2, 4]])
    np.testing.assert_array_equal(xywh_to_xyxy(xywh), boxes)
    torch.testing.assert_close(
        clip_boxes(torch.from_numpy(boxes), (40, 20)), torch.from_numpy(clipped)
    )


# ----------------------------------------------------------------------------- AP by hand

# One class, two frames, one object in each (A in frame 0, B in frame 1), three detections:
#   d1 score 0.9 on A          -> TP   precision 1/1, recall 1/2
#   d2 score 0.8 in frame 0    -> FP   precision 1/2, recall 1/2
#   d3 score 0.7 on B          -> TP   precision 2/3, recall 2/2
# Envelope: precision 1 up to recall 1/2, 2/3 up to recall 1.
# All-point AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
# 101-point AP: recall thresholds 0.00..0.50 (51 of them) read 1, 0.51..1.00 (50) read 2/3:
#   (51 * 1 + 50 * 2/3) / 101.
HAND_ALL = 1 / 2 + 1 / 2 * 2 / 3
HAND_101 = (51 + 50 * 2 / 3) / 101


def _hand_case(d2_box: list[float]):
    gts = [FrameBoxes([_box(0)], [0]), FrameBoxes([_box(100)], [0])]
    dets = [
        Detections([_box(0), d2_box], [0.9, 0.8], [0, 0]),
        Detections([_box(101)], [0.7], [0]),  # IoU 9/11 with B
    ]
    return dets, gts


@pytest.mark.parametrize(
    "d2_box",
    [_box(50), _box(1)],  # a detection of nothing; a duplicate of A (IoU 9/11): both FP
    ids=["background", "duplicate"],
)
def test_hand_made_ap_all_point_and_101_point(d2_box):
    dets, gts = _hand_case(d2_box)
    result = average_precision(dets, gts, num_classes=1)
    assert result.per_class[0] == pytest.approx(HAND_ALL)
    assert result.mean == pytest.approx(HAND_ALL)
    assert result.num_positives.tolist() == [2]
    assert result.num_detections.tolist() == [3]
    coco = average_precision(dets, gts, num_classes=1, interpolation="coco101")
    assert coco.mean == pytest.approx(HAND_101)
    assert _coco_ap(dets, gts, 1)[0] == pytest.approx(HAND_101)


def test_ignored_objects_are_neither_hits_nor_misses():
    dets, gts = _hand_case(_box(50))
    # frame 1 gains an ignored object C (VOC "difficult") and two detections of it, one
    # scored above everything: neither counts, so the curve (and AP) stays as by hand
    gts[1] = FrameBoxes([_box(100), _box(200)], [0, 0], flags={"ignore": [False, True]})
    dets[1] = Detections([_box(101), _box(200), _box(201)], [0.7, 0.95, 0.1], [0, 0, 0])
    result = average_precision(dets, gts, num_classes=1)
    assert result.per_class[0] == pytest.approx(HAND_ALL)
    assert result.num_positives.tolist() == [2]
    assert result.num_detections.tolist() == [3]
    # missing the ignored object costs nothing either
    dets[1] = Detections([_box(101)], [0.7], [0])
    assert average_precision(dets, gts, num_classes=1).mean == pytest.approx(HAND_ALL)


def test_a_detection_takes_the_free_object_it_overlaps_most():
    # d1 overlaps A (IoU 8/12) and B (9/11): it takes B, leaving A to d2 (IoU 8/12 with A,
    # 5/15 with B); taking the first candidate (A) instead would make d2 a false positive
    gts = [FrameBoxes([_box(0), _box(3)], [0, 0])]
    dets = [Detections([_box(2), _box(-2)], [0.9, 0.8], [0, 0])]
    assert average_precision(dets, gts, num_classes=1).mean == pytest.approx(1.0)


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    dets, gts = _hand_case(_box(50))
    dets[0] = Detections([_box(0), _box(50), _box(7)], [0.9, 0.8, 0.99], [0, 0, 2])
    result = average_precision(dets, gts, num_classes=3)
    assert math.isnan(result.per_class[1]) and math.isnan(result.per_class[2])
    assert result.mean == pytest.approx(HAND_ALL)
    # a class with objects and no detection: AP 0, in the mean
    gts[0] = FrameBoxes([_box(0), _box(300)], [0, 1])
    result = average_precision(dets, gts, num_classes=3)
    assert result.per_class[1] == 0.0
    assert result.mean == pytest.approx(HAND_ALL / 2)


def test_wrong_class_and_low_iou_are_false_positives():
    gts = [FrameBoxes([_box(0)], [0])]
    dets = [Detections([_box(0), _box(4)], [0.9, 0.95], [1, 0])]  # IoU(_box(4), A) = 6/14
    result = average_precision(dets, gts, num_classes=2)
    # class 0: an FP (score 0.95) then nothing: AP 0; class 1 has no object
    assert result.per_class[0] == 0.0
    assert math.isnan(result.per_class[1])
    assert average_precision(dets, gts, num_classes=2, iou_threshold=0.4).mean == 1.0


def test_vid_threshold_lowers_the_bar_for_small_objects():
    # a 10x10 object needs min(0.5, 100 / (20 * 20)) = 0.25 under the ImageNet-VID devkit;
    # the detection, shifted 4 px, has IoU 6/14 = 0.43
    gts = [FrameBoxes([_box(0)], [0]), FrameBoxes([_box(0, w=100, h=100)], [0])]
    dets = [Detections([_box(4)], [0.9], [0]), Detections([_box(40, w=100, h=100)], [0.8], [0])]
    # the big object (threshold 100^2 / 110^2 = 0.83 > 0.5: stays 0.5) with IoU 60/140: missed
    assert average_precision(dets, gts, num_classes=1).mean == 0.0
    assert average_precision(dets, gts, num_classes=1, vid_threshold=True).mean == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ap_matches_pycocotools_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    dets, gts = _random_case(rng, frames=40, classes=5)
    ours = average_precision(dets, gts, num_classes=5, interpolation="coco101").per_class
    coco = _coco_ap(dets, gts, 5)
    np.testing.assert_allclose(np.nan_to_num(ours, nan=-1.0), coco, rtol=0, atol=1e-9)
    assert (coco >= 0).sum() >= 4  # the cases do exercise the classes


def _by_score(det: Detections) -> list[int]:
    return sorted(range(len(det)), key=lambda j: -det.scores[j])


def _voc_rows(det, gt, ignore, threshold) -> list[tuple]:
    """``(score, label, tp, fp)`` of the counted detections of a frame, one at a time: the
    devkit's loop with this project's ignore rule (counted objects first, ignored absorb)."""
    rows, taken = [], [False] * len(gt)
    for j in _by_score(det):
        best, k_best, on_ignored = -1.0, -1, False
        for k in range(len(gt)):
            ov = _iou_one(det.boxes[j], gt.boxes[k])
            if gt.labels[k] != det.labels[j] or ov < threshold:
                continue
            if ignore[k]:
                on_ignored = True
            elif not taken[k] and ov > best:
                best, k_best = ov, k
        if k_best >= 0:
            taken[k_best] = True
        if k_best >= 0 or not on_ignored:
            rows.append((det.scores[j], det.labels[j], k_best >= 0, float(k_best < 0)))
    return rows


def _fgfa_rows(det, gt, ignore, threshold, empty_weight) -> list[tuple]:
    """The same from FGFA's ``vid_eval_motion`` loop (best free object of the class, ignored
    or not; unmatched detections weighed by what they overlap most)."""
    rows, taken = [], [False] * len(gt)
    for j in _by_score(det):
        overlaps = [_iou_one(det.boxes[j], box) for box in gt.boxes]
        best, k_best = -1.0, -1
        for k, ov in enumerate(overlaps):
            if ov >= threshold and ov > best and not taken[k] and gt.labels[k] == det.labels[j]:
                best, k_best = ov, k
        if k_best >= 0:
            taken[k_best] = True
            rows.append((det.scores[j], det.labels[j], not ignore[k_best], 0.0))
            continue
        on_ignored = max([ov for ov, ig in zip(overlaps, ignore, strict=True) if ig], default=-1)
        on_counted = max(
            [ov for ov, ig in zip(overlaps, ignore, strict=True) if not ig], default=-1
        )
        if on_counted > on_ignored:
            weight = 1.0
        elif on_ignored > on_counted:
            weight = 0.0
        else:
            weight = empty_weight if len(gt) == 0 else sum(ignore) / len(gt)
        rows.append((det.scores[j], det.labels[j], False, weight))
    return rows


def _devkit_ap(dets, gts, num_classes, threshold, *, fgfa=False):
    """All-point AP the long way (per frame, per detection, per object, then the devkit's
    ladder): the reference for random cases."""
    rows, npos = [], np.zeros(num_classes)
    ignores = [gt.flag("ignore") for gt in gts]
    counted = sum(int((~i).sum()) for i in ignores) / max(1, sum(len(i) for i in ignores))
    for det, gt, ignore in zip(dets, gts, ignores, strict=True):
        for label, ig in zip(gt.labels, ignore, strict=True):
            npos[label] += not ig
        if fgfa:
            rows += _fgfa_rows(det, gt, ignore, threshold, counted)
        else:
            rows += _voc_rows(det, gt, ignore, threshold)
    rows.sort(key=lambda r: -r[0])
    aps = []
    for c in range(num_classes):
        if npos[c] == 0:
            continue
        tp = np.cumsum([r[2] for r in rows if r[1] == c])
        fp = np.cumsum([r[3] for r in rows if r[1] == c])
        rec = np.concatenate(([0.0], tp / npos[c], [1.0]))
        prec = np.concatenate(([0.0], tp / np.maximum(tp + fp, 1e-300), [0.0]))
        for i in range(len(prec) - 1, 0, -1):
            prec[i - 1] = max(prec[i - 1], prec[i])
        aps.append(sum((rec[i + 1] - rec[i]) * prec[i + 1] for i in range(len(rec) - 1)))
    return np.mean(aps)


@pytest.mark.parametrize("seed", [0, 1])
def test_all_point_ap_with_ignored_objects_matches_the_devkit_loops(seed):
    rng = np.random.default_rng(seed + 10)
    dets, gts = _random_case(rng, frames=30, classes=3, ignore=True)
    expected = _devkit_ap(dets, gts, 3, 0.5)
    assert average_precision(dets, gts, num_classes=3).mean == pytest.approx(expected, abs=1e-12)
    expected = _devkit_ap(dets, gts, 3, 0.5, fgfa=True)
    ours = average_precision(dets, gts, num_classes=3, protocol="fgfa").mean
    assert ours == pytest.approx(expected, abs=1e-12)


def test_fgfa_protocol_by_hand():
    # frame 0: A counted, C and D ignored (say, other speed buckets); frame 1: no object.
    #   d2 0.8, overlaps nothing           -> FGFA: ignored fraction of frame 0 = 2/3 FP
    #   d3 0.7, IoU 6/14 with C only       -> FGFA: 0 (it is C's business); VOC: 1 FP
    #   d4 0.6 in the empty frame          -> FGFA: counted fraction overall = 1/3 FP
    #   d1 0.5 on A                        -> TP
    # FGFA: precision at recall 1 = 1 / (1 + 2/3 + 1/3) = 1/2; VOC: 1 / (1 + 3) = 1/4
    gts = [
        FrameBoxes([_box(0), _box(100), _box(200)], [0, 0, 0], flags={"ignore": [0, 1, 1]}),
        FrameBoxes(),
    ]
    dets = [
        Detections([_box(0), _box(300), _box(104)], [0.5, 0.8, 0.7], [0, 0, 0]),
        Detections([_box(0)], [0.6], [0]),
    ]
    assert average_precision(dets, gts, num_classes=1, protocol="fgfa").mean == pytest.approx(0.5)
    assert average_precision(dets, gts, num_classes=1).mean == pytest.approx(0.25)


def test_fgfa_protocol_takes_the_best_object_ignored_or_not():
    # the detection overlaps the ignored A (IoU 1) more than the counted B (9/11): FGFA lets A
    # take it, so B is missed; the default takes B
    gts = [FrameBoxes([_box(0), _box(1)], [0, 0], flags={"ignore": [True, False]})]
    dets = [Detections([_box(0)], [0.9], [0])]
    assert average_precision(dets, gts, num_classes=1, protocol="fgfa").mean == 0.0
    assert average_precision(dets, gts, num_classes=1).mean == 1.0


def test_fgfa_protocol_equals_voc_without_ignored_objects():
    rng = np.random.default_rng(8)
    dets, gts = _random_case(rng, frames=30, classes=3)
    for interpolation in ("all", "coco101"):
        voc = average_precision(dets, gts, num_classes=3, interpolation=interpolation)
        fgfa = average_precision(
            dets, gts, num_classes=3, interpolation=interpolation, protocol="fgfa"
        )
        np.testing.assert_array_equal(voc.per_class, fgfa.per_class)


# ----------------------------------------------------------------------------- subsets


def test_subset_equals_flagging_the_others_ignore():
    rng = np.random.default_rng(5)
    dets, gts = _random_case(rng, frames=30, classes=3)
    masks = [rng.random(len(g)) < 0.5 for g in gts]
    flagged = [
        FrameBoxes(g.boxes, g.labels, flags={"ignore": ~m}) for g, m in zip(gts, masks, strict=True)
    ]
    a = average_precision(dets, gts, num_classes=3, subset=masks)
    b = average_precision(dets, flagged, num_classes=3)
    np.testing.assert_array_equal(a.per_class, b.per_class)
    assert a.num_positives.sum() == sum(m.sum() for m in masks)
    full = average_precision(dets, gts, num_classes=3)
    assert not np.allclose(a.per_class, full.per_class, equal_nan=True)


def test_subset_by_hand():
    dets, gts = _hand_case(_box(50))
    # only B counts: d1 (on A) is ignored, d2 an FP, d3 a TP -> precision 0, 1/2 at recall 1
    masks = [np.array([False]), np.array([True])]
    result = average_precision(dets, gts, num_classes=1, subset=masks)
    assert result.mean == pytest.approx(0.5)
    assert result.num_detections.tolist() == [2]


# ----------------------------------------------------------------------------- motion speed


def _moving_video(frames: int, speed: float, track: int = 7) -> list[FrameBoxes]:
    """One 10x10 object moving ``speed`` px right per frame."""
    return [FrameBoxes([_box(speed * t)], [0], [track]) for t in range(frames)]


def test_motion_iou_of_a_box_moving_a_known_amount():
    video = _moving_video(25, 1.0)

    def shifted(d: int) -> float:  # IoU of a 10-px box with itself moved d px
        return max(0, 10 - d) / (10 + min(d, 10))

    ious = motion_iou(video, window=10)
    middle = np.mean([shifted(abs(d)) for d in range(-10, 11) if d])
    assert ious[12][0] == pytest.approx(middle)
    first = np.mean([shifted(d) for d in range(1, 11)])
    assert ious[0][0] == pytest.approx(first)
    last_but_two = np.mean([shifted(d) for d in [*range(1, 11), 1, 2]])
    assert ious[22][0] == pytest.approx(last_but_two)
    assert motion_iou(video, window=1)[5][0] == pytest.approx(9 / 11)


def test_motion_iou_gaps_unknown_tracks_and_lone_objects():
    video = _moving_video(5, 2.0)
    video[1] = FrameBoxes()  # the track is not annotated in frame 1
    video[2] = FrameBoxes([_box(4), _box(300), _box(500)], [0, 0, 0], [7, -1, 9])
    ious = motion_iou(video, window=1)
    assert len(ious[1]) == 0
    assert np.isnan(ious[0][0])  # frame 1 missing: nothing within one frame
    assert ious[2][0] == pytest.approx(8 / 12)  # only frame 3 (moved 2 px)
    assert np.isnan(ious[2][1]) and np.isnan(ious[2][2])  # no track id; alone in its track


def test_motion_buckets():
    m = np.array([0.95, 0.9, 0.8, 0.7, 0.5, np.nan])
    buckets = motion_buckets([m, np.zeros(0)])
    assert buckets["slow"][0].tolist() == [True, False, False, False, False, False]
    assert buckets["medium"][0].tolist() == [False, True, True, True, False, False]
    assert buckets["fast"][0].tolist() == [False, False, False, False, True, False]
    assert all(len(b[1]) == 0 for b in buckets.values())


# ----------------------------------------------------------------------------- report


def _dataset(rng: np.random.Generator):
    """Two videos, two classes: a slow and a fast object each, some frames degraded."""
    videos, detections = [], []
    for v in range(2):
        frames, dets = [], []
        for t in range(12):
            boxes = np.array([_box(2 + 0.2 * t, 10, 30, 30), _box(8 * t, 60, 20, 20)])
            degraded = np.array([t % 3 == 0, t % 4 == 0])
            frames.append(FrameBoxes(boxes, [v, 1 - v], [0, 1], {"degraded": degraded}))
            jitter = boxes + rng.normal(0, 3, boxes.shape)
            labels = np.where(degraded, 1 - np.array([v, 1 - v]), [v, 1 - v])  # wrong if degraded
            dets.append(Detections(np.concatenate([jitter, _random_boxes(rng, 1)]),
                                   rng.random(3), np.concatenate([labels, [0]])))  # fmt: skip
        videos.append(VideoRecord(f"video{v}", [], frames, (120, 120)))
        detections.append(dets)
    return detections, DetectionAnnotations(["cat", "dog"], videos, source="memory")


def test_detection_report_fields_subsets_and_json():
    rng = np.random.default_rng(3)
    detections, annotations = _dataset(rng)
    report = detection_report(detections, annotations)
    frames = annotations.frames()
    flat = [d for video in detections for d in video]
    full = average_precision(flat, frames, num_classes=2)
    assert report["ap50"] == full.mean
    assert report["per_class"] == {"cat": full.per_class[0], "dog": full.per_class[1]}
    degraded = [f.flag("degraded") for f in frames]
    ap = average_precision(flat, frames, num_classes=2, subset=degraded).mean
    assert report["ap50_degraded"] == ap
    clean = average_precision(flat, frames, num_classes=2, subset=[~m for m in degraded]).mean
    assert report["ap50_clean"] == clean
    assert report["ap50_degraded"] < report["ap50_clean"]  # the degraded ones are mislabelled
    ious = [m for v in annotations.videos for m in motion_iou(v.annotations)]
    fast = [m < 0.7 for m in ious]
    assert report["ap50_fast"] == average_precision(flat, frames, num_classes=2, subset=fast).mean
    counts = report["num_objects"]
    assert counts["all"] == 48 == counts["slow"] + counts["fast"] + counts["medium"]
    assert counts["slow"] == 24 and counts["unknown_motion"] == 0
    assert counts["degraded"] + counts["clean"] == 48
    assert counts["degraded"] == sum(int(m.sum()) for m in degraded)
    assert report["num_frames"] == 24
    json.loads(json_dumps(report))


def test_detection_report_without_track_ids_or_flags():
    rng = np.random.default_rng(4)
    detections, annotations = _dataset(rng)
    for video in annotations.videos:
        video.annotations = [FrameBoxes(f.boxes, f.labels) for f in video.annotations]
    report = detection_report(detections, annotations, iou_threshold=0.75)
    assert "ap75" in report and "ap50" not in report
    assert not any(k.startswith("ap75_") for k in report)
    assert report["num_objects"] == {"all": 48}


def test_errors_name_what_is_wrong():
    rng = np.random.default_rng(6)
    detections, annotations = _dataset(rng)
    with pytest.raises(MetricsError, match=r"video video1: 11 frames of detections for 12"):
        detection_report([detections[0], detections[1][:-1]], annotations)
    with pytest.raises(MetricsError, match="1 videos"):
        detection_report(detections[:1], annotations)
    dets, gts = _hand_case(_box(50))
    with pytest.raises(MetricsError, match=r"frame 0: detection class index 0..0 outside"):
        average_precision(dets, gts, num_classes=0)
    with pytest.raises(MetricsError, match="2 annotated frames"):
        average_precision(dets[:1], gts, num_classes=1)
    with pytest.raises(MetricsError, match="interpolation"):
        average_precision(dets, gts, num_classes=1, interpolation="11point")
    with pytest.raises(MetricsError, match="protocol"):
        average_precision(dets, gts, num_classes=1, protocol="coco")
    with pytest.raises(MetricsError, match="subset has 1 frames"):
        average_precision(dets, gts, num_classes=1, subset=[np.array([True])])
    with pytest.raises(MetricsError, match=r"frame 1: the subset mask has shape \(2,\) for 1"):
        average_precision(dets, gts, num_classes=1, subset=[np.ones(1, bool), np.ones(2, bool)])
