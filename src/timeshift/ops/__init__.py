"""Temporal primitives: functional form plus an ``nn.Module`` wrapper. No model knowledge."""

from timeshift.ops.pool import TemporalPool, pooled_segments, temporal_pool
from timeshift.ops.shift import DIRECTIONS, TemporalShift, shift_offsets, temporal_shift

__all__ = [
    "DIRECTIONS",
    "TemporalPool",
    "TemporalShift",
    "pooled_segments",
    "shift_offsets",
    "temporal_pool",
    "temporal_shift",
]
