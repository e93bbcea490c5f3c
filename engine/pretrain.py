"""The pretraining epoch: the optimisation step (docs/method.md §2 "prototype rows renormalised /
gradients dropped in epoch 0", §4 Adam + step decay), non-finite-loss skipping, per-step and
per-epoch statistics, and the run's ``metrics.json``.

train.py wires these together with the loader (``engine/loader.py``) and the checkpoints
(``engine/checkpointing.py``); everything here works the same in one process and under DDP.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from datasets.transforms import color_augment_batch
from engine.preemption import Preempted, RunControl
from utils.amp import autocast
from utils.distributed import all_reduce_sum_
from utils.logging import RunLogger, progress
from utils.runtime import DistInfo, unwrap


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the message points at the last good checkpoint."""


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


# log.jsonl key -> EpochResult attribute of the counters and timings after the loss parts
_RECORDED = {"steps": "steps", "non_finite_steps": "bad_steps", "seconds": "seconds", "clips_per_s": "clips_per_s",
             "videos_per_s": "videos_per_s", "data_wait_frac": "data_wait_frac",
             "distinct_pseudo_labels": "distinct_pseudo_labels", "skipped_samples": "skipped_samples"}


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
        """Flat dict for ``log.jsonl``: epoch, step, lr, loss, the loss parts, the counters."""
        rec = {"epoch": self.epoch, "step": self.step, "lr": self.lr,
               "loss": self.parts.get("total", float("nan"))}
        rec.update({k: v for k, v in self.parts.items() if k != "total"})
        rec.update({key: getattr(self, name) for key, name in _RECORDED.items()})
        rec["seconds"] = round(self.seconds, 3)
        return rec

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EpochResult:
        """The epoch a ``log.jsonl`` line (:meth:`record`) describes."""
        fixed = {"epoch", "step", "lr", "loss", *_RECORDED}
        parts = {"total": record["loss"], **{k: v for k, v in record.items() if k not in fixed}}
        counters = {name: record[key] for key, name in _RECORDED.items() if key in record}
        return cls(epoch=record["epoch"], step=record["step"], lr=record["lr"], parts=parts, **counters)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@dataclass
