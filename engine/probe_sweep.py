"""The cached linear probe's learning rate and weight decay, chosen on held-out training videos
(docs/method.md §5 linear probe).

CoCLR's fixed recipe (SGD, lr 1.0, weight decay 1e-3) suits UCF101-sized splits with batches of
1,024 features; on a few hundred videos an epoch is one or two steps and lr 1.0 can diverge. The
default recipe (``eval_linear.py --probe_recipe sweep``) therefore trains one head per point of
:data:`PROBE_GRID` on 80 % of the *training* videos (:data:`HOLDOUT_FRACTION` held out, chosen
by the seed, never a test video), scores each on the held-out videos (video-level top-1, ties go
to the earlier grid point), then trains the reported head with the winner on the whole training
split. A point whose loss diverges scores nothing. Below :data:`MIN_HOLDOUT_VIDEOS` held-out
videos the sweep cannot tell the points apart and CoCLR's recipe is used, saying so.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from engine.metrics import classification_metrics
from engine.probe import ProbeDiverged, predict_features, train_linear_probe
from models import ClassifierHead

# (lr, weight decay), CoCLR's recipe first
PROBE_GRID: tuple[tuple[float, float], ...] = (
    (1.0, 1e-3), (1.0, 1e-4), (0.1, 1e-3), (0.1, 1e-4), (0.01, 1e-3), (0.01, 1e-4))
HOLDOUT_FRACTION = 0.2
MIN_HOLDOUT_VIDEOS = 5


def holdout_split(num_videos: int, seed: int, fraction: float = HOLDOUT_FRACTION
                  ) -> tuple[Tensor, Tensor]:
    """Indices ``(fit, held)`` of a random ``fraction`` of ``num_videos`` training videos held
    out (``round(fraction * num_videos)`` of them), from a generator seeded with ``seed``."""
    perm = torch.randperm(num_videos, generator=torch.Generator().manual_seed(seed))
    held = round(fraction * num_videos)
    return perm[held:].sort().values, perm[:held].sort().values


def sweep_linear_probe(make_head: Callable[[], ClassifierHead], features: Tensor, labels: Tensor,
                       *, grid: tuple[tuple[float, float], ...] = PROBE_GRID,
                       seed: int = 0, device: torch.device | str = "cpu",
                       **train_kwargs: Any) -> tuple[tuple[float, float] | None, list[dict[str, Any]]]:
    """Score every ``(lr, weight decay)`` of ``grid`` on held-out training videos.

    Args:
        make_head: a fresh head per grid point.
        features: ``(N, K, D)`` cached training features, ``K`` clips (or passes) per video.
        labels: ``(N,)`` video labels.
        seed: the held-out draw and every head's shuffling.
        train_kwargs: the rest of :func:`train_linear_probe`'s arguments (optimiser, epochs,
            schedule, batch size).

    Returns:
        The best point (``None`` when fewer than :data:`MIN_HOLDOUT_VIDEOS` videos would be held
        out, or every point diverged) and one row per point: ``lr``, ``wd`` and ``holdout_top1``
        (percent) or ``diverged`` (the message).
    """
    fit, held = holdout_split(features.shape[0], seed)
    if held.numel() < MIN_HOLDOUT_VIDEOS:
        return None, []
    fit_x = features[fit].flatten(0, 1)
    fit_y = labels[fit].repeat_interleave(features.shape[1])
    rows: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_top1 = -1.0
    for lr, wd in grid:
        head = make_head()
        try:
            train_linear_probe(head, fit_x, fit_y, lr=lr, weight_decay=wd, device=device, seed=seed,
                               **train_kwargs)
        except ProbeDiverged as err:
            rows.append({"lr": lr, "wd": wd, "diverged": str(err)})
            continue
        top1 = classification_metrics(predict_features(head, features[held], device), labels[held])["top1"]
        rows.append({"lr": lr, "wd": wd, "holdout_top1": top1})
        if top1 > best_top1:
            best, best_top1 = (lr, wd), top1
    return best, rows
