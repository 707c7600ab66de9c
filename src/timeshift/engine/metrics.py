"""Classification metrics over a whole evaluation set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ClassificationReport", "classification_report", "topk_accuracy"]


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
