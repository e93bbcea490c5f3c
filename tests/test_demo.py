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
