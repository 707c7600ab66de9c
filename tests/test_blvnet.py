"""bLVNet-TAM and TSN + TAM: frame routing, reference sizes, the official checkpoint layout."""

import pytest
import torch

import timeshift
import timeshift.models.blvnet  # registers the models and the "tam" temporal layer
from timeshift.bench.complexity import model_complexity
from timeshift.models import temporalize
from timeshift.models.backbones import create_backbone
from timeshift.models.blvnet import TemporalAggregationWrapper
from timeshift.models.checkpoints import CheckpointError, detect_source
from timeshift.ops.aggregation import TemporalAggregation

from conftest import randomise

# tiny models gain nothing from intra-op threads on a shared machine
pytestmark = pytest.mark.usefixtures("one_thread")

T2 = 4  # input frames: two big/little pairs
CLIP = (2, T2, 3, 32, 32)


def _model(name="blvnet_tam_tiny", classes=5, **kwargs):
    return timeshift.create_model(name, num_classes=classes, num_segments=T2, **kwargs).eval()


def _same_outputs(a, b, x=None):
    x = torch.randn(CLIP) if x is None else x
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


def _inputs_of(model, x, *modules):
    seen = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
        for name, m in modules
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


# -- frame routing ---------------------------------------------------------------------------------
def test_odd_frames_go_to_the_big_branch_and_even_frames_to_the_little_one():
    torch.manual_seed(0)
    model = _model()
    bb = model.backbone
    bb.tam.reset_parameters("identity")  # no temporal mixing before the first split
    branches = (("big", bb.b_conv0), ("little", bb.l_conv0))
    x = torch.randn(1, T2, 3, 32, 32)
    base = _inputs_of(model, x, *branches)
    assert base["big"].shape[0] == base["little"].shape[0] == T2 // 2

    odd = x.clone()
    odd[:, 1::2] = torch.randn_like(odd[:, 1::2])  # frames 1 and 3 only
    seen = _inputs_of(model, odd, *branches)
    assert not torch.equal(seen["big"], base["big"])
    assert torch.equal(seen["little"], base["little"])

    even = x.clone()
    even[:, 0::2] = torch.randn_like(even[:, 0::2])  # frames 0 and 2 only
    seen = _inputs_of(model, even, *branches)
    assert torch.equal(seen["big"], base["big"])
    assert not torch.equal(seen["little"], base["little"])

    # with the learned aggregation in place, the little branch sees its neighbours too
    bb.tam.reset_parameters("kaiming")
    base = _inputs_of(model, x, *branches)
    assert not torch.equal(_inputs_of(model, odd, *branches)["little"], base["little"])


