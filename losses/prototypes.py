"""Prototypical contrast ``L_proto`` (docs/method.md §3.4): Sinkhorn codes, score queue, swapped
prediction and pseudo-labels.

The distributed form is SwAV's (``main_swav.py``): every rank holds its own rows, and the
Sinkhorn sums over rows (the global max, the total mass and the per-prototype masses) are
all-reduced, which is the same computation as one process holding every rank's rows. Without a
process group nothing is reduced.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.amp import fp32_region
from utils.distributed import (
    all_gather_no_grad,
    all_reduce_max_,
    all_reduce_sum_,
    rank,
    world_size,
)


@torch.no_grad()
def sinkhorn(
    scores: Tensor | Sequence[Tensor], eps: float = 0.05, iters: int = 3, last: int | None = None,
    n_global: int | None = None,
) -> Tensor:
    """Sinkhorn–Knopp equipartition codes, SwAV / solo-learn form (docs/method.md §3.4).

    Args:
        scores: ``(N, K)`` prototype scores of this rank's rows, or ``(G, N, K)`` for ``G``
            independent problems solved at once (one per local clip index); or a sequence of
            such blocks, taken as their concatenation along the rows (e.g. ``[queue, batch]``,
            without materialising the concatenation).
        eps: entropic regularisation ``ε``.
        iters: number of (prototype, sample) normalisation rounds, ``>= 1``.
        last: return the codes of the last ``last`` rows only (e.g. the batch after the queue).
        n_global: the number of rows over all ranks; default: this rank's rows × world size
            (equal rows on every rank). Needed when ranks hold different numbers of rows.

    SwAV's algorithm: ``Q = exp((scores - max)/ε)ᵀ`` in float32 (``max`` all-reduced with MAX so
    that every rank subtracts the same constant), ``Q /= sum(Q)``, then ``iters`` times: each
    prototype's mass → ``1/K`` (its sum all-reduced over ranks), each sample's mass →
    ``1/N_global`` (a sample lives on one rank: local), ``N_global`` the rows of all ranks;
    finally ``× N_global``, so each code row sums to 1 and each prototype
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
        n_global = n_local * world_size() if n_global is None else n_global
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


QUEUE_ROWS = ("include_batch", "plus_batch")


