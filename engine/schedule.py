"""Learning-rate schedules (METHOD.md §4: Adam, lr × 0.1 at epoch ``--lr_decay``)."""
from __future__ import annotations

from collections.abc import Iterable

import torch


def step_decay_lr(base_lr: float, epoch: int, milestones: int | Iterable[int], gamma: float = 0.1) -> float:
    """Learning rate of ``epoch`` (0-based) under a step schedule (METHOD §4).

    The rate is ``base_lr * gamma ** k`` where ``k`` is the number of milestones ``<= epoch``:
    with ``--lr_decay 70`` epochs 0..69 run at ``base_lr`` and epochs 70.. at ``base_lr / 10``.
    Applied once per epoch, so a resumed run gets the same rate from the epoch number alone.
    """
    if isinstance(milestones, int):
        milestones = (milestones,)
    k = sum(1 for m in milestones if epoch >= m)
    return base_lr * gamma**k


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
