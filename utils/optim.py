"""Optimisers and learning-rate schedules: Adam with lr x 0.1 at epoch ``--lr_decay`` for
pretraining (docs/method.md §4), SGD or Adam with a step schedule for the probes and fine-tuning
(docs/method.md §5)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


def step_decay_lr(base_lr: float, epoch: int, milestones: int | Iterable[int], gamma: float = 0.1) -> float:
    """Learning rate of ``epoch`` (0-based) under a step schedule (docs/method.md §4).

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


def build_optimizer(param_groups: Sequence[dict[str, Any]], name: str, lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or Adam over ``param_groups``; a group's optional ``lr_scale`` (e.g.
    0.1 for the fine-tuned backbone, docs/method.md §5) multiplies ``lr`` and is kept by
    :func:`apply_step_schedule`."""
    groups = []
    for group in param_groups:
        group = dict(group)
        group["params"] = list(group["params"])
        group.setdefault("lr_scale", 1.0)
        group["lr"] = lr * group["lr_scale"]
        groups.append(group)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r}; choose one of {OPTIMIZERS}")


def apply_step_schedule(optimizer: torch.optim.Optimizer, base_lr: float, epoch: int,
                        milestones: Sequence[int]) -> float:
    """Set every group's lr to ``step_decay_lr(base_lr, epoch, milestones) * lr_scale``; returns
    the unscaled lr."""
    lr = step_decay_lr(base_lr, epoch, list(milestones))
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
