"""Late fusion of per-video scores: two-stream RGB + flow (TSN, TSM Tables 2-3) and ensembles of
runs (TSM_En: 8 + 16 frames), directly after testing or later from saved score files.

Conventions (where they come from):

* TSN (Wang et al., ECCV 2016, Sec. 3.3 and ``tools/eval_scores.py``) fuses the streams'
  scores *before* softmax (raw class scores, ``normalization=False``) by a weighted sum with
  weights 1 (RGB) : 1.5 (flow). These are the defaults here (:data:`TSN_WEIGHTS`, ``"logits"``).
* The reference TSM ``test_models.py`` averages its checkpoints' outputs with equal weights
  (``--coeff`` defaults to 1 each), on logits unless ``--softmax`` is given.

A weighted *mean* is computed (weights divided by their sum): it ranks the classes as the
references' weighted sums do, and fused softmax scores stay probabilities.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath

import numpy as np
import torch

from timeshift.data.formats import VIDEO_EXTENSIONS, Annotations
from timeshift.engine.metrics import ClassificationReport, classification_report
from timeshift.errors import TimeshiftError

__all__ = [
    "FUSION_MODES",
    "SCORES_FILE",
    "TSN_WEIGHTS",
    "FusionError",
    "ScoreSet",
    "align_videos",
    "check_labels",
    "check_weights",
    "default_weights",
    "fuse_scores",
    "load_scores",
    "save_scores",
    "video_ids",
]

FUSION_MODES = ("logits", "softmax")
# TSN's stream weights: spatial 1, temporal 1.5 (TSN paper, Sec. 3.3)
TSN_WEIGHTS = {"rgb": 1.0, "flow": 1.5}
SCORES_FORMAT = 1
SCORES_FILE = "scores.npz"  # in a test's output folder


class FusionError(TimeshiftError, ValueError):
    """Score sets or lists that cannot be fused (other videos, labels, classes or weights)."""


@dataclass
class ScoreSet:
    """Per-video scores of one run (or of a fusion), in ``video_ids`` order.

    Attributes:
        video_ids: each video's id: its path below the list's root, video extension removed
            (:func:`video_ids`), so an RGB list and the flow list ``extract-flow`` wrote for it
            give the same ids.
        labels: ``(N,)`` class indices (``-1``: unknown).
        classes: class names; ``scores`` has one column per class.
        scores: ``(N, K)`` float scores.
        kind: ``"logits"`` (a model's output, or a weighted mean of logits) or
            ``"probabilities"`` (softmax scores, or their mean).
        modality: ``"rgb"``, ``"flow"``, or ``"fused"``.
        meta: where the scores come from (checkpoints, data, protocol, fusion).
    """

    video_ids: list[str]
    labels: torch.Tensor
    classes: list[str]
    scores: torch.Tensor
    kind: str = "logits"
    modality: str = "rgb"
    meta: dict = field(default_factory=dict)

    def probabilities(self) -> torch.Tensor:
        return self.scores.softmax(dim=1) if self.kind == "logits" else self.scores

    def report(self) -> ClassificationReport:
        """top-1, top-5, mean class accuracy, per class and confusion of these scores."""
        return classification_report(self.scores, self.labels, len(self.classes))


def video_ids(ann: Annotations) -> list[str]:
    """Each record's id: its path relative to the list's root as POSIX, without a video file
    extension (``x/v.mp4`` -> ``x/v``, the folder ``extract-flow`` writes its flow to)."""
    ids = []
    for record in ann.records:
        path = record.path
        if ann.root is not None:
            with contextlib.suppress(ValueError):  # another drive: keep the path as listed
                path = os.path.relpath(os.path.abspath(path), os.path.abspath(ann.root))
        pure = PurePath(path)
        if pure.suffix.lower() in VIDEO_EXTENSIONS:
            pure = pure.with_suffix("")
        ids.append(pure.as_posix())
    return ids


def _basenames(ids: Sequence[str]) -> list[str] | None:
    names = [PurePath(i).name for i in ids]
    return names if len(set(names)) == len(names) else None


def align_videos(
    reference: Sequence[str],
    other: Sequence[str],
    *,
    reference_name: str,
    other_name: str,
    reference_lines: Sequence[int | None] | None = None,
    other_lines: Sequence[int | None] | None = None,
) -> list[int]:
    """For each id of ``reference``, the index of the same video in ``other``.

    Ids are compared as given (paths below each list's root); when that fails and the last path
    components are unique in both, by those (an RGB list under ``frames/`` and a flow list
    under ``flow/`` with absolute paths). Both must name the same videos, each once.

    Raises:
        FusionError: naming the first video (and its line) missing from either side.
    """
    for a, b in ((reference, other), (_basenames(reference), _basenames(other))):
        if a is None or b is None or len(set(a)) != len(a) or len(set(b)) != len(b):
            continue  # a repeated name cannot be matched one to one
        where = {v: i for i, v in enumerate(b)}
        if all(v in where for v in a) and len(a) == len(b):
            return [where[v] for v in a]
    a = list(reference)
    b = list(other)
    _check_unique(a, reference_name, reference_lines)
    _check_unique(b, other_name, other_lines)
    names_b = set(b) | set(_basenames(b) or ())
    for i, v in enumerate(a):
        if v not in names_b and PurePath(v).name not in names_b:
            raise FusionError(
                f"{_where(reference_name, reference_lines, i)}: video {v!r} is not in "
                f"{other_name}; both must list the same videos (flow folders are named after the "
                "video's path without extension, as extract-flow writes them)"
            )
    names_a = set(a) | set(_basenames(a) or ())
    for i, v in enumerate(b):
        if v not in names_a and PurePath(v).name not in names_a:
            raise FusionError(
                f"{_where(other_name, other_lines, i)}: video {v!r} is not in {reference_name}; "
                "both must list the same videos"
            )
    raise FusionError(
        f"{reference_name} and {other_name}: the videos cannot be matched one to one by name "
        "(names repeat); list each video once, with the same relative paths in both"
    )


def _check_unique(ids: list[str], name: str, lines) -> None:
    seen: dict[str, int] = {}
    for i, v in enumerate(ids):
        if v in seen:
            raise FusionError(
                f"{_where(name, lines, i)}: video {v!r} is listed twice (first at "
                f"{_where(name, lines, seen[v])}); fusion matches videos by name"
            )
        seen[v] = i


def _where(name: str, lines, index: int) -> str:
    line = lines[index] if lines is not None else None
    return f"{name}:{line}" if line is not None else f"{name} (video {index + 1})"


def check_labels(
    reference: torch.Tensor, other: torch.Tensor, order: Sequence[int], *, describe
) -> None:
    """Raise :class:`FusionError` at the first video whose labels differ; ``describe(i, j)``
    names reference video ``i`` and other video ``j``."""
    for i, j in enumerate(order):
        a, b = int(reference[i]), int(other[j])
        if a != b:
            raise FusionError(
                f"{describe(i, j)}: the labels differ ({a} and {b}); both must label every "
                "video alike"
            )


def _video_of(score_set: ScoreSet, name: str):
    return lambda i, j: f"the first score set and {name}, video {score_set.video_ids[j]!r}"


def default_weights(score_sets: Sequence[ScoreSet]) -> list[float]:
    """TSN's weights by modality (RGB 1, flow 1.5); equal weights for runs of one modality."""
    return [TSN_WEIGHTS.get(s.modality, 1.0) for s in score_sets]


def check_weights(weights: Sequence[float], count: int) -> list[float]:
    """``weights`` as floats: one per score set, >= 0, with a positive sum (or an error)."""
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise FusionError(f"{len(weights)} fusion weights for {count} score sets; give one each")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise FusionError(f"fusion weights must be >= 0 with a positive sum, got {weights}")
    return weights


def fuse_scores(
    score_sets: Sequence[ScoreSet],
    *,
    weights: Sequence[float] | None = None,
    mode: str = "logits",
) -> ScoreSet:
    """Weighted mean of the score sets' logits (``mode="logits"``, TSN and the reference TSM)
    or softmax probabilities (``"softmax"``), video by video.

    The sets must cover the same videos (matched by id, in any order; the result follows the
    first set's order) with the same labels and classes.

    Args:
        weights: one per set; default :func:`default_weights` (TSN's 1 : 1.5 for RGB : flow,
            equal otherwise). ``[1, 1]`` is the reference TSM's equal weighting.
        mode: ``"logits"`` needs logits in every set; ``"softmax"`` takes logits or
            probabilities.
    """
    if mode not in FUSION_MODES:
        raise FusionError(f"fusion mode must be one of {list(FUSION_MODES)}, got {mode!r}")
    if not score_sets:
        raise FusionError("no score sets to fuse")
    if weights is None:
        weights = default_weights(score_sets)
    weights = check_weights(weights, len(score_sets))
    first = score_sets[0]
    total = None
    for number, s in enumerate(score_sets):
        name = s.meta.get("source", f"score set {number + 1}")
        if s.classes != first.classes:
            raise FusionError(f"{name}: other classes than the first score set; cannot fuse")
        if mode == "logits" and s.kind != "logits":
            raise FusionError(
                f"{name} holds {s.kind}, not logits; fuse with mode 'softmax' (--fuse softmax)"
            )
        order = align_videos(
            first.video_ids, s.video_ids, reference_name="the first score set", other_name=name
        )
        check_labels(first.labels, s.labels, order, describe=_video_of(s, name))
        scores = s.scores if mode == "logits" else s.probabilities()
        term = weights[number] * scores[torch.as_tensor(order, dtype=torch.long)].double()
        total = term if total is None else total + term
    fused = (total / sum(weights)).float()
    sources = [s.meta.get("source") for s in score_sets]
    meta = {"fusion": {"mode": mode, "weights": weights, "sources": sources}}
    kind = "logits" if mode == "logits" else "probabilities"
    return replace(first, scores=fused, kind=kind, modality="fused", meta=meta)


def save_scores(score_set: ScoreSet, path: str | os.PathLike) -> Path:
    """Write ``score_set`` as ``.npz`` (no pickled objects: ids, classes and meta as text),
    atomically (a temporary file renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            format=np.array(SCORES_FORMAT),
            video_ids=np.array(score_set.video_ids, dtype=str),
            labels=score_set.labels.numpy().astype(np.int64),
            classes=np.array(score_set.classes, dtype=str),
            scores=score_set.scores.float().numpy(),
            kind=np.array(score_set.kind),
            modality=np.array(score_set.modality),
            meta=np.array(json.dumps(score_set.meta)),
        )
    os.replace(tmp, path)
    return path


def load_scores(path: str | os.PathLike) -> ScoreSet:
    """A score file written by :func:`save_scores`; a folder: its ``scores.npz`` (the output
    folder of ``timeshift test --output DIR``)."""
    path = Path(path)
    if path.is_dir():
        path = path / SCORES_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise FusionError(
            f"{path}: not a score file ({exc}); write one with timeshift test --output DIR "
            "(DIR/scores.npz)"
        ) from exc
    missing = {"video_ids", "labels", "classes", "scores", "kind"} - set(fields)
    if missing:
        raise FusionError(f"{path}: not a timeshift score file (no {sorted(missing)})")
    meta = json.loads(str(fields["meta"])) if "meta" in fields else {}
    meta["source"] = str(path)
    return ScoreSet(
        video_ids=[str(v) for v in fields["video_ids"]],
        labels=torch.from_numpy(fields["labels"].astype(np.int64)),
        classes=[str(c) for c in fields["classes"]],
        scores=torch.from_numpy(fields["scores"].astype(np.float32)),
        kind=str(fields["kind"]),
        modality=str(fields.get("modality", "rgb")),
        meta=meta,
    )
