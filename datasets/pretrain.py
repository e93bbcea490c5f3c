"""The pretraining dataset (docs/method.md §1): ``n`` local clips + the global clip per video."""

from __future__ import annotations

import os

import torch

from datasets.base import FrameFolderDataset
from datasets.frames import load_frames
from datasets.sampling import pretrain_indices, split_clips
from datasets.color import ColorParams
from datasets.transforms import PretrainAugment, color_augment


class PretrainDataset(FrameFolderDataset):
    """Frame-folder videos from a pretraining CSV (``path,num_frames``; docs/method.md §1).

    One sample: a window of ``n*T`` frames at a random rate (:func:`pretrain_indices`), cut into
    ``n`` local clips and the global clip (:func:`split_clips`); each distinct frame is decoded once,
    then every clip is augmented independently (:class:`PretrainAugment`): its own crop box, flip
    and per-frame colour draws; the colour of all ``n+1`` clips then runs in one
    :func:`~datasets.transforms.color_augment` call on their uint8 stack (no float stack).

    Videos with ``num_frames <= n*T`` are left out with a logged count. Corrupt/missing frames
    follow the skip/strict policy of :mod:`datasets.base` (``.skipped`` counts them).

    Args:
        csv_file: pretraining CSV (a labelled CSV works too; its labels are ignored).
        seq: ``T`` frames per clip (``--seq``).
        sample: ``n`` local clips (``--sample``).
        img_dim: output side (``--img_dim``).
        rate: upper bound of the frame-rate factor (``--rate``).
        data_root: folder for relative CSV paths (default: the CSV's folder).
        strict: make corrupt/missing frames fatal.
        validate_files: check every row's last frame up front (see :mod:`datasets.csv_io`).
        color_strength: multiplier of the docs/method.md §1 colour-jitter strengths (1 = brightness,
            contrast, saturation 0.5 and hue 0.25; 0 = no jitter).
        grayscale_p: per-frame probability of the random grayscale (docs/method.md §1: 0.5).
        color_on_device: leave the colour part (jitter, grayscale, normalisation) to the
            training device (``train.py --gpu_augment``): see below.
        exact_color: torchvision's colour maths instead of the fast kernel (``--exact_color``;
            :func:`~datasets.transforms.color_augment`).

    ``__getitem__`` returns a float tensor ``(n+1, 3, T, img_dim, img_dim)``, global clip last.
    With ``color_on_device`` it returns ``(clips, params)`` instead: the uint8 clips after crop,
    resize and flip, channels last, ``(n+1, T, img_dim, img_dim, 3)`` (``decode_jpeg``'s layout,
    which collates without a transpose), and their per-frame colour draws
    (:data:`~datasets.color.ColorParams` of ``(n+1, T)`` tensors). The random draws are the
    same, in the same order, as without the option, and
    :func:`~datasets.transforms.color_augment_batch` on a collated batch gives the float clips
    ``(B, n+1, 3, T, S, S)`` the default mode would have given (up to float rounding).
    """

    def __init__(self, csv_file: str | os.PathLike, seq: int = 16, sample: int = 2,
                 img_dim: int = 112, rate: float = 3.0, data_root: str | None = None,
                 strict: bool = False, validate_files: bool = False, color_strength: float = 1.0,
                 grayscale_p: float = 0.5, color_on_device: bool = False,
                 exact_color: bool = False) -> None:
        super().__init__(csv_file, labelled=False, data_root=data_root,
                         min_frames=seq * sample + 1, strict=strict,
                         validate_files=validate_files, random_fallback=True)
        if rate < 1:
            raise ValueError(f"rate must be >= 1, got {rate}")
        self.seq = seq
        self.sample = sample
        self.rate = rate
        if color_strength < 0 or not 0 <= grayscale_p <= 1:
            raise ValueError(f"need color_strength >= 0 and 0 <= grayscale_p <= 1, got "
                             f"{color_strength} and {grayscale_p}")
        jitter = 0.5 * color_strength
        self.augment = PretrainAugment(img_dim, brightness=jitter, contrast=jitter,
                                       saturation=jitter, hue=min(0.5, 0.25 * color_strength),
                                       grayscale_p=grayscale_p, exact_color=exact_color)
        self.color_on_device = color_on_device

    def _sample(self, index: int) -> torch.Tensor | tuple[torch.Tensor, ColorParams]:
        window = pretrain_indices(self.num_frames[index], self.seq, self.sample, self.rate)
        clips = split_clips(window, self.seq, self.sample)
        unique, inverse = torch.unique(clips, return_inverse=True)
        frames = load_frames(self.paths[index], unique.tolist())
        geometric, draws = [], []
        for clip in inverse:  # per clip its box and flip, then its colour draws (the RNG order)
            geometric.append(self.augment.geometric(frames, clip).permute(0, 2, 3, 1))
            draws.append(self.augment.draw_color(self.seq))
        out = torch.stack(geometric)  # (n+1, T, S, S, 3): channels last, one copy
        params = {key: torch.stack([d[key] for d in draws]) for key in draws[0]}
        if self.color_on_device:
            return out, params
        return color_augment(out.movedim(-1, -3), params, self.augment.exact_color)
