"""Inflated convolutions and the I3D baselines of TSM Table 5."""

import pytest
import torch
from torch import nn

import timeshift
from timeshift.bench.complexity import model_complexity
from timeshift.models.i3d import NONLOCAL_I3D_PATTERN
from timeshift.ops.inflate import InflatedConv, inflate_weight

# tiny models gain nothing from intra-op threads on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")


def test_time_kernel_semantics_by_hand():
    # one channel, 1x1 kernel: output frame t = a x[t-1] + b x[t] + c x[t+1], zeros past the ends
    conv = nn.Conv2d(1, 1, 1, bias=False)
    inflated = InflatedConv(conv, num_segments=4)
    a, b, c = 2.0, 3.0, 5.0
    with torch.no_grad():
        inflated.weight.copy_(torch.tensor([a, b, c]).view(1, 1, 3, 1, 1))
    x = torch.tensor([1.0, 10.0, 100.0, 1000.0]).view(4, 1, 1, 1)  # one clip of 4 frames
    out = inflated(x).flatten().tolist()
    assert out == [
        b * 1 + c * 10,
        a * 1 + b * 10 + c * 100,
        a * 10 + b * 100 + c * 1000,
        a * 100 + b * 1000,
    ]


def test_centred_inflation_computes_the_2d_conv():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    inflated = InflatedConv(conv, num_segments=3)
    assert inflated.weight.shape == (6, 4, 3, 3, 3)
    x = torch.randn(2 * 3, 4, 9, 9)
    torch.testing.assert_close(inflated(x), conv(x))


def test_mean_inflation_keeps_the_response_to_a_static_video():
    conv = nn.Conv2d(2, 3, 1, bias=False)
    inflated = InflatedConv(conv, num_segments=5, init="mean")
    frame = torch.randn(1, 2, 4, 4)
    static = frame.expand(5, -1, -1, -1)
    out = inflated(static)
    torch.testing.assert_close(out[1:4], conv(static)[1:4])  # interior frames: no padding
    assert not torch.allclose(out[0], conv(frame)[0])  # the ends see zero padding


def test_errors():
    with pytest.raises(ValueError, match="T=4"):
        InflatedConv(nn.Conv2d(2, 2, 1), num_segments=4)(torch.randn(6, 2, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        InflatedConv(nn.Conv2d(2, 2, 1), num_segments=4, time_kernel=2)
    with pytest.raises(ValueError, match="init"):
        inflate_weight(torch.randn(2, 2, 1, 1), 3, "random")


def test_2d_weights_load_into_i3d_replace_and_give_the_2d_network():
    kwargs = {"num_classes": 5, "num_segments": 4, "widths": (8, 8, 16, 16), "stem_width": 8}
    tsn = timeshift.create_model("tsn_resnet18", **kwargs).eval()
    i3d = timeshift.create_model("i3d_replace_resnet18", **kwargs).eval()
    timeshift.load_checkpoint(i3d, tsn.state_dict())  # 4-D conv weights are inflated, centred
    assert i3d.backbone.layer1[0].conv1.weight.shape == (8, 8, 3, 3, 3)
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(i3d(clip), tsn(clip))
        # the temporal kernels make it order-sensitive once they are not centred
        for m in i3d.modules():
            if isinstance(m, InflatedConv):
                m.weight.add_(0.1 * torch.randn_like(m.weight))
        assert not torch.allclose(i3d(clip), i3d(clip.flip(1)), atol=1e-4)


def test_i3d_resnet50_layout():
    with torch.device("meta"):
        model = timeshift.create_model("i3d_resnet50", num_classes=400, num_segments=8)
    backbone = model.backbone
    assert isinstance(backbone.conv1, InflatedConv) and backbone.conv1.time_kernel == 5
    stages = [backbone.layer1, backbone.layer2.net, backbone.layer3, backbone.layer4]
    got = tuple(tuple(int(isinstance(b.conv1, InflatedConv)) for b in s) for s in stages)
    assert got == NONLOCAL_I3D_PATTERN
    assert backbone.layer3[0].conv1.num_segments == 4  # after the temporal pool


# (name, params, GMACs per 8x224^2 clip at 400 classes); TSM Table 5 quotes 29.3M / 33G for
# "I3D from [49]" and 33.0M / 48G for I3D_replace (see docs/baselines.md for the difference)
I3D_NUMBERS = [
    ("i3d_replace_resnet50", 32_986_576, 47.71),
    ("i3d_resnet50", 28_043_472, 28.41),
]


@pytest.mark.parametrize("name,params,gmacs", I3D_NUMBERS)
def test_i3d_parameters_and_macs(name, params, gmacs):
    with torch.device("meta"):
        model = timeshift.create_model(name, num_classes=400, num_segments=8)
    c = model_complexity(model, frames=8)
    assert c.params == params
    assert c.macs / 1e9 == pytest.approx(gmacs, abs=0.01)
