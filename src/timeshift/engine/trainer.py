"""The training loop: explicit pieces (model, loader, optimiser, scaler) and a ``fit`` driver.

``fit`` runs single-process or under torchrun (DDP: DistributedSampler, optional SyncBN,
rank-0-only logging and checkpoints). Every epoch it writes ``best.pt`` (when validation top-1
improves) and then ``last.pt`` atomically in the library's own format -- ``timeshift.load_model``
rebuilds the model from either -- plus the training state (:class:`TrainState`: optimiser,
scheduler, scaler, epoch, best, history, torch RNG state), so that ``resume`` continues exactly
where it stopped.

``last.pt`` is the commit point of an epoch: ``metrics.jsonl`` and the plots are rewritten from
its history after it, and a resume repairs what a kill left half done (see
:mod:`timeshift.engine.run_directory`). Nothing is saved unless the weights, the optimiser state
and the validation outputs are all finite.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timeshift.data.flow import FlowSettings
from timeshift.data.formats import Annotations
from timeshift.engine.config import to_dict
from timeshift.engine.distributed import (
    SINGLE_PROCESS,
    DistInfo,
    cleanup,
    init_distributed,
    reduce_mean,
    run_on_main,
    wrap_ddp,
)
from timeshift.engine.evaluate import EvalResult, evaluate, mixed_precision
from timeshift.engine.figures import plot_confusion, plot_curves
from timeshift.engine.loaders import (
    build_eval_dataset,
    build_train_loader,
    build_val_loader,
    direction_meta,
    frame_options,
    input_modality,
    load_split,
    normalisation,
)
from timeshift.engine.optim import build_optimizer, build_scheduler
from timeshift.engine.run_directory import RunDirectory
from timeshift.engine.train_state import Resume, TrainState, epoch_score, read_resume
from timeshift.errors import TimeshiftError
from timeshift.models.checkpoints import load_checkpoint
from timeshift.models.preprocessing import default_scale_size
from timeshift.models.registry import create_model

__all__ = [
    "NonFiniteLossError",
    "NonFiniteModelError",
    "RunDirectoryError",
    "StepResult",
    "TrainState",
    "TrainingTask",
    "Validation",
    "evaluate",
    "fit",
    "train_one_epoch",
]

_logger = logging.getLogger(__name__)


class NonFiniteLossError(TimeshiftError):
    """The loss became NaN or infinite; training stopped before writing a checkpoint."""


class NonFiniteModelError(NonFiniteLossError):
    """The weights, optimiser state or outputs became NaN or infinite while the loss was still
    finite (a blow-up on the last step of an epoch); nothing of that epoch was saved."""


class RunDirectoryError(TimeshiftError):
    """The run directory cannot be created or written."""


@dataclass
class EpochStats:
    loss: float
    top1: float | None  # None: a task without a training accuracy (detection)
    lr: float
    clips_per_s: float
    seconds: float
    probe: torch.Tensor | None = None  # a few clips of the last batch, to check the outputs


@dataclass
class StepResult:
    """One training step of a task: its loss, the clips it saw, the correct predictions among
    them (``None``: the task has no accuracy) and a few inputs to check for finiteness."""

    loss: torch.Tensor
    count: int
    correct: torch.Tensor | None
    probe: torch.Tensor


def classification_step(model: nn.Module, batch, device: torch.device, amp: bool) -> StepResult:
    """Cross-entropy of a ``(clips, labels)`` batch (the recognition task's step)."""
    clips, labels = batch
    clips = clips.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    with mixed_precision(device, amp):
        logits = model(clips)
        loss = F.cross_entropy(logits, labels)
    correct = (logits.argmax(dim=1) == labels).sum()
    return StepResult(loss, labels.shape[0], correct, clips[:2])


class _LossMeter:
    """Loss and correct predictions summed on the device. Reading them is a host sync, done
    only at log steps and at the end of the epoch; the sums are float64 / integer, added step
    by step, so the epoch's mean loss is the one per-step ``loss.item()`` reads would give."""

    def __init__(self, device: torch.device) -> None:
        exact = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.total = torch.zeros((), dtype=exact, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0
        self._unread: list[tuple[int, torch.Tensor]] = []  # (iteration, loss) since last read

    def add(self, iteration: int, step: StepResult) -> None:
        loss = step.loss.detach()
        self.total += loss.to(self.total.dtype) * step.count
        if step.correct is not None:
            self.correct += step.correct
        self.seen += step.count
        self._unread.append((iteration, loss))

    def read(self, epoch: int) -> float:
        """The latest loss; raises :class:`NonFiniteLossError` naming the first step since the
        last read whose loss was NaN or infinite."""
        iterations = [i for i, _ in self._unread]
        losses = torch.stack([loss for _, loss in self._unread]).float().cpu()
        self._unread.clear()
        finite = torch.isfinite(losses)
        if not finite.all():
            k = int((~finite).nonzero()[0])
            raise NonFiniteLossError(
                f"loss is {losses[k].item()} at epoch {epoch}, iteration {iterations[k]}: "
                "training stopped (lower train.lr, or check the data); the last good checkpoint "
                "is kept"
            )
        return losses[-1].item()


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
    step=None,
) -> EpochStats:
    """One pass over ``loader``; returns mean loss / top-1 over all processes.

    ``step(model, batch, device, amp) -> StepResult`` computes a batch's loss (default:
    :func:`classification_step`; a detector's task gives its own).

    The loss is read from the device every ``log_every`` steps and at the end of the epoch (no
    host sync per step); a NaN or infinite loss then stops training with
    :class:`NonFiniteLossError` naming its step, before anything is saved.
    """
    from tqdm.auto import tqdm

    model.train()
    meter = _LossMeter(device)
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
    result = None
    for i, batch in enumerate(bar):
        step_now = (i + 1) % accumulate == 0 or i + 1 == steps
        # gradients of accumulation steps stay local: DDP all-reduces on the stepping one
        skip_sync = isinstance(model, DistributedDataParallel) and not step_now
        with model.no_sync() if skip_sync else nullcontext():
            result = (step or classification_step)(model, batch, device, amp)
            scaler.scale(result.loss / accumulate).backward()
        if step_now:
            _optimizer_step(model, optimizer, scaler, clip_grad)
        scheduler.step()
        meter.add(i, result)
        log_step = log_every > 0 and i % log_every == 0
        if log_step or i + 1 == steps:
            latest = meter.read(epoch)
            lr = optimizer.param_groups[0]["lr"]
            rate = meter.seen * info.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{latest:.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
            if writer is not None and log_step:
                writer.add_scalar("train/loss", latest, epoch * steps + i)
                writer.add_scalar("train/lr", lr, epoch * steps + i)
    bar.close()
    seconds = time.perf_counter() - start
    seen = meter.seen
    return EpochStats(
        loss=reduce_mean(meter.total.item() / max(seen, 1), info),
        top1=None
        if result is not None and result.correct is None
        else reduce_mean(meter.correct.item() / max(seen, 1), info),
        lr=optimizer.param_groups[0]["lr"],
        clips_per_s=seen * info.world_size / seconds,
        seconds=seconds,
        probe=result.probe.detach() if seen else None,
    )


def _optimizer_step(model, optimizer, scaler, clip_grad: float | None) -> None:
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(cfg: DictConfig, num_classes: int) -> nn.Module:
    modality, new_length = input_modality(cfg)
    model = create_model(
        cfg.model.name,
        num_classes=num_classes,
        num_segments=cfg.model.num_segments,
        dropout=cfg.model.dropout,
        partial_bn=cfg.model.partial_bn,
        **frame_options(modality, new_length),
        **to_dict(cfg.model.kwargs),
    )
    if cfg.model.pretrained:
        initialise_from(model, cfg.model.pretrained)
    return model


def initialise_from(model: nn.Module, checkpoint: str, *, strict: bool = True) -> None:
    """Load ``model.pretrained`` weights (any format :func:`load_checkpoint` reads, or the
    name of published weights, ``tsm_resnet50.kinetics400_8f``, fetched into the cache) and
    log what was loaded and what was left fresh."""
    from timeshift.models.pretrained import fetch_pretrained, is_pretrained_name, pretrained_entry

    source = "auto"
    if not Path(checkpoint).exists() and is_pretrained_name(checkpoint):
        source = pretrained_entry(checkpoint).checkpoint_format
        checkpoint = str(fetch_pretrained(checkpoint))
    report = load_checkpoint(model, checkpoint, source=source, strict=strict)
    _logger.info(
        "initialised from %s (%s format; %d tensors, %d left fresh)",
        checkpoint,
        report.source,
        len(report.loaded),
        len(report.initialised),
    )


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
    try:
        result = _fit(
            cfg,
            RunDirectory(output_dir),
            resume=resume,
            device=torch_device,
            info=info,
            progress=progress,
            allow_change=allow_config_change,
        )
        return result if info.is_main else {}
    finally:
        cleanup()


@dataclass
class _Run:
    """What the epochs of one ``fit`` share besides the :class:`TrainState`."""

    cfg: DictConfig
    task: TrainingTask
    directory: RunDirectory
    device: torch.device
    info: DistInfo
    progress: bool
    classes: list[str]
    train_set: Any  # VideoDataset: set_epoch() before each epoch; counts skipped samples
    sampler: Any  # DistributedSampler
    train_loader: Any
    val_loader: Any | None
    model: nn.Module  # as trained: wrapped in DDP under torchrun
    writer: Any  # TensorBoard's SummaryWriter on rank 0 (when installed), else None
    meta: dict  # stored with each checkpoint

    @property
    def amp(self) -> bool:
        return _uses_amp(self.cfg, self.device)


def _fit(
    cfg: DictConfig,
    directory: RunDirectory,
    *,
    resume: str | Path | None,
    device: torch.device,
    info: DistInfo,
    progress: bool,
    allow_change: bool,
) -> dict:
    if not info.is_main:
        logging.getLogger("timeshift").setLevel(logging.WARNING)
    torch.manual_seed(cfg.train.seed)
    previous = read_resume(resume, cfg, allow_change=allow_change) if resume else None
    task = training_task(cfg)
    train_data, val_data = task.load_data(cfg, directory, previous, info=info, progress=progress)
    classes = task.classes(train_data)
    model = _training_model(task, cfg, len(classes), device=device, info=info)
    train_set, sampler, train_loader = task.train_loader(cfg, train_data, info)
    val_loader = task.val_loader(cfg, val_data, info)
    state = _new_state(cfg, model, steps_per_epoch=len(train_loader), device=device, info=info)
    if previous is not None:
        state.resume(previous, allow_change=allow_change)
    run = _Run(
        cfg=cfg,
        task=task,
        directory=directory,
        device=device,
        info=info,
        progress=progress,
        classes=classes,
        train_set=train_set,
        sampler=sampler,
        train_loader=train_loader,
        val_loader=val_loader,
        model=wrap_ddp(model, device=device, info=info) if info.enabled else model,
        writer=_tensorboard(directory.path) if info.is_main else None,
        meta=task.checkpoint_meta(cfg, classes, train_data),
    )
    _log_start(run)
    result = {}
    for epoch in range(state.start_epoch, cfg.train.epochs):
        result = _epoch(run, state, epoch)
    if run.writer is not None:
        run.writer.close()
    return {**result, "best_val_top1": state.best.top1, "output_dir": str(directory.path)}


def _load_data(cfg, directory: RunDirectory, previous: Resume | None, *, info, progress):
    """The training and validation annotations, after rank 0 prepared the run directory."""
    # rank 0 prepares the directory and may generate the synthetic data; its failure is
    # every rank's (the others would otherwise wait for it forever)
    train_ann = run_on_main(info, lambda: _prepare_main(cfg, directory, previous, progress))
    if not info.is_main:
        train_ann = load_split(cfg.data, "train", progress=False)
    val_ann = (  # labelled by the training classes (a val folder maps its names to them)
        load_split(cfg.data, "val", progress=False, classes=train_ann.classes)
        if cfg.data.val or cfg.data.format == "synthetic"
        else None
    )
    if not train_ann.records:
        raise ValueError("the training set is empty (no records in data.train)")
    return train_ann, val_ann


def _prepare_main(cfg, directory: RunDirectory, previous: Resume | None, progress: bool):
    prepare_directory(directory, previous)
    return load_split(cfg.data, "train", progress=progress)


def prepare_directory(directory: RunDirectory, previous: Resume | None) -> None:
    """Check the run directory can be written and prepare it (repairing a resumed run's);
    rank 0 only, before the data is read."""
    try:
        directory.check_writable()
    except OSError as exc:
        raise RunDirectoryError(exc.strerror) from exc
    directory.prepare(previous)


def _val_loader(cfg, val_ann: Annotations | None, info: DistInfo):
    if val_ann is None or not val_ann.records:
        return None
    return build_val_loader(cfg, build_eval_dataset(cfg, val_ann), info)


def _training_model(
    task: TrainingTask, cfg: DictConfig, num_classes: int, *, device, info: DistInfo
) -> nn.Module:
    model = task.build_model(cfg, num_classes)
    if cfg.model.channels_last and hasattr(model, "set_channels_last"):
        model.set_channels_last(True)
    model.to(device)
    if info.enabled and cfg.train.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _uses_amp(cfg: DictConfig, device: torch.device) -> bool:
    return bool(cfg.train.amp and device.type == "cuda")


def _new_state(
    cfg: DictConfig, model: nn.Module, *, steps_per_epoch: int, device, info: DistInfo
) -> TrainState:
    t = cfg.train
    optimizer = build_optimizer(
        model,
        name=t.optimizer,
        lr=_scaled_lr(cfg, info),
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        nesterov=t.nesterov,
        fc_lr5=t.fc_lr5,
    )
    scheduler = build_scheduler(
        optimizer,
        kind=t.schedule,
        epochs=t.epochs,
        steps_per_epoch=steps_per_epoch,
        milestones=list(t.milestones),
        gamma=t.gamma,
        warmup_epochs=t.warmup_epochs,
    )
    return TrainState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=_uses_amp(cfg, device)),
        optimizer_name=t.optimizer,
        steps_per_epoch=steps_per_epoch,
        world_size=info.world_size,
        device=device,
    )


