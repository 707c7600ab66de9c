"""Temporal max-pooling between stages (the reference TSM's ``--temporal_pool``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timeshift.ops.protocol import TemporalOp

__all__ = ["TemporalPool", "pooled_segments", "temporal_pool"]


def pooled_segments(num_segments: int) -> int:
    """Frames left after :func:`temporal_pool` (kernel 3, stride 2, padding 1): ceil(T / 2)."""
    return (num_segments + 1) // 2


def temporal_pool(x: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Max-pool ``(N*T, C, H, W)`` over time with kernel 3, stride 2, padding 1.

    Returns ``(N*T', C, H, W)`` with ``T' = ceil(T / 2)``, in the input's memory format.
    """
    if x.dim() != 4 or x.shape[0] % num_segments:
        raise ValueError(
            f"temporal_pool expects (N*T, C, H, W) with N*T a multiple of T={num_segments}, "
            f"got shape {tuple(x.shape)}"
        )
    nt, c, h, w = x.shape
    n = nt // num_segments
    x5 = x.view(n, num_segments, c, h, w).transpose(1, 2)  # (N, C, T, H, W)
    y = F.max_pool3d(x5, kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))
    out = y.transpose(1, 2).reshape(n * y.shape[2], c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class TemporalPool(TemporalOp):
    """Halve the number of frames, then apply the wrapped module (weights stay under ``.net``).

    Later temporal modules must be built for :func:`pooled_segments` frames; ``temporalize``
    does this when asked for ``temporal_pool=True``.
    """

    def __init__(self, net: nn.Module | None, num_segments: int) -> None:
        super().__init__()
        self.net = net if net is not None else nn.Identity()
        self.num_segments = num_segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_pool(x, self.num_segments))

    def not_causal_reason(self) -> str:
        return "temporal pooling (TemporalPool) needs future frames (it max-pools frame t with t+1)"

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}"
