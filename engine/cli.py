"""What every entry script shares on the command line: the flag groups, one help formatter and
one validation style (the launcher and the list of user errors: :mod:`engine.launch`).

Each entry script builds its parser from these groups, adds its own flags to them, and keeps
only its wiring. Two spellings work everywhere: ``--epoch`` / ``--epochs`` and ``--train_batch``
/ ``--batch_size`` (``train.py`` keeps the reference's ``--epoch`` and ``--train_batch`` as the
names it stores and shows first; the evaluation scripts keep ``--epochs`` and ``--batch_size``).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from models import NETS, pretraining_args
from utils import runtime
from utils.amp import AMP_CHOICES
from utils.checkpoint import find_resume


CLIP_DEFAULTS = {"seq": 16, "img_dim": 112}  # docs/method.md §1's clip: 16 frames of 112²
# a kill or a preemption without warning loses at most this much work (docs/pretraining.md "Long runs")
DEFAULT_CHECKPOINT_MINUTES = 15.0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends a flag's default once, unless its help
    already states one or there is none (None, False, a required flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.required or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """Reads ``@file`` argument files (``recipes/``) as shell-like lines: blank lines and
    ``#`` comments are dropped, and a line ``--flag value`` gives two words (quotes group)."""

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        try:
            return shlex.split(arg_line, comments=True)
        except ValueError as err:  # an unclosed quote: one parser error, not a traceback
            self.error(f"argument file line {arg_line.strip()!r}: {err}")


def new_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An :class:`ArgumentParser` with the shared formatter; ``@file`` reads flags from a file
    (a flag given after it wins: argparse keeps the last value)."""
    return ArgumentParser(prog=prog, description=description, epilog=epilog,
                          formatter_class=HelpFormatter, fromfile_prefix_chars="@")


# ----------------------------------------------------------------------------- flag groups
def add_data_args(parser: argparse.ArgumentParser, title: str,
                  csvs: Mapping[str, str], required: bool = True) -> argparse._ArgumentGroup:
    """The data group: the script's CSV flags (``flag -> help``), ``--data_root``,
    ``--workers``, ``--strict`` (docs/method.md §1). Returns the group for the script's own flags."""
    group = parser.add_argument_group(title)
    for flag, text in csvs.items():
        group.add_argument(flag, required=required, default=None, help=text)
    group.add_argument("--data_root", default=None,
                       help="folder that relative CSV paths are resolved against (default: each CSV's folder)")
    group.add_argument("--workers", type=int, default=8, help="DataLoader worker processes per process")
    group.add_argument("--strict", action="store_true",
                       help="stop at the first unreadable video or frame instead of replacing the video "
                            "by another and counting it (use it for final test numbers)")
    return group


def add_clip_args(parser: argparse.ArgumentParser, title: str, test_clips: int | None = None,
                  ten_crop: bool = False) -> argparse._ArgumentGroup:
    """``--seq`` and ``--img_dim`` (docs/method.md §1); with ``test_clips`` (the evaluation scripts),
    also the downstream sampling of docs/method.md §5: ``--ds``, ``--num_clips`` (that default) and, with
    ``ten_crop``, ``--ten_crop``; there ``--seq`` / ``--img_dim`` default to the ``--pretrained``
    checkpoint's pretraining values (:func:`fill_clip_size`)."""
    group = parser.add_argument_group(title)
    if test_clips is None:
        group.add_argument("--seq", type=int, default=CLIP_DEFAULTS["seq"], help="frames per clip, T")
        group.add_argument("--img_dim", type=int, default=CLIP_DEFAULTS["img_dim"],
                           help="side of the square input crop, in pixels")
    else:
        group.add_argument("--seq", type=int, default=None,
                           help=f"frames per clip, T (default: the --pretrained checkpoint's pretraining "
                                f"--seq, else {CLIP_DEFAULTS['seq']})")
        group.add_argument("--img_dim", type=int, default=None,
                           help=f"side of the square input crop, in pixels (default: the --pretrained "
                                f"checkpoint's pretraining --img_dim, else {CLIP_DEFAULTS['img_dim']})")
    if test_clips is not None:
        group.add_argument("--ds", type=int, default=1, help="temporal stride between the frames of a clip")
        group.add_argument("--num_clips", type=int, default=test_clips,
                           help="test: clips spread over each video; their scores (or features) are "
                                "averaged per video")
    if ten_crop:
        group.add_argument("--ten_crop", action="store_true",
                           help="test: 10 crops (4 corners + centre, and their flips) per clip instead "
                                "of the centre crop")
    return group


