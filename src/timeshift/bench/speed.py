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
    "PRECISIONS",
    "VS3D_PAPER",
    "Contender",
    "ModelSpec",
    "benchmark_speed",
    "benchmark_vs_3d",
    "make_runner",
]

_logger = logging.getLogger(__name__)

BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
FORMATS = ("contiguous", "channels_last")
PRECISIONS = ("fp32", "bf16", "int8")
# what each backend can run: PyTorch fp32; onnxruntime fp32 and int8 (a quantised export);
# OpenVINO every precision (bf16: its inference precision hint)
_RUNS = {
    "eager": ("fp32",),
    "compile": ("fp32",),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
_ONNX = ("onnxruntime", "openvino")


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
    precision: str = "fp32"

    @property
    def key(self) -> str:
        return (
            f"{self.spec.title} | {_runtime(self.backend, self.precision)} | {self.memory_format}"
        )


def _runtime(backend: str, precision: str) -> str:
    """A backend and precision as one name: ``onnxruntime``, ``openvino bf16``, ..."""
    return backend if precision == "fp32" else f"{backend} {precision}"


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def _onnx_runner(
    model: nn.Module, x: torch.Tensor, workdir: Path, label: str, backend: str, precision: str
):
    """An ONNX export of ``model`` for ``x``'s batch on onnxruntime or OpenVINO; int8: the
    export quantised (QDQ, per-channel) on random calibration inputs, which set its scales
    but not its speed."""
    from timeshift.export import OnnxRecognizer, export_model

    if x.device.type != "cpu":
        raise ValueError(f"the {backend} backend runs on the CPU here; use --device cpu")
    path = workdir / f"{label.replace(' ', '_').replace('/', '-')}.onnx"
    if not path.exists():  # the same model's fp32 export serves every precision
        export_model(
            model, path, batch=x.shape[0], size=x.shape[-1], exporter="legacy", verify=True
        )
    if precision == "int8":
        path = _quantised(path, x)
    threads = torch.get_num_threads()
    if backend == "openvino":
        from timeshift.export.openvino_models import OpenVinoRecognizer

        hint = "fp32" if precision == "int8" else precision
        session = OpenVinoRecognizer(path, precision=hint, threads=threads)
    else:  # several sessions share the process: idle threads sleep instead of spinning
        session = OnnxRecognizer(path, threads=threads, spinning=False)
    array = x.numpy()
    return lambda: session(array)


def _quantised(path: Path, x: torch.Tensor) -> Path:
    from timeshift.export.quantize import quantize_onnx

    target = path.with_name(path.stem + ".int8.onnx")
    if not target.exists():
        generator = torch.Generator().manual_seed(0)
        clips = [torch.randn(x.shape, generator=generator).numpy() for _ in range(4)]
        quantize_onnx(path, target, clips, online=False)
    return target


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
    precision: str = "fp32",
) -> Callable[[], object]:
    """A no-argument callable running one inference of ``model`` on a fixed random batch
    ``(batch, frames, C, size, size)``. The model is used as given (copy it first if another
    contender needs it in another format)."""
    _check_choice(backend, BACKENDS, "backend")
    _check_choice(memory_format, FORMATS, "memory format")
    _check_choice(precision, _RUNS[backend], f"precision of {backend}")
    model = model.to(device).eval()
    x = torch.randn(batch, frames, model.in_chans, size, size, device=device)
    if backend in _ONNX:
        workdir = workdir or Path(tempfile.mkdtemp())
        return _onnx_runner(model, x, workdir, label, backend, precision)
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
    precisions: Sequence[str] = ("fp32",),
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
        for backend, precision, fmt in _runtimes(backends, precisions, formats):
            _logger.info("building %s on %s (%s)", spec.title, _runtime(backend, precision), fmt)
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
                    label=f"{spec.title}",
                    precision=precision,
                )
            except (ValueError, RuntimeError, ImportError) as exc:
                failures.append(
                    {
                        "model": spec.title,
                        "backend": backend,
                        "precision": precision,
                        "memory_format": fmt,
                        "error": str(exc),
                    }
                )
                continue
            contenders.append(Contender(spec, backend, fmt, run, precision))
    return contenders, failures


def _runtimes(backends, precisions, formats) -> list[tuple[str, str, str]]:
    """``(backend, precision, format)`` to time: each backend at each precision it runs
    (others are left out, not errors: ``--precision fp32 int8`` with eager times eager fp32),
    ONNX backends once (they choose their own layout)."""
    chosen = []
    for backend in backends:
        for precision in precisions:
            if precision in _RUNS[backend]:
                chosen += [
                    (backend, precision, fmt) for fmt in (("-",) if backend in _ONNX else formats)
                ]
    return chosen


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
    precisions: Sequence[str] = ("fp32",),
) -> list[dict]:
    """Time every (model, backend, precision, memory format) side by side.

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
    for p in precisions:
        _check_choice(p, PRECISIONS, "precision")
    with tempfile.TemporaryDirectory(prefix="timeshift-bench-") as tmp:
        contenders, failures = _contenders(
            specs,
            backends,
            formats,
            precisions=precisions,
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
        twin = f"{base_title} | {_runtime(c.backend, c.precision)} | {c.memory_format}"
        eager = f"{c.spec.title} | eager | contiguous"
        onnx = f"{c.spec.title} | onnxruntime | -"
        rows.append(
            {
                "model": c.spec.title,
                "frames": c.spec.frames,
                "backend": c.backend,
                "precision": c.precision,
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
                # the issue-18 target: each form against onnxruntime fp32, side by side
                "vs_onnxruntime": round(paired_ratio(samples[onnx], ms), 3)
                if onnx in by_key
                else None,
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
