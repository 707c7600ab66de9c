"""Benchmark charts (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from timeshift._plotting import pyplot, save_png

__all__ = ["grouped_bars", "plot_flops", "plot_overhead", "plot_speed", "plot_vs_3d"]


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path,
    *,
    ylabel: str,
    title: str,
) -> None:
    """One group of bars per entry of ``groups``, one bar per series, saved as PNG."""
    plt = pyplot()

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
    save_png(fig, path)


def plot_flops(rows: Sequence[Mapping], path, title: str) -> None:
    """One horizontal bar per model (MACs per clip), coloured by family, parameters in the
    label; models sorted by MACs."""
    plt = pyplot()

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
    save_png(fig, path)


def _wrap(title: str, width: int = 100) -> str:
    import textwrap

    return textwrap.fill(title, width)


def plot_speed(rows: Sequence[Mapping], path, title: str, *, throughput: bool = False) -> None:
    """One horizontal bar per contender (model | backend | format): median ms per batch with
    the p10-p90 range as an error bar, or clips/s with ``throughput``."""
    plt = pyplot()
    rows = [r for r in rows if "error" not in r]
    labels = [f"{r['model']} | {r['backend']} | {r['memory_format']}" for r in rows]
    if throughput:
        values = [r["clips_per_s"] for r in rows]
        # clips/s from the p90 and p10 times: the slow and fast ends of the spread
        low = [v - r["batch"] * 1e3 / r["p90_ms"] for v, r in zip(values, rows, strict=True)]
        high = [r["batch"] * 1e3 / r["p10_ms"] - v for v, r in zip(values, rows, strict=True)]
        xlabel, fmt = "clips / s (median; bars p10-p90)", "%.2f"
    else:
        values = [r["median_ms"] for r in rows]
        low = [v - r["p10_ms"] for v, r in zip(values, rows, strict=True)]
        high = [r["p90_ms"] - v for v, r in zip(values, rows, strict=True)]
        xlabel, fmt = "ms per batch (median; bars p10-p90)", "%.1f"
    backends = sorted({r["backend"] for r in rows})
    colours = {b: plt.cm.tab10(i) for i, b in enumerate(backends)}
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.5))
    ys = range(len(rows))
    bars = ax.barh(
        ys, values, xerr=[low, high], color=[colours[r["backend"]] for r in rows], capsize=3
    )
    ax.bar_label(bars, fmt=fmt, fontsize=7, padding=4)
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(_wrap(title), fontsize=9)
    ax.margins(x=0.2)
    fig.tight_layout()
    save_png(fig, path)


def plot_overhead(rows: Sequence[Mapping], path, title: str, paper: Mapping[str, float]) -> None:
    """The TSM paper's Figure 2a: latency overhead over the 2D baseline (%) against the shifted
    proportion, one line per placement and memory format, the paper's CPU points beside."""
    plt = pyplot()
    order = ["0", "1/8", "1/4", "1/2", "all"]
    fig, ax = plt.subplots(figsize=(7, 4))
    lines = sorted({(r["place"], r["memory_format"]) for r in rows if r.get("place") != "none"})
    for place, fmt in lines:
        points = sorted(
            (order.index(r["proportion"]), r["overhead_pct"])
            for r in rows
            if r.get("place") in (place, "none") and r["memory_format"] == fmt
        )
        style = "-" if fmt == "channels_last" else "--"
        ax.plot(*zip(*points, strict=True), style, marker="o", label=f"{place} ({fmt})")
    if paper:
        xs = [order.index(p) for p in paper]
        ax.plot(xs, list(paper.values()), "k*", markersize=10, label="paper, Xeon CPU")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("proportion of channels shifted")
    ax.set_ylabel("latency overhead vs TSN (%)")
    ax.set_title(_wrap(title), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def plot_vs_3d(rows: Sequence[Mapping], path, title: str) -> None:
    """The TSM paper's Table 5 as two panels: batch-1 latency and clips/s per model."""
    plt = pyplot()
    rows = [r for r in rows if "error" not in r]
    names = [r["model"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.8), sharey=True)
    colours = [plt.cm.tab10(0 if n.startswith("TS") else 3) for n in names]
    for ax, key, label in (
        (left, "latency_ms", "latency, ms (batch 1)"),
        (right, "clips_per_s", "throughput, clips / s"),
    ):
        bars = ax.barh(range(len(rows)), [r[key] for r in rows], color=colours)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=3)
        ax.set_xlabel(label)
        ax.margins(x=0.25)
    ticks = [f"{r['model']}\n{r['gmacs']:.1f} GMACs" for r in rows]
    left.set_yticks(range(len(rows)), ticks, fontsize=7)
    left.invert_yaxis()
    fig.suptitle(_wrap(title), fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
