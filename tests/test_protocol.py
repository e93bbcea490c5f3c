"""The protocol record of every evaluation metrics.json and the guard against testing on videos
the backbone was pretrained on (engine/protocol.py, docs/evaluation.md): the classic case is
pretraining on UCF101 split 1's train list and testing on split 2's test list, which shares
videos with it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import eval_linear
import finetune
import train
from datasets.base import video_key
from datasets.synthetic import make_synthetic
from engine.protocol import PRETRAIN_VIDEOS, split_name
from models import backbone_state_dict, build_model
from tests.pretrain_helpers import tiny_argv
from utils.checkpoint import load_checkpoint, save_checkpoint
from visualization import main_temporal

EVAL = ["--seq", "8", "--img_dim", "32", "--num_clips", "2", "--batch_size", "4", "--workers", "0",
        "--device", "cpu", "--no_progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny labelled set (12 train / 4 test videos of 20 frames), a 1-epoch train.py checkpoint
    pretrained on its train list ("split 1"), and a "split 2" whose test list holds 2 of those
    pretraining videos next to the 4 test videos of split 1."""
    root = tmp_path_factory.mktemp("protocol")
    csvs = make_synthetic(root / "synthetic", num_videos=16, frames=20, size=32, num_classes=2, seed=0)
    train_rows = Path(csvs["train"]).read_text().splitlines()
    val_rows = Path(csvs["val"]).read_text().splitlines()
    folder = Path(csvs["train"]).parent
    (folder / "train_split2.csv").write_text("\n".join(train_rows[2:]) + "\n")
    (folder / "test_split2.csv").write_text("\n".join(train_rows[:2] + val_rows) + "\n")
    out = root / "pretrain"
    train.main(tiny_argv(Path(csvs["pretrain"]), out, "--epoch", "1", "--split", "1", "--no_progress"))
    ckpt = load_checkpoint(out / "checkpoint_last.pth")
    unrecorded = dict(ckpt)  # a checkpoint of this format without the record (an older train.py)
    del unrecorded[PRETRAIN_VIDEOS]
    save_checkpoint(unrecorded, root / "unrecorded.pth")
    model = build_model(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    torch.save(backbone_state_dict(model), root / "plain.pth")  # a plain backbone state dict
    return {"pretrain": csvs["pretrain"], "train1": csvs["train"], "test1": csvs["val"],
            "train2": str(folder / "train_split2.csv"), "test2": str(folder / "test_split2.csv"),
            "ckpt": str(out / "checkpoint_last.pth"), "unrecorded": str(root / "unrecorded.pth"),
            "plain": str(root / "plain.pth"), "run": str(out), "leaked": video_key(train_rows[0].split(",")[0])}


def _argv(setup: dict[str, str], split: int, out: Path, *extra: str) -> list[str]:
    return ["--pretrained", setup["ckpt"], "--train_csv", setup[f"train{split}"],
            "--val_csv", setup[f"test{split}"], "--output_dir", str(out), *EVAL, *extra]


RUNNERS = {
    "eval_linear": (eval_linear.main, ["--epochs", "0", "--knn", "2", "--retrieval"], "retrieval"),
    "finetune": (finetune.main, ["--epochs", "1", "--eval_freq", "0"], "finetune"),
    "main_temporal": (main_temporal.main, ["--epochs", "1", "--num_vis", "0"], "temporal_order"),
}


def test_video_key_survives_moving_the_data_root() -> None:
    assert video_key("/data/ucf101/frames/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01") == \
        video_key("/mnt/other/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi") == \
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01"
    assert video_key("/a/Class/clip_1/") == "Class/clip_1"
    assert video_key("/a/ClassA/clip_1") != video_key("/a/ClassB/clip_1")


def test_the_checkpoint_lists_its_pretraining_videos(setup: dict[str, str]) -> None:
    record = load_checkpoint(setup["ckpt"])[PRETRAIN_VIDEOS]
    rows = Path(setup["pretrain"]).read_text().splitlines()
    assert record["key"] == "parent/name"
    assert record["videos"] == sorted(video_key(row.split(",")[0]) for row in rows)
    assert len(record["videos"]) == 12 and setup["leaked"] in record["videos"]


@pytest.mark.parametrize("name", RUNNERS)
def test_testing_on_pretraining_videos_is_refused_in_one_line(
        setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    main, extra, _ = RUNNERS[name]
    with pytest.raises(SystemExit) as exc:
        main(_argv(setup, 2, tmp_path / name, *extra))
    assert exc.value.code == 2  # a user error, like the parser's
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert f"2 of the 6 videos of --val_csv {setup['test2']} were seen in pretraining" in err[0]
    assert setup["leaked"] in err[0] and setup["pretrain"] in err[0] and "--allow_overlap" in err[0]
    assert not (tmp_path / name / "metrics.json").exists()


@pytest.mark.parametrize("name", RUNNERS)
def test_allow_overlap_runs_and_says_so_in_metrics(
        setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    main, extra, mode = RUNNERS[name]
    out = tmp_path / name
    main(_argv(setup, 2, out, *extra, "--allow_overlap"))
    assert "--allow_overlap: the test figures are not a result" in capsys.readouterr().out
    protocol = json.loads((out / "metrics.json").read_text())["protocol"]
    assert protocol["mode"] == mode and protocol["allow_overlap"] is True
    assert protocol["pretrain_overlap"] == {"checked": True, "videos": 2, "example": setup["leaked"]}
    assert len(protocol["warnings"]) == 1
    assert (protocol["num_train"], protocol["num_test"], protocol["clips"], protocol["crops"]) == (10, 6, 2, 1)


@pytest.mark.parametrize("name", RUNNERS)
def test_a_disjoint_split_records_the_whole_protocol(
        setup: dict[str, str], tmp_path: Path, name: str) -> None:
    main, extra, mode = RUNNERS[name]
    out = tmp_path / name
    main(_argv(setup, 1, out, *extra))
    protocol = json.loads((out / "metrics.json").read_text())["protocol"]
    assert protocol == {
        "mode": mode, "split": "train.csv -> val.csv",
        "train_csv": setup["train1"], "val_csv": setup["test1"],
        "num_train": 12, "num_test": 4, "clips": 2, "crops": 1,
        "pretrained": {"checkpoint": setup["ckpt"], "epoch": 1, "batches_into_next_epoch": 0,
                       "train_csv": setup["pretrain"], "run": setup["run"]},
        "allow_overlap": False, "pretrain_overlap": {"checked": True, "videos": 0, "example": None},
        "warnings": []}


def test_eval_linear_modes_and_ten_crops(setup: dict[str, str], tmp_path: Path) -> None:
    metrics = eval_linear.main(_argv(setup, 1, tmp_path / "linear", "--epochs", "1", "--ten_crop",
                                     "--probe_recipe", "coclr"))
    assert (metrics["protocol"]["mode"], metrics["protocol"]["crops"]) == ("linear", 10)
    metrics = eval_linear.main(_argv(setup, 1, tmp_path / "knn", "--epochs", "0", "--knn", "2"))
    assert metrics["protocol"]["mode"] == "knn"


@pytest.mark.parametrize("which", ["unrecorded", "plain"])
def test_a_checkpoint_without_the_record_cannot_be_checked_and_says_so(
        setup: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str) -> None:
    argv = _argv(setup, 2, tmp_path / which, "--epochs", "0", "--knn", "2")
    argv[1] = setup[which]
    if which == "plain":
        argv += ["--net", "r3d_18", "--width", "0.125"]
    metrics = eval_linear.main(argv)  # the overlapping split runs: nothing to compare with
    assert "cannot check that the videos of --val_csv" in capsys.readouterr().out
    protocol = metrics["protocol"]
    assert protocol["pretrain_overlap"] == {"checked": False, "videos": None, "example": None}
    assert len(protocol["warnings"]) == 1 and "cannot check" in protocol["warnings"][0]
    epoch, data = (1, setup["pretrain"]) if which == "unrecorded" else (None, None)
    assert protocol["pretrained"]["epoch"] == epoch and protocol["pretrained"]["train_csv"] == data


def test_random_init_has_nothing_to_check(setup: dict[str, str], tmp_path: Path) -> None:
    argv = _argv(setup, 2, tmp_path / "random", "--epochs", "0", "--knn", "2")
    metrics = eval_linear.main(["--net", "r3d_18", "--width", "0.125", *argv[2:]])
    protocol = metrics["protocol"]
    assert protocol["pretrained"] == {"checkpoint": None, "epoch": None, "batches_into_next_epoch": None,
                                      "train_csv": None, "run": None}
    assert protocol["pretrain_overlap"]["checked"] is True and protocol["warnings"] == []


def test_split_name() -> None:
    assert split_name("data/ucf101/train_split1.csv", "/x/test_split1.csv") == \
        "train_split1.csv -> test_split1.csv"


def test_an_unreadable_checkpoint_is_the_backbone_loaders_one_line(setup: dict[str, str], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    argv = _argv(setup, 1, tmp_path / "out", "--epochs", "0", "--knn", "2")
    argv[1] = str(corrupt)
    with pytest.raises(SystemExit, match=r"eval_linear.py: error: .*corrupt.pth: not a readable weights-only"):
        eval_linear.main(argv)
