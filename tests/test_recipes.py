"""recipes/: one argument file per published setting, read with ``@file`` (engine/cli.py). Every
recipe parses with its script's parser and passes its checks, its values are docs/method.md §4's
(docs/method.md §4) where that specifies them, and a flag after the file overrides it."""
from __future__ import annotations

from pathlib import Path

import pytest

import eval_linear
import finetune
import train
from engine.cli import new_parser

REPO = Path(__file__).resolve().parents[1]
# recipe -> (script module, the paper's figure its first comment names)
RECIPES = {
    "pretrain_k400_r3d18": (train, "79.1"),
    "pretrain_ucf101_r3d18": (train, "79.1"),
    "finetune_ucf101_split1": (finetune, "79.1"),
    "finetune_hmdb51_split1": (finetune, "47.6"),
    "linear_ucf101_split1": (eval_linear, "no linear-probe figure"),
    "linear_hmdb51_split1": (eval_linear, "no linear-probe figure"),
    "retrieval_ucf101_split1": (eval_linear, "41.5"),
    "retrieval_hmdb51_split1": (eval_linear, "20.7"),
}
# docs/method.md §4: Adam lr 1e-3, wd 1e-5; batch 64 per GPU; 16 frames of 112²; --channel 128
PRETRAIN_COMMON = {"lr": 1e-3, "wd": 1e-5, "train_batch": 64, "seq": 16, "img_dim": 112, "channel": 128,
                   "net": "r3d_18", "sample": 2, "thres": 0.05, "workers": 8,
                   "multiprocessing_distributed": True}
PRETRAIN = {"pretrain_k400_r3d18": {"cluster": 1000, "epoch": 100, "lr_decay": 70, "split": 20},
            "pretrain_ucf101_r3d18": {"cluster": 200, "epoch": 300, "lr_decay": 200, "split": 50}}


def recipe(name: str) -> str:
    return f"@{REPO / 'recipes' / (name + '.args')}"


def paths(module, tmp_path: Path) -> list[str]:
    """The paths a recipe leaves to the user: files that exist, for the scripts' checks."""
    csv = tmp_path / "a.csv"
    csv.write_text("v,20,0\n")
    if module is train:
        return ["--csv_file", str(csv), "--output_dir", str(tmp_path / "out")]
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"")
    return ["--pretrained", str(ckpt), "--train_csv", str(csv), "--val_csv", str(csv),
            "--output_dir", str(tmp_path / "out")]


def test_every_recipe_is_listed_here() -> None:
    assert {p.stem for p in (REPO / "recipes").glob("*.args")} == RECIPES.keys()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_parses_and_passes_the_scripts_checks(name: str, tmp_path: Path) -> None:
    module, figure = RECIPES[name]
    text = (REPO / "recipes" / f"{name}.args").read_text()
    assert text.startswith("# ") and figure in text.split("\n\n")[0].split("\n--")[0]
    assert "csv" not in "".join(line for line in text.splitlines() if not line.startswith("#")), \
        "data paths are the user's: not in a recipe"
    args = module.parse_args([recipe(name), *paths(module, tmp_path)])
    assert args.output_dir == str(tmp_path / "out")


@pytest.mark.parametrize("name", PRETRAIN)
def test_pretraining_recipes_are_method_section_4(name: str, tmp_path: Path) -> None:
    args = train.build_parser().parse_args([recipe(name), *paths(train, tmp_path)])
    assert {k: getattr(args, k) for k in PRETRAIN_COMMON} == PRETRAIN_COMMON
    assert {k: getattr(args, k) for k in PRETRAIN[name]} == PRETRAIN[name]


