"""The whole method end to end on a laptop: synthetic motion videos -> multi-level pretraining
-> random init vs pretrained (linear probe, kNN, retrieval, temporal-order probe) -> CAM images
-> ``report.md`` with a table whose every number is read from the runs' ``metrics.json``.

Each stage is the real entry script run as a subprocess with its real flags, so every command in
the report can be pasted into a shell. A stage that finished with the same command is reused
(``--fresh`` recomputes all); one whose command changed is recomputed from an empty folder.

    python scripts/demo.py --output_dir runs/demo
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from utils.logging import write_json  # noqa: E402


@dataclass
class Setting:
    """The sizes of one demo scale (docs/method.md §4 scaled down)."""

    net: str
    width: float
    seq: int
    img_dim: int
    channel: int
    cluster: int
    batch: int
    epochs: int
    split: int
    lr_decay: int
    lr: float
    num_videos: int
    frames: int
    size: int
    num_classes: int = 4
    segment: int = 0  # frames per appearance segment of the synthetic videos (0 = one look)
    # Appearances shared by all videos (datasets/synthetic.py): with a look of its own per video
    # the instance contrast is solved by appearance and learns no motion (measured; docs/demo.md).
    looks: int = 4
    queue_start: int = 1000  # the queue matters at K400 scale, not for a few hundred videos
    queue_size: int = 256
    # docs/method.md §1's per-frame colour jitter and grayscale at 32 px stop the instance contrast from
    # learning within the demo's budget (measured; docs/demo.md): weaker colour here.
    color_strength: float = 0.0
    grayscale_p: float = 0.0
    # DataLoader workers of every stage. On 2 cores, 2 workers beside 2 compute threads slowed a
    # pretraining epoch from ~9 s to 14-16 s (measured; docs/demo.md); 1 keeps up (data wait ~3 %).
    workers: int = 2
    num_clips: int = 4
    probe_epochs: int = 100
    # eval_linear.py's cached-probe default (SGD, lr 1.0) overshoots on a few hundred videos
    # (2 steps per epoch); 0.1 was better for random init and pretrained alike (docs/demo.md).
    probe_lr: float = 0.1
    order_epochs: int = 10
    # The order head sees ~90 videos, i.e. 3 steps per epoch: at main_temporal.py's default Adam
    # lr 1e-3 its 30 steps barely move it (full objective: train 55.6 %, val 55.3 %); at 0.03 it
    # fits what the features hold (68.0 % full, 50.7 % random init; measured, docs/demo.md).
    order_lr: float = 0.03
    # The temporal-order probe runs on the videos of this one motion class. Reversing a video maps
    # class c to class C-1-c (datasets/synthetic.py), so over all classes a reversed clip looks like
    # a forward clip of another class and every backbone is at chance (measured; docs/demo.md). Within
    # one class the reversed clips move the other way, which the features must see.
    order_class: int = 0


SETTINGS = {
    # 5-8 minutes on 2 CPU cores, everything included (measured on two machines; docs/demo.md).
    "cpu": Setting(net="r3d_18", width=0.125, seq=16, img_dim=32, channel=64, cluster=32, batch=8,
                   epochs=12, split=6, lr_decay=12, lr=3e-3, num_videos=480, frames=48, size=40,
                   workers=1),
    # A GPU takes seconds for the CPU setting; this one is wider and longer.
    "gpu": Setting(net="r3d_18", width=0.5, seq=16, img_dim=64, channel=128, cluster=64, batch=32,
                   epochs=60, split=20, lr_decay=45, lr=1e-3, num_videos=1200, frames=64, size=72,
                   workers=8),
}

# The ablations the paper argues for, each a set of train.py flags (docs/method.md §3 "Total").
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_temporal": ["--w_mot_low", "0", "--w_mot_mid", "0",
                    "--w_lg_low", "0", "--w_lg_mid", "0", "--w_lg_high", "0"],
    "no_graph": ["--w_graph", "0"],
    "instance_only": ["--w_mot_low", "0", "--w_mot_mid", "0", "--w_lg_low", "0",
                      "--w_lg_mid", "0", "--w_lg_high", "0", "--w_proto", "0", "--w_graph", "0"],
}


# A variant that differs from another only in the graph term, which starts at the split epoch,
# is that run up to the split: it continues from the other run's checkpoint there instead of
# recomputing the same epochs (train.py --resume; the data of epoch e depends only on the seed).
CONTINUES_AT_SPLIT: dict[str, str] = {"no_graph": "full"}

STAGE_RECORD = "demo_stage.json"  # the command, input files and code a stage folder was made by
CODE_DIRS = ("datasets", "engine", "losses", "models", "utils", "visualization")  # + the top-level scripts


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_digest() -> str:
    """SHA-256 over the project's Python sources that a stage runs (the entry scripts and the
    packages of :data:`CODE_DIRS`), so a stage made by other code is not reused."""
    digest = hashlib.sha256()
    files = sorted(REPO.glob("*.py")) + sorted(p for d in CODE_DIRS for p in (REPO / d).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()


def run_stage(name: str, argv: list[str], out_dir: Path, fresh: bool, log: list[str],
              inputs: Sequence[Path] = ()) -> dict:
    """Run one entry script into ``out_dir`` and return its ``metrics.json``.

    ``inputs``: the files the stage reads besides its flags (the data set's record, the checkpoint
    it evaluates or continues from). A finished stage made by the same command from the same input
    bytes and the same code (:func:`code_digest`) is reused. One made by another command, from
    other inputs (the setting changed, a pretraining run was recomputed) or by other code, or any
    stage under ``fresh``, starts from an empty folder, so
    a pretraining run never resumes from another run's checkpoint and no probe reports on a stale
    one; an interrupted stage runs again in place (``train.py --resume auto`` continues it)."""
    metrics_path, record_path = out_dir / "metrics.json", out_dir / STAGE_RECORD
    log.append(" ".join(shlex.quote(part) for part in [Path(sys.executable).name, *argv]))
    record = {"argv": argv, "inputs": {str(path): file_digest(path) for path in inputs},
              "code": code_digest()}
    recorded = json.loads(record_path.read_text()) if record_path.exists() else None
    if not fresh and recorded == record and metrics_path.exists():
        print(f"=== {name}: reusing {metrics_path}", flush=True)
        return json.loads(metrics_path.read_text())
    if fresh or recorded != record:
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(record_path, record)
    print(f"\n=== {name}: {log[-1]}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    print(f"=== {name} took {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(metrics_path.read_text())


def as_flags(**values: object) -> list[str]:
    """``--name value`` for every keyword, in the order given (a command line of an entry script)."""
    return [part for name, value in values.items() for part in (f"--{name}", str(value))]


def split_checkpoint(setting: Setting, pretrain_dir: Path) -> Path:
    """The checkpoint a pretraining run writes after ``setting.split`` epochs."""
    return pretrain_dir / f"checkpoint_{setting.split:04d}.pth"


def pretrain_argv(setting: Setting, csv: str, out_dir: Path, variant_flags: list[str],
                  start: Path | None = None) -> list[str]:
    """``train.py`` flags of one pretraining run; ``start``: continue from that checkpoint (the
    split-epoch checkpoint of the run it shares its first epochs with) instead of epoch 0."""
    s = setting
    return ["train.py", *as_flags(
        csv_file=csv, net=s.net, width=s.width, seq=s.seq, img_dim=s.img_dim, channel=s.channel,
        cluster=s.cluster, train_batch=s.batch, epoch=s.epochs, split=s.split, lr_decay=s.lr_decay,
        lr=s.lr, queue_start=s.queue_start, queue_size=s.queue_size, color_strength=s.color_strength,
        grayscale_p=s.grayscale_p, workers=s.workers, save_every=s.split, output_dir=out_dir,
        resume="auto" if start is None else start), *variant_flags]


def pretrain_plan(setting: Setting, csv: str, pretrain_dirs: dict[str, Path],
                  variants: dict[str, list[str]]) -> dict[str, tuple[str, list[str], Path | None]]:
    """Stage label, ``train.py`` flags and starting checkpoint (``None``: epoch 0) of each
    variant's pretraining, in running order. A variant of :data:`CONTINUES_AT_SPLIT` whose parent
    runs too starts from the parent's split-epoch checkpoint (when the split falls inside the run)."""
    plan = {}
    for variant, flags in variants.items():
        parent = CONTINUES_AT_SPLIT.get(variant)
        shared = parent in variants and 0 < setting.split < setting.epochs
        start = split_checkpoint(setting, pretrain_dirs[parent]) if shared else None
        label = f"pretrain ({variant}" + (f", from {parent} at epoch {setting.split})" if shared else ")")
        plan[variant] = (label, pretrain_argv(setting, csv, pretrain_dirs[variant], flags, start), start)
    return plan


