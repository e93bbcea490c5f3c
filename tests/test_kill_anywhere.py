"""Kill it anywhere, reuse a folder: every entry script, SIGKILLed as a real subprocess inside and
between its checkpoint and record writes (``tests/kill_runner.py``), then rerun with the same
command, ends with exactly the outputs of a straight run: the same files (no temp file left), every
``log.jsonl`` line once, ``metrics.json`` present and equal, the same checkpoint weights. Also: a
second run into a folder that a live run holds refuses, a killed run never leaves it locked, and a
rerun whose inputs changed refuses to continue the old run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import finetune
import train
from datasets.synthetic import make_synthetic
from pretrain_helpers import make_videos, tiny_argv
from utils.output_lock import LOCK_NAME, hold_output_dir

REPO = Path(__file__).resolve().parent.parent
TIMING = {"seconds", "clips_per_s", "videos_per_s", "data_wait_frac"}  # differ between any two runs
KILLED = -signal.SIGKILL


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    return {**clean, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


def run(argv: list[str], moment: str | None = None) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` (``argv``), or the same killed at ``moment`` (kill_runner.py)."""
    prefix = [str(REPO / "tests" / "kill_runner.py"), moment] if moment else []
    script = argv[0] if moment else str(REPO / argv[0])
    return subprocess.run([sys.executable, *prefix, script, *argv[1:]], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)


def outputs(out: Path) -> dict:
    """Everything a run leaves in ``out`` that two equal runs share: file names (TensorBoard's
    ``tb/`` and the lock aside), records without timings and with the folder's name replaced, the
    checkpoints' counters and weights."""
    def text(name: str) -> str:
        return (out / name).read_text().replace(str(out), "OUT")

    found: dict = {"files": sorted(p.name for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME)}
    if (out / "log.jsonl").exists():
        found["log"] = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                        for line in text("log.jsonl").splitlines()]
    for name in ("args.json", "metrics.json"):
        if (out / name).exists():
            found[name] = {k: v for k, v in json.loads(text(name)).items() if k not in TIMING}
    for path in sorted(out.glob("checkpoint_*.pth")):
        ckpt = torch.load(path, weights_only=True)
        found[path.name] = (ckpt["epoch"], ckpt["step"], {k: v.tolist() for k, v in ckpt["model"].items()})
    return found


def check_kills(argv_for, moments: list[str], tmp_path: Path) -> None:
    """A straight run, then for each moment a run killed there and rerun; all must agree. Two
    chains run at a time (one torch thread each)."""
    straight = tmp_path / "straight"
    done = run(argv_for(straight))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = outputs(straight)

    def chain(i_moment: tuple[int, str]) -> tuple[str, subprocess.CompletedProcess, subprocess.CompletedProcess, dict]:
        i, moment = i_moment
        out = tmp_path / f"killed_{i}"
        killed = run(argv_for(out), moment)
        rerun = run(argv_for(out))
        return moment, killed, rerun, outputs(out)

    with ThreadPoolExecutor(2) as pool:
        for moment, killed, rerun, found in pool.map(chain, enumerate(moments)):
            assert killed.returncode == KILLED, f"{moment}: the moment never came ({killed.stderr[-1500:]})"
            assert rerun.returncode == 0, f"{moment}: {rerun.stderr[-3000:]}"
            for key in expected.keys() | found.keys():
                assert found.get(key) == expected.get(key), f"killed {moment}, rerun: {key} differs"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_synthetic(tmp_path_factory.mktemp("labelled"), num_videos=16, frames=8, size=32,
                          num_classes=2, seed=0)


def test_train_py_killed_anywhere_reruns_to_the_straight_outputs(videos: Path, tmp_path: Path) -> None:
    def argv(out: Path) -> list[str]:
        return ["train.py", *tiny_argv(videos, out, "--epoch", "2", "--split", "1", "--save_every", "1",
                                       "--no_progress")]
    check_kills(argv, [
        "log:log.jsonl:2",                  # the last epoch logged, none of its checkpoints written
        "inside:checkpoint_0002.pth:1",     # inside the final numbered checkpoint
        "after:checkpoint_0001.pth:1",      # between a numbered checkpoint and checkpoint_last
        "after:checkpoint_last.pth:2",      # training complete, metrics.json not written
        "inside:metrics.json:1",
    ], tmp_path)


def test_train_py_killed_mid_epoch_with_workers_reruns_to_the_straight_outputs(videos: Path, tmp_path: Path) -> None:
    def argv(out: Path) -> list[str]:
        return ["train.py", *tiny_argv(videos, out, "--epoch", "2", "--split", "1", "--no_progress"),
                "--workers", "2"]
    check_kills(argv, [
        "step:optimizer:1",                 # the first step: DataLoader workers just started
        "step:optimizer:3",                 # mid-epoch, after epoch 0's checkpoint
    ], tmp_path)


EVAL_TINY = ["--seq", "8", "--img_dim", "32", "--num_clips", "2", "--batch_size", "4", "--workers", "0",
             "--device", "cpu", "--no_progress", "--net", "r3d_18", "--width", "0.125"]


