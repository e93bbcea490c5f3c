"""Long runs: mid-epoch checkpoints on a step or time budget, and preemption (SIGTERM, SIGUSR1)
answered with a checkpoint and the "requeue me" exit status (docs/pretraining.md "Long runs").

The training loops ask a :class:`RunControl` after every step whether to write a checkpoint now
and whether to stop. Each rank states its own view (rank 0 keeps the clock; any rank may have
received the signal); the views are summed over the ranks in the step's one collective, so every
rank takes the same decision after the same step.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from utils import distributed as dist_utils

EXIT_REQUEUE = 75  # EX_TEMPFAIL of sysexits.h: a temporary failure, run the same command again
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """A preemption signal arrived; the run wrote its checkpoint and stops with :data:`EXIT_REQUEUE`."""


WORKER_GRACE_S = 60.0  # a DataLoader worker sent SIGTERM exits (status 0) after this long


def _leave_later(signum: int, frame: FrameType | None) -> None:
    timer = threading.Timer(WORKER_GRACE_S, os._exit, (0,))
    timer.daemon = True
    timer.start()


def ignore_signals_in_worker() -> None:
    """In a DataLoader worker: leave :data:`SIGNALS` to the main process, which finishes its step
    and shuts the workers down itself (a worker killed first would fail the step). SIGUSR1 is
    ignored; SIGTERM (which a scheduler sends to every process, and the DataLoader to a worker that
    does not stop) ends the worker quietly after :data:`WORKER_GRACE_S` seconds."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave_later)


class RunControl:
    """The mid-epoch checkpoint policy and the preemption flag of one process.

    ``checkpoint_steps``: a checkpoint after every this many optimiser steps (0 = off);
    ``checkpoint_minutes``: one when this many minutes passed since the last checkpoint (0 = off;
    rank 0's clock decides). :meth:`catch_signals` turns SIGTERM/SIGUSR1 into a request to stop.
    """

    def __init__(self, checkpoint_steps: int = 0, checkpoint_minutes: float = 0.0, is_main: bool = True) -> None:
        self.checkpoint_steps = int(checkpoint_steps)
        self.checkpoint_seconds = 60.0 * float(checkpoint_minutes)
        self.is_main = is_main
        self.received: str | None = None
        self._last_save = time.monotonic()
        self._last_step: int | None = None

    # -- the decision of a step
    def requests(self, step: int) -> list[float]:
        """This rank's view after optimiser step ``step``: ``[save, stop]`` as 0/1."""
        save = False
        if self.is_main:
            by_steps = self.checkpoint_steps > 0 and step % self.checkpoint_steps == 0 and step != self._last_step
            by_time = self.checkpoint_seconds > 0 and time.monotonic() - self._last_save >= self.checkpoint_seconds
            save = by_steps or by_time
        return [float(save), float(self.received is not None)]

    @staticmethod
    def agreed(summed: torch.Tensor | list[float]) -> tuple[bool, bool]:
        """``(save, stop)`` from the views summed over the ranks (stop implies save)."""
        save, stop = (float(v) for v in summed)
        return save > 0 or stop > 0, stop > 0

    def decide(self, step: int, device: torch.device) -> tuple[bool, bool]:
        """:meth:`requests` summed over the ranks (one small all-reduce under DDP), then :meth:`agreed`."""
        views = self.requests(step)
        if dist_utils.is_distributed():
            summed = torch.tensor(views, device=device)
            dist.all_reduce(summed)
            views = summed.tolist()
        return self.agreed(views)

    def saved(self, step: int) -> None:
        """A checkpoint after ``step`` steps was written: restart the clock."""
        self._last_save = time.monotonic()
        self._last_step = step

    # -- signals
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name

    @contextmanager
    def catch_signals(self) -> Iterator[RunControl]:
        """SIGTERM and SIGUSR1 set :attr:`received` for the block (main thread only; elsewhere a
        no-op); the previous handlers come back after it."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def gather_from_ranks(local: dict[str, Any]) -> list[dict[str, Any]]:
    """``local`` of every rank, in rank order (``[local]`` in one process): the per-rank state of
    an epoch in progress, which rank 0 writes into the checkpoint."""
    if not dist_utils.is_distributed():
        return [local]
    gathered: list[Any] = [None] * dist_utils.world_size()
    dist.all_gather_object(gathered, local)
    return gathered
