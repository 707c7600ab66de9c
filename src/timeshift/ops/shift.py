"""Temporal shift (TSM): move a fraction of the channels one step along time.

Semantics follow the reference TSM implementation exactly so that its checkpoints work. On a
``(N*T, C, H, W)`` tensor viewed as ``(N, T, C, H, W)`` with ``fold = C // fold_div``:

* bi-directional (offline): ``out[:, t, :fold] = x[:, t+1, :fold]`` and
  ``out[:, t, fold:2*fold] = x[:, t-1, fold:2*fold]``;
* uni-directional (online): ``out[:, t, :fold] = x[:, t-1, :fold]``;

the remaining channels are copied unchanged and frames shifted in from past either end are zero.

Internally a shift is described by one source offset per channel group of width ``fold``:
``out[:, t, group_i] = x[:, t + offsets[i], group_i]``. The gradient of a shift is the shift with
the offsets negated, which is how both the out-of-place and the in-place autograd functions
implement their backward passes.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from timeshift.errors import TimeshiftError
from timeshift.ops.protocol import NotCausalError, StreamingOp, TemporalOp

try:  # optional native CPU kernel (see _kernels.c)
    from timeshift.ops import _kernels
except ImportError:  # not compiled: the PyTorch implementation below is used
    _kernels = None

__all__ = [
    "DIRECTIONS",
    "OnlineShift",
    "TemporalShift",
    "native_kernel",
    "native_kernel_available",
    "set_fast_inference",
    "shift_offsets",
    "temporal_shift",
]

# TIMESHIFT_NATIVE=0 switches the native kernel off (comparisons, debugging)
_use_native = _kernels is not None and os.environ.get("TIMESHIFT_NATIVE", "1") != "0"

Direction = Literal["bidirectional", "unidirectional"]
DIRECTIONS: dict[str, tuple[int, ...]] = {
    # first fold looks one frame ahead, second fold one frame back
    "bidirectional": (1, -1),
    # only the past: the first fold comes from the previous frame (the online demo's cache)
    "unidirectional": (-1,),
}


def shift_offsets(direction: str) -> tuple[int, ...]:
    """Source time offsets, one per shifted channel group, for a named direction."""
    try:
        return DIRECTIONS[direction]
    except KeyError:
        raise ValueError(
            f"unknown shift direction {direction!r}; expected one of {sorted(DIRECTIONS)}"
        ) from None


def check_frames(x: torch.Tensor, num_segments: int, name: str = "temporal_shift") -> None:
    """Raise unless ``x`` is ``(N*T, C, H, W)`` frames of clips of ``num_segments`` frames."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects a (N*T, C, H, W) tensor, got shape {tuple(x.shape)}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if x.shape[0] % num_segments:
        raise ValueError(
            f"batch dimension {x.shape[0]} is not a multiple of num_segments={num_segments}; "
            "frames must be folded into the batch as (N*T, C, H, W)"
        )


def _fold(channels: int, fold_div: int, groups: int) -> int:
    if fold_div < 1:
        raise ValueError(f"fold_div must be >= 1, got {fold_div}")
    fold = channels // fold_div
    if fold * groups > channels:
        raise ValueError(
            f"fold_div={fold_div} shifts {groups} x {fold} channels but the input has only "
            f"{channels}; use fold_div >= {groups}"
        )
    return fold


def _time_ranges(num_segments: int, offset: int) -> tuple[slice, slice, slice]:
    """(destination, source, zero-filled) frame slices for ``out[t] = x[t + offset]``."""
    if offset == 1:
        return slice(0, num_segments - 1), slice(1, num_segments), slice(num_segments - 1, None)
    if offset == -1:
        return slice(1, num_segments), slice(0, num_segments - 1), slice(0, 1)
    raise ValueError(f"shift offsets must be +1 or -1, got {offset}")


def _shift_into(out5: torch.Tensor, x5: torch.Tensor, fold: int, offsets: tuple[int, ...]) -> None:
    """Write the shift of ``x5`` into the (uninitialised) ``out5``: one read and one write."""
    num_segments = x5.shape[1]
    for i, offset in enumerate(offsets):
        channels = slice(i * fold, (i + 1) * fold)
        dst, src, empty = _time_ranges(num_segments, offset)
        out5[:, dst, channels].copy_(x5[:, src, channels])
        out5[:, empty, channels].zero_()
    rest = slice(len(offsets) * fold, None)
    out5[:, :, rest].copy_(x5[:, :, rest])


