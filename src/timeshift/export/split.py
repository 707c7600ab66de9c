"""Online graphs that never slice the residual stream: the form onnxruntime runs fastest.

onnxruntime's CPU provider runs convolutions in a blocked channel layout (NCHWc) and has no
channel slice or concatenation in that layout. Each shift of the plain online graph
(``cat([cache, x[:, k:]])`` for the conv, ``x[:, :k]`` for the next cache) therefore converts the
whole block input out of the blocked layout, splits it, concatenates it and converts it back:
four copies of the block input per block, about 9% of a ResNet-50 frame.

:class:`SplitStream` computes the same function without them. Every tensor of the residual
stream that a shift reads is carried as two tensors, its first ``k`` channels (the *head*, which
is also the next frame's cache) and the rest (the *tail*), and the convolutions are split along
the same channels, with batch norm folded into them:

    conv(cat([cache, tail])) = conv_{W[:, :k]}(cache) + conv_{W[:, k:]}(tail)

The MACs are the same; onnxruntime fuses the sums into the convolutions, and the only layout
conversions left are those of the caches themselves (``1/8`` of a block input, in and out).

Supported: the ResNet/ResNeXt and MobileNetV2 backbones of this library with a uni-directional
residual shift, under a recognizer's classifier or (online) a detector's pyramid and head.
:func:`split_stream` returns ``None`` for anything else, or when a part would not be a multiple
of 8 channels (:data:`ALIGN`: MobileNetV2's 24-channel stage splits 3 + 21), and the exporter
falls back to the plain graph.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from timeshift.models.backbones.mobilenet_v2 import ConvBNAct, InvertedResidual, MobileNetV2
from timeshift.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from timeshift.models.recognizer import Recognizer
from timeshift.online.online_model import OnlineModule
from timeshift.ops.shift import OnlineShift, TemporalShift, shift_offsets, temporal_shift

__all__ = ["SplitClips", "SplitStream", "split_clips", "split_stream"]

_logger = logging.getLogger(__name__)

# onnxruntime's blocked layout holds channels in blocks of 8 (AVX2) or 16 (AVX-512); a part that
# is not a multiple of the block is padded, and MobileNetV2's 3/21-channel parts (24 channels,
# fold 8) made it 1.4x slower per frame instead of faster
ALIGN = 8

Stream = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # whole, or (head, tail)


class _Unsupported(Exception):
    pass


def _fold_bn(conv: nn.Conv2d, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if bn is None:
        return weight.clone(), bias.clone()
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
        raise _Unsupported(f"cannot fold {type(bn).__name__} into a convolution")
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    return weight * scale[:, None, None, None], bias * scale + shift


def _parts(channels: int, split: int | None) -> list[tuple[int, int]]:
    return [(0, channels)] if split is None else [(0, split), (split, channels)]


class _SplitConv(nn.Module):
    """conv + folded BN (+ residual) (+ activation) on a whole or split input, giving a whole or
    split output: one convolution per (output part, input part), summed."""

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.Module | None,
        *,
        act: str | None = None,
        in_split: int | None = None,
        out_split: int | None = None,
    ) -> None:
        super().__init__()
        if in_split is not None and conv.groups != 1:
            raise _Unsupported("a grouped convolution cannot take a split input")
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise _Unsupported("only explicit zero padding is supported")
        weight, bias = _fold_bn(conv, bn)
        self.conv_args = dict(
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups
        )
        self.act = act
        self.in_split, self.out_split = in_split, out_split
        self.widths = [
            b - a
            for split, channels in ((in_split, conv.in_channels), (out_split, conv.out_channels))
            if split is not None
            for a, b in _parts(channels, split)
        ]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for o0, o1 in _parts(conv.out_channels, out_split):
            self.biases.append(nn.Parameter(bias[o0:o1].clone(), requires_grad=False))
            for i0, i1 in _parts(conv.in_channels, in_split):
                piece = weight[o0:o1, i0:i1].clone()
                self.weights.append(nn.Parameter(piece, requires_grad=False))

    def forward(self, x: Stream, residual: Stream | None = None) -> Stream:
        xs = x if isinstance(x, tuple) else (x,)
        if len(xs) != (1 if self.in_split is None else 2):
            raise ValueError(f"expected a {'split' if self.in_split else 'whole'} input")
        residuals = residual if isinstance(residual, tuple) else (residual,)
        outs = []
        for j, bias in enumerate(self.biases):
            y = None
            for i, part in enumerate(xs):
                out = F.conv2d(
                    part, self.weights[j * len(xs) + i], bias if i == 0 else None, **self.conv_args
                )
                y = out if y is None else y + out
            if residual is not None:
                y = y + residuals[j]
            if self.act == "relu":
                y = F.relu(y)
            elif self.act == "relu6":
                y = F.hardtanh(y, 0.0, 6.0)
            outs.append(y)
        return outs[0] if len(outs) == 1 else tuple(outs)


def _apply(module: nn.Module, x: Stream) -> Stream:
    """A per-channel module (pooling) on each part."""
    return tuple(module(p) for p in x) if isinstance(x, tuple) else module(x)


def _shift_split(conv: nn.Module) -> int | None:
    """The head width a shifted conv reads shifted (from the cache online, from the
    neighbouring frames offline); ``None`` when not shifted."""
    if isinstance(conv, TemporalShift):  # offline
        if conv.inplace:
            raise _Unsupported("in-place shifts are not supported")
        first = conv.net if isinstance(conv.net, nn.Conv2d) else None
        if first is None and isinstance(conv.net, ConvBNAct):
            first = conv.net[0]
        if first is None:
            raise _Unsupported("the shift does not wrap a convolution")
        fold, groups = first.in_channels // conv.fold_div, len(shift_offsets(conv.direction))
    elif isinstance(conv, OnlineShift):
        if any(o >= 0 for o in conv.offsets) or conv.channels is None:
            raise _Unsupported("only uni-directional shifts are supported")
        fold, groups = conv.channels // conv.fold_div, len(conv.offsets)
    else:
        return None
    if fold == 0:
        raise _Unsupported("a shift of zero channels")
    return fold * groups


def _shifted_net(module: nn.Module) -> nn.Module:
    """The layer a (possibly) shifting wrapper applies after the shift."""
    return module.net if isinstance(module, (OnlineShift, TemporalShift)) else module


# -- units: the stem, the blocks and the last conv, in order --------------------------------------
class _Unit(nn.Module):
    shifted: int | None = None  # head width read from the cache
    identity: bool = False  # the output adds the unchanged input
    out_split: int | None = None

    def build(self, in_split: int | None, out_split: int | None) -> None:
        raise NotImplementedError


class _Plain(_Unit):
    """A stem (conv-BN-act, then optionally a pooling) or MobileNetV2's last conv."""

    def __init__(self, conv, bn, act, pool: nn.Module | None = None) -> None:
        super().__init__()
        self.parts, self.pool = (conv, bn, act), pool

    def build(self, in_split, out_split):
        conv, bn, act = self.parts
        self.out_split = out_split
        self.conv = _SplitConv(conv, bn, act=act, in_split=in_split, out_split=out_split)
        del self.parts

    def forward(self, x: Stream, shifter) -> Stream:
        y = self.conv(x)
        return y if self.pool is None else _apply(self.pool, y)


