"""The multi-level model: backbone + temporal reversal + motion excitation + heads (METHOD §2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.heads import GlobalHead, MLPHead
from models.motion_excitation import MotionExcitation
from models.output import LEVELS, MultiLevelOutput
from models.registry import build_backbone

MOTION_LEVELS = ("low", "mid")


class MultiLevelModel(nn.Module):
    """Backbone and heads producing every feature the objectives of METHOD §3 use (METHOD §2).

    ``forward(clips)`` takes ``(b, n+1, 3, T, H, W)``: ``n`` local clips then the global clip
    (last index of dim 1), and runs the backbone once on all ``b·(n+1)`` clips. Per level:

    - **low, mid**: the feature maps of the local clips are time-flipped and appended to the
      batch (normal order first — all ``b·(n+1)`` clips — then the ``b·n`` reversed local clips),
      passed through that level's :class:`MotionExcitation` block, and adaptive-average-pooled to
      ``(t, 1, 1)``; **high**: pooled to ``(t, 1, 1)`` directly (``t`` from ``time_steps``,
      default 8/4/2).
    - ``proj_ℓ`` and ``graph_ℓ`` (2-layer MLPs) see the sequence **averaged over time first**
      ("pool then MLP": one MLP call per clip instead of ``t``, the cheaper of the two orders
      the spec allows). ``proj_ℓ`` runs on the normal-order local clips and, for low/mid, on
      their reversed copies; ``graph_ℓ`` on the normal-order local clips, only when
      ``with_graph`` is set.
    - ``fine_ℓ`` runs per time step on the normal-order sequences of the local and global clips.
    - The **global head** maps the time-pooled high feature of each local clip to an
      L2-normalised ``channel``-vector; ``prototypes`` (``Linear(channel, cluster, bias=False)``)
      turn it into prototype scores.

    All output tensors are float32, also under autocast. ``config`` holds the constructor
    arguments (JSON-able) so that ``MultiLevelModel(**config)`` rebuilds the model.
    """

    def __init__(
        self,
        net: str = "r3d_18",
        width: float = 1.0,
        channel: int = 128,
        cluster: int = 1000,
        time_steps: Sequence[int] = (8, 4, 2),
    ) -> None:
        super().__init__()
        if len(time_steps) != len(LEVELS) or min(time_steps) < 1:
            raise ValueError(
                f"time_steps must be three positive ints (low, mid, high), got {time_steps!r}"
            )
        if channel < 1 or cluster < 1:
            raise ValueError(f"channel and cluster must be positive, got {channel} and {cluster}")
        self.config = {
            "net": net,
            "width": float(width),
            "channel": int(channel),
            "cluster": int(cluster),
            "time_steps": [int(t) for t in time_steps],
        }
        self.time_steps = dict(zip(LEVELS, self.config["time_steps"], strict=True))
        self.backbone = build_backbone(net, width)
        dims = self.backbone.out_channels
        self.motion = nn.ModuleDict({lv: MotionExcitation(dims[lv]) for lv in MOTION_LEVELS})
        self.proj = nn.ModuleDict({lv: MLPHead(dims[lv], channel) for lv in LEVELS})
        self.fine = nn.ModuleDict({lv: MLPHead(dims[lv], channel) for lv in LEVELS})
        self.graph = nn.ModuleDict({lv: MLPHead(dims[lv], channel) for lv in LEVELS})
        self.global_head = GlobalHead(dims["high"], channel)
        self.prototypes = nn.Linear(channel, cluster, bias=False)
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise the prototype rows in place (METHOD §2; call before every step)."""
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def _sequences(
        self, level: str, feature: Tensor, b: int, n: int
    ) -> tuple[Tensor, Tensor | None]:
        """Time sequences ``(b, n+1, t, c)`` of all clips in normal order and, for the motion
        levels, ``(b, n, t, c)`` of the time-reversed local clips (METHOD §2)."""
        if level in self.motion:
            reversed_local = feature.unflatten(0, (b, n + 1))[:, :n].flip(3).flatten(0, 1)
            feature = self.motion[level](torch.cat([feature, reversed_local]))
        seq = (
            F.adaptive_avg_pool3d(feature, (self.time_steps[level], 1, 1))
            .flatten(2)
            .transpose(1, 2)
        )
        normal = seq[: b * (n + 1)].unflatten(0, (b, n + 1))
        reversed_ = seq[b * (n + 1) :].unflatten(0, (b, n)) if level in self.motion else None
        return normal, reversed_

    def forward(self, clips: Tensor, with_graph: bool = False) -> MultiLevelOutput:
        """``clips (b, n+1, 3, T, H, W)`` (global clip last) → :class:`MultiLevelOutput`;
        ``graph`` is filled only when ``with_graph`` (METHOD §3.5, from the split epoch)."""
        if clips.dim() != 6 or clips.shape[1] < 2:
            raise ValueError(
                "expected clips of shape (b, n+1, 3, T, H, W) with n >= 1, "
                f"got {tuple(clips.shape)}"
            )
        b, n = clips.shape[0], clips.shape[1] - 1
        features = self.backbone(clips.flatten(0, 1))
        proj, proj_reversed, fine_local, fine_global, graph = {}, {}, {}, {}, {}
        pooled: dict[str, Tensor] = {}  # time-pooled normal-order local clips, (b, n, c)
        for level in LEVELS:
            normal, reversed_ = self._sequences(level, features[level], b, n)
            fine = self.fine[level](normal).float()
            fine_local[level], fine_global[level] = fine[:, :n], fine[:, n]
            pooled[level] = normal[:, :n].mean(dim=2)
            proj[level] = self.proj[level](pooled[level]).float()
            if reversed_ is not None:
                proj_reversed[level] = self.proj[level](reversed_.mean(dim=2)).float()
            if with_graph:
                graph[level] = self.graph[level](pooled[level]).float()
        embedding = self.global_head(pooled["high"].flatten(0, 1))
        scores = self.prototypes(embedding).unflatten(0, (b, n)).float()
        return MultiLevelOutput(
            proj=proj,
            proj_reversed=proj_reversed,
            fine_local=fine_local,
            fine_global=fine_global,
            prototype_scores=scores,
            graph=graph if with_graph else None,
        )


def build_model(
    net: str = "r3d_18",
    width: float = 1.0,
    channel: int = 128,
    cluster: int = 1000,
    time_steps: Sequence[int] = (8, 4, 2),
) -> MultiLevelModel:
    """The multi-level model of METHOD §2; ``channel`` and ``cluster`` are the flags of the
    same names."""
    return MultiLevelModel(
        net=net, width=width, channel=channel, cluster=cluster, time_steps=time_steps
    )
