"""`timeshift serve` without a browser: the JSON API, the WebSocket protocol against the library's
own online and offline recognisers, the limits and the safety rules (no path from the client
opens a server file, uploads in a private folder deleted after use, bounded connections), the CLI,
and one real uvicorn server on 127.0.0.1."""

import base64
import contextlib
import io
import itertools
import json
import logging
import os
import socket
import tempfile
import threading
import time
import urllib.request
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
pytest.importorskip("multipart", reason="the web extra (python-multipart) is not installed")

from PIL import Image
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

import timeshift
from timeshift.cli import main
from timeshift.data.transforms import eval_transforms
from timeshift.engine.predict import predict_videos
from timeshift.online import OnlineRecognizer
from timeshift.online.stream import LabelSmoother, frame_preprocessor
from timeshift.serve import ServedModel, ServeOptions, create_app

from conftest import finishes, palette_frames, randomise, write_test_video

S, SCALE, T, FPS = 32, 36, 4, 10
CLASSES = ["wave", "clap", "jump", "sit"]
META = {"classes": CLASSES, "input_size": S, "scale_size": SCALE}
TOP_K = 3
TIMEOUT = 10.0  # seconds any wait of this module may take


def _colour_sensitive(model):
    """Random weights and a classifier spread over the features the palette colours give, so
    that different frames (and streams) get clearly different scores."""
    randomise(model).eval()
    features = []
    hook = model.fc.register_forward_hook(lambda module, args, out: features.append(args[0]))
    colours = torch.from_numpy(palette_frames(20, 8, 8)).permute(0, 3, 1, 2)
    clips, _ = eval_transforms(S, scale_size=SCALE)(
        colours[:, None].expand(-1, T, -1, -1, -1), -1, None
    )
    with torch.no_grad():
        model(clips)
        hook.remove()
        f = features[0]
        model.fc.weight.copy_(torch.randn(len(CLASSES), f.shape[1]) * 2 / (f.std(0) + 1e-6))
        model.fc.bias.copy_(-(model.fc.weight @ f.mean(0)))
    model.checkpoint_meta = dict(META)
    return model


@pytest.fixture(scope="module")
def online_model(one_thread):
    torch.manual_seed(1)
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=len(CLASSES), num_segments=T, direction="unidirectional"
    )
    return _colour_sensitive(model)


@pytest.fixture(scope="module")
def offline_model(one_thread):
    torch.manual_seed(2)
    model = timeshift.create_model("tsm_resnet_tiny", num_classes=len(CLASSES), num_segments=T)
    return _colour_sensitive(model)


def _options(**kwargs) -> ServeOptions:
    base = {"backend": "eager", "fps": FPS, "top_k": TOP_K, "max_connections": 2}
    return ServeOptions(**(base | kwargs))


@pytest.fixture(scope="module")
def online_app(online_model):
    return create_app(
        online_model,
        _options(max_frame_bytes=100_000, max_frame_pixels=640 * 480, max_upload_mb=1),
    )


@pytest.fixture(scope="module")
def window_app(offline_model):
    return create_app(offline_model, _options(fps=5, window=2.0))


@pytest.fixture(scope="module")
def checkpoint(offline_model, tmp_path_factory):
    return timeshift.save_model(
        offline_model, tmp_path_factory.mktemp("serve") / "tiny.pt", meta=META
    )


