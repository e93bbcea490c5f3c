"""Smoke tests of the ``make bench`` scripts at tiny sizes: each runs, prints its table, returns
positive figures, and its references are numerically comparable to the code they measure.

Timings are not asserted (a benchmark prints a ratio; a test must not depend on machine load).
"""
from __future__ import annotations

import math

import pytest
import torch

from scripts import bench_loader, bench_objective, bench_step


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_objective_quick(capsys: pytest.CaptureFixture[str]) -> None:
    out = bench_objective.main(["--quick", "--repeats", "1"])
    assert out["vectorised_s"] > 0 and out["loop_s"] > 0 and out["ratio"] > 0
    assert out["loss_diff"] < 1e-4 and out["grad_diff"] < 1e-4
    assert "speed-up" in capsys.readouterr().out


def test_bench_loader_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    out = bench_loader.main(["--quick", "--samples", "2", "--repeats", "1", "--seq", "4",
                             "--img_dim", "32", "--num_videos", "2", "--frames", "12",
                             "--frame_size", "48x64"])
    for key in ("ours_sps", "baseline_sps", "decode_sps", "ratio_vs_baseline",
                "fraction_of_decode"):
        assert out[key] > 0 and math.isfinite(out[key]), key
    # Same window drawn by PretrainDataset and the references; same JPEG decoder maths.
    assert out["window_match"] == 1.0 and out["shape_match"] == 1.0
    assert out["decode_max_diff"] <= 2
    # With the colour ops off and the full-frame box the two pipelines differ only by resampling
    # (the baseline goes through 200x150 first): small in normalised units (1 grey level ~ 0.017).
    assert out["identity_mean_diff"] < 0.1
    # Both produce ImageNet-normalised clips of the same statistics' order.
    assert abs(out["mean_ours"] - out["mean_base"]) < 0.5
    assert 0.3 < out["std_ours"] / out["std_base"] < 3
    printed = capsys.readouterr().out
    assert "decode-only" in printed and "targets, ours:" in printed


def test_bench_step_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--quick", "--steps", "1", "--warmup", "0", "--seq", "4", "--img_dim", "16",
              "--batch", "2", "--cluster", "16", "--queue_size", "16", "--channel", "16",
              "--threads", "1"]
    res = bench_step.main(common)
    assert list(res) == ["fp32"]
    r = res["fp32"]
    assert r["clips_per_s"] > 0 and r["step_s"] > 0 and r["trivial_s"] > 0
    assert math.isfinite(r["first_loss"]) and r["tensor_estimate_bytes"] > 0
    assert -1 < r["objective_fraction"] < 1
    # The CUDA-only variants: skipped on CPU with a message (channels-last runs on CPU too), or
    # forced to test their code paths.
    res = bench_step.main(common + ["--compare", "--variants", "bf16,cl"])
    assert list(res) == ["fp32", "channels_last_3d"] and "skipping bf16 autocast" in capsys.readouterr().out
    # seq 8: torch 2.14.1's oneDNN bf16 conv3d backward on CPU corrupts the heap at T = 4.
    forced = common + ["--compare", "--variants", "bf16,cl", "--force_variants", "--seq", "8"]
    res = bench_step.main(forced)
    assert list(res) == ["fp32", "bf16 autocast", "channels_last_3d"]
    ref = res["fp32"]["first_loss"]
    # Same initial weights, inputs and queue: channels-last changes only the memory layout;
    # bf16 autocast changes the rounding.
    assert abs(res["channels_last_3d"]["first_loss"] - ref) < 1e-3 * abs(ref)
    assert abs(res["bf16 autocast"]["first_loss"] - ref) < 0.05 * abs(ref)
    assert "vs fp32" in capsys.readouterr().out
