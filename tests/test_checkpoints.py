"""Checkpoint round trips and imports; each foreign format's key layout is built here."""

import logging
import re

import pytest
import torch

import timeshift
from timeshift.models.backbones import create_backbone
from timeshift.models.checkpoints import CheckpointError, detect_source, read_checkpoint
from timeshift.ops import TemporalOp

from conftest import randomise, to_mmaction2, to_reference_mobilenet, to_reference_tsm

CLIP = (2, 4, 3, 32, 32)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name="tsm_resnet_tiny", classes=5, **kwargs):
    return timeshift.create_model(name, num_classes=classes, num_segments=4, **kwargs).eval()


def _same_outputs(a, b):
    x = torch.randn(CLIP)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


# options off their defaults, to see them survive the round trip
NON_DEFAULT = {"tsm_resnet_tiny": {"direction": "unidirectional"}}


def _temporal_ops(model):
    return [(name, repr(m)) for name, m in model.named_modules() if isinstance(m, TemporalOp)]


@pytest.mark.parametrize("name", timeshift.list_models(tags=["tiny"]))
def test_own_format_round_trip(tmp_path, name):
    model = randomise(_model(name, dropout=0.3, **NON_DEFAULT.get(name, {})))
    path = timeshift.save_model(model, tmp_path / "m.pt", meta={"classes": ["a", "b"]})
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
    loaded = timeshift.load_model(path).eval()
    assert loaded.config == model.config and loaded.config["kwargs"]["dropout"] == 0.3
    assert loaded.checkpoint_meta == {"classes": ["a", "b"]}
    assert _temporal_ops(loaded) == _temporal_ops(model)
    if name == "tsm_resnet_tiny":
        assert loaded.backbone.layer1[0].conv1.direction == "unidirectional"
    assert _same_outputs(model, loaded)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    model = _model()
    path = timeshift.save_model(model, tmp_path / "m.pt")
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        timeshift.save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_save_model_needs_config():
    with pytest.raises(ValueError, match="create_model"):
        timeshift.save_model(torch.nn.Linear(2, 2), "x.pt")


@pytest.mark.parametrize("name", ["tsm_resnet_tiny", "tsm_resnet_nl_tiny"])
def test_reference_tsm_format(tmp_path, name):
    source = randomise(_model(name))
    ckpt = to_reference_tsm(source.state_dict())
    assert "module.base_model.layer1.0.conv1.net.weight" in ckpt["state_dict"]
    torch.save(ckpt, tmp_path / "ref.pth.tar")
    target = _model(name)
    report = timeshift.load_checkpoint(target, tmp_path / "ref.pth.tar")
    assert report.source == "tsm" and not report.dropped
    assert _same_outputs(source, target)


def test_reference_dropout_zero_classifier_name(tmp_path):
    source = randomise(_model())
    ckpt = to_reference_tsm(source.state_dict(), fc="module.base_model.fc.")
    target = _model()
    timeshift.load_checkpoint(target, ckpt)
    assert _same_outputs(source, target)


def test_tsn_and_tsm_cross_loading():
    tsn = randomise(_model("tsn_resnet_tiny"))
    ckpt = to_reference_tsm(tsn.state_dict())
    assert not any(".net." in k for k in ckpt["state_dict"])
    tsm = _model("tsm_resnet_tiny")
    timeshift.load_checkpoint(tsm, ckpt)
    assert torch.equal(
        tsm.state_dict()["backbone.layer1.0.conv1.net.weight"],
        tsn.state_dict()["backbone.layer1.0.conv1.weight"],
    )
    back = _model("tsn_resnet_tiny")
    timeshift.load_checkpoint(back, tsm.state_dict(), source="timeshift")
    assert _same_outputs(tsn, back)


def test_classifier_with_other_class_count_is_dropped(caplog):
    source = randomise(_model(classes=7))
    target = _model(classes=3)
    fc_before = target.fc.weight.clone()
    with caplog.at_level(logging.WARNING):
        report = timeshift.load_checkpoint(target, to_reference_tsm(source.state_dict()))
    assert "classifier" in caplog.text
    assert set(report.dropped) == {"fc.weight", "fc.bias"}
    assert torch.equal(target.fc.weight, fc_before)
    assert torch.equal(target.backbone.conv1.weight, source.backbone.conv1.weight)


def test_reference_mobilenet_layout():
    source = randomise(_model("tsm_mobilenet_v2_tiny"))
    ref_state = to_reference_mobilenet(source.state_dict())
    assert "backbone.features.1.conv.3.weight" in ref_state  # t=1 block, pw-linear conv
    assert any(re.match(r"backbone\.features\.\d+\.conv\.0\.net\.weight", k) for k in ref_state)
    ckpt = to_reference_tsm(ref_state)
    target = _model("tsm_mobilenet_v2_tiny")
    timeshift.load_checkpoint(target, ckpt)
    assert _same_outputs(source, target)


