"""Run outputs: ``args.json``, ``log.jsonl`` (one JSON line per epoch, VideoMAE style),
TensorBoard scalars, a progress bar, ``metrics.json``. Only the process created with
``enabled=True`` (global rank 0) writes or prints anything."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from utils.checkpoint import atomic_write_bytes


def to_jsonable(obj: Any) -> Any:
    """Plain-JSON version of ``obj`` (Namespaces, Paths, tuples, tensors and numpy scalars)."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no NaN/inf
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # 0-d tensors, numpy scalars
        return to_jsonable(obj.item())
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (temp file + rename)."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def prepare_output_dir(path: str | os.PathLike, args: argparse.Namespace | Mapping, fresh: bool = False) -> Path:
    """Create ``path`` (parents too) and write the run's configuration to ``path/args.json``.

    ``fresh`` (a run that starts over rather than resume): first delete an earlier run's
    ``metrics.json``, so that no result of another run stands beside the new ``args.json``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if fresh:
        (out / "metrics.json").unlink(missing_ok=True)
    write_json(out / "args.json", args)
    return out


def _read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a line cut short by a killed process is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class RunLogger:
    """TensorBoard scalars + ``log.jsonl`` + console summary lines; inert when ``enabled`` is False.

    The TensorBoard writer is created lazily (``tensorboard`` is imported only when a scalar is
    first written), under ``output_dir/tb``. ``purge_step``: when resuming at global step ``s``,
    pass ``s`` so TensorBoard hides the events of the earlier attempt from ``s`` on.
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True, purge_step: int | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = enabled
        self.purge_step = purge_step
        self._writer = None

    @property
    def writer(self):
        if self._writer is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.output_dir / "tb"), purge_step=self.purge_step)
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar."""
        if self.enabled:
            self.writer.add_scalar(tag, float(value), step)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """One TensorBoard scalar per entry, tagged ``prefix/key``."""
        if self.enabled:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}" if prefix else k, float(v), step)

    def log_epoch(self, record: Mapping[str, Any], hide: tuple[str, ...] = ("_weighted",)) -> None:
        """Append ``record`` to ``log.jsonl`` and print it as one summary line (keys ending in
        one of ``hide`` are left off the printed line only)."""
        if not self.enabled:
            return
        record = to_jsonable(record)
        with open(self.output_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        self.print(" ".join(f"{k}={_fmt(v)}" for k, v in record.items() if not k.endswith(hide)))

    def truncate_log(self, from_epoch: int) -> None:
        """Drop the ``log.jsonl`` lines of epochs ``>= from_epoch`` (they are about to be rerun
        after a resume from an earlier checkpoint, or a fresh start)."""
        path = self.output_dir / "log.jsonl"
        if not self.enabled or not path.exists():
            return
        keep = [r for r in _read_jsonl(path) if r.get("epoch", -1) < from_epoch]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        atomic_write_bytes(path, lambda f: f.write(text.encode()))

    def read_log(self) -> list[dict]:
        """The records of ``log.jsonl`` (empty when there is none)."""
        return _read_jsonl(self.output_dir / "log.jsonl")

    def print(self, *msg: Any) -> None:
        """Print on the enabled process only (flushes, so SLURM logs stay current)."""
        if self.enabled:
            print(*msg, flush=True)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def progress(iterable: Iterable, enabled: bool = True, **kw: Any) -> Iterable:
    """``tqdm(iterable, **kw)`` when enabled, else ``iterable`` itself.

    When stderr is not a terminal (batch jobs), the bar refreshes at most every 60 s so log
    files do not fill with carriage-return updates.
    """
    if not enabled:
        return iterable
    from tqdm import tqdm

    kw.setdefault("dynamic_ncols", True)
    if not sys.stderr.isatty():
        kw.setdefault("mininterval", 60.0)
    return tqdm(iterable, **kw)
