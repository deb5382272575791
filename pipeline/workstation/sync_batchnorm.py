"""BatchNorm over the global batch when training data-parallel.

Each rank normalising by its own shard's statistics trains a different model from one
process with the same global batch (statistics of B/N images, not B), so N ranks could not
reproduce a one-process run. torch's ``SyncBatchNorm`` fixes that on GPUs only ("expected
input tensor to be on GPU"); on CPUs, with gloo, :class:`GlobalBatchNorm2d` does the same
with two differentiable all-reduces per layer (the mean, then the spread about it).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are the whole job's batch; alone, in eval
    mode, or outside a process group, it is ``BatchNorm2d`` (same state dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32 at least, as BatchNorm
        count = torch.tensor([float(xf.numel() // xf.shape[1])], device=x.device)
        dist.all_reduce(count)  # ranks' batches may differ in size
        mean = _SumOverRanks.apply(xf.sum((0, 2, 3))) / count
        centred = xf - mean.view(1, -1, 1, 1)
        var = _SumOverRanks.apply(centred.square().sum((0, 2, 3))) / count
        if self.track_running_stats:
            self._track(mean.detach(), var.detach(), float(count))
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """Running statistics as ``BatchNorm2d`` updates them (the variance unbiased)."""
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(var * count / max(1.0, count - 1), alpha=momentum)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every rank's loss
    depends on every rank's contribution to the statistics."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: D102 - autograd's protocol
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return _SumOverRanks.apply(grad.contiguous())


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every ``BatchNorm2d`` computing global-batch statistics: torch's
    ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm2d` elsewhere. Weights, buffers and
    state dict keys are kept, so checkpoints load into the plain model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(model, name, _global_copy(child))
        else:
            synchronise_batchnorm(child, device)
    return model


def _global_copy(bn: nn.BatchNorm2d) -> GlobalBatchNorm2d:
    out = GlobalBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    out.load_state_dict(bn.state_dict())
    like = next((t for t in (bn.weight, bn.running_mean) if t is not None), None)
    if like is not None:  # a model already in float64 (train.precision = "fp64") stays so
        out.to(like.device, like.dtype)
    out.train(bn.training)
    return out