def test_mmaction2_format(tmp_path):
    source = randomise(_model("tsm_resnet_tiny"))
    ckpt = to_mmaction2(source.state_dict())
    assert "backbone.layer1.0.conv1.conv.net.weight" in ckpt["state_dict"]
    assert "backbone.conv1.bn.weight" in ckpt["state_dict"]
    torch.save(ckpt, tmp_path / "mm.pth")
    target = _model("tsm_resnet_tiny")
    assert timeshift.load_checkpoint(target, tmp_path / "mm.pth").source == "mmaction2"
    assert _same_outputs(source, target)


@pytest.mark.parametrize(
    "backbone,model",
    [
        ("resnet_tiny", "tsm_resnet_tiny"),
        ("mobilenet_v2_tiny", "tsm_mobilenet_v2_tiny"),
        ("resnet_bottleneck_tiny", "tsm_resnet_nl_tiny"),
    ],
)
def test_torchvision_imagenet_initialisation(backbone, model):
    net2d = randomise(create_backbone(backbone, num_classes=1000))
    target = _model(model)
    fc_before = target.fc.weight.clone()
    report = timeshift.load_checkpoint(target, net2d.state_dict())
    assert report.source == "torchvision"
    assert any(k.startswith(("fc.", "classifier.")) for k in report.dropped)
    assert torch.equal(target.fc.weight, fc_before)
    # a TSN model with the 2D weights computes the 2D network per frame
    tsn2d = net2d.eval()
    tsn2d.reset_classifier(0)
    frames = torch.randn(4, 3, 32, 32)
    target_feats = target.backbone.forward_features
    if model == "tsm_resnet_tiny":
        tsn = _model("tsn_resnet_tiny")
        timeshift.load_checkpoint(tsn, net2d.state_dict())
        with torch.no_grad():
            assert torch.allclose(
                tsn.backbone.forward_features(frames), tsn2d.forward_features(frames), atol=1e-5
            )
    assert callable(target_feats)
    if model == "tsm_resnet_nl_tiny":
        assert any(".nl." in k for k in report.initialised)


def test_mismatched_architecture_lists_keys():
    source = _model("tsn_resnet18")
    target = _model("tsn_resnet34")
    with pytest.raises(CheckpointError, match=r"missing in checkpoint \(\d+\): .*layer1\.2\."):
        timeshift.load_checkpoint(target, source.state_dict(), source="timeshift")
    with pytest.raises(CheckpointError, match=r"unexpected in checkpoint \(\d+\): .*layer1\.2\."):
        timeshift.load_checkpoint(source, target.state_dict())
    report = timeshift.load_checkpoint(target, source.state_dict(), strict=False)
    assert report.missing and not report.unexpected
    assert torch.equal(
        target.backbone.layer1[0].conv1.weight, source.backbone.layer1[0].conv1.weight
    )


def test_shape_mismatch_in_backbone_raises():
    state = _model().state_dict()
    state["backbone.conv1.weight"] = torch.zeros(3, 3, 7, 7)
    with pytest.raises(CheckpointError, match=r"backbone.conv1.weight: checkpoint \(3, 3, 7, 7\)"):
        timeshift.load_checkpoint(_model(), state)


def test_unreadable_and_unsafe_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        timeshift.load_checkpoint(_model(), tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"corrupt\.pt"):
        timeshift.load_checkpoint(_model(), corrupt)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": _model().state_dict(), "obj": CheckpointError("x")}, unsafe)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        timeshift.load_checkpoint(_model(), unsafe)
    with pytest.raises(CheckpointError, match="not a timeshift checkpoint"):
        torch.save(to_reference_tsm(_model().state_dict()), tmp_path / "ref.pt")
        timeshift.load_model(tmp_path / "ref.pt")


def test_numpy_data_in_the_metadata_is_read_but_nothing_else(tmp_path):
    """MMAction2 and other trainers leave numpy scalars and arrays in a checkpoint's meta: they
    are data and load with weights_only=True; any other object still does not."""
    import numpy as np

    source = randomise(_model())
    meta = {"seed": np.int64(3), "history": np.arange(4.0), "lr": np.float32(0.1)}
    path = tmp_path / "mm.pth"
    torch.save({**to_mmaction2(source.state_dict()), "meta": meta}, path)
    target = _model()
    assert timeshift.load_checkpoint(target, path).source == "mmaction2"
    assert _same_outputs(source, target)
    payload = read_checkpoint(path)
    assert payload["meta"]["seed"] == 3 and payload["meta"]["history"].tolist() == [0, 1, 2, 3]
    mixed = tmp_path / "mixed.pth"
    torch.save(
        {"state_dict": source.state_dict(), "meta": meta, "obj": CheckpointError("x")}, mixed
    )
    with pytest.raises(CheckpointError, match="CheckpointError"):
        read_checkpoint(mixed)


