"""Temporal-order probe and CAM heat maps of a pretrained backbone (docs/method.md §5, last item).

1. Load the backbone of a ``train.py`` checkpoint (``--pretrained``; without it the backbone is
   randomly initialised, said loudly and recorded as ``"init": "random"``), freeze it (eval mode,
   ``requires_grad=False``).
2. Train a bias-free linear head (high-level width -> 2) on the time/space-pooled high feature to
   tell a clip (class 0) from its time-reversed copy (class 1); every batch holds both orders of
   every clip (``torch.flip`` on the time axis of the input clip).
3. Report the temporal-order accuracy on ``--val_csv`` (``num_clips`` clips per video, each clip
   and its reversed copy classified on its own); an accuracy within two standard errors of 50 %
   is flagged (``at_chance``), and a training loss that diverges stops the run.
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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python visualization/main_temporal.py`: import from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from datasets.base import split_overlap
from datasets.temporal_order import OrderClipDataset, OrderPairs
from engine import cli
from engine.launch import UsageError, launch
from engine.features import extract
from engine.loader import make_loader
from engine.metrics import chance_level
from engine.probe import (
    DivergenceGuard, assert_state_unchanged, check_only_head_trains, order_accuracy, order_logits, state_snapshot,
)
from engine.protocol import check_pretraining_overlap, protocol_record
from engine.supervised import train_one_epoch
from models import RANDOM_INIT_BANNER, VideoClassifier, build_eval_backbone
from utils import runtime
from utils.amp import make_scaler, resolve_amp
from utils.checkpoint import remove_stale_temps
from utils.logging import RunLogger, prepare_output_dir, write_json
from utils.optim import OPTIMIZERS, apply_step_schedule, build_optimizer
from visualization.cam import draw_heat_maps

PROG = "python -m visualization.main_temporal"
DESCRIPTION = (
    "Temporal-order probe and CAM heat maps (docs/method.md §5). Freezes the backbone of a pretraining "
    "checkpoint, trains a bias-free linear head (high-level width -> 2) on the pooled high-level "
    "feature to tell a clip (class 0) from its time-reversed copy (class 1), reports the accuracy "
    "on --val_csv, then applies the head at every (t,h,w) of the high feature map of chosen "
    "validation videos and writes heat-map overlays (PNG strips and GIFs under OUTPUT_DIR/cam/). "
    "CSV labels are ignored.")
EPILOG = (
    "Outputs: args.json, log.jsonl (one line per epoch), probe_head.pt (the head's weight), "
    "metrics.json (temporal_order_acc in percent, num_val, init, skipped_videos, per-video "
    "probabilities, protocol: the split and the pretraining checkpoint), cam/<index>_<video>.png and "
    ".gif. A --val_csv video the --pretrained checkpoint was pretrained on stops the run "
    "(--allow_overlap runs anyway and records it).\n"
    "Example: python -m visualization.main_temporal --pretrained ckpt.pth "
    "--train_csv train.csv --val_csv val.csv --output_dir runs/temporal")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(PROG, DESCRIPTION, EPILOG)
    cli.add_data_args(parser, "data (path,num_frames[,label] CSVs; labels are ignored)", {
        "--train_csv": "videos the order head is trained on",
        "--val_csv": "videos the order accuracy is measured on and the heat maps drawn from"})
    cli.add_backbone_args(parser, pretrained=True)
    cli.add_clip_args(parser, "clips", test_clips=5)

    train = parser.add_argument_group("probe training")
    cli.add_epochs_arg(train, False, 10, "passes over --train_csv")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate of the head")
    train.add_argument("--optim", default="adam", choices=OPTIMIZERS, help="optimiser of the head")
    train.add_argument("--wd", type=float, default=1e-5, help="weight decay of the head")
    train.add_argument("--schedule", type=int, nargs="*", default=[], metavar="EPOCH",
                       help="epochs at which the lr is divided by 10 (default: none)")
    cli.add_batch_arg(train, False, 32,
                      "clips per batch (the probe sees twice as many: each clip in both orders); "
                      "validation batches hold batch_size // num_clips videos")

    vis = parser.add_argument_group("heat maps")
    vis.add_argument("--num_vis", type=int, default=4, help="draw the first N videos of --val_csv (0 = none)")
    vis.add_argument("--videos", type=int, nargs="+", default=None, metavar="IDX",
                     help="draw these 0-based rows of --val_csv instead of the first --num_vis")
    vis.add_argument("--alpha", type=float, default=0.5, help="opacity of the heat map over the frame")
    vis.add_argument("--cmap", default="jet", help="matplotlib colour map of the heat map")
    vis.add_argument("--gif_ms", type=int, default=125, help="GIF frame duration in milliseconds")

    cli.add_runtime_args(parser, distributed=False)
    cli.add_output_args(parser, "args.json, log.jsonl, probe_head.pt, metrics.json and cam/")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """The probe's own checks (``ValueError`` with one message); fills ``--seq`` / ``--img_dim``."""
    cli.fill_clip_size(args)
    cli.check_at_least(args, 1, "gif_ms", "epochs")  # an untrained order head measures nothing
    cli.check_at_least(args, 0, "num_vis")
    cli.require(0.0 <= args.alpha <= 1.0, f"--alpha must be in [0, 1], got {args.alpha}")


