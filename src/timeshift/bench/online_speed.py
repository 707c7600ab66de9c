"""Per-frame latency of online TSM against the plain 2D backbone on one frame.

The papers' claim (TSM Table 6 text: 4.8 ms vs 4.7 ms per frame) is that streaming with a
uni-directional shift costs what the 2D network costs: the shift adds no MACs, only the copy
of ``C // 8`` channels per shifted block into and out of the cache. Both sides are driven the
same way (``OnlineRecognizer.step`` in PyTorch, ``OnnxOnlineRecognizer.step`` on onnxruntime;
the 2D model is the TSN with the same backbone, streamed with no cache), interleaved round by
round in one process, and the ratio of the medians is reported.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from timeshift.models.checkpoints import load_checkpoint
from timeshift.models.registry import create_model
from timeshift.online.online_model import OnlineRecognizer

__all__ = ["TARGET_RATIO", "benchmark_online", "plot_online_benchmark"]

_logger = logging.getLogger(__name__)

TARGET_RATIO = 1.05


def _mean_ms(step: Callable[[], object], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters * 1e3


# what each backend can run (as in timeshift.bench.speed)
RUNS = {"eager": ("fp32",), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def _steppers(tsm, tsn, backend: str, size: int, workdir: Path, precision: str = "fp32"):
    frame = torch.randn(3, size, size)
    if backend not in RUNS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(RUNS)}")
    if precision not in RUNS[backend]:
        raise ValueError(f"{backend} does not run {precision}")
    if backend == "eager":
        online, plain = OnlineRecognizer(tsm), OnlineRecognizer(tsn)
    else:
        paths = [_export(m, workdir / f"{n}.onnx", size, precision) for n, m in _pair(tsm, tsn)]
        online, plain = (_stepper(p, backend, precision) for p in paths)
    return (lambda: online.step(frame)), (lambda: plain.step(frame)), online


def _pair(tsm, tsn):
    return (("tsm", tsm), ("tsn", tsn))


def _export(model, path: Path, size: int, precision: str) -> Path:
    """The online export; int8: quantised, its scales calibrated on random frames streamed
    with the caches they produce (the scales set the accuracy, not the speed)."""
    from timeshift.export import export_model

    if not path.exists():
        export_model(model, path, online=True, size=size, exporter="legacy")
    if precision != "int8":
        return path
    from timeshift.export.quantize import quantize_onnx

    target = path.with_name(path.stem + ".int8.onnx")
    if not target.exists():
        generator = torch.Generator().manual_seed(0)
        clips = [torch.randn(1, 4, 3, size, size, generator=generator).numpy() for _ in range(2)]
        quantize_onnx(path, target, clips, online=True)
    return target


def _stepper(path: Path, backend: str, precision: str):
    threads = torch.get_num_threads()
    if backend == "openvino":
        from timeshift.export.openvino_models import OpenVinoOnlineRecognizer

        hint = "fp32" if precision == "int8" else precision
        return OpenVinoOnlineRecognizer(path, precision=hint, threads=threads)
    from timeshift.export import OnnxOnlineRecognizer

    # two sessions in one process: idle threads must sleep, not spin against the other
    return OnnxOnlineRecognizer(path, threads=threads, spinning=False)


@torch.no_grad()
def benchmark_online(
    models: Sequence[str] = ("tsm_mobilenet_v2", "tsm_resnet50"),
    *,
    backends: Sequence[str] = ("eager", "onnxruntime"),
    memory_formats: Sequence[str] = ("contiguous", "channels_last"),
    size: int = 224,
    num_classes: int = 27,
    rounds: int = 30,
    iters: int = 3,
    precisions: Sequence[str] = ("fp32",),
) -> list[dict]:
    """One row per (model, backend, precision, memory format): per-frame ms of the online TSM
    and of the 2D model at the same precision, their ratio, frames/s and the cache size.
    ``memory_formats`` apply to eager; each backend is timed at the precisions it runs."""
    rows = []
    for name in models:
        if not name.startswith("tsm_"):
            raise ValueError(f"{name}: expected a TSM model (tsm_*) with a TSN twin (tsn_*)")
        kwargs = {"num_classes": num_classes, "num_segments": 8}
        tsm = create_model(name, direction="unidirectional", **kwargs).eval()
        tsn = create_model("tsn_" + name[4:], **kwargs).eval()
        load_checkpoint(tsn, tsm.state_dict())  # same weights: the shift has none
        runtimes = [
            (b, p, f)
            for b in backends
            for p in precisions
            if p in RUNS.get(b, (p,))
            for f in (memory_formats if b == "eager" else ("contiguous",))
        ]
        for backend, precision, fmt in runtimes:
            for model in (tsm, tsn):
                model.set_channels_last(fmt == "channels_last")
            with tempfile.TemporaryDirectory() as tmp:
                online, plain, recognizer = _steppers(tsm, tsn, backend, size, Path(tmp), precision)
                for _ in range(3):  # warm-up: allocator, caches, lazy init
                    online(), plain()
                times = {"online": [], "plain": []}
                for r in range(rounds):  # alternate the order: no side always goes first
                    order = ("online", "plain") if r % 2 == 0 else ("plain", "online")
                    for side in order:
                        step = online if side == "online" else plain
                        times[side].append(_mean_ms(step, iters))
            online_ms = statistics.median(times["online"])
            plain_ms = statistics.median(times["plain"])
            paired = statistics.median(
                o / p for o, p in zip(times["online"], times["plain"], strict=True)
            )
            rows.append(
                {
                    "model": name,
                    "backend": backend,
                    "precision": precision,
                    "memory_format": fmt,
                    "size": size,
                    "threads": torch.get_num_threads(),
                    "online_ms": round(online_ms, 3),
                    "plain_2d_ms": round(plain_ms, 3),
                    "ratio": round(online_ms / plain_ms, 4),
                    "paired_ratio": round(paired, 4),
                    "online_fps": round(1e3 / online_ms, 1),
                    "cache_floats": recognizer.cache_floats,
                    "spread_ms": [
                        round(min(times["online"]), 3),
                        round(max(times["online"]), 3),
                    ],
                }
            )
            _logger.info(
                "%s %s %s: online %.2f ms, 2D %.2f ms, ratio %.3f",
                name,
                backend,
                fmt,
                online_ms,
                plain_ms,
                online_ms / plain_ms,
            )
    return rows


def plot_online_benchmark(rows: Sequence[dict], path) -> None:
    from timeshift.bench.charts import grouped_bars

    groups = [
        f"{r['model'][4:]}\n{r['backend']} {r.get('precision', 'fp32')}\n{r['memory_format']}"
        for r in rows
    ]
    grouped_bars(
        groups,
        {"online TSM": [r["online_ms"] for r in rows], "2D": [r["plain_2d_ms"] for r in rows]},
        path,
        ylabel="ms per frame (batch 1)",
        title=f"online TSM vs the 2D backbone per frame (target ratio <= {TARGET_RATIO})",
    )
