"""The motion excitation (ME) block applied to the low and mid features (docs/method.md §2).

It follows TEA's ME module (Li et al., CVPR 2020), vectorised over time: the per-frame 2D convs
are ``Conv3d`` with kernel (1, k, k), so no Python loop over frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MotionExcitation(nn.Module):
    """Channel-wise excitation by feature-level motion (docs/method.md §2, "Motion excitation").

    For an input ``x_in`` of shape ``(N, c, T, H, W)``:

    1. ``x = BN(conv1x1(x_in))`` per frame, ``c → c/reduction`` channels;
    2. ``x' = depthwise_conv3x3(x)`` per frame;
    3. motion ``m_t = x'_{t+1} − x_t`` for ``t < T−1`` and ``m_{T−1} = 0``;
    4. spatial average pool, then ``BN(conv1x1(m))`` back to ``c`` channels;
    5. ``a = sigmoid(·) − 0.5`` and output ``x_in + a · x_in``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Sequential(
            nn.Conv3d(channels, hidden, kernel_size=1, bias=False), nn.BatchNorm3d(hidden)
        )
        self.spatial = nn.Conv3d(
            hidden, hidden, kernel_size=(1, 3, 3), padding=(0, 1, 1), groups=hidden, bias=False
        )
        self.expand = nn.Sequential(
            nn.Conv3d(hidden, channels, kernel_size=1, bias=False), nn.BatchNorm3d(channels)
        )

    def motion(self, x_in: Tensor) -> Tensor:
        """Steps 1–3: the motion ``m``, ``(N, c/reduction, T, H, W)``, zero at ``t = T−1``."""
        x = self.reduce(x_in)
        shifted = self.spatial(x)
        return F.pad(shifted[:, :, 1:] - x[:, :, :-1], (0, 0, 0, 0, 0, 1))

    def forward(self, x_in: Tensor) -> Tensor:
        m = self.motion(x_in).mean(dim=(3, 4), keepdim=True)
        a = torch.sigmoid(self.expand(m)) - 0.5
        return x_in + a * x_in
