"""Extract the RGB frames of every video under a folder into docs/method.md §1 frame folders.

    python scripts/extract_frames.py --src UCF-101 --dst data/ucf101/frames --short_side 128 --workers 8

Every ``.mp4 .avi .mkv .webm .mov`` file below ``--src`` is decoded with PyAV (no ``ffmpeg``
binary needed; H.264, MPEG-4/XviD, VP8/9, … — whatever the bundled FFmpeg decodes) and written as
``<dst>/<relative path without extension>/image_00001.jpg …`` (1-based, 5 digits), resized so the
short side is ``--short_side`` (aspect kept; 0 keeps the size), or to a fixed ``--size WxH`` (the
reference code squashed every frame to 200x150 before its crops), and JPEG-encoded with
``torchvision.io.encode_jpeg``.

Resumable: a finished video gets a ``.done`` file holding its frame count; videos with a
``.done`` (and their last frame) are skipped, so a killed run continues where it stopped.
Undecodable packets are skipped as the ``ffmpeg`` command line does. Failures are listed at the
end and in ``<dst>/extract_failures.txt``; the exit status is 1 if any video failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import av
import torch
from torchvision.io import encode_jpeg
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets.frames import DONE_MARKER, FRAME_TEMPLATE, VIDEO_EXTENSIONS  # noqa: E402

FAILURES_FILE = "extract_failures.txt"
_ENCODE_BATCH = 64


class Result(NamedTuple):
    video: str  # path relative to --src
    status: str  # "done" | "skipped" (already done by an earlier run) | "failed"
    frames: int
    error: str = ""


def find_videos(src: str) -> list[str]:
    """Paths (relative to ``src``, sorted) of the video files below ``src``."""
    found = []
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        found.extend(os.path.relpath(os.path.join(folder, name), src) for name in sorted(files)
                     if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith("."))
    return found


def output_size(width: int, height: int, short_side: int,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(width, height)`` with the short side scaled to ``short_side`` (0: unchanged), or
    ``size`` when given."""
    if size is not None:
        return size
    if short_side <= 0:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_done(folder: str) -> int | None:
    """Frame count recorded in ``folder/.done`` if the video is complete, else None."""
    try:
        with open(os.path.join(folder, DONE_MARKER), encoding="utf-8") as handle:
            count = int(handle.read().strip())
    except (OSError, ValueError):
        return None
    if count > 0 and os.path.isfile(os.path.join(folder, FRAME_TEMPLATE.format(count))):
        return count
    return None


