"""PretrainDataset / ClipDataset on tiny frame folders (docs/method.md §1, §5) and the skip policy."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from datasets.color import IMAGENET_MEAN, IMAGENET_STD
from datasets.downstream import ClipDataset
from datasets.frames import FrameError, frame_path, load_clip, load_frames
from datasets.pretrain import PretrainDataset
from datasets.sampling import eval_clip_indices, pretrain_indices, split_clips
from datasets.transforms import PretrainAugment, color_augment_batch


def frame_index(x: torch.Tensor) -> torch.Tensor:
    """Frame indices of normalised index-frames (grey level 5*index, see conftest): (..., 3, T, H, W) -> (..., T)."""
    red = x[..., 0, :, :, :].mean(dim=(-1, -2)) * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    return torch.round(red * 255 / 5).long()


class IdentityLayout:
    """A stand-in pretraining augmentation that keeps pixel values and frame size: the clip
    ``frames[index]`` as it is, no colour draws (``color_augment`` then only normalises)."""

    exact_color = False

    @staticmethod
    def geometric(frames: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return frames[index]

    @staticmethod
    def draw_color(frames: int) -> dict:
        return {}


def identity_layout(frames: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """The downstream stand-in: the clip ``frames[index]`` (default all), uint8 (T,3,H,W) ->
    float (3,T,H,W), normalised."""
    clip = frames if index is None else frames[index]
    return ((clip.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).transpose(0, 1)


def test_load_clip_decodes_each_frame_once_in_order(make_frame_folder):
    folder = make_frame_folder("v", num_frames=6)
    clip = load_clip(folder, [5, 0, 0, 3])
    assert clip.shape == (4, 3, 24, 32) and clip.dtype == torch.uint8
    assert (clip[:, 0, 0, 0].float() / 5).round().long().tolist() == [5, 0, 0, 3]


def test_pretrain_sample_shape_and_clip_layout(make_frame_folder, write_video_csv):
    make_frame_folder("a", num_frames=40)
    make_frame_folder("b", num_frames=18)  # n*T = 16 < 18: kept
    dataset = PretrainDataset(write_video_csv("pre.csv", [("a", 40), ("b", 18)]),
                              seq=8, sample=2, img_dim=16, rate=3.0)
    assert len(dataset) == 2
    sample = dataset[0]
    assert sample.shape == (3, 3, 8, 16, 16) and sample.dtype == torch.float32

    dataset.augment = IdentityLayout()
    torch.manual_seed(0)
    for index in (0, 1, 0, 1):
        frames = frame_index(dataset[index])  # (n+1, T)
        window = frames[:2].flatten()
        assert window.diff().min() >= 1 and window.max() < dataset.num_frames[index]
        assert torch.equal(frames[2], window[::2])  # global clip = every n-th index, last


def test_pretrain_filters_videos_too_short_for_one_sample(make_frame_folder, write_video_csv):
    make_frame_folder("a", num_frames=20)
    csv_file = write_video_csv("pre.csv", [("a", 20), ("b", 16)])
    assert len(PretrainDataset(csv_file, seq=8, sample=2, img_dim=16)) == 1
    with pytest.raises(ValueError, match="none of the 2 videos has at least 21 frames"):
        PretrainDataset(csv_file, seq=10, sample=2, img_dim=16)


def test_corrupt_jpeg_is_skipped_counted_and_warned_once(make_frame_folder, write_video_csv):
    make_frame_folder("good", num_frames=9)
    bad = make_frame_folder("bad", num_frames=9)  # n*T = 8: every window holds frames 1-7
    with open(frame_path(bad, 3), "wb") as handle:
        handle.write(b"\xff\xd8 not a jpeg")
    dataset = PretrainDataset(write_video_csv("pre.csv", [("good", 9), ("bad", 9)]),
                              seq=4, sample=2, img_dim=16)
    dataset.augment = IdentityLayout()
    with pytest.warns(RuntimeWarning, match=r"pre\.csv, row 2\).*bad/image_00004\.jpg: corrupt JPEG"):
        sample = dataset[1]
    assert sample.shape == (3, 3, 4, 24, 32)  # the good video stood in
    assert dataset.skipped == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the same video does not warn again
        dataset[1]
    assert dataset.skipped == 2


def test_strict_mode_makes_a_corrupt_frame_fatal(make_frame_folder, write_video_csv):
    bad = make_frame_folder("bad", num_frames=9)
    with open(frame_path(bad, 4), "wb") as handle:
        handle.write(b"")
    csv_file = write_video_csv("pre.csv", [("bad", 9)])
    dataset = PretrainDataset(csv_file, seq=4, sample=2, img_dim=16, strict=True)
    with pytest.raises(FrameError) as info:
        dataset[0]
    message = str(info.value)
    assert message.startswith(frame_path(bad, 4)) and "empty file" in message
    assert f"{csv_file}, row 1" in message and "strict=False" in message


def test_overclaimed_frames_are_skipped_and_all_bad_data_fails(make_frame_folder, write_video_csv):
    make_frame_folder("short", num_frames=10)
    dataset = ClipDataset(write_video_csv("t.csv", [("short", 30, 0), ("gone", 30, 0)]),
                          seq=20, img_dim=16, train=True)
    with pytest.warns(RuntimeWarning):
        with pytest.raises(RuntimeError, match="50 videos in a row failed to load"):
            dataset[0]
    assert dataset.skipped == 50


def test_clip_dataset_train_item(make_frame_folder, write_video_csv):
    make_frame_folder("a", num_frames=12)
    make_frame_folder("b", num_frames=5)  # shorter than a clip: indices clipped to the last frame
    dataset = ClipDataset(write_video_csv("t.csv", [("a", 12, 2), ("b", 5, 0)]), seq=8,
                          img_dim=16, train=True)
    assert dataset.num_classes == 3 and dataset.labels.tolist() == [2, 0]
    clip, label = dataset[1]
    assert clip.shape == (3, 8, 16, 16) and label == 0
    dataset.augment = identity_layout
    assert frame_index(dataset[1][0]).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert ClipDataset(dataset.csv_file, num_classes=10).num_classes == 10


@pytest.mark.parametrize("ten_crop", [False, True])
def test_clip_dataset_test_item_is_clip_major(make_frame_folder, write_video_csv, ten_crop):
    make_frame_folder("a", num_frames=30, height=20, width=28)
    dataset = ClipDataset(write_video_csv("t.csv", [("a", 30, 1)]), seq=4, img_dim=16,
                          train=False, ds=2, num_clips=3, ten_crop=ten_crop)
    clips, label = dataset[0]
    crops = 10 if ten_crop else 1
    assert clips.shape == (3 * crops, 3, 4, 16, 16) and label == 1
    expected = eval_clip_indices(30, seq=4, ds=2, num_clips=3).repeat_interleave(crops, dim=0)
    assert torch.equal(frame_index(clips), expected)


def test_loader_with_workers_is_reproducible(make_frame_folder, write_video_csv):
    for name in "abcd":
        make_frame_folder(name, num_frames=20, height=16, width=16)
    dataset = PretrainDataset(write_video_csv("pre.csv", [(n, 20) for n in "abcd"]), seq=4,
                              sample=2, img_dim=8)

    def run() -> torch.Tensor:
        torch.manual_seed(0)
        return next(iter(DataLoader(dataset, batch_size=4, num_workers=2)))

    first = run()
    assert first.shape == (4, 3, 3, 4, 8, 8)
    assert torch.equal(first, run())
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("strength, grayscale_p", [(1.0, 0.5), (0.0, 0.0)])
def test_color_on_device_loader_and_batched_colour_give_the_default_samples(
        make_frame_folder, write_video_csv, strength, grayscale_p):
    """train.py --gpu_augment: the loader ships uint8 clips + their colour draws, the batched
    colour step (here on CPU) rebuilds what the default loader gives under the same seed."""
    g = torch.Generator().manual_seed(0)
    for name in "abc":
        make_frame_folder(name, frames=torch.randint(0, 256, (20, 3, 24, 28), generator=g,
                                                     dtype=torch.uint8))
    csv_file = write_video_csv("pre.csv", [(n, 20) for n in "abc"])
    options = dict(seq=4, sample=2, img_dim=12, color_strength=strength, grayscale_p=grayscale_p)
    default = PretrainDataset(csv_file, **options)
    on_device = PretrainDataset(csv_file, **options, color_on_device=True)

    def first_batch(dataset: PretrainDataset):
        torch.manual_seed(0)
        return next(iter(DataLoader(dataset, batch_size=3)))

    clips, params = batch = first_batch(on_device)
    assert clips.shape == (3, 3, 4, 12, 12, 3) and clips.dtype == torch.uint8
    if strength == 0:
        assert params == {}
    else:
        assert set(params) == {"brightness", "contrast", "saturation", "hue", "gray_channel", "gray"}
        assert all(v.shape == (3, 3, 4) for v in params.values())
    out = color_augment_batch(batch, torch.device("cpu"))
    assert out.shape == (3, 3, 3, 4, 12, 12) and out.dtype == torch.float32
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    assert low - 1e-5 <= out.min() and out.max() <= high + 1e-5
    torch.testing.assert_close(out, first_batch(default), atol=1e-5, rtol=0)


@pytest.mark.parametrize("exact", [False, True])
def test_one_colour_call_per_sample_equals_augmenting_each_clip(
        make_frame_folder, write_video_csv, exact):
    """PretrainDataset colours the sample's n+1 uint8 clips in one call: the same numbers as
    PretrainAugment on each clip in turn (same draws, same kernel), for both kernels."""
    folder = make_frame_folder("a", frames=torch.randint(
        0, 256, (20, 3, 24, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8))
    csv_file = write_video_csv("pre.csv", [("a", 20)])
    dataset = PretrainDataset(csv_file, seq=4, sample=2, img_dim=12, exact_color=exact)
    torch.manual_seed(3)
    sample = dataset[0]
    torch.manual_seed(3)
    window = pretrain_indices(20, 4, 2, 3.0)
    unique, inverse = torch.unique(split_clips(window, 4, 2), return_inverse=True)
    augment = PretrainAugment(12, exact_color=exact)
    frames = load_frames(folder, unique.tolist())
    expected = torch.stack([augment(frames, clip) for clip in inverse])
    torch.testing.assert_close(sample, expected, atol=1e-5, rtol=0)


def test_relative_paths_and_data_root(tmp_path, make_frame_folder, write_video_csv):
    make_frame_folder("frames/a", num_frames=20)
    csv_file = write_video_csv("lists/pre.csv", [("a", 20)])
    dataset = PretrainDataset(csv_file, seq=4, sample=2, img_dim=8,
                              data_root=os.fspath(tmp_path / "frames"), validate_files=True)
    assert dataset.paths == [str(tmp_path / "frames" / "a")]
    assert dataset[0].shape == (3, 3, 4, 8, 8)


@pytest.mark.parametrize("damage", ["zero_bytes", "truncated"])
def test_zero_byte_and_truncated_jpegs_are_skipped_and_counted(make_frame_folder, write_video_csv,
                                                               damage):
    make_frame_folder("good", num_frames=9)
    bad = make_frame_folder("bad", num_frames=9)
    path = frame_path(bad, 3)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(b"" if damage == "zero_bytes" else data[: len(data) // 3])
    dataset = PretrainDataset(write_video_csv("pre.csv", [("good", 9), ("bad", 9)]),
                              seq=4, sample=2, img_dim=16)
    with pytest.warns(RuntimeWarning, match=r"bad/image_00004\.jpg"):
        sample = dataset[1]
    assert sample.shape == (3, 3, 4, 16, 16) and dataset.skipped == 1
