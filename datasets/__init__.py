"""Data: CSV reading/validation, frame folders, clip sampling and transforms (docs/method.md §1)."""

from datasets.base import SkipCounting
from datasets.csv_io import CsvError, read_video_csv
from datasets.downstream import ClipDataset
from datasets.frames import FrameError, frame_path, load_clip, load_frames
from datasets.pretrain import PretrainDataset
from datasets.sampling import (eval_clip_indices, pretrain_indices, split_clips,
                               train_clip_indices, window_indices)
from datasets.synthetic import make_synthetic
from datasets.transforms import EvalTransform, PretrainAugment, TrainAugment

__all__ = [
    "ClipDataset", "CsvError", "EvalTransform", "FrameError", "PretrainAugment", "PretrainDataset",
    "SkipCounting", "TrainAugment", "eval_clip_indices", "frame_path", "load_clip", "load_frames",
    "make_synthetic", "pretrain_indices", "read_video_csv", "split_clips", "train_clip_indices",
    "window_indices",
]