def fill_clip_size(args: argparse.Namespace) -> None:
    """Fill ``--seq`` / ``--img_dim`` left unset: from the ``--pretrained`` checkpoint's
    pretraining flags (:func:`~models.loading.pretraining_args`), so a probe runs at the clip size
    the backbone was trained for (docs/method.md §5), else :data:`CLIP_DEFAULTS`. Where each value came
    from goes to ``args.clip_size_from`` (``flag``, ``checkpoint`` or ``default``; in
    ``args.json``) and :func:`clip_size_line` says it in the log. Part of the scripts' checks
(:func:`check_downstream`), so a bad value is a parser error."""
    names = tuple(CLIP_DEFAULTS)
    missing = [name for name in names if getattr(args, name) is None]
    try:
        saved = pretraining_args(args.pretrained) if missing and args.pretrained else {}
    except (OSError, RuntimeError):  # unreadable: building the backbone reports it, in the run
        saved = {}
    args.clip_size_from = {}
    for name in names:
        if getattr(args, name) is not None:
            args.clip_size_from[name] = "flag"
        elif isinstance(saved.get(name), int):
            setattr(args, name, saved[name])
            args.clip_size_from[name] = "checkpoint"
        else:
            setattr(args, name, CLIP_DEFAULTS[name])
            args.clip_size_from[name] = "default"
    check_at_least(args, 1, *names)
    check_img_dim(args)


def clip_size_line(args: argparse.Namespace) -> str:
    """One log line: the clip size and where each of its two numbers came from."""
    where = {"flag": "given", "checkpoint": "from the checkpoint's pretraining flags",
             "default": "default"}
    parts = [f"--{name} {getattr(args, name)} ({where[args.clip_size_from[name]]})"
             for name in CLIP_DEFAULTS]
    return "=> clips: " + ", ".join(parts)


def add_backbone_args(parser: argparse.ArgumentParser, pretrained: bool) -> argparse._ArgumentGroup:
    """``--net`` and ``--width`` (docs/method.md §2); with ``pretrained`` (the evaluation scripts) also
    ``--pretrained``, and ``--net`` / ``--width`` only for a backbone without a model_config."""
    group = parser.add_argument_group("backbone (docs/method.md §2)")
    if not pretrained:
        group.add_argument("--net", default="r3d_18", help=f"backbone: {', '.join(NETS)}")
        group.add_argument("--width", type=float, default=1.0, help="channel-width multiplier of the backbone")
        return group
    group.add_argument("--pretrained", default=None, metavar="CKPT",
                       help="train.py checkpoint (or plain backbone state dict) whose backbone is "
                            "evaluated; net and width come from its model_config. Without it the "
                            "backbone is RANDOMLY INITIALISED: the baseline every result is compared with")
    group.add_argument("--net", default=None,
                       help=f"backbone ({', '.join(NETS)}) when there is no --pretrained (then r3d_18), "
                            "or to read a plain state dict without model_config")
    group.add_argument("--width", type=float, default=None,
                       help="channel-width multiplier with --net (1.0 when not given)")
    group.add_argument("--allow_overlap", action="store_true",
                       help="run even when --val_csv lists videos the --pretrained checkpoint was "
                            "pretrained on (refused otherwise; recorded in metrics.json's protocol: "
                            "such figures are not a result)")
    return group


def add_epochs_arg(group: argparse._ArgumentGroup, reference_name: bool, default: int, text: str) -> None:
    """``--epoch`` and ``--epochs``, one flag: stored as ``epoch`` when ``reference_name``
    (``train.py``, the reference's spelling), else as ``epochs``."""
    names = ("--epoch", "--epochs") if reference_name else ("--epochs", "--epoch")
    group.add_argument(*names, dest=names[0][2:], type=int, default=default, help=text)


def add_batch_arg(group: argparse._ArgumentGroup, reference_name: bool, default: int, text: str) -> None:
    """``--train_batch`` and ``--batch_size``, one flag: stored as ``train_batch`` when
    ``reference_name`` (``train.py``), else as ``batch_size``."""
    names = ("--train_batch", "--batch_size") if reference_name else ("--batch_size", "--train_batch")
    group.add_argument(*names, dest=names[0][2:], type=int, default=default, help=text)


