"""End-to-end tests of train.py on a tiny synthetic frame-folder set (CPU, a few seconds each)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

import train
from utils.checkpoint import load_checkpoint
from pretrain_helpers import make_videos
from pretrain_helpers import tiny_argv as shared_tiny_argv

SEED_K400 = ("--train_batch 64 --workers 8 --cluster 1000 --epoch 100 --lr_decay 70 --thres 0.05 "
             "--csv_file kinetics.csv --multiprocessing-distributed --split 20")
SEED_UCF = ("--train_batch 64 --workers 8 --cluster 200 --epoch 300 --lr_decay 200 -thres 0.05 "
            "--csv_file ucf_pretrain.csv --multiprocessing-distributed --split 50")


def tiny_argv(csv: Path, out: Path, *extra: str) -> list[str]:
    """The shared tiny run, with the lr decayed after the first epoch."""
    return shared_tiny_argv(csv, out, "--lr_decay", "1", *extra)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def straight_run(videos: Path, tmp_path_factory):
    """Two epochs in one go, graph constraint from epoch 1."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("straight")
    metrics = train.main(tiny_argv(videos, out, "--epoch", "2", "--split", "1", "--seed", "3"))
    return out, metrics


def test_run_writes_every_output(straight_run):
    out, metrics = straight_run
    args = json.loads((out / "args.json").read_text())
    assert args["epoch"] == 2 and args["split"] == 1 and args["width"] == 0.125
    assert sorted(p.name for p in out.glob("checkpoint_*.pth")) == ["checkpoint_0002.pth", "checkpoint_last.pth"]
    assert not list(out.glob(".tmp-*"))

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["epochs_done"] == 2 and metrics["steps"] == 4 and metrics["non_finite_steps"] == 0
    assert metrics["skipped_samples"] == 0 and metrics["clips_per_s"] > 0
    assert metrics["world_size"] == 1 and metrics["global_batch"] == 4
    for part in ("ins", "mot_low", "mot_mid", "lg_low", "lg_mid", "lg_high", "proto", "graph", "graph_high"):
        assert torch.isfinite(torch.tensor(metrics["loss_parts"][part])), part
    assert 0 < metrics["loss"] < 50

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[1]["loss"] == pytest.approx(metrics["loss"])
    # graph constraint from --split 1 on; lr x0.1 from --lr_decay 1
    assert "graph" not in log[0] and "graph_high" not in log[0]
    assert log[1]["graph"] > 0 and {"graph_low", "graph_mid", "graph_high"} <= set(log[1])
    assert log[0]["lr"] == pytest.approx(1e-3) and log[1]["lr"] == pytest.approx(1e-4)
    # the total is the weighted sum of its parts (docs/method.md §3 "Total")
    weighted = sum(v for k, v in log[1].items() if k.endswith("_weighted"))
    assert weighted == pytest.approx(log[1]["loss"], rel=1e-5)
    assert 1 <= log[1]["distinct_pseudo_labels"] <= 16

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for tag in ("train/total", "train/ins", "train/proto", "train/graph", "train/lr", "train/num_pseudo_labels",
                "perf/clips_per_s", "perf/data_wait_frac", "epoch/loss", "epoch/distinct_pseudo_labels"):
        assert tag in tags, tag
    assert [e.step for e in ea.Scalars("train/total")] == [1, 2, 3, 4]
    assert [e.step for e in ea.Scalars("train/graph")] == [3, 4]


def test_checkpoint_contents(straight_run):
    out, _ = straight_run
    ckpt = torch.load(out / "checkpoint_last.pth", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"model", "model_config", "objective", "optimizer", "scaler", "epoch", "step",
                         "args", "rng", "version", "checksum", "pretrain_videos"}
    root = Path(ckpt["args"]["csv_file"]).parent.name  # what it pretrained on, without the CSV
    assert ckpt["pretrain_videos"] == {"key": "parent/name", "videos": [f"{root}/video_{v:03d}" for v in range(8)]}
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4
    assert ckpt["model_config"]["net"] == "r3d_18" and ckpt["model_config"]["cluster"] == 16
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    queue = ckpt["objective"]["queue"]
    assert queue["scores"].shape == (2, 16, 16) and int(queue["filled"]) == 16  # (n, size, K)
    protos = ckpt["model"]["prototypes.weight"]
    assert protos.shape == (16, 32)
    assert ckpt["args"]["csv_file"].endswith("pretrain.csv") and ckpt["rng"]["torch"].dtype == torch.uint8
    # the numbered copy is the same state
    numbered = load_checkpoint(out / "checkpoint_0002.pth")
    assert torch.equal(numbered["model"]["prototypes.weight"], protos)


