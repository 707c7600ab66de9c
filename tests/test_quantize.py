"""INT8 static quantisation: calibrated on the first clips of a list, checked against fp32 on the
clips after them; the int8 files run in onnxruntime and say what they are; the online reader
feeds the fp32 model's own caches; the threshold, the CLI and its refusals."""

import json
import logging

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.data.formats import AnnotationError
from timeshift.export import OnnxOnlineRecognizer, OnnxRecognizer, read_export_meta

from conftest import write_test_video

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
numpy_helper = pytest.importorskip("onnx.numpy_helper")

pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")

from timeshift.export.quantize import (  # noqa: E402 - after the extra's check
    QuantizationError,
    calibration_feeds,
    calibration_split,
    quantize_model,
)

T, S, CLIPS = 4, 32, 9
CALIBRATE, HELDOUT = 5, 4
LEGACY = {"exporter": "legacy"}  # the faster exporter; the default one is tested in test_export

pytestmark = pytest.mark.usefixtures("one_thread")


def _fitted_model(videos):
    """tsm_resnet_tiny at its initial weights (batch norms fitted to the clips of ``videos``)
    with a nearest-class-mean classifier of those clips: top-1 is the clip's class, with
    margins that int8 should keep, as a trained model's."""
    from timeshift.export.quantize import _clips_dataset

    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=3, num_segments=T, direction="unidirectional"
    ).eval()
    model.checkpoint_meta = {"classes": list("abc"), "input_size": S}
    dataset = _clips_dataset(model, videos, None, None)
    clips = torch.stack([dataset[i][0] for i in range(CLIPS)])
    seen = []
    with torch.no_grad():  # batch-norm statistics of these clips: activations use their range
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model.train()(clips)
        hook = model.eval().fc.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
        model(clips)
        hook.remove()
        features = seen[0].reshape(CLIPS, T, -1).mean(1)
        mean = features.mean(0)
        labels = torch.arange(CLIPS) % 3
        centres = torch.stack([features[labels == k].mean(0) for k in range(3)])
        weight = torch.nn.functional.normalize(centres - mean, dim=1)
        model.fc.weight.copy_(weight)
        model.fc.bias.copy_(-weight @ mean)
        scale = 5 / model(clips).std()  # logits of a few units, like a trained model's
        model.fc.weight.mul_(scale)
        model.fc.bias.mul_(scale)
    return model


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A list of short videos of large coloured blocks (each clip different)."""
    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(18)
    lines = []
    for i in range(CLIPS):  # class i % 3: blocks tinted red, green or blue
        blocks = rng.integers(0, 136, (8, 5, 5, 3), dtype=np.uint8)
        blocks[..., i % 3] += 120
        frames = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)  # 40 x 40
        write_test_video(folder / f"v{i}.mkv", frames)
        lines.append(f"v{i}.mkv {i % 3}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def _quantize(model, out, videos, **kwargs):
    kwargs = {"calibration_clips": CALIBRATE, "heldout_clips": HELDOUT, **kwargs}
    return quantize_model(
        model, out, calibration=videos, progress=False, export_options=LEGACY, **kwargs
    )


@pytest.fixture(scope="module")
def model(videos):
    torch.manual_seed(0)
    return _fitted_model(videos)


@pytest.fixture(scope="module", params=[False, True], ids=["offline", "online"])
def quantised(request, model, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "m.onnx"
    return _quantize(model, out, videos, online=request.param)


def _heldout_clips(model, videos):
    from timeshift.export.quantize import _clips_dataset

    dataset = _clips_dataset(model, videos, None, None)
    return torch.stack([dataset[i][0] for i in range(CALIBRATE, CALIBRATE + HELDOUT)])


def _logits(path, clips, online):
    if not online:
        runner = OnnxRecognizer(path)
        return torch.cat([runner(c[None]) for c in clips])
    runner = OnnxOnlineRecognizer(path)
    rows = []
    for clip in clips:  # every frame of each clip, a new stream per clip
        runner.reset()
        rows += [runner.step(frame) for frame in clip]
    return torch.stack(rows)


def test_the_int8_file_is_quantised_says_so_and_runs(quantised, model, videos):
    path, online = quantised.path, quantised.mode == "online"
    meta = read_export_meta(path)
    assert meta["precision"] == "int8" and meta["mode"] == quantised.mode
    assert meta["quantization"] == json.loads(json.dumps(quantised.as_dict()))
    assert meta["classes"] == list("abc") and meta["num_segments"] == T
    saved = json.loads(path.with_name("m.onnx.quantization.json").read_text())
    assert saved == meta["quantization"]
    assert read_export_meta(quantised.fp32_path).get("precision") is None
    # weights stored as int8, activations (and online the cache inputs) quantised
    graph = onnx.load(str(path)).graph
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8) > 0.9 * _parameters(model)
    largest = max(np.abs(numpy_helper.to_array(t).astype(int)).max() for t in int8)
    assert largest <= 64 if quantised.reduce_range else largest > 64  # 7-bit weights or 8
    weights = {t.name for t in graph.initializer}
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"} - weights
    assert len(quantized) > 10
    if online:  # the caches are calibrated inputs too (offline, a Reshape comes first)
        assert {i.name for i in graph.input} <= quantized
    assert quantised.int8_bytes == path.stat().st_size < quantised.fp32_bytes / 2
    # the runners of fp32 exports run it (a held-out clip: within the report's difference)
    clip = _heldout_clips(model, videos)[:1]
    fp32, int8 = (_logits(p, clip, online) for p in (quantised.fp32_path, path))
    assert fp32.shape == int8.shape == ((T if online else 1), 3)
    assert 0 < (fp32 - int8).abs().max() <= quantised.max_logit_difference + 1e-5


def _parameters(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


def test_the_report_is_what_both_files_do_on_the_heldout_clips(quantised, model, videos):
    online = quantised.mode == "online"
    clips = _heldout_clips(model, videos)
    fp32 = _logits(quantised.fp32_path, clips, online)
    int8 = _logits(quantised.path, clips, online)
    assert quantised.compared == len(fp32) == HELDOUT * (T if online else 1)
    agreement = (fp32.argmax(1) == int8.argmax(1)).float().mean().item()
    assert quantised.top1_agreement == pytest.approx(agreement)
    diff = (fp32 - int8).abs()
    assert quantised.max_logit_difference == pytest.approx(diff.max().item(), rel=1e-4)
    assert quantised.mean_logit_difference == pytest.approx(diff.mean().item(), rel=1e-4)
    # an accurate int8 model: every top-1 kept, differences small against the logits' spread
    assert len(set(fp32.argmax(1).tolist())) > 1  # not one class whatever the input
    assert quantised.passed and quantised.top1_agreement >= 0.9
    assert quantised.mean_logit_difference < 0.15 * fp32.std().item()  # a tiny model: ~0.1
    assert (quantised.calibration_clips, quantised.heldout_clips) == (CALIBRATE, HELDOUT)


def test_below_the_threshold_raises_and_writes_no_int8_file(model, videos, tmp_path, caplog):
    out = tmp_path / "m.onnx"
    with pytest.raises(
        QuantizationError, match=r"on [\d.]+% of 4 held-out clips .* below the threshold 101\.0%"
    ):
        _quantize(model, out, videos, min_agreement=1.01)
    assert not out.exists() and not out.with_name("m.onnx.quantization.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.fp32.onnx"]  # no temporaries left
    with caplog.at_level(logging.WARNING):
        report = _quantize(model, out, videos, min_agreement=1.01, allow_low_agreement=True)
    assert out.exists() and not report.passed and report.threshold == 1.01
    assert "below the threshold" in caplog.text
    assert read_export_meta(out)["quantization"]["passed"] is False


def test_the_online_reader_feeds_the_caches_of_the_fp32_stream(model, videos, tmp_path):
    from timeshift.export import export_model
    from timeshift.export.quantize import _clips_dataset
    from timeshift.online.online_model import OnlineModule

    path = tmp_path / "fp32.onnx"
    export_model(model, path, online=True, exporter="legacy")
    dataset = _clips_dataset(model, videos, None, None)
    feeds = list(calibration_feeds(path, dataset, [0, 1], online=True))
    assert len(feeds) == 2 * T
    eager = OnlineModule(model)
    with torch.no_grad():
        for i in range(2):
            clip = dataset[i][0]
            caches = eager.init_caches(1, S, S)
            for t in range(T):
                feed = feeds[i * T + t]
                assert np.array_equal(feed["frame"], clip[t : t + 1].numpy())
                for k, cache in enumerate(caches):  # zeros at t = 0: each clip a new stream
                    np.testing.assert_allclose(feed[f"cache_{k}"], cache.numpy(), atol=1e-5)
                _, *caches = eager(clip[t : t + 1], *caches)
            assert any(c.abs().max() > 0 for c in caches)  # the comparison saw real caches


def test_calibration_and_heldout_clips_are_disjoint_and_in_list_order(caplog):
    calibrate, heldout = calibration_split(50, calibration_clips=32, heldout_clips=16)
    assert (calibrate, heldout) == (range(32), range(32, 48))
    with caplog.at_level(logging.WARNING):  # a short list: calibration first, at least 1 left
        calibrate, heldout = calibration_split(20, calibration_clips=32, heldout_clips=16)
    assert (calibrate, heldout) == (range(19), range(19, 20)) and "has 20 clips" in caplog.text
    with pytest.raises(ValueError, match="at least 2"):
        calibration_split(1, calibration_clips=32, heldout_clips=16)


def test_calibration_uses_the_first_clips_only(model, videos):
    from timeshift.export.quantize import _clips_dataset

    dataset = _clips_dataset(model, videos, None, None)
    feeds = calibration_feeds(None, dataset, range(3), online=False, batch=2)
    batches = [f["video"] for f in feeds]
    # two batches of 2: clips 0 1, then 2 and clip 0 again to fill the fixed batch
    expected = [dataset[i][0].numpy() for i in (0, 1, 2, 0)]
    assert np.array_equal(np.concatenate(batches), np.stack(expected))


def test_a_bad_calibration_line_names_the_file_and_line(model, videos, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{videos.parent / 'v0.mkv'} 0\n{videos.parent / 'v1.mkv'} 1 extra\n")
    with pytest.raises(AnnotationError, match=rf"{bad}:2: expected 'path label'"):
        _quantize(model, tmp_path / "m.onnx", bad)
    assert not list(tmp_path.glob("*.onnx"))  # refused before any export


def test_cli_export_quantize(model, videos, tmp_path, capsys):
    checkpoint = tmp_path / "m.pt"
    timeshift.save_model(model, checkpoint, meta=model.checkpoint_meta)
    out = tmp_path / "int8.onnx"
    args = ["export", str(checkpoint), "--output", str(out), "--quantize", "int8"]
    args += ["--calibration", str(videos), "--calibration-clips", "4", "--heldout-clips", "3"]
    code = main([*args, "--online", "--exporter", "legacy", "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    printed = printed.out
    report = read_export_meta(out)["quantization"]
    assert report["mode"] == "online" and report["calibration_clips"] == 4
    assert f"top-1 agreement {report['top1_agreement']:.1%}" in printed
    assert "on the first 4 clips" in printed and "next 3 (12 frames)" in printed
    assert "MB int8" in printed and str(tmp_path / "int8.fp32.onnx") in printed
    refused = [
        ([*args, "--format", "torchscript"], "drop --format torchscript"),
        (args[:6], "needs --calibration LIST"),
        (
            ["export", str(checkpoint), "--output", "x.onnx", "--calibration", str(videos)],
            "applies with --quantize",
        ),
    ]
    for argv, message in refused:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
