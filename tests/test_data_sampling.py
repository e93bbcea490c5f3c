"""Frame-index arithmetic of docs/method.md §1 against hand-written expectations."""

from __future__ import annotations

import math

import pytest
import torch

from datasets.sampling import (eval_clip_indices, pretrain_indices, split_clips,
                               train_clip_indices, window_indices)


def test_window_rounds_half_up_and_clips_to_last_frame():
    # round(3 + 1.5k): 3, 4.5, 6, 7.5, 9, 10.5, 12, 13.5 -> half up
    assert window_indices(3, 1.5, 8, 100).tolist() == [3, 5, 6, 8, 9, 11, 12, 14]
    assert window_indices(5, 2.0, 4, 9).tolist() == [5, 7, 8, 8]


def test_pretrain_indices_with_fixed_draws(monkeypatch):
    """r = 1 + (min(3, 100/8) - 1) * 0.5 = 2 and s = 7 give indices 7, 9, …, 21."""
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(0.5, dtype=torch.float64))
    drawn = {}

    def fake_randint(low, high, size, generator=None):
        drawn["range"] = (low, high)
        return torch.tensor(7)

    monkeypatch.setattr(torch, "randint", fake_randint)
    window = pretrain_indices(100, seq=4, sample=2, rate=3.0)
    assert drawn["range"] == (0, 100 - 2 * 8 + 1)  # s in {0, …, floor(num_frames - r*n*T)}
    assert window.tolist() == [7, 9, 11, 13, 15, 17, 19, 21]
    clips = split_clips(window, seq=4, sample=2)
    assert clips.tolist() == [[7, 9, 11, 13], [15, 17, 19, 21], [7, 11, 15, 19]]


def test_pretrain_indices_match_the_formula_under_a_seed():
    num_frames, seq, sample, rate = 75, 8, 3, 3.0
    length = seq * sample
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        u = torch.rand((), generator=g, dtype=torch.float64).item()
        r = 1 + (min(rate, num_frames / length) - 1) * u
        s = int(torch.randint(0, math.floor(num_frames - r * length) + 1, (), generator=g))
        expected = [min(math.floor(s + r * k + 0.5), num_frames - 1) for k in range(length)]
        got = pretrain_indices(num_frames, seq, sample, rate, torch.Generator().manual_seed(seed))
        assert got.tolist() == expected


def test_pretrain_window_invariants():
    g = torch.Generator().manual_seed(0)
    starts, spans = set(), []
    for _ in range(300):
        window = pretrain_indices(35, seq=4, sample=2, rate=3.0, generator=g)
        steps = window.diff()
        assert window.min() >= 0 and window.max() <= 34
        assert steps.min() >= 1 and steps.max() <= 3  # r in [1, 3], strictly increasing
        starts.add(int(window[0]))
        spans.append(int(window[-1] - window[0]))
    assert max(spans) > 7 + 5  # some windows use a rate well above 1
    assert min(starts) == 0


def test_rate_one_reaches_every_start_inclusive():
    g = torch.Generator().manual_seed(0)
    starts = {int(pretrain_indices(10, 4, 2, 1.0, g)[0]) for _ in range(200)}
    assert starts == {0, 1, 2}  # num_frames - n*T = 2 is a valid start


def test_pretrain_rejects_short_videos_and_rates_below_one():
    with pytest.raises(ValueError, match="num_frames > n\\*T = 32"):
        pretrain_indices(32, 16, 2, 3.0)
    with pytest.raises(ValueError, match="--rate must be >= 1"):
        pretrain_indices(64, 16, 2, 0.5)


def test_split_clips_global_clip_is_every_nth_index():
    window = torch.arange(12) * 2
    clips = split_clips(window, seq=4, sample=3)
    assert clips.shape == (4, 4)
    assert torch.equal(clips[:3].flatten(), window)
    assert clips[3].tolist() == [0, 6, 12, 18]


def test_train_clip_indices_stride_and_short_videos():
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(100):
        clip = train_clip_indices(20, seq=4, ds=3, generator=g)  # span 10 -> starts 0..10
        assert clip.diff().tolist() == [3, 3, 3]
        starts.add(int(clip[0]))
    assert starts == set(range(11))
    assert train_clip_indices(5, seq=8, ds=1).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]


def test_eval_clip_indices_spread_over_the_video():
    clips = eval_clip_indices(100, seq=10, ds=1, num_clips=3)
    assert clips[:, 0].tolist() == [0, 45, 90]
    assert clips[2].tolist() == list(range(90, 100))
    assert eval_clip_indices(100, seq=10, num_clips=1)[0, 0] == 45  # one clip: the middle one
    assert eval_clip_indices(40, seq=8, ds=2, num_clips=2)[:, 0].tolist() == [0, 25]
    assert eval_clip_indices(5, seq=8, num_clips=2).tolist() == [[0, 1, 2, 3, 4, 4, 4, 4]] * 2
