"""``timeshift test`` (accuracy protocols, ensembles, two streams, early recognition),
``timeshift fuse`` (fusing saved scores), ``timeshift predict``."""

from __future__ import annotations

import argparse
import sys

from timeshift.cli.common import ROOT_HELP, Parents, calibration_arg, json_dumps
from timeshift.data.flow import FLOW_ALGORITHMS
from timeshift.data.manifest import MANIFEST_FORMATS, OUTPUT_FORMATS

__all__ = ["add_parser", "run_fuse", "run_predict", "run_test"]


def add_parser(sub, parents: Parents) -> None:
    inference = [parents.inference, parents.json, parents.progress]
    p = sub.add_parser(
        "test", help="evaluate checkpoints on a labelled list or folder", parents=inference
    )
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="list file (videos or rawframes) or folder")
    p.add_argument("--root", help=ROOT_HELP)
    _add_protocol_args(p)
    p.add_argument(
        "--ensemble",
        nargs="+",
        metavar="CHECKPOINT",
        help="more checkpoints whose softmax scores are averaged with the first",
    )
    p.add_argument(
        "--early",
        action="store_true",
        help="early recognition: accuracy after 10%%, 20%%, ... 100%% of each video",
    )
    p.add_argument("--early-steps", type=int, default=10, help="fractions for --early (10)")
    p.add_argument(
        "--online",
        action="store_true",
        help="stream each clip frame by frame through the online model, average the logits",
    )
    p.add_argument(
        "--drop-future",
        action="store_true",
        help="--online for a bidirectional model: zero the channels it takes from the future",
    )
    two_stream = p.add_argument_group(
        "two-stream", "test CHECKPOINT (RGB) with a flow checkpoint and fuse their scores"
    )
    two_stream.add_argument("--flow", metavar="CHECKPOINT", help="the flow stream's checkpoint")
    two_stream.add_argument(
        "--flow-data",
        metavar="LIST",
        help="flow list of the same videos (extract-flow's <list>_flow.txt), matched by name",
    )
    two_stream.add_argument("--flow-root", help="folder the flow list's paths are relative to")
    _add_fusion_args(p)
    p.add_argument(
        "--output", help="directory for metrics, confusion matrix, predictions, scores.npz"
    )
    p.set_defaults(func=run_test)

    p = sub.add_parser(
        "fuse",
        help="fuse the per-video scores of test runs (scores.npz): two streams, ensembles",
        parents=[parents.json],
    )
    p.add_argument("scores", nargs="+", metavar="SCORES", help="scores.npz of timeshift test")
    _add_fusion_args(p)
    p.add_argument("--output", help="directory for the fusion's metrics, predictions, scores")
    p.set_defaults(func=run_fuse)

    p = sub.add_parser("predict", help="top-k classes of videos", parents=inference)
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="*", metavar="VIDEO_OR_DIR")
    p.add_argument("--top-k", type=int, default=5)
    _add_protocol_args(p)
    scale = p.add_argument_group(
        "at scale",
        "every video of a manifest into --output (part files per process, resumable, merged "
        "into predictions.jsonl|parquet and summary.json); runs under torchrun as it is: "
        "torchrun --nproc_per_node P -m timeshift predict CHECKPOINT --manifest M --output OUT",
    )
    scale.add_argument(
        "--manifest",
        help="list file, text file of paths or URLs, JSONL/CSV/Parquet with a 'path' column, "
        "or folder",
    )
    scale.add_argument("--manifest-format", choices=("auto", *MANIFEST_FORMATS), default="auto")
    scale.add_argument("--root", help="folder the manifest's relative paths are relative to")
    scale.add_argument("--output-format", choices=OUTPUT_FORMATS, default="jsonl")
    scale.add_argument(
        "--features", action="store_true", help="add each video's embedding (runs PyTorch)"
    )
    scale.add_argument(
        "--retry-errors", action="store_true", help="redo the videos whose rows are errors"
    )
    scale.add_argument("--flush-every", type=int, default=64, help="rows per flushed write (64)")
    two_stream = p.add_argument_group(
        "two-stream",
        "CHECKPOINT (RGB) with a flow checkpoint, the flow of each video computed on the fly; "
        "the flow settings default to those the flow checkpoint was trained on",
    )
    two_stream.add_argument("--flow", metavar="CHECKPOINT", help="the flow stream's checkpoint")
    two_stream.add_argument(
        "--flow-algorithm", choices=FLOW_ALGORITHMS, help="optical flow method (default: dis)"
    )
    two_stream.add_argument(
        "--flow-bound", type=float, help="flow quantisation bound in pixels (default: 20)"
    )
    two_stream.add_argument(
        "--flow-size", type=int, help="short side frames are resized to first (default: 256)"
    )
    _add_fusion_args(p)
    timeline = p.add_argument_group(
        "timeline",
        "what happens when in long videos: labels of sliding windows (offline models) or of "
        "the frame stream (online models), merged into segments; writes "
        "<OUTPUT>/<video>.timeline.{json,csv,segments.csv,png}",
    )
    timeline.add_argument("--timeline", action="store_true", help="labels over time")
    timeline.add_argument(
        "--window", type=_seconds, help="window length, e.g. 2s, 500ms (default: 2s)"
    )
    timeline.add_argument(
        "--stride", type=_seconds, help="time between window starts, e.g. 1s (default: 1s)"
    )
    timeline.add_argument(
        "--output", help="folder for the timeline files (default: .), or the --manifest job's"
    )
    timeline.add_argument("--fps", type=float, help="frame rate of frame folders")
    p.set_defaults(func=run_predict)


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    """The test protocol flags; each left out takes the checkpoint's recorded protocol."""
    protocol = "default: the checkpoint's recorded test protocol, else"
    p.add_argument("--clips", type=int, help=f"clips per video ({protocol} 1)")
    p.add_argument("--crops", type=int, choices=(1, 3, 10), help=f"crops per clip ({protocol} 1)")
    p.add_argument(
        "--full-res",
        action=argparse.BooleanOptionalAction,
        help=f"crop at the resized size, 256 ({protocol} a 224 centre crop)",
    )
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument(
        "--dense",
        action=argparse.BooleanOptionalAction,
        help=f"dense clips in a 64-frame window ({protocol} uniform segments)",
    )
    sampling.add_argument(
        "--twice", action="store_true", help="add the clip at segment starts (twice_sample)"
    )


