"""Numerical helpers shared by the objectives (docs/method.md §3: "all features L2-normalised").

The similarity matmuls, ``logsumexp`` / ``log_softmax`` and the Sinkhorn iterations run in
float32 even when the caller is inside ``torch.autocast`` (bf16/fp16 logits divided by
``τ = 0.07`` lose too many bits). Every public loss enters ``utils.amp.fp32_region`` and
converts its inputs with :func:`normalized32`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def normalized32(x: Tensor) -> Tensor:
    """``x`` cast to float32 and L2-normalised along the last dim."""
    return F.normalize(x.float(), dim=-1)
