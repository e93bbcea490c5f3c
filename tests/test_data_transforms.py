"""Clip augmentation of docs/method.md §1: one crop box per clip, per-frame colour ops, the distribution
of the drawn factors, the exact (torchvision) colour kernel and the fast affine one, and the
fast kernel's distance from torchvision on a real photo."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from datasets import color_affine
from datasets.color import (IMAGENET_MEAN, IMAGENET_STD, color_jitter_per_frame, draw_color_params,
                            random_channel_grayscale)
from datasets.transforms import (EvalTransform, PretrainAugment, TrainAugment, color_augment,
                                 color_augment_batch, random_resized_crop_box)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) normalised -> (T, 3, H, W) in [0, 255]."""
    return ((x * STD + MEAN) * 255).transpose(0, 1)


def coordinate_clip(frames: int = 6, size: int = 128) -> torch.Tensor:
    """Every frame identical: R = 2x, G = 2y, B = 0 (pixel coordinates readable after a crop)."""
    ramp = torch.arange(size, dtype=torch.uint8) * 2
    frame = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size),
                         torch.zeros(size, size, dtype=torch.uint8)])
    return frame.expand(frames, 3, size, size).contiguous()


def crop_box(out: torch.Tensor) -> tuple[float, float, float, float]:
    """Estimate (x0, x1, y0, y1) in source pixels from an un-normalised coordinate frame."""
    red, green = out[0] / 2, out[1] / 2
    return (float(red[:, 0].mean()), float(red[:, -1].mean()),
            float(green[0].mean()), float(green[-1].mean()))


def test_one_crop_box_and_flip_per_clip_and_a_new_one_per_clip():
    geometry_only = PretrainAugment(32, brightness=0, contrast=0, saturation=0, hue=0,
                                    grayscale_p=0)
    torch.manual_seed(0)
    boxes, flips = [], []
    for _ in range(12):
        out = unnormalize(geometry_only(coordinate_clip()))
        assert out.shape == (6, 3, 32, 32)
        assert (out - out[:1]).abs().max() < 1e-3  # the same box and flip in every frame
        x0, x1, y0, y1 = crop_box(out[0])
        flips.append(x0 > x1)
        width, height = abs(x1 - x0) + 4, y1 - y0 + 4  # edge pixel centres -> extents
        assert 0.4 < width * height / 128 ** 2 <= 1.05  # area 0.5-1 (estimated)
        assert 0.65 < width / height < 1.45  # aspect 3/4-4/3 (estimated)
        boxes.append((round(min(x0, x1)), round(y0), round(width), round(height)))
    assert len(set(boxes)) == 12  # every clip draws its own box
    assert 0 < sum(flips) < 12


def test_grayscale_is_drawn_per_frame_and_copies_one_channel():
    torch.manual_seed(0)
    clip = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8).expand(40, 3, 8, 8)
    out = random_channel_grayscale(clip, p=0.5)
    gray = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    assert 5 < int(gray.sum()) < 35  # per frame, not per clip
    for frame in out[gray]:
        assert any(torch.equal(frame[0], clip[0, c]) for c in range(3))
    assert torch.equal(out[~gray], clip[~gray])


@pytest.mark.parametrize("exact", [False, True])
def test_grayscale_comes_before_the_jitter(exact):
    """docs/method.md §1 (and the reference code): a grayscale frame is one raw channel, so saturation and
    hue leave it gray; jitter first would copy a hue-rotated channel instead."""
    red = torch.zeros(1, 1, 3, 4, 4, dtype=torch.uint8)
    red[:, :, 0] = 255
    params = {"hue": torch.full((1, 1), 0.5), "saturation": torch.full((1, 1), 1.5),
              "gray": torch.ones(1, 1, dtype=torch.bool), "gray_channel": torch.zeros(1, 1, dtype=torch.long)}
    out = unnormalize(color_augment(red, params, exact)[0])  # (T, 3, H, W) in [0, 255]
    torch.testing.assert_close(out, torch.full_like(out, 255.0), atol=1e-3, rtol=0)


