"""Temporal aggregation (TAM of bLVNet-TAM): learned, per-channel weighted sum over nearby frames.

This is the *temporal aggregation module* of Fan et al., "More Is Less: Learning Efficient Video
Representations by Big-Little Network and Depthwise Temporal Aggregation" (NeurIPS 2019), not
TANet's "temporal adaptive module". On a ``(N*T, C, H, W)`` tensor viewed as
``(N, T, C, H, W)``, with ``r`` weight vectors ``w_0 .. w_{r-1}`` of ``C`` values each
(``r`` depthwise 1x1 convolutions without bias):

    out[:, t] = ReLU( sum_i  w_i * x[:, t + i - r//2] )        (paper Eq. 3, j = i - r//2)

with zeros for frames past either end. "The i-th output is shifted in time by ``i - r//2``"
means output frame ``t`` *reads* input frame ``t + i - r//2``: for ``r = 3``, ``w_0`` weights the
previous frame, ``w_1`` the current one and ``w_2`` the next one (the official code names them
``prev``, ``curr`` and ``next``). An even ``r`` follows the same rule and reaches one frame
further into the past than into the future.

The weights are stored as one ``(r, C)`` parameter; the official checkpoints' ``prev``/``curr``/
``next`` (or ``blending_layers.i``) convolution weights map onto its rows.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from timeshift.ops.protocol import TemporalOp
from timeshift.ops.shift import _tracing, check_frames

__all__ = ["TemporalAggregation", "aggregation_offsets", "temporal_aggregation"]

Init = Literal["kaiming", "identity"]


def aggregation_offsets(r: int) -> tuple[int, ...]:
    """Source time offsets of the ``r`` weights: output frame ``t`` reads ``t + offsets[i]``."""
    if r < 1:
        raise ValueError(f"the aggregation range r must be >= 1, got {r}")
    return tuple(i - r // 2 for i in range(r))


def _check_input(x: torch.Tensor, weight: torch.Tensor, num_segments: int) -> None:
    check_frames(x, num_segments, "temporal_aggregation")
    if weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight must have shape (r, C) = (r, {x.shape[1]}) for an input of {x.shape[1]} "
            f"channels, got {tuple(weight.shape)}"
        )


def _slide(x5: torch.Tensor, offset: int, num_segments: int) -> torch.Tensor:
    """``out[:, t] = x5[:, t + offset]`` on ``(N, T, ...)``, zeros past either end."""
    if offset == 0:
        return x5
    if abs(offset) >= num_segments:
        return torch.zeros_like(x5)
    lo, hi = max(offset, 0), max(-offset, 0)
    # F.pad pads the last dimensions first: (W, H, C) untouched, T padded by (hi, lo)
    return F.pad(x5[:, lo : num_segments - hi], (0, 0, 0, 0, 0, 0, hi, lo))


def temporal_aggregation(
    x: torch.Tensor, weight: torch.Tensor, num_segments: int, *, relu: bool = True
) -> torch.Tensor:
    """Per-channel weighted sum of each frame and its neighbours, then ReLU (paper Eq. 3).

    Args:
        x: frames folded into the batch, shape ``(N*T, C, H, W)``.
        weight: ``(r, C)``; row ``i`` weights the input frame ``t + i - r//2`` of output frame
            ``t`` (zeros past either end of the clip).
        num_segments: ``T``, frames per video.
        relu: apply the ReLU of Eq. 3 (``False`` gives the bare weighted sum).

    Returns:
        A tensor of the shape of ``x``.
    """
    if _tracing():
        # the weight's shape is a model constant here: the checks and the loop over offsets
        # need not become graph ops (the batch dimension stays dynamic below)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            _check_input(x, weight, num_segments)
            r, channels = int(weight.shape[0]), int(weight.shape[1])
    else:
        _check_input(x, weight, num_segments)
        r, channels = weight.shape
    # The r weightings are one grouped 1x1 convolution (channel c -> r outputs), i.e. exactly
    # the r depthwise convolutions of the paper; FLOP counters see them as convolutions.
    kernel = weight.t().reshape(channels * r, 1, 1, 1).to(dtype=x.dtype)
    weighted = F.conv2d(x, kernel, groups=channels)
    weighted = weighted.view(-1, num_segments, channels, r, *x.shape[-2:])
    out = None
    for i, offset in enumerate(aggregation_offsets(r)):
        part = _slide(weighted[:, :, :, i], offset, num_segments)
        out = part if out is None else out + part
    out = out.reshape(x.shape)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return F.relu(out) if relu else out


class TemporalAggregation(TemporalOp):
    """Temporal aggregation module (TAM): ``r`` depthwise 1x1 convolutions, shifted, summed, ReLU.

    Args:
        channels: input (and output) channels ``C``.
        num_segments: frames per video ``T`` at this layer.
        r: temporal range: frames ``t - r//2 .. t + (r-1)//2`` contribute to frame ``t``.
        init: ``"kaiming"`` draws every weight from ``normal(0, sqrt(2 / C))``, the official
            code's initialisation (its ``kaiming_normal_(mode="fan_out")`` over all convolutions,
            the fan-out of a ``(C, 1, 1, 1)`` depthwise kernel being ``C``); ``"identity"`` starts
            as ``ReLU(x)`` (current-frame weight 1, others 0), which leaves a network pretrained
            on single frames unchanged when its block inputs are non-negative.
    """

    def __init__(
        self, channels: int, num_segments: int, r: int = 3, *, init: Init = "kaiming"
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        aggregation_offsets(r)  # validate early
        self.channels = channels
        self.num_segments = num_segments
        self.r = r
        self.weight = nn.Parameter(torch.empty(r, channels))
        self.reset_parameters(init)

    @property
    def offsets(self) -> tuple[int, ...]:
        return aggregation_offsets(self.r)

    def reset_parameters(self, init: Init = "kaiming") -> None:
        with torch.no_grad():
            if init == "kaiming":
                self.weight.normal_(0.0, math.sqrt(2.0 / self.channels))
            elif init == "identity":
                self.weight.zero_()
                self.weight[self.r // 2].fill_(1.0)
            else:
                raise ValueError(f"init must be 'kaiming' or 'identity', got {init!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _tracing() and x.dim() == 4 and x.shape[1] != self.channels:
            raise ValueError(
                f"TemporalAggregation was built for {self.channels} channels, got an input of "
                f"shape {tuple(x.shape)}"
            )
        return temporal_aggregation(x, self.weight, self.num_segments)

    def not_causal_reason(self) -> str:
        return (
            f"TemporalAggregation mixes in future frames (frame t reads frames "
            f"t{min(self.offsets):+d}..t{max(self.offsets):+d}; it has no streaming form)"
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_segments={self.num_segments}, r={self.r}"
