"""``timeshift test`` (accuracy protocols, ensembles, early recognition), ``timeshift predict``."""

from __future__ import annotations

import argparse
import sys

from timeshift.cli.common import ROOT_HELP, Parents, json_dumps

__all__ = ["add_parser", "run_predict", "run_test"]


def add_parser(sub, parents: Parents) -> None:
    inference = [parents.inference, parents.json, parents.progress]
    p = sub.add_parser(
        "test", help="evaluate checkpoints on a labelled list or folder", parents=inference
    )
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="list file (videos or rawframes) or folder")
    p.add_argument("--root", help=ROOT_HELP)
    p.add_argument("--clips", type=int, default=1)
    p.add_argument("--crops", type=int, choices=(1, 3, 10), default=1)
    p.add_argument("--full-res", action="store_true", help="crop at the resized size (256)")
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--dense", action="store_true")
    sampling.add_argument("--twice", action="store_true")
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
    p.add_argument("--output", help="directory for metrics, confusion matrix, predictions")
    p.set_defaults(func=run_test)

    p = sub.add_parser("predict", help="top-k classes of videos", parents=inference)
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_DIR")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=run_predict)


def run_test(args: argparse.Namespace) -> int:
    from timeshift.engine.evaluate import evaluate_checkpoints

    if args.early:
        return _run_early(args)
    summary = evaluate_checkpoints(
        [args.checkpoint, *(args.ensemble or [])],
        args.data,
        root=args.root,
        options=_eval_options(args),
        output_dir=args.output,
        device=args.device,
        progress=not args.no_progress,
    )
    if args.json:
        print(json_dumps(summary))
    else:
        _print_test(summary)
        if args.output and "output_error" not in summary:
            print(
                f"metrics.json, per_class.csv, confusion.csv/png, predictions.json in {args.output}"
            )
    return _output_status(summary.get("output_error"))


def _eval_options(args: argparse.Namespace):
    from timeshift.engine.evaluate import EvalOptions

    return EvalOptions(
        clips=args.clips,
        crops=args.crops,
        full_res=args.full_res,
        dense=args.dense,
        twice=args.twice,
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
        options=_eval_options(args),
        output_dir=args.output,
        device=args.device,
        progress=not args.no_progress,
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
    print(
        f"{summary['samples']} videos ({summary['unreadable']} unreadable), protocol "
        f"{summary['protocol']['clips']} clip(s) x {summary['protocol']['crops']} crop(s)"
        f"{' full-res' if summary['protocol']['full_res'] else ''}"
    )
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


def _output_status(error: str | None) -> int:
    """Exit status of a finished evaluation: 1 when its files could not be written (the result
    was printed all the same)."""
    if error:
        print(f"timeshift: error: {error}; the result above was not saved", file=sys.stderr)
        return 1
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from timeshift.engine.evaluate import predict_videos

    results = predict_videos(
        args.checkpoint,
        args.inputs,
        top_k=args.top_k,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        backend=args.backend,
        memory_format=args.format,
        progress=not args.no_progress,
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
    failed = sum("error" in item for item in results)
    if failed == len(results):
        print(
            f"timeshift: error: no input could be predicted ({failed} errors, listed above)",
            file=sys.stderr,
        )
        return 1
    return 0
