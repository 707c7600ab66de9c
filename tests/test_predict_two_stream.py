"""``timeshift predict`` with a two-stream pair: the flow of a raw video computed on the fly
(``VideoFlowReader``) is what ``extract-flow`` would have written, so a flow model scores a video
the same from the video and from its extracted folder, and the fusion is TSN's."""

import json
import logging

import numpy as np
import pytest
import torch

import timeshift
from timeshift.cli import main
from timeshift.data import VideoDataset, open_video
from timeshift.data.decode import VideoDecodeError
from timeshift.data.flow import FlowSettings, VideoFlowReader, extract_video_flow
from timeshift.data.flow_frames import FlowFolderReader
from timeshift.engine.evaluate import EvalOptions, evaluate_checkpoints
from timeshift.engine.fusion import FusionError, load_scores
from timeshift.engine.predict import flow_settings_of, predict_videos

from conftest import moving_square, write_test_video

CLASSES = ["a", "b"]
SETTINGS = FlowSettings(short_side=40)  # frames 48x64 -> 40x53: the resize is exercised


def _video(folder, name, *, step=(2, 0), count=12, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    return write_test_video(folder / name, moving_square(count, step=step, seed=seed))


def test_flow_on_the_fly_is_the_extracted_flow(tmp_path):
    video = _video(tmp_path, "v.mkv")
    count = extract_video_flow(video, tmp_path / "flow", short_side=40)
    with (
        VideoFlowReader(open_video(video), SETTINGS) as live,
        FlowFolderReader(tmp_path / "flow") as stored,
    ):
        assert live.num_frames == stored.num_frames == count == 11
        assert live.size == stored.size == (40, 53)
        wanted = [10, 0, 3, 4, 3]  # any order, repeats: only these pairs are computed
        frames = live.get_frames(wanted)
        assert frames.shape == (5, 40, 53, 2) and frames.dtype == np.uint8
        assert np.array_equal(frames, stored.get_frames(wanted))
        # the square moves right 2 px, 1.67 px at 40/48 scale: x up to 128 + 255 * 1.67 / 40
        assert frames[..., 0].max() >= 136 and abs(float(np.median(frames[..., 1])) - 128) <= 1
        with pytest.raises(IndexError, match="flow frame indices \\[11\\] outside \\[0, 11\\)"):
            live.get_frames([11])
    raw = VideoFlowReader(open_video(video), FlowSettings(short_side=40, quality=None))
    with raw:  # without the JPEG round trip: the quantised values, near the stored ones
        difference = raw.get_frames([4]).astype(int) - stored_frame(tmp_path / "flow", 4)
        assert 0 < np.abs(difference).max() <= 12


def stored_frame(folder, index):
    with FlowFolderReader(folder) as reader:
        return reader.get_frames([index]).astype(int)


def test_flow_on_the_fly_refusals(tmp_path):
    one = _video(tmp_path, "one.mkv", count=1)
    with pytest.raises(VideoDecodeError, match=r"one\.mkv.*only one frame"):
        VideoFlowReader(open_video(one), SETTINGS)
    with pytest.raises(ValueError, match="unknown flow algorithm 'lk'"):
        FlowSettings(algorithm="lk")
    with pytest.raises(ValueError, match="bound must be positive"):
        FlowSettings(bound=0)
    with pytest.raises(ValueError, match=r"quality must be in 1\.\.100"):
        FlowSettings(quality=0)
    with pytest.raises(ValueError, match="flow_settings is for modality='flow'"):
        VideoDataset([], num_segments=4, flow_settings=SETTINGS)


def test_dataset_reads_videos_as_their_flow_folders(tmp_path):
    """A flow clip of a video (flow_settings) is the clip of its extracted folder; a folder of
    RGB frames works too, and without flow_settings a video is refused, naming the way out."""
    video = _video(tmp_path, "v.mkv")
    extract_video_flow(video, tmp_path / "flow", short_side=40)
    common = dict(num_segments=3, mode="test", modality="flow", new_length=2)
    from_video = VideoDataset([timeshift.data.SampleRecord(video, 0)], flow_settings=SETTINGS,
                              **common)[0][0]  # fmt: skip
    from_folder = VideoDataset([timeshift.data.SampleRecord(str(tmp_path / "flow"), 0)],
                               **common)[0][0]  # fmt: skip
    assert from_video.shape == (3, 4, 40, 53)
    assert torch.equal(from_video, from_folder)
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image

    for i, image in enumerate(moving_square(12)):
        Image.fromarray(image).save(frames / f"img_{i + 1:05d}.png")
    from_frames = VideoDataset([timeshift.data.SampleRecord(str(frames), 0)],
                               flow_settings=SETTINGS, frame_template="img_{:05d}.png",
                               **common)[0][0]  # fmt: skip
    assert torch.equal(from_frames, from_video)  # lossless video, lossless frames
    with pytest.raises(VideoDecodeError, match=r"v\.mkv: a file; modality='flow' reads flow"):
        VideoDataset([timeshift.data.SampleRecord(video, 0)], **common)[0]


def test_flow_settings_come_from_the_checkpoint_or_the_marker(tmp_path, caplog):
    video = _video(tmp_path, "v.mkv")
    extract_video_flow(video, tmp_path / "f", algorithm="farneback", bound=15, short_side=40)
    found = FlowSettings.of_folder(tmp_path / "f")
    assert found == FlowSettings(algorithm="farneback", bound=15, short_side=40)
    assert FlowSettings.from_dict(found.to_dict()) == found
    assert FlowSettings.of_folder(tmp_path) is None  # no marker (another tool's folder)
    assert FlowSettings.from_kind("frames") is None and FlowSettings.from_kind("flow x") is None
    assert flow_settings_of({"flow": found.to_dict()}) == found
    assert flow_settings_of({}) == FlowSettings()  # extract-flow's defaults
    with caplog.at_level(logging.WARNING, logger="timeshift"):
        assert flow_settings_of({"flow": found.to_dict()}, SETTINGS) == SETTINGS
    assert "trained on flow made with" in caplog.text


def _spread(model):
    with torch.no_grad():
        fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        fc.weight.mul_(3000)  # every video its own logits
    return model.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, one_thread):
    """Tiny RGB and flow checkpoints (the flow one records SETTINGS as its training flow),
    three videos moving in different directions, their flow folders and lists."""
    root = tmp_path_factory.mktemp("pair")
    meta = {"classes": CLASSES, "input_size": 32, "scale_size": 36}
    torch.manual_seed(2)
    rgb = _spread(timeshift.create_model("tsm_resnet_tiny", num_classes=2, num_segments=4))
    flow = _spread(timeshift.create_model("tsm_resnet_tiny", num_classes=2, num_segments=4,
                                          modality="flow", new_length=2))  # fmt: skip
    paths = {
        "rgb": timeshift.save_model(rgb, root / "rgb.pt", meta=meta),
        "flow": timeshift.save_model(
            flow, root / "flow.pt", meta={**meta, "flow": SETTINGS.to_dict()}
        ),
    }
    videos = [
        _video(root / "videos", f"v{i}.mkv", step=step, seed=i, count=10)
        for i, step in enumerate([(2, 0), (0, 2), (1, 1)])
    ]
    (root / "videos" / "val.txt").write_text("".join(f"v{i}.mkv {i % 2}\n" for i in range(3)))
    lines = []
    for i, video in enumerate(videos):
        count = extract_video_flow(video, root / "flow" / f"v{i}", short_side=40)
        lines.append(f"v{i} {count} {i % 2}\n")
    (root / "flow" / "val_flow.txt").write_text("".join(lines))
    return root, paths, videos


