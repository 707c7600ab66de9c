"""VSN and STSM models: registration, block structure, parameter counts, behaviour."""

import copy

import pytest
import torch
from torch import nn

import timeshift
from timeshift.models import stsm, vsn  # noqa: F401  (registers the models and "stshift")
from timeshift.models.backbones import Bottleneck, create_backbone
from timeshift.models.registry import model_info
from timeshift.models.vsn import VideoShuffleBottleneck
from timeshift.ops import TemporalShift
from timeshift.ops.shuffle import VideoShuffle, video_shuffle, video_unshuffle
from timeshift.ops.st_shift import SpatioTemporalShift

# tiny models gain nothing from intra-op threads on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = [
    "vsn_resnet50",
    "vsn_resnet101",
    "vsn_resnet_tiny",
    "stsm_resnet50",
    "stsm_mobilenet_v2",
    "stsm_resnet_tiny",
    "stsm_mobilenet_v2_tiny",
]
STAGES = ("layer1", "layer2", "layer3", "layer4")


def _meta(name, **kwargs):
    with torch.device("meta"):
        return timeshift.create_model(name, num_classes=174, num_segments=8, **kwargs)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _per_stage(model):
    """(video shuffle blocks, shifted blocks) in each stage."""
    counts = []
    for stage in STAGES:
        blocks = list(getattr(model.backbone, stage))
        shuffle = sum(isinstance(b, VideoShuffleBottleneck) for b in blocks)
        shift = sum(isinstance(b.conv1, TemporalShift) for b in blocks)
        counts.append((shuffle, shift))
    return counts


def _without_net(state):
    return {k.replace(".net.", "."): v for k, v in state.items()}


def test_models_registered_with_family_and_paper():
    assert set(NAMES) <= set(timeshift.list_models())
    assert model_info("vsn_resnet50").family == "vsn"
    assert "Video Shuffle Networks" in model_info("vsn_resnet101").paper
    assert model_info("stsm_mobilenet_v2").family == "stsm"
    assert model_info("vsn_resnet_tiny").backbone == "resnet_bottleneck_tiny"


@pytest.mark.parametrize(
    "name,params",
    [
        ("vsn_resnet50", 23_864_558),
        ("stsm_resnet50", 23_864_558),
        ("vsn_resnet101", 42_856_686),
        ("tsm_resnet50", 23_864_558),
    ],
)
def test_parameter_counts_equal_tsm(name, params):
    # DESIGN.md: TSM-ResNet50 at 174 classes has 23,864,558 parameters, TSM-R101 42,856,686;
    # shuffle and shift add none
    assert _params(_meta(name)) == params


def test_stsm_mobilenet_parameters_equal_tsm():
    with torch.device("meta"):
        model = timeshift.create_model("stsm_mobilenet_v2", num_classes=400, num_segments=8)
    assert _params(model) == 2_736_272


def test_vsn_resnet50_block_structure():
    model = _meta("vsn_resnet50")
    # Table 1: the last block of each stage is a compact block, all others shift
    assert _per_stage(model) == [(1, 2), (1, 3), (1, 5), (1, 2)]
    for stage in STAGES:
        blocks = list(getattr(model.backbone, stage))
        assert isinstance(blocks[-1], VideoShuffleBottleneck) and blocks[-1].kind == "compact"
        assert not isinstance(blocks[-1].conv1, TemporalShift)
    shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
    assert all(s.fold_div == 8 and s.direction == "bidirectional" for s in shifts)
    # the shuffle regroups over the model's T
    assert {m.num_segments for m in model.modules() if isinstance(m, VideoShuffle)} == {8}
    keys = model.state_dict().keys()
    assert "backbone.layer1.2.conv2.weight" in keys  # torchvision key: ImageNet weights load
    assert "backbone.layer1.0.conv1.net.weight" in keys  # TSM key
    assert "backbone.layer4.2.downsample.0.weight" not in keys


def test_vsn_resnet101_shifts_all_other_blocks():
    assert _per_stage(_meta("vsn_resnet101")) == [(1, 2), (1, 3), (1, 22), (1, 2)]
    # the reference TSM pattern for deep ResNets (every 2nd block) is an option
    assert _per_stage(_meta("vsn_resnet101", block_stride=2))[2] == (1, 11)


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"shift": False}, [(1, 0), (1, 0), (1, 0), (1, 0)]),  # Table 9: video shuffle alone
        ({"shuffle_blocks": 0}, [(0, 3), (0, 4), (0, 6), (0, 3)]),  # temporal shift alone
        ({"shuffle_blocks": 2}, [(2, 1), (2, 2), (2, 4), (2, 1)]),
        ({"shuffle_blocks": (1, 0, 0, 1)}, [(1, 2), (0, 4), (0, 6), (1, 2)]),  # Table 8
    ],
)
def test_vsn_ablation_options(kwargs, expected):
    assert _per_stage(_meta("vsn_resnet50", **kwargs)) == expected


