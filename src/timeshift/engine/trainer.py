"""The training loop: explicit pieces (model, loader, optimiser, scaler) and a ``fit`` driver.

``fit`` runs single-process or under torchrun (DDP: DistributedSampler, optional SyncBN,
rank-0-only logging and checkpoints). Every epoch it writes ``best.pt`` (when validation top-1
improves) and then ``last.pt`` atomically in the library's own format -- ``timeshift.load_model``
rebuilds the model from either -- plus the optimiser, scheduler, scaler, epoch and torch RNG
state, so that ``resume`` continues exactly where it stopped.

``last.pt`` is the commit point of an epoch: ``metrics.jsonl`` and the plots are rewritten from
its history after it, and a resume repairs what a kill left half done (a ``best.pt`` newer or
older than the best epoch ``last.pt`` records, metrics rows of uncommitted epochs, temporary
files of interrupted writes). Nothing is saved unless the weights, the optimiser state and the
validation outputs are all finite.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timeshift.engine.config import ConfigError, check_resume_config, to_dict
from timeshift.engine.distributed import (
    DistInfo,
    all_gather_tensors,
    cleanup,
    init_distributed,
    reduce_mean,
    run_on_main,
    wrap_ddp,
)
from timeshift.engine.figures import plot_confusion, plot_curves
from timeshift.engine.loaders import (
    build_eval_dataset,
    build_train_loader,
    build_val_loader,
    direction_meta,
    load_split,
)
from timeshift.engine.metrics import classification_report, json_dumps
from timeshift.engine.optim import build_optimizer, build_scheduler
from timeshift.models.checkpoints import (
    CheckpointError,
    atomic_save,
    atomic_write,
    check_writable,
    load_checkpoint,
    read_checkpoint,
    remove_stale_temporaries,
    save_model,
)
from timeshift.models.preprocessing import default_scale_size
from timeshift.models.registry import create_model

__all__ = [
    "NonFiniteLossError",
    "NonFiniteModelError",
    "RunDirectoryError",
    "evaluate",
    "fit",
    "train_one_epoch",
]

_logger = logging.getLogger(__name__)
SINGLE_PROCESS = DistInfo()


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before writing a checkpoint."""


class NonFiniteModelError(NonFiniteLossError):
    """The weights, optimiser state or outputs became NaN or infinite while the loss was still
    finite (a blow-up on the last step of an epoch); nothing of that epoch was saved."""


class RunDirectoryError(RuntimeError):
    """The run directory cannot be created or written."""


# what a run directory holds, in the order an epoch writes it (last.pt commits the epoch)
RUN_FILES = ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "confusion.png")
# the committed best.pt while a new one replaces it and until last.pt records the new one
_PREVIOUS_BEST = ".best.pt.previous"


@dataclass
class EpochStats:
    loss: float
    top1: float
    lr: float
    clips_per_s: float
    seconds: float
    probe: torch.Tensor | None = None  # a few clips of the last batch, to check the outputs