def test_the_seed_readme_commands_equal_the_recipes() -> None:
    """The seed README's two commands and the recipes give the same pretraining flags, the
    recipes' reference gradient of the gathered keys aside (--gather_grad local)."""
    parser = train.build_parser()
    seed = {
        "pretrain_k400_r3d18": "--train_batch 64 --workers 8 --cluster 1000 --epoch 100 --lr_decay 70 "
                               "--thres 0.05 --csv_file kinetics.csv --multiprocessing-distributed --split 20",
        "pretrain_ucf101_r3d18": "--train_batch 64 --workers 8 --cluster 200 --epoch 300 --lr_decay 200 "
                                 "-thres 0.05 --csv_file ucf_pretrain.csv --multiprocessing-distributed --split 50",
    }
    for name, line in seed.items():
        words = line.split()
        csv = words[words.index("--csv_file") + 1]
        assert vars(parser.parse_args([recipe(name), "--csv_file", csv])) == \
            vars(parser.parse_args([*words, "--gather_grad", "local"]))


@pytest.mark.parametrize("name, expected", [
    ("finetune_ucf101_split1", {"num_classes": 101, "epochs": 500, "schedule": [400, 450], "lr": 1e-3,
                                "wd": 1e-3, "backbone_lr_scale": 0.1, "dropout": 0.9, "optim": "adam",
                                "batch_size": 32, "num_clips": 10, "ten_crop": False, "seq": 16, "img_dim": 112}),
    ("finetune_hmdb51_split1", {"num_classes": 51, "epochs": 500, "dropout": 0.9}),
    ("linear_ucf101_split1", {"num_classes": 101, "epochs": 100, "schedule": [60, 80], "optim": "sgd",
                              "cache_features": True, "final_bn": True, "normalize": True,
                              "probe_level": "high", "num_clips": 10, "ten_crop": False, "retrieval": False}),
    ("linear_hmdb51_split1", {"num_classes": 51, "epochs": 100}),
    ("retrieval_ucf101_split1", {"num_classes": 101, "epochs": 0, "retrieval": True, "num_clips": 10,
                                 "retrieval_center": "each", "probe_level": "high", "ten_crop": False}),
    ("retrieval_hmdb51_split1", {"num_classes": 51, "epochs": 0, "retrieval": True}),
])
def test_evaluation_recipes_hold_the_protocol(name: str, expected: dict, tmp_path: Path) -> None:
    module, _ = RECIPES[name]
    args = module.build_parser().parse_args([recipe(name), *paths(module, tmp_path)])
    assert {k: getattr(args, k) for k in expected} == expected


def test_a_flag_after_the_file_wins(tmp_path: Path) -> None:
    parser = finetune.build_parser()
    args = parser.parse_args([recipe("finetune_ucf101_split1"), *paths(finetune, tmp_path),
                              "--epochs", "7", "--schedule", "5", "--dropout", "0.5", "--ten_crop"])
    assert (args.epochs, args.schedule, args.dropout, args.ten_crop) == (7, [5], 0.5, True)
    args = train.build_parser().parse_args([recipe("pretrain_k400_r3d18"), "--csv_file", "k.csv",
                                            "--cluster", "16", "--epoch", "2"])
    assert (args.cluster, args.epoch, args.lr_decay) == (16, 2, 70)
    args = eval_linear.build_parser().parse_args([recipe("linear_ucf101_split1"), *paths(eval_linear, tmp_path),
                                                  "--no-cache_features"])
    assert args.cache_features is False
    # ... and a flag before the file is overridden by it
    args = train.build_parser().parse_args(["--epoch", "2", recipe("pretrain_k400_r3d18"), "--csv_file", "k.csv"])
    assert args.epoch == 100


def test_argument_file_lines(tmp_path: Path) -> None:
    parser = new_parser("prog", "test")
    parser.add_argument("--a", type=int)
    parser.add_argument("--b", nargs="*")
    parser.add_argument("--c")
    flags = tmp_path / "flags.args"
    flags.write_text("# a comment\n\n  --a 3   # trailing comment\n--b x y\n--c 'two words'\n   # indented comment\n")
    assert vars(parser.parse_args([f"@{flags}"])) == {"a": 3, "b": ["x", "y"], "c": "two words"}
    assert parser.convert_arg_line_to_args("# --a 1") == [] and parser.convert_arg_line_to_args("") == []
    bad = tmp_path / "bad.args"
    bad.write_text("--c 'unclosed\n")
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([f"@{bad}"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args([f"@{tmp_path / 'missing.args'}"])