@pytest.fixture(scope="module")
def upload_app(checkpoint):
    """Served from the checkpoint file (the CLI's way), with a small upload limit."""
    return create_app(str(checkpoint), _options(max_upload_mb=0.25, window=1.0, stride=0.5))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """3 s at 10 fps, lossless: colour scenes of 6 frames."""
    frames = palette_frames(125)[np.arange(30) // 6]
    return write_test_video(tmp_path_factory.mktemp("serve") / "scenes.mkv", frames, fps=FPS)


# -- frames --------------------------------------------------------------------------------------
def _images(count: int, seed: int) -> np.ndarray:
    """``count`` 48x64 frames: palette colours with some noise (distinct per seed)."""
    rng = np.random.default_rng(seed)
    frames = palette_frames(125)[rng.permutation(125)[:count]].astype(np.int16)
    frames += rng.integers(-20, 21, frames.shape, dtype=np.int16)
    return frames.clip(0, 255).astype(np.uint8)


def _encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=fmt, quality=90)
    return out.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    """The pixels the server sees (a JPEG is lossy: compare on what it decodes to)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def _large_header_jpeg(width: int, height: int) -> bytes:
    """A tiny JPEG whose frame header (SOF0) claims ``width`` x ``height`` pixels."""
    data = bytearray(_encode(np.zeros((16, 16, 3), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 7] = height.to_bytes(2, "big")
    data[sof + 7 : sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def _large_header_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header (IHDR, its checksum updated) claims ``width`` x ``height``."""
    data = bytearray(_encode(np.zeros((16, 16, 3), np.uint8), "PNG"))
    ihdr = data.index(b"IHDR")  # type, width (4), height (4), 5 more bytes, then the CRC
    data[ihdr + 4 : ihdr + 8] = width.to_bytes(4, "big")
    data[ihdr + 8 : ihdr + 12] = height.to_bytes(4, "big")
    data[ihdr + 17 : ihdr + 21] = zlib.crc32(bytes(data[ihdr : ihdr + 17])).to_bytes(4, "big")
    return bytes(data)


def _preprocess():
    return frame_preprocessor(input_size=S, scale_size=SCALE)


def _online_reference(model, images: list[np.ndarray]) -> list[torch.Tensor]:
    """Softmax scores of each frame from the library's own OnlineRecognizer."""
    recognizer, preprocess = OnlineRecognizer(model), _preprocess()
    with torch.no_grad():
        return [recognizer.step(preprocess(im)).float().softmax(0) for im in images]


def _window_reference(model, images: list[np.ndarray], length: int) -> list[torch.Tensor]:
    """Softmax scores of the offline model on the last ``length`` frames at each step, one frame
    from the centre of each of its ``T`` equal segments."""
    preprocess, seen, out = _preprocess(), [], []
    for image in images:
        seen = [*seen, preprocess(image)][-length:]
        picks = [min(len(seen) - 1, int((k + 0.5) * len(seen) / T)) for k in range(T)]
        with torch.no_grad():
            out.append(model(torch.stack([seen[i] for i in picks])[None])[0].softmax(0))
    return out


def _assert_matches(result: dict, probs: torch.Tensor) -> None:
    """A result's top-k is the reference's: same classes, in order, scores within 1e-5."""
    values, indices = probs.topk(TOP_K)
    assert [t["index"] for t in result["top_k"]] == indices.tolist()
    assert [t["label"] for t in result["top_k"]] == [CLASSES[i] for i in indices.tolist()]
    np.testing.assert_allclose([t["score"] for t in result["top_k"]], values.numpy(), atol=1e-5)


def _receive(ws) -> dict:
    """The next JSON message, or the test fails after ``TIMEOUT`` (the test client's own
    receive waits for ever)."""
    return finishes(ws.receive_json, timeout=TIMEOUT)


def _send(ws, data: bytes) -> dict:
    ws.send_bytes(data)
    return _receive(ws)


def _connect(client):
    """A WebSocket session past its ``ready`` message."""
    ws = client.websocket_connect("/api/stream")
    session = ws.__enter__()
    ready = _receive(session)
    assert ready["type"] == "ready", ready
    return ws, session


# -- GET: the model and the page -----------------------------------------------------------------
def test_model_info_online(online_app):
    info = TestClient(online_app).get("/api/model").json()
    assert info["classes"] == CLASSES and info["num_classes"] == len(CLASSES)
    assert info["mode"] == "online" and info["num_segments"] == T
    assert info["input_size"] == S and info["scale_size"] == SCALE
    assert info["fps"] == FPS and info["step_ms"] > 0
    assert info["top_k"] == TOP_K and info["backend"] == "eager"
    assert info["max_upload_mb"] == 1 and info["max_frame_bytes"] == 100_000
    assert info["max_frame_pixels"] == 640 * 480


def test_model_info_window_and_default_fps(offline_model):
    info = TestClient(create_app(offline_model, ServeOptions(backend="eager"))).get("/api/model")
    info = info.json()
    assert info["mode"] == "window" and info["window_seconds"] == 2.0
    # no --fps: the rate one measured step allows, between 1 and 15 frames/s
    assert 1 <= info["fps"] <= 15 and info["step_ms"] > 0
    assert info["max_upload_mb"] == 200 and info["max_frame_pixels"] == 1920 * 1080


