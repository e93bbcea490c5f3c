"""One launcher for every entry script: a single process, ``--multiprocessing-distributed``
(spawn) and ``torchrun``/Slurm (``env://``), with one list of the errors a user can cause, each
reported as one line without a traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from datasets.base import DataUnreadable
from datasets.csv_io import CsvError
from datasets.frames import FrameError
from engine.cli import warn
from engine.loader import DataTooSmall
from engine.preemption import EXIT_REQUEUE, Preempted
from engine.pretrain import TrainingDiverged
from engine.probe import ProbeDiverged
from models import BackboneLoadError
from utils import runtime
from utils.checkpoint import LAST_NAME, CheckpointError
from utils.output_lock import OutputDirBusy, hold_output_dir


class UsageError(ValueError):
    """A flag value that only turns out to be wrong once the run has started (e.g. a video
    index past the end of the CSV); reported like a parser error."""


# Errors a user can cause (bad CSV row, missing frame, bad checkpoint, too little data): every
# entry script reports them as one line, without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CsvError, FrameError, CheckpointError, BackboneLoadError, DataTooSmall, DataUnreadable,
    TrainingDiverged, ProbeDiverged, UsageError, FileNotFoundError)


def _is_comm_error(err: BaseException) -> bool:
    return isinstance(err, getattr(torch.distributed, "DistError", ())) or any(
        s in str(err) for s in ("gloo", "NCCL", "Connection closed", "Connection reset", "timed out"))


def _worker_error_message(err: BaseException) -> str | None:
    """The last line of an exception a DataLoader worker re-raised but could not rebuild (e.g. a
    ``FrameError``), else None."""
    if not (isinstance(err, RuntimeError) and "in DataLoader worker process" in str(err)):
        return None
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else str(err)


def run_process(prog: str, run: Callable[[argparse.Namespace, runtime.DistInfo], Any],
                args: argparse.Namespace) -> Any:
    """One process of a run: join the process group the ``env://`` variables describe (if any),
    call ``run(args, info)``, leave the group.

    A user-caused error ends the process with one line (no traceback; a :class:`UsageError` with
    exit status 2, like the parser's errors). A preemption (:class:`Preempted`: the checkpoint is
    written) ends it with :data:`EXIT_REQUEUE`. Under DDP, any failure
    prints its message tagged with the rank and leaves at once with ``os._exit(1)``: the other
    ranks' pending collectives then fail (peer gone) or time out after ``--dist_timeout``.
    """
    info = runtime.init_distributed(args.device, getattr(args, "dist_timeout", 1800))
    tag = f"[rank {info.rank}/{info.world_size}] " if info.distributed else ""
    try:
        result = run(args, info)
    except Preempted as stop:
        print(f"{tag}{prog}: preempted by {stop}: {Path(args.output_dir) / LAST_NAME} holds the run; "
              f"exit status {EXIT_REQUEUE} (requeue me): rerun the same command to continue", file=sys.stderr,
              flush=True)
        if info.distributed:
            sys.stdout.flush()
            os._exit(EXIT_REQUEUE)
        raise SystemExit(EXIT_REQUEUE) from None
    except Exception as err:
        worker = _worker_error_message(err)
        if isinstance(err, USER_ERRORS):
            msg = f"{tag}{prog}: error: {err}"
        elif worker is not None:
            msg = f"{tag}{prog}: error: {worker}"
        elif info.distributed and _is_comm_error(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            where = Path(args.output_dir) / LAST_NAME
            msg = (f"{tag}{prog}: error: a collective failed ({type(err).__name__}: {first}). Another rank "
                   f"probably failed first: look for its message. Restart with --resume auto to continue "
                   f"from {where}.")
        elif not info.distributed:
            raise  # a bug: keep the traceback
        else:
            traceback.print_exc()
            msg = f"{tag}{prog}: error: {type(err).__name__}: {err}"
        if info.distributed:
            print(msg, file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)
        if isinstance(err, UsageError):  # a flag error found late: exit status 2, like the parser's
            print(msg, file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise SystemExit(msg) from None
    runtime.cleanup_distributed()
    return result


def _spawned(local_rank: int, prog: str, run: Callable, args: argparse.Namespace) -> None:
    run_process(prog, run, args)


@contextmanager
def owned_output_dir(prog: str, output_dir: str) -> Iterator[None]:
    """Hold ``output_dir``'s lock (:mod:`utils.output_lock`) for the block: in this process, or
    under a launcher only in global rank 0. A folder that another live run holds, or that cannot
    be created, ends the run with one line."""
    stack = ExitStack()
    if runtime.launched_world_size() is None or os.environ.get("RANK", "0") == "0":
        try:
            stack.enter_context(hold_output_dir(output_dir))
        except OutputDirBusy as err:
            raise SystemExit(f"{prog}: error: {err}") from None
        except OSError as err:
            raise SystemExit(f"{prog}: error: cannot write to --output_dir {output_dir}: "
                             f"{err.strerror or err}") from None
    with stack:
        yield


def launch(prog: str, run: Callable[[argparse.Namespace, runtime.DistInfo], Any],
           args: argparse.Namespace) -> Any:
    """Run ``run(args, info)`` in every process of the job and return rank 0's result, holding
    ``--output_dir`` for the whole run (:func:`owned_output_dir`): a second run into the same
    folder refuses to start.

    - under a launcher (``torchrun``, Slurm ``srun`` with the ``env://`` variables): this process
      is one rank (``--multiprocessing-distributed`` is then ignored, with a warning);
    - ``--multiprocessing-distributed`` with more than one device (or ``--nproc N``): spawn one
      process per GPU of this node (N CPU processes with gloo); the result is read back from
      ``--output_dir/metrics.json``;
    - else one process.
    """
    with owned_output_dir(prog, args.output_dir):
        return _launch(prog, run, args)


def _launch(prog: str, run: Callable[[argparse.Namespace, runtime.DistInfo], Any],
            args: argparse.Namespace) -> Any:
    spawn = getattr(args, "multiprocessing_distributed", False)
    if spawn and runtime.launched_world_size() is None:
        nproc = runtime.num_spawn(args.device, args.nproc)
        if nproc > 1:
            try:
                runtime.spawn_workers(_spawned, nproc, prog, run, args)
            except runtime.WorkerError as err:
                if err.exit_code == EXIT_REQUEUE:
                    raise SystemExit(EXIT_REQUEUE) from None
                raise SystemExit(f"{prog}: error: {err}") from None
            metrics_path = Path(args.output_dir) / "metrics.json"
            return json.loads(metrics_path.read_text()) if metrics_path.exists() else None
        warn(prog, "--multiprocessing-distributed with one device: running a single process "
                   "(pass --nproc N for N CPU processes)")
    elif spawn:
        warn(prog, "--multiprocessing-distributed ignored: the processes were started by a launcher (torchrun)")
    return run_process(prog, run, args)