def _tested_logits(checkpoint, data, out):
    options = EvalOptions(batch_size=4, workers=0, backend="eager")
    evaluate_checkpoints([checkpoint], data, options=options, output_dir=out, progress=False)
    return load_scores(out / "scores.npz").scores


def test_predict_two_stream_fuses_the_streams_test_gives(pair, tmp_path):
    root, paths, videos = pair
    rgb = _tested_logits(paths["rgb"], root / "videos" / "val.txt", tmp_path / "rgb")
    flow = _tested_logits(paths["flow"], root / "flow" / "val_flow.txt", tmp_path / "flow")
    common = dict(workers=0, backend="eager", progress=False, top_k=2)
    results = predict_videos(paths["rgb"], videos, flow_checkpoint=paths["flow"], **common)
    assert [r["path"] for r in results] == videos
    expected = ((rgb + 1.5 * flow) / 2.5).softmax(dim=1)  # TSN: 1 : 1.5 on logits
    for result, fused, r, f in zip(results, expected, rgb, flow, strict=True):
        assert _probabilities(result["top"]) == pytest.approx(fused.tolist(), abs=1e-5)
        assert _probabilities(result["streams"]["rgb"]) == pytest.approx(
            r.softmax(0).tolist(), abs=1e-5
        )
        assert _probabilities(result["streams"]["flow"]) == pytest.approx(
            f.softmax(0).tolist(), abs=1e-5
        )
    # the flow checkpoint alone predicts videos through their flow too
    alone = predict_videos(paths["flow"], videos, **common)
    for result, f in zip(alone, flow, strict=True):
        assert _probabilities(result["top"]) == pytest.approx(f.softmax(0).tolist(), abs=1e-5)
    # the reference's equal weights on softmax scores
    equal = predict_videos(paths["rgb"], videos[:1], flow_checkpoint=paths["flow"],
                           fusion_weights=[1, 1], fuse="softmax", **common)  # fmt: skip
    mean = (rgb[0].softmax(0) + flow[0].softmax(0)) / 2
    assert _probabilities(equal[0]["top"]) == pytest.approx(mean.tolist(), abs=1e-5)


