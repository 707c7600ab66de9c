"""Benchmark charts (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["grouped_bars"]


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path,
    *,
    ylabel: str,
    title: str,
) -> None:
    """One group of bars per entry of ``groups``, one bar per series, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(series)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(1.8 * len(groups) + 2.5, 4))
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(groups))]
        bars = ax.bar(xs, series[name], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