def test_detect_source_errors():
    with pytest.raises(CheckpointError, match="cannot tell"):
        detect_source({"weird.key": torch.zeros(1)})
    with pytest.raises(ValueError, match="source must be one of"):
        timeshift.load_checkpoint(_model(), {}, source="caffe")


def test_reference_online_demo_format():
    """Bare MobileNetV2 state dict of the reference online demo: features.N.conv.K, classifier.*"""
    source = randomise(_model("tsm_mobilenet_v2_tiny", direction="unidirectional"))
    demo = {}
    for k, v in to_reference_mobilenet(source.state_dict()).items():
        k = k.replace(".net.", ".")
        demo["classifier." + k[3:] if k.startswith("fc.") else k.removeprefix("backbone.")] = v
    assert "features.3.conv.0.weight" in demo and "classifier.weight" in demo
    target = _model("tsm_mobilenet_v2_tiny", direction="unidirectional")
    report = timeshift.load_checkpoint(target, demo)
    assert report.source == "tsm" and not report.dropped and not report.initialised
    assert _same_outputs(source, target)


def _nlto_mmaction2(state):
    table = {
        ".nl.theta.": ".non_local_block.theta.conv.",
        ".nl.phi.0.": ".non_local_block.phi.0.conv.",
        ".nl.g.0.": ".non_local_block.g.0.conv.",
        ".nl.W.0.": ".non_local_block.conv_out.conv.",
        ".nl.W.1.": ".non_local_block.conv_out.bn.",
    }
    out = {}
    for k, v in to_mmaction2(state)["state_dict"].items():
        if k.endswith(".nl.W.0.bias"):
            continue  # mmcv's conv_out has no bias
        for ours, theirs in table.items():
            k = k.replace(ours, theirs)
        out[k] = v
    return {"meta": {}, "state_dict": out}


def test_mmaction2_non_local_format():
    source = randomise(_model("tsm_resnet_nl_tiny"))
    with torch.no_grad():
        for name, p in source.named_parameters():
            if name.endswith(".nl.W.0.bias"):
                p.zero_()
    ckpt = _nlto_mmaction2(source.state_dict())
    assert "backbone.layer2.0.non_local_block.conv_out.bn.weight" in ckpt["state_dict"]
    assert "backbone.layer2.0.block.conv1.conv.net.weight" in ckpt["state_dict"]
    target = _model("tsm_resnet_nl_tiny")
    assert timeshift.load_checkpoint(target, ckpt).source == "mmaction2"
    assert _same_outputs(source, target)


def test_torchvision_classifier_kept_when_classes_match():
    net2d = randomise(create_backbone("mobilenet_v2_tiny", num_classes=5))
    target = _model("tsn_mobilenet_v2_tiny", classes=5)
    report = timeshift.load_checkpoint(target, net2d.state_dict())
    assert not report.dropped
    assert torch.equal(target.fc.weight, net2d.classifier[1].weight)


# -- the flow modality: cross-modality initialisation and reference flow checkpoints ---------
FLOW = {"modality": "flow", "new_length": 5}
FLOW_CLIP = (2, 4, 10, 32, 32)


def _first_conv_key(model):
    from timeshift.models.recognizer import first_conv

    return first_conv(model)[0] + ".weight"


def _rgb_checkpoints():
    """An RGB source model's weights in each format load_checkpoint reads."""
    return {
        "torchvision": lambda m: randomise(create_backbone("resnet_tiny")).state_dict(),
        "tsm": lambda m: to_reference_tsm(m.state_dict()),
        "mmaction2": lambda m: to_mmaction2(m.state_dict()),
        "timeshift": lambda m: {"format": "timeshift", "state_dict": m.state_dict()},
    }


@pytest.mark.parametrize("fmt", sorted(_rgb_checkpoints()))
def test_rgb_weights_initialise_a_flow_model_with_the_averaged_kernel(fmt, caplog):
    rgb = randomise(_model("tsm_resnet_tiny"))
    ckpt = _rgb_checkpoints()[fmt](rgb)
    state = ckpt.get("state_dict", ckpt)
    rgb_kernel = next(v for k, v in state.items() if v.dim() == 4 and v.shape[1] == 3)
    flow = _model("tsm_resnet_tiny", **FLOW)
    with caplog.at_level(logging.INFO, logger="timeshift.models.checkpoints"):
        report = timeshift.load_checkpoint(flow, ckpt)
    assert report.source == fmt and report.adapted == ["backbone.conv1.weight"]
    assert "averaged over its 3 input channels" in caplog.text
    kernel = flow.backbone.conv1.weight.detach()
    assert kernel.shape == (8, 10, 7, 7)
    # every one of the 10 channels is the mean of the 3 RGB ones (reference: mean over dim 1,
    # expanded), computed here from the sum
    mean = (rgb_kernel[:, 0] + rgb_kernel[:, 1] + rgb_kernel[:, 2]) / 3
    for c in range(10):
        assert torch.allclose(kernel[:, c], mean, atol=1e-7)
    # nothing else changed on the way: the next layer is the checkpoint's
    ends = ("layer1.0.conv2.weight", "layer1.0.conv2.conv.weight")  # MMAction2: ConvModule
    layer = next(v for k, v in state.items() if k.endswith(ends))
    assert torch.equal(flow.backbone.layer1[0].conv2.weight, layer)


