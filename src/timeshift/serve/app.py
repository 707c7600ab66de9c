"""The web application of ``timeshift serve``: a page and the JSON API behind it.

* ``GET /`` and ``/static/...``: the page (plain HTML, JS and CSS shipped in the package; it
  fetches nothing from elsewhere).
* ``GET /api/model``: the model's metadata (classes, input size, mode, frame rate, limits).
* ``POST /api/predict``: a video posted as the multipart form field ``video``; answers
  ``{"top_k": [{"label", "index", "score"}, ...], "timeline": [{"label", "index", "score",
  "start", "end"}, ...], ...}`` (the test protocol's top-k and the labelled segments over time).
* ``WS /api/stream``: binary JPEG frames in, one JSON result per frame out. Every connection has
  its own model state: an online model's shift caches, or an offline model's window of frames.

Limits (each answered, never a crash): uploads over ``max_upload_mb`` get 413; a frame over
``max_frame_bytes`` or ``max_frame_pixels`` closes its socket with code 1009 and the reason; a
connection over ``max_connections`` is closed with 1013; a frame that is not an image, a video
that cannot be decoded, a message the protocol does not know get an error message. Uploads are
written to a private temporary folder (mode 0700) and deleted after use; no request names a file
of the server.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from timeshift.errors import TimeshiftError

__all__ = ["ServeOptions", "ServedModel", "create_app"]

_logger = logging.getLogger(__name__)

STATIC = resources.files("timeshift.serve") / "static"
# the page's scripts, styles and media come from this server only; frames go back over the
# same origin's WebSocket
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self' ws: wss:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class ServeError(TimeshiftError):
    """The server cannot start as asked (a model it cannot serve, a bad limit)."""


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs the model and what it accepts.

    ``fps``: the rate the page sends camera frames at (default: what the model's step allows,
    at most 15); ``window`` / ``stride``: the sliding window of offline models, live and in
    uploads' timelines (seconds); ``smooth`` / ``margin``: the live label's smoothing
    (:class:`~timeshift.online.stream.LabelSmoother`)."""

    backend: str = "auto"
    memory_format: str = "auto"
    precision: str = "fp32"
    calibration: object = None  # a Calibration, for int8
    device: str = "cpu"
    top_k: int = 5
    max_upload_mb: float = 200.0
    max_frame_bytes: int = 4 << 20
    max_frame_pixels: int = 1920 * 1080
    max_connections: int = 4
    max_predictions: int = 2
    # the Host names requests may carry (None: any); `timeshift serve` gives the loopback names
    # and --host, so that a web page cannot reach the server through a rebound DNS name
    allowed_hosts: tuple[str, ...] | None = None
    fps: float | None = None
    window: float = 2.0
    stride: float = 1.0
    smooth: int = 8
    margin: float = 0.1

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_frame_bytes", "max_frame_pixels", "max_connections"):
            if getattr(self, name) <= 0:
                raise ServeError(
                    f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        for name in ("window", "stride"):  # seconds; else every upload's timeline fails
            if not getattr(self, name) > 0:
                raise ServeError(f"--{name} must be > 0 seconds, got {getattr(self, name)}")
        for name in ("top_k", "max_predictions", "smooth"):
            if getattr(self, name) < 1:
                raise ServeError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.fps is not None and not 0 < self.fps <= 60:
            raise ServeError(f"--fps must be in (0, 60], got {self.fps}")


class ServedModel:
    """The model of the server, loaded once: its metadata, a fresh per-connection live state
    (:meth:`live`), and the prediction of an uploaded file (:meth:`predict_file`)."""

    def __init__(self, model: str | os.PathLike | nn.Module, options: ServeOptions) -> None:
        from timeshift.engine.timeline import is_streamable
        from timeshift.models.checkpoints import load_model
        from timeshift.models.preprocessing import resolve_input_config

        self.options = options
        if isinstance(model, nn.Module):
            self.name = type(model).__name__
        else:
            self.name = str(model)
            if str(model).endswith(".onnx"):
                raise ServeError(
                    f"{model}: serve takes a checkpoint or a registry name (it runs the model "
                    "live and on uploads; --backend onnxruntime exports it itself)"
                )
            model = load_model(model)
        self.model = model.to(torch.device(options.device)).eval()
        meta = getattr(self.model, "checkpoint_meta", None) or {}
        if not meta.get("classes"):
            raise ServeError(f"{self.name} stores no class names (meta.classes)")
        if hasattr(self.model, "detect") or not hasattr(self.model, "num_segments"):
            raise ServeError(f"{self.name}: serve runs recognition models")
        self.classes = list(meta["classes"])
        self.inputs = resolve_input_config(self.model, meta=meta)
        if self.inputs.modality != "rgb":
            raise ServeError(f"{self.name} reads {self.inputs.modality}: serve runs RGB models")
        self.online = is_streamable(self.model)
        self.num_segments = int(self.model.num_segments)
        self._scorer = None
        self._scorer_lock = threading.Lock()
        self.step_ms = 1000.0 / 15  # until measured: the window of the measuring session
        self.step_ms = self._measure_step()

    # -- metadata ------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        """The rate the page sends frames at: ``--fps``, else what one step allows (at most
        15 frames/s, and at least 1)."""
        if self.options.fps is not None:
            return float(self.options.fps)
        return float(max(1.0, min(15.0, 1000.0 / max(self.step_ms * 1.5, 1.0))))

    def info(self) -> dict:
        return {
            "name": self.name,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "num_segments": self.num_segments,
            "input_size": self.inputs.input_size,
            "scale_size": self.inputs.scale_size,
            "mode": "online" if self.online else "window",
            "fps": round(self.fps, 2),
            "step_ms": round(self.step_ms, 3),
            "window_seconds": self.options.window,
            "stride_seconds": self.options.stride,
            "backend": self.options.backend,
            "precision": self.options.precision,
            "top_k": self.options.top_k,
            "max_upload_mb": self.options.max_upload_mb,
            "max_frame_bytes": self.options.max_frame_bytes,
            "max_frame_pixels": self.options.max_frame_pixels,
        }

    # -- live ----------------------------------------------------------------------------
    def live(self) -> LiveSession:
        """A connection's own state: the model's caches (online) or frame window."""
        from timeshift.engine.backend import inference_model, online_recognizer
        from timeshift.online.stream import LabelSmoother, frame_preprocessor

        preprocess = frame_preprocessor(
            input_size=self.inputs.input_size,
            scale_size=self.inputs.scale_size,
            mean=self.inputs.mean,
            std=self.inputs.std,
        )
        options = self.options
        runtime = {
            "backend": options.backend,
            "memory_format": options.memory_format,
            "device": options.device,
            "size": self.inputs.input_size,
            "precision": options.precision,
            "calibration": options.calibration,
        }
        if self.online:
            recognizer, _ = online_recognizer(self.model, **runtime)
        else:
            runnable = inference_model(self.model, **runtime)
            recognizer = WindowRecognizer(runnable, self.num_segments, self._window_frames())
        smoother = LabelSmoother(window=options.smooth, margin=options.margin)
        return LiveSession(self, recognizer, preprocess, smoother)

    def _window_frames(self) -> int:
        """Frames of the sliding window an offline model sees live: ``window`` seconds at the
        page's rate, at least one per segment."""
        return max(self.num_segments, round(self.options.window * self.fps))

    def _measure_step(self) -> float:
        """Milliseconds of one live step (the median of a few), for the page's frame rate."""
        session = self.live()
        frame = np.zeros((self.inputs.scale_size, self.inputs.scale_size, 3), np.uint8)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            session.step_image(frame)
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times[1:]))

    # -- uploads -------------------------------------------------------------------------
    def predict_file(self, path: Path) -> dict:
        """Top-k (the test protocol) and the timeline of one video file."""
        from timeshift.engine.scale import VideoScorer
        from timeshift.engine.timeline import video_timeline

        start = time.perf_counter()
        with self._scorer_lock:
            if self._scorer is None:
                self._scorer = VideoScorer(
                    self.model,
                    top_k=self.options.top_k,
                    device=self.options.device,
                    backend=self.options.backend,
                    precision=self.options.precision,
                    calibration=self.options.calibration,
                )
        scorer = self._scorer
        decoded = scorer.decode("upload", str(path))
        if decoded.error is not None:
            raise UploadError(decoded.error.replace(str(path), "the uploaded file"))
        (row,) = scorer.rows([decoded])
        timeline = video_timeline(
            self.model,
            str(path),
            window=self.options.window,
            stride=self.options.stride,
            top_k=self.options.top_k,
            device=self.options.device,
            backend=self.options.backend,
            precision=self.options.precision,
            calibration=self.options.calibration,
            classes=self.classes,
            progress=False,
        )
        plain = timeline.as_dict()
        return {
            "top_k": row["top_k"],
            "timeline": [
                {k: s[k] for k in ("label", "index", "score", "start", "end")}
                for s in plain["segments"]
            ],
            "windows": plain["windows"],
            "duration": plain["duration"],
            "fps": plain["fps"],
            "mode": plain["mode"],
            "seconds": round(time.perf_counter() - start, 3),
        }


