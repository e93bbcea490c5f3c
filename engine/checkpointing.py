"""The one checkpoint and resume path of the training scripts (``train.py``, ``finetune.py``).

A training checkpoint is one dict (``utils/checkpoint.py`` writes and reads it):
``{"model", "model_config", "optimizer", "scaler", "epoch", "step", "args", "rng", "version"}``
plus what the script adds (``train.py``: the objective's score queue, docs/method.md §3.4). ``epoch``
is the next epoch to run. ``checkpoint_last.pth`` is written after every epoch and
``checkpoint_NNNN.pth`` every ``--save_every`` epochs and at the end, before it (the
``--keep_checkpoints`` newest are kept).

A checkpoint written inside an epoch (``--checkpoint_minutes``, ``--checkpoint_steps``, a
preemption signal) is ``checkpoint_last.pth`` with ``epoch`` = the epoch in progress and
``epoch_progress`` = ``{"batches", "world_size", "batch_size", "ranks"}``: the batches of the
epoch already consumed and every rank's running sums, so that the resumed epoch continues with
the next batch and ends with the figures of a straight run.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint import (
    CHECKPOINT_VERSION, LAST_NAME, CheckpointError, capture_rng_state, load_checkpoint, numbered_checkpoints,
    numbered_name, restore_rng_state, save_checkpoint,
)
from utils.runtime import unwrap

_REQUIRED = ("model", "optimizer", "epoch", "step")


def training_state(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, next_epoch: int, step: int, args: dict[str, Any],
                   model_config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict of a run about to start epoch ``next_epoch`` after ``step``
    optimiser steps. ``model`` may be wrapped (DDP, ``torch.compile``); its plain state dict is
    saved on the CPU with ``model_config`` (default: the model's own ``config``). ``rng`` is this
    process's (rank 0's) RNG state."""
    raw = unwrap(model)
    return {
        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
        "model_config": dict(model_config if model_config is not None else getattr(raw, "config", {})),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": int(next_epoch),
        "step": int(step),
        "args": args,
        "rng": capture_rng_state(),
        "version": CHECKPOINT_VERSION,
        **extra,
    }


def save_epoch_checkpoints(state: dict[str, Any], out_dir: Path, total_epochs: int, save_every: int,
                           keep: int = 0) -> None:
    """Write ``state`` (after ``state["epoch"]`` epochs) as ``checkpoint_NNNN.pth`` every
    ``save_every`` epochs and after the last one, then as ``checkpoint_last.pth`` (global rank 0).
    ``keep`` > 0: then delete all but the ``keep`` newest ``checkpoint_NNNN.pth``.

    The numbered file comes first: a run killed between the two resumes from the previous
    ``checkpoint_last.pth``, reruns the epoch and writes both, so every numbered checkpoint the
    flags ask for exists once ``checkpoint_last.pth`` has passed its epoch."""
    done = int(state["epoch"])
    if (save_every and done % save_every == 0) or done == total_epochs:
        save_checkpoint(state, out_dir / numbered_name(done))
    save_checkpoint(state, out_dir / LAST_NAME)
    if keep:
        for path in numbered_checkpoints(out_dir)[:-keep]:
            path.unlink(missing_ok=True)


def epoch_progress(ckpt: dict[str, Any], path: str, world_size: int, batch_size: int) -> dict[str, Any] | None:
    """The ``epoch_progress`` of a checkpoint written inside an epoch (None for one written at an
    epoch's end). Its position counts batches of one world size and batch size: another
    ``CheckpointError``, naming how to go on."""
    progress = ckpt.get("epoch_progress")
    if not progress:
        return None
    saved = (int(progress["world_size"]), int(progress["batch_size"]))
    if saved != (world_size, batch_size):
        raise CheckpointError(
            f"{path} was written inside epoch {ckpt['epoch']} by {saved[0]} process(es) with batch {saved[1]}; "
            f"this run has {world_size} x {batch_size}. Resume with the same number of processes and batch "
            "to continue that epoch, or --resume an epoch-end checkpoint_NNNN.pth")
    return progress


def read_training_checkpoint(path: str) -> dict[str, Any]:
    """The checkpoint at ``path`` (versioned, ``weights_only`` read), refused with a
    ``CheckpointError`` naming it when it lacks a training run's entries."""
    ckpt = load_checkpoint(path, map_location="cpu")
    for key in _REQUIRED:
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} has no {key!r} entry: not a checkpoint of this "
                                  "script; use --resume none and another --output_dir")
    return ckpt


def _differences(saved: dict[str, Any], expected: dict[str, Any],
                 key: Callable[[Any], Any]) -> dict[str, tuple[Any, Any]]:
    """``name -> (saved, expected)`` for every name of ``expected`` that ``saved`` holds with a
    value that differs once both go through ``key``."""
    return {k: (saved[k], v) for k, v in expected.items() if k in saved and key(saved[k]) != key(v)}


def check_matches(ckpt: dict[str, Any], path: str, expected: dict[str, Any]) -> None:
    """Refuse (``CheckpointError``) a checkpoint whose ``model_config`` or ``args`` disagree with
    ``expected`` (``name -> value of the current flags``; a name absent from the checkpoint is
    not compared)."""
    saved = {**(ckpt.get("args") or {}), **(ckpt.get("model_config") or {})}
    diff = _differences(saved, expected, lambda value: value)
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs flags {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {path} does not match the flags ({lines}); use the run's "
                              "flags (see its args.json) or another --output_dir")


def check_same_files(ckpt: dict[str, Any], path: str, expected: dict[str, str | None]) -> None:
    """Refuse (``CheckpointError``) to continue a run whose file flags (``name -> current value``:
    the data, the pretrained backbone) name other files than the checkpoint's ``args``: its results
    would mean something else. Paths are compared resolved; a name the checkpoint lacks is not
    compared."""
    diff = _differences(ckpt.get("args") or {}, expected,
                        lambda value: None if value is None else os.path.realpath(value))
    if diff:
        lines = ", ".join(f"--{k} {b!r}, the run's {a!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{path} belongs to a run with other inputs ({lines}): continuing it would mix two runs. "
            "Rerun with the run's flags (its args.json), or start the new run in another --output_dir "
            "(or delete this one)")


def restore_training_state(ckpt: dict[str, Any], path: str, *, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                           restore_rng: bool = False) -> tuple[int, int]:
    """Load ``ckpt`` (:func:`read_training_checkpoint`) into the unwrapped ``model``, the
    ``optimizer`` and an enabled ``scaler``; with ``restore_rng``, this process's RNGs too.
    Returns ``(next_epoch, step)``. A state that does not fit raises ``CheckpointError``."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {e}") from e
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    if restore_rng and ckpt.get("rng"):
        restore_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]), int(ckpt["step"])
