"""Clip transforms: uint8 clips ``(T, 3, H, W)`` → normalised float ``(3, T, H, W)`` (METHOD §1, §5).

METHOD §1 augmentation, applied independently to every clip of a sample:

* one random-resized-crop box (area 0.5–1, aspect 3/4–4/3) and one horizontal flip for the whole
  clip, on uint8 (:meth:`PretrainAugment.geometric`: one resize call for the clip's crops);
* random "grayscale" with p = 0.5 **per frame**: one random RGB channel copied to all three;
* colour jitter (brightness 0.5, contrast 0.5, saturation 0.5, hue 0.25) with factors drawn **per
  frame** (after the grayscale, in METHOD §1's order and the reference code's);
* ImageNet mean/std.

The colour part is split in two: :func:`draw_color_params` draws a clip's per-frame factors (on
the CPU), :func:`color_augment` applies them to uint8 clips with any leading dimensions on any
device, with no loop over clips or frames. The loader runs both per clip; with
``PretrainDataset(color_on_device=True)`` (``train.py --gpu_augment``) it ships the uint8 clips
and the draws, and the training step applies :func:`color_augment_batch` to the whole batch on
its device. Both paths draw the same numbers and compute the same maths, so they agree up to
float rounding.

All randomness comes from ``torch.rand``/``torch.randint``/``uniform_`` on the global CPU torch
RNG, so ``torch.manual_seed`` and the DataLoader's per-worker seeding make it reproducible.

Speed (the loader's hot path; ``scripts/bench_loader.py --profile``): on CPU, ``torch.where``,
``remainder``, bool tensors, broadcast ``addcmul`` and advanced indexing of NCHW tensors are
several times slower than float-mask arithmetic, in-place ops and plane copies, and the uint8
resize is several times faster on channels-last memory (what ``decode_jpeg`` produces), so the
code below is written with the fast ones.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF

from datasets.frames import gather_frames

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale
_CROP_ATTEMPTS = 10
_TINY = 1e-20  # added to the chroma before dividing: hue is irrelevant when chroma is ~0
_CPU_CHUNK_PIXELS = 1 << 16  # per-plane pixels of a chunk of the colour jitter on CPU (5 × 112²)
_DEVICE_CHUNK_PIXELS = 1 << 24  # elsewhere (1337 × 112²): bounds the temporaries to ~0.7 GB

ColorParams = dict[str, torch.Tensor]
"""Per-frame colour draws (:func:`draw_color_params`), each shaped like the frame dimensions of
the clips they belong to (``(T,)`` for a clip, ``(B, n+1, T)`` for a batch): float
``brightness``, ``contrast``, ``saturation`` (factors), ``hue`` (shift in turns), int64
``gray_channel`` and bool ``gray`` (copy that channel to all three). A missing key = op off."""


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


# ------------------------------------------------------------------------------ drawing
def draw_color_params(frames: int, brightness: float = 0.5, contrast: float = 0.5,
                      saturation: float = 0.5, hue: float = 0.25,
                      grayscale_p: float = 0.5) -> ColorParams:
    """Draw one clip's per-frame colour factors (METHOD §1) from the global CPU torch RNG.

    Brightness/contrast/saturation factors ``~ U(max(0, 1-s), 1+s)``, hue shift ``~ U(-h, h)``,
    then the grayscale channel ``~ randint(0, 3)`` and the grayscale decision ``rand < p``, in
    this order, one call per op with ``(T, …)`` shapes; an op of strength 0 draws nothing. Returns
    :data:`ColorParams` of ``(T,)`` tensors.
    """
    params: ColorParams = {}
    for name, strength in (("brightness", brightness), ("contrast", contrast),
                           ("saturation", saturation)):
        if strength > 0:
            params[name] = torch.empty(frames, 1, 1, 1).uniform_(
                max(0.0, 1.0 - strength), 1.0 + strength).view(frames)
    if hue > 0:
        params["hue"] = torch.empty(frames, 1, 1).uniform_(-hue, hue).view(frames)
    if grayscale_p > 0:
        params["gray_channel"] = torch.randint(0, 3, (frames,))
        params["gray"] = torch.rand(frames) < grayscale_p
    return params


# ------------------------------------------------------------------------------ applying
def _luma(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (torchvision's ``rgb_to_grayscale``) of three channel tensors, elementwise
    (a reduction over a 3-long channel axis is several times slower on CPU)."""
    return (r * _GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2])


