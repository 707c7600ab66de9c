"""temporalize() on our backbones and on user modules built like torchvision's."""

import pytest
import torch
from torch import nn

from timeshift import temporalize
from timeshift.models.backbones import create_backbone
from timeshift.ops import TemporalPool, TemporalShift

# tiny models gain nothing from intra-op threads on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")


class UserBlock(nn.Module):
    """A user's torchvision-style basic block (not our class)."""

    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.downsample = None

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class UserResNet(nn.Module):
    def __init__(self, blocks=(2, 2, 2, 2), ch=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch, 3, padding=1)
        for i, n in enumerate(blocks, start=1):
            setattr(self, f"layer{i}", nn.Sequential(*[UserBlock(ch) for _ in range(n)]))

    def forward(self, x):
        x = self.conv1(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x


class UserInvertedResidual(nn.Module):
    def __init__(self, ch, res):
        super().__init__()
        self.use_res_connect = res
        self.conv = nn.Sequential(nn.Conv2d(ch, ch * 2, 1), nn.ReLU(), nn.Conv2d(ch * 2, ch, 1))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _shifts(module):
    return [m for m in module.modules() if isinstance(m, TemporalShift)]


def test_user_resnet_residual_placement():
    net = temporalize(UserResNet(), num_segments=4)
    assert len(_shifts(net)) == 8
    assert isinstance(net.layer1[0].conv1, TemporalShift)
    assert "layer1.0.conv1.net.weight" in net.state_dict()
    x = torch.randn(8, 3, 8, 8)
    assert net(x).shape == (8, 16, 8, 8)


def test_residual_placement_keeps_shortcut_unshifted():
    # with zeroed residual branches the block is identity+ReLU: shifting the shortcut would show
    net = UserResNet(blocks=(1, 1, 1, 1))
    for m in net.modules():
        if isinstance(m, UserBlock):
            nn.init.zeros_(m.bn2.weight)
    x = torch.rand(8, 16, 4, 4)
    residual = temporalize(UserResNet(blocks=(1, 1, 1, 1)), num_segments=4)
    residual.load_state_dict(
        {
            k.replace("conv1.weight", "conv1.net.weight") if ".0.conv1" in k else k: v
            for k, v in net.state_dict().items()
        }
    )
    assert torch.allclose(residual.layer1(x), x)
    inplace = temporalize(UserResNet(blocks=(1, 1, 1, 1)), num_segments=4, place="inplace")
    for m in inplace.modules():
        if isinstance(m, UserBlock):
            nn.init.zeros_(m.bn2.weight)
    assert not torch.allclose(inplace.layer1(x), x)


def test_inplace_placement_wraps_blocks():
    net = temporalize(
        create_backbone("resnet_tiny", num_classes=0), num_segments=2, place="inplace"
    )
    assert isinstance(net.layer1[0], TemporalShift)
    assert "layer1.0.net.conv1.weight" in net.state_dict()
    assert net.forward_features(torch.randn(4, 3, 32, 32)).shape[0] == 4


def test_inplace_shift_with_inplace_placement_matches_out_of_place_in_eval():
    x = torch.randn(4, 3, 32, 32)
    a = temporalize(
        create_backbone("resnet_tiny", num_classes=0), num_segments=2, place="inplace"
    ).eval()
    b = temporalize(
        create_backbone("resnet_tiny", num_classes=0), num_segments=2, place="inplace", inplace=True
    ).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.allclose(a.forward_features(x), b.forward_features(x), atol=1e-6)


def test_inplace_shift_with_residual_placement_is_refused():
    with pytest.raises(ValueError, match="shortcut"):
        temporalize(UserResNet(), num_segments=2, inplace=True)


def test_user_mobilenet_like_blocks():
    features = nn.Sequential(
        nn.Conv2d(3, 8, 1), UserInvertedResidual(8, False), UserInvertedResidual(8, True)
    )
    net = nn.Module()
    net.features = features
    temporalize(net, num_segments=2)
    assert not _shifts(features[1]) and isinstance(features[2].conv[0], TemporalShift)
    assert features[2].conv[0].net.in_channels == 8


def test_every_second_block_for_deep_layer3():
    net = temporalize(UserResNet(blocks=(3, 4, 23, 3)), num_segments=8)
    assert len(_shifts(net)) == 2 + 2 + 12 + 2
    net = temporalize(UserResNet(blocks=(3, 4, 6, 3)), num_segments=8, block_stride=3)
    assert len(_shifts(net)) == 1 + 2 + 2 + 1


def test_custom_temporal_layer_factory():
    seen = []

    def factory(net, *, num_segments, channels, **options):
        seen.append((num_segments, channels, options))
        return TemporalShift(net, num_segments, fold_div=4)

    temporalize(
        UserResNet(blocks=(1, 1, 1, 1), ch=12), num_segments=3, temporal_layer=factory, gain=2
    )
    assert seen == [(3, 12, {"gain": 2})] * 4


def test_temporal_pool_tells_later_stages():
    net = temporalize(
        create_backbone("resnet_tiny", num_classes=0), num_segments=8, temporal_pool=True
    )
    assert isinstance(net.layer2, TemporalPool)
    assert net.layer1[0].conv1.num_segments == 8
    assert net.layer2.net[0].conv1.num_segments == 4
    assert net.forward_features(torch.randn(16, 3, 32, 32)).shape[0] == 8


@pytest.mark.parametrize(
    "module,kwargs,match",
    [
        (nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), {}, "found no residual block"),
        (UserResNet(), {"place": "outside"}, "place must be one of"),
        (UserResNet(), {"temporal_layer": "warp"}, "unknown temporal_layer"),
    ],
)
def test_errors(module, kwargs, match):
    with pytest.raises(ValueError, match=match):
        temporalize(module, num_segments=2, **kwargs)


