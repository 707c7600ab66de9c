"""onnxruntime INT8 (``quantize_model``: static, QDQ, per-channel) vs fp32 on this CPU, side by
side in one run, with file sizes and the agreement check of each quantisation.

Online, one frame at 224: TSM-MobileNetV2 and TSM-ResNet18 (unidirectional shift); offline:
TSM-ResNet50, one clip of 8 x 224 x 224. Random weights (latency does not depend on them; the
agreement of random weights says little about a trained model's; their batch norms are fitted
to the clips so that activations span realistic ranges). Calibration: short videos of random
coloured blocks (or ``--calibration LIST``). Variants: uint8 or int8 activations, 7- or 8-bit
weights (``quantize_model``'s defaults on x86: uint8, and 7-bit without VNNI). Median ms over
interleaved rounds and the paired ratio to fp32.

    python benchmarks/int8_speed.py [--rounds 20] [--only online|offline]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from timeshift.bench.timing import interleaved, paired_ratio
from timeshift.export import OnnxOnlineRecognizer, OnnxRecognizer
from timeshift.export.quantize import cpu_has_vnni, quantize_model
from timeshift.models.registry import create_model

VARIANTS = {  # name -> quantize_model options (explicit: the defaults depend on the CPU)
    "uint8 act, 7-bit weights": {"activation_type": "uint8", "reduce_range": True},
    "uint8 act, 8-bit weights": {"activation_type": "uint8", "reduce_range": False},
    "int8 act, 7-bit weights": {"activation_type": "int8", "reduce_range": True},
}


def _videos(folder: Path, count: int = 6) -> Path:
    """``count`` 16-frame videos of random coloured blocks and their list file."""
    import av

    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        path = folder / f"v{i}.mkv"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264rgb", rate=10)
            stream.height = stream.width = 256
            stream.pix_fmt = "rgb24"
            blocks = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
            for image in np.repeat(np.repeat(blocks, 32, axis=1), 32, axis=2):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        lines.append(f"{path.name} 0")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def _model(name: str, online: bool, frames: int, calibration: Path):
    """Random weights, batch norms fitted to the calibration clips: activations then span
    ranges like a trained model's and the logits depend on the input."""
    from timeshift.export.quantize import _clips_dataset

    kwargs = {"direction": "unidirectional"} if online else {}
    model = create_model(name, num_classes=400, num_segments=frames, **kwargs)
    model.checkpoint_meta = {"classes": [str(i) for i in range(400)], "input_size": 224}
    dataset = _clips_dataset(model, calibration, None, None)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # the plain average over the batches
    with torch.no_grad():
        for i in range(len(dataset)):
            model.train()(dataset[i][0][None])
    return model.eval()


def _quantised(model, folder: Path, calibration: Path, online: bool, args) -> dict:
    reports = {}
    for variant, options in VARIANTS.items():
        out = folder / f"{len(reports)}.onnx"
        reports[variant] = quantize_model(
            model,
            out,
            calibration=calibration,
            calibration_clips=args.calibration_clips,
            heldout_clips=args.heldout_clips,
            online=online,
            allow_low_agreement=True,  # random weights: the agreement is reported, not judged
            export_options={"exporter": "legacy"},
            **options,
        )
    return reports


def _runs(reports: dict, online: bool, threads: int) -> dict:
    first = next(iter(reports.values()))
    paths = {"fp32": first.fp32_path} | {v: r.path for v, r in reports.items()}
    if online:
        frame = torch.randn(3, 224, 224)
        runners = {k: OnnxOnlineRecognizer(p, threads=threads) for k, p in paths.items()}
        return {k: (lambda r=r: r.step(frame)) for k, r in runners.items()}
    clips = torch.randn(1, 8, 3, 224, 224)
    runners = {k: OnnxRecognizer(p, threads=threads) for k, p in paths.items()}
    return {k: (lambda r=r: r(clips)) for k, r in runners.items()}


def _report(title: str, reports: dict, runs: dict, rounds: int) -> None:
    ms = interleaved(runs, rounds=rounds, warmup=3, progress=True)
    first = next(iter(reports.values()))
    print(f"\n{title}")
    print(f"  {'fp32':26} {statistics.median(ms['fp32']):8.2f} ms   x1.000   ", end="")
    print(f"{first.fp32_bytes / 1e6:6.1f} MB")
    for variant, report in reports.items():
        ratio = paired_ratio(ms[variant], ms["fp32"])
        print(
            f"  {variant:26} {statistics.median(ms[variant]):8.2f} ms   x{ratio:.3f}   "
            f"{report.int8_bytes / 1e6:6.1f} MB   agreement {report.top1_agreement:.2f} "
            f"(mean |diff| {report.mean_logit_difference:.3g}), calibration "
            f"{report.calibration_seconds:.1f} s, pre-process {report.pre_processed}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", choices=("offline", "online"), default=None)
    parser.add_argument("--calibration", type=Path, help="a list file (default: random videos)")
    parser.add_argument("--calibration-clips", type=int, default=4)
    parser.add_argument("--heldout-clips", type=int, default=2)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"threads: {threads}, VNNI: {cpu_has_vnni()}")
    cases = [("tsm_mobilenet_v2", True), ("tsm_resnet18", True), ("tsm_resnet50", False)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calibration = args.calibration or _videos(folder)
        for name, online in cases:
            if args.only and args.only != ("online" if online else "offline"):
                continue
            model = _model(name, online, 8, calibration)
            reports = _quantised(model, folder / name, calibration, online, args)
            title = f"{name} {'online, one frame' if online else 'offline, 1 x 8 x'} 224"
            _report(title, reports, _runs(reports, online, threads), args.rounds)


if __name__ == "__main__":
    main()
