"""The synthetic motion-class data set: deterministic, class in the motion, not in the frames."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from datasets.csv_io import read_video_csv
from datasets.downstream import ClipDataset
from datasets.frames import load_clip
from datasets.pretrain import PretrainDataset
from datasets.synthetic import _draw_videos, _render, class_names, elevations, make_synthetic

SMALL = dict(num_videos=24, frames=12, size=32, num_classes=4, segment=0)  # one look per video


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, str]:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), seed=3, **SMALL)


def digest(root: str) -> str:
    sha = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            sha.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return sha.hexdigest()


def videos(csvs: dict[str, str]) -> pd.DataFrame:
    return pd.concat([read_video_csv(csvs[s], labelled=True) for s in ("train", "val")])


def motion_class(video: torch.Tensor, num_classes: int = 4, lag: int = 4) -> int:
    """The class whose elevation is nearest to the dominant displacement between frames t and
    t+lag, found by phase correlation of the background-free frames (a torus, as the renderer's).
    A crude motion reader: integer displacements of a few pixels, so near-boundary videos can
    miss."""
    gray = video.float().mean(dim=1)
    foreground = gray - gray.median(dim=0).values
    cross = torch.fft.fft2(foreground[lag:]) * torch.fft.fft2(foreground[:-lag]).conj()
    peak = torch.fft.ifft2(cross / (cross.abs() + 1e-6)).real.sum(dim=0)
    peak[0, 0] = -math.inf  # what the median left of the static background
    size = peak.shape[-1]
    dy, dx = ((int(i) + size // 2) % size - size // 2 for i in divmod(int(peak.argmax()), size))
    elevation = math.degrees(math.atan2(dy, abs(dx)))
    return min(range(num_classes), key=lambda c: abs(elevations(num_classes)[c] - elevation))


def test_layout_csvs_and_manifest(synthetic):
    root = Path(synthetic["train"]).parent
    train, val = (read_video_csv(synthetic[s], labelled=True) for s in ("train", "val"))
    pretrain = read_video_csv(synthetic["pretrain"], labelled=False, validate_files=True)
    assert len(train) + len(val) == 24 and len(val) == 4 * round(6 * 0.25)
    assert pretrain["path"].tolist() == train["path"].tolist()
    assert set(train["num_frames"]) == {12} and sorted(set(val["label"])) == [0, 1, 2, 3]
    assert (root / "frames" / "rise30").is_dir()
    assert all(not os.path.isabs(line.split(",")[0])
               for line in (root / "train.csv").read_text().splitlines())
    manifest = json.loads((root / "synthetic.json").read_text())
    assert manifest["params"]["seed"] == 3 and manifest["classes"] == ["up", "rise30", "fall30", "down"]


def test_deterministic_and_reused(tmp_path, synthetic):
    first = make_synthetic(tmp_path / "a", seed=3, **SMALL)
    assert digest(tmp_path / "a") == digest(Path(synthetic["train"]).parent)
    stamp = os.stat(first["train"]).st_mtime_ns
    assert make_synthetic(tmp_path / "a", seed=3, **SMALL) == first
    assert os.stat(first["train"]).st_mtime_ns == stamp  # same parameters: nothing rewritten
    make_synthetic(tmp_path / "a", seed=4, **SMALL)  # new parameters: regenerated
    assert digest(tmp_path / "a") != digest(Path(synthetic["train"]).parent)


def test_class_is_in_the_motion_reverses_with_time_and_survives_a_flip(synthetic):
    table = videos(synthetic)
    forward = backward = mirrored = 0
    frame_means = {c: [] for c in range(4)}
    for path, frames, label in zip(table["path"], table["num_frames"], table["label"]):
        video = load_clip(path, range(frames))
        forward += motion_class(video) == label
        backward += motion_class(video.flip(0)) == 3 - label  # time reversal: c -> C-1-c
        mirrored += motion_class(video.flip(-1)) == label  # a horizontal flip keeps the class
        frame_means[label].append(video[0].float().mean().item())
    assert min(forward, backward, mirrored) >= len(table) - 2  # chance: a quarter
    means = [sum(m) / len(m) for m in frame_means.values()]
    assert max(means) - min(means) < 10  # single frames look alike across classes (0-255 scale)


def test_looks_change_every_segment_while_motion_continues(tmp_path):
    """segment=4: the background is re-drawn at frames 4 and 8, so frame-to-frame change jumps
    there; the motion itself (the position track) is the same as with one look per video."""
    params = {**SMALL, "num_videos": 8}
    cut = make_synthetic(tmp_path / "cut", seed=5, **{**params, "segment": 4})
    still = make_synthetic(tmp_path / "still", seed=5, **params)
    for path in read_video_csv(cut["train"], labelled=True)["path"]:
        video = load_clip(path, range(12)).float()
        change = (video[1:] - video[:-1]).abs().mean(dim=(1, 2, 3))  # change into frame t+1
        at_cuts, within = change[[3, 7]], change[[0, 1, 2, 4, 5, 6, 8, 9, 10]]
        assert at_cuts.min() > 2 * within.max()
    drawn = _draw_videos(2, 32, 4, 3, torch.Generator().manual_seed(1))
    looks = ("radius", "square", "colour", "cell", "background")  # (N, segments, ...) each
    first_look = {k: v[:, :1] if k in looks else v for k, v in drawn.items()}
    cut, still = _render(drawn, 12, 32), _render(first_look, 12, 32)
    assert cut.shape == still.shape == (2, 12, 3, 32, 32)
    assert torch.equal(cut[:, :4], still[:, :4])  # same motion: identical until the first cut
    assert not torch.equal(cut[:, 4:], still[:, 4:])


def test_looks_pool_is_shared_across_classes():
    """looks=3: every video wears one of 3 appearances, drawn whatever its class; the motion
    parameters stay per video."""
    drawn = _draw_videos(24, 32, 4, 1, torch.Generator().manual_seed(2), looks=3)
    assert drawn["look"].min() >= 0 and drawn["look"].max() < 3
    for key in ("radius", "square", "colour", "cell", "background"):
        assert len(torch.unique(drawn[key].flatten(1), dim=0)) <= 3
        first_wearer = {int(k): v for v, k in reversed(list(enumerate(drawn["look"])))}
        for v in range(24):  # every video wears exactly its look
            assert torch.equal(drawn[key][v], drawn[key][first_wearer[int(drawn["look"][v])]])
    classes_per_look = [len(torch.unique(drawn["labels"][drawn["look"] == k])) for k in range(3)]
    assert max(classes_per_look) > 1  # a look is not a class
    assert len(torch.unique(drawn["velocity"].flatten(1), dim=0)) == 24
    unique = _draw_videos(24, 32, 4, 1, torch.Generator().manual_seed(2))
    assert torch.equal(unique["look"], torch.arange(24))


def test_feeds_the_datasets(synthetic):
    clips = PretrainDataset(synthetic["pretrain"], seq=4, sample=2, img_dim=16)[0]
    assert clips.shape == (3, 3, 4, 16, 16)
    clip, label = ClipDataset(synthetic["val"], seq=8, img_dim=16, train=False, num_clips=2)[1]
    assert clip.shape == (2, 3, 8, 16, 16) and label == 1


def test_class_names_and_argument_checks(tmp_path):
    assert class_names(2) == ["up", "down"]
    assert class_names(3) == ["up", "horizontal", "down"]
    assert class_names(6)[1:3] == ["rise54", "rise18"]
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        make_synthetic(tmp_path, num_classes=1)
    with pytest.raises(ValueError, match="num_videos"):
        make_synthetic(tmp_path, num_videos=4, num_classes=4)
    with pytest.raises(ValueError, match="looks=-1"):
        make_synthetic(tmp_path, looks=-1)
