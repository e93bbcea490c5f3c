"""The reference code's data pipeline and the decode-only bound, for ``scripts/bench_loader.py``.

Both read the same frames and draw the same window as ``PretrainDataset`` (docs/method.md §1) when the
torch RNG is seeded alike: :class:`ReferencePipeline` is the reference implementation's per-frame
PIL pipeline (every frame resized to 200×150, then per frame ``resized_crop``, ``hflip``,
``RandomGrayscale``, ``ColorJitter``, ``ToTensor``, ``Normalize``), :func:`decode_only` reads and
decodes the distinct frames and nothing else, :func:`pil_color` is the reference's colour part
with given draws.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF1
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.color import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from datasets.frames import frame_path  # noqa: E402
from datasets.sampling import pretrain_indices, split_clips  # noqa: E402

REFERENCE_SIZE = (200, 150)  # (width, height): the reference resized every frame to this


def draw_window(num_frames: int, seq: int, sample: int, rate: float
                ) -> tuple[list[int], torch.Tensor]:
    """The sample's distinct frame indices and, per clip, positions into them ``(n+1, T)``;
    drawn from the global torch RNG exactly as ``PretrainDataset`` draws them (docs/method.md §1)."""
    clips = split_clips(pretrain_indices(num_frames, seq, sample, rate), seq, sample)
    unique, inverse = torch.unique(clips, return_inverse=True)
    return unique.tolist(), inverse


class ReferencePipeline:
    """The reference implementation's per-frame PIL pipeline (see the module docstring)."""

    def __init__(self, img_dim: int, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), colour: bool = True) -> None:
        self.img_dim = img_dim
        self.scale, self.ratio = scale, ratio
        self.colour = colour
        self.jitter = T.ColorJitter(0.5, 0.5, 0.5, 0.25)
        self.gray = T.RandomGrayscale(p=0.5)
        self.normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    @staticmethod
    def load(folder: str, indices: list[int], resize: bool = True) -> list[Image.Image]:
        """Decode the frames (PIL) and resize each to 200×150 as the reference did."""
        images = []
        for i in indices:
            with Image.open(frame_path(folder, i)) as image:
                rgb = image.convert("RGB")
            images.append(rgb.resize(REFERENCE_SIZE, Image.BILINEAR) if resize else rgb)
        return images

    def clip(self, images: list[Image.Image], flip: bool | None = None) -> torch.Tensor:
        """One clip: PIL frames → float ``(3, T, img_dim, img_dim)``."""
        top, left, h, w = T.RandomResizedCrop.get_params(images[0], self.scale, self.ratio)
        if flip is None:
            flip = bool(torch.rand(()) < 0.5)
        frames = []
        for image in images:
            image = TF1.resized_crop(image, top, left, h, w, [self.img_dim, self.img_dim])
            if flip:
                image = TF1.hflip(image)
            if self.colour:
                image = self.jitter(self.gray(image))
            frames.append(self.normalize(TF1.to_tensor(image)))
        return torch.stack(frames, 1)

    def sample(self, folder: str, num_frames: int, seq: int, sample: int, rate: float
               ) -> torch.Tensor:
        """``(n+1, 3, T, S, S)`` like ``PretrainDataset``; every distinct frame decoded once."""
        unique, inverse = draw_window(num_frames, seq, sample, rate)
        images = self.load(folder, unique)
        return torch.stack([self.clip([images[i] for i in row]) for row in inverse.tolist()])


def decode_only(folder: str, num_frames: int, seq: int, sample: int, rate: float
                ) -> list[torch.Tensor]:
    """Read and ``decode_jpeg`` the sample's distinct frames (the same ones), nothing else."""
    unique, _ = draw_window(num_frames, seq, sample, rate)
    encoded = []
    for i in unique:
        with open(frame_path(folder, i), "rb") as handle:
            encoded.append(torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8))
    return decode_jpeg(encoded, mode=ImageReadMode.RGB)


def pil_color(clip: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference code's colour part on uint8 frames ``(T, 3, S, S)`` with given draws: per
    frame the channel copy, then torchvision's PIL ``adjust_brightness/contrast/saturation/hue``
    (what ``T.ColorJitter`` runs on PIL images: uint8 after every op, PIL's HSV hue), ``ToTensor``,
    ``Normalize`` → ``(3, T, S, S)``."""
    frames = []
    for t, frame in enumerate(clip):
        if params["gray"][t]:
            frame = frame[params["gray_channel"][t]].expand(3, -1, -1)
        image = TF1.to_pil_image(frame.contiguous())
        for name in ("brightness", "contrast", "saturation", "hue"):
            image = getattr(TF1, f"adjust_{name}")(image, float(params[name][t]))
        frames.append(TF1.normalize(TF1.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD))
    return torch.stack(frames, 1)
