"""Prototypical contrast ``L_proto`` (METHOD.md §3.4): Sinkhorn codes, score queue, swapped
prediction and pseudo-labels.

The distributed form is SwAV's (``main_swav.py``): every rank holds its own rows, and the
Sinkhorn sums over rows (the global max, the total mass and the per-prototype masses) are
all-reduced, which is the same computation as one process holding every rank's rows. Without a
process group nothing is reduced.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.distributed import (
    all_gather_no_grad,
    all_reduce_max_,
    all_reduce_sum_,
    rank,
    world_size,
)
from losses._fp32 import fp32_region


@torch.no_grad()
def sinkhorn(
    scores: Tensor | Sequence[Tensor], eps: float = 0.05, iters: int = 3, last: int | None = None
) -> Tensor:
    """Sinkhorn–Knopp equipartition codes, SwAV / solo-learn form (METHOD §3.4).

    Args:
        scores: ``(N, K)`` prototype scores of this rank's rows, or ``(G, N, K)`` for ``G``
            independent problems solved at once (one per local clip index); or a sequence of
            such blocks, taken as their concatenation along the rows (e.g. ``[queue, batch]``,
            without materialising the concatenation).
        eps: entropic regularisation ``ε``.
        iters: number of (prototype, sample) normalisation rounds, ``>= 1``.
        last: return the codes of the last ``last`` rows only (e.g. the batch after the queue).

    SwAV's algorithm: ``Q = exp((scores - max)/ε)ᵀ`` in float32 (``max`` all-reduced with MAX so
    that every rank subtracts the same constant), ``Q /= sum(Q)``, then ``iters`` times: each
    prototype's mass → ``1/K`` (its sum all-reduced over ranks), each sample's mass →
    ``1/N_global`` (a sample lives on one rank: local), with ``N_global = N × world_size`` (equal
    ``N`` on every rank); finally ``× N_global``, so each code row sums to 1 and each prototype
    receives about ``N_global/K`` (exactly up to the last, per-sample, step).

    Computed in the equivalent scaling form ``Q = diag(a) Q0 diag(c)``: per round one pass over
    ``Q0`` for the prototype sums and one for the sample sums, instead of rescaling the whole
    matrix twice. In that form the initial ``Q /= sum(Q)`` is a global scale that the first
    prototype normalisation absorbs exactly, so it is not computed (no all-reduce needed).
    Tested against a literal float64 SwAV loop.

    Returns:
        Codes ``(N, K)`` / ``(G, N, K)`` (or the last ``last`` rows), float32, no gradient.
    """
    blocks = [scores] if isinstance(scores, Tensor) else list(scores)
    dims = {blk.dim() for blk in blocks}
    if len(dims) != 1 or not dims <= {2, 3}:
        raise ValueError(
            "scores must be (N, K) or (G, N, K) tensors, got shapes "
            f"{[tuple(x.shape) for x in blocks]}"
        )
    if iters < 1:
        raise ValueError(f"sinkhorn needs iters >= 1, got {iters}")
    squeeze = blocks[0].dim() == 2
    blocks = [blk.detach().float() for blk in blocks]
    if squeeze:
        blocks = [blk.unsqueeze(0) for blk in blocks]
    with fp32_region(blocks[0]):
        g, _, k = blocks[0].shape
        n_local = sum(blk.shape[1] for blk in blocks)
        n_global = n_local * world_size()
        tiny = torch.finfo(torch.float32).tiny
        peak = torch.stack([blk.amax(dim=(1, 2)) for blk in blocks]).amax(0)
        shift = (-all_reduce_max_(peak) / eps)[:, None, None]            # (G, 1, 1)
        q0 = torch.empty(g, n_local, k, device=blocks[0].device)            # (G, N, K)
        start = 0
        for blk in blocks:                                                  # (s - max)/eps
            stop = start + blk.shape[1]
            torch.add(shift, blk, alpha=1.0 / eps, out=q0[:, start:stop])
            start = stop
        q0.exp_()
        a = q0.new_ones(g, n_local)                                         # per-sample scale
        for _ in range(iters):
            # prototype masses sum_i a_i Q0_ik c_k -> 1/K  (sum over every rank's samples)
            per_prototype = all_reduce_sum_(torch.bmm(a.unsqueeze(1), q0).squeeze(1))  # (G, K)
            c = 1.0 / (per_prototype.clamp_min(tiny) * k)
            # sample masses sum_k a_i Q0_ik c_k -> 1/N_global
            per_sample = torch.bmm(q0, c.unsqueeze(2)).squeeze(2)            # (G, N)
            a = 1.0 / (per_sample.clamp_min(tiny) * n_global)
        rows = slice(None) if last is None else slice(n_local - last, n_local)
        codes = q0[:, rows].mul_(c[:, None, :]).mul_((a[:, rows] * n_global)[:, :, None])
        return codes.squeeze(0) if squeeze else codes


class ScoreQueue(nn.Module):
    """FIFO of past prototype-score rows for Sinkhorn (METHOD §3.4), SwAV-style per-rank shard.

    Holds, per local clip index, the scores of this rank's most recent videos: buffer
    ``scores (n, size // world_size, K)`` float32, oldest first, newest last, and ``filled`` (how
    many of the last rows are real; only those are used). Because every rank keeps its own
    batch rows and Sinkhorn all-reduces its sums, the codes are computed over
    ``{the queued rows of every rank} ∪ {global batch}``; when ``size`` is a multiple of the
    global batch (or the queue is not yet full), that is exactly the set of the last ``size``
    gathered rows ∪ the global batch that one process with the whole batch would use — the one-
    and two-process runs see the same rows (tested). Otherwise the sets differ only in which
    videos of the oldest partial step are kept.

    The shard size is fixed by the world size seen the first time the queue is used while empty
    (so the objective may be built before the process group); ``state_dict()`` holds this rank's
    shard; :meth:`gather_state` / :meth:`load_gathered_state` save and restore all shards.
    """

    def __init__(self, size: int, num_prototypes: int, num_clips: int = 2) -> None:
        super().__init__()
        if size < 0 or num_prototypes < 1 or num_clips < 1:
            raise ValueError(
                f"ScoreQueue(size={size}, num_prototypes={num_prototypes}, num_clips={num_clips}):"
                " size must be >= 0, num_prototypes and num_clips >= 1"
            )
        self.size = size
        self.num_prototypes = num_prototypes
        shard = size // world_size()
        self.register_buffer("scores", torch.zeros(num_clips, shard, num_prototypes))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0  # host mirror of ``filled`` (no device sync per step)

    @property
    def shard_size(self) -> int:
        return self.scores.shape[1]

    @property
    def num_filled(self) -> int:
        return self._filled

    def _ensure_layout(self, num_clips: int) -> None:
        shard = self.size // world_size()
        if (num_clips, shard) == tuple(self.scores.shape[:2]):
            return
        if self._filled:
            raise RuntimeError(
                f"score queue holds {self._filled} rows of shape (n={self.scores.shape[0]}, "
                f"shard={self.shard_size}) but this step has n={num_clips} clips and world size "
                f"{world_size()} (shard {shard}); keep --sample and the world size fixed, or "
                "restore the queue with load_gathered_state()"
            )
        self.scores = self.scores.new_zeros(num_clips, shard, self.num_prototypes)

    def rows(self) -> Tensor:
        """``(n, filled, K)``: the filled rows of this rank's shard, oldest first."""
        return self.scores[:, self.shard_size - self._filled:]

    @torch.no_grad()
    def push(self, batch_scores: Tensor) -> None:
        """Append this rank's batch ``(b, n, K)`` (detached, float32) last; drop the oldest rows."""
        b, n, k = batch_scores.shape
        if k != self.num_prototypes:
            raise ValueError(
                f"scores have K={k} prototypes, the queue was built for {self.num_prototypes}"
            )
        self._ensure_layout(n)
        shard = self.shard_size
        if shard == 0:
            return
        new = batch_scores.detach().to(self.scores.dtype).transpose(0, 1)  # (n, b, K)
        if b >= shard:
            self.scores.copy_(new[:, b - shard:])
        else:
            self.scores.copy_(torch.cat([self.scores[:, b:], new], dim=1))
        self._filled = min(self._filled + b, shard)
        self.filled.fill_(self._filled)

    @torch.no_grad()
    def codes(
        self, batch_scores: Tensor, use_queue: bool, eps: float = 0.05, iters: int = 3
    ) -> Tensor:
        """Sinkhorn codes ``(b, n, K)`` of the batch, one problem per clip index (METHOD §3.4).

        With ``use_queue`` the rows are ``[queued rows; batch rows]`` (batch last) and the
        batch's codes are returned; otherwise the global batch alone. Does not modify the queue.
        """
        b, n, k = batch_scores.shape
        if k != self.num_prototypes:
            raise ValueError(
                f"scores have K={k} prototypes, the queue was built for {self.num_prototypes}"
            )
        blocks = [batch_scores.detach().float().transpose(0, 1)]  # (n, b, K)
        if use_queue and self._filled:
            self._ensure_layout(n)
            blocks.insert(0, self.rows().to(blocks[0].device))    # queue first, batch last
        return sinkhorn(blocks, eps=eps, iters=iters, last=b).transpose(0, 1)

    @torch.no_grad()
    def gather_state(self) -> dict[str, Tensor]:
        """Every rank's shard, for a checkpoint written by rank 0. Collective: call on all ranks.

        Returns ``{"scores": (world, n, shard, K) on CPU, "filled": long scalar}``.
        """
        gathered = all_gather_no_grad(self.scores.unsqueeze(0).contiguous())
        return {"scores": gathered.cpu(), "filled": self.filled.detach().cpu().clone()}

    @torch.no_grad()
    def load_gathered_state(self, state: dict[str, Tensor]) -> None:
        """Restore from :meth:`gather_state` output (call on every rank, no collective).

        Same world size: each rank takes back its own shard. Another world size: the queued rows
        of all old ranks are ordered oldest step first and dealt round-robin to the new ranks
        (the same global set of rows, up to the new shard size).
        """
        scores, filled = state["scores"], int(state["filled"])
        if scores.dim() != 4 or scores.shape[-1] != self.num_prototypes:
            raise ValueError(
                f"queue state scores {tuple(scores.shape)} must be (world, n, shard, "
                f"K={self.num_prototypes})"
            )
        old_world, n, old_shard, k = scores.shape
        self._filled = 0
        self._ensure_layout(n)
        shard, new_world = self.shard_size, world_size()
        if old_world == new_world and old_shard == shard:
            self.scores.copy_(scores[rank()])
            self._filled = min(filled, shard)
        else:
            valid = scores[:, :, old_shard - filled:]                # (W_old, n, filled, K)
            ordered = valid.permute(1, 2, 0, 3).reshape(n, -1, k)    # oldest step first
            per_rank = min(ordered.shape[1] // new_world, shard)
            if per_rank:
                mine = ordered[:, ordered.shape[1] - per_rank * new_world:][:, rank()::new_world]
                self.scores.zero_()
                self.scores[:, shard - per_rank:] = mine.to(self.scores)
            self._filled = per_rank
            if per_rank * new_world < filled * old_world:
                warnings.warn(
                    f"score queue restored with {per_rank * new_world} of its "
                    f"{filled * old_world} rows (new world size {new_world}, shard {shard})"
                )
        self.filled.fill_(self._filled)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        saved = state_dict.get(prefix + "scores")
        if saved is not None and saved.shape != self.scores.shape:
            if saved.dim() != 3 or saved.shape[-1] != self.num_prototypes:
                raise ValueError(
                    f"queue state {prefix}scores has shape {tuple(saved.shape)}, expected "
                    f"(n, shard, K={self.num_prototypes})"
                )
            self.scores = self.scores.new_zeros(saved.shape)  # adopt the saved n and shard
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.filled)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, shard={self.shard_size}, K={self.num_prototypes}, "
            f"filled={self._filled}"
        )


