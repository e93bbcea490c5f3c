"""What an evaluation measured, on which data, from which pretraining: the ``protocol`` entry of
every evaluation ``metrics.json`` (``eval_linear.py``, ``finetune.py``,
``visualization/main_temporal.py``), and the guard that refuses to test on videos the backbone was
pretrained on (docs/evaluation.md, "The protocol record and the leakage guard").

``train.py`` stores the videos it pretrains on in every checkpoint (:func:`pretraining_record`,
under :data:`PRETRAIN_VIDEOS`), as :func:`datasets.base.video_key` names, so the check needs
neither the pretraining CSV nor the data root the run used.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from datasets.base import VIDEO_KEY, FrameFolderDataset, video_key
from datasets.csv_io import read_video_csv
from engine.launch import UsageError
from models import BackboneLoadError
from utils.checkpoint import CheckpointError, load_checkpoint

PRETRAIN_VIDEOS = "pretrain_videos"  # the checkpoint entry: {"key": VIDEO_KEY, "videos": sorted keys}
MODES = ("linear", "finetune", "retrieval", "knn", "temporal_order")


def pretraining_record(dataset: FrameFolderDataset) -> dict[str, Any]:
    """The checkpoint entry naming every video ``dataset`` (the pretraining set, short videos
    already left out) holds: ``{"key": VIDEO_KEY, "videos": sorted video keys}``."""
    return {"key": VIDEO_KEY, "videos": sorted({video_key(path) for path in dataset.paths})}


def _abs(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def read_pretraining(path: str | None) -> tuple[dict[str, Any], list[str] | None]:
    """The protocol's ``pretrained`` entry for the ``--pretrained`` checkpoint ``path``
    (``checkpoint``, ``epoch`` = complete epochs it holds, ``batches_into_next_epoch`` = the
    batches of the next one for a checkpoint written inside an epoch (else 0), ``train_csv`` = its
    pretraining CSV, ``run`` = its folder; all None without a checkpoint: random init), and the
    video keys it was pretrained
    on (None when it does not list them: a plain state dict, a ``finetune.py`` checkpoint, an older
    file)."""
    if path is None:
        return {"checkpoint": None, "epoch": None, "batches_into_next_epoch": None, "train_csv": None,
                "run": None}, None
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except CheckpointError as err:  # worded as the backbone loader words it (models.loading)
        raise BackboneLoadError(f"{path}: not a readable weights-only checkpoint ({err})") from err
    args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    epoch = ckpt.get("epoch")
    progress = ckpt.get("epoch_progress") if isinstance(ckpt.get("epoch_progress"), dict) else {}
    described = {"checkpoint": _abs(path), "epoch": epoch if isinstance(epoch, int) else None,
                 "batches_into_next_epoch": int(progress.get("batches", 0)),
                 "train_csv": args.get("csv_file"), "run": os.path.dirname(_abs(path))}
    record = ckpt.get(PRETRAIN_VIDEOS)
    if isinstance(record, dict) and record.get("key") == VIDEO_KEY and isinstance(record.get("videos"), list):
        return described, [str(v) for v in record["videos"]]
    return described, None


def check_pretraining_overlap(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Compare the videos of ``--val_csv`` with those the ``--pretrained`` checkpoint was
    pretrained on. Any shared video raises a :class:`~engine.launch.UsageError` (one line: how
    many, one of them, the two CSVs, the way out) unless ``--allow_overlap``; a checkpoint that
    does not list its videos cannot be checked: a WARNING (``say``), and the run goes on.

    Returns the protocol entries ``pretrained``, ``allow_overlap``, ``pretrain_overlap``
    (``checked``, ``videos`` = shared videos or None, ``example``) and ``warnings``."""
    pretrained, seen = read_pretraining(args.pretrained)
    overlap: dict[str, Any] = {"checked": True, "videos": 0, "example": None}
    warnings: list[str] = []
    result = {"pretrained": pretrained, "allow_overlap": bool(args.allow_overlap),
              "pretrain_overlap": overlap, "warnings": warnings}
    if args.pretrained is None:  # random init: nothing was seen
        return result
    if seen is None:
        overlap.update(checked=False, videos=None)
        warnings.append(f"WARNING: cannot check that the videos of --val_csv {args.val_csv} were not seen in "
                        f"pretraining: {args.pretrained} does not list its pretraining videos (a plain state "
                        "dict, a finetune.py checkpoint, or one written before train.py recorded them); make "
                        "sure its pretraining data and the test split are disjoint")
        say(warnings[-1])
        return result
    seen_keys = set(seen)
    test = read_video_csv(args.val_csv, labelled=False, data_root=args.data_root)["path"].tolist()
    shared = [key for key in map(video_key, test) if key in seen_keys]
    overlap.update(videos=len(shared), example=shared[0] if shared else None)
    if not shared:
        return result
    source = pretrained["train_csv"] or "a CSV it does not name"
    where = (f"{len(shared)} of the {len(test)} videos of --val_csv {args.val_csv} were seen in pretraining "
             f"(e.g. {shared[0]}; {args.pretrained} was pretrained on {source})")
    if not args.allow_overlap:
        raise UsageError(f"{where}: the test figures would not be a result. Test on videos it was not "
                         "pretrained on (UCF101: the test list of the split whose train list it was "
                         "pretrained on), or pass --allow_overlap to run anyway (recorded in metrics.json)")
    warnings.append(f"WARNING: {where}; --allow_overlap: the test figures are not a result")
    say(warnings[-1])
    return result


def split_name(train_csv: str, val_csv: str) -> str:
    """``"train_split1.csv -> test_split1.csv"``: the split as the CSV file names say it."""
    return f"{os.path.basename(train_csv)} -> {os.path.basename(val_csv)}"


def protocol_record(args: argparse.Namespace, mode: str, num_train: int, num_test: int,
                    guard: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s ``protocol``: ``mode`` (one of :data:`MODES`), the split (its name and
    both CSVs), the videos in each, clips and crops per test video, and the pretraining entries of
    :func:`check_pretraining_overlap` (``guard``)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {MODES}")
    return {"mode": mode, "split": split_name(args.train_csv, args.val_csv),
            "train_csv": _abs(args.train_csv), "val_csv": _abs(args.val_csv),
            "num_train": int(num_train), "num_test": int(num_test), "clips": int(args.num_clips),
            "crops": 10 if getattr(args, "ten_crop", False) else 1, **guard}
