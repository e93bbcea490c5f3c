"""Projection heads of the multi-level model (docs/method.md §2, "Heads" and "Global head")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MLPHead(nn.Sequential):
    """``Linear(c, c) → ReLU → Linear(c, out)`` on the last (channel) axis, no BatchNorm
    (docs/method.md §2). Applied to ``(..., c)`` tensors, so it acts per time step on ``(..., t, c)``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim)
        )


class GlobalHead(nn.Module):
    """The head before the prototypes (docs/method.md §2, "Global head"):
    ``Linear(c, c) → BatchNorm1d → ReLU → Linear(c, out) → L2-normalise``, on ``(rows, c)``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, in_dim),
            nn.BatchNorm1d(in_dim),
            nn.ReLU(inplace=True),
            nn.Linear(in_dim, out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.mlp(x), dim=-1)
