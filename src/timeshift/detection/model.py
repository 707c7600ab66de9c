"""Video object detectors on the temporal backbones (TSM Appendix A).

A :class:`Detector` is a registered recognition model's backbone (TSN: no temporal op; TSM
bi-directional or uni-directional; any registered ResNet or MobileNetV2) read at several scales,
a light feature pyramid down to stride 4 and a CenterNet-style anchor-free head: per class a
heatmap of object centres, and at each centre the box size and the centre's sub-cell offset.
Boxes are decoded from the peaks of the heatmap (a 3x3 max-pool keeps local maxima), so no NMS
is needed; everything is plain PyTorch.

Why CenterNet rather than FCOS: one output level and one dense map per frame, so the per-frame
output is a single tensor ``(M, K + 4, h, w)``. That is exactly what the online machinery
streams (:class:`~timeshift.online.OnlineModule` runs ``forward_frame_head(forward_frames(x))``
and returns one tensor plus the caches) and what ONNX exports; decoding stays outside the graph.

The temporal ops live in the backbone, so a detector built on a uni-directional TSM streams frame
by frame with the per-layer caches (:class:`OnlineDetector`) and gives, frame by frame, the
boxes the offline model gives on the whole clip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from timeshift.detection.structures import Detections, FrameBoxes
from timeshift.models.backbones import MobileNetV2, ResNet
from timeshift.models.recognizer import check_input_dtype

__all__ = [
    "DETECTOR_OPTIONS",
    "CenterHead",
    "Detector",
    "FeaturePyramid",
    "backbone_levels",
    "create_detector",
    "gaussian_radius",
    "level_blocks",
]

# create_detector's own options; the others go to the recognition model's create_model
DETECTOR_OPTIONS = ("fpn_channels", "head_channels", "out_stride")
HEATMAP_PRIOR = 0.1  # initial centre probability (CenterNet's heatmap bias -2.19)


# -- backbone levels ------------------------------------------------------------------------------
def _last_norm_channels(module: nn.Module, default: int) -> int:
    """Output channels of a block: those of its last BatchNorm (every backbone block ends in one,
    the downsample branch's included)."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return int(norms[-1].num_features) if norms else default


def _downsamples(module: nn.Module) -> bool:
    stride = getattr(module, "stride", None)
    if stride is None:  # ConvBNAct: a Sequential whose first conv says
        conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
        stride = conv.stride if conv is not None else 1
    stride = stride[0] if isinstance(stride, tuple) else stride
    return int(stride) > 1


def backbone_levels(backbone: nn.Module) -> list[tuple[int, int]]:
    """``(stride, channels)`` of each feature level :meth:`Detector.forward_levels` returns for
    ``backbone``: ResNets give strides 4, 8, 16, 32 (after ``layer1`` .. ``layer4``);
    MobileNetV2 one level before each later downsampling and its last output."""
    if isinstance(backbone, ResNet):
        layers = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
        return [(4 * 2**i, _last_norm_channels(layer, 0)) for i, layer in enumerate(layers)]
    if isinstance(backbone, MobileNetV2):
        levels, stride, channels = [], 1, int(getattr(backbone, "in_chans", 3))
        for module in backbone.features:
            if _downsamples(module):
                if stride >= 4:
                    levels.append((stride, channels))
                stride *= 2
            channels = _last_norm_channels(module, channels)
        return [*levels, (stride, channels)]
    raise TypeError(
        f"a detector needs a ResNet or MobileNetV2 backbone to read at several scales, got "
        f"{type(backbone).__name__}"
    )


def level_blocks(backbone: nn.Module) -> list[int]:
    """For each level of :func:`backbone_levels`, the index of the unit whose output it is, in
    the backbone's sequence of units: a ResNet's stem then every residual block, a
    MobileNetV2's ``features`` (what :mod:`timeshift.export.split` rebuilds)."""
    if isinstance(backbone, ResNet):
        ends, count = [], 0
        for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
            count += len(layer)
            ends.append(count)
        return ends
    if isinstance(backbone, MobileNetV2):
        ends, stride = [], 1
        for index, module in enumerate(backbone.features):
            if _downsamples(module):
                if stride >= 4:
                    ends.append(index - 1)
                stride *= 2
        return [*ends, len(backbone.features) - 1]
    raise TypeError(f"no levels for a {type(backbone).__name__} backbone")


def _resnet_levels(net: ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    levels = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        levels.append(x)
    return levels


def _mobilenet_levels(net: MobileNetV2, x: torch.Tensor) -> list[torch.Tensor]:
    levels, stride = [], 1
    for module in net.features:
        if _downsamples(module):
            if stride >= 4:
                levels.append(x)
            stride *= 2
        x = module(x)
    return [*levels, x]


# -- pyramid and head -----------------------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class FeaturePyramid(nn.Module):
    """A light FPN: a 1x1 lateral conv per level, the top-down path (nearest upsampling, sum)
    down to the finest level, one 3x3 conv on it. ``forward(levels) -> (M, channels, h, w)``
    at the finest level's stride."""

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = _conv_bn_relu(channels, channels)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        top = self.lateral[-1](levels[-1])
        for lateral, level in zip(self.lateral[-2::-1], levels[-2::-1], strict=True):
            top = lateral(level) + F.interpolate(top, size=level.shape[-2:], mode="nearest")
        return self.smooth(top)


class CenterHead(nn.Module):
    """CenterNet's head: three branches (3x3 conv, ReLU, 1x1 conv) giving ``K`` centre-heatmap
    logits, the box size ``(w, h)`` and the centre offset ``(dx, dy)`` in output cells,
    concatenated as ``(M, K + 4, h, w)``."""

    def __init__(self, channels: int, head_channels: int, num_classes: int) -> None:
        super().__init__()

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels, head_channels, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(head_channels, out, 1),
            )

        self.heatmap = branch(num_classes)
        self.size = branch(2)
        self.offset = branch(2)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.heatmap(x), self.size(x), self.offset(x)], dim=1)


