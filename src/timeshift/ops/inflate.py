"""2D convolutions inflated over time: the 3D-CNN baselines (I3D) that TSM is measured against.

:class:`InflatedConv` runs a ``(kt, kh, kw)`` convolution on frames folded into the batch,
``(N*T, C, H, W)``, so it drops into a 2D backbone where a 2D conv was, the way the temporal
shift does. Built from a 2D conv, its kernel starts *centred* (the 2D kernel in the middle time
slice, zeros elsewhere), so the inflated network initially computes exactly what the 2D one
did; ``init="mean"`` spreads the kernel evenly over time instead (Carreira and Zisserman's
"bootstrapping": a static video gives the 2D response). 2D weights loaded later through
``load_state_dict`` are inflated the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timeshift.ops.protocol import TemporalOp

__all__ = ["INFLATE_INITS", "InflatedConv", "inflate_weight"]

INFLATE_INITS = ("center", "mean")


def inflate_weight(weight: torch.Tensor, time_kernel: int, init: str = "center") -> torch.Tensor:
    """A 2D kernel ``(O, I, kh, kw)`` -> ``(O, I, time_kernel, kh, kw)``."""
    if init not in INFLATE_INITS:
        raise ValueError(f"init must be one of {INFLATE_INITS}, got {init!r}")
    if weight.dim() != 4:
        raise ValueError(f"expected a 2D conv weight (O, I, kh, kw), got {tuple(weight.shape)}")
    out = weight.new_zeros(*weight.shape[:2], time_kernel, *weight.shape[2:])
    if init == "center":
        out[:, :, time_kernel // 2] = weight
    else:
        out[:] = (weight / time_kernel).unsqueeze(2)
    return out


class InflatedConv(TemporalOp):
    """A ``(time_kernel, kh, kw)`` convolution on ``(N*T, C, H, W)`` frames, zero-padded in time
    (output frame t sees frames ``t - time_kernel//2 ... t + time_kernel//2``), stride 1 in time.

    The weight is stored under ``weight`` (``(O, I, kt, kh, kw)``, MMAction2's I3D layout)
    so that the module replaces the 2D conv under the same name.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        num_segments: int,
        time_kernel: int = 3,
        *,
        init: str = "center",
    ) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"InflatedConv inflates an nn.Conv2d, got {type(conv).__name__}")
        if time_kernel < 1 or time_kernel % 2 == 0:
            raise ValueError(f"time_kernel must be odd and >= 1, got {time_kernel}")
        if isinstance(conv.padding, str):
            raise ValueError("InflatedConv needs explicit (numeric) padding on the 2D conv")
        self.num_segments = num_segments
        self.time_kernel = time_kernel
        self.init = init
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride = (1, *conv.stride)
        self.padding = (time_kernel // 2, *conv.padding)
        self.dilation = (1, *conv.dilation)
        self.groups = conv.groups
        self.weight = nn.Parameter(inflate_weight(conv.weight.detach(), time_kernel, init))
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t = self.num_segments
        if nt % t:
            raise ValueError(
                f"expected a batch of N*T frames with T={t}, got {nt} frames ({tuple(x.shape)})"
            )
        clips = x.view(nt // t, t, c, h, w).transpose(1, 2)  # (N, C, T, H, W)
        out = F.conv3d(
            clips, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )
        return out.transpose(1, 2).reshape(nt, out.shape[1], *out.shape[3:])

    def not_causal_reason(self) -> str:
        return (
            f"InflatedConv mixes in future frames (its {self.time_kernel}-frame time kernel is "
            "centred: frame t reads frame t+1)"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        value = state_dict.get(key)
        if value is not None and value.dim() == 4:  # a 2D checkpoint: inflate it
            state_dict[key] = inflate_weight(value, self.time_kernel, self.init)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel={tuple(self.weight.shape[2:])}, "
            f"num_segments={self.num_segments}, init={self.init}"
        )
