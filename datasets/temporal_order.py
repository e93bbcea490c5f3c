"""The temporal-order probe's data (docs/method.md §5, last item): clips of a CSV's videos, and each
clip paired with its time-reversed copy (class 0 = normal order, class 1 = reversed)."""
from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from datasets.base import FrameFolderDataset
from datasets.frames import load_clip
from datasets.sampling import eval_clip_indices, train_clip_indices
from datasets.transforms import EvalTransform, TrainAugment

# The probe's two classes: a clip in its recorded order, and its time-reversed copy.
NORMAL, REVERSED = 0, 1


def order_pairs(clips: Tensor) -> tuple[Tensor, Tensor]:
    """Stack clips ``(N, 3, T, H, W)`` with their time-reversed copies (docs/method.md §5 probe input).

    Returns ``(inputs (2N, 3, T, H, W), targets (2N,))``: the N normal clips first (class 0), then
    the same N clips flipped on the time axis (class 1), so every batch holds both orders of
    every clip.
    """
    if clips.dim() != 5:
        raise ValueError(f"expected clips of shape (N, 3, T, H, W), got {tuple(clips.shape)}")
    n = clips.shape[0]
    inputs = torch.cat([clips, clips.flip(2)], dim=0)
    targets = torch.cat([
        torch.full((n,), NORMAL, dtype=torch.long, device=clips.device),
        torch.full((n,), REVERSED, dtype=torch.long, device=clips.device),
    ])
    return inputs, targets


class OrderClipDataset(FrameFolderDataset):
    """Frame-folder videos of a CSV whose labels, if any, are ignored (docs/method.md §1 sampling).

    ``train=True``: one random clip of ``seq`` frames at stride ``ds`` with the light downstream
    augmentation (crop box + flip) -> ``(clip (3, T, S, S), index)``.
    ``train=False``: ``num_clips`` clips spread over the video, centre crop ->
    ``(clips (num_clips, 3, T, S, S), index)``; with ``num_clips=1``, the middle clip.
    ``index`` is the CSV position of the video actually loaded (a corrupt video is replaced by
    another one, see :mod:`datasets.base`).
    """

    def __init__(self, csv_file: str | os.PathLike, seq: int = 16, img_dim: int = 112,
                 train: bool = True, ds: int = 1, num_clips: int = 1,
                 data_root: str | None = None, strict: bool = False) -> None:
        # A video shorter than one clip would end in repeated last frames, and its reversed copy
        # start with them: a static cue for the order, so such videos are left out (counted).
        super().__init__(csv_file, labelled=False, data_root=data_root, strict=strict,
                         random_fallback=train, min_frames=(seq - 1) * ds + 1)
        self.seq, self.ds, self.train, self.num_clips = seq, ds, train, num_clips
        self.transform = TrainAugment(img_dim) if train else EvalTransform(img_dim)

    def _sample(self, index: int) -> tuple[Tensor, int]:
        folder, num_frames = self.paths[index], self.num_frames[index]
        if self.train:
            return self.transform(load_clip(folder, train_clip_indices(num_frames, self.seq, self.ds))), index
        clips = eval_clip_indices(num_frames, self.seq, self.ds, self.num_clips)  # (K, T)
        frames = self.transform(load_clip(folder, clips.flatten()))  # (3, K*T, S, S)
        return frames.unflatten(1, tuple(clips.shape)).transpose(0, 1), index


class OrderPairs:
    """A loader of ``((clips, _), skipped)`` batches (``engine.loader.make_loader``) seen as
    ``((inputs, targets), skipped)`` batches of the probe: each batch's clips followed by their
    time-reversed copies (:func:`order_pairs`)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[tuple[Tensor, Tensor], Tensor]]:
        for (clips, _), skipped in self.loader:
            yield order_pairs(clips), skipped
