"""Checkpoints: atomic writes, safe (``weights_only=True``) loads, auto-resume, RNG state.

A checkpoint written by train.py is one dict (docs/method.md §4):
``{"model", "model_config", "objective", "optimizer", "scaler", "epoch", "step", "args", "rng",
"version"}`` where ``epoch`` is the next epoch to run. Everything in it is a tensor or a plain
Python container/primitive, so it loads with ``torch.load(..., weights_only=True)``.

Writes are atomic (temp file in the same folder, flush + fsync, ``os.replace``, fsync of the
folder): a process killed at any moment, even during a write, leaves either the previous complete
file or the new complete file, never a truncated one.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

CHECKPOINT_VERSION = 2  # 2: the score queue is one (n, size, K) queue; 1 held per-rank shards
LAST_NAME = "checkpoint_last.pth"
_NUMBERED = re.compile(r"^checkpoint_(\d+)\.pth$")
_TEMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, corrupt or incompatible; the message names it."""


def numbered_name(epochs_done: int) -> str:
    """File name of the kept checkpoint taken after ``epochs_done`` epochs: ``checkpoint_0020.pth``."""
    return f"checkpoint_{epochs_done:04d}.pth"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write_bytes(path: str | os.PathLike, write_fn: Callable[[BinaryIO], object],
                       size: int | None = None) -> None:
    """Call ``write_fn(fileobj)`` on a temp file next to ``path``, fsync it, rename it over ``path``.

    On any error the temp file is removed and ``path`` is untouched. A full disk, a quota or a
    file-size limit raises :class:`DiskFull`, naming the folder and the space the file needs
    (``size`` bytes when given, else what was written before the failure).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        os.chmod(tmp, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if _is_out_of_space(err):
            free, needed = shutil.disk_usage(path.parent).free / 2**20, (size or written) / 2**20
            raise DiskFull(f"cannot write {path} ({needed:.1f} MiB): {err.strerror}, with {free:.1f} MiB "
                           f"free in {path.parent}. The previous {path.name}, if any, is intact: free "
                           f"at least {needed:.1f} MiB there and rerun the same command") from None
        raise
    _fsync_dir(path.parent)


class DiskFull(CheckpointError):
    """A write that ran out of disk space, quota or file-size limit; the target is untouched."""


def _is_out_of_space(err: BaseException) -> bool:
    """A full disk, a quota or a file-size limit (``ENOSPC``, ``EDQUOT``, ``EFBIG``)."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


CHECKSUM_KEY = "checksum"


def state_digest(obj: Any) -> str:
    """SHA-256 over a checkpoint's content: every tensor's key path, dtype, shape and bytes, and
    every other leaf's ``repr``, in the state's own order (what :func:`save_checkpoint` stores and
    :func:`load_checkpoint` verifies)."""
    digest = hashlib.sha256()

    def walk(node: Any, where: str) -> None:
        if isinstance(node, torch.Tensor):
            flat = node.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{where}:{node.dtype}:{tuple(node.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}/{key!r}")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        else:
            digest.update(f"{where}={node!r}".encode())

    walk(obj, "")
    return digest.hexdigest()


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (call on global rank 0 only), with its
    :func:`state_digest` under :data:`CHECKSUM_KEY`."""
    stored = {**state, CHECKSUM_KEY: state_digest(state)}
    buffer = io.BytesIO()  # serialised in memory, so that a full disk is the file write's OSError
    torch.save(stored, buffer)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()), size=buffer.getbuffer().nbytes)


def _read_failure(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in this project's words. torch's own text for a
    refused pickle advises loading with the restriction off, which on a hostile file is the one
    step that runs its payload; it is never passed on."""
    text = str(err).strip()
    if isinstance(err, pickle.UnpicklingError) or "weights only" in text.lower() or "weights_only" in text:
        return ("it holds pickled Python objects that no checkpoint of this project contains, so it "
                "was refused unread (unpickling them could run code). Use a checkpoint written by "
                "train.py or finetune.py, or a plain state dict of tensors")
    first = text.splitlines()[0] if text else ""
    return (f"{type(err).__name__}: {first}. The file is truncated, corrupt, or not a checkpoint of "
            "this project (a partial copy?)")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint dict with ``weights_only=True``.

    Raises ``CheckpointError`` naming the file when it is missing, unreadable, truncated/corrupt,
    holds non-tensor Python objects, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zip errors...
        raise CheckpointError(f"cannot read checkpoint {path}: {_read_failure(e)}. Point --resume at an "
                              "earlier checkpoint_XXXX.pth, or move the file away to start fresh.") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    stored = state.pop(CHECKSUM_KEY, None)
    if isinstance(stored, str) and stored != state_digest(state):
        raise CheckpointError(f"checkpoint {path} is damaged: its content does not match the checksum "
                              "it was written with (flipped bytes on disk or in a copy). Point --resume at "
                              "an earlier checkpoint_XXXX.pth, or copy the file again.")
    version = state.get("version")
    if isinstance(version, int) and version > CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than this code's "
                              f"{CHECKPOINT_VERSION}: update the code (git pull) to load it")
    return state


def numbered_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint_NNNN.pth`` files of ``output_dir``, oldest (fewest epochs) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NUMBERED.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def find_resume(output_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from in ``output_dir``: ``checkpoint_last.pth`` if present, else
    the numbered ``checkpoint_XXXX.pth`` with the most epochs, else ``None``.

    Temp files of interrupted writes (``.tmp-*``) are never returned.
    """
    last = Path(output_dir) / LAST_NAME
    if last.is_file():
        return str(last)
    numbered = numbered_checkpoints(output_dir)
    return str(numbered[-1]) if numbered else None


def remove_stale_temps(output_dir: str | os.PathLike) -> list[str]:
    """Delete temp files left by writes that were killed (SIGKILL, power loss); returns their names.

    Call on rank 0 before training starts (no write can be in flight then).
    """
    folder = Path(output_dir)
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(_TEMP_PREFIX) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p.name)
    return removed


def capture_rng_state() -> dict:
    """RNG states of this process as tensors/primitives (loadable with ``weights_only=True``).

    Keys: ``torch`` (ByteTensor), ``cuda`` (list of ByteTensors, one per visible GPU; empty when
    CUDA is not initialised), ``numpy`` (dict of plain values + int64 tensor of the MT keys),
    ``python`` (dict with the Mersenne-Twister words as an int64 tensor).
    """
    np_state = np.random.get_state()
    py_version, py_words, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "words": torch.tensor(py_words, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`. CUDA states are restored only when the number of
    visible GPUs matches; missing keys are skipped."""
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda_states])
    if "numpy" in state:
        s = state["numpy"]
        keys = s["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state((s["name"], keys, int(s["pos"]), int(s["has_gauss"]), float(s["cached_gaussian"])))
    if "python" in state:
        s = state["python"]
        words = tuple(int(w) for w in s["words"].tolist())
        random.setstate((int(s["version"]), words, s["gauss_next"]))
