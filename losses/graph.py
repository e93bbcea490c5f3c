"""Graph constraint ``L_graph`` (docs/method.md §3.5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.amp import fp32_region
from utils.distributed import all_gather_with_grad
from losses._fp32 import normalized32


@torch.no_grad()
def graph_target(
    g_ins: Tensor,
    labels_local: Tensor,
    labels_global: Tensor,
    thres: float = 0.05,
    row_offset: int = 0,
) -> Tensor:
    """The target graph ``G`` for this rank's rows (docs/method.md §3.5), no gradient.

    Args:
        g_ins: ``(b, B)`` local rows of ``G_ins`` (:func:`losses.contrast.instance_contrast`).
        labels_local: ``(b,)`` pseudo-labels of this rank's videos.
        labels_global: ``(B,)`` pseudo-labels of the global batch.
        thres: entries of ``G_ins`` below it are zeroed, except the diagonal.
        row_offset: global index of local row 0 (``utils.distributed.local_rows(b).start``);
            the diagonal of local row ``i`` is global column ``row_offset + i``.

    ``G = (G_ins ⊙ [G_ins >= thres or diagonal]) ⊙ G_sem`` with ``G_sem[i, j] = 1`` iff the
    pseudo-labels agree (the diagonal always counts as agreeing), then row-normalised. The
    diagonal always survives, so rows sum to 1; should a diagonal entry underflow to 0 (only for
    extreme temperatures) that row becomes one-hot on the diagonal instead of NaN.

    Returns:
        ``(b, B)`` float32, each row summing to 1.
    """
    if g_ins.dim() != 2:
        raise ValueError(f"g_ins must be (b, B), got shape {tuple(g_ins.shape)}")
    b, big_b = g_ins.shape
    if labels_local.shape != (b,) or labels_global.shape != (big_b,):
        raise ValueError(
            f"labels_local {tuple(labels_local.shape)} / labels_global "
            f"{tuple(labels_global.shape)} must be ({b},) / ({big_b},) for g_ins {(b, big_b)}"
        )
    if not 0 <= row_offset <= big_b - b:
        raise ValueError(f"row_offset={row_offset} out of range for g_ins of shape {(b, big_b)}")
    g = g_ins.detach().float()
    cols = torch.arange(big_b, device=g.device)
    diagonal = cols[None, :] == (torch.arange(b, device=g.device) + row_offset)[:, None]
    keep = ((g >= thres) & (labels_local[:, None] == labels_global[None, :])) | diagonal
    weights = g * keep
    row_sum = weights.sum(dim=1, keepdim=True)
    return torch.where(row_sum > 0, weights / row_sum.clamp_min(torch.finfo(torch.float32).tiny),
                       diagonal.float())


def graph_loss(g0: Tensor, g1: Tensor, target: Tensor, tau: float = 0.07,
               gather_grad: str = "full") -> Tensor:
    """``L_ℓ`` of the graph constraint at one level (docs/method.md §3.5).

    Args:
        g0: ``(b, C)`` ``graph_ℓ`` of clip 0 of this rank's videos.
        g1: ``(b, C)`` ``graph_ℓ`` of clip 1 of this rank's videos (gathered with gradient).
        target: ``(b, B)`` the graph ``G`` (:func:`graph_target`), used as a constant.
        tau: temperature.
        gather_grad: ``"full"`` or ``"local"``: how ``g1`` is gathered
            (:func:`utils.distributed.all_gather_with_grad`).

    ``P[i, j] = softmax_j(<g0_i, g1_j>/τ)`` over the global batch; ``L = mean_{i,j}(-log P[i,j]
    · G[i,j])`` (mean over the ``b × B`` entries, ``log P`` by ``log_softmax``). Scalar float32.
    """
    if g0.dim() != 2 or g0.shape != g1.shape:
        raise ValueError(f"g0 {tuple(g0.shape)} and g1 {tuple(g1.shape)} must both be (b, C)")
    with fp32_region(g0):
        keys = all_gather_with_grad(normalized32(g1), gather_grad)     # (B, C)
        if target.shape != (g0.shape[0], keys.shape[0]):
            raise ValueError(
                f"graph target {tuple(target.shape)} must be (b, B) = {(g0.shape[0], keys.shape[0])}"
            )
        log_p = F.log_softmax(normalized32(g0) @ keys.T / tau, dim=1)
        return -(log_p * target.detach().float()).mean()
