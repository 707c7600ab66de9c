"""Embedded-Gaussian non-local blocks (Wang et al. 2018) placed after ResNet blocks.

Key layout follows the reference TSM checkpoints (``layer2.0.block.*`` for the wrapped residual
block, ``layer2.0.nl.{theta,phi.0,g.0,W.0,W.1}.*``) so that TSM-NL weights load directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from timeshift.ops.protocol import TemporalOp

__all__ = ["NON_LOCAL_PLACEMENT", "NonLocalBlock3d", "NonLocalWrapper", "add_non_local"]

# the reference placement for ResNet-50: after layer2 blocks 0, 2 and layer3 blocks 0, 2, 4
NON_LOCAL_PLACEMENT: dict[str, tuple[int, ...]] = {"layer2": (0, 2), "layer3": (0, 2, 4)}


class NonLocalBlock3d(nn.Module):
    """Space-time self-attention with a residual connection, on ``(N, C, T, H, W)``.

    ``phi`` and ``g`` are spatially max-pooled by 2 (``sub_sample``), ``W`` ends in a BN whose
    affine parameters start at zero so that a new block is initially the identity.
    """

    def __init__(self, in_channels: int, inter_channels: int | None = None, *, sub_sample=True):
        super().__init__()
        self.in_channels = in_channels
        self.inter_channels = inter_channels or max(in_channels // 2, 1)
        inter = self.inter_channels
        self.theta = nn.Conv3d(in_channels, inter, kernel_size=1)
        phi = nn.Conv3d(in_channels, inter, kernel_size=1)
        g = nn.Conv3d(in_channels, inter, kernel_size=1)
        if sub_sample:
            self.phi = nn.Sequential(phi, nn.MaxPool3d(kernel_size=(1, 2, 2)))
            self.g = nn.Sequential(g, nn.MaxPool3d(kernel_size=(1, 2, 2)))
        else:
            self.phi, self.g = phi, g
        self.W = nn.Sequential(
            nn.Conv3d(inter, in_channels, kernel_size=1), nn.BatchNorm3d(in_channels)
        )
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        theta = self.theta(x).reshape(n, self.inter_channels, -1).transpose(1, 2)
        phi = self.phi(x).reshape(n, self.inter_channels, -1)
        g = self.g(x).reshape(n, self.inter_channels, -1).transpose(1, 2)
        attention = F.softmax(torch.matmul(theta, phi), dim=-1)
        y = torch.matmul(attention, g).transpose(1, 2).reshape(n, self.inter_channels, *x.shape[2:])
        return x + self.W(y)


def _out_channels(block: nn.Module) -> int:
    for name in ("bn3", "bn2"):
        norm = getattr(block, name, None)
        if isinstance(norm, nn.BatchNorm2d):
            return norm.num_features
    raise TypeError(
        f"cannot find the output channels of {type(block).__name__}: expected a ResNet "
        "Bottleneck (bn3) or BasicBlock (bn2)"
    )


class NonLocalWrapper(TemporalOp):
    """Run a residual block on ``(N*T, C, H, W)``, then a non-local block over its T frames."""

    def __init__(self, block: nn.Module, num_segments: int) -> None:
        super().__init__()
        self.block = block
        self.nl = NonLocalBlock3d(_out_channels(block))
        self.num_segments = num_segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        nt, c, h, w = x.shape
        x5 = x.view(nt // self.num_segments, self.num_segments, c, h, w).transpose(1, 2)
        return self.nl(x5).transpose(1, 2).reshape(nt, c, h, w)

    def not_causal_reason(self) -> str:
        return "non-local blocks (NonLocalWrapper) attend to future frames: to all T of the clip"

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}"


def _unwrap_stage(module: nn.Module) -> nn.Sequential:
    # a stage may be wrapped by TemporalPool (weights under .net)
    while not isinstance(module, nn.Sequential) and hasattr(module, "net"):
        module = module.net
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"expected an nn.Sequential stage, got {type(module).__name__}")
    return module


def add_non_local(
    backbone: nn.Module,
    *,
    num_segments: int | Mapping[str, int],
    placement: Mapping[str, Sequence[int]] = NON_LOCAL_PLACEMENT,
) -> nn.Module:
    """Wrap the blocks named by ``placement`` in :class:`NonLocalWrapper` (in place).

    Args:
        backbone: a ResNet-like module with ``layer2``/``layer3`` stages.
        num_segments: frames per video, or a per-stage mapping when temporal pooling changed it.
        placement: stage name -> block indices.
    """
    for stage_name, indices in placement.items():
        stage = _unwrap_stage(getattr(backbone, stage_name))
        segments = num_segments if isinstance(num_segments, int) else num_segments[stage_name]
        for index in indices:
            if index >= len(stage):
                raise ValueError(
                    f"non-local placement asks for {stage_name}[{index}] but the stage has "
                    f"{len(stage)} blocks"
                )
            stage[index] = NonLocalWrapper(stage[index], segments)
    return backbone