def _seconds(text: str) -> float:
    """``--window`` / ``--stride``: a duration (argparse shows the message of a bad one)."""
    from timeshift.engine.timeline import parse_seconds

    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_fusion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fusion-weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one weight per stream / checkpoint / score file (default: TSN's 1 1.5 for RGB "
        "and flow, equal otherwise; 1 1 is the reference TSM's equal weighting)",
    )
    p.add_argument(
        "--fuse",
        choices=("logits", "softmax"),
        help="fuse logits (default for two streams and score files: TSN, reference TSM) or "
        "softmax scores (default for --ensemble)",
    )


def run_test(args: argparse.Namespace) -> int:
    from timeshift.engine.evaluate import evaluate_checkpoints

    if _is_detector(args.checkpoint):
        return _run_detection_test(args)
    if args.early:
        _refuse_fusion_flags(args, "--early")
        return _run_early(args)
    if args.flow or args.flow_data or args.flow_root:
        return _run_two_stream(args)
    fusion = {}
    if args.fuse or args.fusion_weights:
        if not args.ensemble:
            raise ValueError(
                "--fuse / --fusion-weights need several checkpoints: --ensemble, or --flow "
                "CHECKPOINT --flow-data LIST for a two-stream pair"
            )
        fusion = {"fuse": args.fuse or "softmax", "fusion_weights": args.fusion_weights}
    summary = evaluate_checkpoints(
        [args.checkpoint, *(args.ensemble or [])],
        args.data,
        root=args.root,
        **_run_options(args),
        **fusion,
    )
    return _report_test(args, summary)


