"""``timeshift data synth|extract-frames``: write the synthetic dataset, decode videos to frames."""

from __future__ import annotations

import argparse

from timeshift.cli.common import ROOT_HELP, Parents

__all__ = ["add_parser", "run_extract", "run_synth"]


def add_parser(sub, parents: Parents) -> None:
    p = sub.add_parser("data", help="datasets: synthetic data, frame extraction")
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
    d.add_argument("--workers", type=int, default=1)
    d.add_argument(
        "--max-frames",
        type=int,
        default=108_000,
        help="refuse videos with more frames (default: one hour at 30 fps); the frame size "
        "limit is TIMESHIFT_MAX_FRAME_PIXELS (default 4096x4096)",
    )
    d.set_defaults(func=run_extract)


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
    print(
        f"extracted {result.extracted}, already done {result.skipped}, failed "
        f"{len(result.failed)}; list: {result.list_file}"
    )
    return 1 if result.failed else 0
