"""``timeshift serve``'s page in a real browser: headless Chromium (the system's, driven by
Playwright) against the server running in a thread, with a fake camera playing a generated Y4M
clip. The model is trained in the fixture (solid colours with noise: "red", "green", "blue"), so
the label the page shows can be checked against the clip the camera plays.

The numbers of the live path (frames/s delivered, the round trip per frame from the page's send
to the label shown, the model's own step) are printed and written as JSON
(``$TIMESHIFT_SERVE_NUMBERS``, else the test's temporary folder). With
``TIMESHIFT_SCREENSHOTS=docs/serve`` the tests also save ``live.png`` and ``upload.png`` there.
"""

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

import timeshift  # noqa: E402
from timeshift.models.preprocessing import resolve_input_config  # noqa: E402
from timeshift.serve import ServeOptions, create_app  # noqa: E402

from conftest import write_test_video  # noqa: E402

CHROMIUM = os.environ.get("TIMESHIFT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no chromium browser at {CHROMIUM} (apt install chromium)", allow_module_level=True
    )

CLASSES = ["red", "green", "blue"]
T, SIZE = 4, 32
LIVE_FPS = 10.0  # the server's frame rate: below the camera's 15, so the cap is the server's
TIMEOUT_MS = 15_000  # any wait in the browser