@dataclass
class EvalResult:
    report: dict
    scores: torch.Tensor  # (N, K) averaged over views, in dataset order
    labels: torch.Tensor
    indices: torch.Tensor
    failed: int = 0


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    *,
    device: torch.device,
    epoch: int,
    clip_grad: float | None = None,
    accumulate: int = 1,
    amp: bool = True,
    info: DistInfo = SINGLE_PROCESS,
    writer=None,
    log_every: int = 20,
    progress: bool = True,
) -> EpochStats:
    """One pass over ``loader``; returns mean loss / top-1 over all processes."""
    from tqdm.auto import tqdm

    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    steps = len(loader)
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        disable=None if progress and info.is_main else True,  # None: off when not a terminal
    )
    optimizer.zero_grad(set_to_none=True)
    for i, (clips, labels) in enumerate(bar):
        clips = clips.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        step_now = (i + 1) % accumulate == 0 or i + 1 == steps
        # gradients of accumulation steps stay local: DDP all-reduces on the stepping one
        skip_sync = isinstance(model, DistributedDataParallel) and not step_now
        with model.no_sync() if skip_sync else nullcontext():
            with _autocast(device, amp):
                logits = model(clips)
                loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch}, iteration {i}: training stopped "
                    "(lower train.lr, or check the data); the last good checkpoint is kept"
                )
            scaler.scale(loss / accumulate).backward()
        if step_now:
            if clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        batch = labels.shape[0]
        total_loss += loss.item() * batch
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += batch
        lr = optimizer.param_groups[0]["lr"]
        rate = seen * info.world_size / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
        if writer is not None and i % log_every == 0:
            step = epoch * steps + i
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", lr, step)
    bar.close()
    seconds = time.perf_counter() - start
    return EpochStats(
        loss=reduce_mean(total_loss / max(seen, 1), info),
        top1=reduce_mean(correct / max(seen, 1), info),
        lr=optimizer.param_groups[0]["lr"],
        clips_per_s=seen * info.world_size / seconds,
        seconds=seconds,
        probe=clips[:2].detach() if seen else None,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    device: torch.device,
    num_classes: int,
    info: DistInfo = SINGLE_PROCESS,
    amp: bool = True,
    progress: bool = True,
) -> EvalResult:
    """Scores averaged over each sample's views (clips x crops), gathered from all processes.

    Logits are averaged over views, as the reference test script does.
    """
    from tqdm.auto import tqdm

    model.eval()
    all_scores, all_labels, all_indices = [], [], []
    for batch in tqdm(
        loader,
        desc="evaluating",
        unit="batch",
        leave=False,
        disable=None if progress and info.is_main else True,  # None: off when not a terminal
    ):
        if batch is None:
            continue
        indices, views, labels = batch
        views = views.to(device, non_blocking=True)
        if views.dim() == 5:  # (N, T, C, H, W): one view
            views = views.unsqueeze(1)
        n, v = views.shape[:2]
        with _autocast(device, amp):
            logits = model(views.flatten(0, 1)).float()
        all_scores.append(logits.view(n, v, -1).mean(dim=1).cpu())
        all_labels.append(labels)
        all_indices.append(indices)
    scores = torch.cat(all_scores) if all_scores else torch.zeros(0, num_classes)
    labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long)
    indices = torch.cat(all_indices) if all_indices else torch.zeros(0, dtype=torch.long)
    scores = all_gather_tensors(scores, info)
    labels = all_gather_tensors(labels, info)
    indices = all_gather_tensors(indices, info)
    order = indices.argsort()
    scores, labels, indices = scores[order], labels[order], indices[order]
    failed = int(loader.dataset.failed.sum()) if hasattr(loader.dataset, "failed") else 0
    return EvalResult(
        classification_report(scores, labels, num_classes), scores, labels, indices, failed=failed
    )


def _device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    model = create_model(
        cfg.model.name,
        num_classes=num_classes,
        num_segments=cfg.model.num_segments,
        dropout=cfg.model.dropout,
        partial_bn=cfg.model.partial_bn,
        **to_dict(cfg.model.kwargs),
    )
    if cfg.model.pretrained:
        report = load_checkpoint(model, cfg.model.pretrained)
        _logger.info(
            "initialised from %s (%s format; %d tensors, %d left fresh)",
            cfg.model.pretrained,
            report.source,
            len(report.loaded),
            len(report.initialised),
        )
    return model


def _scaled_lr(cfg: DictConfig, info: DistInfo) -> float:
    t = cfg.train
    if not t.lr_batch:
        return t.lr
    total = t.batch_size * info.world_size * t.accumulate
    return t.lr * total / t.lr_batch


