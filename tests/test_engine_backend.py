"""Inference backends of predict/test/stream: the auto choice, the cached ONNX export."""

import pytest
import torch

from timeshift.engine import backend as runtime
from timeshift.engine.backend import (
    OnnxClips,
    exported_onnx,
    inference_model,
    model_digest,
    resolve_backend,
)
from timeshift.models.registry import create_model


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("tsm_resnet_tiny", num_classes=5, num_segments=4).eval()


def test_resolve_backend(monkeypatch):
    assert resolve_backend("auto", "cpu") == "onnxruntime"
    assert resolve_backend("auto", "cuda") == "eager"
    assert resolve_backend("eager", "cpu") == "eager"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("tensorrt", "cpu")
    with pytest.raises(ValueError, match="CPU"):
        resolve_backend("onnxruntime", "cuda")
    monkeypatch.setattr(runtime, "_onnxruntime_available", lambda: False)
    assert resolve_backend("auto", "cpu") == "eager"
    with pytest.raises(ImportError, match="timeshift\\[export\\]"):
        resolve_backend("onnxruntime", "cpu")


def test_backends_agree_with_eager():
    model = _model()
    clips = torch.randn(3, 4, 3, 32, 32)
    with torch.no_grad():
        expected = model(clips)
        eager = inference_model(model, backend="eager", memory_format="contiguous", size=32)
        assert not eager.channels_last
        torch.testing.assert_close(eager(clips), expected)
        fast = inference_model(_model(), backend="eager", size=32)  # auto: channels_last
        assert fast.channels_last
        torch.testing.assert_close(fast(clips), expected, atol=1e-5, rtol=1e-4)
        onnx = inference_model(_model(), backend="onnxruntime", size=32)
        assert isinstance(onnx, OnnxClips) and onnx.num_classes == 5 and onnx.num_segments == 4
        torch.testing.assert_close(onnx(clips), expected, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(onnx(clips[:1]), expected[:1], atol=1e-4, rtol=1e-3)  # batch
    with pytest.raises(ValueError, match="memory format"):
        inference_model(model, backend="eager", memory_format="nhwc")


def test_export_is_cached_per_weights_and_size(monkeypatch, tmp_path):
    import timeshift.export

    monkeypatch.setenv("TIMESHIFT_CACHE", str(tmp_path))
    calls = []
    original = timeshift.export.export_model

    def counting(*args, **kwargs):
        calls.append(kwargs.get("size"))
        return original(*args, **kwargs)

    monkeypatch.setattr("timeshift.export.export_model", counting)
    first = exported_onnx(_model(), size=32)
    again = exported_onnx(_model(), size=32)  # same weights: the cached file
    assert first == again and first.parent == tmp_path / "onnx" and calls == [32]
    other = exported_onnx(_model(seed=1), size=32)  # other weights
    bigger = exported_onnx(_model(), size=64)
    online = exported_onnx(
        create_model("tsm_resnet_tiny", num_classes=5, num_segments=4, direction="unidirectional"),
        size=32,
        online=True,
    )
    assert len({first, other, bigger, online}) == 4 and calls == [32, 32, 64, 32]
    assert model_digest(_model(), 32) == model_digest(_model(), 32)
    assert model_digest(_model(), 32) != model_digest(_model(), 64)


def test_auto_falls_back_to_pytorch_when_export_fails(monkeypatch, caplog, tmp_path):
    import timeshift.export

    monkeypatch.setenv("TIMESHIFT_CACHE", str(tmp_path))  # nothing cached

    def broken(*args, **kwargs):
        raise timeshift.export.ExportError("unsupported operator")

    monkeypatch.setattr("timeshift.export.export_model", broken)
    model = _model()
    runner = inference_model(model, backend="auto", size=32)
    assert runner is model and model.channels_last
    assert "cannot export" in caplog.text
    with pytest.raises(timeshift.export.ExportError, match="unsupported"):
        inference_model(_model(), backend="onnxruntime", size=32)