# -- synthetic colour clips ----------------------------------------------------------------------
def colour_frames(
    label: int, count: int, *, height: int, width: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """A clip of one solid colour whose channel ``label`` dominates, with per-pixel noise."""
    base = rng.uniform(0, 100, 3)
    base[label] = rng.uniform(160, 255)
    frames = base + rng.normal(0, noise, (count, height, width, 3))
    return np.clip(frames, 0, 255).astype(np.uint8)


def clip_batch(count: int, rng: np.random.Generator, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` clips ``(N, T, 3, S, S)`` normalised as the server does, and their labels."""
    labels = rng.integers(0, len(CLASSES), count)
    frames = np.stack(
        [
            colour_frames(int(k), T, height=SIZE, width=SIZE, noise=rng.uniform(0, 30), rng=rng)
            for k in labels
        ]
    )
    clips = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255
    mean = torch.tensor(inputs.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(inputs.std).view(1, 1, 3, 1, 1)
    return (clips - mean) / std, torch.from_numpy(labels)


@pytest.fixture(scope="module")
def colour_model(one_thread):
    """A tiny uni-directional (online) TSM trained here to tell the three colours apart."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = timeshift.create_model(
        "tsm_resnet_tiny", num_classes=3, num_segments=T, direction="unidirectional"
    )
    model.checkpoint_meta = {"classes": CLASSES, "input_size": SIZE, "scale_size": SIZE}
    inputs = resolve_input_config(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):  # about 1.5 s on one thread
        clips, labels = clip_batch(16, rng, inputs)
        loss = torch.nn.functional.cross_entropy(model(clips), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    clips, labels = clip_batch(60, np.random.default_rng(1), inputs)  # fresh clips
    with torch.no_grad():
        accuracy = (model(clips).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.95, f"the colour model did not learn: accuracy {accuracy:.2f}"
    return model


# -- the server in a thread ----------------------------------------------------------------------
@contextlib.contextmanager
def serving(app, timeout: float = 20.0):
    """``app`` served by uvicorn on 127.0.0.1 and a free port, in a thread; its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # a port no other test can take before the server does
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on 127.0.0.1:{port} within {timeout} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        sock.close()


@pytest.fixture(scope="module")
def server(colour_model):
    app = create_app(colour_model, ServeOptions(backend="eager", fps=LIVE_FPS))
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def small_server(colour_model):
    """Tiny limits: a 10 kB upload, one connection."""
    options = ServeOptions(backend="eager", max_upload_mb=0.01, max_connections=1)
    with serving(create_app(colour_model, options)) as url:
        yield url


# -- the browser with a fake camera --------------------------------------------------------------
def write_y4m(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Frames ``(N, H, W, 3)`` RGB as YUV4MPEG2 4:2:0 ('C420jpeg' chroma siting), BT.601
    limited range: the range Chromium's fake camera reads I420 in."""
    count, height, width, _ = frames.shape
    r, g, b = np.moveaxis(frames.astype(np.float32) / 255, -1, 0)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b

    def half(plane: np.ndarray) -> np.ndarray:  # 2x2 means: the 4:2:0 chroma
        return plane.reshape(count, height // 2, 2, width // 2, 2).mean(axis=(2, 4))

    def u8(plane: np.ndarray) -> np.ndarray:
        return np.clip(np.round(plane), 0, 255).astype(np.uint8)

    y, cb, cr = u8(y), u8(half(cb)), u8(half(cr))
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for k in range(count):
            out.write(b"FRAME\n" + y[k].tobytes() + cb[k].tobytes() + cr[k].tobytes())
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    camera = tmp_path_factory.mktemp("camera") / "red.y4m"
    red = colour_frames(0, 30, height=120, width=160, noise=12, rng=np.random.default_rng(2))
    write_y4m(camera, red, fps=15)  # 2 s at 15 frames/s, looped by Chromium
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=args, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Page:
    """A fresh page (its own context, the camera allowed) and the console errors it logs."""

    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context(
            permissions=["camera"], viewport={"width": 1280, "height": 860}
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", self._console)
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.goto(url)
        self.page.wait_for_selector("#model[data-loaded=true]")

    def _console(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, server):
    opened = Page(browser, server)
    yield opened
    opened.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("TIMESHIFT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


# -- tests ---------------------------------------------------------------------------------------
def test_the_page_loads_with_the_model_and_no_console_errors(page, colour_model):
    p = page.page
    assert p.text_content("#model-name") == type(colour_model).__name__
    assert p.get_attribute("#model", "data-mode") == "online"
    assert p.text_content("#model-classes") == "3"
    assert p.text_content("#model-backend") == "eager / fp32"
    assert p.is_enabled("#live-start")
    # the styles and the script came from the server (nothing inline, nothing from elsewhere)
    assert p.evaluate("getComputedStyle(document.querySelector('.panel')).borderRadius") == "8px"
    origin = p.url.rstrip("/")
    assert page.requests and all(url.startswith(origin + "/") for url in page.requests)
    assert page.errors == []


def test_live_camera_shows_the_clips_label_at_the_servers_rate(page, tmp_path):
    p = page.page
    p.click("#live-start")
    p.wait_for_function(
        "() => document.getElementById('live-label').dataset.label === 'red'", timeout=TIMEOUT_MS
    )
    assert p.evaluate("() => document.getElementById('live-video').videoWidth") == 160
    # measure a few seconds of steady streaming
    start = p.evaluate("({frames: timeshiftStats.frames, t: performance.now()})")
    p.wait_for_timeout(3000)
    stats, end_t, shown_frames = p.evaluate(
        "[timeshiftStats, performance.now(), document.getElementById('live-frames').dataset.frames]"
    )
    assert p.get_attribute("#live-label", "data-label") == "red"
    assert p.text_content("#live-topk li:first-child .name") == "red"
    assert len(p.query_selector_all("#live-topk li")) == 3
    assert int(shown_frames) == stats["frames"]
    assert float(p.get_attribute("#live-fps", "data-fps")) > 0
    assert float(p.get_attribute("#live-rtt", "data-rtt-ms")) > 0
    assert p.evaluate("() => document.getElementById('live-legend').children.length") == 3

    numbers = _live_numbers(stats, start, end_t)
    print("\nserve live numbers:", json.dumps(numbers, indent=1))
    target = Path(os.environ.get("TIMESHIFT_SERVE_NUMBERS") or tmp_path / "serve_numbers.json")
    target.write_text(json.dumps(numbers, indent=1))
    print("written to", target)
    # at most the server's rate (the camera gives 15 frames/s), and not far below it
    sent, shown = np.array(stats["sentAt"]), np.array(stats["shownAt"])
    assert len(sent) == len(shown) == stats["frames"]
    assert (len(sent) - 1) / ((sent[-1] - sent[0]) / 1000) <= 1.05 * LIVE_FPS
    assert numbers["frames_per_second"] >= 0.5 * LIVE_FPS
    # one frame in flight: every frame is sent after the previous result was shown
    assert np.all(sent[1:] >= shown[:-1])
    # the round trip holds the model's step
    assert numbers["round_trip_ms"]["median"] > numbers["model_step_ms"]["median"]
    screenshot(p, "live.png")

    p.click("#live-reset")
    p.wait_for_function(
        "() => document.getElementById('live-status').textContent.startsWith('reset')"
    )
    p.wait_for_function("() => document.getElementById('live-label').dataset.label === 'red'")
    p.click("#live-stop")
    p.wait_for_function("() => document.getElementById('live-status').dataset.state === 'idle'")
    assert p.is_enabled("#live-start")
    assert page.errors == []


def _live_numbers(stats: dict, start: dict, end_t: float) -> dict:
    """Frames/s over the measured span; round trips and model steps of its frames."""
    first, last = start["frames"], stats["frames"]
    span = [i for i, t in enumerate(stats["shownAt"]) if t >= start["t"]]
    rtt = np.array(stats["rttMs"])[span]
    step = np.array(stats["latencyMs"])[span]
    server = np.array(stats["serverMs"])[span]
    encode = np.array(stats["encodeMs"])[span]

    def summary(values: np.ndarray) -> dict:
        return {
            "median": round(float(np.median(values)), 2),
            "p90": round(float(np.percentile(values, 90)), 2),
        }

    return {
        "frames": last - first,
        "seconds": round((end_t - start["t"]) / 1000, 3),
        "frames_per_second": round((last - first) / ((end_t - start["t"]) / 1000), 2),
        "server_fps": LIVE_FPS,
        "round_trip_ms": summary(rtt),  # page send -> label in the page
        "model_step_ms": summary(step),  # the server's latency_ms
        "server_ms": summary(server),  # decode + preprocess + step
        "encode_ms": summary(encode),  # canvas draw + JPEG in the page
    }


def test_an_upload_shows_its_timeline_and_top1(page, tmp_path):
    rng = np.random.default_rng(3)
    frames = np.concatenate(
        [
            colour_frames(2, 40, height=48, width=64, noise=8, rng=rng),  # 4 s blue
            colour_frames(1, 20, height=48, width=64, noise=8, rng=rng),  # then 2 s green
        ]
    )
    video = write_test_video(tmp_path / "blue_then_green.mkv", frames, fps=10)
    p = page.page
    p.set_input_files("#upload-input", video)
    p.wait_for_selector("#upload-result:not([hidden])")
    assert p.text_content("#upload-topk li:first-child .name") == "blue"
    assert p.get_attribute("#upload-topk", "data-top1") == "blue"
    bands = p.query_selector_all("#timeline .band")
    assert int(p.get_attribute("#timeline", "data-timeline-segments")) == len(bands) >= 2
    labels = [band.get_attribute("data-label") for band in bands]
    assert labels[0] == "blue" and labels[-1] == "green", labels
    assert float(bands[0].get_attribute("data-start")) == 0
    assert float(bands[-1].get_attribute("data-end")) == pytest.approx(6.0, abs=0.2)
    assert p.text_content("#timeline-end") == "6.0 s"
    legend = p.eval_on_selector_all("#timeline-legend li", "items => items.map(i => i.textContent)")
    assert {"blue", "green"} <= set(legend)
    bands[-1].hover()
    p.wait_for_function("() => document.getElementById('timeline-hover').dataset.label === 'green'")
    assert "green" in p.text_content("#timeline-hover")
    assert p.text_content("#upload-status").startswith("analysed 6.0 s of video")
    assert p.is_hidden("#upload-error")
    # the upload's progress, then "analysing... N s" until the answer
    assert p.evaluate("timeshiftStats.upload.phases") == ["uploading", "analysing", "done"]
    screenshot(p, "upload.png")
    assert page.errors == []


def test_a_file_that_is_not_a_video_shows_the_servers_422(page, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_bytes(np.random.default_rng(5).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    p = page.page
    p.set_input_files("#upload-input", str(fake))
    p.wait_for_selector("#upload-error:not([hidden])")
    assert p.get_attribute("#upload-error", "data-status") == "422"
    message = p.text_content("#upload-error")
    assert message.startswith("This file cannot be analysed: cannot predict this video")
    assert "timeshift-upload-" not in message  # the server's private folder is not named
    assert p.is_hidden("#upload-result")


def test_an_upload_over_the_limit_shows_the_servers_413(browser, small_server, tmp_path):
    frames = colour_frames(2, 30, height=48, width=64, noise=20, rng=np.random.default_rng(4))
    video = write_test_video(tmp_path / "blue.mkv", frames, fps=10)
    assert Path(video).stat().st_size > 0.01 * 2**20 + 64 * 1024  # over the limit for sure
    opened = Page(browser, small_server)
    try:
        p = opened.page
        assert p.text_content("#upload-limit") == "up to 0.01 MB"
        p.set_input_files("#upload-input", video)
        p.wait_for_selector("#upload-error:not([hidden])")
        assert p.get_attribute("#upload-error", "data-status") == "413"
        message = p.text_content("#upload-error")
        assert message.startswith("The file is too large")
        assert "over the limit of 0.01 MB" in message
        assert p.is_hidden("#upload-result") and p.is_hidden("#upload-progress")
    finally:
        opened.close()


def test_a_full_server_refuses_the_camera_with_its_reason(browser, small_server):
    from websockets.sync.client import connect

    ws_url = small_server.replace("http://", "ws://") + "/api/stream"
    with connect(ws_url, open_timeout=10) as holder:  # takes the only connection
        assert json.loads(holder.recv(timeout=10))["type"] == "ready"
        opened = Page(browser, small_server)
        try:
            p = opened.page
            p.click("#live-start")
            p.wait_for_function(
                "() => document.getElementById('live-status').dataset.closeCode === '1013'"
            )
            status = p.text_content("#live-status")
            assert status.startswith("the server is busy: too many connections (at most 1)")
            assert p.get_attribute("#live-status", "data-state") == "error"
            assert p.is_enabled("#live-start") and not p.is_enabled("#live-stop")
            assert opened.errors == []
        finally:
            opened.close()
