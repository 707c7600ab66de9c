import importlib
import inspect
import json
import runpy
import sys
from pathlib import Path

import pytest

import timeshift
from timeshift.bench.shift_speed import benchmark_shift
from timeshift.cli import build_parser, main
from timeshift.cli.bench import SUITES
from timeshift.engine.config import ConfigError
from timeshift.errors import TimeshiftError


def test_info_json_reproduces_reference_numbers(capsys):
    assert main(["info", "tsm_resnet50", "--num-classes", "400", "--frames", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 24_327_632 and isinstance(data["macs"], int)
    assert abs(data["macs"] / 1e9 - 32.70) / 32.70 < 0.005
    assert data["temporal_modules"] == 16


def test_info_text_mentions_macs(capsys):
    assert (
        main(
            [
                "info",
                "tsm_mobilenet_v2",
                "--num-classes",
                "27",
                "--frames",
                "1",
                "--direction",
                "unidirectional",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2,258,459" in out and "MACs" in out and "27,048 floats" in out


def test_models_and_errors(capsys):
    assert main(["models", "tsm_resnet5*", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ["tsm_resnet50", "tsm_resnet50_nl"]
    assert main(["info", "tsm_resnet05", "--num-classes", "2", "--frames", "2"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_shift_benchmark_runs_on_a_small_tensor():
    rows = benchmark_shift(
        shape=(8, 16, 4, 4), num_segments=4, rounds=2, warmup=1, allocators=("default",)
    )
    assert [r["memory_format"] for r in rows] == ["contiguous", "channels_last"]
    assert all(r["shift_ms"] > 0 and r["shift_over_clone"] > 0 for r in rows)


def _project_exceptions() -> list[type]:
    """Every public exception class the package defines (each module imported)."""
    root = Path(timeshift.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        if path.name == "__main__.py":  # runs the command line when imported
            continue
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(("timeshift", *parts)).removesuffix(".__init__")
        for value in vars(importlib.import_module(name)).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == name
                and not value.__name__.startswith("_")
            ):
                found.add(value)
    return sorted(found, key=lambda cls: cls.__qualname__)


def test_project_errors_share_a_base_and_keep_their_builtin_one():
    errors = {cls.__name__: cls for cls in _project_exceptions()}
    assert {"CheckpointError", "ConfigError", "VideoDecodeError", "ExportError"} <= set(errors)
    assert all(issubclass(cls, TimeshiftError) for cls in errors.values()), errors
    assert issubclass(TimeshiftError, RuntimeError)
    # what callers caught before the base class existed still catches them
    for name, builtin in (
        ("ConfigError", ValueError),
        ("AnnotationError", ValueError),
        ("CheckpointWriteError", OSError),
        ("NonFiniteLossError", RuntimeError),
    ):
        assert issubclass(errors[name], builtin), name


def _failing_models(monkeypatch, error: Exception) -> None:
    """`timeshift models` raises ``error`` from inside the library."""
    from timeshift.models import registry

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(registry, "list_models", fail)


def test_a_project_error_is_one_line_and_v_shows_its_traceback(monkeypatch, capsys):
    _failing_models(monkeypatch, ConfigError("recipe.yaml: model.name is missing"))
    assert main(["models"]) == 2
    assert capsys.readouterr().err == "timeshift: error: recipe.yaml: model.name is missing\n"
    with pytest.raises(ConfigError, match="is missing"):
        main(["-v", "models"])


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, capsys):
    # a plain RuntimeError from deep inside torch is a bug, not the user's input
    _failing_models(monkeypatch, RuntimeError("CUDA error: an illegal memory access"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(["models"])
    assert "timeshift: error" not in capsys.readouterr().err


def test_python_dash_m_runs_the_command_line_and_v_raises(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["timeshift", "models", "tsm_resnet5*", "--json"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("timeshift", run_name="__main__")
    assert done.value.code == 0
    assert json.loads(capsys.readouterr().out) == ["tsm_resnet50", "tsm_resnet50_nl"]
    # a user's error too: -v lets it through, so Python prints the traceback
    with pytest.raises(KeyError, match="did you mean"):
        main(["-v", "info", "tsm_resnet05", "--num-classes", "2", "--frames", "2"])


def test_test_and_predict_share_the_inference_flags_and_stream_its_runtime():
    parser = build_parser()
    test = parser.parse_args(["test", "c.pt", "--data", "val.txt"])
    predict = parser.parse_args(["predict", "c.pt", "clip.mp4"])
    for args in (test, predict):
        flags = (args.batch_size, args.workers, args.device, args.backend, args.format)
        assert flags == (4, 2, "cpu", "auto", "auto") and not args.json and not args.no_progress
    export = parser.parse_args(["export", "c.pt", "--output", "m.onnx"])
    stream = parser.parse_args(["stream", "clip.mp4", "c.pt", "--model", "tsm_resnet50"])
    assert (export.model, export.frames, export.size) == (None, None, None)
    assert (stream.model, stream.backend, stream.format) == ("tsm_resnet50", "auto", "auto")
    with pytest.raises(SystemExit):  # the streaming model is not compiled
        parser.parse_args(["stream", "clip.mp4", "c.pt", "--backend", "compile"])


def test_bench_suites_are_registered_from_their_table():
    parser = build_parser()
    for name, suite in SUITES.items():
        args = parser.parse_args(["bench", name])
        assert args.func is suite.run and args.output == "runs/bench" and not args.json
        assert getattr(args, "iters", None) == suite.iters
        if suite.model is not None:
            assert (args.batch, args.size, args.device, args.frames) == (*suite.model, "cpu", 8)
    latency = parser.parse_args(["bench", "latency"])
    throughput = parser.parse_args(["bench", "throughput"])
    assert (latency.batch, latency.iters, throughput.batch, throughput.iters) == (1, 10, 16, 4)
    assert latency.format == ["contiguous", "channels_last"] and latency.backend == ["eager"]
    latency.models.append("tsm_resnet_tiny")  # a default list is not shared with later parses
    assert build_parser().parse_args(["bench", "latency"]).models == [
        "tsn_resnet50",
        "tsm_resnet50",
    ]
