"""Downstream evaluation shared by ``eval_linear.py`` and ``finetune.py`` (METHOD §5, CoCLR's
protocol).

Pure functions of tensors (video-level scoring, top-k, retrieval R@k, kNN, a linear probe trained
on cached features) plus two small loops over a DataLoader (feature/logit extraction, one
supervised epoch) and the probe-hygiene checks of MoCo's ``main_lincls.py`` (assert that the
optimiser holds only the head, verify afterwards that the backbone did not move). The classifier
itself — frozen backbone in eval mode or fine-tuned, pooled high feature, head — is
``models/classifier.py``.

Evaluation loaders (:func:`make_loader`) wrap their dataset in
:class:`datasets.base.SkipCounting`: a batch is ``(batch, skipped)``, and the loops return how
many corrupt/missing videos were replaced by others (counted in the DataLoader workers, which
``dataset.skipped`` in the main process does not see).

Shapes: ``N`` videos, ``K`` clips (x crops) per video, ``D`` feature width, ``C`` classes.
Accuracies returned by the functions are fractions in [0, 1]; the entry scripts report percent.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from datasets.base import SkipCounting
from datasets.csv_io import CsvError
from datasets.downstream import ClipDataset
from datasets.frames import FrameError
from engine import distributed as dist_utils
from engine.amp import AMP_CHOICES, autocast
from engine.checkpoint import CheckpointError
from engine.logging import progress
from engine.pretrain import DataTooSmall
from engine.runtime import DEVICE_CHOICES, seed_worker
from engine.schedule import step_decay_lr
from models import (
    NETS,
    BackboneLoadError,
    ClassifierHead,
    build_backbone,
    build_backbone_from_checkpoint,
    load_pretrained_backbone,
)

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
CENTER_MODES: tuple[str, ...] = ("gallery", "each", "none")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


# --------------------------------------------------------------------------------------------
# Probe hygiene (MoCo main_lincls.py)
# --------------------------------------------------------------------------------------------
def check_only_head_trains(model: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Raise ``RuntimeError`` unless the optimiser holds exactly ``head``'s parameters and no
    other parameter of ``model`` requires a gradient (METHOD §5, linear probe)."""
    head_ids = {id(p) for p in head.parameters()}
    opt_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if opt_ids != head_ids:
        raise RuntimeError(
            f"linear probe: the optimiser holds {len(opt_ids)} tensors but the head has "
            f"{len(head_ids)}; only the head's parameters may be optimised")
    leaking = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in head_ids]
    if leaking:
        raise RuntimeError(f"linear probe: parameters outside the head require grad: {leaking[:5]}")


def state_snapshot(module: nn.Module) -> dict[str, Tensor]:
    """A CPU copy of ``module.state_dict()`` (parameters and buffers, BN statistics included)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def assert_state_unchanged(module: nn.Module, snapshot: Mapping[str, Tensor], what: str = "backbone") -> None:
    """Raise ``RuntimeError`` naming the tensors of ``module`` that differ (bit for bit) from
    ``snapshot`` — the post-training sanity check of MoCo ``main_lincls.py``."""
    current = module.state_dict()
    if current.keys() != snapshot.keys():
        diff = sorted(set(current) ^ set(snapshot))
        raise RuntimeError(f"{what}: state_dict keys changed during evaluation: {diff[:5]}")
    moved = [k for k, v in current.items() if not torch.equal(v.detach().cpu(), snapshot[k])]
    if moved:
        raise RuntimeError(
            f"{what} changed during linear probing ({len(moved)} tensors moved, e.g. {moved[:5]}); "
            "the backbone must stay frozen and in eval mode")


# --------------------------------------------------------------------------------------------
# Optimiser and step schedule
# --------------------------------------------------------------------------------------------
def build_optimizer(param_groups: Sequence[dict[str, Any]], name: str, lr: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or Adam over ``param_groups``; a group's optional ``lr_scale`` (e.g.
    0.1 for the fine-tuned backbone, METHOD §5) multiplies ``lr`` and is kept by
    :func:`apply_step_schedule`."""
    groups = []
    for group in param_groups:
        group = dict(group)
        group["params"] = list(group["params"])
        group.setdefault("lr_scale", 1.0)
        group["lr"] = lr * group["lr_scale"]
        groups.append(group)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimiser {name!r}; choose one of {OPTIMIZERS}")


