"""Data-parallel training under ``torchrun``: process group, gradient averaging, per-rank
random streams. The estimators call flow methods that ``DistributedDataParallel``'s hooks do not
see, so every rank runs its estimator on its share of the batch and the gradients are averaged
by one ``all_reduce`` after ``backward`` (exactly the whole batch's gradient for a mean loss).
Every collective is a no-op for a single process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    """This process: ``rank`` of ``world_size`` (``local_rank`` on its node); ``enabled`` is
    False for a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, timeout_s: float = 7200.0) -> DistContext:
    """Join the process group of ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, …):
    ``nccl`` for CUDA, ``gloo`` for the CPU; nothing without it or with one process.
    ``timeout_s`` bounds how long ranks wait for each other (e.g. for rank 0's samples)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistContext()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend="nccl" if device_type == "cuda" else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, enabled=True)


def shutdown(ctx: DistContext, together: bool = False) -> None:
    """Leave the process group. ``together``: every rank is known to reach this call (a
    finished or jointly stopped run), so they first wait for each other. Without that wait a
    rank that finished early (rank 0 still writes the summary and plots) tore down its
    connections while a peer still used them, and under load a rank aborted in the C++
    runtime ("terminate called without an active exception") after a clean run."""
    if ctx.enabled and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def stream_seed(seed: int, rank: int, stream: int, *more: int) -> int:
    """A 63-bit seed for stream ``stream`` of ``rank`` (and further integers, e.g. a step),
    mixed from ``seed`` by NumPy's ``SeedSequence`` (``seed + rank`` would collide)."""
    state = np.random.SeedSequence([seed, rank, stream, *more]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def average_gradients(params: Sequence[nn.Parameter], ctx: DistContext) -> None:
    """Replace every ``p.grad`` by its mean over all ranks (one ``all_reduce`` of one flat
    buffer). Parameters without a gradient count as zero gradients."""
    if not ctx.enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def all_reduce(values: Tensor, ctx: DistContext, op: str = "sum") -> Tensor:
    """The element-wise ``"sum"`` or ``"max"`` of ``values`` over all ranks, in place."""
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return values


def broadcast_parameters(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if ctx.enabled:
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t, src=0)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
