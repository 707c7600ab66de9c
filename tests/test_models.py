"""Registry-driven model tests: every registered model on a tiny input, plus reference numbers."""

import pytest
import torch
from torch import nn

import timeshift
from timeshift.bench.complexity import model_complexity
from timeshift.models.registry import model_info, register_model
from timeshift.online import OnlineModule
from timeshift.ops import TemporalShift

# tiny models gain nothing from intra-op threads on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")

REQUIRED = [
    "tsn_resnet18",
    "tsn_resnet34",
    "tsn_resnet50",
    "tsn_resnet101",
    "tsm_resnet18",
    "tsm_resnet34",
    "tsm_resnet50",
    "tsm_resnet101",
    "tsm_resnet152",
    "tsm_resnext50_32x4d",
    "tsm_resnext101_32x8d",
    "tsn_mobilenet_v2",
    "tsm_mobilenet_v2",
    "tsm_resnet50_nl",
]


def test_required_models_registered():
    assert set(REQUIRED) <= set(timeshift.list_models())
    assert timeshift.list_models("tsn_*") == sorted(
        n for n in timeshift.list_models() if n.startswith("tsn_")
    )


TINY = timeshift.list_models(tags="tiny")


def _backward_reaches_every_parameter(model, out):
    out.logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", timeshift.list_models())