def test_page_and_static_with_csp(online_app):
    client = TestClient(online_app)
    page = (Path(timeshift.serve.__file__).parent / "static" / "index.html").read_text()
    for path in ("/", "/static/index.html"):
        answer = client.get(path)
        assert answer.status_code == 200 and answer.text == page
        assert answer.headers["content-type"].startswith("text/html")
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "style-src 'self'" in csp and "unsafe-inline" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
    # the API's answers carry it too
    assert "content-security-policy" in client.get("/api/model").headers


SERVER_FILES = ("create_app", "root:x:0:0", "import ")  # app.py, /etc/passwd, any .py


@pytest.mark.parametrize(
    "path",
    [
        "/static/%2e%2e/app.py",
        "/static/%2E%2E/%2E%2E/serve/app.py",
        "/static/..%2fapp.py",
        "/static/%2fetc%2fpasswd",
        "/static//etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/",
        "/etc/passwd",
    ],
)
def test_static_paths_stay_in_the_folder(online_app, path):
    answer = TestClient(online_app).get(path)
    assert answer.status_code == 404, (path, answer.status_code)
    assert not any(marker in answer.text for marker in SERVER_FILES)


def test_no_endpoint_takes_a_server_path(online_app, monkeypatch):
    opened = []
    real_open = open

    def watch(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watch)
    client = TestClient(online_app)
    answers = [
        client.get("/api/model", params={"path": "/etc/passwd", "model": "/etc/passwd"}),
        client.post("/api/predict", json={"video": "/etc/passwd"}),
        client.post("/api/predict", data={"video": "/etc/passwd"}, files={"x": ("a", b"a")}),
        client.post("/api/predict", data={"path": "/etc/passwd"}),
    ]
    assert answers[0].status_code == 200 and answers[0].json()["classes"] == CLASSES
    assert [a.status_code for a in answers[1:]] == [400, 400, 400]
    assert all("root:x:0:0" not in a.text for a in answers)
    assert not [f for f in opened if "passwd" in f]


# -- the stream: online ----------------------------------------------------------------------------
def test_stream_online_equals_online_recognizer(online_app, online_model):
    images = list(_images(10, seed=0))
    frames = [_encode(im, "PNG") for im in images[:6]] + [_encode(im, "JPEG") for im in images[6:]]
    probs = _online_reference(online_model, [_decoded(f) for f in frames])
    smoother = LabelSmoother(window=8, margin=0.1)  # ServeOptions' defaults
    with TestClient(online_app).websocket_connect("/api/stream") as ws:
        assert _receive(ws) == {"type": "ready", "mode": "online", "fps": FPS}
        for k, (frame, p) in enumerate(zip(frames, probs, strict=True)):
            result = _send(ws, frame)
            assert result["type"] == "result" and result["frame"] == k + 1
            _assert_matches(result, p)
            label, score = smoother.update(p.numpy())
            assert result["index"] == label and result["label"] == CLASSES[label]
            assert result["score"] == pytest.approx(score, abs=1e-4)
            assert 0 < result["latency_ms"] <= result["server_ms"]


def test_stream_connections_keep_separate_caches(online_app, online_model):
    a, b = list(_images(6, seed=1)), list(_images(6, seed=2))
    expected_a, expected_b = _online_reference(online_model, a), _online_reference(online_model, b)
    # what a shared cache would give: the two streams interleaved into one
    mixed = _online_reference(online_model, [im for pair in zip(a, b, strict=True) for im in pair])
    shared = max((expected_b[k] - mixed[2 * k + 1]).abs().max() for k in range(6))
    assert shared > 1e-2  # the test can tell separate caches from a shared one
    client = TestClient(online_app)
    first, ws_a = _connect(client)
    second, ws_b = _connect(client)
    try:
        for k in range(6):
            _assert_matches(_send(ws_a, _encode(a[k])), expected_a[k])
            _assert_matches(_send(ws_b, _encode(b[k])), expected_b[k])
    finally:
        second.__exit__(None, None, None)
        first.__exit__(None, None, None)