class _ResNetBlock(_Unit):
    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        self.block = block
        self.shifted = _shift_split(block.conv1)
        self.identity = block.downsample is None

    def build(self, in_split, out_split):
        block, self.out_split = self.block, out_split
        conv1 = _shifted_net(block.conv1)
        if not isinstance(conv1, nn.Conv2d):
            raise _Unsupported("the shift does not wrap a plain convolution")
        first_split = self.shifted if self.shifted is not None else in_split
        self.conv1 = _SplitConv(conv1, block.bn1, act="relu", in_split=first_split)
        last = [(block.conv2, block.bn2)]
        if isinstance(block, Bottleneck):
            self.conv2 = _SplitConv(block.conv2, block.bn2, act="relu")
            last = [(block.conv3, block.bn3)]
        else:
            self.conv2 = None
        conv, bn = last[0]
        self.last = _SplitConv(conv, bn, act="relu", out_split=out_split)
        if block.downsample is not None:
            ds = block.downsample
            if not (isinstance(ds, nn.Sequential) and len(ds) == 2):
                raise _Unsupported("downsample is not conv + norm")
            self.downsample = _SplitConv(ds[0], ds[1], in_split=in_split, out_split=out_split)
        else:
            self.downsample = None
        del self.block

    def forward(self, x: Stream, shifter) -> Stream:
        if self.shifted is not None:
            head, tail = x
            out = self.conv1((shifter.shift(head), tail))
        else:
            out = self.conv1(x)
        if self.conv2 is not None:
            out = self.conv2(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.last(out, identity)


class _InvertedResidual(_Unit):
    def __init__(self, block: InvertedResidual) -> None:
        super().__init__()
        self.block = block
        self.identity = block.use_res_connect
        self.shifted = _shift_split(block.conv[0])

    def build(self, in_split, out_split):
        block, self.out_split = self.block, out_split
        layers = list(block.conv)
        first = _shifted_net(layers[0])
        if not all(isinstance(m, ConvBNAct) for m in [first, *layers[1:-2]]):
            raise _Unsupported("unexpected inverted residual layers")
        convs = []
        first_split = self.shifted if self.shifted is not None else in_split
        for i, m in enumerate([first, *layers[1:-2]]):
            convs.append(
                _SplitConv(m[0], m[1], act="relu6", in_split=first_split if i == 0 else None)
            )
        self.convs = nn.ModuleList(convs)
        self.project = _SplitConv(layers[-2], layers[-1], out_split=out_split)
        del self.block

    def forward(self, x: Stream, shifter) -> Stream:
        if self.shifted is not None:
            head, tail = x
            out = self.convs[0]((shifter.shift(head), tail))
        else:
            out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = conv(out)
        return self.project(out, x if self.identity else None)


def _units(backbone: nn.Module) -> list[_Unit]:
    if type(backbone) is ResNet:
        stem = _Plain(backbone.conv1, backbone.bn1, "relu", backbone.maxpool)
        layers = (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)
        if not all(type(layer) is nn.Sequential for layer in layers):
            raise _Unsupported("a stage is wrapped (temporal pooling)")
        blocks = [b for layer in layers for b in layer]
        if not all(type(b) in (BasicBlock, Bottleneck) for b in blocks):
            raise _Unsupported("unexpected ResNet blocks")
        return [stem, *(_ResNetBlock(b) for b in blocks)]
    if type(backbone) is MobileNetV2:
        *body, last = list(backbone.features)
        stem, blocks = body[0], body[1:]
        if not (type(stem) is ConvBNAct and type(last) is ConvBNAct):
            raise _Unsupported("unexpected MobileNetV2 layers")
        if not all(type(b) is InvertedResidual for b in blocks):
            raise _Unsupported("unexpected MobileNetV2 blocks")
        return [
            _Plain(stem[0], stem[1], "relu6"),
            *(_InvertedResidual(b) for b in blocks),
            _Plain(last[0], last[1], "relu6"),
        ]
    raise _Unsupported(f"{type(backbone).__name__} backbones are not supported")


def _plan(units: list[_Unit]) -> list[tuple[int | None, int | None]]:
    """(input split, output split) of each unit: a tensor is split where a shift reads it, and
    kept split through identity shortcuts (merging it back would cost the copy avoided)."""
    need = [None] * (len(units) + 1)  # the split each unit's input must have
    for i in range(len(units) - 1, -1, -1):
        unit = units[i]
        need[i] = (
            unit.shifted if unit.shifted is not None else (need[i + 1] if unit.identity else None)
        )
    plan, split = [], None
    for i, unit in enumerate(units):
        if unit.shifted is not None and split != unit.shifted:
            raise _Unsupported("the cache width does not match the stream split")
        out = need[i + 1] if need[i + 1] is not None else (split if unit.identity else None)
        if unit.identity and split != out:
            raise _Unsupported("an identity shortcut changes the stream split")
        plan.append((split, out))
        split = out
    return plan


class _Caches(list):
    """Online shifter: each head becomes a new cache (appended in model order) and is replaced
    by the incoming cache of the previous frame."""

    def __init__(self, past) -> None:
        super().__init__()
        self.past = list(past)

    def shift(self, head: torch.Tensor) -> torch.Tensor:
        self.append(head)
        return self.past.pop(0)


class _ClipShift:
    """Offline shifter: the head, which holds exactly the moved channels, shifted along time
    within each clip (only this slice of the stream is sliced and concatenated)."""

    def __init__(self, num_segments: int, direction: str) -> None:
        self.num_segments, self.direction = num_segments, direction
        self.groups = len(shift_offsets(direction))

    def shift(self, head: torch.Tensor) -> torch.Tensor:
        return temporal_shift(
            head, self.num_segments, fold_div=self.groups, direction=self.direction
        )


def _build_units(backbone: nn.Module, align: int) -> nn.ModuleList:
    units = _units(backbone)
    for unit, (in_split, out_split) in zip(units, _plan(units), strict=True):
        unit.build(in_split, out_split)
    widths = {w for u in units for m in u.modules() if isinstance(m, _SplitConv) for w in m.widths}
    if any(w % align for w in widths):
        raise _Unsupported(
            f"split widths {sorted(widths)} are not multiples of {align} channels (the "
            "runtime would pad each part)"
        )
    return nn.ModuleList(units)


def _classifier(model: nn.Module) -> nn.Module:
    """The linear classifier of a :class:`Recognizer` head (pool, dropout, fc), which the split
    graph applies to the pooled parts itself: at inference dropout is the identity."""
    if not isinstance(model, Recognizer):
        raise _Unsupported(f"{type(model).__name__} heads are not supported (only Recognizer's)")
    return model.fc


def _pool(x: Stream) -> torch.Tensor:
    if isinstance(x, tuple):
        return torch.cat([p.mean(dim=(2, 3)) for p in x], 1)
    return x.mean(dim=(2, 3))


class _ClassifierHead(nn.Module):
    """A recognizer's head on the last unit's (split) output: pool the parts, classify."""

    def __init__(self, model: nn.Module, units: nn.ModuleList) -> None:
        super().__init__()
        self.fc = _classifier(model)
        self.reads = [len(units) - 1]

    def forward(self, outputs: list[Stream]) -> torch.Tensor:
        return self.fc(_pool(outputs[-1]))


class _PyramidHead(nn.Module):
    """A detector's pyramid and head on the (split) outputs of the units it reads: the 1x1
    lateral convs take the parts directly (``conv(cat(h, t)) = conv_h(h) + conv_t(t)``), the
    rest is the detector's own modules."""

    def __init__(self, model: nn.Module, units: nn.ModuleList) -> None:
        super().__init__()
        self.reads = list(model.pyramid_blocks())
        self.laterals = nn.ModuleList(
            _SplitConv(lateral, None, in_split=units[i].out_split)
            for lateral, i in zip(model.fpn.lateral, self.reads, strict=True)
        )
        self.smooth, self.head = model.fpn.smooth, model.head

    def forward(self, outputs: list[Stream]) -> torch.Tensor:
        top = self.laterals[-1](outputs[-1])
        for lateral, level in zip(self.laterals[-2::-1], outputs[-2::-1], strict=True):
            lat = lateral(level)
            top = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
        return self.head(self.smooth(top))


def _head(model: nn.Module, units: nn.ModuleList) -> nn.Module:
    """The split graph's head: a recognizer's classifier, or a detector's pyramid (a model with
    ``pyramid_blocks``, ``fpn`` and ``head``: :class:`~timeshift.detection.model.Detector`)."""
    if hasattr(model, "pyramid_blocks") and hasattr(model, "fpn"):
        return _PyramidHead(model, units)
    return _ClassifierHead(model, units)


class SplitStream(nn.Module):
    """``forward(frame, *caches) -> (output, *new_caches)``, the interface of
    :class:`~timeshift.online.OnlineModule` (same caches, same order), computed with the residual
    stream split at the cached channels: a recognizer's logits or a detector's maps. Inference
    only: batch norm is folded."""

    def __init__(self, online: OnlineModule, *, align: int = 1) -> None:
        super().__init__()
        model = online.model
        self.units = _build_units(model.backbone, align)
        if sum(u.shifted is not None for u in self.units) != online.num_caches:
            raise _Unsupported("a shift sits outside the supported positions")
        self.head = _head(model, self.units)
        self.num_caches = online.num_caches
        self.eval()

    def forward(self, frame: torch.Tensor, *caches: torch.Tensor):
        if len(caches) != self.num_caches:
            raise ValueError(f"expected {self.num_caches} cache tensors, got {len(caches)}")
        new = _Caches(caches)
        x: Stream = frame
        reads, outputs = self.head.reads, []
        for i, unit in enumerate(self.units):
            x = unit(x, new)
            if i in reads:
                outputs.append(x)
        return (self.head(outputs), *new)


class SplitClips(nn.Module):
    """``forward(video) -> logits`` of an offline :class:`~timeshift.models.Recognizer`
    (``(N, T, 3, H, W)`` -> ``(N, K)``), computed with the residual stream split at the shifted
    channels: the offline counterpart of :class:`SplitStream`. Inference only."""

    def __init__(self, model: nn.Module, *, align: int = 1) -> None:
        super().__init__()
        fc = _classifier(model)
        shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
        if not shifts:
            raise _Unsupported("the model has no temporal shift: nothing to split")
        settings = {(m.num_segments, m.direction) for m in shifts}
        if len(settings) != 1 or next(iter(settings))[0] != model.num_segments:
            raise _Unsupported("shifts differ in frames or direction (temporal pooling?)")
        self.units = _build_units(model.backbone, align)
        if sum(u.shifted is not None for u in self.units) != len(shifts):
            raise _Unsupported("a shift sits outside the supported positions")
        self.num_segments = model.num_segments
        self.direction = shifts[0].direction
        self.fc = fc
        self.eval()

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        n, t = video.shape[:2]
        x: Stream = video.flatten(0, 1)
        shifter = _ClipShift(t, self.direction)
        for unit in self.units:
            x = unit(x, shifter)
        return self.fc(_pool(x)).view(n, t, -1).mean(dim=1)


def split_stream(online: OnlineModule, *, align: int = ALIGN) -> SplitStream | None:
    """The split form of ``online``, or ``None`` when its architecture is not supported or a
    part would not be a multiple of ``align`` channels."""
    try:
        return SplitStream(online, align=align)
    except _Unsupported as exc:
        _logger.info("no split-stream graph (%s): exporting the plain online graph", exc)
        return None


def split_clips(model: nn.Module, *, align: int = ALIGN) -> SplitClips | None:
    """The split form of an offline shift model, or ``None`` where unsupported (no shift,
    temporal pooling, non-local blocks, other backbones, unaligned parts)."""
    try:
        return SplitClips(model, align=align)
    except _Unsupported as exc:
        _logger.info("no split-stream graph (%s): exporting the plain offline graph", exc)
        return None
