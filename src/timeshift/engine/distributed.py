"""torch.distributed from torchrun's environment: rank-0 I/O, DDP wrapping, gathering."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from timeshift.errors import TimeshiftError

__all__ = [
    "SINGLE_PROCESS",
    "DistInfo",
    "all_gather_tensors",
    "cleanup",
    "init_distributed",
    "reduce_mean",
    "run_on_main",
    "wrap_ddp",
]

_logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistInfo()  # the default of functions that also run under torchrun


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
    single process when those are absent. NCCL on CUDA, gloo on CPU."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return SINGLE_PROCESS
    info = DistInfo(
        int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    )
    if info.world_size == 1:
        return info
    on_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if on_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_cuda else "gloo")
    _logger.debug("rank %d of %d joined", info.rank, info.world_size)
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / info.world_size


def all_gather_tensors(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate a tensor from every rank (first dimension may differ between ranks)."""
    if not info.enabled:
        return tensor
    size = torch.tensor([tensor.shape[0]])
    sizes = [torch.zeros_like(size) for _ in range(info.world_size)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def run_on_main(info: DistInfo, work: Callable[[], T]) -> T | None:
    """``work()`` on rank 0 while the other ranks wait; returns its result on rank 0 (``None``
    elsewhere). If it fails, every rank raises -- rank 0 the original error, the others a
    ``RuntimeError`` quoting it -- instead of waiting forever at the next collective."""
    if not info.enabled:
        return work()
    result, failure = None, None
    if info.is_main:
        try:
            result = work()
        except Exception as exc:
            failure = exc
    message = [f"{type(failure).__name__}: {failure}" if failure else None]
    dist.broadcast_object_list(message, src=0)
    if failure is not None:
        raise failure
    if message[0] is not None:
        raise TimeshiftError(f"rank 0 failed, so rank {info.rank} stops too: {message[0]}")
    return result


def wrap_ddp(model: torch.nn.Module, *, device: torch.device, info: DistInfo):
    """``DistributedDataParallel(model)`` with gradient buckets laid out like the gradients.

    DDP builds each bucket view with its parameter's strides and warns ("Grad strides do not
    match bucket view strides", a copy per step) when a gradient comes with others. A
    channels_last 1x1 convolution weight ``(O, I, 1, 1)`` is contiguous in both formats, so
    ``.contiguous(memory_format=torch.channels_last)`` leaves its strides ``(I, 1, 1, 1)``
    while the convolution's backward produces ``(I, 1, I, I)``: give such weights the
    canonical channels_last strides before DDP records them.
    """
    from torch.nn.parallel import DistributedDataParallel

    if getattr(model, "channels_last", False):
        _canonical_channels_last(model)
    ids = [info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _canonical_channels_last(model: torch.nn.Module) -> None:
    for param in model.parameters():
        if param.dim() != 4 or not param.is_contiguous(memory_format=torch.channels_last):
            continue
        canonical = torch.empty(
            param.shape, dtype=param.dtype, device=param.device, memory_format=torch.channels_last
        )
        if canonical.stride() != param.stride():
            param.data = canonical.copy_(param.data)
