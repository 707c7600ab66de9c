"""Speed of the temporal shift against ``clone()`` and the reference zeros-plus-copies shift.

All variants run interleaved (round-robin) in one process so that machine noise hits them alike;
the reported figure is the median over rounds.

Allocator note: glibc hands large blocks back to the kernel on ``free``, so every fresh 51 MB
output is page-faulted (and zeroed by the kernel) on first touch. That cost is the same for every
variant and several times larger than the copy itself, which hides what the op does. The benchmark
therefore measures twice: with the default allocator, and with glibc told to keep freed memory
(``mallopt``), which is how a long-running job sees a warm allocator (and what jemalloc/tcmalloc
give by default).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import statistics
from collections.abc import Callable

import torch

from timeshift.bench.timing import interleaved
from timeshift.ops.shift import native_kernel, native_kernel_available, temporal_shift

__all__ = ["benchmark_shift", "keep_freed_memory", "reference_shift"]

_logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reference_shift(x: torch.Tensor, num_segments: int, fold_div: int = 8) -> torch.Tensor:
    """The reference TSM implementation's shift: ``zeros_like`` then three slice copies."""
    nt, c, h, w = x.shape
    x5 = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x5[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x5[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks (no munmap/trim). Returns False if not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31)
    except (OSError, AttributeError):
        return False
    return bool(ok)


def _without_native(x: torch.Tensor, num_segments: int, fold_div: int) -> torch.Tensor:
    with native_kernel(False):
        return temporal_shift(x, num_segments, fold_div=fold_div)


def _median_ms(fns: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, float]:
    samples = interleaved(fns, rounds=rounds, warmup=warmup)
    return {name: statistics.median(ms) for name, ms in samples.items()}


def benchmark_shift(
    *,
    shape: tuple[int, int, int, int] = (16, 256, 56, 56),
    num_segments: int = 8,
    fold_div: int = 8,
    rounds: int = 50,
    warmup: int = 3,
    allocators: tuple[str, ...] = ("default", "warm"),
) -> list[dict]:
    """Time clone / timeshift shift / reference shift on contiguous and channels_last inputs.

    ``shift`` is what ``temporal_shift`` runs (the native kernel for channels_last when built);
    ``shift_pytorch`` is the pure-PyTorch path, timed too when the native kernel exists.

    Returns one row per (allocator, memory format) with median milliseconds and the ratios
    ``shift / clone`` and ``shift / reference``.
    """
    rows = []
    base = torch.randn(shape)
    for allocator in allocators:
        if allocator == "warm" and not keep_freed_memory():
            _logger.warning("not glibc: cannot switch the allocator, skipping the warm run")
            continue
        for fmt_name, fmt in (
            ("contiguous", torch.contiguous_format),
            ("channels_last", torch.channels_last),
        ):
            x = base.contiguous(memory_format=fmt)
            fns = {
                "clone": x.clone,
                "shift": lambda x=x: temporal_shift(x, num_segments, fold_div=fold_div),
                "reference": lambda x=x: reference_shift(x, num_segments, fold_div),
            }
            if native_kernel_available():
                fns["shift_pytorch"] = lambda x=x: _without_native(x, num_segments, fold_div)
            ms = _median_ms(fns, rounds, warmup)
            rows.append(
                {
                    "allocator": allocator,
                    "memory_format": fmt_name,
                    "shape": list(shape),
                    "threads": torch.get_num_threads(),
                    **{f"{k}_ms": round(v, 3) for k, v in ms.items()},
                    "native_kernel": native_kernel_available(),
                    "shift_over_clone": round(ms["shift"] / ms["clone"], 3),
                    "shift_over_reference": round(ms["shift"] / ms["reference"], 3),
                }
            )
    return rows


# targets of the Foundation issue: shift time relative to clone() of the same tensor
TARGETS = {"contiguous": 1.10, "channels_last": 1.25}


def plot_shift_benchmark(rows: list[dict], path) -> None:
    """Bar chart of the median milliseconds per (allocator, memory format)."""
    from timeshift.bench.charts import grouped_bars

    variants = [v for v in ("clone", "shift", "shift_pytorch", "reference") if f"{v}_ms" in rows[0]]
    shape = "x".join(map(str, rows[0]["shape"]))
    grouped_bars(
        [f"{r['allocator']}\n{r['memory_format']}" for r in rows],
        {v: [r[f"{v}_ms"] for r in rows] for v in variants},
        path,
        ylabel="median ms",
        title=f"temporal shift on {shape} ({rows[0]['threads']} threads)",
    )
