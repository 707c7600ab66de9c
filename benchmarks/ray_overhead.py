"""Videos/s of plain ``predict_manifest`` (one process) against the Ray Data route
(``read_manifest`` -> ``map_batches(RayPredictor, ActorPoolStrategy)`` -> ``write_parquet``) on
the same synthetic videos, with and without the cost of ``ray.init()``.

Videos: ``--videos`` short H.264 clips written with PyAV (``--frames`` frames, 64x64, moving
squares). Models (random weights: speed does not depend on them): ``demo``, the demo's narrow
TSM-ResNet-18 at 32 px, where decoding and the per-video overhead dominate; ``r50``,
TSM-ResNet50 at 224 px, where the model dominates. Both routes use the same backend
(``--backend``, eager by default: the onnxruntime backend would export once per actor).
The Ray route runs on a local instance with all the machine's CPUs and the integration's
default resources (:func:`timeshift.integrations.ray.actor_resources`; ``--actors`` to
change the pool). Every route runs once uncounted (imports, Ray's worker pool), then on
``--videos`` and on five times as many videos: the difference gives its marginal videos/s
and its fixed cost (start-up: the actors' imports and model loading; ``ray.init()`` is
reported apart).

    python benchmarks/ray_overhead.py [--videos 24] [--model demo|r50] [--actors N] [--json F]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import timeshift
from timeshift.engine.scale import predict_manifest

MODELS = {
    "demo": (
        "tsm_resnet18",
        {"widths": [16, 32, 64, 128], "stem_width": 16},
        {"input_size": 32, "scale_size": 32},
    ),
    "r50": ("tsm_resnet50", {}, {"input_size": 224, "scale_size": 256}),
}
CLASSES = [f"class{k}" for k in range(10)]


def write_videos(folder: Path, *, count: int, frames: int) -> Path:
    """``count`` H.264 clips of a square moving over a tinted background; a manifest of them."""
    import av

    names = []
    for k in range(count):
        rng = np.random.default_rng(k)
        tint = rng.integers(0, 200, 3).astype(np.uint8)
        path = folder / f"video{k:04d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.height, stream.width, stream.pix_fmt = 64, 64, "yuv420p"
            stream.options = {"preset": "ultrafast", "crf": "23"}
            for t in range(frames):
                image = np.broadcast_to(tint, (64, 64, 3)).copy()
                x = (3 * t + 7 * k) % 48
                image[20:36, x : x + 16] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        names.append(path.name)
    manifest = folder / "manifest.txt"
    manifest.write_text("\n".join(names) + "\n", encoding="utf-8")
    return manifest


def save_checkpoint(folder: Path, key: str) -> Path:
    name, kwargs, sizes = MODELS[key]
    torch.manual_seed(0)
    model = timeshift.create_model(name, num_classes=len(CLASSES), num_segments=8, **kwargs)
    return timeshift.save_model(model, folder / f"{key}.pt", meta={"classes": CLASSES, **sizes})


def run_plain(checkpoint: Path, manifest: Path, out: Path, *, backend: str) -> float:
    """Seconds of one in-process ``predict_manifest`` job (2 DataLoader workers)."""
    started = time.perf_counter()
    predict_manifest(checkpoint, manifest, out, backend=backend, progress=False, batch_size=8)
    return time.perf_counter() - started


def run_ray(checkpoint: Path, manifest: Path, out: Path, *, backend: str, actors) -> int:
    """Rows written by the Ray route; ``actors=None``: the integration's defaults."""
    import pyarrow.parquet as pq

    from timeshift.integrations.ray import predict_dataset, read_manifest

    results = predict_dataset(
        read_manifest(manifest), checkpoint, actors=actors, batch_size=8, backend=backend
    )
    results.write_parquet(str(out))
    return pq.read_table(out).num_rows


def rates(seconds: dict[int, float]) -> tuple[float, float]:
    """``(fixed seconds, videos/s)`` of a route from its times on two manifest sizes: the
    marginal rate, and what is left of the smaller run's time once its videos are paid for."""
    (small, t_small), (large, t_large) = sorted(seconds.items())
    if t_large <= t_small:  # a busy machine: no figure rather than a wrong one
        return float("nan"), float("nan")
    rate = (large - small) / (t_large - t_small)
    return t_small - small / rate, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--model", choices=sorted(MODELS), default="demo")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--actors", type=int, help="the Ray pool (default: the integration's)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = (args.videos, 5 * args.videos)
    plain, ray_seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:
        folder = Path(tmp)
        manifest = write_videos(folder, count=sizes[1], frames=args.frames)
        names = manifest.read_text().splitlines()
        manifests = {}
        for n in sizes:
            manifests[n] = folder / f"manifest-{n}.txt"
            manifests[n].write_text("\n".join(names[:n]) + "\n", encoding="utf-8")
        checkpoint = save_checkpoint(folder, args.model)
        run_plain(checkpoint, manifests[sizes[0]], folder / "plain-warm", backend=args.backend)
        for n in sizes:
            plain[n] = run_plain(
                checkpoint, manifests[n], folder / f"plain-{n}", backend=args.backend
            )

        import ray

        started = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        init = time.perf_counter() - started
        ray.data.DataContext.get_current().enable_progress_bars = False
        run_ray(
            checkpoint,
            manifests[sizes[0]],
            folder / "ray-warm",
            backend=args.backend,
            actors=args.actors,
        )
        for n in sizes:
            started = time.perf_counter()
            out = folder / f"ray-{n}"
            rows = run_ray(checkpoint, manifests[n], out, backend=args.backend, actors=args.actors)
            ray_seconds[n] = time.perf_counter() - started
            assert rows == n, f"the Ray route wrote {rows} rows for {n} videos"
        ray.shutdown()

    print(
        f"model {args.model}, backend {args.backend}, {args.frames} frames a video, "
        f"{os.cpu_count()} CPUs; ray.init(): {init:.1f} s"
    )
    print("| route | videos | seconds | videos/s | x plain |")
    print("|---|---|---|---|---|")
    for n in sizes:
        for name, total in (
            ("predict_manifest, 1 process", plain[n]),
            ("Ray Data", ray_seconds[n]),
            ("Ray Data + ray.init()", ray_seconds[n] + init),
        ):
            print(f"| {name} | {n} | {total:.1f} | {n / total:.2f} | {plain[n] / total:.2f} |")
    fixed_plain, rate_plain = rates(plain)
    fixed_ray, rate_ray = rates(ray_seconds)
    print(
        f"\nmarginal videos/s: plain {rate_plain:.2f}, Ray {rate_ray:.2f} "
        f"(x {rate_ray / rate_plain:.2f}); fixed cost: plain {fixed_plain:.1f} s, "
        f"Ray {fixed_ray:.1f} s + ray.init() {init:.1f} s"
    )
    if args.json:
        figures = {
            "sizes": sizes,
            "init_seconds": init,
            "plain_seconds": plain,
            "ray_seconds": ray_seconds,
            "marginal_videos_per_s": {"plain": rate_plain, "ray": rate_ray},
            "fixed_seconds": {"plain": fixed_plain, "ray": fixed_ray},
        }
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
