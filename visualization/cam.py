"""Temporal-order probe and class activation maps as pure functions (docs/method.md §5, last item).

The probe is a bias-free linear head ``W`` (2 x C) on the time/space-pooled high-level feature of
the frozen backbone (docs/method.md §2: ``high``), trained to tell a clip (class 0) from its time-reversed
copy (class 1). Because the head is linear and has no bias, applying it at every (t, h, w) of the
feature map gives maps whose mean over (t, h, w) is exactly the head's logits on the pooled
feature: the map says how much each place and time step votes for "normal" or "reversed".

Pure functions up to the two writers (PNG strip, animated GIF) and :func:`draw_heat_maps`,
which draws chosen videos with them; colours come from a matplotlib colour map, images are
written with Pillow.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from datasets.temporal_order import NORMAL, REVERSED, OrderClipDataset, order_pairs
from datasets.color import IMAGENET_MEAN, IMAGENET_STD
from utils.amp import autocast

__all__ = ["NORMAL", "REVERSED", "class_activation_maps", "denormalize", "draw_heat_maps", "normalize_cam",
           "order_pairs", "overlay", "save_gif", "save_strip", "upsample_cam"]


def class_activation_maps(features: Tensor, weight: Tensor) -> Tensor:
    """CAM (docs/method.md §5): the bias-free head ``weight (K, C)`` applied at every (t, h, w) of the
    feature map ``features (N, C, t, h, w)``; returns ``(N, K, t, h, w)`` (K = 2 for the probe).

    By linearity, ``class_activation_maps(f, w).mean((2, 3, 4))`` equals the head's logits on the
    pooled feature, ``models.classifier.pool_high(f) @ w.T``.
    """
    if features.dim() != 5 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features (N, C, t, h, w) and weight (K, C) disagree: {tuple(features.shape)} vs "
            f"{tuple(weight.shape)}"
        )
    return torch.einsum("ncthw,kc->nkthw", features, weight.to(features.dtype))


def upsample_cam(cam: Tensor, size: Sequence[int]) -> Tensor:
    """Upsample CAMs ``(N, K, t, h, w)`` to the clip's ``size = (T, H, W)`` (docs/method.md §5 "upsample
    to the input size"): trilinear, ``align_corners=False``; returns ``(N, K, T, H, W)``."""
    if len(size) != 3:
        raise ValueError(f"size must be (T, H, W), got {tuple(size)}")
    return F.interpolate(cam.float(), size=tuple(int(s) for s in size), mode="trilinear",
                         align_corners=False)


def normalize_cam(cam: Tensor, eps: float = 1e-12) -> Tensor:
    """Min-max normalise every map of ``cam (N, K, T, H, W)`` to [0, 1] over its own (T, H, W),
    i.e. per clip and per class (docs/method.md §5 heat map). A constant map becomes all zeros."""
    flat = cam.flatten(2)
    low = flat.amin(dim=2, keepdim=True)
    span = flat.amax(dim=2, keepdim=True) - low
    out = torch.where(span > eps, (flat - low) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.view_as(cam)


def denormalize(clip: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the input normalisation of one clip ``(3, T, H, W)`` (float, ``(x - mean) / std``)
    and return displayable frames ``uint8 (T, H, W, 3)``."""
    if clip.dim() != 4 or clip.shape[0] != 3:
        raise ValueError(f"expected one clip of shape (3, T, H, W), got {tuple(clip.shape)}")
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
    pixels = (clip.detach().float().cpu() * s + m).clamp(0.0, 1.0).mul(255.0).round()
    return pixels.to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


def colorize(heat: np.ndarray | Tensor, cmap: str = "jet") -> np.ndarray:
    """Map values in [0, 1] of any shape ``S`` to RGB ``uint8 (*S, 3)`` with a matplotlib colour
    map."""
    values = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](values)  # float (..., 4) in [0, 1]
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def overlay(frames: np.ndarray | Tensor, heat: np.ndarray | Tensor, alpha: float = 0.5,
            cmap: str = "jet") -> np.ndarray:
    """Blend a heat map over frames (docs/method.md §5 "overlay as a heat map on the frames").

    ``frames``: uint8 ``(T, H, W, 3)``; ``heat``: ``(T, H, W)`` in [0, 1]; returns uint8
    ``(T, H, W, 3)`` = ``(1 - alpha) * frames + alpha * colour(heat)``.
    """
    frames = np.asarray(frames)
    heat = np.asarray(heat)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if heat.shape != frames.shape[:3]:
        raise ValueError(f"heat {heat.shape} must match the frames' (T, H, W) {frames.shape[:3]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colour = colorize(heat, cmap).astype(np.float32)
    blended = (1.0 - alpha) * frames.astype(np.float32) + alpha * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def strip_image(rows: Sequence[np.ndarray], pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile ``rows`` of frames (each uint8 ``(T, H, W, 3)``, same shape) into one image: row ``r``
    holds its ``T`` frames left to right, ``pad`` pixels of ``background`` between tiles.

    Returns uint8 ``(R*H + (R-1)*pad, T*W + (T-1)*pad, 3)``.
    """
    if not rows:
        raise ValueError("strip_image needs at least one row")
    shape = np.asarray(rows[0]).shape
    if len(shape) != 4 or shape[-1] != 3 or any(np.asarray(r).shape != shape for r in rows):
        raise ValueError(f"every row must be uint8 (T, H, W, 3) of one shape; got "
                         f"{[np.asarray(r).shape for r in rows]}")
    t, h, w, _ = shape
    out = np.full((len(rows) * h + (len(rows) - 1) * pad, t * w + (t - 1) * pad, 3), background,
                  dtype=np.uint8)
    for r, row in enumerate(rows):
        for i in range(t):
            y, x = r * (h + pad), i * (w + pad)
            out[y:y + h, x:x + w] = np.asarray(row[i], dtype=np.uint8)
    return out


def save_strip(path: str | Path, rows: Sequence[np.ndarray], pad: int = 2) -> Path:
    """Write :func:`strip_image` of ``rows`` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip_image(rows, pad=pad)).save(path, format="PNG")
    return path


def save_gif(path: str | Path, frames: np.ndarray, duration_ms: int = 125, loop: int = 0) -> Path:
    """Write uint8 frames ``(T, H, W, 3)`` as an animated GIF (``loop=0``: forever); returns the
    path."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(duration_ms), loop=int(loop))
    return path


def _safe_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(path))) or "video"


