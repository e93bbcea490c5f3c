"""The downstream (action recognition) dataset: labelled clips for probes and fine-tuning.

docs/method.md §1 (downstream sampling) and §5 (test protocol).
"""

from __future__ import annotations

import argparse
import os

import torch

from datasets.base import FrameFolderDataset
from datasets.frames import load_clip, load_frames
from datasets.sampling import eval_clip_indices, train_clip_indices
from datasets.transforms import EvalTransform, TrainAugment


class ClipDataset(FrameFolderDataset):
    """Labelled frame-folder videos from a ``path,num_frames,label`` CSV (docs/method.md §1, §5).

    * ``train=True``: one random clip of ``T`` frames at stride ``ds`` with light augmentation
      (one random-resized-crop box + flip per clip) → ``(clip (3,T,S,S), label)``.
    * ``train=False``: ``num_clips`` clips spread evenly over the video (:func:`eval_clip_indices`)
      × a centre crop, or ten crops (5 crops × flip) with ``ten_crop`` →
      ``(clips (num_clips*crops, 3, T, S, S), label)``, clip-major (all crops of clip 0 first),
      so a video's scores can be averaged over dim 0. Each distinct frame is decoded and resized
      once.

    Videos shorter than a clip are kept: their indices are clipped to the last frame. Corrupt or
    missing frames follow the skip/strict policy of :mod:`datasets.base`: in evaluation the next
    video stands in (with its own label), so report ``skipped`` or use ``strict=True`` for final
    test numbers.

    Attributes:
        num_classes: ``num_classes`` if given, else the largest label + 1.
        labels: LongTensor of the labels in CSV order (after filtering).
    """

    def __init__(self, csv_file: str | os.PathLike, seq: int = 16, img_dim: int = 112,
                 train: bool = True, ds: int = 1, num_clips: int = 5, ten_crop: bool = False,
                 data_root: str | None = None, num_classes: int | None = None,
                 strict: bool = False, validate_files: bool = False) -> None:
        super().__init__(csv_file, labelled=True, data_root=data_root, num_classes=num_classes,
                         strict=strict, validate_files=validate_files, random_fallback=train)
        if ds < 1 or num_clips < 1:
            raise ValueError(f"ds and num_clips must be >= 1, got ds={ds}, num_clips={num_clips}")
        self.seq = seq
        self.ds = ds
        self.train = train
        self.num_clips = num_clips
        self.labels = torch.tensor(self.videos["label"].tolist(), dtype=torch.long)
        self.num_classes = num_classes if num_classes is not None else int(self.labels.max()) + 1
        self.augment = TrainAugment(img_dim)
        self.transform = EvalTransform(img_dim, ten_crop=ten_crop)

    @classmethod
    def from_args(cls, args: argparse.Namespace, csv_file: str, train: bool, num_classes: int | None,
                  ten_crop: bool = False) -> ClipDataset:
        """The dataset an evaluation script's flags describe (``--seq --img_dim --ds
        --num_clips --data_root --strict``): ``train=True`` one augmented clip per video, else
        ``--num_clips`` clips x (centre | ten) crops (docs/method.md §1 "Downstream sampling", §5)."""
        return cls(csv_file, seq=args.seq, img_dim=args.img_dim, train=train, ds=args.ds,
                   num_clips=args.num_clips, ten_crop=ten_crop, data_root=args.data_root,
                   num_classes=num_classes, strict=args.strict)

    def _sample(self, index: int) -> tuple[torch.Tensor, int]:
        folder, num_frames, label = self.paths[index], self.num_frames[index], int(self.labels[index])
        if self.train:
            indices = train_clip_indices(num_frames, self.seq, self.ds)
            return self.augment(load_clip(folder, indices)), label
        clips = eval_clip_indices(num_frames, self.seq, self.ds, self.num_clips)
        unique, inverse = torch.unique(clips, return_inverse=True)
        frames = self.transform(load_frames(folder, unique.tolist()))  # ([10,] 3, U, S, S)
        frames = frames[..., inverse.flatten(), :, :].unflatten(-3, tuple(clips.shape))
        if self.transform.ten_crop:  # (10, 3, clips, T, S, S) -> (clips*10, 3, T, S, S)
            return frames.permute(2, 0, 1, 3, 4, 5).flatten(0, 1), label
        return frames.transpose(0, 1), label
