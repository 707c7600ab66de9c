"""Detectors through the engine: ``timeshift train`` with a detection recipe (the training loop,
checkpoints, resume), whole-video detection in order (streamed across chunks, or in windows for
a bi-directional model) and ``timeshift test`` for detectors."""

import json

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.detection.dataset import VideoDetectionDataset
from timeshift.detection.evaluate import VideoDetector, detect_videos, is_causal
from timeshift.detection.formats import read_video_json
from timeshift.detection.model import Detector, create_detector
from timeshift.detection.synthetic import SyntheticDetectionSpec, make_synthetic_detection
from timeshift.detection.transforms import detection_eval_transforms
from timeshift.engine.config import ConfigError, load_config
from timeshift.engine.trainer import fit

SPEC = {"train_videos": 8, "val_videos": 3, "frames": 8, "size": 32, "object_size": [6, 12]}


def _cfg(tmp_path, *extra):
    return load_config(
        None,
        [
            "task=detection",
            "model.name=tsm_resnet_tiny",
            "model.num_segments=4",
            "model.channels_last=false",
            "model.kwargs.direction=unidirectional",
            "model.kwargs.fpn_channels=16",
            "model.kwargs.head_channels=16",
            "data.format=synthetic_detection",
            f"data.synthetic.cache_dir={tmp_path / 'cache'}",
            "data.size=32",
            "data.workers=0",
            *(f"detection.synthetic.{k}={v}".replace(" ", "") for k, v in SPEC.items()),
            "train.epochs=2",
            "train.batch_size=4",
            "train.optimizer=adamw",
            "train.lr=0.003",
            "train.milestones=[]",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("det")
    result = fit(_cfg(root), root / "run", progress=False)
    return root, result


def test_train_writes_a_detector_run(trained):
    root, result = trained
    run = root / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for row in rows:
        assert 0 <= row["val_ap50"] <= 1 and "train_top1" not in row
        assert "val_ap50_degraded" in row and "val_ap50_clean" in row
        assert np.isfinite(row["train_loss"])
    assert (run / "curves.png").stat().st_size > 0 and (run / "best.pt").is_file()
    model = timeshift.load_model(run / "last.pt")
    assert isinstance(model, Detector) and model.num_classes == 3
    meta = model.checkpoint_meta
    assert meta["task"] == "detection" and meta["classes"] == ["red", "green", "blue"]
    assert meta["input_size"] == 32 and result["output_dir"] == str(run)


def test_resume_continues_a_detector_run(trained, tmp_path):
    root, _ = trained
    cfg = _cfg(root, "train.epochs=3")
    fit(cfg, root / "run", resume=root / "run" / "last.pt", progress=False)
    rows = (root / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1, 2]


def test_cli_test_of_a_detector(trained, tmp_path, capsys):
    root, _ = trained
    val = next((root / "cache").glob("*/val.json"))
    out = tmp_path / "test"
    assert main(["test", str(root / "run" / "last.pt"), "--data", str(val), "--output",
                 str(out), "--workers", "0", "--no-progress", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["videos"] == 3 and summary["frames"] == 24
    assert summary["mode"].startswith("online")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ap50"] == summary["ap50"]
    detections = json.loads((out / "detections.json").read_text())
    assert detections and set(detections[0]) == {"video", "frame", "label", "score", "box"}
    assert (out / "per_class.csv").read_text().splitlines()[0] == "class,ap50"
    # the same numbers as training's last validation (same model, same videos, same protocol)
    last = json.loads((root / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["ap50"] == pytest.approx(last["val_ap50"])
    assert main(["test", str(root / "run" / "last.pt"), "--data", str(val), "--crops", "3"]) == 2
    assert "recognition options, not for a detector" in capsys.readouterr().err


def test_whole_videos_are_streamed_across_chunks(trained):
    root, _ = trained
    model = timeshift.load_model(root / "run" / "last.pt").eval()
    val = read_video_json(next((root / "cache").glob("*/val.json")))
    transform = detection_eval_transforms(32)
    whole = VideoDetectionDataset(val, mode="test", transform=transform)
    chunked = VideoDetectionDataset(val, mode="test", transform=transform, test_chunk=3)
    a = detect_videos(model, whole, progress=False)
    b = detect_videos(model, chunked, progress=False)
    for v in range(3):
        assert len(a[v]) == len(b[v]) == 8
        for x, y in zip(a[v], b[v], strict=True):
            np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-4)
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
    # streaming == the offline causal model on a clip of num_segments frames
    frames = whole[0][0][:4]
    with torch.no_grad():
        offline = model(frames[None])[0]
    assert torch.allclose(VideoDetector(model).maps(frames), offline, atol=1e-5)


def test_a_bidirectional_detector_sees_windows():
    torch.manual_seed(0)
    model = create_detector("tsm_resnet_tiny", num_classes=3, num_segments=4).eval()
    assert not is_causal(model)
    frames = torch.randn(6, 3, 32, 32)
    maps = VideoDetector(model).maps(frames)
    with torch.no_grad():
        first = model(frames[None, :4])[0]
        last = model(torch.cat([frames[4:], frames[-1:], frames[-1:]])[None])[0]
    assert torch.allclose(maps[:4], first, atol=1e-6)
    assert torch.allclose(maps[4:], last[:2], atol=1e-6)


def test_a_2d_detector_takes_its_frames_in_batches():
    torch.manual_seed(0)
    model = create_detector("tsn_resnet_tiny", num_classes=3, num_segments=4).eval()
    runner = VideoDetector(model, batch=4)
    assert runner.per_frame and not runner.streaming
    frames = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        alone = [model.forward_frame_head(model.forward_frames(f[None]))[0] for f in frames]
    assert torch.allclose(runner.maps(frames), torch.stack(alone), atol=1e-5)


def test_video_json_data_and_bad_configs(tmp_path):
    spec = SyntheticDetectionSpec(**SPEC)
    paths = make_synthetic_detection(tmp_path / "synth", spec=spec, progress=False)
    cfg = _cfg(tmp_path, "data.format=video_json", f"data.train={paths['train']}",
               f"data.val={paths['val']}", "train.epochs=1")  # fmt: skip
    fit(cfg, tmp_path / "json-run", progress=False)
    assert timeshift.load_model(tmp_path / "json-run" / "last.pt").num_classes == 3
    with pytest.raises(ConfigError, match="not a detection format"):
        fit(_cfg(tmp_path, "data.format=videos"), tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match=r"detection\.synthetic"):
        fit(_cfg(tmp_path, "detection.synthetic.colours=3"), tmp_path / "bad2", progress=False)


@pytest.mark.parametrize(
    "recipe", ["synthetic-detection-tsm", "synthetic-detection-2d", "imagenet-vid-tsm-r50"]
)
def test_shipped_detection_recipes_build(recipe):
    from timeshift.detection.training import DetectionTask

    cfg = load_config(recipe)
    assert cfg.task == "detection"
    with torch.device("meta"):
        model = DetectionTask().build_model(cfg, 30)
    assert isinstance(model, Detector) and model.num_segments == cfg.model.num_segments
    assert is_causal(model)  # uni-directional TSM, or no temporal op (2D)
