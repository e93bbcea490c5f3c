"""The CUDA paths: the same results on the GPU as on the CPU, and tiny pretraining runs with the
GPU defaults (bf16 autocast, channels-last, the colour step on the device, resume) and with fp16
and its GradScaler. NCCL, DDP and SyncBatchNorm need two GPUs (NCCL refuses two ranks on one):
on one GPU ``--multiprocessing-distributed`` runs a single process, so they are not covered here.

Skipped without CUDA. ``CUDA_TESTS_DEVICE=cpu`` runs the same bodies on the CPU, which checks the
tests themselves on a machine without a GPU (the comparisons are then CPU against CPU).
``scripts/gpu_check.sh`` runs this module first on a GPU machine.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

import train
from datasets import color
from datasets.color import draw_color_params
from datasets.transforms import color_augment_batch
from utils.checkpoint import load_checkpoint
from losses import LossWeights, MultiLevelObjective
from models import build_model
from models.output import LEVELS, MultiLevelOutput
from pretrain_helpers import make_videos, tiny_argv
from test_losses import make_output

DEVICE = torch.device(os.environ.get("CUDA_TESTS_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs CUDA (CUDA_TESTS_DEVICE=cpu runs these on the CPU)")


def test_batched_colour_on_the_device_equals_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.py --gpu_augment``'s colour step: the device result equals the CPU one, also when
    the frames go through in several chunks (the chunk is made small to have 4 and a rest)."""
    b, clips, t, size = 3, 3, 4, 12
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (b, clips, t, size, size, 3), dtype=torch.uint8)
    params = {key: value.view(b, clips, t)
              for key, value in draw_color_params(b * clips * t).items()}
    expected = color_augment_batch((frames, params), torch.device("cpu"))
    monkeypatch.setattr(color, "DEVICE_CHUNK_PIXELS", 8 * size * size)
    actual = color_augment_batch((frames.pin_memory() if DEVICE.type == "cuda" else frames, params),
                                 DEVICE)
    assert actual.device.type == DEVICE.type and actual.shape == (b, clips, 3, t, size, size)
    torch.testing.assert_close(actual.cpu(), expected, atol=1e-4, rtol=0)


def on_device(out: MultiLevelOutput, device: torch.device) -> MultiLevelOutput:
    """A copy of ``out`` on ``device`` whose gradients flow back to the original leaves."""
    moved = {}
    for field in dataclasses.fields(out):
        value = getattr(out, field.name)
        moved[field.name] = (value.to(device) if isinstance(value, torch.Tensor) else
                             {key: t.to(device) for key, t in value.items()})
    return MultiLevelOutput(**moved)


def test_objective_on_the_device_equals_the_cpu() -> None:
    """Loss parts and gradients of the whole docs/method.md §3 objective (queue and graph on)."""
    b, n, c, k = 4, 2, 8, 5

    def run(device: torch.device) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        obj = MultiLevelObjective(LossWeights(), split=1, queue_start=1, queue_size=6,
                                  cluster=k).to(device)
        obj(on_device(make_output(b, n, c, k, seed=0, grad=False), device), epoch=0)  # fills the queue
        out = make_output(b, n, c, k, seed=1)
        leaves = {lv: out.proj[lv] for lv in LEVELS} | {"scores": out.prototype_scores}
        result = obj(on_device(out, device), epoch=1)
        result.total.backward()
        return ({name: value.item() for name, value in result.parts.items()},
                {name: leaf.grad for name, leaf in leaves.items()})

    (parts_cpu, grads_cpu), (parts_dev, grads_dev) = run(torch.device("cpu")), run(DEVICE)
    assert parts_dev.keys() == parts_cpu.keys() and "graph" in parts_dev
    for name, value in parts_cpu.items():
        assert parts_dev[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    for name, grad in grads_cpu.items():
        torch.testing.assert_close(grads_dev[name], grad, atol=1e-5, rtol=1e-4)


def test_model_bf16_channels_last_is_close_to_fp32() -> None:
    """The CUDA defaults (bf16 autocast, channels_last_3d) against an fp32 contiguous forward of
    the same weights: float32 outputs, within bf16 rounding of the reference."""
    torch.manual_seed(0)
    model = build_model("r3d_18", width=0.125, channel=16, cluster=8).to(DEVICE).eval()
    clips = torch.randn(2, 3, 3, 8, 32, 32, device=DEVICE)
    with torch.no_grad():
        reference = model(clips, with_graph=True)
        model.to(memory_format=torch.channels_last_3d)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            fast = model(clips, with_graph=True)
    for level in LEVELS:
        assert fast.proj[level].dtype == torch.float32
        torch.testing.assert_close(fast.proj[level], reference.proj[level], atol=0.1, rtol=0.1)
    torch.testing.assert_close(fast.prototype_scores, reference.prototype_scores, atol=0.05, rtol=0.1)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_videos(tmp_path_factory.mktemp("cuda_videos"))


def device_argv(videos: Path, out: Path, *extra: str) -> list[str]:
    return tiny_argv(videos, out, "--device", DEVICE.type, "--split", "1", "--seed", "3", *extra)


def test_pretraining_with_the_gpu_defaults_and_resume(videos: Path, tmp_path: Path) -> None:
    """--amp auto (bf16 on CUDA), channels-last, the colour step on the device: finite, and
    2 + 1 epochs end where 3 in one go do."""
    common = ("--gpu_augment",)
    straight = train.main(device_argv(videos, tmp_path / "straight", *common, "--epoch", "3"))
    assert straight["steps"] == 6 and straight["non_finite_steps"] == 0
    assert 0 < straight["loss"] < 50
    split = tmp_path / "split"
    train.main(device_argv(videos, split, *common, "--epoch", "2"))
    resumed = train.main(device_argv(videos, split, *common, "--epoch", "3"))
    assert resumed["epochs_done"] == 3 and resumed["steps"] == 6
    a = load_checkpoint(tmp_path / "straight" / "checkpoint_last.pth")["model"]
    b = load_checkpoint(split / "checkpoint_last.pth")["model"]
    assert a.keys() == b.keys()
    # bf16 convolutions are not bit-deterministic on every GPU: close, not equal
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-2


def test_pretraining_in_fp16_with_the_grad_scaler(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp16"
    amp = "fp16" if DEVICE.type == "cuda" else "off"  # fp16 autocast is a CUDA mode
    metrics = train.main(device_argv(videos, out, "--amp", amp, "--epoch", "2"))
    assert metrics["steps"] == 4 and metrics["non_finite_steps"] == 0
    checkpoint = load_checkpoint(out / "checkpoint_last.pth")
    assert checkpoint["epoch"] == 2
    if DEVICE.type == "cuda":
        assert checkpoint["scaler"] and checkpoint["scaler"]["scale"] > 0
