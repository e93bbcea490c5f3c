"""BatchNorm synchronised over a CPU process group (gloo), the CPU counterpart of
``torch.nn.SyncBatchNorm`` (which runs on GPUs only): under DDP every BatchNorm layer normalises
with the statistics of the *global* batch (docs/method.md §3 "Distributed semantics"), so N CPU
processes with batch b compute what one process with batch N·b computes, which the multi-process
tests compare.

The statistics are two differentiable all-reduces per layer (``torch.distributed.nn``): the sum,
then the sum of squared deviations from the global mean. Their backward all-reduces the
gradient, so each rank's parameters receive the gradient of every rank's loss, as in one process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from utils import distributed as dist_utils


class _SyncedOverRanks:
    """Mixin for a ``nn.BatchNorm{1,2,3}d``: in training under a process group, normalise with
    the global batch's mean and (biased) variance, and update the running statistics with them
    (unbiased variance, as PyTorch's BatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not (self.training and dist_utils.is_distributed()):
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)  # type: ignore[attr-defined]
        dtype, x = x.dtype, x.float()  # statistics in float32 under autocast too, as torch's BatchNorm
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)
        dist.all_reduce(count)
        n = float(count.item())
        mean = dist_nn.all_reduce(x.sum(dims)) / n
        centred = x - mean.reshape(shape)
        var = dist_nn.all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:  # type: ignore[attr-defined]
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[attr-defined]
                momentum = self.momentum  # type: ignore[attr-defined]
                factor = 1.0 / float(self.num_batches_tracked) if momentum is None else momentum  # type: ignore[attr-defined]
                self.running_mean.lerp_(mean.detach(), factor)  # type: ignore[attr-defined]
                self.running_var.lerp_(var.detach() * n / max(n - 1.0, 1.0), factor)  # type: ignore[attr-defined]
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)  # type: ignore[attr-defined]
        if self.affine:  # type: ignore[attr-defined]
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)  # type: ignore[attr-defined]
        return y.to(dtype)


class CpuSyncBatchNorm1d(_SyncedOverRanks, nn.BatchNorm1d):
    """:class:`nn.BatchNorm1d` synchronised over the process group in training."""


class CpuSyncBatchNorm2d(_SyncedOverRanks, nn.BatchNorm2d):
    """:class:`nn.BatchNorm2d` synchronised over the process group in training."""


class CpuSyncBatchNorm3d(_SyncedOverRanks, nn.BatchNorm3d):
    """:class:`nn.BatchNorm3d` synchronised over the process group in training."""


_SYNCED = {nn.BatchNorm1d: CpuSyncBatchNorm1d, nn.BatchNorm2d: CpuSyncBatchNorm2d,
           nn.BatchNorm3d: CpuSyncBatchNorm3d}


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every plain ``BatchNorm{1,2,3}d`` replaced, in place, by its synchronised
    twin holding the very same parameter and buffer tensors (state-dict keys unchanged; the synchronised
    classes are subclasses of the plain ones). Returns the module (a new one only when
    ``module`` itself is a BatchNorm layer)."""
    synced = _SYNCED.get(type(module))
    if synced is not None:
        twin = synced(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, device=torch.device("meta"))
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(twin, name, tensor)  # the same tensors: an optimiser built before keeps working
        twin.train(module.training)
        return twin
    for name, child in module.named_children():
        converted = convert_cpu_sync_batchnorm(child)
        if converted is not child:
            module.add_module(name, converted)
    return module
