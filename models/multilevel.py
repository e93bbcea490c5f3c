"""The multi-level model: backbone + temporal reversal + motion excitation + heads (docs/method.md §2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.amp import fp32_region
from models.heads import GlobalHead, MLPHead
from models.motion_excitation import MotionExcitation
from models.output import LEVELS, MultiLevelOutput
from models.registry import build_backbone

MOTION_LEVELS = ("low", "mid")


def freeze_prototypes_grad(prototypes: nn.Module, epoch: int) -> None:
    """Drop the prototypes' gradients during epoch 0 (docs/method.md §2, "Global head").

    Call after ``backward()`` (and after ``scaler.unscale_`` if any) and before
    ``optimizer.step()``: in epoch 0 every parameter of ``prototypes`` gets ``grad = None``, so
    Adam skips it entirely (no update, no weight decay), as in the reference.
    """
    if epoch == 0:
        for p in prototypes.parameters():
            p.grad = None


class MultiLevelModel(nn.Module):
    """Backbone and heads producing every feature the objectives of docs/method.md §3 use (docs/method.md §2).

    ``forward(clips)`` takes ``(b, n+1, 3, T, H, W)``: ``n`` local clips then the global clip
    (last index of dim 1), and runs the backbone once on all ``b·(n+1)`` clips. Per level:

    - **low, mid**: the feature maps are concatenated with their time-flipped copy (the batch
      doubles: all ``b·(n+1)`` clips in normal order first, then all of them reversed), passed
      through that level's :class:`MotionExcitation` block, and adaptive-average-pooled to
      ``(t, 1, 1)``; **high**: pooled to ``(t, 1, 1)`` directly (``t`` from ``time_steps``,
      default 8/4/2). No objective uses the reversed global clip; it is in the batch, as in the
      reference code, so that the block's BatchNorm statistics are those of the doubled batch.
    - Every head MLP (2 layers) runs **per time step**. ``proj_ℓ`` and ``graph_ℓ`` then average
      over time (one vector per clip); ``fine_ℓ`` keeps the steps. ``proj_ℓ`` runs on the
      normal-order local clips and, for low/mid, on their reversed copies; ``graph_ℓ`` on the
      normal-order local clips, only when ``with_graph`` is set; ``fine_ℓ`` on the normal-order
      local and global clips.
    - The **global head** maps the time-pooled high feature to an L2-normalised
      ``channel``-vector and ``prototypes`` (``Linear(channel, cluster, bias=False)``) turn it
      into prototype scores. It runs on all ``b·(n+1)`` clips, as in the reference code (its
      BatchNorm sees the global clips too); only the local clips' scores are returned.

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
        """L2-normalise the prototype rows in place (docs/method.md §2; call before every step)."""
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def drop_prototype_grads(self, epoch: int) -> None:
        """Drop the prototypes' gradients in epoch 0 (docs/method.md §2): call after ``backward()`` and
        before ``optimizer.step()`` (:func:`freeze_prototypes_grad`)."""
        freeze_prototypes_grad(self.prototypes, epoch)

    @property
    def num_prototypes(self) -> int:
        """``K``, the number of prototypes (``--cluster``)."""
        return self.prototypes.weight.shape[0]

    def _sequences(
        self, level: str, feature: Tensor, b: int, n: int
    ) -> tuple[Tensor, Tensor | None]:
        """Time sequences ``(b, n+1, t, c)`` of all clips in normal order and, for the motion
        levels, ``(b, n, t, c)`` of the time-reversed local clips (docs/method.md §2)."""
        if level in self.motion:  # (b·(n+1), c, T, h, w): time is dim 2
            feature = self.motion[level](torch.cat([feature, feature.flip(2)]))
        seq = (
            F.adaptive_avg_pool3d(feature, (self.time_steps[level], 1, 1))
            .flatten(2)
            .transpose(1, 2)
        )
        normal = seq[: b * (n + 1)].unflatten(0, (b, n + 1))
        if level not in self.motion:
            return normal, None
        return normal, seq[b * (n + 1) :].unflatten(0, (b, n + 1))[:, :n]

    def forward(self, clips: Tensor, with_graph: bool = False) -> MultiLevelOutput:
        """``clips (b, n+1, 3, T, H, W)`` (global clip last) → :class:`MultiLevelOutput`;
        ``graph`` is filled only when ``with_graph`` (docs/method.md §3.5, from the split epoch)."""
        if clips.dim() != 6 or clips.shape[1] < 2:
            raise ValueError(
                "expected clips of shape (b, n+1, 3, T, H, W) with n >= 1, "
                f"got {tuple(clips.shape)}"
            )
        b, n = clips.shape[0], clips.shape[1] - 1
        features = self.backbone(clips.flatten(0, 1))
        proj, proj_reversed, fine_local, fine_global, graph = {}, {}, {}, {}, {}
        high_pooled = None  # time-pooled high feature of all b·(n+1) clips, (b, n+1, c)
        for level in LEVELS:
            normal, reversed_ = self._sequences(level, features[level], b, n)
            if level == "high":
                high_pooled = normal.mean(dim=2)
            fine = self.fine[level](normal).float()
            fine_local[level], fine_global[level] = fine[:, :n], fine[:, n]
            proj[level] = self.proj[level](normal[:, :n]).mean(dim=2).float()
            if reversed_ is not None:
                proj_reversed[level] = self.proj[level](reversed_).mean(dim=2).float()
            if with_graph:
                graph[level] = self.graph[level](normal[:, :n]).mean(dim=2).float()
        embedding = self.global_head(high_pooled.flatten(0, 1))
        # float32 even under autocast: the scores go into Sinkhorn's exp(score / 0.05), where
        # bf16's rounding of a cosine (~4e-3) would move the codes by ~8 %
        with fp32_region(embedding):
            scores = self.prototypes(embedding.float()).unflatten(0, (b, n + 1))[:, :n]
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
    """The multi-level model of docs/method.md §2; ``channel`` and ``cluster`` are the flags of the
    same names."""
    return MultiLevelModel(
        net=net, width=width, channel=channel, cluster=cluster, time_steps=time_steps
    )
