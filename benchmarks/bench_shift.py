"""Temporal shift speed vs clone() and the reference zeros_like shift, side by side in one run.

Same as ``timeshift bench shift``; writes ``shift.{json,csv,md,png}``.
Run: python benchmarks/bench_shift.py [--rounds 50] [--output docs/bench]
"""

from __future__ import annotations

import sys

from timeshift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:] or ["--output", "docs/bench"]
    sys.exit(main(["bench", "shift", *args]))
