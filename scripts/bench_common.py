"""Helpers shared by ``scripts/bench_loader.py`` and ``scripts/bench_step.py``.

* :func:`machine_line`: the machine a figure was measured on (CPU model, cores, GPU, versions);
* :func:`interleaved`: time several functions in alternation (round robin), so that they all see
  the same background load on a shared machine; wall and process-CPU seconds;
* :func:`summarise` / :func:`print_table`: medians, minima and a plain-text table;
* :func:`make_frame_set`: a temporary frame-folder data set that looks like what
  ``scripts/extract_frames.py --short_side 128`` writes for 4:3 videos (171×128 JPEGs, quality 90),
  built from :func:`datasets.synthetic.make_synthetic` frames upsampled to that size, with a
  little pixel noise so the JPEGs carry about the entropy (and the decode cost) of real frames.
"""
from __future__ import annotations

import ctypes
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.io import encode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.frames import frame_path, load_frames  # noqa: E402
from datasets.synthetic import make_synthetic  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(device: torch.device | None = None) -> str:
    """One line naming the machine: CPU, cores, GPU (if ``device`` is CUDA), torch threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = (f"machine: {cpu_model()}, {cores} cores | torch {torch.__version__} | "
            f"torch threads {torch.get_num_threads()}")
    if device is not None and device.type == "cuda":
        line += f" | GPU {torch.cuda.get_device_name(device)}"
    return line


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU), so a timer sees the whole of it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel had to map and zero)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def keep_heap() -> bool:
    """Ask glibc to keep freed memory for reuse instead of giving it back to the OS.

    By default glibc serves large blocks (above a threshold that adapts up to 32 MiB) with
    ``mmap`` and trims the heap top on ``free``, so the multi-MB tensors a training step or an
    augmentation allocates come back as fresh pages every time: minor page faults, zeroing by the
    kernel, and cache misses. ``mallopt(M_MMAP_MAX, 0)`` + a huge ``M_TRIM_THRESHOLD`` (the same as
    the ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` environment variables) stop both; the
    process keeps its peak RSS. Returns False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1)
                and libc.mallopt(m_top_pad, 64 * 2**20))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device = torch.device("cpu")) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds (and minor page faults) of each function, ``repeats`` times,
    in alternation.

    Each round calls every function once (in the given order) after ``warmup`` untimed rounds.
    Returns ``{name: {"wall": [...], "cpu": [...], "faults": [...]}}``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
        sync(device)
    times: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": [], "faults": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            wall, cpu, faults = time.perf_counter(), time.process_time(), minor_faults()
            fn()
            sync(device)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["faults"].append(float(minor_faults() - faults))
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, float]:
    """``median``/``min`` of the wall times, ``cpu_median`` of the process-CPU times and
    ``faults_median`` of the minor page faults (when recorded)."""
    out = {"median": statistics.median(times["wall"]), "min": min(times["wall"]),
           "cpu_median": statistics.median(times["cpu"])}
    if times.get("faults"):
        out["faults_median"] = statistics.median(times["faults"])
    return out


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A left-aligned plain-text table (first column) with right-aligned figures."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    print(fmt(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(fmt(row))


def make_frame_set(out_dir: str | os.PathLike, num_videos: int = 8, frames: int = 64,
                   height: int = 128, width: int = 171, noise: float = 6.0, quality: int = 90,
                   seed: int = 0) -> str:
    """Write ``num_videos`` frame folders of ``frames`` ``width×height`` JPEGs and a pretraining
    CSV; return the CSV path.

    The content is :func:`~datasets.synthetic.make_synthetic`'s moving textured objects (rendered
    at 64², upsampled bicubically) plus Gaussian pixel noise of std ``noise`` grey levels: without
    it the upsampled frames are smoother than camera frames and decode unrealistically fast.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    classes = 2
    per_class = max(2, -(-num_videos // classes))
    make_synthetic(os.path.join(out_dir, "small"), num_videos=per_class * classes, frames=frames,
                   size=64, num_classes=classes, seed=seed)
    folders = sorted(root for root, _, files in os.walk(os.path.join(out_dir, "small", "frames"))
                     if files)[:num_videos]
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for v, src in enumerate(folders):
        small = load_frames(src, list(range(frames))).float()
        big = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
        big = big + noise * torch.randn(big.shape, generator=generator)
        big = big.clamp_(0, 255).round_().to(torch.uint8)
        dst = os.path.join(out_dir, "frames", f"vid_{v:04d}")
        os.makedirs(dst, exist_ok=True)
        for t, data in enumerate(encode_jpeg(list(big), quality=quality)):
            with open(frame_path(dst, t), "wb") as handle:
                handle.write(data.numpy().tobytes())
        rows.append(f"frames/vid_{v:04d},{frames}\n")
    csv = os.path.join(out_dir, "pretrain.csv")
    with open(csv, "w", encoding="utf-8") as handle:
        handle.writelines(rows)
    return csv


def mean_file_kb(folder: str, count: int = 8) -> float:
    """Mean size in KiB of the first ``count`` frames of a frame folder."""
    sizes = [os.path.getsize(frame_path(folder, i)) for i in range(count)
             if os.path.isfile(frame_path(folder, i))]
    return sum(sizes) / max(1, len(sizes)) / 1024
