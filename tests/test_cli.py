import json

from timeshift.bench.shift_speed import benchmark_shift
from timeshift.cli import main


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
