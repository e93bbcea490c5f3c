"""Instance contrast (docs/method.md §3.1) and motion contrast (docs/method.md §3.2).

Both are a multi-positive InfoNCE

    L = -log( Σ_pos e^{s/τ} / (Σ_pos e^{s/τ} + Σ_neg e^{s/τ}) ),   mean over the queries,

written as ``logsumexp(pos ∪ neg) - logsumexp(pos)`` in float32: entries outside ``pos ∪ neg``
(the query itself) are set to ``-inf`` and the positives are gathered from the same logit matrix,
so no ``(Q, K)`` masks are materialised. Queries are this rank's local clips; keys are gathered
from every rank with :func:`utils.distributed.all_gather_with_grad`, so the mean over ranks of
the per-rank losses is the single-process loss on the global batch, with the same gradient after
DDP averaging (``gather_grad="full"``). ``gather_grad="local"`` is the reference code's gather:
each rank's loss reaches only its own keys (docs/method.md §3, "Distributed semantics").
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from utils.amp import fp32_region
from utils.distributed import all_gather_no_grad, all_gather_with_grad, local_rows
from losses._fp32 import normalized32


def multi_positive_contrast(pos_logits: Tensor, all_logits: Tensor | Sequence[Tensor]) -> Tensor:
    """Multi-positive InfoNCE in log-sum-exp form (docs/method.md §3.1, §3.2).

    Args:
        pos_logits: ``(Q, P)`` each query's positive similarities divided by ``τ`` (entries
            set to ``-inf`` are excluded; every row needs at least one finite entry).
        all_logits: ``(Q, K)`` the same for the whole denominator, positives **and** negatives
            (excluded entries, e.g. the query itself, set to ``-inf``); or a sequence of such
            blocks ``(Q, K_1), (Q, K_2), ...`` read as their concatenation along the keys.

    Returns:
        Scalar float32 ``mean_q [logsumexp(all_q) - logsumexp(pos_q)]``, i.e.
        ``-log(Σ_pos e^{s/τ} / (Σ_pos e^{s/τ} + Σ_neg e^{s/τ}))``.
    """
    blocks = [all_logits] if isinstance(all_logits, Tensor) else list(all_logits)
    q = pos_logits.shape[0]
    if pos_logits.dim() != 2 or any(x.dim() != 2 or x.shape[0] != q for x in blocks):
        raise ValueError(
            f"pos_logits {tuple(pos_logits.shape)} and all_logits "
            f"{[tuple(x.shape) for x in blocks]} must be (Q, P) and (Q, K_i)"
        )
    with fp32_region(pos_logits):
        lse_all = torch.logsumexp(blocks[0].float(), dim=1)
        for block in blocks[1:]:
            lse_all = torch.logaddexp(lse_all, torch.logsumexp(block.float(), dim=1))
        lse_pos = torch.logsumexp(pos_logits.float(), dim=1)
        return (lse_all - lse_pos).mean()


def _check_clips(z: Tensor, name: str) -> tuple[int, int, int]:
    if z.dim() != 3:
        raise ValueError(f"{name} must be (b, n, C), got shape {tuple(z.shape)}")
    b, n, c = z.shape
    if n < 2:
        raise ValueError(
            f"{name} has n={n} local clip(s) per video; the contrast needs n >= 2 (its positives "
            "are the other clips of the same video): use --sample 2 or more"
        )
    return b, n, c


def _clip_logits(z: Tensor, tau: float, gather_grad: str = "full"
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Local-query × global-key logits over normal-order clips (docs/method.md §3.1, §3.2).

    Query row ``i*n + a`` = local video ``i``, clip ``a``; key column ``j*n + c`` = global video
    ``j``, clip ``c``. Returns ``(logits (b*n, B*n), others (b*n, B*n), pos (b*n, n-1), zq)``:
    the raw logits (for ``G_ins``), the same with each query's own column set to ``-inf``
    (every other clip of the global batch: positives and negatives), the positives (the other
    clips of the query's video, gathered from the same matrix) and the normalised queries
    ``(b, n, C)``. No ``(b*n, B*n)`` masks are built: only the ``b*n`` self entries change.
    The keys are gathered with ``all_gather_with_grad(..., grad=gather_grad)``.
    """
    b, n, _ = z.shape
    zq = normalized32(z)                                   # (b, n, C)
    keys = all_gather_with_grad(zq, gather_grad)           # (B, n, C), with gradient
    big_b = keys.shape[0]
    logits = zq.reshape(b * n, -1) @ keys.reshape(big_b * n, -1).T / tau
    device = z.device
    rows = local_rows(b)
    first_col = (torch.arange(rows.start, rows.stop, device=device) * n).repeat_interleave(n)
    clip = torch.arange(n, device=device).repeat(b)        # clip index a of each query row
    self_col = (first_col + clip).unsqueeze(1)             # (b*n, 1)
    others = logits.scatter(1, self_col, float("-inf"))
    # the n-1 other clips of the same video: c = (a + 1 + r) mod n, r = 0..n-2
    shift = torch.arange(1, n, device=device)
    pos_cols = first_col[:, None] + (clip[:, None] + shift[None, :]) % n
    return logits, others, torch.gather(logits, 1, pos_cols), zq


