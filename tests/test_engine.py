"""Unit tests of engine/ (schedule, amp, checkpoint, logging, runtime): fast, CPU only."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import checkpoint as ck
from utils.amp import autocast, make_scaler, resolve_amp
from utils.logging import RunLogger, prepare_output_dir, progress, write_json
from utils.runtime import DistInfo, derive_seed, init_distributed, resolve_device, seed_everything, unwrap, wrap_ddp
from utils.optim import set_lr, step_decay_lr


# ----------------------------------------------------------------------------------- schedule
def test_step_decay_matches_method_section_4():
    lrs = [step_decay_lr(1e-3, e, 70) for e in range(100)]
    assert lrs[0] == lrs[69] == 1e-3
    assert lrs[70] == pytest.approx(1e-4) and lrs[99] == pytest.approx(1e-4)
    assert step_decay_lr(1.0, 5, [2, 4]) == pytest.approx(0.01)
    assert step_decay_lr(1.0, 3, [2, 4], gamma=0.5) == pytest.approx(0.5)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] == 0.25


# ---------------------------------------------------------------------------------------- amp
def test_amp_resolution_and_scaler_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None
    assert resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_amp("fp16", cpu)
    scaler = make_scaler(None, cpu)
    assert not scaler.is_enabled()
    x = torch.ones(2, 2)
    with autocast(cpu, None):
        assert (x @ x).dtype == torch.float32
    with autocast(cpu, torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16


# --------------------------------------------------------------------------------- checkpoint
def test_atomic_save_and_weights_only_load(tmp_path: Path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "args": {"lr": 1e-3, "net": "r3d_18"},
             "rng": ck.capture_rng_state(), "version": ck.CHECKPOINT_VERSION}
    path = tmp_path / "checkpoint_last.pth"
    ck.save_checkpoint(state, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pth"]  # no temp left
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # plain weights_only works
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 3
    assert ck.load_checkpoint(path)["args"] == {"lr": 1e-3, "net": "r3d_18"}
    ck.save_checkpoint({**state, "version": ck.CHECKPOINT_VERSION + 1}, path)
    with pytest.raises(ck.CheckpointError, match="newer than this code's"):
        ck.load_checkpoint(path)


def test_interrupted_write_keeps_previous_file_and_leaves_no_temp(tmp_path: Path, monkeypatch):
    path = tmp_path / "checkpoint_last.pth"
    ck.save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")  # some bytes hit the temp file, then the "crash"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint({"epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pth"]
    assert ck.load_checkpoint(path)["epoch"] == 1


def test_stale_temp_files_are_ignored_and_removed(tmp_path: Path):
    (tmp_path / ".tmp-checkpoint_last.pth.abc123").write_bytes(b"partial")
    assert ck.find_resume(tmp_path) is None
    assert ck.remove_stale_temps(tmp_path) == [".tmp-checkpoint_last.pth.abc123"]
    assert list(tmp_path.iterdir()) == []


class _Payload:
    """A pickle that would run ``os.system`` when unpickled without the weights-only restriction."""

    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_a_hostile_pickle_is_refused_without_advice_to_lift_the_restriction(tmp_path: Path):
    path = tmp_path / "hostile.pth"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(ck.CheckpointError) as err:
        ck.load_checkpoint(path)
    message = str(err.value)
    assert "hostile.pth" in message and "refused unread" in message and "\n" not in message
    assert "weights_only" not in message.replace("weights_only=True", "") and "False" not in message


def test_a_checkpoint_with_flipped_bytes_in_its_tensors_is_refused(tmp_path: Path):
    path = tmp_path / "checkpoint_last.pth"
    state = {"model": {"w": torch.randn(1_000_000)}, "epoch": 3, "rng": {"python": (3, torch.arange(5))}}
    ck.save_checkpoint(state, path)
    loaded = ck.load_checkpoint(path)
    assert ck.CHECKSUM_KEY not in loaded and torch.equal(loaded["model"]["w"], state["model"]["w"])
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the 4 MB of tensor data, not the zip's structure
    for i in range(50):
        data[middle + 97 * i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match=r"checkpoint_last\.pth is damaged: its content does not match"):
        ck.load_checkpoint(path)
    torch.save({"epoch": 1}, tmp_path / "plain.pth")  # a file without a checksum loads as it is
    assert ck.load_checkpoint(tmp_path / "plain.pth") == {"epoch": 1}


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_what_is_needed(tmp_path: Path):
    """A file-size limit (what a full disk looks like to the writer) in a subprocess."""
    import subprocess
    import sys
    code = (
        "import resource, signal, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "import torch\n"
        "from utils import checkpoint as ck\n"
        "ck.save_checkpoint({'w': torch.ones(10)}, sys.argv[2])\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, 500_000))\n"
        "try:\n"
        "    ck.save_checkpoint({'w': torch.ones(1_000_000)}, sys.argv[2])\n"
        "except ck.DiskFull as err:\n"
        "    print(err)\n")
    path = tmp_path / "checkpoint_last.pth"
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[1]), str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"cannot write {path} (3.8 MiB): File too large, with ")
    assert f"MiB free in {tmp_path}. The previous checkpoint_last.pth, if any, is intact" in done.stdout
    assert ck.load_checkpoint(path)["w"].shape == (10,) and not list(tmp_path.glob(".tmp-*"))


def test_corrupt_or_missing_checkpoint_names_the_file(tmp_path: Path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(ck.CheckpointError, match="nope.pth does not exist"):
        ck.load_checkpoint(missing)
    path = tmp_path / "checkpoint_last.pth"
    ck.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated (e.g. a partial copy)
    with pytest.raises(ck.CheckpointError, match=r"cannot read checkpoint .*checkpoint_last\.pth"):
        ck.load_checkpoint(path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ck.CheckpointError, match="garbage.pth"):
        ck.load_checkpoint(garbage)


def test_full_pickle_objects_are_refused(tmp_path: Path):
    path = tmp_path / "evil.pth"
    torch.save({"obj": Path("/x")}, path)  # an arbitrary Python object: not weights_only-safe
    with pytest.raises(ck.CheckpointError, match="evil.pth"):
        ck.load_checkpoint(path)


def test_find_resume_prefers_last_then_highest_numbered(tmp_path: Path):
    assert ck.find_resume(tmp_path / "absent") is None
    assert ck.find_resume(tmp_path) is None
    for n in (2, 10, 4):
        ck.save_checkpoint({"epoch": n}, tmp_path / ck.numbered_name(n))
    assert ck.find_resume(tmp_path) == str(tmp_path / "checkpoint_0010.pth")
    ck.save_checkpoint({"epoch": 11}, tmp_path / ck.LAST_NAME)
    assert ck.find_resume(tmp_path) == str(tmp_path / "checkpoint_last.pth")
    assert ck.numbered_name(20) == "checkpoint_0020.pth"


def test_rng_capture_restore_round_trip_through_weights_only_file(tmp_path: Path):
    seed_everything(123)
    state = ck.capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    ck.save_checkpoint({"rng": state}, tmp_path / "c.pth")
    seed_everything(999)  # scramble
    torch.rand(5), np.random.rand(5), random.random()
    ck.restore_rng_state(ck.load_checkpoint(tmp_path / "c.pth")["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], random.gauss(0, 1))
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]
    # numpy's cached gaussian survives too
    np.random.seed(5)
    np.random.randn()  # leaves a cached value
    s = ck.capture_rng_state()
    a = np.random.randn(2)
    ck.restore_rng_state(s)
    assert np.array_equal(np.random.randn(2), a)


# ------------------------------------------------------------------------------------ logging
def test_output_dir_json_and_run_logger(tmp_path: Path):
    import argparse

    out = prepare_output_dir(tmp_path / "run", argparse.Namespace(lr=1e-3, csv_file=Path("/a.csv"), x=(1, 2)))
    assert json.loads((out / "args.json").read_text()) == {"lr": 1e-3, "csv_file": "/a.csv", "x": [1, 2]}
    write_json(out / "m.json", {"loss": torch.tensor(1.5), "bad": float("nan")})
    assert json.loads((out / "m.json").read_text()) == {"loss": 1.5, "bad": "nan"}
    log = RunLogger(out, enabled=True)
    log.scalar("train/loss", 1.0, 1)
    log.scalars("train", {"a": 2.0, "b": 3.0}, 2)
    log.log_epoch({"epoch": 0, "loss": 2.5})
    log.log_epoch({"epoch": 1, "loss": 2.0})
    with open(out / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')  # a line cut by a kill
    assert [r["epoch"] for r in log.read_log()] == [0, 1]
    log.truncate_log(1)
    assert [r["epoch"] for r in log.read_log()] == [0]
    log.close()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    quiet = RunLogger(tmp_path / "quiet", enabled=False)
    quiet.scalar("x", 1.0, 0)
    quiet.log_epoch({"epoch": 0})
    assert not (tmp_path / "quiet").exists()
    assert list(progress(range(3), enabled=False)) == [0, 1, 2]
    assert list(progress(range(3), enabled=True, disable=True)) == [0, 1, 2]


# ------------------------------------------------------------------------------------ runtime
def test_runtime_single_process_defaults(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    info = init_distributed("cpu")
    assert info == DistInfo(0, 1, 0, torch.device("cpu")) and not info.distributed and info.is_main
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model and unwrap(model) is model


def test_device_of_a_rank(monkeypatch):
    """cuda:LOCAL_RANK on a node whose processes share its GPUs; cuda:0 for every rank when each
    process sees one GPU of its own; a clear error when a rank has none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto", local_rank=2) == torch.device("cuda", 2)
    with pytest.raises(ValueError, match="local rank 5 has no GPU: only 4 visible"):
        resolve_device("cuda", local_rank=5)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 0)


def test_seeds_are_per_rank_and_derived_deterministically():
    seed_everything(7, rank=0)
    a = torch.rand(2)
    seed_everything(7, rank=1)
    b = torch.rand(2)
    seed_everything(7, rank=0)
    assert torch.equal(torch.rand(2), a) and not torch.equal(a, b)
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, r, e) for r in range(4) for e in range(50)}) == 200
    assert 0 <= derive_seed(2**40, 3) < 2**63
