"""Temporal aggregation (TAM of bLVNet-TAM): Eq. 3 by a direct loop, hand-computed values,
zero padding, gradients, and errors."""

import math

import pytest
import torch

from timeshift.ops.aggregation import (
    TemporalAggregation,
    aggregation_offsets,
    temporal_aggregation,
)
from timeshift.ops.shift import temporal_shift


def _eq3_loop(x, weight, num_segments):
    """Paper Eq. 3 frame by frame: out[t] = ReLU(sum_j w_j * x[t + j]), j = -r//2 ..."""
    r = weight.shape[0]
    n = x.shape[0] // num_segments
    out = torch.zeros_like(x)
    for video in range(n):
        for t in range(num_segments):
            acc = torch.zeros_like(x[0])
            for i in range(r):
                src = t + i - r // 2
                if 0 <= src < num_segments:
                    acc += weight[i].view(-1, 1, 1) * x[video * num_segments + src]
            out[video * num_segments + t] = acc.clamp(min=0)
    return out


def _frames(values):
    """One video, one channel, 1x1 pixels: a list of per-frame values as (T, 1, 1, 1)."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)


@pytest.mark.parametrize("r", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("num_segments", [1, 2, 3, 5])
def test_matches_a_direct_loop_of_eq3(r, num_segments):
    torch.manual_seed(r * 10 + num_segments)
    x = torch.randn(2 * num_segments, 3, 2, 3)
    weight = torch.randn(r, 3)
    expected = _eq3_loop(x, weight, num_segments)
    assert torch.allclose(temporal_aggregation(x, weight, num_segments), expected, atol=1e-6)


def test_hand_computed_single_channel():
    # weights chosen so that every output shows which frame each weight read:
    # w_prev = 100, w_curr = 1, w_next = 10;  x = [1, 2, 3]
    x = _frames([1.0, 2.0, 3.0])
    weight = torch.tensor([[100.0], [1.0], [10.0]])
    out = temporal_aggregation(x, weight, 3).flatten().tolist()
    # t=0: 1*1 + 10*2 (no previous frame) = 21
    # t=1: 100*1 + 1*2 + 10*3 = 132
    # t=2: 100*2 + 1*3 (no next frame) = 203
    assert out == [21.0, 132.0, 203.0]


def test_output_frame_t_reads_input_frame_t_plus_offset():
    # one-hot weights: row i alone copies input frame t + i - r//2 to output frame t
    x = _frames([1.0, 2.0, 3.0, 4.0])
    assert aggregation_offsets(3) == (-1, 0, 1)
    prev, curr, nxt = (torch.eye(3)[i].view(3, 1) for i in range(3))
    assert temporal_aggregation(x, prev, 4).flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    assert temporal_aggregation(x, curr, 4).flatten().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert temporal_aggregation(x, nxt, 4).flatten().tolist() == [2.0, 3.0, 4.0, 0.0]


def test_relu_is_applied_after_the_sum():
    x = _frames([1.0, -2.0, 3.0])
    weight = torch.tensor([[0.0], [1.0], [0.0]])
    assert temporal_aggregation(x, weight, 3).flatten().tolist() == [1.0, 0.0, 3.0]
    raw = temporal_aggregation(x, weight, 3, relu=False)
    assert raw.flatten().tolist() == [1.0, -2.0, 3.0]
    # a negative neighbour is summed before the ReLU, not clipped on its own
    both = torch.tensor([[1.0], [1.0], [0.0]])
    assert temporal_aggregation(x, both, 3).flatten().tolist() == [1.0, 0.0, 1.0]


def test_zero_padding_at_both_ends_and_no_leak_between_videos():
    # two videos of four frames: all ones, then all zeros
    x = torch.cat([torch.ones(4, 2, 1, 1), torch.zeros(4, 2, 1, 1)])
    weight = torch.ones(3, 2)
    out = temporal_aggregation(x, weight, 4)[:, 0].flatten().tolist()
    assert out == [2.0, 3.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0]
    # the other way round: the second video's first frame must not see the first video
    out = temporal_aggregation(x.flip(0), weight, 4)[:, 0].flatten().tolist()
    assert out == [0.0, 0.0, 0.0, 0.0, 2.0, 3.0, 3.0, 2.0]


def test_range_wider_than_the_clip_reads_only_zeros_outside():
    x = _frames([1.0, 2.0])
    weight = torch.tensor([[1000.0], [100.0], [1.0], [10.0], [10000.0]])  # offsets -2..2
    assert temporal_aggregation(x, weight, 2).flatten().tolist() == [21.0, 102.0]


def test_tsm_shift_is_a_special_case():
    # fixed one-hot weights reproduce the bi-directional TSM shift (paper section 3.3) on
    # non-negative inputs: TSM's first fold reads t+1, the second t-1, the rest t
    torch.manual_seed(0)
    x = torch.rand(8, 16, 3, 3)
    fold = 16 // 8
    weight = torch.zeros(3, 16)
    weight[2, :fold] = 1  # offset +1
    weight[0, fold : 2 * fold] = 1  # offset -1
    weight[1, 2 * fold :] = 1
    assert torch.equal(temporal_aggregation(x, weight, 4), temporal_shift(x, 4, fold_div=8))


def test_gradients_flow_to_input_and_weights():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: temporal_aggregation(a, w, 3), (x, weight))

    module = TemporalAggregation(4, num_segments=4)
    out = module(torch.rand(8, 4, 3, 3, requires_grad=True))
    out.sum().backward()
    assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_module_initialisations():
    tam = TemporalAggregation(2048, num_segments=8)
    assert tam.weight.shape == (3, 2048)
    # the official kaiming_normal_(fan_out) of a (C, 1, 1, 1) depthwise kernel: std sqrt(2/C)
    assert tam.weight.std().item() == pytest.approx(math.sqrt(2 / 2048), rel=0.05)
    identity = TemporalAggregation(3, num_segments=2, init="identity")
    x = torch.randn(4, 3, 2, 2)
    assert torch.equal(identity(x), x.clamp(min=0))
    assert "channels=3, num_segments=2, r=3" in repr(identity)


def test_channels_last_is_kept():
    tam = TemporalAggregation(8, num_segments=2)
    x = torch.rand(4, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    out = tam(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, tam(x.contiguous()))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: temporal_aggregation(torch.rand(4, 3, 2), torch.rand(3, 3), 2), r"\(N\*T, C"),
        (lambda: temporal_aggregation(torch.rand(6, 3, 2, 2), torch.rand(3, 3), 4), "multiple"),
        (lambda: temporal_aggregation(torch.rand(4, 3, 2, 2), torch.rand(3, 5), 2), r"\(r, 3\)"),
        (lambda: temporal_aggregation(torch.rand(4, 3, 2, 2), torch.rand(3, 3), 0), ">= 1"),
        (lambda: TemporalAggregation(8, num_segments=2)(torch.rand(4, 3, 2, 2)), "8 channels"),
        (lambda: TemporalAggregation(8, num_segments=2, r=0), "r must be >= 1"),
        (lambda: TemporalAggregation(8, num_segments=0), "num_segments"),
        (lambda: TemporalAggregation(8, num_segments=2, init="zeros"), "init must be"),
    ],
)
def test_errors_name_the_expected_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
