"""Inference speed of whole models: ``timeshift bench latency | throughput | vs-3d``.

A *contender* is a model run one way: a backend (eager PyTorch, ``torch.compile``, onnxruntime)
and a memory format (contiguous or channels_last; onnxruntime picks its own layout). Every
contender of a run is built first, then all are timed in interleaved rounds
(:mod:`timeshift.bench.timing`), so ratios between them are measured side by side. Latency is
batch 1 (one clip of ``T`` frames, the TSM paper's protocol); throughput is a batch of clips
(16 in the paper), reported as clips per second.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from timeshift.bench.complexity import model_complexity
from timeshift.bench.timing import interleaved, paired_ratio, summary
from timeshift.models.registry import create_model

__all__ = [
    "BACKENDS",
    "FORMATS",
    "VS3D_PAPER",
    "Contender",
    "ModelSpec",
    "benchmark_speed",
    "benchmark_vs_3d",
    "make_runner",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("eager", "compile", "onnxruntime")
FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model at a frame count, with build options and a display label."""

    name: str
    frames: int = 8
    options: dict = field(default_factory=dict)
    label: str = ""
    # called on the built model (e.g. switch an inference path off for a comparison)
    setup: Callable[[nn.Module], object] | None = None

    @property
    def title(self) -> str:
        return self.label or f"{self.name} {self.frames}f"


@dataclass
class Contender:
    spec: ModelSpec
    backend: str
    memory_format: str
    run: Callable[[], object]

    @property
    def key(self) -> str:
        return f"{self.spec.title} | {self.backend} | {self.memory_format}"


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def _onnx_runner(model: nn.Module, x: torch.Tensor, workdir: Path, label: str):
    from timeshift.export import OnnxRecognizer, export_model

    if x.device.type != "cpu":
        raise ValueError("the onnxruntime backend runs on the CPU here; use --device cpu")
    path = workdir / f"{label.replace(' ', '_').replace('/', '-')}.onnx"
    export_model(model, path, batch=x.shape[0], size=x.shape[-1], exporter="legacy", verify=True)
    # several sessions share the process: idle threads sleep instead of spinning
    session = OnnxRecognizer(path, threads=torch.get_num_threads(), spinning=False)
    array = x.numpy()
    return lambda: session(array)


def make_runner(
    model: nn.Module,
    *,
    backend: str,
    memory_format: str,
    batch: int,
    frames: int,
    size: int,
    device: str = "cpu",
    workdir: Path | None = None,
    label: str = "model",
) -> Callable[[], object]:
    """A no-argument callable running one inference of ``model`` on a fixed random batch
    ``(batch, frames, C, size, size)``. The model is used as given (copy it first if another
    contender needs it in another format)."""
    _check_choice(backend, BACKENDS, "backend")
    _check_choice(memory_format, FORMATS, "memory format")
    model = model.to(device).eval()
    x = torch.randn(batch, frames, model.in_chans, size, size, device=device)
    if backend == "onnxruntime":
        return _onnx_runner(model, x, workdir or Path(tempfile.mkdtemp()), label)
    model.set_channels_last(memory_format == "channels_last")
    if backend == "compile":
        model = torch.compile(model)

    @torch.inference_mode()
    def run():
        return model(x)

    return run


def _sync(device: str) -> Callable[[], object] | None:
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(torch.device(device))
    return None


def _build(spec: ModelSpec, num_classes: int, device: str) -> nn.Module:
    model = create_model(
        spec.name, num_classes=num_classes, num_segments=spec.frames, **spec.options
    )
    if spec.setup is not None:
        spec.setup(model)
    return model.to(device)


def _contenders(
    specs: Sequence[ModelSpec],
    backends: Sequence[str],
    formats: Sequence[str],
    *,
    batch: int,
    size: int,
    num_classes: int,
    device: str,
    workdir: Path,
) -> tuple[list[Contender], list[dict]]:
    contenders, failures = [], []
    for spec in specs:
        try:
            base = _build(spec, num_classes, device)
        except (ValueError, TypeError, RuntimeError) as exc:
            failures.append({"model": spec.title, "error": str(exc)})
            continue
        for backend in backends:
            # onnxruntime chooses its own layout: one contender, whatever the formats asked
            for fmt in formats if backend != "onnxruntime" else ("-",):
                _logger.info("building %s on %s (%s)", spec.title, backend, fmt)
                try:
                    run = make_runner(
                        copy.deepcopy(base),
                        backend=backend,
                        memory_format=fmt if fmt != "-" else "contiguous",
                        batch=batch,
                        frames=spec.frames,
                        size=size,
                        device=device,
                        workdir=workdir,
                        label=f"{spec.title}-{backend}",
                    )
                except (ValueError, RuntimeError, ImportError) as exc:
                    failures.append(
                        {
                            "model": spec.title,
                            "backend": backend,
                            "memory_format": fmt,
                            "error": str(exc),
                        }
                    )
                    continue
                contenders.append(Contender(spec, backend, fmt, run))
    return contenders, failures