def test_every_model_on_meta(name):
    """Full-size structure without computing anything: shapes, every parameter reached."""
    with torch.device("meta"):
        model = timeshift.create_model(name, num_classes=5, num_segments=4)
        out = model(torch.randn(2, 4, 3, 224, 224))
        assert out.shape == (2, 5)
        _backward_reaches_every_parameter(model, out)
    assert model.num_segments == 4 and model.num_features > 0


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_model_forward_backward(name):
    model = timeshift.create_model(name, num_classes=5, num_segments=4)
    x = torch.randn(2, 4, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    _backward_reaches_every_parameter(model, out)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.num_segments == 4 and model.num_features > 0


def test_every_family_has_a_tiny_model():
    families = {model_info(n).family for n in timeshift.list_models()}
    assert families == {model_info(n).family for n in TINY}
    assert {"tsn", "tsm", "vsn", "stsm", "tam", "blvnet", "i3d"} <= families


@pytest.mark.parametrize("name", TINY)
def test_causal_tag_says_whether_the_model_streams(name):
    """The tag "causal": built uni-directional (or with no temporal op), the model converts
    to its streaming form; models without the tag mix in later frames and are refused."""
    model = timeshift.create_model(name, num_classes=5, num_segments=4)
    causal = "causal" in model_info(name).tags
    if causal and any(isinstance(m, TemporalShift) for m in model.modules()):
        model = timeshift.create_model(
            name, num_classes=5, num_segments=4, direction="unidirectional"
        )
    if causal:
        assert OnlineModule(model).num_caches == sum(
            isinstance(m, TemporalShift) for m in model.modules()
        )
    else:
        with pytest.raises(ValueError, match="future frames"):
            OnlineModule(model)


def test_full_size_models_carry_the_tags_of_their_tiny_variant():
    for name in timeshift.list_models():
        info = model_info(name)
        tiny = [model_info(n) for n in TINY if model_info(n).family == info.family]
        assert info.tags - {"tiny"} in [t.tags - {"tiny"} for t in tiny], name


# (name, classes, params, GMACs per 8x224^2 clip or None): DESIGN.md's reference table
REFERENCE = [
    ("tsm_resnet50", 400, 24_327_632, 32.70),
    ("tsm_resnet50", 174, 23_864_558, 32.70),
    ("tsm_resnet50_nl", 400, 31_686_096, None),
    ("tsm_resnet101", 174, 42_856_686, 62.40),
    ("tsm_mobilenet_v2", 400, 2_736_272, 2.40),
]


@pytest.mark.parametrize("name,classes,params,gmacs", REFERENCE)
def test_reference_parameters_and_macs(name, classes, params, gmacs):
    with torch.device("meta"):
        model = timeshift.create_model(name, num_classes=classes, num_segments=8)
    c = model_complexity(model, frames=8)
    assert c.params == params
    if gmacs is not None:
        assert c.macs / 1e9 == pytest.approx(gmacs, rel=0.005)


def test_online_mobilenet_reference_numbers():
    with torch.device("meta"):
        model = timeshift.create_model(
            "tsm_mobilenet_v2", num_classes=27, num_segments=1, direction="unidirectional"
        )
    c = model_complexity(model, frames=1)
    assert c.params == 2_258_459
    assert c.macs / 1e9 == pytest.approx(0.30, rel=0.005)
    assert (c.cache_tensors, c.cache_floats) == (10, 27_048)


@pytest.mark.parametrize(
    "name,count",
    [
        ("tsm_resnet50", 16),
        ("tsm_resnet101", 18),
        ("tsm_resnet152", 26),
        ("tsm_mobilenet_v2", 10),
        ("tsn_resnet50", 0),
    ],
)
def test_number_of_shift_modules(name, count):
    with torch.device("meta"):
        model = timeshift.create_model(name, num_classes=10, num_segments=8)
    assert sum(isinstance(m, TemporalShift) for m in model.modules()) == count


def test_mobilenet_shift_placement_matches_reference():
    with torch.device("meta"):
        model = timeshift.create_model("tsm_mobilenet_v2", num_classes=10, num_segments=8)
    shifted = [
        i
        for i, b in enumerate(model.backbone.features)
        if isinstance(getattr(b, "conv", [None])[0], TemporalShift)
    ]
    assert shifted == [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
    assert "backbone.features.3.conv.0.net.0.weight" in model.state_dict()


def test_resnet101_shifts_every_second_block():
    with torch.device("meta"):
        model = timeshift.create_model("tsm_resnet101", num_classes=10, num_segments=8)
    layer3 = model.backbone.layer3
    assert [isinstance(b.conv1, TemporalShift) for b in layer3[:4]] == [True, False, True, False]


def test_non_local_placement_and_keys():
    with torch.device("meta"):
        model = timeshift.create_model("tsm_resnet50_nl", num_classes=10, num_segments=8)
    keys = model.state_dict().keys()
    for stage, block in [(2, 0), (2, 2), (3, 0), (3, 2), (3, 4)]:
        assert f"backbone.layer{stage}.{block}.nl.W.1.weight" in keys
        assert f"backbone.layer{stage}.{block}.block.conv1.net.weight" in keys
    assert "backbone.layer2.1.conv1.net.weight" in keys


def test_forward_segments_average_is_forward():
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=6, num_segments=4).eval()
    x = torch.randn(3, 4, 3, 32, 32)
    seg = model.forward_segments(x)
    assert seg.shape == (3, 4, 6)
    assert torch.allclose(seg.mean(1), model(x), atol=1e-6)
    feats = model.forward_features(x)
    assert feats.shape[:3] == (3, 4, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (3, model.num_features)


def test_unidirectional_model_is_causal_and_bidirectional_is_not():
    x = torch.randn(1, 4, 3, 32, 32)
    changed = x.clone()
    changed[:, 3] = torch.randn(3, 32, 32)  # change only the last frame
    for direction, causal in [("unidirectional", True), ("bidirectional", False)]:
        model = timeshift.create_model(
            "tsm_resnet_tiny", num_classes=5, num_segments=4, direction=direction
        ).eval()
        a, b = model.forward_segments(x), model.forward_segments(changed)
        assert torch.allclose(a[:, :3], b[:, :3]) == causal


def test_temporal_pool_halves_segments():
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=5, num_segments=8, temporal_pool=True
    )
    x = torch.randn(2, 8, 3, 32, 32)
    assert model.forward_segments(x).shape == (2, 4, 5)
    assert model(x).shape == (2, 5)
    assert "backbone.layer2.net.0.conv1.net.weight" in model.state_dict()
    assert model.backbone.layer3[0].conv1.num_segments == 4


def test_reset_classifier_and_feature_mode():
    model = timeshift.create_model("tsn_resnet_tiny", num_classes=5, num_segments=2)
    model.reset_classifier(9)
    assert model(torch.randn(1, 2, 3, 32, 32)).shape == (1, 9)
    assert model.config["num_classes"] == 9
    assert model.fc.weight.std() < 0.01  # normal(0, 0.001) init
    model.reset_classifier(0)
    assert model(torch.randn(1, 2, 3, 32, 32)).shape == (1, model.num_features)


def test_partial_bn_freezes_all_but_first():
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=5, num_segments=2, partial_bn=True
    )
    model.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms[0].training and norms[0].weight.requires_grad
    assert all(not m.training and not m.weight.requires_grad for m in norms[1:])
    before = norms[1].running_mean.clone()
    model(torch.randn(2, 2, 3, 32, 32))
    assert torch.equal(norms[1].running_mean, before)
    model.set_partial_bn(False)
    model.train()
    assert all(m.training and m.weight.requires_grad for m in norms)


