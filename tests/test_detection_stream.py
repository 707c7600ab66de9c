"""`timeshift stream` with a detector: boxes mapped back to the source frame, the annotated video,
JSON lines, the exported online detector, drawing, errors."""

import json
import logging
import random

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.detection import create_detector, detection_eval_transforms
from timeshift.detection.draw import class_colour, draw_detections
from timeshift.detection.online import OnlineDetector
from timeshift.detection.stream import (
    OnnxOnlineDetector,
    detect_stream,
    detection_inputs,
    stream_detector,
)
from timeshift.detection.structures import Detections, FrameBoxes
from timeshift.engine.backend import exported_onnx
from timeshift.online.stream import StreamSummary, drain, open_source

from conftest import moving_square, write_test_video

pytestmark = pytest.mark.usefixtures("one_thread")

T, S, FRAMES = 4, 64, 8
HEIGHT, WIDTH = 96, 128  # not square: the shorter side goes to S, the aspect is kept
CLASSES = ["cat", "dog", "car"]
SQUARE = 1  # the moving square's class


def _square_boxes(count: int) -> list[FrameBoxes]:
    """Where conftest's moving_square puts its 16x16 square (x = 16 + 2t, y = 12)."""
    return [FrameBoxes([[16 + 2 * t, 12, 32 + 2 * t, 28]], [SQUARE]) for t in range(count)]


@pytest.fixture(scope="module")
def frames():
    return moving_square(FRAMES, size=(HEIGHT, WIDTH))


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("video") / "square.mp4", frames, fps=10)


