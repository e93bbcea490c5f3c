"""Self-supervised multi-level pretraining (Qian et al., ICCV 2021; METHOD.md §1–§4).

    python train.py --csv_file kinetics.csv --output_dir runs/k400              # 1 GPU or CPU
    python train.py ... --multiprocessing-distributed                           # all GPUs here
    torchrun --nproc_per_node 4 train.py ... --output_dir runs/k400            # torchrun, 1+ nodes

One code path for all of them (nanoGPT style): parse flags -> build data, model, objective,
optimizer (-> resume) -> epoch loop. The plumbing lives in ``engine/``; see ``python train.py -h``
and the README section "Pretraining".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from datasets.csv_io import CsvError
from datasets.frames import FrameError
from engine import runtime
from engine.amp import AMP_CHOICES, make_scaler, resolve_amp
from engine.checkpoint import (
    LAST_NAME, CheckpointError, find_resume, numbered_name, remove_stale_temps, save_checkpoint,
)
from engine.logging import RunLogger, prepare_output_dir, to_jsonable, write_json
from engine.pretrain import (
    DataTooSmall, StepGuard, TrainingDiverged, build_loader, checkpoint_state, final_metrics,
    objective_state, resume, start_epoch, train_one_epoch,
)
from engine.schedule import set_lr, step_decay_lr
from losses.objective import add_loss_args, loss_args_error
from models import NETS

DESCRIPTION = __doc__.split("\n\n")[0]
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

outputs in --output_dir: args.json, log.jsonl (one line per epoch), tb/ (TensorBoard),
checkpoint_last.pth (every epoch), checkpoint_NNNN.pth (after NNNN epochs, every --save_every
epochs and at the end), metrics.json (at the end). Rerunning the same command continues the run
(--resume auto is the default)."""

# Exceptions a user can cause: reported as one line, no traceback.
USER_ERRORS = (CheckpointError, TrainingDiverged, DataTooSmall, CsvError, FrameError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("data (METHOD §1)")
    d.add_argument("--csv_file", type=str, default=None,
                   help="CSV of the training videos, rows 'path,num_frames' (required)")
    d.add_argument("--data_root", type=str, default=None,
                   help="folder that relative CSV paths are resolved against (default: the CSV's folder)")
    d.add_argument("--seq", type=int, default=16, help="number of frames in each clip, T (default 16)")
    d.add_argument("--sample", type=int, default=2,
                   help="number of local clips extracted from each video, n >= 2 (default 2)")
    d.add_argument("--img_dim", type=int, default=112, help="spatial size of the input clips (default 112)")
    d.add_argument("--rate", type=float, default=3.0, help="upper bound of the frame sampling rate (default 3.0)")
    d.add_argument("--color_strength", type=float, default=1.0,
                   help="multiplier of the per-frame colour-jitter strengths of METHOD §1 (1 = brightness/"
                        "contrast/saturation 0.5, hue 0.25; 0 = none). Lower it for tiny inputs: see the "
                        "README's demo section (default 1.0)")
    d.add_argument("--grayscale_p", type=float, default=0.5,
                   help="per-frame probability of the random grayscale of METHOD §1 (default 0.5)")
    d.add_argument("--gpu_augment", action="store_true",
                   help="colour jitter/grayscale/normalisation run batched on the training device; the loader only "
                        "decodes, crops, resizes, flips (and draws the colour factors: same random numbers as "
                        "without the flag); uint8 batches also cut host->device traffic 4x")
    d.add_argument("--workers", type=int, default=8, help="DataLoader workers per process (default 8)")
    d.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable video/frame instead of skipping and counting it")

    m = p.add_argument_group("model (METHOD §2)")
    m.add_argument("--net", type=str, default="r3d_18", help=f"backbone: {', '.join(NETS)} (default r3d_18)")
    m.add_argument("--width", type=float, default=1.0, help="channel-width multiplier of the backbone (default 1.0)")
    m.add_argument("--channel", type=int, default=128, help="output width of every head (default 128)")
    m.add_argument("--cluster", type=int, default=1000,
                   help="number of prototypes K for Sinkhorn clustering (default 1000)")

    o = p.add_argument_group("optimisation (METHOD §4)")
    o.add_argument("--train_batch", type=int, default=64, help="videos per batch per process (default 64)")
    o.add_argument("--epoch", type=int, default=100, help="total pretraining epochs (default 100)")
    o.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    o.add_argument("--wd", type=float, default=1e-5, help="Adam weight decay (default 1e-5)")
    o.add_argument("--lr_decay", type=int, default=70, help="epoch from which the lr is multiplied by 0.1 (default 70)")
    o.add_argument("--split", type=int, default=20,
                   help="first epoch of the graph constraint; --split equal to --epoch disables it (default 20)")
    o.add_argument("--thres", "-thres", type=float, default=0.05,
                   help="threshold on G_ins in the graph constraint (default 0.05; '-thres' also accepted)")
    o.add_argument("--seed", type=int, default=0, help="base random seed; rank r uses seed + r (default 0)")
    o.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                   help="mixed precision: auto = bf16 on CUDA, off on CPU (default auto)")
    o.add_argument("--compile", nargs="?", const="on", default="off", choices=("auto", "on", "off"),
                   help="torch.compile the model: on, off, or auto (= on with CUDA); '--compile' alone = on "
                        "(default off)")
    o.add_argument("--max_bad_steps", type=int, default=10,
                   help="stop after this many non-finite steps in a row (each is skipped); 0 = never stop (default 10)")
    add_loss_args(p)

    r = p.add_argument_group("processes and devices")
    r.add_argument("--device", choices=runtime.DEVICE_CHOICES, default="auto",
                   help="auto = CUDA when available, else CPU (default auto)")
    r.add_argument("--multiprocessing-distributed", dest="multiprocessing_distributed", action="store_true",
                   help="spawn one process per GPU of this node (or --nproc CPU processes without GPU); "
                        "ignored under torchrun, which starts the processes itself")
    r.add_argument("--nproc", type=int, default=None,
                   help="processes for --multiprocessing-distributed (default: the number of GPUs, or 1 without GPU)")
    r.add_argument("--dist_timeout", type=float, default=1800,
                   help="seconds a collective may wait for the other ranks before failing (default 1800)")

    out = p.add_argument_group("outputs and resuming")
    out.add_argument("--output_dir", type=str, default="runs/pretrain",
                     help="where every output goes (default runs/pretrain)")
    out.add_argument("--resume", type=str, default="auto",
                     help="auto: continue from checkpoint_last.pth in --output_dir if there is one (default); "
                          "PATH: that checkpoint; none: start fresh (refused if --output_dir holds checkpoints)")
    out.add_argument("--save_every", type=int, default=10,
                     help="keep checkpoint_NNNN.pth every this many epochs, 0 = only the final one (default 10)")
    out.add_argument("--log_every", type=int, default=50, help="TensorBoard scalars every this many steps (default 50)")
    return p


