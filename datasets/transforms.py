"""Clip transforms on whole uint8 clips ``(T, 3, H, W)`` → normalised float ``(3, T, H, W)``.

METHOD §1 augmentation, applied independently to every clip of a sample:

* one random-resized-crop box (area 0.5–1, aspect 3/4–4/3) and one horizontal flip for the whole
  clip (a single ``resized_crop`` call on the clip tensor);
* colour jitter (brightness 0.5, contrast 0.5, saturation 0.5, hue 0.25) with factors drawn **per
  frame** and applied as tensor ops on ``(T, 1, 1, 1)`` factor tensors;
* random "grayscale" with p = 0.5 **per frame**: one random RGB channel copied to all three
  (one indexed copy for the chosen frames, no loop over frames);
* ImageNet mean/std.

All randomness comes from ``torch.rand``/``torch.randint``/``uniform_`` on the global CPU torch
RNG, so ``torch.manual_seed`` and the DataLoader's per-worker seeding make it reproducible. The
colour functions also run on a CUDA clip (their per-frame factors are moved to its device).
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale
_CROP_ATTEMPTS = 10


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float] = (0.5, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Draw one crop box ``(top, left, h, w)`` (METHOD §1), torchvision's RandomResizedCrop rule.

    Ten (area, log-aspect) candidates are drawn at once and the first that fits is used, else a
    centre crop with the aspect clamped into ``ratio``. Draws a fixed amount of randomness.
    """
    area = height * width
    target = area * torch.empty(_CROP_ATTEMPTS, dtype=torch.float64).uniform_(*scale)
    aspect = torch.exp(torch.empty(_CROP_ATTEMPTS, dtype=torch.float64)
                       .uniform_(math.log(ratio[0]), math.log(ratio[1])))
    ws = torch.sqrt(target * aspect).round().long()
    hs = torch.sqrt(target / aspect).round().long()
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    offsets = torch.rand(2, dtype=torch.float64)
    if fits.any():
        first = int(fits.nonzero()[0])
        h, w = int(hs[first]), int(ws[first])
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            h, w = height, int(round(height * ratio[1]))
        else:
            w, h = width, height
    top = int(offsets[0] * (height - h + 1))
    left = int(offsets[1] * (width - w + 1))
    return top, left, h, w


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of float frames ``(T, 3, H, W)`` → ``(T, 1, H, W)`` (elementwise: a reduction over
    the 3-long channel axis is several times slower on CPU)."""
    r, g, b = x.unbind(dim=1)
    return (r * _GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2]) \
        .unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of float frames ``(T, 3, H, W)`` by ``shift`` ``(T, 1, 1)`` turns.

    Same result as torchvision's ``adjust_hue`` (RGB→HSV, shift, HSV→RGB), written to broadcast a
    per-frame shift with elementwise ops only: the hue ``h ∈ [0, 6)`` comes from the sector of the
    largest channel, and the way back is the closed form
    ``c = max - chroma * (1 - clamp(o + s*|h - m|, 0, 1))`` with ``(m, s, o)`` = ``(3, 1, -1)``,
    ``(2, -1, 2)``, ``(4, -1, 2)`` for R, G, B (``v*s_hsv`` = chroma), so there is no per-sector
    gather and no reduction over the channel axis.
    """
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    inv = chroma.reciprocal().nan_to_num_(nan=0.0, posinf=0.0)
    hue6 = torch.where(maxc == r, (g - b) * inv,
                       torch.where(maxc == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    hue6 = torch.remainder(hue6 + 6.0 * shift, 6.0).unsqueeze(1)
    centre = x.new_tensor((3.0, 2.0, 4.0)).view(1, 3, 1, 1)
    sign = x.new_tensor((1.0, -1.0, -1.0)).view(1, 3, 1, 1)
    offset = x.new_tensor((-1.0, 2.0, 2.0)).view(1, 3, 1, 1)
    level = (hue6 - centre).abs_().mul_(sign).add_(offset).clamp_(0.0, 1.0)
    return maxc.unsqueeze(1) - chroma.unsqueeze(1) * (1.0 - level)


def color_jitter_per_frame(x: torch.Tensor, brightness: float = 0.5, contrast: float = 0.5,
                           saturation: float = 0.5, hue: float = 0.25) -> torch.Tensor:
    """Colour jitter with factors drawn independently for every frame (METHOD §1).

    ``x`` is float ``(T, 3, H, W)`` in ``[0, 1]``. Factors: brightness/contrast/saturation
    ``~ U(1-s, 1+s)``, hue shift ``~ U(-h, h)``, each a ``(T, …)`` tensor. The ops run in the fixed
    order brightness → contrast → saturation → hue (torchvision's ColorJitter shuffles the order;
    we keep it fixed, a choice the paper leaves open). Formulas as torchvision's ``adjust_*``.
    A strength of 0 skips that op.
    """
    frames = x.shape[0]

    def factors(strength: float) -> torch.Tensor:
        low, high = max(0.0, 1.0 - strength), 1.0 + strength
        return torch.empty(frames, 1, 1, 1).uniform_(low, high).to(x.device)

    x = x.clone()
    if brightness > 0:
        x.mul_(factors(brightness)).clamp_(0.0, 1.0)
    if contrast > 0:
        c = factors(contrast)
        mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x.mul_(c).add_((1.0 - c) * mean).clamp_(0.0, 1.0)
    if saturation > 0:
        s = factors(saturation)
        gray = _grayscale(x)
        x.mul_(s).add_((1.0 - s) * gray).clamp_(0.0, 1.0)
    if hue > 0:
        x = _shift_hue(x, torch.empty(frames, 1, 1).uniform_(-hue, hue).to(x.device))
    return x


def random_channel_grayscale(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per frame, copy one random RGB channel to all three (METHOD §1).

    ``x``: ``(T, 3, H, W)``, any dtype. Vectorised: the chosen frames are overwritten with one
    indexed copy of their chosen channel (no loop over frames).
    """
    frames = x.shape[0]
    chosen = torch.randint(0, 3, (frames,)).to(x.device)
    selected = (torch.rand(frames) < p).nonzero().squeeze(1).to(x.device)
    out = x.clone()
    out[selected] = x[selected, chosen[selected]].unsqueeze(1).expand(-1, 3, -1, -1)
    return out


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std on float ``(T, 3, H, W)`` in ``[0, 1]`` → ``(3, T, H, W)`` (contiguous)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    scale = 1.0 / x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = x.new_empty((x.shape[1], x.shape[0], *x.shape[2:]))
    torch.sub(x, mean, out=out.transpose(0, 1))
    return out.mul_(scale.view(3, 1, 1, 1))


def _to_float(clip: torch.Tensor) -> torch.Tensor:
    if clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[1] != 3:
        raise ValueError(f"expected a uint8 clip (T, 3, H, W), got {clip.dtype} {tuple(clip.shape)}")
    return clip.float().div_(255.0)


class PretrainAugment:
    """The METHOD §1 pretraining augmentation of one clip: uint8 ``(T,3,H,W)`` → float ``(3,T,S,S)``.

    Order: one crop box + resize to ``img_dim`` (uint8, antialiased bilinear) → one flip (p=0.5)
    → per-frame colour jitter → per-frame channel grayscale → ImageNet normalisation. Jitter comes
    before grayscale (as SimCLR/MoCo v2), so grayscale frames keep their brightness/contrast change.
    """

    def __init__(self, img_dim: int = 112, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), brightness: float = 0.5,
                 contrast: float = 0.5, saturation: float = 0.5, hue: float = 0.25,
                 grayscale_p: float = 0.5, flip_p: float = 0.5) -> None:
        self.img_dim = img_dim
        self.scale = scale
        self.ratio = ratio
        self.jitter = (brightness, contrast, saturation, hue)
        self.grayscale_p = grayscale_p
        self.flip_p = flip_p

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        top, left, h, w = random_resized_crop_box(clip.shape[-2], clip.shape[-1], self.scale,
                                                  self.ratio)
        clip = TF.resized_crop(clip, top, left, h, w, [self.img_dim, self.img_dim], antialias=True)
        if torch.rand(()) < self.flip_p:
            clip = clip.flip(-1)
        x = _to_float(clip)
        if any(s > 0 for s in self.jitter):
            x = color_jitter_per_frame(x, *self.jitter)
        if self.grayscale_p > 0:
            x = random_channel_grayscale(x, self.grayscale_p)
        return normalize(x)


class TrainAugment(PretrainAugment):
    """Light downstream training augmentation (METHOD §1): crop box + flip per clip, no colour."""

    def __init__(self, img_dim: int = 112, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        super().__init__(img_dim, scale, ratio, brightness=0.0, contrast=0.0, saturation=0.0,
                         hue=0.0, grayscale_p=0.0)


class EvalTransform:
    """Deterministic test transform (METHOD §5): resize the short side, then crop ``img_dim``.

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
        return normalize(ten).unflatten(1, (10, clip.shape[0])).transpose(0, 1)
