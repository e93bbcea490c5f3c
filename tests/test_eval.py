"""Pure evaluation functions (engine/evaluate.py, docs/method.md §5): scoring, retrieval, kNN, the linear
probe on cached features, shard gathering and the probe-hygiene checks."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.features import interleave_shards
from engine.metrics import (
    center_normalize,
    classification_metrics,
    clip_top1,
    knn_scores,
    retrieval_recall,
    topk_accuracy,
    video_scores,
)
from engine.probe import (
    assert_state_unchanged,
    check_only_head_trains,
    predict_features,
    state_snapshot,
    train_linear_probe,
)
from models.classifier import ClassifierHead, VideoClassifier
from utils.optim import apply_step_schedule, build_optimizer


def test_video_scores_equal_hand_computed_softmax_average() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
                           [[0.5, 0.5, 3.0], [1.0, 2.0, 3.0]]])
    expected = []
    for video in logits.tolist():
        probs = []
        for clip in video:
            z = sum(math.exp(v) for v in clip)
            probs.append([math.exp(v) / z for v in clip])
        expected.append([sum(p[c] for p in probs) / len(probs) for c in range(3)])
    got = video_scores(logits)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(2))


def test_video_average_can_differ_from_clip_vote_and_metrics_report_both() -> None:
    # video 0: clip 0 confidently class 0, clips 1-2 weakly class 1 -> averaged softmax says 0
    logits = torch.tensor([[[10.0, 0.0], [0.0, 0.5], [0.0, 0.5]],
                           [[0.0, 3.0], [0.0, 3.0], [3.0, 0.0]]])
    labels = torch.tensor([0, 1])
    assert video_scores(logits).argmax(1).tolist() == [0, 1]
    assert clip_top1(logits, labels) == pytest.approx(3 / 6)
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(100.0)
    assert m["top5"] == pytest.approx(100.0)  # k above the class count counts every class
    assert m["clip_top1"] == pytest.approx(50.0)


def test_topk_accuracy_hand_example() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05],   # label 2: rank 2
                           [0.9, 0.02, 0.03, 0.04, 0.01],  # label 0: rank 1
                           [0.3, 0.25, 0.2, 0.15, 0.1]])   # label 4: rank 5
    labels = torch.tensor([2, 0, 4])
    acc = topk_accuracy(scores, labels, (1, 2, 3, 5))
    assert acc == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3),
                   5: pytest.approx(1.0)}


def _brute_force_recall(query, qlab, gallery, glab, k, center):
    d = len(query[0])
    if center == "gallery":
        mean = [sum(g[j] for g in gallery) / len(gallery) for j in range(d)]
        query = [[q[j] - mean[j] for j in range(d)] for q in query]
        gallery = [[g[j] - mean[j] for j in range(d)] for g in gallery]

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    query, gallery = [unit(q) for q in query], [unit(g) for g in gallery]
    hits = 0
    for q, ql in zip(query, qlab):
        sims = [sum(a * b for a, b in zip(q, g)) for g in gallery]
        order = sorted(range(len(gallery)), key=lambda i: -sims[i])
        hits += any(glab[i] == ql for i in order[:k])
    return hits / len(query)


@pytest.mark.parametrize("center", ["gallery", "none"])
def test_retrieval_recall_equals_brute_force_and_is_monotone(center: str) -> None:
    g = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(25, 6, generator=g) + 2.0, torch.randn(40, 6, generator=g) + 2.0
    qlab, glab = torch.randint(0, 6, (25,), generator=g), torch.randint(0, 6, (40,), generator=g)
    ks = (1, 5, 10, 20, 50)
    got = retrieval_recall(query, qlab, gallery, glab, ks, center=center)
    for k in ks:
        want = _brute_force_recall(query.tolist(), qlab.tolist(), gallery.tolist(), glab.tolist(),
                                   min(k, 40), center)
        assert got[k] == pytest.approx(want), k
    values = [got[k] for k in ks]
    assert values == sorted(values)
    assert values[0] < values[-1]


def test_retrieval_centring_modes() -> None:
    q, g = torch.randn(4, 3) + 5, torch.randn(7, 3) + 5
    qn, gn = center_normalize(q, g, "gallery")
    mean = g.mean(0)
    assert torch.allclose(qn, torch.nn.functional.normalize(q - mean, dim=1))
    qe, ge = center_normalize(q, g, "each")  # CoCLR's test_retrieval
    assert torch.allclose(qe, torch.nn.functional.normalize(q - q.mean(0), dim=1))
    assert torch.allclose(ge, gn)
    with pytest.raises(ValueError, match="centring"):
        center_normalize(q, g, "median")


def _clusters(n_per: int, classes: int, dim: int, seed: int, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_knn_on_toy_clusters() -> None:
    train_x, train_y = _clusters(10, 4, 16, seed=1)
    test_x, test_y = _clusters(5, 4, 16, seed=2)
    votes = knn_scores(train_x, train_y, test_x, k=5, num_classes=4)
    assert votes.shape == (20, 4)
    assert topk_accuracy(votes, test_y, (1,))[1] == 1.0
    # majority vote with k = 1 is exactly retrieval R@1 on the same features
    flipped = test_y.roll(1)  # some wrong labels so R@1 < 1
    nn1 = knn_scores(train_x, train_y, test_x, k=1, num_classes=4, temperature=None)
    assert topk_accuracy(nn1, flipped, (1,))[1] == pytest.approx(
        retrieval_recall(test_x, flipped, train_x, train_y, (1,))[1])
    # uniform votes count neighbours: k = 40 (the whole gallery) gives 10 votes per class
    all_votes = knn_scores(train_x, train_y, test_x, k=40, num_classes=4, temperature=None)
    assert torch.equal(all_votes, torch.full((20, 4), 10.0))


def test_linear_probe_learns_planted_separable_problem() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 5, generator=g)
    x = torch.relu(torch.randn(3000, 32, generator=g)) * 2 + 0.5  # positive, off-centre (ReLU-like)
    y = (x @ w).argmax(1)
    train_x, train_y, test_x, test_y = x[:2000], y[:2000], x[2000:], y[2000:]
    seen = []
    head = ClassifierHead(32, 5, final_bn=True)
    last = train_linear_probe(head, train_x, train_y, epochs=15, schedule=(10, 13), batch_size=256,
                              on_epoch=lambda e, s, h: seen.append((e, s)))
    assert last == seen[-1][1] and not head.training
    assert [e for e, _ in seen] == list(range(15))
    assert seen[0][1]["lr"] == 1.0 and seen[-1][1]["lr"] == pytest.approx(0.01)
    assert seen[-1][1]["loss"] < seen[0][1]["loss"]
    logits = predict_features(head, test_x[:, None, :])
    assert logits.shape == (1000, 1, 5)
    assert classification_metrics(logits, test_y)["top1"] > 95.0
    # Adam without BatchNorm learns it too
    head = ClassifierHead(32, 5)
    train_linear_probe(head, train_x, train_y, optim="adam", lr=1e-2, weight_decay=0.0, epochs=15,
                       schedule=(10,), batch_size=256)
    assert topk_accuracy(predict_features(head, test_x[:, None, :])[:, 0], test_y, (1,))[1] > 0.95


def test_interleave_shards_restores_dataset_order() -> None:
    items = torch.arange(7 * 2).reshape(7, 2)
    world = 3
    rows = math.ceil(7 / world)
    shards = []
    for r in range(world):
        mine = items[r::world]  # what rank r evaluates (engine.features.shard_indices)
        shards.append(torch.cat([mine, mine.new_zeros(rows - len(mine), 2)]))
    assert torch.equal(interleave_shards(torch.stack(shards), 7), items)


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 1)
        self.bn = nn.BatchNorm3d(4)

    def forward(self, x):
        return {"high": self.bn(self.conv(x))}


def test_hygiene_checks_catch_a_leaking_optimizer_and_moving_bn() -> None:
    model = VideoClassifier(_TinyNet(), ClassifierHead(4, 3), frozen=True)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    ok = build_optimizer([{"params": model.head.parameters()}], "sgd", 0.1, 0.0)
    check_only_head_trains(model, model.head, ok)
    leaky = build_optimizer([{"params": model.parameters()}], "sgd", 0.1, 0.0)
    with pytest.raises(RuntimeError, match="only the head"):
        check_only_head_trains(model, model.head, leaky)
    model.backbone.conv.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="outside the head"):
        check_only_head_trains(model, model.head, ok)

    model.train()
    assert model.head.training and not model.backbone.training  # BN statistics stay frozen
    snap = state_snapshot(model.backbone)
    model(torch.randn(2, 3, 2, 4, 4))
    assert_state_unchanged(model.backbone, snap)
    model.backbone.bn.train()  # a probe that forgot eval mode ...
    model(torch.randn(2, 3, 2, 4, 4))
    with pytest.raises(RuntimeError, match="running_mean"):  # ... is caught
        assert_state_unchanged(model.backbone, snap)


def test_build_optimizer_keeps_lr_scale_through_schedule() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = build_optimizer([{"params": a.parameters(), "lr_scale": 0.1}, {"params": b.parameters()}],
                          "adam", 1e-3, 1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 1e-3])
    assert apply_step_schedule(opt, 1e-3, 60, (60, 80)) == pytest.approx(1e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-4])
    with pytest.raises(ValueError, match="unknown optimiser"):
        build_optimizer([{"params": a.parameters()}], "lamb", 1.0, 0.0)
