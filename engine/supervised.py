"""One supervised epoch (cross-entropy) over a DataLoader: fine-tuning (docs/method.md §5), the
end-to-end linear probe and the temporal-order probe all train with it."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.preemption import Preempted, RunControl
from utils import distributed as dist_utils
from utils.amp import autocast
from utils.logging import progress


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device,
                    amp_dtype: torch.dtype | None = None, show_progress: bool = False,
                    desc: str = "train", *, tally: dict[str, Any] | None = None,
                    control: RunControl | None = None,
                    checkpoint: Callable[[dict[str, Any], int], None] | None = None, step: int = 0,
                    batch_seed: Callable[[int], int] | None = None) -> dict[str, float]:
    """One supervised epoch over ``((clips (b, 3, T, H, W), labels (b,)), skipped (b,))`` batches
    (:func:`engine.loader.make_loader`): cross-entropy, backward through ``scaler``, optimiser step. ``model``
    may be DDP-wrapped (totals are all-reduced) or a frozen-backbone
    :class:`~models.classifier.VideoClassifier` (only its head learns). Returns the epoch's mean
    ``loss``, ``train_top1`` (percent, clip level) and ``skipped_videos`` (videos replaced by
    others because of a missing/corrupt frame, summed over ranks).

    Long runs (``finetune.py``): ``batch_seed(i)`` seeds the global torch RNGs before batch ``i``
    of the epoch (dropout then depends on the batch, not on the steps before it); ``tally`` is
    the ``{"batches", "totals"}`` of an epoch resumed inside itself (the loader starts at batch
    ``tally["batches"]``); after each step ``control`` (:class:`engine.preemption.RunControl`)
    may ask for ``checkpoint(tally, batches_done)`` (``step``: the optimiser steps before the
    epoch, for ``--checkpoint_steps``) and, on a preemption signal, raise
    :class:`~engine.preemption.Preempted` after it.
    """
    model.train()
    done = int(tally["batches"]) if tally else 0
    totals = tally["totals"].to(device) if tally else torch.zeros(4, device=device)  # loss, correct, seen, skipped
    steps_total = done + len(loader)  # type: ignore[arg-type]
    for (clips, labels), skipped_now in progress(loader, enabled=show_progress, desc=desc,
                                                  initial=done, total=steps_total):
        if batch_seed is not None:
            torch.manual_seed(batch_seed(done))
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
        totals += torch.stack([loss.detach() * n, logits.argmax(dim=1).eq(labels).sum().float(),
                               torch.tensor(float(n), device=device), skipped_now.sum().to(device).float()])
        done += 1
        if control is not None and checkpoint is not None:
            save, stop = control.decide(step + done, device)
            if stop or (save and done < steps_total):
                checkpoint({"batches": done, "totals": totals.detach().cpu().clone()}, done)
                control.saved(step + done)
                if stop:
                    raise Preempted(f"{control.received or 'a signal to another rank'} at {desc}, batch "
                                    f"{done} of {steps_total}")
    dist_utils.all_reduce_sum_(totals)
    if totals[2].item() == 0:
        raise ValueError(f"{desc}: no training batch (fewer training videos than --batch_size?)")
    return {"loss": (totals[0] / totals[2]).item(), "train_top1": (100.0 * totals[1] / totals[2]).item(),
            "skipped_videos": int(totals[3].item())}