def _is_detector(checkpoint: str) -> bool:
    """Whether ``checkpoint`` is a timeshift detector (its config's task); anything else,
    unreadable files included, goes the recognition way (whose errors name the problem)."""
    from timeshift.errors import TimeshiftError
    from timeshift.models.checkpoints import read_checkpoint

    if checkpoint.lower().endswith(".onnx"):  # an export: test runs offline recognizers
        return False
    try:
        payload = read_checkpoint(checkpoint)
    except (OSError, ValueError, TimeshiftError):
        return False
    config = payload.get("config") if isinstance(payload, dict) else None
    return isinstance(config, dict) and config.get("task") == "detection"


def _run_detection_test(args: argparse.Namespace) -> int:
    """``timeshift test DETECTOR.pt --data VAL.json|VID_ROOT``: AP50 on whole videos."""
    from timeshift.detection.evaluate import test_detector

    recognition_only = (
        ("--ensemble", args.ensemble), ("--early", args.early), ("--online", args.online),
        ("--flow", args.flow), ("--dense", args.dense), ("--twice", args.twice),
        ("--crops", args.crops not in (None, 1)), ("--clips", args.clips not in (None, 1)),
    )  # fmt: skip
    given = [flag for flag, value in recognition_only if value]
    if given:
        raise ValueError(f"{', '.join(given)}: recognition options, not for a detector")
    summary = test_detector(
        args.checkpoint,
        args.data,
        image_root=args.root,
        output_dir=args.output,
        device=args.device,
        workers=args.workers,
        progress=not args.no_progress,
    )
    if args.json:
        print(json_dumps(summary, indent=1))
        return 0
    print(f"{summary['checkpoint']} on {summary['data']}: {summary['videos']} videos, "
          f"{summary['frames']} frames, {summary['mode']}")  # fmt: skip
    subsets = [k for k in summary if k.startswith("ap") and k != "ap50"]
    print(f"  AP50 {_ap(summary['ap50'])}  " + "  ".join(f"{k} {_ap(summary[k])}" for k in subsets))
    for name, ap in summary["per_class"].items():
        print(f"  {_ap(ap)}  {name}")
    if args.output:
        print(f"wrote metrics.json, per_class.csv, detections.json to {args.output}")
    return 0


def _ap(value) -> str:
    return "  n/a" if value is None or value != value else f"{value:.3f}"


def _refuse_fusion_flags(args: argparse.Namespace, mode: str) -> None:
    flags = (
        ("--flow", args.flow),
        ("--flow-data", args.flow_data),
        ("--fuse", args.fuse),
        ("--fusion-weights", args.fusion_weights),
    )
    given = [flag for flag, value in flags if value]
    if given:
        raise ValueError(f"{' and '.join(given)} cannot be combined with {mode}")


def _run_two_stream(args: argparse.Namespace) -> int:
    from timeshift.engine.evaluate import evaluate_two_stream
    from timeshift.engine.fusion import TSN_WEIGHTS

    if not (args.flow and args.flow_data):
        raise ValueError(
            "a two-stream test needs both --flow CHECKPOINT and --flow-data LIST (the flow list "
            "of the same videos, e.g. extract-flow's val_flow.txt)"
        )
    if args.ensemble:
        raise ValueError("--ensemble cannot be combined with --flow; fuse saved scores instead")
    summary = evaluate_two_stream(
        args.checkpoint,
        args.data,
        args.flow,
        args.flow_data,
        rgb_root=args.root,
        flow_root=args.flow_root,
        weights=args.fusion_weights or (TSN_WEIGHTS["rgb"], TSN_WEIGHTS["flow"]),
        mode=args.fuse or "logits",
        **_run_options(args),
    )
    return _report_test(args, summary)


