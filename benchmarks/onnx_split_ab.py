"""Offline ONNX on onnxruntime: TSM's plain graph vs its split-stream graph vs TSN, side by side.

Exports TSN-ResNet50 and TSM-ResNet50 (the same random weights, both graphs of TSM), runs the
three sessions in interleaved rounds and prints median ms and the paired ratio to TSN.

    python benchmarks/onnx_split_ab.py [--batch 1] [--rounds 20] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from timeshift.bench.timing import interleaved, paired_ratio
from timeshift.export import OnnxRecognizer, export_model
from timeshift.models.registry import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    tsm = create_model("tsm_resnet50", num_classes=400, num_segments=8).eval()
    tsn = create_model("tsn_resnet50", num_classes=400, num_segments=8).eval()
    clips = torch.randn(args.batch, 8, 3, args.size, args.size).numpy()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, split in (
            ("TSN", tsn, None),
            ("TSM plain", tsm, False),
            ("TSM split", tsm, True),
        ):
            path = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            export_model(
                model, path, batch=args.batch, size=args.size, exporter="legacy", split=split
            )
            session = OnnxRecognizer(path, threads=torch.get_num_threads(), spinning=False)
            runs[name] = lambda s=session: s(clips)
        ms = interleaved(runs, rounds=args.rounds)
    for name, samples in ms.items():
        ratio = paired_ratio(samples, ms["TSN"])
        print(f"{name:10} {statistics.median(samples):8.1f} ms   x{ratio:.3f} TSN")


if __name__ == "__main__":
    main()
