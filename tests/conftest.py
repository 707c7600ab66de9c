import contextlib
import functools
import http.server
import os
import re
import threading
import warnings

import pytest
import torch

# under pytest-xdist (`make test` runs a worker per core) the workers share the cores: torch's
# intra-op threads are split between them instead of each worker taking every core
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(
        max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )


def pytest_collection_modifyitems(config, items):
    """The long end-to-end tests (``slow``) first: with two workers they then run beside the
    rest of the suite instead of after it (the order does not change what any test checks)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny models gain nothing from intra-op threads, and on a
    busy 2-core machine OpenMP workers waiting for a core cost more than the work (child
    processes take the parent's thread count too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _export_cache(tmp_path_factory):
    """Cached ONNX exports (the onnxruntime backend) go to a temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIMESHIFT_CACHE", str(tmp_path_factory.mktemp("timeshift-cache")))
        yield


def reference_shift(x: torch.Tensor, num_segments: int, fold_div: int, direction: str):
    """Independent slow implementation written straight from DESIGN.md's equations."""
    nt, c, h, w = x.shape
    n = nt // num_segments
    x5 = x.reshape(n, num_segments, c, h, w)
    out = x5.clone()
    fold = c // fold_div
    for t in range(num_segments):
        if direction == "bidirectional":
            out[:, t, :fold] = x5[:, t + 1, :fold] if t + 1 < num_segments else 0
            out[:, t, fold : 2 * fold] = x5[:, t - 1, fold : 2 * fold] if t > 0 else 0
        else:
            out[:, t, :fold] = x5[:, t - 1, :fold] if t > 0 else 0
    return out.reshape(nt, c, h, w)


# -- test videos ---------------------------------------------------------------------------------
import itertools  # noqa: E402

import numpy as np  # noqa: E402

# well separated solid colours (levels 0/64/128/192/255 per channel), shuffled so that
# consecutive frames differ a lot; a decoded frame is identified by its nearest palette colour
_LEVELS = (0, 64, 128, 192, 255)
PALETTE = np.array(list(itertools.product(_LEVELS, repeat=3)), dtype=np.uint8)[
    np.random.default_rng(0).permutation(125)
]


def palette_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    frames[:] = PALETTE[:count, None, None, :]
    return frames


def identify(frames: np.ndarray) -> list[int]:
    """Palette index of each decoded frame (robust to lossy compression)."""
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    dist = ((means[:, None, :] - PALETTE[None, :, :].astype(float)) ** 2).sum(-1)
    return dist.argmin(axis=1).tolist()


# container suffix -> (codec, pixel format, options)
CODECS = {
    ".mkv": ("libx264rgb", "rgb24", {"crf": "0", "preset": "ultrafast", "g": "7"}),  # lossless
    ".mp4": ("libx264", "yuv420p", {"crf": "20", "preset": "ultrafast", "g": "6", "bf": "2"}),
    ".avi": ("mpeg4", "yuv420p", {"g": "5"}),
    ".webm": ("libvpx-vp9", "yuv420p", {"g": "8", "deadline": "realtime", "cpu-used": "8"}),
}


def write_test_video(path, frames: np.ndarray, fps: int = 10) -> str:
    import av

    codec, pix_fmt, options = CODECS[path.suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options)
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def write_frame_folder(folder, frames: np.ndarray, template="img_{:05d}.jpg", start=1) -> str:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(frames):
        Image.fromarray(image).save(folder / template.format(start + k), quality=95)
    return str(folder)


# flow file names as the other tools write them (an independent transcription, not the library's)
FLOW_TEMPLATES = {
    "dense_flow": "flow_{axis}_{index:05d}.jpg",  # TSN dense_flow, timeshift extract-flow
    "mmaction2": "{axis}_{index:05d}.jpg",  # MMAction2 denseflow
    "sthv1": "{video:06d}-{axis}_{index:05d}.jpg",  # Something-Something V1 flow
}


def constant_flow(count: int, height: int = 32, width: int = 40) -> np.ndarray:
    """``(count, H, W, 2)`` uint8 flow whose every image is flat with its own value (x of frame
    k: ``10 + 3k``, y: ``130 + 3k``): flat images survive JPEG exactly, so a read value names
    the file it came from."""
    values = np.stack([10 + 3 * np.arange(count), 130 + 3 * np.arange(count)], axis=1)
    return np.broadcast_to(values[:, None, None, :], (count, height, width, 2)).astype(np.uint8)


def write_flow_folder(folder, flow: np.ndarray, *, naming="dense_flow", start=1) -> str:
    """Write ``(F, H, W, 2)`` uint8 flow as greyscale x/y images in a tool's naming (``sthv1``
    takes the folder's name as the video number)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    video = int(folder.name) if folder.name.isdigit() else None
    for k, pair in enumerate(flow):
        for c, axis in enumerate("xy"):
            name = FLOW_TEMPLATES[naming].format(axis=axis, index=start + k, video=video)
            Image.fromarray(np.ascontiguousarray(pair[..., c])).save(folder / name, quality=95)
    return str(folder)


def encode_video(
    path,
    frames,
    *,
    codec,
    options=None,
    pix_fmt="yuv420p",
    fps=10,
    fmt=None,
    time_base=None,
    pts=None,
) -> str:
    """Encode with full control: container format, codec options, explicit timestamps."""
    import av

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options or {})
        if time_base is not None:
            stream.codec_context.time_base = time_base
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts(k), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def decode_all(path) -> list[int]:
    """Palette indices of every frame, decoded in order: the ground truth for a file."""
    import av

    with av.open(str(path)) as container:
        return [identify(f.to_ndarray(format="rgb24")[None])[0] for f in container.decode(video=0)]


# -- checkpoints in the reference layouts, and ONNX round trips (shared by several modules) --


def randomise(model):
    """Non-trivial BN statistics and weights, so that a wrong mapping or a missed buffer shows."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1
                )
    return model


