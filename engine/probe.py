"""The probes of docs/method.md §5 on a frozen backbone: hygiene checks (MoCo ``main_lincls.py``: only
the head trains, the frozen backbone does not move), the linear classifier trained on cached
features (CoCLR ``eval/feature_linear_probe.py``) or end to end through the backbone, its
predictions, and the temporal-order probe's logits and accuracy.

Every head training goes through a :class:`DivergenceGuard`: a training loss that becomes
non-finite or climbs far above where it started stops the run with :class:`ProbeDiverged`
instead of reporting the chance-level accuracy of a diverged head as a result. The learning rate
and weight decay of the cached probe can be chosen by :func:`sweep_linear_probe` on held-out
training videos (:mod:`engine.probe_sweep`).
"""
from __future__ import annotations

import math

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.temporal_order import NORMAL, REVERSED, order_pairs
from engine.loader import start_epoch
from engine.supervised import train_one_epoch
from models import ClassifierHead, VideoClassifier
from utils.amp import make_scaler
from utils.logging import progress
from utils.optim import apply_step_schedule, build_optimizer

EpochCallback = Callable[[int, dict[str, float], ClassifierHead], None]
# a training loss this many times above its reference means divergence (DivergenceGuard)
DIVERGENCE_FACTOR = 10.0


class ProbeDiverged(RuntimeError):
    """A head's training loss became non-finite or rose far above where it started."""


class DivergenceGuard:
    """Stops a head training whose loss diverges (docs/method.md §5 probes and fine-tuning).

    :meth:`check` after every epoch raises :class:`ProbeDiverged` when the epoch's mean training
    loss is non-finite, or more than :data:`DIVERGENCE_FACTOR` times the chance level
    ``ln(num_classes)`` (the loss of a uniform guess), or more than that factor above the first
    epoch's loss while above chance. The message names the epoch, the figures and what to try.
    """

    def __init__(self, num_classes: int, what: str = "linear probe", hint: str = "--lr") -> None:
        self.chance = math.log(num_classes)
        self.what = what
        self.hint = hint
        self.first: float | None = None

    def check(self, epoch: int, loss: float, lr: float) -> None:
        if self.first is None:
            self.first = loss
        limit = DIVERGENCE_FACTOR * self.chance
        rose = loss > DIVERGENCE_FACTOR * self.first and loss > self.chance
        if math.isfinite(loss) and loss <= limit and not rose:
            return
        reason = ("is not finite" if not math.isfinite(loss) else
                  f"is {loss:.4g}, over {DIVERGENCE_FACTOR:g}x the chance level ln(classes) = "
                  f"{self.chance:.3g}" if loss > limit else
                  f"rose from {self.first:.4g} at the first epoch to {loss:.4g}")
        raise ProbeDiverged(
            f"{self.what} diverged at epoch {epoch}: the training loss {reason} (lr {lr:g}). Its "
            f"accuracy would be a diverged head's, not a result: retry with a smaller learning rate "
            f"(e.g. {self.hint} {lr / 10:g})")


