"""Temporal primitives: functional form plus an ``nn.Module`` wrapper. No model knowledge."""

from timeshift.ops.inflate import InflatedConv, inflate_weight
from timeshift.ops.pool import TemporalPool, pooled_segments, temporal_pool
from timeshift.ops.shift import (
    DIRECTIONS,
    TemporalShift,
    native_kernel_available,
    shift_offsets,
    temporal_shift,
)

__all__ = [
    "DIRECTIONS",
    "InflatedConv",
    "TemporalPool",
    "TemporalShift",
    "inflate_weight",
    "native_kernel_available",
    "pooled_segments",
    "shift_offsets",
    "temporal_pool",
    "temporal_shift",
]
