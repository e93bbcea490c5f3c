"""The contract shared by every video backbone (docs/method.md §2): three feature maps, low/mid/high."""

from __future__ import annotations

import math

from torch import Tensor, nn


class Backbone(nn.Module):
    """A 3D CNN that returns its ``low``, ``mid`` and ``high`` feature maps (docs/method.md §2).

    ``forward(x)`` takes clips ``(N, 3, T, H, W)`` and returns ``{"low", "mid", "high"}`` maps of
    shape ``(N, C_level, T_level, H_level, W_level)``; ``out_channels[level]`` is ``C_level``.
    Subclasses set ``out_channels`` in their constructor.
    """

    out_channels: dict[str, int]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError


def scale_channels(channels: int, width: float) -> int:
    """``channels × width`` rounded to the nearest integer, at least 1 (the width multiplier)."""
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    return max(1, round(channels * width))


def init_conv_bn(module: nn.Module) -> None:
    """torchvision's video-ResNet initialisation: Kaiming-normal (fan_out, ReLU) convolutions,
    zero conv biases, BatchNorm weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
