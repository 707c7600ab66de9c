"""``timeshift bench detection``: the online TSM detector per frame vs the same detector
without shift, on the tiny backbones."""

import json

import pytest
import torch

from timeshift.bench import detection_speed
from timeshift.bench.detection_speed import (
    TARGET_RATIO,
    DetectionBenchError,
    benchmark_detection,
    detection_backbones,
    detector_pair,
    explain,
)
from timeshift.cli import main
from timeshift.ops.shift import TemporalShift

TINY = dict(size=32, fpn_channels=8, head_channels=8, num_classes=3, warmup=1)
ROW_FIELDS = {
    "backbone", "backend", "memory_format", "graph", "device", "size", "threads", "params",
    "tsm_ms", "no_shift_ms", "ratio", "paired_ratio", "overhead_ms", "meets_target", "tsm_fps",
    "tsm_spread", "no_shift_spread", "cache_floats", "cache_mib", "rounds",
}  # fmt: skip


def _shift_cache_floats(model, size: int) -> int:
    """Floats a stream caches, counted on the offline model: each shift keeps C // fold_div
    channels of its input at that input's resolution."""
    floats = []

    def hook(module, args, output):
        _, c, h, w = args[0].shape
        floats.append(c // module.fold_div * h * w)

    shifts = [m for m in model.modules() if isinstance(m, TemporalShift)]
    handles = [m.register_forward_hook(hook) for m in shifts]
    with torch.no_grad():
        model(torch.zeros(1, model.num_segments, 3, size, size))
    for h in handles:
        h.remove()
    assert len(floats) == len(shifts) > 0
    return sum(floats)


def test_detector_pair_shares_weights_and_differs_only_by_the_shift():
    tsm, plain = detector_pair("resnet_tiny", num_classes=3, fpn_channels=8, head_channels=8)
    mapped = {k.replace(".net.", "."): v for k, v in tsm.state_dict().items()}
    assert mapped.keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, mapped[key]), key
    assert sum(isinstance(m, TemporalShift) for m in tsm.modules()) > 0
    assert not any(isinstance(m, TemporalShift) for m in plain.modules())
    assert {m.direction for m in tsm.modules() if isinstance(m, TemporalShift)} == {
        "unidirectional"
    }
    # the same weights: on a clip of one repeated frame the shift swaps in equal channels once
    # the zero past has left its input, one shift deeper per frame: then the maps are equal
    depth = sum(isinstance(m, TemporalShift) for m in tsm.modules())
    assert depth < tsm.num_segments
    clip = torch.randn(1, 1, 3, 32, 32).expand(1, tsm.num_segments, 3, 32, 32)
    with torch.no_grad():
        shifted, unshifted = tsm(clip), plain(clip)
    torch.testing.assert_close(shifted[:, depth:], unshifted[:, depth:])
    assert not torch.allclose(shifted[:, 0], unshifted[:, 0])  # frame 0: a zero past


def test_onnx_runner_streams_the_dense_maps_as_eager_does(tmp_path):
    from timeshift.detection.online import OnlineDetector
    from timeshift.export import export_model
    from timeshift.export.onnx_models import OnnxOnlineRecognizer

    tsm, _ = detector_pair("resnet_tiny", num_classes=3, fpn_channels=8, head_channels=8)
    export_model(tsm, tmp_path / "d.onnx", online=True, size=32, exporter="legacy")
    runner, eager = OnnxOnlineRecognizer(tmp_path / "d.onnx"), OnlineDetector(tsm)
    for _ in range(3):  # the caches chain through the double buffers
        frame = torch.randn(1, 3, 32, 32)
        expected = eager.step(frame)
        got = runner.step(frame)
        assert got.shape == expected.shape == (1, 3 + 4, 8, 8)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert runner.cache_floats == eager.cache_floats > 0


def test_suite_times_both_sides_on_every_backend():
    rows = benchmark_detection(
        ["resnet_tiny"],
        backends=("eager", "onnxruntime"),
        memory_formats=("channels_last",),
        rounds=2,
        **TINY,
    )
    assert [(r["backbone"], r["backend"], r["memory_format"]) for r in rows] == [
        ("resnet_tiny", "eager", "channels_last"),
        ("resnet_tiny", "onnxruntime", "-"),
    ]
    tsm, _ = detector_pair("resnet_tiny", num_classes=3, fpn_channels=8, head_channels=8)
    expected_cache = _shift_cache_floats(tsm, 32)
    for r in rows:
        assert set(r) == ROW_FIELDS
        assert r["tsm_ms"] > 0 and r["no_shift_ms"] > 0 and r["rounds"] == 2
        assert r["ratio"] == pytest.approx(r["tsm_ms"] / r["no_shift_ms"], abs=1e-4)
        assert r["overhead_ms"] == pytest.approx(r["tsm_ms"] - r["no_shift_ms"], abs=1e-3)
        assert r["meets_target"] == (r["tsm_ms"] / r["no_shift_ms"] <= TARGET_RATIO)
        assert r["cache_floats"] == expected_cache
        assert r["params"] == sum(p.numel() for p in tsm.parameters())
    assert rows[1]["graph"].startswith("onnx ")