class UploadError(TimeshiftError):
    """An uploaded file cannot be predicted (not a video, no frames, ...)."""


class WindowRecognizer:
    """An offline model live: the last ``length`` frames, sampled into the model's segments
    (the centre of each, as the test protocol does), scored at every step."""

    def __init__(self, runnable, num_segments: int, length: int) -> None:
        self.runnable, self.num_segments = runnable, num_segments
        self.frames: deque[torch.Tensor] = deque(maxlen=length)

    def reset(self) -> None:
        self.frames.clear()

    @torch.inference_mode()
    def step(self, frame: torch.Tensor) -> torch.Tensor:
        self.frames.append(frame)
        count = len(self.frames)
        picks = [
            min(count - 1, int((k + 0.5) * count / self.num_segments))
            for k in range(self.num_segments)
        ]
        clip = torch.stack([self.frames[i] for i in picks])[None]
        return self.runnable(clip)[0]


class LiveSession:
    """One WebSocket connection's model state and counters."""

    def __init__(self, served: ServedModel, recognizer, preprocess, smoother) -> None:
        self.served, self.recognizer = served, recognizer
        self.preprocess, self.smoother = preprocess, smoother
        self.frames = 0
        recognizer.reset()

    def reset(self) -> None:
        self.recognizer.reset()
        self.smoother.reset()
        self.frames = 0

    def step_image(self, image: np.ndarray) -> dict:
        """One frame ``(H, W, 3)`` uint8 RGB -> the result sent to the page."""
        from timeshift.engine.scale import _top_k

        tick = time.perf_counter()
        frame = self.preprocess(image)
        model_tick = time.perf_counter()
        logits = self.recognizer.step(frame)
        model_ms = (time.perf_counter() - model_tick) * 1e3
        probs = torch.softmax(logits.float().reshape(-1), dim=0)
        label, score = self.smoother.update(probs.numpy())
        self.frames += 1
        return {
            "frame": self.frames,
            "label": self.served.classes[label],
            "index": label,
            "score": round(score, 4),
            "top_k": _top_k(probs, self.served.classes, self.served.options.top_k),
            "latency_ms": round(model_ms, 3),
            "server_ms": round((time.perf_counter() - tick) * 1e3, 3),
        }