def instance_contrast(z: Tensor, tau: float = 0.07, gather_grad: str = "full"
                      ) -> tuple[Tensor, Tensor]:
    """High-level instance contrast ``L_ins`` and the instance graph ``G_ins`` (docs/method.md §3.1).

    Args:
        z: ``(b, n, C)`` ``proj_high`` of this rank's local clips (normalised here).
        tau: temperature.
        gather_grad: ``"full"`` or ``"local"`` (:func:`utils.distributed.all_gather_with_grad`).

    Returns:
        ``(loss, g_ins)``: the scalar float32 loss (mean over this rank's ``b*n`` query clips;
        positives = the other clips of the same video, negatives = every clip of every other
        video of the global batch), and ``g_ins (b, B)`` detached float32 with
        ``g_ins[i, j] = softmax_j(<clip0_i, clip1_j>/τ)`` for local video ``i`` and global video
        ``j`` (the local rows of the ``B × B`` matrix of docs/method.md §3.1).
    """
    b, n, _ = _check_clips(z, "proj['high']")
    with fp32_region(z):
        logits, others, pos, _ = _clip_logits(z, tau, gather_grad)
        loss = multi_positive_contrast(pos, others)
        big_b = logits.shape[1] // n
        g_ins = torch.softmax(logits.detach().view(b, n, big_b, n)[:, 0, :, 1], dim=1)
    return loss, g_ins


@torch.no_grad()
def instance_graph(z: Tensor, tau: float = 0.07) -> Tensor:
    """``G_ins`` alone (docs/method.md §3.1), for when ``L_ins`` has weight 0 but the graph term is on.

    ``z (b, n, C)`` local clips → ``(b, B)`` float32, ``softmax_j(<clip0_i, clip1_j>/τ)``; the
    clip-1 features of the global batch are gathered without gradient.
    """
    _check_clips(z, "proj['high']")
    with fp32_region(z):
        zn = normalized32(z)
        keys = all_gather_no_grad(zn)
        return torch.softmax(zn[:, 0] @ keys[:, 1].T / tau, dim=1)


def motion_contrast(z: Tensor, z_rev: Tensor, tau: float = 0.07, gather_grad: str = "full") -> Tensor:
    """Motion contrast ``L_mot`` at one level (docs/method.md §3.2).

    Args:
        z: ``(b, n, C)`` ``proj_ℓ`` of the normal-order local clips.
        z_rev: ``(b, n, C)`` ``proj_reversed_ℓ`` of the time-reversed copies of the same clips.
        tau: temperature.
        gather_grad: ``"full"`` or ``"local"`` (:func:`utils.distributed.all_gather_with_grad`).

    Query: a normal-order local clip. Positives: the other normal-order clips of its video.
    Negatives: the normal-order clips of every other video of the global batch, plus all ``n``
    reversed clips of its own video (reversed copies of other videos are not used, so ``z_rev``
    is not gathered). Mean over this rank's ``b*n`` queries; scalar float32.
    """
    b, n, _ = _check_clips(z, "proj")
    if z_rev.shape != z.shape:
        raise ValueError(
            f"proj_reversed {tuple(z_rev.shape)} must have the shape of proj {tuple(z.shape)}"
        )
    with fp32_region(z):
        _, others, pos, zq = _clip_logits(z, tau, gather_grad)
        zr = normalized32(z_rev)
        logits_rev = torch.einsum("iac,idc->iad", zq, zr).reshape(b * n, n) / tau
        # denominator = every other normal clip of the global batch + own reversed clips
        return multi_positive_contrast(pos, [others, logits_rev])
