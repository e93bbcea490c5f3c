"""Self-supervised multi-level pretraining (Qian et al., ICCV 2021; docs/method.md §1–§4).

    python train.py --csv_file kinetics.csv --output_dir runs/k400              # 1 GPU or CPU
    python train.py ... --multiprocessing-distributed                           # all GPUs here
    torchrun --nproc_per_node 4 train.py ... --output_dir runs/k400            # torchrun, 1+ nodes

One code path for all of them (nanoGPT style): parse flags -> build data, model, objective,
optimizer (-> resume) -> epoch loop. The plumbing lives in ``engine/``; see ``python train.py -h``
and docs/pretraining.md.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from engine import cli
from engine.launch import launch
from engine.checkpointing import (
    check_matches, check_same_files, epoch_progress, read_training_checkpoint, restore_training_state,
    save_epoch_checkpoints, training_state,
)
from engine.loader import make_loader, start_epoch
from engine.preemption import RunControl, gather_from_ranks
from engine.pretrain import EpochResult, EpochTally, StepGuard, final_metrics, train_one_epoch
from engine.protocol import pretraining_record
from losses.objective import add_loss_args, loss_args_error
from utils import runtime
from utils.amp import make_scaler, resolve_amp
from utils.checkpoint import LAST_NAME, numbered_name, remove_stale_temps, save_checkpoint
from utils.logging import RunLogger, prepare_output_dir, to_jsonable, write_json
from utils.optim import set_lr, step_decay_lr

PROG = "train.py"
EPILOG = """\
examples (the reference README's commands work verbatim):
  Kinetics-400, all GPUs of this node:
    python train.py --train_batch 64 --workers 8 --cluster 1000 --epoch 100 --lr_decay 70 \\
      --thres 0.05 --csv_file kinetics.csv --multiprocessing-distributed --split 20
  UCF101:
    python train.py --train_batch 64 --workers 8 --cluster 200 --epoch 300 --lr_decay 200 \\
      -thres 0.05 --csv_file ucf_pretrain.csv --multiprocessing-distributed --split 50
  two CPU processes (gloo), tiny model, for a smoke test:
    python train.py --csv_file data/synth/pretrain.csv --multiprocessing-distributed --nproc 2 \\
      --width 0.25 --seq 8 --img_dim 32 --train_batch 4 --epoch 2 --split 1 --cluster 16
  flags from a file (one flag or value per line; later flags override it):
    python train.py @my_flags.args --csv_file data/synth/pretrain.csv

outputs in --output_dir: args.json, log.jsonl (one line per epoch), tb/ (TensorBoard),
checkpoint_last.pth (every epoch, and inside an epoch every --checkpoint_minutes), checkpoint_NNNN.pth
(after NNNN epochs, every --save_every epochs and at the end), metrics.json (at the end). Rerunning
the same command continues the run (--resume auto is the default), from the next batch.

long runs (docs/pretraining.md "Long runs"): SIGTERM or SIGUSR1 finishes the current step, writes
checkpoint_last.pth and exits with status 75 ("requeue me"); scripts/slurm/pretrain_k400.sh
requeues such a job by itself."""


def build_parser() -> argparse.ArgumentParser:
    p = cli.new_parser(PROG, __doc__.split("\n\n")[0], EPILOG)
    d = cli.add_data_args(p, "data (docs/method.md §1)", {
        "--csv_file": "CSV of the training videos, rows 'path,num_frames' (required)"}, required=False)
    d.add_argument("--color_strength", type=float, default=1.0,
                   help="multiplier of the per-frame colour-jitter strengths of docs/method.md §1 (1 = brightness/"
                        "contrast/saturation 0.5, hue 0.25; 0 = none). Lower it for tiny inputs: see "
                        "docs/demo.md")
    d.add_argument("--grayscale_p", type=float, default=0.5,
                   help="per-frame probability of the random grayscale of docs/method.md §1")
    d.add_argument("--gpu_augment", action="store_true",
                   help="colour jitter/grayscale/normalisation run batched on the training device; the loader only "
                        "decodes, crops, resizes, flips (and draws the colour factors: same random numbers as "
                        "without the flag); uint8 batches also cut host->device traffic 4x")
    d.add_argument("--exact_color", action="store_true",
                   help="torchvision's colour maths (HSV hue, a clamp after every op) instead of the default fast "
                        "kernel (one 3x3 affine map per frame, same draws; docs/performance.md gives the "
                        "difference); several times slower")
    c = cli.add_clip_args(p, "clips (docs/method.md §1)")
    c.add_argument("--sample", type=int, default=2, help="local clips drawn from each video, n >= 2")
    c.add_argument("--rate", type=float, default=3.0, help="upper bound of the frame-rate factor r ~ U(1, rate)")

    m = cli.add_backbone_args(p, pretrained=False)
    m.add_argument("--channel", type=int, default=128, help="output width of every head")
    m.add_argument("--cluster", type=int, default=1000, help="number of prototypes K for Sinkhorn clustering")

    o = p.add_argument_group("optimisation (docs/method.md §4)")
    cli.add_batch_arg(o, True, 64, "videos per batch per process")
    cli.add_epochs_arg(o, True, 100, "total pretraining epochs")
    o.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    o.add_argument("--wd", type=float, default=1e-5, help="Adam weight decay")
    o.add_argument("--lr_decay", type=int, default=70, help="epoch from which the lr is multiplied by 0.1 (0 = never)")
    o.add_argument("--split", type=int, default=20,
                   help="first epoch of the graph constraint; --split equal to --epoch disables it")
    o.add_argument("--thres", "-thres", type=float, default=0.05,
                   help="threshold on G_ins in the graph constraint ('-thres' also accepted)")
    o.add_argument("--compile", nargs="?", const="on", default="off", choices=("auto", "on", "off"),
                   help="torch.compile the model: on, off, or auto (= on with CUDA); '--compile' alone = on")
    o.add_argument("--max_bad_steps", type=int, default=10,
                   help="stop after this many non-finite steps in a row (each is skipped); 0 = never stop")
    add_loss_args(p)

    cli.add_runtime_args(p, distributed=True)
    out = cli.add_output_args(p, "every output", default_dir="runs/pretrain", resume=True)
    out.add_argument("--log_every", type=int, default=50, help="TensorBoard scalars every this many steps")
    return p


def expected_world_size(args: argparse.Namespace) -> int:
    """How many processes the run will have (for checks made before they exist)."""
    launched = runtime.launched_world_size()
    if launched is not None:
        return launched
    if args.multiprocessing_distributed:
        return runtime.num_spawn(args.device, args.nproc)
    return 1


def check_args(args: argparse.Namespace) -> None:
    """train.py's own checks (``ValueError`` with one message; :func:`engine.cli.parse_checked`)."""
    req = cli.require
    req(args.csv_file is not None, "--csv_file is required: a CSV of 'path,num_frames' rows (see -h)")
    req(args.sample >= 2, f"--sample {args.sample}: need at least 2 local clips per video (the positives of a "
        "clip are the other clips of its video, docs/method.md §3.1)")
    cli.check_at_least(args, 1, "epoch", "channel", "log_every")
    req(args.cluster >= 2, f"--cluster {args.cluster}: Sinkhorn over one prototype gives every clip the same "
        "code (docs/method.md §3.4); use --cluster >= 2")
    cli.check_at_least(args, 0, "split", "lr_decay", "max_bad_steps")
    req(args.seq >= 2, f"--seq {args.seq}: a clip needs at least 2 frames (motion excitation and reversal, "
        "docs/method.md §2)")
    req(args.color_strength >= 0 and 0 <= args.grayscale_p <= 1,
        f"--color_strength {args.color_strength} / --grayscale_p {args.grayscale_p}: need a strength >= 0 "
        "and a probability in [0, 1]")
    req(args.rate >= 1, f"--rate {args.rate}: the frame-rate factor is drawn from U(1, rate), so it must be >= 1")
    req(0 <= args.thres <= 1, f"--thres {args.thres}: a threshold on softmax probabilities must be in [0, 1]")
    loss_error = loss_args_error(args)
    req(loss_error is None, loss_error or "")
    req(args.split <= args.epoch, f"--split {args.split} is past --epoch {args.epoch}: the graph constraint "
        f"would never start (use --split <= --epoch; --split {args.epoch} disables it)")
    world = expected_world_size(args)
    req(args.train_batch * world >= 2,
        f"global batch = --train_batch {args.train_batch} x {world} process(es) = {args.train_batch * world} "
        "video: the contrastive losses need >= 2 videos per global batch (negatives)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags; a bad combination exits with one message (``parser.error``)."""
    args = cli.parse_checked(build_parser(), argv, check_args)
    if args.lr_decay >= args.epoch:
        cli.warn(PROG, f"--lr_decay {args.lr_decay} >= --epoch {args.epoch}: the learning rate will never decay")
    return args


# --------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace, info: runtime.DistInfo) -> dict | None:
    """Build everything, (resume,) train; returns the final metrics on rank 0, else None."""
    from datasets.pretrain import PretrainDataset
    from losses.objective import MultiLevelObjective
    from models import build_model

    # -- set-up: seeds, threads, precision, output folder
    device, main_proc = info.device, info.is_main
    runtime.seed_everything(args.seed, info.rank)
    if device.type == "cpu" and info.distributed and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # TF32 for the convolutions (cuDNN's default); the matmuls stay float32: under autocast
        # the model's are bf16 anyway, and the rest are the objective's similarities and Sinkhorn,
        # where a 10-bit mantissa divided by tau = 0.07 or eps = 0.05 is not docs/method.md §3's maths
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = resolve_amp(args.amp, device)
    out_dir, removed = Path(args.output_dir), []

    # -- data, model, objective, optimiser
    dataset = PretrainDataset(args.csv_file, seq=args.seq, sample=args.sample, img_dim=args.img_dim,
                              rate=args.rate, data_root=args.data_root, strict=args.strict,
                              color_strength=args.color_strength, grayscale_p=args.grayscale_p,
                              color_on_device=args.gpu_augment, exact_color=args.exact_color)
    loader = make_loader(dataset, args.train_batch, workers=args.workers, device=device, order="epoch",
                         seed=args.seed, batch_flag="--train_batch")
    videos = pretraining_record(dataset)  # in every checkpoint: what evaluations must not test on
    # channels_last_3d on every device: the oneDNN (CPU) and cuDNN convolutions are faster in it
    # (CPU, 2 threads: 1.09-1.21x per step at 16x112^2, 1.03-1.37x at the demo's sizes on three
    # CPUs; scripts/bench_step.py --compare, docs/performance.md).
    model = build_model(net=args.net, width=args.width, channel=args.channel, cluster=args.cluster)
    model = model.to(device, memory_format=torch.channels_last_3d)
    objective = MultiLevelObjective.from_args(args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.wd)
    scaler = make_scaler(amp_dtype, device)

    # -- resume
    first_epoch, step, progress = 0, 0, None
    resume_path = runtime.broadcast_object(cli.resume_path(args))  # rank 0 decides for all
    if resume_path is not None:
        ckpt = read_training_checkpoint(resume_path)
        check_matches(ckpt, resume_path, {**model.config, "sample": args.sample})
        if args.resume == "auto":  # a rerun into the folder: the same data (an explicit --resume may switch)
            check_same_files(ckpt, resume_path, {"csv_file": args.csv_file})
        first_epoch, step = restore_training_state(ckpt, resume_path, model=model, optimizer=optimizer,
                                                   scaler=scaler, restore_rng=main_proc)
        progress = epoch_progress(ckpt, resume_path, info.world_size, args.train_batch)
        for group in optimizer.param_groups:  # the current --wd wins; the schedule sets the lr
            group["weight_decay"] = args.wd
        if ckpt.get("objective"):
            objective.load_checkpoint_state(ckpt["objective"])
        del ckpt
    if main_proc:  # after the resume checks: a refused run leaves the folder's args.json as it was
        removed = remove_stale_temps(out_dir)
        prepare_output_dir(out_dir, args, fresh=resume_path is None)
    # TensorBoard: hide what an interrupted attempt logged after the checkpoint (its last step,
    # ``step``, holds the finished epoch's scalars and stays); a fresh start hides everything
    logger = RunLogger(out_dir, enabled=main_proc, purge_step=step + 1 if resume_path else 0)
    logger.truncate_log(first_epoch)  # epochs about to be (re)run
    for name in removed:
        logger.print(f"removed {name} (left by an interrupted checkpoint write)")
    inside = f", batch {progress['batches']} of the epoch" if progress else ""
    logger.print(f"resumed from {resume_path}: epoch {first_epoch}{inside}, step {step}" if resume_path else
                 f"starting fresh in {out_dir}" + (" (no checkpoint to resume)" if args.resume == "auto" else ""))

    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    # DDP first, then compile the wrapper: SyncBatchNorm is in place before tracing and DDP's
    # bucketed all-reduce can overlap the compiled backward (the order the PyTorch docs advise)
    net = runtime.wrap_ddp(model, info)
    net = torch.compile(net) if compiled else net
    logger.print(f"{args.net} x{args.width}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters | "
                 f"{len(dataset)} videos | {info.world_size} process(es) on {device.type} | global batch "
                 f"{args.train_batch * info.world_size} | {len(loader)} steps/epoch | amp {amp_dtype} | "
                 f"compile {compiled}" + (f" | colour augmentation on {device.type}" if args.gpu_augment else ""))

    # -- the loop
    guard = StepGuard(args.max_bad_steps, last_checkpoint=resume_path)
    if progress:
        guard.consecutive = int(progress.get("consecutive_bad", 0))
    control = RunControl(args.checkpoint_steps, args.checkpoint_minutes, is_main=main_proc)
    result, t_run = None, time.perf_counter()

    def save_inside_epoch(tally: EpochTally, at_step: int) -> None:
        """checkpoint_last.pth inside epoch ``epoch``: every rank's running sums, written by rank 0."""
        ranks = gather_from_ranks(tally.state())
        if main_proc:
            t_save = time.perf_counter()
            state = training_state(
                model=model, optimizer=optimizer, scaler=scaler, next_epoch=epoch, step=at_step,
                args=to_jsonable(args), objective=objective.checkpoint_state(), pretrain_videos=videos,
                epoch_progress={"batches": tally.batches, "world_size": info.world_size,
                                "batch_size": args.train_batch, "ranks": ranks,
                                "consecutive_bad": guard.consecutive})
            save_checkpoint(state, out_dir / LAST_NAME)
            logger.print(f"checkpoint inside epoch {epoch}: batch {tally.batches}, step {at_step}, written in "
                         f"{time.perf_counter() - t_save:.2f} s to {out_dir / LAST_NAME}")
        runtime.barrier()  # the other ranks stop (if they stop) only once the file is complete
        guard.last_checkpoint = str(out_dir / LAST_NAME)

    with control.catch_signals():
        for epoch in range(first_epoch, args.epoch):
            set_lr(optimizer, step_decay_lr(args.lr, epoch, args.lr_decay or ()))
            tally = EpochTally.from_state(progress["ranks"][info.rank], device) if progress else None
            start_epoch(loader, args.seed, info.rank, epoch, tally.batches if tally else 0)
            progress = None
            result = train_one_epoch(
                model=net, objective=objective, loader=loader, optimizer=optimizer, scaler=scaler,
                amp_dtype=amp_dtype, info=info, epoch=epoch, step=step, guard=guard, logger=logger,
                log_every=args.log_every, num_clips=args.sample + 1, color_on_device=args.gpu_augment,
                exact_color=args.exact_color, show_progress=not args.no_progress,
                tally=tally, control=control, checkpoint=save_inside_epoch,
            )
            step = result.step
            if main_proc:
                _end_epoch(args, result, logger, out_dir, model=model, optimizer=optimizer, scaler=scaler,
                           objective=objective, videos=videos)
            control.saved(step)
            guard.last_checkpoint = str(out_dir / LAST_NAME)

    # -- the end
    metrics = None
    if main_proc:
        metrics_path, history = out_dir / "metrics.json", logger.read_log()
        if result is None:
            logger.print(f"nothing to do: {resume_path} already holds {first_epoch} of --epoch {args.epoch} epochs")
        if result is None and metrics_path.exists():
            metrics = json.loads(metrics_path.read_text())
        elif result is not None or history:
            # a run killed after its last checkpoint and before metrics.json: rebuilt from log.jsonl
            # (written before the checkpoint), without this invocation's wall time
            metrics = final_metrics(
                result if result is not None else EpochResult.from_record(history[-1]), history,
                epochs_done=args.epoch, seconds=None if result is None else round(time.perf_counter() - t_run, 3),
                world_size=info.world_size, global_batch=args.train_batch * info.world_size, device=str(device),
                amp=str(amp_dtype), checkpoint=str(out_dir / numbered_name(args.epoch)), torch=torch.__version__)
            write_json(metrics_path, metrics)
            loss = "n/a (no finite step in the last epoch)" if metrics["loss"] is None else f"{metrics['loss']:.4f}"
            logger.print(f"{'done' if result is not None else 'wrote the missing metrics.json'}: "
                         f"{args.epoch} epochs, loss {loss}, outputs in {out_dir}")
    logger.close()
    return metrics


def _end_epoch(args: argparse.Namespace, result: EpochResult, logger: RunLogger, out_dir: Path, *,
               model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               objective: torch.nn.Module, videos: dict) -> None:
    """The epoch's ``log.jsonl`` line and TensorBoard scalars, then its checkpoints (rank 0).

    Log first: a kill before the checkpoint lands reruns the epoch (from its last checkpoint
    inside it), whose line is then replaced."""
    record = result.record()
    logger.log_epoch(record)
    logger.scalars("epoch", {k: v for k, v in record.items() if k not in ("epoch", "step")}, result.step)
    logger.flush()
    state = training_state(model=model, optimizer=optimizer, scaler=scaler, next_epoch=result.epoch + 1,
                           step=result.step, args=to_jsonable(args), objective=objective.checkpoint_state(),
                           pretrain_videos=videos)
    save_epoch_checkpoints(state, out_dir, args.epoch, args.save_every, keep=args.keep_checkpoints)


def main(argv: list[str] | None = None) -> dict | None:
    """Entry point; returns the final metrics dict (single process / rank 0) for in-process use."""
    return launch(PROG, run, parse_args(argv))


if __name__ == "__main__":
    main()
