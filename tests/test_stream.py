"""`timeshift stream`: smoothing with hysteresis, the loop against manual stepping, annotated
output, ONNX backends, errors."""

import json

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.data.decode import VideoDecodeError
from timeshift.data.transforms import eval_transforms
from timeshift.online.stream import (
    FrameSource,
    JsonLinesSink,
    LabelSmoother,
    Sink,
    annotate,
    frame_preprocessor,
    open_source,
    recognize_stream,
    run_stream,
)

from conftest import decode_all, http_folder, palette_frames, randomise, write_test_video

S, FRAMES = 32, 10


def test_smoother_does_not_flicker_but_follows_a_real_change():
    smoother = LabelSmoother(window=4, margin=0.1)
    a, b = [0.55, 0.45], [0.45, 0.55]
    shown = [smoother.update(p)[0] for p in [a, b, a, b, a, b]]
    assert shown == [0] * 6  # the raw argmax alternates every frame
    shown = [smoother.update([0.38, 0.62])[0] for _ in range(4)]
    assert shown == [0, 1, 1, 1]  # a lead of 0.085 is not enough, 0.12 is
    label, score = smoother.update([0.38, 0.62])
    assert label == 1 and score == pytest.approx(0.62)


def test_smoother_without_hysteresis_is_the_window_average():
    smoother = LabelSmoother(window=2, margin=0.0)
    smoother.update([0.8, 0.2])
    assert smoother.update([0.1, 0.9]) == (1, pytest.approx(0.55))
    with pytest.raises(ValueError, match="window"):
        LabelSmoother(window=0)
    with pytest.raises(ValueError, match="margin"):
        LabelSmoother(margin=1.5)


@pytest.fixture
def video(tmp_path):
    frames = palette_frames(FRAMES, 48, 64)
    return write_test_video(tmp_path / "clip.mp4", frames, fps=10)


def _model():
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=4, num_segments=4, direction="unidirectional"
    )
    return randomise(model).eval()