def _flow_meta(train_ann: Annotations) -> dict:
    """``{"flow": settings}`` the training flow folders were extracted with (their ``.done``
    markers), so that ``predict`` computes a video's flow the same way; ``{}`` when none say
    (folders of other tools)."""
    for record in train_ann.records[:20]:
        settings = FlowSettings.of_folder(record.path)
        if settings is not None:
            return {"flow": settings.to_dict()}
    _logger.info(
        "the training flow folders record no extraction settings (not written by extract-flow): "
        "predict will compute flow with its defaults unless told otherwise"
    )
    return {}


def _checkpoint_meta(cfg: DictConfig, classes: list[str], train_ann: Annotations) -> dict:
    """What inference reads from the run's checkpoints (``resolve_input_config``, ``test``)."""
    modality, new_length = input_modality(cfg)
    mean, std = normalisation(cfg)
    return {
        "classes": classes,
        "input_size": cfg.data.size,
        "scale_size": cfg.data.scale_size or default_scale_size(cfg.data.size),
        "mean": mean,
        "std": std,
        "modality": modality,  # the frames test / predict must read (flow folders for flow)
        "new_length": new_length,
        "num_segments": cfg.model.num_segments,
        # the test protocol `test` / `predict` use unless told otherwise: dense-trained models
        # are tested with dense clips (the reference's and MMAction2's protocol)
        "sampling": {
            "dense": bool(cfg.data.dense),
            "clips": cfg.eval.clips,
            "crops": cfg.eval.crops,
            "full_res": bool(cfg.eval.full_res),
        },
        "config": to_dict(cfg),
        **direction_meta(cfg.data),  # lets 'test' keep mirrored/dense views direction-correct
        **(_flow_meta(train_ann) if modality == "flow" else {}),
    }