def benchmark_speed(
    specs: Sequence[ModelSpec],
    *,
    backends: Sequence[str] = ("eager",),
    formats: Sequence[str] = FORMATS,
    batch: int = 1,
    size: int = 224,
    num_classes: int = 400,
    device: str = "cpu",
    rounds: int = 10,
    warmup: int = 2,
    baseline: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Time every (model, backend, memory format) side by side.

    Returns one row per contender: median / p10 / p90 milliseconds per batch, relative spread,
    clips per second, ``vs_baseline`` (paired ratio of this row's time to the baseline model's
    time on the same backend and format; ``specs[baseline]``) and ``speedup`` (the same model's
    eager contiguous time over this row's, when eager contiguous was measured). Contenders that
    could not be built are rows with an ``error``.
    """
    for b in backends:
        _check_choice(b, BACKENDS, "backend")
    for f in formats:
        _check_choice(f, FORMATS, "memory format")
    with tempfile.TemporaryDirectory(prefix="timeshift-bench-") as tmp:
        contenders, failures = _contenders(
            specs,
            backends,
            formats,
            batch=batch,
            size=size,
            num_classes=num_classes,
            device=device,
            workdir=Path(tmp),
        )
        samples = interleaved(
            {c.key: c.run for c in contenders},
            rounds=rounds,
            warmup=warmup,
            sync=_sync(device),
            progress=progress,
        )
    base_title = specs[baseline].title if specs else None
    by_key = {c.key: c for c in contenders}
    rows = []
    for c in contenders:
        ms = samples[c.key]
        stats = summary(ms)
        twin = f"{base_title} | {c.backend} | {c.memory_format}"
        eager = f"{c.spec.title} | eager | contiguous"
        rows.append(
            {
                "model": c.spec.title,
                "frames": c.spec.frames,
                "backend": c.backend,
                "memory_format": c.memory_format,
                "batch": batch,
                "size": size,
                "device": device,
                **stats,
                "clips_per_s": round(batch * 1e3 / stats["median_ms"], 3),
                "vs_baseline": round(paired_ratio(ms, samples[twin]), 3)
                if twin in by_key
                else None,
                "speedup": round(paired_ratio(samples[eager], ms), 3) if eager in by_key else None,
            }
        )
    return rows + failures


# TSM Table 5 (NVIDIA Tesla P100; latency batch 1, throughput batch 16)
VS3D_PAPER = {
    "TSN 8f": None,
    "TSM 8f": {"gflops": 33, "params_m": 24.3, "latency_ms": 17.4, "videos_per_s": 77.4},
    "TSM 16f": {"gflops": 65, "params_m": 24.3, "latency_ms": 29.0, "videos_per_s": 39.5},
    "I3D from [49]": {"gflops": 33, "params_m": 29.3, "latency_ms": 25.8, "videos_per_s": 42.4},
    "I3D_replace": {"gflops": 48, "params_m": 33.0, "latency_ms": 28.0, "videos_per_s": 37.9},
}

VS3D_SPECS = (
    ModelSpec("tsm_resnet50", 8, label="TSM 8f"),
    ModelSpec("tsn_resnet50", 8, label="TSN 8f"),
    ModelSpec("tsm_resnet50", 16, label="TSM 16f"),
    ModelSpec("i3d_resnet50", 8, label="I3D from [49]"),
    ModelSpec("i3d_replace_resnet50", 8, label="I3D_replace"),
)


def _complexity(spec: ModelSpec, num_classes: int, size: int) -> dict:
    with torch.device("meta"):
        model = create_model(
            spec.name, num_classes=num_classes, num_segments=spec.frames, **spec.options
        )
    c = model_complexity(model, frames=spec.frames, input_size=size)
    return {"params": c.params, "gmacs": round(c.macs / 1e9, 4)}


def benchmark_vs_3d(
    specs: Sequence[ModelSpec] = VS3D_SPECS,
    *,
    backend: str = "eager",
    memory_format: str = "channels_last",
    batch: int = 16,
    size: int = 224,
    num_classes: int = 400,
    device: str = "cpu",
    rounds: int = 5,
    latency_rounds: int = 10,
    warmup: int = 2,
    progress: bool = False,
) -> list[dict]:
    """The TSM paper's Table 5 on this machine: MACs, parameters, batch-1 latency and
    batch-``batch`` throughput of each model, with ratios to the first spec (TSM 8f):
    ``latency_vs_tsm`` = this model's latency / TSM's, ``tsm_throughput_x`` = TSM's clips/s /
    this model's (the paper's "2.04x" and "1.83x"), both paired ratios."""
    common = dict(
        backends=(backend,),
        formats=(memory_format,),
        size=size,
        num_classes=num_classes,
        device=device,
        warmup=warmup,
        progress=progress,
    )
    latency = benchmark_speed(specs, batch=1, rounds=latency_rounds, **common)
    throughput = benchmark_speed(specs, batch=batch, rounds=rounds, **common)
    rows = []
    for spec in specs:
        lat = next(r for r in latency if r["model"] == spec.title)
        thr = next(r for r in throughput if r["model"] == spec.title)
        if "error" in lat or "error" in thr:
            rows.append({"model": spec.title, "error": lat.get("error") or thr.get("error")})
            continue
        rows.append(
            {
                "model": spec.title,
                "registered": spec.name,
                "frames": spec.frames,
                **_complexity(spec, num_classes, size),
                "latency_ms": lat["median_ms"],
                "latency_spread": lat["spread"],
                "clips_per_s": thr["clips_per_s"],
                "throughput_spread": thr["spread"],
                "latency_vs_tsm": lat["vs_baseline"],
                # TSM's clips/s over this model's = this model's time over TSM's
                "tsm_throughput_x": thr["vs_baseline"],
                "backend": backend,
                "memory_format": lat["memory_format"],
                "batch": batch,
                "size": size,
                "device": device,
            }
        )
    return rows
