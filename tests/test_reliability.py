"""What happens when things go wrong (issue 10): non-finite losses, SIGKILL at any moment,
corrupt checkpoints, a missing CSV, a failing DDP rank, torchrun restarts, corrupt frames met by
evaluation's DataLoader workers."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import eval_linear
import finetune
import train
from datasets.base import SkipCounting
from datasets.downstream import ClipDataset
from datasets.frames import frame_path
from utils.runtime import free_port
from losses.objective import MultiLevelObjective
from pretrain_helpers import make_videos, tiny_argv
from visualization import main_temporal

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return make_videos(tmp_path_factory.mktemp("videos"))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", **extra)
    return env


def wrapper_script(tmp_path: Path, condition: str) -> Path:
    """A train.py whose objective raises ``RuntimeError`` when ``condition`` (Python, with
    ``calls`` = forward calls so far in this process and ``epoch``) is true."""
    script = tmp_path / "faulty_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        import losses.objective as lo
        original = lo.MultiLevelObjective.forward
        calls = 0
        def forward(self, out, epoch):
            global calls
            calls += 1
            if {condition}:
                raise RuntimeError("injected failure")
            return original(self, out, epoch)
        lo.MultiLevelObjective.forward = forward
        import train
        train.main(sys.argv[1:])
    """))
    return script


# ------------------------------------------------------------------------------ non-finite loss
def nan_on(monkeypatch, bad_calls):
    original = MultiLevelObjective.forward
    calls = {"n": 0}

    def forward(self, out, epoch):
        calls["n"] += 1
        result = original(self, out, epoch)
        if bad_calls(calls["n"]):
            result.total = result.total * float("nan")
        return result

    monkeypatch.setattr(MultiLevelObjective, "forward", forward)
    return calls


def test_non_finite_step_is_skipped_and_counted(videos, tmp_path, monkeypatch):
    nan_on(monkeypatch, lambda n: n == 2)
    metrics = train.main(tiny_argv(videos, tmp_path / "run", "--epoch", "2", "--split", "1"))
    assert metrics["non_finite_steps"] == 1 and metrics["steps"] == 3  # 4 batches, 1 skipped
    assert metrics["loss"] == metrics["loss"]  # the epoch means exclude the bad step (no NaN)
    ckpt = torch.load(tmp_path / "run" / "checkpoint_last.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert torch.isfinite(ckpt["objective"]["queue"]["scores"]).all()  # NaN scores never queued
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["non_finite_steps"] for r in log] == [1, 0]


def test_a_nan_batch_leaves_no_trace_in_the_batchnorm_statistics(videos, tmp_path, monkeypatch):
    """A NaN input makes the forward pass write NaN running statistics; the skipped step restores
    them, so later checkpoints stay usable in eval mode."""
    from models.multilevel import MultiLevelModel

    original, calls = MultiLevelModel.forward, {"n": 0}

    def forward(self, clips, with_graph=False):
        calls["n"] += 1
        return original(self, clips * float("nan") if calls["n"] == 2 else clips, with_graph)

    monkeypatch.setattr(MultiLevelModel, "forward", forward)
    metrics = train.main(tiny_argv(videos, tmp_path / "run", "--epoch", "1", "--split", "1"))
    assert metrics["non_finite_steps"] == 1
    ckpt = torch.load(tmp_path / "run" / "checkpoint_last.pth", weights_only=True)
    running = {k: v for k, v in ckpt["model"].items() if "running_" in k}
    assert running and all(torch.isfinite(v).all() for v in running.values())


def test_too_many_non_finite_steps_stop_the_run_naming_the_last_checkpoint(videos, tmp_path, monkeypatch):
    nan_on(monkeypatch, lambda n: n >= 3)  # epoch 0 fine (2 steps), every step of epoch 1 NaN
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_argv(videos, out, "--epoch", "3", "--split", "3", "--max_bad_steps", "2"))
    msg = str(exc.value.code)
    assert "2 non-finite losses/gradients in a row" in msg and "diverged" in msg
    assert str(out / "checkpoint_last.pth") in msg
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["epoch"] == 1


# ----------------------------------------------------------------------------- user errors
def test_corrupt_checkpoint_gives_a_clear_error_naming_it(videos, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint_last.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1"))
    msg = str(exc.value.code)
    assert "cannot read checkpoint" in msg and str(out / "checkpoint_last.pth") in msg


def test_checkpoint_of_another_model_is_refused(videos, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1"))
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_argv(videos, tmp_path / "other", "--epoch", "2", "--split", "1", "--cluster", "8",
                             "--resume", str(out / "checkpoint_last.pth")))
    assert "does not match the flags" in str(exc.value.code) and "cluster" in str(exc.value.code)


def test_missing_csv_is_one_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--csv_file", str(tmp_path / "nowhere.csv"), "--output_dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere.csv: no such file" in err and "Traceback" not in err


def test_bad_csv_row_is_one_clear_message(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("video_a,40\nvideo_b,forty\n")
    with pytest.raises(SystemExit) as exc:
        train.main(tiny_argv(csv, tmp_path / "run", "--epoch", "1", "--split", "1"))
    assert "bad.csv, row 2" in str(exc.value.code)


# ----------------------------------------------------------------------------------- SIGKILL
def test_sigkill_then_resume_auto_loses_at_most_one_epoch(videos, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), *tiny_argv(videos, out, "--epoch", "3", "--split", "1")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while not (out / "checkpoint_last.pth").exists():
        assert proc.poll() is None, "training exited before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 90 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # whatever it is doing now, even writing the next checkpoint
    proc.wait(timeout=30)
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed_at = int(done.stdout.split("resumed from")[1].split("epoch ")[1].split(",")[0])
    assert resumed_at >= 1  # lost at most the epoch that was running
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_done"] == 3 and metrics["non_finite_steps"] == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert not list(out.glob(".tmp-*")) and torch.load(out / "checkpoint_last.pth", weights_only=True)["epoch"] == 3


# ------------------------------------------------------------------------------- failing rank
def test_failing_rank_makes_the_other_exit_without_hanging(videos, tmp_path):
    script = wrapper_script(tmp_path, "os.environ.get('RANK') == '1' and calls == 2")
    argv = tiny_argv(videos, tmp_path / "run", "--epoch", "2", "--split", "1", "--train_batch", "2",
                     "--dist_timeout", "20")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), *argv], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=subprocess_env(WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r),
                                                 LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    start = time.time()
    try:
        results = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert time.time() - start < 90
    assert [p.returncode for p in procs] == [1, 1]
    err0, err1 = results[0][1], results[1][1]
    assert "[rank 1/2] train.py: error: RuntimeError: injected failure" in err1
    assert "[rank 0/2] train.py: error: a collective failed" in err0 and "--resume auto" in err0


