"""The training loop: explicit pieces (model, loader, optimiser, scaler) and a ``fit`` driver.

``fit`` runs single-process or under torchrun (DDP: DistributedSampler, optional SyncBN,
rank-0-only logging and checkpoints). Every epoch it writes ``last.pt`` (and ``best.pt`` when
validation top-1 improves) atomically in the library's own format -- ``timeshift.load_model``
rebuilds the model from either -- plus the optimiser, scheduler, scaler, epoch and torch RNG
state, so that ``resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timeshift.engine.config import to_dict
from timeshift.engine.data import (
    build_eval_dataset,
    build_train_loader,
    build_val_loader,
    load_split,
)
from timeshift.engine.distributed import (
    DistInfo,
    all_gather_tensors,
    cleanup,
    init_distributed,
    reduce_mean,
)
from timeshift.engine.metrics import classification_report
from timeshift.engine.optim import build_optimizer, build_scheduler
from timeshift.engine.plots import plot_confusion, plot_curves
from timeshift.models.checkpoints import load_checkpoint, read_checkpoint, save_model
from timeshift.models.registry import create_model

__all__ = ["NonFiniteLossError", "evaluate", "fit", "train_one_epoch"]

_logger = logging.getLogger(__name__)
SINGLE_PROCESS = DistInfo()


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before writing a checkpoint."""


@dataclass
class EpochStats:
    loss: float
    top1: float
    lr: float
    clips_per_s: float
    seconds: float


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
) -> dict:
    """Train ``cfg`` into ``output_dir``; returns the final metrics (rank 0)."""
    torch_device = _device(device)
    info = init_distributed(torch_device)
    if info.enabled and torch_device.type == "cuda":
        torch_device = torch.device("cuda", info.local_rank)
    out = Path(output_dir)
    try:
        return _fit(cfg, out, resume, torch_device, info, progress)
    finally:
        cleanup()


def _fit(cfg, out: Path, resume, device: torch.device, info: DistInfo, progress: bool) -> dict:
    if not info.is_main:
        logging.getLogger("timeshift").setLevel(logging.WARNING)
    torch.manual_seed(cfg.train.seed)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        train_ann = load_split(cfg.data, "train", progress=progress)
    if info.enabled:
        torch.distributed.barrier()  # rank 0 may have generated the synthetic data
    if not info.is_main:
        train_ann = load_split(cfg.data, "train", progress=False)
    val_ann = (
        load_split(cfg.data, "val", progress=False)
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

    start_epoch, best, history = 0, -1.0, History()
    if resume:
        state = read_checkpoint(resume)
        train_state = state.get("train_state")
        if not train_state:
            raise ValueError(f"{resume} has no training state (was it written by 'train'?)")
        load_checkpoint(model, state, source="timeshift")
        optimizer.load_state_dict(train_state["optimizer"])
        scheduler.load_state_dict(train_state["scheduler"])
        scaler.load_state_dict(train_state["scaler"])
        start_epoch = train_state["epoch"] + 1
        best = train_state["best_top1"]
        history.rows = list(train_state["history"])
        _set_rng_state(train_state["rng"], device)
        _logger.info("resumed from %s at epoch %d", resume, start_epoch)

    ddp = (
        DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.type == "cuda" else None
        )
        if info.enabled
        else model
    )
    writer = _tensorboard(out) if info.is_main else None
    meta = {
        "classes": classes,
        "input_size": cfg.data.size,
        "scale_size": cfg.data.scale_size or cfg.data.size * 256 // 224,
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "config": to_dict(cfg),
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
                ev if "val_top1" in row else None,
                classes,
            )
        if info.enabled:
            torch.distributed.barrier()
        result = row
    if writer is not None:
        writer.close()
    result = {**result, "best_val_top1": best, "output_dir": str(out)}
    return result


def _end_of_epoch(
    out, model, optimizer, scheduler, scaler, device, row, history, best, meta, writer, ev, classes
) -> float:
    epoch = row["epoch"]
    message = (
        f"epoch {epoch}: loss {row['train_loss']:.4f}, train top-1 "
        f"{row['train_top1']:.3f}, {row['clips_per_s']:.1f} clips/s"
    )
    if "val_top1" in row:
        message += f", val top-1 {row['val_top1']:.3f} top-5 {row['val_top5']:.3f}"
    if row["skipped_samples"]:
        message += f", {row['skipped_samples']} unreadable samples skipped so far"
    _logger.info(message)
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float) and math.isfinite(value):
                writer.add_scalar(f"epoch/{key}", value, epoch)
        writer.flush()
    plot_curves(history.rows, out / "curves.png")
    top1 = row.get("val_top1", row["train_top1"])
    improved = top1 > best
    best = max(best, top1)
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best_top1": best,
        "history": history.rows,
        "rng": _rng_state(device),
    }
    epoch_meta = {**meta, "epoch": epoch, "top1": top1}
    save_model(model, out / "last.pt", meta=epoch_meta, extra={"train_state": train_state})
    if improved:
        save_model(model, out / "best.pt", meta=epoch_meta)
        if ev is not None:
            plot_confusion(
                ev.report["confusion"],
                classes,
                out / "confusion.png",
                title=f"validation, epoch {epoch}: top-1 {top1:.3f}",
            )
    return best


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL and PNGs still record everything
        _logger.warning("tensorboard is not installed; no TensorBoard events written")
        return None
    return SummaryWriter(str(out / "tensorboard"))