@pytest.fixture(scope="module")
def decoded(video):
    """The video's frames as every reader here decodes them (the mp4 is lossy)."""
    import av

    with av.open(video) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def detector(one_thread, frames):
    """A tiny online detector trained for a few steps on the square, so that it finds it with
    a high score and little else (an untrained heatmap peaks everywhere)."""
    torch.manual_seed(0)
    model = create_detector(
        "tsm_resnet_tiny", num_classes=len(CLASSES), num_segments=T, direction="unidirectional"
    )
    clips, boxes, _ = detection_eval_transforms(S)(frames, _square_boxes(FRAMES), random.Random(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        loss = model.loss(model(clips.unflatten(0, (FRAMES // T, T))), boxes)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().checkpoint_meta = {"classes": CLASSES, "input_size": S}
    return model


@pytest.fixture(scope="module")
def checkpoint(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "det.pt"
    return str(timeshift.save_model(detector, path, meta=detector.checkpoint_meta))


@pytest.fixture(scope="module")
def onnx_path(detector):
    """The online export the onnxruntime backend makes (cached: made once)."""
    return str(exported_onnx(detector, size=S, online=True))


def _to_source(found: Detections, input_hw, source_hw) -> Detections:
    """Boxes of the model's input scaled back to the source's pixels by hand, clipped to it."""
    (h, w), (height, width) = input_hw, source_hw
    scale = np.array([w / width, h / height, w / width, h / height])
    boxes = np.clip(found.boxes / scale, 0, [width, height, width, height])
    return Detections(boxes, found.scores, found.labels)


def _offline_boxes(detector, images: np.ndarray, size) -> list[Detections]:
    """The offline causal model on the clip of ``images`` (one clip of T frames), boxes in the
    images' pixels."""
    clip, _, _ = detection_eval_transforms(size)(images, [FrameBoxes()] * len(images), None)
    with torch.no_grad():
        found = detector.decode(detector(clip[None]))
    return [_to_source(d, clip.shape[-2:], images.shape[1:3]) for d in found]


def _assert_same(found: Detections, expected: Detections, atol: float) -> None:
    assert len(found) == len(expected)
    np.testing.assert_allclose(found.boxes, expected.boxes, atol=atol)
    np.testing.assert_allclose(found.scores, expected.scores, atol=atol)
    np.testing.assert_array_equal(found.labels, expected.labels)


def test_streamed_boxes_are_the_offline_ones_in_source_pixels(detector, video, decoded):
    out = list(detect_stream(open_source(video), detector, every=2))
    assert [f.index for f in out] == list(range(FRAMES))
    processed = [f for f in out if f.record is not None]
    assert [f.index for f in processed] == [0, 2, 4, 6]
    # the 4 processed frames are one clip of the offline uni-directional model
    expected = _offline_boxes(detector, decoded[::2], S)
    for frame, boxes in zip(processed, expected, strict=True):
        _assert_same(frame.detections, boxes, atol=1e-3)
        assert frame.record["time"] == pytest.approx(frame.index / 10)
        assert frame.image.shape == (HEIGHT, WIDTH, 3)
    # the detector found the square where it is, in the source frame's pixels
    best = processed[-1].detections
    assert best.scores[0] >= 0.3 and best.labels[0] == SQUARE
    truth = _square_boxes(FRAMES)[6].boxes[0]
    assert np.abs(best.boxes[0] - truth).max() < 8  # pixels of a 128x96 frame
    # a frame --every skips has no record and shows the last processed frame's boxes
    for skipped in out[1::2]:
        assert skipped.record is None and skipped.latency_ms is None
        assert skipped.detections is out[skipped.index - 1].detections
    # an OnlineDetector stepped by hand on the same frames gives the same boxes
    online = OnlineDetector(detector)
    transform = detection_eval_transforms(S)
    for frame, image in zip(processed, decoded[::2], strict=True):
        x, _, _ = transform(image[None], [FrameBoxes()], None)
        found = _to_source(online.detect(x[0]), x.shape[-2:], (HEIGHT, WIDTH))
        _assert_same(frame.detections, found, atol=1e-4)


def _outline(box, factor: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the left and right edges of a drawn box, in enlarged pixels."""
    x1, y1, x2, y2 = (round(v * factor) for v in box)
    rows = np.arange(y1 + (y2 - y1) // 3, y2 - 2)  # below the label, above the bottom edge
    left = np.arange(x1, x1 + width)
    right = np.arange(x2 - width, x2)
    return rows, np.concatenate([left, right])


def test_cli_annotated_video_and_json_lines(checkpoint, video, decoded, tmp_path, capsys):
    out, lines = tmp_path / "annotated.mp4", tmp_path / "boxes.jsonl"
    stream = ["stream", video, checkpoint, "--output", str(out), "--jsonl", str(lines)]
    assert main(stream) == 0
    printed = capsys.readouterr().out
    assert f"{FRAMES} frames read, {FRAMES} detected (pytorch)" in printed
    assert "boxes scoring >= 0.30" in printed
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(FRAMES))
    assert set(records[0]) == {"frame", "time", "detections", "latency_ms"}
    assert records[3]["time"] == pytest.approx(0.3)
    # the JSON boxes are the offline model's in source pixels (rounded to 0.01 px)
    detector = timeshift.load_model(checkpoint).eval()
    expected = _offline_boxes(detector, decoded[:T], S)
    for record, boxes in zip(records, expected, strict=False):
        got = record["detections"]
        assert {tuple(d) for d in got} == {("box", "label", "index", "score")}
        assert [d["label"] for d in got] == [CLASSES[k] for k in boxes.labels]
        np.testing.assert_allclose([d["box"] for d in got], boxes.boxes, atol=0.006)
        np.testing.assert_allclose([d["score"] for d in got], boxes.scores, atol=6e-5)
    # the annotated video: every frame, enlarged by an integer factor to >= 320 px wide
    import av

    with av.open(str(out)) as container:
        annotated = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    factor = -(-320 // WIDTH)
    assert annotated.shape == (FRAMES, HEIGHT * factor, WIDTH * factor, 3)
    source = decoded.repeat(factor, axis=1).repeat(factor, axis=2).astype(np.int16)
    diff = np.abs(annotated.astype(np.int16) - source).mean(axis=-1)
    for k, record in enumerate(records):
        drawn = [d for d in record["detections"] if d["score"] >= 0.3]
        assert drawn, "the trained detector finds the square in every frame"
        rows, cols = _outline(drawn[0]["box"], factor, width=2)
        assert diff[k][np.ix_(rows, cols)].mean() > 40  # the box's edges are drawn
        # the picture is kept away from the boxes and the text band
        x2 = max(round(d["box"][2] * factor) for d in drawn)
        assert diff[k][HEIGHT * factor // 2 :, x2 + 8 :].mean() < 8


def test_exported_online_detector_streams_the_same_boxes(detector, onnx_path, video, caplog):
    runner = OnnxOnlineDetector(onnx_path)
    assert runner.frame_size == (S, S) and runner.stride == detector.out_stride
    assert detection_inputs(runner).input_size == (S, S)  # the export's size, fixed
    with caplog.at_level(logging.WARNING, logger="timeshift.detection.stream"):
        exported = list(detect_stream(open_source(video), runner))
    assert "stretched to 64x64" in caplog.text  # a 128x96 source in a square graph
    # PyTorch with the same (H, W) input size: the same frames, the same boxes
    eager = list(detect_stream(open_source(video), detector, input_size=(S, S)))
    assert len(exported) == len(eager) == FRAMES
    for a, b in zip(exported, eager, strict=True):
        _assert_same(a.detections, b.detections, atol=2e-3)
    assert len(exported[0].detections) > 0


def test_cli_streams_an_export_and_the_onnxruntime_backend(
    checkpoint, onnx_path, video, tmp_path, capsys
):
    # the .pt on onnxruntime runs what exported_onnx made (cached), so both runs agree
    boxes = {}
    for name, args in {"export": [onnx_path], "backend": [checkpoint, "--onnx"]}.items():
        path = tmp_path / f"{name}.jsonl"
        assert main(["stream", video, *args, "--jsonl", str(path), "--quiet", "--every", "3"]) == 0
        assert f"{FRAMES} frames read, 3 detected (onnxruntime)" in capsys.readouterr().out
        records = [json.loads(x) for x in path.read_text().splitlines()]
        assert [r["frame"] for r in records] == [0, 3, 6]
        boxes[name] = [r["detections"] for r in records]
    assert boxes["export"] == boxes["backend"] and boxes["export"][0]


def test_stream_detector_picks_the_runner(detector, onnx_path):
    assert isinstance(stream_detector(detector)[0], OnlineDetector)  # auto: PyTorch
    runner, backend = stream_detector(onnx_path)
    assert isinstance(runner, OnnxOnlineDetector) and backend == "onnxruntime"
    with pytest.raises(ValueError, match=r"exported for 64x64 frames; --size 96"):
        detection_inputs(runner, size=96)
    recognizer = timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=T)
    with pytest.raises(TypeError, match="expected a Detector, got Recognizer"):
        stream_detector(recognizer)


def _relabelled(onnx_path, tmp_path, **changes) -> str:
    """A copy of the export whose timeshift metadata says other things."""
    import onnx

    from timeshift.export.exporter import META_KEY

    proto = onnx.load(onnx_path)
    (entry,) = [p for p in proto.metadata_props if p.key == META_KEY]
    entry.value = json.dumps({**json.loads(entry.value), **changes})
    path = tmp_path / f"{'-'.join(changes.values())}.onnx"
    onnx.save(proto, str(path))
    return str(path)


def test_wrong_exports_are_refused(onnx_path, tmp_path):
    recognition = _relabelled(onnx_path, tmp_path, task="recognition")
    with pytest.raises(ValueError, match=r"recognition\.onnx is a recognition export, not a det"):
        OnnxOnlineDetector(recognition)
    offline = _relabelled(onnx_path, tmp_path, mode="offline")
    with pytest.raises(ValueError, match=r"offline export.*export with --online"):
        OnnxOnlineDetector(offline)


def test_stream_errors(tmp_path, video, checkpoint, capsys):
    torch.manual_seed(0)
    bidirectional = create_detector("tsm_resnet_tiny", num_classes=3, num_segments=T)
    path = timeshift.save_model(bidirectional, tmp_path / "bi.pt", meta={"input_size": S})
    assert main(["stream", video, str(path)]) == 2
    err = capsys.readouterr().err
    assert "future" in err and "drop_future" in err
    assert main(["stream", video, str(path), "--drop-future", "--max-frames", "2"]) == 0
    assert "2 frames read, 2 detected (pytorch)" in capsys.readouterr().out
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    assert main(["stream", video, str(tmp_path / "notes.pt")]) == 2
    assert "notes.pt" in capsys.readouterr().err
    assert main(["stream", str(tmp_path / "missing.mp4"), checkpoint]) == 2
    assert "video not found" in capsys.readouterr().err
    for flag, value in (("--every", "0"), ("--score-threshold", "1.5")):
        assert main(["stream", video, checkpoint, flag, value]) == 2
        assert flag in capsys.readouterr().err


def test_summary_counts_detection_frames(detector, video):
    summary = StreamSummary(video)
    drain(detect_stream(open_source(video), detector, every=4), [summary])
    s = summary.as_dict()
    assert (s["frames_read"], s["frames_processed"]) == (FRAMES, 2)
    assert s["final_label"] is None and s["label_changes"] == 0


def test_draw_detections_draws_boxes_labels_and_scores():
    image = np.full((100, 120, 3), 128, dtype=np.uint8)
    found = Detections([[10, 30, 50, 70], [60, 10, 100, 40]], [0.9, 0.2], [2, 0])
    drawn = draw_detections(image, found, CLASSES, score_threshold=0.3)
    assert drawn.shape == image.shape and (image == 128).all()  # the input is not changed
    colour = class_colour(2)
    assert drawn[50, 10].tolist() == list(colour)  # left edge (x1 = 10)
    assert drawn[50, 49].tolist() == list(colour)  # right edge: the box's last column
    assert drawn[69, 30].tolist() == list(colour)  # bottom edge: its last row
    assert (drawn[50, 52] == 128).all() and (drawn[45:55, 20:40] == 128).all()  # inside
    label = drawn[15:30, 10:50]  # above the box: the filled label with its text
    assert (label == colour).all(axis=-1).mean() > 0.4 and (label != colour).any()
    assert (drawn[5:45, 62:120] == 128).all()  # the 0.2 box is below the threshold
    everything = draw_detections(image, found, CLASSES, score_threshold=0.0)
    assert everything[25, 60].tolist() == list(class_colour(0))
    # enlarged for readability: boxes follow the pixels
    big = draw_detections(image, found, CLASSES, min_width=320)
    assert big.shape == (300, 360, 3)
    assert big[150, 30].tolist() == list(colour) and (big[150, 60] == 128).all()
    colours = {class_colour(k) for k in range(30)}  # ImageNet-VID's 30 classes
    assert len(colours) == 30
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        draw_detections(image.astype(np.float32), found)
