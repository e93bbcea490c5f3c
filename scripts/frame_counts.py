"""Where a video of a CSV is on disk, and how many frames it has (for ``scripts/build_csv.py``).

* Frame folders (``scripts/extract_frames.py`` output): :func:`scan_video` reads the ``.done``
  marker, else lists ``image_%05d.jpg`` once; threads, since this is file-system bound.
* Video files: :func:`scan_video_file` is :func:`datasets.video.count_frames`, the exact number
  of frames a full decode yields (docs/method.md §1 ``num_frames``); worker processes with a progress bar,
  since decoding is CPU bound.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets.frames import (  # noqa: E402
    DONE_MARKER, FRAME_TEMPLATE, VIDEO_EXTENSIONS, FrameError, is_video_file,
)
from datasets.video import count_frames  # noqa: E402

_FRAME_NAME = re.compile(r"image_\d{5}\.jpg")


def scan_video(folder: str) -> tuple[int, str]:
    """``(num_frames, "")`` for a frame folder, or ``(0, reason)`` when it is unusable.

    With a ``.done`` marker: its count, if that last frame exists. Else the ``image_%05d.jpg``
    files are listed once (``os.scandir``); their highest number must equal their count.
    """
    try:
        with open(os.path.join(folder, DONE_MARKER), encoding="utf-8") as handle:
            count = int(handle.read().strip())
        last = count
    except (OSError, ValueError):
        try:
            with os.scandir(folder) as entries:
                numbers = [int(e.name[6:11]) for e in entries if _FRAME_NAME.fullmatch(e.name)]
        except FileNotFoundError:
            return 0, "frame folder not found"
        except NotADirectoryError:
            return 0, "not a folder"
        count, last = len(numbers), max(numbers, default=0)
    if count <= 0:
        return 0, "no image_%05d.jpg frames"
    if last != count or not os.path.isfile(os.path.join(folder, FRAME_TEMPLATE.format(count))):
        return 0, (f"frames are not numbered image_00001.jpg … {FRAME_TEMPLATE.format(count)} "
                   "without gaps (re-extract the video)")
    if os.path.getsize(os.path.join(folder, FRAME_TEMPLATE.format(count))) == 0:
        return 0, f"the last frame {FRAME_TEMPLATE.format(count)} is empty: an interrupted extraction (re-extract the video)"
    return count, ""


def scan_video_file(path: str) -> tuple[int, str]:
    """``(num_frames, "")`` for a video file (exact: :func:`datasets.video.count_frames`), or
    ``(0, reason)`` when it cannot be decoded."""
    try:
        return count_frames(path), ""
    except FrameError as err:
        return 0, err.reason


def list_subfolders(folder: str) -> list[str]:
    """Names of the sub-folders of ``folder``, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def list_videos(folder: str) -> list[str]:
    """Names of the video files (:data:`VIDEO_EXTENSIONS`, any case) in ``folder``, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_file() and not e.name.startswith(".")
                      and e.name.lower().endswith(VIDEO_EXTENSIONS))


def _init_worker() -> None:
    torch.set_num_threads(1)


def scan_all(paths: Sequence[str], videos: bool, workers: int) -> list[tuple[int, str]]:
    """:func:`scan_video` (``videos=False``: ``workers`` threads) or :func:`scan_video_file`
    (``workers`` processes, in this process when 1) of every path, in order."""
    if not videos:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(scan_video, paths))
    if workers == 1 or len(paths) <= 1:
        return [scan_video_file(p) for p in tqdm(paths, desc="count", unit="video")]
    with multiprocessing.Pool(min(workers, len(paths)), _init_worker) as pool:
        return list(tqdm(pool.imap(scan_video_file, paths, chunksize=4), total=len(paths),
                         desc="count", unit="video"))


def locate(frames_root: str, class_name: str, stem: str) -> str | None:
    """The frame folder of a video: ``root/<class>/<stem>/``, else ``root/<stem>/``, else None."""
    for candidate in (os.path.join(frames_root, class_name, stem), os.path.join(frames_root, stem)):
        if os.path.isdir(candidate):
            return candidate
    return None


def locate_video(videos_root: str, class_name: str, file_name: str) -> str | None:
    """The video file of a split-file entry: ``root/<class>/<file>``, else ``root/<file>``; in
    each folder the named file first, then the same stem with any video extension (a re-encoded
    tree); else None."""
    stem = os.path.splitext(file_name)[0]
    names = [file_name] + [stem + ext for ext in VIDEO_EXTENSIONS if stem + ext != file_name]
    for folder in (os.path.join(videos_root, class_name), videos_root):
        for name in names:
            candidate = os.path.join(folder, name)
            if is_video_file(candidate) and os.path.isfile(candidate):
                return candidate
    return None