def native_kernel_available() -> bool:
    """Whether the compiled shift kernel (``_kernels.c``) is built and enabled."""
    return _use_native


@contextlib.contextmanager
def native_kernel(enabled: bool) -> Iterator[None]:
    """Temporarily switch the native kernel on or off (it stays off where it is not built)."""
    global _use_native
    previous = _use_native
    _use_native = enabled and _kernels is not None
    try:
        yield
    finally:
        _use_native = previous


def _shift_native(x: torch.Tensor, num_segments: int, fold: int, offsets: tuple[int, ...]):
    """The compiled kernel, or None where it does not apply (device, layout, not built)."""
    if not _use_native or x.device.type != "cpu" or x.numel() == 0:
        return None
    nt, c, h, w = x.shape
    size = x.element_size()
    if x.is_contiguous():
        # one "row" per frame: groups are runs of fold*H*W elements
        geometry = (1, c * h * w * size, fold * h * w * size)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    elif x.is_contiguous(memory_format=torch.channels_last):
        # one row of C elements per pixel
        geometry = (h * w, c * size, fold * size)
        out = torch.empty_like(x, memory_format=torch.channels_last)
    else:
        return None
    _kernels.shift(x.data_ptr(), out.data_ptr(), nt, num_segments, *geometry, offsets)
    return out


