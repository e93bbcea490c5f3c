"""The fast colour kernel: docs/method.md §1's colour part and the ImageNet normalisation as one affine
map per frame.

The channel grayscale is a 0/1 matrix, brightness a scale, contrast a scale plus an offset (the
frame's mean grey level), saturation a blend with the luma, the hue shift a rotation about the
grey axis of RGB, the normalisation a scale plus an offset; they compose into one 3×3 matrix +
offset per frame (:func:`color_matrices`), applied to all frames in one batched matrix product at
the output resolution, then one clamp (:func:`color_affine`). Brightness is clamped exactly
(``min(x, 255/b)`` before the map), so the contrast's mean is torchvision's. Not bit-equal to
torchvision: the clamps after contrast and saturation are dropped, and the hue rotation is not
HSV's piecewise-linear hue (it keeps the mean and the Euclidean chroma where HSV keeps max and
min). ``scripts/bench_loader.py`` measures the difference on real frames against the jitter's own
size; ``tests/test_data_transforms.py`` bounds it.
"""

from __future__ import annotations

import math

import torch

from datasets import color
from datasets.color import GRAY_WEIGHTS, IMAGENET_MEAN, IMAGENET_STD, ColorParams

# the final clamp: [0, 1] in each channel's normalised units
_NORMALISED_BOX = tuple((-m / s, (1.0 - m) / s) for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
# the cross-product matrix of the unit grey axis (1, 1, 1)/sqrt(3): the hue rotation's generator
_GREY_AXIS_CROSS = ((0.0, -1.0, 1.0), (1.0, 0.0, -1.0), (-1.0, 1.0, 0.0))


def _basis() -> torch.Tensor:
    """``(4, 9)``: the flattened 3×3 matrices whose per-frame combination is the fast kernel's
    linear part (:func:`color_matrices`), rows scaled by ``1/std``: ``I``, ``K/√3`` (``K`` the
    cross product with ``(1, 1, 1)``), ``J/3`` (``J`` all ones) and ``1·lumaᵀ``."""
    cross = torch.tensor(_GREY_AXIS_CROSS) / math.sqrt(3.0)
    luma = torch.tensor(GRAY_WEIGHTS).expand(3, 3)
    basis = torch.stack([torch.eye(3), cross, torch.full((3, 3), 1.0 / 3.0), luma])
    return (basis / torch.tensor(IMAGENET_STD).view(1, 3, 1)).view(4, 9)


_BASIS = _basis()
_LUMA = torch.tensor(GRAY_WEIGHTS)
_INV_STD = 1.0 / torch.tensor(IMAGENET_STD).view(3, 1)
_MEAN_OVER_STD = torch.tensor(IMAGENET_MEAN).view(3, 1) * _INV_STD


def color_matrices(params: ColorParams, frames: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast kernel's per-frame affine map: the docs/method.md §1 colour part and the ImageNet
    normalisation as ``A x + o`` on a frame's RGB values ``x`` in grey levels (``0…255``, after
    the brightness clamp ``min(x, 255/b)``).

    The maps, in docs/method.md §1's order: the channel grayscale ``G`` (every row picks the chosen
    channel), brightness ``b/255``, contrast ``c·y + (1−c)·m`` (``m`` = the mean luma of the frame
    so far), saturation ``s·y + (1−s)·1·lumaᵀy``, the hue shift ``R`` = rotation about the grey
    axis by ``θ = 2π·hue`` (Rodrigues: ``cos θ I + sin θ K/√3 + (1−cos θ) J/3``; a positive shift
    turns red towards yellow as HSV's does, and ±1/3 turn maps red exactly to green/blue), then
    ``(y − mean)/std``. Since ``R·1 = 1``, the saturation and hue part is
    ``s cos θ I + s sin θ K/√3 + s(1−cos θ) J/3 + (1−s) 1·lumaᵀ`` (one product of per-frame
    coefficients with :data:`_BASIS`); it maps grey to ``κ`` times grey
    (``κ = s + (1−s)·Σluma``), so the contrast offset is ``(1−c)·m·κ`` in every channel, and
    ``m = (b/255)·lumaᵀ·G·μ`` is linear in the frame's channel means ``μ``. Missing keys are
    neutral factors.

    Args:
        params: :data:`ColorParams` of ``frames`` frames (any shape with that many entries).
        frames: ``N``, the number of frames.
        device: where the matrices are built (the clips').

    Returns:
        ``A`` ``(N, 3, 3)`` and the mean weights ``w`` ``(N, 3)``: the offset of a frame whose
        channel means are ``μ`` is ``o = (w·μ)/std − mean/std``. The output still needs the
        clamp of ``y`` into ``[0, 1]``, which in normalised units is :data:`_NORMALISED_BOX`.
    """
    def factor(name: str, neutral: float) -> torch.Tensor:
        if name not in params:
            return torch.full((frames,), neutral, device=device)
        return params[name].to(device, torch.float32).reshape(frames)

    s, c = factor("saturation", 1.0), factor("contrast", 1.0)
    theta = factor("hue", 0.0) * (2.0 * math.pi)
    cos = torch.cos(theta)
    s_cos = s * cos
    coef = torch.stack([s_cos, s * torch.sin(theta), s - s_cos, 1.0 - s], dim=1)
    matrix = (coef @ _BASIS.to(device)).view(frames, 3, 3)
    luma_sum = sum(GRAY_WEIGHTS)
    luma = _LUMA.to(device).expand(frames, 3)
    if "gray" in params:
        chosen = torch.nn.functional.one_hot(params["gray_channel"].to(device).reshape(frames), 3)
        chosen = chosen.to(torch.float32)
        gray = params["gray"].to(device).reshape(frames, 1)
        matrix = torch.where(gray.unsqueeze(-1), matrix.sum(-1, keepdim=True) * chosen.unsqueeze(1),
                             matrix)
        luma = torch.where(gray, chosen * luma_sum, luma)
    scale = factor("brightness", 1.0) / 255.0
    kappa = s + (1.0 - s) * luma_sum
    weights = ((1.0 - c) * kappa * scale).view(frames, 1) * luma
    return matrix * (c * scale).view(frames, 1, 1), weights


def _clips_per_chunk(device: torch.device, clip_pixels: int) -> int:
    """Whole clips per chunk of the fast kernel (:func:`color_affine`): one on CPU, elsewhere as
    many as fit ``DEVICE_CHUNK_PIXELS`` pixels per plane."""
    return 1 if device.type == "cpu" else max(1, color.DEVICE_CHUNK_PIXELS // clip_pixels)


def color_affine(clips: torch.Tensor, params: ColorParams) -> torch.Tensor:
    """The fast kernel (module docstring) on uint8 clips ``(..., T, 3, H, W)`` → float
    ``(..., 3, T, H, W)``.

    :func:`color_matrices` once for all frames, then per chunk of whole clips: to float planes,
    the brightness clamp ``min(x, 255/b)`` in place, the per-channel means → the offsets, one
    batched ``baddbmm`` into the output, and the clamp into :data:`_NORMALISED_BOX`. On CPU a
    chunk is one clip: its float copy stays a few MB (a batch-sized temporary would be fresh
    pages on every call), and the product writes straight into the clip's ``(3, T)`` planes.
    Elsewhere a chunk is ``DEVICE_CHUNK_PIXELS`` pixels of whole clips, the product going
    through a temporary (bounds the memory).
    """
    lead, (frames, _, height, width) = clips.shape[:-4], clips.shape[-4:]
    pixels, device = height * width, clips.device
    flat = clips.reshape(-1, 3, height, width)
    matrix, weights = color_matrices(params, flat.shape[0], device)
    bound = (255.0 / params["brightness"].to(device, torch.float32).reshape(-1, 1, 1)
             if "brightness" in params else None)
    inv_std, mean_over_std = _INV_STD.to(device), _MEAN_OVER_STD.to(device)
    out = torch.empty(*lead, 3, frames, height, width, device=device)
    planes = out.view(-1, 3, frames, pixels)
    step = _clips_per_chunk(device, frames * pixels)
    for start in range(0, planes.shape[0], step):
        dest = planes[start:start + step]
        rows = slice(start * frames, (start + dest.shape[0]) * frames)
        x = torch.empty(flat[rows].shape, device=device).copy_(flat[rows]).view(-1, 3, pixels)
        if bound is not None:
            torch.minimum(x, bound[rows], out=x)
        offset = (x.mean(-1) * weights[rows]).sum(-1).view(-1, 1, 1) * inv_std - mean_over_std
        if dest.shape[0] == 1:
            torch.baddbmm(offset, matrix[rows], x, out=dest[0].transpose(0, 1))
        else:
            product = torch.baddbmm(offset, matrix[rows], x)
            dest.copy_(product.view(-1, frames, 3, pixels).transpose(1, 2))
        for channel, (low, high) in enumerate(_NORMALISED_BOX):
            dest[:, channel].clamp_(low, high)
    return out
