"""The one place that loads matplotlib: the Agg backend (no display needed), imported lazily so
that matplotlib stays optional for everything that draws nothing."""

from __future__ import annotations

__all__ = ["pyplot", "save_png"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path, *, dpi: int = 120) -> None:
    """Write ``fig`` as PNG atomically (a run killed mid-plot keeps its previous PNG, never half
    of one) and close it."""
    from timeshift.models.checkpoints import atomic_write

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        pyplot().close(fig)
