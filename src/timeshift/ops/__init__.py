"""Temporal primitives: functional form plus an ``nn.Module`` wrapper. No model knowledge.

Every module form is a :class:`TemporalOp`: it says whether it is causal and builds its
streaming form (:mod:`timeshift.ops.protocol`)."""

from timeshift.ops.aggregation import (
    TemporalAggregation,
    aggregation_offsets,
    temporal_aggregation,
)
from timeshift.ops.inflate import InflatedConv, inflate_weight
from timeshift.ops.pool import TemporalPool, pooled_segments, temporal_pool
from timeshift.ops.protocol import NotCausalError, StreamingOp, TemporalOp, to_streaming
from timeshift.ops.shift import (
    DIRECTIONS,
    OnlineShift,
    TemporalShift,
    native_kernel_available,
    shift_offsets,
    temporal_shift,
)
from timeshift.ops.shuffle import VideoShuffle, VideoUnshuffle, video_shuffle, video_unshuffle
from timeshift.ops.st_shift import SpatioTemporalShift, spatiotemporal_shift

__all__ = [
    "DIRECTIONS",
    "InflatedConv",
    "NotCausalError",
    "OnlineShift",
    "SpatioTemporalShift",
    "StreamingOp",
    "TemporalAggregation",
    "TemporalOp",
    "TemporalPool",
    "TemporalShift",
    "VideoShuffle",
    "VideoUnshuffle",
    "aggregation_offsets",
    "inflate_weight",
    "native_kernel_available",
    "pooled_segments",
    "shift_offsets",
    "spatiotemporal_shift",
    "temporal_aggregation",
    "temporal_pool",
    "temporal_shift",
    "to_streaming",
    "video_shuffle",
    "video_unshuffle",
]
