"""The one DataLoader factory of every entry script: samplers, seeding, workers.

Every loader yields ``(batch, skipped)``: the dataset is wrapped in
:class:`datasets.base.SkipCounting`, so each batch carries how many corrupt or missing videos
its items replaced (counted in the worker that loaded them; the loops sum them and all-reduce
them under DDP). Three orders:

- ``"epoch"`` (training): a shuffling :class:`DistributedSampler` over this rank's share (one
  process: ``num_replicas=1``), ``drop_last``, and a generator that :func:`start_epoch` re-seeds,
  so the data of epoch ``e`` depends only on ``(seed, rank, e)``: a resumed run sees exactly the
  batches of a straight one. :class:`DataTooSmall` when not one batch is left.
- ``"sequential"`` (testing, feature extraction): every item once, in dataset order.
- ``"shuffle"``: one shuffle per pass from a generator seeded once with ``seed`` (the
  temporal-order probe, a single process that does not resume).

Workers are not persistent and are seeded by :func:`utils.runtime.seed_worker` from the
loader's generator.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datasets.base import SkipCounting
from utils import distributed as dist_utils
from utils.runtime import derive_seed, seed_worker

ORDERS: tuple[str, ...] = ("epoch", "sequential", "shuffle")


class DataTooSmall(ValueError):
    """The dataset cannot fill a single global batch."""


def make_loader(dataset: Dataset, batch_size: int, *, workers: int, device: torch.device,
                order: str = "sequential", seed: int | None = None,
                batch_flag: str = "--batch_size") -> DataLoader:
    """A loader of ``(batch, skipped)`` over ``SkipCounting(dataset)`` in ``order`` (see the
    module docstring). ``seed``: the ``"shuffle"`` order's seed; with ``"sequential"``, an
    optional seed of the worker seeds (without it they come from the global torch RNG).
    ``batch_flag`` names the flag to lower in the :class:`DataTooSmall` message."""
    if order not in ORDERS:
        raise ValueError(f"unknown loader order {order!r}; choose one of {ORDERS}")
    counting = SkipCounting(dataset)
    sampler, generator = None, None
    if order == "epoch":
        sampler = DistributedSampler(counting, num_replicas=dist_utils.world_size(),
                                     rank=dist_utils.rank(), shuffle=True, seed=seed or 0,
                                     drop_last=True)
        generator = torch.Generator()
    elif order == "shuffle" or seed is not None:
        generator = torch.Generator().manual_seed(seed or 0)
    loader = DataLoader(counting, batch_size=batch_size, sampler=sampler, shuffle=order == "shuffle",
                        num_workers=workers, pin_memory=device.type == "cuda",
                        drop_last=order == "epoch", worker_init_fn=seed_worker, generator=generator,
                        persistent_workers=False)
    if order == "epoch" and len(loader) == 0:
        world = dist_utils.world_size()
        raise DataTooSmall(f"{len(counting)} usable videos cannot fill one global batch of {batch_size} x "
                           f"{world} process(es) = {batch_size * world}; lower {batch_flag} or add "
                           "videos to the CSV")
    return loader


def start_epoch(loader: DataLoader, seed: int, rank: int, epoch: int) -> None:
    """Make epoch ``epoch``'s data of an ``"epoch"``-order loader a function of
    ``(seed, rank, epoch)`` only.

    Sets the sampler's epoch (shuffle order, same on every rank), re-seeds the loader generator
    (worker seeds) and this process's global RNGs (augmentations drawn in the main process when
    ``--workers 0``, dropout).
    """
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(derive_seed(seed, rank, epoch, 0))
    s = derive_seed(seed, rank, epoch, 1)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