def _shift_hue_(x: torch.Tensor, shift: torch.Tensor) -> None:
    """Rotate the HSV hue of float frames ``(N, 3, H, W)`` by ``shift`` ``(N, 1, 1)`` turns, in place.

    Same result as torchvision's ``adjust_hue`` (RGB→HSV, shift, HSV→RGB), with elementwise ops
    only. The hue ``h ∈ [0, 6)`` comes from the sector of the largest channel (R wins ties, then
    G, as in torchvision), chosen with float masks; the way back is the closed form
    ``c = min + chroma * clamp(o + s*|h - m|, 0, 1)`` with ``(m, s, o)`` = ``(3, 1, -1)``,
    ``(2, -1, 2)``, ``(4, -1, 2)`` for R, G, B, written with ``t = clamp(|h - m|, 1, 2)`` as
    ``R = (min - chroma) + chroma*t`` and ``G, B = (max + chroma) - chroma*t``.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    minc = torch.minimum(r, g)
    torch.minimum(minc, b, out=minc)
    chroma = maxc - minc
    is_r = torch.eq(maxc, r, out=torch.empty_like(maxc))
    is_g = torch.eq(maxc, g, out=torch.empty_like(maxc))
    is_g.addcmul_(is_g, is_r, value=-1.0)  # G is the largest and R is not
    # sector R: (g-b)/chroma, G: (b-r)/chroma + 2, B: (r-g)/chroma + 4, written around the B case
    rg = r - g
    hue6 = torch.sub(g, b).sub_(rg).mul_(is_r).add_(rg)
    hue6.addcmul_(torch.sub(b, r).sub_(rg), is_g)
    hue6.div_(chroma + _TINY)
    hue6.add_(is_r, alpha=-4.0).add_(is_g, alpha=-2.0).add_(shift * 6.0 + 4.0)
    hue6.add_(torch.mul(hue6, 1.0 / 6.0, out=is_r).floor_(), alpha=-6.0)  # wrap into [0, 6)
    low = minc.sub_(chroma)
    high = maxc.add_(chroma)
    t = is_g
    for channel, (centre, base, sign) in enumerate(((3.0, low, 1.0), (2.0, high, -1.0),
                                                    (4.0, high, -1.0))):
        torch.sub(hue6, centre, out=t).abs_().clamp_(1.0, 2.0)
        torch.addcmul(base, chroma, t, value=sign, out=x[:, channel])


def _jitter_(x: torch.Tensor, params: ColorParams, scale: float = 1.0) -> None:
    """Per-frame colour jitter (METHOD §1) of contiguous float frames ``(N, 3, H, W)``, in place.

    ``x * scale`` must lie in ``[0, 1]`` (``scale = 1/255`` turns uint8 values into that range
    inside the brightness step, saving a pass). ``params``: :data:`ColorParams` with ``N``
    entries each (``gray*`` keys are ignored). Fixed order brightness → contrast → saturation →
    hue (torchvision's ColorJitter shuffles the order; we keep it fixed, a choice the paper leaves
    open); formulas as torchvision's ``adjust_*``, the contrast mean taken as the luma of the
    per-channel means (the same value).

    Every op is per frame, so the frames go through in chunks: on CPU of ~``_CPU_CHUNK_PIXELS``
    pixels per plane, so that the temporaries stay in cache and are recycled by the allocator
    instead of being mapped afresh (page faults); elsewhere of ``_DEVICE_CHUNK_PIXELS``, which
    only bounds the memory of the temporaries (a 64-video batch at 112² is 3 chunks).
    """
    frames = x.shape[0]
    chunk = _CPU_CHUNK_PIXELS if x.device.type == "cpu" else _DEVICE_CHUNK_PIXELS
    step = max(1, chunk // (x.shape[-2] * x.shape[-1]))
    factors = {key: params[key].to(x.device, torch.float32).reshape(frames)
               for key in ("brightness", "contrast", "saturation", "hue") if key in params}
    for start in range(0, frames, step):
        _jitter_chunk_(x[start:start + step],
                       {key: f[start:start + step] for key, f in factors.items()}, scale)


def _jitter_chunk_(x: torch.Tensor, params: ColorParams, scale: float) -> None:
    """:func:`_jitter_` on one chunk of frames (``params`` already on ``x``'s device, ``(N,)``)."""
    frames = x.shape[0]

    def factor(name: str) -> torch.Tensor:
        return params[name].view(frames, 1, 1, 1)

    if "brightness" in params:
        x.mul_(factor("brightness") * scale).clamp_(0.0, 1.0)
    elif scale != 1.0:
        x.mul_(scale)
    if "contrast" in params:
        c = factor("contrast")
        mean = _luma(*x.mean(dim=(2, 3)).unbind(1)).view(frames, 1, 1, 1)
        x.mul_(c).add_((1.0 - c) * mean).clamp_(0.0, 1.0)
    if "saturation" in params:
        s = factor("saturation")
        gray = _luma(*x.unbind(1)).unsqueeze(1).mul_(1.0 - s)
        x.mul_(s).add_(gray).clamp_(0.0, 1.0)
    if "hue" in params:
        _shift_hue_(x, factor("hue").view(frames, 1, 1))


def channel_grayscale(x: torch.Tensor, params: ColorParams) -> torch.Tensor:
    """Per-frame channel "grayscale" (METHOD §1) of frames ``(..., 3, H, W)`` of any dtype.

    ``params``: :data:`ColorParams` whose ``gray``/``gray_channel`` are shaped like the frame
    dimensions ``(...)``; every chosen frame gets its chosen channel copied to all three. One
    plane gather (``index_select``), no loop and no advanced indexing. Returns a new contiguous
    tensor of ``x``'s shape.
    """
    height, width = x.shape[-2:]
    frames = x.numel() // (3 * height * width)
    frame = torch.arange(frames, device=x.device).view(frames, 1)
    channel = torch.arange(3, device=x.device).view(1, 3)
    gray = params["gray"].to(x.device).reshape(frames, 1)
    chosen = params["gray_channel"].to(x.device).reshape(frames, 1)
    index = (frame * 3 + torch.where(gray, chosen, channel)).reshape(-1)
    return x.reshape(-1, height, width).index_select(0, index).view(x.shape)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std (METHOD §1): float ``(..., T, 3, H, W)`` in ``[0, 1]`` → contiguous
    ``(..., 3, T, H, W)``, in one subtraction into the transposed output and one in-place scale."""
    lead, frames, (height, width) = x.shape[:-4], x.shape[-4], x.shape[-2:]
    out = x.new_empty((*lead, 3, frames, height, width))
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    scale = 1.0 / x.new_tensor(IMAGENET_STD).view(3, 1, 1, 1)
    torch.sub(x, mean, out=out.transpose(-4, -3))
    return out.mul_(scale)


def color_augment(clips: torch.Tensor, params: ColorParams) -> torch.Tensor:
    """The colour part of the METHOD §1 augmentation, on uint8 clips ``(..., T, 3, H, W)``.

    Per frame, in METHOD §1's order (the reference code's too): the channel grayscale on the
    uint8 planes (:func:`channel_grayscale`), colour jitter with the drawn factors
    (:func:`_jitter_`; on a grayscale frame only brightness and contrast change anything), then
    the ImageNet normalisation (:func:`normalize`). ``params``:
    :data:`ColorParams` shaped like the frame dimensions ``(..., T)`` (on any device; moved to the
    clips'). Vectorised over all leading dimensions, so one call handles one clip in a loader
    worker or a whole batch ``(B, n+1, T, 3, S, S)`` on the training device.

    Returns:
        float ``(..., 3, T, H, W)``, contiguous.
    """
    if clips.dtype != torch.uint8 or clips.dim() < 4 or clips.shape[-3] != 3:
        raise ValueError(f"expected uint8 clips (..., T, 3, H, W), got {clips.dtype} "
                         f"{tuple(clips.shape)}")
    if "gray" in params:
        clips = channel_grayscale(clips, params)
    x = clips.reshape(-1, *clips.shape[-3:]).to(torch.float32,
                                                memory_format=torch.contiguous_format)
    _jitter_(x, params, scale=1.0 / 255.0)
    return normalize(x.view(clips.shape))


def color_augment_batch(batch: tuple[torch.Tensor, ColorParams],
                        device: torch.device) -> torch.Tensor:
    """A collated ``PretrainDataset(color_on_device=True)`` batch → the model's float input.

    ``batch``: uint8 clips ``(B, n+1, T, S, S, 3)`` (channels last) and their
    :data:`ColorParams` ``(B, n+1, T)``. Both go to ``device`` (the uint8 clips are a quarter of
    the float bytes), where :func:`color_augment` runs on the whole batch → float
    ``(B, n+1, 3, T, S, S)``, what the default loader would have produced.
    """
    clips, params = batch
    clips = clips.to(device, non_blocking=True).movedim(-1, -3)
    return color_augment(clips, {key: value.to(device, non_blocking=True)
                                 for key, value in params.items()})


# ------------------------------------------------------------------------------ per clip
def color_jitter_per_frame(x: torch.Tensor, brightness: float = 0.5, contrast: float = 0.5,
                           saturation: float = 0.5, hue: float = 0.25) -> torch.Tensor:
    """Colour jitter with factors drawn independently for every frame (METHOD §1).

    ``x`` is float ``(T, 3, H, W)`` in ``[0, 1]`` (left unchanged); draws as
    :func:`draw_color_params`, applies :func:`_jitter_` to a copy. A strength of 0 skips that op.
    """
    params = draw_color_params(x.shape[0], brightness, contrast, saturation, hue, grayscale_p=0)
    out = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    _jitter_(out, params)
    return out


def random_channel_grayscale(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per frame, copy one random RGB channel to all three (METHOD §1).

    ``x``: ``(T, 3, H, W)``, any dtype. Draws as :func:`draw_color_params`, applies
    :func:`channel_grayscale`.
    """
    if p <= 0:
        return x.clone()
    return channel_grayscale(x, draw_color_params(x.shape[0], 0, 0, 0, 0, grayscale_p=p))


def _to_float(clip: torch.Tensor) -> torch.Tensor:
    if clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[1] != 3:
        raise ValueError(f"expected a uint8 clip (T, 3, H, W), got {clip.dtype} {tuple(clip.shape)}")
    return clip.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


class PretrainAugment:
    """The METHOD §1 pretraining augmentation of one clip: uint8 ``(T,3,H,W)`` → float ``(3,T,S,S)``.

    Order: one crop box + resize to ``img_dim`` (uint8, antialiased bilinear) → one flip (p=0.5)
    (:meth:`geometric`) → per-frame channel grayscale → per-frame colour jitter → ImageNet
    normalisation (:meth:`draw_color` + :func:`color_augment`): METHOD §1's order, which is the
    reference code's (``RandomGray`` before ``ColorJitter``).
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
        return color_augment(clip, self.draw_color(clip.shape[0]))


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
        return normalize(ten.unflatten(0, (10, clip.shape[0])))
