"""The objectives of docs/method.md §3 against brute-force references written with explicit loops
(float64), their invariants, and a tiny model that the objective trains.

Single process throughout (no process group); the two-process equivalence is in
``tests/test_losses_distributed.py``.
"""
from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losses import (
    LossWeights,
    MultiLevelObjective,
    ScoreQueue,
    add_loss_args,
    graph_loss,
    graph_target,
    instance_contrast,
    instance_graph,
    local_global_alignment,
    motion_contrast,
    multi_positive_contrast,
    pseudo_labels,
    sinkhorn,
    swapped_prediction,
)
from models.multilevel import freeze_prototypes_grad
from models.output import LEVELS, MultiLevelOutput

TAU = 0.07


TIMES = {"low": 8, "mid": 4, "high": 2}


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=1e-5)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.double(), dim=-1)


# ----------------------------------------------------------------------------- references
# Written straight from docs/method.md §3 with Python loops over videos, clips and entries.


def ref_instance(z: torch.Tensor, tau: float = TAU) -> tuple[torch.Tensor, torch.Tensor]:
    """§3.1 on the whole batch z (B, n, C): loss and G_ins (B, B)."""
    zn = _unit(z)
    big_b, n, _ = zn.shape
    losses = []
    for i in range(big_b):
        for a in range(n):
            pos = neg = 0.0
            for j in range(big_b):
                for c in range(n):
                    e = torch.exp(zn[i, a] @ zn[j, c] / tau)
                    if j == i and c != a:
                        pos = pos + e
                    elif j != i:
                        neg = neg + e
            losses.append(-torch.log(pos / (pos + neg)))
    g = torch.zeros(big_b, big_b, dtype=torch.float64)
    for i in range(big_b):
        row = [math.exp(float(zn[i, 0].detach() @ zn[j, 1].detach()) / tau) for j in range(big_b)]
        for j in range(big_b):
            g[i, j] = row[j] / sum(row)
    return torch.stack(losses).mean(), g


