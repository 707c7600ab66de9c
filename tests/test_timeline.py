"""`predict --timeline`: sliding windows over long videos (scores against the model on the frames
each window samples, the window rule, merging, constant memory), the online stream's timeline
against manual stepping, the files and the CLI."""

import csv
import json
import weakref

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.data.transforms import eval_transforms
from timeshift.engine.timeline import (
    TimelineError,
    merge_windows,
    parse_seconds,
    video_timeline,
    write_timeline,
)
from timeshift.online.stream import FrameSource, LabelSmoother

from conftest import palette_frames, randomise, write_frame_folder, write_test_video

S, SCALE, T, FPS = 32, 36, 4, 10
CLASSES = ["walk", "run", "jump"]
META = {"classes": CLASSES, "input_size": S, "scale_size": SCALE}


def _colour_sensitive(model):
    """Random weights, and a classifier fitted to the features the palette colours give
    (centred, scaled to unit spread): the scenes of a video get different labels."""
    randomise(model).eval()
    features = []
    hook = model.fc.register_forward_hook(lambda module, args, out: features.append(args[0]))
    colours = torch.from_numpy(palette_frames(20, 8, 8)).permute(0, 3, 1, 2)
    views = colours[:, None].expand(-1, T, -1, -1, -1)
    clips, _ = eval_transforms(S, scale_size=SCALE)(views, -1, None)
    with torch.no_grad():
        model(clips)
        hook.remove()
        f = features[0]
        model.fc.weight.copy_(torch.randn(3, f.shape[1]) * 3 / (f.std(0) + 1e-6))
        model.fc.bias.copy_(-(model.fc.weight @ f.mean(0)))
    model.checkpoint_meta = dict(META)
    return model


@pytest.fixture(scope="module")
def offline(one_thread):
    torch.manual_seed(1)
    return _colour_sensitive(
        timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=T)
    )


@pytest.fixture(scope="module")
def online_model(one_thread):
    torch.manual_seed(2)
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=3, num_segments=T, direction="unidirectional"
    )
    return _colour_sensitive(model)