def _shift_fast(x: torch.Tensor, num_segments: int, fold: int, offsets: tuple[int, ...]):
    """Out-of-place shift, eager: one read and one write of the tensor."""
    out = _shift_native(x, num_segments, fold, offsets)
    if out is not None:
        return out
    # empty_like keeps the memory format (channels_last stays channels_last).
    out = torch.empty_like(x)
    shape = (x.shape[0] // num_segments, num_segments, *x.shape[1:])
    _shift_into(out.view(shape), x.view(shape), fold, offsets)
    return out


def _shift_functional(x: torch.Tensor, num_segments: int, fold: int, offsets: tuple[int, ...]):
    """The same shift written with slicing and concatenation only.

    Used while tracing/exporting: graph exporters turn it into Slice/Concat nodes that stay
    correct for new inputs and dynamic batch sizes, instead of in-place writes into a buffer.
    """
    nt, c, h, w = x.shape
    x5 = x.reshape(nt // num_segments, num_segments, c, h, w)
    parts = []
    for i, offset in enumerate(offsets):
        group = x5[:, :, i * fold : (i + 1) * fold]
        zeros = torch.zeros_like(group[:, :1])
        if offset == 1:
            parts.append(torch.cat((group[:, 1:], zeros), dim=1))
        else:
            parts.append(torch.cat((zeros, group[:, :-1]), dim=1))
    parts.append(x5[:, :, len(offsets) * fold :])
    out = torch.cat(parts, dim=2).reshape(nt, c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _tracing() -> bool:
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


class _Shift(torch.autograd.Function):
    """Out-of-place shift whose backward is the reverse shift (no slice-copy autograd graph)."""

    @staticmethod
    def forward(ctx, x, num_segments, fold, offsets):
        ctx.shift_args = (num_segments, fold, tuple(-o for o in offsets))
        return _shift_fast(x, num_segments, fold, offsets)

    @staticmethod
    def backward(ctx, grad):
        return _Shift.apply(grad, *ctx.shift_args), None, None, None


class _InplaceShift(torch.autograd.Function):
    """Shift that overwrites its input; backward applies the reverse shift to the gradient.

    Autograd's version counter still guards correctness: if another operation saved the input
    for its own backward (e.g. an in-place ReLU before it), backward raises instead of silently
    using shifted values.
    """

    @staticmethod
    def forward(ctx, x, num_segments, fold, offsets):
        ctx.shift_args = (num_segments, fold, tuple(-o for o in offsets))
        x5 = x.view(x.shape[0] // num_segments, num_segments, *x.shape[1:])
        for i, offset in enumerate(offsets):
            channels = slice(i * fold, (i + 1) * fold)
            dst, src, empty = _time_ranges(num_segments, offset)
            # source and destination overlap in memory: stage the moved frames in a buffer
            # of (T-1)/T * fold channels, the only extra memory the in-place shift needs.
            moved = x5[:, src, channels].clone()
            x5[:, dst, channels].copy_(moved)
            x5[:, empty, channels].zero_()
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return _Shift.apply(grad, *ctx.shift_args), None, None, None


def temporal_shift(
    x: torch.Tensor,
    num_segments: int,
    *,
    fold_div: int = 8,
    direction: Direction = "bidirectional",
    inplace: bool = False,
) -> torch.Tensor:
    """Shift part of the channels of ``x`` one frame along time.

    Args:
        x: frames folded into the batch, shape ``(N*T, C, H, W)``; contiguous or channels_last.
        num_segments: ``T``, the number of frames per video.
        fold_div: ``C // fold_div`` channels move in each shifted direction (8 = shift 1/4 of
            the channels bi-directionally, as TSM). ``fold_div > C`` shifts nothing.
        direction: ``"bidirectional"`` (past and future, offline) or ``"unidirectional"``
            (past only, for online streaming).
        inplace: overwrite ``x`` instead of allocating the output. Differentiable; only valid
            where nothing else reads ``x`` afterwards (autograd raises if something saved it).

    Returns:
        The shifted tensor, same shape and memory format as ``x``.
    """
    offsets = shift_offsets(direction)
    if _tracing():
        if inplace:
            raise TimeshiftError("in-place temporal shift cannot be traced or exported")
        if torch.compiler.is_compiling():  # dynamo: no warnings context (a graph break)
            check_frames(x, num_segments)
            fold = _fold(int(x.shape[1]), fold_div, len(offsets))
        else:  # shapes are model constants here: the checks need not become graph ops
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                check_frames(x, num_segments)
                fold = _fold(int(x.shape[1]), fold_div, len(offsets))
        return _shift_functional(x, num_segments, fold, offsets) if fold else x.clone()
    check_frames(x, num_segments)
    fold = _fold(x.shape[1], fold_div, len(offsets))
    if fold == 0:
        return x if inplace else x.clone()
    if inplace:
        return _InplaceShift.apply(x, num_segments, fold, offsets)
    return _Shift.apply(x, num_segments, fold, offsets)


def _shift_run_restore(
    x: torch.Tensor,
    net: nn.Module,
    num_segments: int,
    fold: int,
    offsets: tuple[int, ...],
) -> torch.Tensor:
    """``net(shift(x))`` at inference without copying the channels that do not move.

    The ``len(offsets) * fold`` moved channels are saved, shifted in place inside ``x``, ``net``
    runs on ``x``, and the saved channels are written back, so ``x`` is unchanged afterwards
    (the residual shortcut reads it next). Memory traffic is three passes over the moved quarter
    instead of one pass over the whole tensor, and no activation-sized output is allocated.
    ``net`` sees exactly the values of the out-of-place shift, so the result is bit-identical.
    """
    x5 = x.view(x.shape[0] // num_segments, num_segments, *x.shape[1:])
    moved = slice(0, len(offsets) * fold)
    saved = x5[:, :, moved].clone()
    for i, offset in enumerate(offsets):
        channels = slice(i * fold, (i + 1) * fold)
        dst, src, empty = _time_ranges(num_segments, offset)
        x5[:, dst, channels].copy_(saved[:, src, channels])
        x5[:, empty, channels].zero_()
    try:
        out = net(x)
        if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            out = out.clone()  # net returned (a view of) its input: keep the shifted values
    finally:
        x5[:, :, moved].copy_(saved)
    return out


class TemporalShift(TemporalOp):
    """Shift the input along time, then apply the wrapped module.

    The wrapped module's weights stay under ``.net`` (``layer1.0.conv1.net.weight``), the key
    layout of the reference TSM checkpoints.

    Args:
        net: module applied after the shift (typically the first conv of a residual branch);
            ``None`` for a bare shift.
        num_segments: frames per video ``T`` at this layer.
        fold_div: ``C // fold_div`` channels shift in each direction.
        direction: ``"bidirectional"`` or ``"unidirectional"``.
        inplace: shift the input in place when autograd is not recording (inference), saving
            one activation-sized allocation; training, tracing and export use the out-of-place
            shift, which gives the same values and gradients. The input stays shifted, so this
            is for the in-place placement, where the shortcut takes the shifted input too.
        fast_inference: with ``inplace=False``, at inference (autograd not recording, eager)
            shift only the moved channels in place, run ``net`` and put them back, instead of
            copying the whole input: the residual shift's zero-copy path. Same values as the
            out-of-place shift; off, every call makes the out-of-place copy.
    """

    # the restore path pays from about this many elements (see _restorable_fold)
    restore_min_elements = 1 << 21

    def __init__(
        self,
        net: nn.Module | None,
        num_segments: int,
        fold_div: int = 8,
        direction: Direction = "bidirectional",
        inplace: bool = False,
        fast_inference: bool = True,
    ) -> None:
        super().__init__()
        shift_offsets(direction)  # validate early
        self.net = net if net is not None else nn.Identity()
        self.num_segments = num_segments
        self.fold_div = fold_div
        self.direction = direction
        self.inplace = inplace
        self.fast_inference = fast_inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_inference and not self.inplace and self._may_overwrite(x):
            fold = self._restorable_fold(x)
            if fold:
                offsets = shift_offsets(self.direction)
                return _shift_run_restore(x, self.net, self.num_segments, fold, offsets)
        x = temporal_shift(
            x,
            self.num_segments,
            fold_div=self.fold_div,
            direction=self.direction,
            inplace=self.inplace and self._may_overwrite(x),
        )
        return self.net(x)

    @staticmethod
    def _may_overwrite(x: torch.Tensor) -> bool:
        # While autograd records, the block input is usually saved by the op that produced it
        # (a ReLU keeps its output for backward), so overwriting it would break backward. The
        # in-place saving is therefore taken at inference, and the out-of-place shift (same
        # values, same gradients) is used for training, tracing and export.
        return not _tracing() and not (torch.is_grad_enabled() and x.requires_grad)

    def _restorable_fold(self, x: torch.Tensor) -> int:
        """The fold for the restore path, or 0 where it does not apply or does not pay (the
        shift path then validates the input and raises the usual errors).

        Saving, shifting and restoring the moved channels passes over them three times; the
        copy passes once over the whole tensor. So the restore path wins while at most a
        third of the channels move: at TSM's 1/4, not at 1/2 or all. It also takes six small
        operations instead of one, which costs more than it saves on small tensors: below
        ``restore_min_elements`` (measured on ResNet-50's stages: it wins on layer1 and
        layer2 inputs at 8 x 224² frames, loses on layer3 and layer4) the copy is used."""
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        if x.dim() != 4 or not dense or x.shape[0] % self.num_segments or self.fold_div < 1:
            return 0
        if x.numel() < self.restore_min_elements:
            return 0
        fold = x.shape[1] // self.fold_div
        return fold if 3 * fold * len(shift_offsets(self.direction)) <= x.shape[1] else 0

    @property
    def causal(self) -> bool:
        """Causal when no channel comes from the next frame (uni-directional)."""
        return all(o < 0 for o in shift_offsets(self.direction))

    def not_causal_reason(self) -> str:
        return f"TemporalShift shifts channels from future frames (direction={self.direction!r})"

    def to_streaming(self, *, drop_future: bool = False) -> OnlineShift:
        """An :class:`OnlineShift` (a bi-directional shift only with ``drop_future``)."""
        return OnlineShift(self, drop_future=drop_future)

    def extra_repr(self) -> str:
        return (
            f"num_segments={self.num_segments}, fold_div={self.fold_div}, "
            f"direction={self.direction}, inplace={self.inplace}"
        )


class OnlineShift(StreamingOp):
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
            raise NotCausalError(
                f"{shift.not_causal_reason()}; streaming it drops that information: build the "
                "model with direction='unidirectional', or pass drop_future=True to stream it "
                "anyway"
            )
        self.net = shift.net
        self.fold_div = shift.fold_div
        self.offsets = offsets
        # the channel count is fixed by the wrapped conv; knowing it statically keeps traced
        # graphs free of shape arithmetic
        conv = next((m for m in self.net.modules() if isinstance(m, nn.Conv2d)), None)
        self.channels = conv.in_channels if conv is not None else None
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


def set_fast_inference(model: nn.Module, enabled: bool) -> int:
    """Switch the restore path (see :class:`TemporalShift`) on or off in every shift of
    ``model``; returns how many shift modules were set. For comparisons and benchmarks."""
    shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
    for m in shifts:
        m.fast_inference = enabled
    return len(shifts)
