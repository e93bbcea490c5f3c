"""scripts/inspect_alignment.py: the local→global assignment matrix of docs/method.md §3.3."""
from __future__ import annotations

import math

import pytest
import torch

import train
from losses import local_global_alignment
from losses.alignment import alignment_logits
from pretrain_helpers import make_videos, tiny_argv
from scripts.inspect_alignment import alignment_assignment, main


def one_hot_steps(t: int, c: int = 16) -> torch.Tensor:
    """``(t, c)``: step ``k`` is the unit vector ``e_k``."""
    return torch.eye(t, c)


def test_resolved_timestamps_give_the_identity() -> None:
    """Local clip ``i`` step ``j`` pools (runs of n = 2) onto global step ``(i*t + j) // 2``."""
    n, t = 2, 4
    glob = one_hot_steps(t)[None]                                   # (1, t, C)
    sequence = glob[0].repeat_interleave(n, dim=0)                  # n*t steps, each global step twice
    local = sequence.view(1, n, t, -1)                              # (1, n, t, C)
    matrix = alignment_assignment(alignment_logits(local, glob))
    assert matrix.shape == (t, t)
    torch.testing.assert_close(matrix, torch.eye(t), atol=1e-5, rtol=0)


def test_clips_that_cannot_be_told_apart_split_the_mass() -> None:
    """Both local clips show the same features and the global clip repeats with period t/n:
    each local step matches ``k = m`` and ``k = m ± t/n`` equally — the demo's L_lg = ln 2."""
    n, t = 2, 8
    half = one_hot_steps(t // n)
    glob = torch.cat([half, half])[None]                            # period t/n
    clip = half.repeat_interleave(n, dim=0)                         # one clip pools onto t/n steps
    local = torch.stack([clip, clip])[None]
    matrix = alignment_assignment(alignment_logits(local, glob))
    expected = 0.5 * (torch.eye(t) + torch.eye(t).roll(t // n, dims=1))
    torch.testing.assert_close(matrix, expected, atol=1e-5, rtol=0)
    assert local_global_alignment(local, glob).item() == pytest.approx(math.log(2), abs=1e-4)


def test_random_features_rows_sum_to_one() -> None:
    g = torch.Generator().manual_seed(0)
    matrix = alignment_assignment(alignment_logits(torch.randn(5, 3, 6, 8, generator=g),
                                                   torch.randn(5, 6, 8, generator=g)))
    torch.testing.assert_close(matrix.sum(1), torch.ones(6))
    assert (matrix >= 0).all()


def test_script_on_a_train_checkpoint(tmp_path, capsys) -> None:
    csv = make_videos(tmp_path / "videos")
    train.main(tiny_argv(csv, tmp_path / "run", "--epoch", "1", "--split", "1"))
    result = main(["--checkpoint", str(tmp_path / "run" / "checkpoint_last.pth"),
                   "--csv_file", str(csv), "--videos", "6", "--batch", "4"])
    assert result["videos"] == 6
    for level in ("low", "mid", "high"):
        matrix = torch.tensor(result[level]["assignment"])
        t = matrix.shape[0]
        assert matrix.shape == (t, t)
        torch.testing.assert_close(matrix.sum(1), torch.ones(t))
        assert result[level]["chance"] == pytest.approx(math.log(t))
        assert 0 <= result[level]["loss"] < 10
    assert "L_lg" in capsys.readouterr().out
