"""Evaluation metrics of docs/method.md §5 as pure functions of tensors: video-level scores (softmax
averaged over clips), top-k accuracy, retrieval R@k and a cosine kNN classifier.

Shapes: ``N`` videos, ``K`` clips (x crops) per video, ``D`` feature width, ``C`` classes.
Accuracies are fractions in [0, 1]; the entry scripts report percent.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
CENTER_MODES: tuple[str, ...] = ("gallery", "each", "none")


def video_scores(clip_logits: Tensor) -> Tensor:
    """Softmax per clip, averaged over the ``K`` clips (x crops) of each video:
    ``(N, K, C)`` logits -> ``(N, C)`` probabilities (docs/method.md §5)."""
    if clip_logits.dim() != 3:
        raise ValueError(f"video_scores expects (N, K, C) logits, got shape {tuple(clip_logits.shape)}")
    return clip_logits.float().softmax(dim=-1).mean(dim=1)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the ``k`` highest scores, for each ``k`` (a ``k``
    above the number of classes counts every class)."""
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows but {labels.shape[0]} labels")
    maxk = min(max(ks), scores.shape[1])
    hit = scores.topk(maxk, dim=1).indices.eq(labels.to(scores.device)[:, None])
    first_hit = hit.cumsum(dim=1) > 0
    return {k: first_hit[:, min(k, maxk) - 1].float().mean().item() for k in ks}


def clip_top1(clip_logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of every clip (x crop) on its own: ``(N, K, C)``, ``(N,)`` -> fraction."""
    return clip_logits.argmax(dim=-1).eq(labels.to(clip_logits.device)[:, None]).float().mean().item()


def classification_metrics(clip_logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Video-level top-1/top-5 (softmax averaged over clips) and clip-level top-1, in percent."""
    acc = topk_accuracy(video_scores(clip_logits), labels, (1, 5))
    return {"top1": 100.0 * acc[1], "top5": 100.0 * acc[5],
            "clip_top1": 100.0 * clip_top1(clip_logits, labels)}


def center_normalize(query: Tensor, gallery: Tensor, center: str = "gallery") -> tuple[Tensor, Tensor]:
    """Mean-centre then L2-normalise ``(Nq, D)`` query and ``(Ng, D)`` gallery features.

    ``center``: ``"gallery"`` subtracts the gallery (train-split) mean from both; ``"each"``
    subtracts each set's own mean (what CoCLR's ``test_retrieval`` does); ``"none"`` skips it.
    """
    query, gallery = query.float(), gallery.float()
    if center == "gallery":
        mean = gallery.mean(dim=0, keepdim=True)
        query, gallery = query - mean, gallery - mean
    elif center == "each":
        query = query - query.mean(dim=0, keepdim=True)
        gallery = gallery - gallery.mean(dim=0, keepdim=True)
    elif center != "none":
        raise ValueError(f"unknown centring {center!r}; choose one of {CENTER_MODES}")
    return F.normalize(query, dim=1), F.normalize(gallery, dim=1)


def _nearest(query: Tensor, gallery: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` cosine similarities and gallery indices of unit-norm rows, in query chunks."""
    sims, idxs = [], []
    for start in range(0, query.shape[0], chunk):
        s, i = (query[start:start + chunk] @ gallery.T).topk(k, dim=1)
        sims.append(s)
        idxs.append(i)
    return torch.cat(sims), torch.cat(idxs)


def retrieval_recall(query: Tensor, query_labels: Tensor, gallery: Tensor, gallery_labels: Tensor,
                     ks: Sequence[int] = RETRIEVAL_KS, center: str = "gallery",
                     chunk: int = 4096) -> dict[int, float]:
    """Nearest-neighbour video retrieval (docs/method.md §5): query = test-split video features,
    gallery = train-split video features (each already averaged over clips), mean-centred and
    L2-normalised (:func:`center_normalize`), cosine nearest neighbours; R@k = fraction of
    queries with a gallery item of their label among the top ``k`` (``k`` above the gallery
    size counts the whole gallery)."""
    q, g = center_normalize(query, gallery, center)
    maxk = min(max(ks), g.shape[0])
    _, idx = _nearest(q, g, maxk, chunk)
    hit = gallery_labels.to(idx.device)[idx].eq(query_labels.to(idx.device)[:, None])
    first_hit = hit.cumsum(dim=1) > 0
    return {k: first_hit[:, min(k, maxk) - 1].float().mean().item() for k in ks}


def knn_scores(train_features: Tensor, train_labels: Tensor, test_features: Tensor, k: int,
               num_classes: int, temperature: float | None = 0.07, center: str = "gallery",
               chunk: int = 4096) -> Tensor:
    """Cosine kNN classifier: each test row votes with its ``k`` nearest train rows (features
    prepared exactly as for retrieval, :func:`center_normalize`); a vote weighs
    ``exp(cos / temperature)`` (InstDisc/DINO), or 1 when ``temperature`` is None (majority
    vote, ties to the lowest class id). Returns ``(Nq, num_classes)`` vote totals."""
    if k < 1:
        raise ValueError(f"kNN needs k >= 1, got {k}")
    q, g = center_normalize(test_features, train_features, center)
    sim, idx = _nearest(q, g, min(k, g.shape[0]), chunk)
    weights = torch.ones_like(sim) if temperature is None else (sim / temperature).exp()
    votes = torch.zeros(q.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return votes.scatter_add_(1, train_labels.to(idx.device)[idx], weights)


def chance_level(top1: float, num_classes: int, num_videos: int) -> dict[str, float | bool]:
    """The chance level of a ``num_classes``-way top-1 (percent, ``100 / C``) and whether
    ``top1`` (percent, on ``num_videos`` test videos) lies within two binomial standard errors
    of it: a probe at chance found nothing in the features, whatever its number says."""
    p = 1.0 / num_classes
    margin = 2.0 * 100.0 * math.sqrt(p * (1.0 - p) / max(num_videos, 1))
    return {"chance": 100.0 * p, "at_chance": bool(top1 < 100.0 * p + margin)}