def apply_step_schedule(optimizer: torch.optim.Optimizer, base_lr: float, epoch: int,
                        milestones: Sequence[int]) -> float:
    """Set every group's lr to ``step_decay_lr(base_lr, epoch, milestones) * lr_scale``; returns
    the unscaled lr."""
    lr = step_decay_lr(base_lr, epoch, list(milestones))
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


# --------------------------------------------------------------------------------------------
# Loops over a DataLoader
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def extract(fn: Callable[[Tensor], Tensor], loader: Iterable, device: torch.device,
            amp_dtype: torch.dtype | None = None, show_progress: bool = False,
            desc: str = "extract") -> tuple[Tensor, Tensor, int]:
    """Run ``fn`` (clips ``(M, 3, T, H, W)`` -> ``(M, D)``: pooled features or logits) over a
    loader of ``((clips, label), skipped)`` batches (:func:`make_loader`); clips are
    ``(b, 3, T, H, W)`` (one clip per video, ``K = 1``) or ``(b, K, 3, T, H, W)`` (test mode).
    Returns ``(N, K, D)`` float32 and ``(N,)`` int64, both on the CPU, in loader order, and the
    number of videos this process's loader skipped (not reduced over ranks)."""
    outputs: list[Tensor] = []
    labels: list[Tensor] = []
    skipped = 0
    for (clips, label), skipped_now in progress(loader, enabled=show_progress, desc=desc):
        skipped += int(skipped_now.sum())
        if clips.dim() == 5:
            clips = clips.unsqueeze(1)
        b, k = clips.shape[:2]
        x = clips.flatten(0, 1).to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            out = fn(x)
        outputs.append(out.float().reshape(b, k, -1).cpu())
        labels.append(torch.as_tensor(label).long().reshape(b))
    if not outputs:
        raise ValueError(f"{desc}: the loader yielded no batch (empty CSV?)")
    return torch.cat(outputs), torch.cat(labels), skipped


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, device: torch.device,
                    amp_dtype: torch.dtype | None = None, show_progress: bool = False,
                    desc: str = "train") -> dict[str, float]:
    """One supervised epoch over ``((clips (b, 3, T, H, W), labels (b,)), skipped (b,))`` batches
    (:func:`make_loader`): cross-entropy, backward through ``scaler``, optimiser step. ``model``
    may be DDP-wrapped (totals are all-reduced) or a frozen-backbone
    :class:`~models.classifier.VideoClassifier` (only its head learns). Returns the epoch's mean
    ``loss``, ``train_top1`` (percent, clip level) and ``skipped_videos`` (videos replaced by
    others because of a missing/corrupt frame, summed over ranks)."""
    model.train()
    totals = torch.zeros(4, device=device)  # loss sum, correct, seen, skipped videos
    skipped = 0
    for (clips, labels), skipped_now in progress(loader, enabled=show_progress, desc=desc):
        skipped += int(skipped_now.sum())
        clips = clips.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(clips)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = labels.shape[0]
        totals[:3] += torch.stack([loss.detach() * n, logits.argmax(dim=1).eq(labels).sum().float(),
                                   torch.tensor(float(n), device=device)])
    totals[3] = skipped
    dist_utils.all_reduce_sum_(totals)
    if totals[2].item() == 0:
        raise ValueError(f"{desc}: no training batch (fewer training videos than --batch_size?)")
    return {"loss": (totals[0] / totals[2]).item(), "train_top1": (100.0 * totals[1] / totals[2]).item(),
            "skipped_videos": int(totals[3].item())}


def sum_over_ranks(count: int, device: torch.device) -> int:
    """``count`` summed over the ranks of the process group (itself without one): e.g. the
    skipped videos of each rank's test shard."""
    if not dist_utils.is_distributed():
        return count
    return int(dist_utils.all_reduce_sum_(torch.tensor([count], device=device)).item())


def interleave_shards(stacked: Tensor, total: int) -> Tensor:
    """Undo a strided split: ``stacked[r, j]`` holds item ``j * W + r`` of ``total`` items
    (``W = stacked.shape[0]`` ranks, short shards zero-padded to equal length); returns the
    ``total`` items in order."""
    w, m = stacked.shape[:2]
    if w * m < total:
        raise ValueError(f"{w} shards of {m} rows cannot hold {total} items")
    return stacked.transpose(0, 1).reshape(w * m, *stacked.shape[2:])[:total]


