"""Shared machinery of the frame-folder datasets: the CSV, and the corrupt-frame policy.

A long run must not die on one bad JPEG (docs/method.md §1 data sets hold hundreds of thousands of
videos). When a sample meets a :class:`~datasets.frames.FrameError` (missing folder, missing
frame — e.g. a CSV frame count larger than the frames on disk — or a corrupt JPEG; for a video
file: missing, empty, not a video, truncated, corrupt, an unsupported codec, or fewer decodable
frames than its row says, see :mod:`datasets.video`):

* ``strict=False`` (default): the video is replaced by another one — a random other index in
  training (drawn from the torch RNG, so it stays reproducible), the next index in evaluation (so
  a test pass stays deterministic) — the event is counted in ``dataset.skipped`` (per process:
  every DataLoader worker keeps its own count, so loaders wrap the dataset in
  :class:`SkipCounting`, whose items carry their count back to the main process), and a warning
  is issued once per video.
* ``strict=True``: the error is fatal, naming the file, the CSV and its row.

``max_retries`` consecutive failures raise a ``RuntimeError`` (a wrong ``--data_root`` should not
spin forever).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset, Subset

from datasets.csv_io import read_video_csv
from datasets.frames import VIDEO_EXTENSIONS, FrameError, is_video_file


class DataUnreadable(RuntimeError):
    """Many videos in a row failed to load: the data set as a whole is unusable (a wrong
    ``--data_root``, an unfinished extraction), not one bad video."""


class FrameFolderDataset(Dataset):
    """Base class: a validated video CSV (``self.videos``) + the skip/strict policy above.

    Subclasses implement ``_sample(index)``, which may raise :class:`FrameError`.
    """

    def __init__(self, csv_file: str | os.PathLike, labelled: bool, data_root: str | None = None,
                 num_classes: int | None = None, min_frames: int = 1, strict: bool = False,
                 validate_files: bool = False, random_fallback: bool = True,
                 max_retries: int = 50) -> None:
        self.csv_file = os.path.abspath(os.fspath(csv_file))
        self.videos: pd.DataFrame = read_video_csv(
            self.csv_file, labelled=labelled, data_root=data_root, num_classes=num_classes,
            min_frames=min_frames, validate_files=validate_files)
        self.paths: list[str] = self.videos["path"].tolist()
        self.num_frames: list[int] = self.videos["num_frames"].tolist()
        self.rows: list[int] = self.videos["row"].tolist()
        self.strict = strict
        self.random_fallback = random_fallback
        self.max_retries = max_retries
        self.skipped = 0
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _sample(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        first = index
        for _ in range(self.max_retries):
            try:
                return self._sample(index)
            except FrameError as err:
                self._on_frame_error(err, index)
            step = 1
            if self.random_fallback and len(self) > 1:  # any other video, uniformly
                step += int(torch.randint(len(self) - 1, ()))
            index = (index + step) % len(self)
        raise DataUnreadable(f"{self.csv_file}: {self.max_retries} videos in a row failed to load "
                           f"(starting at row {self.rows[first]}); see the warnings above. Check "
                           "the frame folders and --data_root, or rebuild the CSV with "
                           "scripts/build_csv.py.")

    def _on_frame_error(self, err: FrameError, index: int) -> None:
        where = f"{self.csv_file}, row {self.rows[index]}"
        if self.strict:
            redo = ("replace or re-encode the video file (scripts/reencode_videos.py), rebuild "
                    "the CSV with scripts/build_csv.py --videos_root"
                    if is_video_file(err.folder) else
                    "re-extract the video's frames, rebuild the CSV with scripts/build_csv.py")
            raise FrameError(err.folder, err.index, f"{err.reason} (video of {where}). Fix: "
                             f"{redo}, or run with strict=False to skip such videos") from err
        self.skipped += 1
        if err.folder not in self._warned:
            self._warned.add(err.folder)
            warnings.warn(f"skipping a video ({where}): {err}. It is replaced by another video "
                          "and counted in dataset.skipped; this video will not warn again.",
                          RuntimeWarning, stacklevel=3)


def split_overlap(train: FrameFolderDataset, test: FrameFolderDataset) -> tuple[int, str]:
    """How many ``test`` videos the ``train`` data set also lists (paths compared resolved), and a
    warning naming the first of them ("" when the splits are disjoint). A test video seen in
    training inflates every test figure (docs/method.md §5)."""
    seen = {os.path.realpath(path) for path in train.paths}
    shared = [path for path in test.paths if os.path.realpath(path) in seen]
    if not shared:
        return 0, ""
    return len(shared), (f"WARNING: {len(shared)} of the {len(test)} videos of {test.csv_file} are also "
                         f"training videos of {train.csv_file} (first: {shared[0]}): the test figures "
                         "are not a result; use disjoint splits")


VIDEO_KEY = "parent/name"  # the scheme of video_key, stored beside the keys it made


def video_key(path: str) -> str:
    """A video's name that survives moving the data root to another folder or machine: the
    last two components of its path as the CSV lists it, without a video file's extension
    (``<Class>/v_<Class>_g01_c01`` in the layouts ``scripts/build_csv.py`` reads, for a frame
    folder and for ``<Class>/v_<Class>_g01_c01.avi`` alike). Where :func:`split_overlap` compares
    two CSVs of one machine by resolved path, this key compares a test CSV with the videos a
    checkpoint was pretrained on elsewhere; symbolic links are not followed, so the key is the
    name the CSV shows."""
    parent, name = os.path.split(os.path.normpath(os.fspath(path)))
    stem, ext = os.path.splitext(name)
    if ext.lower() in VIDEO_EXTENSIONS:
        name = stem
    return f"{os.path.basename(parent)}/{name}"


class SkipCounting(Dataset):
    """Wraps a dataset with a ``skipped`` counter (corrupt videos replaced by others, see
    :class:`FrameFolderDataset`) so that each item comes with how many videos it skipped:
    ``dataset[i]`` -> ``(item, skipped)``; a DataLoader batch is ``(batch, skipped (b,))``. The
    counter lives in the DataLoader worker that loaded the item, so it has to travel with the
    batch; the loops sum it (and all-reduce it under DDP).

    The counter is looked up through :class:`~torch.utils.data.Subset` wrappers (a DDP test shard);
    a dataset without one (e.g. a ``TensorDataset``) always reports 0.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        source: Any = dataset
        while isinstance(source, Subset):
            source = source.dataset
        self._counter: Any = source if hasattr(source, "skipped") else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _skipped(self) -> int:
        return 0 if self._counter is None else int(self._counter.skipped)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        before = self._skipped()
        item = self.dataset[index]
        return item, self._skipped() - before