def swapped_prediction(scores: Tensor, codes: Tensor, temperature: float = 0.1) -> Tensor:
    """SwAV swapped prediction ``L_proto`` (METHOD §3.4), generalised to ``n`` clips.

    Args:
        scores: ``(b, n, K)`` prototype scores (with gradient).
        codes: ``(b, n, K)`` Sinkhorn codes (treated as constants: detached here).
        temperature: softmax temperature of the predictions.

    ``mean_videos  1/(n(n-1)) Σ_{a≠c} -Σ_k q_{a,k} log softmax(p_c/T)_k``; for ``n = 2``:
    ``-½ Σ_k [q1 log softmax(p0/T) + q0 log softmax(p1/T)]``. Scalar float32.
    """
    if scores.shape != codes.shape or scores.dim() != 3:
        raise ValueError(
            f"scores {tuple(scores.shape)} and codes {tuple(codes.shape)} must both be (b, n, K)"
        )
    n = scores.shape[1]
    if n < 2:
        raise ValueError(f"swapped prediction needs n >= 2 clips per video, got n={n}")
    with fp32_region(scores):
        log_p = F.log_softmax(scores.float() / temperature, dim=-1)
        cross = torch.einsum("bak,bck->bac", codes.detach().float(), log_p)  # q_a · log p_c
        off_diagonal = cross.sum(dim=(1, 2)) - cross.diagonal(dim1=1, dim2=2).sum(dim=1)
        return -(off_diagonal / (n * (n - 1))).mean()


def pseudo_labels(codes: Tensor) -> Tensor:
    """Pseudo-label of each video, ``argmax_k Σ_clips q`` (METHOD §3.4): ``(b, n, K)`` → ``(b,)``."""
    return codes.sum(dim=1).argmax(dim=-1)


def freeze_prototypes_grad(prototypes: nn.Module, epoch: int) -> None:
    """Drop the prototypes' gradients during epoch 0 (METHOD §2, "Global head").

    Call after ``backward()`` (and after ``scaler.unscale_`` if any) and before
    ``optimizer.step()``: in epoch 0 every parameter of ``prototypes`` gets ``grad = None``, so
    Adam skips it entirely (no update, no weight decay), as in the reference.
    """
    if epoch == 0:
        for p in prototypes.parameters():
            p.grad = None