def shard_indices(total: int) -> range:
    """This rank's items of a strided split over ranks (every item once, no padding) —
    the evaluation counterpart of a DistributedSampler; ``range(total)`` without DDP."""
    return range(dist_utils.rank(), total, dist_utils.world_size())


def gather_shards(local: Tensor, total: int, device: torch.device) -> Tensor:
    """All-gather the per-rank results of :func:`shard_indices` and put them back in dataset
    order (identity without a process group); returns a CPU tensor."""
    if not dist_utils.is_distributed():
        return local
    world = dist_utils.world_size()
    rows = math.ceil(total / world)
    pad = local.new_zeros((rows - local.shape[0], *local.shape[1:]))
    gathered = dist_utils.all_gather_no_grad(torch.cat([local, pad]).to(device)).cpu()
    return interleave_shards(gathered.reshape(world, rows, *local.shape[1:]), total)


# --------------------------------------------------------------------------------------------
# Scoring (METHOD §5 "Test")
# --------------------------------------------------------------------------------------------
def video_scores(clip_logits: Tensor) -> Tensor:
    """Softmax per clip, averaged over the ``K`` clips (x crops) of each video:
    ``(N, K, C)`` logits -> ``(N, C)`` probabilities (METHOD §5)."""
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
    """Nearest-neighbour video retrieval (METHOD §5): query = test-split video features,
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


# --------------------------------------------------------------------------------------------
# Linear probe on cached features (CoCLR eval/feature_linear_probe.py)
# --------------------------------------------------------------------------------------------
EpochCallback = Callable[[int, dict[str, float], ClassifierHead], None]


def train_linear_probe(head: ClassifierHead, features: Tensor, labels: Tensor, *, optim: str = "sgd",
                       lr: float = 1.0, weight_decay: float = 1e-3, epochs: int = 100,
                       schedule: Sequence[int] = (60, 80), batch_size: int = 1024,
                       device: torch.device | str = "cpu", seed: int = 0,
                       on_epoch: EpochCallback | None = None,
                       show_progress: bool = False) -> ClassifierHead:
    """Train ``head`` (in place) on cached ``(M, D)`` features / ``(M,)`` labels with
    cross-entropy, ``optim`` (SGD momentum 0.9 or Adam), lr divided by 10 at each ``schedule``
    epoch (METHOD §5 linear probe; CoCLR ``eval/feature_linear_probe.py``). Shuffling uses its own
    generator seeded with ``seed``. ``on_epoch(epoch, stats, head)`` is called after every epoch
    (stats: ``loss``, ``train_top1`` in percent, ``lr``). Returns ``head`` in eval mode."""
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"expected (M, D) features and (M,) labels, got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    device = torch.device(device)
    x = features.to(device, torch.float32)
    y = labels.to(device, torch.long)
    head.to(device)
    final_bn = isinstance(head.bn, nn.BatchNorm1d)
    optimizer = build_optimizer([{"params": head.parameters()}], optim, lr, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    m = x.shape[0]
    for epoch in progress(range(epochs), enabled=show_progress, desc="linear probe"):
        lr_now = apply_step_schedule(optimizer, lr, epoch, schedule)
        head.train()
        perm = torch.randperm(m, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for start in range(0, m, batch_size):
            idx = perm[start:start + batch_size]
            if final_bn and idx.numel() < 2:  # BatchNorm1d cannot train on one row
                continue
            logits = head(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * idx.numel()
            correct += logits.argmax(dim=1).eq(y[idx]).sum()
            seen += idx.numel()
        if on_epoch is not None:
            stats = {"loss": (loss_sum / max(seen, 1)).item(),
                     "train_top1": 100.0 * (correct / max(seen, 1)).item(), "lr": lr_now}
            on_epoch(epoch, stats, head)
    return head.eval()


@torch.no_grad()
def predict_features(head: nn.Module, features: Tensor, device: torch.device | str = "cpu",
                     batch_size: int = 8192) -> Tensor:
    """Apply ``head`` (eval mode) to ``(N, K, D)`` cached features -> ``(N, K, C)`` logits (CPU)."""
    was_training = head.training
    head.eval()
    flat = features.flatten(0, 1)
    out = torch.cat([head(flat[s:s + batch_size].to(device, torch.float32)).float().cpu()
                     for s in range(0, flat.shape[0], batch_size)])
    head.train(was_training)
    return out.reshape(features.shape[0], features.shape[1], -1)


# --------------------------------------------------------------------------------------------
# Shared by the entry scripts: flags, the backbone to evaluate, the data
# --------------------------------------------------------------------------------------------
# Errors a user can cause (bad CSV row, missing frame, bad checkpoint path): the entry scripts
# report them as one line, without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    CsvError, FrameError, CheckpointError, BackboneLoadError, DataTooSmall, FileNotFoundError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout in ``-h`` and appends a flag's default unless its help
    already states it or there is none (None / False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.required or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags ``eval_linear.py`` and ``finetune.py`` share: data, backbone, clip sampling and
    test protocol, runtime (METHOD §1 "Downstream sampling", §5)."""
    data = parser.add_argument_group("data (labelled CSVs: path,num_frames,label)")
    data.add_argument("--train_csv", required=True,
                      help="train split CSV (e.g. UCF101 / HMDB51 split 1 train list)")
    data.add_argument("--val_csv", required=True,
                      help="test split CSV: reported accuracy; retrieval queries")
    data.add_argument("--data_root", default=None,
                      help="folder that relative CSV paths are resolved against (default: each CSV's folder)")
    data.add_argument("--num_classes", type=int, default=None,
                      help="number of classes (default: largest label in --train_csv + 1; "
                           "101 for UCF101, 51 for HMDB51)")

    model = parser.add_argument_group("backbone")
    model.add_argument("--pretrained", default=None, metavar="CKPT",
                       help="train.py checkpoint (or plain backbone state dict) whose backbone is "
                            "evaluated; net and width come from its model_config. Without it the "
                            "backbone is RANDOMLY INITIALISED: the baseline every result is compared with")
    model.add_argument("--net", default=None, choices=NETS,
                       help="backbone when there is no --pretrained (default r3d_18), or to read a "
                            "plain state dict without model_config")
    model.add_argument("--width", type=float, default=None,
                       help="channel width multiplier with --net (default 1.0)")

    clips = parser.add_argument_group("clips and test protocol (METHOD §5)")
    clips.add_argument("--seq", type=int, default=16, help="frames per clip")
    clips.add_argument("--img_dim", type=int, default=112, help="crop size in pixels")
    clips.add_argument("--ds", type=int, default=1, help="temporal stride between the frames of a clip")
    clips.add_argument("--num_clips", type=int, default=10,
                       help="test: clips spread over each video; their softmax scores (or "
                            "features) are averaged per video")
    clips.add_argument("--ten_crop", action="store_true",
                       help="test: 10 crops (4 corners + centre, and their flips) per clip "
                            "instead of the centre crop")

    run = parser.add_argument_group("runtime")
    run.add_argument("--output_dir", required=True,
                     help="where args.json, log.jsonl, TensorBoard events (tb/) and metrics.json go")
    run.add_argument("--batch_size", type=int, default=32,
                     help="videos per DataLoader batch when training through the backbone and when "
                          "extracting features; test batches hold max(1, batch_size // clips-per-video) "
                          "videos so a forward pass sees about batch_size clips")
    run.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    run.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                     help="auto = the GPU when one is visible, else the CPU")
    run.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                     help="mixed precision: auto = bf16 on CUDA, off on CPU")
    run.add_argument("--seed", type=int, default=0, help="one seed; per-rank and per-worker seeds derive from it")
    run.add_argument("--eval_freq", type=int, default=10,
                     help="evaluate on --val_csv every this many epochs while training (monitoring "
                          "only; metrics.json reports the last epoch); 0 = only at the end")
    run.add_argument("--strict", action="store_true",
                     help="fail on a missing/corrupt frame instead of replacing the video by the "
                          "next one (use it for final test numbers)")
    run.add_argument("--no_progress", action="store_true", help="no progress bars")


