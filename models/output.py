"""The structured result of the multi-level model (docs/method.md §2), consumed by ``losses/``."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

LEVELS = ("low", "mid", "high")


@dataclass
class MultiLevelOutput:
    """Features of ``b`` videos with ``n`` local clips each; ``C`` = ``--channel``.

    Nothing here is L2-normalised except ``prototype_scores`` (cosine scores); the objectives
    normalise what they compare.

    - ``proj[level]``: ``(b, n, C)`` time-pooled projections of the normal-order local clips.
    - ``proj_reversed[level]`` for ``low`` and ``mid``: ``(b, n, C)``, same for the time-reversed
      copies of the local clips (docs/method.md §2 "Temporal reversal").
    - ``fine_local[level]``: ``(b, n, t_level, C)`` per-time-step features of the local clips,
      normal order; ``t`` = 8/4/2 for low/mid/high by default.
    - ``fine_global[level]``: ``(b, t_level, C)`` the same for the global clip.
    - ``prototype_scores``: ``(b, n, K)`` prototype logits of the local clips (global head,
      L2-normalised, times L2-normalised prototype rows).
    - ``graph[level]``: ``(b, n, C)`` time-pooled graph-head features of the local clips; ``None``
      unless the forward pass was asked for them.
    """

    proj: dict[str, Tensor]
    proj_reversed: dict[str, Tensor]
    fine_local: dict[str, Tensor]
    fine_global: dict[str, Tensor]
    prototype_scores: Tensor
    graph: dict[str, Tensor] | None = None

    def tensors(self) -> list[Tensor]:
        """Every tensor of the output (``graph`` only when it was computed)."""
        dicts = [self.proj, self.proj_reversed, self.fine_local, self.fine_global, self.graph or {}]
        return [t for d in dicts for t in d.values()] + [self.prototype_scores]
