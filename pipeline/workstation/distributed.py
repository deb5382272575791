"""Data-parallel training under ``torchrun`` (gloo on CPUs, nccl on GPUs).

Without torchrun's environment this is a one-process context and nothing is initialised,
so the same training code runs alone or as one of N ranks.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from pipeline.errors import PipelineError, one_line

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA where there is one."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


class RankError(PipelineError):
    """A rank could not go on because another failed or never came: one line naming both."""


def init_distributed(device_name: str, timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun job if this process was started by torchrun; ``timeout_s`` bounds
    every wait on the other ranks (a rank preparing the data included)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world <= 1:
        return DistContext(device=device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), device)


def once(ctx: DistContext, what: str, action: Callable[[], T], timeout_s: float) -> T:
    """``action`` (which writes shared files: laying out or downloading a dataset) run by
    rank 0 alone, then by the others once it succeeded, when they find its files there.
    Run by every rank at once it raced: two ranks renamed their copies onto one folder.
    A failure on rank 0 ends every rank with one line naming rank 0 and the cause; a rank
    that waits longer than ``timeout_s`` says what it waited for."""
    if not ctx.active:
        return action()
    status, result = ["ok"], None
    if ctx.is_main:
        try:
            result = action()
        except Exception as exc:  # noqa: BLE001 - told to the other ranks, then raised here
            status = [f"{type(exc).__name__}: {one_line(exc)}"]
            _tell(ctx, status, what, timeout_s)
            raise
    _tell(ctx, status, what, timeout_s)
    if status[0] != "ok":
        raise RankError(f"rank {ctx.rank}: rank 0 failed {what} ({status[0]})")
    return result if ctx.is_main else action()


def _tell(ctx: DistContext, status: list, what: str, timeout_s: float) -> None:
    """Rank 0's outcome to every rank; a wait beyond the timeout is one line."""
    try:
        dist.broadcast_object_list(status, src=0)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise RankError(f"rank {ctx.rank}: waited for rank 0 {what} and got no answer within "
                        f"{timeout_s:.0f} s or lost it ({one_line(exc)[:160]}); train.dist_timeout_s "
                        f"sets the wait") from None


def all_sum(ctx: DistContext, values: list[float]) -> list[float]:
    """Sum ``values`` over all ranks (identity when alone)."""
    if not ctx.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def params_in_sync(ctx: DistContext, model: torch.nn.Module) -> bool:
    """True when every rank holds the same weights, as data parallelism promises."""
    if not ctx.active:
        return True
    total = sum(p.detach().double().sum() for p in model.parameters()).reshape(1).to(ctx.device)
    low, high = total.clone(), total.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.isclose(low, high, rtol=0, atol=1e-9 * max(1.0, abs(total.item()))).item())


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