def run(args: argparse.Namespace, info: runtime.DistInfo) -> dict[str, Any]:
    """The whole probe (steps 1-4 of the module doc) on ``info.device``; returns the metrics
    written to ``metrics.json``."""
    device = info.device
    amp_dtype = resolve_amp(args.amp, device)
    runtime.seed_everything(args.seed)
    show = not args.no_progress
    remove_stale_temps(args.output_dir)  # of writes a killed run left
    out = prepare_output_dir(args.output_dir, args, fresh=True)  # no resume: nothing of an earlier run stays
    logger = RunLogger(out)
    logger.truncate_log(0)  # no resume: a rerun in the same folder starts a fresh log.jsonl

    leakage = check_pretraining_overlap(args, logger.print)  # refuses test videos seen in pretraining
    backbone, described = build_eval_backbone(args.pretrained, args.net, args.width)
    if described["init"] == "random":
        logger.print(RANDOM_INIT_BANNER)
    logger.print(f"backbone: {described['net']} width {described['width']} ({described['init']}"
                 + (f" from {args.pretrained})" if args.pretrained else ")") + f" on {device}")
    logger.print(cli.clip_size_line(args))
    head = nn.Linear(backbone.out_channels["high"], 2, bias=False)
    model = VideoClassifier(backbone, head, frozen=True).to(device)  # type: ignore[arg-type]

    train_set = OrderClipDataset(args.train_csv, args.seq, args.img_dim, train=True, ds=args.ds,
                                 data_root=args.data_root, strict=args.strict)
    val_set = OrderClipDataset(args.val_csv, args.seq, args.img_dim, train=False, ds=args.ds,
                               num_clips=args.num_clips, data_root=args.data_root, strict=args.strict)
    overlap, overlap_warning = split_overlap(train_set, val_set)
    if overlap_warning:
        logger.print(overlap_warning)
    vis = list(range(min(args.num_vis, len(val_set)))) if args.videos is None else list(args.videos)
    bad = [i for i in vis if not 0 <= i < len(val_set)]
    if bad:
        raise UsageError(f"--videos {bad}: {args.val_csv} has {len(val_set)} videos (rows 0..{len(val_set) - 1})")

    optimizer = build_optimizer([{"params": head.parameters()}], args.optim, args.lr, args.wd)
    check_only_head_trains(model, head, optimizer)
    scaler = make_scaler(amp_dtype, device)
    snapshot = state_snapshot(backbone)
    train_loader = make_loader(train_set, args.batch_size, workers=args.workers, device=device,
                               order="shuffle", seed=args.seed)
    stats: dict[str, float] = {}
    skipped_train = 0
    guard = DivergenceGuard(2, what="temporal-order probe")
    for epoch in range(args.epochs):
        lr = apply_step_schedule(optimizer, args.lr, epoch, args.schedule)
        stats = train_one_epoch(model, OrderPairs(train_loader), optimizer, scaler, device,
                                amp_dtype, show_progress=show, desc=f"epoch {epoch}")
        skipped_train += stats["skipped_videos"]
        logger.log_epoch({"epoch": epoch, "lr": lr, **stats})
        guard.check(epoch, stats["loss"], lr)
    assert_state_unchanged(backbone, snapshot)
    model.eval()
    torch.save({"weight": head.weight.detach().cpu(), "backbone": described}, out / "probe_head.pt")

    val_loader = make_loader(val_set, max(1, args.batch_size // args.num_clips), workers=args.workers,
                             device=device, seed=args.seed)
    logits, _, skipped_val = extract(order_logits(model), val_loader, device, amp_dtype, show,
                                     desc="validate")
    metrics: dict[str, Any] = {
        **order_accuracy(logits.unflatten(2, (2, 2))),
        "num_val": len(val_set), "train_val_overlap": overlap, "num_val_clips": int(logits.shape[0] * logits.shape[1]),
        "init": described["init"], "net": described["net"], "width": described["width"],
        "pretrained": described["pretrained"], "epochs": args.epochs,
        "train_loss": stats.get("loss"), "train_acc": stats.get("train_top1"),
        "skipped_videos": skipped_train + skipped_val,
        "skipped_videos_train": skipped_train, "skipped_videos_val": skipped_val,
        "backbone_unchanged": True,  # assert_state_unchanged above raises otherwise
    }
    accuracy = metrics["temporal_order_acc"]
    metrics.update(chance_level(accuracy, 2, len(val_set)), seq=args.seq, img_dim=args.img_dim,
                   protocol=protocol_record(args, "temporal_order", len(train_set), len(val_set), leakage))
    logger.print(f"temporal-order accuracy on {len(val_set)} val videos x {args.num_clips} clips "
                 f"x 2 orders: {metrics['temporal_order_acc']:.2f}% (chance 50%); "
                 f"skipped_videos={metrics['skipped_videos']}")
    if metrics["at_chance"]:
        logger.print(f"WARNING: {accuracy:.1f} % is within two standard errors of chance (50 %) on "
                     f"{len(val_set)} videos: the features tell nothing of the order of time here; "
                     "the heat maps show no motion cue")

    if vis:
        vis_set = OrderClipDataset(args.val_csv, args.seq, args.img_dim, train=False, ds=args.ds,
                                   num_clips=1, data_root=args.data_root, strict=args.strict)
        metrics["visualized"] = draw_heat_maps(backbone, head, vis_set, vis, out / "cam", device, amp_dtype,
                                               alpha=args.alpha, cmap=args.cmap, gif_ms=args.gif_ms,
                                               batch_size=args.batch_size)
        logger.print(f"heat maps of {len(vis)} videos in {out / 'cam'}")
    write_json(out / "metrics.json", metrics)
    logger.close()
    return metrics


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags (a bad combination exits with one message); ``--seq`` /
    ``--img_dim`` default to the ``--pretrained`` checkpoint's pretraining values."""
    return cli.parse_checked(build_parser(), argv, check_args)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point; returns the metrics written to ``metrics.json``."""
    return launch(PROG, run, parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
