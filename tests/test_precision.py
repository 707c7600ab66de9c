"""The precision and backend choice at inference (``--backend``, ``--precision``): which
backend runs, ONNX exports tested as checkpoints, OpenVINO and int8 through ``test``, and the
errors of choices that cannot run."""

import json
import logging

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.engine import backend as backends
from timeshift.engine.fusion import load_scores

from conftest import palette_frames, write_test_video

T, S = 4, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_thread):
    """A tiny model whose scores depend on the frames, its checkpoint, and 12 videos."""
    root = tmp_path_factory.mktemp("precision")
    torch.manual_seed(0)
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=T).eval()
    with torch.no_grad():
        model.fc.weight.mul_(300)
    meta = {"classes": ["a", "b", "c"], "input_size": S, "scale_size": 36}
    checkpoint = timeshift.save_model(model, root / "m.pt", meta=meta)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        noise = rng.integers(-40, 41, size=(10, 40, 48, 3))
        frames = np.clip(palette_frames(10, 40, 48).astype(int) + noise, 0, 255)
        write_test_video(root / f"v{i}.mkv", frames.astype(np.uint8))
        lines.append(f"v{i}.mkv {i % 3}\n")
    (root / "val.txt").write_text("".join(lines))
    return root, checkpoint


def _test(capsys, checkpoint, root, tmp_path, name, *flags) -> tuple[dict, torch.Tensor]:
    out = tmp_path / name
    argv = ["test", str(checkpoint), "--data", str(root / "val.txt"), "--workers", "0"]
    assert main([*argv, "--json", "--no-progress", "--output", str(out), *flags]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    return summary, load_scores(out / "scores.npz").scores


@pytest.mark.parametrize(
    ("backend", "precision", "expected"),
    [
        ("auto", "fp32", "onnxruntime"),
        ("auto", "bf16", "openvino"),
        ("auto", "int8", "onnxruntime"),
        ("openvino", "int8", "openvino"),
        ("eager", "fp32", "eager"),
    ],
)
def test_auto_stays_fp32_and_lower_precision_is_explicit(backend, precision, expected):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    assert backends.resolve_backend(backend, "cpu", precision) == expected


@pytest.mark.parametrize(
    ("backend", "precision", "message"),
    [
        ("eager", "bf16", "bf16 is OpenVINO's inference precision"),
        ("onnxruntime", "bf16", "bf16 is OpenVINO's inference precision"),
        ("compile", "int8", "int8 runs a quantised ONNX export"),
        ("eager", "fp16", "unknown precision"),
    ],
)
def test_choices_that_cannot_run_are_refused(backend, precision, message):
    with pytest.raises(ValueError, match=message):
        backends.resolve_backend(backend, "cpu", precision)


def test_a_missing_openvino_names_the_extra(monkeypatch):
    monkeypatch.setattr(backends, "_openvino_available", lambda: False)
    with pytest.raises(ImportError, match=r"timeshift\[openvino\]"):
        backends.resolve_backend("openvino", "cpu")


def test_an_onnx_export_is_tested_like_its_checkpoint(data, tmp_path, capsys):
    root, checkpoint = data
    export = tmp_path / "m.onnx"
    argv = ["export", str(checkpoint), "--dynamic-batch", "--exporter", "legacy"]
    assert main([*argv, "--output", str(export)]) == 0
    capsys.readouterr()
    ours, scores = _test(capsys, checkpoint, root, tmp_path, "pt", "--backend", "eager")
    exported, export_scores = _test(capsys, export, root, tmp_path, "onnx")
    torch.testing.assert_close(export_scores, scores, atol=1e-4, rtol=1e-4)
    assert exported["top1"] == ours["top1"]
    with pytest.raises(ValueError, match="fp32 export, asked for int8"):
        backends.inference_model(backends.ExportedModel(export), precision="int8")


def test_openvino_fp32_gives_the_pytorch_scores(data, tmp_path, capsys):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    root, checkpoint = data
    _, eager = _test(capsys, checkpoint, root, tmp_path, "eager", "--backend", "eager")
    summary, scores = _test(capsys, checkpoint, root, tmp_path, "ov", "--backend", "openvino")
    assert summary["protocol"]["backend"] == "openvino"
    torch.testing.assert_close(scores, eager, atol=1e-3, rtol=1e-3)


def test_int8_is_calibrated_cached_and_reported(data, tmp_path, capsys, caplog):
    root, checkpoint = data
    flags = ["--precision", "int8", "--calibration", str(root / "val.txt")]
    flags += ["--calibration-clips", "6"]
    _, fp32 = _test(capsys, checkpoint, root, tmp_path, "fp32", "--backend", "eager")
    with caplog.at_level(logging.INFO, logger="timeshift"):
        summary, int8 = _test(capsys, checkpoint, root, tmp_path, "int8", *flags)
    assert "top-1 agreement with fp32" in caplog.text
    assert summary["protocol"]["precision"] == "int8"
    agree = (int8.argmax(1) == fp32.argmax(1)).float().mean().item()
    assert agree >= 0.75, agree  # int8 is close to fp32 on this model, and not identical
    assert not torch.equal(int8, fp32)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="timeshift"):
        _, again = _test(capsys, checkpoint, root, tmp_path, "int8b", *flags)
    assert "using the cached quantised export" in caplog.text
    torch.testing.assert_close(again, int8)


def test_int8_without_calibration_says_what_to_give(data, tmp_path, capsys):
    root, checkpoint = data
    argv = ["test", str(checkpoint), "--data", str(root / "val.txt"), "--precision", "int8"]
    assert main([*argv, "--workers", "0"]) == 2
    assert "int8 needs calibration clips: give --calibration LIST" in capsys.readouterr().err
    assert main([*argv[:-2], "--calibration", str(root / "val.txt")]) == 2
    assert "--calibration is for --precision int8" in capsys.readouterr().err
