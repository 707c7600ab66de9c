"""`demo --detection` at small scale: the per-frame 2D detector and the online TSM detector on
the synthetic set, with the rows, subsets, latencies and figures the issue names."""

import json

import pytest

from timeshift.cli import main
from timeshift.detection.demo import RECIPES

OVERRIDES = [
    "train.epochs=3",
    "detection.synthetic.train_videos=40",
    "detection.synthetic.val_videos=10",
    "detection.synthetic.frames=12",
]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_detection_demo(tmp_path, monkeypatch, capsys):
    from timeshift.engine.config import load_config

    def load(recipe, overrides=None):
        extra = [*OVERRIDES, f"data.synthetic.cache_dir={tmp_path / 'cache'}"]
        return load_config(recipe, [*(overrides or []), *extra])

    monkeypatch.setattr("timeshift.detection.demo.load_config", load)
    out = tmp_path / "det"
    assert main(["demo", "--detection", "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["models"]}
    assert list(rows) == list(RECIPES) == ["2D", "online TSM"]
    for row in rows.values():
        for key in ("ap50", "ap50_degraded", "ap50_clean"):
            assert 0 <= row[key] <= 1
        assert row["ms_per_frame"] > 0 and row["name"] in printed
    # the same detector, with or without the shift: the same parameters
    assert rows["2D"]["params"] == rows["online TSM"]["params"]
    # the metrics are the test's (each run's test/metrics.json)
    tested = json.loads((out / "online-tsm" / "test" / "metrics.json").read_text())
    assert rows["online TSM"]["ap50_degraded"] == tested["ap50_degraded"]
    for name in ("results.png", "examples.png"):
        assert (out / name).stat().st_size > 0
