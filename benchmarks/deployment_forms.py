"""Accuracy of every deployment form of one checkpoint on one validation list, side by side:
PyTorch fp32, onnxruntime fp32 and int8, OpenVINO fp32, bf16 and int8 -- what `timeshift test
--backend B --precision P` reports for each, in one table (docs/deployment.md).

The int8 forms are calibrated on the first clips of the training list (``--calibration``), not
on the validation clips they are tested on.

    make demo
    python benchmarks/deployment_forms.py runs/demo/tsm/best.pt \
        --data ~/.cache/timeshift/synthetic-v4-all-n120-20-s64-f16-seed0/val.txt \
        --calibration ~/.cache/timeshift/synthetic-v4-all-n120-20-s64-f16-seed0/train.txt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from timeshift.engine.backend import Calibration
from timeshift.engine.evaluate import EvalOptions, evaluate_checkpoints

FORMS = (
    ("eager", "fp32"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="the validation list")
    p.add_argument("--calibration", required=True, help="the list int8 is calibrated on")
    p.add_argument("--calibration-clips", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--output", type=Path, help="write the rows as JSON here")
    args = p.parse_args()
    calibration = Calibration(args.calibration, clips=args.calibration_clips)
    rows = []
    for backend, precision in FORMS:
        options = EvalOptions(
            backend=backend,
            precision=precision,
            calibration=calibration if precision == "int8" else None,
            batch_size=16,
            workers=args.workers,
        )
        start = time.perf_counter()
        summary = evaluate_checkpoints(
            [args.checkpoint], args.data, options=options, progress=False
        )
        rows.append(
            {
                "backend": backend,
                "precision": precision,
                "top1": summary["top1"],
                "top5": summary["top5"],
                "videos": summary["samples"],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    fp32 = rows[0]["top1"]
    print("\n| backend | precision | top-1 | vs PyTorch fp32 (points) | top-5 |")
    print("|---|---|---|---|---|")
    for r in rows:
        delta = 100 * (r["top1"] - fp32)
        print(f"| {r['backend']} | {r['precision']} | {r['top1']:.4f} | {delta:+.1f} | "
              f"{r['top5']:.4f} |")  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
