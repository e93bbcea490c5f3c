"""The downstream classifier of the evaluation protocol (docs/method.md §5): the pooled high feature of a
backbone (or another level, or all three concatenated: :data:`PROBE_LEVELS`) -> (L2 norm) ->
(BatchNorm1d) -> (dropout) -> linear layer, with the backbone frozen (linear probe) or trained
(fine-tuning).

The loops, probe-hygiene checks and scoring that use it live in ``engine/`` (``supervised.py``,
``probe.py``, ``metrics.py``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.output import LEVELS

# what a probe reads: one level's pooled map, or the three pooled maps concatenated
PROBE_LEVELS = (*LEVELS, "all")


def pool_high(features: Mapping[str, Tensor] | Tensor) -> Tensor:
    """Time/space average of the backbone's ``high`` feature map (docs/method.md §5): ``(N, D, T, H, W)``
    (or the backbone's output dict) -> ``(N, D)`` in float32."""
    x = features["high"] if isinstance(features, Mapping) else features
    if x.dim() != 5:
        raise ValueError(f"pool_high expects a (N, D, T, H, W) feature map, got shape {tuple(x.shape)}")
    return x.float().mean(dim=(2, 3, 4))


def pool_level(features: Mapping[str, Tensor], level: str = "high") -> Tensor:
    """The pooled feature a probe reads (:data:`PROBE_LEVELS`): one level's map through
    :func:`pool_high`'s time/space average, or for ``"all"`` the low, mid and high averages
    concatenated ``(N, C_low + C_mid + C_high)``."""
    if level == "all":
        return torch.cat([pool_high(features[name]) for name in LEVELS], dim=1)
    return pool_high(features[level])


def level_dim(out_channels: Mapping[str, int], level: str = "high") -> int:
    """The width of :func:`pool_level`'s output for a backbone's ``out_channels``."""
    return sum(out_channels[name] for name in LEVELS) if level == "all" else out_channels[level]


def freeze(module: nn.Module) -> None:
    """``requires_grad=False`` on every parameter and eval mode (BN statistics frozen): the
    frozen backbone of the linear probe (docs/method.md §5)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


class ClassifierHead(nn.Module):
    """The downstream head of CoCLR's ``LinearClassifier`` (docs/method.md §5): optional L2
    normalisation, optional ``BatchNorm1d`` (``final_bn``), optional dropout (fine-tuning), then
    one ``nn.Linear`` initialised N(0, 0.01) with zero bias (as in MoCo ``main_lincls.py``)."""

    def __init__(self, dim: int, num_classes: int, final_bn: bool = False, normalize: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.normalize = normalize
        self.bn: nn.Module = nn.BatchNorm1d(dim) if final_bn else nn.Identity()
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, D)`` features -> ``(N, C)`` logits."""
        if self.normalize:
            x = F.normalize(x, dim=1)
        return self.fc(self.dropout(self.bn(x)))


class VideoClassifier(nn.Module):
    """Backbone -> pooled feature of ``level`` (default ``high``; :func:`pool_level`) ->
    :class:`ClassifierHead` (docs/method.md §5).

    ``frozen=True`` is the linear probe: every backbone parameter has ``requires_grad=False``,
    the backbone runs under ``no_grad`` and stays in eval mode whatever ``.train()`` is called
    (BatchNorm statistics frozen); only the head trains. ``frozen=False`` is fine-tuning.
    """

    def __init__(self, backbone: nn.Module, head: ClassifierHead, frozen: bool = False,
                 level: str = "high") -> None:
        super().__init__()
        if level not in PROBE_LEVELS:
            raise ValueError(f"level must be one of {PROBE_LEVELS}, got {level!r}")
        self.backbone = backbone
        self.head = head
        self.frozen = frozen
        self.level = level
        if frozen:
            freeze(backbone)

    def train(self, mode: bool = True) -> VideoClassifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` clips -> ``(N, D)`` pooled features of ``self.level``."""
        if self.frozen:
            with torch.no_grad():
                return pool_level(self.backbone(x), self.level)
        return pool_level(self.backbone(x), self.level)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` clips -> ``(N, C)`` logits."""
        return self.head(self.features(x))