@torch.no_grad()
def draw_heat_maps(backbone: nn.Module, head: nn.Linear, dataset: OrderClipDataset,
                   indices: Sequence[int], out_dir: Path, device: torch.device,
                   amp_dtype: torch.dtype | None, *, alpha: float = 0.5, cmap: str = "jet",
                   gif_ms: int = 125, batch_size: int = 32) -> list[dict[str, Any]]:
    """CAM overlays (docs/method.md §5) of the middle clip of the videos ``indices`` of ``dataset``
    (a ``num_clips=1`` test-mode :class:`OrderClipDataset`), ``batch_size`` videos per forward
    pass: ``<index>_<video>.png`` (rows: frames / class-0 overlay of the normal clip / reversed
    frames / class-1 overlay of the reversed clip) and ``.gif`` (the normal clip's overlay) in
    ``out_dir``. Returns one record per video (files written, the head's probabilities)."""
    records = []
    chunk = max(1, batch_size)
    for begin in range(0, len(indices), chunk):
        batch = [dataset[i] for i in indices[begin:begin + chunk]]
        clips = torch.stack([clip[0] for clip, _ in batch]).to(device)  # (v, 3, T, H, W)
        v, size = clips.shape[0], clips.shape[2:]
        inputs, _ = order_pairs(clips)
        with autocast(device, amp_dtype):
            features = backbone(inputs)["high"]
        cam = class_activation_maps(features.float(), head.weight.float())  # (2v, 2, t, h, w)
        probs = cam.mean(dim=(2, 3, 4)).softmax(dim=1)  # = softmax of the head's logits
        # normal clips with the class-0 map, reversed copies with the class-1 map
        chosen = torch.cat([cam[:v, NORMAL:NORMAL + 1], cam[v:, REVERSED:REVERSED + 1]])
        heat = normalize_cam(upsample_cam(chosen, size))[:, 0].cpu().numpy()  # (2v, T, H, W)
        for j, (_, index) in enumerate(batch):
            normal = denormalize(inputs[j], IMAGENET_MEAN, IMAGENET_STD)
            reverse = denormalize(inputs[v + j], IMAGENET_MEAN, IMAGENET_STD)
            normal_overlay = overlay(normal, heat[j], alpha, cmap)
            stem = out_dir / f"{index:04d}_{_safe_name(dataset.paths[index])}"
            png = save_strip(stem.with_suffix(".png"), [
                normal, normal_overlay, reverse, overlay(reverse, heat[v + j], alpha, cmap)])
            gif = save_gif(stem.with_suffix(".gif"), normal_overlay, duration_ms=gif_ms)
            records.append({"index": index, "video": dataset.paths[index], "png": str(png),
                            "gif": str(gif), "p_normal_given_normal": probs[j, NORMAL].item(),
                            "p_reversed_given_reversed": probs[v + j, REVERSED].item()})
    return records