def test_stream_gives_the_logits_of_manual_stepping(video):
    model = _model()
    records = []
    summary = run_stream(
        video,
        timeshift.OnlineRecognizer(model),
        input_size=S,
        every=2,
        smooth=1,
        margin=0.0,
        classes=list("abcd"),
        on_frame=records.append,
    )
    assert summary.frames_read == FRAMES and summary.frames_processed == FRAMES // 2
    assert [r["frame"] for r in records] == list(range(0, FRAMES, 2))
    assert records[1]["time"] == pytest.approx(0.2)
    # the same frames decoded and preprocessed by hand, stepped through a fresh recognizer
    import av

    with av.open(video) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    transform = eval_transforms(S)
    online = timeshift.OnlineRecognizer(model)
    for record, image in zip(records, images[::2], strict=True):
        clip, _ = transform(torch.from_numpy(image).permute(2, 0, 1)[None, None], -1, None)
        probs = online.step(clip[0, 0]).softmax(-1)
        assert record["raw_label"] == "abcd"[int(probs.argmax())]
        assert record["raw_score"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert record["label"] == record["raw_label"]  # window 1, no hysteresis
    assert summary.final_label == records[-1]["label"]
    assert len(summary.latency_ms) == FRAMES // 2 and summary.fps > 0


def test_annotated_output_has_every_frame(video, tmp_path):
    out = tmp_path / "out" / "annotated.mp4"
    run_stream(video, timeshift.OnlineRecognizer(_model()), input_size=S, every=3, output=out)
    import av

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (320, 240)  # enlarged 5x to fit the text
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == FRAMES
    assert frames[0][:10, :40].mean() < 60  # the dark label band
    assert decode_all(str(out))[-1] == FRAMES - 1  # the picture itself is kept


def test_annotate_draws_text():
    image = np.full((240, 320, 3), 200, dtype=np.uint8)
    drawn = annotate(image, ["label 0.93", "30 fps"])
    assert drawn.shape == image.shape and (drawn != image).any()
    assert drawn[-10:].tolist() == image[-10:].tolist()


def test_cli_stream_pytorch_and_onnx(video, tmp_path, capsys):
    model = _model()
    timeshift.save_model(model, tmp_path / "m.pt", meta={"classes": list("abcd"), "input_size": S})
    stream = ["stream", video, str(tmp_path / "m.pt"), "--backend", "eager"]
    assert main([*stream, "--jsonl", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    assert f"{FRAMES} frames read, {FRAMES} recognised (pytorch)" in out
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    torch_records = [json.loads(line) for line in lines]
    assert len(torch_records) == FRAMES
    assert (
        main(
            [
                "stream",
                video,
                str(tmp_path / "m.pt"),
                "--onnx",
                "--quiet",
                "--jsonl",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 0
    )
    assert "(onnxruntime)" in capsys.readouterr().out
    # the default (auto) is onnxruntime where it is installed, from the cached export
    assert main(["stream", video, str(tmp_path / "m.pt"), "--max-frames", "2"]) == 0
    assert "recognised (onnxruntime)" in capsys.readouterr().out
    onnx_records = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    for t, o in zip(torch_records, onnx_records, strict=True):
        assert t["label"] == o["label"] and t["score"] == pytest.approx(o["score"], abs=1e-3)
    # an exported online model streams directly
    assert (
        main(
            [
                "export",
                str(tmp_path / "m.pt"),
                "--online",
                "--exporter",
                "legacy",
                "--output",
                str(tmp_path / "m.onnx"),
            ]
        )
        == 0
    )
    assert main(["stream", video, str(tmp_path / "m.onnx"), "--max-frames", "3"]) == 0
    assert "3 frames read" in capsys.readouterr().out


def test_stream_errors(tmp_path, video, capsys, monkeypatch):
    model = _model()
    timeshift.save_model(model, tmp_path / "m.pt", meta={"input_size": S})
    assert main(["stream", str(tmp_path / "missing.mp4"), str(tmp_path / "m.pt")]) == 2
    assert "video not found" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 4096)
    with pytest.raises(VideoDecodeError, match=r"bad\.mp4"):
        open_source(tmp_path / "bad.mp4")
    assert main(["stream", video, str(tmp_path / "m.pt"), "--every", "0"]) == 2
    assert "--every" in capsys.readouterr().err
    bidirectional = timeshift.create_model("tsm_resnet_tiny", num_classes=4, num_segments=4)
    timeshift.save_model(bidirectional, tmp_path / "bi.pt")
    assert main(["stream", video, str(tmp_path / "bi.pt"), "--size", str(S)]) == 2
    assert "drop_future" in capsys.readouterr().err
    assert (
        main(
            [
                "stream",
                video,
                str(tmp_path / "bi.pt"),
                "--size",
                str(S),
                "--drop-future",
                "--max-frames",
                "2",
            ]
        )
        == 0
    )
    import cv2

    def no_gui(*args, **kwargs):
        raise cv2.error("The function is not implemented")

    monkeypatch.setattr(cv2, "namedWindow", no_gui)
    assert main(["stream", video, str(tmp_path / "m.pt"), "--show"]) == 2
    assert "GUI support" in capsys.readouterr().err


def test_stream_url_over_http(video):
    from pathlib import Path

    with http_folder(Path(video).parent) as base:
        url = f"{base}/clip.mp4"
        summary = run_stream(url, timeshift.OnlineRecognizer(_model()), input_size=S)
    assert summary.source == url and summary.frames_read == FRAMES


def test_camera_index_reads_opencv_frames_as_rgb(monkeypatch):
    import cv2

    class FakeCamera:  # a camera that delivers three blue BGR frames
        def __init__(self, index):
            assert index == 1
            self.left = 3

        def isOpened(self):
            return True

        def get(self, prop):
            return 30.0

        def read(self):
            self.left -= 1
            frame = np.zeros((48, 64, 3), np.uint8)
            frame[..., 0] = 255  # blue in BGR
            return self.left >= 0, frame

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    source = open_source("1")
    frames = list(source)
    assert source.name == "camera 1" and source.fps == 30.0 and len(frames) == 3
    assert frames[0][0, 0].tolist() == [0, 0, 255]  # RGB


def _vfr_video(path):
    from fractions import Fraction

    from conftest import VFR_MS, encode_video

    encode_video(
        path,
        palette_frames(len(VFR_MS), 48, 64),
        codec="libx264",
        options={"g": "4", "bf": "2"},
        time_base=Fraction(1, 1000),
        pts=lambda k: 2000 + VFR_MS[k],
    )
    return str(path), [ms / 1000 for ms in VFR_MS]


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_variable_frame_rate_stream_times_are_the_frames_own(tmp_path, monkeypatch, backend):
    import builtins

    path, truth = _vfr_video(tmp_path / "vfr.mp4")
    if backend == "opencv":  # the fallback when PyAV is not installed
        real_import = builtins.__import__

        def no_av(name, *args, **kwargs):
            if name == "av":
                raise ImportError("no av")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_av)

    class Constant:  # the times do not depend on the model
        def reset(self):
            pass

        def step(self, frame):
            return torch.zeros(4)

    records = []
    run_stream(path, Constant(), input_size=S, on_frame=records.append)
    assert [r["time"] for r in records] == pytest.approx(truth, abs=1e-3)
    source = open_source(path)
    assert [t for _, t in source.timed()] == pytest.approx(truth, abs=1e-3)


def test_stream_refuses_special_files_and_huge_frames(tmp_path, video):
    from conftest import finishes, special_files

    files = special_files(tmp_path / "special")
    for path in files.values():
        with pytest.raises(VideoDecodeError, match=rf"{path.name}: not a regular file"):
            finishes(lambda p=path: open_source(p), fifos=[files["fifo"]])
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4: .*over the limit of 100 pixels"):
        open_source(video, max_frame_pixels=100)
    with pytest.raises(VideoDecodeError, match="not a regular file but a FIFO"):
        finishes(lambda: run_stream(files["fifo"], None, input_size=S), fifos=[files["fifo"]])


def test_a_plain_frame_source_is_timed_by_its_rate():
    frames = palette_frames(3, 48, 64)
    source = FrameSource("mine", iter(frames), fps=4.0)
    assert [t for _, t in source.timed()] == [0.0, 0.25, 0.5]
    assert [t for _, t in FrameSource("x", iter(frames), fps=None).timed()] == [None] * 3


def _source(closed: list | None = None) -> FrameSource:
    """The palette frames at 10 fps, without decoding."""
    on_close = (lambda: closed.append(True)) if closed is not None else (lambda: None)
    return FrameSource("palette", iter(palette_frames(FRAMES, 48, 64)), 10.0, on_close)


def test_recognized_frames_carry_a_record_where_the_model_ran():
    recognizer, preprocess = timeshift.OnlineRecognizer(_model()), frame_preprocessor(input_size=S)
    with pytest.raises(ValueError, match="--every"):  # checked at the call, nothing read yet
        recognize_stream(_source(), recognizer, preprocess=preprocess, every=0)
    frames = list(recognize_stream(_source(), recognizer, preprocess=preprocess, every=3))
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.time for f in frames] == pytest.approx([k / 10 for k in range(FRAMES)])
    assert [f.record is not None for f in frames] == [k % 3 == 0 for k in range(FRAMES)]
    for frame in frames:
        if frame.record is not None:
            assert frame.record["frame"] == frame.index
            assert frame.latency_ms == pytest.approx(frame.record["latency_ms"], abs=1e-3)
            shown = frame.text
        assert frame.text == shown  # a skipped frame shows the last label
    assert frames[0].annotated.shape == (240, 320, 3)


def test_sinks_get_every_frame_until_one_stops_the_stream(tmp_path):
    class StopAfterFive(Sink):
        def __init__(self):
            self.seen = []

        def write(self, frame):
            self.seen.append(frame.index)
            return len(self.seen) < 5

    stop, records, closed = StopAfterFive(), [], []
    with JsonLinesSink(tmp_path / "r.jsonl") as jsonl:
        summary = run_stream(
            _source(closed),
            timeshift.OnlineRecognizer(_model()),
            input_size=S,
            every=2,
            on_frame=records.append,
            sinks=[jsonl, stop],
        )
    assert stop.seen == [0, 1, 2, 3, 4] and closed == [True]
    assert (summary.frames_read, summary.frames_processed) == (5, 3)
    assert [r["frame"] for r in records] == [0, 2, 4]
    written = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert written == records
    assert summary.final_label == records[-1]["label"] and len(summary.latency_ms) == 3


def test_the_window_shows_annotated_frames_until_q(monkeypatch):
    import cv2

    shown, keys = [], iter([0, 0, ord("q")])
    monkeypatch.setattr(cv2, "namedWindow", lambda title, flags: None)
    monkeypatch.setattr(cv2, "imshow", lambda title, image: shown.append(image.shape))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.setattr(cv2, "destroyWindow", lambda title: shown.append("closed"))
    summary = run_stream(_source(), timeshift.OnlineRecognizer(_model()), input_size=S, show=True)
    assert summary.frames_read == 3
    assert shown == [(240, 320, 3)] * 3 + ["closed"]  # BGR, enlarged to fit the text
