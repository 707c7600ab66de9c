#!/usr/bin/env bash
# Re-measure every figure of docs/benchmarks.md into docs/bench/ (about 45 minutes on 2 cores).
# Run on an otherwise idle machine: every suite times its contenders side by side, but other
# jobs competing for the cores still widen the spread.
set -euo pipefail
cd "$(dirname "$0")/.."
T="${TIMESHIFT:-.venv/bin/timeshift}"
OUT="${1:-docs/bench}"

$T bench flops --output "$OUT"
$T bench latency --backend eager onnxruntime compile --iters 10 --output "$OUT"
$T bench shift-overhead --iters 8 --output "$OUT"
$T bench throughput --backend eager onnxruntime --format channels_last --iters 3 --warmup 1 \
    --output "$OUT"
$T bench vs-3d --iters 3 --latency-iters 6 --warmup 1 --output "$OUT"
$T bench memory --output "$OUT"
$T bench online --output "$OUT"
$T bench shift --output "$OUT"
$T bench data --output "$OUT"
