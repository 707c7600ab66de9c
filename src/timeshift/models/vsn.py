"""Video Shuffle Networks (VSN): video-shuffle bottleneck blocks combined with residual TSM.

Ma et al., *Learning Efficient Video Representation with Video Shuffle Networks*, section 3.
A video-shuffle block is a ResNet bottleneck with a :func:`~timeshift.ops.shuffle.video_shuffle`
and its inverse around part of the residual branch (Figure 3):

* **compact** (the paper's default): shuffle immediately before the 3x3 ``conv2`` and unshuffle
  immediately after it (before ``bn2``);
* **headtail**: shuffle the input of the residual branch (before ``conv1``) and unshuffle its
  output (after ``bn3``, before the addition); the shortcut sees the unshuffled input.

VSN-ResNet-50/101 (Table 1, section 3.3) turn the last block of each of the four stages into a
compact block and give every other block a residual, zero-padded, bi-directional temporal shift
(TSM). The blocks keep torchvision's submodule names, so ImageNet and TSM checkpoints load, and
neither the shuffle nor the shift has parameters: a VSN model has exactly the parameters of the
TSM model on the same backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from timeshift.models.recognizer import Recognizer
from timeshift.models.registry import build_recognizer, register_model
from timeshift.models.temporalize import BlockSite, register_temporal_layer, temporalize
from timeshift.ops.shuffle import VideoShuffle, VideoUnshuffle, check_shuffle_channels

__all__ = [
    "BLOCK_KINDS",
    "VideoShuffleBottleneck",
    "add_video_shuffle",
    "build_vsn",
]

_logger = logging.getLogger(__name__)

BlockKind = Literal["compact", "headtail"]
BLOCK_KINDS = ("compact", "headtail")
_STAGES = ("layer1", "layer2", "layer3", "layer4")
_BOTTLENECK_PARTS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample")
# offline ONNX export verified; not causal: the op reads later frames (see timeshift.online)
_TAGS = ("exportable",)
_VSN_PAPER = (
    "Ma et al., Learning Efficient Video Representation with Video Shuffle Networks, arXiv 2019"
)


class VideoShuffleBottleneck(nn.Module):
    """A ResNet bottleneck with video shuffle in its residual branch (VSN Figure 3).

    Built from an existing bottleneck, whose submodules it takes over under the same names
    (``conv1`` ... ``bn3``, ``downsample``), so state-dict keys are those of the plain block.

    Args:
        block: a bottleneck with ``conv1``/``bn1``/``conv2``/``bn2``/``conv3``/``bn3``/``relu``/
            ``downsample`` (torchvision's or :class:`~timeshift.models.backbones.Bottleneck`).
        num_segments: frames per video ``T``.
        kind: ``"compact"`` (shuffle around ``conv2``) or ``"headtail"`` (around the branch).
        groups: channel groups per frame of the shuffle; ``None`` = ``T`` (the paper).

    Raises:
        TypeError: ``block`` is not a bottleneck.
        ValueError: unknown ``kind``, or a shuffled channel count not divisible by the groups.
    """

    def __init__(
        self,
        block: nn.Module,
        *,
        num_segments: int,
        kind: BlockKind = "compact",
        groups: int | None = None,
    ) -> None:
        super().__init__()
        if kind not in BLOCK_KINDS:
            raise ValueError(f"unknown video shuffle block {kind!r}; expected one of {BLOCK_KINDS}")
        missing = [p for p in _BOTTLENECK_PARTS if not hasattr(block, p)]
        if missing:
            raise TypeError(
                f"video shuffle blocks are built from ResNet bottlenecks; {type(block).__name__} "
                f"has no {missing} (VSN needs a Bottleneck backbone such as resnet50)"
            )
        for name in _BOTTLENECK_PARTS:
            setattr(self, name, getattr(block, name))
        self.stride = getattr(block, "stride", 1)
        # the channels each shuffle sees: conv2's input/output, or the branch's input/output
        if kind == "compact":
            shuffled = (self.conv2.in_channels, self.conv2.out_channels)
        else:
            shuffled = (self.conv1.in_channels, self.conv3.out_channels)
        for channels in shuffled:
            check_shuffle_channels(channels, num_segments, groups)
        self.kind = kind
        self.num_segments = num_segments
        self.groups = groups
        self.shuffle = VideoShuffle(num_segments, groups)
        self.unshuffle = VideoUnshuffle(num_segments, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.kind == "compact":
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.unshuffle(self.conv2(self.shuffle(out)))
            out = self.relu(self.bn2(out))
            out = self.bn3(self.conv3(out))
        else:  # headtail: the whole residual branch sees the shuffled frames
            out = self.relu(self.bn1(self.conv1(self.shuffle(x))))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.unshuffle(self.bn3(self.conv3(out)))
        return self.relu(out + identity)

    def extra_repr(self) -> str:
        groups = self.num_segments if self.groups is None else self.groups
        return f"kind={self.kind}, num_segments={self.num_segments}, groups={groups}"


def _per_stage(shuffle_blocks: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shuffle_blocks, int):
        return (shuffle_blocks,) * len(_STAGES)
    counts = tuple(int(k) for k in shuffle_blocks)
    if len(counts) != len(_STAGES):
        raise ValueError(
            f"shuffle_blocks must be one count for every stage or {len(_STAGES)} counts "
            f"(layer1..layer4), got {list(shuffle_blocks)}"
        )
    return counts


@register_temporal_layer("video_shuffle")
def _video_shuffle_layer(
    block: nn.Module,
    *,
    num_segments: int,
    channels: int,
    kind: BlockKind = "compact",
    groups: int | None = None,
) -> nn.Module:
    """A whole bottleneck becomes a video-shuffle block (``temporalize(place="inplace")``)."""
    del channels  # the block knows its own
    return VideoShuffleBottleneck(block, num_segments=num_segments, kind=kind, groups=groups)


def _first_shuffled(backbone: nn.Module, counts: Sequence[int]) -> dict[str, int]:
    """Index of the first video-shuffle block of each stage; checks the stages exist."""
    first = {}
    for stage_name, count in zip(_STAGES, counts, strict=True):
        stage = getattr(backbone, stage_name, None)
        if not isinstance(stage, nn.Sequential):
            raise TypeError(
                f"VSN needs a ResNet backbone with stages {_STAGES}; {type(backbone).__name__} "
                f"has no nn.Sequential {stage_name!r}"
            )
        if not 0 <= count <= len(stage):
            raise ValueError(
                f"shuffle_blocks asks for {count} video shuffle blocks in {stage_name}, which has "
                f"{len(stage)} blocks"
            )
        first[stage_name] = len(stage) - count
    return first


def add_video_shuffle(
    backbone: nn.Module,
    *,
    num_segments: int,
    block: BlockKind = "compact",
    shuffle_blocks: int | Sequence[int] = 1,
    groups: int | None = None,
    shift: bool = True,
    fold_div: int = 8,
    block_stride: int = 1,
) -> nn.Module:
    """Make a ResNet backbone a VSN, in place.

    In each stage ``layer1..layer4`` the last ``shuffle_blocks`` blocks become video-shuffle
    blocks (the ``"video_shuffle"`` temporal layer); the other blocks get a residual temporal
    shift (``conv1`` wrapped by :class:`~timeshift.ops.TemporalShift`, weights under ``.net``)
    when ``shift`` is set. Both go through :func:`~timeshift.temporalize`.

    Args:
        backbone: a torchvision-style bottleneck ResNet (``layer1``..``layer4``).
        num_segments: frames per video ``T``.
        block: ``"compact"`` or ``"headtail"``.
        shuffle_blocks: video-shuffle blocks at the end of each stage: one count for all
            stages, or four counts (``(1, 0, 0, 1)``: only ``layer1`` and ``layer4``).
        groups: channel groups per frame of the shuffle (``None`` = ``T``).
        shift: residual temporal shift in the blocks without video shuffle.
        fold_div: ``C // fold_div`` channels shift in each direction (8 = TSM's 1/4).
        block_stride: shift every k-th block of a stage (counted from its first block).

    Returns:
        The same ``backbone``, modified.
    """
    counts = _per_stage(shuffle_blocks)
    if block not in BLOCK_KINDS:
        raise ValueError(f"unknown video shuffle block {block!r}; expected one of {BLOCK_KINDS}")
    if block_stride < 1:
        raise ValueError(f"block_stride must be >= 1, got {block_stride}")
    first = _first_shuffled(backbone, counts)

    def shuffled(site: BlockSite) -> bool:
        return site.stage_name in first and site.index >= first[site.stage_name]

    if shift:
        temporalize(
            backbone,
            num_segments=num_segments,
            layer_options={"fold_div": fold_div},
            block_stride=block_stride,
            select=lambda site: site.stage_name in first and not shuffled(site),
        )
    temporalize(
        backbone,
        num_segments=num_segments,
        temporal_layer="video_shuffle",
        layer_options={"kind": block, "groups": groups},
        place="inplace",
        block_stride=1,
        select=shuffled,
    )
    _logger.debug("VSN: %s shuffle blocks per stage %s, shift=%s", block, counts, shift)
    return backbone


def build_vsn(backbone: str, **kwargs: Any) -> Recognizer:
    """Backbone by name -> video shuffle + residual shift (:func:`add_video_shuffle`) ->
    Recognizer.

    Args:
        backbone: a bottleneck ResNet name (``resnet50``, ``resnet101``, ...).
        **kwargs: ``num_classes``, ``num_segments`` (the shuffles regroup over these ``T``
            frames), the options of :func:`add_video_shuffle` (``block``, ``shuffle_blocks``,
            ``groups``, ``shift``, ``fold_div``, ``block_stride``; ablations of the paper:
            ``block="headtail"`` (Table 7), ``shuffle_blocks`` (Table 8), ``shift=False`` for
            video shuffle alone (Table 9)), ``dropout`` and ``partial_bn`` (the paper trains
            with dropout 0.8 and partial BN), and backbone options such as ``widths``.
    """
    return build_recognizer(backbone, transform=add_video_shuffle, **kwargs)


@register_model(family="vsn", backbone="resnet50", paper=_VSN_PAPER, tags=_TAGS)
def vsn_resnet50(**kwargs: Any) -> Recognizer:
    return build_vsn("resnet50", **kwargs)


@register_model(family="vsn", backbone="resnet101", paper=_VSN_PAPER, tags=_TAGS)
def vsn_resnet101(**kwargs: Any) -> Recognizer:
    return build_vsn("resnet101", **kwargs)


@register_model(family="vsn", backbone="resnet_bottleneck_tiny", paper=_VSN_PAPER, tags=_TAGS)
def vsn_resnet_tiny(**kwargs: Any) -> Recognizer:
    """Tiny bottleneck ResNet (tests); stage widths 8..64 so that T = 1, 2, 4 or 8 divide them."""
    kwargs.setdefault("widths", (8, 16, 32, 64))
    return build_vsn("resnet_bottleneck_tiny", **kwargs)