def _report_test(args: argparse.Namespace, summary: dict) -> int:
    if args.json:
        print(json_dumps(summary))
    else:
        _print_test(summary)
        if args.output and "output_error" not in summary:
            print(
                "metrics.json, per_class.csv, confusion.csv/png, predictions.json, "
                f"scores*.npz in {args.output}"
            )
    return _output_status(summary.get("output_error"))


def run_fuse(args: argparse.Namespace) -> int:
    from timeshift.engine.evaluate import fuse_saved_scores

    summary = fuse_saved_scores(
        args.scores,
        weights=args.fusion_weights,
        mode=args.fuse or "logits",
        output_dir=args.output,
    )
    return _report_test(args, summary)


def _run_options(args: argparse.Namespace) -> dict:
    """The keyword arguments every test run takes from the command line."""
    return {
        "options": _eval_options(args),
        "output_dir": args.output,
        "device": args.device,
        "progress": not args.no_progress,
    }


def _predict_options(args: argparse.Namespace) -> dict:
    """What ``predict`` (of videos or of a manifest) takes from the command line: the top-k,
    the test protocol and how the model runs."""
    return {
        "top_k": args.top_k,
        "clips": args.clips,
        "crops": args.crops,
        "full_res": args.full_res,
        "dense": args.dense,
        "twice": args.twice,
        "precision": args.precision,
        "calibration": calibration_arg(args),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": args.device,
        "backend": args.backend,
        "memory_format": args.format,
        "progress": not args.no_progress,
    }


def _eval_options(args: argparse.Namespace):
    from timeshift.engine.evaluate import EvalOptions

    return EvalOptions(
        clips=args.clips,
        crops=args.crops,
        full_res=args.full_res,
        dense=args.dense,
        twice=args.twice,
        precision=args.precision,
        calibration=calibration_arg(args),
        batch_size=args.batch_size,
        workers=args.workers,
        online=args.online or args.drop_future,
        drop_future=args.drop_future,
        backend=args.backend,
        memory_format=args.format,
    )


def _run_early(args: argparse.Namespace) -> int:
    """``test --early``: accuracy after observing the first part of each video."""
    from timeshift.engine.evaluate import early_recognition

    rows = early_recognition(
        [args.checkpoint, *(args.ensemble or [])],
        args.data,
        fractions=[k / args.early_steps for k in range(1, args.early_steps + 1)],
        root=args.root,
        **_run_options(args),
    )
    output_error = next((r["output_error"] for r in rows if "output_error" in r), None)
    if args.json:
        print(json_dumps(rows))
    else:
        print("early recognition: accuracy after observing the first part of each video")
        print(f"  {'observed':>8} {'top-1':>7} {'top-5':>7}")
        for r in rows:
            print(f"  {100 * r['observed']:7.0f}% {r['top1']:7.4f} {r['top5']:7.4f}")
        if args.output and not output_error:
            print(f"early.csv, early.json, early.png in {args.output}")
    return _output_status(output_error)


def _print_test(summary: dict) -> None:
    protocol = summary.get("protocol")
    if protocol is None:  # fused score files
        print(f"{summary['samples']} videos")
    else:
        print(
            f"{summary['samples']} videos ({summary['unreadable']} unreadable), protocol "
            f"{protocol['clips']} {'dense ' if protocol['dense'] else ''}clip(s)"
            f"{' (twice)' if protocol['twice'] else ''} x {protocol['crops']} crop(s)"
            f"{' full-res' if protocol['full_res'] else ''}"
        )
    if "streams" in summary:
        _print_streams(summary)
    else:
        print(
            f"  top-1 {summary['top1']:.4f}   top-5 {summary['top5']:.4f}   mean class accuracy "
            f"{summary['mean_class_accuracy']:.4f}"
        )
    print(f"  {'class':32} {'videos':>7} {'accuracy':>9}")
    for name, support, acc in zip(
        summary["classes"], summary["support"], summary["per_class"], strict=True
    ):
        shown = "-" if acc != acc else f"{acc:.3f}"  # NaN: no video of that class
        print(f"  {name[:32]:32} {support:7d} {shown:>9}")


