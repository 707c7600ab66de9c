"""Video shuffle (VSN): regroup channels across all frames of a clip, and its inverse.

Ma et al., *Learning Efficient Video Representation with Video Shuffle Networks*, Eq. 1. On a
``(N*T, C, H, W)`` tensor viewed as ``(N, T, C, H, W)``, each frame's channels are split into
``groups`` equal pieces of ``eta = C // groups`` channels. With the paper's setting
``groups = T``, the new frame ``i`` is the stack of piece ``i`` of every frame, in frame order::

    out[:, i, j*eta:(j+1)*eta] = x[:, j, i*eta:(i+1)*eta]      (0 <= i, j < T)

so every new frame carries a slice of every original frame. For ``groups == T`` this is a
transpose of the (frame, piece) grid and therefore its own inverse.

Other group counts (the paper only uses ``groups = T``): the ``T x groups`` pieces are read
group-major (piece 0 of frames ``0..T-1``, then piece 1 of frames ``0..T-1``, ...) and cut into
``T`` new frames of ``groups`` pieces each, ShuffleNet's channel shuffle over the clip. Each new
frame still has ``C`` channels; when ``groups`` is a multiple of ``T`` every new frame again holds
pieces of all ``T`` frames (``groups = 2T``: two pieces of each frame, of ``C / 2T`` channels),
while ``groups < T`` mixes only ``groups`` consecutive frames into each new frame and
``groups = 1`` is the identity. :func:`video_unshuffle` undoes :func:`video_shuffle` for every
``groups``.
"""

from __future__ import annotations

import warnings

import torch

from timeshift.ops.protocol import TemporalOp
from timeshift.ops.shift import _tracing, check_frames

__all__ = [
    "VideoShuffle",
    "VideoUnshuffle",
    "check_shuffle_channels",
    "video_shuffle",
    "video_unshuffle",
]


def check_shuffle_channels(channels: int, num_segments: int, groups: int | None = None) -> int:
    """Validate a channel count for video shuffle and return the group count used.

    Args:
        channels: ``C`` of the tensor to shuffle.
        num_segments: frames per video ``T``.
        groups: channel groups per frame; ``None`` means ``T`` (the paper's setting).

    Raises:
        ValueError: ``T < 1``, ``groups < 1`` or ``C`` not divisible by the group count.
    """
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    groups = num_segments if groups is None else groups
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if channels % groups:
        raise ValueError(
            f"video shuffle splits each frame's C={channels} channels into {groups} equal groups "
            f"(T={num_segments}), but {channels} is not divisible by {groups}; use a channel "
            f"count that is a multiple of {groups} or another group count"
        )
    return groups


def _check_input(x: torch.Tensor, num_segments: int, groups: int | None, name: str) -> int:
    check_frames(x, num_segments, name)
    return check_shuffle_channels(int(x.shape[1]), num_segments, groups)


def _checked_groups(x: torch.Tensor, num_segments: int, groups: int | None, name: str) -> int:
    if _tracing():
        # shapes are model constants here: the checks need not become graph ops
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return _check_input(x, num_segments, groups, name)
    return _check_input(x, num_segments, groups, name)


def _regroup(x: torch.Tensor, rows: int, cols: int, num_segments: int) -> torch.Tensor:
    """Transpose the per-clip grid of channel pieces from ``(rows, cols)`` to ``(cols, rows)``.

    A clip's ``T * C`` channels, frame-major, are ``rows x cols`` pieces of ``T * C /
    (rows * cols)`` channels; reading them column-major and cutting into ``T`` frames again is
    the shuffle (``rows = T, cols = groups``) or its inverse (``rows = groups, cols = T``).
    """
    nt, c, h, w = x.shape
    n = nt // num_segments
    piece = num_segments * c // (rows * cols)
    out = x.reshape(n, rows, cols, piece, h, w).transpose(1, 2).reshape(nt, c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def video_shuffle(x: torch.Tensor, num_segments: int, groups: int | None = None) -> torch.Tensor:
    """Regroup channels across frames: new frame ``i`` stacks group ``i`` of every frame.

    Args:
        x: frames folded into the batch, shape ``(N*T, C, H, W)``.
        num_segments: ``T``, the number of frames per video.
        groups: channel groups per frame (``C`` must be divisible by it); ``None`` = ``T``, the
            paper's Eq. 1. See the module docstring for other values.

    Returns:
        The shuffled tensor, same shape and memory format as ``x``. Differentiable (its
        gradient is the inverse shuffle); no parameters and no arithmetic.

    Raises:
        ValueError: ``x`` is not 4-D, ``N*T`` is not a multiple of ``T``, or ``C`` is not
            divisible by the group count.
    """
    groups = _checked_groups(x, num_segments, groups, "video_shuffle")
    return _regroup(x, num_segments, groups, num_segments)


def video_unshuffle(x: torch.Tensor, num_segments: int, groups: int | None = None) -> torch.Tensor:
    """Inverse of :func:`video_shuffle` with the same ``num_segments`` and ``groups``.

    ``video_unshuffle(video_shuffle(x, T, g), T, g) == x`` for every valid ``g``; for
    ``g == T`` (the default) both functions compute the same permutation.

    Args:
        x: frames folded into the batch, shape ``(N*T, C, H, W)``.
        num_segments: ``T``, the number of frames per video.
        groups: channel groups per frame used by the shuffle; ``None`` = ``T``.

    Returns:
        The restored tensor, same shape and memory format as ``x``.
    """
    groups = _checked_groups(x, num_segments, groups, "video_unshuffle")
    return _regroup(x, groups, num_segments, num_segments)


class _Regroup(TemporalOp):
    def __init__(self, num_segments: int, groups: int | None = None) -> None:
        super().__init__()
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        if groups is not None and groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.num_segments = num_segments
        self.groups = groups

    def not_causal_reason(self) -> str:
        return (
            f"{type(self).__name__} mixes in future frames (a regrouped frame holds channels "
            "of later frames of the clip)"
        )

    def extra_repr(self) -> str:
        groups = self.num_segments if self.groups is None else self.groups
        return f"num_segments={self.num_segments}, groups={groups}"


class VideoShuffle(_Regroup):
    """:func:`video_shuffle` as a parameter-free module.

    Args:
        num_segments: frames per video ``T``.
        groups: channel groups per frame; ``None`` = ``T`` (the paper).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return video_shuffle(x, self.num_segments, self.groups)


class VideoUnshuffle(_Regroup):
    """:func:`video_unshuffle` as a parameter-free module.

    Args:
        num_segments: frames per video ``T``.
        groups: channel groups per frame used by the shuffle; ``None`` = ``T``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return video_unshuffle(x, self.num_segments, self.groups)
