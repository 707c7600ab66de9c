"""Dataset throughput against the raw decode of the same frames, side by side in one run.

The dataset path is decode + segment sampling + transforms (TSN multi-scale crop to 224, flip,
normalise); the raw path opens the same video with the same backend and decodes exactly the same
frame indices, nothing else. Samples alternate between the two paths so that machine noise hits
both alike. The ratio ``dataset / raw`` (clips per second) says what the pipeline costs on top of
decoding.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np

from timeshift.data.dataset import VideoDataset, sample_seed
from timeshift.data.decode import open_video
from timeshift.data.formats import SampleRecord
from timeshift.data.sampling import segment_indices
from timeshift.data.transforms import train_transforms

__all__ = ["benchmark_data", "make_benchmark_videos"]


def make_benchmark_videos(
    out_dir: str | Path,
    *,
    count: int = 8,
    frames: int = 96,
    height: int = 256,
    width: int = 340,
    gop: int = 25,
    seed: int = 0,
) -> list[SampleRecord]:
    """H.264 videos at 256 short side (a moving gradient plus noise: not trivially
    compressible), with a keyframe every ``gop`` frames like typical web video."""
    import av

    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    records = []
    for k in range(count):
        path = out / f"bench_{k:02d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
            stream.options = {"crf": "23", "preset": "veryfast", "g": str(gop)}
            base = rng.uniform(0, 255, size=3)
            for t in range(frames):
                wave = 127 + 60 * np.sin((xx + 3 * t) / 17.0) * np.cos((yy - 2 * t) / 23.0)
                image = wave[..., None] * 0.6 + base * 0.4 + rng.normal(0, 6, (height, width, 1))
                image = np.clip(image, 0, 255).astype(np.uint8)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        records.append(SampleRecord(str(path), k % 2))
    return records


def benchmark_data(
    *,
    records: list[SampleRecord] | None = None,
    samples: int = 48,
    num_segments: int = 8,
    size: int = 224,
    backend: str = "pyav",
) -> dict:
    """Clips per second of ``VideoDataset`` vs raw ``get_frames`` of the same indices."""
    with tempfile.TemporaryDirectory() as tmp:
        records = records or make_benchmark_videos(tmp)
        dataset = VideoDataset(
            records,
            num_segments=num_segments,
            mode="train",
            transform=train_transforms(size),
            backend=backend,
        )
        for i in range(2):  # warm-up: imports, first-call allocations
            dataset[i % len(records)]
        pipeline = raw = 0.0
        for i in range(samples):
            index = i % len(records)
            start = time.perf_counter()
            clip, _ = dataset[index]
            pipeline += time.perf_counter() - start

            start = time.perf_counter()
            rng = random.Random(sample_seed(dataset.seed, dataset.epoch, index))
            with open_video(records[index].path, backend=backend) as reader:
                (indices,) = segment_indices(reader.num_frames, num_segments, mode="train", rng=rng)
                frames = reader.get_frames(indices)
            raw += time.perf_counter() - start
        assert clip.shape == (num_segments, 3, size, size) and frames.shape[0] == num_segments
    return {
        "backend": backend,
        "samples": samples,
        "num_segments": num_segments,
        "size": size,
        "video": f"{frames.shape[2]}x{frames.shape[1]} H.264",
        "dataset_clips_per_s": round(samples / pipeline, 2),
        "raw_decode_clips_per_s": round(samples / raw, 2),
        "ratio": round(raw / pipeline, 3),
    }