def fit(
    cfg: DictConfig,
    output_dir: str | Path,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    progress: bool = True,
    allow_config_change: bool = False,
) -> dict:
    """Train ``cfg`` into ``output_dir``.

    Args:
        resume: ``DIR/last.pt`` of an earlier run: continue it (repairing what a kill left
            half done in its directory).
        allow_config_change: resume even though ``cfg`` differs from the configuration the run
            was trained with (see :func:`~timeshift.engine.config.check_resume_config`); the
            new values apply from the next epoch. Otherwise a difference raises
            :class:`~timeshift.engine.config.ConfigError` naming every changed key.

    Returns:
        the last epoch's metrics plus ``best_val_top1`` and ``output_dir`` on rank 0; ``{}``
        on the other ranks of a torchrun (only rank 0 reports).

    Raises:
        RunDirectoryError: ``output_dir`` cannot be written (before any training).
        NonFiniteLossError: the loss, or (:class:`NonFiniteModelError`) the weights or outputs,
            became NaN/infinite; the last good checkpoint is kept.
        CheckpointWriteError: a checkpoint could not be written (full disk); the previous one
            is intact.
    """
    torch_device = _device(device)
    info = init_distributed(torch_device)
    if info.enabled and torch_device.type == "cuda":
        torch_device = torch.device("cuda", info.local_rank)
    out = Path(output_dir)
    try:
        result = _fit(cfg, out, resume, torch_device, info, progress, allow_config_change)
        return result if info.is_main else {}
    finally:
        cleanup()


def _fit(
    cfg, out: Path, resume, device: torch.device, info: DistInfo, progress: bool, allow_change
) -> dict:
    if not info.is_main:
        logging.getLogger("timeshift").setLevel(logging.WARNING)
    torch.manual_seed(cfg.train.seed)
    state = _read_resume(resume, cfg, allow_change) if resume else None
    # rank 0 prepares the directory and may generate the synthetic data; its failure is
    # every rank's (the others would otherwise wait for it forever)
    train_ann = run_on_main(info, lambda: _prepare_main(cfg, out, state, progress))
    if not info.is_main:
        train_ann = load_split(cfg.data, "train", progress=False)
    val_ann = (  # labelled by the training classes (a val folder maps its names to them)
        load_split(cfg.data, "val", progress=False, classes=train_ann.classes)
        if cfg.data.val or cfg.data.format == "synthetic"
        else None
    )
    classes = list(train_ann.classes)
    if not train_ann.records:
        raise ValueError("the training set is empty (no records in data.train)")

    model = build_model(cfg, len(classes))
    if cfg.model.channels_last:
        model.set_channels_last(True)
    model.to(device)
    if info.enabled and cfg.train.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_set, sampler, train_loader = build_train_loader(cfg, train_ann, info)
    val_loader = None
    if val_ann is not None and val_ann.records:
        val_loader = build_val_loader(cfg, build_eval_dataset(cfg, val_ann), info)

    lr = _scaled_lr(cfg, info)
    t = cfg.train
    optimizer = build_optimizer(
        model,
        name=t.optimizer,
        lr=lr,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        nesterov=t.nesterov,
        fc_lr5=t.fc_lr5,
    )
    scheduler = build_scheduler(
        optimizer,
        kind=t.schedule,
        epochs=t.epochs,
        steps_per_epoch=len(train_loader),
        milestones=list(t.milestones),
        gamma=t.gamma,
        warmup_epochs=t.warmup_epochs,
    )
    amp = bool(t.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    start_epoch, best, history = 0, {"top1": -1.0, "epoch": -1}, History()
    if state is not None:
        train_state = state["train_state"]
        load_checkpoint(model, state, source="timeshift")
        # another step count per epoch (the data or the number of processes changed) would put
        # the per-iteration schedule elsewhere than the epoch it resumes at
        position = _schedule_position(resume, train_state, len(train_loader), info, allow_change)
        _load_optimizer(
            optimizer,
            scheduler,
            train_state,
            t.optimizer,
            changed=state["changed"] or position is not None,
            position=position,
        )
        scaler.load_state_dict(train_state["scaler"])
        start_epoch = train_state["epoch"] + 1
        best = {"top1": train_state["best_top1"], "epoch": _best_epoch(train_state)}
        history.rows = list(train_state["history"])
        _set_rng_state(train_state["rng"], device)
        _logger.info("resumed from %s at epoch %d", resume, start_epoch)

    ddp = wrap_ddp(model, device=device, info=info) if info.enabled else model
    writer = _tensorboard(out) if info.is_main else None
    meta = {
        "classes": classes,
        "input_size": cfg.data.size,
        "scale_size": cfg.data.scale_size or default_scale_size(cfg.data.size),
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "config": to_dict(cfg),
        **direction_meta(cfg.data),  # lets 'test' keep mirrored/dense views direction-correct
    }
    if info.is_main:
        _logger.info(
            "training %s on %d clips (%d classes), %d epochs, lr %.4g, %d process(es)",
            cfg.model.name,
            len(train_set),
            len(classes),
            t.epochs,
            lr,
            info.world_size,
        )
    result = {}
    for epoch in range(start_epoch, t.epochs):
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        stats = train_one_epoch(
            ddp,
            train_loader,
            optimizer,
            scheduler,
            scaler,
            device=device,
            epoch=epoch,
            clip_grad=t.clip_grad,
            accumulate=t.accumulate,
            amp=amp,
            info=info,
            writer=writer,
            log_every=t.log_every,
            progress=progress,
        )
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_top1": stats.top1,
            "lr": stats.lr,
            "clips_per_s": stats.clips_per_s,
            "seconds": stats.seconds,
            "skipped_samples": train_set.skipped,
        }
        last_epoch = epoch + 1 == t.epochs
        ev = None
        if val_loader is not None and ((epoch + 1) % t.eval_every == 0 or last_epoch):
            ev = evaluate(
                model,
                val_loader,
                device=device,
                num_classes=len(classes),
                info=info,
                amp=amp,
                progress=progress,
            )
            row.update(
                val_top1=ev.report["top1"],
                val_top5=ev.report["top5"],
                val_mean_class=ev.report["mean_class_accuracy"],
            )
        # every rank holds the same weights and gathered scores: all of them stop together
        _check_finite(model, optimizer, ev, stats.probe, epoch=epoch, committed=out / "last.pt")
        history.rows.append(row)
        if info.is_main:
            best = _end_of_epoch(
                out,
                model,
                optimizer,
                scheduler,
                scaler,
                device,
                row,
                history,
                best,
                meta,
                writer,
                ev,
                classes,
                {
                    "optimizer_name": t.optimizer,
                    "steps_per_epoch": len(train_loader),
                    "world_size": info.world_size,
                },
            )
        if info.enabled:
            torch.distributed.barrier()
        result = row
    if writer is not None:
        writer.close()
    result = {**result, "best_val_top1": best["top1"], "output_dir": str(out)}
    return result