def test_stream_reset_restores_first_frame(online_app, online_model):
    images = list(_images(4, seed=3))
    probs = _online_reference(online_model, images)
    with TestClient(online_app).websocket_connect("/api/stream") as ws:
        _receive(ws)
        results = [_send(ws, _encode(im)) for im in images]
        assert (probs[3] - _online_reference(online_model, images[3:])[0]).abs().max() > 1e-3
        ws.send_text(json.dumps({"type": "reset"}))
        assert _receive(ws) == {"type": "reset"}
        again = _send(ws, _encode(images[0]))
        assert again["frame"] == 1 and again["top_k"] == results[0]["top_k"]
        assert again["score"] == results[0]["score"]  # the smoother restarted too
        _assert_matches(again, probs[0])
        # and the stream goes on from that new start: frame 4 alone
        _assert_matches(
            _send(ws, _encode(images[3])),
            _online_reference(online_model, [images[0], images[3]])[1],
        )


# -- the stream: an offline model's window --------------------------------------------------------
def test_stream_window_equals_offline_model(window_app, offline_model):
    info = TestClient(window_app).get("/api/model").json()
    length = max(T, round(info["window_seconds"] * info["fps"]))
    images = list(_images(length + 4, seed=4))  # fills the window, then slides it
    probs = _window_reference(offline_model, images, length)
    with TestClient(window_app).websocket_connect("/api/stream") as ws:
        assert _receive(ws) == {"type": "ready", "mode": "window", "fps": info["fps"]}
        for frame, p in zip(images, probs, strict=True):
            _assert_matches(_send(ws, _encode(frame)), p)


