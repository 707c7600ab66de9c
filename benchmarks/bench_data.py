"""Dataset throughput vs raw decode of the same frames (target: ratio >= 0.8), one run.

Same as ``timeshift bench data``; writes ``data_<backend>.{json,csv,md,png}``.
Run: python benchmarks/bench_data.py [--samples 48] [--backend pyav] [--output docs/bench]
"""

from __future__ import annotations

import sys

from timeshift.cli import main

if __name__ == "__main__":
    args = sys.argv[1:] or ["--output", "docs/bench"]
    sys.exit(main(["bench", "data", *args]))
