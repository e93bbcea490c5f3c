"""Clip augmentation of METHOD §1: one crop box per clip, per-frame colour ops, exact formulas."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from datasets.transforms import (IMAGENET_MEAN, IMAGENET_STD, EvalTransform, PretrainAugment,
                                 TrainAugment, color_augment, color_jitter_per_frame,
                                 random_channel_grayscale, random_resized_crop_box)

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


def test_grayscale_comes_before_the_jitter():
    """METHOD §1 (and the reference code): a grayscale frame is one raw channel, so saturation and
    hue leave it gray; jitter first would copy a hue-rotated channel instead."""
    red = torch.zeros(1, 1, 3, 4, 4, dtype=torch.uint8)
    red[:, :, 0] = 255
    params = {"hue": torch.full((1, 1), 0.5), "saturation": torch.full((1, 1), 1.5),
              "gray": torch.ones(1, 1, dtype=torch.bool), "gray_channel": torch.zeros(1, 1, dtype=torch.long)}
    out = unnormalize(color_augment(red, params)[0])  # (T, 3, H, W) in [0, 255]
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


# ---------------------------------------------------------------- the fast path vs a plain reference
def reference_frame(frame: torch.Tensor, b: float, c: float, s: float, h: float,
                    gray_channel: int | None) -> torch.Tensor:
    """METHOD §1 colour part of one uint8 frame (3, H, W), written plainly with torchvision: the
    channel copy as a loop, then the jitter in the fixed order, then Normalize."""
    x = frame.float() / 255
    if gray_channel is not None:
        source = x[gray_channel].clone()
        for channel in range(3):
            x[channel] = source
    x = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s), h)
    return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def reference_augment(clip: torch.Tensor, img_dim: int, p: float = 0.5) -> torch.Tensor:
    """PretrainAugment at the METHOD §1 strengths as the straightforward per-frame loop, drawing
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
    clip = textured_clip()
    torch.manual_seed(seed)
    expected = reference_augment(clip, 24)
    next_draw = torch.rand(())
    torch.manual_seed(seed)
    out = PretrainAugment(24)(clip)
    assert torch.equal(torch.rand(()), next_draw)  # the same draws, no more, no fewer
    assert out.shape == expected.shape == (3, 8, 24, 24)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_color_augment_batched_equals_the_per_frame_reference_for_given_factors():
    """The batched path (one call for (B, n+1, T) frames, as train.py --gpu_augment runs it)
    with a fixed set of drawn factors, against the per-frame reference."""
    g = torch.Generator().manual_seed(0)
    clips = torch.stack([textured_clip(5, 12, 14) for _ in range(6)]).view(2, 3, 5, 3, 12, 14)
    shape = (2, 3, 5)
    params = {"brightness": torch.empty(shape).uniform_(0.5, 1.5, generator=g),
              "contrast": torch.empty(shape).uniform_(0.5, 1.5, generator=g),
              "saturation": torch.empty(shape).uniform_(0.5, 1.5, generator=g),
              "hue": torch.empty(shape).uniform_(-0.5, 0.5, generator=g),
              "gray_channel": torch.randint(0, 3, shape, generator=g),
              "gray": torch.rand(shape, generator=g) < 0.5}
    out = color_augment(clips, params)
    assert out.shape == (2, 3, 3, 5, 12, 14) and out.dtype == torch.float32
    for i in range(2):
        for k in range(3):
            for t in range(5):
                f = {key: value[i, k, t].item() for key, value in params.items()}
                expected = reference_frame(clips[i, k, t], f["brightness"], f["contrast"],
                                           f["saturation"], f["hue"],
                                           f["gray_channel"] if f["gray"] else None)
                torch.testing.assert_close(out[i, k, :, t], expected, atol=1e-5, rtol=0)


def test_color_augment_without_colour_ops_is_to_float_and_normalise():
    clips = torch.stack([textured_clip(4, 10, 12) for _ in range(2)])  # (2, T, 3, H, W)
    plain = ((clips.float() / 255 - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)).transpose(1, 2)
    torch.testing.assert_close(color_augment(clips, {}), plain, atol=1e-6, rtol=0)
