"""The files of a training run and the order they are written in, so that a kill at any instant
leaves a loadable set that ``--resume`` makes consistent.

Each epoch writes ``best.pt`` (when it improved), then ``last.pt``, which commits the epoch,
then ``metrics.jsonl`` from ``last.pt``'s history (the trainer draws the plots after it). While
a new ``best.pt`` replaces the committed one, the committed one is kept aside (a hard link)
until ``last.pt`` records its successor. A resume repairs what a kill left half done: it puts
back or rewrites ``best.pt``, drops the metrics rows of uncommitted epochs and deletes the
temporary files of interrupted writes (docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from timeshift.engine.metrics import json_dumps
from timeshift.engine.train_state import Resume, TrainState, epoch_score
from timeshift.models.checkpoints import (
    CheckpointError,
    atomic_save,
    atomic_write,
    check_writable,
    read_checkpoint,
    remove_stale_temporaries,
    save_model,
)

__all__ = ["RUN_FILES", "RunDirectory"]

_logger = logging.getLogger(__name__)

# what a run directory holds, in the order an epoch writes it (last.pt commits the epoch)
RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "confusion.png")
# the committed best.pt while a new one replaces it and until last.pt records the new one
_PREVIOUS_BEST = ".best.pt.previous"


class RunDirectory:
    """``best.pt``, ``last.pt`` and ``metrics.jsonl`` of one run, written in commit order."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def check_writable(self) -> None:
        """Raise ``OSError`` (naming the folder) unless the run directory can be written."""
        check_writable(
            self.path, what="run directory", hint=": choose another --output, or make it writable"
        )

    def prepare(self, resume: Resume | None = None) -> None:
        """Delete what killed writes left, and make the directory describe what ``resume``
        (its ``last.pt``) committed."""
        for name in RUN_FILES:
            remove_stale_temporaries(self.path / name)
        if resume is not None:
            self._repair(resume)

    def commit(self, state: TrainState, *, meta: dict, improved: bool) -> None:
        """Save ``state``'s last epoch: ``best.pt`` first (if ``improved``), then ``last.pt``,
        which commits it, then ``metrics.jsonl`` from its history."""
        epoch_meta = {**meta, "epoch": state.epoch, "top1": epoch_score(state.history[-1])}
        if improved:
            self._keep_previous_best()
            save_model(state.model, self.best, meta=epoch_meta)
        train_state = {"train_state": state.state_dict()}
        save_model(state.model, self.last, meta=epoch_meta, extra=train_state)
        (self.path / _PREVIOUS_BEST).unlink(missing_ok=True)
        self.write_metrics(state.history)

    def write_metrics(self, rows: list[dict]) -> None:
        # rewritten from the committed history, never appended: no duplicate or uncommitted rows
        text = "".join(json_dumps(row) + "\n" for row in rows)
        atomic_write(self.path / "metrics.jsonl", lambda f: f.write(text.encode("utf-8")))

    def _repair(self, resume: Resume) -> None:
        best_epoch = resume.best_epoch
        best, previous = self.best, self.path / _PREVIOUS_BEST
        if best_epoch >= 0 and _epoch_of(best) != best_epoch:
            if _epoch_of(previous) == best_epoch:  # killed before last.pt committed a new best
                os.replace(previous, best)
                _logger.warning(
                    "restored %s of epoch %d (a newer one was not committed)", best, best_epoch
                )
            elif best_epoch == resume.train_state["epoch"]:  # the best is last.pt's model
                payload = {k: v for k, v in resume.checkpoint.items() if k != "train_state"}
                atomic_save(payload, best)
                _logger.warning("rewrote %s from last.pt (epoch %d)", best, best_epoch)
            else:
                _logger.warning(
                    "%s is not the best epoch (%d) that last.pt records and cannot be restored",
                    best,
                    best_epoch,
                )
        previous.unlink(missing_ok=True)
        self.write_metrics(resume.train_state["history"])

    def _keep_previous_best(self) -> None:
        """Link the committed best.pt aside until last.pt records its successor: a kill in
        between leaves it for the resume to restore (a hard link: no copy, no extra space)."""
        best, previous = self.best, self.path / _PREVIOUS_BEST
        previous.unlink(missing_ok=True)
        if not best.is_file():
            return
        try:
            os.link(best, previous)
        except OSError:  # no hard links on this file system: a copy
            atomic_write(previous, lambda f: f.write(best.read_bytes()))


def _epoch_of(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        return read_checkpoint(path)["meta"]["epoch"]
    except (CheckpointError, KeyError, TypeError, ValueError, OSError):
        return None  # unreadable: a kill cannot cause this (writes are atomic), but repair it
