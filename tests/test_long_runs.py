"""Long runs (docs/pretraining.md "Long runs"): checkpoints inside an epoch, preemption, several
nodes, a hanging rank, the checkpoint-keeping policy.

A run killed (SIGKILL) at a random step inside an epoch, or stopped there by SIGTERM/SIGUSR1,
and rerun with the same command, ends with exactly the files, ``log.jsonl`` figures and weights
of a straight run, with ``--workers 0`` and ``--workers 2`` (the items' random draws do not depend
on the workers, ``engine/loader.py``). Two ``torchrun`` "nodes" with batch b compute what one
process with batch 2b computes.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import train
from datasets.pretrain import PretrainDataset
from datasets.synthetic import make_synthetic
from engine.loader import EpochSampler, make_loader, start_epoch
from engine.preemption import EXIT_REQUEUE
from pretrain_helpers import make_videos, tiny_argv
from test_kill_anywhere import EVAL_TINY, KILLED, env, outputs, run
from utils.runtime import free_port

REPO = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 6  # 12 videos, batch 2


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_videos(tmp_path_factory.mktemp("videos"), n_videos=12)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_synthetic(tmp_path_factory.mktemp("labelled"), num_videos=16, frames=8, size=32,
                          num_classes=2, seed=0)


def pretrain_argv(videos: Path, out: Path, *extra: str) -> list[str]:
    return ["train.py", *tiny_argv(videos, out, "--epoch", "2", "--split", "1", "--train_batch", "2",
                                   "--no_progress", *extra)]


def mid_epoch_step(rng: random.Random, epochs: int = 2) -> int:
    """A step N such that the checkpoint after step N - 1 lies inside an epoch."""
    return rng.choice([n for n in range(2, epochs * STEPS_PER_EPOCH) if (n - 1) % STEPS_PER_EPOCH])


def same_outputs(found: dict, expected: dict, what: str) -> None:
    """``outputs()`` equal, ``args.json`` aside (it records ``--workers``)."""
    for key in (expected.keys() | found.keys()) - {"args.json"}:
        assert found.get(key) == expected.get(key), f"{what}: {key} differs"


# ------------------------------------------------------------------------- the epoch's order
def test_epoch_sampler_starts_anywhere_and_seeds_items_by_their_global_position():
    data = list(range(20))
    one = EpochSampler(data, num_replicas=1, rank=0, seed=3)
    one.set_position(epoch=5)
    full = list(one)
    one.set_position(epoch=5, start=7)
    assert list(one) == full[7:] and len(one) == 13
    two = [EpochSampler(data, num_replicas=2, rank=r, seed=3) for r in range(2)]
    for sampler in two:
        sampler.set_position(epoch=5)
    # global position p*2 + r of two ranks = position p*2 + r of one process: same video, same seed
    interleaved = [item for pair in zip(*map(list, two)) for item in pair]
    assert interleaved == full
    one.set_position(epoch=6)
    assert [i for i, _ in one] != [i for i, _ in full] and len({s for _, s in full}) == 20
    with pytest.raises(ValueError, match="outside"):
        one.set_position(epoch=6, start=21)


def test_batches_do_not_depend_on_the_workers_or_on_where_the_epoch_starts(videos):
    dataset = PretrainDataset(str(videos), seq=8, sample=2, img_dim=32)
    batches = {}
    for workers, first in ((0, 0), (2, 0), (2, 3), (0, 4)):
        loader = make_loader(dataset, 2, workers=workers, device=torch.device("cpu"), order="epoch", seed=1)
        start_epoch(loader, 1, 0, epoch=2, first_batch=first)
        batches[workers, first] = [clips for clips, _ in loader]
    straight = batches[0, 0]
    assert len(straight) == STEPS_PER_EPOCH
    for (workers, first), got in batches.items():
        assert len(got) == STEPS_PER_EPOCH - first
        assert all(torch.equal(a, b) for a, b in zip(got, straight[first:])), (workers, first)


# ---------------------------------------------------------------- SIGKILL at a random step
def test_train_py_killed_at_a_random_step_inside_an_epoch_resumes_to_the_straight_run(videos, tmp_path):
    rng = random.Random()
    straight = tmp_path / "straight"
    done = run(pretrain_argv(videos, straight, "--checkpoint_steps", "1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint inside epoch 1: batch 3, step 9" in done.stdout
    expected = outputs(straight)
    for workers in ("0", "2"):
        step = mid_epoch_step(rng)
        out = tmp_path / f"killed_w{workers}"
        argv = pretrain_argv(videos, out, "--checkpoint_steps", "1", "--workers", workers)
        killed = run(argv, f"step:optimizer:{step}")
        assert killed.returncode == KILLED, killed.stderr[-2000:]
        rerun = run(argv)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        batch = (step - 1) % STEPS_PER_EPOCH
        assert f"batch {batch} of the epoch, step {step - 1}" in rerun.stdout, (step, rerun.stdout[:2000])
        same_outputs(outputs(out), expected, f"--workers {workers}, killed after step {step}")


def test_finetune_py_killed_inside_an_epoch_resumes_to_the_straight_run(labelled, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["finetune.py", "--train_csv", labelled["train"], "--val_csv", labelled["val"], "--output_dir",
                str(out), "--epochs", "2", "--checkpoint_steps", "1", "--dropout", "0.5", *EVAL_TINY,
                "--batch_size", "2", "--workers", "2"]
    straight = run(argv(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    steps = json.loads((tmp_path / "straight" / "log.jsonl").read_text().splitlines()[0])["step"]
    step = random.Random().choice([n for n in range(2, 2 * steps) if (n - 1) % steps])
    killed = run(argv(tmp_path / "killed"), f"step:optimizer:{step}")
    assert killed.returncode == KILLED, killed.stderr[-2000:]
    rerun = run(argv(tmp_path / "killed"))
    assert rerun.returncode == 0 and "batches of epoch" in rerun.stdout, rerun.stderr[-3000:]
    same_outputs(outputs(tmp_path / "killed"), outputs(tmp_path / "straight"), f"killed after step {step}")


# ------------------------------------------------------------------------------- preemption
def test_a_preemption_signal_checkpoints_exits_75_and_the_rerun_equals_a_straight_run(videos, labelled, tmp_path):
    """SIGTERM to train.py (workers 2) and SIGUSR1 to finetune.py, each after a step inside an
    epoch: exit status 75, a checkpoint with the epoch's position; a rerun with another batch is
    refused in one line, the same command ends with the straight run's outputs."""
    out = tmp_path / "train"
    argv = pretrain_argv(videos, out, "--workers", "2")
    stopped = run(argv, "signal:SIGTERM:8")
    assert stopped.returncode == EXIT_REQUEUE, stopped.stderr[-2000:]
    # the signal arrives inside step 8, after that step's collective: the ranks agree in step 9's
    assert "preempted by SIGTERM at epoch 1, batch 3 of 6, step 9" in stopped.stderr
    assert "exit status 75 (requeue me)" in stopped.stderr
    ckpt = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["epoch_progress"]["batches"]) == (1, 9, 3)
    other = run([*argv, "--train_batch", "3"])
    assert other.returncode == 1 and "written inside epoch 1 by 1 process(es) with batch 2" in other.stderr
    assert other.stderr.count("\n") <= 2, other.stderr
    assert run(argv).returncode == 0
    straight = run(pretrain_argv(videos, tmp_path / "train_straight"))
    assert straight.returncode == 0
    same_outputs(outputs(out), outputs(tmp_path / "train_straight"), "train.py after SIGTERM")

    def finetune_argv(folder: Path) -> list[str]:
        return ["finetune.py", "--train_csv", labelled["train"], "--val_csv", labelled["val"], "--output_dir",
                str(folder), "--epochs", "2", *EVAL_TINY, "--batch_size", "2"]
    stopped = run(finetune_argv(tmp_path / "ft"), "signal:SIGUSR1:3")
    assert stopped.returncode == EXIT_REQUEUE and "preempted by SIGUSR1" in stopped.stderr, stopped.stderr[-2000:]
    assert run(finetune_argv(tmp_path / "ft")).returncode == 0
    assert run(finetune_argv(tmp_path / "ft_straight")).returncode == 0
    same_outputs(outputs(tmp_path / "ft"), outputs(tmp_path / "ft_straight"), "finetune.py after SIGUSR1")


