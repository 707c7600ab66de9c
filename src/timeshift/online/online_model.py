"""Online (streaming) recognition with a uni-directional temporal shift.

A uni-directional TSM shifts the first ``C // fold_div`` channels of each shifted block's input
one frame forward in time. Streaming, frame ``t`` therefore needs exactly one thing from the past
per shift module: those channels of frame ``t - 1``. :class:`OnlineModule` is a copy of the
model whose shift modules take that cache as an explicit input and return the new one, so one
frame costs one 2D forward pass; :class:`OnlineRecognizer` keeps the caches between calls.
Fed the frames of a clip one by one, it gives per frame exactly the logits that
``model.forward_segments(clip)`` gives per segment.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import nn

from timeshift.models.recognizer import check_input_dtype
from timeshift.ops.aggregation import TemporalAggregation
from timeshift.ops.inflate import InflatedConv
from timeshift.ops.pool import TemporalPool
from timeshift.ops.shift import TemporalShift, _tracing, shift_offsets
from timeshift.ops.shuffle import VideoShuffle
from timeshift.ops.st_shift import SpatioTemporalShift

__all__ = ["OnlineModule", "OnlineRecognizer", "OnlineShift", "StreamedClips", "online_step"]

_logger = logging.getLogger(__name__)

# temporal ops that read the next frame (or all frames) and have no causal form here
_OFFLINE_OPS = (TemporalAggregation, InflatedConv, VideoShuffle, SpatioTemporalShift)


class OnlineShift(nn.Module):
    """Streaming form of a :class:`TemporalShift`: past channels come from the cache.

    ``offsets`` are the shift's source offsets per channel group (-1: previous frame; +1: next
    frame, unavailable online and zero-filled when ``drop_future``).

    At inference the shifted channels are written into the input in place, the wrapped module
    runs, and the input is restored: three copies of ``C // fold_div`` channels instead of a
    copy of the whole input, which is what keeps a frame as fast as the plain 2D model.
    Tracing and export use the equivalent out-of-place form (a concatenation).
    """

    def __init__(self, shift: TemporalShift, *, drop_future: bool = False) -> None:
        super().__init__()
        offsets = shift_offsets(shift.direction)
        if any(o > 0 for o in offsets) and not drop_future:
            raise ValueError(
                "this model shifts channels from future frames (bidirectional); streaming it "
                "drops that information: build it with direction='unidirectional', or pass "
                "drop_future=True to stream it anyway"
            )
        self.net = shift.net
        self.fold_div = shift.fold_div
        self.offsets = offsets
        # the channel count is fixed by the wrapped conv; knowing it statically keeps traced
        # graphs free of shape arithmetic
        conv = next((m for m in self.net.modules() if isinstance(m, nn.Conv2d)), None)
        self.channels = conv.in_channels if conv is not None else None
        self.cache_in: torch.Tensor | None = None
        self.cache_out: torch.Tensor | None = None
        # the common case (one past group, channels known) gets a forward of four tensor ops:
        # at one frame per call, per-op overhead is most of what the shift costs
        uni = len(offsets) == 1 and offsets[0] < 0 and self.channels is not None
        self._cached = self.channels // self.fold_div if uni else 0

    def fold(self, x: torch.Tensor) -> int:
        return (self.channels or int(x.shape[1])) // self.fold_div

    def cache_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        n, _, h, w = x.shape
        return (n, self.fold(x) * sum(o < 0 for o in self.offsets), h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        past, k = self.cache_in, self._cached
        if k and past is not None and not torch.is_grad_enabled() and not _tracing():
            head = x[:, :k]
            saved = head.clone()  # the next frame's cache
            head.copy_(past)
            try:
                return self.net(x)
            finally:  # the block's shortcut still needs the unshifted input
                head.copy_(saved)
                self.cache_out = saved
        fold = self.fold(x)
        if fold == 0:
            self.cache_out = x[:, :0]
            return self.net(x)
        past = self.cache_in
        if past is None:  # the first frame: nothing in the past
            past = x.new_zeros(self.cache_shape(x))
        if torch.is_grad_enabled() or _tracing():
            return self._forward_functional(x, past, fold)
        return self._forward_inplace(x, past, fold)

    def _forward_functional(self, x, past, fold):
        if all(o < 0 for o in self.offsets):  # every shifted group comes from the past
            k = past.shape[1]
            self.cache_out = x[:, :k]
            return self.net(torch.cat([past, x[:, k:]], dim=1))
        parts, k = [], 0
        for i, offset in enumerate(self.offsets):
            if offset < 0:
                parts.append(past[:, k * fold : (k + 1) * fold])
                k += 1
            else:  # the future is not known yet
                parts.append(torch.zeros_like(x[:, i * fold : (i + 1) * fold]))
        parts.append(x[:, len(self.offsets) * fold :])
        # the channels the next frame will need from this one
        self.cache_out = torch.cat(
            [x[:, i * fold : (i + 1) * fold] for i, o in enumerate(self.offsets) if o < 0], dim=1
        )
        return self.net(torch.cat(parts, dim=1))

    def _forward_inplace(self, x, past, fold):
        shifted = x[:, : len(self.offsets) * fold]
        saved = shifted.clone()
        past_groups = [i for i, o in enumerate(self.offsets) if o < 0]
        if len(past_groups) == len(self.offsets):
            self.cache_out = saved
        else:
            self.cache_out = torch.cat(
                [saved[:, i * fold : (i + 1) * fold] for i in past_groups], 1
            )
        k = 0
        for i, offset in enumerate(self.offsets):
            group = x[:, i * fold : (i + 1) * fold]
            if offset < 0:
                group.copy_(past[:, k * fold : (k + 1) * fold])
                k += 1
            else:
                group.zero_()
        try:
            return self.net(x)
        finally:  # the block's shortcut still needs the unshifted input
            shifted.copy_(saved)


class OnlineModule(nn.Module):
    """``forward(frame, *caches) -> (logits, *new_caches)`` on ``(N, C, H, W)`` frames.

    The caches are explicit inputs and outputs (one per shift module, in model order), which is
    what makes the streaming model exportable.
    """

    def __init__(self, model: nn.Module, *, drop_future: bool = False) -> None:
        super().__init__()
        if any(isinstance(m, TemporalPool) for m in model.modules()):
            raise ValueError("temporal pooling needs future frames: it cannot run online")
        if any(type(m).__name__ == "NonLocalWrapper" for m in model.modules()):
            raise ValueError("non-local blocks attend to future frames: they cannot run online")
        offline = next((m for m in model.modules() if isinstance(m, _OFFLINE_OPS)), None)
        if offline is not None:
            raise ValueError(
                f"{type(offline).__name__} mixes in future frames: only uni-directional "
                "temporal shifts can run online (streaming needs a causal model)"
            )
        online = copy.deepcopy(model).eval()
        self.shifts: list[OnlineShift] = []
        _swap_shifts(online, self.shifts, drop_future)
        if not self.shifts:
            _logger.warning("the model has no temporal shift: streaming it is per-frame 2D")
        self.model = online
        self.num_classes = getattr(model, "num_classes", None)
        self.eval()  # streaming is inference: batch norms use their running statistics

    @property
    def num_caches(self) -> int:
        return len(self.shifts)

    def forward(self, frame: torch.Tensor, *caches: torch.Tensor):
        """Without caches the past is taken as zeros (the first frame of a stream)."""
        if caches and len(caches) != len(self.shifts):
            raise ValueError(f"expected {len(self.shifts)} cache tensors, got {len(caches)}")
        for shift, cache in zip(self.shifts, caches or [None] * len(self.shifts), strict=True):
            shift.cache_in = cache
        model = self.model
        frames = frame.contiguous(memory_format=torch.channels_last) if getattr(
            model, "channels_last", False) else frame  # fmt: skip
        feats = model.backbone.forward_features(frames)
        logits = model.fc(feats.mean(dim=(2, 3)))
        new = tuple(shift.cache_out for shift in self.shifts)
        for shift in self.shifts:
            shift.cache_in = shift.cache_out = None
        return (logits, *new)

    @torch.no_grad()
    def init_caches(self, batch: int, height: int, width: int, *, device=None, dtype=None):
        """Zero caches for ``batch`` streams of ``height x width`` frames (the past before the
        first frame is zeros, as the offline shift pads). Shapes are found by one forward pass
        of a blank frame."""
        device = device or next(self.parameters()).device
        dtype = dtype or next(self.parameters()).dtype
        in_chans = getattr(self.model, "in_chans", 3)
        blank = torch.zeros(batch, in_chans, height, width, device=device, dtype=dtype)
        _, *caches = self(blank)
        return [torch.zeros_like(c) for c in caches]


def _swap_shifts(module: nn.Module, found: list, drop_future: bool) -> None:
    for name, child in module.named_children():
        if isinstance(child, TemporalShift):
            online = OnlineShift(child, drop_future=drop_future)
            setattr(module, name, online)
            found.append(online)
            _swap_shifts(online.net, found, drop_future)
        else:
            _swap_shifts(child, found, drop_future)


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
