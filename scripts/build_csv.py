"""Write the docs/method.md §1 CSV files (``path,num_frames[,label]``) for frame folders or video files.

    python scripts/build_csv.py ucf101   --frames_root F --splits_dir ucfTrainTestlist --split 1 --out_dir data/ucf101
    python scripts/build_csv.py hmdb51   --frames_root F --splits_dir testTrainMulti_7030_splits --split 1 --out_dir data/hmdb51
    python scripts/build_csv.py kinetics --frames_root F --out_dir data/kinetics400
    python scripts/build_csv.py folder   --frames_root F --out_dir data/mine
    python scripts/build_csv.py ucf101   --videos_root UCF-101 --splits_dir ucfTrainTestlist --out_dir data/ucf101

``--frames_root`` (frame folders from ``scripts/extract_frames.py``) and ``--videos_root`` (the
video files themselves, ``.mp4 .avi .mkv .webm .mov``) are the two alternatives; the layouts are
the official ones with a video's folder or file in place: UCF101 ``<Class>/v_*.avi``, HMDB51
``<class>/*.avi``, Kinetics ``{train,val}/<class>/*.mp4``, ``folder`` ``<class>/<video>``. A video
named in a split file is also found under another video extension (a tree re-encoded by
``scripts/reencode_videos.py`` holds ``.mp4`` files).

Frame counts come from the disk. Frame folders: the ``.done`` marker written by
``scripts/extract_frames.py`` when present (two ``stat`` calls per video), else a count of
``image_*.jpg`` with ``os.scandir``; either way the last frame ``image_{count:05d}.jpg`` must exist
(numbering without gaps); threads. Video files: :func:`datasets.video.count_frames`, the exact
number of frames a full decode yields (packets counted where each is one frame, else a decode;
never the container's header count), in worker processes with a progress bar (both in
``scripts/frame_counts.py``). Videos without
frames are reported and left out. CSVs have no header and absolute paths unless ``--relative``
(then relative to ``--out_dir``, where the CSV lives; ``datasets.csv_io`` resolves them against
the CSV's folder). Labels are 0-based.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets.frames import DONE_MARKER  # noqa: E402
from scripts.frame_counts import (  # noqa: E402
    list_subfolders, list_videos, locate, locate_video, scan_all,
)

_MAX_LISTED = 10


class BuildError(ValueError):
    """A problem the user can fix (wrong folder, malformed split file); the message says how."""


class SplitFileError(BuildError):
    """A malformed official split file; the message names the file, the line and the fix."""


class Builder:
    """Counts frames (frame folders: threads; video files: processes with a progress bar),
    collects problems, writes CSVs and prints a summary."""

    def __init__(self, out_dir: str, relative: bool, workers: int, videos: bool = False) -> None:
        self.out_dir = os.path.abspath(out_dir)
        self.relative = relative
        self.workers = workers
        self.videos = videos
        self.problems: list[str] = []

    @property
    def kind(self) -> str:
        """What one video is on disk, for messages."""
        return "video file" if self.videos else "frame folder"

    def count(self, folders: Sequence[str | None]) -> list[int]:
        """Frame counts of ``folders`` (frame folders or video files; None = not found); 0 for
        unusable ones, reported."""
        found = [f for f in folders if f is not None]
        scanned = dict(zip(found, scan_all(found, self.videos, self.workers)))
        if not self.videos:  # extract_frames.py marks a finished video: one without it, among marked ones, is not
            unmarked = [f for f in found if not os.path.isfile(os.path.join(f, DONE_MARKER))]
            if 0 < len(unmarked) < len(found):
                for folder in unmarked:
                    if not scanned[folder][1]:
                        scanned[folder] = (0, f"no {DONE_MARKER} marker while {len(found) - len(unmarked)} "
                                              "other folders have one: scripts/extract_frames.py did not "
                                              "finish this video (rerun it)")
        counts = []
        for folder in folders:
            frames, reason = scanned[folder] if folder is not None else (0, "")
            if folder is not None and reason:
                self.problems.append(f"{folder}: {reason}")
            counts.append(frames)
        return counts

    def missing(self, description: str) -> None:
        self.problems.append(description)

    def write(self, name: str, paths: Sequence[str], counts: Sequence[int],
              labels: Sequence[int] | None = None) -> str:
        """Write ``out_dir/name`` with the rows whose count is > 0; returns the path."""
        os.makedirs(self.out_dir, exist_ok=True)
        keep = [i for i, c in enumerate(counts) if c > 0]
        if not keep:
            raise BuildError(f"no video with frames for {name}; see the problems above. "
                             "Check --frames_root/--videos_root (and --splits_dir/--split).")
        columns = {"path": [self._path(paths[i]) for i in keep],
                   "num_frames": [counts[i] for i in keep]}
        if labels is not None:
            columns["label"] = [labels[i] for i in keep]
        target = os.path.join(self.out_dir, name)
        pd.DataFrame(columns).to_csv(target, header=False, index=False)
        print(f"wrote {target}: {len(keep)} videos" + (f", {len(counts) - len(keep)} left out"
                                                        if len(keep) < len(counts) else ""))
        return target

    def write_classes(self, name: str, classes: Sequence[str]) -> None:
        target = os.path.join(self.out_dir, name)
        with open(target, "w", encoding="utf-8") as handle:
            handle.writelines(f"{i} {c}\n" for i, c in enumerate(classes))
        print(f"wrote {target}: {len(classes)} classes")

    def report(self) -> None:
        """Print the problems met (first few) to stderr."""
        if not self.problems:
            return
        print(f"{len(self.problems)} videos left out:", file=sys.stderr)
        for line in self.problems[:_MAX_LISTED]:
            print(f"  {line}", file=sys.stderr)
        if len(self.problems) > _MAX_LISTED:
            print(f"  … and {len(self.problems) - _MAX_LISTED} more", file=sys.stderr)

    def _path(self, folder: str) -> str:
        return os.path.relpath(folder, self.out_dir) if self.relative else os.path.abspath(folder)


def read_lines(path: str) -> list[tuple[int, list[str]]]:
    """Non-empty lines of a split file as ``(1-based line number, whitespace-split fields)``."""
    if not os.path.isfile(path):
        raise SplitFileError(f"{path}: file not found. Fix: point --splits_dir at the folder of "
                             "the official split files.")
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [(n, line.split()) for n, line in enumerate(handle, start=1) if line.strip()]


def _split_error(path: str, line: int, problem: str, expected: str) -> SplitFileError:
    return SplitFileError(f"{path}, line {line}: {problem}. Expected lines like {expected!r}; "
                          "use the official, unmodified split files.")


def _resolve(builder: Builder, root: str, videos: Sequence[tuple[str, str, int]]
             ) -> tuple[list[str], list[int], list[int]]:
    """``(folders or files, frame counts, labels)`` of ``(class, file name, label)`` videos under
    ``root``; a video not found gets count 0 and is reported."""
    folders = []
    for class_name, file_name, _ in videos:
        stem = os.path.splitext(file_name)[0]
        if builder.videos:
            folder = locate_video(root, class_name, file_name)
            looked = f"<root>/{class_name}/{stem}.* and <root>/{stem}.*"
        else:
            folder = locate(root, class_name, stem)
            looked = f"<root>/{class_name}/{stem}/ and <root>/{stem}/"
        if folder is None:
            builder.missing(f"{class_name}/{stem}: no {builder.kind} under {root} "
                            f"(looked for {looked})")
        folders.append(folder)
    counts = builder.count(folders)
    return [f or "" for f in folders], counts, [label for _, _, label in videos]


def _write_split(builder: Builder, prefix: str, split: int, root: str,
                 train: Sequence[tuple[str, str, int]], test: Sequence[tuple[str, str, int]]) -> None:
    """Write ``<prefix>_{train,test,pretrain}_split<K>.csv`` from ``(class, file name, label)``
    lists."""
    train_rows = _resolve(builder, root, train)
    test_rows = _resolve(builder, root, test)
    builder.write(f"{prefix}_train_split{split}.csv", *train_rows)
    builder.write(f"{prefix}_test_split{split}.csv", *test_rows)
    builder.write(f"{prefix}_pretrain_split{split}.csv", *train_rows[:2])


def build_ucf101(args: argparse.Namespace, builder: Builder) -> None:
    """UCF101: ``classInd.txt`` ("1 ApplyEyeMakeup"), ``trainlist0K.txt`` ("Class/v_….avi 1"),
    ``testlist0K.txt`` ("Class/v_….avi"); labels 0-based from ``classInd.txt``."""
    class_file = os.path.join(args.splits_dir, "classInd.txt")
    classes: dict[str, int] = {}
    for line, fields in read_lines(class_file):
        if len(fields) != 2 or not fields[0].isdigit():
            raise _split_error(class_file, line, f"got {fields!r}", "1 ApplyEyeMakeup")
        classes[fields[1].lower()] = int(fields[0]) - 1
    if sorted(classes.values()) != list(range(len(classes))):
        raise SplitFileError(f"{class_file}: class ids are not 1..{len(classes)}. Fix: use the "
                             "official classInd.txt.")

    def parse(name: str, labelled: bool) -> list[tuple[str, str, int]]:
        path = os.path.join(args.splits_dir, f"{name}{args.split:02d}.txt")
        example = "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi" + (" 1" if labelled else "")
        videos = []
        for line, fields in read_lines(path):
            if len(fields) not in (1, 2) or "/" not in fields[0]:
                raise _split_error(path, line, f"got {fields!r}", example)
            class_name, file_name = fields[0].replace("\\", "/").split("/")[-2:]
            label = classes.get(class_name.lower())
            if label is None:
                raise _split_error(path, line, f"class {class_name!r} is not in {class_file}",
                                   example)
            if len(fields) == 2 and fields[1] != str(label + 1):
                raise _split_error(path, line, f"label {fields[1]} disagrees with classInd.txt "
                                   f"({class_name} = {label + 1})", example)
            videos.append((class_name, file_name, label))
        return videos

    _write_split(builder, "ucf101", args.split, args.root, parse("trainlist", True),
                 parse("testlist", False))


def build_hmdb51(args: argparse.Namespace, builder: Builder) -> None:
    """HMDB51: ``<class>_test_splitK.txt`` files, lines "video.avi 1" (1 = train, 2 = test,
    0 = unused); classes sorted alphabetically."""
    suffix = f"_test_split{args.split}.txt"
    if not os.path.isdir(args.splits_dir):
        raise SplitFileError(f"{args.splits_dir}: not a folder. Fix: point --splits_dir at the "
                             "unpacked test_train_splits folder.")
    files = sorted(f for f in os.listdir(args.splits_dir) if f.endswith(suffix))
    if not files:
        raise SplitFileError(f"{args.splits_dir}: no *{suffix} files. Fix: point --splits_dir "
                             "at the unpacked official split folder (testTrainMulti_7030_splits).")
    classes = [f[:-len(suffix)] for f in files]
    train, test = [], []
    for label, (class_name, name) in enumerate(zip(classes, files)):
        path = os.path.join(args.splits_dir, name)
        for line, fields in read_lines(path):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise _split_error(path, line, f"got {fields!r}", "brush_hair_example.avi 1")
            video = (class_name, fields[0], label)
            if fields[1] == "1":
                train.append(video)
            elif fields[1] == "2":
                test.append(video)
    _write_split(builder, "hmdb51", args.split, args.root, train, test)


def _class_tree(root: str, videos: bool = False) -> tuple[list[str], list[str], list[str]]:
    """``(classes, folders, class of each folder)`` of a ``root/<class>/<video>/`` tree; with
    ``videos``, of a ``root/<class>/<video file>`` tree."""
    classes = list_subfolders(root)
    listed = list_videos if videos else list_subfolders
    folders, owners = [], []
    for class_name in classes:
        for video in listed(os.path.join(root, class_name)):
            folders.append(os.path.join(root, class_name, video))
            owners.append(class_name)
    return classes, folders, owners


def build_kinetics(args: argparse.Namespace, builder: Builder) -> None:
    """Kinetics-400: ``root/train/<class>/<video>`` and ``root/val/<class>/<video>`` (frame
    folders, or video files such as ``<youtube id>_<start>_<end>.mp4``); classes sorted from
    train."""
    for part in ("train", "val"):
        if not os.path.isdir(os.path.join(args.root, part)):
            video = "<video file>" if builder.videos else "<video>/"
            raise BuildError(f"{os.path.join(args.root, part)} not found; {args.root_flag} must "
                             f"hold train/<class>/{video} and val/<class>/{video}")
    classes, folders, _ = _class_tree(os.path.join(args.root, "train"), builder.videos)
    builder.write("kinetics400_train.csv", folders, builder.count(folders))
    index = {c: i for i, c in enumerate(classes)}
    _, val_folders, owners = _class_tree(os.path.join(args.root, "val"), builder.videos)
    unknown = sorted({c for c in owners if c not in index})
    for c in unknown:
        builder.missing(f"val/{c}: class not in train/, its videos are left out")
    counts = builder.count(val_folders)
    counts = [n if c in index else 0 for n, c in zip(counts, owners)]
    builder.write("kinetics400_val.csv", val_folders, counts, [index.get(c, -1) for c in owners])
    builder.write_classes("kinetics400_classes.txt", classes)


def build_folder(args: argparse.Namespace, builder: Builder) -> None:
    """Any ``root/<class>/<video>/`` tree (or ``root/<class>/<video file>``) → ``pretrain.csv``
    and ``labelled.csv`` (classes sorted)."""
    if not os.path.isdir(args.root):
        raise BuildError(f"{args.root_flag} {args.root} is not a folder")
    classes, folders, owners = _class_tree(args.root, builder.videos)
    counts = builder.count(folders)
    index = {c: i for i, c in enumerate(classes)}
    builder.write("pretrain.csv", folders, counts)
    builder.write("labelled.csv", folders, counts, [index[c] for c in owners])
    builder.write_classes("classes.txt", classes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write path,num_frames[,label] CSVs (docs/method.md §1) for extracted frame folders "
                    "(scripts/extract_frames.py, --frames_root) or for the video files "
                    "themselves (--videos_root; exact decoded frame counts). Frame counts are "
                    "read from disk; videos without frames are reported and left out.")
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    def add(name: str, help_text: str, builder: Callable, splits: bool) -> None:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        root = sub.add_mutually_exclusive_group(required=True)
        root.add_argument("--frames_root", help="root of the frame folders")
        root.add_argument("--videos_root", help="root of the video files (mp4/avi/mkv/webm/mov): "
                          "CSV rows name the files, num_frames = their decoded frames")
        if splits:
            sub.add_argument("--splits_dir", required=True, help="folder of the official split files")
            sub.add_argument("--split", type=int, default=1, choices=(1, 2, 3),
                             help="official split (default: 1)")
        sub.add_argument("--out_dir", required=True, help="where the CSVs are written")
        sub.add_argument("--relative", action="store_true",
                         help="write paths relative to --out_dir instead of absolute paths")
        sub.add_argument("--workers", type=int, default=None,
                         help="frame folders: threads listing frames (default: 16; helps on "
                              "network file systems); video files: processes counting frames "
                              f"(default: the CPUs, here {os.cpu_count() or 1})")
        sub.set_defaults(build=builder)

    add("ucf101", "UCF101: classInd.txt + trainlist0K.txt/testlist0K.txt → ucf101_train_splitK.csv, "
        "ucf101_test_splitK.csv (path,num_frames,label) and ucf101_pretrain_splitK.csv "
        "(path,num_frames). Frames at <frames_root>/<Class>/<video>/ or <frames_root>/<video>/; "
        "videos at <videos_root>/<Class>/v_*.avi (the official UCF-101 folder) or "
        "<videos_root>/v_*.avi.", build_ucf101, splits=True)
    add("hmdb51", "HMDB51: <class>_test_splitK.txt (1 = train, 2 = test, 0 = unused) → "
        "hmdb51_{train,test,pretrain}_splitK.csv; classes sorted alphabetically. Frames at "
        "<frames_root>/<class>/<video>/ or <frames_root>/<video>/; videos at "
        "<videos_root>/<class>/*.avi or <videos_root>/*.avi.", build_hmdb51, splits=True)
    add("kinetics", "Kinetics-400: <frames_root>/{train,val}/<class>/<video>/ or "
        "<videos_root>/{train,val}/<class>/*.mp4 → kinetics400_train.csv (path,num_frames), "
        "kinetics400_val.csv (path,num_frames,label), kinetics400_classes.txt; classes sorted "
        "from train.", build_kinetics, splits=False)
    add("folder", "Any <frames_root>/<class>/<video>/ or <videos_root>/<class>/<video file> "
        "tree → pretrain.csv (path,num_frames), labelled.csv (path,num_frames,label), "
        "classes.txt; classes sorted.", build_folder, splits=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Build the CSVs of one data set; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    videos = args.videos_root is not None
    if args.workers is None:
        args.workers = (os.cpu_count() or 1) if videos else 16
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    args.root = args.videos_root if videos else args.frames_root
    args.root_flag = "--videos_root" if videos else "--frames_root"
    builder = Builder(args.out_dir, args.relative, args.workers, videos=videos)
    try:
        args.build(args, builder)
    except BuildError as err:
        builder.report()
        print(f"error: {err}", file=sys.stderr)
        return 1
    builder.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
