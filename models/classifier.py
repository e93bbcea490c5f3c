"""The downstream classifier of the evaluation protocol (METHOD §5): the pooled high feature of a
backbone -> (L2 norm) -> (BatchNorm1d) -> (dropout) -> linear layer, with the backbone frozen
(linear probe) or trained (fine-tuning).

The loops, probe-hygiene checks and scoring that use it live in ``engine/`` (``supervised.py``,
``probe.py``, ``metrics.py``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pool_high(features: Mapping[str, Tensor] | Tensor) -> Tensor:
    """Time/space average of the backbone's ``high`` feature map (METHOD §5): ``(N, D, T, H, W)``
    (or the backbone's output dict) -> ``(N, D)`` in float32."""
    x = features["high"] if isinstance(features, Mapping) else features
    if x.dim() != 5:
        raise ValueError(f"pool_high expects a (N, D, T, H, W) feature map, got shape {tuple(x.shape)}")
    return x.float().mean(dim=(2, 3, 4))


def freeze(module: nn.Module) -> None:
    """``requires_grad=False`` on every parameter and eval mode (BN statistics frozen): the
    frozen backbone of the linear probe (METHOD §5)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


class ClassifierHead(nn.Module):
    """The downstream head of CoCLR's ``LinearClassifier`` (METHOD §5): optional L2
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
    """Backbone -> pooled high feature -> :class:`ClassifierHead` (METHOD §5).

    ``frozen=True`` is the linear probe: every backbone parameter has ``requires_grad=False``,
    the backbone runs under ``no_grad`` and stays in eval mode whatever ``.train()`` is called
    (BatchNorm statistics frozen); only the head trains. ``frozen=False`` is fine-tuning.
    """

    def __init__(self, backbone: nn.Module, head: ClassifierHead, frozen: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen = frozen
        if frozen:
            freeze(backbone)

    def train(self, mode: bool = True) -> VideoClassifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` clips -> ``(N, D)`` pooled high features."""
        if self.frozen:
            with torch.no_grad():
                return pool_high(self.backbone(x))
        return pool_high(self.backbone(x))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` clips -> ``(N, C)`` logits."""
        return self.head(self.features(x))