def test_finetune_py_killed_anywhere_reruns_to_the_straight_outputs(labelled: dict[str, str], tmp_path: Path) -> None:
    def argv(out: Path) -> list[str]:
        return ["finetune.py", "--train_csv", labelled["train"], "--val_csv", labelled["val"],
                "--output_dir", str(out), "--epochs", "2", "--save_every", "1", *EVAL_TINY]
    check_kills(argv, [
        "after:checkpoint_last.pth:1",      # epoch 0 checkpointed: its log line must be there already
        "log:log.jsonl:2",
        "after:checkpoint_last.pth:2",      # training complete, metrics.json not written
        "inside:metrics.json:1",
    ], tmp_path)


@pytest.mark.parametrize("script", ["eval_linear.py", "visualization/main_temporal.py"])
def test_evaluation_rerun_with_other_flags_killed_leaves_no_stale_result(
        script: str, labelled: dict[str, str], tmp_path: Path) -> None:
    def argv(out: Path, epochs: str) -> list[str]:
        return [script, "--train_csv", labelled["train"], "--val_csv", labelled["val"],
                "--output_dir", str(out), "--epochs", epochs, "--lr", "0.1", *EVAL_TINY]

    straight = tmp_path / "straight"
    assert run(argv(straight, "2")).returncode == 0
    out = tmp_path / "reused"
    assert run(argv(out, "1")).returncode == 0  # an earlier run with other flags
    for moment in ("after:args.json:1", "inside:metrics.json:1"):
        assert run(argv(out, "2"), moment).returncode == KILLED
        assert not (out / "metrics.json").exists(), f"killed {moment}: the earlier run's metrics.json stands"
    assert run(argv(out, "2")).returncode == 0
    assert outputs(out) == outputs(straight)


def test_a_live_run_owns_its_folder_and_a_killed_one_releases_it(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with hold_output_dir(out):  # a run in flight (this process)
        with pytest.raises(SystemExit, match=r"is in use by another run \(host .*pid .*\); wait for it"):
            train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1", "--no_progress"))
    assert not (out / "args.json").exists()  # the refused run wrote nothing
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from utils.output_lock import hold_output_dir as h\nwith h(sys.argv[2]):\n"
                               " print('held', flush=True); time.sleep(60)", str(REPO), str(out)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(SystemExit, match="is in use by another run"):
        train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1", "--no_progress"))
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    time.sleep(0.1)
    assert train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1", "--no_progress"))["epochs_done"] == 1


def test_an_unwritable_output_dir_is_one_line(videos: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match=r"cannot write to --output_dir .*file/run"):
        train.main(tiny_argv(videos, blocker / "run", "--epoch", "1", "--split", "1"))


def test_a_rerun_with_other_inputs_refuses_to_continue_the_old_run(
        videos: Path, labelled: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "pre"
    train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1", "--no_progress"))
    args_before = (out / "args.json").read_text()
    other = tmp_path / "other.csv"
    other.write_text(videos.read_text())
    for folder in videos.parent.glob("video_*"):  # the same videos, listed by another CSV
        (tmp_path / folder.name).symlink_to(folder)
    with pytest.raises(SystemExit, match=r"belongs to a run with other inputs \(--csv_file .*other.csv"):
        train.main(tiny_argv(other, out, "--epoch", "2", "--split", "1", "--no_progress"))
    assert (out / "args.json").read_text() == args_before  # the old run's record stands

    ft = tmp_path / "ft"
    base = ["--train_csv", labelled["train"], "--val_csv", labelled["val"], "--output_dir", str(ft),
            "--epochs", "1", *EVAL_TINY]
    finetune.main([*base[:-4], "--pretrained", str(out / "checkpoint_last.pth")])
    metrics_before = (ft / "metrics.json").read_text()
    with pytest.raises(SystemExit, match=r"belongs to a run with other inputs \(--pretrained None.*another --output_dir"):
        finetune.main(base)  # the random-init baseline into the pretrained run's folder
    assert (ft / "metrics.json").read_text() == metrics_before


def test_a_test_split_that_overlaps_training_is_flagged(
        labelled: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import eval_linear
    same = ["--train_csv", labelled["train"], "--val_csv", labelled["train"], "--epochs", "0", "--knn", "2",
            *EVAL_TINY]
    metrics = eval_linear.main([*same, "--output_dir", str(tmp_path / "same")])
    rows = len(Path(labelled["train"]).read_text().splitlines())
    assert metrics["train_val_overlap"] == rows
    assert f"WARNING: {rows} of the {rows} videos of" in capsys.readouterr().out
    disjoint = eval_linear.main(["--train_csv", labelled["train"], "--val_csv", labelled["val"], "--epochs", "0",
                                 "--knn", "2", *EVAL_TINY, "--output_dir", str(tmp_path / "disjoint")])
    assert disjoint["train_val_overlap"] == 0 and "WARNING" not in capsys.readouterr().out
