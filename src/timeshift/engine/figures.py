"""Training curves and confusion matrices as PNG (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from timeshift._plotting import pyplot, save_png

__all__ = ["plot_confusion", "plot_curves", "plot_early"]


# the scores a metrics row may hold: recognition top-1, detection AP50
_SCORES = (
    ("train_top1", "train top-1", "o"),
    ("val_top1", "val top-1", "s"),
    ("val_ap50", "val AP50", "s"),
    ("val_ap50_degraded", "val AP50 (degraded frames)", "^"),
)


def plot_curves(rows: Sequence[dict], path, *, title: str = "") -> None:
    """Loss (left) and accuracy or AP (right) per epoch from metrics rows."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key, label, marker in _SCORES:
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax_acc.plot(*zip(*points, strict=True), marker=marker, label=label)
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy / AP")
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path, *, title: str = "") -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    plt = pyplot()
    confusion = np.asarray(confusion, dtype=float)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    k = len(classes)
    size = min(max(4.0, 0.45 * k + 2), 24)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if k <= 60:
        ax.set_xticks(range(k), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
        if k <= 30:
            for i in range(k):
                for j in range(k):
                    if confusion[i, j]:
                        colour = "white" if normalised[i, j] > 0.5 else "black"
                        ax.text(
                            j,
                            i,
                            int(confusion[i, j]),
                            ha="center",
                            va="center",
                            fontsize=6,
                            color=colour,
                        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    save_png(fig, path, dpi=110)


def plot_early(curves: dict[str, Sequence[dict]], path, *, title: str = "") -> None:
    """Top-1 against the observed fraction of each video, one line per model (rows from
    :func:`~timeshift.engine.evaluate.early_recognition`)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, rows in curves.items():
        ax.plot(
            [100 * r["observed"] for r in rows], [r["top1"] for r in rows], marker="o", label=name
        )
    ax.set_xlabel("observed part of the video (%)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "early recognition")
    fig.tight_layout()
    save_png(fig, path, dpi=120)
