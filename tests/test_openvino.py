"""OpenVINO runners: the verified ONNX exports run by OpenVINO equal eager PyTorch and
onnxruntime (offline clips with a dynamic batch, online frames with their caches), bf16 stays
close to fp32 and reports the precision the CPU really uses, a quantised (QDQ) file runs in int8,
and wrong files or inputs are refused."""

import logging
import sys

import numpy as np
import pytest
import torch
from torch import nn

import timeshift
from timeshift.export import OnnxOnlineRecognizer, OnnxRecognizer, export_model

from conftest import randomise

pytest.importorskip("openvino", reason="the openvino extra is not installed")

from timeshift.export import openvino_models
from timeshift.export.openvino_models import (
    OpenVinoClips,
    OpenVinoError,
    OpenVinoOnlineRecognizer,
    OpenVinoRecognizer,
    openvino_available,
)

T, S, K = 4, 32, 5
NETS = ["tsm_resnet_tiny", "tsm_mobilenet_v2_tiny"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name):
    """A tiny model whose output depends clearly on the past frames: randomise()'s small weights
    shrink the signal layer after layer (the caches then move the logits by ~1e-8 in the tiny
    MobileNet, which no tolerance could tell from a bug), so the convolutions get He's scale."""
    model = timeshift.create_model(name, num_classes=K, num_segments=T, direction="unidirectional")
    model = randomise(model).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.normal_(1.0, 0.1)
    model.checkpoint_meta = {"classes": list("abcde"), "input_size": S}
    return model


@pytest.fixture(scope="module", params=NETS)
def exported(request, tmp_path_factory):
    """``(model, offline export with a dynamic batch, online export)`` of a tiny model, made once
    for the module."""
    torch.manual_seed(0)  # module fixtures run before the per-test seed: fixed weights
    model = _model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    offline, online = folder / "offline.onnx", folder / "online.onnx"
    export_model(model, offline, dynamic_batch=True, exporter="legacy", size=S)
    export_model(model, online, online=True, exporter="legacy", size=S)
    return model, offline, online


def test_offline_fp32_equals_eager_and_onnxruntime_on_batches_1_and_3(exported):
    model, offline, _ = exported
    runner = OpenVinoRecognizer(offline, threads=1)
    assert runner.precision == "fp32" and runner.int8_layers == 0
    assert runner.classes == list("abcde") and runner.num_segments == T
    reference = OnnxRecognizer(offline)
    for batch in (1, 3):  # neither is the export's example batch (2)
        clips = torch.randn(batch, T, 3, S, S)
        with torch.no_grad():
            expected = model(clips)
        got = runner(clips)
        assert got.shape == (batch, K)
        assert (got - expected).abs().max().item() < 1e-4
        assert (got - reference(clips)).abs().max().item() < 1e-4
    assert runner(torch.zeros(0, T, 3, S, S)).shape == (0, K)


def test_online_fp32_streams_like_eager_and_onnxruntime_and_reset_starts_over(exported):
    model, _, online = exported
    runner = OpenVinoOnlineRecognizer(online, threads=1)
    reference = OnnxOnlineRecognizer(online)
    eager = timeshift.OnlineRecognizer(model)
    clips = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        offline = model.forward_segments(clips)
    for clip, expected in zip(clips, offline, strict=True):
        runner.reset(), reference.reset(), eager.reset()
        for t in range(T):
            got = runner.step(clip[t])
            assert got.shape == (K,)
            assert (got - expected[t]).abs().max().item() < 1e-4
            assert (got - eager.step(clip[t])).abs().max().item() < 1e-4
            assert (got - reference.step(clip[t])).abs().max().item() < 1e-4
    assert runner.cache_shapes == reference.cache_shapes
    assert runner.cache_bytes == reference.cache_bytes == eager.cache_bytes > 0
    assert [c.shape for c in runner.cache] == [(1, *s) for s in runner.cache_shapes]


def test_online_dynamic_batch_streams_independently(tmp_path):
    model = _model("tsm_mobilenet_v2_tiny")
    path = tmp_path / "online.onnx"
    export_model(model, path, online=True, dynamic_batch=True, exporter="legacy", size=S)
    runner = OpenVinoOnlineRecognizer(path, threads=1)
    clips = torch.randn(3, T, 3, S, S)
    with torch.no_grad():
        offline = model.forward_segments(clips)
    for t in range(T):
        assert (runner.step(clips[:, t]) - offline[:, t]).abs().max().item() < 1e-4
    with pytest.raises(OpenVinoError, match="do not continue the 3 streams"):
        runner.step(clips[:2, 0])
    runner.reset()  # new streams, another count
    assert (runner.step(clips[:2, 0]) - offline[:2, 0]).abs().max().item() < 1e-4