@dataclass
class Validation:
    """A task's validation of one epoch: the ``val_*`` fields of the metrics row, the scores
    checked for finiteness, and what draws its figure into the run directory when the epoch is
    the best so far (``plot(directory, row)``)."""

    row: dict
    scores: torch.Tensor | None = None
    plot: Any = None


class TrainingTask:
    """What :func:`fit` asks of a kind of model; this one is video recognition (a classifier
    on clips, cross-entropy, top-1). ``cfg.task`` chooses it (:func:`training_task`); the
    detection task (:class:`timeshift.detection.training.DetectionTask`) overrides these."""

    name = "recognition"
    step = staticmethod(classification_step)

    def load_data(self, cfg, directory: RunDirectory, previous: Resume | None, *, info, progress):
        """``(train, val)`` data (``val`` ``None`` without validation)."""
        return _load_data(cfg, directory, previous, info=info, progress=progress)

    def classes(self, train: Annotations) -> list[str]:
        return list(train.classes)

    def build_model(self, cfg: DictConfig, num_classes: int) -> nn.Module:
        return build_model(cfg, num_classes)

    def train_loader(self, cfg: DictConfig, train: Annotations, info: DistInfo):
        """``(dataset, sampler, loader)``: the dataset's ``set_epoch`` is called every epoch."""
        return build_train_loader(cfg, train, info)

    def val_loader(self, cfg: DictConfig, val: Annotations | None, info: DistInfo):
        return _val_loader(cfg, val, info)

    def validate(self, run: _Run, model: nn.Module) -> Validation:
        ev = evaluate(
            model,
            run.val_loader,
            device=run.device,
            num_classes=len(run.classes),
            info=run.info,
            amp=run.amp,
            progress=run.progress,
        )

        def plot(directory: Path, row: dict) -> None:
            plot_confusion(
                ev.report["confusion"],
                run.classes,
                directory / "confusion.png",
                title=f"validation, epoch {row['epoch']}: top-1 {epoch_score(row):.3f}",
            )

        row = {
            "val_top1": ev.report["top1"],
            "val_top5": ev.report["top5"],
            "val_mean_class": ev.report["mean_class_accuracy"],
        }
        return Validation(row, ev.scores, plot)

    def checkpoint_meta(self, cfg: DictConfig, classes: list[str], train: Annotations) -> dict:
        return _checkpoint_meta(cfg, classes, train)