def test_sigterm_to_the_launcher_of_two_processes_stops_both_and_the_rerun_matches(videos, tmp_path):
    """A scheduler's signal reaches the parent of ``--multiprocessing-distributed``: it passes it
    on, both ranks finish their step, rank 0 writes the checkpoint, all exit 75."""
    def argv(out: Path) -> list[str]:
        return [str(REPO / "train.py"), *tiny_argv(videos, out, "--epoch", "3", "--split", "1", "--train_batch", "1",
                                                   "--no_progress", "--multiprocessing-distributed", "--nproc", "2")]
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, *argv(out)], cwd=REPO, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_REQUEUE, stderr[-3000:]
    assert "[rank 0/2] train.py: preempted by SIGTERM" in stderr and "[rank 1/2] train.py: preempted" in stderr
    assert torch.load(out / "checkpoint_last.pth", weights_only=True).get("epoch_progress"), stdout[-2000:]
    rerun = subprocess.run([sys.executable, *argv(out)], cwd=REPO, env=env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    straight = subprocess.run([sys.executable, *argv(tmp_path / "straight")], cwd=REPO, env=env(),
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    same_outputs(outputs(out), outputs(tmp_path / "straight"), "two processes after SIGTERM")


# ------------------------------------------------------------------------------- many nodes
def test_two_torchrun_nodes_compute_what_one_process_with_twice_the_batch_computes(videos, tmp_path):
    """Two torchrun agents ("nodes", one process each, c10d rendezvous on 127.0.0.1, gloo) with
    batch 2 against one process with batch 4, over 3 epochs with the score queue and the graph.
    The lr is small so that Adam, whose first steps move every weight by about lr whatever the
    size of its gradient, does not turn float rounding into different weights: every loss term
    then agrees to 2e-5 (at lr 1e-3 they drift apart by about 1e-3 after a few steps)."""
    flags = ("--epoch", "3", "--split", "1", "--lr", "1e-6", "--no_progress")
    port = str(free_port())
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
         str(REPO / "train.py"), *tiny_argv(videos, tmp_path / "two", *flags, "--train_batch", "2")],
        cwd=REPO, env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    one = run(["train.py", *tiny_argv(videos, tmp_path / "one", *flags, "--train_batch", "4")])
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in results]
    assert one.returncode == 0, one.stderr[-2000:]
    logs = [[json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("one", "two")]
    assert len(logs[0]) == len(logs[1]) == 3
    for single, pair in zip(*logs):
        assert single["step"] == pair["step"] and single["distinct_pseudo_labels"] == pair["distinct_pseudo_labels"]
        for key, value in single.items():
            if key.startswith(("loss", "ins", "mot", "lg", "proto", "graph")):
                assert pair[key] == pytest.approx(value, rel=2e-5, abs=1e-6), (single["epoch"], key)


def test_a_hanging_rank_makes_the_other_fail_with_a_clear_message_within_the_timeout(videos, tmp_path):
    script = tmp_path / "hanging_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        import losses.objective as lo
        original = lo.MultiLevelObjective.forward
        calls = 0
        def forward(self, out, epoch):
            global calls
            calls += 1
            if os.environ.get("RANK") == "1" and calls == 2:
                time.sleep(3600)
            return original(self, out, epoch)
        lo.MultiLevelObjective.forward = forward
        import train
        train.main(sys.argv[1:])
    """))
    argv = tiny_argv(videos, tmp_path / "run", "--epoch", "2", "--split", "1", "--train_batch", "2",
                     "--dist_timeout", "10", "--no_progress")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), *argv], cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env={**env(), "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r),
                                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(2)]
    start = time.time()
    try:
        _, err0 = procs[0].communicate(timeout=120)
        waited = time.time() - start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert procs[0].returncode == 1 and waited < 120
    assert "[rank 0/2] train.py: error: a collective failed" in err0 and "--resume auto" in err0, err0[-3000:]


# ----------------------------------------------------------------------- checkpoints on disk
def test_keep_checkpoints_keeps_the_newest_numbered_files(videos, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_argv(videos, out, "--epoch", "4", "--split", "1", "--save_every", "1", "--keep_checkpoints", "2",
                         "--no_progress"))
    assert sorted(p.name for p in out.glob("checkpoint_*.pth")) == [
        "checkpoint_0003.pth", "checkpoint_0004.pth", "checkpoint_last.pth"]


def test_checkpoint_minutes_writes_checkpoints_inside_epochs(videos, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(tiny_argv(videos, out, "--epoch", "1", "--split", "1", "--train_batch", "2",
                         "--checkpoint_minutes", "1e-9", "--no_progress"))
    printed = capsys.readouterr().out
    assert printed.count("checkpoint inside epoch 0") == STEPS_PER_EPOCH - 1  # not after the last batch
    assert "checkpoint inside epoch 0: batch 5, step 5, written in" in printed
    assert "epoch_progress" not in torch.load(out / "checkpoint_last.pth", weights_only=True)


@pytest.mark.parametrize("flags, message", [
    (["--checkpoint_minutes", "-1"], "--checkpoint_minutes must be a finite number >= 0"),
    (["--checkpoint_minutes", "nan"], "--checkpoint_minutes must be a finite number >= 0"),
    (["--checkpoint_steps", "-2"], "--checkpoint_steps"),
    (["--keep_checkpoints", "-1"], "--keep_checkpoints"),
])
def test_long_run_flags_are_checked(flags, message, videos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(tiny_argv(videos, tmp_path / "run", *flags))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_dataloader_workers_leave_preemption_signals_to_their_process():
    """A worker ignores SIGUSR1 and survives a SIGTERM for the grace time (its process finishes
    the step meanwhile), then exits with status 0 (which the DataLoader does not count as a
    failure)."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(REPO)!r})
        import engine.preemption as preemption
        from engine.loader import _init_worker
        preemption.WORKER_GRACE_S = 1.0
        _init_worker(0)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        print("alive after both", flush=True)
        time.sleep(30)
        print("still alive")
    """)
    start = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60)
    assert done.returncode == 0 and done.stdout.split("\n")[0] == "alive after both", done.stderr
    assert "still alive" not in done.stdout and time.time() - start < 20


def test_the_slurm_script_checkpoints_and_requeues_itself_on_its_time_limit_notice(videos, tmp_path):
    """scripts/slurm/pretrain_k400.sh with stand-ins for srun, scancel and scontrol: SIGUSR1 to
    the batch script (what ``--signal=B:USR1@180`` sends) ends in a checkpoint inside the epoch and
    one ``scontrol requeue``; the requeued job (the same script) finishes the run. The stand-in
    srun does what srun does with a SIGTERM of its own, SIGKILL its task, so the test fails if
    the script signals train.py through srun; scancel signals the step's task."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"$@" &\ntask=$!\necho $task > "$STEP_PID"\n'
        'trap \'kill -KILL $task\' TERM\nwait $task; wait $task\n')
    (bin_dir / "scancel").write_text('#!/bin/bash\necho scancel "$@" >> "$SCONTROL_LOG"\n'
                                     'kill -TERM "$(cat "$STEP_PID")"\n')
    (bin_dir / "scontrol").write_text('#!/bin/bash\nif [[ $1 == show ]]; then echo 127.0.0.1; '
                                      'else echo "$@" >> "$SCONTROL_LOG"; fi\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    out, calls = tmp_path / "run", tmp_path / "scontrol.log"
    job_env = {**env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SCONTROL_LOG": str(calls), "SLURM_JOB_ID": "42",
               "STEP_PID": str(tmp_path / "step.pid"),
               "SLURM_NNODES": "1", "GPUS_PER_NODE": "1", "GLOBAL_BATCH": "2", "WORKERS": "0",
               "PYTHON": sys.executable, "PORT": str(free_port()), "CSV": str(videos), "OUT": str(out)}
    tiny = ["--width", "0.125", "--seq", "8", "--img_dim", "32", "--cluster", "16", "--channel", "32",
            "--queue_start", "1", "--queue_size", "16", "--epoch", "3", "--lr_decay", "3", "--split", "1",
            "--device", "cpu", "--no_progress"]
    job = [str(REPO / "scripts" / "slurm" / "pretrain_k400.sh"), *tiny]
    proc = subprocess.Popen(job, cwd=REPO, env=job_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, printed[-3000:]
    assert "SIGUSR1: asking train.py to checkpoint and stop" in printed and "requeueing job 42" in printed
    assert calls.read_text().split() == ["scancel", "--signal=TERM", "42", "requeue", "42"]
    assert torch.load(out / "checkpoint_last.pth", weights_only=True).get("epoch_progress"), printed[-3000:]
    requeued = subprocess.run(job, cwd=REPO, env=job_env, capture_output=True, text=True, timeout=300)
    assert requeued.returncode == 0, requeued.stdout[-3000:] + requeued.stderr[-3000:]
    assert "batch" in requeued.stdout.split("resumed from")[1].split("\n")[0]
    assert json.loads((out / "metrics.json").read_text())["epochs_done"] == 3
    assert calls.read_text().split() == ["scancel", "--signal=TERM", "42", "requeue", "42"]


def test_cpu_sync_batchnorm_in_one_process_group_is_torch_batchnorm_and_runs_under_bf16():
    """The synchronised twin, in a gloo group of one process, against torch's BatchNorm: the same
    output, input gradient and running statistics (float32), and a bf16 input keeps its dtype
    with float32 statistics."""
    code = textwrap.dedent(f"""
        import sys, torch, torch.distributed as dist
        sys.path.insert(0, {str(REPO)!r})
        from utils.cpu_sync_batchnorm import convert_cpu_sync_batchnorm
        from utils.runtime import free_port
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{free_port()}}", rank=0, world_size=1)
        torch.manual_seed(0)
        plain = torch.nn.Sequential(torch.nn.BatchNorm3d(4))
        plain[0].weight.data.uniform_(0.5, 1.5); plain[0].bias.data.normal_()
        synced = convert_cpu_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm3d(4)))
        synced.load_state_dict(plain.state_dict())
        x = torch.randn(3, 4, 2, 5, 5) * 3 + 1
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = plain(a), synced(b)
        (ya * ya.detach().sin()).sum().backward(); (yb * yb.detach().sin()).sum().backward()
        assert type(synced[0]).__name__ == "CpuSyncBatchNorm3d" and isinstance(synced[0], torch.nn.BatchNorm3d)
        assert torch.allclose(ya, yb, atol=1e-5) and torch.allclose(a.grad, b.grad, atol=1e-5)
        for key, value in plain.state_dict().items():
            assert torch.allclose(value.float(), synced.state_dict()[key].float(), atol=1e-6), key
        out = synced(x.bfloat16())
        assert out.dtype == torch.bfloat16 and synced[0].running_mean.dtype == torch.float32
        dist.destroy_process_group()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-3000:]
