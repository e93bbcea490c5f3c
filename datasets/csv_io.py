"""Reading and validating the video CSV files of docs/method.md §1.

A CSV row names one video as a folder of frames ``image_00001.jpg … image_%05d.jpg``, or as a
video file (``.mp4 .avi .mkv .webm .mov``, any case; ``num_frames`` = its decoded frames, see
:mod:`datasets.video`); both may be mixed in one CSV::

    path,num_frames            # pretraining CSV
    path,num_frames,label      # downstream CSV (label = 0-based class id)

Rules (docs/method.md §1):

* No header is required; an optional one is accepted. The first non-empty row is taken as a
  header when its ``num_frames`` field names a frame count: no digit, and the word ``frame``
  in it (``path,num_frames,label``, the reference README's
  ``path/to/video/frame,number_of_frames``). Any other non-numeric count, first row included,
  is a row error.
* Relative paths are resolved against ``data_root`` when given, else against the CSV's folder.
* An unlabelled read accepts a third column and ignores it, so a labelled CSV can serve for
  pretraining; a labelled read requires exactly three columns.
* A malformed row, a non-positive frame count or a label out of range raises one
  :class:`CsvError` naming the CSV file, the 1-based line and the fix.

**File checks — decision.** Reading never touches the frame folders by default, so opening the
240k-row Kinetics CSV costs only the parse. Missing folders and frame counts larger than the
frames on disk are then met lazily, at load time, as a :class:`datasets.frames.FrameError`
(handled by the datasets' skip/strict policy, see ``datasets/pretrain.py``). Passing
``validate_files=True`` runs the full up-front check instead: one ``stat`` of the *last* frame
``image_{num_frames:05d}.jpg`` per row (no directory listing) — for a video file, one ``stat``
of the file (it exists and is a file; its frames are only counted by ``scripts/build_csv.py``) —
spread over a thread pool so that it stays fast on network file systems; every failing row is
collected and reported in one error.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from datasets.frames import frame_path, is_video_file

logger = logging.getLogger(__name__)

_HEADER_COUNT = re.compile(r"^[^\d]*frame[^\d]*$", re.IGNORECASE)  # e.g. num_frames
_CHECK_THREADS = 16
MAX_FRAMES = 10**8  # more frames than any video has: a corrupt or mistyped count
_MAX_LISTED = 5


class CsvError(ValueError):
    """A problem with a video CSV file; the message names the file, the 1-based row and the fix."""


def _row_error(csv_file: str, line: int, problem: str, fix: str) -> CsvError:
    return CsvError(f"{csv_file}, row {line}: {problem}. Fix: {fix}")


def _parse_int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _read_text(csv_file: str) -> str:
    """The CSV's text (UTF-8, a byte-order mark allowed); other bytes are a :class:`CsvError`."""
    try:
        with open(csv_file, newline="", encoding="utf-8-sig") as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise CsvError(f"{csv_file}: not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}). "
                       "Fix: save the CSV as UTF-8 (scripts/build_csv.py writes it so).") from None