def check_only_head_trains(model: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise ``RuntimeError`` unless the optimiser holds exactly ``head``'s parameters and no
    other parameter of ``model`` requires a gradient (docs/method.md §5, linear probe)."""
    head_ids = {id(p) for p in head.parameters()}
    opt_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if opt_ids != head_ids:
        raise RuntimeError(
            f"linear probe: the optimiser holds {len(opt_ids)} tensors but the head has "
            f"{len(head_ids)}; only the head's parameters may be optimised")
    leaking = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in head_ids]
    if leaking:
        raise RuntimeError(f"linear probe: parameters outside the head require grad: {leaking[:5]}")


def state_snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of ``module.state_dict()`` (parameters and buffers, BN statistics included)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def assert_state_unchanged(module: nn.Module, snapshot: Mapping[str, Tensor], what: str = "backbone") -> None:
    """Raise ``RuntimeError`` naming the tensors of ``module`` that differ (bit for bit) from
    ``snapshot`` — the post-training sanity check of MoCo ``main_lincls.py``."""
    current = module.state_dict()
    if current.keys() != snapshot.keys():
        diff = sorted(set(current) ^ set(snapshot))
        raise RuntimeError(f"{what}: state_dict keys changed during evaluation: {diff[:5]}")
    moved = [k for k, v in current.items() if not torch.equal(v.detach().cpu(), snapshot[k])]
    if moved:
        raise RuntimeError(
            f"{what} changed during linear probing ({len(moved)} tensors moved, e.g. {moved[:5]}); "
            "the backbone must stay frozen and in eval mode")


def train_linear_probe(head: ClassifierHead, features: Tensor, labels: Tensor, *, optim: str = "sgd",
                       lr: float = 1.0, weight_decay: float = 1e-3, epochs: int = 100,
                       schedule: Sequence[int] = (60, 80), batch_size: int = 1024,
                       device: torch.device | str = "cpu", seed: int = 0,
                       on_epoch: EpochCallback | None = None,
                       show_progress: bool = False) -> dict[str, float]:
    """Train ``head`` (in place) on cached ``(M, D)`` features / ``(M,)`` labels with
    cross-entropy, ``optim`` (SGD momentum 0.9 or Adam), lr divided by 10 at each ``schedule``
    epoch (docs/method.md §5 linear probe; CoCLR ``eval/feature_linear_probe.py``). Shuffling uses its own
    generator seeded with ``seed``. ``on_epoch(epoch, stats, head)`` is called after every epoch
    (stats: ``loss``, ``train_top1`` in percent, ``lr``). A diverging loss raises
    :class:`ProbeDiverged` (:class:`DivergenceGuard`). Leaves ``head`` in eval mode and returns
    the last epoch's stats (empty for ``epochs = 0``)."""
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"expected (M, D) features and (M,) labels, got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    device = torch.device(device)
    x = features.to(device, torch.float32)
    y = labels.to(device, torch.long)
    head.to(device)
    final_bn = isinstance(head.bn, nn.BatchNorm1d)
    optimizer = build_optimizer([{"params": head.parameters()}], optim, lr, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    guard = DivergenceGuard(head.fc.out_features)
    stats: dict[str, float] = {}
    m = x.shape[0]
    for epoch in progress(range(epochs), enabled=show_progress, desc="linear probe"):
        lr_now = apply_step_schedule(optimizer, lr, epoch, schedule)
        head.train()
        perm = torch.randperm(m, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for start in range(0, m, batch_size):
            idx = perm[start:start + batch_size]
            if final_bn and idx.numel() < 2:  # BatchNorm1d cannot train on one row
                continue
            logits = head(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * idx.numel()
            correct += logits.argmax(dim=1).eq(y[idx]).sum()
            seen += idx.numel()
        stats = {"loss": (loss_sum / max(seen, 1)).item(),
                 "train_top1": 100.0 * (correct / max(seen, 1)).item(), "lr": lr_now}
        if on_epoch is not None:
            on_epoch(epoch, stats, head)
        guard.check(epoch, stats["loss"], lr_now)
    head.eval()
    return stats


@torch.no_grad()
def predict_features(head: nn.Module, features: Tensor, device: torch.device | str = "cpu",
                     batch_size: int = 8192) -> Tensor:
    """Apply ``head`` (eval mode) to ``(N, K, D)`` cached features -> ``(N, K, C)`` logits (CPU)."""
    was_training = head.training
    head.eval()
    flat = features.flatten(0, 1)
    out = torch.cat([head(flat[s:s + batch_size].to(device, torch.float32)).float().cpu()
                     for s in range(0, flat.shape[0], batch_size)])
    head.train(was_training)
    return out.reshape(features.shape[0], features.shape[1], -1)


def train_probe_end_to_end(model: VideoClassifier, loader: Iterable, optimizer: torch.optim.Optimizer, *,
                           epochs: int, lr: float, schedule: Sequence[int], device: torch.device,
                           amp_dtype: torch.dtype | None = None, seed: int = 0,
                           on_epoch: EpochCallback | None = None,
                           show_progress: bool = False) -> dict[str, float]:
    """Train ``model.head`` through the frozen backbone (docs/method.md §5 linear probe, end to end):
    ``model`` must be a ``frozen`` :class:`VideoClassifier` (backbone in eval mode whatever
    ``.train()`` says) and ``optimizer`` must hold only the head (checked). ``loader`` is an
    ``"epoch"``-order loader (``engine.loader.make_loader``); epoch ``e``'s data depends on
    ``(seed, e)`` only. A diverging loss raises :class:`ProbeDiverged`. Returns the last epoch's
    stats, with ``skipped_videos`` (missing/corrupt frames) summed over all epochs."""
    if not model.frozen:
        raise ValueError("train_probe_end_to_end needs VideoClassifier(..., frozen=True)")
    check_only_head_trains(model, model.head, optimizer)
    scaler = make_scaler(amp_dtype, device)
    guard = DivergenceGuard(model.head.fc.out_features)
    skipped = 0
    stats: dict[str, float] = {}
    for epoch in range(epochs):
        lr_now = apply_step_schedule(optimizer, lr, epoch, schedule)
        start_epoch(loader, seed, 0, epoch)
        stats = {**train_one_epoch(model, loader, optimizer, scaler, device, amp_dtype,
                                   show_progress, desc=f"probe epoch {epoch}"), "lr": lr_now}
        skipped += stats["skipped_videos"]
        if on_epoch is not None:
            on_epoch(epoch, stats, model.head)
        guard.check(epoch, stats["loss"], lr_now)
    return {**stats, "skipped_videos": skipped}


def order_logits(model: VideoClassifier) -> Callable[[Tensor], Tensor]:
    """The temporal-order probe (docs/method.md §5) as a feature function for
    :func:`engine.features.extract`: clips ``(M, 3, T, H, W)`` -> ``(M, 2, 2)`` logits, ``[:, 0]``
    for each clip and ``[:, 1]`` for its time-reversed copy (one backbone pass over both)."""
    def fn(x: Tensor) -> Tensor:
        logits = model(order_pairs(x)[0])  # (2M, 2): normal clips first
        return torch.stack(logits.chunk(2), dim=1)
    return fn


def order_accuracy(logits: Tensor) -> dict[str, float]:
    """Accuracy in percent of ``(N, K, 2, 2)`` temporal-order logits (videos, clips, [normal,
    reversed], class): overall and per order."""
    hit = logits.argmax(dim=-1).eq(torch.tensor([NORMAL, REVERSED]))  # (N, K, 2)
    return {"temporal_order_acc": 100.0 * hit.float().mean().item(),
            "acc_normal": 100.0 * hit[..., 0].float().mean().item(),
            "acc_reversed": 100.0 * hit[..., 1].float().mean().item()}
