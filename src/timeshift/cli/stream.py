"""``timeshift stream``: online recognition or detection of a video file, camera or URL.

The command composes the library's stream: the recognised frames of
:func:`~timeshift.online.stream.recognize_stream` (a detector's:
:func:`~timeshift.detection.stream.detect_stream`) go to a JSON-lines file (``--jsonl``), the
printed lines below, the annotated video (``--output``) and the window (``--show``).
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

from timeshift.cli.common import Parents, calibration_arg, load_checkpoint_arg
from timeshift.online.stream import Sink, StreamFrame

__all__ = ["DetectionPrintSink", "PrintSink", "add_parser", "run"]


def add_parser(sub, parents: Parents) -> None:
    p = sub.add_parser(
        "stream",
        help="online recognition or detection of a video file, camera or URL",
        parents=[parents.online_runtime, parents.checkpoint],
    )
    p.add_argument("source", help="video file, camera index (0) or stream URL (rtsp://...)")
    p.add_argument(
        "checkpoint",
        help="recognizer or detector: checkpoint (.pt), online ONNX export (.onnx), or NAME.TAG "
        "of published weights (`timeshift models --pretrained`)",
    )
    p.add_argument("--every", type=int, default=1, help="run the model on every K-th frame (1)")
    p.add_argument("--smooth", type=int, default=8, help="history window in frames (8)")
    p.add_argument(
        "--margin", type=float, default=0.1, help="hysteresis: probability lead to switch (0.1)"
    )
    p.add_argument("--show", action="store_true", help="show the annotated video in a window")
    p.add_argument("--output", help="write the annotated video here (.mp4)")
    p.add_argument("--onnx", action="store_true", help="same as --backend onnxruntime")
    p.add_argument("--drop-future", action="store_true", help="stream a bidirectional model")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--jsonl", help="write one JSON record per processed frame")
    p.add_argument(
        "--quiet", action="store_true", help="print label changes only (detector: classes seen)"
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="detector: draw and print the boxes scoring at least this (0.3); --jsonl has all",
    )
    p.set_defaults(func=run)


class PrintSink(Sink):
    """A line per recognised frame, or per label change with ``quiet``."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.last: str | None = None

    def write(self, frame: StreamFrame) -> None:
        record = frame.record
        if record is None:
            return
        if not self.quiet or record["label"] != self.last:
            when = f"{record['time']:7.2f}s" if record["time"] is not None else ""
            print(
                f"frame {record['frame']:6d} {when}  {record['label']:24} {record['score']:.2f}"
                f"   (this frame: {record['raw_label']} {record['raw_score']:.2f}, "
                f"{record['latency_ms']:.1f} ms)",
                flush=True,
            )
        self.last = record["label"]


class DetectionPrintSink(Sink):
    """A line per processed frame of a detector: its boxes scoring at least
    ``score_threshold``; with ``quiet``, only when the classes seen change."""

    def __init__(self, *, quiet: bool, score_threshold: float) -> None:
        self.quiet = quiet
        self.score_threshold = score_threshold
        self.last: list[str] | None = None
        self.boxes = 0  # boxes printed (and drawn) over the stream

    def write(self, frame: StreamFrame) -> None:
        record = frame.record
        if record is None:
            return
        shown = [d for d in record["detections"] if d["score"] >= self.score_threshold]
        self.boxes += len(shown)
        seen = sorted({d["label"] for d in shown})
        if not self.quiet or seen != self.last:
            when = f"{record['time']:7.2f}s" if record["time"] is not None else ""
            found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in shown[:6])
            more = f" (+{len(shown) - 6})" if len(shown) > 6 else ""
            print(
                f"frame {record['frame']:6d} {when}  {len(shown):3d} boxes  {found}{more}"
                f"   ({record['latency_ms']:.1f} ms)",
                flush=True,
            )
        self.last = seen