def read_video_csv(
    csv_file: str | os.PathLike,
    labelled: bool,
    data_root: str | os.PathLike | None = None,
    num_classes: int | None = None,
    min_frames: int = 1,
    validate_files: bool = False,
) -> pd.DataFrame:
    """Read and validate a video CSV (docs/method.md §1).

    Args:
        csv_file: the CSV (``path,num_frames`` or ``path,num_frames,label``, optional header).
        labelled: require a third column with an integer label.
        data_root: folder that relative paths are resolved against (default: the CSV's folder).
        num_classes: if given, labels must lie in ``[0, num_classes)``.
        min_frames: videos with fewer frames are dropped with a logged count (e.g. pretraining
            keeps ``num_frames > n*T``, i.e. ``min_frames = n*T + 1``); an error if none remain.
        validate_files: also check, for every row, that the folder exists and holds the last
            frame it claims, or that the video file exists (one ``stat`` per row, threaded). Off
            by default; see the module doc.

    Returns:
        A DataFrame with columns ``path`` (absolute str), ``num_frames`` (int), ``label`` (int,
        only when ``labelled``) and ``row`` (the 1-based CSV line, for error messages).

    Raises:
        CsvError: the file is missing/empty, a row is malformed, a label is out of range, a file
            check fails (``validate_files``), or no video has ``min_frames`` frames.
    """
    csv_file = os.path.abspath(os.fspath(csv_file))
    if not os.path.isfile(csv_file):
        raise CsvError(f"{csv_file}: CSV file not found. Fix: pass an existing CSV "
                       "(scripts/build_csv.py writes them).")
    root = os.path.abspath(os.path.expanduser(os.fspath(data_root))) if data_root is not None \
        else os.path.dirname(csv_file)
    want = "path,num_frames,label" if labelled else "path,num_frames[,label]"

    paths: list[str] = []
    counts: list[int] = []
    labels: list[int] = []
    lines: list[int] = []
    with io.StringIO(_read_text(csv_file), newline="") as handle:
        first = True
        for line, fields in enumerate(csv.reader(handle), start=1):
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            if first and len(fields) >= 2 and _HEADER_COUNT.match(fields[1]):
                first = False  # header row
                continue
            first = False
            if len(fields) != 3 and not (not labelled and len(fields) == 2):
                raise _row_error(csv_file, line, f"expected {want}, got {len(fields)} field(s) "
                                 f"{fields!r}", f"write rows as '{want}'")
            count = _parse_int(fields[1])
            if count is None or count <= 0:
                raise _row_error(csv_file, line, f"num_frames {fields[1]!r} is not a positive "
                                 "integer", "give the number of image_%05d.jpg frames (of decoded "
                                 "frames for a video file)")
            if count > MAX_FRAMES:
                raise _row_error(csv_file, line, f"num_frames {count} is more than {MAX_FRAMES:,} (a "
                                 "day of video at 1,000 fps)", "give the video's real frame count "
                                 "(scripts/build_csv.py counts them)")
            if labelled:
                label = _parse_int(fields[2])
                if label is None or label < 0 or (num_classes is not None and label >= num_classes):
                    allowed = f"in 0..{num_classes - 1}" if num_classes is not None else ">= 0"
                    raise _row_error(csv_file, line, f"label {fields[2]!r} is not an integer "
                                     f"{allowed}", "use 0-based integer class ids"
                                     + ("" if num_classes is None else
                                        f" or raise num_classes (now {num_classes})"))
                labels.append(label)
            if not fields[0]:
                raise _row_error(csv_file, line, "empty path",
                                 "give the video's frame folder or file")
            paths.append(os.path.normpath(os.path.join(root, os.path.expanduser(fields[0]))))
            counts.append(count)
            lines.append(line)

    if not paths:
        raise CsvError(f"{csv_file}: no video rows. Fix: write one '{want}' row per video.")
    table = pd.DataFrame({"path": paths, "num_frames": counts, "row": lines})
    if labelled:
        table.insert(2, "label", labels)
    if validate_files:
        check_frame_folders(table, csv_file)

    keep = table["num_frames"] >= min_frames
    dropped = int((~keep).sum())
    if dropped:
        logger.warning("%s: left out %d of %d videos with fewer than %d frames",
                       csv_file, dropped, len(table), min_frames)
    if dropped == len(table):
        raise CsvError(f"{csv_file}: none of the {len(table)} videos has at least {min_frames} "
                       "frames. Fix: use longer videos, or fewer/shorter clips (--seq, --sample).")
    return table[keep].reset_index(drop=True)


def check_frame_folders(table: pd.DataFrame, csv_file: str) -> None:
    """Check every row's folder and last frame exist, or its video file (one ``stat`` each,
    threaded; docs/method.md §1).

    Raises one :class:`CsvError` that names the first failing rows and how many failed.
    """
    def last_frame_missing(item: tuple[str, int]) -> bool:
        if is_video_file(item[0]):
            return not os.path.isfile(item[0])
        return not os.path.isfile(frame_path(item[0], item[1] - 1))

    with ThreadPoolExecutor(_CHECK_THREADS) as pool:
        missing = list(pool.map(last_frame_missing, zip(table["path"], table["num_frames"]),
                                chunksize=256))
    bad = table[missing]
    if bad.empty:
        return
    lines = []
    for path, count, line in zip(bad["path"][:_MAX_LISTED], bad["num_frames"][:_MAX_LISTED],
                                 bad["row"][:_MAX_LISTED]):
        if is_video_file(path):
            lines.append(f"  row {line}: video file {path} does not exist")
        elif os.path.isdir(path):
            lines.append(f"  row {line}: {path} has no {os.path.basename(frame_path(path, count - 1))}"
                         f" (num_frames={count} is more than the frames on disk)")
        else:
            lines.append(f"  row {line}: frame folder {path} does not exist")
    more = f"\n  … and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    raise CsvError(f"{csv_file}: {len(bad)} of {len(table)} rows point at missing frames or "
                   "video files:\n"
                   + "\n".join(lines) + more
                   + "\nFix: re-extract the frames or rebuild the CSV with scripts/build_csv.py "
                     "(it counts the frames on disk), or pass --data_root if paths are relative "
                     "to another folder.")
