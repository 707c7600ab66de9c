"""What several subcommands share: parent parsers for the common flags and small helpers."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from timeshift.engine.backend import BACKENDS, FORMATS, PRECISIONS

__all__ = [
    "ROOT_HELP",
    "Parents",
    "build_parents",
    "calibration_arg",
    "json_dumps",
    "load_checkpoint_arg",
]

ROOT_HELP = "folder the list's paths are relative to (default: the list's folder)"
ONLINE_BACKENDS = ("auto", "eager", "onnxruntime", "openvino")


@dataclass(frozen=True)
class Parents:
    """Parent parsers (argparse ``parents=``) for the flags that several subcommands share."""

    json: argparse.ArgumentParser  # --json
    progress: argparse.ArgumentParser  # --no-progress
    inference: argparse.ArgumentParser  # batch size, workers, device, backend, format
    online_runtime: argparse.ArgumentParser  # backend and format of a streaming model
    checkpoint: argparse.ArgumentParser  # a checkpoint in any supported format, its frame size


def build_parents() -> Parents:
    json = _parent()
    json.add_argument("--json", action="store_true")
    progress = _parent()
    progress.add_argument("--no-progress", action="store_true")
    inference = _parent()
    inference.add_argument("--batch-size", type=int, default=4)
    inference.add_argument("--workers", type=int, default=2)
    inference.add_argument("--device", default="cpu")
    _add_runtime_args(inference, backends=BACKENDS)
    _add_precision_args(inference)
    online_runtime = _parent()
    _add_runtime_args(online_runtime, backends=ONLINE_BACKENDS)
    _add_precision_args(online_runtime)
    return Parents(
        json=json,
        progress=progress,
        inference=inference,
        online_runtime=online_runtime,
        checkpoint=_checkpoint_parent(),
    )


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _add_precision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default: exact to PyTorch), bf16 (OpenVINO's hint), int8 (a statically "
        "quantised export, calibrated on --calibration clips and cached; its agreement with "
        "fp32 is logged)",
    )
    p.add_argument(
        "--calibration",
        metavar="LIST",
        help="int8: clips to calibrate on (a list file of your data, e.g. the training list)",
    )
    p.add_argument(
        "--calibration-clips", type=int, default=32, help="int8: clips calibrated on (32)"
    )


def calibration_arg(args: argparse.Namespace):
    """The :class:`~timeshift.engine.backend.Calibration` of ``--calibration``, or ``None``."""
    from timeshift.engine.backend import Calibration

    if args.calibration is None:  # int8 without it: an int8 export, or the error says so
        return None
    if args.precision != "int8":
        raise ValueError("--calibration is for --precision int8")
    return Calibration(
        args.calibration,
        clips=args.calibration_clips,
        progress=not getattr(args, "no_progress", False),
    )


def _add_runtime_args(p: argparse.ArgumentParser, *, backends: tuple[str, ...]) -> None:
    p.add_argument(
        "--backend",
        choices=backends,
        default="auto",
        help="how the model runs; auto: the fastest measured on CPU, onnxruntime when installed "
        "(exported once, cached in ~/.cache/timeshift), else PyTorch (see docs/benchmarks.md)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="PyTorch memory format (auto: channels_last)",
    )


def _checkpoint_parent() -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument(
        "--model",
        help="build this registered model and load CHECKPOINT in any supported format "
        "(reference TSM, MMAction2, torchvision); default: CHECKPOINT is a timeshift checkpoint",
    )
    p.add_argument("--num-classes", type=int, help="with --model")
    p.add_argument(
        "--frames",
        type=int,
        help="frames per clip (num_segments): default the checkpoint's, 8 with --model; "
        "another value rebuilds the model for it (TSN/TSM/TAM weights do not depend on it)",
    )
    p.add_argument("--direction", choices=("bidirectional", "unidirectional"), help="with --model")
    p.add_argument("--size", type=int, help="frame size (default: the checkpoint's)")
    return p


def json_dumps(value, **kwargs) -> str:
    """Strict JSON (NaN -> null) for ``--json`` output."""
    from timeshift.engine.metrics import json_dumps as dumps

    return dumps(value, **kwargs)


def load_checkpoint_arg(args: argparse.Namespace):
    """CHECKPOINT of ours, or any supported format with --model/--num-classes/--frames.

    ``--frames`` without ``--model`` rebuilds our checkpoint's model for that many frames
    (default: the checkpoint's)."""
    from timeshift.models.checkpoints import load_model

    if args.model is None and (args.num_classes is not None or args.direction):
        given = "--num-classes" if args.num_classes is not None else "--direction"
        raise ValueError(
            f"{given} applies with --model only (a timeshift checkpoint stores its classes and "
            "options); to change the class count, fine-tune with train"
        )
    kwargs = {"direction": args.direction} if args.direction else {}
    return load_model(
        args.checkpoint,
        name=args.model,
        num_classes=args.num_classes,
        num_segments=args.frames,
        **kwargs,
    )
