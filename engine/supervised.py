"""One supervised epoch (cross-entropy) over a DataLoader: fine-tuning (docs/method.md §5), the
end-to-end linear probe and the temporal-order probe all train with it."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from utils import distributed as dist_utils
from utils.amp import autocast
from utils.logging import progress


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device,
                    amp_dtype: torch.dtype | None = None, show_progress: bool = False,
                    desc: str = "train") -> dict[str, float]:
    """One supervised epoch over ``((clips (b, 3, T, H, W), labels (b,)), skipped (b,))`` batches
    (:func:`engine.loader.make_loader`): cross-entropy, backward through ``scaler``, optimiser step. ``model``
    may be DDP-wrapped (totals are all-reduced) or a frozen-backbone
    :class:`~models.classifier.VideoClassifier` (only its head learns). Returns the epoch's mean
    ``loss``, ``train_top1`` (percent, clip level) and ``skipped_videos`` (videos replaced by
    others because of a missing/corrupt frame, summed over ranks)."""
    model.train()
    totals = torch.zeros(4, device=device)  # loss sum, correct, seen, skipped videos
    skipped = 0
    for (clips, labels), skipped_now in progress(loader, enabled=show_progress, desc=desc):
        skipped += int(skipped_now.sum())
        clips = clips.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(clips)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = labels.shape[0]
        totals[:3] += torch.stack([loss.detach() * n, logits.argmax(dim=1).eq(labels).sum().float(),
                                   torch.tensor(float(n), device=device)])
    totals[3] = skipped
    dist_utils.all_reduce_sum_(totals)
    if totals[2].item() == 0:
        raise ValueError(f"{desc}: no training batch (fewer training videos than --batch_size?)")
    return {"loss": (totals[0] / totals[2]).item(), "train_top1": (100.0 * totals[1] / totals[2]).item(),
            "skipped_videos": int(totals[3].item())}
