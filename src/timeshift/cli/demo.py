"""``timeshift demo``: train TSN and TSM (or every temporal module) on the synthetic dataset."""

from __future__ import annotations

import argparse

from timeshift.cli.common import Parents

__all__ = ["add_parser", "run"]


def add_parser(sub, parents: Parents) -> None:
    p = sub.add_parser(
        "demo",
        help="train TSN and TSM on the synthetic dataset and compare",
        parents=[parents.progress],
    )
    p.add_argument("--output", help="default runs/demo (runs/demo-all with --all/--models)")
    p.add_argument("--full", action="store_true", help="longer training, tighter numbers")
    p.add_argument(
        "--all",
        action="store_true",
        help="every temporal module (TSN, TSM, VSN, STSM, TAM, bLVNet-TAM, I3D-replace) on one "
        "narrow bottleneck ResNet-50, with accuracy-vs-cost charts (about 75 minutes on 2 "
        "cores at 20 epochs)",
    )
    p.add_argument("--models", nargs="+", metavar="NAME", help="a subset of the --all rows")
    p.add_argument(
        "--two-stream",
        action="store_true",
        help="extract optical flow, train TSN and TSM on RGB and on flow, fuse each pair "
        "(TSM Tables 2-3 at demo scale)",
    )
    p.add_argument(
        "--detection",
        action="store_true",
        help="train a per-frame 2D detector and the online TSM detector on the synthetic "
        "video-detection set, AP50 where the class cue drops out (TSM Table 7 at demo scale)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="training epochs per model (default: the recipes', 20; 12 for --detection)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from timeshift.engine.demo import format_results, run_demo

    if args.two_stream:
        return _run_two_stream(args)
    if args.detection:
        return _run_detection(args)
    variants = "all" if args.all else (args.models or "main")
    output = args.output or ("runs/demo-all" if variants != "main" else "runs/demo")
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else None
    results = run_demo(
        output,
        full=args.full,
        progress=not args.no_progress,
        variants=variants,
        overrides=overrides,
    )
    print(format_results(results))
    return 0


def _run_two_stream(args: argparse.Namespace) -> int:
    from timeshift.engine.demo_two_stream import format_two_stream, run_two_stream_demo

    if args.all or args.models or args.full:
        raise ValueError("--two-stream trains its own four models: drop --all/--models/--full")
    results = run_two_stream_demo(
        args.output or "runs/demo-two-stream",
        progress=not args.no_progress,
        overrides=[f"train.epochs={args.epochs}"] if args.epochs else None,
    )
    print(format_two_stream(results))
    return 0


def _run_detection(args: argparse.Namespace) -> int:
    from timeshift.detection.demo import format_detection, run_detection_demo

    if args.all or args.models or args.full or args.two_stream:
        raise ValueError("--detection trains its own two detectors: drop the other demo flags")
    results = run_detection_demo(
        args.output or "runs/demo-detection",
        progress=not args.no_progress,
        overrides=[f"train.epochs={args.epochs}"] if args.epochs else None,
    )
    print(format_detection(results))
    return 0
