"""The whole method end to end on a laptop: synthetic motion videos -> multi-level pretraining
-> random init vs pretrained (linear probe, kNN, retrieval, temporal-order probe) -> CAM images
-> ``report.md`` with a table whose every number is read from the runs' ``metrics.json``.

Each stage is the real entry script run as a subprocess with its real flags, so every command in
the report can be pasted into a shell. Stages whose ``metrics.json`` already exists are reused
(delete the folder, or pass ``--fresh``, to recompute).

    python scripts/demo.py --output_dir runs/demo
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.logging import write_json  # noqa: E402


@dataclass
class Setting:
    """The sizes of one demo scale (METHOD §4 scaled down)."""

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
    # the instance contrast is solved by appearance and learns no motion (measured; README).
    looks: int = 4
    queue_start: int = 1000  # the queue matters at K400 scale, not for a few hundred videos
    queue_size: int = 256
    # METHOD §1's per-frame colour jitter and grayscale at 32 px stop the instance contrast from
    # learning within the demo's budget (measured; README, demo section): weaker colour here.
    color_strength: float = 0.0
    grayscale_p: float = 0.0
    workers: int = 2
    num_clips: int = 4
    probe_epochs: int = 100
    # eval_linear.py's cached-probe default (SGD, lr 1.0) overshoots on a few hundred videos
    # (2 steps per epoch); 0.1 was better for random init and pretrained alike (README).
    probe_lr: float = 0.1
    order_epochs: int = 10


SETTINGS = {
    # About 10 minutes on 2 CPU cores, everything included.
    "cpu": Setting(net="r3d_18", width=0.25, seq=16, img_dim=32, channel=64, cluster=32, batch=16,
                   epochs=16, split=5, lr_decay=16, lr=3e-3, num_videos=480, frames=48, size=40),
    # A GPU takes seconds for the CPU setting; this one is wider and longer.
    "gpu": Setting(net="r3d_18", width=0.5, seq=16, img_dim=64, channel=128, cluster=64, batch=32,
                   epochs=60, split=20, lr_decay=45, lr=1e-3, num_videos=1200, frames=64, size=72,
                   workers=8),
}

# The ablations the paper argues for, each a set of train.py flags (METHOD §3 "Total").
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "no_temporal": ["--w_mot_low", "0", "--w_mot_mid", "0",
                    "--w_lg_low", "0", "--w_lg_mid", "0", "--w_lg_high", "0"],
    "no_graph": ["--w_graph", "0"],
    "instance_only": ["--w_mot_low", "0", "--w_mot_mid", "0", "--w_lg_low", "0",
                      "--w_lg_mid", "0", "--w_lg_high", "0", "--w_proto", "0", "--w_graph", "0"],
}


def run_stage(name: str, argv: list[str], out_dir: Path, fresh: bool, log: list[str]) -> dict:
    """Run one entry script unless its ``metrics.json`` exists; return that metrics dict."""
    metrics_path = out_dir / "metrics.json"
    command = [sys.executable, *argv]
    log.append(" ".join(shlex.quote(part) for part in [Path(sys.executable).name, *argv]))
    if fresh or not metrics_path.exists():
        print(f"\n=== {name}: {log[-1]}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        print(f"=== {name} took {time.perf_counter() - start:.0f} s", flush=True)
    else:
        print(f"=== {name}: reusing {metrics_path}", flush=True)
    return json.loads(metrics_path.read_text())


def pretrain_argv(setting: Setting, csv: str, out_dir: Path, variant_flags: list[str]) -> list[str]:
    s = setting
    return ["train.py", "--csv_file", csv, "--net", s.net, "--width", str(s.width),
            "--seq", str(s.seq), "--img_dim", str(s.img_dim), "--channel", str(s.channel),
            "--cluster", str(s.cluster), "--train_batch", str(s.batch), "--epoch", str(s.epochs),
            "--split", str(s.split), "--lr_decay", str(s.lr_decay), "--lr", str(s.lr),
            "--queue_start", str(s.queue_start), "--queue_size", str(s.queue_size),
            "--color_strength", str(s.color_strength), "--grayscale_p", str(s.grayscale_p),
            "--workers", str(s.workers), "--save_every", str(s.epochs),
            "--output_dir", str(out_dir), "--resume", "auto", *variant_flags]


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


def temporal_argv(setting: Setting, csvs: dict[str, str], out_dir: Path,
                  checkpoint: Path | None, num_vis: int) -> list[str]:
    s = setting
    return ["visualization/main_temporal.py", "--train_csv", csvs["train"], "--val_csv", csvs["val"],
            *backbone_flags(s, checkpoint), "--seq", str(s.seq), "--img_dim", str(s.img_dim),
            "--epochs", str(s.order_epochs), "--num_vis", str(num_vis), "--workers", str(s.workers),
            "--no_progress", "--output_dir", str(out_dir)]


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def results_table(rows: dict[str, dict]) -> str:
    """Markdown table of the headline figures, every cell read from a ``metrics.json``."""
    header = ("| init | linear top-1 | kNN top-1 | R@1 | R@5 | temporal order | final pretrain loss |\n"
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


def plot(rows: dict[str, dict], pretrain_dirs: dict[str, Path], path: Path) -> None:
    """Loss curves of every pretraining run and the linear-probe accuracies, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, folder in pretrain_dirs.items():
        records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
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
                        help="scale: cpu (about 10 min on 2 cores), gpu; auto = gpu when CUDA is there")
    parser.add_argument("--no_ablations", action="store_true",
                        help="only the full objective against random init")
    parser.add_argument("--fresh", action="store_true", help="recompute stages that already have metrics")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    import torch

    from datasets.synthetic import make_synthetic

    name = args.setting
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    setting = SETTINGS[name]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    commands: list[str] = []

    csvs = make_synthetic(args.data_dir, num_videos=setting.num_videos, frames=setting.frames,
                          size=setting.size, num_classes=setting.num_classes,
                          segment=setting.segment, looks=setting.looks, seed=0)
    variants = {"full": VARIANTS["full"]} if args.no_ablations else VARIANTS
    pretrain_dirs = {v: out / f"pretrain_{v}" for v in variants}
    rows: dict[str, dict] = {}
    rows["random"] = {"linear": run_stage("linear probe, random init",
                                          linear_argv(setting, csvs, out / "linear_random", None),
                                          out / "linear_random", args.fresh, commands)}
    for variant, flags in variants.items():
        pre = run_stage(f"pretrain ({variant})",
                        pretrain_argv(setting, csvs["pretrain"], pretrain_dirs[variant], flags),
                        pretrain_dirs[variant], args.fresh, commands)
        checkpoint = pretrain_dirs[variant] / "checkpoint_last.pth"
        linear = run_stage(f"linear probe ({variant})",
                           linear_argv(setting, csvs, out / f"linear_{variant}", checkpoint),
                           out / f"linear_{variant}", args.fresh, commands)
        rows[variant] = {"pretrain": pre, "linear": linear}
    for variant, checkpoint in (("random", None), ("full", pretrain_dirs["full"] / "checkpoint_last.pth")):
        rows[variant]["temporal"] = run_stage(
            f"temporal-order probe + CAM ({variant})",
            temporal_argv(setting, csvs, out / f"temporal_{variant}", checkpoint,
                          num_vis=2 if variant == "full" else 0),
            out / f"temporal_{variant}", args.fresh, commands)

    table = results_table(rows)
    plot(rows, pretrain_dirs, out / "curves.png")
    seconds = time.perf_counter() - start
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
