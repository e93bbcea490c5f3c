"""The pretraining epoch: data loading with reproducible per-epoch seeds, the optimisation step
(METHOD.md §2 "prototype rows renormalised / gradients dropped in epoch 0", §4 Adam + step
decay), non-finite-loss skipping, per-step and per-epoch statistics, and the checkpoint state.

train.py wires these together; everything here works the same in one process and under DDP.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datasets.base import SkipCounting
from datasets.transforms import color_augment_batch
from engine.amp import autocast
from engine.checkpoint import (
    CHECKPOINT_VERSION, CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state,
)
from engine.distributed import all_reduce_sum_
from engine.logging import RunLogger, progress
from engine.runtime import DistInfo, derive_seed, seed_worker, unwrap
from losses.prototypes import freeze_prototypes_grad


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the message points at the last good checkpoint."""


class DataTooSmall(ValueError):
    """The dataset cannot fill a single global batch."""


# --------------------------------------------------------------------------------------- data
def build_loader(dataset: Dataset, info: DistInfo, batch_size: int, workers: int, seed: int) -> DataLoader:
    """A DataLoader over ``dataset`` with a :class:`DistributedSampler` (also for one process:
    ``num_replicas=1``), ``drop_last`` everywhere, per-worker seeds and its own generator.

    Batches are ``(clips, skipped)`` (see :class:`datasets.base.SkipCounting`). Call
    :func:`start_epoch` before iterating it each epoch. Workers are not persistent, so the worker
    seeds come from the generator re-seeded each epoch: the data of epoch ``e`` depends only on
    ``(seed, rank, e)`` — what makes an interrupted and resumed run match a straight one.
    """
    dataset = SkipCounting(dataset)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        drop_last=True,
        worker_init_fn=seed_worker,
        generator=torch.Generator(),
        persistent_workers=False,
    )
    if len(loader) == 0:
        n = len(dataset)
        raise DataTooSmall(
            f"the dataset has {n} usable videos, fewer than one global batch of "
            f"{batch_size} x {info.world_size} rank(s) = {batch_size * info.world_size}; lower "
            "--train_batch or add videos to the CSV"
        )
    return loader


def start_epoch(loader: DataLoader, seed: int, rank: int, epoch: int) -> None:
    """Make epoch ``epoch``'s data a function of ``(seed, rank, epoch)`` only.

    Sets the sampler's epoch (shuffle order, same on every rank), re-seeds the loader generator
    (worker seeds) and this process's global RNGs (augmentations drawn in the main process when
    ``--workers 0``).
    """
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(derive_seed(seed, rank, epoch, 0))
    s = derive_seed(seed, rank, epoch, 1)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


# ---------------------------------------------------------------------------------- the step
@dataclass
class StepGuard:
    """Counts non-finite steps; raises :class:`TrainingDiverged` after ``max_bad`` in a row."""

    max_bad: int
    last_checkpoint: str | None = None
    consecutive: int = 0
    total: int = 0

    def good(self) -> None:
        self.consecutive = 0

    def bad(self, epoch: int, step: int) -> None:
        self.consecutive += 1
        self.total += 1
        if self.max_bad and self.consecutive >= self.max_bad:
            where = (f"the last good checkpoint is {self.last_checkpoint}; resume from it with a lower "
                     "--lr, another --seed or --amp off (--resume PATH)") if self.last_checkpoint else \
                    "no checkpoint was written yet; lower --lr or try --amp off"
            raise TrainingDiverged(
                f"{self.consecutive} non-finite losses/gradients in a row (epoch {epoch}, step {step}; "
                f"--max_bad_steps {self.max_bad}): training diverged. {where}"
            )