def test_interrupted_and_resumed_run_matches_straight_run(straight_run, videos, tmp_path, capsys):
    ref_out, ref = straight_run
    out = tmp_path / "resumed"
    first = train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1", "--seed", "3"))
    assert first["epochs_done"] == 1
    # docs/method.md §2: prototype gradients are dropped in epoch 0 (rows only renormalised), used from epoch 1
    from models import build_model

    torch.manual_seed(3)  # what train.py's seed_everything(seed=3, rank=0) gives the model init
    init = build_model(net="r3d_18", width=0.125, channel=32, cluster=16)
    init.normalize_prototypes()
    after_epoch0 = load_checkpoint(out / "checkpoint_0001.pth")["model"]
    assert torch.allclose(after_epoch0["prototypes.weight"], init.prototypes.weight, atol=1e-6)
    conv = next(k for k, v in init.state_dict().items() if k.startswith("backbone.") and v.dim() == 5)
    assert not torch.allclose(after_epoch0[conv], init.state_dict()[conv])  # the backbone did train
    after_epoch1 = load_checkpoint(ref_out / "checkpoint_last.pth")["model"]["prototypes.weight"]
    assert (after_epoch1 - init.prototypes.weight).abs().max() > 1e-4
    capsys.readouterr()
    second = train.main(tiny_argv(videos, out, "--epoch", "2", "--split", "1", "--seed", "3", "--resume", "auto"))
    assert "resumed from" in capsys.readouterr().out
    assert second["loss"] == pytest.approx(ref["loss"], abs=1e-6)
    for k, v in ref["loss_parts"].items():
        assert second["loss_parts"][k] == pytest.approx(v, abs=1e-6), k
    a = load_checkpoint(ref_out / "checkpoint_last.pth")["model"]
    b = load_checkpoint(out / "checkpoint_last.pth")["model"]
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tb"))  # the first attempt's points are kept, none twice
    ea.Reload()
    assert [e.step for e in ea.Scalars("epoch/loss")] == [2, 4]
    assert [e.step for e in ea.Scalars("train/total")] == [1, 2, 3, 4]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    # rerunning a finished run does nothing and says so
    again = train.main(tiny_argv(videos, out, "--epoch", "2", "--split", "1", "--seed", "3"))
    assert "nothing to do" in capsys.readouterr().out and again["loss"] == second["loss"]


def test_run_continued_from_a_split_checkpoint_without_graph_matches_a_fresh_one(straight_run, videos,
                                                                                tmp_path):
    """scripts/demo.py computes ``no_graph`` as the full run's epochs before ``--split`` (the graph
    term starts there) continued with ``--w_graph 0``: the same run as ``--w_graph 0`` from scratch."""
    _, with_graph = straight_run
    shared = tmp_path / "full"
    train.main(tiny_argv(videos, shared, "--epoch", "1", "--split", "1", "--seed", "3"))
    no_graph = ("--epoch", "2", "--split", "1", "--seed", "3", "--w_graph", "0")
    continued = train.main(tiny_argv(videos, tmp_path / "continued", *no_graph,
                                     "--resume", str(shared / "checkpoint_0001.pth")))
    fresh = train.main(tiny_argv(videos, tmp_path / "fresh", *no_graph))
    assert "graph" not in fresh["loss_parts"] and "graph" in with_graph["loss_parts"]
    assert continued["loss"] == pytest.approx(fresh["loss"], abs=1e-6)
    assert abs(fresh["loss"] - with_graph["loss"]) > 1e-3  # the flag matters after the split
    a = load_checkpoint(tmp_path / "continued" / "checkpoint_last.pth")["model"]
    b = load_checkpoint(tmp_path / "fresh" / "checkpoint_last.pth")["model"]
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-6


def test_gpu_augment_run_matches_the_loader_colour_run(straight_run, videos, tmp_path, capsys):
    """--gpu_augment draws the same colour factors and moves only where they are applied (here
    the training device is the CPU), so the run matches the straight run up to float rounding."""
    ref_out, ref = straight_run
    metrics = train.main(tiny_argv(videos, tmp_path / "gpu_augment", "--epoch", "2", "--split", "1",
                                   "--seed", "3", "--gpu_augment"))
    assert "colour augmentation on cpu" in capsys.readouterr().out
    assert metrics["steps"] == 4 and metrics["non_finite_steps"] == 0
    assert metrics["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    for k, v in ref["loss_parts"].items():
        assert metrics["loss_parts"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_exact_color_reaches_the_colour_kernel(straight_run, videos, tmp_path):
    """--exact_color swaps the fast kernel for torchvision's maths under the same draws, in the
    loader and in the --gpu_augment step alike: the same losses to float rounding between the two
    places, within 10 % of (and not equal to) the fast kernel's run on these random frames."""
    _, ref = straight_run
    runs = [train.main(tiny_argv(videos, tmp_path / name, "--epoch", "2", "--split", "1",
                                 "--seed", "3", "--exact_color", *extra))
            for name, extra in (("exact", ()), ("exact_gpu", ("--gpu_augment",)))]
    assert runs[0]["loss"] == pytest.approx(runs[1]["loss"], rel=1e-5)
    assert runs[0]["loss"] != ref["loss"]
    assert runs[0]["loss"] == pytest.approx(ref["loss"], rel=0.1)


def test_two_gloo_processes(videos, tmp_path):
    out = tmp_path / "ddp"
    metrics = train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1", "--train_batch", "2",
                                   "--multiprocessing-distributed", "--nproc", "2", "--dist_timeout", "60"))
    assert metrics["world_size"] == 2 and metrics["global_batch"] == 4 and metrics["steps"] == 2
    assert sorted(p.name for p in out.glob("checkpoint_*.pth")) == ["checkpoint_0001.pth", "checkpoint_last.pth"]
    assert len((out / "log.jsonl").read_text().splitlines()) == 1  # rank 0 alone logs
    ckpt = load_checkpoint(out / "checkpoint_last.pth")
    queue = ckpt["objective"]["queue"]  # the global queue: 2 steps of 4 gathered videos
    assert queue["scores"].shape == (2, 16, 16) and int(queue["filled"]) == 8
    assert ckpt["epoch"] == 1