def _scenes(count: int) -> np.ndarray:
    """Palette frames in runs of 7 (a scene lasts 0.7 s): the labels change along the video."""
    return palette_frames(125)[np.arange(count) // 7 % 125]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """53 frames at 10 fps (5.3 s), lossless: decoded frames are the written ones."""
    folder = tmp_path_factory.mktemp("timeline")
    return write_test_video(folder / "scenes.mkv", _scenes(53), fps=FPS)


def _window_scores(model, frames: np.ndarray) -> torch.Tensor:
    """The model's probabilities for a window, computed independently: the reference TSN test
    sampling (segment centres) and the dataset's transforms on the whole clip."""
    tick = len(frames) / T
    picked = [int(tick / 2 + tick * i) for i in range(T)]
    views = torch.from_numpy(frames[picked]).permute(0, 3, 1, 2)[None]
    clip, _ = eval_transforms(S, scale_size=SCALE)(views, -1, None)
    with torch.no_grad():
        return model(clip).softmax(-1)[0]


def _spans(items) -> list[tuple[float, float]]:
    """``(start, end)`` of windows or segments, to the microsecond (float sums)."""
    return [(round(i["start"], 6), round(i["end"], 6)) for i in items]


def test_parse_seconds():
    assert parse_seconds("2s") == 2.0
    assert parse_seconds("1.5") == 1.5
    assert parse_seconds(" 500ms ") == pytest.approx(0.5)
    assert parse_seconds("1m") == 60.0 and parse_seconds("2min") == 120.0
    assert parse_seconds("1h") == 3600.0
    assert parse_seconds("0:01:30") == 90.0 and parse_seconds("1:30.5") == 90.5
    assert parse_seconds(3) == 3.0 and parse_seconds(".25s") == 0.25
    for bad in ("-1s", "abc", "", "1:2:3:4", "2 parsecs", "inf", "1::2", float("nan"), -0.5):
        with pytest.raises(TimelineError, match="duration"):
            parse_seconds(bad)


def _window(start, end, label, score):
    index = CLASSES.index(label)
    return {"start": start, "end": end, "top": [{"label": label, "index": index, "score": score}]}


def test_merge_windows_tiles_the_video_without_overlap():
    windows = [
        _window(0, 2, "walk", 0.9),
        _window(1, 3, "walk", 0.7),
        _window(2, 4, "run", 0.6),
        _window(3, 5, "walk", 0.5),
        _window(3.3, 5.3, "walk", 0.8),  # the last window, aligned to the end
    ]
    segments = merge_windows(windows, 5.3)
    assert [s["label"] for s in segments] == ["walk", "run", "walk"]
    # boundaries: midpoints between window centres (1, 2, 3, 4, 4.3), from 0 to the end
    assert [(s["start"], s["end"]) for s in segments] == [(0, 2.5), (2.5, 3.5), (3.5, 5.3)]
    assert [s["score"] for s in segments] == pytest.approx([0.8, 0.6, 0.65])
    assert [s["index"] for s in segments] == [0, 1, 0]
    assert merge_windows([_window(0, 1.3, "jump", 0.4)], 1.3) == [
        {"label": "jump", "index": 2, "start": 0.0, "end": 1.3, "score": pytest.approx(0.4)}
    ]
    assert merge_windows([], 3.0) == []


def test_windows_score_the_frames_they_sample(offline, video):
    import av

    with av.open(video) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    timeline = video_timeline(
        offline,
        video,
        window="2s",
        stride=1,
        top_k=3,
        batch_size=3,
        backend="eager",
        progress=False,
    )
    # windows every second while they fit, then one aligned to the end (5.3 s)
    assert _spans(timeline.windows) == [(0, 2), (1, 3), (2, 4), (3, 5), (3.3, 5.3)]
    assert (timeline.mode, timeline.num_frames, timeline.fps) == ("windows", 53, FPS)
    assert timeline.duration == pytest.approx(5.3)
    for w in timeline.windows:
        first, stop = round(w["start"] * FPS), round(w["end"] * FPS)
        expected = _window_scores(offline, frames[first:stop])
        assert [t["index"] for t in w["top"]] == expected.argsort(descending=True).tolist()
        assert [t["score"] for t in w["top"]] == pytest.approx(
            expected.sort(descending=True).values.tolist(), abs=1e-5
        )
        assert [t["label"] for t in w["top"]] == [CLASSES[t["index"]] for t in w["top"]]
    labels = {w["top"][0]["label"] for w in timeline.windows}
    assert len(labels) > 1  # the scenes change what the model says: the check means something
    assert timeline.segments == merge_windows(timeline.windows, timeline.duration)
    assert timeline.segments[0]["start"] == 0 and timeline.segments[-1]["end"] == 5.3
    # large frames are held resized to the preprocessing's size: the same scores, bit for bit
    resized = video_timeline(
        offline, video, window="2s", stride=1, top_k=3, batch_size=3, backend="eager",
        progress=False, max_held_bytes=0,
    )  # fmt: skip
    assert resized.stats["held_resized"] and not timeline.stats["held_resized"]
    assert [w["top"] for w in resized.windows] == [w["top"] for w in timeline.windows]
    assert resized.stats["held_mib_max"] < timeline.stats["held_mib_max"]
    # batching does not change a score
    one = video_timeline(offline, video, batch_size=1, backend="eager", progress=False)
    assert [w["top"] for w in one.windows] == [
        [pytest.approx(t, abs=1e-6) for t in w["top"]] for w in timeline.windows
    ]


def test_window_edges_short_video_and_exact_end(offline, tmp_path):
    exact = write_test_video(tmp_path / "exact.mkv", _scenes(50), fps=FPS)
    timeline = video_timeline(offline, exact, window=2, stride=1, backend="eager", progress=False)
    assert _spans(timeline.windows) == [(0, 2), (1, 3), (2, 4), (3, 5)]  # the last ends at 5 s
    short = write_test_video(tmp_path / "short.mkv", _scenes(13), fps=FPS)
    timeline = video_timeline(offline, short, window=2, stride=1, backend="eager", progress=False)
    assert _spans(timeline.windows) == [(0, 1.3)]
    assert len(timeline.segments) == 1
    assert (timeline.segments[0]["start"], timeline.segments[0]["end"]) == (0, pytest.approx(1.3))


def _tracked_source(count: int, alive: list[int]) -> FrameSource:
    """Synthetic frames without times (fps given); records how many of the frames it yielded
    are still referenced (by anyone) each time it makes the next one."""
    held: list[weakref.ref] = []

    def frames():
        for image in _scenes(count):
            held[:] = [r for r in held if r() is not None]
            alive.append(len(held))
            frame = image.copy()
            held.append(weakref.ref(frame))
            yield frame

    return FrameSource("synthetic", frames(), None)


def test_memory_does_not_grow_with_the_video(offline):
    peaks, stats = [], []
    for count in (60, 180):  # 6 s, then 3x longer
        alive: list[int] = []
        timeline = video_timeline(
            offline,
            _tracked_source(count, alive),
            window=1,
            stride=0.5,
            fps=FPS,
            backend="eager",
            progress=False,
        )
        assert timeline.windows[-1]["end"] == pytest.approx(count / FPS)
        peaks.append(max(alive))
        stats.append(timeline.stats)
    # frames held: one window (1 s = 10 frames), whatever the video's length
    assert peaks[0] == peaks[1] <= FPS + 1
    assert stats[0]["frames_held_max"] == stats[1]["frames_held_max"] <= FPS + 1
    # preprocessed: the frames the open windows sample, each once
    assert stats[0]["preprocessed_held_max"] == stats[1]["preprocessed_held_max"] <= 3 * T
    # held resized (a budget of 0 bytes), no decoded frame outlives its step
    alive = []
    timeline = video_timeline(
        offline, _tracked_source(60, alive), window=1, stride=0.5, fps=FPS, backend="eager",
        progress=False, max_held_bytes=0,
    )  # fmt: skip
    assert timeline.stats["held_resized"] and max(alive) <= 1


def test_online_model_streams_like_manual_stepping(online_model, video):
    smoother = LabelSmoother(window=3, margin=0.05)
    timeline = video_timeline(
        online_model,
        video,
        stride=1,
        top_k=2,
        smoother=smoother,
        backend="eager",
        progress=False,
    )
    assert timeline.mode == "stream" and timeline.num_frames == 53
    assert timeline.window == timeline.stride == 1  # the windows are the stride-long bins
    import av

    with av.open(video) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    recognizer, manual = timeshift.OnlineRecognizer(online_model), LabelSmoother(3, 0.05)
    transform = eval_transforms(S, scale_size=SCALE)
    probs, smoothed = [], []
    for image in images:
        frame, _ = transform(torch.from_numpy(image).permute(2, 0, 1)[None, None], -1, None)
        p = recognizer.step(frame[0, 0]).softmax(-1)
        probs.append(p)
        smoothed.append(manual.update(p.numpy()))
    # windows: the mean probabilities of each second's frames; the last ends at 5.3 s
    assert _spans(timeline.windows) == [(k, min(k + 1, 5.3)) for k in range(6)]
    for k, w in enumerate(timeline.windows):
        mean = torch.stack(probs[k * FPS : (k + 1) * FPS]).mean(0)
        assert w["top"][0]["index"] == int(mean.argmax())
        assert w["top"][0]["score"] == pytest.approx(float(mean.max()), abs=1e-5)
    # segments: runs of the smoothed label, each frame owning the time to the next frame
    runs = []
    for i, (label, score) in enumerate(smoothed):
        if runs and runs[-1][0] == label:
            runs[-1][2] = (i + 1) / FPS
            runs[-1][3].append(score)
        else:
            runs.append([label, i / FPS, (i + 1) / FPS, [score]])
    assert len(runs) > 1  # the label changes: the comparison means something
    assert [(s["index"], s["start"], s["end"]) for s in timeline.segments] == [
        (label, pytest.approx(a), pytest.approx(b)) for label, a, b, _ in runs
    ]
    assert [s["score"] for s in timeline.segments] == pytest.approx(
        [np.mean(r[3]) for r in runs], abs=1e-5
    )
    forced = video_timeline(online_model, video, online=False, backend="eager", progress=False)
    assert forced.mode == "windows"


def test_refusals(tmp_path, video, offline):
    flow = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=3, num_segments=T, modality="flow", new_length=2
    )
    with pytest.raises(TimelineError, match="RGB"):
        video_timeline(flow, video, backend="eager", progress=False)
    folder = write_frame_folder(tmp_path / "frames", _scenes(12))
    with pytest.raises(TimelineError, match="fps"):
        video_timeline(offline, folder, backend="eager", progress=False)
    timeline = video_timeline(offline, folder, fps=4, backend="eager", progress=False)
    assert timeline.duration == pytest.approx(3.0) and timeline.num_frames == 12
    with pytest.raises(TimelineError, match="window and stride"):
        video_timeline(offline, video, stride=0, backend="eager", progress=False)