def ref_motion(z: torch.Tensor, z_rev: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """§3.2: positives = other normal clips of the video; negatives = normal clips of other
    videos + every reversed clip of the same video."""
    zn, rn = _unit(z), _unit(z_rev)
    big_b, n, _ = zn.shape
    losses = []
    for i in range(big_b):
        for a in range(n):
            pos = neg = 0.0
            for j in range(big_b):
                for c in range(n):
                    e = torch.exp(zn[i, a] @ zn[j, c] / tau)
                    if j == i and c != a:
                        pos = pos + e
                    elif j != i:
                        neg = neg + e
            for c in range(n):
                neg = neg + torch.exp(zn[i, a] @ rn[i, c] / tau)
            losses.append(-torch.log(pos / (pos + neg)))
    return torch.stack(losses).mean()


def ref_alignment(fine_local: torch.Tensor, fine_global: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """§3.3 literally: pool each local clip's t steps to t/n (groups of n), concatenate."""
    b, n, t, _ = fine_local.shape
    assert t % n == 0
    losses = []
    for v in range(b):
        steps = []
        for clip in range(n):
            for s in range(t // n):
                steps.append(fine_local[v, clip, s * n:(s + 1) * n].double().mean(0))
        local = _unit(torch.stack(steps))
        glob = _unit(fine_global[v])
        logits = [[local[m] @ glob[k] / tau for k in range(t)] for m in range(t)]
        for m in range(t):
            row = torch.stack(logits[m])
            losses.append(0.5 * -(row[m] - torch.logsumexp(row, 0)))
        for k in range(t):
            col = torch.stack([logits[m][k] for m in range(t)])
            losses.append(0.5 * -(col[k] - torch.logsumexp(col, 0)))
    return torch.stack(losses).sum() / (b * t)


def ref_sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn in float64, without the max shift, rows and columns one at a time."""
    q = torch.exp(scores.detach().double() / eps).T.clone()  # (K, N)
    k, n = q.shape
    q /= q.sum()
    for _ in range(iters):
        for r in range(k):
            q[r] /= q[r].sum() * k
        for c in range(n):
            q[:, c] /= q[:, c].sum() * n
    return (q * n).T


def ref_swapped(scores: torch.Tensor, codes: torch.Tensor, temp: float = 0.1) -> torch.Tensor:
    b, n, _ = scores.shape
    per_video = []
    for i in range(b):
        acc = 0.0
        for a in range(n):
            for c in range(n):
                if a != c:
                    logits = scores[i, c].double() / temp
                    log_p = logits - torch.logsumexp(logits, 0)
                    acc = acc - (codes[i, a].double() * log_p).sum()
        per_video.append(acc / (n * (n - 1)))
    return torch.stack(per_video).mean()


def ref_graph_target(g_ins, labels_local, labels_global, thres, offset) -> torch.Tensor:
    b, big_b = g_ins.shape
    out = torch.zeros(b, big_b, dtype=torch.float64)
    for i in range(b):
        for j in range(big_b):
            value = float(g_ins[i, j])
            if value < thres and j != offset + i:
                value = 0.0
            if labels_local[i] != labels_global[j]:
                value = 0.0
            out[i, j] = value
        out[i] /= out[i].sum()
    return out


def ref_graph_loss(g0, g1, target, tau: float = TAU) -> torch.Tensor:
    a, c = _unit(g0), _unit(g1)
    b, big_b = target.shape
    total = 0.0
    for i in range(b):
        denom = sum(torch.exp(a[i] @ c[k] / tau) for k in range(big_b))
        for j in range(big_b):
            p = torch.exp(a[i] @ c[j] / tau) / denom
            total = total - torch.log(p) * target[i, j]
    return total / (b * big_b)


# ----------------------------------------------------------------------------- fixtures


def make_output(b: int, n: int, c: int, k: int, seed: int, grad: bool = True) -> MultiLevelOutput:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(grad)

    protos = F.normalize(torch.randn(k, c, generator=g), dim=1)
    head = F.normalize(torch.randn(b, n, c, generator=g), dim=-1)
    return MultiLevelOutput(
        proj={lv: r(b, n, c) for lv in LEVELS},
        proj_reversed={lv: r(b, n, c) for lv in ("low", "mid")},
        fine_local={lv: r(b, n, t, c) for lv, t in TIMES.items()},
        fine_global={lv: r(b, t, c) for lv, t in TIMES.items()},
        prototype_scores=(head @ protos.T).requires_grad_(grad),
        graph={lv: r(b, n, c) for lv in LEVELS},
    )


# ----------------------------------------------------------------------------- §3.1 / §3.2


@pytest.mark.parametrize("n", [2, 3])
def test_instance_contrast_matches_reference(n: int) -> None:
    z = torch.randn(4, n, 8, requires_grad=True)
    loss, g_ins = instance_contrast(z, TAU)
    z64 = z.detach().double().requires_grad_(True)
    ref_loss, ref_g = ref_instance(z64)
    close(loss, ref_loss)
    close(g_ins, ref_g)
    assert not g_ins.requires_grad and g_ins.shape == (4, 4)
    loss.backward()
    ref_loss.backward()
    close(z.grad, z64.grad)


@pytest.mark.parametrize("n", [2, 3])
def test_motion_contrast_matches_reference(n: int) -> None:
    z = torch.randn(3, n, 8, requires_grad=True)
    z_rev = torch.randn(3, n, 8, requires_grad=True)
    loss = motion_contrast(z, z_rev, TAU)
    z64 = z.detach().double().requires_grad_(True)
    r64 = z_rev.detach().double().requires_grad_(True)
    ref = ref_motion(z64, r64)
    close(loss, ref)
    loss.backward()
    ref.backward()
    close(z.grad, z64.grad)
    close(z_rev.grad, r64.grad)
    # the reversed copies really are negatives: making them equal to the query raises the loss
    assert motion_contrast(z, z.detach().clone(), TAU) > instance_contrast(z, TAU)[0]


def test_multi_positive_contrast_by_hand() -> None:
    inf = float("inf")
    pos = torch.tensor([[1.0, -inf], [0.5, 0.0]])
    denominator = torch.tensor([[1.0, 2.0, -inf], [0.5, 0.0, 3.0]])
    expected = ((math.log(math.e + math.e ** 2) - 1.0)
                + (math.log(math.e ** 0.5 + 1 + math.e ** 3) - math.log(math.e ** 0.5 + 1))) / 2
    close(multi_positive_contrast(pos, denominator), torch.tensor(expected))
    # the denominator may come in blocks (read as their concatenation)
    close(multi_positive_contrast(pos, [denominator[:, :1], denominator[:, 1:]]), torch.tensor(expected))


def test_instance_graph_alone_equals_the_contrast_by_product() -> None:
    z = torch.randn(4, 3, 8)
    close(instance_graph(z, TAU), instance_contrast(z, TAU)[1])


def test_contrast_needs_two_clips() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        instance_contrast(torch.randn(3, 1, 8), TAU)


# ----------------------------------------------------------------------------- §3.3


@pytest.mark.parametrize("n,t", [(2, 8), (2, 2), (3, 6)])
def test_alignment_matches_reference(n: int, t: int) -> None:
    fl = torch.randn(3, n, t, 8, requires_grad=True)
    fg = torch.randn(3, t, 8, requires_grad=True)
    loss = local_global_alignment(fl, fg, TAU)
    fl64 = fl.detach().double().requires_grad_(True)
    fg64 = fg.detach().double().requires_grad_(True)
    ref = ref_alignment(fl64, fg64)
    close(loss, ref)
    loss.backward()
    ref.backward()
    close(fl.grad, fl64.grad)
    close(fg.grad, fg64.grad)


def test_alignment_when_n_does_not_divide_t() -> None:
    """n=3 clips, t=2 steps: global step k covers concatenated local steps [3k, 3k+3), which
    straddles clips (documented choice in losses/alignment.py)."""
    fl = torch.randn(2, 3, 2, 8)
    fg = torch.randn(2, 2, 8)
    concat = fl.reshape(2, 6, 8)
    pooled = torch.stack([concat[:, 0:3].mean(1), concat[:, 3:6].mean(1)], dim=1)  # (b, 2, C)
    # same loss as n=1 "clip" already at the global resolution
    expected = local_global_alignment(pooled.unsqueeze(1), fg, TAU)
    close(local_global_alignment(fl, fg, TAU), expected)
    # step 0 = clip0 steps 0,1 + clip1 step 0
    close(pooled[:, 0], (fl[:, 0, 0] + fl[:, 0, 1] + fl[:, 1, 0]) / 3)


def test_alignment_shape_errors() -> None:
    with pytest.raises(ValueError, match="fine_local"):
        local_global_alignment(torch.randn(2, 2, 4, 8), torch.randn(2, 2, 8), TAU)


# ----------------------------------------------------------------------------- §3.4


def _cosine_scores(n: int, k: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, d, generator=g), dim=1)
    return feats @ F.normalize(torch.randn(k, d, generator=g), dim=1).T


def _mass_deviation(codes: torch.Tensor) -> float:
    """Max relative deviation of the per-prototype mass from the uniform N/K."""
    n, k = codes.shape
    return ((codes.sum(0) - n / k).abs() / (n / k)).max().item()


def test_sinkhorn_matches_reference_and_invariants() -> None:
    scores = _cosine_scores(64, 10, 16, seed=0).requires_grad_(True)
    codes = sinkhorn(scores, eps=0.05, iters=3)
    close(codes, ref_sinkhorn(scores))
    assert not codes.requires_grad and codes.dtype == torch.float32
    close(codes.sum(1), torch.ones(64))                        # each code row sums to 1
    # Column (prototype) mass is only near N/K after 3 iterations; measured max relative
    # deviation: 0.31 here (16-d features, peaky scores), 0.029 for 128-d features, 0.002-0.006
    # at the paper's scale (1024 rows, K=1000, 128-d, 3 seeds); it shrinks with more iterations.
    devs = [_mass_deviation(sinkhorn(scores, iters=i)) for i in (3, 10, 30)]
    assert 0.2 < devs[0] < 0.35 and devs[1] < 0.05 and devs[2] < 1e-3, devs
    assert _mass_deviation(sinkhorn(_cosine_scores(64, 10, 128, seed=0))) < 0.05
    # batched over a leading dim = independent problems
    both = sinkhorn(torch.stack([scores, scores.flip(0)]).detach())
    close(both[0], codes)
    close(both[1], codes.flip(0))


def test_sinkhorn_is_shift_safe() -> None:
    """The max shift keeps exp finite where exp(score/eps) overflows float32 (score > 4.4)."""
    scores = 4.0 + 0.5 * torch.randn(12, 5, generator=torch.Generator().manual_seed(1))
    assert not torch.isfinite(torch.exp(scores / 0.05)).all()
    codes = sinkhorn(scores)
    close(codes, ref_sinkhorn(scores))
    close(codes.sum(1), torch.ones(12))


@pytest.mark.parametrize("n", [2, 3])
def test_swapped_prediction_matches_reference(n: int) -> None:
    scores = torch.randn(4, n, 6, requires_grad=True)
    codes = torch.softmax(torch.randn(4, n, 6), -1).requires_grad_(True)
    loss = swapped_prediction(scores, codes, 0.1)
    s64 = scores.detach().double().requires_grad_(True)
    ref = ref_swapped(s64, codes.detach())
    close(loss, ref)
    loss.backward()
    ref.backward()
    close(scores.grad, s64.grad)
    assert codes.grad is None                                  # gradient reaches the scores only
    if n == 2:  # the method's two-clip formula
        lp = F.log_softmax(scores.detach() / 0.1, -1)
        two = -0.5 * (codes[:, 1] * lp[:, 0] + codes[:, 0] * lp[:, 1]).sum(-1).mean()
        close(loss, two)


def test_pseudo_labels() -> None:
    codes = torch.tensor([[[0.6, 0.4, 0.0], [0.0, 0.5, 0.5]], [[0.1, 0.1, 0.8], [0.2, 0.1, 0.7]]])
    assert pseudo_labels(codes).tolist() == [1, 2]


def test_score_queue_fifo() -> None:
    q = ScoreQueue(size=5, num_prototypes=3, num_clips=2)
    assert q.num_filled == 0 and q.rows().shape == (2, 0, 3)

    def batch(start: int, b: int) -> torch.Tensor:  # row value = video id, clip c adds 100*c
        ids = torch.arange(start, start + b, dtype=torch.float32)
        return (ids[:, None, None] + 100 * torch.arange(2)[None, :, None]).expand(b, 2, 3).clone()

    q.push(batch(0, 2))
    assert q.num_filled == 2 and q.rows()[0, :, 0].tolist() == [0, 1]
    q.push(batch(2, 2))
    q.push(batch(4, 2))                                        # 6 rows pushed into 5
    assert q.num_filled == 5 and int(q.filled) == 5
    assert q.rows()[0, :, 0].tolist() == [1, 2, 3, 4, 5]       # oldest first, batch last
    assert q.rows()[1, :, 0].tolist() == [101, 102, 103, 104, 105]
    q.push(batch(10, 7))                                       # bigger than the queue
    assert q.rows()[0, :, 0].tolist() == [12, 13, 14, 15, 16]

    scores = torch.randn(3, 2, 3)
    alone = q.codes(scores, use_queue=False)
    close(alone[:, 0], sinkhorn(scores[:, 0]))
    # default (the reference's): the newest 5 rows, the batch of 3 among them
    with_queue = q.codes(scores, use_queue=True)
    close(with_queue[:, 1], sinkhorn(torch.cat([q.rows()[1, -2:], scores[:, 1]]))[-3:])
    assert not torch.allclose(alone, with_queue)
    plus_batch = q.codes(scores, use_queue=True, rows="plus_batch")   # 5 queued rows + the batch
    close(plus_batch[:, 1], sinkhorn(torch.cat([q.rows()[1], scores[:, 1]]))[-3:])
    assert q.rows()[0, :, 0].tolist() == [12, 13, 14, 15, 16]  # codes() does not modify it

    # state_dict round trip (the clip count and fill count travel; a fresh queue adopts them)
    fresh = ScoreQueue(size=5, num_prototypes=3, num_clips=3)
    fresh.load_state_dict(q.state_dict())
    assert fresh.num_filled == 5 and torch.equal(fresh.rows(), q.rows())
    # another --queue_size on resume: the flag wins, the newest rows are kept
    small, large = ScoreQueue(size=3, num_prototypes=3), ScoreQueue(size=8, num_prototypes=3)
    small.load_state_dict(q.state_dict())
    large.load_state_dict(q.state_dict())
    assert small.num_filled == 3 and small.rows()[0, :, 0].tolist() == [14, 15, 16]
    assert large.num_filled == 5 and large.rows()[0, :, 0].tolist() == [12, 13, 14, 15, 16]


def test_queue_of_an_earlier_checkpoint_format_is_restored() -> None:
    """Earlier checkpoints saved per-rank shards (world, n, shard, K): all their filled rows
    become the queue (Sinkhorn does not depend on the row order)."""
    shard = torch.arange(2 * 4, dtype=torch.float32).view(1, 2, 4, 1).expand(2, 2, 4, 3).clone()
    shard[1] += 1000                                           # rank 1's rows
    obj = MultiLevelObjective(cluster=3, queue_size=8)
    obj.load_checkpoint_state({"queue": {"scores": shard, "filled": torch.tensor(3)}})
    assert obj.queue.num_filled == 6
    assert sorted(obj.queue.rows()[0, :, 0].tolist()) == [1, 2, 3, 1001, 1002, 1003]


@pytest.mark.parametrize("rows", ["include_batch", "plus_batch"])
def test_sinkhorn_rows_with_the_queue(rows: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows Sinkhorn receives once the queue is used (docs/method.md §3.4), counted on the
    call, while the queue fills and once it is full: include_batch (the reference code's) = the
    newest queue_size rows, the batch among them; plus_batch = the queued rows + the batch. The
    codes are the batch's rows of that problem."""
    import losses.prototypes as prototypes

    calls: list[tuple[int, int, int]] = []
    real = prototypes.sinkhorn

    def spy(blocks, **kw):
        calls.append((sum(blk.shape[-2] for blk in blocks), kw["n_global"], kw["last"]))
        return real(blocks, **kw)

    monkeypatch.setattr(prototypes, "sinkhorn", spy)
    b, n, k, size = 4, 2, 5, 10
    w = LossWeights(**{f: 0.0 for f in LossWeights.__dataclass_fields__})
    w.proto = 1.0
    obj = MultiLevelObjective(w, split=100, queue_start=0, queue_size=size, cluster=k, queue_rows=rows)
    queued = torch.zeros(0, n, k)                              # the queue's content, mirrored
    for step in range(4):                                      # queued before: 0, 4, 8, 10 rows
        out = make_output(b, n, 8, k, seed=step, grad=False)
        res = obj(out, epoch=0)
        scores = out.prototype_scores
        used = min(len(queued), size - b) if rows == "include_batch" else len(queued)
        assert calls[-1] == (used + b, used + b, b)
        expected = {"include_batch": [4, 8, 10, 10], "plus_batch": [4, 8, 12, 14]}[rows][step]
        assert calls[-1][0] == expected
        problem = torch.cat([queued[len(queued) - used:], scores])  # newest queued, batch last
        codes = torch.stack([ref_sinkhorn(problem[:, a])[-b:] for a in range(n)], 1)
        close(res.total, ref_swapped(scores, codes))
        queued = torch.cat([queued, scores])[-size:]
    assert obj.queue.num_filled == size
    # a queue no longer than the global batch: include_batch solves over the batch alone
    small = ScoreQueue(size=3, num_prototypes=k)
    small.push(torch.randn(3, 2, k))
    scores = torch.randn(4, 2, k)
    assert small.rows_used(4, "include_batch") == 0 and small.rows_used(4, "plus_batch") == 3
    close(small.codes(scores, use_queue=True), small.codes(scores, use_queue=False))
    with pytest.raises(ValueError, match="queue_rows"):
        MultiLevelObjective(cluster=k, queue_rows="all")


@pytest.mark.parametrize("rows", ["include_batch", "plus_batch"])
def test_resumed_queue_gives_the_same_codes(rows: str, tmp_path) -> None:
    """A checkpoint taken mid-run (through utils.checkpoint, weights_only) restores the queue:
    the resumed objective continues with the codes and losses of the straight run, in either
    --queue_rows mode (the queue's content does not depend on it)."""
    from utils.checkpoint import save_checkpoint, load_checkpoint

    b, n, c, k = 4, 2, 8, 5
    outs = [make_output(b, n, c, k, seed=s, grad=False) for s in range(5)]

    def make() -> MultiLevelObjective:
        return MultiLevelObjective(split=3, queue_start=2, queue_size=10, cluster=k, queue_rows=rows)

    straight, first = make(), make()
    totals = [straight(out, epoch=e).total for e, out in enumerate(outs)]
    for e in range(2):
        first(outs[e], epoch=e)
    save_checkpoint({"objective": first.checkpoint_state()}, tmp_path / "ckpt.pth")
    resumed = make()
    resumed.load_checkpoint_state(load_checkpoint(tmp_path / "ckpt.pth")["objective"])
    assert resumed.queue.num_filled == 8
    for e in range(2, 5):
        res = resumed(outs[e], epoch=e)
        close(res.total, totals[e], atol=1e-6)
    assert torch.equal(resumed.queue.rows(), straight.queue.rows())


# ----------------------------------------------------------------------------- §3.5


def test_graph_target_matches_reference() -> None:
    g = torch.Generator().manual_seed(3)
    g_ins = torch.softmax(torch.randn(3, 6, generator=g) * 3, dim=1)
    g_ins[1, 4] = 1e-4                                          # tiny diagonal (offset 3 + 1)
    g_ins.requires_grad_(True)
    labels_global = torch.tensor([0, 1, 0, 2, 1, 2])
    labels_local = labels_global[3:6]
    target = graph_target(g_ins, labels_local, labels_global, thres=0.05, row_offset=3)
    close(target, ref_graph_target(g_ins.detach(), labels_local, labels_global, 0.05, 3))
    assert not target.requires_grad
    close(target.sum(1), torch.ones(3))
    assert (target[torch.arange(3), torch.arange(3) + 3] > 0).all()   # diagonal survives
    # off the diagonal, entries below the threshold or with another label are zero
    off = torch.arange(6)[None, :] != (torch.arange(3) + 3)[:, None]
    dropped = off & ((g_ins.detach() < 0.05) | (labels_local[:, None] != labels_global[None, :]))
    assert dropped.sum() >= 10 and (target[dropped] == 0).all()
    assert (target[~dropped] > 0).all()


def test_graph_target_underflowed_diagonal_is_one_hot() -> None:
    g_ins = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    target = graph_target(g_ins, torch.tensor([0, 1]), torch.tensor([0, 1]), 0.05, 0)
    close(target, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_graph_loss_matches_reference() -> None:
    g0 = torch.randn(4, 8, requires_grad=True)
    g1 = torch.randn(4, 8, requires_grad=True)
    target = torch.softmax(torch.randn(4, 4), 1)
    loss = graph_loss(g0, g1, target, TAU)
    a = g0.detach().double().requires_grad_(True)
    c = g1.detach().double().requires_grad_(True)
    ref = ref_graph_loss(a, c, target.double())
    close(loss, ref)
    loss.backward()
    ref.backward()
    close(g0.grad, a.grad)
    close(g1.grad, c.grad)


# ----------------------------------------------------------------------------- combined


def reference_total(out: MultiLevelOutput, codes: torch.Tensor, w: LossWeights, graph: bool) -> dict:
    """Every term of docs/method.md §3 "Total" from the loop references."""
    parts = {}
    parts["ins"], g_ins = ref_instance(out.proj["high"].detach())
    for lv in ("mid", "low"):
        parts[f"mot_{lv}"] = ref_motion(out.proj[lv].detach(), out.proj_reversed[lv].detach())
    for lv in LEVELS:
        parts[f"lg_{lv}"] = ref_alignment(out.fine_local[lv].detach(), out.fine_global[lv].detach())
    parts["proto"] = ref_swapped(out.prototype_scores.detach(), codes)
    total = sum(getattr(w, name) * value for name, value in parts.items())
    if graph:
        labels = codes.sum(1).argmax(-1)
        target = ref_graph_target(g_ins, labels, labels, 0.05, 0)
        lg = 0.0
        for lv in ("high", "mid", "low"):
            g = out.graph[lv].detach()
            parts[f"graph_{lv}"] = ref_graph_loss(g[:, 0], g[:, 1], target)
            lg = lg + getattr(w, f"graph_{lv}") * parts[f"graph_{lv}"]
        parts["graph"] = lg
        total = total + w.graph * lg
    parts["total"] = total
    return parts


def test_objective_total_matches_references() -> None:
    b, n, c, k = 4, 2, 8, 5
    w = LossWeights()
    obj = MultiLevelObjective(w, split=1, queue_start=1, queue_size=6, cluster=k)
    out0, out1 = make_output(b, n, c, k, seed=0), make_output(b, n, c, k, seed=1)

    # epoch 0: no queue use, no graph
    res0 = obj(out0, epoch=0)
    codes0 = torch.stack([ref_sinkhorn(out0.prototype_scores[:, a]) for a in range(n)], 1)
    ref0 = reference_total(out0, codes0, w, graph=False)
    for name, value in ref0.items():
        close(res0.parts[name], value)
    close(res0.total, ref0["total"])
    assert "graph" not in res0.parts and obj.queue.num_filled == 4
    assert res0.pseudo_labels.tolist() == codes0.sum(1).argmax(-1).tolist()

    # epoch 1: codes over the newest queue_size = 6 rows [the last 2 rows of step 0; batch],
    # graph term on
    res1 = obj(out1, epoch=1)
    s0, s1 = out0.prototype_scores.detach(), out1.prototype_scores.detach()
    codes1 = torch.stack(
        [ref_sinkhorn(torch.cat([s0[2:, a], s1[:, a]]))[-b:] for a in range(n)], 1
    )
    ref1 = reference_total(out1, codes1, w, graph=True)
    for name, value in ref1.items():
        close(res1.parts[name], value)
    close(res1.total, ref1["total"])
    for name in ("ins", "proto", "graph", "mot_low"):
        close(res1.parts[f"{name}_weighted"], getattr(w, name) * ref1[name])
    assert res1.parts["num_pseudo_labels"].item() == len(set(codes1.sum(1).argmax(-1).tolist()))
    assert all(not v.requires_grad for v in res1.parts.values())
    res1.total.backward()
    assert all(out1.proj[lv].grad is not None for lv in LEVELS)


def test_objective_zero_weight_skips_and_queue_start() -> None:
    b, n, c, k = 3, 2, 8, 4
    w = LossWeights(**{f: 0.0 for f in LossWeights.__dataclass_fields__})
    w.proto = 1.0
    obj = MultiLevelObjective(w, split=100, queue_start=2, queue_size=30, cluster=k)
    outs = [make_output(b, n, c, k, seed=s) for s in range(3)]
    for epoch, out in enumerate(outs):
        res = obj(out, epoch)
        assert set(res.parts) == {"proto", "proto_weighted", "total", "num_pseudo_labels"}
        scores = out.prototype_scores.detach()
        if epoch < 2:  # queue filled but unused before queue_start
            codes = sinkhorn(scores.transpose(0, 1)).transpose(0, 1)
        else:
            past = torch.cat([o.prototype_scores.detach() for o in outs[:epoch]])
            codes = sinkhorn(torch.cat([past, scores]).transpose(0, 1))[:, -b:].transpose(0, 1)
        close(res.total, swapped_prediction(scores, codes))
    assert obj.queue.num_filled == 9
    obj.eval()
    obj(outs[0], 5)
    assert obj.queue.num_filled == 9                           # eval mode leaves the queue alone
    # the queue is in the state dict
    restored = MultiLevelObjective(w, cluster=k, queue_size=30)
    restored.load_state_dict(obj.state_dict())
    assert torch.equal(restored.queue.rows(), obj.queue.rows())


def test_objective_graph_without_instance_term() -> None:
    """--w_ins 0 with the graph on: G_ins still comes from proj_high (instance_graph)."""
    out = make_output(4, 2, 8, 5, seed=7)
    full = MultiLevelObjective(split=0, cluster=5)(out, 0)
    no_ins = MultiLevelObjective(LossWeights(ins=0.0), split=0, cluster=5)(out, 0)
    assert "ins" not in no_ins.parts
    close(no_ins.parts["graph"], full.parts["graph"])
    close(no_ins.total, full.total - full.parts["ins"])


def test_objective_graph_requires_graph_features() -> None:
    obj = MultiLevelObjective(split=0, cluster=5)
    out = make_output(2, 2, 8, 5, seed=0)
    out.graph = None
    assert obj.needs_graph(0)
    with pytest.raises(ValueError, match="with_graph"):
        obj(out, 0)


def test_objective_runs_in_float32_under_autocast() -> None:
    obj = MultiLevelObjective(split=0, queue_start=0, cluster=5)
    out = make_output(3, 2, 8, 5, seed=4)
    expected = obj.eval()(out, 0).total
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = obj(out, 0).total
    assert got.dtype == torch.float32
    close(got, expected, atol=1e-6)


def test_loss_flags() -> None:
    parser = add_loss_args(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert LossWeights.from_args(args) == LossWeights()
    assert (args.tau, args.queue_start, args.queue_size, args.eps, args.sinkhorn_iters) == (
        0.07, 10, 1024, 0.05, 3)
    assert (args.queue_rows, args.gather_grad) == ("include_batch", "full")
    args = parser.parse_args(["--w_mot_low", "0", "--w_graph_mid", "0.25", "--queue_size", "64",
                              "--queue_rows", "plus_batch", "--gather_grad", "local"])
    w = LossWeights.from_args(args)
    assert w.mot_low == 0 and w.graph_mid == 0.25 and w.ins == 1.0
    assert "--w_lg_high" in parser.format_help()
    args.thres, args.split, args.cluster = 0.05, 20, 50
    obj = MultiLevelObjective.from_args(args)
    assert obj.queue.size == 64 and obj.weights == w
    assert (obj.queue_rows, obj.gather_grad) == ("plus_batch", "local")
    with pytest.raises(SystemExit):
        parser.parse_args(["--gather_grad", "own"])


def test_freeze_prototypes_grad() -> None:
    protos = nn.Linear(4, 3, bias=False)
    protos(torch.randn(2, 4)).sum().backward()
    freeze_prototypes_grad(protos, epoch=1)
    assert protos.weight.grad is not None
    freeze_prototypes_grad(protos, epoch=0)
    assert protos.weight.grad is None


# ----------------------------------------------------------------------------- training


class TinyModel(nn.Module):
    """Linear maps from fixed random clip vectors to every MultiLevelOutput field."""

    def __init__(self, d: int = 24, c: int = 16, k: int = 8) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({
            **{f"proj_{lv}": nn.Linear(d, c) for lv in LEVELS},
            **{f"rev_{lv}": nn.Linear(d, c) for lv in ("low", "mid")},
            **{f"fine_{lv}": nn.Linear(d, TIMES[lv] * c) for lv in LEVELS},
            **{f"graph_{lv}": nn.Linear(d, c) for lv in LEVELS},
            "glob": nn.Linear(d, c),
        })
        self.prototypes = nn.Linear(c, k, bias=False)
        self.c = c

    def forward(self, x: torch.Tensor) -> MultiLevelOutput:  # x (b, n+1, d), global last
        loc, glob = x[:, :-1], x[:, -1]
        b, n, _ = loc.shape
        h = self.heads
        emb = F.normalize(h["glob"](loc), dim=-1)
        return MultiLevelOutput(
            proj={lv: h[f"proj_{lv}"](loc) for lv in LEVELS},
            proj_reversed={lv: h[f"rev_{lv}"](loc.flip(-1)) for lv in ("low", "mid")},
            fine_local={lv: h[f"fine_{lv}"](loc).view(b, n, TIMES[lv], self.c) for lv in LEVELS},
            fine_global={lv: h[f"fine_{lv}"](glob).view(b, TIMES[lv], self.c) for lv in LEVELS},
            prototype_scores=emb @ F.normalize(self.prototypes.weight, dim=1).T,
            graph={lv: h[f"graph_{lv}"](loc) for lv in LEVELS},
        )


def test_objective_trains_a_tiny_model() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 24)
    model = TinyModel()
    obj = MultiLevelObjective(split=0, queue_start=0, queue_size=16, cluster=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        res = obj(model(x), epoch=1)
        opt.zero_grad()
        res.total.backward()
        freeze_prototypes_grad(model.prototypes, epoch=1)
        opt.step()
        losses.append(res.total.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * losses[0], (losses[0], losses[-5:])