# -- the application ----------------------------------------------------------------------------
def create_app(
    model: str | os.PathLike | nn.Module | ServedModel, options: ServeOptions | None = None
):
    """The Starlette application serving ``model`` (a checkpoint, a registry name such as
    ``tsm_mobilenet_v2.jester_8f_online``, or a loaded model)."""
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.routing import Mount, Route, WebSocketRoute
        from starlette.staticfiles import StaticFiles
    except ImportError:
        raise ServeError(
            "timeshift serve needs the web extra: pip install 'timeshift[web]'"
        ) from None

    served = (
        model if isinstance(model, ServedModel) else ServedModel(model, options or ServeOptions())
    )
    state = _State(served)
    routes = [
        Route("/", state.index),
        Route("/api/model", state.model_info),
        Route("/api/predict", state.predict, methods=["POST"]),
        WebSocketRoute("/api/stream", state.stream),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static"),
    ]
    middleware = [Middleware(_SecurityHeaders)]
    if served.options.allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        hosts = list(served.options.allowed_hosts)
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.served = served
    return app


class _SecurityHeaders:
    """CSP and friends on every HTTP answer (the page runs no inline script)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class _State:
    """The handlers and what they share: the model, the connection count, the upload folder."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.options = served.options
        self.connections = 0
        self.predictions = 0
        self.lock = asyncio.Lock()

    # -- HTTP ----------------------------------------------------------------------------
    async def index(self, request):
        from starlette.responses import HTMLResponse

        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    async def model_info(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse(self.served.info())

    async def predict(self, request):
        from starlette.responses import JSONResponse

        if not _same_origin(request.headers):
            return _error(403, "uploads are accepted from this server's own page only")
        limit = int(self.options.max_upload_mb * 2**20)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
            return _error(413, f"the upload is over the limit of {self.options.max_upload_mb:g} MB")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _error(400, "post the video as the multipart form field 'video'")
        async with self.lock:
            if self.predictions >= self.options.max_predictions:
                return _error(503, "busy: other uploads are being predicted; try again soon")
            self.predictions += 1
        folder = Path(tempfile.mkdtemp(prefix="timeshift-upload-"))  # mode 0700
        try:
            try:
                target = await _receive_upload(request, folder, limit)
            except _TooLarge:
                return _error(
                    413, f"the upload is over the limit of {self.options.max_upload_mb:g} MB"
                )
            except _BadForm as exc:
                return _error(400, str(exc))
            try:
                result = await asyncio.to_thread(self.served.predict_file, target)
            except (UploadError, TimeshiftError, ValueError, OSError) as exc:
                return _error(422, f"cannot predict this video: {exc}")
            return JSONResponse(result)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            async with self.lock:
                self.predictions -= 1

    # -- WebSocket -----------------------------------------------------------------------
    async def stream(self, websocket):
        from starlette.websockets import WebSocketDisconnect

        try:
            await self._stream(websocket)
        except WebSocketDisconnect:  # the client left while it was being answered: its business
            _logger.debug("a stream client went away")

    async def _stream(self, websocket):
        if not _same_origin(websocket.headers):  # another site's page: refused (403)
            await websocket.close(code=1008)
            return
        await websocket.accept()
        async with self.lock:
            full = self.connections >= self.options.max_connections
            if not full:
                self.connections += 1
        if full:
            await websocket.close(
                code=1013,
                reason=f"too many connections (at most {self.options.max_connections}); try later",
            )
            return
        try:
            session = await asyncio.to_thread(self.served.live)
            await websocket.send_json({"type": "ready", **_ready(self.served)})
            await self._serve_frames(websocket, session)
        finally:
            async with self.lock:
                self.connections -= 1

    async def _serve_frames(self, websocket, session: LiveSession) -> None:
        from starlette.websockets import WebSocketDisconnect

        while True:
            try:
                message = await websocket.receive()
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if len(data) > self.options.max_frame_bytes:
                    await websocket.close(
                        code=1009,
                        reason=f"frame of {len(data)} bytes over the limit "
                        f"{self.options.max_frame_bytes}",
                    )
                    return
                try:
                    image = _decode_jpeg(data, self.options.max_frame_pixels)
                except _FrameTooLarge as exc:
                    await websocket.close(code=1009, reason=str(exc))
                    return
                except ValueError as exc:
                    await websocket.send_json({"type": "error", "error": str(exc)})
                    continue
                result = await asyncio.to_thread(session.step_image, image)
                await websocket.send_json({"type": "result", **result})
            elif text is not None:
                await self._command(websocket, session, text)

    async def _command(self, websocket, session: LiveSession, text: str) -> None:
        try:
            command = json.loads(text)
        except ValueError:
            command = None
        if isinstance(command, dict) and command.get("type") == "reset":
            await asyncio.to_thread(session.reset)
            await websocket.send_json({"type": "reset"})
            return
        await websocket.send_json(
            {"type": "error", "error": 'expected binary JPEG frames or {"type": "reset"}'}
        )


def _same_origin(headers) -> bool:
    """Whether a request comes from this server's own page, or from a client that is not a
    browser (no ``Origin``): a page of another site must not use the camera stream or post
    uploads through the user's browser."""
    from urllib.parse import urlsplit

    origin = headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


def _ready(served: ServedModel) -> dict:
    return {"mode": "online" if served.online else "window", "fps": round(served.fps, 2)}


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class _TooLarge(Exception):
    pass


class _BadForm(Exception):
    pass


class _FrameTooLarge(ValueError):
    pass


MAX_FRAME_ASPECT = 4  # cameras give 4:3 to 21:9, either way round


def _decode_jpeg(data: bytes, max_pixels: int) -> np.ndarray:
    """A JPEG (or PNG) frame as ``(H, W, 3)`` uint8 RGB; its size checked from the header,
    before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise _FrameTooLarge(
                    f"frame of {width}x{height} pixels over the limit of {max_pixels} pixels"
                )
            # the shorter side is resized to the model's scale: a thin frame would grow by
            # its aspect ratio squared (1x20000 pixels -> gigabytes at a scale of 256)
            if max(width, height) > MAX_FRAME_ASPECT * min(width, height):
                raise ValueError(
                    f"frame of {width}x{height} pixels: expected a camera frame (aspect ratio "
                    f"at most {MAX_FRAME_ASPECT}:1)"
                )
            if image.format not in ("JPEG", "PNG"):
                raise ValueError(f"frames must be JPEG or PNG images, got {image.format}")
            return np.array(image.convert("RGB"))  # a writable copy
    except Image.DecompressionBombError:  # a header claiming more than Pillow itself opens
        raise _FrameTooLarge(
            f"frame over the limit of {max_pixels} pixels (its header claims far more)"
        ) from None
    except UnidentifiedImageError:
        raise ValueError(f"not a JPEG or PNG image ({len(data)} bytes)") from None
    except (OSError, SyntaxError) as exc:  # a truncated or damaged image
        raise ValueError(f"a damaged image ({len(data)} bytes): {exc}") from None


async def _limited(request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, stopped with :class:`_TooLarge` past ``limit`` bytes (a client
    can lie about Content-Length or send none)."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit + 64 * 1024:  # the form's own headers and boundaries
            raise _TooLarge
        yield chunk


async def _receive_upload(request, folder: Path, limit: int) -> Path:
    """The form field ``video`` of ``request`` as a file in ``folder`` (the client's file name
    is never used as a path: only its extension, which FFmpeg may need)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(request.headers, _limited(request, limit), max_files=1, max_fields=4)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise _BadForm(f"not a valid multipart form: {exc.message}") from None
    upload = form.get("video")
    try:
        if not isinstance(upload, UploadFile):
            raise _BadForm("post the video as the multipart form field 'video' (a file)")
        suffix = Path(upload.filename or "").suffix.lower()
        suffix = suffix if suffix.isascii() and suffix[1:].isalnum() and len(suffix) <= 6 else ""
        target = folder / f"video{suffix}"
        with open(target, "wb") as out:
            await asyncio.to_thread(shutil.copyfileobj, upload.file, out, 1 << 20)
        if target.stat().st_size == 0:
            raise _BadForm("the field 'video' is an empty file")
        return target
    finally:
        await form.close()
