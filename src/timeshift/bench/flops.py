"""``timeshift bench flops``: parameters and MACs of registered models, and the papers' numbers.

Counting runs on PyTorch's ``meta`` device (:func:`~timeshift.bench.complexity.model_complexity`):
no weights are allocated and nothing is computed, so every model of the registry takes a moment.
The papers' "FLOPs" are multiply-accumulates; so are ours.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from timeshift.bench.complexity import model_complexity
from timeshift.models.registry import create_model, list_models, model_info

__all__ = ["PAPER_NUMBERS", "PaperNumber", "benchmark_flops", "paper_comparison"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaperNumber:
    """A published (or reference-code) parameter / MAC figure and the setting it was taken at."""

    model: str
    classes: int
    frames: int
    params: float  # exact count, or millions as printed (see ``exact``)
    gmacs: float | None
    source: str
    exact: bool = False  # params is an exact count (reference code), not a rounded "24.3M"
    label: str = ""


PAPER_NUMBERS: tuple[PaperNumber, ...] = (
    PaperNumber("tsm_resnet50", 400, 8, 24_327_632, 32.70, "reference code, run on CPU", True),
    PaperNumber("tsm_resnet50", 174, 8, 23_864_558, 32.70, "reference code, run on CPU", True),
    PaperNumber("tsm_resnet50", 400, 8, 24.3, 33.0, "TSM Table 5 (TSM 8F)"),
    PaperNumber("tsm_resnet50", 400, 16, 24.3, 65.0, "TSM Table 5 (TSM 16F)"),
    PaperNumber("tsm_resnet101", 174, 8, 42_856_686, 62.40, "reference code, run on CPU", True),
    PaperNumber("tsm_resnet50_nl", 400, 8, 31_686_096, None, "reference code, run on CPU", True),
    PaperNumber("tsm_mobilenet_v2", 400, 8, 2_736_272, 2.40, "reference code, run on CPU", True),
    PaperNumber("i3d_replace_resnet50", 400, 8, 33.0, 48.0, "TSM Table 5 (I3D_replace)"),
    PaperNumber("i3d_resnet50", 400, 8, 29.3, 33.0, "TSM Table 5 (I3D from [49])"),
    PaperNumber(
        "blvnet_tam_resnet50", 174, 16, 25_020_142, 23.85, "reference code, run on CPU (8x2)", True
    ),
    PaperNumber("blvnet_tam_resnet50", 174, 16, 25.0, 23.8, "bLVNet Table 1 (8x2)"),
    PaperNumber("blvnet_tam_resnet50", 174, 32, 25.0, 47.7, "bLVNet Table 1 (16x2)"),
    PaperNumber(
        "blvnet_tam_resnet101", 174, 16, 40_177_134, 32.15, "reference code, run on CPU (8x2)", True
    ),
)


def _measure(name: str, *, classes: int, frames: int, size: int) -> dict:
    return dict(_measure_once(name, classes=classes, frames=frames, size=size))


@functools.cache  # a count depends on nothing else; the papers' settings are measured often
def _measure_once(name: str, *, classes: int, frames: int, size: int) -> dict:
    with torch.device("meta"):
        model = create_model(name, num_classes=classes, num_segments=frames)
    c = model_complexity(model, frames=frames, input_size=size)
    return {
        "model": name,
        "family": model_info(name).family,
        "classes": classes,
        "frames": frames,
        "size": size,
        "params": c.params,
        "gmacs": round(c.macs / 1e9, 4),
        "gmacs_per_frame": round(c.macs / 1e9 / frames, 4),
        "temporal_modules": c.temporal_modules,
    }


def benchmark_flops(
    pattern: str | None = None,
    *,
    frames: int = 8,
    size: int = 224,
    classes: int = 400,
    include_tiny: bool = False,
) -> list[dict]:
    """One row per registered model matching ``pattern``: parameters, MACs per clip and per
    frame, temporal modules. Models that cannot take ``frames`` (bLVNet needs pairs) are
    reported with an ``error`` instead of being dropped silently."""
    names = [n for n in list_models(pattern) if include_tiny or not n.endswith("_tiny")]
    rows = []
    for name in names:
        try:
            rows.append(_measure(name, classes=classes, frames=frames, size=size))
        except (ValueError, TypeError) as exc:
            _logger.warning("%s: %s", name, exc)
            rows.append({"model": name, "frames": frames, "size": size, "error": str(exc)})
    return rows


def paper_comparison(papers: Sequence[PaperNumber] = PAPER_NUMBERS) -> list[dict]:
    """Ours at each published setting, next to the published figure (224 px)."""
    rows = []
    for p in papers:
        ours = _measure(p.model, classes=p.classes, frames=p.frames, size=224)
        params_m = ours["params"] / 1e6
        rows.append(
            {
                "model": p.model,
                "setting": f"{p.classes} classes, {p.frames} frames",
                "source": p.source,
                "params": ours["params"],
                "paper_params": int(p.params) if p.exact else f"{p.params}M",
                "params_match": (
                    ours["params"] == p.params if p.exact else round(params_m, 1) == p.params
                ),
                "gmacs": ours["gmacs"],
                "paper_gmacs": p.gmacs,
                "gmacs_ratio": round(ours["gmacs"] / p.gmacs, 3) if p.gmacs else None,
            }
        )
    return rows
