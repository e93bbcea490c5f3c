"""Temporal-order probe and CAM heat maps of a pretrained backbone (METHOD.md §5, last item).

1. Load the backbone of a ``train.py`` checkpoint (``--pretrained``; without it the backbone is
   randomly initialised, said loudly and recorded as ``"init": "random"``), freeze it (eval mode,
   ``requires_grad=False``).
2. Train a bias-free linear head (high-level width -> 2) on the time/space-pooled high feature to
   tell a clip (class 0) from its time-reversed copy (class 1); every batch holds both orders of
   every clip (``torch.flip`` on the time axis of the input clip).
3. Report the temporal-order accuracy on ``--val_csv`` (``num_clips`` clips per video, each clip
   and its reversed copy classified on its own).
4. For chosen validation videos, apply the head at every (t, h, w) of the high feature map (CAM),
   upsample to the clip's (T, H, W), normalise to [0, 1] per clip, and write heat-map overlays:
   ``cam/<index>_<video>.png`` (rows: frames / class-0 overlay of the normal clip / reversed
   frames / class-1 overlay of the reversed clip) and ``cam/<index>_<video>.gif`` (the normal
   clip's overlay, animated).

Labels in the CSVs are ignored: ``path,num_frames`` and ``path,num_frames,label`` rows both work.

Example::

    python -m visualization.main_temporal --pretrained runs/ucf/checkpoint.pth \\
        --train_csv ucf101_train_split1.csv --val_csv ucf101_test_split1.csv \\
        --output_dir runs/temporal_ucf --num_vis 8
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python visualization/main_temporal.py`: import from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from datasets.base import FrameFolderDataset, SkipCounting
from datasets.frames import FrameError, load_clip
from datasets.sampling import eval_clip_indices, train_clip_indices
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainAugment
from engine.amp import AMP_CHOICES, autocast, make_scaler, resolve_amp
from engine.checkpoint import CheckpointError
from engine.evaluate import (
    OPTIMIZERS,
    RANDOM_INIT_BANNER,
    apply_step_schedule,
    assert_state_unchanged,
    build_eval_backbone,
    build_optimizer,
    check_only_head_trains,
    extract,
    state_snapshot,
    train_one_epoch,
)
from engine.logging import RunLogger, prepare_output_dir, write_json
from engine.runtime import DEVICE_CHOICES, resolve_device, seed_everything, seed_worker
from models import NETS, BackboneLoadError, VideoClassifier
from visualization.cam import (
    NORMAL,
    REVERSED,
    class_activation_maps,
    denormalize,
    normalize_cam,
    order_pairs,
    overlay,
    save_gif,
    save_strip,
    upsample_cam,
)


class OrderClipDataset(FrameFolderDataset):
    """Frame-folder videos of a CSV whose labels, if any, are ignored (METHOD §1 sampling).

    ``train=True``: one random clip of ``seq`` frames at stride ``ds`` with the light downstream
    augmentation (crop box + flip) -> ``(clip (3, T, S, S), index)``.
    ``train=False``: ``num_clips`` clips spread over the video, centre crop ->
    ``(clips (num_clips, 3, T, S, S), index)``; with ``num_clips=1``, the middle clip.
    ``index`` is the CSV position of the video actually loaded (a corrupt video is replaced by
    another one, see :mod:`datasets.base`).
    """

    def __init__(self, csv_file: str | os.PathLike, seq: int = 16, img_dim: int = 112,
                 train: bool = True, ds: int = 1, num_clips: int = 1,
                 data_root: str | None = None, strict: bool = False) -> None:
        # A video shorter than one clip would end in repeated last frames, and its reversed copy
        # start with them: a static cue for the order, so such videos are left out (counted).
        super().__init__(csv_file, labelled=False, data_root=data_root, strict=strict,
                         random_fallback=train, min_frames=(seq - 1) * ds + 1)
        self.seq, self.ds, self.train, self.num_clips = seq, ds, train, num_clips
        self.transform = TrainAugment(img_dim) if train else EvalTransform(img_dim)

    def _sample(self, index: int) -> tuple[Tensor, int]:
        folder, num_frames = self.paths[index], self.num_frames[index]
        if self.train:
            return self.transform(load_clip(folder, train_clip_indices(num_frames, self.seq, self.ds))), index
        clips = eval_clip_indices(num_frames, self.seq, self.ds, self.num_clips)  # (K, T)
        frames = self.transform(load_clip(folder, clips.flatten()))  # (3, K*T, S, S)
        return frames.unflatten(1, tuple(clips.shape)).transpose(0, 1), index


class OrderPairs:
    """A loader of ``((clips, _), skipped)`` batches (:func:`make_loader`) seen as
    ``((inputs, targets), skipped)`` batches of the probe: each batch's clips followed by their
    time-reversed copies (:func:`order_pairs`)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[tuple[Tensor, Tensor], Tensor]]:
        for (clips, _), skipped in self.loader:
            yield order_pairs(clips), skipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m visualization.main_temporal",
        description=(
            "Temporal-order probe and CAM heat maps (METHOD.md §5). Freezes the backbone of a "
            "pretraining checkpoint, trains a bias-free linear head (high-level width -> 2) on the "
            "pooled high-level feature to tell a clip (class 0) from its time-reversed copy "
            "(class 1), reports the accuracy on --val_csv, then applies the head at every (t,h,w) "
            "of the high feature map of chosen validation videos and writes heat-map overlays "
            "(PNG strips and GIFs under OUTPUT_DIR/cam/). CSV labels are ignored."),
        epilog=(
            "Outputs: args.json, log.jsonl (one line per epoch), probe_head.pt (the head's "
            "weight), metrics.json (temporal_order_acc in percent, num_val, init, skipped_videos, "
            "per-video probabilities), cam/<index>_<video>.png and .gif.\n"
            "Example: python -m visualization.main_temporal --pretrained ckpt.pth "
            "--train_csv train.csv --val_csv val.csv --output_dir runs/temporal"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data (path,num_frames[,label] CSVs; labels are ignored)")
    data.add_argument("--train_csv", required=True, help="videos the order head is trained on")
    data.add_argument("--val_csv", required=True,
                      help="videos the order accuracy is measured on and the heat maps drawn from")
    data.add_argument("--data_root", default=None,
                      help="folder that relative CSV paths are resolved against (default: each CSV's folder)")
    data.add_argument("--strict", action="store_true",
                      help="fail on a missing/corrupt frame instead of skipping the video")

    model = parser.add_argument_group("backbone")
    model.add_argument("--pretrained", default=None, metavar="CKPT",
                       help="train.py checkpoint (or plain backbone state dict); net and width come "
                            "from its model_config. Without it the backbone is RANDOMLY INITIALISED")
    model.add_argument("--net", default=None, choices=NETS,
                       help="backbone without --pretrained (then default r3d_18), or to read a "
                            "plain state dict without model_config")
    model.add_argument("--width", type=float, default=None, help="channel width multiplier with --net (1.0)")

    clips = parser.add_argument_group("clips")
    clips.add_argument("--seq", type=int, default=16, help="frames per clip (T)")
    clips.add_argument("--img_dim", type=int, default=112, help="crop size in pixels (H = W)")
    clips.add_argument("--ds", type=int, default=1, help="temporal stride between the frames of a clip")
    clips.add_argument("--num_clips", type=int, default=5,
                       help="validation clips spread over each video (each classified in both orders)")

    train = parser.add_argument_group("probe training")
    train.add_argument("--epochs", type=int, default=10, help="passes over --train_csv")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate of the head")
    train.add_argument("--optim", default="adam", choices=OPTIMIZERS, help="optimiser of the head")
    train.add_argument("--wd", type=float, default=1e-5, help="weight decay of the head")
    train.add_argument("--schedule", type=int, nargs="*", default=[], metavar="EPOCH",
                       help="epochs at which the lr is divided by 10")
    train.add_argument("--batch_size", type=int, default=32,
                       help="clips per batch (the probe sees twice as many: each clip in both "
                            "orders); validation batches hold batch_size // num_clips videos")

    vis = parser.add_argument_group("heat maps")
    vis.add_argument("--num_vis", type=int, default=4,
                     help="draw the first N videos of --val_csv (0 = none)")
    vis.add_argument("--videos", type=int, nargs="+", default=None, metavar="IDX",
                     help="draw these 0-based rows of --val_csv instead of the first --num_vis")
    vis.add_argument("--alpha", type=float, default=0.5, help="opacity of the heat map over the frame")
    vis.add_argument("--cmap", default="jet", help="matplotlib colour map of the heat map")
    vis.add_argument("--gif_ms", type=int, default=125, help="GIF frame duration in milliseconds")

    run = parser.add_argument_group("runtime")
    run.add_argument("--output_dir", required=True,
                     help="where args.json, log.jsonl, probe_head.pt, metrics.json and cam/ go")
    run.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    run.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                     help="auto = the GPU when one is visible, else the CPU")
    run.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                     help="mixed precision of the backbone: auto = bf16 on CUDA, off on CPU")
    run.add_argument("--seed", type=int, default=0, help="seed of the head's init, sampling and augmentation")
    run.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible flag values with one clear message (``ValueError``)."""
    for name in ("seq", "img_dim", "ds", "num_clips", "batch_size", "gif_ms"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("epochs", "num_vis", "workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.pretrained is None and args.net is None and args.width is not None:
        raise ValueError("--width needs --net (or --pretrained, whose model_config sets it)")


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool,
                args: argparse.Namespace, device: torch.device) -> DataLoader:
    """A loader of ``(batch, skipped)``: items carry how many corrupt/missing videos they
    replaced, counted in the worker that loaded them (:class:`datasets.base.SkipCounting`)."""
    return DataLoader(SkipCounting(dataset), batch_size=batch_size, shuffle=shuffle, drop_last=False,
                      num_workers=args.workers, pin_memory=device.type == "cuda",
                      worker_init_fn=seed_worker, persistent_workers=False,
                      generator=torch.Generator().manual_seed(args.seed))


def order_logits(model: VideoClassifier) -> Callable[[Tensor], Tensor]:
    """Clips ``(M, 3, T, H, W)`` -> ``(M, 2, 2)`` probe logits: ``[:, 0]`` for each clip,
    ``[:, 1]`` for its time-reversed copy (one backbone pass over both)."""
    def fn(x: Tensor) -> Tensor:
        logits = model(order_pairs(x)[0])  # (2M, 2): normal clips first
        return torch.stack(logits.chunk(2), dim=1)
    return fn


def order_accuracy(logits: Tensor) -> dict[str, float]:
    """Accuracy in percent of ``(N, K, 2, 2)`` logits (videos, clips, [normal, reversed], class):
    overall and per order."""
    hit = logits.argmax(dim=-1).eq(torch.tensor([NORMAL, REVERSED]))  # (N, K, 2)
    return {"temporal_order_acc": 100.0 * hit.float().mean().item(),
            "acc_normal": 100.0 * hit[..., 0].float().mean().item(),
            "acc_reversed": 100.0 * hit[..., 1].float().mean().item()}


def _safe_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(path))) or "video"


@torch.no_grad()
def draw_heat_maps(backbone: nn.Module, head: nn.Linear, dataset: OrderClipDataset,
                   indices: Sequence[int], out_dir: Path, args: argparse.Namespace,
                   device: torch.device, amp_dtype: torch.dtype | None) -> list[dict[str, Any]]:
    """CAM overlays (METHOD §5) of the middle clip of the videos ``indices`` of ``dataset``;
    returns one record per video (files written, the head's probabilities)."""
    records = []
    chunk = max(1, args.batch_size)
    for begin in range(0, len(indices), chunk):
        batch = [dataset[i] for i in indices[begin:begin + chunk]]
        clips = torch.stack([clip[0] for clip, _ in batch]).to(device)  # (v, 3, T, H, W)
        v, size = clips.shape[0], clips.shape[2:]
        inputs, _ = order_pairs(clips)
        with autocast(device, amp_dtype):
            features = backbone(inputs)["high"]
        cam = class_activation_maps(features.float(), head.weight.float())  # (2v, 2, t, h, w)
        probs = cam.mean(dim=(2, 3, 4)).softmax(dim=1)  # = softmax of the head's logits
        # normal clips with the class-0 map, reversed copies with the class-1 map
        chosen = torch.cat([cam[:v, NORMAL:NORMAL + 1], cam[v:, REVERSED:REVERSED + 1]])
        heat = normalize_cam(upsample_cam(chosen, size))[:, 0].cpu().numpy()  # (2v, T, H, W)
        for j, (_, index) in enumerate(batch):
            normal = denormalize(inputs[j], IMAGENET_MEAN, IMAGENET_STD)
            reverse = denormalize(inputs[v + j], IMAGENET_MEAN, IMAGENET_STD)
            normal_overlay = overlay(normal, heat[j], args.alpha, args.cmap)
            stem = out_dir / f"{index:04d}_{_safe_name(dataset.paths[index])}"
            png = save_strip(stem.with_suffix(".png"), [
                normal, normal_overlay, reverse, overlay(reverse, heat[v + j], args.alpha, args.cmap)])
            gif = save_gif(stem.with_suffix(".gif"), normal_overlay, duration_ms=args.gif_ms)
            records.append({"index": index, "video": dataset.paths[index], "png": str(png),
                            "gif": str(gif), "p_normal_given_normal": probs[j, NORMAL].item(),
                            "p_reversed_given_reversed": probs[v + j, REVERSED].item()})
    return records


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole probe (steps 1-4 of the module doc); returns the metrics written to
    ``metrics.json``."""
    check_args(args)
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    seed_everything(args.seed)
    show = not args.no_progress
    out = prepare_output_dir(args.output_dir, args)
    logger = RunLogger(out)
    logger.truncate_log(0)  # no resume: a rerun in the same folder starts a fresh log.jsonl

    backbone, described = build_eval_backbone(args.pretrained, args.net, args.width)
    if described["init"] == "random":
        logger.print(RANDOM_INIT_BANNER)
    logger.print(f"backbone: {described['net']} width {described['width']} ({described['init']}"
                 + (f" from {args.pretrained})" if args.pretrained else ")") + f" on {device}")
    head = nn.Linear(backbone.out_channels["high"], 2, bias=False)
    model = VideoClassifier(backbone, head, frozen=True).to(device)  # type: ignore[arg-type]

    train_set = OrderClipDataset(args.train_csv, args.seq, args.img_dim, train=True, ds=args.ds,
                                 data_root=args.data_root, strict=args.strict)
    val_set = OrderClipDataset(args.val_csv, args.seq, args.img_dim, train=False, ds=args.ds,
                               num_clips=args.num_clips, data_root=args.data_root, strict=args.strict)
    vis = list(range(min(args.num_vis, len(val_set)))) if args.videos is None else list(args.videos)
    bad = [i for i in vis if not 0 <= i < len(val_set)]
    if bad:
        raise ValueError(f"--videos {bad}: {args.val_csv} has {len(val_set)} videos (rows 0..{len(val_set) - 1})")

    optimizer = build_optimizer([{"params": head.parameters()}], args.optim, args.lr, args.wd)
    check_only_head_trains(model, head, optimizer)
    scaler = make_scaler(amp_dtype, device)
    snapshot = state_snapshot(backbone)
    train_loader = make_loader(train_set, args.batch_size, True, args, device)
    stats: dict[str, float] = {}
    skipped_train = 0
    for epoch in range(args.epochs):
        lr = apply_step_schedule(optimizer, args.lr, epoch, args.schedule)
        stats = train_one_epoch(model, OrderPairs(train_loader), optimizer, scaler, device,
                                amp_dtype, show_progress=show, desc=f"epoch {epoch}")
        skipped_train += stats["skipped_videos"]
        logger.log_epoch({"epoch": epoch, "lr": lr, **stats})
    assert_state_unchanged(backbone, snapshot)
    model.eval()
    torch.save({"weight": head.weight.detach().cpu(), "backbone": described}, out / "probe_head.pt")

    val_loader = make_loader(val_set, max(1, args.batch_size // args.num_clips), False, args, device)
    logits, _, skipped_val = extract(order_logits(model), val_loader, device, amp_dtype, show,
                                     desc="validate")
    metrics: dict[str, Any] = {
        **order_accuracy(logits.unflatten(2, (2, 2))),
        "num_val": len(val_set), "num_val_clips": int(logits.shape[0] * logits.shape[1]),
        "init": described["init"], "net": described["net"], "width": described["width"],
        "pretrained": described["pretrained"], "epochs": args.epochs,
        "train_loss": stats.get("loss"), "train_acc": stats.get("train_top1"),
        "skipped_videos": skipped_train + skipped_val,
        "skipped_videos_train": skipped_train, "skipped_videos_val": skipped_val,
        "backbone_unchanged": True,  # assert_state_unchanged above raises otherwise
    }
    logger.print(f"temporal-order accuracy on {len(val_set)} val videos x {args.num_clips} clips "
                 f"x 2 orders: {metrics['temporal_order_acc']:.2f}% (chance 50%); "
                 f"skipped_videos={metrics['skipped_videos']}")

    if vis:
        vis_set = OrderClipDataset(args.val_csv, args.seq, args.img_dim, train=False, ds=args.ds,
                                   num_clips=1, data_root=args.data_root, strict=args.strict)
        metrics["visualized"] = draw_heat_maps(backbone, head, vis_set, vis, out / "cam", args,
                                               device, amp_dtype)
        logger.print(f"heat maps of {len(vis)} videos in {out / 'cam'}")
    write_json(out / "metrics.json", metrics)
    logger.close()
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, BackboneLoadError, FileNotFoundError, CheckpointError, FrameError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
