"""``timeshift data synth|extract-frames|extract-flow``: write the synthetic dataset, decode
videos to frames, compute their optical flow."""

from __future__ import annotations

import argparse

from timeshift.cli.common import ROOT_HELP, Parents

__all__ = ["add_parser", "run_extract", "run_extract_flow", "run_synth"]


def add_parser(sub, parents: Parents) -> None:
    p = sub.add_parser("data", help="datasets: synthetic data, frame and flow extraction")
    data = p.add_subparsers(dest="data_command", required=True)
    d = data.add_parser("synth", help="write the synthetic temporal dataset")
    d.add_argument("out_dir")
    d.add_argument("--videos-per-class", type=int, default=40, help="training videos per class")
    d.add_argument("--val-videos-per-class", type=int, help="default: a quarter of the above")
    d.add_argument("--size", type=int, default=64, help="frame height and width (even)")
    d.add_argument("--frames", type=int, default=16)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--families", nargs="+", help="motion families (default: all)")
    d.set_defaults(func=run_synth)
    d = data.add_parser("extract-frames", help="decode videos into JPEG frame folders")
    d.add_argument("video_list", help="video list ('path label') or class-per-folder tree")
    d.add_argument("out_dir")
    d.add_argument("--root", help=ROOT_HELP)
    d.add_argument("--short-side", type=int, default=256, help="resize; 0 keeps the size")
    _add_limits(d)
    d.set_defaults(func=run_extract)
    _add_flow_parser(data)


def _add_limits(d: argparse.ArgumentParser) -> None:
    d.add_argument("--workers", type=int, default=1, help="processes")
    d.add_argument(
        "--max-frames",
        type=int,
        default=108_000,
        help="refuse videos with more frames (default: one hour at 30 fps); the frame size "
        "limit is TIMESHIFT_MAX_FRAME_PIXELS (default 4096x4096)",
    )


def _add_flow_parser(data) -> None:
    from timeshift.data.flow import DEFAULT_BOUND, DEFAULT_FLOW_ALGORITHM, FLOW_ALGORITHMS

    d = data.add_parser(
        "extract-flow",
        help="compute optical flow into flow_x/flow_y JPEG folders (TSN dense_flow layout)",
    )
    d.add_argument(
        "video_list",
        help="video list, class-per-folder tree, or rawframe list (img_00001.jpg folders)",
    )
    d.add_argument("out_dir")
    d.add_argument("--root", help=ROOT_HELP)
    d.add_argument(
        "--algorithm",
        choices=FLOW_ALGORITHMS,
        default=DEFAULT_FLOW_ALGORITHM,
        help="dis: fast, any OpenCV (default); farneback; tvl1: what the papers used, needs "
        "timeshift[flow] (OpenCV contrib)",
    )
    d.add_argument(
        "--bound",
        type=float,
        default=DEFAULT_BOUND,
        help="flow beyond +-bound pixels saturates (default %(default)g, the reference's)",
    )
    d.add_argument(
        "--size", type=int, default=256, help="resize to this short side first; 0 keeps the size"
    )
    _add_limits(d)
    d.set_defaults(func=run_extract_flow)


def run_synth(args: argparse.Namespace) -> int:
    from timeshift.data.synthetic import FAMILIES, SyntheticSpec, make_synthetic

    spec = SyntheticSpec(
        videos_per_class=args.videos_per_class,
        val_videos_per_class=(
            args.val_videos_per_class
            if args.val_videos_per_class is not None
            else max(1, args.videos_per_class // 4)
        ),
        size=args.size,
        frames=args.frames,
        seed=args.seed,
        families=tuple(args.families or FAMILIES),
    )
    paths = make_synthetic(args.out_dir, spec)
    print(f"dataset     {paths['root'].resolve()}")
    print(f"train list  {paths['train']}")
    print(f"val list    {paths['val']}")
    print(f"classes     {paths['classes']}")
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from timeshift.data.extract import extract_frames

    result = extract_frames(
        args.video_list,
        args.out_dir,
        root=args.root,
        short_side=args.short_side or None,
        workers=args.workers,
        max_frames=args.max_frames,
    )
    return _report(result)


def run_extract_flow(args: argparse.Namespace) -> int:
    from timeshift.data.flow import extract_flow

    result = extract_flow(
        args.video_list,
        args.out_dir,
        root=args.root,
        algorithm=args.algorithm,
        bound=args.bound,
        short_side=args.size or None,
        workers=args.workers,
        max_frames=args.max_frames,
    )
    return _report(result)


def _report(result) -> int:
    print(
        f"extracted {result.extracted}, already done {result.skipped}, failed "
        f"{len(result.failed)}; list: {result.list_file}"
    )
    if result.failed:  # each was logged by name as it failed
        print(f"failed videos and why: {result.list_file.parent / 'failed.txt'}")
    return 1 if result.failed else 0
