"""The one DataLoader factory of every entry script: samplers, seeding, workers.

Every loader yields ``(batch, skipped)``: the dataset is wrapped in
:class:`datasets.base.SkipCounting`, so each batch carries how many corrupt or missing videos
its items replaced (counted in the worker that loaded them; the loops sum them and all-reduce
them under DDP). Three orders:

- ``"epoch"`` (training): an :class:`EpochSampler` (a shuffling :class:`DistributedSampler` over
  this rank's share; one process: ``num_replicas=1``) with ``drop_last``. Every item is drawn
  with its own seed, a function of ``(seed, epoch, position in the epoch's global order)``: its
  random draws (clip start, rate, crop, flip, colour) do not depend on which DataLoader worker
  loads it, on ``--workers``, or on the number of processes (N processes with batch b see the
  global batches of one process with batch N·b), and an epoch can start at any batch
  (:func:`start_epoch`): a run resumed mid-epoch sees exactly the batches a straight one would
  have seen next. :class:`DataTooSmall` when not one batch is left.
- ``"sequential"`` (testing, feature extraction): every item once, in dataset order.
- ``"shuffle"``: one shuffle per pass from a generator seeded once with ``seed`` (the
  temporal-order probe, a single process that does not resume).

Workers are not persistent, are seeded by :func:`utils.runtime.seed_worker` from the loader's
generator, and leave the preemption signals to the main process (:mod:`engine.preemption`).
"""
from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datasets.base import SkipCounting
from engine.preemption import ignore_signals_in_worker
from utils import distributed as dist_utils
from utils.runtime import derive_seed, seed_worker

ORDERS: tuple[str, ...] = ("epoch", "sequential", "shuffle")


def _init_worker(worker_id: int) -> None:
    seed_worker(worker_id)
    ignore_signals_in_worker()


class DataTooSmall(ValueError):
    """The dataset cannot fill a single global batch."""


class EpochSampler(DistributedSampler):
    """This rank's share of one epoch's shuffled order, as ``(index, item_seed)`` pairs, from the
    ``start``-th item on (:meth:`set_position`).

    ``item_seed`` belongs to the item's position in the epoch's *global* order (local position
    ``p`` of rank ``r`` of ``N`` is global position ``p·N + r``), drawn from a generator seeded
    with ``(seed, epoch)``.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch`` from its ``start``-th item of this rank (0 = from the beginning)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is outside the epoch's {self.num_samples} items")
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        draws = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        seeds = torch.randint(2**62, (self.total_size,), generator=draws)[self.rank::self.num_replicas]
        return iter(list(zip(indices, seeds.tolist()))[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededItems(Dataset):
    """``dataset[index]`` with the global CPU torch generator seeded by ``item_seed`` first: the
    items of an :class:`EpochSampler` (every random draw of the datasets comes from that
    generator, ``datasets/transforms.py``)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> object:
        index, item_seed = key
        torch.default_generator.manual_seed(item_seed)
        return self.dataset[index]


def make_loader(dataset: Dataset, batch_size: int, *, workers: int, device: torch.device,
                order: str = "sequential", seed: int | None = None,
                batch_flag: str = "--batch_size") -> DataLoader:
    """A loader of ``(batch, skipped)`` over ``SkipCounting(dataset)`` in ``order`` (see the
    module docstring). ``seed``: the ``"shuffle"`` order's seed; with ``"sequential"``, an
    optional seed of the worker seeds (without it they come from the global torch RNG).
    ``batch_flag`` names the flag to lower in the :class:`DataTooSmall` message."""
    if order not in ORDERS:
        raise ValueError(f"unknown loader order {order!r}; choose one of {ORDERS}")
    counting: Dataset = SkipCounting(dataset)
    sampler, generator = None, None
    if order == "epoch":
        sampler = EpochSampler(counting, num_replicas=dist_utils.world_size(), rank=dist_utils.rank(),
                               seed=seed or 0)
        counting = SeededItems(counting)
        generator = torch.Generator()
    elif order == "shuffle" or seed is not None:
        generator = torch.Generator().manual_seed(seed or 0)
    loader = DataLoader(counting, batch_size=batch_size, sampler=sampler, shuffle=order == "shuffle",
                        num_workers=workers, pin_memory=device.type == "cuda",
                        drop_last=order == "epoch", worker_init_fn=_init_worker, generator=generator,
                        persistent_workers=False)
    if order == "epoch" and len(loader) == 0:
        world = dist_utils.world_size()
        raise DataTooSmall(f"{len(counting)} usable videos cannot fill one global batch of {batch_size} x "
                           f"{world} process(es) = {batch_size * world}; lower {batch_flag} or add "
                           "videos to the CSV")
    return loader


def start_epoch(loader: DataLoader, seed: int, rank: int, epoch: int, first_batch: int = 0) -> None:
    """Start epoch ``epoch`` of an ``"epoch"``-order loader at its batch ``first_batch`` (a run
    resumed mid-epoch); its data is a function of ``(seed, epoch)`` only.

    Sets the sampler's epoch (shuffle order, same on every rank) and start, re-seeds the loader
    generator (worker seeds) and this process's global RNGs.
    """
    loader.sampler.set_position(epoch, first_batch * loader.batch_size)
    loader.generator.manual_seed(derive_seed(seed, rank, epoch, 0))
    s = derive_seed(seed, rank, epoch, 1)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