# -- the detector ---------------------------------------------------------------------------------
class Detector(nn.Module):
    """Video object detector ``(N, T, C, H, W) -> (N, T, K + 4, H / s, W / s)`` dense maps
    (``s = out_stride``): per frame ``K`` centre-heatmap logits, box size and centre offset.
    :meth:`decode` turns maps into boxes; :meth:`loss` trains them.

    It is a :class:`~timeshift.online.FrameModel` (``forward_frames``, ``forward_frame_head``,
    ``in_chans``), so :class:`~timeshift.online.OnlineModule` streams it and the exporters
    export it as they do recognizers.

    Args:
        backbone: a ResNet or MobileNetV2, with temporal modules inserted or not.
        num_classes: object classes ``K``.
        num_segments: frames per training clip ``T`` (the offline shift's time axis).
        fpn_channels: channels of the pyramid.
        head_channels: hidden channels of each head branch.
        out_stride: stride of the output maps (a level of the backbone: 4, 8, 16 or 32).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        num_segments: int,
        fpn_channels: int = 64,
        head_channels: int = 64,
        out_stride: int = 4,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"a detector needs at least one class, got num_classes={num_classes}")
        levels = backbone_levels(backbone)
        strides = [s for s, _ in levels]
        if out_stride not in strides:
            raise ValueError(f"out_stride must be one of the backbone's strides {strides}")
        self.level_start = strides.index(out_stride)
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_segments = num_segments
        self.out_stride = out_stride
        self.in_chans = int(getattr(backbone, "in_chans", 3))
        self.modality, self.new_length = "rgb", 1
        self.output_name = "maps"  # the exported graphs' output (a recognizer's: logits)
        self.channels_last = False
        self.fpn = FeaturePyramid([c for _, c in levels[self.level_start :]], fpn_channels)
        self.head = CenterHead(fpn_channels, head_channels, num_classes)
        self.config: dict[str, Any] | None = None  # filled by create_detector
        self.checkpoint_meta: dict[str, Any] = {}

    def pyramid_blocks(self) -> list[int]:
        """The backbone units (:func:`level_blocks`) whose outputs the pyramid reads."""
        return level_blocks(self.backbone)[self.level_start :]

    def set_channels_last(self, enabled: bool = True) -> Detector:
        """Keep weights and frames in channels_last memory (faster convolutions on CPU with
        oneDNN and on tensor cores), as :meth:`Recognizer.set_channels_last`."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for tensor in [*self.parameters(), *self.buffers()]:
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=fmt)
        self.channels_last = enabled
        return self

    # -- FrameModel ------------------------------------------------------------------------------
    def forward_levels(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Frames ``(M, C, H, W)`` -> the backbone's feature levels, finest first."""
        if isinstance(self.backbone, ResNet):
            return _resnet_levels(self.backbone, frames)
        return _mobilenet_levels(self.backbone, frames)

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(M, C, H, W)`` (a clip's frames in order, or one per stream online) -> the
        pyramid's map ``(M, fpn_channels, h, w)``."""
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.fpn(self.forward_levels(frames)[self.level_start :])

    def forward_frame_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pyramid maps -> the per-frame output ``(M, K + 4, h, w)``."""
        return self.head(features)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        self._check_input(clips)
        n, t = clips.shape[:2]
        maps = self.forward_frame_head(self.forward_frames(clips.flatten(0, 1)))
        return maps.unflatten(0, (n, t))

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():
            return
        expected = f"(N, T, C, H, W) with T={self.num_segments}, C={self.in_chans}"
        if x.dim() != 5 or x.shape[1] != self.num_segments or x.shape[2] != self.in_chans:
            raise ValueError(f"expected a clip batch {expected}, got shape {tuple(x.shape)}")
        param = next(self.parameters(), None)
        if param is not None:
            check_input_dtype(x, param.dtype, what="clips")

    # -- boxes -----------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(
        self,
        maps: torch.Tensor,
        *,
        max_detections: int = 100,
        score_threshold: float = 0.01,
    ) -> list[Detections]:
        """Per-frame maps ``(M, K + 4, h, w)`` (or ``(N, T, ...)``, flattened) -> one
        :class:`~timeshift.detection.structures.Detections` per frame, boxes in input pixels.

        Centres are the heatmap's local maxima (3x3), the ``max_detections`` best over all
        classes with a score (the heatmap's sigmoid) of at least ``score_threshold``."""
        return decode_maps(
            maps,
            num_classes=self.num_classes,
            stride=self.out_stride,
            max_detections=max_detections,
            score_threshold=score_threshold,
        )

    def loss(self, maps: torch.Tensor, targets: Sequence[FrameBoxes]) -> dict[str, torch.Tensor]:
        """CenterNet's losses of per-frame maps ``(M, K + 4, h, w)`` (or ``(N, T, ...)``)
        against one :class:`FrameBoxes` per frame (input pixels): ``heatmap`` (penalty-reduced
        focal loss), ``size`` (L1, weight 0.1), ``offset`` (L1) and their sum ``loss``, each
        normalised by the number of objects."""
        from timeshift.detection.loss import center_loss

        return center_loss(maps.flatten(0, -4), targets, stride=self.out_stride)

    def extra_repr(self) -> str:
        return (
            f"num_segments={self.num_segments}, num_classes={self.num_classes}, "
            f"out_stride={self.out_stride}"
        )


def decode_maps(
    maps: torch.Tensor,
    *,
    num_classes: int,
    stride: int,
    max_detections: int = 100,
    score_threshold: float = 0.01,
) -> list[Detections]:
    """:meth:`Detector.decode` for maps of any source (a PyTorch model, an ONNX session)."""
    maps = torch.as_tensor(maps).float().flatten(0, -4)
    m, _, h, w = maps.shape
    heat = maps[:, :num_classes].sigmoid()
    peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
    scores, flat = (heat * peaks).flatten(1).topk(min(max_detections, num_classes * h * w))
    labels = flat // (h * w)
    cell = flat % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    regress = maps[:, num_classes:].flatten(2)  # (M, 4, h*w): w, h, dx, dy
    picked = regress.gather(2, cell[:, None, :].expand(-1, 4, -1))
    size, offset = picked[:, :2].clamp(min=0), picked[:, 2:]
    cx, cy = (xs + offset[:, 0]) * stride, (ys + offset[:, 1]) * stride
    half_w, half_h = size[:, 0] * stride / 2, size[:, 1] * stride / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    limit = torch.tensor([w * stride, h * stride, w * stride, h * stride], dtype=boxes.dtype)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    out = []
    for i in range(m):
        keep = scores[i] >= score_threshold
        out.append(
            Detections(boxes[i][keep].numpy(), scores[i][keep].numpy(), labels[i][keep].numpy())
        )
    return out


def gaussian_radius(height: float, width: float, *, min_overlap: float = 0.7) -> float:
    """CenterNet's Gaussian radius of an object of ``height x width`` (output cells): the
    largest corner displacement for which a box still overlaps the object by ``min_overlap``
    IoU, the smallest of the three cases (both corners inside, outside, one of each)."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


# -- building -------------------------------------------------------------------------------------
def create_detector(name: str, *, num_classes: int, num_segments: int, **kwargs: Any) -> Detector:
    """A detector on the backbone of the registered recognition model ``name``.

    Args:
        name: a recognition model (``timeshift.list_models()``) on a ResNet or MobileNetV2:
            ``tsn_*`` (per-frame 2D), ``tsm_*`` (with ``direction="unidirectional"`` for online
            detection).
        num_classes: object classes.
        num_segments: frames per training clip.
        **kwargs: ``fpn_channels``, ``head_channels``, ``out_stride`` for the detector; the
            others (``direction``, ``fold_div``, ``widths``, ...) build the backbone as
            :func:`timeshift.create_model` does.

    Returns:
        A :class:`Detector` whose ``config`` (``task: "detection"``) rebuilds it, so
        :func:`timeshift.save_model` / :func:`timeshift.load_model` handle it.
    """
    from timeshift.models.registry import _plain, create_model

    own = {k: kwargs.pop(k) for k in DETECTOR_OPTIONS if k in kwargs}
    recognizer = create_model(name, num_classes=0, num_segments=num_segments, **kwargs)
    if (recognizer.modality, recognizer.new_length) != ("rgb", 1):
        raise ValueError("detectors take RGB frames (modality='rgb', new_length=1)")
    if getattr(recognizer.backbone, "num_segments", None) is not None:
        raise ValueError(f"{name}: a video backbone (bLVNet) cannot be read per frame")
    detector = Detector(
        recognizer.backbone, num_classes=num_classes, num_segments=num_segments, **own
    )
    detector.config = {
        "task": "detection",
        "name": name,
        "num_classes": num_classes,
        "num_segments": num_segments,
        "kwargs": _plain({**recognizer.config["kwargs"], **own}),
    }
    return detector