# -- resuming -----------------------------------------------------------------------------------
def _read_resume(resume, cfg: DictConfig, allow_change: bool) -> dict:
    """The checkpoint to resume from, after checking that ``cfg`` is the run's configuration."""
    state = read_checkpoint(resume)
    if not isinstance(state, dict) or not state.get("train_state"):
        raise ValueError(f"{resume} has no training state (was it written by 'train'?)")
    saved = (state.get("meta") or {}).get("config")
    state["changed"] = []
    if saved is None:
        _logger.warning("%s records no configuration: cannot check it against this one", resume)
    else:
        try:
            state["changed"] = check_resume_config(saved, cfg, allow_change=allow_change)
        except ConfigError as exc:
            raise ConfigError(f"{resume}: {exc}") from None
    if state["changed"]:
        _logger.warning(
            "resuming %s with a changed configuration: %s", resume, "; ".join(state["changed"])
        )
    return state


def _best_epoch(train_state: dict) -> int:
    if "best_epoch" in train_state:
        return train_state["best_epoch"]
    # written before best_epoch was recorded: the first epoch that reached the best score
    for row in train_state["history"]:
        if row.get("val_top1", row["train_top1"]) == train_state["best_top1"]:
            return row["epoch"]
    return -1


def _optimizer_kind(optimizer_state: dict) -> str:
    groups = optimizer_state.get("param_groups") or [{}]
    return "adamw" if "betas" in groups[0] else "sgd"


def _schedule_position(resume, train_state: dict, steps: int, info: DistInfo, allow_change):
    """``None`` when the run takes as many steps per epoch as before; otherwise the schedule
    step that the resumed epoch starts at with the new count (if allowed: else a refusal)."""
    saved = train_state.get("steps_per_epoch")
    if saved is None or saved == steps:
        return None
    processes = train_state.get("world_size", "?")
    change = (
        f"steps per epoch: {saved} -> {steps} (processes: {processes} -> {info.world_size}; "
        "the training data or the number of processes changed)"
    )
    if not allow_change:
        raise ConfigError(
            f"{resume}: cannot resume: {change}, so the learning-rate schedule would not "
            "continue where the run stopped. Resume with the same data and processes, or allow "
            "the change (timeshift train --allow-config-change): the schedule then continues "
            "from the resumed epoch's position with the new step count"
        )
    _logger.warning("resuming %s with %s", resume, change)
    return (train_state["epoch"] + 1) * steps


