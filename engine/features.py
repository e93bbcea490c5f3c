"""Feature and logit extraction over a DataLoader, and the strided split of a test set over
ranks (each video scored exactly once under DDP, docs/method.md §5 "Test")."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from utils import distributed as dist_utils
from utils.amp import autocast
from utils.logging import progress


@torch.no_grad()
def extract(fn: Callable[[Tensor], Tensor], loader: Iterable, device: torch.device,
            amp_dtype: torch.dtype | None = None, show_progress: bool = False,
            desc: str = "extract") -> tuple[Tensor, Tensor, int]:
    """Run ``fn`` (clips ``(M, 3, T, H, W)`` -> ``(M, D)``: pooled features or logits) over a
    loader of ``((clips, label), skipped)`` batches (:func:`engine.loader.make_loader`); clips are
    ``(b, 3, T, H, W)`` (one clip per video, ``K = 1``) or ``(b, K, 3, T, H, W)`` (test mode).
    Returns ``(N, K, D)`` float32 and ``(N,)`` int64, both on the CPU, in loader order, and the
    number of videos this process's loader skipped (not reduced over ranks)."""
    outputs: list[Tensor] = []
    labels: list[Tensor] = []
    skipped = 0
    for (clips, label), skipped_now in progress(loader, enabled=show_progress, desc=desc):
        skipped += int(skipped_now.sum())
        if clips.dim() == 5:
            clips = clips.unsqueeze(1)
        b, k = clips.shape[:2]
        x = clips.flatten(0, 1).to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            out = fn(x)
        outputs.append(out.float().reshape(b, k, -1).cpu())
        labels.append(torch.as_tensor(label).long().reshape(b))
    if not outputs:
        raise ValueError(f"{desc}: the loader yielded no batch (empty CSV?)")
    return torch.cat(outputs), torch.cat(labels), skipped


def sum_over_ranks(count: int, device: torch.device) -> int:
    """``count`` summed over the ranks of the process group (itself without one): e.g. the
    skipped videos of each rank's test shard."""
    if not dist_utils.is_distributed():
        return count
    return int(dist_utils.all_reduce_sum_(torch.tensor([count], device=device)).item())


def interleave_shards(stacked: Tensor, total: int) -> Tensor:
    """Undo a strided split: ``stacked[r, j]`` holds item ``j * W + r`` of ``total`` items
    (``W = stacked.shape[0]`` ranks, short shards zero-padded to equal length); returns the
    ``total`` items in order."""
    w, m = stacked.shape[:2]
    if w * m < total:
        raise ValueError(f"{w} shards of {m} rows cannot hold {total} items")
    return stacked.transpose(0, 1).reshape(w * m, *stacked.shape[2:])[:total]


def shard_indices(total: int) -> range:
    """This rank's items of a strided split over ranks (every item once, no padding) —
    the evaluation counterpart of a DistributedSampler; ``range(total)`` without DDP."""
    return range(dist_utils.rank(), total, dist_utils.world_size())


def gather_shards(local: Tensor, total: int, device: torch.device) -> Tensor:
    """All-gather the per-rank results of :func:`shard_indices` and put them back in dataset
    order (identity without a process group); returns a CPU tensor."""
    if not dist_utils.is_distributed():
        return local
    world = dist_utils.world_size()
    rows = math.ceil(total / world)
    pad = local.new_zeros((rows - local.shape[0], *local.shape[1:]))
    gathered = dist_utils.all_gather_no_grad(torch.cat([local, pad]).to(device)).cpu()
    return interleave_shards(gathered.reshape(world, rows, *local.shape[1:]), total)


def eval_batch_size(batch_size: int, clips_per_video: int) -> int:
    """Videos per test batch so that one forward pass sees about ``batch_size`` clips."""
    return max(1, batch_size // clips_per_video)