def check_common_args(args: argparse.Namespace) -> None:
    """Refuse impossible flag combinations with one clear message (``ValueError``)."""
    for name in ("seq", "img_dim", "ds", "num_clips", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    for flag, path in (("--train_csv", args.train_csv), ("--val_csv", args.val_csv),
                       ("--pretrained", args.pretrained)):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: no such file")
    if args.net is None and args.width is not None:
        raise ValueError("--width needs --net (with --pretrained alone, the checkpoint's "
                         "model_config sets both)")
    if args.num_classes is not None and args.num_classes < 2:
        raise ValueError(f"--num_classes must be >= 2, got {args.num_classes}")


def build_eval_backbone(pretrained: str | None, net: str | None = None,
                        width: float | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone to evaluate and a description of it (``net``, ``width``, ``init``,
    ``pretrained``).

    - ``pretrained`` and no ``net``: built from the checkpoint's ``model_config`` and loaded
      (``models.build_backbone_from_checkpoint``);
    - ``pretrained`` and ``net``: ``build_backbone(net, width)`` then the checkpoint's backbone
      weights (a plain state dict needs this; a mismatch raises naming the keys);
    - no ``pretrained``: ``build_backbone(net or "r3d_18", width or 1.0)``, random init
      (``init = "random"``).

    The backbone comes in ``channels_last_3d``, as in ``train.py`` (faster convolutions).
    """
    if pretrained is None:
        net, width = net or "r3d_18", 1.0 if width is None else width
        backbone = build_backbone(net, width)
        described = {"net": net, "width": width, "init": "random", "pretrained": None}
    else:
        if net is None:
            backbone, config = build_backbone_from_checkpoint(pretrained)
            net, width = config["net"], config.get("width", 1.0)
        else:
            width = 1.0 if width is None else width
            backbone = build_backbone(net, width)
            load_pretrained_backbone(backbone, pretrained)
        described = {"net": net, "width": width, "init": "pretrained", "pretrained": str(pretrained)}
    return backbone.to(memory_format=torch.channels_last_3d), described


RANDOM_INIT_BANNER = (
    "!" * 78 + "\n"
    "!! NO --pretrained CHECKPOINT: the backbone is RANDOMLY INITIALISED.\n"
    "!! These numbers are the random-init baseline, not a pretrained model's.\n"
    + "!" * 78
)


def clip_dataset(args: argparse.Namespace, csv_file: str, train: bool, num_classes: int | None,
                 ten_crop: bool = False) -> ClipDataset:
    """A :class:`ClipDataset` with the common flags: ``train=True`` one augmented clip per video,
    else ``--num_clips`` clips x (centre | ten) crops (METHOD §1 "Downstream sampling", §5)."""
    return ClipDataset(csv_file, seq=args.seq, img_dim=args.img_dim, train=train, ds=args.ds,
                       num_clips=args.num_clips, ten_crop=ten_crop, data_root=args.data_root,
                       num_classes=num_classes, strict=args.strict)


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                train: bool = False, seed: int = 0) -> DataLoader:
    """A loader of ``(batch, skipped)`` over ``SkipCounting(dataset)`` (each batch carries how
    many corrupt/missing videos its items replaced; :func:`extract` and :func:`train_one_epoch`
    sum them). ``train=True``: a shuffling ``DistributedSampler`` over this rank's share (one
    process: ``num_replicas=1``), ``drop_last`` (``DataTooSmall`` when not one batch is left), its
    own generator — call ``engine.pretrain.start_epoch`` before each epoch so the data of epoch
    ``e`` depends only on ``(seed, rank, e)`` and a resumed run matches a straight one.
    ``train=False``: every item once, in dataset order. Workers are seeded by
    ``engine.runtime.seed_worker``."""
    dataset = SkipCounting(dataset)
    sampler = None
    if train:
        sampler = DistributedSampler(dataset, num_replicas=dist_utils.world_size(), rank=dist_utils.rank(),
                                     shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda", drop_last=train,
                        worker_init_fn=seed_worker, generator=torch.Generator() if train else None)
    if train and len(loader) == 0:
        raise DataTooSmall(f"{len(dataset)} training videos cannot fill one batch of {batch_size} per "
                         f"process x {dist_utils.world_size()} process(es); lower --batch_size")
    return loader


def eval_batch_size(batch_size: int, clips_per_video: int) -> int:
    """Videos per test batch so that one forward pass sees about ``batch_size`` clips."""
    return max(1, batch_size // clips_per_video)