def _probabilities(top: list[dict]) -> list[float]:
    return [e["score"] for e in sorted(top, key=lambda e: e["index"])]


def test_predict_two_stream_errors(pair, tmp_path):
    _, paths, videos = pair
    common = dict(workers=0, backend="eager", progress=False)
    one = _video(tmp_path, "one.mkv", count=1)  # RGB decodes it; flow needs two frames
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    results = predict_videos(paths["rgb"], [videos[0], one, str(broken), tmp_path / "none.mp4"],
                             flow_checkpoint=paths["flow"], **common)  # fmt: skip
    assert "top" in results[0] and "streams" in results[0]
    assert (
        results[1]["error"].startswith("flow stream: ") and "only one frame" in results[1]["error"]
    )
    assert results[2]["error"].startswith("rgb stream: ") and "broken.mp4" in results[2]["error"]
    assert results[3]["error"] == f"{tmp_path / 'none.mp4'}: not found"
    with pytest.raises(FusionError, match=r"rgb\.pt is a model of modality 'rgb' where the flow"):
        predict_videos(paths["rgb"], videos, flow_checkpoint=paths["rgb"], **common)
    with pytest.raises(FusionError, match="3 fusion weights for 2"):
        predict_videos(paths["rgb"], videos, flow_checkpoint=paths["flow"],
                       fusion_weights=[1, 2, 3], **common)  # fmt: skip
    with pytest.raises(ValueError, match="fusion_weights are for a two-stream pair"):
        predict_videos(paths["rgb"], videos, fusion_weights=[1, 2], **common)


def test_cli_predict_two_stream(pair, capsys):
    _, paths, videos = pair
    common = ["--workers", "0", "--backend", "eager", "--no-progress"]
    assert main(["predict", str(paths["rgb"]), videos[0], "--flow", str(paths["flow"]),
                 "--json", *common]) == 0  # fmt: skip
    (result,) = json.loads(capsys.readouterr().out)
    assert set(result) == {"path", "top", "streams"} and set(result["streams"]) == {"rgb", "flow"}
    assert main(["predict", str(paths["rgb"]), videos[0], "--flow", str(paths["flow"]),
                 "--top-k", "1", *common]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "(rgb alone: " in text and "(flow alone: " in text
    # flags override the checkpoint's settings: other flow, other scores (and a warning)
    assert main(["predict", str(paths["flow"]), videos[0], "--flow-size", "48", "--json",
                 *common]) == 0  # fmt: skip
    (other,) = json.loads(capsys.readouterr().out)
    assert main(["predict", str(paths["flow"]), videos[0], "--json", *common]) == 0
    (own,) = json.loads(capsys.readouterr().out)
    assert other["top"] != own["top"]
    assert main(["predict", str(paths["rgb"]), videos[0], "--flow", str(paths["rgb"]),
                 *common]) == 2  # fmt: skip
    assert "model of modality 'rgb' where the flow stream" in capsys.readouterr().err