@dataclass
class EpochResult:
    """Means over the epoch's finite steps (all ranks), timings and counters."""

    epoch: int
    step: int
    lr: float
    parts: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    bad_steps: int = 0
    seconds: float = 0.0
    clips_per_s: float = 0.0
    videos_per_s: float = 0.0
    data_wait_frac: float = 0.0
    distinct_pseudo_labels: int = 0
    skipped_samples: int = 0

    def record(self) -> dict[str, Any]:
        """Flat dict for ``log.jsonl``."""
        rec = {"epoch": self.epoch, "step": self.step, "lr": self.lr,
               "loss": self.parts.get("total", float("nan"))}
        rec.update({k: v for k, v in self.parts.items() if k != "total"})
        rec.update(steps=self.steps, non_finite_steps=self.bad_steps, seconds=round(self.seconds, 3),
                   clips_per_s=self.clips_per_s, data_wait_frac=self.data_wait_frac,
                   distinct_pseudo_labels=self.distinct_pseudo_labels,
                   skipped_samples=self.skipped_samples)
        return rec


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_one_epoch(
    *,
    model: torch.nn.Module,
    objective: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    info: DistInfo,
    epoch: int,
    step: int,
    guard: StepGuard,
    logger: RunLogger,
    log_every: int = 50,
    num_clips: int = 3,
    color_on_device: bool = False,
) -> EpochResult:
    """One pass over ``loader`` (METHOD §2–§4).

    Per step: renormalise the prototype rows; forward under one autocast context (graph heads
    only when ``objective.needs_graph(epoch)``); backward; drop the prototype gradients in epoch
    0; one all-reduced check that the loss and gradient norm are finite on every rank — if not,
    the step is skipped on all ranks (no optimizer step, gradients zeroed, the objective's
    score queue restored to its state before the step) and counted by ``guard``; else
    ``optimizer.step()``. ``num_clips`` = clips per video (``n + 1``) for the clips/s figure.
    ``color_on_device`` (``--gpu_augment``): the loader yields uint8 clips and their colour draws
    (``PretrainDataset(color_on_device=True)``); the METHOD §1 colour part then runs here on the
    whole batch, on ``info.device``, as it moves there (:func:`color_augment_batch`).
    """
    raw = unwrap(model)
    device = info.device
    model.train()
    objective.train()
    with_graph = bool(objective.needs_graph(epoch))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    lr = optimizer.param_groups[0]["lr"]
    steps_total = len(loader)
    keys: list[str] | None = None
    sums: torch.Tensor | None = None
    good_steps = 0
    skipped = 0
    bad_steps = 0
    cluster = raw.prototypes.weight.shape[0]
    label_counts = torch.zeros(cluster, dtype=torch.long, device=device)
    batch_videos = loader.batch_size * info.world_size

    data_wait = 0.0
    win_wait, win_time, win_steps = 0.0, 0.0, 0
    t_epoch = time.perf_counter()
    t_prev = t_epoch
    bar = progress(range(steps_total), enabled=info.is_main, desc=f"epoch {epoch}", leave=False)
    iterator = iter(loader)
    for _ in bar:
        clips, skipped_now = next(iterator)
        skipped += int(skipped_now.sum())
        t_data = time.perf_counter()
        wait = t_data - t_prev
        if color_on_device:
            clips = color_augment_batch(clips, device)
        else:
            clips = clips.to(device, non_blocking=True)

        raw.normalize_prototypes()
        # what a skipped step must leave untouched besides the weights: the score queue and the
        # BatchNorm running statistics, which the forward pass updates (a NaN batch makes them NaN)
        queue_before = _snapshot(objective)
        buffers_before = [b.detach().clone() for b in raw.buffers()]
        with autocast(device, amp_dtype):
            out = model(clips, with_graph=with_graph)
            result = objective(out, epoch)
        loss = result.total
        if info.distributed:
            # DDP waits for a gradient of every parameter that the forward outputs depend on. A
            # term of weight 0 (an ablation: --w_proto 0, --w_mot_low 0, ...) leaves some outputs
            # out of the loss, or uses them without gradient (the prototype scores behind the
            # graph's pseudo-labels); a zero multiple of every output gives those parameters an
            # exact zero gradient instead of a hang-then-error at the next step.
            loss = loss + 0.0 * sum(t.sum() for t in out.tensors())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        freeze_prototypes_grad(raw.prototypes, epoch)
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        bad = ~torch.isfinite(loss.detach())
        if not scaler.is_enabled():  # with fp16 the scaler itself skips overflowing steps
            bad = bad | ~torch.isfinite(grad_norm)
        flags = torch.stack([bad.float(), loss.detach().float(), grad_norm.detach().float()])
        all_reduce_sum_(flags[:1])
        n_bad, loss_value, gnorm = flags.tolist()  # the one host sync of the step
        if n_bad > 0:
            optimizer.zero_grad(set_to_none=True)
            objective.load_state_dict(queue_before)
            with torch.no_grad():
                for buffer, saved in zip(raw.buffers(), buffers_before):
                    buffer.copy_(saved)
            if scaler.is_enabled():
                scaler.update()
            bad_steps += 1
            if info.is_main:
                logger.print(f"warning: non-finite loss/gradient at epoch {epoch} step {step} "
                             f"(loss {loss_value}); step skipped")
            guard.bad(epoch, step)
            t_prev = time.perf_counter()
            continue
        guard.good()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        good_steps += 1

        if keys is None:
            keys = [k for k, v in result.parts.items() if v.numel() == 1]
            sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
        vec = torch.stack([result.parts[k].detach().double().reshape(()) for k in keys])
        sums += vec
        labels = result.pseudo_labels.detach().long().flatten()
        label_counts.scatter_add_(0, labels, torch.ones_like(labels))  # bincount would sync on CUDA

        t_now = time.perf_counter()
        data_wait += wait
        win_wait += wait
        win_time += t_now - t_prev
        win_steps += 1
        t_prev = t_now
        if info.is_main and (step % log_every == 0 or good_steps == 1):
            values = dict(zip(keys, vec.tolist()))
            logger.scalars("train", {k: v for k, v in values.items()}, step)
            logger.scalar("train/lr", lr, step)
            logger.scalar("train/grad_norm", gnorm, step)
            if win_time > 0:
                logger.scalar("perf/clips_per_s", win_steps * batch_videos * num_clips / win_time, step)
                logger.scalar("perf/data_wait_frac", win_wait / win_time, step)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2g}", refresh=False)
            win_wait, win_time, win_steps = 0.0, 0.0, 0
    seconds = time.perf_counter() - t_epoch
    if hasattr(bar, "close"):
        bar.close()

    res = EpochResult(epoch=epoch, step=step, lr=lr, steps=good_steps, bad_steps=bad_steps, seconds=seconds)
    all_reduce_sum_(label_counts)
    res.distinct_pseudo_labels = int((label_counts > 0).sum())
    res.skipped_samples = int(all_reduce_sum_(torch.tensor([skipped], device=device)).item())
    if keys is not None and sums is not None:
        all_reduce_sum_(sums)
        means = (sums / (good_steps * info.world_size)).tolist()
        res.parts = dict(zip(keys, means))
    videos = good_steps * batch_videos
    res.videos_per_s = videos / seconds if seconds > 0 else 0.0
    res.clips_per_s = res.videos_per_s * num_clips
    res.data_wait_frac = data_wait / seconds if seconds > 0 else 0.0
    return res