def add_runtime_args(parser: argparse.ArgumentParser, distributed: bool) -> argparse._ArgumentGroup:
    """Devices and precision: ``--device``, ``--amp``, ``--seed``; with ``distributed`` also
    ``--multiprocessing-distributed``, ``--nproc``, ``--dist_timeout``."""
    group = parser.add_argument_group("devices and precision")
    group.add_argument("--device", default="auto", choices=runtime.DEVICE_CHOICES,
                       help="auto = the GPU when one is visible, else the CPU")
    group.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                       help="mixed precision: auto = bf16 on CUDA, off on CPU")
    group.add_argument("--seed", type=int, default=0,
                       help="one seed; per-rank, per-epoch and per-worker seeds derive from it")
    if distributed:
        group.add_argument("--multiprocessing-distributed", dest="multiprocessing_distributed",
                           action="store_true",
                           help="spawn one process per GPU of this node (or --nproc CPU processes without "
                                "GPU); ignored under torchrun, which starts the processes itself")
        group.add_argument("--nproc", type=int, default=None,
                           help="processes for --multiprocessing-distributed (default: the number of GPUs, "
                                "or 1 without GPU)")
        group.add_argument("--dist_timeout", type=float, default=1800,
                           help="seconds a collective may wait for the other ranks before failing")
    return group


def add_output_args(parser: argparse.ArgumentParser, holds: str, default_dir: str | None = None,
                    resume: bool = False) -> argparse._ArgumentGroup:
    """``--output_dir`` (``holds``: what goes there), ``--no_progress``; with ``resume`` also
    ``--resume`` and ``--save_every``."""
    group = parser.add_argument_group("outputs and resuming" if resume else "outputs")
    group.add_argument("--output_dir", required=default_dir is None, default=default_dir,
                       help=f"where {holds} go")
    if resume:
        group.add_argument("--resume", default="auto",
                           help="auto: continue from checkpoint_last.pth in --output_dir if there is one; "
                                "PATH: that checkpoint; none: start fresh (refused if --output_dir holds "
                                "checkpoints)")
        group.add_argument("--save_every", type=int, default=10,
                           help="keep checkpoint_NNNN.pth every this many epochs and at the end; 0 = only "
                                "at the end")
        group.add_argument("--keep_checkpoints", type=int, default=0, metavar="K",
                           help="keep only the K newest checkpoint_NNNN.pth (older ones are deleted once a "
                                "newer one is written); 0 = keep all")
        group.add_argument("--checkpoint_minutes", type=float, default=DEFAULT_CHECKPOINT_MINUTES, metavar="M",
                           help="also write checkpoint_last.pth inside an epoch once M minutes passed since "
                                "the last checkpoint (a kill then loses at most M minutes; resuming continues "
                                "with the next batch); 0 = off")
        group.add_argument("--checkpoint_steps", type=int, default=0, metavar="N",
                           help="also write checkpoint_last.pth inside an epoch every N optimiser steps; 0 = off")
    group.add_argument("--no_progress", action="store_true", help="no progress bars")
    return group


def add_downstream_args(parser: argparse.ArgumentParser, holds: str, distributed: bool,
                        resume: bool) -> None:
    """The flags ``eval_linear.py`` and ``finetune.py`` share: labelled train/test CSVs and
    ``--num_classes``, the backbone with ``--pretrained``, the clips and test protocol of
    docs/method.md §5 (10 clips, centre or ten crops), the batch, devices and outputs."""
    data = add_data_args(parser, "data (labelled CSVs: path,num_frames,label)", {
        "--train_csv": "train split CSV (e.g. UCF101 / HMDB51 split 1 train list)",
        "--val_csv": "test split CSV: reported accuracy; retrieval queries"})
    data.add_argument("--num_classes", type=int, default=None,
                      help="number of classes (default: largest label in --train_csv + 1; "
                           "101 for UCF101, 51 for HMDB51)")
    add_backbone_args(parser, pretrained=True)
    clips = add_clip_args(parser, "clips and test protocol (docs/method.md §5)", test_clips=10, ten_crop=True)
    add_batch_arg(clips, False, 32,
                  "videos per DataLoader batch when training through the backbone and when extracting "
                  "features; test batches hold max(1, batch_size // clips-per-video) videos so a forward "
                  "pass sees about batch_size clips")
    add_runtime_args(parser, distributed=distributed)
    out = add_output_args(parser, holds, resume=resume)
    out.add_argument("--eval_freq", type=int, default=10,
                     help="evaluate on --val_csv every this many epochs while training (monitoring only; "
                          "metrics.json reports the last epoch); 0 = only at the end")


def check_downstream(args: argparse.Namespace) -> None:
    """The checks of :func:`add_downstream_args` beyond :func:`check_common`."""
    fill_clip_size(args)
    check_at_least(args, 0, "eval_freq")
    require(args.num_classes is None or args.num_classes >= 2,
            f"--num_classes must be >= 2, got {args.num_classes}")


