"""Flags that would run but mean nothing are parser errors (exit status 2, one line naming the
flag); ``--lr_decay 0`` means "never decay"."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval_linear
import finetune
import train
from pretrain_helpers import make_videos, tiny_argv
from visualization import main_temporal


@pytest.fixture
def csv(tmp_path: Path) -> str:
    path = tmp_path / "x.csv"
    path.write_text("a,20,0\nb,20,1\n")
    return str(path)


def _pretrain(csv: str, *extra: str) -> list[str]:
    return ["--csv_file", csv, "--output_dir", "unused", *extra]


def _downstream(csv: str, *extra: str) -> list[str]:
    return ["--train_csv", csv, "--val_csv", csv, "--output_dir", "unused", *extra]


@pytest.mark.parametrize("script, flags, message", [
    (train, ["--img_dim", "7"], "--img_dim 7: the backbone downsamples"),
    (train, ["--img_dim", "1"], "--img_dim 1"),
    (train, ["--cluster", "1"], "--cluster 1: Sinkhorn over one prototype"),
    (train, ["--lr", "nan"], "--lr must be a finite number > 0"),
    (eval_linear, ["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (eval_linear, ["--img_dim", "8"], "--img_dim 8"),
    (finetune, ["--wd", "-1"], "--wd must be a finite number >= 0"),
    (main_temporal, ["--epochs", "0"], "--epochs must be >= 1"),
])
def test_degenerate_flags_are_parser_errors(script, flags, message, csv, capsys) -> None:
    argv = _pretrain(csv, *flags) if script is train else _downstream(csv, *flags)
    with pytest.raises(SystemExit) as err:
        script.parse_args(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_lr_decay_zero_never_decays(tmp_path: Path) -> None:
    videos = make_videos(tmp_path / "videos")
    out = tmp_path / "run"
    train.main(tiny_argv(videos, out, "--epoch", "2", "--split", "1", "--lr_decay", "0", "--lr", "0.002",
                         "--no_progress"))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == [0.002, 0.002]


def test_a_wrong_data_root_is_one_line_with_workers_0(tmp_path: Path) -> None:
    videos = make_videos(tmp_path / "videos")
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(SystemExit) as err:  # every row resolves to a folder that does not exist
        train.main(tiny_argv(videos, tmp_path / "run", "--epoch", "1", "--split", "1", "--data_root", str(empty)))
    message = str(err.value.code)
    assert message.startswith("train.py: error: ") and "videos in a row failed to load" in message
    assert "--data_root" in message and "\n" not in message


def test_a_csv_that_is_not_utf8_and_an_unreadable_checkpoint_are_one_line(tmp_path: Path) -> None:
    from scripts import inspect_alignment

    bad = tmp_path / "latin1.csv"
    bad.write_bytes("vidéo,20\n".encode("latin-1"))
    with pytest.raises(SystemExit) as err:
        train.main(["--csv_file", str(bad), "--output_dir", str(tmp_path / "o"), "--workers", "0"])
    assert str(err.value.code) == (f"train.py: error: {bad}: not UTF-8 text (byte 3 is 0xe9). Fix: save "
                                   "the CSV as UTF-8 (scripts/build_csv.py writes it so).")
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(SystemExit, match=r"inspect_alignment.py: error: cannot read checkpoint .*notes.txt"):
        inspect_alignment.main(["--checkpoint", str(text), "--csv_file", str(bad)])


def test_an_absurd_frame_count_names_the_row(tmp_path: Path) -> None:
    from datasets.csv_io import CsvError, read_video_csv

    csv = tmp_path / "big.csv"
    csv.write_text("a,20\nb,99999999999999999999\n")
    with pytest.raises(CsvError, match=r"big.csv, row 2: num_frames 99999999999999999999 is more than"):
        read_video_csv(csv, labelled=False)
