"""Shared test fixtures: tiny frame folders, CSVs and video files in ``tmp_path``.

Modelled on pytorchvideo's ``tests/utils.py``: data is generated on the fly, a few frames of a
few pixels, so every test runs in well under a second on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test tensors are tiny: intra-op threads only add wake-up latency, and OpenMP workers
    spinning against other processes on a small shared CPU slow the suite down up to tenfold.
    The count is restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _index_frames(num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 frames ``(N, 3, H, W)`` of constant grey level ``5 * index`` (JPEG-exact), so the
    frame index can be read back from any pixel: ``round(value / 5)``. Needs ``N <= 51``."""
    if num_frames > 51:
        raise ValueError("_index_frames encodes at most 51 frames")
    levels = torch.arange(num_frames, dtype=torch.uint8) * 5
    return levels.view(-1, 1, 1, 1).expand(num_frames, 3, height, width).contiguous()


@pytest.fixture
def make_frame_folder(tmp_path: Path) -> Callable[..., str]:
    """Factory: write ``image_00001.jpg …`` into ``tmp_path/<name>`` and return the folder.

    ``frames``: uint8 ``(N, 3, H, W)``; default: :func:`_index_frames` of ``num_frames``.
    """

    def make(name: str, num_frames: int = 12, height: int = 24, width: int = 32,
             frames: torch.Tensor | None = None) -> str:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        if frames is None:
            frames = _index_frames(num_frames, height, width)
        for i, data in enumerate(encode_jpeg(list(frames), quality=95), start=1):
            (folder / f"image_{i:05d}.jpg").write_bytes(data.numpy().tobytes())
        return str(folder)

    return make


@pytest.fixture
def write_video_csv(tmp_path: Path) -> Callable[..., str]:
    """Factory: write rows (sequences of fields) as ``tmp_path/<name>``, optional header line."""

    def write(name: str, rows: Sequence[Sequence[object]], header: str | None = None) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ([header] if header else []) + [",".join(str(f) for f in row) for row in rows]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    return write


@pytest.fixture
def write_video_file() -> Callable[..., int]:
    """Factory: encode ``num_frames`` moving-bar RGB frames with PyAV; returns the frame count.

    ``codec="h264"`` uses ``libx264`` when the PyAV wheel has it, else ``mpeg4``.
    """
    import av

    def write(path: str | os.PathLike, num_frames: int, codec: str = "h264", width: int = 64,
              height: int = 48) -> int:
        if codec == "h264":
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(num_frames):
                image = np.full((height, width, 3), 40, np.uint8)
                image[:, (4 * i) % width] = 250
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return num_frames

    return write
