"""scripts/demo.py: the ablation flags are real train.py flags, and a tiny end-to-end run writes a
report whose numbers are the ones in the stages' metrics.json files."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

import train
from scripts import demo


@pytest.mark.parametrize("variant", list(demo.VARIANTS))
def test_each_ablation_is_a_train_py_command_line(tmp_path, variant):
    argv = demo.pretrain_argv(demo.SETTINGS["cpu"], "pretrain.csv", tmp_path, demo.VARIANTS[variant])
    args = train.build_parser().parse_args(argv[1:])
    temporal = [args.w_mot_low, args.w_mot_mid, args.w_lg_low, args.w_lg_mid, args.w_lg_high]
    assert (min(temporal) > 0) == (variant in ("full", "no_graph"))
    assert (args.w_graph > 0) == (variant in ("full", "no_temporal"))
    assert (args.w_proto > 0) == (variant != "instance_only")
    assert args.w_ins == 1.0 and args.epoch == demo.SETTINGS["cpu"].epochs


def test_no_graph_continues_from_the_full_run_at_the_split_epoch(tmp_path):
    setting = demo.SETTINGS["cpu"]
    dirs = {v: tmp_path / v for v in demo.VARIANTS}
    plan = demo.pretrain_plan(setting, "pretrain.csv", dirs, demo.VARIANTS)
    assert list(plan) == list(demo.VARIANTS)  # the full run comes before the run that uses it
    parsed = {v: train.build_parser().parse_args(argv[1:]) for v, (_, argv, _) in plan.items()}
    assert 0 < setting.split < setting.epochs and parsed["full"].save_every == setting.split
    split_checkpoint = dirs["full"] / f"checkpoint_{setting.split:04d}.pth"
    assert parsed["no_graph"].resume == str(split_checkpoint) and plan["no_graph"][2] == split_checkpoint
    assert {parsed[v].resume for v in ("full", "no_temporal", "instance_only")} == {"auto"}
    # without the full run, or with the graph from epoch 0, no_graph starts from scratch
    alone = demo.pretrain_plan(setting, "pretrain.csv", dirs, {"no_graph": demo.VARIANTS["no_graph"]})
    early = demo.pretrain_plan(replace(setting, split=0), "pretrain.csv", dirs, demo.VARIANTS)
    for plan in (alone, early):
        assert train.build_parser().parse_args(plan["no_graph"][1][1:]).resume == "auto"


def test_tiny_demo_end_to_end(tmp_path, monkeypatch):
    tiny = replace(demo.SETTINGS["cpu"], width=0.125, seq=4, img_dim=16, channel=16, cluster=8,
                   batch=4, epochs=1, split=0, lr_decay=1, num_videos=16, frames=12, size=16,
                   workers=0, num_clips=1, probe_epochs=2, order_epochs=1)
    monkeypatch.setitem(demo.SETTINGS, "cpu", tiny)
    out = tmp_path / "demo"
    summary = demo.main(["--output_dir", str(out), "--data_dir", str(tmp_path / "data"),
                         "--setting", "cpu", "--no_ablations"])

    linear = {init: json.loads((out / f"linear_{init}" / "metrics.json").read_text())
              for init in ("random", "full")}
    assert linear["random"]["init"] == "random" and linear["full"]["init"] == "pretrained"
    assert summary["linear_gain_full_vs_random"] == pytest.approx(
        linear["full"]["top1"] - linear["random"]["top1"])
    assert json.loads((out / "metrics.json").read_text())["rows"]["full"]["linear_top1"] == \
        pytest.approx(linear["full"]["top1"])
    report = (out / "report.md").read_text()
    assert f"| full | {linear['full']['top1']:.1f} |" in report
    assert "python train.py --csv_file" in report  # the commands behind the table
    assert (out / "curves.png").stat().st_size > 0
    assert any((out / "temporal_full").rglob("*.png"))  # CAM images

    # the temporal-order probe runs on the videos of one class, for every row of the table
    val = (tmp_path / "data" / "val.csv").read_text().splitlines()
    order_val = (out / "order_data" / f"val_class{tiny.order_class}.csv").read_text().splitlines()
    assert order_val == [row for row in val if row.endswith(f",{tiny.order_class}")] and order_val
    for init in ("random", "full"):
        order = json.loads((out / f"temporal_{init}" / "metrics.json").read_text())
        assert order["num_val"] == len(order_val)
        assert summary["rows"][init]["temporal_order_acc"] == pytest.approx(order["temporal_order_acc"])
    assert "temporal order (`up` videos)" in report


def write_metrics_argv(out, value: int) -> list[str]:
    """A stage command that writes ``{"value": value}`` to ``out/metrics.json``."""
    code = "import json, sys; json.dump({'value': int(sys.argv[2])}, open(sys.argv[1] + '/metrics.json', 'w'))"
    return ["-c", code, str(out), str(value)]


def test_stage_reuse_follows_its_command(tmp_path, monkeypatch):
    out, log = tmp_path / "stage", []
    assert demo.run_stage("s", write_metrics_argv(out, 1), out, False, log) == {"value": 1}
    marker = out / "checkpoint_last.pth"
    marker.write_text("a file the stage left")

    # same command, finished: reused as it is
    assert demo.run_stage("s", write_metrics_argv(out, 1), out, False, log) == {"value": 1}
    assert marker.exists()
    # same command, interrupted (no metrics.json): runs again in place, keeping what it left
    (out / "metrics.json").unlink()
    assert demo.run_stage("s", write_metrics_argv(out, 1), out, False, log) == {"value": 1}
    assert marker.exists()
    # another command: starts from an empty folder
    assert demo.run_stage("s", write_metrics_argv(out, 2), out, False, log) == {"value": 2}
    assert not marker.exists()
    # --fresh: starts from an empty folder too
    marker.write_text("again")
    assert demo.run_stage("s", write_metrics_argv(out, 2), out, True, log) == {"value": 2}
    assert not marker.exists()
    assert len(log) == 5

    # the same command on an input file whose bytes changed (a recomputed checkpoint): recomputed
    checkpoint = tmp_path / "checkpoint_last.pth"
    checkpoint.write_bytes(b"weights 1")
    assert demo.run_stage("s", write_metrics_argv(out, 3), out, False, log, [checkpoint]) == {"value": 3}
    marker.write_text("left")
    checkpoint.write_bytes(b"weights 1")  # rewritten with the same bytes: reused
    assert demo.run_stage("s", write_metrics_argv(out, 3), out, False, log, [checkpoint]) == {"value": 3}
    assert marker.exists()
    checkpoint.write_bytes(b"weights 2")
    assert demo.run_stage("s", write_metrics_argv(out, 3), out, False, log, [checkpoint]) == {"value": 3}
    assert not marker.exists()

    # the same command and inputs run by other code (an edited model, a git pull): recomputed
    marker.write_text("left")
    assert demo.run_stage("s", write_metrics_argv(out, 3), out, False, log, [checkpoint]) == {"value": 3}
    assert marker.exists()
    monkeypatch.setattr(demo, "code_digest", lambda: "other code")
    assert demo.run_stage("s", write_metrics_argv(out, 3), out, False, log, [checkpoint]) == {"value": 3}
    assert not marker.exists()


def test_code_digest_follows_the_code_a_stage_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "REPO", tmp_path)
    for name in ("train.py", "models/r3d.py", "tests/test_x.py", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    first = demo.code_digest()
    (tmp_path / "tests" / "test_x.py").write_text("x = 2\n")  # not code a stage runs
    (tmp_path / "README.md").write_text("y\n")
    assert demo.code_digest() == first
    (tmp_path / "models" / "r3d.py").write_text("x = 2\n")
    assert demo.code_digest() != first
    (tmp_path / "models" / "r3d.py").write_text("x = 1\n")
    assert demo.code_digest() == first
    (tmp_path / "train.py").write_text("x = 2\n")
    assert demo.code_digest() != first