def test_ratios_come_from_the_measured_medians(monkeypatch):
    measured = {
        "online TSM": [3.0, 2.2, 2.0, 9.0, 2.1],  # median 2.2
        "no shift": [2.0, 2.0, 1.0, 2.0, 4.0],  # median 2.0; per-round ratios: median 1.5
    }
    seen = []

    def fake_interleaved(fns, *, rounds, **kwargs):
        seen.append((sorted(fns), rounds))
        for fn in fns.values():
            fn()  # the steppers are callable: one real frame each
        return {k: list(v) for k, v in measured.items()}

    monkeypatch.setattr(detection_speed, "interleaved", fake_interleaved)
    (row,) = benchmark_detection(
        ["resnet_tiny"], backends=("eager",), memory_formats=("channels_last",), rounds=5, **TINY
    )
    assert seen == [(["no shift", "online TSM"], 5)]
    assert (row["tsm_ms"], row["no_shift_ms"]) == (2.2, 2.0)
    assert row["ratio"] == 1.1 and row["paired_ratio"] == 1.5
    assert row["overhead_ms"] == pytest.approx(0.2) and row["meets_target"] is False
    assert row["tsm_fps"] == pytest.approx(1e3 / 2.2, abs=0.01)
    measured["online TSM"] = [2.05, 2.0, 2.1, 2.0, 2.0]  # median 2.0: no overhead
    (row,) = benchmark_detection(
        ["resnet_tiny"], backends=("eager",), memory_formats=("channels_last",), rounds=5, **TINY
    )
    assert row["ratio"] == 1.0 and row["overhead_ms"] == 0.0 and row["meets_target"] is True


def test_cli_writes_the_report_files(tmp_path, capsys):
    out = tmp_path / "bench"
    status = main(
        ["bench", "detection", "--quick", "--size", "32", "--rounds", "2", "--backend", "eager",
         "--format", "contiguous", "--no-progress", "--output", str(out)]
    )  # fmt: skip
    assert status == 0
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"detection.{ext}").stat().st_size > 0
    report = json.loads((out / "detection.json").read_text())
    (row,) = report["rows"]
    assert (row["backbone"], row["size"], row["rounds"]) == ("resnet_tiny", 32, 2)
    assert report["target_ratio"] == TARGET_RATIO and report["paper_overhead_ms"] == 1.0
    assert row["ratio"] == pytest.approx(row["tsm_ms"] / row["no_shift_ms"], abs=1e-4)
    printed = capsys.readouterr().out
    assert "| resnet_tiny | eager | contiguous |" in printed and "target: ratio <=" in printed
    md = (out / "detection.md").read_text()
    assert "no_shift_ms" in md and "cache_floats" in md


def test_explain_names_the_cause_of_each_row_over_the_target():
    base = dict(backbone="resnet50", memory_format="-", device="cpu", overhead_ms=1.5)
    over = dict(base, meets_target=False)
    rows = [
        dict(over, backend="onnxruntime", graph="onnx concat", ratio=1.13),
        dict(over, backend="eager", graph="in-place", ratio=1.2, device="cuda"),
        dict(over, backend="eager", graph="in-place", ratio=1.08),
        dict(base, backend="onnxruntime", graph="onnx split", ratio=1.01, meets_target=True),
    ]
    onnx, cuda, cpu = explain(rows)
    assert onnx.startswith("resnet50 onnxruntime - on cpu: ratio 1.130 > 1.05") and "split" in onnx
    assert "launch" in cuda and "1.50 ms" in cuda and "paired_ratio" in cpu


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(backbones=["resnet_huge"]), r"--backbone resnet_huge: .*choose from .*resnet50"),
        (dict(backbones=[]), r"--backbone \(none\)"),
        (dict(backends=["tensorrt"]), r"--backend tensorrt: expected .*eager, onnxruntime"),
        (dict(memory_formats=["nhwc"]), r"--format nhwc: expected .*channels_last"),
        (dict(size=16), r"--size 16: .*at least 32"),
        (dict(rounds=0), r"--rounds 0"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(DetectionBenchError, match=match):
        benchmark_detection(**{"backbones": ["resnet_tiny"], **kwargs})


def test_device_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DetectionBenchError, match="--device cuda: CUDA is not available"):
        benchmark_detection(["resnet_tiny"], backends=("eager",), device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(DetectionBenchError, match="onnxruntime backend runs on the CPU"):
        benchmark_detection(["resnet_tiny"], device="cuda")


def test_cli_reports_a_bad_backbone_in_one_line(capsys):
    assert main(["bench", "detection", "--backbone", "vgg16", "--output", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("timeshift: error: --backbone vgg16") and "\n" not in err
    assert "mobilenet_v2" in err and "resnet_tiny" in detection_backbones()
