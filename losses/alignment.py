"""Local–global timestamp alignment ``L_lg`` (docs/method.md §3.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.amp import fp32_region


def pool_local_sequence(fine_local: Tensor) -> Tensor:
    """Pool the ``n`` local clips' ``t`` steps to the global clip's ``t`` steps (docs/method.md §3.3).

    ``fine_local (b, n, t, C)`` → ``(b, t, C)``: the clips are concatenated in order into one
    sequence of ``n*t`` steps (together they cover the global clip's window at ``n`` times its
    frame rate) and each run of ``n`` contiguous steps is averaged, so output step ``k`` covers
    exactly the frames of global step ``k``.

    When ``n`` divides ``t`` this is literally the method's "pool each local clip's sequence to
    ``t/n`` steps, concatenate in order" (every run of ``n`` lies inside one clip). When it does
    not (e.g. ``n = 3`` clips, ``t = 2`` high-level steps) a run straddles two clips — still the
    exact temporal correspondence to the global step, so no error is raised and nothing is
    dropped.
    """
    if fine_local.dim() != 4:
        raise ValueError(f"fine_local must be (b, n, t, C), got shape {tuple(fine_local.shape)}")
    b, n, t, c = fine_local.shape
    return fine_local.reshape(b, t, n, c).mean(dim=2)


def alignment_logits(fine_local: Tensor, fine_global: Tensor, tau: float = 0.07) -> Tensor:
    """The timestamp logits of docs/method.md §3.3: ``l[m, k] = <local_m, global_k>/τ`` per video.

    Args:
        fine_local: ``(b, n, t, C)`` per-step features of the local clips (normal order).
        fine_global: ``(b, t, C)`` per-step features of the global clip.
        tau: temperature.

    ``local_m`` is step ``m`` of :func:`pool_local_sequence`; both sides L2-normalised. Float32
    ``(b, t_local, t_global)``, also inside autocast.
    """
    if fine_global.dim() != 3:
        raise ValueError(f"fine_global must be (b, t, C), got shape {tuple(fine_global.shape)}")
    if fine_local.dim() != 4 or (
        fine_local.shape[0],
        fine_local.shape[2],
        fine_local.shape[3],
    ) != tuple(fine_global.shape):
        raise ValueError(
            f"fine_local {tuple(fine_local.shape)} must be (b, n, t, C) matching fine_global "
            f"{tuple(fine_global.shape)} = (b, t, C)"
        )
    with fp32_region(fine_local):
        local = pool_local_sequence(fine_local.float())                 # (b, t, C)
        glob = fine_global.float()                                      # (b, t, C)
        # cosine logits without normalised copies of the features: divide the (b, t, t) dot
        # products by the outer product of the norms (F.normalize's eps = 1e-12 clamp)
        norms_l = torch.linalg.vector_norm(local, dim=-1).clamp_min(1e-12)
        norms_g = torch.linalg.vector_norm(glob, dim=-1).clamp_min(1e-12)
        dots = torch.einsum("bmc,bkc->bmk", local, glob)
        return dots / (norms_l[:, :, None] * norms_g[:, None, :] * tau)   # (b, t_local, t_global)


def alignment_loss(logits: Tensor) -> Tensor:
    """Cross-entropy of :func:`alignment_logits` with target ``m = k`` over ``k`` (local →
    global) and over ``m`` (global → local), each averaged over videos and steps, then the two
    averaged (docs/method.md §3.3). Scalar float32."""
    with fp32_region(logits):
        logits = logits.float()
        l2g = -torch.diagonal(F.log_softmax(logits, dim=2), dim1=1, dim2=2).mean()
        g2l = -torch.diagonal(F.log_softmax(logits, dim=1), dim1=1, dim2=2).mean()
        return 0.5 * (l2g + g2l)


def local_global_alignment(fine_local: Tensor, fine_global: Tensor, tau: float = 0.07) -> Tensor:
    """Timestamp retrieval between the pooled local sequence and the global clip (docs/method.md §3.3):
    :func:`alignment_loss` of :func:`alignment_logits` (shapes as there). Per video, so nothing
    is gathered across ranks. Scalar float32."""
    return alignment_loss(alignment_logits(fine_local, fine_global, tau))
