"""Spatio-temporal shift (STSM): shift channel groups by one position along T, H and W.

Yang and An, *STSM: Spatio-Temporal Shift Module for Efficient Action Recognition*, sections 3.2
and 5.1. On a ``(N*T, C, H, W)`` tensor viewed as ``(N, T, C, H, W)``, a fraction ``alpha`` of
the channels is shifted and the rest is copied unchanged. ``dims`` lists the shift parts, e.g.
``"T+H+W"`` (the paper's STSM): the shifted channels are split equally among the parts, in the
order listed, starting at channel 0; each part's channels are split in two halves, the first
half shifted one way and the second the other, by one position along the part's axes, with
zeros shifted in past the borders.

With ``k`` parts and ``fold = floor(alpha * C / (2k))`` channels per half, part ``p`` covers
channels ``[2p*fold, (2p+2)*fold)`` and, for each axis ``a`` of the part::

    first half:   out[..., a=i, ...] = x[..., a=i+1, ...]   (0 past the last position)
    second half:  out[..., a=i, ...] = x[..., a=i-1, ...]   (0 before the first position)

A part with one axis (``T``, ``H``, ``W``) is a 1-D shift; a part with two axes (``HW``, ``TH``,
``TW``) is the 2-D shift that moves the same channels by one position along both axes at once
(the composition of the two 1-D shifts: the first half reads from ``(i+1, j+1)``, the second
from ``(i-1, j-1)``). ``dims="T"`` with ``alpha=1/4`` is exactly TSM's bi-directional shift
with ``fold_div=8`` (first fold from ``t+1``, second from ``t-1``).
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import torch
from torch import nn

from timeshift.ops.protocol import TemporalOp
from timeshift.ops.shift import _tracing, check_frames

__all__ = [
    "DIMS",
    "SpatioTemporalShift",
    "parse_dims",
    "spatiotemporal_shift",
    "st_shift_fold",
    "st_shift_groups",
]

# the settings of the paper's Tables 2 and 3; "T+H+W" is STSM
DIMS: tuple[str, ...] = (
    "T",
    "H",
    "W",
    "H+W",
    "HW",
    "T+H+W",
    "T+HW",
    "T+H+W+HW",
    "TH+TW+HW",
    "T+H+W+TH+TW+HW",
)
# axis of each letter in the (N, T, C, H, W) view
_AXES = {"T": 1, "H": 3, "W": 4}


def parse_dims(dims: str) -> tuple[str, ...]:
    """Split a shift setting such as ``"T+H+W"`` into its parts (``("T", "H", "W")``).

    Raises:
        ValueError: ``dims`` is not one of :data:`DIMS`.
    """
    normalized = "".join(str(dims).split()).upper()
    if normalized not in DIMS:
        raise ValueError(f"unknown shift dims {dims!r}; expected one of {list(DIMS)}")
    return tuple(normalized.split("+"))


def _ratio(alpha: float) -> Fraction:
    if not 0 <= alpha <= 1:
        raise ValueError(
            f"alpha (the shifted fraction of the channels) must be in [0, 1], got {alpha}"
        )
    # 3/8, 1/3, ... as exact fractions so that e.g. 48 * 1/3 does not round down to 15
    return Fraction(alpha).limit_denominator(10_000)


def st_shift_fold(channels: int, alpha: float = 3 / 8, dims: str = "T+H+W") -> int:
    """Channels in each shifted half-part: ``floor(alpha * C / (2 * parts))``."""
    parts = parse_dims(dims)
    return int(channels * _ratio(alpha) / (2 * len(parts)))


def st_shift_groups(
    channels: int, alpha: float = 3 / 8, dims: str = "T+H+W"
) -> list[tuple[int, int, dict[str, int]]]:
    """The channel layout of a spatio-temporal shift.

    Returns:
        ``(start, stop, offsets)`` per shifted channel group, in channel order, where
        ``offsets`` maps each shifted axis (``"T"``, ``"H"``, ``"W"``) to the source offset:
        ``out[i] = x[i + offset]``. Channels from the last ``stop`` on are unchanged.
    """
    fold = st_shift_fold(channels, alpha, dims)
    groups: list[tuple[int, int, dict[str, int]]] = []
    if fold == 0:
        return groups
    for p, part in enumerate(parse_dims(dims)):
        for half, offset in enumerate((1, -1)):
            start = (2 * p + half) * fold
            groups.append((start, start + fold, dict.fromkeys(part, offset)))
    return groups


def _check_input(x: torch.Tensor, num_segments: int) -> None:
    check_frames(x, num_segments, "spatiotemporal_shift")


def _shift_along(x5: torch.Tensor, axis: int, offset: int) -> torch.Tensor:
    """``out[i] = x[i + offset]`` along ``axis``, zeros where ``i + offset`` is out of range."""
    length = x5.shape[axis]
    zeros = torch.zeros_like(x5.narrow(axis, 0, 1))
    if offset == 1:
        return torch.cat((x5.narrow(axis, 1, length - 1), zeros), dim=axis)
    return torch.cat((zeros, x5.narrow(axis, 0, length - 1)), dim=axis)


def spatiotemporal_shift(
    x: torch.Tensor, num_segments: int, *, alpha: float = 3 / 8, dims: str = "T+H+W"
) -> torch.Tensor:
    """Shift ``alpha`` of the channels of ``x`` by one position along T, H and/or W.

    Args:
        x: frames folded into the batch, shape ``(N*T, C, H, W)``; contiguous or channels_last.
        num_segments: ``T``, the number of frames per video.
        alpha: fraction of the channels that is shifted (the paper's alpha, 3/8 for STSM). Each
            of the ``k`` parts of ``dims`` gets ``2 * floor(alpha * C / (2k))`` channels.
        dims: the shift parts, one of :data:`DIMS` (``"T+H+W"`` is STSM; ``"HW"`` is a 2-D
            shift along H and W at once, see the module docstring).

    Returns:
        The shifted tensor, same shape and memory format as ``x``. Differentiable; no
        parameters and no arithmetic.

    Raises:
        ValueError: ``x`` is not 4-D, ``N*T`` is not a multiple of ``T``, ``alpha`` is outside
            ``[0, 1]`` or ``dims`` is unknown.
    """
    if _tracing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            _check_input(x, num_segments)
            groups = st_shift_groups(int(x.shape[1]), alpha, dims)
    else:
        _check_input(x, num_segments)
        groups = st_shift_groups(x.shape[1], alpha, dims)
    if not groups:
        return x.clone()
    nt, c, h, w = x.shape
    x5 = x.reshape(nt // num_segments, num_segments, c, h, w)
    parts = []
    for start, stop, offsets in groups:
        group = x5[:, :, start:stop]
        for axis, offset in offsets.items():
            group = _shift_along(group, _AXES[axis], offset)
        parts.append(group)
    parts.append(x5[:, :, groups[-1][1] :])
    out = torch.cat(parts, dim=2).reshape(nt, c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class SpatioTemporalShift(TemporalOp):
    """Spatio-temporal shift of the input, then the wrapped module.

    The wrapped module's weights stay under ``.net`` (``layer1.0.conv1.net.weight``), as with
    :class:`~timeshift.ops.TemporalShift`, so TSM checkpoints initialise STSM models (the paper
    starts from MMAction2's TSM weights).

    Args:
        net: module applied after the shift (typically the first conv of a residual branch);
            ``None`` for a bare shift.
        num_segments: frames per video ``T`` at this layer.
        alpha: fraction of the channels shifted (3/8 in the paper).
        dims: shift parts, one of :data:`DIMS` (``"T+H+W"`` in the paper).
    """

    def __init__(
        self,
        net: nn.Module | None,
        num_segments: int,
        alpha: float = 3 / 8,
        dims: str = "T+H+W",
    ) -> None:
        super().__init__()
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        _ratio(alpha)  # validate early
        self.net = net if net is not None else nn.Identity()
        self.num_segments = num_segments
        self.alpha = alpha
        self.dims = "+".join(parse_dims(dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = spatiotemporal_shift(x, self.num_segments, alpha=self.alpha, dims=self.dims)
        return self.net(x)

    @property
    def causal(self) -> bool:
        """Causal when no part shifts along T (then each frame is shifted on its own)."""
        return "T" not in self.dims

    def not_causal_reason(self) -> str:
        return (
            f"SpatioTemporalShift mixes in future frames (dims={self.dims!r}: a part along T "
            "shifts channels from the next frame)"
        )

    def to_streaming(self, *, drop_future: bool = False) -> nn.Module:
        """Without a T part the shift is per frame: the same shift on clips of one frame."""
        if not self.causal:
            return super().to_streaming(drop_future=drop_future)
        return SpatioTemporalShift(self.net, 1, alpha=self.alpha, dims=self.dims)

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, alpha={float(self.alpha):g}, dims={self.dims}"
