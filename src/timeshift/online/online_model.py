"""Online (streaming) recognition: a model converted to its streaming form, one frame per call.

A uni-directional TSM shifts the first ``C // fold_div`` channels of each shifted block's input
one frame forward in time. Streaming, frame ``t`` therefore needs exactly one thing from the past
per shift module: those channels of frame ``t - 1``. :class:`OnlineModule` is a copy of the
model whose temporal ops are replaced by their streaming forms (:mod:`timeshift.ops.protocol`:
each op says whether it is causal and how it streams), which take that cache as an explicit
input and return the new one, so one frame costs one 2D forward pass; :class:`OnlineRecognizer`
keeps the caches between calls. Fed the frames of a clip one by one, it gives per frame exactly
the logits that ``model.forward_segments(clip)`` gives per segment.

The model is driven through :class:`FrameModel` (``forward_frames`` then
``forward_frame_head``), which :class:`~timeshift.models.Recognizer` implements; another head
(a detector's) streams by implementing the same two methods.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from timeshift.models.recognizer import check_input_dtype
from timeshift.ops.protocol import StreamingOp, to_streaming

__all__ = ["FrameModel", "OnlineModule", "OnlineRecognizer", "StreamedClips", "online_step"]

_logger = logging.getLogger(__name__)


@runtime_checkable
class FrameModel(Protocol):
    """What :class:`OnlineModule` needs of a model: the per-frame body and the per-frame head.

    ``forward_frames(frames)``: ``(N, C, H, W)`` frames (one per stream) -> the features its
    head reads; the model's temporal ops run inside it. ``forward_frame_head(features)`` -> the
    per-frame output ``(N, K)`` (a classifier's logits). ``in_chans`` is the frame channel
    count. :class:`~timeshift.models.Recognizer` is one; a detector implements the same.
    """

    in_chans: int

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor: ...

    def forward_frame_head(self, features: torch.Tensor) -> torch.Tensor: ...


class OnlineModule(nn.Module):
    """``forward(frame, *caches) -> (logits, *new_caches)`` on ``(N, C, H, W)`` frames.

    The caches are explicit inputs and outputs (one per streaming op, in model order), which is
    what makes the streaming model exportable.

    Args:
        model: a :class:`FrameModel` (a :class:`~timeshift.models.Recognizer`) whose temporal
            ops are causal; it is copied, not changed.
        drop_future: stream a bi-directional shift with zeros for the next frame's channels.

    Raises:
        NotCausalError: (a ``ValueError``) a temporal op of the model reads future frames;
            the message names it and where it is.
    """

    def __init__(self, model: nn.Module, *, drop_future: bool = False) -> None:
        super().__init__()
        if not isinstance(model, FrameModel):
            raise TypeError(
                f"{type(model).__name__} cannot stream: OnlineModule needs forward_frames, "
                "forward_frame_head and in_chans (timeshift.online.FrameModel)"
            )
        online = copy.deepcopy(model).eval()
        self.streaming_ops: list[StreamingOp] = to_streaming(online, drop_future=drop_future)
        if not self.streaming_ops:
            _logger.warning("the model has no temporal op with a cache: streaming it is per-frame")
        self.model = online
        self.num_classes = getattr(model, "num_classes", None)
        self.eval()  # streaming is inference: batch norms use their running statistics

    @property
    def shifts(self) -> list[StreamingOp]:
        """The streaming ops (their name when only shifts could stream)."""
        return self.streaming_ops

    @property
    def num_caches(self) -> int:
        return len(self.streaming_ops)

    @property
    def in_chans(self) -> int:
        """Channels of a frame (3 for RGB, ``2 * new_length`` for a flow model)."""
        return int(self.model.in_chans)

    def forward(self, frame: torch.Tensor, *caches: torch.Tensor):
        """Without caches the past is taken as zeros (the first frame of a stream)."""
        ops = self.streaming_ops
        if caches and len(caches) != len(ops):
            raise ValueError(f"expected {len(ops)} cache tensors, got {len(caches)}")
        for op, cache in zip(ops, caches or [None] * len(ops), strict=True):
            op.cache_in = cache
        model = self.model
        logits = model.forward_frame_head(model.forward_frames(frame))
        new = tuple(op.cache_out for op in ops)
        for op in ops:
            op.cache_in = op.cache_out = None
        return (logits, *new)

    @torch.no_grad()
    def init_caches(self, batch: int, height: int, width: int, *, device=None, dtype=None):
        """Zero caches for ``batch`` streams of ``height x width`` frames (the past before the
        first frame is zeros, as the offline shift pads). Shapes are found by one forward pass
        of a blank frame."""
        device = device or next(self.parameters()).device
        dtype = dtype or next(self.parameters()).dtype
        blank = torch.zeros(batch, self.model.in_chans, height, width, device=device, dtype=dtype)
        _, *caches = self(blank)
        return [torch.zeros_like(c) for c in caches]


def online_step(module: OnlineModule, frame: torch.Tensor, cache: Sequence[torch.Tensor]):
    """The functional core: ``(logits, new_cache) = online_step(module, frame, cache)``."""
    logits, *new = module(frame, *cache)
    return logits, new


class StreamedClips(nn.Module):
    """Clips ``(N, T, C, H, W)`` -> logits ``(N, K)`` computed by streaming: the frames go one
    at a time through the online model and the per-frame logits are averaged, which is what a
    deployed online model reports after the clip. For a uni-directional model this equals the
    offline forward; for a bi-directional one with ``drop_future`` it measures what streaming
    it loses (``timeshift test --online``)."""

    def __init__(self, model: nn.Module, *, drop_future: bool = False) -> None:
        super().__init__()
        self.online = OnlineModule(model, drop_future=drop_future)
        self.num_classes = model.num_classes
        self.num_segments = model.num_segments

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        logits, *caches = self.online(clips[:, 0])  # no caches: the zero past
        total = logits
        for t in range(1, clips.shape[1]):
            logits, *caches = self.online(clips[:, t], *caches)
            total = total + logits
        return total / clips.shape[1]


class OnlineRecognizer:
    """Frame-by-frame recognition with a uni-directional temporal model.

    Args:
        model: a :class:`~timeshift.models.Recognizer` built with
            ``direction="unidirectional"`` (bi-directional models only with ``drop_future``).
        drop_future: stream a bi-directional model, zero-filling the channels it would take
            from the next frame (it was not trained that way: expect lower accuracy).

    ``step(frame)`` takes ``(C, H, W)`` (one stream) or ``(N, C, H, W)`` (N independent
    streams) and returns the logits of that frame, ``(K,)`` or ``(N, K)``.
    """

    def __init__(self, model: nn.Module, *, drop_future: bool = False) -> None:
        self.module = OnlineModule(model, drop_future=drop_future)
        self.cache: list[torch.Tensor] | None = None
        self._key: tuple | None = None

    def reset(self) -> None:
        """Forget the past: the next frame starts new streams."""
        self.cache = None
        self._key = None

    @torch.no_grad()
    def step(self, frame: torch.Tensor) -> torch.Tensor:
        single = frame.dim() == 3
        frames = frame.unsqueeze(0) if single else frame
        if frames.dim() != 4:
            raise ValueError(f"expected a frame (C, H, W) or frames (N, C, H, W), got "
                             f"{tuple(frame.shape)}")  # fmt: skip
        param = next(self.module.parameters(), None)
        if param is not None:
            check_input_dtype(frames, param.dtype, what="frames")
        key = (frames.shape[0], *frames.shape[2:])
        if self.cache is None:
            self.cache = self.module.init_caches(*key, device=frames.device, dtype=frames.dtype)
            self._key = key
        elif key != self._key:
            raise ValueError(
                f"frames of shape {tuple(frames.shape)} do not continue the streams of shape "
                f"{self._key} (N, H, W); call reset() to start new streams"
            )
        logits, self.cache = online_step(self.module, frames, self.cache)
        return logits[0] if single else logits

    @property
    def cache_floats(self) -> int:
        """Floats held per stream (0 before the first frame)."""
        if not self.cache:
            return 0
        return sum(c[0].numel() for c in self.cache)

    @property
    def cache_bytes(self) -> int:
        """Bytes held per stream."""
        if not self.cache:
            return 0
        return sum(c[0].numel() * c.element_size() for c in self.cache)