def run(args: argparse.Namespace) -> int:
    from timeshift.models.preprocessing import resolve_input_config
    from timeshift.online.stream import JsonLinesSink, run_stream

    with ExitStack() as sinks:
        jsonl = [sinks.enter_context(JsonLinesSink(args.jsonl))] if args.jsonl else []
        recognizer, meta, backend = _stream_recognizer(args)
        if hasattr(recognizer, "detect"):
            from timeshift.detection.stream import detection_inputs

            inputs = detection_inputs(recognizer, size=args.size)
            printer = DetectionPrintSink(quiet=args.quiet, score_threshold=args.score_threshold)
        else:
            inputs = resolve_input_config(meta=meta)
            printer = PrintSink(quiet=args.quiet)
        summary = run_stream(
            args.source,
            recognizer,
            input_size=inputs.input_size,
            classes=meta.get("classes"),
            scale_size=getattr(inputs, "scale_size", None),
            mean=inputs.mean,
            std=inputs.std,
            every=args.every,
            smooth=args.smooth,
            margin=args.margin,
            output=args.output,
            show=args.show,
            max_frames=args.max_frames,
            sinks=[*jsonl, printer],
            score_threshold=args.score_threshold,
        )
    s = summary.as_dict()
    done = "detected" if isinstance(printer, DetectionPrintSink) else "recognised"
    print(
        f"{s['frames_read']} frames read, {s['frames_processed']} {done} ({backend}): "
        f"{s['fps']:.1f} frames/s end to end, model {s['latency_ms_median']:.2f} ms/frame "
        f"median ({s['latency_ms_p90']:.2f} p90); "
        + (
            f"{printer.boxes} boxes scoring >= {args.score_threshold:.2f}"
            if isinstance(printer, DetectionPrintSink)
            else f"{s['label_changes']} label changes, final label: {s['final_label']}"
        )
    )
    if args.output:
        print(f"annotated video: {args.output}")
    return 0


def _stream_recognizer(args: argparse.Namespace):
    """(recognizer, meta, backend) for `stream`: an online ONNX file, or a checkpoint run in
    PyTorch or on onnxruntime (exported once and cached)."""
    from pathlib import Path

    from timeshift.detection.model import Detector
    from timeshift.detection.stream import stream_detector
    from timeshift.engine.backend import online_recognizer
    from timeshift.export import OnnxOnlineRecognizer, read_export_meta
    from timeshift.models.preprocessing import resolve_input_config

    if Path(args.checkpoint).suffix == ".onnx":
        if args.model or args.frames:
            raise ValueError("--model/--frames do not apply to an ONNX export (it is built)")
        if read_export_meta(args.checkpoint).get("task") == "detection":
            recognizer, _ = stream_detector(args.checkpoint)
        elif args.backend == "openvino":
            from timeshift.export.openvino_models import OpenVinoOnlineRecognizer

            precision = "fp32" if args.precision == "int8" else args.precision
            recognizer = OpenVinoOnlineRecognizer(args.checkpoint, precision=precision)
            return recognizer, recognizer.meta, "openvino"
        else:
            recognizer = OnnxOnlineRecognizer(args.checkpoint)
        return recognizer, recognizer.meta, "onnxruntime"
    if args.frames is not None and args.model is None:
        raise ValueError(
            "--frames does not apply to stream: the online model runs frame by frame whatever "
            "its clip length (with --model it sets the num_segments the model is built with)"
        )
    model = load_checkpoint_arg(args).eval()
    if isinstance(model, Detector):  # its own input sizes (maybe (H, W)) and backend rule
        if args.precision != "fp32":
            raise ValueError("detectors stream in fp32 (--precision is for recognizers)")
        detector, backend = stream_detector(
            model,
            backend="onnxruntime" if args.onnx else args.backend,
            drop_future=args.drop_future,
            size=args.size,
        )
        return detector, model.checkpoint_meta, backend
    meta = {**model.checkpoint_meta, **resolve_input_config(model, input_size=args.size).as_meta()}
    recognizer, backend = online_recognizer(
        model,
        backend="onnxruntime" if args.onnx else args.backend,
        memory_format=args.format,
        size=meta["input_size"],
        drop_future=args.drop_future,
        precision=args.precision,
        calibration=calibration_arg(args),
    )
    return recognizer, meta, backend