# ------------------------------------------------------------------------------ validation
def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` (the scripts' one validation style:
    :func:`parse_checked` turns it into a one-line parser error)."""
    if not condition:
        raise ValueError(message)


def check_at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    """Every flag in ``names`` that the script has is ``>= minimum``."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            require(value >= minimum, f"--{name} must be >= {minimum}, got {value}")


MIN_IMG_DIM = 16  # R3D-18 and S3D reduce a frame 16x in space by their mid level


def check_img_dim(args: argparse.Namespace) -> None:
    """``--img_dim`` (when set) leaves the high level at least one position in space."""
    value = getattr(args, "img_dim", None)
    require(value is None or value >= MIN_IMG_DIM,
            f"--img_dim {value}: the backbone downsamples a frame 16x in space by its mid level "
            f"(docs/method.md §2), so smaller crops leave the levels nothing to tell apart; use "
            f"--img_dim >= {MIN_IMG_DIM}")


def check_common(args: argparse.Namespace) -> None:
    """The checks of the shared groups (``ValueError`` with one message): files and folders
    exist, sizes are positive, the backbone is known, the device and precision are possible,
    ``--resume`` names a checkpoint or a usable folder."""
    check_at_least(args, 1, "seq", "ds", "num_clips", "batch_size", "train_batch")
    check_img_dim(args)
    check_at_least(args, 0, "workers")
    lr, wd = getattr(args, "lr", None), getattr(args, "wd", None)
    require(lr is None or (math.isfinite(lr) and lr > 0), f"--lr must be a finite number > 0, got {lr}")
    require(wd is None or (math.isfinite(wd) and wd >= 0), f"--wd must be a finite number >= 0, got {wd}")
    for flag in ("csv_file", "train_csv", "val_csv", "pretrained"):
        path = getattr(args, flag, None)
        require(path is None or os.path.isfile(path), f"--{flag} {path}: no such file")
    require(args.data_root is None or os.path.isdir(args.data_root),
            f"--data_root {args.data_root}: no such folder")
    require(args.net is None or args.net in NETS,
            f"--net {args.net}: unknown network; choose one of {', '.join(NETS)}")
    require(args.width is None or args.width > 0, f"--width must be > 0, got {args.width}")
    if hasattr(args, "pretrained"):
        require(not (args.net is None and args.width is not None),
                "--width needs --net (with --pretrained alone, the checkpoint's model_config sets both)")
    cuda = args.device != "cpu" and torch.cuda.is_available()
    require(not (args.device == "cuda" and not torch.cuda.is_available()),
            "--device cuda: no CUDA device is visible; use --device cpu or auto")
    require(not (args.amp == "fp16" and not cuda), "--amp fp16 needs a CUDA device; use --amp bf16 or --amp off on CPU")
    if hasattr(args, "nproc"):
        require(args.nproc is None or args.nproc >= 1, f"--nproc must be >= 1, got {args.nproc}")
        require(not (args.nproc and args.multiprocessing_distributed and cuda
                     and args.nproc > torch.cuda.device_count()),
                f"--nproc {args.nproc} > {torch.cuda.device_count()} visible GPUs: one process per GPU "
                "(or --device cpu for CPU processes)")
        require(args.dist_timeout > 0, f"--dist_timeout must be > 0, got {args.dist_timeout}")
    if hasattr(args, "resume"):
        check_at_least(args, 0, "save_every", "keep_checkpoints", "checkpoint_steps")
        minutes = args.checkpoint_minutes
        require(math.isfinite(minutes) and minutes >= 0,
                f"--checkpoint_minutes must be a finite number >= 0, got {minutes}")
        require(args.resume in ("auto", "none") or os.path.isfile(args.resume),
                f"--resume {args.resume}: no such checkpoint file (use auto, none or a checkpoint path)")
        found = find_resume(args.output_dir) if args.resume == "none" else None
        require(found is None, f"--resume none but --output_dir {args.output_dir} already holds {found}: use "
                "--resume auto to continue that run, or another --output_dir")


def parse_checked(parser: argparse.ArgumentParser, argv: Any,
                  check: Callable[[argparse.Namespace], None]) -> argparse.Namespace:
    """Parse ``argv``, run :func:`check_common` then the script's ``check``; a ``ValueError``
    from either ends the program with one parser error (exit status 2)."""
    args = parser.parse_args(argv)
    try:
        check_common(args)
        check(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def resume_path(args: argparse.Namespace) -> str | None:
    """The checkpoint ``--resume`` points at: ``auto`` = the newest in ``--output_dir`` (or
    None), ``none`` = None, else the path."""
    if args.resume == "none":
        return None
    return find_resume(args.output_dir) if args.resume == "auto" else args.resume


def warn(prog: str, message: str) -> None:
    print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)
