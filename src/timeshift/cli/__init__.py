"""The ``timeshift`` command line: thin wrappers over importable functions.

One module per command group, each with ``add_parser(subparsers, parents)`` and the run
function(s) the parser dispatches to (``args.func``); the flags several commands share come
from the parent parsers in :mod:`timeshift.cli.common`. A new command is a module and a line
in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from timeshift.cli import (
    bench,
    compile,
    data,
    demo,
    evaluate,
    export,
    models,
    serve,
    stream,
    train,
)
from timeshift.cli.common import build_parents
from timeshift.errors import TimeshiftError

__all__ = ["COMMANDS", "build_parser", "main"]

# in the order `timeshift --help` lists them
COMMANDS = (
    models.add_info_parser,
    train.add_parser,
    evaluate.add_parser,  # test, predict
    demo.add_parser,
    export.add_parser,
    compile.add_parser,
    stream.add_parser,
    serve.add_parser,
    models.add_models_parser,
    models.add_fetch_parser,
    bench.add_parser,
    data.add_parser,
)

# what a user can cause and fix: one line, no traceback (unless -v). KeyError: an unknown
# model or key; OSError: a missing file, a read-only or full output folder.
USER_ERRORS = (TimeshiftError, KeyError, ValueError, OSError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timeshift", description="Efficient video recognition with temporal shift."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    parents = build_parents()
    for add_parser in COMMANDS:
        add_parser(sub, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. Errors of the user's making print one line and
    return 2 (``-v`` raises them, with the traceback); anything else is a bug and raises."""
    args = build_parser().parse_args(argv)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    # under torchrun with several processes, each log line says which process wrote it
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = f"[rank {os.environ.get('RANK', '?')}] " if world > 1 else ""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"{rank}%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"timeshift: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