def test_crop_box_falls_back_to_the_centre():
    """A 16:9 frame too wide for any 4:3-or-narrower box of the drawn areas: torchvision's rule,
    a centred box of the widest allowed aspect."""
    torch.manual_seed(0)
    boxes = {random_resized_crop_box(10, 100, scale=(0.9, 1.0)) for _ in range(20)}
    assert boxes == {(0, (100 - 13) // 2, 10, 13)}


def test_jitter_equals_torchvision_per_frame_with_per_frame_factors():
    torch.manual_seed(1)
    x = torch.rand(1, 3, 10, 12).expand(6, 3, 10, 12).contiguous()
    torch.manual_seed(7)
    b, c, s = (torch.empty(6, 1, 1, 1).uniform_(0.5, 1.5) for _ in range(3))
    h = torch.empty(6, 1, 1).uniform_(-0.25, 0.25)
    torch.manual_seed(7)
    out = color_jitter_per_frame(x, 0.5, 0.5, 0.5, 0.25)
    for t in range(6):
        expected = TF.adjust_brightness(x[t], float(b[t]))
        expected = TF.adjust_contrast(expected, float(c[t]))
        expected = TF.adjust_saturation(expected, float(s[t]))
        expected = TF.adjust_hue(expected, float(h[t]))
        torch.testing.assert_close(out[t], expected, atol=1e-5, rtol=0)
    assert len({round(float(f.mean()), 4) for f in out}) == 6  # the frames really differ


def test_pretrain_augment_varies_colour_per_frame_not_geometry():
    torch.manual_seed(3)
    clip = torch.randint(0, 256, (1, 3, 40, 48), dtype=torch.uint8).expand(16, 3, 40, 48)
    out = PretrainAugment(24)(clip)
    assert out.shape == (3, 16, 24, 24) and out.dtype == torch.float32
    means = out.mean(dim=(0, 2, 3))
    assert len({round(float(m), 3) for m in means}) == 16
    gray = unnormalize(out).std(dim=1).amax(dim=(1, 2)) < 1.0  # R == G == B up to rounding
    assert 0 < int(gray.sum()) < 16


def test_augment_is_reproducible_from_the_torch_seed():
    clip = coordinate_clip(4, 64)
    torch.manual_seed(5)
    first = PretrainAugment(16)(clip)
    torch.manual_seed(5)
    assert torch.equal(first, PretrainAugment(16)(clip))


def test_train_augment_keeps_colours():
    clip = coordinate_clip(3, 64)
    out = unnormalize(TrainAugment(16)(clip))
    assert out.shape == (3, 3, 16, 16)
    assert out[:, 2].abs().max() < 1.0  # blue stays 0: no jitter or grayscale


@pytest.mark.parametrize("ten_crop", [False, True])
def test_eval_transform_shapes_and_crops(ten_crop):
    clip = coordinate_clip(5, 64)[..., :48, :]  # 48x64 -> short side 32*8/7 = 37
    out = EvalTransform(32, ten_crop=ten_crop)(clip)
    if not ten_crop:
        assert out.shape == (3, 5, 32, 32)
        return
    assert out.shape == (10, 3, 5, 32, 32)
    torch.testing.assert_close(out[5:], out[:5].flip(-1))  # crops 5-9 = crops 0-4 flipped
    torch.testing.assert_close(out[4], EvalTransform(32)(clip))  # crop 4 = the centre crop
    corners = [crop_box(unnormalize(out[i])[0]) for i in range(4)]
    assert corners[0][0] < corners[1][0] and corners[0][2] < corners[2][2]


def test_rejects_non_uint8_clips():
    with pytest.raises(ValueError, match=r"expected a uint8 clip \(T, 3, H, W\)"):
        PretrainAugment(16)(torch.rand(4, 3, 20, 20))


# ---------------------------------------------------------------- the kernels vs plain per-frame references
def reference_frame(frame: torch.Tensor, b: float, c: float, s: float, h: float,
                    gray_channel: int | None) -> torch.Tensor:
    """docs/method.md §1 colour part of one uint8 frame (3, H, W), written plainly with torchvision: the
    channel copy as a loop, then the jitter in the fixed order, then Normalize."""
    x = frame.float() / 255
    if gray_channel is not None:
        source = x[gray_channel].clone()
        for channel in range(3):
            x[channel] = source
    x = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s), h)
    return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def reference_augment(clip: torch.Tensor, img_dim: int, p: float = 0.5) -> torch.Tensor:
    """PretrainAugment at the docs/method.md §1 strengths as the straightforward per-frame loop, drawing
    the same random numbers in the same order: crop box, flip, then per frame brightness,
    contrast, saturation factors (T,1,1,1), hue shifts (T,1,1), grayscale channel and decision."""
    box = random_resized_crop_box(clip.shape[-2], clip.shape[-1])
    small = TF.resized_crop(clip.contiguous(), *box, [img_dim, img_dim], antialias=True)
    if torch.rand(()) < 0.5:
        small = small.flip(-1)
    frames = clip.shape[0]
    b, c, s = (torch.empty(frames, 1, 1, 1).uniform_(0.5, 1.5) for _ in range(3))
    h = torch.empty(frames, 1, 1).uniform_(-0.25, 0.25)
    chosen = torch.randint(0, 3, (frames,))
    selected = torch.rand(frames) < p
    return torch.stack([reference_frame(small[t], float(b[t]), float(c[t]), float(s[t]),
                                        float(h[t]), int(chosen[t]) if selected[t] else None)
                        for t in range(frames)], dim=1)