# ---------------------------------------------------------------------------------- state
def objective_state(objective: torch.nn.Module) -> dict[str, Any]:
    """The objective's state for a checkpoint: ``{"queue": {"scores": (n, size, K), "filled"},
    "buffers": {...}}`` (the score queue is the same on every rank, so rank 0's is the run's)."""
    state: dict[str, Any] = {}
    queue = getattr(objective, "queue", None)
    if queue is not None:
        state["queue"] = {k: v.detach().cpu().clone() for k, v in queue.state_dict().items()}
    state["buffers"] = {k: v.detach().cpu() for k, v in objective.state_dict().items()
                        if not (queue is not None and k.startswith("queue."))}
    return state


def _queue_from_shards(queue: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A queue saved by an earlier version as per-rank shards ``(world, n, shard, K)`` → the
    ``(n, rows, K)`` queue of all their filled rows (Sinkhorn does not depend on the row order)."""
    scores, filled = queue["scores"], int(queue["filled"])
    world, n, shard, k = scores.shape
    rows = scores[:, :, shard - filled:].permute(1, 0, 2, 3).reshape(n, world * filled, k)
    return {"scores": rows, "filled": torch.tensor(world * filled)}


def load_objective_state(objective: torch.nn.Module, state: dict[str, Any]) -> None:
    """Inverse of :func:`objective_state`, on every rank (any number of ranks)."""
    if state.get("buffers"):
        objective.load_state_dict(state["buffers"], strict=False)
    if "queue" in state and hasattr(objective, "queue"):
        queue = state["queue"]
        objective.queue.load_state_dict(_queue_from_shards(queue) if queue["scores"].dim() == 4 else queue)


def checkpoint_state(
    *, model: torch.nn.Module, objective_snapshot: dict[str, Any], optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, next_epoch: int, step: int, args: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint dict (see ``engine/checkpoint.py``); ``rng`` is this process's (rank 0's)."""
    raw = unwrap(model)
    return {
        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
        "model_config": dict(getattr(raw, "config", {})),
        "objective": objective_snapshot,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": int(next_epoch),
        "step": int(step),
        "args": args,
        "rng": capture_rng_state(),
        "version": CHECKPOINT_VERSION,
    }


def resume(
    path: str, *, model: torch.nn.Module, objective: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, sample: int, weight_decay: float, restore_rng: bool,
) -> tuple[int, int]:
    """Load checkpoint ``path`` into the (unwrapped) model, objective, optimizer and scaler on
    every rank; returns ``(next_epoch, step)``.

    Refuses (``CheckpointError`` naming the file) a checkpoint of another model configuration or
    clip layout. The current ``--wd`` wins over the saved one; the lr is set by the schedule each
    epoch. ``restore_rng``: rank 0 takes back its saved RNG state; every rank re-seeds its RNGs from
    ``(seed, rank, epoch)`` at each epoch start anyway (:func:`start_epoch`), so the other ranks
    need no saved state to continue exactly.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    for key in ("model", "optimizer", "epoch", "step"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry: not a train.py checkpoint")
    saved = ckpt.get("model_config") or {}
    current = dict(getattr(model, "config", {}))
    diff = {k: (saved[k], v) for k, v in current.items() if k in saved and saved[k] != v}
    saved_sample = (ckpt.get("args") or {}).get("sample")
    if saved_sample is not None and saved_sample != sample:
        diff["sample"] = (saved_sample, sample)
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs flags {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {path} does not match the flags ({lines}); use the run's "
                              "flags (see its args.json) or another --output_dir")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {e}") from e
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("objective"):
        load_objective_state(objective, ckpt["objective"])
    if restore_rng and ckpt.get("rng"):
        restore_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), int(ckpt["step"])


def final_metrics(result: EpochResult, history: list[dict], **extra: Any) -> dict[str, Any]:
    """``metrics.json``: the last epoch's mean loss and components, throughput, and counters
    summed over ``history`` (the ``log.jsonl`` records of the whole run, resumes included)."""
    return {
        "loss": result.parts.get("total"),
        "loss_parts": {k: v for k, v in result.parts.items() if k != "total"},
        "last_epoch": result.epoch,
        "steps": result.step,
        "clips_per_s": result.clips_per_s,
        "videos_per_s": result.videos_per_s,
        "data_wait_frac": result.data_wait_frac,
        "distinct_pseudo_labels": result.distinct_pseudo_labels,
        "skipped_samples": sum(int(r.get("skipped_samples", 0)) for r in history),
        "non_finite_steps": sum(int(r.get("non_finite_steps", 0)) for r in history),
        **extra,
    }
