"""``timeshift bench memory``: peak training memory of models, side by side, as ratios.

The headline is the bLVNet paper's Figure 3b: bLVNet-TAM-50 "8x2" (``blvnet_tam_resnet50``,
16 input frames) needs about half the memory of TSN-R50 on the same 16 frames (the paper
measured on GPU). Each model is measured in a fresh Python process of its own, one model after
the other, so none inherits another's allocator state, caches or peak.

What one pass is
    One training step without the optimizer: forward, cross-entropy loss, backward, on a
    random clip ``(batch, frames, 3, size, size)``, model in train mode. The gradients are
    dropped before each pass (``zero_grad(set_to_none=True)``, what ``optimizer.zero_grad()``
    does), so each pass allocates them again, as a training step does.

``peak_mib`` counts
    Every tensor allocated during the pass and alive at its worst moment: activations saved
    for backward, temporaries, workspaces and scratchpads that go through PyTorch's allocator
    (oneDNN's do on CPU, cuDNN's on GPU), the logits, the loss, the parameter gradients.

``peak_mib`` does not count
    What exists before the pass: the parameters and buffers (``params_mib`` counts the
    parameters), the input clip and labels (``input_mib``); nor the optimizer state (SGD
    momentum: one more ``params_mib``; Adam: two); nor the process itself (interpreter,
    library code, thread stacks, the CUDA context, memory that the CUDA caching allocator or
    glibc keeps reserved but unused). ``total_mib = params_mib + input_mib + peak_mib``.

How it is measured
    CUDA: one warm-up pass (cuDNN / cuBLAS handles and workspaces are made once), then
    ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
    ``memory_allocated()`` before the pass.

    CPU: PyTorch keeps no peak for its CPU allocator, but under the autograd profiler with
    ``profile_memory=True`` the allocator reports every allocation and free made while
    profiling (frees of older blocks are not reported; none happen in a pass). Summed in time
    order they give the exact running total of tensor memory, whose maximum is the peak: the
    CPU counterpart of ``max_memory_allocated``, so CPU and GPU rows mean the same thing. It
    is deterministic (the same bytes run after run, cold or warm). It is the last of three
    passes; the first two are:

    1. a warm-up, so that one-time costs (library code paged in, oneDNN kernels compiled,
       thread pools started: 25-35 MiB of resident memory for ResNet-50) are not the model's;
    2. ``rss_peak_mib`` (Linux with glibc), a cross-check from outside PyTorch: the resident
       set's high-water mark during the pass (``VmHWM``, reset by writing ``5`` to
       ``/proc/self/clear_refs``) minus the resident set before it. glibc is first told
       (``mallopt``) to return freed blocks above 128 KiB to the system at once: by default
       it raises that threshold as big blocks are freed and keeps them, so a warm pass would
       reuse resident pages and barely move the mark. This pass runs before any profiling,
       whose bookkeeping (tens of MiB for a model with many small ops) would be counted, or,
       once freed and kept by glibc, reused. Blocks under 128 KiB still come from memory
       glibc holds, so it may read a little low: for TSN-R50 and bLVNet-TAM-50 on 16 frames
       at 160-224 px it matches ``peak_mib`` to 0.2 MiB, at 112 px on 4 frames to 5%; for the
       tiny test models it means nothing. A much larger value would mean memory allocated
       outside PyTorch's allocator.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from timeshift._plotting import pyplot, save_png
from timeshift.models.registry import create_model

__all__ = [
    "DEFAULT_MODELS",
    "PAPER_RATIO",
    "benchmark_memory",
    "measure_training_memory",
    "plot_memory",
]

_logger = logging.getLogger(__name__)

DEFAULT_MODELS: tuple[tuple[str, int], ...] = (("blvnet_tam_resnet50", 16), ("tsn_resnet50", 16))
PAPER_RATIO = 2.0  # bLVNet Fig. 3b: ~2x less memory than TSN at the same number of input frames

_MEMORY_FORMATS = ("contiguous", "channels_last")
_MIB = 2**20
_GLIBC_THRESHOLD = 128 * 1024  # glibc's default mmap threshold, pinned (see the module doc)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


@dataclasses.dataclass(frozen=True)
class _Spec:
    """One measurement, as sent to the child process."""

    name: str
    frames: int
    size: int
    batch: int
    num_classes: int
    device: str
    channels_last: bool
    threads: int


# -- the child process ----------------------------------------------------------------------------
def _pin_glibc_thresholds() -> bool:
    """Make glibc return freed blocks above 128 KiB to the system (False: not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(
        libc.mallopt(param, _GLIBC_THRESHOLD) == 1
        for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)
    )


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _reset_rss_peak() -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0; False where unsupported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _profiled_peak_bytes(step: Callable[[], None]) -> int:
    """Peak of the CPU tensor memory allocated while ``step`` runs (see the module doc)."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler import profile

    with profile(profile_memory=True) as prof:
        step()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    if not events:
        raise RuntimeError("the profiler reported no CPU allocation")
    live = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        live += nbytes
        peak = max(peak, live)
    return peak


def _cuda_peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak of the CUDA memory allocated while ``step`` runs, beyond what was allocated before."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _rss_peak_bytes(step: Callable[[], None]) -> int | None:
    """Resident-set high-water mark while ``step`` runs, beyond the resident set before it."""
    before = _status_kib("VmRSS")
    if not _reset_rss_peak():
        return None
    step()
    return (_status_kib("VmHWM") - before) * 1024


def _measure_in_child(spec: _Spec) -> dict[str, int | None]:
    """Build and measure one model; bytes: ``peak`` and ``rss_peak`` (or None)."""
    torch.set_num_threads(spec.threads)
    device = torch.device(spec.device)
    pinned = device.type == "cpu" and _pin_glibc_thresholds()
    model = create_model(spec.name, num_classes=spec.num_classes, num_segments=spec.frames)
    model.set_channels_last(spec.channels_last).to(device).train()
    clip = torch.randn(spec.batch, spec.frames, 3, spec.size, spec.size, device=device)
    labels = torch.randint(0, spec.num_classes, (spec.batch,), device=device)

    def step() -> None:
        F.cross_entropy(model(clip), labels).backward()

    if device.type == "cuda":
        step()  # warm-up: cuDNN / cuBLAS handles and workspaces are made once, not per step
        model.zero_grad(set_to_none=True)
        return {"peak": _cuda_peak_bytes(step, device), "rss_peak": None}
    step()  # warm-up: one-time costs (code paged in, oneDNN kernels, thread pools)
    model.zero_grad(set_to_none=True)  # each pass allocates its gradients, as in training
    rss_peak = _rss_peak_bytes(step) if pinned else None  # before any profiling (module doc)
    model.zero_grad(set_to_none=True)
    return {"peak": _profiled_peak_bytes(step), "rss_peak": rss_peak}


def _main(spec_json: str, out_path: str) -> None:
    """Child entry point (``python -m timeshift.bench.memory SPEC OUT``): result as JSON."""
    measured = _measure_in_child(_Spec(**json.loads(spec_json)))
    Path(out_path).write_text(json.dumps(measured))


# -- the parent -----------------------------------------------------------------------------------
def _param_bytes(name: str, *, frames: int, num_classes: int) -> int:
    """Parameter memory, from a build on the meta device (no weights allocated): also where an
    impossible configuration (odd frames for bLVNet) fails, before any process is spawned."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, num_segments=frames)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _run_child(spec: _Spec) -> dict[str, int | None]:
    """Measure in a fresh interpreter (``subprocess``, not ``multiprocessing``: callers' scripts
    need no ``__main__`` guard). The child's stderr (profiler chatter) is kept for errors."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", __name__, json.dumps(dataclasses.asdict(spec)), str(out)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            cause = lines[-1] if lines else "no message"
            if done.returncode < 0:
                cause = f"killed by signal {-done.returncode} (out of memory?)"
            raise RuntimeError(f"{spec.name}: the measuring process failed: {cause}")
        return json.loads(out.read_text())


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else round(nbytes / _MIB, 2)


def measure_training_memory(
    name: str,
    *,
    frames: int,
    size: int,
    batch: int,
    num_classes: int = 400,
    device: str = "cpu",
    memory_format: str = "contiguous",
) -> dict:
    """Peak memory of one training pass of a registered model, in a fresh child process.

    Returns a row: the setting, ``params_mib``, ``input_mib``, ``peak_mib``, ``total_mib``,
    ``rss_peak_mib`` (CPU cross-check; None on CUDA or where unsupported) and ``seconds`` (the
    wall time, process start included). What is and is not counted: see the module doc.

    Raises:
        ValueError: unknown ``memory_format``, or a model that cannot take the setting.
        RuntimeError: the measurement failed in the child (out of memory, for one).
    """
    if memory_format not in _MEMORY_FORMATS:
        raise ValueError(f"memory_format {memory_format!r}: expected one of {_MEMORY_FORMATS}")
    params = _param_bytes(name, frames=frames, num_classes=num_classes)
    spec = _Spec(
        name=name,
        frames=frames,
        size=size,
        batch=batch,
        num_classes=num_classes,
        device=device,
        channels_last=memory_format == "channels_last",
        threads=torch.get_num_threads(),
    )
    start = time.perf_counter()
    measured = _run_child(spec)
    seconds = time.perf_counter() - start
    input_bytes = batch * frames * 3 * size * size * torch.float32.itemsize
    parts = [_mib(params), _mib(input_bytes), _mib(measured["peak"])]
    row = {
        "model": name,
        "frames": frames,
        "size": size,
        "batch": batch,
        "device": device,
        "memory_format": memory_format,
        "threads": spec.threads,
        "params_mib": parts[0],
        "input_mib": parts[1],
        "peak_mib": parts[2],
        # the sum of the parts as reported: rounding the byte total separately could differ
        # from it in the last digit
        "total_mib": round(sum(parts), 2),
        "rss_peak_mib": _mib(measured["rss_peak"]),
        "seconds": round(seconds, 1),
    }
    _logger.info(
        "%s, %d frames, %d px, batch %d, %s %s: peak %.1f MiB (RSS %s MiB) in %.0f s",
        name,
        frames,
        size,
        batch,
        device,
        memory_format,
        row["peak_mib"],
        row["rss_peak_mib"],
        seconds,
    )
    return row


def _add_ratios(rows: list[dict], baseline: Mapping) -> None:
    """``ratio`` = peak / the baseline's peak (0.5: half the memory); ``saving`` = its inverse."""
    reference = None if "error" in baseline else baseline["peak_mib"]
    if reference is None:
        _logger.warning("baseline %s failed: no ratios", baseline["model"])
    for row in rows:
        if "error" in row:
            continue
        ok = reference is not None and row["peak_mib"] > 0
        row["ratio"] = round(row["peak_mib"] / reference, 4) if ok else None
        row["saving"] = round(reference / row["peak_mib"], 4) if ok else None