def training_task(cfg: DictConfig) -> TrainingTask:
    """The task ``cfg.task`` names: ``"recognition"`` (default) or ``"detection"``."""
    name = cfg.get("task", "recognition")
    if name == "recognition":
        return TrainingTask()
    if name == "detection":
        from timeshift.detection.training import DetectionTask

        return DetectionTask()
    raise ValueError(f"unknown task {name!r}; expected 'recognition' or 'detection'")


def _log_start(run: _Run) -> None:
    if run.info.is_main:
        _logger.info(
            "training %s on %d clips (%d classes), %d epochs, lr %.4g, %d process(es)",
            run.cfg.model.name,
            len(run.train_set),
            len(run.classes),
            run.cfg.train.epochs,
            _scaled_lr(run.cfg, run.info),
            run.info.world_size,
        )


# -- one epoch ----------------------------------------------------------------------------------
def _epoch(run: _Run, state: TrainState, epoch: int) -> dict:
    """Train and validate one epoch, check it, and (rank 0) commit it; its metrics row."""
    t = run.cfg.train
    run.train_set.set_epoch(epoch)
    run.sampler.set_epoch(epoch)
    stats = train_one_epoch(
        run.model,
        run.train_loader,
        state.optimizer,
        state.scheduler,
        state.scaler,
        device=run.device,
        epoch=epoch,
        clip_grad=t.clip_grad,
        accumulate=t.accumulate,
        amp=run.amp,
        info=run.info,
        writer=run.writer,
        log_every=t.log_every,
        progress=run.progress,
        step=run.task.step,
    )
    row = {
        "epoch": epoch,
        "train_loss": stats.loss,
        **({"train_top1": stats.top1} if stats.top1 is not None else {}),
        "lr": stats.lr,
        "clips_per_s": stats.clips_per_s,
        "seconds": stats.seconds,
        "skipped_samples": getattr(run.train_set, "skipped", 0),
    }
    ev = _validate(run, state.model, epoch)
    if ev is not None:
        row.update(ev.row)
    # every rank holds the same weights and gathered scores: all of them stop together
    _check_finite(state, ev, stats.probe, epoch=epoch, committed=run.directory.last)
    improved = state.record(row)
    if run.info.is_main:
        _end_of_epoch(run, state, ev, improved=improved)
    if run.info.enabled:
        torch.distributed.barrier()
    return row


