"""The conversion protocol of temporal ops: causal or not, and the streaming form.

A temporal op mixes the frames of a clip, which it receives folded into the batch,
``(N*T, C, H, W)``. Deployed online, a model sees one frame per stream and call, ``(N, C, H, W)``,
and only the past: an op is *causal* when its output frame ``t`` reads input frames ``<= t``.
A causal op converts itself with :meth:`TemporalOp.to_streaming` into its *streaming form*, a
module on single frames that keeps what it needs of the past in a cache (a
:class:`StreamingOp`; the temporal shift becomes :class:`~timeshift.ops.OnlineShift`). A
non-causal op refuses with a :class:`NotCausalError` that says why.

:func:`to_streaming` converts every op of a model this way, so a new temporal op plugs into
online recognition and its exports by subclassing :class:`TemporalOp`, with no list of op types
elsewhere to update.
"""

from __future__ import annotations

import torch
from torch import nn

from timeshift.errors import TimeshiftError

__all__ = ["NotCausalError", "StreamingOp", "TemporalOp", "to_streaming"]


class NotCausalError(TimeshiftError, ValueError):
    """A temporal op reads future frames: the model cannot run online, frame by frame."""


class TemporalOp(nn.Module):
    """Base class of the modules that mix the frames of a clip (the temporal ops).

    Subclasses say whether they are :attr:`causal` and, if so, build their streaming form in
    :meth:`to_streaming`; a non-causal op says why in :meth:`not_causal_reason`. The defaults
    describe an op that reads future frames.
    """

    num_segments: int

    @property
    def causal(self) -> bool:
        """Whether output frame ``t`` reads input frames ``<= t`` only (and can stream)."""
        return False

    def not_causal_reason(self) -> str:
        """Why the op cannot stream: a clause that names the op (the start of the refusal)."""
        return f"{type(self).__name__} mixes in future frames"

    def to_streaming(self, *, drop_future: bool = False) -> nn.Module:
        """The module that computes this op on one frame per stream, ``(N, C, H, W)``, with
        the past from its cache (a :class:`StreamingOp`), or a plain module where the op
        needs no past.

        Args:
            drop_future: stream an op that reads the future anyway, with zeros for it, where
                the op allows it (the bi-directional shift); the others refuse regardless.
        """
        raise NotCausalError(
            f"{self.not_causal_reason()}: only causal temporal ops (such as a uni-directional "
            "temporal shift) can run online"
        )


class StreamingOp(nn.Module):
    """The streaming form of a temporal op: frames of independent streams, the past cached.

    Before a call the caller sets :attr:`cache_in` (``None``: the first frame of the streams,
    whose past is zeros); after it, :attr:`cache_out` holds the cache for the next frame.
    :class:`~timeshift.online.OnlineModule` passes the caches of all of a model's streaming ops
    as explicit inputs and outputs, in model order, which is what makes streaming exportable.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cache_in: torch.Tensor | None = None
        self.cache_out: torch.Tensor | None = None


def to_streaming(module: nn.Module, *, drop_future: bool = False) -> list[StreamingOp]:
    """Replace every temporal op inside ``module`` (in place) by its streaming form.

    Returns the :class:`StreamingOp` modules in model order (the order of their caches).
    Raises :class:`NotCausalError` naming the first op that cannot stream and where it is.
    """
    found: list[StreamingOp] = []
    _convert(module, "", found, drop_future)
    return found


def _convert(module: nn.Module, prefix: str, found: list[StreamingOp], drop_future: bool) -> None:
    for name, child in list(module.named_children()):
        path = prefix + name
        if isinstance(child, TemporalOp):
            try:
                child = child.to_streaming(drop_future=drop_future)
            except NotCausalError as exc:
                raise NotCausalError(f"{exc} (at {path})") from None
            setattr(module, name, child)
        if isinstance(child, StreamingOp):
            found.append(child)
        # the streaming form may wrap further modules (the shift's conv under .net)
        _convert(child, path + ".", found, drop_future)
