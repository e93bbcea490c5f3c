"""torch.distributed plumbing shared by the entry scripts and the objectives (docs/method.md §3,
"Distributed semantics").

Every helper here is a no-op (or the identity) when ``torch.distributed`` is not initialised, so
the same code runs in one CPU process and under ``torchrun`` on many GPUs.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (equal shapes on all ranks), no gradient."""
    if not is_distributed():
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` whose backward all-reduces (sums) the incoming gradient over ranks and
    returns this rank's rows: every rank's loss sends its gradient to the rows' owner."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rows = local_rows(x.shape[0])
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows]


GATHER_GRADS = ("full", "local")


def all_gather_with_grad(x: torch.Tensor, grad: str = "full") -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably.

    ``grad="full"``: the backward pass sums, over ranks, the gradients that every rank's loss
    sends to each row and returns to each rank the part for its own rows. With DDP's gradient
    averaging this gives exactly the gradient of the mean of the per-rank losses, i.e. of one
    process holding the whole global batch (tested in ``tests/test_losses_distributed.py``).

    ``grad="local"``: the reference code's ``all_gather``: the gathered rows carry no gradient
    except this rank's own slice, which is ``x`` itself, so each rank's loss reaches only its
    own rows and nothing is all-reduced in the backward pass (docs/method.md §3, "Distributed
    semantics"). Same values; the gradient differs from ``"full"`` under more than one process.

    Without a process group both return ``x``.
    """
    if grad not in GATHER_GRADS:
        raise ValueError(f"grad={grad!r}: expected one of {GATHER_GRADS}")
    if not is_distributed():
        return x
    if grad == "local":
        gathered = all_gather_no_grad(x)
        own = local_rows(x.shape[0])
        return torch.cat([gathered[:own.start], x, gathered[own.stop:]], dim=0)
    return _GatherWithGrad.apply(x)


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity without a process group); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_max_(x: torch.Tensor) -> torch.Tensor:
    """In-place maximum over ranks (identity without a process group); returns ``x``."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def local_rows(local_batch: int) -> slice:
    """The slice of a gathered tensor (dim 0) that holds this rank's ``local_batch`` rows."""
    start = rank() * local_batch
    return slice(start, start + local_batch)
