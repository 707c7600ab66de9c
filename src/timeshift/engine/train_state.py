"""The state of a training run as one object: what ``last.pt`` saves and ``--resume`` restores.

:class:`TrainState` holds the model, optimiser, schedule, gradient scaler, the last committed
epoch, the best epoch and the history of metric rows. ``state_dict()`` is the ``train_state``
entry of ``last.pt`` (plus the torch RNG state; the weights are the checkpoint's own
``state_dict``, which ``timeshift.load_model`` reads), and ``resume()`` puts a checkpoint back.

Resuming is checked: :func:`read_resume` compares the run's stored configuration with the new
one, and ``resume()`` refuses another number of steps per epoch (the per-iteration schedule
would continue elsewhere than the epoch it resumes at) unless the change is allowed.
:meth:`TrainState.non_finite` finds NaN/infinite weights, optimiser state or outputs before an
epoch is saved. The files of the run directory are :mod:`timeshift.engine.run_directory`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from timeshift.engine.config import ConfigError, check_resume_config
from timeshift.models.checkpoints import CheckpointError, load_checkpoint, read_checkpoint

__all__ = ["Best", "Resume", "TrainState", "epoch_score", "read_resume"]

_logger = logging.getLogger(__name__)


# what "best" compares, the first present: validation top-1 (recognition) or AP50 (detection),
# else training top-1 in a run without validation
SCORE_KEYS = ("val_top1", "val_ap50", "train_top1")


def epoch_score(row: dict) -> float:
    """What "best" compares (:data:`SCORE_KEYS`); without any of them, minus the training
    loss (a detector trained without validation)."""
    for key in SCORE_KEYS:
        if key in row:
            return row[key]
    return -row["train_loss"]


@dataclass
class Best:
    top1: float = -1.0
    epoch: int = -1  # -1: no epoch yet


@dataclass
class Resume:
    """A ``last.pt`` to continue, read and checked against the new configuration."""

    path: Path
    checkpoint: dict  # the whole payload: weights, meta, train_state
    changed: list[str] = field(default_factory=list)  # allowed configuration changes

    @property
    def train_state(self) -> dict:
        return self.checkpoint["train_state"]

    @property
    def best_epoch(self) -> int:
        return _best_epoch(self.train_state)


def _best_epoch(state: dict) -> int:
    if "best_epoch" in state:
        return state["best_epoch"]
    # written before best_epoch was recorded: the first epoch that reached the best score
    for row in state["history"]:
        if epoch_score(row) == state["best_top1"]:
            return row["epoch"]
    return -1


def read_resume(path: str | Path, cfg: DictConfig, *, allow_change: bool) -> Resume:
    """The checkpoint to resume from, after checking that ``cfg`` is the run's configuration
    (:class:`ConfigError` naming every changed key, unless ``allow_change``)."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or not checkpoint.get("train_state"):
        raise ValueError(f"{path} has no training state (was it written by 'train'?)")
    resume = Resume(Path(path), checkpoint)
    saved = (checkpoint.get("meta") or {}).get("config")
    if saved is None:
        _logger.warning("%s records no configuration: cannot check it against this one", path)
    else:
        try:
            resume.changed = check_resume_config(saved, cfg, allow_change=allow_change)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if resume.changed:
        _logger.warning(
            "resuming %s with a changed configuration: %s", path, "; ".join(resume.changed)
        )
    return resume


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Args:
        optimizer_name: the configured optimiser (``sgd``, ``adamw``): a resumed run with
            another one starts a fresh optimiser state.
        steps_per_epoch, world_size: recorded so that a resume with another step count is
            noticed (the schedule steps per iteration).
        epoch: the last epoch recorded; -1 before the first.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    optimizer_name: str
    steps_per_epoch: int
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epoch: int = -1
    best: Best = field(default_factory=Best)
    history: list[dict] = field(default_factory=list)

    @property
    def start_epoch(self) -> int:
        return self.epoch + 1

    def record(self, row: dict) -> bool:
        """Add an epoch's metrics row; ``True`` when it improves the best score."""
        self.epoch = row["epoch"]
        self.history.append(row)
        improved = epoch_score(row) > self.best.top1
        if improved:
            self.best = Best(epoch_score(row), row["epoch"])
        return improved

    # -- saving and resuming ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """The ``train_state`` entry of ``last.pt`` (its keys are the checkpoint format)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_top1": self.best.top1,
            "best_epoch": self.best.epoch,
            "history": list(self.history),
            "rng": _rng_state(self.device),
            "optimizer_name": self.optimizer_name,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world_size,
        }

    def load_state_dict(
        self,
        state: dict,
        *,
        changed: bool = False,
        position: int | None = None,
    ) -> None:
        """Restore a ``train_state``. With ``changed`` (an allowed configuration change) the
        configured hyperparameters replace the saved ones; ``position`` moves the schedule to
        that step (another step count per epoch)."""
        _load_optimizer(
            self.optimizer,
            self.scheduler,
            state,
            self.optimizer_name,
            changed=changed,
            position=position,
        )
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.best = Best(state["best_top1"], _best_epoch(state))
        self.history = list(state["history"])
        _set_rng_state(state["rng"], self.device)

    def resume(self, resume: Resume, *, allow_change: bool) -> None:
        """Weights and training state from ``resume``: training continues at the epoch after
        the one it committed."""
        load_checkpoint(self.model, resume.checkpoint, source="timeshift")
        position = self._schedule_position(resume, allow_change=allow_change)
        self.load_state_dict(
            resume.train_state,
            changed=bool(resume.changed) or position is not None,
            position=position,
        )
        _logger.info("resumed from %s at epoch %d", resume.path, self.start_epoch)

    def _schedule_position(self, resume: Resume, *, allow_change: bool) -> int | None:
        """``None`` when the run takes as many steps per epoch as before; otherwise the schedule
        step that the resumed epoch starts at with the new count (if allowed: else a refusal)."""
        state = resume.train_state
        saved, steps = state.get("steps_per_epoch"), self.steps_per_epoch
        if saved is None or saved == steps:
            return None
        processes = state.get("world_size", "?")
        change = (
            f"steps per epoch: {saved} -> {steps} (processes: {processes} -> {self.world_size}; "
            "the training data or the number of processes changed)"
        )
        if not allow_change:
            raise ConfigError(
                f"{resume.path}: cannot resume: {change}, so the learning-rate schedule would not "
                "continue where the run stopped. Resume with the same data and processes, or "
                "allow the change (timeshift train --allow-config-change): the schedule then "
                "continues from the resumed epoch's position with the new step count"
            )
        _logger.warning("resuming %s with %s", resume.path, change)
        return (state["epoch"] + 1) * steps

    # -- checks before saving -----------------------------------------------------------------
    def non_finite(self, *, scores: torch.Tensor | None, probe: torch.Tensor | None) -> str | None:
        """What became NaN or infinite (``None``: nothing): the weights, the optimiser state,
        the validation ``scores``, or without them the outputs on the training clips ``probe``
        (weights of 1e30 are finite but give NaN outputs, so both are checked)."""
        problem = _non_finite_tensor(self.model.state_dict().items(), "weight")
        if problem is None:
            tensors = (
                (f"{key} of parameter {i}", v)
                for i, s in enumerate(self.optimizer.state.values())
                for key, v in s.items()
            )
            problem = _non_finite_tensor(tensors, "optimiser state")
        if problem is None and scores is not None and not torch.isfinite(scores).all():
            problem = "the validation outputs"
        probed = problem is None and scores is None and probe is not None
        if probed and not torch.isfinite(self._outputs(probe)).all():
            problem = "the outputs on training clips"
        return problem

    @torch.no_grad()
    def _outputs(self, clips: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        outputs = self.model(clips)
        self.model.train(was_training)
        return outputs


def _non_finite_tensor(named, what: str) -> str | None:
    for name, value in named:
        floating = torch.is_tensor(value) and value.is_floating_point()
        if floating and not torch.isfinite(value).all():
            return f"the {what} {name}"
    return None


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer_kind(optimizer_state: dict) -> str:
    groups = optimizer_state.get("param_groups") or [{}]
    return "adamw" if "betas" in groups[0] else "sgd"


def _load_optimizer(
    optimizer, scheduler, state: dict, name: str, *, changed: bool, position: int | None
) -> None:
    """Restore the optimiser and schedule; with an allowed configuration change the new
    hyperparameters (lr, momentum, weight decay, ...) replace the saved ones, and ``position``
    (another step count per epoch) moves the schedule to that step."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    saved_name = state.get("optimizer_name") or _optimizer_kind(state["optimizer"])
    if saved_name != name:
        _logger.warning(
            "the optimiser changed (%s -> %s): its saved state does not apply; starting a "
            "fresh optimiser state (momentum / moment estimates) at the schedule's position",
            saved_name,
            name,
        )
    else:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError) as exc:
            if not changed:
                raise CheckpointError(f"the saved optimiser state does not fit: {exc}") from exc
            _logger.warning(
                "the saved optimiser state does not fit the changed configuration (%s); "
                "starting a fresh optimiser state",
                exc,
            )
    scheduler.load_state_dict(state["scheduler"])
    if position is not None:
        scheduler.last_epoch = position
    if changed:
        _apply_hyperparameters(optimizer, scheduler, fresh)


def _apply_hyperparameters(optimizer, scheduler, fresh: list[dict]) -> None:
    """The configured hyperparameters over the restored ones, and the lr of the schedule's
    current step from the configured base lr."""
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        group.update(new)
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    step = scheduler.last_epoch
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