def _load_optimizer(
    optimizer, scheduler, train_state: dict, name: str, *, changed, position: int | None = None
) -> None:
    """Restore the optimiser and schedule; with an allowed configuration change the new
    hyperparameters (lr, momentum, weight decay, ...) replace the saved ones, and ``position``
    (another step count per epoch) moves the schedule to that step."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    saved_name = train_state.get("optimizer_name") or _optimizer_kind(train_state["optimizer"])
    if saved_name != name:
        _logger.warning(
            "the optimiser changed (%s -> %s): its saved state does not apply; starting a "
            "fresh optimiser state (momentum / moment estimates) at the schedule's position",
            saved_name,
            name,
        )
    else:
        try:
            optimizer.load_state_dict(train_state["optimizer"])
        except (KeyError, ValueError) as exc:
            if not changed:
                raise CheckpointError(f"the saved optimiser state does not fit: {exc}") from exc
            _logger.warning(
                "the saved optimiser state does not fit the changed configuration (%s); "
                "starting a fresh optimiser state",
                exc,
            )
    scheduler.load_state_dict(train_state["scheduler"])
    if position is not None:
        scheduler.last_epoch = position
    if not changed:
        return
    for group, new in zip(optimizer.param_groups, fresh, strict=True):
        group.update(new)
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    step = scheduler.last_epoch
    for group, base, factor in zip(
        optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


# -- the run directory --------------------------------------------------------------------------
def _prepare_main(cfg: DictConfig, out: Path, state: dict | None, progress: bool):
    _check_writable(out)
    for name in RUN_FILES:
        remove_stale_temporaries(out / name)
    if state is not None:
        _repair(out, state)
    return load_split(cfg.data, "train", progress=progress)


def _check_writable(out: Path) -> None:
    try:
        check_writable(
            out, what="run directory", hint=": choose another --output, or make it writable"
        )
    except OSError as exc:
        raise RunDirectoryError(exc.strerror) from exc


def _repair(out: Path, state: dict) -> None:
    """Make ``out`` describe what ``state`` (its last.pt) committed, whatever a kill left."""
    train_state = state["train_state"]
    best_epoch = _best_epoch(train_state)
    best, previous = out / "best.pt", out / _PREVIOUS_BEST
    if best_epoch >= 0 and _epoch_of(best) != best_epoch:
        if _epoch_of(previous) == best_epoch:  # killed before last.pt committed a new best
            os.replace(previous, best)
            _logger.warning(
                "restored %s of epoch %d (a newer one was not committed)", best, best_epoch
            )
        elif best_epoch == train_state["epoch"]:  # the committed best is last.pt's model
            payload = {k: v for k, v in state.items() if k not in ("train_state", "changed")}
            atomic_save(payload, best)
            _logger.warning("rewrote %s from last.pt (epoch %d)", best, best_epoch)
        else:
            _logger.warning(
                "%s is not the best epoch (%d) that last.pt records and cannot be restored",
                best,
                best_epoch,
            )
    previous.unlink(missing_ok=True)
    _write_metrics(out, train_state["history"])


def _epoch_of(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        return read_checkpoint(path)["meta"]["epoch"]
    except (CheckpointError, KeyError, TypeError, ValueError, OSError):
        return None  # unreadable: a kill cannot cause this (writes are atomic), but repair it


def _write_metrics(out: Path, rows: list[dict]) -> None:
    # rewritten from the committed history, never appended: no duplicate or uncommitted rows
    text = "".join(json_dumps(row) + "\n" for row in rows)
    atomic_write(out / "metrics.jsonl", lambda f: f.write(text.encode("utf-8")))


# -- the end of an epoch ------------------------------------------------------------------------
def _check_finite(model, optimizer, ev, probe, *, epoch: int, committed: Path) -> None:
    """Raise :class:`NonFiniteModelError` unless weights, optimiser state and outputs are
    finite: weights of 1e30 are finite but give NaN outputs, so both are checked."""
    problem = _non_finite_tensor(model.state_dict().items(), "weight")
    if problem is None:
        tensors = (
            (f"{key} of parameter {i}", v)
            for i, s in enumerate(optimizer.state.values())
            for key, v in s.items()
        )
        problem = _non_finite_tensor(tensors, "optimiser state")
    if problem is None and ev is not None and not torch.isfinite(ev.scores).all():
        problem = "the validation outputs"
    if problem is None and ev is None and probe is not None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            outputs = model(probe)
        model.train(was_training)
        if not torch.isfinite(outputs).all():
            problem = "the outputs on training clips"
    if problem is None:
        return
    kept = (
        f"the last good checkpoint is kept: {committed}"
        if committed.is_file()
        else "no checkpoint was written (the last good checkpoint is the starting point)"
    )
    raise NonFiniteModelError(
        f"{problem} became NaN or infinite in epoch {epoch} (the training loss was finite): "
        f"training stopped before saving (lower train.lr, set train.clip_grad, or check the "
        f"data); {kept}"
    )


def _non_finite_tensor(named, what: str) -> str | None:
    for name, value in named:
        floating = torch.is_tensor(value) and value.is_floating_point()
        if floating and not torch.isfinite(value).all():
            return f"the {what} {name}"
    return None


def _end_of_epoch(
    out,
    model,
    optimizer,
    scheduler,
    scaler,
    device,
    row,
    history,
    best,
    meta,
    writer,
    ev,
    classes,
    extra_state,
) -> dict:
    """Save the epoch: best.pt first (if improved), then last.pt, which commits it; then the
    files derived from last.pt's history. Returns the best ``{"top1", "epoch"}``."""
    epoch = row["epoch"]
    top1 = row.get("val_top1", row["train_top1"])
    improved = top1 > best["top1"]
    if improved:
        best = {"top1": top1, "epoch": epoch}
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        "history": history.rows,
        "rng": _rng_state(device),
        **extra_state,
    }
    epoch_meta = {**meta, "epoch": epoch, "top1": top1}
    if improved:
        _keep_previous_best(out)
        save_model(model, out / "best.pt", meta=epoch_meta)
    save_model(model, out / "last.pt", meta=epoch_meta, extra={"train_state": train_state})
    (out / _PREVIOUS_BEST).unlink(missing_ok=True)
    _write_metrics(out, history.rows)
    _log_epoch(row, improved)
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                writer.add_scalar(f"epoch/{key}", value, epoch)
        writer.flush()
    plot_curves(history.rows, out / "curves.png")
    if improved and ev is not None:
        plot_confusion(
            ev.report["confusion"],
            classes,
            out / "confusion.png",
            title=f"validation, epoch {epoch}: top-1 {top1:.3f}",
        )
    return best


def _keep_previous_best(out: Path) -> None:
    """Link the committed best.pt aside until last.pt records its successor: a kill in
    between leaves it for the resume to restore (a hard link: no copy, no extra space)."""
    best, previous = out / "best.pt", out / _PREVIOUS_BEST
    previous.unlink(missing_ok=True)
    if not best.is_file():
        return
    try:
        os.link(best, previous)
    except OSError:  # no hard links on this file system: a copy
        atomic_write(previous, lambda f: f.write(best.read_bytes()))


def _log_epoch(row: dict, improved: bool) -> None:
    message = (
        f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, train top-1 "
        f"{row['train_top1']:.3f}, {row['clips_per_s']:.1f} clips/s"
    )
    if "val_top1" in row:
        message += f", val top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"
    if row["skipped_samples"]:
        message += f", {row['skipped_samples']} unreadable samples skipped so far"
    message += "; saved best.pt and last.pt" if improved else "; saved last.pt"
    _logger.info(message)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL and PNGs still record everything
        _logger.warning("tensorboard is not installed; no TensorBoard events written")
        return None
    return SummaryWriter(str(out / "tensorboard"))
