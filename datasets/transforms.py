"""Clip transforms: uint8 clips ``(T, 3, H, W)`` → normalised float ``(3, T, H, W)`` (docs/method.md §1, §5).

docs/method.md §1 augmentation, applied independently to every clip of a sample:

* one random-resized-crop box (area 0.5–1, aspect 3/4–4/3) and one horizontal flip for the whole
  clip, on uint8 (:meth:`PretrainAugment.geometric`: one resize call for the clip's crops);
* random "grayscale" with p = 0.5 **per frame**: one random RGB channel copied to all three;
* colour jitter (brightness 0.5, contrast 0.5, saturation 0.5, hue 0.25) with factors drawn **per
  frame** (after the grayscale, in docs/method.md §1's order and the reference code's);
* ImageNet mean/std.

The colour part is split in two: :func:`~datasets.color.draw_color_params` draws a clip's
per-frame factors (on the CPU), :func:`color_augment` applies them to uint8 clips with any leading
dimensions on any device, with no loop over frames. The loader runs both per clip; with
``PretrainDataset(color_on_device=True)`` (``train.py --gpu_augment``) it ships the uint8 clips
and the draws, and the training step applies :func:`color_augment_batch` to the whole batch on
its device. Both paths draw the same numbers and run the same kernel, so they agree up to float
rounding.

Two colour kernels, both with docs/method.md §1's factors, order and per-frame draws: the **fast** one
(default, :mod:`datasets.color_affine`: one 3×3 affine map per frame; mean deviation from
torchvision ~0.01–0.05 per pixel in normalised units against the jitter's ~0.45) and the
**exact** one (``exact=True``, ``train.py --exact_color``, :mod:`datasets.color`: torchvision's
maths, several times slower).

All randomness comes from ``torch.rand``/``torch.randint``/``uniform_`` on the global CPU torch
RNG, so ``torch.manual_seed`` and the DataLoader's per-worker seeding make it reproducible. The
uint8 resize is several times faster on channels-last memory (what ``decode_jpeg`` produces).
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

from datasets.color import ColorParams, channel_grayscale, draw_color_params, jitter_, normalize
from datasets.color_affine import color_affine
from datasets.frames import gather_frames

_CROP_ATTEMPTS = 10


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float] = (0.5, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Draw one crop box ``(top, left, h, w)`` (docs/method.md §1), torchvision's RandomResizedCrop rule.

    Ten (area, log-aspect) candidates are drawn at once and the first that fits is used, else a
    centre crop with the aspect clamped into ``ratio``. Draws a fixed amount of randomness.
    """
    area = height * width
    target = area * torch.empty(_CROP_ATTEMPTS, dtype=torch.float64).uniform_(*scale)
    aspect = torch.exp(torch.empty(_CROP_ATTEMPTS, dtype=torch.float64)
                       .uniform_(math.log(ratio[0]), math.log(ratio[1])))
    ws = torch.sqrt(target * aspect).round().tolist()
    hs = torch.sqrt(target / aspect).round().tolist()
    top_frac, left_frac = torch.rand(2, dtype=torch.float64).tolist()
    fits = [(int(h), int(w)) for h, w in zip(hs, ws) if 0 < w <= width and 0 < h <= height]
    if fits:
        h, w = fits[0]
        return int(top_frac * (height - h + 1)), int(left_frac * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w



def color_augment(clips: torch.Tensor, params: ColorParams, exact: bool = False) -> torch.Tensor:
    """The colour part of the docs/method.md §1 augmentation, on uint8 clips ``(..., T, 3, H, W)``.

    Per frame, in docs/method.md §1's order (the reference code's too): the channel grayscale, colour
    jitter with the drawn factors (brightness → contrast → saturation → hue; on a grayscale
    frame only brightness and contrast change anything), then the ImageNet normalisation.
    ``params``: :data:`ColorParams` shaped like the frame dimensions ``(..., T)`` (on any device;
    moved to the clips'). Vectorised over all leading dimensions, so one call handles one clip in
    a loader worker or a whole batch ``(B, n+1, T, 3, S, S)`` on the training device.

    ``exact=False``: the fast kernel (one affine map per frame, :func:`color_matrices`; see the
    module docstring for how it differs from torchvision). ``exact=True``: torchvision's maths
    (:func:`channel_grayscale` on the uint8 planes, :func:`jitter_`, :func:`normalize`).

    Returns:
        float ``(..., 3, T, H, W)``, contiguous.
    """
    if clips.dtype != torch.uint8 or clips.dim() < 4 or clips.shape[-3] != 3:
        raise ValueError(f"expected uint8 clips (..., T, 3, H, W), got {clips.dtype} "
                         f"{tuple(clips.shape)}")
    if not exact:
        return color_affine(clips, params)
    if "gray" in params:
        clips = channel_grayscale(clips, params)
    x = clips.reshape(-1, *clips.shape[-3:]).to(torch.float32,
                                                memory_format=torch.contiguous_format)
    jitter_(x, params, scale=1.0 / 255.0)
    return normalize(x.view(clips.shape))


def color_augment_batch(batch: tuple[torch.Tensor, ColorParams], device: torch.device,
                        exact: bool = False) -> torch.Tensor:
    """A collated ``PretrainDataset(color_on_device=True)`` batch → the model's float input.

    ``batch``: uint8 clips ``(B, n+1, T, S, S, 3)`` (channels last) and their
    :data:`ColorParams` ``(B, n+1, T)``. Both go to ``device`` (the uint8 clips are a quarter of
    the float bytes), where :func:`color_augment` (with ``exact``) runs on the whole batch → float
    ``(B, n+1, 3, T, S, S)``, what the loader would have produced with the same kernel.
    """
    clips, params = batch
    clips = clips.to(device, non_blocking=True).movedim(-1, -3)
    return color_augment(clips, {key: value.to(device, non_blocking=True)
                                 for key, value in params.items()}, exact)


def _to_float(clip: torch.Tensor) -> torch.Tensor:
    if clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[1] != 3:
        raise ValueError(f"expected a uint8 clip (T, 3, H, W), got {clip.dtype} {tuple(clip.shape)}")
    return clip.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


class PretrainAugment:
    """The docs/method.md §1 pretraining augmentation of one clip: uint8 ``(T,3,H,W)`` → float ``(3,T,S,S)``.

    Order: one crop box + resize to ``img_dim`` (uint8, antialiased bilinear) → one flip (p=0.5)
    (:meth:`geometric`) → per-frame channel grayscale → per-frame colour jitter → ImageNet
    normalisation (:meth:`draw_color` + :func:`color_augment`): docs/method.md §1's order, which is the
    reference code's (``RandomGray`` before ``ColorJitter``). The colour runs at the output
    resolution, after the resize. ``exact_color``: torchvision's colour maths instead of the fast
    kernel (:func:`color_augment`'s ``exact``).
    """

    def __init__(self, img_dim: int = 112, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), brightness: float = 0.5,
                 contrast: float = 0.5, saturation: float = 0.5, hue: float = 0.25,
                 grayscale_p: float = 0.5, flip_p: float = 0.5, exact_color: bool = False) -> None:
        self.img_dim = img_dim
        self.scale = scale
        self.ratio = ratio
        self.jitter = (brightness, contrast, saturation, hue)
        self.grayscale_p = grayscale_p
        self.flip_p = flip_p
        self.exact_color = exact_color

    def geometric(self, frames: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Crop box + resize + flip of the clip ``frames[index]`` (default: all the frames).

        ``frames``: uint8 ``(N, 3, H, W)`` → uint8 ``(T, 3, S, S)``, channels last. The box is cut
        out of ``frames`` before the clip's frames are gathered (:func:`gather_frames`), so only
        the crop is copied, into the contiguous channels-last block that torchvision's vectorised
        uint8 resize reads without another copy. The result equals ``resized_crop`` of the clip.
        """
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected a uint8 clip (T, 3, H, W), got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        top, left, h, w = random_resized_crop_box(frames.shape[-2], frames.shape[-1], self.scale,
                                                  self.ratio)
        if index is None:
            index = torch.arange(frames.shape[0])
        clip = gather_frames(frames[..., top:top + h, left:left + w], index)
        clip = TF.resize(clip, [self.img_dim, self.img_dim], antialias=True)
        if torch.rand(()) < self.flip_p:
            clip = clip.flip(-1)
        return clip

    def draw_color(self, frames: int) -> ColorParams:
        """This augmentation's per-frame colour draws for a clip of ``frames`` frames."""
        return draw_color_params(frames, *self.jitter, grayscale_p=self.grayscale_p)

    def __call__(self, frames: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Augment the clip ``frames[index]`` (default: all of ``frames``) → float ``(3, T, S, S)``."""
        clip = self.geometric(frames, index)
        return color_augment(clip, self.draw_color(clip.shape[0]), self.exact_color)


class TrainAugment(PretrainAugment):
    """Light downstream training augmentation (docs/method.md §1): crop box + flip per clip, no colour."""

    def __init__(self, img_dim: int = 112, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        super().__init__(img_dim, scale, ratio, brightness=0.0, contrast=0.0, saturation=0.0,
                         hue=0.0, grayscale_p=0.0)


class EvalTransform:
    """Deterministic test transform (docs/method.md §5): resize the short side, then crop ``img_dim``.

    ``resize`` defaults to ``round(img_dim * 8/7)`` (128 for 112, the usual train/test framing).
    Centre crop: uint8 ``(T,3,H,W)`` → float ``(3,T,S,S)``. Ten-crop: the four corners and the
    centre, then the same five flipped → ``(10,3,T,S,S)``.
    """

    def __init__(self, img_dim: int = 112, ten_crop: bool = False, resize: int | None = None) -> None:
        self.img_dim = img_dim
        self.ten_crop = ten_crop
        self.resize = resize if resize is not None else round(img_dim * 8 / 7)
        if self.resize < img_dim:
            raise ValueError(f"resize ({self.resize}) must be >= img_dim ({img_dim})")

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        clip = TF.resize(clip, [self.resize], antialias=True)
        size = self.img_dim
        if not self.ten_crop:
            return normalize(_to_float(TF.center_crop(clip, [size, size])))
        height, width = clip.shape[-2:]
        corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size)]
        five = torch.stack([clip[..., t:t + size, l:l + size] for t, l in corners]
                           + [TF.center_crop(clip, [size, size])])
        ten = _to_float(torch.cat([five, five.flip(-1)]).flatten(0, 1))
        return normalize(ten.unflatten(0, (10, clip.shape[0])))
