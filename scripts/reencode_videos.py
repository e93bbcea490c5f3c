"""Re-encode a tree of videos as small H.264 mp4 files with a short keyframe interval.

    python scripts/reencode_videos.py --src UCF-101 --dst data/ucf101/videos_128 --workers 8

Every ``.mp4 .avi .mkv .webm .mov`` file below ``--src`` becomes ``<dst>/<relative path>.mp4``:
H.264 (``libx264`` through PyAV, no ``ffmpeg`` binary needed), ``yuv420p``, resized so that the
short side is ``--short_side`` pixels (as ``scripts/extract_frames.py``; both sides rounded down
to even numbers, which 4:2:0 chroma needs), a keyframe at least every ``--gop`` frames, no
B-frames and ``tune=fastdecode``, video stream only. A random clip then costs at most
``gop - 1`` frames decoded ahead of the ones it needs, which is what makes reading the videos
directly in training cheap (docs/method.md §1 clip sampling; see ``docs/video_input.md``).

Frames are passed one to one at a constant frame rate equal to the source's average rate, so
frame ``k`` of the output is the ``k``-th decoded frame of the source: no frame is dropped or
duplicated (undecodable packets of the source are skipped, as ``extract_frames.py`` does). After
writing, the output's frames are counted (:func:`datasets.video.count_frames`) and must equal the
frames fed to the encoder.

Resumable: each video is written to ``<name>.mp4.part`` and renamed when complete and checked,
so an existing ``<name>.mp4`` is a finished one and is skipped. Failures are listed at the end
and in ``<dst>/reencode_failures.txt``; the exit status is 1 if any video failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from fractions import Fraction

import av

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets.frames import VIDEO_EXTENSIONS, FrameError  # noqa: E402
from datasets.video import count_frames  # noqa: E402
from scripts.extract_frames import (  # noqa: E402
    Result, decoded_frames, find_videos, output_size, report, run_jobs,
)

FAILURES_FILE = "reencode_failures.txt"
PARTIAL_SUFFIX = ".part"
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
           "veryslow")
_MAX_RATE_DENOMINATOR = 1001  # 30000/1001 stays exact; a ragged average rate is rounded


def output_path(dst: str, rel: str) -> str:
    """``<dst>/<rel without its extension>.mp4``."""
    return os.path.join(dst, os.path.splitext(rel)[0] + ".mp4")


def even_size(width: int, height: int) -> tuple[int, int]:
    """Both sides rounded down to even numbers (at least 2), as ``yuv420p`` needs."""
    return max(2, width // 2 * 2), max(2, height // 2 * 2)


def reencode_video(src_path: str, out_path: str, short_side: int = 128, gop: int = 16,
                   crf: int = 23, preset: str = "fast", threads: int = 0) -> int:
    """Re-encode one video (see the module docstring) to ``out_path`` via a ``.part`` file;
    return its frame count.

    Raises:
        av.error.FFmpegError / OSError / ValueError: unreadable source, no video stream or frame
            rate, no decodable frame, or an output whose frame count differs from the input's.
    """
    partial = out_path + PARTIAL_SUFFIX
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    written = 0
    try:
        with av.open(src_path) as source:
            if not source.streams.video:
                raise ValueError("no video stream")
            stream = source.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise ValueError("the source states no frame rate")
            rate = Fraction(rate).limit_denominator(_MAX_RATE_DENOMINATOR)
            with av.open(partial, "w", format="mp4") as sink:
                encoder = None
                for frame in decoded_frames(source, stream):
                    if encoder is None:
                        width, height = even_size(*output_size(frame.width, frame.height,
                                                               short_side))
                        encoder = sink.add_stream("libx264", rate=rate, options={
                            "crf": str(crf), "preset": preset, "tune": "fastdecode"})
                        encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
                        encoder.codec_context.gop_size = gop
                        encoder.codec_context.max_b_frames = 0
                        encoder.thread_count = threads
                    image = frame.reformat(width=encoder.width, height=encoder.height,
                                           format="yuv420p", interpolation="AREA")
                    image.pts, image.time_base = written, 1 / rate
                    sink.mux(encoder.encode(image))
                    written += 1
                if encoder is None:
                    raise ValueError("no decodable frames")
                sink.mux(encoder.encode(None))
        try:
            count = count_frames(partial)
        except FrameError as err:
            raise ValueError(f"the re-encoded file does not decode ({err.reason})") from None
        if count != written:
            raise ValueError(f"the re-encoded file has {count} frames, {written} were written")
        os.replace(partial, out_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return written


def _process(job: tuple[str, str, str, int, int, int, str, int]) -> Result:
    rel, src, dst, short_side, gop, crf, preset, threads = job
    out_path = output_path(dst, rel)
    if os.path.isfile(out_path):  # renamed into place only once complete and checked
        try:
            return Result(rel, "skipped", count_frames(out_path))
        except FrameError:
            os.remove(out_path)  # damaged since: redo it
    try:
        return Result(rel, "done", reencode_video(os.path.join(src, rel), out_path, short_side,
                                                  gop, crf, preset, threads))
    except (av.error.FFmpegError, OSError, ValueError) as err:
        return Result(rel, "failed", 0, f"{type(err).__name__}: {err}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Re-encode every video (mp4/avi/mkv/webm/mov) under --src as H.264 mp4 "
                    "(yuv420p, short side --short_side, a keyframe every --gop frames, no "
                    "B-frames) into <dst>/<relative path>.mp4, frame count and order kept, so "
                    "that training can read random clips from the videos directly. Resumable: "
                    "existing outputs are complete ones and are skipped.",
        epilog="example: python scripts/reencode_videos.py --src data/UCF-101 "
               "--dst data/ucf101/videos_128 --workers 8; then scripts/build_csv.py ucf101 "
               "--videos_root data/ucf101/videos_128 ...")
    parser.add_argument("--src", required=True, help="folder searched recursively for videos")
    parser.add_argument("--dst", required=True, help="output root; the folder tree is mirrored")
    parser.add_argument("--short_side", type=int, default=128,
                        help="resize so the shorter side has this many pixels, aspect kept "
                             "(sides rounded down to even); 0 keeps the size (default: 128)")
    parser.add_argument("--gop", type=int, default=16,
                        help="keyframe interval in frames: a random clip decodes at most gop-1 "
                             "frames it does not need (default: 16)")
    parser.add_argument("--crf", type=int, default=23,
                        help="x264 constant rate factor, 0-51, lower = larger and closer to "
                             "the source (default: 23)")
    parser.add_argument("--preset", default="fast", choices=PRESETS,
                        help="x264 speed/size preset (default: fast)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel processes; 1 runs in this process (default: min(8, CPUs))")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the re-encoding; returns the exit status (0 = all videos re-encoded or skipped)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isdir(args.src):
        parser.error(f"--src {args.src} is not a folder")
    if args.short_side < 0 or args.gop < 1 or args.workers < 1 or not 0 <= args.crf <= 51:
        parser.error("need --short_side >= 0, --gop >= 1, --workers >= 1 and --crf in 0..51")
    src, dst = os.path.abspath(args.src), os.path.abspath(args.dst)
    if dst == src or dst.startswith(src + os.sep):
        parser.error("--dst must lie outside --src (the outputs would be found as inputs)")
    videos = find_videos(src)
    if not videos:
        print(f"no {'/'.join(e[1:] for e in VIDEO_EXTENSIONS)} files under {src}", file=sys.stderr)
        return 1
    os.makedirs(dst, exist_ok=True)
    first: dict[str, str] = {}
    clashes = []
    for rel in videos:
        target = output_path(dst, rel)
        if target in first:
            clashes.append(Result(rel, "failed", 0, f"same output {target} as {first[target]}; "
                                  "rename one of the two"))
        else:
            first[target] = rel
    threads = 0 if args.workers == 1 else 1  # x264 threads: one per process when in parallel
    jobs = [(rel, src, dst, args.short_side, args.gop, args.crf, args.preset, threads)
            for rel in first.values()]
    results = run_jobs(_process, jobs, args.workers, "re-encode") + clashes
    return report(results, dst, FAILURES_FILE, "re-encoded", "videos")


if __name__ == "__main__":
    sys.exit(main())
