"""Mixed precision: one autocast context for the whole forward pass (the nanoGPT way), and a
GradScaler only where it is needed (fp16). Used by train.py and the downstream scripts."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def resolve_amp(flag: str, device: torch.device) -> torch.dtype | None:
    """Map ``--amp`` to an autocast dtype, or ``None`` for full fp32.

    ``auto``: bf16 on a CUDA GPU that supports it (fp16 on older GPUs), off on CPU.
    ``fp16`` is refused on CPU (no GradScaler benefit, slow kernels); ``bf16`` on CPU is allowed.
    Raises ``ValueError`` with the fix for impossible requests.
    """
    if flag not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {AMP_CHOICES}, got {flag!r}")
    cuda = device.type == "cuda"
    if flag == "off":
        return None
    if flag == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if flag == "fp16":
        if not cuda:
            raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 or --amp off on CPU")
        return torch.float16
    if cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16 or --amp off")
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def fp32_region(x: torch.Tensor) -> Iterator[None]:
    """Disable autocast for ``x``'s device type inside the block (no-op where unsupported, e.g.
    ``meta``): the float32 islands inside an autocast forward (the objectives of docs/method.md §3, the
    prototype scores that feed Sinkhorn)."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu", "xpu", "mps", "hpu"):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:  # pragma: no cover - exotic devices have no autocast to disable
        yield


def make_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """A ``GradScaler`` enabled only for fp16 (bf16 and fp32 need no loss scaling).

    A disabled scaler is still returned so the training step has a single code path
    (``scaler.scale(loss).backward(); scaler.step(opt); scaler.update()`` are pass-throughs).
    """
    enabled = dtype == torch.float16
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)