def _validate(run: _Run, model: nn.Module, epoch: int) -> Validation | None:
    t = run.cfg.train
    due = (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs
    if run.val_loader is None or not due:
        return None
    return run.task.validate(run, model)


def _check_finite(state: TrainState, ev, probe, *, epoch: int, committed: Path) -> None:
    """Raise :class:`NonFiniteModelError` unless weights, optimiser state and outputs are
    finite (:meth:`TrainState.non_finite`)."""
    problem = state.non_finite(scores=None if ev is None else ev.scores, probe=probe)
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


def _end_of_epoch(run: _Run, state: TrainState, ev: EvalResult | None, *, improved: bool):
    """Commit the epoch (best.pt if improved, then last.pt, then metrics.jsonl), then log it
    and draw the plots from the committed history."""
    row = state.history[-1]
    run.directory.commit(state, meta=run.meta, improved=improved)
    _log_epoch(row, improved)
    if run.writer is not None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                run.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
        run.writer.flush()
    plot_curves(state.history, run.directory.path / "curves.png")
    if improved and ev is not None and ev.plot is not None:
        ev.plot(run.directory.path, row)


def _log_epoch(row: dict, improved: bool) -> None:
    message = f"epoch {row['epoch']}: loss {row['train_loss']:.4f}"
    if "train_top1" in row:
        message += f", train top-1 {row['train_top1']:.3f}"
    message += f", {row['clips_per_s']:.1f} clips/s"
    if "val_top1" in row:
        message += f", val top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"
    if "val_ap50" in row:
        message += f", val AP50 {row['val_ap50']:.3f}"
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