def benchmark_memory(
    models: Sequence[tuple[str, int]] | None = None,
    *,
    size: int = 224,
    batch: int = 1,
    num_classes: int = 400,
    device: str = "cpu",
    memory_format: str = "contiguous",
    baseline: str | None = None,
) -> list[dict]:
    """One row per ``(model, frames)`` of ``models`` (default :data:`DEFAULT_MODELS`), measured
    one after the other by :func:`measure_training_memory`, plus ``ratio`` and ``saving``
    against the baseline row: the first row of model ``baseline``, by default the last model.

    A model that cannot be built or measured (bLVNet with odd frames, out of memory) gets a row
    with an ``error`` instead of stopping the run.
    """
    models = list(DEFAULT_MODELS if models is None else models)
    if not models:
        raise ValueError("no models to measure")
    baseline = models[-1][0] if baseline is None else baseline
    if baseline not in {name for name, _ in models}:
        raise ValueError(f"baseline {baseline!r} is not among the models measured")
    rows = []
    for name, frames in models:
        try:
            rows.append(
                measure_training_memory(
                    name,
                    frames=frames,
                    size=size,
                    batch=batch,
                    num_classes=num_classes,
                    device=device,
                    memory_format=memory_format,
                )
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            _logger.warning("%s, %d frames: %s", name, frames, exc)
            setting = {
                "size": size,
                "batch": batch,
                "device": device,
                "memory_format": memory_format,
            }
            error = str(exc) or type(exc).__name__
            rows.append({"model": name, "frames": frames, **setting, "error": error})
    _add_ratios(rows, next(r for r in rows if r["model"] == baseline))
    return rows


def plot_memory(rows: Sequence[Mapping], path, title: str) -> None:
    """One stacked bar per measured row (parameters, input clip, training peak), labelled with
    the total and the peak ratio; rows with an ``error`` are left out. Saved as PNG."""
    plt = pyplot()

    rows = [r for r in rows if "error" not in r]
    labels = [f"{r['model']}\n{r['frames']} frames\n{r['memory_format']}" for r in rows]
    parts = {
        "parameters": [r["params_mib"] for r in rows],
        "input clip": [r["input_mib"] for r in rows],
        "training peak (activations, gradients, temporaries)": [r["peak_mib"] for r in rows],
    }
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 3, 4.5))
    bottom = [0.0] * len(rows)
    for part, values in parts.items():
        bars = ax.bar(range(len(rows)), values, 0.6, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ratios = [f"\npeak x{r['ratio']:.2f}" if r.get("ratio") is not None else "" for r in rows]
    ax.bar_label(
        bars, [f"{t:,.0f} MiB{q}" for t, q in zip(bottom, ratios, strict=True)], fontsize=7
    )
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("MiB (one forward + backward, no optimizer)")
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    ax.margins(y=0.15)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    _main(*sys.argv[1:])