def test_one_prediction_per_frame_pair():
    model = _model()
    x = torch.randn(CLIP)
    with torch.no_grad():
        feats = model.forward_features(x)
        segments = model.forward_segments(x)
    assert feats.shape[:3] == (2, T2 // 2, model.num_features)
    assert segments.shape == (2, T2 // 2, 5)
    assert torch.allclose(segments.mean(1), model(x), atol=1e-6)
    # layer4 aggregates over the T pairs, the earlier TAMs over all 2T frames
    assert model.backbone.layer4[0].tam.num_segments == T2 // 2
    assert model.backbone.layer1.tam.num_segments == T2


def test_both_frames_of_a_pair_carry_the_merged_features():
    model = _model()
    seen = _inputs_of(model, torch.randn(CLIP), ("layer2", model.backbone.layer2))
    x = seen["layer2"]
    assert torch.equal(x[0::2], x[1::2])


# -- sizes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,params,gmacs",
    [("blvnet_tam_resnet50", 25_020_142, 23.85), ("blvnet_tam_resnet101", 40_177_134, 32.15)],
)
def test_reference_parameters_and_macs(name, params, gmacs):
    # DESIGN.md: 8x2 frames (16 input frames), 174 classes, 224^2; the MACs count the TAMs'
    # depthwise convolutions (0.072 G), as a FLOP counter run on the official code does
    with torch.device("meta"):
        model = timeshift.create_model(name, num_classes=174, num_segments=16)
    c = model_complexity(model, frames=16)
    assert c.params == params
    assert round(c.macs / 1e9, 2) == gmacs
    tams = [m for m in model.modules() if isinstance(m, TemporalAggregation)]
    assert len(tams) == 7  # stem, layer1-3 inputs, three layer4 blocks
    assert sum(p.numel() for m in tams for p in m.parameters()) == 18_048


def test_tsn_tam_resnet50_has_a_tam_in_every_residual_branch():
    with torch.device("meta"):
        model = timeshift.create_model("tam_resnet50", num_classes=174, num_segments=8)
    wrappers = [m for m in model.modules() if isinstance(m, TemporalAggregationWrapper)]
    assert len(wrappers) == 16
    keys = model.state_dict().keys()
    assert {"backbone.layer1.0.conv1.tam.weight", "backbone.layer1.0.conv1.net.weight"} <= keys


# -- TSN + TAM -------------------------------------------------------------------------------------
def test_tam_layer_through_temporalize_and_identity_init_is_tsn():
    torch.manual_seed(0)
    net = temporalize(create_backbone("resnet_tiny", num_classes=0), num_segments=4,
                      temporal_layer="tam")  # fmt: skip
    assert sum(isinstance(m, TemporalAggregationWrapper) for m in net.modules()) == 4
    assert net.layer2[0].conv1.tam.channels == 8 and net.layer2[0].conv1.num_segments == 4

    tsn = randomise(_model("tsn_resnet_tiny"))
    tam = _model("tam_resnet_tiny", tam_init="identity", r=5)
    report = timeshift.load_checkpoint(tam, tsn.state_dict(), source="timeshift", strict=False)
    assert sorted(report.missing) == [f"backbone.layer{i}.0.conv1.tam.weight" for i in range(1, 5)]
    assert tam.backbone.layer1[0].conv1.tam.weight.shape == (5, 8)
    # identity aggregation of the (non-negative) block inputs: the 2D network unchanged
    assert _same_outputs(tsn, tam)


def test_tam_models_reject_shift_options():
    with pytest.raises(TypeError, match="fold_div"):
        _model("tam_resnet_tiny", fold_div=4)
    with pytest.raises(TypeError, match="temporal_pool"):
        _model(temporal_pool=True)


# -- bad input -------------------------------------------------------------------------------------
def test_odd_number_of_frames_is_refused():
    with pytest.raises(ValueError, match=r"even number >= 2 \(2T, e.g. 16 for 8x2\), got 5"):
        timeshift.create_model("blvnet_tam_tiny", num_classes=5, num_segments=5)
    model = _model()
    with pytest.raises(ValueError, match="T=4"):
        model(torch.randn(2, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of 4"):
        model.backbone.forward_features(torch.randn(6, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N\*2T, C, H, W\)"):
        model.backbone.forward_features(torch.randn(4, 3, 32))


# -- checkpoints -----------------------------------------------------------------------------------
def _to_official(state, *, released=False, fc="new_fc."):
    """Our keys -> IBM/bLVNet-TAM's: baseline_model.*, new_fc.*, one (C,1,1,1) conv per TAM row."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            out[fc + key.removeprefix("fc.")] = value
            continue
        key = "baseline_model." + key.removeprefix("backbone.")
        if key.endswith("tam.weight"):
            module = key.removesuffix(".weight")
            r = value.shape[0]
            names = (
                ["prev", "curr", "next"] if r == 3 else [f"blending_layers.{i}" for i in range(r)]
            )
            for name, row in zip(names, value, strict=True):
                out[f"{module}.{name}.weight"] = row.reshape(-1, 1, 1, 1).clone()
        else:
            out[key] = value
    if released:  # the released models: a bare state dict, loaded without DataParallel
        return out
    state_dict = {"module." + k: v for k, v in out.items()}  # train.py: DataParallel
    return {"epoch": 50, "arch": "bLVNet-TAM", "state_dict": state_dict, "best_top1": 46.4}


def test_official_training_checkpoint_round_trip(tmp_path):
    source = randomise(_model())
    ckpt = _to_official(source.state_dict())
    keys = ckpt["state_dict"].keys()
    assert {
        "module.baseline_model.tam.prev.weight",
        "module.baseline_model.layer1.big.0.conv1.weight",
        "module.baseline_model.layer1.little_e.0.weight",
        "module.baseline_model.layer4.0.tam.next.weight",
        "module.new_fc.weight",
    } <= keys
    torch.save(ckpt, tmp_path / "checkpoint.pth.tar")
    target = _model()
    report = timeshift.load_checkpoint(target, tmp_path / "checkpoint.pth.tar")
    assert report.source == "blvnet" and not report.dropped and not report.initialised
    assert _same_outputs(source, target)


def test_released_model_layout_other_range_and_no_dropout(tmp_path):
    source = randomise(_model(r=5, dropout=0.0))
    ckpt = _to_official(source.state_dict(), released=True, fc="baseline_model.fc.")
    assert "baseline_model.layer2.tam.blending_layers.4.weight" in ckpt
    assert detect_source(ckpt) == "blvnet"
    torch.save(ckpt, tmp_path / "st2stv1-bLVNet-TAM-50-f8x2.pth")
    target = _model(r=5, dropout=0.0)
    timeshift.load_checkpoint(target, tmp_path / "st2stv1-bLVNet-TAM-50-f8x2.pth")
    assert _same_outputs(source, target)


def test_incomplete_official_tam_is_refused():
    ckpt = _to_official(_model().state_dict(), released=True)
    del ckpt["baseline_model.layer1.tam.prev.weight"]
    with pytest.raises(CheckpointError, match=r"layer1.tam has temporal aggregation weights"):
        timeshift.load_checkpoint(_model(), ckpt)


def test_imagenet_blresnet_weights_initialise_all_but_the_tams():
    # IBM/BigLittleNet's ImageNet bLResNet: same names without TAMs, DataParallel prefix,
    # 1000-class fc
    source = randomise(_model())
    state = {
        "module." + k.removeprefix("backbone."): v
        for k, v in source.state_dict().items()
        if k.startswith("backbone.") and ".tam." not in k and not k.startswith("backbone.tam.")
    }
    state["module.fc.weight"] = torch.randn(1000, source.num_features)
    state["module.fc.bias"] = torch.randn(1000)
    target = _model()
    report = timeshift.load_checkpoint(target, {"state_dict": state})
    assert report.source == "torchvision"
    assert len(report.initialised) == 6 + 2  # six TAMs (tiny: two layer4 blocks), the classifier
    assert all(k.endswith("tam.weight") for k in report.initialised if k.startswith("backbone."))
    assert torch.equal(
        target.state_dict()["backbone.layer3.little.1.conv2.weight"],
        source.state_dict()["backbone.layer3.little.1.conv2.weight"],
    )


def test_own_format_round_trip(tmp_path):
    model = randomise(_model(r=5, alpha=4))
    path = timeshift.save_model(model, tmp_path / "m.pt")
    loaded = timeshift.load_model(path).eval()
    assert loaded.backbone.alpha == 4 and loaded.backbone.tam.r == 5
    assert _same_outputs(model, loaded)


# -- export ----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Constant folding")  # the step-2 frame slices x[1::2]
def test_onnx_export_matches_eager_on_a_new_batch_size(tmp_path):
    pytest.importorskip("onnxruntime")
    from timeshift.export import OnnxRecognizer, export_model

    model = randomise(_model())
    model.checkpoint_meta = {"input_size": 32}
    # the legacy (TorchScript-based) exporter: the dynamo one works too, ten times slower
    path = tmp_path / "blvnet.onnx"
    result = export_model(model, path, dynamic_batch=True, exporter="legacy")
    assert result.max_abs_diff < 1e-4
    clip = torch.randn(3, T2, 3, 32, 32)  # not the export's example batch
    with torch.no_grad():
        expected = model(clip)
    assert (OnnxRecognizer(path)(clip) - expected).abs().max().item() < 1e-4
