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
    local_rank: int = 0  # on this node: 0 is the node's first process
    restarts: int = 0    # how often torchrun restarted the group after a failure
    max_restarts: int = 0  # how often it may (--max-restarts)

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
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    max_restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    # torchrun's c10d rendezvous lends its store to the workers, and a group it restarts
    # read the dead attempt's addresses there ("Connection refused", or a hang; pytorch
    # issue 135712): each attempt gets keys of its own.
    store = dist.PrefixStore(f"edgeresnet/attempt-{restarts}/", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=world, timeout=timeout)
    return DistContext(dist.get_rank(), dist.get_world_size(), device, local, restarts, max_restarts)


def once(ctx: DistContext, what: str, action: Callable[[], T], timeout_s: float) -> T:
    """``action`` (which writes shared files: laying out or downloading a dataset) run by
    rank 0 first; then by the first rank on each other node, whose disk may not be rank 0's
    (on a shared one it finds rank 0's files, on its own it makes them); then by the rest,
    which find their node's. Run by every rank at once it raced: two ranks renamed their
    copies onto one folder. A failure ends every rank, the failed one with its own error and
    the others with one line naming it and the cause; a rank that waits longer than
    ``timeout_s`` says what it waited for."""
    if not ctx.active:
        return action()
    result = None
    turns = (ctx.rank == 0, ctx.rank != 0 and ctx.local_rank == 0, ctx.local_rank != 0)
    for mine in turns:
        status, failure = "ok", None
        if mine:
            try:
                result = action()
            except Exception as exc:  # noqa: BLE001 - told to the other ranks, then raised here
                status, failure = _failure(ctx, what, exc), exc
        failed = [s for s in _gather(ctx, status, what, timeout_s) if s != "ok"]
        if failure is not None:
            raise failure
        if failed:
            raise RankError(f"rank {ctx.rank}: {failed[0]}")
    return result


def from_main(ctx: DistContext, what: str, action: Callable[[], T], timeout_s: float) -> T:
    """``action``'s result as rank 0 computed it, on every rank: what only rank 0's disk
    holds (the checkpoint to resume from, when nodes do not share the run folder)."""
    if not ctx.active:
        return action()
    box: list = ["ok", None]
    if ctx.is_main:
        try:
            box[1] = action()
        except Exception as exc:  # noqa: BLE001 - told to the other ranks, then raised here
            _send(ctx, [_failure(ctx, what, exc), None], what, timeout_s)
            raise
    _send(ctx, box, what, timeout_s)
    if box[0] != "ok":
        raise RankError(f"rank {ctx.rank}: {box[0]}")
    return box[1]


def _failure(ctx: DistContext, what: str, exc: Exception) -> str:
    """What the other ranks are told when this one fails ``what``."""
    return f"rank {ctx.rank} failed {what} ({type(exc).__name__}: {one_line(exc)})"


def _gather(ctx: DistContext, status: str, what: str, timeout_s: float) -> list[str]:
    """Every rank's outcome, on every rank."""
    statuses: list = [None] * ctx.world_size
    _waiting(ctx, what, timeout_s, lambda: dist.all_gather_object(statuses, status))
    return statuses


def _send(ctx: DistContext, box: list, what: str, timeout_s: float) -> None:
    """Rank 0's ``box`` to every rank, in place."""
    _waiting(ctx, what, timeout_s, lambda: dist.broadcast_object_list(box, src=0))


def _waiting(ctx: DistContext, what: str, timeout_s: float, collective: Callable[[], None]) -> None:
    """A collective whose wait beyond the timeout (or a peer lost) is one line."""
    try:
        collective()
    except (RuntimeError, dist.DistBackendError) as exc:
        raise RankError(f"rank {ctx.rank}: waited for the other ranks {what} and got no answer within "
                        f"{timeout_s:.0f} s or lost one ({one_line(exc)[:160]}); train.dist_timeout_s "
                        f"sets the wait") from None


def lost_rank(ctx: DistContext, exc: BaseException) -> RankError | None:
    """``exc`` as one line when it is the process group losing a rank mid-training (a
    killed or crashed worker: gloo's "Connection reset by peer", an NCCL error), which is
    no bug to report; None for anything else."""
    text = str(exc)
    if not ctx.active or not (isinstance(exc, dist.DistBackendError) or "/gloo/" in text or "NCCL" in text):
        return None
    how = "torchrun restarts the group from last.pt" if ctx.restarts < ctx.max_restarts else "no restarts left"
    cause = text.split("] ", 1)[-1].split(". ", 1)[0][:160]  # "Read error [...]: Connection reset by peer"
    return RankError(f"rank {ctx.rank}: lost another rank ({cause}); {how} (--max-restarts {ctx.max_restarts})")


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
