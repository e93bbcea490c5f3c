"""Tiny frame-folder data and train.py arguments shared by the pretraining tests."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import encode_jpeg


def make_videos(root: Path, n_videos: int = 8, n_frames: int = 20, size=(36, 40)) -> Path:
    """Frame folders ``video_XXX/image_%05d.jpg`` (a textured frame that moves) + pretrain.csv."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for v in range(n_videos):
        folder = root / f"video_{v:03d}"
        folder.mkdir(parents=True)
        base = torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
        for f in range(n_frames):
            jpeg = encode_jpeg(torch.roll(base, shifts=(v % 3 + 1) * f, dims=2), quality=80)
            (folder / f"image_{f + 1:05d}.jpg").write_bytes(jpeg.numpy().tobytes())
        rows.append(f"video_{v:03d},{n_frames}")
    csv = root / "pretrain.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def tiny_argv(csv: Path, out: Path, *extra: str) -> list[str]:
    """A 0.5M-parameter R3D-18 on 8-frame 32-px clips, 2 steps of 4 videos per epoch."""
    return ["--csv_file", str(csv), "--output_dir", str(out), "--width", "0.125", "--seq", "8",
            "--img_dim", "32", "--train_batch", "4", "--cluster", "16", "--channel", "32", "--workers", "0",
            "--queue_start", "1", "--queue_size", "16", "--log_every", "1", "--device", "cpu", *extra]
