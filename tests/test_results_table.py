"""scripts/results_table.py on fabricated metrics.json files: one row per figure, the paper's
figure beside ours, the protocol, loud marks, and a folder without an evaluation metrics.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import results_table


def protocol(mode: str, train_csv: str, val_csv: str, **over) -> dict:
    record = {"mode": mode, "split": f"{Path(train_csv).name} -> {Path(val_csv).name}",
              "train_csv": train_csv, "val_csv": val_csv, "num_train": 9537, "num_test": 3783,
              "clips": 10, "crops": 1,
              "pretrained": {"checkpoint": "/r/runs/k400/checkpoint_0100.pth", "epoch": 100,
                             "train_csv": "data/kinetics400/kinetics400_train.csv", "run": "/r/runs/k400"},
              "allow_overlap": False, "pretrain_overlap": {"checked": True, "videos": 0, "example": None},
              "warnings": []}
    record.update(over)
    return record


UCF = ("/d/ucf101/ucf101_train_split1.csv", "/d/ucf101/ucf101_test_split1.csv")
HMDB = ("/d/hmdb51/hmdb51_train_split1.csv", "/d/hmdb51/hmdb51_test_split1.csv")


def write(folder: Path, metrics: dict) -> str:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder)


def rows(table: str) -> list[dict[str, str]]:
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split(" | ")))) for line in lines[1:]]


def test_rows_and_the_paper_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        write(tmp_path / "ucf_ft", {"top1": 80.25, "num_classes": 101, "at_chance": False,
                                    "protocol": protocol("finetune", *UCF)}),
        write(tmp_path / "hmdb_ft", {"top1": 45.0, "num_classes": 51, "at_chance": False, "skipped_videos": 3,
                                     "protocol": protocol("finetune", *HMDB, crops=10)}),
        write(tmp_path / "ucf_lin", {"top1": 2.0, "num_classes": 101, "at_chance": True,
                                     "retrieval": {"R@1": 40.0, "R@5": 60.0},
                                     "protocol": protocol("linear", *UCF)}),
        write(tmp_path / "hmdb_ret", {"num_classes": 51, "retrieval": {"R@1": 21.04},
                                      "protocol": protocol("retrieval", "/d/a.csv", "/d/b.csv")}),
        write(tmp_path / "order", {"temporal_order_acc": 71.0, "at_chance": False,
                                   "protocol": protocol("temporal_order", *UCF, clips=5)}),
    ]
    table = results_table.main(runs)
    assert capsys.readouterr().out == table
    got = rows(table)
    assert [(r["task"], r["mode"], r["figure"], r["ours"], r["paper"]) for r in got] == [
        ("UCF101", "finetune", "top-1", "80.2", "79.1"),
        ("HMDB51", "finetune", "top-1", "45.0", "47.6"),
        ("UCF101", "linear", "top-1", "2.0", "–"),      # no published linear figure
        ("UCF101", "retrieval", "R@1", "40.0", "41.5"),  # the same run's retrieval
        ("HMDB51", "retrieval", "R@1", "21.0", "20.7"),  # task from num_classes
        ("UCF101", "temporal_order", "order acc.", "71.0", "–"),
    ]
    assert got[0]["split"] == "ucf101_train_split1.csv -> ucf101_test_split1.csv"
    assert got[0]["test"] == "10 clips × 1 crop" and got[1]["test"] == "10 clips × 10 crops"
    assert got[0]["pretrained"] == "k400/checkpoint_0100.pth, 100 epochs, on kinetics400_train.csv"
    assert got[0]["run"] == runs[0] and got[0]["notes"] == ""
    assert "AT CHANCE" in got[2]["notes"] and "AT CHANCE" not in got[3]["notes"]
    assert "3 videos skipped" in got[1]["notes"]


def test_loud_marks(tmp_path: Path) -> None:
    leaked = protocol("finetune", *UCF, allow_overlap=True,
                      pretrain_overlap={"checked": True, "videos": 12, "example": "A/v_A_g01_c01"})
    unchecked = protocol("finetune", *UCF, pretrain_overlap={"checked": False, "videos": None, "example": None})
    random = protocol("finetune", *UCF, pretrained={"checkpoint": None, "epoch": None, "train_csv": None,
                                                    "run": None})
    runs = [write(tmp_path / name, {"top1": 50.0, "num_classes": 101, "protocol": p, **extra})
            for name, p, extra in (("leaked", leaked, {}), ("unchecked", unchecked, {}),
                                   ("random", random, {"train_val_overlap": 4}))]
    got = rows(results_table.main(runs))
    assert "12 TEST VIDEOS SEEN IN PRETRAINING" in got[0]["notes"]
    assert "not checked" in got[1]["notes"]
    assert got[2]["pretrained"] == "**random init**" and "4 test videos also in the train split" in got[2]["notes"]


def test_a_folder_without_an_evaluation_metrics_json(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    pretrain = write(tmp_path / "pretrain", {"loss": 4.2, "epochs_done": 100})
    good = write(tmp_path / "good", {"top1": 80.0, "num_classes": 101, "protocol": protocol("finetune", *UCF)})
    with pytest.raises(SystemExit, match=f"{empty}: no metrics.json"):
        results_table.main([good, str(empty)])
    with pytest.raises(SystemExit, match="no 'protocol' entry: not an evaluation run"):
        results_table.main([pretrain])
    table = results_table.main([good, str(empty), pretrain, "--skip_missing", "--output", str(tmp_path / "t.md")])
    assert len(rows(table)) == 1 and table.count("skipped: ") == 2
    assert (tmp_path / "t.md").read_text() == table
