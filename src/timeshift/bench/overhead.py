"""``timeshift bench shift-overhead``: the TSM paper's Figure 2a on this machine.

Latency of TSM-ResNet50 (8 frames, batch 1) shifting 1/8, 1/4, 1/2 or all of the channels,
relative to the 2D baseline (TSN-ResNet50, proportion 0), all timed side by side:

* ``residual``: the shift on the residual branch (TSM's choice), on the inference path that
  shifts the moved channels in place and restores them after the first conv (the default);
* ``residual, copy``: the same model with that path off: every shifted block writes a shifted
  copy of its whole input, as the reference implementation does (in one pass, not its four);
* ``in-place``: the shift before the whole block (shortcut included), done in place.

A bi-directional shift with ``fold_div = d`` moves ``2/d`` of the channels, so the proportions
1/8, 1/4, 1/2 and all are ``fold_div`` 16, 8, 4 and 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from timeshift.bench.speed import FORMATS, ModelSpec, benchmark_speed
from timeshift.ops.shift import set_fast_inference

__all__ = ["PAPER_CPU_OVERHEAD", "PROPORTIONS", "TARGET", "benchmark_shift_overhead"]

PROPORTIONS = ("1/8", "1/4", "1/2", "all")
PLACES = ("residual", "residual, copy", "in-place")
# the paper's CPU (Xeon E5-2690) overheads read from Figure 2a / its text: 1/8 -> ~3%, all ->
# 13.7%; the 1/4 default is "negligible"
PAPER_CPU_OVERHEAD = {"1/8": 3.0, "all": 13.7}
# the target for the default (1/4, residual): TSM / TSN latency at batch 1
TARGET = 1.05


def _fold_div(proportion: str) -> int:
    """``fold_div`` of the bi-directional shift moving ``proportion`` of the channels."""
    try:
        share = Fraction(1) if proportion == "all" else Fraction(proportion)
    except ValueError:
        share = Fraction(0)
    if share <= 0 or share > 1 or (2 / share).denominator != 1:
        raise ValueError(
            f"proportion must be 'all' or a fraction 2/k such as {', '.join(PROPORTIONS[:3])}, "
            f"got {proportion!r}"
        )
    return int(2 / share)


def _copy_path(model) -> None:
    set_fast_inference(model, False)


def overhead_specs(
    backbone: str = "resnet50",
    *,
    frames: int = 8,
    proportions: Sequence[str] = PROPORTIONS,
    places: Sequence[str] = PLACES,
) -> list[ModelSpec]:
    """TSN first (the baseline), then one TSM per (proportion, place)."""
    specs = [ModelSpec(f"tsn_{backbone}", frames, label="TSN (0)")]
    for proportion in proportions:
        fold_div = _fold_div(proportion)
        for place in places:
            options: dict = {"fold_div": fold_div}
            setup = None
            if place == "in-place":
                options.update(place="inplace", inplace=True)
            elif place == "residual, copy":
                setup = _copy_path
            elif place != "residual":
                raise ValueError(f"place must be one of {', '.join(PLACES)}, got {place!r}")
            specs.append(
                ModelSpec(f"tsm_{backbone}", frames, options, f"{place} {proportion}", setup)
            )
    return specs


def benchmark_shift_overhead(
    backbone: str = "resnet50",
    *,
    frames: int = 8,
    size: int = 224,
    proportions: Sequence[str] = PROPORTIONS,
    places: Sequence[str] = PLACES,
    formats: Sequence[str] = FORMATS,
    device: str = "cpu",
    rounds: int = 10,
    warmup: int = 2,
    progress: bool = False,
) -> list[dict]:
    """One row per (model variant, memory format): latency and ``overhead_pct``, the paired
    latency increase over TSN in percent (the y axis of the paper's Figure 2a)."""
    specs = overhead_specs(backbone, frames=frames, proportions=proportions, places=places)
    rows = benchmark_speed(
        specs,
        backends=("eager",),
        formats=formats,
        batch=1,
        size=size,
        device=device,
        rounds=rounds,
        warmup=warmup,
        progress=progress,
    )
    for row in rows:
        if "error" in row:
            continue
        label = row["model"]
        place, _, proportion = label.rpartition(" ")
        row["place"] = "none" if label.startswith("TSN") else place
        row["proportion"] = "0" if label.startswith("TSN") else proportion
        row["overhead_pct"] = round((row["vs_baseline"] - 1) * 100, 2)
    return rows