# --------------------------------------------------------------------------- torchrun restart
def test_torchrun_max_restarts_with_resume_auto_recovers(videos, tmp_path):
    # Rank 1 of 2 dies at its 6th step (epoch 1, after the checkpoint written inside the epoch
    # after step 5); torchrun restarts both workers, which resume from checkpoint_last.pth
    # (--resume auto is the default) at batch 1 of epoch 1 and finish.
    script = wrapper_script(tmp_path, "os.environ.get('TORCHELASTIC_RESTART_COUNT') == '0' and "
                                      "os.environ.get('RANK') == '1' and calls == 6")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", str(script),
           *tiny_argv(videos, out, "--epoch", "2", "--split", "1", "--train_batch", "1", "--checkpoint_steps", "1",
                      "--no_progress")]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "injected failure" in done.stderr
    assert "resumed from" in done.stdout and "epoch 1, batch 1 of the epoch, step 5" in done.stdout, done.stdout[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_done"] == 2 and metrics["world_size"] == 2
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1]


# ------------------------------------------------------------------ corrupt frames in evaluation
@pytest.fixture
def labelled_with_a_corrupt_video(make_frame_folder, write_video_csv) -> str:
    """A labelled CSV of 4 videos of 8 frames; the last one has an undecodable frame, which every
    8-frame clip reads."""
    folders = {name: make_frame_folder(name, num_frames=8, height=32, width=32)
               for name in ("a", "b", "c", "bad")}
    with open(frame_path(folders["bad"], 3), "wb") as handle:
        handle.write(b"\xff\xd8 not a jpeg")
    return write_video_csv("labelled.csv", [("a", 8, 0), ("b", 8, 1), ("c", 8, 0), ("bad", 8, 1)])


def test_skip_counting_sees_through_a_subset_and_survives_pickling(labelled_with_a_corrupt_video):
    dataset = ClipDataset(labelled_with_a_corrupt_video, seq=8, img_dim=16, train=False, num_clips=1)
    # a DDP test shard, sent to a worker the way a spawned worker gets it
    shard = pickle.loads(pickle.dumps(SkipCounting(Subset(dataset, [1, 3]))))
    assert shard[0][1] == 0
    with pytest.warns(RuntimeWarning, match="bad/image_00004.jpg"):
        (clips, label), skipped = shard[1]  # the next video (row 1, label 0) stands in
    assert skipped == 1 and label == 0 and clips.shape == (1, 3, 8, 16, 16)
    assert SkipCounting(TensorDataset(torch.zeros(2)))[1][1] == 0  # no counter: nothing skipped


def test_evaluation_reports_videos_skipped_in_dataloader_workers(labelled_with_a_corrupt_video, tmp_path):
    # With --workers 2 the datasets' own counters stay 0 in this process: the counts must come
    # back with the batches. Each pass over the CSV meets the corrupt video exactly once.
    csv = labelled_with_a_corrupt_video
    common = ["--train_csv", csv, "--val_csv", csv, "--net", "r3d_18", "--width", "0.125", "--seq", "8",
              "--img_dim", "16", "--num_clips", "1", "--batch_size", "2", "--workers", "2",
              "--device", "cpu", "--no_progress", "--epochs", "1"]
    linear = eval_linear.main([*common, "--eval_freq", "0", "--output_dir", str(tmp_path / "linear")])
    tuned = finetune.main([*common, "--eval_freq", "0", "--output_dir", str(tmp_path / "finetune")])
    order = main_temporal.main([*common, "--num_vis", "0", "--output_dir", str(tmp_path / "temporal")])
    for out, returned in ((tmp_path / "linear", linear), (tmp_path / "finetune", tuned),
                          (tmp_path / "temporal", order)):
        m = json.loads((out / "metrics.json").read_text())
        assert m == json.loads(json.dumps(returned))
        # one pass over the train split (test-style features / one epoch) and one test pass
        assert (m["skipped_videos"], m["skipped_videos_train"], m["skipped_videos_val"]) == (2, 1, 1)
    log = [json.loads(line) for line in (tmp_path / "finetune" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_videos"] for r in log] == [1]
