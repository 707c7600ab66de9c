"""Benchmark charts (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["grouped_bars", "plot_flops"]


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


def plot_flops(rows: Sequence[Mapping], path, title: str) -> None:
    """One horizontal bar per model (MACs per clip), coloured by family, parameters in the
    label; models sorted by MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["gmacs"])
    families = sorted({r["family"] for r in rows})
    colours = {f: plt.cm.tab10(i % 10) for i, f in enumerate(families)}
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.5))
    ys = range(len(rows))
    bars = ax.barh(ys, [r["gmacs"] for r in rows], color=[colours[r["family"]] for r in rows])
    ax.bar_label(
        bars,
        [f"{r['gmacs']:.1f} G, {r['params'] / 1e6:.1f} M" for r in rows],
        fontsize=7,
        padding=2,
    )
    ax.set_yticks(list(ys), [r["model"] for r in rows], fontsize=7)
    ax.set_xlabel("MACs per clip (G); labels: MACs, parameters")
    ax.set_title(title)
    ax.margins(x=0.25)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[f]) for f in families]
    ax.legend(handles, families, fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
