"""The flow modality in models, input configuration, configs, loaders and training."""

import pytest
import torch

import timeshift
from timeshift.engine.config import ConfigError, check_resume_config, load_config, to_dict
from timeshift.engine.loaders import build_train_loader, input_modality, normalisation
from timeshift.engine.trainer import build_model, fit
from timeshift.models import resolve_input_config
from timeshift.models.preprocessing import FLOW_MEAN, FLOW_STD, IMAGENET_MEAN
from timeshift.models.recognizer import first_conv

from conftest import constant_flow, write_flow_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", timeshift.list_models())
def test_first_conv_takes_stacked_flow(name):
    # full-size models on the meta device: only shapes
    # (bLVNet-TAM takes frame pairs, so 4 frames; I3D's stem becomes a 10-channel 5x7x7 conv)
    with torch.device("meta"):
        flow = timeshift.create_model(name, num_classes=5, num_segments=4, modality="flow")
        rgb = timeshift.create_model(name, num_classes=5, num_segments=4)
    assert first_conv(flow)[1].weight.shape[1] == flow.in_chans == 10  # new_length 5 default
    assert first_conv(rgb)[1].weight.shape[1] == rgb.in_chans == 3
    assert flow.config["kwargs"] == {"modality": "flow", "new_length": 5}
    assert "modality" not in rgb.config["kwargs"]  # RGB configs as before
    # only the first conv differs
    shapes = {k: v.shape for k, v in flow.state_dict().items()}
    rgb_shapes = {k: v.shape for k, v in rgb.state_dict().items()}
    assert [k for k in shapes if shapes[k] != rgb_shapes[k]] == [first_conv(flow)[0] + ".weight"]


def test_flow_forward_and_input_check():
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=5, num_segments=4, modality="flow", new_length=2
    ).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 4, 4, 32, 32)).shape == (2, 5)
    assert model.backbone.conv1.weight.shape[1] == model.in_chans == 4
    with pytest.raises(ValueError, match="3 channels per frame, not 4 channels"):
        model(torch.randn(2, 4, 3, 32, 32))
    assert "modality=flow, new_length=2" in repr(model)


def test_bad_modality_options_are_refused():
    kwargs = {"num_classes": 5, "num_segments": 4}
    with pytest.raises(ValueError, match=r"modality must be one of \['rgb', 'flow'\]"):
        timeshift.create_model("tsn_resnet_tiny", modality="depth", **kwargs)
    with pytest.raises(ValueError, match="new_length must be a whole number >= 1"):
        timeshift.create_model("tsn_resnet_tiny", modality="flow", new_length=0, **kwargs)
    with pytest.raises(TypeError, match="modality/new_length or in_chans, not both"):
        timeshift.create_model("tsn_resnet_tiny", modality="flow", in_chans=10, **kwargs)


def test_resolve_input_config_for_flow():
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=3, num_segments=4, modality="flow"
    )
    inputs = resolve_input_config(model)
    assert (inputs.modality, inputs.new_length) == ("flow", 5)
    assert (inputs.mean, inputs.std) == (FLOW_MEAN, FLOW_STD) == ((0.5,), (0.226,))
    assert inputs.as_meta()["modality"] == "flow" and inputs.as_meta()["new_length"] == 5
    # what an export stores resolves the same without the model
    assert resolve_input_config(meta=inputs.as_meta()) == inputs
    # a checkpoint's values win; RGB models stay as they were
    model.checkpoint_meta = {"mean": [0.4], "std": [0.2], "modality": "flow", "new_length": 5}
    assert resolve_input_config(model).mean == (0.4,)
    rgb = resolve_input_config(
        timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=4)
    )
    assert (rgb.modality, rgb.new_length, rgb.mean) == ("rgb", 1, IMAGENET_MEAN)
    assert "modality" not in rgb.as_meta()


def test_flow_config_round_trip_and_model():
    cfg = load_config("synthetic-tsm-flow", ["model.new_length=3"])
    assert input_modality(cfg) == ("flow", 3)
    # the ImageNet defaults stand for the reference's flow normalisation
    assert normalisation(cfg) == ([0.5], [0.226])
    model = build_model(cfg, num_classes=6)
    assert (model.modality, model.new_length, model.in_chans) == ("flow", 3, 6)
    assert model.config["kwargs"]["modality"] == "flow"
    # a run saved before these keys existed resumes under the new defaults unchanged
    old = to_dict(load_config("synthetic-tsm"))
    del old["model"]["modality"], old["model"]["new_length"]
    assert check_resume_config(old, load_config("synthetic-tsm")) == []
    with pytest.raises(ConfigError, match=r"3 values .* model\.modality is flow"):
        normalisation(load_config("synthetic-tsm-flow", ["data.mean=[0.4,0.4,0.4]"]))
    with pytest.raises(ConfigError, match=r"model\.modality"):
        input_modality(load_config("synthetic-tsm", ["model.modality=depth"]))


