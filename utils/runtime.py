"""Process set-up shared by the entry scripts: device choice, process groups, spawning, seeds,
DDP wrapping (docs/method.md §3 "Distributed semantics").

One code path covers:

- a single process on CPU or one GPU (no process group; every gather is the identity);
- ``--multiprocessing-distributed``: :func:`spawn_workers` starts one process per GPU (or N CPU
  processes with gloo) on this machine and sets the ``env://`` variables for them;
- ``torchrun`` (one node or several, e.g. under SLURM): the launcher sets ``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``.

In every distributed case :func:`init_distributed` joins the group through ``env://`` with a
finite collective timeout, so a rank that dies makes the others fail instead of hanging forever.
"""
from __future__ import annotations

import datetime
import os
import random
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class WorkerError(RuntimeError):
    """A spawned worker process failed; its own error message was printed by that process.
    ``exit_code``: the status it exited with (None when it raised or died by a signal)."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its node,
    and the ``device`` it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(flag: str = "auto", local_rank: int = 0) -> torch.device:
    """``--device``: ``auto`` = ``cuda:<local_rank>`` when a GPU is visible, else ``cpu``; with a
    single visible GPU every rank takes ``cuda:0`` (a scheduler that gives each process its own).

    Raises ``ValueError`` when ``cuda`` is asked for but unavailable.
    """
    if flag not in DEVICE_CHOICES:
        raise ValueError(f"--device must be one of {DEVICE_CHOICES}, got {flag!r}")
    if flag == "cpu" or (flag == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible (check CUDA_VISIBLE_DEVICES / "
                         "the driver), or use --device cpu")
    n = torch.cuda.device_count()
    if n == 1:  # one GPU per process (e.g. SLURM --gpus-per-task=1): it is this rank's
        return torch.device("cuda", 0)
    if local_rank >= n:
        raise ValueError(f"local rank {local_rank} has no GPU: only {n} visible on this node "
                         "(launch at most one process per GPU)")
    return torch.device("cuda", local_rank)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def launched_world_size() -> int | None:
    """``WORLD_SIZE`` set by a launcher (torchrun, :func:`spawn_workers`), else ``None``."""
    value = os.environ.get("WORLD_SIZE")
    return int(value) if value not in (None, "") else None


def init_distributed(device_flag: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by the ``env://`` variables, if any.

    ``WORLD_SIZE > 1`` → ``init_process_group`` (nccl on CUDA, gloo on CPU) with a collective
    ``timeout`` of ``timeout_s`` seconds; the CUDA device is ``cuda:LOCAL_RANK``. Otherwise a
    single process (``WORLD_SIZE`` unset or 1). Returns the :class:`DistInfo`.
    """
    world_size = launched_world_size() or 1
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_flag, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            # Make a failed/stuck collective raise after the timeout instead of hanging.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        timeout = datetime.timedelta(seconds=timeout_s)
        store, rank, world_size = next(dist.rendezvous("env://", rank, world_size, timeout=timeout))
        # torchrun keeps one store across the restarts of --max-restarts: the keys of every
        # attempt go under their own prefix, so that a restarted rank never reads the address a
        # dead rank of an earlier attempt published (gloo: "connectFullMesh ... Connection refused")
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"attempt_{attempt}/", store),
                                world_size=world_size, rank=rank, timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (identity without a process group). Used for
    decisions that must agree, e.g. which checkpoint to resume from on a shared file system whose
    nodes may see the folder differently."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def free_port() -> int:
    """A TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(local_rank: int, fn: Callable, nproc: int, addr: str, port: int, args: tuple) -> None:
    os.environ.update({
        "MASTER_ADDR": addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
        "RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(nproc),
    })
    fn(local_rank, *args)


def num_spawn(device_flag: str, nproc: int | None) -> int:
    """Processes for ``--multiprocessing-distributed``: ``--nproc`` if given, else one per visible
    GPU (unless ``--device cpu``), else 1."""
    if device_flag != "cpu" and torch.cuda.is_available():
        return nproc or torch.cuda.device_count()
    return nproc or 1


def spawn_workers(fn: Callable[..., Any], nproc: int, *args: Any,
                  forward: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
    """Run ``fn(local_rank, *args)`` in ``nproc`` fresh processes on this machine (one node).

    Each child gets ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT`` (or the ones already set in
    the environment), ``WORLD_SIZE=nproc`` and ``RANK=LOCAL_RANK=local_rank``, so
    :func:`init_distributed` works unchanged. The parent's environment is not modified. The
    signals in ``forward`` that reach the parent (a scheduler's preemption notice) are passed on
    to every child. When one child fails the others are terminated and :class:`WorkerError` is
    raised.
    """
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = _env_int("MASTER_PORT", 0) or free_port()
    context = torch.multiprocessing.start_processes(_spawn_entry, args=(fn, nproc, addr, port, args), nprocs=nproc,
                                                    join=False, start_method="spawn")

    def pass_on(signum: int, frame: Any) -> None:
        for process in context.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, pass_on) for sig in forward} if in_main else {}
    try:
        while not context.join():
            pass
    except torch.multiprocessing.ProcessRaisedException as e:
        raise WorkerError(f"worker process {e.error_index} of {nproc} raised an exception:\n{e.msg}") from None
    except torch.multiprocessing.ProcessExitedException as e:
        raise WorkerError(f"worker process {e.error_index} of {nproc} exited with code {e.exit_code}; "
                          "see its message above", exit_code=e.exit_code) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed from ``seed`` and integer ``keys`` (rank, epoch, ...)."""
    state = np.random.SeedSequence([int(seed) % 2**63, *[int(k) for k in keys]]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (CPU and CUDA) of this process with ``seed + rank``."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and python from the worker's torch seed (which the
    DataLoader derives from its generator + ``worker_id``), so every worker draws differently."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, find_unused_parameters: bool = True) -> torch.nn.Module:
    """SyncBatchNorm + ``DistributedDataParallel`` when ``info.distributed``, identity otherwise.

    On CPU (gloo) the BatchNorm layers become :mod:`utils.cpu_sync_batchnorm`'s synchronised
    twins (torch's SyncBatchNorm runs on GPUs only). ``find_unused_parameters`` defaults to True because the graph heads and the
    prototypes do not receive gradients in every epoch (docs/method.md §2, §3.5).
    """
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DDP(model, device_ids=[info.device.index], output_device=info.device.index,
                   find_unused_parameters=find_unused_parameters)
    from utils.cpu_sync_batchnorm import convert_cpu_sync_batchnorm

    return DDP(convert_cpu_sync_batchnorm(model), find_unused_parameters=find_unused_parameters)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