def _cpu_has_bf16() -> bool:
    import openvino
    import openvino.properties as props

    return "BF16" in openvino.Core().get_property("CPU", props.device.capabilities)


def test_bf16_is_close_to_fp32_and_reports_the_precision_the_cpu_uses(exported, caplog):
    _, offline, _ = exported
    fp32 = OpenVinoRecognizer(offline, threads=1)
    with caplog.at_level(logging.WARNING, logger=openvino_models.__name__):
        bf16 = OpenVinoRecognizer(offline, precision="bf16", threads=1)
    # read back from the compiled model: bf16 where the CPU has it, else OpenVINO's fp32 fallback
    # (logged, naming both)
    assert bf16.requested_precision == "bf16"
    assert bf16.precision == ("bf16" if _cpu_has_bf16() else "fp32")
    fell_back = [r for r in caplog.records if "falls back" in r.getMessage()]
    assert len(fell_back) == (bf16.precision != "bf16")
    clips = torch.randn(16, T, 3, S, S)
    reference, got = fp32(clips), bf16(clips)
    # bf16 keeps 8 significant bits (relative rounding 2**-9 per value); OpenVINO accumulates
    # in fp32 but rounds every activation, so a few layers cost a few percent: 5 % of the
    # logits' range, and the same top-1 but for near ties
    assert (got - reference).abs().max().item() <= 0.05 * reference.abs().max().item()
    assert (got.argmax(1) == reference.argmax(1)).sum().item() >= 13


def test_int8_qdq_file_runs_in_int8_and_agrees_with_fp32(exported, tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    _, offline, _ = exported

    class Clips(CalibrationDataReader):  # clips from the distribution of the test's clips
        def __init__(self):
            rng = np.random.default_rng(0)
            shape = (1, T, 3, S, S)
            self.feeds = iter(
                [{"video": rng.standard_normal(shape, np.float32)} for _ in range(16)]
            )

        def get_next(self):
            return next(self.feeds, None)

    quantised = tmp_path / "int8.onnx"
    quantize_static(
        offline,
        quantised,
        Clips(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    int8 = OpenVinoRecognizer(quantised, threads=1)
    assert int8.int8_layers > 0  # OpenVINO kept the quantisation: convolutions run in int8
    clips = torch.randn(32, T, 3, S, S)
    reference, got = OpenVinoRecognizer(offline, threads=1)(clips), int8(clips)
    assert not torch.equal(got, reference)  # it is another computation, not the fp32 graph
    # 8-bit activations in a tiny random network (4-16 channels a layer, per-tensor activation
    # scales) move the logits by up to about their spread between clips: the top-1 stays on
    # most clips, not all (25 to 32 of 32 with the weights of seeds 0-3 here), so a majority
    assert (got.argmax(1) == reference.argmax(1)).sum().item() > 16


def test_clips_module_runs_like_the_recognizer(exported):
    model, offline, _ = exported
    clips_model = OpenVinoClips(offline, num_segments=T, threads=1)
    assert clips_model.num_classes == K and clips_model.num_segments == T
    assert clips_model.precision == "fp32"
    clips = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        assert (clips_model(clips) - model(clips)).abs().max().item() < 1e-4


def test_wrong_files_and_inputs_are_refused(exported):
    _, offline, online = exported
    with pytest.raises(OpenVinoError, match=r"online export.*OpenVinoOnlineRecognizer"):
        OpenVinoRecognizer(online)
    with pytest.raises(OpenVinoError, match=r"offline export.*OpenVinoRecognizer"):
        OpenVinoOnlineRecognizer(offline)
    with pytest.raises(OpenVinoError, match="unknown precision 'int8'"):
        OpenVinoRecognizer(offline, precision="int8")
    runner, stream = OpenVinoRecognizer(offline), OpenVinoOnlineRecognizer(online)
    pixels = torch.randint(0, 255, (1, T, 3, S, S), dtype=torch.uint8)
    with pytest.raises(TypeError, match="raw pixels"):
        runner(pixels)
    with pytest.raises(TypeError, match="raw pixels"):
        stream.step(pixels[0, 0])
    with pytest.raises(OpenVinoError, match="exported size"):
        runner(torch.randn(1, T, 3, S + 8, S + 8))
    with pytest.raises(OpenVinoError, match="exported size"):
        stream.step(torch.randn(3, S + 8, S + 8))
    with pytest.raises(OpenVinoError, match="exported for streams of 1"):
        stream.step(torch.randn(2, 3, S, S))


def test_a_missing_openvino_names_the_extra(exported, monkeypatch):
    _, offline, _ = exported
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    assert not openvino_available()
    with pytest.raises(ImportError, match=r"pip install 'timeshift\[openvino\]'"):
        OpenVinoRecognizer(offline)