# -- the stream: malformed messages and limits ----------------------------------------------------
def test_stream_malformed_messages_answered(online_app, online_model):
    rng = np.random.default_rng(0)
    jpeg = _encode(_images(1, seed=5)[0], "JPEG")
    gif = io.BytesIO()
    Image.fromarray(_images(1, seed=5)[0]).save(gif, format="GIF")
    with TestClient(online_app).websocket_connect("/api/stream") as ws:
        _receive(ws)
        for data in (rng.bytes(5000), jpeg[: len(jpeg) // 2], b"", gif.getvalue()):
            answer = _send(ws, data)
            assert answer["type"] == "error" and answer["error"], answer
        for text in ("hello", "[1, 2]", json.dumps({"type": "shutdown"}), "{"):
            ws.send_text(text)
            answer = _receive(ws)
            assert answer["type"] == "error" and "reset" in answer["error"], answer
        # the socket is still usable, and no bad frame reached the model
        image = _decoded(jpeg)
        result = _send(ws, jpeg)
        assert result["type"] == "result" and result["frame"] == 1
        _assert_matches(result, _online_reference(online_model, [image])[0])


def test_stream_thin_frame_is_refused(online_app, online_model):
    """A thin frame passes the pixel limit, but the shorter side is resized to the model's
    scale: a 1xW frame grows by scale squared (1296 times here; 65536 times at a real model's
    256, where a 1x20000 frame, 20000 pixels, would need about 16 GB). Frames far from a
    camera's shape get an error message, and the socket stays usable."""
    image = _images(1, seed=8)[0]
    with TestClient(online_app).websocket_connect("/api/stream") as ws:
        _receive(ws)
        for shape in ((1, 8000), (8000, 1), (10, 400)):
            answer = _send(ws, _encode(np.zeros((*shape, 3), np.uint8)))
            assert answer["type"] == "error" and "aspect" in answer["error"], answer
        result = _send(ws, _encode(image))
        assert result["frame"] == 1
        _assert_matches(result, _online_reference(online_model, [image])[0])
        # camera shapes pass: 4:3, 16:9, portrait 9:16, 21:9
        for shape in ((48, 64), (36, 64), (64, 36), (27, 63)):
            assert _send(ws, _encode(np.zeros((*shape, 3), np.uint8)))["type"] == "result"


@pytest.mark.parametrize(
    "frame, reason",
    [
        (_large_header_jpeg(5000, 5000), "5000x5000 pixels over the limit of 307200"),
        (_large_header_png(5000, 5000), "5000x5000 pixels over the limit of 307200"),
        # past Pillow's own decompression-bomb limit (its error, not a size the server checks)
        (_large_header_jpeg(20000, 20000), "limit of 307200 pixels"),
        (_large_header_png(20000, 20000), "limit of 307200 pixels"),
        (b"\xff\xd8" + bytes(100_001), "100003 bytes over the limit 100000"),
    ],
    ids=["jpeg-pixels", "png-pixels", "jpeg-bomb", "png-bomb", "bytes"],
)
def test_stream_frame_over_limits_closes_1009(online_app, frame, reason):
    assert len(frame) < 200_000
    with TestClient(online_app).websocket_connect("/api/stream") as ws:
        _receive(ws)
        ws.send_bytes(frame)
        with pytest.raises(WebSocketDisconnect) as closed:
            _receive(ws)
    assert closed.value.code == 1009 and reason in closed.value.reason
    # the server goes on
    with TestClient(online_app).websocket_connect("/api/stream") as ws:
        assert _receive(ws)["type"] == "ready"


def test_stream_connection_limit(online_app):
    client = TestClient(online_app)
    opened = [_connect(client) for _ in range(2)]  # max_connections
    try:
        with (
            client.websocket_connect("/api/stream") as extra,
            pytest.raises(WebSocketDisconnect) as closed,
        ):
            _receive(extra)
        assert closed.value.code == 1013 and "too many connections" in closed.value.reason
        ws, _ = opened.pop()
        ws.__exit__(None, None, None)
        opened.append(_connect(client))  # a slot freed: a new connection works
        result = _send(opened[-1][1], _encode(_images(1, seed=6)[0]))
        assert result["type"] == "result"
    finally:
        for ws, _ in opened:
            ws.__exit__(None, None, None)


# -- uploads --------------------------------------------------------------------------------------
@pytest.fixture
def upload_folders(monkeypatch):
    """Each upload folder the server makes, with its mode at creation."""
    made = []
    real = tempfile.mkdtemp

    def record(*args, **kwargs):
        folder = real(*args, **kwargs)
        if "timeshift-upload-" in os.path.basename(folder):
            made.append((Path(folder), os.stat(folder).st_mode & 0o777))
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", record)
    return made


def _assert_cleaned(made, count: int = 1) -> None:
    assert len(made) == count, made
    for folder, mode in made:
        assert mode == 0o700, oct(mode)
        assert not folder.exists(), f"{folder} left behind"


def test_predict_equals_predict_videos(upload_app, checkpoint, video, upload_folders, monkeypatch):
    seen = []
    real = ServedModel.predict_file
    monkeypatch.setattr(
        ServedModel, "predict_file", lambda self, p: seen.append(p) or real(self, p)
    )
    data = Path(video).read_bytes()
    answer = _post(upload_app, files={"video": ("../../etc/passwd.mkv", data, "video/x-matroska")})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    (expected,) = predict_videos(
        checkpoint, [video], top_k=TOP_K, backend="eager", workers=0, progress=False
    )
    assert [t["index"] for t in result["top_k"]] == [t["index"] for t in expected["top"]]
    np.testing.assert_allclose(
        [t["score"] for t in result["top_k"]], [t["score"] for t in expected["top"]], atol=1e-5
    )
    # the timeline covers the video, segment after segment
    timeline = result["timeline"]
    assert result["duration"] == pytest.approx(3.0, abs=0.15) and result["fps"] == FPS
    assert timeline[0]["start"] == 0 and timeline[-1]["end"] == pytest.approx(
        result["duration"], abs=0.15
    )
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(timeline))
    assert all(s["label"] == CLASSES[s["index"]] for s in timeline)
    assert len(result["windows"]) >= 2
    # the client's file name became no path: the upload is the folder's video.mkv
    _assert_cleaned(upload_folders)
    assert seen == [upload_folders[0][0] / "video.mkv"]
    assert not Path("/etc/passwd.mkv").exists()


def _post(app, files=None, **kwargs):
    """``POST /api/predict``, bounded by ``TIMEOUT``."""
    client = TestClient(app)
    return finishes(lambda: client.post("/api/predict", files=files, **kwargs), timeout=TIMEOUT)


def test_predict_bad_requests(upload_app, upload_folders):
    not_multipart = _post(upload_app, content=b"video", headers={"content-type": "video/mp4"})
    assert not_multipart.status_code == 400 and "multipart" in not_multipart.json()["error"]
    assert not upload_folders  # refused before any folder
    no_field = _post(upload_app, files={"clip": ("a.mp4", b"123", "video/mp4")})
    assert no_field.status_code == 400 and "'video'" in no_field.json()["error"]
    empty = _post(upload_app, files={"video": ("a.mp4", b"", "video/mp4")})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    corrupt = _post(upload_app, files={"video": ("a.mp4", os.urandom(20_000), "video/mp4")})
    assert corrupt.status_code == 422 and "cannot predict" in corrupt.json()["error"]
    assert "timeshift-upload-" not in corrupt.json()["error"]  # no server path in the answer
    _assert_cleaned(upload_folders, 3)


def _wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(bytes(16000))
    return out.getvalue()


def _gif() -> bytes:
    out, frames = io.BytesIO(), [Image.fromarray(f) for f in palette_frames(6)]
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


@pytest.mark.parametrize(
    "kind, status, message",
    [
        ("sound", 422, "no video stream"),
        ("text", 422, "cannot predict"),
        ("half", 422, "cannot predict"),  # an MP4 cut in two: its index is at the end
        ("one-frame", 200, None),
        ("gif", 200, None),  # what FFmpeg decodes is a video
    ],
)
def test_predict_odd_files_answered(upload_app, upload_folders, tmp_path, kind, status, message):
    if kind == "one-frame":
        data = Path(write_test_video(tmp_path / "one.mkv", palette_frames(1))).read_bytes()
    elif kind == "half":
        data = Path(write_test_video(tmp_path / "v.mp4", palette_frames(20))).read_bytes()
        data = data[: len(data) // 2]
    else:
        data = {"sound": _wav, "text": lambda: b"not a video\n" * 100, "gif": _gif}[kind]()
    answer = _post(upload_app, files={"video": (f"upload.{kind}", data)})
    assert answer.status_code == status, answer.text
    if message:
        assert message in answer.json()["error"]
        assert "timeshift-upload-" not in answer.text  # no server path in the answer
    else:
        assert answer.json()["top_k"] and answer.json()["timeline"]
    _assert_cleaned(upload_folders)


def test_predict_over_the_limit(upload_app, upload_folders):
    big = os.urandom(400_000)  # over 0.25 MB and the form's slack
    declared = _post(upload_app, files={"video": ("a.mp4", big, "video/mp4")})
    assert declared.status_code == 413 and "0.25 MB" in declared.json()["error"]
    assert not upload_folders  # refused on Content-Length alone
    body, content_type = _multipart("video", "a.mp4", big)
    chunked = _post(
        upload_app,
        content=(body[i : i + 65536] for i in range(0, len(body), 65536)),
        headers={"content-type": content_type},
    )
    assert chunked.status_code == 413, chunked.text
    lying = _post(
        upload_app, content=body, headers={"content-type": content_type, "content-length": "1000"}
    )
    assert lying.status_code == 413, lying.text
    _assert_cleaned(upload_folders, 2)


def _multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "timeshift-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def test_predict_concurrency_limit(upload_app, monkeypatch):
    entered, release = threading.Semaphore(0), threading.Event()

    def slow(self, path):
        entered.release()
        release.wait(TIMEOUT)
        return {"top_k": [], "timeline": []}

    monkeypatch.setattr(ServedModel, "predict_file", slow)
    statuses = []

    def upload():
        statuses.append(_post(upload_app, files={"video": ("a.mp4", b"x" * 100)}).status_code)

    threads = [threading.Thread(target=upload, daemon=True) for _ in range(2)]  # max_predictions
    try:
        for thread in threads:
            thread.start()
        assert all(entered.acquire(timeout=TIMEOUT) for _ in threads)
        busy = _post(upload_app, files={"video": ("a.mp4", b"x" * 100)})
        assert busy.status_code == 503 and "busy" in busy.json()["error"]
    finally:
        release.set()
        for thread in threads:
            thread.join(TIMEOUT)
    assert statuses == [200, 200]
    # the slots are free again
    assert _post(upload_app, files={"video": ("a.mp4", b"x" * 100)}).status_code == 200


# -- the CLI --------------------------------------------------------------------------------------
def test_cli_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--max-upload-mb", "--max-connections", "--fps", "--window"):
        assert flag in out


@pytest.fixture
def fake_uvicorn(monkeypatch):
    uvicorn = pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("0.0.0.0", True), ("::1", False)])