@pytest.mark.parametrize("name", ["tsm_mobilenet_v2_tiny", "i3d_resnet_tiny"])
def test_cross_modality_init_of_other_stems(name):
    # MobileNetV2's stem is features.0.0; I3D's is inflated (5 x 7 x 7) from the 2D kernel
    source = randomise(_model(name))
    stem = _first_conv_key(source)
    rgb = source.state_dict()[stem]
    if rgb.dim() == 5:  # a 2D ImageNet kernel for the inflated stem: the I3D case
        rgb = rgb[:, :, rgb.shape[2] // 2].clone()
    state = {k: v for k, v in source.state_dict().items() if k != stem} | {stem: rgb}
    flow = _model(name, modality="flow", new_length=3)
    report = timeshift.load_checkpoint(flow, state, source="timeshift")
    assert report.adapted == [stem]
    kernel = flow.state_dict()[stem]
    assert kernel.shape[1] == 6
    if kernel.dim() == 5:  # centre-initialised inflation: the averaged kernel in the middle
        assert not kernel[:, :, 0].any()
        kernel = kernel[:, :, kernel.shape[2] // 2]
    assert torch.allclose(kernel, rgb.mean(dim=1, keepdim=True).expand_as(kernel), atol=1e-7)


def test_reference_flow_checkpoint_gives_the_reference_logits(tmp_path):
    # the reference Kinetics flow TSM's layout: module.base_model.conv1.weight (64, 10, 7, 7)
    source = randomise(_model("tsm_resnet_tiny", **FLOW))
    ckpt = to_reference_tsm(source.state_dict())
    assert ckpt["state_dict"]["module.base_model.conv1.weight"].shape[1] == 10
    torch.save(ckpt, tmp_path / "TSM_kinetics_Flow_resnet_tiny_shift8_blockres_avg_segment4.pth")
    path = next(tmp_path.iterdir())
    loaded = timeshift.load_model(
        path, name="tsm_resnet_tiny", num_classes=5, num_segments=4, **FLOW
    )
    assert loaded.load_report.source == "tsm" and not loaded.load_report.adapted
    # the reference's input: (N, T * 10, H, W) read as (-1, 10, H, W) frames, x1 y1 ... x5 y5
    reference_input = torch.randn(2, 4 * 10, 32, 32)
    with torch.no_grad():
        ours = loaded.eval()(reference_input.view(FLOW_CLIP))
        direct = source(reference_input.view(FLOW_CLIP))
        stem = torch.nn.functional.conv2d(
            reference_input.view(-1, 10, 32, 32),
            ckpt["state_dict"]["module.base_model.conv1.weight"],
            stride=2,
            padding=3,
        )
        assert torch.equal(loaded.backbone.conv1(reference_input.view(-1, 10, 32, 32)), stem)
    assert torch.allclose(ours, direct, atol=1e-6)


def test_flow_checkpoint_into_an_rgb_model_names_the_modality():
    flow = _model("tsm_resnet_tiny", **FLOW)
    with pytest.raises(CheckpointError, match=r"modality='flow', new_length=5"):
        timeshift.load_checkpoint(_model("tsm_resnet_tiny"), to_reference_tsm(flow.state_dict()))


def test_rgb_weights_cannot_run_a_flow_model(tmp_path):
    # averaging is an initialisation for training; load_model is for running a checkpoint
    path = timeshift.save_model(_model("tsm_resnet_tiny"), tmp_path / "rgb.pt")
    with pytest.raises(CheckpointError, match="initialise a model for 10 input channels"):
        timeshift.load_model(path, name="tsm_resnet_tiny", num_classes=5, num_segments=4, **FLOW)


def test_flow_model_round_trip(tmp_path):
    model = randomise(_model("tsn_resnet_tiny", **FLOW))
    path = timeshift.save_model(model, tmp_path / "flow.pt", meta={"modality": "flow"})
    loaded = timeshift.load_model(path).eval()
    assert loaded.config["kwargs"] == FLOW
    assert (loaded.modality, loaded.new_length, loaded.in_chans) == ("flow", 5, 10)
    x = torch.randn(FLOW_CLIP)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
