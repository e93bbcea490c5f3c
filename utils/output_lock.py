"""One run per output folder: an advisory lock on ``--output_dir/.lock`` held for the whole run.

The lock is ``flock(2)`` on an open file, so the kernel releases it when the process ends in any
way (SIGKILL and power loss included): a killed run never leaves a folder locked. The file keeps
the holder's host, pid and start time for the message a second run prints. Where ``fcntl`` is
missing (Windows) runs are not locked.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

LOCK_NAME = ".lock"
_HELD: set[int] = set()  # file descriptors of the locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): point the inherited lock descriptors at
    ``/dev/null``. The child then holds no reference to the lock, so a SIGKILLed run's folder is
    free at once, not when its orphaned workers notice and exit seconds later."""
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for fd in _HELD:
        os.dup2(null, fd)
    os.close(null)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class OutputDirBusy(RuntimeError):
    """Another live run holds the output folder."""


@contextmanager
def hold_output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Create ``path`` (parents too) and hold its lock until the block ends.

    Raises:
        OutputDirBusy: another process holds it; the message names the folder and the holder.
        OSError: the folder cannot be created or written (read-only, below a file).
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield folder
        return
    handle = open(folder / LOCK_NAME, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputDirBusy(
                f"{folder} is in use by another run ({holder}); wait for it to finish, stop it, or "
                "choose another --output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _HELD.add(handle.fileno())
        yield folder
    finally:
        _HELD.discard(handle.fileno())
        handle.close()  # closing the file releases the lock