def test_cli_host_warning(checkpoint, fake_uvicorn, capsys, host, warned):
    argv = ["serve", str(checkpoint), "--host", host, "--port", "8123", "--backend", "eager"]
    assert main([*argv, "--max-upload-mb", "3", "--fps", "7"]) == 0
    err = capsys.readouterr().err
    assert ("warning" in err and host in err) == warned, err
    ((app, kwargs),) = fake_uvicorn
    assert kwargs["host"] == host and kwargs["port"] == 8123
    # the CLI's server answers this machine's names (and --host) only
    info = TestClient(app, base_url="http://127.0.0.1:8123").get("/api/model").json()
    assert info["max_upload_mb"] == 3 and info["fps"] == 7 and info["classes"] == CLASSES
    rebound = TestClient(app, base_url="http://attacker.example:8123").get("/api/model")
    assert rebound.status_code == (200 if host == "0.0.0.0" else 400)


def test_cli_default_host_is_loopback(checkpoint, fake_uvicorn, capsys):
    assert main(["serve", str(checkpoint), "--backend", "eager"]) == 0
    assert fake_uvicorn[0][1]["host"] == "127.0.0.1"
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fps", "0"], "--fps must be in (0, 60]"),
        (["--fps", "100"], "--fps must be in (0, 60]"),
        (["--max-upload-mb", "-1"], "--max-upload-mb must be > 0"),
        (["--max-connections", "0"], "--max-connections must be > 0"),
        # checked at start, not found out by every upload's 422 (window, stride) or a
        # traceback (a negative top-k, a port uvicorn cannot bind)
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--top-k", "-1"], "--top-k must be >= 1"),
        (["--window", "0"], "--window must be > 0"),
        (["--stride", "-1"], "--stride must be > 0"),
        (["--port", "70000"], "--port must be in 0..65535"),
    ],
)
def test_cli_bad_limits(checkpoint, fake_uvicorn, capsys, args, message):
    assert main(["serve", str(checkpoint), *args]) == 2
    assert message in capsys.readouterr().err
    assert not fake_uvicorn