def to_reference_tsm(state, *, fc="module.new_fc."):
    out = {}
    for k, v in state.items():
        out[fc + k[3:] if k.startswith("fc.") else "module.base_model." + k[len("backbone.") :]] = v
    return {"epoch": 10, "arch": "resnet50", "state_dict": out, "best_prec1": 71.2}


def to_mmaction2(state):
    """timeshift keys -> an MMAction2 TSM checkpoint (``conv1.conv``, ``conv1.bn``, ``fc_cls``)."""
    out = {}
    for k, v in state.items():
        if k.startswith("fc."):
            out["cls_head.fc_cls." + k[3:]] = v
            continue
        k = re.sub(r"\.conv(\d)\.((?:net\.)?)(weight|bias)$", r".conv\1.conv.\2\3", k)
        k = re.sub(r"\.bn(\d)\.", r".conv\1.bn.", k)
        k = k.replace(".downsample.0.", ".downsample.conv.").replace(
            ".downsample.1.", ".downsample.bn."
        )
        out[k] = v
    return {"meta": {"epoch": 50, "mmaction_version": "1.2.0"}, "state_dict": out}


def to_reference_mobilenet(state):
    """torchvision-layout MobileNetV2 keys -> the reference TSM archs/mobilenet_v2.py layout."""
    expand = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}
    no_expand = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}
    out = {}
    for k, v in state.items():
        shifted = ".conv.0.net." in k
        k = k.replace(".net.", ".")
        m = re.match(r"(backbone\.features\.(\d+)\.conv\.)(\d(?:\.\d)?)\.([a-z_]+)$", k)
        if m:
            is_expand = f"backbone.features.{m.group(2)}.conv.3.weight" in state
            index = (expand if is_expand else no_expand)[m.group(3)]
            k = f"{m.group(1)}{index}.{'net.' if shifted and index == '0' else ''}{m.group(4)}"
        out[k] = v
    return out


def onnx_roundtrip(module, example, fresh, tmp_path):
    """Export ``module`` with a dynamic first dimension and run it on ``fresh`` in
    onnxruntime."""
    import onnxruntime as ort

    path = tmp_path / "op.onnx"
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamo=False,
            dynamic_axes={"x": {0: "nt"}, "y": {0: "nt"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": fresh.numpy()})
    return torch.from_numpy(got)


# -- videos and files that are hard to read (decoding, datasets, streaming) --

VFR_MS = [0, 40, 80, 500, 540, 1600, 1640, 1680, 3000, 3040]  # bursts and gaps


def finishes(fn, *, fifos=(), timeout: float = 10.0):
    """``fn()``'s result (or exception), failing the test if it is still blocked after
    ``timeout`` seconds; a reader blocked on one of ``fifos`` is then released by opening the
    FIFO for writing, so that the test itself never hangs."""
    import contextlib
    import os
    import threading

    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"{fn} still blocked after {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def special_files(root) -> dict:
    """Non-regular files named like videos: a FIFO, a folder, a socket, a character device."""
    import os
    import socket

    root.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / "fifo.mp4")
    (root / "folder.mp4").mkdir()
    (root / "device.mp4").symlink_to("/dev/zero")
    cwd = os.getcwd()
    os.chdir(root)  # a relative name: socket paths are limited to about 100 bytes
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind("socket.mp4")  # the file stays after the socket closes
    finally:
        os.chdir(cwd)
    return {p.stem: p for p in sorted(root.iterdir())}


def faststart_mp4(path, frames: np.ndarray):
    """H.264 with B-frames in an MP4 whose index (moov) is at the front, as web videos are."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "ultrafast", "g": "6", "bf": "2"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def noisy_palette_frames(count: int) -> np.ndarray:
    """Palette frames plus noise: large packets (so a cut loses whole frames), yet each frame
    is still identified by its mean colour."""
    noise = np.random.default_rng(0).integers(-20, 21, size=(count, 48, 64, 3))
    return np.clip(palette_frames(count).astype(int) + noise, 0, 255).astype(np.uint8)


def decodable_prefix(path) -> list[int]:
    """Palette indices of the frames a sequential decode yields before its first error."""
    import av

    out = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                out.append(identify(frame.to_ndarray(format="rgb24")[None])[0])
        except av.FFmpegError:
            pass
    return out


def moving_square(count: int, *, step=(2, 0), size=(48, 64), seed=0) -> np.ndarray:
    """``count`` RGB frames of a textured 16x16 square moving ``step`` = (dx, dy) pixels per
    frame over a still textured background (flow is only defined where there are gradients)."""
    import cv2

    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(60, 255, (16, 16)).astype(np.uint8), (3, 3), 0)
    background = cv2.GaussianBlur(rng.integers(0, 50, size).astype(np.uint8), (5, 5), 0)
    frames = np.repeat(np.repeat(background[None, ..., None], count, 0), 3, -1)
    for t in range(count):
        x, y = 16 + step[0] * t, 12 + step[1] * t
        frames[t, y : y + 16, x : x + 16] = texture[..., None]
    return frames


# -- a local web server (loopback only) ---------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines on stderr
        pass


@contextlib.contextmanager
def http_folder(folder):
    """Serve the files of ``folder`` over HTTP on 127.0.0.1 (a free port) while the block runs;
    yields the base URL (``http://127.0.0.1:PORT``)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
