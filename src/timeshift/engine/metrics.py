"""Classification metrics over a whole evaluation set."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "ClassificationReport",
    "classification_report",
    "json_dumps",
    "json_safe",
    "topk_accuracy",
]


def json_safe(value: Any) -> Any:
    """``value`` with every NaN / infinity replaced by ``None`` (containers copied, numpy and
    0-d torch scalars turned into Python numbers): what strict JSON can hold."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray | torch.Tensor):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # an undefined metric (no sample of a class): null, never bare NaN
    return value


def json_dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes valid JSON only: NaN and infinities become ``null``."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)):
    """Fraction of samples whose label is among the ``k`` highest scores, for each ``k``."""
    if len(labels) == 0:
        return {k: float("nan") for k in ks}
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


class ClassificationReport(dict):
    """top1, top5, mean_class_accuracy, per_class (list), confusion (K x K, rows = truth)."""


def classification_report(
    scores: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> ClassificationReport:
    labels = labels.long()
    accuracy = topk_accuracy(scores, labels, (1, 5))
    predictions = scores.argmax(dim=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), predictions.numpy()), 1)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    present = support > 0
    return ClassificationReport(
        top1=accuracy[1],
        top5=accuracy[5],
        # mean over the classes present in the set (classes without samples are undefined)
        mean_class_accuracy=float(per_class[present].mean()) if present.any() else float("nan"),
        per_class=per_class.tolist(),
        support=support.tolist(),
        confusion=confusion,
        count=len(labels),
    )
