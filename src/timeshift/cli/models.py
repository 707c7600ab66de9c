"""``timeshift info`` and ``timeshift models``: what the registry holds and what a model costs."""

from __future__ import annotations

import argparse
import json

from timeshift.cli.common import Parents

__all__ = ["add_info_parser", "add_models_parser", "run_info", "run_models"]


def add_info_parser(sub, parents: Parents) -> None:
    p = sub.add_parser("info", help="parameters, MACs and temporal modules of a model")
    p.add_argument("name", help="registered model name (see `timeshift models`)")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--frames", type=int, required=True, help="frames per clip (num_segments)")
    p.add_argument("--size", type=int, default=224, help="input height/width (default 224)")
    p.add_argument("--direction", choices=("bidirectional", "unidirectional"))
    p.add_argument("--json", action="store_true", help="raw numbers as JSON")
    p.set_defaults(func=run_info)


def add_models_parser(sub, parents: Parents) -> None:
    p = sub.add_parser("models", help="list registered models", parents=[parents.json])
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'tsm_*'")
    p.set_defaults(func=run_models)


def run_info(args: argparse.Namespace) -> int:
    import torch

    from timeshift.bench.complexity import model_complexity
    from timeshift.models.registry import create_model, model_info

    kwargs = {}
    if args.direction:
        kwargs["direction"] = args.direction
    # build on the meta device: nothing is allocated or computed, any model size is instant
    with torch.device("meta"):
        model = create_model(
            args.name, num_classes=args.num_classes, num_segments=args.frames, **kwargs
        )
    c = model_complexity(model, frames=args.frames, input_size=args.size)
    info = model_info(args.name)
    if args.json:
        print(json.dumps({"model": args.name, "num_classes": args.num_classes, **c.as_dict()}))
        return 0
    print(f"{args.name}  ({info.paper or info.family})")
    print(f"  input              {args.frames} x 3 x {args.size} x {args.size}")
    print(f"  classes            {args.num_classes}")
    print(f"  parameters         {c.params:,}")
    print(
        f"  MACs per clip      {_format_count(c.macs)}  ({_format_count(c.macs_per_frame)} per"
        " frame; the papers call MACs 'FLOPs')"
    )
    print(f"  temporal modules   {c.temporal_modules}")
    if c.cache_tensors:
        print(
            f"  online cache       {c.cache_tensors} tensors, {c.cache_floats:,} floats"
            f" ({c.cache_floats * 4 / 1024:.1f} KiB fp32) per stream"
        )
    return 0


def run_models(args: argparse.Namespace) -> int:
    from timeshift.models.registry import list_models, model_info

    names = list_models(args.pattern)
    if args.json:
        print(json.dumps(names))
        return 0
    for name in names:
        print(f"{name:28} {model_info(name).backbone}")
    return 0


def _format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))
