"""Collect the ``metrics.json`` of finished evaluation runs into one markdown table, each figure
beside the paper's (docs/reproducing.md).

    python scripts/results_table.py runs/eval/ucf101_finetune runs/eval/hmdb51_finetune

One row per figure a run reports: the top-1 of a fine-tune (``finetune.py``) or a linear probe
(``eval_linear.py``), R@1 of retrieval (a linear-probe run with ``--retrieval`` gives both rows),
the kNN top-1 of a kNN-only run, the temporal-order accuracy (``visualization/main_temporal.py``).
Each row carries the run's test protocol from its ``metrics.json`` ``protocol`` entry: the task
(UCF101 / HMDB51, from the CSV names, else the number of classes), the split, clips x crops, and
the pretraining checkpoint with the data it was pretrained on. The paper column quotes docs/method.md §6
(R3D-18); "–" where the paper publishes no figure for this method.

Loud marks in the notes column: a figure at chance (``at_chance``), test videos seen in
pretraining (a run with ``--allow_overlap``), a pretraining that could not be checked, a test
split that overlaps the train split, videos skipped for unreadable frames, a random-init backbone.

A RUN_DIR without ``metrics.json``, or whose ``metrics.json`` has no ``protocol`` (a pretraining
run, or an evaluation written before the protocol was recorded), is an error naming it;
``--skip_missing`` leaves it out with a note under the table instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "scripts/results_table.py"
# docs/method.md §6, this method with R3D-18: (mode, task) -> the paper's figure
PAPER = {("finetune", "UCF101"): 79.1, ("finetune", "HMDB51"): 47.6,
         ("retrieval", "UCF101"): 41.5, ("retrieval", "HMDB51"): 20.7}
TASKS = {"ucf": "UCF101", "hmdb": "HMDB51"}
CLASSES = {101: "UCF101", 51: "HMDB51"}
COLUMNS = ("run", "task", "mode", "figure", "ours", "paper", "split", "test", "pretrained", "notes")


class TableError(ValueError):
    """A run that cannot be tabulated; the message names it."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="--output_dir of a finished eval_linear.py / finetune.py / main_temporal run")
    parser.add_argument("--skip_missing", action="store_true",
                        help="leave out a RUN_DIR without an evaluation metrics.json, with a note, instead "
                             "of stopping")
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="also write the table to FILE (markdown)")
    return parser


def read_run(run_dir: str) -> dict[str, Any]:
    """The ``metrics.json`` of ``run_dir``; a :class:`TableError` when it is missing, unreadable
    or not an evaluation's."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise TableError(f"{run_dir}: no metrics.json (not a finished run, or not a run folder)")
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TableError(f"{path}: unreadable ({err})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("protocol"), dict):
        raise TableError(f"{path}: no 'protocol' entry: not an evaluation run (train.py writes none), or one "
                         "written before evaluations recorded it; rerun the evaluation")
    return metrics


def task_of(metrics: dict[str, Any]) -> str:
    """UCF101 / HMDB51 from the test CSV's file name, else from ``num_classes``."""
    protocol = metrics["protocol"]
    names = " ".join(os.path.basename(protocol.get(k) or "") for k in ("train_csv", "val_csv")).lower()
    by_name = {TASKS[k] for k in TASKS if k in names}
    by_classes = CLASSES.get(metrics.get("num_classes"))
    if len(by_name) == 1:
        name = by_name.pop()
        if by_classes is not None and by_classes != name:
            return f"{name}? ({metrics['num_classes']} classes)"
        return name
    if by_classes is not None:
        return by_classes
    return f"{metrics['num_classes']} classes" if metrics.get("num_classes") else "?"


def figures(metrics: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """``(mode, figure name, value)`` of every figure a run reports."""
    mode = metrics["protocol"].get("mode")
    rows: list[tuple[str, str, float | None]] = []
    if mode in ("linear", "finetune"):
        rows.append((mode, "top-1", metrics.get("top1")))
    elif mode == "knn":
        rows.append((mode, "kNN top-1", metrics.get("knn_top1")))
    elif mode == "temporal_order":
        rows.append((mode, "order acc.", metrics.get("temporal_order_acc")))
    if isinstance(metrics.get("retrieval"), dict):
        rows.append(("retrieval", "R@1", metrics["retrieval"].get("R@1")))
    if not rows:
        rows.append((str(mode), "?", None))
    return rows


def pretrained_cell(protocol: dict[str, Any]) -> str:
    pre = protocol.get("pretrained") or {}
    if not pre.get("checkpoint"):
        return "**random init**"
    where = f"{os.path.basename(pre.get('run') or '')}/{os.path.basename(pre['checkpoint'])}"
    epochs = f", {pre['epoch']} epochs" if pre.get("epoch") is not None else ""
    if pre.get("batches_into_next_epoch"):
        epochs += f" + {pre['batches_into_next_epoch']} batches"
    data = f", on {os.path.basename(pre['train_csv'])}" if pre.get("train_csv") else ", data not recorded"
    return where + epochs + data


def notes(metrics: dict[str, Any], figure: str) -> list[str]:
    protocol, out = metrics["protocol"], []
    if metrics.get("at_chance") and figure != "R@1":
        out.append("**AT CHANCE: not a result**")
    overlap = protocol.get("pretrain_overlap") or {}
    if overlap.get("videos"):
        out.append(f"**{overlap['videos']} TEST VIDEOS SEEN IN PRETRAINING (--allow_overlap): not a result**")
    elif overlap.get("checked") is False:
        out.append("pretraining overlap not checked (checkpoint lists no videos)")
    if metrics.get("train_val_overlap"):
        out.append(f"**{metrics['train_val_overlap']} test videos also in the train split**")
    if metrics.get("skipped_videos"):
        out.append(f"{metrics['skipped_videos']} videos skipped (unreadable frames)")
    return out


def rows_of(run_dir: str, metrics: dict[str, Any]) -> list[dict[str, str]]:
    protocol, task = metrics["protocol"], task_of(metrics)
    test = f"{protocol.get('clips', '?')} clips × {protocol.get('crops', '?')} crop" \
           + ("s" if protocol.get("crops") != 1 else "")
    rows = []
    for mode, figure, value in figures(metrics):
        paper = PAPER.get((mode, task))
        rows.append({"run": run_dir, "task": task, "mode": mode, "figure": figure,
                     "ours": "n/a" if value is None else f"{value:.1f}",
                     "paper": "–" if paper is None else f"{paper:.1f}",
                     "split": str(protocol.get("split", "?")), "test": test,
                     "pretrained": pretrained_cell(protocol), "notes": "; ".join(notes(metrics, figure))})
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, str]], skipped: list[str]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    lines.append("")
    lines.append("paper: docs/method.md §6 (this method, R3D-18); – = no published figure for this setting.")
    lines += [f"skipped: {why}" for why in skipped]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    rows: list[dict[str, str]] = []
    skipped: list[str] = []
    for run_dir in args.run_dirs:
        try:
            rows += rows_of(run_dir, read_run(run_dir))
        except TableError as err:
            if not args.skip_missing:
                raise SystemExit(f"{PROG}: error: {err} (--skip_missing leaves such folders out)") from None
            skipped.append(str(err))
    table = render(rows, skipped)
    sys.stdout.write(table)
    if args.output:
        Path(args.output).write_text(table)
    return table


if __name__ == "__main__":
    main()