def textured_clip(frames: int = 8, height: int = 40, width: int = 52) -> torch.Tensor:
    """Random colours with saturated, black and grey patches (the hue's edge cases), channels last
    as ``load_frames`` returns them."""
    clip = torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8)
    clip[:, :6, :6] = 255
    clip[:, -6:, -6:] = 0
    clip[:, :6, -6:] = 128
    clip[:, -6:, :6, 0] = 255  # pure hues: the sector ties
    clip[:, -6:, :6, 1:] = 0
    return clip.permute(0, 3, 1, 2)


@pytest.mark.parametrize("seed", range(4))
def test_pretrain_augment_equals_the_per_frame_reference_under_the_same_seed(seed):
    """The torchvision-exact kernel (``exact_color``) equals torchvision frame by frame."""
    clip = textured_clip()
    torch.manual_seed(seed)
    expected = reference_augment(clip, 24)
    next_draw = torch.rand(())
    torch.manual_seed(seed)
    out = PretrainAugment(24, exact_color=True)(clip)
    assert torch.equal(torch.rand(()), next_draw)  # the same draws, no more, no fewer
    assert out.shape == expected.shape == (3, 8, 24, 24)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def batch_and_factors() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clips (B=2, n+1=3, T=5, 3, 12, 14) and a fixed set of per-frame factors (hue up to ±0.5)."""
    g = torch.Generator().manual_seed(0)
    clips = torch.stack([textured_clip(5, 12, 14) for _ in range(6)]).view(2, 3, 5, 3, 12, 14)
    shape = (2, 3, 5)
    params = {"brightness": torch.empty(shape).uniform_(0.5, 1.5, generator=g),
              "contrast": torch.empty(shape).uniform_(0.5, 1.5, generator=g),
              "saturation": torch.empty(shape).uniform_(0.5, 1.5, generator=g),
              "hue": torch.empty(shape).uniform_(-0.5, 0.5, generator=g),
              "gray_channel": torch.randint(0, 3, shape, generator=g),
              "gray": torch.rand(shape, generator=g) < 0.5}
    return clips, params


@pytest.mark.parametrize("exact", [False, True])
def test_color_augment_batched_equals_the_per_frame_reference_for_given_factors(exact):
    """The batched path (one call for (B, n+1, T) frames, as train.py --gpu_augment runs it)
    with a fixed set of drawn factors, against the per-frame reference of each kernel:
    torchvision for ``exact``, the affine maths written plainly in float64 for the fast one."""
    clips, params = batch_and_factors()
    out = color_augment(clips, params, exact)
    assert out.shape == (2, 3, 3, 5, 12, 14) and out.dtype == torch.float32
    reference = reference_frame if exact else affine_reference_frame
    for i in range(2):
        for k in range(3):
            for t in range(5):
                f = {key: value[i, k, t].item() for key, value in params.items()}
                expected = reference(clips[i, k, t], f["brightness"], f["contrast"],
                                     f["saturation"], f["hue"],
                                     f["gray_channel"] if f["gray"] else None)
                torch.testing.assert_close(out[i, k, :, t], expected.float(),
                                           atol=1e-5 if exact else 2e-5, rtol=0)


@pytest.mark.parametrize("exact", [False, True])
def test_color_augment_without_colour_ops_is_to_float_and_normalise(exact):
    clips = torch.stack([textured_clip(4, 10, 12) for _ in range(2)])  # (2, T, 3, H, W)
    plain = ((clips.float() / 255 - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)).transpose(1, 2)
    torch.testing.assert_close(color_augment(clips, {}, exact), plain, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- the fast (affine) kernel
LUMA = (0.2989, 0.587, 0.114)


def affine_reference_frame(frame: torch.Tensor, b: float, c: float, s: float, h: float,
                           gray_channel: int | None) -> torch.Tensor:
    """The fast kernel's maths for one uint8 frame (3, H, W), written plainly in float64: channel
    copy, brightness with its clamp, contrast around the mean luma, saturation towards the luma,
    hue as the rotation about the grey axis by 2*pi*h (Rodrigues), one final clamp, Normalize."""
    x = frame.double() / 255
    if gray_channel is not None:
        x = x[gray_channel].expand(3, -1, -1)
    luma = torch.tensor(LUMA, dtype=torch.float64).view(3, 1, 1)
    x = (x * b).clamp(0, 1)
    x = c * x + (1 - c) * (luma * x).sum(0).mean()
    x = s * x + (1 - s) * (luma * x).sum(0)
    axis = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    cross = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]],
                          [-axis[1], axis[0], 0]], dtype=torch.float64)
    theta = 2 * math.pi * h
    rotation = (math.cos(theta) * torch.eye(3, dtype=torch.float64) + math.sin(theta) * cross
                + (1 - math.cos(theta)) * torch.outer(axis, axis))
    x = torch.einsum("ck,khw->chw", rotation, x).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    return (x - mean) / torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)


@pytest.mark.parametrize("seed", range(3))
def test_fast_pretrain_augment_draws_as_the_exact_one_and_follows_its_reference(seed):
    """The default kernel draws exactly the numbers the exact one draws (same RNG stream, so the
    two are interchangeable under a seed) and computes the affine reference per frame."""
    clip = textured_clip()
    torch.manual_seed(seed)
    exact = PretrainAugment(24, exact_color=True)(clip)
    next_draw = torch.rand(())
    torch.manual_seed(seed)
    aug = PretrainAugment(24)
    box = random_resized_crop_box(clip.shape[-2], clip.shape[-1])
    flip = bool(torch.rand(()) < 0.5)
    params = aug.draw_color(clip.shape[0])
    torch.manual_seed(seed)
    out = aug(clip)
    assert torch.equal(torch.rand(()), next_draw)
    small = TF.resized_crop(clip.contiguous(), *box, [24, 24], antialias=True)
    small = small.flip(-1) if flip else small
    for t in range(clip.shape[0]):
        f = {key: value[t].item() for key, value in params.items()}
        expected = affine_reference_frame(small[t], f["brightness"], f["contrast"],
                                          f["saturation"], f["hue"],
                                          f["gray_channel"] if f["gray"] else None)
        torch.testing.assert_close(out[:, t], expected.float(), atol=2e-5, rtol=0)
    assert (out - exact).abs().mean() < 0.1  # the two kernels: close, not equal


def test_fast_kernel_applies_each_factor_as_drawn():
    """Each op of the fast kernel alone does what its docs/method.md §1 factor says, on a frame whose
    values stay inside [0, 1]: brightness scales, contrast scales around the mean luma,
    saturation scales the distance from the luma, hue turns the colour about the grey axis
    (keeping the mean and the chroma norm; 1/3 turn takes red to green, -1/3 to blue)."""
    g = torch.Generator().manual_seed(0)
    frame = torch.randint(70, 150, (1, 1, 3, 6, 7), generator=g, dtype=torch.uint8)
    x = frame[0, 0].double() / 255
    luma = torch.tensor(LUMA, dtype=torch.float64).view(3, 1, 1)

    def apply(**factors: float) -> torch.Tensor:
        params = {key: torch.full((1, 1), value) for key, value in factors.items()}
        return unnormalize(color_augment(frame, params)[0])[0].double() / 255

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        torch.testing.assert_close(a, b, atol=2e-6, rtol=0)

    close(apply(brightness=1.3), 1.3 * x)
    mean = (luma * x).sum(0).mean()
    close(apply(contrast=1.4), 1.4 * (x - mean) + mean)
    gray = (luma * x).sum(0)
    close(apply(saturation=0.6), 0.6 * (x - gray) + gray)
    turned = apply(hue=0.1)
    close(turned.mean(0), x.mean(0))
    close((turned - turned.mean(0)).norm(dim=0), (x - x.mean(0)).norm(dim=0))
    assert (turned - x).abs().max() > 0.02
    red = torch.zeros(1, 1, 3, 2, 2, dtype=torch.uint8)
    red[:, :, 0] = 255
    for turn, channel in ((1 / 3, 1), (-1 / 3, 2)):
        params = {"hue": torch.full((1, 1), turn)}
        out = unnormalize(color_augment(red, params)[0])[0]
        expected = torch.zeros_like(out)
        expected[channel] = 255
        torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


def test_batched_colour_step_on_cpu_equals_the_per_clip_calls():
    """color_augment_batch (train.py --gpu_augment, here on CPU) runs the loader's kernel: the
    same output as one color_augment call per clip."""
    clips, params = batch_and_factors()
    out = color_augment_batch((clips.movedim(-3, -1).contiguous(), params), torch.device("cpu"))
    for i in range(2):
        for k in range(3):
            one = color_augment(clips[i, k], {key: value[i, k] for key, value in params.items()})
            torch.testing.assert_close(out[i, k], one, atol=1e-6, rtol=0)


@pytest.mark.parametrize("clips", [6, 5])
def test_fast_kernel_in_chunks_of_several_clips_equals_one_clip_at_a_time(monkeypatch, clips):
    """Off the CPU the fast kernel goes through chunks of several clips (a temporary, then a
    transposing copy); forced here on the CPU with chunks of 2 (and a rest of 1 for 5 clips)."""
    torch.manual_seed(0)
    batch = torch.stack([textured_clip(4, 10, 12) for _ in range(clips)])
    params = draw_color_params(clips * 4)
    params = {key: value.view(clips, 4) for key, value in params.items()}
    one_at_a_time = color_augment(batch, params)
    monkeypatch.setattr(color_affine, "_clips_per_chunk", lambda device, pixels: 2)
    torch.testing.assert_close(color_augment(batch, params), one_at_a_time, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- the distribution of the draws
def ks_uniform(samples: torch.Tensor, low: float, high: float) -> float:
    """Kolmogorov-Smirnov statistic of samples against U(low, high)."""
    x = samples.double().sort().values
    cdf = ((x - low) / (high - low)).clamp(0, 1)
    n = x.numel()
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max())


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_colour_factors_are_uniform_per_frame_as_method_1(strength):
    """docs/method.md §1 at --color_strength k: brightness, contrast, saturation ~ U(1-k/2, 1+k/2), hue ~
    U(-k/4, k/4), each frame its own draw (no correlation between neighbouring frames or between
    the ops), grayscale with p = 0.5 copying a uniformly chosen channel. Fixed seed; the KS
    bound is the 1 % critical value (1.63/sqrt(n)), the others 4-sigma bounds."""
    frames = 20000
    jitter = 0.5 * strength
    torch.manual_seed(0)
    params = draw_color_params(frames, jitter, jitter, jitter, 0.25 * strength, grayscale_p=0.5)
    critical = 1.63 / math.sqrt(frames)
    bounds = {"brightness": (1 - jitter, 1 + jitter), "contrast": (1 - jitter, 1 + jitter),
              "saturation": (1 - jitter, 1 + jitter), "hue": (-0.25 * strength, 0.25 * strength)}
    for name, (low, high) in bounds.items():
        values = params[name]
        assert values.shape == (frames,)
        assert low <= float(values.min()) and float(values.max()) <= high, name
        assert ks_uniform(values, low, high) < critical, name
        neighbours = torch.corrcoef(torch.stack([values[:-1], values[1:]]))[0, 1]
        assert abs(float(neighbours)) < 4 / math.sqrt(frames), name  # drawn per frame
    factors = torch.stack([params[name] for name in bounds])
    off_diagonal = torch.corrcoef(factors) - torch.eye(4)
    assert float(off_diagonal.abs().max()) < 4 / math.sqrt(frames)  # the ops drawn independently
    gray = params["gray"].double()
    assert abs(float(gray.mean()) - 0.5) < 4 * 0.5 / math.sqrt(frames)
    counts = torch.bincount(params["gray_channel"], minlength=3).double()
    chi2 = float(((counts - frames / 3) ** 2 / (frames / 3)).sum())
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_pretrain_augment_draws_the_method_1_strengths_per_frame():
    """PretrainAugment's defaults are docs/method.md §1's: per-frame factors in [0.5, 1.5] and hue in
    [-0.25, 0.25], spread uniformly over the range, a new draw for every frame and every clip."""
    torch.manual_seed(0)
    aug = PretrainAugment(16)
    draws = [aug.draw_color(16) for _ in range(200)]
    for name, (low, high) in {"brightness": (0.5, 1.5), "contrast": (0.5, 1.5),
                              "saturation": (0.5, 1.5), "hue": (-0.25, 0.25)}.items():
        values = torch.cat([d[name] for d in draws])
        assert ks_uniform(values, low, high) < 1.63 / math.sqrt(values.numel()), name
        assert all(len(set(d[name].tolist())) == 16 for d in draws), name  # one draw per frame
        assert not torch.equal(draws[0][name], draws[1][name]), name  # and per clip


# ---------------------------------------------------------------- the fast kernel vs torchvision
def real_clips() -> torch.Tensor:
    """Eight clips of 16 random crops (docs/method.md §1's boxes, resized to 112², flipped) of a real
    photo, matplotlib's grace_hopper.jpg (matplotlib is a runtime dependency)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from torchvision.io import decode_jpeg, read_file
    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (OSError, ValueError):
        pytest.skip("matplotlib's sample data is not installed")
    photo = decode_jpeg(read_file(str(path)))
    torch.manual_seed(0)
    aug = PretrainAugment(112)
    return torch.stack([aug.geometric(photo.unsqueeze(0).expand(16, -1, -1, -1).contiguous())
                        for _ in range(8)])


def test_fast_kernel_stays_close_to_torchvision_on_a_real_photo():
    """The fast kernel's distance from torchvision's maths (same factors), per pixel in
    normalised units, bounded in absolute terms and against the jitter's own size (the distance
    between the jittered and the un-jittered clips). Measured: mean 0.041 (9 % of the jitter's
    0.45), 99th percentile 0.47, max 2.1 (saturated pixels, where HSV and the rotation differ)."""
    clips = real_clips()
    torch.manual_seed(1)
    params = {key: value.view(8, 16) for key, value in draw_color_params(128).items()}
    exact = color_augment(clips, params, exact=True)
    fast = color_augment(clips, params)
    plain = color_augment(clips, {"gray": params["gray"], "gray_channel": params["gray_channel"]},
                          exact=True)
    deviation, jitter = (fast - exact).abs(), (exact - plain).abs()
    assert float(deviation.mean()) < 0.07
    assert float(deviation.mean()) < 0.15 * float(jitter.mean())
    assert float(deviation.flatten().kthvalue(int(0.99 * deviation.numel())).values) < 0.7
    assert float(deviation.max()) < 3.0
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert low - 1e-5 <= float(fast.min()) and float(fast.max()) <= high + 1e-5
