"""Export to ONNX / TorchScript: every tiny exportable model of the registry verified against
eager on new inputs, onnxruntime runners with the PyTorch API, the CLI. (The online exports of
the causal models are tested in test_online.py.)"""

import json

import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.export import (
    ExportError,
    OnnxOnlineRecognizer,
    OnnxRecognizer,
    export_model,
    read_export_meta,
)
from timeshift.export import exporter as exporter_module

from conftest import randomise, to_reference_tsm

T, S = 4, 32
NETS = ["tsm_resnet_tiny", "tsm_mobilenet_v2_tiny"]
EXPORTABLE = timeshift.list_models(tags=["tiny", "exportable"])

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name, direction="unidirectional"):
    model = timeshift.create_model(name, num_classes=5, num_segments=T, direction=direction)
    model = randomise(model).eval()
    model.checkpoint_meta = {"classes": list("abcde"), "input_size": S}
    return model


def _exportable(name):
    """``name`` as built by default (bi-directional where it shifts), randomised, with metadata."""
    model = randomise(timeshift.create_model(name, num_classes=5, num_segments=T)).eval()
    model.checkpoint_meta = {"classes": list("abcde"), "input_size": S}
    return model


def test_the_registry_has_tiny_exportable_models():
    # the round trip below iterates this list: VSN, STSM, I3D, TAM, bLVNet and TSM-NL included
    families = {timeshift.models.model_info(n).family for n in EXPORTABLE}
    assert {"tsn", "tsm", "vsn", "stsm", "i3d", "tam", "blvnet"} <= families


@pytest.mark.parametrize("name", EXPORTABLE)
def test_offline_onnx_matches_eager_on_new_batch_sizes(tmp_path, name):
    model = _exportable(name)
    result = export_model(model, tmp_path / "m.onnx", dynamic_batch=True, exporter="legacy")
    assert result.max_abs_diff < 1e-4 and result.inputs == ["video"]
    _check_offline_runner(tmp_path / "m.onnx", model)


def test_the_default_dynamo_exporter(tmp_path):
    model = _model("tsm_mobilenet_v2_tiny", "bidirectional")
    result = export_model(model, tmp_path / "m.onnx", dynamic_batch=True)
    assert result.max_abs_diff < 1e-4 and result.inputs == ["video"]
    _check_offline_runner(tmp_path / "m.onnx", model)


def _check_offline_runner(path, model):
    runner = OnnxRecognizer(path)
    assert runner.classes == list("abcde")
    for batch in (1, 3):  # neither is the export's example batch (2)
        clip = torch.randn(batch, T, 3, S, S)
        with torch.no_grad():
            expected = model(clip)
        assert (runner(clip) - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("online", [False, True])
def test_torchscript_both_modes(tmp_path, name, online):
    model = _model(name)
    path = tmp_path / "m.pt"
    result = export_model(model, path, format="torchscript", online=online, dynamic_batch=True)
    assert result.max_abs_diff < 1e-5
    assert read_export_meta(path)["mode"] == ("online" if online else "offline")
    loaded = torch.jit.load(str(path))
    if not online:
        clip = torch.randn(3, T, 3, S, S)
        with torch.no_grad():
            assert torch.allclose(loaded(clip), model(clip), atol=1e-5)
        return
    streams = torch.randn(3, T, 3, S, S)
    caches = [torch.zeros(3, *s) for s in result.meta["cache_shapes"]]
    with torch.no_grad():
        offline = model.forward_segments(streams)
        for t in range(T):
            logits, *caches = loaded(streams[:, t], *caches)
            assert torch.allclose(logits, offline[:, t], atol=1e-5)


def test_legacy_exporter_and_fixed_batch(tmp_path):
    model = _model("tsm_resnet_tiny")
    export_model(model, tmp_path / "m.onnx", online=True, exporter="legacy", batch=2)
    runner = OnnxOnlineRecognizer(tmp_path / "m.onnx")
    assert runner.meta["batch"] == 2
    runner.step(torch.randn(2, 3, S, S))
    with pytest.raises(ValueError, match="exported for 2 stream"):
        runner.step(torch.randn(3, 3, S, S))
    with pytest.raises(ValueError, match="exported size"):
        runner.step(torch.randn(2, 3, S + 8, S + 8))
    with pytest.raises(ValueError, match="online export"):
        OnnxRecognizer(tmp_path / "m.onnx")


def test_metadata_describes_the_graph(tmp_path):
    model = _model("tsm_mobilenet_v2_tiny")
    export_model(model, tmp_path / "m.onnx", online=True, exporter="legacy")
    meta = read_export_meta(tmp_path / "m.onnx")
    assert meta["classes"] == list("abcde") and meta["input_size"] == S
    assert meta["model"] == "tsm_mobilenet_v2_tiny" and meta["num_segments"] == T
    assert len(meta["cache_shapes"]) == len(meta["inputs"]) - 1 == len(meta["fold_div"])


def test_a_mismatching_export_is_refused_and_not_written(tmp_path, monkeypatch):
    real = exporter_module._onnx_runner

    def broken(path):
        run = real(path)
        return lambda *x: [o + 1e-2 for o in run(*x)]

    monkeypatch.setattr(exporter_module, "_onnx_runner", broken)
    with pytest.raises(ExportError, match="differs from eager"):
        export_model(_model("tsm_resnet_tiny"), tmp_path / "m.onnx", exporter="legacy")
    assert list(tmp_path.iterdir()) == []


def test_bidirectional_online_export_needs_drop_future(tmp_path):
    model = _model("tsm_resnet_tiny", "bidirectional")
    with pytest.raises(ValueError, match="drop_future"):
        export_model(model, tmp_path / "m.onnx", online=True)
    result = export_model(
        model, tmp_path / "m.onnx", online=True, drop_future=True, exporter="legacy"
    )
    assert result.max_abs_diff < 1e-4


def test_cli_export_of_a_timeshift_checkpoint(tmp_path, capsys):
    timeshift.save_model(
        _model("tsm_resnet_tiny"),
        tmp_path / "m.pt",
        meta={"classes": list("abcde"), "input_size": S},
    )
    code = main(
        [
            "export",
            str(tmp_path / "m.pt"),
            "--online",
            "--split",
            "--exporter",
            "legacy",
            "--output",
            str(tmp_path / "m.onnx"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "max |difference|" in out and "cache_0" in out
    assert "graph    split" in out
    assert json.loads(json.dumps(read_export_meta(tmp_path / "m.onnx")))["mode"] == "online"


def test_cli_export_of_a_reference_checkpoint(tmp_path, capsys):
    source = _model("tsm_resnet_tiny", "bidirectional")
    torch.save(to_reference_tsm(source.state_dict()), tmp_path / "ref.pth.tar")
    args = [
        "export",
        str(tmp_path / "ref.pth.tar"),
        "--format",
        "torchscript",
        "--size",
        "32",
        "--output",
        str(tmp_path / "ref.pt"),
    ]
    assert main(args) == 2
    assert "--model NAME --num-classes K" in capsys.readouterr().err
    code = main([*args, "--model", "tsm_resnet_tiny", "--num-classes", "5", "--frames", str(T)])
    assert code == 0
    clip = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        assert torch.allclose(
            torch.jit.load(str(tmp_path / "ref.pt"))(clip), source(clip), atol=1e-5
        )
