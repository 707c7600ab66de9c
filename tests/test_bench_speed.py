"""Latency / throughput / shift-overhead / vs-3d suites: side-by-side timing and their reports."""

import json

import numpy as np
import pytest

from timeshift.bench.overhead import _fold_div, benchmark_shift_overhead, overhead_specs
from timeshift.bench.speed import ModelSpec, benchmark_speed, benchmark_vs_3d
from timeshift.bench.timing import interleaved, paired_ratio, summary
from timeshift.cli import main


def test_interleaved_runs_every_function_each_round_in_turn():
    calls = []
    samples = interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        rounds=3,
        warmup=1,
        iters=2,
    )
    rounds = [["a", "a", "b", "b"], ["b", "b", "a", "a"], ["a", "a", "b", "b"]]
    assert calls == ["a", "b"] + [c for r in rounds for c in r]
    assert [len(v) for v in samples.values()] == [3, 3]
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"a": lambda: None}, rounds=0)


def test_summary_and_paired_ratio():
    stats = summary([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats["median_ms"] == 3.0 and stats["p10_ms"] < 2.0 and stats["p90_ms"] > 4.0
    assert summary([5.0]) == {"median_ms": 5.0, "p10_ms": 5.0, "p90_ms": 5.0, "spread": 0.0}
    # round-to-round drift cancels: b is always twice a although both drift tenfold
    assert paired_ratio([1, 10, 2], [2, 20, 4]) == 0.5
    with pytest.raises(ValueError, match="paired"):
        paired_ratio([1.0], [])


def test_benchmark_speed_rows_ratios_and_errors():
    specs = [
        ModelSpec("tsn_resnet_tiny", 4),
        ModelSpec("tsm_resnet_tiny", 4),
        ModelSpec("blvnet_tam_tiny", 3),  # odd frames: bLVNet takes pairs
    ]
    rows = benchmark_speed(
        specs, backends=("eager", "onnxruntime"), size=32, batch=2, rounds=2, warmup=1
    )
    ok = [r for r in rows if "error" not in r]
    assert [(r["model"], r["backend"], r["memory_format"]) for r in ok] == [
        (m, b, f)
        for m in ("tsn_resnet_tiny 4f", "tsm_resnet_tiny 4f")
        for b, f in (("eager", "contiguous"), ("eager", "channels_last"), ("onnxruntime", "-"))
    ]
    for r in ok:
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["clips_per_s"] == pytest.approx(2e3 / r["median_ms"], rel=1e-3)
        assert r["vs_baseline"] > 0 and r["speedup"] > 0
    assert all(r["vs_baseline"] == 1.0 for r in ok if r["model"].startswith("tsn"))
    assert all(r["speedup"] == 1.0 for r in ok if r["memory_format"] == "contiguous")
    (error,) = [r for r in rows if "error" in r]
    assert error["model"] == "blvnet_tam_tiny 3f" and "even" in error["error"]
    with pytest.raises(ValueError, match="backend"):
        benchmark_speed(specs[:1], backends=("tensorrt",))


def test_shift_overhead_variants():
    assert [_fold_div(p) for p in ("1/8", "1/4", "1/2", "all")] == [16, 8, 4, 2]
    assert _fold_div("1/3") == 6
    for bad in ("3/4", "2", "half"):
        with pytest.raises(ValueError, match="proportion"):
            _fold_div(bad)
    specs = overhead_specs("resnet_tiny", frames=4, proportions=("1/4",))
    assert [s.title for s in specs] == ["TSN (0)", "residual 1/4", "residual, copy 1/4",
                                        "in-place 1/4"]  # fmt: skip
    rows = benchmark_shift_overhead(
        "resnet_tiny", frames=4, size=32, proportions=("1/4", "all"),
        formats=("channels_last",), rounds=2, warmup=1,
    )  # fmt: skip
    assert len(rows) == 1 + 2 * 3
    base = rows[0]
    assert (base["place"], base["proportion"], base["overhead_pct"]) == ("none", "0", 0.0)
    places = {(r["place"], r["proportion"]) for r in rows[1:]}
    assert ("residual, copy", "all") in places and ("in-place", "1/4") in places
    for r in rows:
        assert r["overhead_pct"] == pytest.approx((r["vs_baseline"] - 1) * 100, abs=0.01)


def test_vs_3d_small():
    specs = (
        ModelSpec("tsm_resnet_tiny", 4, label="TSM 8f"),
        ModelSpec("tsn_resnet_tiny", 4, label="TSN 8f"),
        ModelSpec("i3d_resnet18", 4, label="I3D from [49]"),
    )
    rows = benchmark_vs_3d(specs, size=32, batch=2, rounds=1, latency_rounds=2)
    by_model = {r["model"]: r for r in rows}
    assert by_model["TSM 8f"]["latency_vs_tsm"] == 1.0
    assert by_model["TSM 8f"]["tsm_throughput_x"] == 1.0
    i3d = by_model["I3D from [49]"]
    assert i3d["gmacs"] > by_model["TSN 8f"]["gmacs"] > 0 and i3d["params"] > 0
    assert i3d["clips_per_s"] > 0 and i3d["tsm_throughput_x"] > 0


def test_cli_latency_and_shift_overhead(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["tsn_resnet_tiny", "tsm_resnet_tiny", "--frames", "4", "--size", "32", "--iters", "2"]
    assert main(["bench", "latency", *args, "--output", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| tsm_resnet_tiny 4f | eager | fp32 | channels_last | 1 |" in text
    for ext in ("json", "csv", "md", "png"):
        assert (out / f"latency.{ext}").is_file()
    payload = json.loads((out / "latency.json").read_text())
    assert payload["environment"]["torch_threads"] >= 1 and len(payload["rows"]) == 4

    overhead = ["--backbone", "resnet_tiny", "--frames", "4", "--size", "32", "--iters", "2",
                "--proportions", "1/4", "--op-rounds", "2", "--format", "contiguous"]  # fmt: skip
    assert main(["bench", "shift-overhead", *overhead, "--output", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in report["rows"]} >= {"TSN (0)", "residual 1/4", "in-place 1/4"}
    assert report["shift_op"][0]["shift_over_clone"] > 0
    for name in ("shift_overhead.png", "shift_op.md", "shift_op.png"):
        assert (out / name).is_file()


def test_cli_cuda_unavailable_is_a_clear_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "latency", "tsn_resnet_tiny", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_memory_and_shift_reports(tmp_path, capsys):
    out = str(tmp_path)
    models = ["tsm_resnet_tiny:4", "tsn_resnet_tiny:4"]
    assert main(["bench", "memory", *models, "--size", "32", "--output", out, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["model"] for r in rows] == ["tsm_resnet_tiny", "tsn_resnet_tiny"]
    assert rows[1]["ratio"] == 1.0 and rows[0]["peak_mib"] > 0
    assert main(["bench", "shift", "--iters", "1", "--output", out]) == 0
    assert "shift_over_clone" in capsys.readouterr().out
    for name in ("memory.png", "memory.csv", "shift.json", "shift.png"):
        assert (tmp_path / name).is_file()
    with pytest.raises(SystemExit):  # argparse: "expected MODEL or MODEL:FRAMES"
        main(["bench", "memory", "tsm_resnet_tiny:x"])
    assert "MODEL:FRAMES" in capsys.readouterr().err


def test_flow_benchmark_rows_and_ratio(tmp_path, capsys, monkeypatch):
    """`bench flow`: one row per algorithm and one for the model, from one interleaved run;
    vs_model is the model's frames/s over the algorithm's; an algorithm that is missing here
    (TV-L1 without OpenCV's contrib build) gets a row naming the extra, the rest is measured."""
    import cv2

    from timeshift.bench.flow_speed import benchmark_flow, moving_frames

    frames = moving_frames(3, height=24, width=32, step=2)
    assert frames.shape == (3, 24, 32, 3)
    assert np.array_equal(frames[1][:, :-2], frames[0][:, 2:])  # the scene pans 2 px per frame
    monkeypatch.delattr(cv2, "optflow", raising=False)
    rows = benchmark_flow(
        ["dis", "farneback", "tvl1"], model="tsm_resnet_tiny", frames=4, size=32, rounds=2
    )
    assert [r["contender"] for r in rows] == ["dis", "farneback", "tvl1", "tsm_resnet_tiny"]
    assert "timeshift[flow]" in rows[2]["error"]
    model = rows[3]
    assert model["kind"] == "model" and model["vs_model"] is None
    assert model["frames_per_s"] == pytest.approx(4 / model["median_ms"] * 1e3, rel=1e-3)
    for row in rows[:2]:
        assert row["resolution"] == "42x32" and row["frames_per_s"] > 0
        assert row["vs_model"] == pytest.approx(
            model["frames_per_s"] / row["frames_per_s"], rel=0.02
        )
    code = main(
        ["bench", "flow", "--algorithms", "dis", "--model", "tsm_resnet_tiny", "--frames", "4",
         "--size", "32", "--iters", "2", "--no-progress", "--json", "--output", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["contender"] for r in report["rows"]] == ["dis", "tsm_resnet_tiny"]
    assert (tmp_path / "flow.png").stat().st_size > 0 and (tmp_path / "flow.md").exists()
