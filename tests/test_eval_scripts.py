"""eval_linear.py and finetune.py end to end on a tiny synthetic set (docs/method.md §5), and the
frozen-backbone guarantee of the linear probe on a real (tiny) R3D with BatchNorm."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import eval_linear
import finetune
from datasets.synthetic import make_synthetic
from utils.checkpoint import load_checkpoint, save_checkpoint
from engine.loader import make_loader
from engine.probe import assert_state_unchanged, state_snapshot, train_probe_end_to_end
from utils.optim import build_optimizer
from models import ClassifierHead, VideoClassifier, build_backbone, build_model

TINY = ["--seq", "8", "--img_dim", "32", "--num_clips", "2", "--batch_size", "4",
        "--workers", "0", "--device", "cpu", "--no_progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """16 videos of 8 frames at 32 px, 2 motion classes (12 train / 4 val), and a train.py-style
    checkpoint of a width-0.125 R3D-18."""
    root = tmp_path_factory.mktemp("eval_data")
    csvs = make_synthetic(root / "synthetic", num_videos=16, frames=8, size=32, num_classes=2, seed=0)
    torch.manual_seed(0)
    model = build_model("r3d_18", width=0.125, channel=16, cluster=8)
    ckpt = str(root / "pretrain.pth")
    save_checkpoint({"model": model.state_dict(), "model_config": model.config, "epoch": 1}, ckpt)
    return {"train": csvs["train"], "val": csvs["val"], "ckpt": ckpt}


def _data_args(data: dict[str, str], out: Path) -> list[str]:
    return ["--train_csv", data["train"], "--val_csv", data["val"], "--output_dir", str(out), *TINY]


def _read(out: Path, name: str = "metrics.json") -> dict:
    return json.loads((out / name).read_text())


def test_eval_linear_cached_probe_knn_retrieval(data: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "linear"
    returned = eval_linear.main(["--pretrained", data["ckpt"], "--epochs", "4", "--schedule", "3",
                                 "--eval_freq", "2", "--knn", "3", "--retrieval",
                                 *_data_args(data, out)])
    m = _read(out)
    assert m == json.loads(json.dumps(returned))
    assert m["init"] == "pretrained" and m["pretrained"] == data["ckpt"]
    assert (m["net"], m["width"], m["mode"]) == ("r3d_18", 0.125, "cached")
    assert (m["num_train"], m["num_val"], m["num_classes"]) == (12, 4, 2)
    # 4 test videos, 2 clips each: accuracies are multiples of 25 (video) / 12.5 (clip)
    assert m["top1"] in (0.0, 25.0, 50.0, 75.0, 100.0) and m["top5"] == 100.0
    assert m["clip_top1"] % 12.5 == 0 and m["knn_top1"] % 25 == 0 and m["knn_k"] == 3
    recalls = [m["retrieval"][f"R@{k}"] for k in (1, 5, 10, 20, 50)]
    assert recalls == sorted(recalls) and recalls[-1] == 100.0  # gallery holds both classes
    assert m["backbone_unchanged"] is True
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    assert [r["lr"] for r in log] == pytest.approx([1.0, 1.0, 1.0, 0.1])
    assert "val_top1" in log[1] and "val_top1" not in log[0]
    assert _read(out, "args.json")["optim"] == "sgd"
    assert any((out / "tb").iterdir())


def test_eval_linear_end_to_end_random_init(data: dict[str, str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "linear_random"
    eval_linear.main(["--net", "r3d_18", "--width", "0.125", "--no-cache_features", "--epochs", "1",
                      "--retrieval", "--retrieval_center", "each", *_data_args(data, out)])
    assert "RANDOMLY INITIALISED" in capsys.readouterr().out
    m = _read(out)
    assert m["init"] == "random" and m["pretrained"] is None and m["mode"] == "end_to_end"
    assert {"top1", "top5", "clip_top1", "retrieval"} <= m.keys() and "knn_top1" not in m
    assert _read(out, "args.json")["optim"] == "adam"


def test_eval_linear_refuses_nothing_to_do(data: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        eval_linear.main(["--epochs", "0", *_data_args(data, tmp_path / "x")])


def test_end_to_end_probe_leaves_bn_backbone_bit_identical() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("r3d_18", 0.125)
    head = ClassifierHead(backbone.out_channels["high"], 3, final_bn=True, normalize=True)
    model = VideoClassifier(backbone, head, frozen=True)
    clips = torch.randn(8, 3, 8, 32, 32) * 2 + 1  # far from BN's initial statistics
    loader = make_loader(TensorDataset(clips, torch.randint(0, 3, (8,))), 4, workers=0,
                         device=torch.device("cpu"), order="epoch")
    snapshot = state_snapshot(backbone)
    fc_before = head.fc.weight.detach().clone()
    optimizer = build_optimizer([{"params": head.parameters()}], "adam", 1e-2, 0.0)
    train_probe_end_to_end(model, loader, optimizer, epochs=2, lr=1e-2, schedule=[1],
                                       device=torch.device("cpu"))
    assert_state_unchanged(backbone, snapshot)  # bit for bit, BN running statistics included
    assert not torch.equal(head.fc.weight, fc_before)  # ... while the head did learn
    assert int(head.bn.num_batches_tracked) == 4 and not backbone.training

    leaky = build_optimizer([{"params": model.parameters()}], "adam", 1e-2, 0.0)
    with pytest.raises(RuntimeError, match="only the head"):
        train_probe_end_to_end(model, loader, leaky, epochs=1, lr=1e-2, schedule=[],
                                           device=torch.device("cpu"))
    # control: the same forward pass with the backbone in train mode would move BN statistics
    backbone.train()
    with torch.no_grad():
        backbone(clips[:4])
    with pytest.raises(RuntimeError, match="running_mean"):
        assert_state_unchanged(backbone, snapshot)


def test_finetune_runs_resumes_and_its_checkpoint_probes(data: dict[str, str], tmp_path: Path) -> None:
    common = ["--pretrained", data["ckpt"], "--schedule", "1", "--eval_freq", "1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    finetune.main([*common, "--epochs", "2", *_data_args(data, straight)])
    m = _read(straight)
    assert m["init"] == "pretrained" and (m["num_train"], m["num_val"]) == (12, 4)
    assert {"top1", "top5", "clip_top1"} <= m.keys() and m["dropout"] == 0.5
    assert m["top1"] % 25 == 0 and m["top5"] == 100.0
    assert {p.name for p in straight.glob("checkpoint_*.pth")} == {"checkpoint_last.pth", "checkpoint_0002.pth"}
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == pytest.approx([1e-3, 1e-4]) and "val_top1" in log[0]

    # one epoch, then --resume auto to two: the same weights as the straight run
    common[-1] = "0"  # --eval_freq 0: evaluation draws no randomness, skip it here
    finetune.main([*common, "--epochs", "1", *_data_args(data, split)])
    finetune.main([*common, "--epochs", "2", *_data_args(data, split)])
    a = load_checkpoint(straight / "checkpoint_last.pth")
    b = load_checkpoint(split / "checkpoint_last.pth")
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _read(split)["top1"] == m["top1"]
    assert [json.loads(line)["epoch"] for line in (split / "log.jsonl").read_text().splitlines()] == [0, 1]
    # the backbone moved (it is fine-tuned), and the fine-tuned checkpoint is a valid --pretrained
    start = load_checkpoint(data["ckpt"])["model"]
    assert not torch.equal(a["model"]["backbone.stem.0.weight"], start["backbone.stem.0.weight"])
    probe = tmp_path / "probe_of_finetuned"  # ... probed here with augmented cached features
    eval_linear.main(["--pretrained", str(straight / "checkpoint_last.pth"), "--epochs", "2",
                      "--aug_epochs", "2", "--knn", "1", *_data_args(data, probe)])
    p = _read(probe)
    assert p["init"] == "pretrained" and p["mode"] == "cached" and p["backbone_unchanged"]
    assert {"top1", "knn_top1"} <= p.keys() and "retrieval" not in p


def test_finetune_resume_checks_the_flags_against_the_checkpoint(data: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "ft"
    common = ["--pretrained", data["ckpt"], "--eval_freq", "0", *_data_args(data, out)]
    finetune.main([*common, "--epochs", "2"])
    for flags, needle in ((["--epochs", "1"], "2 epochs done, more than --epochs 1"),
                          (["--epochs", "3", "--final_bn"], "trained with final_bn=False")):
        with pytest.raises(SystemExit) as exc:
            finetune.main([*common, *flags])
        assert needle in str(exc.value.code)
    # a changed --backbone_lr_scale takes effect on resume (the checkpoint's optimizer had 0.1)
    finetune.main([*common, "--epochs", "3", "--backbone_lr_scale", "0.5"])
    groups = load_checkpoint(out / "checkpoint_last.pth")["optimizer"]["param_groups"]
    assert [g["lr_scale"] for g in groups] == [0.5, 1.0]
    assert groups[0]["lr"] == pytest.approx(0.5 * groups[1]["lr"])
