"""``timeshift info`` and ``timeshift models``: what the registry holds and what a model costs."""

from __future__ import annotations

import argparse
import json
import sys

from timeshift.cli.common import Parents

__all__ = [
    "add_fetch_parser",
    "add_info_parser",
    "add_models_parser",
    "run_fetch",
    "run_info",
    "run_models",
]


def add_info_parser(sub, parents: Parents) -> None:
    p = sub.add_parser(
        "info",
        help="parameters, MACs and temporal modules of a model; the metadata of published weights",
    )
    p.add_argument(
        "name",
        help="registered model name (see `timeshift models`), or NAME.TAG of published weights "
        "(see `timeshift models --pretrained`)",
    )
    p.add_argument("--num-classes", type=int, help="classifier outputs (NAME.TAG: its own)")
    p.add_argument("--frames", type=int, help="frames per clip, num_segments (NAME.TAG: its own)")
    p.add_argument("--size", type=int, help="input height/width (default 224; NAME.TAG: its own)")
    p.add_argument("--direction", choices=("bidirectional", "unidirectional"))
    p.add_argument("--json", action="store_true", help="raw numbers as JSON")
    p.set_defaults(func=run_info)


def add_models_parser(sub, parents: Parents) -> None:
    p = sub.add_parser("models", help="list registered models", parents=[parents.json])
    p.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'tsm_*'")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list the published weights (NAME.TAG) with their reported accuracy",
    )
    p.set_defaults(func=run_models)


def add_fetch_parser(sub, parents: Parents) -> None:
    p = sub.add_parser(
        "fetch",
        help="download published weights into the cache (for machines without internet later)",
        parents=[parents.progress],
    )
    p.add_argument("names", nargs="+", metavar="NAME.TAG", help="e.g. tsm_resnet50.kinetics400_8f")
    p.set_defaults(func=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    """Every name is tried; the paths of those fetched are printed, the failures named."""
    from timeshift.errors import TimeshiftError
    from timeshift.models.pretrained import fetch_pretrained, pretrained_entry

    for name in args.names:
        pretrained_entry(name)  # an unknown name fails before any download
    failed = 0
    for name in args.names:
        try:
            print(f"{name}  {fetch_pretrained(name, progress=not args.no_progress)}")
        except (TimeshiftError, OSError) as exc:  # one failure does not stop the others
            failed += 1
            print(f"{name}  error: {exc}", file=sys.stderr)
    return 2 if failed else 0


def run_info(args: argparse.Namespace) -> int:
    import torch

    from timeshift.bench.complexity import model_complexity
    from timeshift.models.pretrained import is_pretrained_name, pretrained_entry
    from timeshift.models.registry import create_model, model_info

    entry = pretrained_entry(args.name) if is_pretrained_name(args.name) else None
    if "." in args.name and entry is None:
        pretrained_entry(args.name)  # raises, with the close names
    name = entry.model if entry else args.name
    kwargs = dict(entry.model_kwargs) if entry else {}
    if args.direction:
        kwargs["direction"] = args.direction
    num_classes = args.num_classes or (entry.num_classes if entry else None)
    frames = args.frames or (entry.num_segments if entry else None)
    if num_classes is None or frames is None:
        raise ValueError(f"info {args.name}: give --num-classes and --frames (or NAME.TAG)")
    size = args.size or (entry.input_size if entry else None) or model_info(name).input_size
    # build on the meta device: nothing is allocated or computed, any model size is instant
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, num_segments=frames, **kwargs)
    c = model_complexity(model, frames=frames, input_size=size)
    info = model_info(name)
    if args.json:
        out = {"model": name, "num_classes": num_classes, **c.as_dict()}
        print(json.dumps({**out, "pretrained": entry.as_dict()} if entry else out))
        return 0
    if entry:
        _print_entry(entry)
    print(f"{name}  ({info.paper or info.family})")
    print(f"  input              {frames} x {model.in_chans} x {size} x {size}")
    print(f"  classes            {num_classes}")
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

    if args.pretrained:
        return _list_pretrained(args)

    names = list_models(args.pattern)
    if args.json:
        print(json.dumps(names))
        return 0
    for name in names:
        print(f"{name:28} {model_info(name).backbone}")
    return 0


def _list_pretrained(args: argparse.Namespace) -> int:
    from timeshift.models.pretrained import list_pretrained, pretrained_entry

    entries = [pretrained_entry(n) for n in list_pretrained(args.pattern)]
    if args.json:
        print(json.dumps([_summary(e) for e in entries]))
        return 0
    print(f"{'NAME':48} {'FRAMES':>6} {'TOP-1':>6} {'TOP-5':>6}  SAMPLING      SOURCE")
    for e in entries:
        top1, top5 = (_percent(e.reported.get(k)) for k in ("top1", "top5"))
        print(f"{e.name:48} {e.num_segments:>6} {top1:>6} {top5:>6}  {_sampling(e):13} {e.source}")
    print(f"{len(entries)} published checkpoints; `timeshift info NAME.TAG` for one in full")
    return 0


def _summary(entry) -> dict:
    return {
        "name": entry.name,
        "model": entry.model,
        "dataset": entry.dataset,
        "num_classes": entry.num_classes,
        "num_segments": entry.num_segments,
        "modality": entry.modality,
        "sampling": entry.sampling,
        "reported": entry.reported,
        "source": entry.source,
        "url": entry.file.url,
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _sampling(entry) -> str:
    s = entry.sampling
    kind = "dense" if s.get("dense") else "uniform"
    views = f" {s['clips']}x{s['crops']}" if s.get("clips") and s.get("crops") else ""
    return kind + views


def _print_entry(entry) -> None:
    """The registry entry, in the order a user checks it: what, where from, how to feed it."""
    inputs = entry.checkpoint_meta()
    rows = [
        ("weights", entry.name),
        ("source", entry.source),
        ("url", entry.file.url or "(no public link: put the file in the cache, see docs)"),
        ("file", entry.file.file_name),
        ("sha256 prefix", entry.file.sha256_prefix or "(not published)"),
        ("cache", _cache_state(entry.file.file_name)),
        ("dataset", f"{entry.dataset}, {entry.num_classes} classes ({entry.classes})"),
        ("classes", ", ".join(inputs["classes"][:4]) + ", ..."),
        ("frames", f"{entry.num_segments} ({entry.modality}, {entry.new_length} per segment)"),
        ("input", _input_text(entry)),
        ("sampling", _sampling(entry)),
        (
            "reported",
            f"top-1 {_percent(entry.reported.get('top1'))}, "
            f"top-5 {_percent(entry.reported.get('top5'))}",
        ),
        ("license", entry.license or "(not stated)"),
    ]
    rows += [(f"from ({key})", value) for key, value in entry.provenance.items() if value]
    for key, value in rows:
        print(f"{key:18} {value}")
    if entry.notes:
        print(f"{'notes':18} {entry.notes}")
    print()


def _cache_state(file_name: str) -> str:
    from timeshift.models.download import weights_path

    path = weights_path(file_name)
    return f"{path} ({'downloaded' if path.is_file() else 'not downloaded yet'})"


def _input_text(entry) -> str:
    if entry.input_size is None:
        return "not stated by the source: the architecture's defaults apply"
    return (
        f"resize shorter side to {entry.scale_size}, centre crop {entry.input_size}, "
        f"mean {list(entry.mean)}, std {list(entry.std)}"
    )


def _format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))
