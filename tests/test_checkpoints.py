"""Checkpoint round trips and imports; each foreign format's key layout is built here."""

import logging
import re

import pytest
import torch

import timeshift
from timeshift.models.backbones import create_backbone
from timeshift.models.checkpoints import CheckpointError, detect_source
from timeshift.ops import TemporalOp

from conftest import randomise, to_reference_mobilenet, to_reference_tsm

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


def _to_mmaction2(state):
    out = {}
    for k, v in state.items():
        if k.startswith("fc."):
            out["cls_head.fc_cls." + k[3:]] = v
            continue
        k = re.sub(r"\.conv(\d)\.((?:net\.)?)(weight|bias)$", r".conv\1.conv.\2\3", k)
        k = re.sub(r"\.bn(\d)\.", r".conv\1.bn.", k)
        k = k.replace(".downsample.0.", ".downsample.conv.").replace(
            ".downsample.1.", ".downsample.bn."
        )
        out[k] = v
    return {"meta": {"epoch": 50, "mmaction_version": "1.2.0"}, "state_dict": out}


def test_mmaction2_format(tmp_path):
    source = randomise(_model("tsm_resnet_tiny"))
    ckpt = _to_mmaction2(source.state_dict())
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


def _nl_to_mmaction2(state):
    table = {
        ".nl.theta.": ".non_local_block.theta.conv.",
        ".nl.phi.0.": ".non_local_block.phi.0.conv.",
        ".nl.g.0.": ".non_local_block.g.0.conv.",
        ".nl.W.0.": ".non_local_block.conv_out.conv.",
        ".nl.W.1.": ".non_local_block.conv_out.bn.",
    }
    out = {}
    for k, v in _to_mmaction2(state)["state_dict"].items():
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
    ckpt = _nl_to_mmaction2(source.state_dict())
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
