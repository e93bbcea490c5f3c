"""Run an entry script and SIGKILL it at one chosen moment (the kill-anywhere harness of
``tests/test_kill_anywhere.py``).

    python tests/kill_runner.py MOMENT SCRIPT [ARGS...]

``MOMENT`` is ``KIND:NAME:N``:

* ``inside:NAME:N``: during the ``N``-th atomic write of a file called ``NAME`` (the temp file is
  written and flushed, the rename has not happened);
* ``after:NAME:N``: right after the ``N``-th atomic write of ``NAME`` has landed;
* ``log:log.jsonl:N``: right after the ``N``-th line is appended to ``log.jsonl``;
* ``step:optimizer:N``: right after the ``N``-th optimiser step of the process (mid-epoch, with
  the DataLoader's workers running);
* ``signal:SIGTERM:N`` (or ``SIGUSR1``): that signal instead of SIGKILL, sent to the process
  itself right after its ``N``-th optimiser step (a preemption notice).

Every checkpoint and record of the project is written through ``utils.checkpoint``'s
``atomic_write_bytes`` and every log line through ``RunLogger.log_epoch``, so these moments cover
every write. If the moment never comes the script runs to its end. The processes ``--multiprocessing-distributed``
spawns import the modules afresh, without these hooks: use the harness with one process.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

import utils.checkpoint as checkpoint_io  # noqa: E402
import utils.logging as logging_io  # noqa: E402

kind, name, nth = sys.argv[1].split(":")
target = int(nth)
seen = 0


def _count(path: str | os.PathLike) -> bool:
    global seen
    if Path(path).name != name:
        return False
    seen += 1
    return seen == target


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_atomic = checkpoint_io.atomic_write_bytes


def atomic_write_bytes(path, write_fn, **kwargs):  # type: ignore[no-untyped-def]
    if kind == "inside" and _count(path):
        def write_then_die(f):  # type: ignore[no-untyped-def]
            write_fn(f)
            f.flush()
            _die()
        return _atomic(path, write_then_die, **kwargs)
    _atomic(path, write_fn, **kwargs)
    if kind == "after" and _count(path):
        _die()


_log_epoch = logging_io.RunLogger.log_epoch


def log_epoch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    _log_epoch(self, *args, **kwargs)
    if kind == "log" and self.enabled and _count(self.output_dir / "log.jsonl"):
        _die()


def after_step(optimizer, args, kwargs):  # type: ignore[no-untyped-def]
    global seen
    if kind == "step" and _count("optimizer"):
        _die()
    if kind == "signal":
        seen += 1
        if seen == target:
            os.kill(os.getpid(), getattr(signal, name))


register_optimizer_step_post_hook(after_step)
checkpoint_io.atomic_write_bytes = atomic_write_bytes
logging_io.atomic_write_bytes = atomic_write_bytes
logging_io.RunLogger.log_epoch = log_epoch

script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(str(REPO / script), run_name="__main__")