def test_cli_bad_number_is_a_usage_error(checkpoint, capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", str(checkpoint), "--fps", "fast"])
    assert done.value.code == 2 and "--fps" in capsys.readouterr().err


def test_cli_onnx_checkpoint_is_refused(tmp_path, fake_uvicorn, capsys):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    assert main(["serve", str(path)]) == 2
    assert "serve takes a checkpoint" in capsys.readouterr().err
    assert not fake_uvicorn


# -- a real server ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(online_model):
    """The online app under uvicorn on a free port of 127.0.0.1, in a thread."""
    uvicorn = pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
    app = create_app(online_model, _options(max_connections=2, max_upload_mb=0.25))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # log_config=None: its records reach the root logger, where caplog sees server errors
    config = uvicorn.Config(app, log_config=None, ws_max_size=16 << 20)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not instance.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert instance.started, "uvicorn did not start"
    yield sock.getsockname()[1]
    instance.should_exit = True
    thread.join(TIMEOUT)
    sock.close()
    assert not thread.is_alive(), "uvicorn did not stop"


def _raw_get(port: int, target: str) -> tuple[int, bytes]:
    """``GET target`` sent as written (no client normalises its dots)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def test_server_model_and_static_paths(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/api/model", timeout=TIMEOUT) as r:
        assert json.load(r)["classes"] == CLASSES
    for target in (
        "/static/../app.py",
        "/static/../../serve/app.py",
        "/static/../../../../../../../../etc/passwd",
        "/static/%2e%2e/app.py",
        "/static/..%2F..%2Fcli%2Fserve.py",
        "/static//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
    ):
        status, answer = _raw_get(server, target)
        assert status in (400, 404), (target, status)
        assert not any(m.encode() in answer for m in SERVER_FILES), target
    assert _raw_get(server, "/static/index.html")[0] == 200


def _ready_clients(port: int, count: int, stack: contextlib.ExitStack) -> list:
    """``count`` WebSocket clients past ``ready``, closed with ``stack`` (retried while the
    server still counts connections that just went away), or fails."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    deadline = time.monotonic() + TIMEOUT
    while True:
        with contextlib.ExitStack() as attempt:
            clients = [
                attempt.enter_context(
                    connect(f"ws://127.0.0.1:{port}/api/stream", open_timeout=TIMEOUT)
                )
                for _ in range(count)
            ]
            ready = 0
            for client in clients:
                with contextlib.suppress(ConnectionClosed):
                    ready += json.loads(client.recv(timeout=TIMEOUT))["type"] == "ready"
            if ready == count:
                stack.enter_context(attempt.pop_all())
                return clients
        assert time.monotonic() < deadline, f"{count - ready} of {count} connections refused"
        time.sleep(0.1)


def _abandon(port: int, *, mid_frame: bool) -> None:
    """A client that opens the stream and vanishes: right after the handshake, or after
    ``ready`` in the middle of a frame (the start of a 50 kB frame sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        key = base64.b64encode(os.urandom(16)).decode()
        conn.sendall(
            (
                "GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        answer = conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101"), answer
        if not mid_frame:
            return
        while b'"ready"' not in answer:
            answer += conn.recv(4096)
        # FIN + binary, masked, a 16-bit length of 50000, the mask, then 100 bytes of it
        conn.sendall(b"\x82\xfe" + (50_000).to_bytes(2, "big") + os.urandom(104))


def _round_trip(port: int, online_model) -> None:
    """Every connection slot free, and each gives the OnlineRecognizer's first result."""
    image = _images(1, seed=7)[0]
    expected = _online_reference(online_model, [image])[0]
    with contextlib.ExitStack() as stack:
        for client in _ready_clients(port, 2, stack):  # max_connections
            client.send(_encode(image))
            result = json.loads(client.recv(timeout=TIMEOUT))
            assert result["type"] == "result" and result["frame"] == 1
            _assert_matches(result, expected)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=TIMEOUT) as r:
        assert r.status == 200


