"""A probe that cannot fail silently (docs/method.md §5): the divergence guard, the held-out sweep of the
cached probe's lr / wd, the chance-level flag, the probed feature level and the clip size read
from the pretraining checkpoint."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

import eval_linear
from datasets.synthetic import make_synthetic
from engine import cli
from engine.metrics import chance_level
from engine.probe import DIVERGENCE_FACTOR, DivergenceGuard, ProbeDiverged, train_linear_probe
from engine.probe_sweep import MIN_HOLDOUT_VIDEOS, PROBE_GRID, holdout_split, sweep_linear_probe
from models import PROBE_LEVELS, ClassifierHead, build_backbone, build_model, level_dim
from models.classifier import pool_level
from utils.checkpoint import save_checkpoint


# ----------------------------------------------------------------------------- the guard
def test_guard_passes_a_loss_that_falls_and_one_that_wobbles() -> None:
    guard = DivergenceGuard(6)
    for epoch, loss in enumerate([1.8, 1.2, 0.9, 1.1, 0.4, 0.05]):
        guard.check(epoch, loss, 0.1)
    # a loss that starts tiny and rises, but stays under chance, is not divergence
    guard = DivergenceGuard(6)
    for epoch, loss in enumerate([0.01, 0.5, 1.5]):
        guard.check(epoch, loss, 0.1)


@pytest.mark.parametrize("losses, why", [
    ([1.8, float("nan")], "is not finite"),
    ([1.8, float("inf")], "is not finite"),
    ([1.8, 3e4], "over 10x the chance level"),
    ([0.1, 0.5, 1.2, 1.9], "rose from 0.1 at the first epoch to 1.9"),
])
def test_guard_stops_a_diverging_loss_and_says_what_to_try(losses: list[float], why: str) -> None:
    guard = DivergenceGuard(6, what="linear probe", hint="--lr")
    with pytest.raises(ProbeDiverged, match=why) as err:
        for epoch, loss in enumerate(losses):
            guard.check(epoch, loss, 1.0)
    assert f"epoch {len(losses) - 1}" in str(err.value) and "--lr 0.1" in str(err.value)


def test_guard_limits_are_the_documented_ones() -> None:
    chance = math.log(6)
    guard = DivergenceGuard(6)
    guard.check(0, DIVERGENCE_FACTOR * chance, 1.0)  # exactly at the limit: allowed
    with pytest.raises(ProbeDiverged):
        DivergenceGuard(6).check(0, DIVERGENCE_FACTOR * chance * 1.001, 1.0)


def _blobs(n: int, classes: int = 3, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, dim, generator=g), y


def test_train_linear_probe_raises_on_a_diverging_lr() -> None:
    """No BatchNorm, no L2 norm and lr 1e4 on unnormalised features: the loss blows up."""
    x, y = _blobs(60)
    head = ClassifierHead(16, 3, final_bn=False, normalize=False)
    with pytest.raises(ProbeDiverged, match="linear probe diverged at epoch"):
        train_linear_probe(head, x * 100, y, lr=1e4, weight_decay=0.0, epochs=20, schedule=(), batch_size=8)
    # the same problem at a sane lr trains and reports its last epoch
    head = ClassifierHead(16, 3, final_bn=False, normalize=False)
    last = train_linear_probe(head, x, y, lr=0.01, weight_decay=0.0, epochs=20, schedule=(), batch_size=8)
    assert last["loss"] < math.log(3) and last["train_top1"] > 90


# ----------------------------------------------------------------------------- the sweep
def test_holdout_split_is_a_disjoint_seeded_partition() -> None:
    fit, held = holdout_split(50, seed=3)
    assert held.numel() == 10 and fit.numel() == 40
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(50))
    assert torch.equal(holdout_split(50, seed=3)[1], held)
    assert not torch.equal(holdout_split(50, seed=4)[1], held)


def test_sweep_scores_every_point_on_held_out_videos_and_skips_diverged_ones() -> None:
    x, y = _blobs(60)
    x = x + 3 * torch.randn(60, 16, generator=torch.Generator().manual_seed(1))  # overlapping classes
    features = x[:, None, :]  # (N, K=1, D)
    grid = ((1e3, 0.0), (0.01, 0.0))  # without BatchNorm, lr 1000 diverges
    best, rows = sweep_linear_probe(lambda: ClassifierHead(16, 3, final_bn=False, normalize=False),
                                    features, y, grid=grid, seed=0, optim="sgd", epochs=10, schedule=(),
                                    batch_size=8)
    assert [(r["lr"], r["wd"]) for r in rows] == list(grid)
    assert "diverged" in rows[0] and "holdout_top1" not in rows[0]
    assert rows[1]["holdout_top1"] > 90 and best == (0.01, 0.0)
    # held-out accuracies are of the 12 held-out videos: multiples of 100/12
    assert rows[1]["holdout_top1"] * 12 / 100 == pytest.approx(round(rows[1]["holdout_top1"] * 12 / 100))


def test_sweep_does_not_fit_on_held_out_videos() -> None:
    """Labels of the held-out videos are noise unrelated to their features: a sweep that saw
    them while fitting would score them far above chance."""
    x, y = _blobs(100, classes=2)
    _, held = holdout_split(100, seed=0)
    y = y.clone()
    y[held] = torch.randint(0, 2, (held.numel(),), generator=torch.Generator().manual_seed(9))
    best, rows = sweep_linear_probe(lambda: ClassifierHead(16, 2), x[:, None, :], y, grid=((0.1, 1e-4),),
                                    seed=0, epochs=10, schedule=(), batch_size=16)
    true_class = torch.arange(100) % 2  # what the features say
    expected = 100.0 * (true_class[held] == y[held]).float().mean().item()
    assert rows[0]["holdout_top1"] == pytest.approx(expected)  # the features' class, not the noise
    assert best == (0.1, 1e-4)


def test_sweep_returns_none_below_the_minimum_held_out_count() -> None:
    n = round((MIN_HOLDOUT_VIDEOS - 1) / 0.2)  # 4 held out
    x, y = _blobs(n)
    assert sweep_linear_probe(lambda: ClassifierHead(16, 3), x[:, None, :], y, epochs=1) == (None, [])
    assert PROBE_GRID[0] == (1.0, 1e-3)  # CoCLR's recipe is the first point


# ----------------------------------------------------------------------------- chance level
def test_chance_level_is_two_binomial_standard_errors() -> None:
    # 6 classes, 90 videos: chance 16.67 %, 2 SE = 2 * sqrt(1/6 * 5/6 / 90) = 7.86 points
    margin = 200 * math.sqrt((1 / 6) * (5 / 6) / 90)
    assert chance_level(16.7, 6, 90) == {"chance": pytest.approx(100 / 6), "at_chance": True}
    assert chance_level(100 / 6 + margin - 0.01, 6, 90)["at_chance"] is True
    assert chance_level(100 / 6 + margin + 0.01, 6, 90)["at_chance"] is False
    assert chance_level(0.0, 6, 90)["at_chance"] is True  # below chance is no result either


# ----------------------------------------------------------------------------- levels
def test_probe_levels_pool_and_concatenate() -> None:
    backbone = build_backbone("r3d_18", 0.125)
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, 8, 32, 32))
    dims = backbone.out_channels
    for level in PROBE_LEVELS[:-1]:
        assert pool_level(maps, level).shape == (2, dims[level]) == (2, level_dim(dims, level))
        assert torch.allclose(pool_level(maps, level), maps[level].mean(dim=(2, 3, 4)))
    every = pool_level(maps, "all")
    assert every.shape == (2, dims["low"] + dims["mid"] + dims["high"]) == (2, level_dim(dims, "all"))
    assert torch.equal(every[:, -dims["high"]:], pool_level(maps, "high"))


# ----------------------------------------------------------------------------- end to end
TINY = ["--num_clips", "2", "--batch_size", "4", "--workers", "0", "--device", "cpu", "--no_progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """40 videos (30 train / 10 val, 2 classes) of 8 frames at 32 px and a checkpoint that
    records its pretraining flags (--seq 8 --img_dim 32)."""
    root = tmp_path_factory.mktemp("probe_data")
    csvs = make_synthetic(root / "synthetic", num_videos=40, frames=8, size=32, num_classes=2, seed=0)
    torch.manual_seed(0)
    model = build_model("r3d_18", width=0.125, channel=16, cluster=8)
    ckpt = str(root / "pretrain.pth")
    save_checkpoint({"model": model.state_dict(), "model_config": model.config, "epoch": 1,
                     "args": {"seq": 8, "img_dim": 32, "net": "r3d_18"}}, ckpt)
    return {"train": csvs["train"], "val": csvs["val"], "ckpt": ckpt}


def _run(data: dict[str, str], out: Path, *extra: str) -> dict:
    eval_linear.main(["--pretrained", data["ckpt"], "--train_csv", data["train"], "--val_csv", data["val"],
                      "--output_dir", str(out), *TINY, *extra])
    return json.loads((out / "metrics.json").read_text())


def test_eval_linear_sweeps_on_held_out_training_videos_and_records_the_choice(
        data: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _run(data, tmp_path / "sweep", "--epochs", "3", "--schedule", "2")
    printed = capsys.readouterr().out
    assert m["probe"]["recipe"] == "sweep" and len(m["probe"]["sweep"]) == len(PROBE_GRID)
    scored = [r for r in m["probe"]["sweep"] if "holdout_top1" in r]
    best = max(scored, key=lambda r: r["holdout_top1"])  # ties: the earliest point
    assert (m["probe"]["lr"], m["probe"]["wd"]) == (best["lr"], best["wd"])
    args = json.loads((tmp_path / "sweep" / "args.json").read_text())
    assert "held-out top-1" in printed and "retrained on the whole training split" in printed
    # the clip size came from the checkpoint's pretraining flags, and the log says so
    assert (m["seq"], m["img_dim"]) == (8, 32) and args["clip_size_from"] == {"seq": "checkpoint",
                                                                               "img_dim": "checkpoint"}
    assert "--seq 8 (from the checkpoint's pretraining flags)" in printed
    assert {"train_loss", "train_top1", "chance", "at_chance"} <= m.keys() and m["chance"] == 50.0
    log = [json.loads(line) for line in (tmp_path / "sweep" / "log.jsonl").read_text().splitlines()]
    assert m["train_loss"] == pytest.approx(log[-1]["loss"])  # the reported head's last epoch


def test_eval_linear_stops_a_diverging_probe_with_one_message(
        data: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        _run(data, tmp_path / "diverge", "--epochs", "5", "--lr", "1e6", "--wd", "0", "--no-final_bn",
             "--no-normalize", "--probe_recipe", "coclr")
    message = str(err.value.code)  # one line, exit status 1 (sys.exit with the message)
    assert message.startswith("eval_linear.py: error: linear probe diverged at epoch 1")
    assert "--lr 100000" in message and "\n" not in message
    assert not (tmp_path / "diverge" / "metrics.json").exists()


def test_eval_linear_flags_beat_the_checkpoint_and_all_levels_run(
        data: dict[str, str], tmp_path: Path) -> None:
    m = _run(data, tmp_path / "levels", "--epochs", "1", "--seq", "4", "--probe_level", "all",
             "--probe_recipe", "coclr", "--knn", "3")
    assert (m["seq"], m["img_dim"], m["probe_level"]) == (4, 32, "all")
    assert m["probe"] == {"recipe": "coclr", "lr": 1.0, "wd": 1e-3}
    assert "knn_top1" in m


def test_clip_size_of_a_plain_state_dict_is_the_default(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pth"
    torch.save(build_backbone("r3d_18", 0.125).state_dict(), plain)
    args = argparse.Namespace(seq=None, img_dim=None, pretrained=str(plain))
    cli.fill_clip_size(args)
    assert (args.seq, args.img_dim) == (16, 112)
    assert args.clip_size_from == {"seq": "default", "img_dim": "default"}
    missing = argparse.Namespace(seq=None, img_dim=64, pretrained=str(tmp_path / "nope.pth"))
    cli.fill_clip_size(missing)  # unreadable: the run's backbone loading reports it
    assert (missing.seq, missing.img_dim, missing.clip_size_from["img_dim"]) == (16, 64, "flag")
