"""``timeshift.integrations.ray`` on a local Ray instance: the Ray Data route gives the same rows
as ``timeshift predict --manifest`` (paths, top-k labels and scores), a broken file gives an
error row, and the per-frame route (``read_videos``-style rows grouped into clips) gives the
same scores as the path route on a lossless video.

Ray starts worker processes: run this file in a pytest process of its own."""

import json
import logging

import numpy as np
import pytest
import torch

import timeshift
from timeshift.engine.scale import VideoScorer, predict_manifest

from conftest import write_test_video

ray = pytest.importorskip("ray", reason="the optional 'ray' extra is not installed")
pytest.importorskip("ray.data", reason="the optional 'ray' extra is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="the optional 'ray' extra is not installed")

from timeshift.integrations.ray import (  # noqa: E402
    RayIntegrationError,
    RayPredictor,
    actor_resources,
    frames_to_clips,
    predict_dataset,
    read_manifest,
)

CLASSES = ["red", "green", "blue", "still"]
T, SIZE = 4, 32
OPTIONS = {"backend": "eager", "top_k": 3}  # the same scorer options on both sides


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=False,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A checkpoint, five lossless videos of different content and lengths, one broken file,
    and a paths manifest of them (relative names)."""
    folder = tmp_path_factory.mktemp("ray")
    torch.manual_seed(0)
    net = timeshift.create_model("tsm_resnet_tiny", num_classes=4, num_segments=T)
    # BN statistics of random clips and a wide classifier: scores that change with the video
    # (and with the order of its frames), so that comparisons at 1e-5 mean something
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, T, 3, SIZE, SIZE))
        net.fc.weight.normal_(0.0, 1.0)
    net.eval()
    checkpoint = folder / "model.pth"
    meta = {"classes": CLASSES, "input_size": SIZE, "scale_size": 36}
    timeshift.save_model(net, checkpoint, meta=meta)
    rng = np.random.default_rng(0)
    names = []
    for k in range(5):
        frames = rng.integers(0, 255, (8 + 3 * k, 40, 48, 3), dtype=np.uint8)
        frames[:, :, : 8 * k] = 255 * (k % 2)  # a different picture per video
        write_test_video(folder / f"clip{k}.mkv", frames)
        names.append(f"clip{k}.mkv")
    (folder / "broken.mp4").write_bytes(b"\x00\x01 not a video")
    names.append("broken.mp4")
    manifest = folder / "videos.txt"
    manifest.write_text("\n".join(names) + "\n", encoding="utf-8")
    return {"folder": folder, "checkpoint": checkpoint, "manifest": manifest, "names": names}


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """``timeshift predict --manifest``'s rows (single process), by path."""
    output = tmp_path_factory.mktemp("predict")
    predict_manifest(
        videos["checkpoint"], videos["manifest"], output, workers=0, progress=False, **OPTIONS
    )
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    top = sorted(row["top_k"][0]["score"] for row in rows if "top_k" in row)
    assert len(top) == 5 and np.diff(top).min() > 1e-4  # every video scores differently
    return {row["path"]: row for row in rows}


def _same_rows(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for path, row in expected.items():
        if "error" in row:
            assert got[path]["top_k"] is None and got[path]["error"]
            continue
        assert got[path]["error"] is None
        assert [t["label"] for t in got[path]["top_k"]] == [t["label"] for t in row["top_k"]]
        assert [t["index"] for t in got[path]["top_k"]] == [t["index"] for t in row["top_k"]]
        np.testing.assert_allclose(
            [t["score"] for t in got[path]["top_k"]],
            [t["score"] for t in row["top_k"]],
            atol=1e-5,
        )


def test_the_documented_pipeline_gives_the_rows_of_predict(local_ray, videos, reference, tmp_path):
    """manifest -> map_batches(RayPredictor, ActorPoolStrategy) -> write_parquet."""
    dataset = read_manifest(videos["manifest"])
    results = dataset.map_batches(
        RayPredictor,
        fn_constructor_kwargs={"checkpoint": str(videos["checkpoint"]), **OPTIONS},
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.5,  # two actors leave a CPU to the read and write tasks
        batch_size=2,
        batch_format="pandas",
    )
    results.write_parquet(str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out")
    assert table.column_names == ["path", "top_k", "error"]
    assert str(table.schema.field("top_k").type) == (
        "list<element: struct<label: string, index: int64, score: double>>"
    )
    rows = {row["path"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(videos["names"])  # the paths as written in the manifest
    assert "broken.mp4" in rows["broken.mp4"]["error"]  # says which file failed
    _same_rows(rows, reference)


def _frame_rows(videos) -> list[dict]:
    """What ``read_videos(paths, include_paths=True)`` yields: one row per frame (decoded by
    PyAV here: Ray's reader needs decord), handed over in reverse order."""
    import av

    rows = []
    for name in videos["names"][:3]:
        with av.open(str(videos["folder"] / name)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                rows.append(
                    {"frame": frame.to_ndarray(format="rgb24"), "frame_index": index, "path": name}
                )
    return rows[::-1]


def test_frames_to_clips_scores_like_the_path_route(local_ray, videos, reference):
    frames = ray.data.from_items(_frame_rows(videos))
    clips = frames_to_clips(frames)
    results = predict_dataset(clips, videos["checkpoint"], batch_size=2, actors=1, **OPTIONS)
    rows = {row["path"]: row for row in results.take_all()}
    _same_rows(rows, {name: reference[name] for name in videos["names"][:3]})


def test_features_and_a_pandas_batch_in_process(videos, reference):
    """The predictor itself (no Ray): a pandas batch with a ``location`` column; features."""
    import pandas as pd

    predictor = RayPredictor(videos["checkpoint"], features=True, **OPTIONS)
    names = [*videos["names"][:2], "broken.mp4"]
    batch = pd.DataFrame({"path": names, "location": [str(videos["folder"] / n) for n in names]})
    table = predictor(batch)
    assert table.column_names == ["path", "top_k", "features", "error"]
    rows = {row["path"]: row for row in table.to_pylist()}
    _same_rows(rows, {name: reference[name] for name in names})
    scorer = VideoScorer(videos["checkpoint"], features=True, **OPTIONS)
    (expected,) = scorer.rows([scorer.decode(names[0], str(videos["folder"] / names[0]))])
    np.testing.assert_allclose(rows[names[0]]["features"], expected["features"], atol=1e-5)
    assert rows["broken.mp4"]["features"] is None
    with pytest.raises(RayIntegrationError, match="'path' column"):
        predictor({"text": np.array(["clip0.mkv"])})


def test_default_resources_leave_a_cpu_for_the_read_tasks(local_ray):
    total = ray.cluster_resources()["CPU"]
    options = actor_resources()
    pool = options["compute"]
    assert pool.min_size == pool.max_size >= 1
    assert pool.max_size * options["num_cpus"] <= total - 1
