"""Temporal shift speed vs clone() and the reference zeros_like shift (targets in the README).

Run: python benchmarks/bench_shift.py [--rounds 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

from timeshift.bench.shift_speed import benchmark_shift

TARGETS = {"contiguous": 1.10, "channels_last": 1.25}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = benchmark_shift(rounds=args.rounds)
    header = f"{'allocator':9} {'format':13} {'clone':>8} {'shift':>8} {'ref':>8}  shift/clone  shift/ref"
    print(header)
    for r in rows:
        target = TARGETS[r["memory_format"]]
        ok = "ok" if r["shift_over_clone"] <= target else f"over {target}"
        print(
            f"{r['allocator']:9} {r['memory_format']:13} {r['clone_ms']:8.2f} {r['shift_ms']:8.2f}"
            f" {r['reference_ms']:8.2f}  {r['shift_over_clone']:6.3f} {ok:9} "
            f"{r['shift_over_reference']:6.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
