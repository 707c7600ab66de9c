"""The conversion protocol: each temporal op says whether it is causal, builds its streaming
form, or refuses saying why; to_streaming converts a whole module."""

import re

import pytest
import torch
from torch import nn

from timeshift.models.backbones import NonLocalWrapper
from timeshift.models.backbones.resnet import BasicBlock
from timeshift.ops import (
    InflatedConv,
    NotCausalError,
    OnlineShift,
    SpatioTemporalShift,
    TemporalAggregation,
    TemporalOp,
    TemporalPool,
    TemporalShift,
    VideoShuffle,
    VideoUnshuffle,
    to_streaming,
)

T = 4

MIXING = {  # ops whose output frame reads later frames
    "TemporalAggregation": lambda: TemporalAggregation(8, T),
    "InflatedConv": lambda: InflatedConv(nn.Conv2d(8, 8, 3, padding=1), T),
    "VideoShuffle": lambda: VideoShuffle(T),
    "VideoUnshuffle": lambda: VideoUnshuffle(T),
    "SpatioTemporalShift": lambda: SpatioTemporalShift(None, T),
}
REFUSED = {  # the start of the refusal -> the op
    **{f"{name} mixes in future frames": make for name, make in MIXING.items()},
    "temporal pooling (TemporalPool) needs future frames": lambda: TemporalPool(None, T),
    "non-local blocks (NonLocalWrapper) attend to future frames": lambda: NonLocalWrapper(
        BasicBlock(8, 8), T
    ),
    "TemporalShift shifts channels from future frames": lambda: TemporalShift(None, T),
}


@pytest.mark.parametrize("reason", REFUSED)
def test_ops_that_read_the_future_refuse_to_stream_and_say_why(reason):
    op = REFUSED[reason]()
    assert isinstance(op, TemporalOp) and not op.causal
    assert op.not_causal_reason().startswith(reason)
    with pytest.raises(NotCausalError, match=f"^{re.escape(reason)}"):
        op.to_streaming()


def test_a_bidirectional_shift_streams_only_when_the_future_may_be_dropped():
    shift = TemporalShift(nn.Conv2d(8, 8, 1), T)
    with pytest.raises(ValueError, match="drop_future"):
        shift.to_streaming()
    online = shift.to_streaming(drop_future=True)
    assert isinstance(online, OnlineShift) and online.offsets == (1, -1)
    uni = TemporalShift(nn.Conv2d(8, 8, 1), T, direction="unidirectional")
    assert uni.causal and isinstance(uni.to_streaming(), OnlineShift)


@torch.no_grad()
def test_a_spatial_only_shift_is_causal_and_streams_per_frame():
    op = SpatioTemporalShift(nn.Conv2d(8, 8, 3, padding=1), T, alpha=1 / 2, dims="H+W")
    assert op.causal
    streaming = op.to_streaming()
    clip = torch.randn(2 * T, 8, 6, 6)
    frames = clip.view(2, T, 8, 6, 6)
    per_frame = torch.stack([streaming(frames[:, t]) for t in range(T)], dim=1)
    assert torch.equal(per_frame.flatten(0, 1), op(clip))


@torch.no_grad()
def test_to_streaming_converts_in_model_order_and_names_where_it_stops():
    def shift(c):
        return TemporalShift(nn.Conv2d(c, c, 1), T, direction="unidirectional")

    model = nn.Sequential(shift(8), nn.ReLU(), nn.Sequential(shift(16)))
    ops = to_streaming(model)
    assert [op.channels for op in ops] == [8, 16] and isinstance(model[2][0], OnlineShift)
    model = nn.Sequential(shift(8), nn.Sequential(nn.ReLU(), TemporalAggregation(8, T)))
    with pytest.raises(NotCausalError, match=r"TemporalAggregation .*\(at 1\.1\)$"):
        to_streaming(model)