def decoded_frames(container: av.container.InputContainer,
                   stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """The frames of ``stream`` in decoding order; undecodable packets are skipped, as the
    ``ffmpeg`` command line does."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue  # a corrupt packet: skip it
        yield from frames


def _write_batch(folder: str, first: int, images: list[torch.Tensor], quality: int) -> None:
    for offset, data in enumerate(encode_jpeg(images, quality=quality)):
        with open(os.path.join(folder, FRAME_TEMPLATE.format(first + offset)), "wb") as handle:
            handle.write(data.numpy().tobytes())


# A video that decodes to fewer than this fraction of the frames its container declares is
# truncated (a half-downloaded mp4 whose index is at the front); headers that miss by a few
# frames (edit lists, a dropped last frame) stay above it.
SHORT_FRACTION = 0.95


def extract_video(src_path: str, out_folder: str, short_side: int, quality: int,
                  size: tuple[int, int] | None = None) -> int:
    """Decode one video into ``out_folder``, frames resized by :func:`output_size`; return the
    number of frames written.

    Raises:
        av.error.FFmpegError / OSError / ValueError: the file cannot be opened, has no frames, or
            decodes to fewer than :data:`SHORT_FRACTION` of the frames its container declares.
    """
    os.makedirs(out_folder, exist_ok=True)
    for name in os.listdir(out_folder):  # a previous, interrupted attempt
        if name.startswith("image_") or name == DONE_MARKER:
            os.remove(os.path.join(out_folder, name))
    count = 0
    pending: list[torch.Tensor] = []
    with av.open(src_path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = stream.frames  # the container's own count, 0 when it has none
        out_size = None
        for frame in decoded_frames(container, stream):
            if out_size is None:
                out_size = output_size(frame.width, frame.height, short_side, size)
            rgb = frame.reformat(width=out_size[0], height=out_size[1], format="rgb24",
                                 interpolation="AREA").to_ndarray()
            pending.append(torch.from_numpy(rgb).permute(2, 0, 1))
            if len(pending) == _ENCODE_BATCH:
                _write_batch(out_folder, count + 1, pending, quality)
                count += len(pending)
                pending = []
    if pending:
        _write_batch(out_folder, count + 1, pending, quality)
        count += len(pending)
    if count == 0:
        raise ValueError("no decodable frames")
    if declared > 0 and count < SHORT_FRACTION * declared:
        raise ValueError(f"decoded {count} of the {declared} frames its container declares: the file is "
                         "truncated (a partial download?); re-download it")
    with open(os.path.join(out_folder, DONE_MARKER), "w", encoding="utf-8") as handle:
        handle.write(f"{count}\n")
    return count


def _process(job: tuple[str, str, str, int, int, tuple[int, int] | None]) -> Result:
    rel, src, dst, short_side, quality, size = job
    out_folder = os.path.join(dst, os.path.splitext(rel)[0])
    done = read_done(out_folder)
    if done is not None:
        return Result(rel, "skipped", done)
    try:
        return Result(rel, "done", extract_video(os.path.join(src, rel), out_folder,
                                                 short_side, quality, size))
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as err:
        _remove_partial(out_folder)
        return Result(rel, "failed", 0, f"{type(err).__name__}: {err}")


def _remove_partial(folder: str) -> None:
    """Delete the frames of a failed video, so no CSV picks up a half-written folder."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith("image_"):
            os.remove(os.path.join(folder, name))
    if not os.listdir(folder):
        os.rmdir(folder)


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_jobs(process: Callable[[tuple], Result], jobs: Sequence[tuple], workers: int,
             desc: str) -> list[Result]:
    """``process`` over ``jobs``: in this process (``workers == 1``) or a pool of processes
    with one torch thread each; a tqdm progress bar either way."""
    if workers == 1:
        return [process(job) for job in tqdm(jobs, desc=desc, unit="video")]
    with multiprocessing.Pool(workers, _init_worker) as pool:
        return list(tqdm(pool.imap_unordered(process, jobs), total=len(jobs), desc=desc,
                         unit="video"))


def report(results: Sequence[Result], dst: str, failures_file: str, verb: str, what: str) -> int:
    """Print the summary (``N videos <verb> (F frames), S already done, K failed; <what> under
    dst``) and the failures (first 20 on stderr, all in ``dst/failures_file``); return the exit
    status (1 if any video failed)."""
    failed = sorted((r for r in results if r.status == "failed"), key=lambda r: r.video)
    done = [r for r in results if r.status == "done"]
    skipped = len(results) - len(done) - len(failed)
    print(f"{len(done)} videos {verb} ({sum(r.frames for r in done)} frames), "
          f"{skipped} already done, {len(failed)} failed; {what} under {dst}")
    if not failed:
        return 0
    path = os.path.join(dst, failures_file)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{r.video}\t{r.error}\n" for r in failed)
    for r in failed[:20]:
        print(f"  FAILED {r.video}: {r.error}", file=sys.stderr)
    if len(failed) > 20:
        print(f"  … and {len(failed) - 20} more", file=sys.stderr)
    print(f"the full list is in {path}; rerun the same command to retry them", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Decode every video (mp4/avi/mkv/webm/mov) under --src with PyAV into "
                    "JPEG frame folders <dst>/<relative path without extension>/image_%05d.jpg "
                    "(docs/method.md §1 layout). Resumable: finished videos carry a .done marker.",
        epilog="example: python scripts/extract_frames.py --src data/UCF-101 "
               "--dst data/ucf101/frames --short_side 128 --workers 8")
    parser.add_argument("--src", required=True, help="folder searched recursively for videos")
    parser.add_argument("--dst", required=True, help="output root; the folder tree is mirrored")
    parser.add_argument("--short_side", type=int, default=128,
                        help="resize so the shorter side has this many pixels, aspect kept; "
                             "0 keeps the original size (default: 128)")
    parser.add_argument("--size", default=None, metavar="WxH",
                        help="resize every frame to exactly W x H pixels instead (e.g. 200x150, "
                             "the reference's size: 4:3 frames whatever the video's aspect)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel processes; 1 runs in this process (default: min(8, CPUs))")
    parser.add_argument("--quality", type=int, default=90,
                        help="JPEG quality 1-100 (default: 90)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the extraction; returns the exit status (0 = all videos extracted or skipped)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isdir(args.src):
        parser.error(f"--src {args.src} is not a folder")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be in 1..100, got {args.quality}")
    if args.short_side < 0 or args.workers < 1:
        parser.error("--short_side must be >= 0 and --workers >= 1")
    size = None
    if args.size is not None:
        parts = args.size.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            parser.error(f"--size takes WIDTHxHEIGHT in pixels, e.g. 200x150; got {args.size!r}")
        size = (int(parts[0]), int(parts[1]))
    src, dst = os.path.abspath(args.src), os.path.abspath(args.dst)
    videos = find_videos(src)
    if not videos:
        print(f"no {'/'.join(e[1:] for e in VIDEO_EXTENSIONS)} files under {src}", file=sys.stderr)
        return 1
    os.makedirs(dst, exist_ok=True)
    jobs = [(rel, src, dst, args.short_side, args.quality, size) for rel in videos]
    results = run_jobs(_process, jobs, args.workers, "extract")
    return report(results, dst, FAILURES_FILE, "extracted", "frames")


if __name__ == "__main__":
    sys.exit(main())
