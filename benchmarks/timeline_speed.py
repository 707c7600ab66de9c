"""Frames/s of a timeline pass (``predict --timeline``) against ``timeshift stream`` on the same
video, side by side in one run.

The video is synthetic (moving shapes, H.264, ``--seconds`` long at ``--fps``, 320x240 by
default). The models are the same architecture with random weights: the bi-directional one is
timelined with sliding windows (``--window``/``--stride``, ``--frames`` per window), the
uni-directional one is streamed frame by frame by ``run_stream`` (what ``timeshift stream``
runs) and timelined in stream mode. Frames/s counts decoded frames per second of wall time,
decoding and preprocessing included; "held" is the most memory the decoded frames a timeline
holds took at once (and how many frames they were).

    python benchmarks/timeline_speed.py                        # MobileNetV2-TSM at 224, 60 s
    python benchmarks/timeline_speed.py --model tsm_resnet50 --seconds 20 --backend onnxruntime
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import timeshift
from timeshift.engine.timeline import video_timeline
from timeshift.online.stream import run_stream


def synthetic_video(path: Path, *, seconds: float, fps: int, size: tuple[int, int]) -> Path:
    """Coloured squares moving over a gradient, a new scene every 5 seconds."""
    import av

    height, width = size
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(int(seconds * fps)):
            scene = i // (5 * fps)
            tint = np.random.default_rng(scene).integers(0, 255, 3).astype(np.float32)
            image = np.broadcast_to(0.5 * ramp + 0.5 * tint, (height, width, 3)).copy()
            for k in range(3):
                x = int((i * (2 + k) + 60 * k) % (width - 40))
                y = int((height - 40) * (0.5 + 0.4 * np.sin(i / (10 + 5 * k) + k)))
                image[y : y + 40, x : x + 40] = rng.integers(0, 255, 3)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _model(name: str, *, frames: int, size: int, direction: str):
    model = timeshift.create_model(name, num_classes=27, num_segments=frames, direction=direction)
    model.checkpoint_meta = {
        "classes": [f"class {i}" for i in range(27)],
        "input_size": size,
        "scale_size": size * 256 // 224,
    }
    return model.eval()


def _stream_recognizer(model, *, backend: str, size: int):
    """What ``timeshift stream`` steps (the same helper it uses)."""
    from timeshift.engine.backend import online_recognizer

    return online_recognizer(model, backend=backend, size=size)[0]


def _row(name: str, frames: int, seconds: float, video_seconds: float, **extra) -> dict:
    return {
        "pass": name,
        "frames": frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(frames / seconds, 1),
        "x_real_time": round(video_seconds / seconds, 2),
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tsm_mobilenet_v2")
    parser.add_argument("--frames", type=int, default=8, help="frames per window (8)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--video-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--window", default="2s")
    parser.add_argument("--stride", default="1s")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--backend", default="eager", choices=("eager", "onnxruntime", "auto"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (3)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        video = synthetic_video(
            Path(tmp) / "synthetic.mp4",
            seconds=args.seconds,
            fps=args.fps,
            size=tuple(args.video_size),
        )
        offline = _model(args.model, frames=args.frames, size=args.size, direction="bidirectional")
        online = _model(args.model, frames=args.frames, size=args.size, direction="unidirectional")
        common = {"backend": args.backend, "device": args.device, "progress": False}
        # warm-up (one-time costs: an ONNX export, allocator, thread pools) on a short video
        warm = synthetic_video(Path(tmp) / "warm.mp4", seconds=3, fps=args.fps, size=(64, 64))
        video_timeline(offline, warm, window=args.window, stride=args.stride, **common)
        video_timeline(online, warm, stride=args.stride, online=True, **common)

        passes = {
            f"timeline, windows ({args.window} every {args.stride}, {args.frames} frames)": (
                lambda: video_timeline(
                    offline,
                    video,
                    window=args.window,
                    stride=args.stride,
                    batch_size=args.batch_size,
                    **common,
                )
            ),
            "timeline, stream mode": (
                lambda: video_timeline(online, video, stride=args.stride, online=True, **common)
            ),
            "timeshift stream (run_stream)": lambda: run_stream(
                str(video), recognizer, input_size=args.size, scale_size=args.size * 256 // 224
            ),
        }
        recognizer = _stream_recognizer(online, backend=args.backend, size=args.size)
        # the passes interleaved, best of --repeat: other processes slow single runs down
        best: dict[str, tuple[float, object]] = {}
        for _ in range(args.repeat):
            for name, run in passes.items():
                start = time.perf_counter()
                result = run()
                seconds = time.perf_counter() - start
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, result)
        rows = []
        duration = args.seconds
        for name, (seconds, result) in best.items():
            frames = getattr(result, "num_frames", None) or result.frames_read
            stats = getattr(result, "stats", {})
            held = {k: stats.get(k) for k in ("frames_held_max", "held_mib_max")}
            rows.append(_row(name, frames, seconds, duration, **held))
    reference = rows[-1]["frames_per_s"]
    for row in rows:
        row["vs_stream"] = round(row["frames_per_s"] / reference, 2)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.model} at {args.size}, {args.seconds:g} s of {args.video_size[1]}x"
        f"{args.video_size[0]} video at {args.fps} fps, backend {args.backend}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  {'pass':58} {'frames/s':>9} {'x real time':>12} {'vs stream':>10} {'held':>14}")
    for row in rows:
        held = row["held_mib_max"]
        held = f"{held:.1f} MiB ({row['frames_held_max']})" if held is not None else "-"
        print(
            f"  {row['pass']:58} {row['frames_per_s']:9.1f} {row['x_real_time']:12.2f} "
            f"{row['vs_stream']:10.2f} {held:>14}"
        )
    print(f"  peak RSS of the process: {rss:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
