"""``timeshift.pipeline``: every kind of input gives the model's test-protocol scores, in the
Hugging Face ``video-classification`` result shape."""

import json

import numpy as np
import pytest
import torch

import timeshift
from timeshift.data.sampling import segment_indices
from timeshift.data.transforms import eval_transforms
from timeshift.engine.predict import predict_videos
from timeshift.engine.timeline import video_timeline
from timeshift.pipelines import PipelineInputError

from conftest import http_folder, randomise, write_frame_folder, write_test_video

CLASSES = ["red", "green", "blue", "still"]
T, SIZE, FRAMES = 4, 32, 24


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = randomise(timeshift.create_model("tsm_resnet_tiny", num_classes=4, num_segments=T))
    net.checkpoint_meta = {"classes": CLASSES, "input_size": SIZE, "scale_size": 36}
    return net.eval()


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (FRAMES, 40, 48, 3), dtype=np.uint8)


def _expected(model, frames: np.ndarray) -> torch.Tensor:
    """The test protocol by hand: TSN's centre-of-segment frames, resize 36, centre crop 32,
    ImageNet normalisation, softmax."""
    (indices,) = segment_indices(len(frames), T, mode="test")
    views = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2)[None]
    clip, _ = eval_transforms(SIZE, scale_size=36)(views, -1, None)
    with torch.no_grad():
        return model(clip).softmax(dim=1)[0]


def test_an_array_and_a_tensor_give_the_protocol_scores(model, frames):
    classify = timeshift.pipeline(model, top_k=4, backend="eager")
    result = classify(frames)
    expected = _expected(model, frames)
    assert [set(r) for r in result] == [{"label", "score"}] * 4
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)
    for r in result:
        assert r["score"] == pytest.approx(float(expected[CLASSES.index(r["label"])]), abs=1e-5)
    assert classify(torch.from_numpy(frames), top_k=2) == result[:2]


def test_a_list_is_batched_and_keeps_its_order(model, frames, tmp_path):
    video = write_test_video(tmp_path / "clip.mkv", frames)  # lossless (FFV1)
    folder = write_frame_folder(tmp_path / "frames", frames)
    classify = timeshift.pipeline(model, backend="eager", workers=1, batch_size=3)
    results = classify([video, frames[::-1].copy(), folder, frames], top_k=3)
    assert len(results) == 4 and all(len(r) == 3 for r in results)
    assert _same(results[0], results[3])  # the lossless video is the array
    assert _same(results[1], classify(frames[::-1].copy(), top_k=3))
    # a frame folder is read as the images it holds (JPEG: compare with their decoded pixels)
    from PIL import Image

    decoded = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "frames").iterdir())])
    assert _same(results[2], classify(decoded, top_k=3))


def _same(a: list[dict], b: list[dict]) -> bool:
    return [r["label"] for r in a] == [r["label"] for r in b] and np.allclose(
        [r["score"] for r in a], [r["score"] for r in b], atol=1e-5
    )


def test_results_match_predict_and_a_url(model, frames, tmp_path):
    path = tmp_path / "model.pt"
    timeshift.save_model(model, path, meta=model.checkpoint_meta)
    (tmp_path / "www").mkdir()
    video = write_test_video(tmp_path / "www" / "clip.mp4", frames)
    predicted = predict_videos(path, [video], workers=0, backend="eager", progress=False)
    classify = timeshift.pipeline(str(path), backend="eager", workers=0)
    top = [{"label": r["label"], "score": r["score"]} for r in predicted[0]["top"]]
    assert _same(classify(video), top)
    with http_folder(tmp_path / "www") as base:
        assert _same(classify(f"{base}/clip.mp4"), top)
        with pytest.raises(PipelineInputError, match="404"):
            classify(f"{base}/missing.mp4")


def test_the_fastest_backend_gives_the_same_answer(model, frames):
    eager = timeshift.pipeline(model, backend="eager")(frames)
    auto = timeshift.pipeline(model)(frames)  # onnxruntime where installed
    assert [r["label"] for r in eager] == [r["label"] for r in auto] and np.allclose(
        [r["score"] for r in eager], [r["score"] for r in auto], atol=1e-4
    )


def test_timeline_segments(model, frames, tmp_path):
    video = write_test_video(tmp_path / "clip.mp4", frames, fps=10)
    classify = timeshift.pipeline(model, backend="eager")
    segments = classify(video, timeline=True, window=1.0, stride=0.5)
    expected = video_timeline(
        model, video, window=1.0, stride=0.5, progress=False, backend="eager"
    ).segments
    assert [set(s) for s in segments] == [{"label", "score", "start", "end"}] * len(expected)
    assert [(s["label"], s["start"], s["end"]) for s in segments] == [
        (s["label"], s["start"], s["end"]) for s in expected
    ]
    assert segments[0]["start"] == 0 and segments[-1]["end"] == pytest.approx(FRAMES / 10)
    from_array = classify(frames, timeline=True, window=1.0, stride=0.5, fps=10)
    assert [s["label"] for s in from_array] == [s["label"] for s in segments]
    with pytest.raises(PipelineInputError, match="fps="):
        classify(frames, timeline=True)


def test_bad_inputs_are_named(model, frames, tmp_path):
    classify = timeshift.pipeline(model, backend="eager", workers=0)
    with pytest.raises(PipelineInputError, match=r"input 0: expected a \(T, H, W, 3\) uint8"):
        classify(frames.astype(np.float32))
    with pytest.raises(PipelineInputError, match=r"input 1: .*missing\.mp4 not found"):
        classify([frames, tmp_path / "missing.mp4"])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(PipelineInputError, match=r"input 1 \(.*bad.mp4\)"):
        classify([frames, bad])
    with pytest.raises(PipelineInputError, match="got dict"):
        classify({"video": "x"})
    with pytest.raises(ValueError, match="top_k"):
        classify(frames, top_k=0)
    assert classify([]) == []


def test_a_bare_model_names_classes_by_index(frames):
    net = randomise(timeshift.create_model("tsm_resnet_tiny", num_classes=3, num_segments=T))
    result = timeshift.pipeline(net.eval(), backend="eager")(frames)
    assert sorted(r["label"] for r in result) == ["0", "1", "2"]
    json.dumps(result)  # plain types only
