"""``timeshift train``: fit a model from a YAML recipe."""

from __future__ import annotations

import argparse

from timeshift.cli.common import Parents

__all__ = ["add_parser", "run"]


def add_parser(sub, parents: Parents) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML file or shipped recipe name (e.g. synthetic-tsm)")
    p.add_argument("--output", help="run directory (default runs/<config name>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", help="DIR/last.pt of an earlier run")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although the configuration differs from the run's (the differences "
        "are listed; the new values apply from the next epoch)",
    )
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from timeshift.engine.config import load_config
    from timeshift.engine.trainer import fit

    overrides = list(args.set or [])
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = load_config(args.config, overrides)
    output = args.output or str(Path("runs") / Path(args.config).stem)
    result = fit(
        cfg,
        output,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        allow_config_change=args.allow_config_change,
    )
    if result:  # rank 0 only: the other ranks of a torchrun get {}
        best = result.get("best_val_top1", float("nan"))
        print(f"done: best top-1 {best:.4f}; checkpoints in {output} (last.pt, best.pt)")
    return 0
