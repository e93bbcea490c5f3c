"""Full fine-tuning of a pretrained backbone for action recognition (docs/method.md §5, CoCLR's protocol).

The whole network trains: backbone (from --pretrained: net and width from the checkpoint's
model_config) -> time/space-pooled high feature -> dropout (--dropout) -> linear classifier; the
backbone's learning rate is --lr x --backbone_lr_scale (lr/10). Step schedule (lr / 10 at each
--schedule epoch), Adam or SGD, mixed precision (--amp), one process, --multiprocessing-distributed
or torchrun (DDP + SyncBatchNorm on GPUs), exactly as train.py.

Test (every --eval_freq epochs and at the end): --num_clips clips over each video x centre crop
(or --ten_crop), softmax averaged per video; video-level top-1/top-5 and clip-level top-1 of the
LAST epoch go to metrics.json (percent). Under DDP every rank scores a strided share of the test
videos and the scores are gathered, so each video counts exactly once.

Outputs in --output_dir: args.json, log.jsonl (one line per epoch), TensorBoard events (tb/),
checkpoint_last.pth (every epoch, and inside one every --checkpoint_minutes), checkpoint_NNNN.pth
(every --save_every epochs and the last), metrics.json (top1, top5, clip_top1, train_loss / train_top1 of the last epoch, chance and at_chance
(top-1 within two standard errors of chance, also a WARNING in the log), init, num_train, num_val,
seq, img_dim, skipped_videos = videos replaced by
another because of a missing or corrupt frame: skipped_videos_train over every training epoch of
the run, skipped_videos_val in the final test, ...). Rerunning the same command continues the run
(--resume auto), from the next batch; SIGTERM or SIGUSR1 finishes the step, writes checkpoint_last.pth
and exits with status 75 (docs/pretraining.md "Long runs"). Without --pretrained the network is RANDOMLY INITIALISED (training from
scratch): the baseline every result is compared with (init = "random").
A training loss that becomes non-finite or climbs far above where it started stops the run with an
error naming the epoch (retry with a smaller --lr). --seq / --img_dim default to the --pretrained
checkpoint's pretraining values (the log says which were used).

Examples:
  # UCF101 split 1, one GPU
  python finetune.py --pretrained runs/pretrain/checkpoint_last.pth \\
      --train_csv data/ucf101/train_split1.csv --val_csv data/ucf101/test_split1.csv \\
      --num_classes 101 --output_dir runs/ucf101_finetune
  # HMDB51 split 1 on every GPU of this node (--batch_size is per process)
  python finetune.py --pretrained CKPT --train_csv data/hmdb51/train_split1.csv \\
      --val_csv data/hmdb51/test_split1.csv --num_classes 51 --multiprocessing-distributed \\
      --output_dir runs/hmdb51_finetune
  # the from-scratch baseline
  python finetune.py --net r3d_18 --train_csv ... --val_csv ... --output_dir runs/ucf101_scratch
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from datasets.base import split_overlap
from datasets.downstream import ClipDataset
from engine import cli
from engine.launch import launch
from engine.checkpointing import (
    check_same_files, epoch_progress, read_training_checkpoint, restore_training_state, save_epoch_checkpoints,
    training_state,
)
from engine.features import eval_batch_size, extract, gather_shards, shard_indices, sum_over_ranks
from engine.loader import make_loader, start_epoch
from engine.metrics import chance_level, classification_metrics
from engine.preemption import RunControl, gather_from_ranks
from engine.probe import DivergenceGuard
from engine.protocol import check_pretraining_overlap, protocol_record
from engine.supervised import train_one_epoch
from models import RANDOM_INIT_BANNER, ClassifierHead, VideoClassifier, build_backbone, build_eval_backbone
from utils import runtime
from utils.amp import make_scaler, resolve_amp
from utils.checkpoint import LAST_NAME, CheckpointError, remove_stale_temps, save_checkpoint
from utils.logging import RunLogger, prepare_output_dir, to_jsonable, write_json
from utils.optim import OPTIMIZERS, apply_step_schedule, build_optimizer

PROG = "finetune.py"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(PROG, __doc__)
    cli.add_downstream_args(parser, "args.json, log.jsonl, TensorBoard events (tb/), checkpoints and "
                            "metrics.json", distributed=True, resume=True)
    ft = parser.add_argument_group("fine-tuning (docs/method.md §5)")
    ft.add_argument("--dropout", type=float, default=0.5, help="dropout before the linear classifier")
    ft.add_argument("--final_bn", action="store_true", help="BatchNorm1d on the pooled feature before dropout")
    ft.add_argument("--optim", default="adam", choices=OPTIMIZERS, help="optimiser (SGD: momentum 0.9)")
    ft.add_argument("--lr", type=float, default=1e-3, help="learning rate of the classifier")
    ft.add_argument("--backbone_lr_scale", type=float, default=0.1,
                    help="the backbone's learning rate is --lr times this")
    ft.add_argument("--wd", type=float, default=1e-3, help="weight decay")
    cli.add_epochs_arg(ft, False, 100, "training epochs")
    ft.add_argument("--schedule", type=int, nargs="*", default=[60, 80],
                    help="epochs at which the learning rates are divided by 10")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """finetune.py's own checks (``ValueError`` with one message)."""
    cli.check_downstream(args)
    cli.check_at_least(args, 1, "epochs")
    cli.require(0 <= args.dropout < 1, f"--dropout must be in [0, 1), got {args.dropout}")
    cli.require(args.backbone_lr_scale >= 0, "--backbone_lr_scale must be >= 0")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags (a bad combination exits with one message); ``--seq`` /
    ``--img_dim`` default to the ``--pretrained`` checkpoint's pretraining values."""
    return cli.parse_checked(build_parser(), argv, check_args)


