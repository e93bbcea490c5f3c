"""Frame-index sampling (docs/method.md §1). Pure functions of ``torch`` RNG, no I/O.

Conventions: indices are 0-based (frame ``i`` is ``image_{i+1:05d}.jpg``); "round" is round half
up, ``floor(x + 0.5)``, so a window of rate 1.5 reads frames 0, 2, 3, 5, … evenly.
"""

from __future__ import annotations

import math

import torch


def window_indices(start: float, rate: float, length: int, num_frames: int) -> torch.Tensor:
    """Indices ``round(start + rate*k)``, ``k = 0 … length-1``, clipped to the last frame (docs/method.md §1).

    Returns:
        LongTensor ``(length,)``.
    """
    k = torch.arange(length, dtype=torch.float64)
    return torch.floor(start + rate * k + 0.5).long().clamp_(max=num_frames - 1)


def pretrain_indices(num_frames: int, seq: int, sample: int, rate: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The pretraining window of one video: ``n*T`` frame indices (docs/method.md §1, clip sampling).

    Draws the frame-rate factor ``r ~ U(1, min(rate, num_frames/(n*T)))`` and the start
    ``s`` uniformly from the integers ``{0, …, floor(num_frames - r*n*T)}`` (i.e.
    ``torch.randint(0, floor(num_frames - r*n*T) + 1)``: every start whose window fits in the
    video), and returns :func:`window_indices` ``(s, r, n*T)``. Because ``r >= 1`` the last index
    ``round(s + r*(n*T-1)) <= num_frames - 1``, so the clip to the last frame is only a guard.

    Args:
        num_frames: frames in the video; must exceed ``n*T``.
        seq: ``T``, frames per clip (``--seq``).
        sample: ``n``, local clips per video (``--sample``).
        rate: upper bound of ``r`` (``--rate``), ``>= 1``.
        generator: optional ``torch.Generator`` (default: the global torch RNG, which the
            DataLoader seeds per worker).

    Returns:
        LongTensor ``(n*T,)``.
    """
    length = seq * sample
    if num_frames <= length:
        raise ValueError(f"pretraining needs num_frames > n*T = {length}, got {num_frames}")
    if rate < 1:
        raise ValueError(f"--rate must be >= 1, got {rate}")
    upper = min(rate, num_frames / length)
    r = 1.0 + (upper - 1.0) * torch.rand((), generator=generator, dtype=torch.float64).item()
    max_start = math.floor(num_frames - r * length)
    s = int(torch.randint(0, max_start + 1, (), generator=generator))
    return window_indices(s, r, length, num_frames)


def split_clips(indices: torch.Tensor, seq: int, sample: int) -> torch.Tensor:
    """Cut a pretraining window into ``n`` local clips and the global clip (docs/method.md §1).

    Local clip ``i`` = ``indices[i*T:(i+1)*T]``; the global clip = ``indices[::n]``, ``T`` frames
    covering all local clips at ``1/n`` the frame rate.

    Returns:
        LongTensor ``(n+1, T)``, global clip last.
    """
    if indices.numel() != seq * sample:
        raise ValueError(f"expected n*T = {seq * sample} indices, got {indices.numel()}")
    return torch.cat([indices.view(sample, seq), indices[::sample].view(1, seq)])


def train_clip_indices(num_frames: int, seq: int, ds: int = 1,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """One random downstream training clip: ``T`` frames at stride ``ds`` (docs/method.md §1).

    The start is uniform over every position where the clip fits; a video shorter than the clip
    starts at 0 and its indices are clipped to the last frame (the last frame repeats).

    Returns:
        LongTensor ``(T,)``.
    """
    span = (seq - 1) * ds + 1
    start = int(torch.randint(0, max(num_frames - span, 0) + 1, (), generator=generator))
    return window_indices(start, ds, seq, num_frames)


def eval_clip_indices(num_frames: int, seq: int, ds: int = 1, num_clips: int = 5) -> torch.Tensor:
    """``num_clips`` clips of ``T`` frames (stride ``ds``) spread evenly over a video (docs/method.md §5).

    Starts are evenly spaced from the first to the last position where a clip fits (one clip:
    the middle one); a short video gives clips clipped to its last frame.

    Returns:
        LongTensor ``(num_clips, T)``.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    max_start = max(num_frames - ((seq - 1) * ds + 1), 0)
    if num_clips == 1:
        starts = torch.tensor([max_start / 2], dtype=torch.float64)
    else:
        starts = torch.linspace(0, max_start, num_clips, dtype=torch.float64)
    starts = torch.floor(starts + 0.5).long()
    offsets = torch.arange(seq) * ds
    return (starts[:, None] + offsets[None, :]).clamp_(max=num_frames - 1)
