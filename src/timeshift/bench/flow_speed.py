"""Optical flow against the recognition model: frames per second, side by side in one run.

The TSM paper's point about two-stream models: extracting the flow usually costs more than the
recognition model itself. Each contender is timed in interleaved rounds (see
:mod:`timeshift.bench.timing`) on the same frames at the same resolution:

* every flow algorithm on one pair of consecutive frames (greyscale conversion included, as
  extraction does), reported as flow frames per second;
* the model on one clip of ``frames`` frames at batch 1 (eager, channels_last: the fastest
  eager path on CPU), reported as video frames per second (``frames / latency``).

``vs_model`` is the model's frames/s divided by the algorithm's: how many times more time a
frame of flow costs than a frame of recognition. A two-stream model also runs a second network
on the flow, which this does not count.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from timeshift.bench.timing import interleaved, summary
from timeshift.data.flow import FLOW_ALGORITHMS, FlowUnavailableError, flow_estimator
from timeshift.models.registry import create_model

__all__ = ["benchmark_flow", "moving_frames"]

_logger = logging.getLogger(__name__)


def moving_frames(
    count: int, *, height: int, width: int, step: int = 3, seed: int = 0
) -> np.ndarray:
    """``(count, H, W, 3)`` uint8 frames of a textured scene panning ``step`` px per frame: real
    motion everywhere, so no algorithm takes a short cut on flat regions."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height // 4 + 1, (width + step * count) // 4 + 1, 3))
    scene = np.kron(texture, np.ones((4, 4, 1))).astype(np.uint8)  # blocks of 4 px: trackable
    return np.stack([scene[:height, k * step : k * step + width] for k in range(count)])


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _flow_runner(algorithm: str, frames: np.ndarray):
    estimate = flow_estimator(algorithm)
    state = {"k": 0}

    def run() -> None:  # the next pair each call: the estimators keep no state between pairs
        k = state["k"] % (len(frames) - 1)
        estimate(_gray(frames[k]), _gray(frames[k + 1]))
        state["k"] += 1

    return run


def _model_runner(model_name: str, *, frames: int, size: int):
    model = create_model(model_name, num_classes=400, num_segments=frames).eval()
    model.set_channels_last(True)
    clip = torch.randn(1, frames, 3, size, size)

    @torch.no_grad()
    def run() -> None:
        model(clip)

    return run


def benchmark_flow(
    algorithms: tuple[str, ...] | list[str] = FLOW_ALGORITHMS,
    *,
    model: str = "tsm_resnet50",
    frames: int = 8,
    size: int = 224,
    rounds: int = 10,
    warmup: int = 2,
    progress: bool = False,
) -> list[dict]:
    """One row per flow algorithm and one for the model: median ms per unit (a flow pair or a
    clip), frames per second, and for the algorithms ``vs_model`` (model frames/s over the
    algorithm's). Frames have ``size`` as their short side (4:3), the model sees ``size``
    squared crops. An algorithm that is not available here gets a row with its ``error``."""
    height, width = size, size * 4 // 3
    images = moving_frames(frames + 1, height=height, width=width)
    fns, rows = {}, {}
    for algorithm in algorithms:
        try:
            fns[algorithm] = _flow_runner(algorithm, images)
        except FlowUnavailableError as exc:
            _logger.warning("bench flow: %s", exc)
            rows[algorithm] = {"contender": algorithm, "kind": "flow", "error": str(exc)}
    fns[model] = _model_runner(model, frames=frames, size=size)
    samples = interleaved(fns, rounds=rounds, warmup=warmup, progress=progress)
    model_ms = summary(samples[model])["median_ms"]
    model_fps = frames / model_ms * 1e3
    for name, ms in samples.items():
        stats = summary(ms)
        is_model = name == model
        fps = (frames if is_model else 1) / stats["median_ms"] * 1e3
        rows[name] = {
            "contender": name,
            "kind": "model" if is_model else "flow",
            "resolution": f"{size}x{size}" if is_model else f"{width}x{height}",
            "unit": f"clip of {frames} frames" if is_model else "frame pair",
            **stats,
            "frames_per_s": round(fps, 2),
            "vs_model": None if is_model else round(model_fps / fps, 3),
        }
    return [rows[name] for name in (*algorithms, model)]