class ScoreQueue(nn.Module):
    """FIFO of the last ``size`` gathered prototype-score rows for Sinkhorn (docs/method.md §3.4).

    Buffers ``scores (n, size, K)`` float32 (per local clip index; oldest first, newest last) and
    ``filled`` (how many of the last rows are real; only those are used). Every rank pushes the
    **gathered** batch, so every rank holds the same queue, and one process with batch ``W·b``
    holds the same rows as ``W`` processes with batch ``b`` whatever ``size`` is. For Sinkhorn
    (all-reduced sums, see :func:`sinkhorn`) each rank contributes a disjoint share of the queued
    rows it uses (rows ``rank::world_size``) beside its own batch rows, so the codes are those of
    one problem over ``[queued rows; global batch]`` (which queued rows: :meth:`rows_used`).
    The queue costs ``n × size × K`` floats per rank (8 MB at the paper's 1024 × 2 × 1000).
    ``state_dict()`` holds the whole queue, so a checkpoint restores it on any number of ranks;
    its content does not depend on the ``rows`` mode of :meth:`codes`.
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
        self.register_buffer("scores", torch.zeros(num_clips, size, num_prototypes))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._filled = 0  # host mirror of ``filled`` (no device sync per step)

    @property
    def num_filled(self) -> int:
        return self._filled

    def _ensure_clips(self, num_clips: int) -> None:
        if num_clips == self.scores.shape[0]:
            return
        if self._filled:
            raise RuntimeError(
                f"score queue holds {self._filled} rows of n={self.scores.shape[0]} clips but this "
                f"step has n={num_clips}; keep --sample fixed within a run"
            )
        self.scores = self.scores.new_zeros(num_clips, self.size, self.num_prototypes)

    def _check_prototypes(self, k: int) -> None:
        if k != self.num_prototypes:
            raise ValueError(
                f"scores have K={k} prototypes, the queue was built for {self.num_prototypes}"
            )

    def rows(self) -> Tensor:
        """``(n, filled, K)``: the filled rows, oldest first."""
        return self.scores[:, self.size - self._filled:]

    @torch.no_grad()
    def push(self, batch_scores: Tensor) -> None:
        """Append the global batch (this rank's ``(b, n, K)`` gathered over ranks, detached,
        float32) last; drop the oldest rows. Collective under ``torch.distributed``."""
        b, n, k = batch_scores.shape
        self._check_prototypes(k)
        self._ensure_clips(n)
        gathered = all_gather_no_grad(batch_scores.detach().to(self.scores.dtype).contiguous())
        if self.size == 0:
            return
        new = gathered.transpose(0, 1).to(self.scores.device)                  # (n, B, K)
        total = new.shape[1]
        if total >= self.size:
            self.scores.copy_(new[:, total - self.size:])
        else:
            self.scores.copy_(torch.cat([self.scores[:, total:], new], dim=1))
        self._filled = min(self._filled + total, self.size)
        self.filled.fill_(self._filled)

    def rows_used(self, global_batch: int, rows: str = "include_batch") -> int:
        """How many queued rows (the newest) a Sinkhorn problem with the queue holds beside the
        ``global_batch`` rows of the current step (docs/method.md §3.4):

        * ``"include_batch"`` (the reference code's): the problem is the newest ``size`` rows with
          the current batch among them, i.e. the newest ``size - global_batch`` queued rows; fewer
          while the queue holds fewer (then only filled rows), none when ``size <= global_batch``;
        * ``"plus_batch"``: every filled queued row (up to ``size``), beside the batch.
        """
        if rows not in QUEUE_ROWS:
            raise ValueError(f"rows={rows!r}: expected one of {QUEUE_ROWS}")
        if rows == "plus_batch":
            return self._filled
        return min(self._filled, max(self.size - global_batch, 0))

    @torch.no_grad()
    def codes(
        self, batch_scores: Tensor, use_queue: bool, eps: float = 0.05, iters: int = 3,
        rows: str = "include_batch",
    ) -> Tensor:
        """Sinkhorn codes ``(b, n, K)`` of this rank's batch, one problem per clip index (docs/method.md
        §3.4), over the global batch and, with ``use_queue``, the newest :meth:`rows_used` queued
        rows (queue first, batch last; the codes are the batch's rows). Does not modify the
        queue."""
        b, n, k = batch_scores.shape
        self._check_prototypes(k)
        blocks = [batch_scores.detach().float().transpose(0, 1)]  # (n, b, K)
        n_global = b * world_size()
        used = self.rows_used(n_global, rows) if use_queue else 0
        if used:
            self._ensure_clips(n)
            share = self.rows()[:, self._filled - used:][:, rank()::world_size()]
            blocks.insert(0, share.to(blocks[0].device))          # queue first, batch last
            n_global += used
        return sinkhorn(blocks, eps=eps, iters=iters, last=b, n_global=n_global).transpose(0, 1)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """Adopt the saved number of clips; keep this queue's ``size`` (the flag wins on resume:
        the newest saved rows are kept, up to ``size``)."""
        saved = state_dict.get(prefix + "scores")
        if saved is not None and saved.shape != self.scores.shape:
            if saved.dim() != 3 or saved.shape[-1] != self.num_prototypes:
                raise ValueError(
                    f"queue state {prefix}scores has shape {tuple(saved.shape)}, expected "
                    f"(n, size, K={self.num_prototypes})"
                )
            self.scores = self.scores.new_zeros(saved.shape[0], self.size, self.num_prototypes)
            keep = min(self.size, saved.shape[1])
            fitted = saved.new_zeros(self.scores.shape)
            if keep:
                fitted[:, self.size - keep:] = saved[:, saved.shape[1] - keep:]
            state_dict[prefix + "scores"] = fitted
            if prefix + "filled" in state_dict:
                state_dict[prefix + "filled"] = state_dict[prefix + "filled"].clamp(max=keep)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._filled = int(self.filled)

    def extra_repr(self) -> str:
        return f"size={self.size}, K={self.num_prototypes}, filled={self._filled}"


def swapped_prediction(scores: Tensor, codes: Tensor, temperature: float = 0.1) -> Tensor:
    """SwAV swapped prediction ``L_proto`` (docs/method.md §3.4), generalised to ``n`` clips.

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
    """Pseudo-label of each video, ``argmax_k Σ_clips q`` (docs/method.md §3.4): ``(b, n, K)`` → ``(b,)``."""
    return codes.sum(dim=1).argmax(dim=-1)
