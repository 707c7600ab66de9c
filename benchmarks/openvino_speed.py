"""OpenVINO vs onnxruntime vs eager PyTorch on this CPU, side by side in one run.

Offline: TSM-ResNet50, one clip of 8 x 224 x 224 (eager, onnxruntime fp32, OpenVINO fp32 and
bf16). Online, per frame at 224: TSM-MobileNetV2 and TSM-ResNet18 (unidirectional shift), the
same four plus ``OV raw`` (the compiled request alone, its tensors set once: the gap to
``OV fp32`` is the per-frame overhead of ``OpenVinoOnlineRecognizer.step``). ``--int8`` adds a
static QDQ quantisation of each export (per-channel, random calibration clips: for speed only)
on onnxruntime and on OpenVINO. Random weights; median ms over interleaved rounds and the paired
ratio to onnxruntime fp32. The precision OpenVINO really used is printed (bf16 falls back to
fp32 on CPUs without bf16 instructions).

    python benchmarks/openvino_speed.py [--rounds 20] [--size 224] [--int8] [--only online]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from timeshift.bench.timing import interleaved, paired_ratio
from timeshift.export import OnnxOnlineRecognizer, OnnxRecognizer, export_model
from timeshift.export.openvino_models import OpenVinoOnlineRecognizer, OpenVinoRecognizer
from timeshift.models.registry import create_model
from timeshift.online import OnlineRecognizer


def _quantised(path: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    out = path.with_name(path.stem + "-int8.onnx")
    quantize_static(
        path,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


def _offline(folder: Path, args, threads: int) -> dict:
    model = create_model("tsm_resnet50", num_classes=400, num_segments=8).eval()
    model.set_channels_last(True)  # the eager backend's default layout
    path = folder / "tsm_resnet50.onnx"
    export_model(model, path, size=args.size, exporter="legacy")
    clips = torch.randn(1, 8, 3, args.size, args.size)
    runners = {"ORT fp32": OnnxRecognizer(path, threads=threads, spinning=False)}
    for precision in ("fp32", "bf16"):
        runner = OpenVinoRecognizer(path, precision=precision, threads=threads)
        runners[f"OV {precision} (runs {runner.precision})"] = runner
    if args.int8:
        feeds = [{"video": torch.randn_like(clips).numpy()} for _ in range(4)]
        quantised = _quantised(path, feeds)
        runners["ORT int8"] = OnnxRecognizer(quantised, threads=threads, spinning=False)
        runners["OV int8"] = OpenVinoRecognizer(quantised, threads=threads)
    runs = {"eager": lambda: model(clips)}
    return runs | {key: (lambda r=r: r(clips)) for key, r in runners.items()}


def _raw_step(runner: OpenVinoOnlineRecognizer, frame: torch.Tensor):
    """One of the runner's requests with its tensors bound once, run again and again: the
    inference alone, none of ``step``'s per-frame work."""
    runner.step(frame)  # binds the frame and the caches
    request = runner._slots[1].request
    # the closure holds the runner: the request writes into the runner's numpy buffers
    return lambda: (runner, request.infer())


def _online(folder: Path, name: str, args, threads: int) -> dict:
    model = create_model(name, num_classes=400, num_segments=8, direction="unidirectional")
    model = model.eval()
    path = folder / f"{name}-online.onnx"
    export_model(model, path, online=True, size=args.size, exporter="legacy")
    frame = torch.randn(3, args.size, args.size)
    model.set_channels_last(True)
    eager = OnlineRecognizer(model)
    runners = {"ORT fp32": OnnxOnlineRecognizer(path, threads=threads, spinning=False)}
    for precision in ("fp32", "bf16"):
        runner = OpenVinoOnlineRecognizer(path, precision=precision, threads=threads)
        runners[f"OV {precision} (runs {runner.precision})"] = runner
    if args.int8:
        feeds = _online_feeds(frame, path)
        quantised = _quantised(path, feeds)
        runners["ORT int8"] = OnnxOnlineRecognizer(quantised, threads=threads, spinning=False)
        runners["OV int8"] = OpenVinoOnlineRecognizer(quantised, threads=threads)
    runs = {"eager": lambda: eager.step(frame)}
    runs |= {key: (lambda r=r: r.step(frame)) for key, r in runners.items()}
    raw = OpenVinoOnlineRecognizer(path, threads=threads)
    runs["OV raw fp32"] = _raw_step(raw, frame)
    return runs


def _online_feeds(frame: torch.Tensor, path: Path) -> list[dict[str, np.ndarray]]:
    """Calibration feeds for an online graph: random frames with the caches they produce."""
    from timeshift.export import read_export_meta

    shapes = read_export_meta(path)["cache_shapes"]
    runner = OnnxOnlineRecognizer(path)
    feeds = []
    for _ in range(4):
        caches = runner.cache or [np.zeros((1, *s), np.float32) for s in shapes]
        fresh = torch.randn_like(frame)[None].numpy()
        feeds.append({"frame": fresh} | {f"cache_{i}": c.copy() for i, c in enumerate(caches)})
        runner.step(fresh)
    return feeds


def _report(title: str, runs: dict, rounds: int) -> None:
    with torch.inference_mode():
        ms = interleaved(runs, rounds=rounds, warmup=3, progress=True)
    print(f"\n{title}")
    for name, samples in ms.items():
        ratio = paired_ratio(samples, ms["ORT fp32"])
        print(f"  {name:24} {statistics.median(samples):8.2f} ms   x{ratio:.3f} ORT fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--int8", action="store_true", help="add static QDQ int8 exports")
    parser.add_argument("--only", choices=("offline", "online"), default=None)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"threads: {threads}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.only != "offline":
            for name in ("tsm_mobilenet_v2", "tsm_resnet18"):
                runs = _online(folder, name, args, threads)
                _report(f"online {name}, one frame {args.size}", runs, args.rounds)
        if args.only != "online":
            runs = _offline(folder, args, threads)
            _report(f"offline tsm_resnet50, 1 x 8 x {args.size}", runs, args.rounds)


if __name__ == "__main__":
    main()