def _server_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_server_survives_clients_gone_mid_frame(server, online_model, caplog):
    for _ in range(3):  # more than max_connections: each abandoned slot must be freed
        _abandon(server, mid_frame=True)
    _round_trip(server, online_model)
    assert not _server_errors(caplog)


def test_server_client_gone_before_ready_is_no_error(server, online_model, caplog):
    """A client that closes right after the handshake: the server's ``ready`` finds it gone;
    that is the client's business, not an error of the server (no traceback in its log)."""
    for _ in range(3):
        _abandon(server, mid_frame=False)
    _round_trip(server, online_model)
    assert not _server_errors(caplog)


def _chunked_post(port: int, body: bytes, content_type: str) -> tuple[int, dict]:
    """``POST /api/predict`` with a chunked body (no Content-Length), as a raw client."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered early
            conn.request(
                "POST",
                "/api/predict",
                body=chunks,
                headers={"Content-Type": content_type},
                encode_chunked=True,
            )
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_server_chunked_upload_over_the_limit(server, upload_folders):
    """Counted as it streams in (no Content-Length to refuse it by), the folder deleted."""
    body, content_type = _multipart("video", "a.mp4", os.urandom(2_000_000))
    status, answer = _chunked_post(server, body, content_type)
    assert status == 413 and "0.25 MB" in answer["error"]
    _assert_cleaned(upload_folders)


def test_other_sites_pages_cannot_use_the_stream_or_upload(online_app, video):
    """A page of another site, open in the user's browser, sends its own Origin: refused. The
    server's own page and clients that are not browsers (no Origin) are served."""
    client = TestClient(online_app)
    evil = {"origin": "http://evil.example"}
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/api/stream", headers=evil):
        pass
    with client.websocket_connect("/api/stream", headers={"origin": "http://testserver"}) as ws:
        assert _receive(ws)["type"] == "ready"
    data = Path(video).read_bytes()
    answer = client.post(
        "/api/predict",
        files={"video": ("clip.mkv", data)},
        headers={"origin": "http://evil.example"},
    )
    assert answer.status_code == 403 and "own page" in answer.json()["error"]