def test_headtail_option():
    model = _meta("vsn_resnet50", block="headtail")
    kinds = {m.kind for m in model.modules() if isinstance(m, VideoShuffleBottleneck)}
    assert kinds == {"headtail"}
    assert _params(model) == 23_864_558


def test_vsn_option_errors():
    with pytest.raises(ValueError, match="4 video shuffle blocks in layer1, which has 3"):
        _meta("vsn_resnet50", shuffle_blocks=4)
    with pytest.raises(ValueError, match="4 counts"):
        _meta("vsn_resnet50", shuffle_blocks=(1, 1))
    with pytest.raises(ValueError, match="unknown video shuffle block 'middle'"):
        _meta("vsn_resnet50", block="middle")
    with pytest.raises(TypeError, match=r"do not take \['direction'\]"):
        _meta("vsn_resnet50", direction="unidirectional")
    with pytest.raises(ValueError, match=r"C=8 .* 3 equal groups \(T=3\)"):
        timeshift.create_model("vsn_resnet_tiny", num_classes=5, num_segments=3)
    with pytest.raises(TypeError, match="BasicBlock has no"):
        vsn.build_vsn("resnet_tiny", num_classes=5, num_segments=4)


@pytest.mark.parametrize("kind", ["compact", "headtail"])
def test_shuffle_block_follows_figure_3(kind):
    t = 4
    block = Bottleneck(32, 8).eval()
    shuffled = VideoShuffleBottleneck(copy.deepcopy(block), num_segments=t, kind=kind).eval()
    assert shuffled.state_dict().keys() == block.state_dict().keys()
    x = torch.randn(2 * t, 32, 5, 5)
    b = block
    with torch.no_grad():
        if kind == "compact":  # shuffle right before conv2, inverse right after it
            out = b.relu(b.bn1(b.conv1(x)))
            out = video_unshuffle(b.conv2(video_shuffle(out, t)), t)
            out = b.bn3(b.conv3(b.relu(b.bn2(out))))
        else:  # shuffle the residual branch input, inverse at its output
            out = b.relu(b.bn1(b.conv1(video_shuffle(x, t))))
            out = b.bn3(b.conv3(b.relu(b.bn2(b.conv2(out)))))
            out = video_unshuffle(out, t)
        expected = b.relu(out + x)  # the shortcut keeps the unshuffled input
        assert torch.allclose(shuffled(x), expected, atol=1e-6)
        assert not torch.allclose(block(x), expected, atol=1e-3)