def _print_streams(summary: dict) -> None:
    """Each stream's (or score file's) metrics and the fusion's."""
    fusion = summary["fusion"]
    weights = " : ".join(f"{w:g}" for w in fusion["weights"])
    rows = [*summary["streams"].items(), (f"fused ({fusion['mode']}, {weights})", summary)]
    width = max(24, *(len(name) for name, _ in rows))
    print(f"  {'':{width}} {'top-1':>7} {'top-5':>7} {'mean class':>10}")
    for name, m in rows:
        print(
            f"  {name:{width}} {m['top1']:7.4f} {m['top5']:7.4f} {m['mean_class_accuracy']:10.4f}"
        )


def _output_status(error: str | None) -> int:
    """Exit status of a finished evaluation: 1 when its files could not be written (the result
    was printed all the same)."""
    if error:
        print(f"timeshift: error: {error}; the result above was not saved", file=sys.stderr)
        return 1
    return 0


def _flow_settings(args: argparse.Namespace):
    """The flow settings the flags give (``None``: none given, the checkpoint's are used)."""
    from dataclasses import replace

    from timeshift.data.flow import FlowSettings

    given = {
        "algorithm": args.flow_algorithm,
        "bound": args.flow_bound,
        "short_side": args.flow_size,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    return replace(FlowSettings(), **given)


def run_predict(args: argparse.Namespace) -> int:
    from timeshift.engine.predict import predict_videos

    if args.manifest is not None:
        return _run_manifest(args)
    given = [f"--{n.replace('_', '-')}" for n in _SCALE_FLAGS if getattr(args, n)]
    if given:
        raise ValueError(f"{', '.join(given)}: for --manifest only")
    if not args.inputs:
        raise ValueError("give videos or folders to predict, or --manifest")
    if args.timeline:
        return _run_timeline(args)
    given = [f"--{n}" for n in ("window", "stride", "output", "fps") if getattr(args, n)]
    if given:
        raise ValueError(f"{', '.join(given)}: for --timeline only (add --timeline)")
    results = predict_videos(
        args.checkpoint,
        args.inputs,
        **_predict_options(args),
        flow_checkpoint=args.flow,
        flow_settings=_flow_settings(args),
        fusion_weights=args.fusion_weights,
        fuse=args.fuse or "logits",
    )
    if args.json:
        print(json_dumps(results, indent=1))
    else:
        for item in results:
            print(item["path"])
            if "error" in item:
                print(f"  error: {item['error']}")
                continue
            for entry in item["top"]:
                print(f"  {entry['score']:.3f}  {entry['label']}")
            for name, top in item.get("streams", {}).items():
                print(f"  ({name} alone: {top[0]['score']:.3f}  {top[0]['label']})")
    return _status(results, "no input could be predicted")


_SCALE_FLAGS = ("root", "features", "retry_errors")


def _run_manifest(args: argparse.Namespace) -> int:
    from timeshift.engine.scale import predict_manifest

    if args.inputs:
        raise ValueError("give videos or --manifest, not both")
    if args.output is None:
        raise ValueError("--manifest needs --output: the folder of the part files and results")
    flags = [f"--{n.replace('_', '-')}" for n in _TWO_STREAM_FLAGS if getattr(args, n)]
    if flags:
        raise ValueError(f"{', '.join(flags)}: not with --manifest (one model, top-k rows)")
    timeline = None
    if args.timeline:  # each row gets the video's labelled segments
        timeline = {k: getattr(args, k) for k in ("window", "stride", "fps") if getattr(args, k)}
    elif args.window or args.stride or args.fps:
        raise ValueError("--window, --stride, --fps: for --timeline only (add --timeline)")
    summary = predict_manifest(
        args.checkpoint,
        args.manifest,
        args.output,
        output_format=args.output_format,
        manifest_format=args.manifest_format,
        root=args.root,
        features=args.features,
        retry_errors=args.retry_errors,
        flush_every=args.flush_every,
        **_predict_options(args),
        timeline=timeline,
    )
    if "videos" not in summary:  # not rank 0: its own share's statistics
        return 0
    if args.json:
        print(json_dumps(summary, indent=1))
    else:
        run = summary["this_run"]
        print(
            f"{summary['videos']} videos predicted, {summary['failed']} failed: "
            f"{args.output}/{summary['predictions']}"
        )
        if run["videos_per_s"] is not None:
            print(
                f"this run: {run['videos']} videos in {run['seconds']:.1f} s "
                f"({run['videos_per_s']:.2f} videos/s, {run['processes']} processes; decode "
                f"{run['decode_seconds']:.1f} s, model {run['model_seconds']:.1f} s), "
                f"{run['skipped_already_written']} already written"
            )
    return 0 if summary["videos"] or not summary["failed"] else 1


_PROTOCOL_FLAGS = ("clips", "crops", "full_res", "dense", "twice")
_TWO_STREAM_FLAGS = ("flow", "flow_algorithm", "flow_bound", "flow_size", "fusion_weights", "fuse")


def _run_timeline(args: argparse.Namespace) -> int:
    """``predict --timeline``: a timeline per video, written to files; the segments printed."""
    from timeshift.engine.timeline import predict_timelines

    given = [f"--{n.replace('_', '-')}" for n in _TWO_STREAM_FLAGS if getattr(args, n)]
    if given:
        raise ValueError(
            f"{', '.join(given)} cannot be used with --timeline: a timeline is made by one RGB "
            "model (a flow stream would need the flow of the whole video computed on the "
            "fly); drop the flag and give the RGB checkpoint"
        )
    protocol = [f"--{n.replace('_', '-')}" for n in _PROTOCOL_FLAGS if getattr(args, n)]
    if protocol:
        raise ValueError(
            f"{', '.join(protocol)}: a timeline scores one centre-cropped clip per window "
            "(--window/--stride set its sampling); these flags are for whole videos"
        )
    results = predict_timelines(
        args.checkpoint,
        args.inputs,
        output_dir=args.output or ".",
        window=2.0 if args.window is None else args.window,
        stride=1.0 if args.stride is None else args.stride,
        top_k=args.top_k,
        batch_size=args.batch_size,
        device=args.device,
        backend=args.backend,
        memory_format=args.format,
        precision=args.precision,
        calibration=calibration_arg(args),
        fps=args.fps,
        progress=not args.no_progress,
    )
    if args.json:
        print(json_dumps([_timeline_entry(item) for item in results], indent=1))
    else:
        for item in results:
            _print_timeline(item)
    return _status(results, "no timeline could be made")


def _status(results: list[dict], nothing: str) -> int:
    """1 when every input failed (each error was printed with its input), else 0."""
    failed = sum("error" in item for item in results)
    if failed == len(results):
        print(f"timeshift: error: {nothing} ({failed} errors, listed above)", file=sys.stderr)
        return 1
    return 0


def _timeline_entry(item: dict) -> dict:
    if "error" in item:
        return item
    files = {kind: str(path) for kind, path in item["files"].items()}
    return {"path": item["path"], "files": files, "timeline": item["timeline"].as_dict()}


def _print_timeline(item: dict) -> None:
    print(item["path"])
    if "error" in item:
        print(f"  error: {item['error']}")
        return
    timeline = item["timeline"]
    print(
        f"  {timeline.duration:.1f} s, {len(timeline.windows)} windows ({timeline.mode}), "
        f"{len(timeline.segments)} segments:"
    )
    for s in timeline.segments:
        print(f"  {_clock(s['start']):>9} - {_clock(s['end']):>9}  {s['score']:.3f}  {s['label']}")
    print(f"  files: {', '.join(str(p) for p in item['files'].values())}")


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:06.3f}"