class EpochTally:
    """This rank's running sums over an epoch: what a checkpoint written inside the epoch keeps
    (:meth:`state`), so that the resumed epoch ends with the figures of a straight one."""

    batches: int = 0  # batches consumed (finite and skipped steps)
    good_steps: int = 0
    bad_steps: int = 0
    skipped: int = 0  # corrupt videos replaced by others
    seconds: float = 0.0  # wall time of the attempts that were checkpointed
    data_wait: float = 0.0  # of it, waiting for data
    keys: list[str] | None = None  # the loss parts summed in ``sums``
    sums: torch.Tensor | None = None
    label_counts: torch.Tensor | None = None

    def state(self) -> dict[str, Any]:
        """Plain values and CPU tensors (``weights_only`` loadable)."""
        cpu = {k: None if v is None else v.detach().cpu() for k, v in
               (("sums", self.sums), ("label_counts", self.label_counts))}
        return {"batches": self.batches, "good_steps": self.good_steps, "bad_steps": self.bad_steps,
                "skipped": self.skipped, "seconds": self.seconds, "data_wait": self.data_wait,
                "keys": self.keys, **cpu}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochTally:
        """The inverse of :meth:`state`, with the tensors on ``device``."""
        on = {k: None if state.get(k) is None else state[k].to(device) for k in ("sums", "label_counts")}
        return cls(batches=int(state["batches"]), good_steps=int(state["good_steps"]),
                   bad_steps=int(state["bad_steps"]), skipped=int(state["skipped"]),
                   seconds=float(state["seconds"]), data_wait=float(state.get("data_wait", 0.0)),
                   keys=state.get("keys"), **on)


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
    exact_color: bool = False,
    show_progress: bool = True,
    tally: EpochTally | None = None,
    control: RunControl | None = None,
    checkpoint: Callable[[EpochTally, int], None] | None = None,
) -> EpochResult:
    """One pass over ``loader`` (docs/method.md §2–§4).

    Per step: renormalise the prototype rows; forward under one autocast context (graph heads
    only when ``objective.needs_graph(epoch)``); backward; drop the prototype gradients in epoch
    0; one all-reduced check that the loss and gradient norm are finite on every rank — if not,
    the step is skipped on all ranks (no optimizer step, gradients zeroed, the objective's
    score queue restored to its state before the step) and counted by ``guard``; else
    ``optimizer.step()``. ``num_clips`` = clips per video (``n + 1``) for the clips/s figure.
    ``color_on_device`` (``--gpu_augment``): the loader yields uint8 clips and their colour draws
    (``PretrainDataset(color_on_device=True)``); the docs/method.md §1 colour part then runs here on the
    whole batch, on ``info.device``, as it moves there (:func:`color_augment_batch`; ``exact_color``:
    torchvision's maths instead of the fast kernel).
    ``show_progress``: a progress bar on the main process.

    An epoch resumed inside itself passes its checkpointed ``tally`` (the loader then starts at
    batch ``tally.batches``, :func:`engine.loader.start_epoch`). The same collective as the
    finiteness check carries ``control``'s requests (:class:`engine.preemption.RunControl`):
    when the ranks agree on a checkpoint, ``checkpoint(tally, step)`` is called on every rank
    after the step (not after the epoch's last one: the epoch's own checkpoint follows); when a
    rank received a preemption signal, :class:`~engine.preemption.Preempted` is raised after it.
    """
    raw = unwrap(model)
    device = info.device
    model.train()
    objective.train()
    with_graph = bool(objective.needs_graph(epoch))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    lr = optimizer.param_groups[0]["lr"]
    tally = tally or EpochTally()
    if tally.label_counts is None:
        tally.label_counts = torch.zeros(raw.num_prototypes, dtype=torch.long, device=device)
    steps_total = tally.batches + len(loader)
    batch_videos = loader.batch_size * info.world_size

    data_wait = 0.0
    win_wait, win_time, win_steps = 0.0, 0.0, 0
    t_epoch = time.perf_counter()
    t_prev = t_epoch
    bar = progress(range(tally.batches, steps_total), enabled=info.is_main and show_progress,
                   desc=f"epoch {epoch}", leave=False, initial=tally.batches, total=steps_total)
    iterator = iter(loader)
    for _ in bar:
        clips, skipped_now = next(iterator)
        tally.batches += 1
        tally.skipped += int(skipped_now.sum())
        t_data = time.perf_counter()
        wait = t_data - t_prev
        if color_on_device:
            clips = color_augment_batch(clips, device, exact_color)
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
        raw.drop_prototype_grads(epoch)
        if scaler.is_enabled():
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        bad = ~torch.isfinite(loss.detach())
        if not scaler.is_enabled():  # with fp16 the scaler itself skips overflowing steps
            bad = bad | ~torch.isfinite(grad_norm)
        # after this step: the step count if it is finite (the requests are read after it)
        requests = control.requests(step + 1) if control is not None else [0.0, 0.0]
        flags = torch.cat([bad.float().reshape(1), torch.tensor(requests, device=device),
                           torch.stack([loss.detach().float(), grad_norm.detach().float()])])
        all_reduce_sum_(flags[:3])
        n_bad, *summed, loss_value, gnorm = flags.tolist()  # the one host sync of the step
        save, stop = RunControl.agreed(summed)
        if n_bad > 0:
            save = stop  # the step count did not advance: a checkpoint asked for now comes at the next step
            optimizer.zero_grad(set_to_none=True)
            objective.load_state_dict(queue_before)
            with torch.no_grad():
                for buffer, saved in zip(raw.buffers(), buffers_before):
                    buffer.copy_(saved)
            if scaler.is_enabled():
                scaler.update()
            tally.bad_steps += 1
            if info.is_main:
                logger.print(f"warning: non-finite loss/gradient at epoch {epoch} step {step} "
                             f"(loss {loss_value}); step skipped")
            guard.bad(epoch, step)
        else:
            guard.good()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            tally.good_steps += 1
            if tally.keys is None:
                tally.keys = [k for k, v in result.parts.items() if v.numel() == 1]
                tally.sums = torch.zeros(len(tally.keys), dtype=torch.float64, device=device)
            vec = torch.stack([result.parts[k].detach().double().reshape(()) for k in tally.keys])
            tally.sums += vec
            labels = result.pseudo_labels.detach().long().flatten()
            tally.label_counts.scatter_add_(0, labels, torch.ones_like(labels))  # bincount would sync on CUDA

            t_now = time.perf_counter()
            data_wait += wait
            win_wait += wait
            win_time += t_now - t_prev
            win_steps += 1
            if info.is_main and (step % log_every == 0 or tally.good_steps == 1):
                logger.scalars("train", dict(zip(tally.keys, vec.tolist())), step)
                logger.scalar("train/lr", lr, step)
                logger.scalar("train/grad_norm", gnorm, step)
                if win_time > 0:
                    logger.scalar("perf/clips_per_s", win_steps * batch_videos * num_clips / win_time, step)
                    logger.scalar("perf/data_wait_frac", win_wait / win_time, step)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2g}", refresh=False)
                win_wait, win_time, win_steps = 0.0, 0.0, 0
        if checkpoint is not None and (stop or (save and tally.batches < steps_total)):
            tally_now = EpochTally(**{**vars(tally), "seconds": tally.seconds + time.perf_counter() - t_epoch,
                                      "data_wait": tally.data_wait + data_wait})
            checkpoint(tally_now, step)
            if control is not None:
                control.saved(step)
            if stop:
                raise Preempted(f"{(control and control.received) or 'a signal to another rank'} at "
                                f"epoch {epoch}, batch {tally.batches} of {steps_total}, step {step}")
        t_prev = time.perf_counter()
    seconds = tally.seconds + time.perf_counter() - t_epoch
    if hasattr(bar, "close"):
        bar.close()

    res = EpochResult(epoch=epoch, step=step, lr=lr, steps=tally.good_steps, bad_steps=tally.bad_steps,
                      seconds=seconds)
    all_reduce_sum_(tally.label_counts)
    res.distinct_pseudo_labels = int((tally.label_counts > 0).sum())
    res.skipped_samples = int(all_reduce_sum_(torch.tensor([tally.skipped], device=device)).item())
    if tally.keys is not None and tally.sums is not None:
        all_reduce_sum_(tally.sums)
        means = (tally.sums / (tally.good_steps * info.world_size)).tolist()
        res.parts = dict(zip(tally.keys, means))
    videos = tally.good_steps * batch_videos
    res.videos_per_s = videos / seconds if seconds > 0 else 0.0
    res.clips_per_s = res.videos_per_s * num_clips
    res.data_wait_frac = (tally.data_wait + data_wait) / seconds if seconds > 0 else 0.0
    return res


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