def expected_world_size(args: argparse.Namespace) -> int:
    """How many processes the run will have (for checks made before they exist)."""
    launched = runtime.launched_world_size()
    if launched is not None:
        return launched
    if args.multiprocessing_distributed:
        return runtime.num_spawn(args.device, args.nproc)
    return 1


def warn(msg: str) -> None:
    print(f"train.py: warning: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags; a bad combination exits with one message (``parser.error``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    e = parser.error
    if args.csv_file is None:
        e("--csv_file is required: a CSV of 'path,num_frames' rows (see -h)")
    if not os.path.isfile(args.csv_file):
        e(f"--csv_file {args.csv_file}: no such file")
    if args.data_root is not None and not os.path.isdir(args.data_root):
        e(f"--data_root {args.data_root}: no such folder")
    if args.sample < 2:
        e(f"--sample {args.sample}: need at least 2 local clips per video (the positives of a clip are the "
          "other clips of its video, METHOD §3.1)")
    for name in ("seq", "img_dim", "train_batch", "epoch", "cluster", "channel", "log_every"):
        if getattr(args, name) < 1:
            e(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("workers", "split", "lr_decay", "save_every", "max_bad_steps"):
        if getattr(args, name) < 0:
            e(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.seq < 2:
        e(f"--seq {args.seq}: a clip needs at least 2 frames (motion excitation and reversal, METHOD §2)")
    if args.color_strength < 0 or not 0 <= args.grayscale_p <= 1:
        e(f"--color_strength {args.color_strength} / --grayscale_p {args.grayscale_p}: need a strength >= 0 "
          "and a probability in [0, 1]")
    if args.rate < 1:
        e(f"--rate {args.rate}: the frame-rate factor is drawn from U(1, rate), so it must be >= 1")
    if not 0 <= args.thres <= 1:
        e(f"--thres {args.thres}: a threshold on softmax probabilities must be in [0, 1]")
    if args.lr <= 0 or args.wd < 0 or args.width <= 0 or args.dist_timeout <= 0:
        e("--lr, --width and --dist_timeout must be > 0 and --wd >= 0")
    loss_error = loss_args_error(args)
    if loss_error:
        e(loss_error)
    if args.split > args.epoch:
        e(f"--split {args.split} is past --epoch {args.epoch}: the graph constraint would never start "
          f"(use --split <= --epoch; --split {args.epoch} disables it)")
    if args.lr_decay >= args.epoch:
        warn(f"--lr_decay {args.lr_decay} >= --epoch {args.epoch}: the learning rate will never decay")
    if args.net not in NETS:
        e(f"--net {args.net}: unknown network; choose one of {', '.join(NETS)}")
    if args.nproc is not None and args.nproc < 1:
        e(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc and args.multiprocessing_distributed and args.device != "cpu" and torch.cuda.is_available() \
            and args.nproc > torch.cuda.device_count():
        e(f"--nproc {args.nproc} > {torch.cuda.device_count()} visible GPUs: one process per GPU "
          "(or --device cpu for CPU processes)")
    if args.device == "cuda" and not torch.cuda.is_available():
        e("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if args.amp == "fp16" and (args.device == "cpu" or not torch.cuda.is_available()):
        e("--amp fp16 needs a CUDA device; use --amp bf16 or --amp off on CPU")
    world = expected_world_size(args)
    if args.train_batch * world < 2:
        e(f"global batch = --train_batch {args.train_batch} x {world} process(es) = {args.train_batch * world} "
          "video: the contrastive losses need >= 2 videos per global batch (negatives)")
    if args.resume not in ("auto", "none") and not os.path.isfile(args.resume):
        e(f"--resume {args.resume}: no such checkpoint file (use auto, none or a checkpoint path)")
    if args.resume == "none" and find_resume(args.output_dir) is not None:
        e(f"--resume none but --output_dir {args.output_dir} already holds {find_resume(args.output_dir)}: "
          "use --resume auto to continue that run, or another --output_dir")
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
        # where a 10-bit mantissa divided by tau = 0.07 or eps = 0.05 is not METHOD §3's maths
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = resolve_amp(args.amp, device)
    out_dir, removed = Path(args.output_dir), []
    if main_proc:
        prepare_output_dir(out_dir, args)
        removed = remove_stale_temps(out_dir)

    # -- data, model, objective, optimiser
    dataset = PretrainDataset(args.csv_file, seq=args.seq, sample=args.sample, img_dim=args.img_dim,
                              rate=args.rate, data_root=args.data_root, strict=args.strict,
                              color_strength=args.color_strength, grayscale_p=args.grayscale_p,
                              color_on_device=args.gpu_augment)
    loader = build_loader(dataset, info, args.train_batch, args.workers, args.seed)
    # channels_last_3d on every device: the oneDNN (CPU) and cuDNN convolutions are faster in it
    # (CPU, 2 threads: 1.09-1.21x per step at 16x112^2, 1.03-1.37x at the demo's sizes on three
    # CPUs; scripts/bench_step.py --compare, README "Performance").
    model = build_model(net=args.net, width=args.width, channel=args.channel, cluster=args.cluster)
    model = model.to(device, memory_format=torch.channels_last_3d)
    objective = MultiLevelObjective.from_args(args).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=args.wd)
    scaler = make_scaler(amp_dtype, device)

    # -- resume
    first_epoch, step = 0, 0
    resume_path = find_resume(args.output_dir) if args.resume == "auto" else \
        None if args.resume == "none" else args.resume
    resume_path = runtime.broadcast_object(resume_path)  # rank 0 decides for all
    if resume_path is not None:
        first_epoch, step = resume(resume_path, model=model, objective=objective, optimizer=optimizer,
                                   scaler=scaler, sample=args.sample, weight_decay=args.wd, restore_rng=main_proc)
    # TensorBoard: hide what an interrupted attempt logged after the checkpoint (its last step,
    # ``step``, holds the finished epoch's scalars and stays); a fresh start hides everything
    logger = RunLogger(out_dir, enabled=main_proc, purge_step=step + 1 if resume_path else 0)
    logger.truncate_log(first_epoch)  # epochs about to be (re)run
    for name in removed:
        logger.print(f"removed {name} (left by an interrupted checkpoint write)")
    logger.print(f"resumed from {resume_path}: epoch {first_epoch}, step {step}" if resume_path else
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
    result, t_run = None, time.perf_counter()
    for epoch in range(first_epoch, args.epoch):
        set_lr(optimizer, step_decay_lr(args.lr, epoch, args.lr_decay))
        start_epoch(loader, args.seed, info.rank, epoch)
        result = train_one_epoch(
            model=net, objective=objective, loader=loader, optimizer=optimizer, scaler=scaler,
            amp_dtype=amp_dtype, info=info, epoch=epoch, step=step, guard=guard, logger=logger,
            log_every=args.log_every, num_clips=args.sample + 1, color_on_device=args.gpu_augment,
        )
        step = result.step
        if main_proc:  # log first: a kill before the checkpoint lands reruns the epoch, whose line is then replaced
            record = result.record()
            logger.log_epoch(record)
            logger.scalars("epoch", {k: v for k, v in record.items() if k not in ("epoch", "step")}, step)
            logger.flush()
            state = checkpoint_state(model=model, objective_snapshot=objective_state(objective), optimizer=optimizer,
                                     scaler=scaler, next_epoch=epoch + 1, step=step, args=to_jsonable(args))
            save_checkpoint(state, out_dir / LAST_NAME)
            if (args.save_every and (epoch + 1) % args.save_every == 0) or epoch + 1 == args.epoch:
                save_checkpoint(state, out_dir / numbered_name(epoch + 1))
        guard.last_checkpoint = str(out_dir / LAST_NAME)

    # -- the end
    metrics = None
    if main_proc and result is None:
        logger.print(f"nothing to do: {resume_path} already holds {first_epoch} of --epoch {args.epoch} epochs")
        metrics_path = out_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    elif main_proc:
        metrics = final_metrics(
            result, logger.read_log(), epochs_done=args.epoch, seconds=round(time.perf_counter() - t_run, 3),
            world_size=info.world_size, global_batch=args.train_batch * info.world_size, device=str(device),
            amp=str(amp_dtype), checkpoint=str(out_dir / numbered_name(args.epoch)), torch=torch.__version__)
        write_json(out_dir / "metrics.json", metrics)
        loss = "n/a (no finite step in the last epoch)" if metrics["loss"] is None else f"{metrics['loss']:.4f}"
        logger.print(f"done: {args.epoch} epochs, loss {loss}, outputs in {out_dir}")
    logger.close()
    return metrics


def main_worker(local_rank: int, args: argparse.Namespace) -> dict | None:
    """One process of the run (the env:// variables, not ``local_rank``, place it).

    A user-caused error ends the process with one line (no traceback). Under DDP, any failure
    prints its message tagged with the rank and leaves at once with ``os._exit(1)``: the other
    ranks' pending collectives then fail (peer gone) or time out after ``--dist_timeout``.
    """
    info = runtime.init_distributed(args.device, args.dist_timeout)
    tag = f"[rank {info.rank}/{info.world_size}] " if info.distributed else ""
    try:
        metrics = run(args, info)
    except Exception as err:
        if isinstance(err, USER_ERRORS):
            msg = f"{tag}train.py: error: {err}"
        elif is_worker_error(err):
            msg = f"{tag}train.py: error: {worker_error_message(err)}"
        elif is_comm_error(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            msg = (f"{tag}train.py: error: a collective failed ({type(err).__name__}: {first}). Another rank "
                   "probably failed first: look for its message. Restart with --resume auto to continue from "
                   f"{Path(args.output_dir) / LAST_NAME}.")
        elif not info.distributed:
            raise  # a bug: keep the traceback
        else:
            traceback.print_exc()
            msg = f"{tag}train.py: error: {type(err).__name__}: {err}"
        if info.distributed:
            print(msg, file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)
        raise SystemExit(msg) from None
    runtime.cleanup_distributed()
    return metrics


def is_comm_error(err: BaseException) -> bool:
    return isinstance(err, getattr(torch.distributed, "DistError", ())) or any(
        s in str(err) for s in ("gloo", "NCCL", "Connection closed", "Connection reset", "timed out"))


def is_worker_error(err: BaseException) -> bool:
    """A DataLoader worker re-raised an exception it could not rebuild (e.g. ``FrameError``)."""
    return isinstance(err, RuntimeError) and "in DataLoader worker process" in str(err)


def worker_error_message(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else str(err)


def main(argv: list[str] | None = None) -> dict | None:
    """Entry point; returns the final metrics dict (single process / rank 0) for in-process use."""
    args = parse_args(argv)
    if args.multiprocessing_distributed and runtime.launched_world_size() is None:
        nproc = runtime.num_spawn(args.device, args.nproc)
        if nproc > 1:
            try:
                runtime.spawn_workers(main_worker, nproc, args)
            except runtime.WorkerError as err:
                raise SystemExit(f"train.py: error: {err}") from None
            metrics_path = Path(args.output_dir) / "metrics.json"
            return json.loads(metrics_path.read_text()) if metrics_path.exists() else None
        warn("--multiprocessing-distributed with one device: running a single process "
             "(pass --nproc N for N CPU processes)")
    elif args.multiprocessing_distributed:
        warn("--multiprocessing-distributed ignored: the processes were started by a launcher (torchrun)")
    return main_worker(int(os.environ.get("LOCAL_RANK", 0)), args)


if __name__ == "__main__":
    main()