def _flow_dataset(root, *, videos=4, flows=9):
    """``videos`` flow folders of ``flows`` flat flow fields (values name the frame), and the
    reference flow list over them."""
    lines = []
    for v in range(videos):
        write_flow_folder(root / f"video{v}", constant_flow(flows, 32, 32))
        lines.append(f"video{v} {flows} {v % 2}")
    (root / "train_flow.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("left\nright\n")
    return root


def _flow_overrides(root, **extra):
    base = {
        "model.name": "tsn_resnet_tiny",
        "model.num_segments": 2,
        "model.modality": "flow",
        "model.new_length": 2,
        "data.format": "rawframes",
        "data.train": str(root / "train_flow.txt"),
        "data.val": str(root / "train_flow.txt"),
        "data.classes": str(root / "classes.txt"),
        "data.size": 32,
        "data.scale_size": 32,
        "data.scales": "[1.0]",
        "data.flip": "false",
        "data.workers": 0,
        "train.epochs": 1,
        "train.batch_size": 2,
        "eval.batch_size": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_train_loader_reads_flow_stacks(tmp_path):
    from timeshift.engine.distributed import DistInfo
    from timeshift.engine.loaders import load_split

    root = _flow_dataset(tmp_path)
    cfg = load_config(None, _flow_overrides(root))
    _, _, loader = build_train_loader(
        cfg, load_split(cfg.data, "train", progress=False), DistInfo()
    )
    clips, _ = next(iter(loader))
    assert clips.shape == (2, 2, 4, 32, 32)  # (N, T, 2 * new_length, H, W)
    # flat flow: x of flow frame k is 10 + 3k, y 130 + 3k (1-based files, k from 0); stacked
    # x1 y1 x2 y2 of consecutive frames, normalised (v / 255 - 0.5) / 0.226
    raw = clips[:, :, :, 0, 0] * 0.226 * 255 + 0.5 * 255
    x, y = raw[..., 0::2], raw[..., 1::2]
    assert torch.allclose(y - x, torch.full_like(x, 120.0), atol=0.05)
    assert torch.allclose(x[..., 1] - x[..., 0], torch.full_like(x[..., 0], 3.0), atol=0.05)


def test_training_writes_flow_checkpoints(tmp_path):
    root = _flow_dataset(tmp_path / "data")
    # cached as the shipped synthetic-tsm-flow recipe does
    fit(
        load_config(None, _flow_overrides(root, **{"data.cache": "true"})),
        tmp_path / "run",
        progress=False,
    )
    model = timeshift.load_model(tmp_path / "run" / "last.pt")
    meta = model.checkpoint_meta
    assert (meta["modality"], meta["new_length"], meta["mean"], meta["std"]) == (
        "flow",
        2,
        [0.5],
        [0.226],
    )
    assert (model.modality, model.in_chans) == ("flow", 4)
    inputs = resolve_input_config(model)
    assert (inputs.modality, inputs.new_length, inputs.std) == ("flow", 2, (0.226,))


@pytest.mark.parametrize("online", [False, True])
def test_flow_model_exports_with_its_channel_count(tmp_path, online):
    """The export's example input and its check use the model's 2 * new_length channels."""
    import onnxruntime as ort

    from timeshift.export import export_model

    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=5, num_segments=4, modality="flow", new_length=2,
        direction="unidirectional",
    ).eval()  # fmt: skip
    result = export_model(model, tmp_path / "m.onnx", size=32, online=online, exporter="legacy")
    assert result.max_abs_diff < 1e-4
    assert result.meta["modality"] == "flow" and result.meta["new_length"] == 2
    first = ort.InferenceSession(str(result.path)).get_inputs()[0]
    assert first.shape[-3] == 4  # x1, y1, x2, y2


def test_flow_checkpoint_tests_on_flow_folders_with_onnxruntime(tmp_path):
    """``timeshift test`` on a flow checkpoint reads flow folders (the checkpoint says so) and
    the onnxruntime runner takes the 2 * new_length channels the graph was exported with."""
    from timeshift.engine.evaluate import EvalOptions, evaluate_checkpoints
    from timeshift.export import OnnxRecognizer, export_model

    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=2, num_segments=4, modality="flow", new_length=2
    ).eval()
    path = timeshift.save_model(model, tmp_path / "flow.pt", meta={"classes": ["a", "b"]})
    lines = []
    for i in range(2):
        write_flow_folder(tmp_path / f"v{i}", constant_flow(9, 36, 36))
        lines.append(f"v{i} 9 {i}\n")
    (tmp_path / "val_flow.txt").write_text("".join(lines))
    options = EvalOptions(batch_size=2, workers=0, backend="onnxruntime")
    summary = evaluate_checkpoints(
        [path], tmp_path / "val_flow.txt", options=options, output_dir=tmp_path / "out",
        progress=False,
    )  # fmt: skip
    assert summary["samples"] == 2 and summary["unreadable"] == 0 and summary["support"] == [1, 1]
    onnx = export_model(model, tmp_path / "m.onnx", size=32, exporter="legacy").path
    runner = OnnxRecognizer(onnx)
    assert runner.in_chans == 4
    with pytest.raises(ValueError, match="C=4"):
        runner(torch.zeros(1, 4, 3, 32, 32))
