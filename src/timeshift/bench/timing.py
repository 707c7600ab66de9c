"""Side-by-side timing: every contender runs once per round, rounds interleaved.

On a shared machine the speed drifts by several percent within a minute; timing contender A
for a minute and then B puts that drift into the A/B ratio. Interleaving puts it into both, and
the paired ratio (the median over rounds of ``a_i / b_i``) cancels most of what remains.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

__all__ = ["interleaved", "paired_ratio", "summary"]


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 2,
    iters: int = 1,
    sync: Callable[[], object] | None = None,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Milliseconds per call of every function, ``rounds`` samples each.

    Each function first runs ``warmup`` times (one-off costs: allocator, oneDNN primitive
    caches, compilation); then in every round each runs ``iters`` times back to back and the
    mean of those is the round's sample. Odd rounds go through the functions in reverse.
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read, so
    asynchronous devices are timed to completion.
    """
    if rounds < 1 or iters < 1:
        raise ValueError(f"rounds and iters must be >= 1, got {rounds} and {iters}")
    sync = sync or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    steps = range(rounds)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="timing rounds", unit="round", leave=False)
    names = list(fns)
    for r in steps:
        # every other round in reverse, so no contender always runs first or after another
        for name in names if r % 2 == 0 else reversed(names):
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / iters * 1e3)
    return samples


def summary(ms: Sequence[float]) -> dict[str, float]:
    """Median, 10th/90th percentiles and relative spread ``(p90 - p10) / median``."""
    if not ms:
        raise ValueError("no timing samples")
    median = statistics.median(ms)
    if len(ms) > 1:
        deciles = statistics.quantiles(ms, n=10, method="inclusive")
        low, high = deciles[0], deciles[-1]
    else:
        low = high = ms[0]
    return {
        "median_ms": round(median, 3),
        "p10_ms": round(low, 3),
        "p90_ms": round(high, 3),
        "spread": round((high - low) / median, 3) if median else 0.0,
    }


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a_i / b_i``: the ratio with round-to-round drift cancelled."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples must be equal and non-empty, got {len(a)}, {len(b)}")
    return statistics.median(x / y for x, y in zip(a, b, strict=True))