def test_two_gloo_processes_with_zero_weight_terms(videos, tmp_path):
    """An ablation under DDP: outputs the loss leaves out (motion, alignment) or uses without
    gradient (the prototype scores behind the graph's pseudo-labels, --w_proto 0) must not make
    DDP wait for their gradients ("Expected to have finished reduction" at the second step)."""
    ablation = ("--w_mot_low", "0", "--w_mot_mid", "0", "--w_lg_low", "0", "--w_lg_mid", "0",
                "--w_lg_high", "0", "--w_proto", "0")
    metrics = train.main(tiny_argv(videos, tmp_path / "ddp", "--epoch", "1", "--split", "0",
                                   "--train_batch", "2", "--multiprocessing-distributed",
                                   "--nproc", "2", "--dist_timeout", "60", *ablation))
    assert metrics["world_size"] == 2 and metrics["steps"] == 2 and metrics["non_finite_steps"] == 0
    assert set(metrics["loss_parts"]) >= {"ins", "graph"} and "proto" not in metrics["loss_parts"]


def test_seed_readme_commands_parse(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "kinetics.csv").write_text("a,40\n")
    (tmp_path / "ucf_pretrain.csv").write_text("a,40\n")
    k400 = train.parse_args(shlex.split(SEED_K400))
    assert (k400.train_batch, k400.workers, k400.cluster, k400.epoch, k400.lr_decay, k400.thres, k400.split) == \
        (64, 8, 1000, 100, 70, 0.05, 20)
    assert k400.multiprocessing_distributed and k400.csv_file == "kinetics.csv"
    assert (k400.seq, k400.sample, k400.img_dim, k400.rate, k400.net, k400.lr, k400.wd, k400.channel) == \
        (16, 2, 112, 3.0, "r3d_18", 1e-3, 1e-5, 128)
    ucf = train.parse_args(shlex.split(SEED_UCF))
    assert (ucf.cluster, ucf.epoch, ucf.lr_decay, ucf.thres, ucf.split) == (200, 300, 200, 0.05, 50)
    assert train.parse_args(shlex.split(SEED_UCF.replace("-thres 0.05", "-thres 0.2"))).thres == 0.2


@pytest.mark.parametrize("flags, message", [
    (["--sample", "1"], "at least 2 local clips"),
    (["--split", "5", "--epoch", "3"], "past --epoch"),
    (["--train_batch", "1"], "need >= 2 videos"),
    (["--resume", "missing.pth"], "no such checkpoint"),
    (["--net", "vgg"], "unknown network"),
    (["--rate", "0.5"], "must be >= 1"),
    (["--amp", "fp16", "--device", "cpu"], "fp16 needs a CUDA"),
    (["--w_mot_low", "-1"], "--w_mot_low: a loss weight must be >= 0"),
    (["--tau", "0"], "--tau 0.0: a temperature must be > 0"),
    (["--eps", "0"], "--eps 0.0: a temperature must be > 0"),
    (["--sinkhorn_iters", "0"], "at least 1 iteration"),
    (["--queue_size", "-4"], "both must be >= 0"),
])
def test_bad_flag_combinations_fail_with_one_message(flags, message, videos, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--csv_file", str(videos), "--output_dir", str(tmp_path), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_lr_decay_past_epoch_only_warns(videos, tmp_path, capsys):
    args = train.parse_args(["--csv_file", str(videos), "--output_dir", str(tmp_path), "--epoch", "5",
                             "--lr_decay", "9", "--split", "2"])
    assert args.lr_decay == 9 and "will never decay" in capsys.readouterr().err


def test_help_is_thorough(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["-h"])
    text = capsys.readouterr().out
    for flag in ("--csv_file", "--multiprocessing-distributed", "--resume", "--amp", "--w_graph", "--tau",
                 "--queue_start", "--nproc", "--max_bad_steps", "--dist_timeout", "-thres", "outputs in --output_dir"):
        assert flag in text, flag
