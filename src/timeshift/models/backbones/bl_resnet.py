"""bLResNet for video: the big-little backbone of bLVNet-TAM (Fan et al., NeurIPS 2019).

A clip of ``2T`` frames is processed as ``T`` pairs. Inside every big-little ("bL") stage the odd
frames (0-indexed 1, 3, 5, ...: the second frame of each pair) go through the deep *big* branch
at half resolution and the even frames (0, 2, 4, ...) through the narrow *little* branch at full
resolution; the two are summed pair by pair (*local fusion*), refined by one shared residual
block and handed on to both frames of the pair. A temporal aggregation module (TAM) runs over all
``2T`` frames before the bL part of the stem and before each bL stage, and inside the residual
branch of every block of ``layer4``, which sees one frame per pair (``T`` frames).

The layout (module names, block counts, where strides, pooling and ReLUs sit) follows the
official implementation (IBM/bLVNet-TAM, itself built on IBM/BigLittleNet's bLResNet), so that
its checkpoints load with nothing but a prefix rename and the TAM weights stacked: ``conv1``,
``bn1``, ``b_conv0``/``bn_b0`` (big stem), ``l_conv0..2``/``bn_l0..2`` (little stem),
``bl_init``/``bn_bl_init``, ``tam``, ``layer1..3`` with ``tam``, ``big``, ``little``,
``little_e`` and ``fusion``, then a plain ``layer4`` whose blocks hold a ``tam``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from timeshift.models.backbones.resnet import init_conv_norm
from timeshift.ops.aggregation import TemporalAggregation

__all__ = [
    "BLBottleneck",
    "BLResNet",
    "BigLittleStage",
    "bl_resnet50",
    "bl_resnet101",
    "bl_resnet_tiny",
    "check_frame_pairs",
]

NormLayer = Callable[[int], nn.Module]

# blocks per stage; bLResNet-101 is not ResNet-101's (3, 4, 23, 3) (official code and bLNet)
BL_RESNET_LAYERS = {50: (3, 4, 6, 3), 101: (4, 8, 18, 3)}


def check_frame_pairs(num_segments: int) -> None:
    """bLVNet needs an even number of input frames: ``T`` (big, little) pairs."""
    if num_segments < 2 or num_segments % 2:
        raise ValueError(
            f"bLVNet takes pairs of frames (odd ones to the big branch, even ones to the little "
            f"branch): num_segments must be an even number >= 2 (2T, e.g. 16 for 8x2), "
            f"got {num_segments}"
        )


def _conv1x1(in_planes: int, out_planes: int) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, bias=False)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BLBottleneck(nn.Module):
    """Bottleneck of bLResNet: ``planes`` is the *output* width (inner width ``planes // 4``).

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the 3x3 conv.
        downsample: shortcut projection (bLResNet: ``AvgPool2d(3, 2, 1)`` and/or 1x1 conv + BN).
        last_relu: ReLU after the residual sum; the last block of a big branch leaves it out
            because the branch sum is followed by its own ReLU.
        tam: optional temporal aggregation on the block input (``ResBlock_TAM`` of ``layer4``).
            Only the residual branch sees it, except when the block has a ``downsample``: the
            official code projects the *aggregated* input then, which is kept for its weights.
        norm_layer: normalisation factory.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        *,
        stride: int = 1,
        downsample: nn.Module | None = None,
        last_relu: bool = True,
        tam: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = planes // self.expansion
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv1x1(width, planes)
        self.bn3 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.last_relu = last_relu
        self.tam = tam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        if self.tam is not None:
            x = self.tam(x)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + identity
        return self.relu(out) if self.last_relu else out


def _make_stage(
    inplanes: int,
    planes: int,
    blocks: int,
    *,
    stride: int = 1,
    last_relu: bool = True,
    tam_segments: int | None = None,
    r: int = 3,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> nn.Sequential:
    """A sequence of :class:`BLBottleneck`; the shortcut downsamples by average pooling."""
    shortcut: list[nn.Module] = []
    if stride != 1:
        shortcut.append(nn.AvgPool2d(3, stride=2, padding=1))
    if inplanes != planes:
        shortcut += [_conv1x1(inplanes, planes), norm_layer(planes)]
    layers = []
    for i in range(blocks):
        channels = inplanes if i == 0 else planes
        layers.append(
            BLBottleneck(
                channels,
                planes,
                stride=stride if i == 0 else 1,
                downsample=(nn.Sequential(*shortcut) if shortcut else None) if i == 0 else None,
                # as the official code: a single-block stage keeps its final ReLU
                last_relu=last_relu or blocks == 1 or i < blocks - 1,
                tam=None
                if tam_segments is None
                else TemporalAggregation(channels, tam_segments, r),
                norm_layer=norm_layer,
            )
        )
    return nn.Sequential(*layers)


def _merge_pairs(big: torch.Tensor, little: torch.Tensor) -> torch.Tensor:
    """Local fusion: pair ``k``'s big (odd-frame) and little (even-frame) maps summed."""
    # nearest-neighbour resize, the official code's F.interpolate default (the paper says
    # bilinear); it is the identity where the sizes already agree
    big = F.interpolate(big, size=little.shape[-2:])
    return big + little


def _to_both_frames(pairs: torch.Tensor) -> torch.Tensor:
    """``(N*T, ...)`` merged pairs -> ``(N*2T, ...)``: each pair's result for both its frames."""
    return pairs.repeat_interleave(2, dim=0)


class BigLittleStage(nn.Module):
    """One bL stage (``bLModule``): TAM, big and little branches, local fusion, fusion block.

    Args:
        in_channels, out_channels: stage input and output channels.
        blocks: the stage's block count ``n``: the big branch has ``n - 1`` blocks (the first
            with stride 2, so it works at half resolution), the little branch
            ``max(1, n // beta - 1)`` blocks of width ``out_channels // alpha`` followed by a
            1x1 conv + BN back to ``out_channels``, and one shared fusion block of ``stride``.
        alpha, beta: bLNet's width and depth ratios of the little branch.
        stride: stride of the fusion block.
        num_segments: frames per clip ``2T`` seen by the TAM.
        r: TAM range.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        blocks: int,
        *,
        alpha: int,
        beta: int,
        stride: int,
        num_segments: int,
        r: int = 3,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if blocks < 2:
            raise ValueError(f"a big-little stage needs >= 2 blocks (big + fusion), got {blocks}")
        little = out_channels // alpha
        self.tam = TemporalAggregation(in_channels, num_segments, r)
        self.big = _make_stage(
            in_channels, out_channels, blocks - 1, stride=2, last_relu=False, norm_layer=norm_layer
        )
        self.little = _make_stage(
            in_channels, little, max(1, blocks // beta - 1), norm_layer=norm_layer
        )
        self.little_e = nn.Sequential(_conv1x1(little, out_channels), norm_layer(out_channels))
        self.fusion = _make_stage(
            out_channels, out_channels, 1, stride=stride, norm_layer=norm_layer
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tam(x)
        big = self.big(x[1::2])
        little = self.little_e(self.little(x[0::2]))
        out = self.fusion(self.relu(_merge_pairs(big, little)))
        return _to_both_frames(out)


class BLResNet(nn.Module):
    """bLResNet backbone of bLVNet-TAM on ``(N*2T, C, H, W)`` frames.

    ``forward_features`` returns ``(N*T, num_features, h, w)``: one feature map per frame pair,
    so a :class:`~timeshift.models.Recognizer` built with ``num_segments = 2T`` averages ``T``
    segment predictions.

    Args:
        layers: blocks of the four stages, ``(3, 4, 6, 3)`` for bLResNet-50.
        num_segments: input frames per clip ``2T`` (even; ``16`` for the paper's "8x2").
        alpha, beta: width and depth ratios of the little branch (paper: 2 and 4).
        r: temporal range of every TAM (paper: 3).
        widths: stage widths before the x4 expansion; narrow values give tiny test models.
        stem_width: accepted for symmetry with :class:`ResNet`; must equal ``widths[0]``.
        in_chans: input channels.
        num_classes: ``0`` (default) for a feature extractor with an identity ``fc``.
        zero_init_residual: zero the last BN of every block (the official initialisation).
        norm_layer: normalisation factory.
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        num_segments: int,
        alpha: int = 2,
        beta: int = 4,
        r: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        in_chans: int = 3,
        num_classes: int = 0,
        zero_init_residual: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        check_frame_pairs(num_segments)
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("bLResNet needs four stages: layers and widths of length 4")
        self.num_segments = num_segments
        self.in_chans = in_chans
        self.alpha, self.beta, self.r = alpha, beta, r
        stem = widths[0]
        if stem_width is not None and stem_width != stem:
            raise ValueError(
                f"bLResNet's stem has widths[0]={stem} channels (the bL stem feeds layer1 "
                f"directly); got stem_width={stem_width}"
            )
        expansion = BLBottleneck.expansion
        out = [w * expansion for w in widths]

        self.conv1 = nn.Conv2d(in_chans, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(stem)
        self.relu = nn.ReLU(inplace=True)
        self.tam = TemporalAggregation(stem, num_segments, r)
        # bL stem: one strided 3x3 conv for the big frames, three convs for the little ones
        self.b_conv0 = _conv3x3(stem, stem, stride=2)
        self.bn_b0 = norm_layer(stem)
        self.l_conv0 = _conv3x3(stem, stem // alpha)
        self.bn_l0 = norm_layer(stem // alpha)
        self.l_conv1 = _conv3x3(stem // alpha, stem // alpha, stride=2)
        self.bn_l1 = norm_layer(stem // alpha)
        self.l_conv2 = _conv1x1(stem // alpha, stem)
        self.bn_l2 = norm_layer(stem)
        self.bl_init = _conv1x1(stem, stem)
        self.bn_bl_init = norm_layer(stem)

        stage = dict(alpha=alpha, beta=beta, num_segments=num_segments, r=r, norm_layer=norm_layer)
        self.layer1 = BigLittleStage(stem, out[0], layers[0], stride=2, **stage)
        self.layer2 = BigLittleStage(out[0], out[1], layers[1], stride=2, **stage)
        self.layer3 = BigLittleStage(out[1], out[2], layers[2], stride=1, **stage)
        # one frame per pair from here on: T frames
        self.layer4 = _make_stage(
            out[2],
            out[3],
            layers[3],
            stride=2,
            tam_segments=num_segments // 2,
            r=r,
            norm_layer=norm_layer,
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = out[3]
        self.fc: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # the official initialisation; TAM weights are drawn by TemporalAggregation itself
        # with the same rule (kaiming normal, fan-out)
        init_conv_norm(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BLBottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():
            return
        if x.dim() != 4:
            raise ValueError(
                f"bLResNet expects frames folded into the batch, (N*2T, C, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[0] % self.num_segments:
            raise ValueError(
                f"bLResNet was built for clips of num_segments={self.num_segments} frames "
                f"({self.num_segments // 2} big/little pairs): the batch dimension "
                f"{x.shape[0]} of {tuple(x.shape)} is not a multiple of {self.num_segments}"
            )

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tam(self.relu(self.bn1(self.conv1(x))))
        big = self.bn_b0(self.b_conv0(x[1::2]))
        little = self.relu(self.bn_l0(self.l_conv0(x[0::2])))
        little = self.relu(self.bn_l1(self.l_conv1(little)))
        little = self.bn_l2(self.l_conv2(little))
        out = self.relu(big + little)
        out = self.relu(self.bn_bl_init(self.bl_init(out)))
        return _to_both_frames(out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N*2T, C, H, W)`` frames -> ``(N*T, num_features, h, w)``, one map per pair."""
        self._check_input(x)
        x = self._stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        # both frames of a pair hold the same merged features: keep one per pair
        return self.layer4(x[1::2])

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# partials rather than functions taking **kwargs: their options are BLResNet's keyword
# parameters, which the model builder reads to route create_model's options and refuse others
bl_resnet50 = partial(BLResNet, BL_RESNET_LAYERS[50])  # alpha=2, beta=4; num_segments = 2T
# bLResNet-101: stages of (4, 8, 18, 3) blocks, as the official code and bLNet
bl_resnet101 = partial(BLResNet, BL_RESNET_LAYERS[101])
# narrow bLResNet for tests; beta=2 so that layer3's little branch has two blocks and layer1's
# big branch ends without ReLU, exercising every structural case at 32 px
bl_resnet_tiny = partial(BLResNet, (3, 2, 6, 2), widths=(8, 16, 32, 64), beta=2)