def backbone_flags(setting: Setting, checkpoint: Path | None) -> list[str]:
    if checkpoint is None:
        return ["--net", setting.net, "--width", str(setting.width)]
    return ["--pretrained", str(checkpoint)]


def linear_argv(setting: Setting, csvs: dict[str, str], out_dir: Path,
                checkpoint: Path | None) -> list[str]:
    s = setting
    return ["eval_linear.py", "--train_csv", csvs["train"], "--val_csv", csvs["val"],
            *backbone_flags(s, checkpoint), "--seq", str(s.seq), "--img_dim", str(s.img_dim),
            "--num_clips", str(s.num_clips), "--epochs", str(s.probe_epochs),
            "--lr", str(s.probe_lr), "--knn", "10",
            "--retrieval", "--workers", str(s.workers), "--no_progress", "--output_dir", str(out_dir)]


def one_class_csvs(csvs: dict[str, str], label: int, out_dir: Path) -> dict[str, str]:
    """The train and val CSVs of the synthetic set restricted to one class, written to ``out_dir``.

    Paths stay relative to the data set's folder (the probe gets it as ``--data_root``)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    subset = {}
    for split in ("train", "val"):
        table = pd.read_csv(csvs[split], header=None, names=["path", "num_frames", "label"])
        subset[split] = str(out_dir / f"{split}_class{label}.csv")
        table[table["label"] == label].to_csv(subset[split], header=False, index=False)
    return subset


def temporal_argv(setting: Setting, csvs: dict[str, str], data_root: str, out_dir: Path,
                  checkpoint: Path | None, num_vis: int) -> list[str]:
    s = setting
    return ["visualization/main_temporal.py", *as_flags(train_csv=csvs["train"], val_csv=csvs["val"],
                                                        data_root=data_root),
            *backbone_flags(s, checkpoint), *as_flags(seq=s.seq, img_dim=s.img_dim, epochs=s.order_epochs,
                                                      lr=s.order_lr, num_vis=num_vis, workers=s.workers),
            "--no_progress", "--output_dir", str(out_dir)]


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def results_table(rows: dict[str, dict], order_videos: str) -> str:
    """Markdown table of the headline figures, every cell read from a ``metrics.json``."""
    header = (f"| init | linear top-1 | kNN top-1 | R@1 | R@5 | temporal order ({order_videos}) "
              "| final pretrain loss |\n"
              "|---|---|---|---|---|---|---|\n")
    lines = []
    for name, row in rows.items():
        linear, order, pre = row["linear"], row.get("temporal"), row.get("pretrain")
        lines.append(
            f"| {name} | {percent(linear['top1'])} | {percent(linear.get('knn_top1'))} | "
            f"{percent(linear['retrieval']['R@1'])} | {percent(linear['retrieval']['R@5'])} | "
            f"{percent(order['temporal_order_acc'] if order else None)} | "
            f"{'–' if pre is None else format(pre['loss'], '.3f')} |")
    return header + "\n".join(lines) + "\n"


def epoch_records(pretrain_dirs: dict[str, Path], variant: str) -> list[dict]:
    """The per-epoch ``log.jsonl`` records of a run, with those of the run it continued from
    (:data:`CONTINUES_AT_SPLIT`) for the epochs it did not compute itself."""
    own = [json.loads(line) for line in (pretrain_dirs[variant] / "log.jsonl").read_text().splitlines()]
    parent = CONTINUES_AT_SPLIT.get(variant)
    if parent not in pretrain_dirs:
        return own
    first = min((r["epoch"] for r in own), default=0)
    return [r for r in epoch_records(pretrain_dirs, parent) if r["epoch"] < first] + own


def plot(rows: dict[str, dict], pretrain_dirs: dict[str, Path], path: Path) -> None:
    """Loss curves of every pretraining run and the linear-probe accuracies, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in pretrain_dirs:
        records = epoch_records(pretrain_dirs, name)
        left.plot([r["epoch"] for r in records], [r["loss"] for r in records], marker="o", label=name)
    left.set(xlabel="epoch", ylabel="total pretraining loss", title="pretraining")
    left.legend()
    names = list(rows)
    right.bar(names, [rows[n]["linear"]["top1"] for n in names], color="tab:blue", label="linear top-1")
    right.plot(names, [rows[n]["linear"]["knn_top1"] for n in names], "ko", label="kNN top-1")
    right.axhline(100 / rows[names[0]]["linear"]["num_classes"], color="gray", ls="--", label="chance")
    right.set(ylabel="% (synthetic val)", title="random init vs pretrained")
    right.tick_params(axis="x", rotation=20)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo", help="where every run and the report go")
    parser.add_argument("--data_dir", default="data/synthetic_demo",
                        help="synthetic data set (made once, reused while its parameters match)")
    parser.add_argument("--setting", choices=["auto", *SETTINGS], default="auto",
                        help="scale: cpu (about 8 min on 2 cores), gpu; auto = gpu when CUDA is there")
    parser.add_argument("--no_ablations", action="store_true",
                        help="only the full objective against random init")
    parser.add_argument("--fresh", action="store_true", help="recompute every stage from an empty folder")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    import torch

    from datasets.synthetic import class_names, make_synthetic

    name = args.setting
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    setting = SETTINGS[name]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    commands: list[str] = []

    csvs = make_synthetic(args.data_dir, num_videos=setting.num_videos, frames=setting.frames,
                          size=setting.size, num_classes=setting.num_classes,
                          segment=setting.segment, looks=setting.looks, seed=0)
    print(f"=== synthetic data set in {args.data_dir}: ready after {time.perf_counter() - started:.0f} s "
          "(made once, then reused)", flush=True)
    variants = {"full": VARIANTS["full"]} if args.no_ablations else VARIANTS
    pretrain_dirs = {v: out / f"pretrain_{v}" for v in variants}
    num_stages, done = 1 + 3 * len(variants) + 1, 0

    data_record = Path(csvs["train"]).parent / "synthetic.json"  # the data set's parameters

    def stage(name: str, argv: list[str], out_dir: Path, checkpoint: Path | None) -> dict:
        nonlocal done
        done += 1
        inputs = [data_record] + ([] if checkpoint is None else [checkpoint])
        return run_stage(f"[{done}/{num_stages}] {name}", argv, out_dir, args.fresh, commands, inputs)

    rows: dict[str, dict] = {}
    rows["random"] = {"linear": stage("linear probe, random init",
                                      linear_argv(setting, csvs, out / "linear_random", None),
                                      out / "linear_random", None)}
    plan = pretrain_plan(setting, csvs["pretrain"], pretrain_dirs, variants)
    for variant, (label, argv, resume_from) in plan.items():
        pre = stage(label, argv, pretrain_dirs[variant], resume_from)
        checkpoint = pretrain_dirs[variant] / "checkpoint_last.pth"
        linear = stage(f"linear probe ({variant})",
                       linear_argv(setting, csvs, out / f"linear_{variant}", checkpoint),
                       out / f"linear_{variant}", checkpoint)
        rows[variant] = {"pretrain": pre, "linear": linear}
    order_csvs = one_class_csvs(csvs, setting.order_class, out / "order_data")
    order_videos = f"`{class_names(setting.num_classes)[setting.order_class]}` videos"
    for variant in rows:
        checkpoint = None if variant == "random" else pretrain_dirs[variant] / "checkpoint_last.pth"
        rows[variant]["temporal"] = stage(
            f"temporal-order probe{' + CAM' if variant == 'full' else ''} ({variant})",
            temporal_argv(setting, order_csvs, os.path.dirname(csvs["train"]),
                          out / f"temporal_{variant}", checkpoint,
                          num_vis=2 if variant == "full" else 0),
            out / f"temporal_{variant}", checkpoint)

    table = results_table(rows, order_videos)
    plot(rows, pretrain_dirs, out / "curves.png")
    seconds = time.perf_counter() - started
    gain = rows["full"]["linear"]["top1"] - rows["random"]["linear"]["top1"]
    cams = sorted(str(p.relative_to(out)) for p in (out / "temporal_full").rglob("*.png"))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    report = (f"# Demo report\n\nSetting `{name}` ({setting.net} x{setting.width}, {setting.seq}x"
              f"{setting.img_dim}², {setting.epochs} pretraining epochs, {setting.num_videos} synthetic "
              f"videos, {setting.num_classes} motion classes) on {device}; {seconds / 60:.1f} min in all "
              f"(reused stages not counted).\n\n{table}\n"
              f"Linear-probe gain of the full objective over random init: **{gain:+.1f} points**.\n\n"
              f"![curves](curves.png)\n\n"
              + "".join(f"![cam]({c})\n" for c in cams[:2])
              + "\n## Commands\n\n```\n" + "\n".join(commands) + "\n```\n")
    (out / "report.md").write_text(report)
    summary = {"setting": name, "seconds": seconds, "device": device, "linear_gain_full_vs_random": gain,
               "rows": {k: {"linear_top1": v["linear"]["top1"], "knn_top1": v["linear"].get("knn_top1"),
                            "retrieval": v["linear"]["retrieval"],
                            "temporal_order_acc": v.get("temporal", {}).get("temporal_order_acc"),
                            "pretrain_loss": v.get("pretrain", {}).get("loss")}
                        for k, v in rows.items()}}
    write_json(out / "metrics.json", summary)
    print("\n" + table)
    print(f"linear-probe gain, full vs random: {gain:+.1f} points; {seconds / 60:.1f} min; "
          f"report: {out / 'report.md'}")
    return summary


if __name__ == "__main__":
    main()