def test_files(offline, video, tmp_path):
    timeline = video_timeline(offline, video, top_k=2, backend="eager", progress=False)
    paths = write_timeline(timeline, tmp_path / "out" / "scenes.timeline")
    assert sorted(p.name for p in paths.values()) == [
        "scenes.timeline.csv",
        "scenes.timeline.json",
        "scenes.timeline.png",
        "scenes.timeline.segments.csv",
    ]
    data = json.loads(paths["json"].read_text())
    assert data["windows"][1]["top"][0]["label"] == timeline.windows[1]["top"][0]["label"]
    assert data["segments"][-1]["end"] == 5.3 and data["mode"] == "windows"
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["start", "end", "label_1", "score_1", "label_2", "score_2"]
    assert len(rows) == len(timeline.windows)
    assert float(rows[-1]["start"]) == pytest.approx(3.3)
    assert float(rows[2]["score_2"]) == pytest.approx(
        timeline.windows[2]["top"][1]["score"], abs=1e-6
    )
    with paths["segments_csv"].open() as f:
        segments = list(csv.DictReader(f))
    assert [s["label"] for s in segments] == [s["label"] for s in timeline.segments]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_the_files_and_survives_a_bad_video(offline, video, tmp_path, capsys):
    checkpoint = timeshift.save_model(offline, tmp_path / "m.pt", meta=META)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    out = tmp_path / "timelines"
    args = ["predict", str(checkpoint), video, str(bad), "--timeline", "--stride", "500ms"]
    args += ["--output", str(out), "--backend", "eager", "--no-progress", "--json"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in results] == [video, str(bad)]
    assert "cannot open as a video" in results[1]["error"]
    timeline = results[0]["timeline"]
    assert timeline["stride"] == 0.5 and timeline["window"] == 2.0
    assert len(timeline["windows"]) == 8  # 0, 0.5, ... 3 s, then 3.3 s
    for suffix in ("json", "csv", "segments.csv", "png"):
        assert (out / f"scenes.timeline.{suffix}").is_file()
    assert main(args[:-1]) == 0  # the segments printed
    printed = capsys.readouterr().out
    assert "segments:" in printed and "error: " in printed and CLASSES[0] in printed
    folder = write_frame_folder(tmp_path / "frames", _scenes(12))
    assert main([*args[:2], folder, *args[4:], "--fps", "4"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["timeline"]["duration"] == 3.0 and (out / "frames.timeline.png").is_file()
    assert main([*args, "--flow", str(checkpoint)]) == 2
    assert "--flow cannot be used with --timeline" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), video, "--window", "3s"]) == 2
    assert "--timeline" in capsys.readouterr().err
    assert main([*args, "--stride", "0"]) == 2  # refused once, before any video
    assert "window and stride must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args[:-1], "--window=-1s"])
    assert "cannot read '-1s' as a duration" in capsys.readouterr().err
    assert main([*args[:2], str(bad), *args[4:]]) == 1  # nothing could be made