@pytest.mark.parametrize(
    "shape,match",
    [
        ((8, 3, 32, 32), r"\(N, T, C, H, W\)"),
        ((2, 3, 3, 32, 32), "T=4"),
        ((2, 4, 1, 32, 32), "3 channels"),
    ],
)
def test_bad_input_shapes(shape, match):
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=5, num_segments=4)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(shape))


def test_registry_errors(monkeypatch):
    from timeshift.models import registry

    monkeypatch.setattr(registry, "_ENTRYPOINTS", dict(registry._ENTRYPOINTS))
    monkeypatch.setattr(registry, "_INFO", dict(registry._INFO))
    with pytest.raises(KeyError, match="did you mean tsm_resnet50"):
        timeshift.create_model("tsm_resnet05", num_classes=2, num_segments=2)
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda **kw: None)  # name "<lambda>" first time is fine ...
        register_model(lambda **kw: None)  # ... the second one collides
    with pytest.raises(TypeError, match="no temporal modules"):
        timeshift.create_model(
            "tsn_resnet18", num_classes=2, num_segments=2, direction="bidirectional"
        )


def test_channels_last_model_matches_contiguous():
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=5, num_segments=4).eval()
    x = torch.randn(2, 4, 3, 32, 32)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_inplace_shift_model_trains_like_out_of_place():
    kwargs = dict(num_classes=5, num_segments=4, place="inplace")
    a = timeshift.create_model("tsm_resnet_tiny", **kwargs)
    b = timeshift.create_model("tsm_resnet_tiny", inplace=True, **kwargs)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 3, 32, 32)
    a.eval()(x).sum().backward()
    b.eval()(x).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-6)


def test_backbone_and_model_options():
    with torch.device("meta"):
        half = timeshift.create_model(
            "tsm_mobilenet_v2", num_classes=10, num_segments=8, width_mult=0.5
        )
        full = timeshift.create_model("tsm_mobilenet_v2", num_classes=10, num_segments=8)
        plain = timeshift.create_model(
            "tsm_resnet50_nl", num_classes=10, num_segments=8, non_local=False
        )
        tsn_nl = timeshift.create_model(
            "tsn_resnet50", num_classes=10, num_segments=8, non_local=True
        )
    assert model_complexity(half, frames=8).params < model_complexity(full, frames=8).params
    assert not any(".nl." in k for k in plain.state_dict())
    assert any(".nl." in k for k in tsn_nl.state_dict())
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=3, num_segments=4, fold_div=4, dropout=0.0
    )
    assert model.backbone.layer1[0].conv1.fold_div == 4
    assert isinstance(model.dropout, nn.Identity)


@pytest.mark.parametrize("name", TINY)
def test_every_model_validates_its_input(name):
    """Empty batches give empty logits; other dtypes and shapes get errors naming what is
    expected (issue 13: ZeroDivisionError, raw dtype errors)."""
    model = timeshift.create_model(name, num_classes=5, num_segments=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(0, 4, 3, 32, 32)).shape == (0, 5)
    for dtype in (torch.float64, torch.uint8):
        with pytest.raises(TypeError, match="expected float32"):
            model(torch.zeros(1, 4, 3, 32, 32, dtype=dtype))
    with pytest.raises(ValueError, match=r"\(N, T, C, H, W\) with T=4"):
        model(torch.zeros(1, 3, 3, 32, 32))


@pytest.mark.parametrize("name", TINY)
def test_every_model_round_trips_through_the_checked_loader(name, tmp_path):
    """load_model builds each model on the meta device first, compares it with the weights,
    then loads them: every family must support that, with and without a DDP prefix."""
    model = timeshift.create_model(name, num_classes=5, num_segments=4).eval()
    path = timeshift.save_model(model, tmp_path / "m.pt", meta={"classes": list("abcde")})
    loaded = timeshift.load_model(path).eval()
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    prefixed = {"module." + k: v for k, v in model.state_dict().items()}
    fresh = timeshift.create_model(name, num_classes=5, num_segments=4).eval()
    assert not timeshift.load_checkpoint(fresh, prefixed).dropped
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
