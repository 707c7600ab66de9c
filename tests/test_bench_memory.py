"""`timeshift.bench.memory`: peak training memory measured in child processes, as ratios."""

import pytest

from timeshift.bench.memory import benchmark_memory, measure_training_memory, plot_memory

FIELDS = {
    "model",
    "frames",
    "size",
    "batch",
    "device",
    "memory_format",
    "threads",
    "params_mib",
    "input_mib",
    "peak_mib",
    "total_mib",
    "rss_peak_mib",
    "seconds",
}


@pytest.fixture(scope="module")
def rows(one_thread):
    models = [("tsn_resnet_tiny", 4), ("blvnet_tam_tiny", 3)]  # bLVNet needs an even count
    return benchmark_memory(models, size=64, batch=1, baseline="tsn_resnet_tiny")


def test_rows_fields_ratio_and_error(rows):
    ok, odd = rows
    assert FIELDS | {"ratio", "saving"} <= set(ok)
    assert ok["threads"] == 1 and ok["memory_format"] == "contiguous"
    assert ok["peak_mib"] > ok["params_mib"] > 0  # the gradients alone are the parameters' size
    assert ok["total_mib"] == pytest.approx(ok["params_mib"] + ok["input_mib"] + ok["peak_mib"])
    assert ok["ratio"] == 1.0 and ok["saving"] == 1.0  # the baseline against itself
    assert odd["model"] == "blvnet_tam_tiny" and "even" in odd["error"]
    assert "peak_mib" not in odd and "ratio" not in odd


def test_peak_grows_with_batch(rows, one_thread):
    single = rows[0]
    quad = measure_training_memory("tsn_resnet_tiny", frames=4, size=64, batch=4)
    # activations scale with the batch, the gradients do not: 4x the batch is well above 1.5x
    assert quad["peak_mib"] > 1.5 * single["peak_mib"]
    assert quad["params_mib"] == single["params_mib"]


def test_failed_baseline_and_bad_arguments():
    rows = benchmark_memory([("blvnet_tam_tiny", 3)], size=32)  # fails before any child starts
    assert "error" in rows[0] and "ratio" not in rows[0]
    with pytest.raises(ValueError, match="baseline"):
        benchmark_memory([("tsn_resnet_tiny", 4)], baseline="tsm_resnet_tiny")
    with pytest.raises(ValueError, match="memory_format"):
        measure_training_memory("tsn_resnet_tiny", frames=4, size=32, batch=1, memory_format="x")


def test_plot_memory(tmp_path):
    def row(model, peak, ratio):
        return {
            "model": model,
            "frames": 16,
            "memory_format": "contiguous",
            "params_mib": 95.0,
            "input_mib": 9.2,
            "peak_mib": peak,
            "ratio": ratio,
        }

    rows = [row("blvnet_tam_resnet50", 900.0, 0.5), row("tsn_resnet50", 1800.0, 1.0)]
    rows.append({"model": "blvnet_tam_resnet50", "frames": 3, "error": "odd"})
    path = tmp_path / "memory.png"
    plot_memory(rows, path, "training memory")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_total_is_the_sum_of_the_reported_parts(monkeypatch):
    """Each part rounds down (0.004 MiB -> 0.0) while their byte total rounds up (0.012 ->
    0.01): the total must still equal the parts it is reported with."""
    import timeshift.bench.memory as memory

    part = int(0.004 * 2**20)
    monkeypatch.setattr(memory, "_param_bytes", lambda *a, **k: part)
    monkeypatch.setattr(memory, "_run_child", lambda spec: {"peak": part, "rss_peak": None})
    # 1 x 1 x 3 x 16 x 16 float32 = 3072 bytes: 0.0029 MiB, rounds to 0.0
    row = measure_training_memory("tsn_resnet_tiny", frames=1, size=16, batch=1)
    assert (row["params_mib"], row["input_mib"], row["peak_mib"]) == (0.0, 0.0, 0.0)
    assert row["total_mib"] == row["params_mib"] + row["input_mib"] + row["peak_mib"]
