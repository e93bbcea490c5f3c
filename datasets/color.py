"""Per-frame colour draws and torchvision's colour maths, vectorised (docs/method.md §1).

:func:`draw_color_params` draws a clip's per-frame factors from the global CPU torch RNG;
:func:`channel_grayscale`, :func:`jitter_` and :func:`normalize` apply them with torchvision's
``adjust_brightness/contrast/saturation/hue`` maths (HSV hue, a clamp after every op) using
elementwise ops only. This is the **exact** kernel of :func:`datasets.transforms.color_augment`;
the default fast kernel is :mod:`datasets.color_affine`.

Speed (``scripts/bench_loader.py --profile``): on CPU, ``torch.where``, ``remainder``, bool
tensors, broadcast ``addcmul`` and advanced indexing of NCHW tensors are several times slower than
float-mask arithmetic, in-place ops and plane copies, so the code below is written with the fast
ones.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale
_TINY = 1e-20  # added to the chroma before dividing: hue is irrelevant when chroma is ~0
_CPU_CHUNK_PIXELS = 1 << 16  # per-plane pixels of a chunk of the exact jitter on CPU (5 × 112²)
# off the CPU, per-plane pixels of a chunk of either kernel (1337 × 112²): bounds the temporaries
# to ~0.7 GB (exact) or ~0.4 GB (fast)
DEVICE_CHUNK_PIXELS = 1 << 24

ColorParams = dict[str, torch.Tensor]
"""Per-frame colour draws (:func:`draw_color_params`), each shaped like the frame dimensions of
the clips they belong to (``(T,)`` for a clip, ``(B, n+1, T)`` for a batch): float
``brightness``, ``contrast``, ``saturation`` (factors), ``hue`` (shift in turns), int64
``gray_channel`` and bool ``gray`` (copy that channel to all three). A missing key = op off."""



def draw_color_params(frames: int, brightness: float = 0.5, contrast: float = 0.5,
                      saturation: float = 0.5, hue: float = 0.25,
                      grayscale_p: float = 0.5) -> ColorParams:
    """Draw one clip's per-frame colour factors (docs/method.md §1) from the global CPU torch RNG.

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



def _luma(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (torchvision's ``rgb_to_grayscale``) of three channel tensors, elementwise
    (a reduction over a 3-long channel axis is several times slower on CPU)."""
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2])


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


def jitter_(x: torch.Tensor, params: ColorParams, scale: float = 1.0) -> None:
    """Per-frame colour jitter (docs/method.md §1) of contiguous float frames ``(N, 3, H, W)``, in place.

    ``x * scale`` must lie in ``[0, 1]`` (``scale = 1/255`` turns uint8 values into that range
    inside the brightness step, saving a pass). ``params``: :data:`ColorParams` with ``N``
    entries each (``gray*`` keys are ignored). Fixed order brightness → contrast → saturation →
    hue (torchvision's ColorJitter shuffles the order; we keep it fixed, a choice the paper leaves
    open); formulas as torchvision's ``adjust_*``, the contrast mean taken as the luma of the
    per-channel means (the same value).

    Every op is per frame, so the frames go through in chunks: on CPU of ~``_CPU_CHUNK_PIXELS``
    pixels per plane, so that the temporaries stay in cache and are recycled by the allocator
    instead of being mapped afresh (page faults); elsewhere of ``DEVICE_CHUNK_PIXELS``, which
    only bounds the memory of the temporaries (a 64-video batch at 112² is 3 chunks).
    """
    frames = x.shape[0]
    chunk = _CPU_CHUNK_PIXELS if x.device.type == "cpu" else DEVICE_CHUNK_PIXELS
    step = max(1, chunk // (x.shape[-2] * x.shape[-1]))
    factors = {key: params[key].to(x.device, torch.float32).reshape(frames)
               for key in ("brightness", "contrast", "saturation", "hue") if key in params}
    for start in range(0, frames, step):
        _jitter_chunk_(x[start:start + step],
                       {key: f[start:start + step] for key, f in factors.items()}, scale)


def _jitter_chunk_(x: torch.Tensor, params: ColorParams, scale: float) -> None:
    """:func:`jitter_` on one chunk of frames (``params`` already on ``x``'s device, ``(N,)``)."""
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
    """Per-frame channel "grayscale" (docs/method.md §1) of frames ``(..., 3, H, W)`` of any dtype.

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
    """ImageNet mean/std (docs/method.md §1): float ``(..., T, 3, H, W)`` in ``[0, 1]`` → contiguous
    ``(..., 3, T, H, W)``, in one subtraction into the transposed output and one in-place scale."""
    lead, frames, (height, width) = x.shape[:-4], x.shape[-4], x.shape[-2:]
    out = x.new_empty((*lead, 3, frames, height, width))
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    scale = 1.0 / x.new_tensor(IMAGENET_STD).view(3, 1, 1, 1)
    torch.sub(x, mean, out=out.transpose(-4, -3))
    return out.mul_(scale)



# ------------------------------------------------------------------------------ per clip
def color_jitter_per_frame(x: torch.Tensor, brightness: float = 0.5, contrast: float = 0.5,
                           saturation: float = 0.5, hue: float = 0.25) -> torch.Tensor:
    """Colour jitter with factors drawn independently for every frame (docs/method.md §1).

    ``x`` is float ``(T, 3, H, W)`` in ``[0, 1]`` (left unchanged); draws as
    :func:`draw_color_params`, applies :func:`jitter_` to a copy. A strength of 0 skips that op.
    """
    params = draw_color_params(x.shape[0], brightness, contrast, saturation, hue, grayscale_p=0)
    out = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    jitter_(out, params)
    return out


def random_channel_grayscale(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """With probability ``p`` per frame, copy one random RGB channel to all three (docs/method.md §1).

    ``x``: ``(T, 3, H, W)``, any dtype. Draws as :func:`draw_color_params`, applies
    :func:`channel_grayscale`.
    """
    if p <= 0:
        return x.clone()
    return channel_grayscale(x, draw_color_params(x.shape[0], 0, 0, 0, 0, grayscale_p=p))