def test_layer_options_mapping_and_keywords_reach_the_factory():
    net = temporalize(
        UserResNet(blocks=(1, 1, 1, 1)),
        num_segments=4,
        layer_options={"fold_div": 4, "direction": "unidirectional"},
    )
    assert {(s.fold_div, s.direction) for s in _shifts(net)} == {(4, "unidirectional")}
    with pytest.raises(TypeError, match="given twice"):
        temporalize(UserResNet(), num_segments=4, layer_options={"fold_div": 4}, fold_div=2)


def test_an_option_the_layer_does_not_declare_names_the_accepted_ones():
    with pytest.raises(TypeError, match=r"'shift' takes the options \['direction', 'fold_div', "
                       r"'inplace'\], not \['alpha'\]"):  # fmt: skip
        temporalize(UserResNet(), num_segments=4, layer_options={"alpha": 0.5})
    net = UserResNet()
    with pytest.raises(TypeError, match=r"'stshift' takes the options \['alpha', 'dims'\]"):
        temporalize(net, num_segments=4, temporal_layer="stshift", fold_div=4)
    assert not _shifts(net)  # refused before anything was wrapped


def test_select_chooses_the_blocks():
    net = temporalize(
        UserResNet(blocks=(3, 4, 6, 3)),
        num_segments=4,
        select=lambda site: site.index == len(site.stage) - 1,
    )
    assert all(isinstance(getattr(net, f"layer{i}")[-1].conv1, TemporalShift) for i in range(1, 5))
    assert len(_shifts(net)) == 4


class TemporalDifference(nn.Module):
    """A toy temporal op: adds a learnable share of the difference to the previous frame."""

    def __init__(self, net, num_segments, channels, gain):
        super().__init__()
        self.net, self.num_segments = net, num_segments
        self.gain = nn.Parameter(torch.full((channels, 1, 1), gain))

    def forward(self, x):
        v = x.view(-1, self.num_segments, *x.shape[1:])
        diff = torch.cat([torch.zeros_like(v[:, :1]), v[:, 1:] - v[:, :-1]], dim=1)
        return self.net((v + self.gain * diff).flatten(0, 1))


@pytest.fixture
def scratch_registries():
    """Registrations made by a test are forgotten after it."""
    from timeshift.models import registry
    from timeshift.models.temporalize import TEMPORAL_LAYERS

    saved = [(d, dict(d)) for d in (TEMPORAL_LAYERS, registry._ENTRYPOINTS, registry._INFO)]
    yield
    for d, before in saved:
        d.clear()
        d.update(before)


def test_a_new_temporal_op_is_a_factory_and_a_three_line_entrypoint(scratch_registries):
    import timeshift
    from timeshift.models import build_recognizer, register_model, register_temporal_layer

    @register_temporal_layer("difference")
    def difference(net, *, num_segments, channels, gain=0.5):
        return TemporalDifference(net, num_segments, channels, gain)

    @register_model(family="tdn", backbone="resnet_tiny")
    def tdn_resnet_tiny(**kwargs):
        return build_recognizer("resnet_tiny", temporal_layer="difference", **kwargs)

    assert "tdn_resnet_tiny" in timeshift.list_models(tags="tiny")
    model = timeshift.create_model("tdn_resnet_tiny", num_classes=5, num_segments=4, gain=0.25)
    ops = [m for m in model.modules() if isinstance(m, TemporalDifference)]
    assert len(ops) == 4 and all(torch.all(op.gain == 0.25) for op in ops)
    assert "backbone.layer1.0.conv1.net.weight" in model.state_dict()
    x = torch.randn(2, 4, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():  # it sees time: reversing the frames changes the prediction
        assert not torch.allclose(model.eval()(x), model(x.flip(1)), atol=1e-5)
    config = dict(model.config)
    assert config["kwargs"] == {"gain": 0.25}
    again = timeshift.create_model(**config.pop("kwargs"), **config)
    assert torch.all(again.backbone.layer4[0].conv1.gain == 0.25)
    with pytest.raises(TypeError, match=r"do not take \['fold_div'\].*'difference' takes gain"):
        timeshift.create_model("tdn_resnet_tiny", num_classes=5, num_segments=4, fold_div=4)