def test_shuffle_block_sees_every_frame():
    # one compact block: changing only the last frame changes the first frame's output, which a
    # plain (TSN) block or a one-step shift cannot do
    model = timeshift.create_model(
        "vsn_resnet_tiny", num_classes=5, num_segments=4, shift=False, shuffle_blocks=(0, 0, 0, 1)
    ).eval()
    x = torch.randn(1, 4, 3, 32, 32)
    changed = x.clone()
    changed[:, 3] = torch.randn(3, 32, 32)
    with torch.no_grad():
        a, b = model.forward_segments(x), model.forward_segments(changed)
    assert not torch.allclose(a[:, 0], b[:, 0])
    tsn = timeshift.create_model(
        "vsn_resnet_tiny", num_classes=5, num_segments=4, shift=False, shuffle_blocks=0
    ).eval()
    with torch.no_grad():
        assert torch.allclose(tsn.forward_segments(x)[:, :3], tsn.forward_segments(changed)[:, :3])


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("vsn_resnet_tiny", {"block": "headtail"}),
        ("vsn_resnet_tiny", {"shift": False, "groups": 8}),
        ("vsn_resnet_tiny", {"shuffle_blocks": 1, "widths": (4, 8, 16, 32)}),
        ("stsm_resnet_tiny", {"dims": "TH+TW+HW", "alpha": 1 / 2}),
        ("stsm_mobilenet_v2_tiny", {"dims": "T+HW"}),
    ],
)
def test_variants_forward_backward(name, kwargs):
    model = timeshift.create_model(name, num_classes=5, num_segments=4, **kwargs)
    out = model(torch.randn(2, 4, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "name,tsn", [("vsn_resnet_tiny", None), ("stsm_resnet_tiny", "tsn_resnet_tiny")]
)
def test_outputs_change_against_tsn_but_shapes_do_not(name, tsn):
    model = timeshift.create_model(name, num_classes=5, num_segments=4).eval()
    if tsn is None:  # the same backbone with no temporal module at all
        plain = vsn.build_vsn(
            "resnet_bottleneck_tiny",
            num_classes=5,
            num_segments=4,
            shift=False,
            shuffle_blocks=0,
            widths=(8, 16, 32, 64),
        )
    else:
        plain = timeshift.create_model(tsn, num_classes=5, num_segments=4)
    plain.load_state_dict(_without_net(model.state_dict()))
    plain.eval()
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        a, b = model.forward_features(x), plain.forward_features(x)
    assert a.shape == b.shape
    assert not torch.allclose(a, b, atol=1e-4)


def test_stsm_placement_and_options():
    model = _meta("stsm_resnet50")
    shifts = [m for m in model.modules() if isinstance(m, SpatioTemporalShift)]
    assert len(shifts) == 16 and not any(isinstance(m, TemporalShift) for m in model.modules())
    assert {(s.alpha, s.dims, s.num_segments) for s in shifts} == {(3 / 8, "T+H+W", 8)}
    assert "backbone.layer1.0.conv1.net.weight" in model.state_dict()
    model = _meta("stsm_resnet50", alpha=1 / 4, dims="HW")
    assert {(m.alpha, m.dims) for m in model.modules() if isinstance(m, SpatioTemporalShift)} == {
        (1 / 4, "HW")
    }
    mobile = _meta("stsm_mobilenet_v2")
    shifted = [
        i
        for i, b in enumerate(mobile.backbone.features)
        if isinstance(getattr(b, "conv", [None])[0], SpatioTemporalShift)
    ]
    assert shifted == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]  # where TSM shifts
    assert "backbone.features.3.conv.0.net.0.weight" in mobile.state_dict()


def test_stsm_option_errors():
    with pytest.raises(TypeError, match=r"alpha and dims instead of .*\['fold_div'\]"):
        _meta("stsm_resnet50", fold_div=4)
    with pytest.raises(ValueError, match="unknown shift dims 'TW'"):
        _meta("stsm_resnet50", dims="TW")


def test_stsm_non_local_variant():
    model = _meta("stsm_resnet50", non_local=True)
    assert "backbone.layer2.0.nl.W.1.weight" in model.state_dict()
    assert "backbone.layer2.0.block.conv1.net.weight" in model.state_dict()


def test_stshift_layer_in_temporalize():
    net = create_backbone("resnet_tiny", num_classes=0)
    timeshift.temporalize(net, num_segments=4, temporal_layer="stshift", alpha=1 / 4, dims="T+HW")
    conv1 = net.layer3[0].conv1
    assert isinstance(conv1, SpatioTemporalShift) and (conv1.alpha, conv1.dims) == (1 / 4, "T+HW")
    assert isinstance(conv1.net, nn.Conv2d)


@pytest.mark.parametrize("name", ["vsn_resnet_tiny", "stsm_resnet_tiny"])
def test_config_rebuilds_the_model(name):
    model = timeshift.create_model(name, num_classes=5, num_segments=4, dropout=0.0)
    config = dict(model.config)
    again = timeshift.create_model(**config.pop("kwargs"), **config)
    assert again.state_dict().keys() == model.state_dict().keys()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["vsn_resnet_tiny", "stsm_resnet_tiny"])
def test_traced_model_matches_eager_on_a_new_batch_size(name):
    model = timeshift.create_model(name, num_classes=5, num_segments=4).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(2, 4, 3, 32, 32), check_trace=False)
        x = torch.randn(3, 4, 3, 32, 32)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_tsm_checkpoint_initialises_vsn(tmp_path):
    # the paper initialises from ImageNet/TSM weights: keys differ only by the ".net" wrapper
    tsm_like = vsn.build_vsn(
        "resnet_bottleneck_tiny",
        num_classes=5,
        num_segments=4,
        shuffle_blocks=0,
        widths=(8, 16, 32, 64),
    )
    torch.save(tsm_like.state_dict(), tmp_path / "tsm.pth")
    model = timeshift.create_model("vsn_resnet_tiny", num_classes=5, num_segments=4)
    report = timeshift.load_checkpoint(model, tmp_path / "tsm.pth")
    assert not report.missing and not report.unexpected and not report.dropped
    assert torch.equal(
        model.backbone.layer1[0].conv2.weight, tsm_like.backbone.layer1[0].conv2.weight
    )
