"""3D-CNN baselines of the TSM paper's Table 5, built by inflating 2D ResNets.

* ``i3d_replace_resnet50`` ("I3D_replace"): TSM-ResNet50 with every temporal shift replaced by
  a 3x1x1 temporal convolution, i.e. the first 1x1 conv of every residual branch inflated to
  3x1x1. Same placement as the shift, so it isolates "shift vs learned temporal conv".
* ``i3d_resnet50`` ("I3D from [49]", the non-local paper's I3D ResNet-50 baseline): stem
  inflated to 5x7x7, the first 1x1 conv inflated to 3x1x1 in the blocks of the pattern
  ``(1,1,1), (1,0,1,0), (1,0,1,0,1,0), (0,1,0)``, and a temporal max-pool (stride 2) after
  ``layer1``; that pooling is what keeps its MACs near TSM's.

Both start from the 2D network's weights with centred kernels (:mod:`timeshift.ops.inflate`),
so 2D ImageNet checkpoints load into them and give the 2D network's function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from timeshift.models.recognizer import Recognizer
from timeshift.models.registry import build_recognizer, register_model
from timeshift.models.temporalize import register_temporal_layer, temporalize
from timeshift.ops.inflate import InflatedConv

__all__ = ["NONLOCAL_I3D_PATTERN", "build_i3d", "inflate_i3d"]

# offline ONNX export verified; not causal: the op reads later frames (see timeshift.online)
_TAGS = ("exportable",)
_I3D_PAPER = "Wang et al., Non-local Neural Networks, CVPR 2018 (I3D baseline, via TSM Table 5)"
_TSM_PAPER = "Lin et al., TSM: Temporal Shift Module for Efficient Video Understanding, ICCV 2019"

# blocks whose first conv is inflated, per stage, in the non-local paper's I3D ResNet-50
NONLOCAL_I3D_PATTERN = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))


@register_temporal_layer("inflate")
def _inflate_layer(
    net: nn.Module, *, num_segments: int, channels: int, time_kernel: int = 3, init="center"
) -> nn.Module:
    del channels  # the inflated kernel has the conv's channels
    return InflatedConv(net, num_segments, time_kernel, init=init)


def _pattern(layers: Sequence[int]) -> list[tuple[int, ...]]:
    """The non-local paper's pattern for ResNet-50; for other depths the same rule: every block
    of layer1, every 2nd block of layer2/3 from the first, every 2nd of layer4 from the second."""
    if tuple(layers) == tuple(len(p) for p in NONLOCAL_I3D_PATTERN):
        return [tuple(p) for p in NONLOCAL_I3D_PATTERN]
    first, second, third, fourth = layers
    return [
        (1,) * first,
        tuple(1 - i % 2 for i in range(second)),
        tuple(1 - i % 2 for i in range(third)),
        tuple(i % 2 for i in range(fourth)),
    ]


def inflate_i3d(
    backbone: nn.Module,
    *,
    num_segments: int,
    stem_time_kernel: int = 5,
    time_kernel: int = 3,
    temporal_pool: bool = True,
    init: str = "center",
) -> nn.Module:
    """Inflate a ResNet the non-local paper's way (see the module docstring), in place: the
    stem, then the ``"inflate"`` temporal layer on the blocks of :func:`_pattern`."""
    if stem_time_kernel > 1:
        backbone.conv1 = InflatedConv(backbone.conv1, num_segments, stem_time_kernel, init=init)
    stages = [f"layer{i}" for i in range(1, 5)]
    flags = dict(zip(stages, _pattern([len(getattr(backbone, s)) for s in stages]), strict=True))
    return temporalize(
        backbone,
        num_segments=num_segments,
        temporal_layer="inflate",
        layer_options={"time_kernel": time_kernel, "init": init},
        block_stride=1,
        temporal_pool=temporal_pool,
        select=lambda site: bool(flags[site.stage_name][site.index]),
    )


def build_i3d(backbone: str, **kwargs: Any) -> Recognizer:
    """A ResNet inflated by :func:`inflate_i3d` in a Recognizer; its options (``stem_time_kernel``,
    ``time_kernel``, ``temporal_pool``, ``init``) and the usual ones go in ``kwargs``."""
    return build_recognizer(backbone, transform=inflate_i3d, **kwargs)


@register_model(family="i3d", backbone="resnet50", paper=_I3D_PAPER, tags=_TAGS)
def i3d_resnet50(**kwargs: Any) -> Recognizer:
    """I3D ResNet-50 of the non-local paper ("I3D from [49]" in TSM Table 5)."""
    return build_i3d("resnet50", **kwargs)


@register_model(family="i3d", backbone="resnet18", paper=_I3D_PAPER, tags=_TAGS)
def i3d_resnet18(**kwargs: Any) -> Recognizer:
    """The same inflation on ResNet-18 (3x3 first convs become 3x3x3): small comparisons."""
    return build_i3d("resnet18", **kwargs)


@register_model(family="i3d", backbone="resnet50", paper=_TSM_PAPER, tags=_TAGS)
def i3d_replace_resnet50(**kwargs: Any) -> Recognizer:
    """TSM-ResNet50 with every shift replaced by a 3x1x1 conv ("I3D_replace", TSM Table 5)."""
    return build_recognizer("resnet50", temporal_layer="inflate", **kwargs)


@register_model(family="i3d", backbone="resnet18", paper=_TSM_PAPER, tags=_TAGS)
def i3d_replace_resnet18(**kwargs: Any) -> Recognizer:
    """TSM-ResNet18 with every shift replaced by a 3x3x3 conv (small comparisons)."""
    return build_recognizer("resnet18", temporal_layer="inflate", **kwargs)


@register_model(family="i3d", backbone="resnet_bottleneck_tiny", paper=_I3D_PAPER, tags=_TAGS)
def i3d_resnet_tiny(**kwargs: Any) -> Recognizer:
    """The I3D inflation on a tiny bottleneck ResNet (tests): 1x1 first convs become 3x1x1."""
    return build_i3d("resnet_bottleneck_tiny", **kwargs)


@register_model(family="i3d", backbone="resnet_tiny", paper=_TSM_PAPER, tags=_TAGS)
def i3d_replace_resnet_tiny(**kwargs: Any) -> Recognizer:
    """I3D_replace on the tiny basic-block ResNet (tests)."""
    return build_recognizer("resnet_tiny", temporal_layer="inflate", **kwargs)