def run(args: argparse.Namespace, info: runtime.DistInfo) -> dict[str, Any] | None:
    """Fine-tune and test; returns the metrics on rank 0 (None elsewhere)."""
    device, main_proc = info.device, info.is_main
    runtime.seed_everything(args.seed, info.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp_dtype = resolve_amp(args.amp, device)
    out = Path(args.output_dir)
    show = main_proc and not args.no_progress

    resume = cli.resume_path(args)
    ckpt = read_training_checkpoint(resume) if resume else None
    if ckpt is not None and args.resume == "auto":  # a rerun into the folder: the same backbone and data
        check_same_files(ckpt, resume, {"pretrained": args.pretrained, "train_csv": args.train_csv,
                                        "val_csv": args.val_csv})
    first_epoch = int(ckpt["epoch"]) if ckpt is not None else 0
    if main_proc:  # after the resume check: a refused run leaves the folder's args.json as it was
        remove_stale_temps(out)
        prepare_output_dir(out, args, fresh=ckpt is None)
    # TensorBoard steps are epochs: hide (and drop from log.jsonl) what an earlier attempt wrote
    # after the checkpoint we restart from.
    logger = RunLogger(out, enabled=main_proc, purge_step=first_epoch)
    logger.truncate_log(first_epoch)
    leakage = check_pretraining_overlap(args, logger.print)  # refuses test videos seen in pretraining
    if ckpt is None:
        backbone, config = build_eval_backbone(args.pretrained, args.net, args.width)
    else:  # the checkpoint holds the whole fine-tuned network: build it empty
        if "model_config" not in ckpt or "num_classes" not in ckpt["model_config"]:
            raise CheckpointError(f"checkpoint {resume} is not a finetune.py checkpoint (no model_config "
                                  "with num_classes); use --resume none and another --output_dir")
        config = dict(ckpt["model_config"])
        if first_epoch > args.epochs:
            raise CheckpointError(f"checkpoint {resume} has {first_epoch} epochs done, more than "
                                  f"--epochs {args.epochs}; pass --epochs >= {first_epoch} or another --output_dir")
        if config.get("final_bn", args.final_bn) != args.final_bn:
            raise CheckpointError(f"checkpoint {resume} was trained with final_bn={config['final_bn']}; "
                                  "resume with the same --final_bn or use another --output_dir")
        backbone = build_backbone(config["net"], config["width"])
    if config["init"] == "random":
        logger.print(RANDOM_INIT_BANNER)
    logger.print(cli.clip_size_line(args))

    train_set = ClipDataset.from_args(args, args.train_csv, train=True, num_classes=args.num_classes)
    num_classes = train_set.num_classes
    if ckpt is not None and config["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint {resume} has {config['num_classes']} classes, the data "
                              f"{num_classes}; use the run's --num_classes or another --output_dir")
    test_set = ClipDataset.from_args(args, args.val_csv, train=False, num_classes=num_classes,
                                     ten_crop=args.ten_crop)
    overlap, overlap_warning = split_overlap(train_set, test_set)
    if overlap_warning:
        logger.print(overlap_warning)
    config.update(num_classes=num_classes, dropout=args.dropout, final_bn=args.final_bn)
    head = ClassifierHead(backbone.out_channels["high"], num_classes, final_bn=args.final_bn,
                          dropout=args.dropout)
    # channels_last_3d as in build_eval_backbone, also for a backbone rebuilt to resume (the same
    # layout gives the same float rounding, so a resumed run matches a straight one exactly)
    model = VideoClassifier(backbone, head).to(device, memory_format=torch.channels_last_3d)
    ddp_model = runtime.wrap_ddp(model, info, find_unused_parameters=False)
    model = runtime.unwrap(ddp_model)  # SyncBatchNorm-converted under DDP on GPUs
    optimizer = build_optimizer(
        [{"params": model.backbone.parameters(), "lr_scale": args.backbone_lr_scale},
         {"params": model.head.parameters()}], args.optim, args.lr, args.wd)
    scaler = make_scaler(amp_dtype, device)
    step, progress = 0, None
    if ckpt is not None:
        _, step = restore_training_state(ckpt, resume, model=model, optimizer=optimizer, scaler=scaler)
        optimizer.param_groups[0]["lr_scale"] = args.backbone_lr_scale  # the flag wins on resume
        progress = epoch_progress(ckpt, resume, info.world_size, args.batch_size)
        inside = f" and {progress['batches']} batches of epoch {first_epoch}" if progress else ""
        logger.print(f"=> resumed from {resume}: {first_epoch} of {args.epochs} epochs done{inside}")
        del ckpt

    loader = make_loader(train_set, args.batch_size, workers=args.workers, device=device, order="epoch",
                         seed=args.seed)
    clips_per_video = args.num_clips * (10 if args.ten_crop else 1)
    test_loader = make_loader(Subset(test_set, shard_indices(len(test_set))),
                              eval_batch_size(args.batch_size, clips_per_video), workers=args.workers,
                              device=device)
    logger.print(f"=> {config['net']} x{config['width']} ({config['init']}), {num_classes} classes, "
                 f"{len(train_set)} train / {len(test_set)} test videos, {info.world_size} process(es) "
                 f"on {device.type}, amp {amp_dtype}, {args.optim} lr {args.lr} (backbone x{args.backbone_lr_scale})")

    def evaluate() -> dict[str, float]:
        """Test metrics (percent) and ``skipped_videos`` of the test pass, over all ranks."""
        model.eval()
        logits, labels, skipped = extract(model, test_loader, device, amp_dtype, show, "test")
        return {**classification_metrics(gather_shards(logits, len(test_set), device),
                                         gather_shards(labels, len(test_set), device)),
                "skipped_videos": sum_over_ranks(skipped, device)}

    def save_inside_epoch(tally: dict[str, Any], batches: int) -> None:
        """checkpoint_last.pth inside the epoch: every rank's running sums, written by rank 0."""
        ranks = gather_from_ranks(tally)
        if main_proc:
            state = training_state(model=model, optimizer=optimizer, scaler=scaler, next_epoch=epoch,
                                   step=epoch_start_step + batches, args=to_jsonable(args), model_config=config,
                                   epoch_progress={"batches": batches, "world_size": info.world_size,
                                                   "batch_size": args.batch_size, "ranks": ranks})
            save_checkpoint(state, out / LAST_NAME)
            logger.print(f"=> checkpoint inside epoch {epoch}: batch {batches} ({out / LAST_NAME})")
        runtime.barrier()  # the other ranks stop (if they stop) only once the file is complete

    # the epoch loss is averaged over all ranks, so every rank stops at the same epoch
    guard = DivergenceGuard(num_classes, what="fine-tuning")
    control = RunControl(args.checkpoint_steps, args.checkpoint_minutes, is_main=main_proc)
    with control.catch_signals():
        for epoch in range(first_epoch, args.epochs):
            lr = apply_step_schedule(optimizer, args.lr, epoch, args.schedule)
            tally = progress["ranks"][info.rank] if progress else None
            first_batch = int(tally["batches"]) if tally else 0
            epoch_start_step, progress = step - first_batch, None
            start_epoch(loader, args.seed, info.rank, epoch, first_batch)
            stats = train_one_epoch(ddp_model, loader, optimizer, scaler, device, amp_dtype, show,
                                    desc=f"epoch {epoch}", tally=tally, control=control,
                                    checkpoint=save_inside_epoch,
                                    step=epoch_start_step,
                                    batch_seed=lambda i: runtime.derive_seed(args.seed, info.rank, epoch, 2, i))
            step = epoch_start_step + first_batch + len(loader)
            record: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr, **stats}
            if args.eval_freq and (epoch + 1) % args.eval_freq == 0 and epoch + 1 < args.epochs:
                record.update({f"val_{k}": v for k, v in evaluate().items()})
            if main_proc:  # log first: a kill before the checkpoint lands reruns the epoch, whose line is then replaced
                logger.scalars("train", {k: v for k, v in record.items() if k not in ("epoch", "step")}, epoch)
                logger.log_epoch(record)
                logger.flush()
                state = training_state(model=model, optimizer=optimizer, scaler=scaler, next_epoch=epoch + 1,
                                       step=step, args=to_jsonable(args), model_config=config)
                save_epoch_checkpoints(state, out, args.epochs, args.save_every, keep=args.keep_checkpoints)
                del state
            control.saved(step)
            guard.check(epoch, stats["loss"], lr)

    result = evaluate()
    skipped_val = result.pop("skipped_videos")
    metrics = None
    if main_proc:
        # every epoch of the run, resumed attempts included (log.jsonl holds one line per epoch)
        log = logger.read_log()
        skipped_train = sum(int(r.get("skipped_videos", 0)) for r in log)
        last = log[-1] if log else {}
        metrics = {**result, **chance_level(result["top1"], num_classes, len(test_set)),
                   "train_loss": last.get("loss"), "train_top1": last.get("train_top1"), **config, "num_train": len(train_set), "num_val": len(test_set), "train_val_overlap": overlap,
                   "num_clips": args.num_clips, "ten_crop": args.ten_crop, "seq": args.seq,
                   "img_dim": args.img_dim, "epochs": args.epochs,
                   "world_size": info.world_size, "checkpoint": str(out / LAST_NAME),
                   "skipped_videos": skipped_train + skipped_val, "skipped_videos_train": skipped_train,
                   "skipped_videos_val": skipped_val,
                   "protocol": protocol_record(args, "finetune", len(train_set), len(test_set), leakage)}
        logger.scalars("test", result, args.epochs)
        write_json(out / "metrics.json", metrics)
        logger.print("=> " + " ".join(f"{k}={v:.2f}" for k, v in result.items())
                     + f" skipped_videos={metrics['skipped_videos']}"
                     + (" (RANDOM INIT)" if config["init"] == "random" else ""))
        if metrics["at_chance"]:
            logger.print(f"WARNING: top-1 {result['top1']:.1f} % is within two standard errors of chance "
                         f"({metrics['chance']:.1f} % for {num_classes} classes) on {len(test_set)} test "
                         "videos: the network learned nothing it can use on the test split; this is not "
                         "a result")
    logger.close()
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Entry point; returns the metrics dict (single process / rank 0) for in-process use."""
    return launch(PROG, run, parse_args(argv))


if __name__ == "__main__":
    main()
