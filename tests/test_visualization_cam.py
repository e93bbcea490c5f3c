"""Pure parts of the temporal-order probe and CAM (docs/method.md §5): shapes, linearity, rendering."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.classifier import pool_high
from visualization.cam import (
    NORMAL,
    REVERSED,
    class_activation_maps,
    colorize,
    denormalize,
    normalize_cam,
    order_pairs,
    overlay,
    save_gif,
    save_strip,
    strip_image,
    upsample_cam,
)


def test_order_pairs_flips_time_and_labels_both_orders() -> None:
    clips = torch.arange(2 * 3 * 4 * 1 * 1, dtype=torch.float32).view(2, 3, 4, 1, 1)
    inputs, targets = order_pairs(clips)
    assert inputs.shape == (4, 3, 4, 1, 1)
    assert targets.tolist() == [NORMAL, NORMAL, REVERSED, REVERSED]
    assert torch.equal(inputs[:2], clips)
    # frame k of the reversed copy is frame T-1-k of the clip
    for k in range(4):
        assert torch.equal(inputs[2:, :, k], clips[:, :, 3 - k])


def test_cam_shape_and_linearity_against_pooled_logits() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(3, 16, 2, 3, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(2, 16, generator=g, dtype=torch.float64)
    cam = class_activation_maps(features, weight)
    assert cam.shape == (3, 2, 2, 3, 5)
    # one position by hand
    assert torch.allclose(cam[1, 0, 1, 2, 4], features[1, :, 1, 2, 4] @ weight[0])
    # averaged over (t, h, w), the CAM is the head's logits on the pooled feature
    # (pool_high: the probe's pooling, docs/method.md §5)
    torch.testing.assert_close(cam.mean(dim=(2, 3, 4)), pool_high(features).double() @ weight.t(),
                               atol=1e-5, rtol=0)
    # the same in float32, which is what the script runs in
    torch.testing.assert_close(class_activation_maps(features.float(), weight.float())
                               .mean(dim=(2, 3, 4)), pool_high(features) @ weight.float().t(),
                               atol=1e-5, rtol=0)


def test_cam_rejects_mismatched_channels() -> None:
    with pytest.raises(ValueError, match="disagree"):
        class_activation_maps(torch.zeros(1, 8, 1, 2, 2), torch.zeros(2, 4))


@pytest.mark.parametrize("size", [(16, 112, 112), (8, 32, 40), (5, 17, 23)])
def test_upsample_matches_clip_size(size: tuple[int, int, int]) -> None:
    cam = torch.randn(2, 2, 2, 4, 4)
    up = upsample_cam(cam, size)
    assert up.shape == (2, 2, *size)
    assert up.dtype == torch.float32
    # trilinear with align_corners=False interpolates: never outside the input's range
    assert up.min() >= cam.min() - 1e-6 and up.max() <= cam.max() + 1e-6


def test_upsample_by_integer_factors_keeps_the_mean() -> None:
    # with align_corners=False and integer factors every input cell gets the same total weight,
    # so the upsampled map still averages to the pooled logits
    features = torch.randn(2, 8, 2, 3, 3, dtype=torch.float64)
    weight = torch.randn(2, 8, dtype=torch.float64)
    up = upsample_cam(class_activation_maps(features, weight), (8, 24, 12))
    torch.testing.assert_close(up.mean(dim=(2, 3, 4)), pool_high(features) @ weight.float().t(),
                               atol=1e-5, rtol=0)


def test_upsample_constant_map_stays_constant() -> None:
    up = upsample_cam(torch.full((1, 2, 2, 2, 2), 3.5), (4, 7, 9))
    assert torch.allclose(up, torch.full_like(up, 3.5))


def test_normalize_cam_per_clip_and_class() -> None:
    cam = torch.randn(3, 2, 4, 5, 6) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1, 1, 1)
    cam[2, 1] = 7.0  # a constant map
    norm = normalize_cam(cam)
    assert norm.shape == cam.shape
    flat = norm.flatten(2)
    assert torch.allclose(flat[:2].amin(dim=2), torch.zeros(2, 2))
    assert torch.allclose(flat[:2].amax(dim=2), torch.ones(2, 2))
    assert torch.allclose(flat[2, 0].amin(), torch.tensor(0.0))
    assert torch.allclose(flat[2, 0].amax(), torch.tensor(1.0))
    assert torch.equal(norm[2, 1], torch.zeros(4, 5, 6))
    # monotone: the order of values inside a map is kept
    assert torch.equal(flat[0, 0].argsort(), cam.flatten(2)[0, 0].argsort())


def test_denormalize_inverts_normalisation() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    frames = torch.randint(0, 256, (4, 6, 7, 3), dtype=torch.uint8)
    clip = (frames.permute(3, 0, 1, 2).float() / 255.0 - torch.tensor(mean).view(3, 1, 1, 1)) \
        / torch.tensor(std).view(3, 1, 1, 1)
    out = denormalize(clip, mean, std)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 7, 3)
    assert np.array_equal(out, frames.numpy())


def test_colorize_uses_the_colour_map_ends() -> None:
    rgb = colorize(np.array([0.0, 1.0]))
    assert rgb.shape == (2, 3) and rgb.dtype == np.uint8
    # jet: dark blue at 0, dark red at 1
    assert rgb[0, 2] > 100 and rgb[0, 0] == 0
    assert rgb[1, 0] > 100 and rgb[1, 2] == 0


def test_overlay_blends() -> None:
    frames = np.full((2, 3, 4, 3), 200, dtype=np.uint8)
    heat = np.zeros((2, 3, 4))
    heat[1] = 1.0
    out = overlay(frames, heat, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    blue, red = colorize(np.array([0.0, 1.0])).astype(np.float32)
    assert np.array_equal(out[0, 0, 0], np.round(0.5 * 200 + 0.5 * blue).astype(np.uint8))
    assert np.array_equal(out[1, 2, 3], np.round(0.5 * 200 + 0.5 * red).astype(np.uint8))
    assert np.array_equal(overlay(frames, heat, alpha=0.0), frames)
    assert np.array_equal(overlay(frames, torch.from_numpy(heat), alpha=1.0)[1, 0, 0], red)
    with pytest.raises(ValueError, match="must match"):
        overlay(frames, np.zeros((2, 3, 5)))


def test_strip_and_gif_are_written_and_readable(tmp_path) -> None:
    t, h, w = 5, 6, 7
    rows = [np.full((t, h, w, 3), 40 * r, dtype=np.uint8) for r in range(4)]
    strip = strip_image(rows, pad=2)
    assert strip.shape == (4 * h + 3 * 2, t * w + (t - 1) * 2, 3)
    assert np.array_equal(strip[h + 2, 0], [40, 40, 40])  # first pixel of row 1
    assert np.array_equal(strip[h, 0], [255, 255, 255])  # padding between rows 0 and 1

    png = save_strip(tmp_path / "sub" / "s.png", rows, pad=2)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (t * w + (t - 1) * 2, 4 * h + 3 * 2)
        assert np.array_equal(np.asarray(im.convert("RGB")), strip)

    frames = np.stack([np.full((h, w, 3), 50 * i, dtype=np.uint8) for i in range(t)])
    gif = save_gif(tmp_path / "a.gif", frames, duration_ms=80)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == (w, h)
        assert im.n_frames == t and im.is_animated
        assert im.info["duration"] == 80
        im.seek(3)
        assert np.abs(np.asarray(im.convert("RGB")).astype(int) - 150).max() <= 2
