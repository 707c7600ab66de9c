"""Parameters, multiply-accumulates and temporal-module statistics of a model.

The papers' "FLOPs" are multiply-accumulates (MACs): TSM-ResNet50 at 8x224^2 is quoted as 33G,
which is 8 x 4.09 G MACs. ``torch.utils.flop_counter`` counts 2 FLOPs per MAC for convolutions and
matrix products (the only ops it counts), so MACs = counted FLOPs / 2.

Counting runs on the ``meta`` device: shapes propagate, nothing is computed, so even
ResNet-152 at 16 frames is measured instantly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from timeshift.ops.aggregation import TemporalAggregation
from timeshift.ops.inflate import InflatedConv
from timeshift.ops.shift import TemporalShift
from timeshift.ops.shuffle import VideoShuffle
from timeshift.ops.st_shift import SpatioTemporalShift

# what `temporal_modules` counts: each op that mixes frames (a shuffle + its inverse count once)
TEMPORAL_OPS = (TemporalShift, SpatioTemporalShift, TemporalAggregation, InflatedConv, VideoShuffle)

__all__ = ["Complexity", "count_parameters", "model_complexity"]


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int  # per clip
    frames: int
    input_size: int
    temporal_modules: int
    # online streaming cache: the shifted channels of each shift module's input, one frame
    cache_tensors: int
    cache_floats: int  # per stream

    @property
    def macs_per_frame(self) -> float:
        return self.macs / self.frames

    def as_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_complexity(model: nn.Module, *, frames: int, input_size: int = 224) -> Complexity:
    """Measure a :class:`~timeshift.models.Recognizer` on one ``(1, T, 3, S, S)`` clip.

    The model may live on any device including ``meta``; it is not modified.
    """
    device = next(model.parameters()).device
    shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
    cache: list[int] = []

    def record(module: TemporalShift, args) -> None:
        _, c, h, w = args[0].shape
        cache.append((c // module.fold_div) * h * w)

    hooks = [m.register_forward_pre_hook(record) for m in shifts]
    in_chans = getattr(model, "in_chans", 3)
    x = torch.empty(1, frames, in_chans, input_size, input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return Complexity(
        params=count_parameters(model),
        macs=counter.get_total_flops() // 2,
        frames=frames,
        input_size=input_size,
        temporal_modules=sum(isinstance(m, TEMPORAL_OPS) for m in model.modules()),
        cache_tensors=len(cache),
        cache_floats=sum(cache),
    )
