"""`demo --two-stream` at small scale: flow gives the order-blind TSN the direction of motion."""

import json

import pytest

from timeshift.cli import main
from timeshift.data.formats import read_annotations
from timeshift.engine.demo_two_stream import ROWS
from timeshift.engine.fusion import fuse_scores, load_scores, video_ids
from timeshift.engine.predict import predict_videos
from timeshift.models.checkpoints import load_model

OVERRIDES = [
    "train.epochs=6",
    "train.warmup_epochs=1",
    "train.batch_size=8",
    "model.num_segments=4",
    "data.synthetic.videos_per_class=24",
    "data.synthetic.val_videos_per_class=8",
    # one motion, both directions: an order-blind RGB model is at chance
    "data.synthetic.families=[horizontal]",
    "data.synthetic.frames=12",  # 11 flow frames: 4 segments of 5 stacked flow fields
    "data.workers=0",
    "eval.batch_size=8",
]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_stream_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "timeshift.engine.demo_two_stream.load_config",
        _with_overrides([*OVERRIDES, f"data.synthetic.cache_dir={tmp_path / 'cache'}"]),
    )
    out = tmp_path / "two"
    assert main(["demo", "--two-stream", "--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["models"]}
    assert list(rows) == list(ROWS)
    assert all(name in printed for name in ROWS)
    # flow carries the direction that RGB frames without their order do not
    assert rows["TSN-RGB"]["top1"] <= 0.75
    assert rows["TSN-Flow"]["top1"] >= rows["TSN-RGB"]["top1"] + 0.2
    # the fused rows are the fusion of the streams' saved scores (TSN's 1 : 1.5 on logits)
    for name in ("TSN", "TSM"):
        streams = [load_scores(out / f"{name}-{m}".lower() / "test") for m in ("rgb", "flow")]
        fused = fuse_scores(streams, weights=[1, 1.5], mode="logits").report()
        assert rows[f"{name}-RGB+Flow"]["top1"] == pytest.approx(fused["top1"])
    assert results["timing"]["flow_ms_per_video"] > 0
    assert set(results["timing"]["model_ms_per_video"]) == {
        n for n in ROWS if not n.endswith("+Flow")
    }
    assert (out / "results.png").stat().st_size > 0
    _check_predict_from_videos(out, results)


def _check_predict_from_videos(out, results):
    """The flow checkpoint records how its training flow was made; ``predict`` with the pair
    computes two validation videos' flow that way and gives the fused scores of the test."""
    flow_ckpt, rgb_ckpt = out / "tsm-flow" / "last.pt", out / "tsm-rgb" / "last.pt"
    meta = load_model(flow_ckpt).checkpoint_meta
    assert meta["flow"] == {"algorithm": "dis", "bound": 20.0, "short_side": None, "quality": 95}
    val = read_annotations(results["data"]["val"])
    ids, videos = video_ids(val)[:2], [r.path for r in val.records[:2]]
    predicted = predict_videos(rgb_ckpt, videos, flow_checkpoint=flow_ckpt, workers=0,
                               progress=False, top_k=99)  # fmt: skip
    streams = [load_scores(out / f"tsm-{m}" / "test") for m in ("rgb", "flow")]
    fused = fuse_scores(streams, weights=[1, 1.5], mode="logits")
    for video_id, result in zip(ids, predicted, strict=True):
        expected = fused.probabilities()[fused.video_ids.index(video_id)]
        got = [e["score"] for e in sorted(result["top"], key=lambda e: e["index"])]
        assert got == pytest.approx(expected.tolist(), abs=1e-4)


def _with_overrides(extra):
    from timeshift.engine.config import load_config

    def load(recipe, overrides=None):
        return load_config(recipe, [*(overrides or []), *extra])

    return load
