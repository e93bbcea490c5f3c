"""Benchmark the pretraining data pipeline (METHOD §1) per DataLoader worker.

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
``--profile`` adds a per-stage breakdown of ours and the baseline (which op dominates). The table
also counts minor page faults per sample: multi-MB float clips that glibc hands back to the OS
and maps again (``--keep_heap`` stops it).

    python scripts/bench_loader.py                      # 16×112², synthetic 171×128 frames
    python scripts/bench_loader.py --csv data/ucf101/pretrain.csv --data_root data/ucf101
    python scripts/bench_loader.py --quick              # a few seconds (``make bench``)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF1
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets.pretrain as pretrain_module  # noqa: E402
from datasets.frames import frame_path, gather_frames, load_frames  # noqa: E402
from datasets.pretrain import PretrainDataset  # noqa: E402
from datasets.sampling import pretrain_indices, split_clips  # noqa: E402
from datasets.transforms import (  # noqa: E402
    IMAGENET_MEAN, IMAGENET_STD, PretrainAugment, color_augment, color_augment_batch,
    random_resized_crop_box,
)
from scripts.bench_common import (  # noqa: E402
    interleaved, keep_heap, machine_line, make_frame_set, mean_file_kb, print_table, summarise,
)

REFERENCE_SIZE = (200, 150)  # (width, height): the reference resized every frame to this
TARGET_VS_BASELINE = 3.0
TARGET_VS_DECODE = 0.60
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
                   help="per-stage breakdown of both pipelines (default: on, off with --quick)")
    p.add_argument("--keep_heap", action="store_true",
                   help="glibc: keep freed memory instead of returning it to the OS (no mmap, "
                        "no trim; see bench_common.keep_heap): shows the page-fault cost")
    p.add_argument("--quick", action="store_true",
                   help="unless given explicitly: 8 samples x 3 repeats, 4 synthetic videos of 48 "
                        "frames, no profile: a few seconds")
    p.add_argument("--seed", type=int, default=0)
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
def draw_window(num_frames: int, seq: int, sample: int, rate: float
                ) -> tuple[list[int], torch.Tensor]:
    """The sample's distinct frame indices and, per clip, positions into them ``(n+1, T)``;
    drawn from the global torch RNG exactly as ``PretrainDataset`` draws them (METHOD §1)."""
    clips = split_clips(pretrain_indices(num_frames, seq, sample, rate), seq, sample)
    unique, inverse = torch.unique(clips, return_inverse=True)
    return unique.tolist(), inverse


class ReferencePipeline:
    """The reference implementation's per-frame PIL pipeline (see the module docstring)."""

    def __init__(self, img_dim: int, scale: tuple[float, float] = (0.5, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), colour: bool = True) -> None:
        self.img_dim = img_dim
        self.scale, self.ratio = scale, ratio
        self.colour = colour
        self.jitter = T.ColorJitter(0.5, 0.5, 0.5, 0.25)
        self.gray = T.RandomGrayscale(p=0.5)
        self.normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    @staticmethod
    def load(folder: str, indices: list[int], resize: bool = True) -> list[Image.Image]:
        """Decode the frames (PIL) and resize each to 200×150 as the reference did."""
        images = []
        for i in indices:
            with Image.open(frame_path(folder, i)) as image:
                rgb = image.convert("RGB")
            images.append(rgb.resize(REFERENCE_SIZE, Image.BILINEAR) if resize else rgb)
        return images

    def clip(self, images: list[Image.Image], flip: bool | None = None) -> torch.Tensor:
        """One clip: PIL frames → float ``(3, T, img_dim, img_dim)``."""
        top, left, h, w = T.RandomResizedCrop.get_params(images[0], self.scale, self.ratio)
        if flip is None:
            flip = bool(torch.rand(()) < 0.5)
        frames = []
        for image in images:
            image = TF1.resized_crop(image, top, left, h, w, [self.img_dim, self.img_dim])
            if flip:
                image = TF1.hflip(image)
            if self.colour:
                image = self.jitter(self.gray(image))
            frames.append(self.normalize(TF1.to_tensor(image)))
        return torch.stack(frames, 1)

    def sample(self, folder: str, num_frames: int, seq: int, sample: int, rate: float
               ) -> torch.Tensor:
        """``(n+1, 3, T, S, S)`` like ``PretrainDataset``; every distinct frame decoded once."""
        unique, inverse = draw_window(num_frames, seq, sample, rate)
        images = self.load(folder, unique)
        return torch.stack([self.clip([images[i] for i in row]) for row in inverse.tolist()])


def decode_only(folder: str, num_frames: int, seq: int, sample: int, rate: float
                ) -> list[torch.Tensor]:
    """Read and ``decode_jpeg`` the sample's distinct frames (the same ones), nothing else."""
    unique, _ = draw_window(num_frames, seq, sample, rate)
    encoded = []
    for i in unique:
        with open(frame_path(folder, i), "rb") as handle:
            encoded.append(torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8))
    return decode_jpeg(encoded, mode=ImageReadMode.RGB)


# ------------------------------------------------------------------------------ agreement
def check_agreement(dataset: PretrainDataset, device_dataset: PretrainDataset,
                    args: argparse.Namespace) -> dict[str, float]:
    """Numerical sanity of the comparison on video 0:

    * ``window_match``: 1.0 if ``PretrainDataset`` drew the same window as the references;
    * ``device_path_max_diff``: max |ours − (colour-on-device loader + ``color_augment_batch``,
      here on CPU)| under the same seed: the two modes draw the same numbers, so ~1e-6;
    * ``decode_max_diff``: max |PIL decode − decode_jpeg| in grey levels (same libjpeg maths);
    * ``identity_mean_diff``: mean |ours − baseline| (normalised units) of one clip with the
      full-frame box, no flip and no colour ops: the pipelines differ only by resampling (the
      baseline goes through 200×150 first);
    * ``mean_ours`` / ``mean_base``, ``std_ours`` / ``std_base``: statistics of full random samples.
    """
    folder, num_frames = dataset.paths[0], dataset.num_frames[0]
    seen: list[torch.Tensor] = []
    original = pretrain_module.pretrain_indices

    def recording(*a, **k):  # noqa: ANN002, ANN003 - passthrough
        out = original(*a, **k)
        seen.append(out.clone())
        return out

    torch.manual_seed(args.seed)
    pretrain_module.pretrain_indices = recording
    try:
        ours = dataset[0]
    finally:
        pretrain_module.pretrain_indices = original
    torch.manual_seed(args.seed)
    on_device = color_augment_batch(default_collate([device_dataset[0]]), torch.device("cpu"))[0]
    torch.manual_seed(args.seed)
    window = pretrain_indices(num_frames, args.seq, args.sample, args.rate)
    match = float(len(seen) == 1 and torch.equal(seen[0], window))
    torch.manual_seed(args.seed)
    base = ReferencePipeline(args.img_dim).sample(folder, num_frames, args.seq, args.sample,
                                                  args.rate)

    indices = list(range(args.seq))
    ours_u8 = load_frames(folder, indices)
    pil = torch.stack([TF1.pil_to_tensor(Image.open(frame_path(folder, i)).convert("RGB"))
                       for i in indices])
    decode_diff = (ours_u8.int() - pil.int()).abs().max().item()
    h, w = ours_u8.shape[-2:]
    full = PretrainAugment(args.img_dim, scale=(1.0, 1.0), ratio=(w / h, w / h), brightness=0,
                           contrast=0, saturation=0, hue=0, grayscale_p=0, flip_p=0)(ours_u8)
    ref = ReferencePipeline(args.img_dim, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), colour=False)
    ref_clip = ref.clip(ref.load(folder, indices), flip=False)
    return {"window_match": match, "decode_max_diff": float(decode_diff),
            "device_path_max_diff": (ours - on_device).abs().max().item(),
            "identity_mean_diff": (full - ref_clip).abs().mean().item(),
            "mean_ours": ours.mean().item(), "mean_base": base.mean().item(),
            "std_ours": ours.std().item(), "std_base": base.std().item(),
            "shape_match": float(ours.shape == base.shape)}


# ------------------------------------------------------------------------------ profile
def profile_stages(dataset: PretrainDataset, plans: list[tuple[int, int]],
                   args: argparse.Namespace) -> None:
    """Per-stage ms/sample of ours and the baseline on the plans' frames (interleaved repeats).

    The colour stages of ours are cumulative calls of ``color_augment`` with more and more of
    each clip's drawn factors (printed as marginal costs)."""
    n1 = args.sample + 1
    aug = PretrainAugment(args.img_dim)
    inputs = []
    for video, seed in plans:
        torch.manual_seed(seed)
        unique, inverse = draw_window(dataset.num_frames[video], args.seq, args.sample, args.rate)
        inputs.append((dataset.paths[video], unique, inverse))
    decoded = [load_frames(folder, unique) for folder, unique, _ in inputs]
    height, width = decoded[0].shape[-2:]
    size = [args.img_dim] * 2

    def crop_clip(frames: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        """As ``PretrainAugment.geometric``: the clip's box, then only the crop is gathered."""
        t, l, h, w = random_resized_crop_box(height, width, aug.scale, aug.ratio)
        return gather_frames(frames[..., t:t + h, l:l + w], row)

    clip_rows = [(frames, row) for frames, (_, _, inverse) in zip(decoded, inputs)
                 for row in inverse]
    crops = [crop_clip(frames, row) for frames, row in clip_rows]
    small = [TF.resize(c, size, antialias=True) for c in crops]
    draws = [aug.draw_color(args.seq) for _ in small]

    def consume(outputs: Iterable[object]) -> None:
        """Run a stage over all its inputs, dropping each output at once (as the pipelines do,
        so that a stage does not hold all its outputs and page-fault for them)."""
        for _ in outputs:
            pass

    def over_clips(fn: Callable[[torch.Tensor], object], data: list[torch.Tensor]
                   ) -> Callable[[], None]:
        return lambda: consume(fn(c) for c in data)

    def colour(*keys: str) -> Callable[[], None]:
        return lambda: consume(color_augment(c, {k: d[k] for k in keys})
                               for c, d in zip(small, draws))

    jitter = ("brightness", "contrast", "saturation", "hue")
    ours = {
        "decode (read + decode_jpeg)": lambda: consume(load_frames(f, u) for f, u, _ in inputs),
        "crop box + gather the clip's crops": lambda: consume(crop_clip(f, r)
                                                              for f, r in clip_rows),
        "resize (uint8, channels last)": over_clips(
            lambda c: TF.resize(c, size, antialias=True), crops),
        "flip": over_clips(lambda c: c.flip(-1), small),
        "draw the colour factors": over_clips(lambda c: aug.draw_color(c.shape[0]), small),
        "colour: to float + normalize": colour(),
        "colour: + brightness": colour(*jitter[:1]),
        "colour: + contrast": colour(*jitter[:2]),
        "colour: + saturation": colour(*jitter[:3]),
        "colour: + hue": colour(*jitter),
        "colour: + channel grayscale": colour(*jitter, "gray", "gray_channel"),
    }
    ref = ReferencePipeline(args.img_dim)
    decoded_pil = [ref.load(folder, unique, resize=False) for folder, unique, _ in inputs]
    pil_frames = [[im.resize(REFERENCE_SIZE, Image.BILINEAR) for im in fr] for fr in decoded_pil]
    pil_clips = [[[frames[i] for i in row] for row in inverse.tolist()]
                 for frames, (_, _, inverse) in zip(pil_frames, inputs)]
    box = T.RandomResizedCrop.get_params(pil_frames[0][0], (0.5, 1.0), (3 / 4, 4 / 3))
    cropped = [[[TF1.resized_crop(im, *box, [args.img_dim] * 2) for im in c] for c in cs]
               for cs in pil_clips]
    jit = T.ColorJitter(0.5, 0.5, 0.5, 0.25)
    jit_no_hue = T.ColorJitter(0.5, 0.5, 0.5, 0)

    def per_image(fn: Callable[[Image.Image], object], data: list) -> Callable[[], None]:
        return lambda: consume(fn(im) for cs in data for c in cs for im in c)

    def decode_pil() -> None:
        for folder, unique, _ in inputs:
            for i in unique:
                with Image.open(frame_path(folder, i)) as image:
                    image.convert("RGB")

    base = {
        "PIL open + decode": decode_pil,
        "resize to 200x150": lambda: consume(im.resize(REFERENCE_SIZE, Image.BILINEAR)
                                             for fr in decoded_pil for im in fr),
        "per-frame resized_crop": per_image(
            lambda im: TF1.resized_crop(im, *box, [args.img_dim] * 2), pil_clips),
        "per-frame hflip": per_image(TF1.hflip, cropped),
        "ColorJitter without hue": per_image(jit_no_hue, cropped),
        "ColorJitter (all four)": per_image(jit, cropped),
        "RandomGrayscale": per_image(T.RandomGrayscale(0.5), cropped),
        "ToTensor + Normalize + stack": lambda: consume(
            torch.stack([TF1.normalize(TF1.to_tensor(im), IMAGENET_MEAN, IMAGENET_STD)
                         for im in c], 1) for cs in cropped for c in cs),
    }
    times = interleaved({**{("ours", k): v for k, v in ours.items()},
                         **{("base", k): v for k, v in base.items()}},
                        repeats=max(3, args.repeats), warmup=1)
    per = {k: summarise(v)["median"] * 1e3 / len(plans) for k, v in times.items()}
    faults = {k: summarise(v)["faults_median"] / len(plans) for k, v in times.items()}
    cumulative = [name for name in ours if name.startswith("colour: ")]
    marginal = {("ours", cumulative[0]): per[("ours", cumulative[0])]}
    for prev, cur in zip(cumulative, cumulative[1:]):
        marginal[("ours", cur)] = per[("ours", cur)] - per[("ours", prev)]
    marginal[("base", "ColorJitter: hue part")] = (per[("base", "ColorJitter (all four)")]
                                                   - per[("base", "ColorJitter without hue")])
    rows = []
    for (who, name), ms in per.items():
        key = (who, name)
        if who == "ours" and name in cumulative:
            ms = marginal[key]
            name = name + " (marginal)"
        rows.append((f"{who}: {name}", f"{ms:.2f}", f"{faults[key]:.0f}"))
    rows.append(("base: ColorJitter: hue part (difference)",
                 f"{marginal[('base', 'ColorJitter: hue part')]:.2f}", ""))
    print(f"\nper-stage cost, ms per sample ({n1} clips x {args.seq} frames, median of "
          f"{max(3, args.repeats)} interleaved passes; stages timed in isolation)")
    print_table(("stage", "ms/sample", "page faults/sample (whole call)"), rows)


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_heap and not keep_heap():
        print("--keep_heap: not glibc, ignored")
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        csv, data_root = args.csv, args.data_root
        if csv is None:
            csv = make_frame_set(tmp, num_videos=args.num_videos, frames=args.frames,
                                 height=args.height, width=args.width, seed=args.seed)
            data_root = None
        return run(args, csv, data_root)


def time_color_step(device_dataset: PretrainDataset, plans: list[tuple[int, int]],
                    args: argparse.Namespace) -> tuple[float, str]:
    """ms per sample of the colour step ``--gpu_augment`` moves into the training process:
    ``color_augment_batch`` on one collated batch of the plans' samples, on CUDA when available
    (pinned uint8 batch, host→device copy included), else on this CPU. Returns (ms, where)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    samples = []
    for video, seed in plans:
        torch.manual_seed(seed)
        samples.append(device_dataset[video])
    clips, params = default_collate(samples)
    if device.type == "cuda":
        clips, params = clips.pin_memory(), {k: v.pin_memory() for k, v in params.items()}
        where = f"GPU {torch.cuda.get_device_name(device)}"
    else:
        where = f"CPU, {torch.get_num_threads()} thread(s), no GPU here"
    times = interleaved({"colour": lambda: color_augment_batch((clips, params), device)},
                        repeats=args.repeats, warmup=1, device=device)
    return summarise(times["colour"])["median"] * 1e3 / len(plans), where


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
    step_ms, where = time_color_step(device_dataset, plans, args)
    print(f"the colour step that {ON_DEVICE!r} leaves to the training process "
          f"(color_augment_batch, one batch of {args.samples} samples) on {where}: "
          f"{step_ms:.2f} ms/sample (in the loader it costs "
          f"{1e3 / rate['ours'] - 1e3 / rate[ON_DEVICE]:.1f} ms/sample of a worker)")
    if args.profile:
        profile_stages(dataset, plans, args)
    return {"ours_sps": rate["ours"], "baseline_sps": rate["baseline"],
            "ours_faults_per_sample": stats["ours"]["faults_median"] / args.samples,
            "decode_sps": rate["decode-only"],
            "ratio_vs_baseline": rate["ours"] / rate["baseline"],
            "fraction_of_decode": rate["ours"] / rate["decode-only"],
            "device_color_sps": rate[ON_DEVICE],
            "device_color_ratio_vs_baseline": rate[ON_DEVICE] / rate["baseline"],
            "device_color_fraction_of_decode": rate[ON_DEVICE] / rate["decode-only"],
            "color_step_ms_per_sample": step_ms, **agree}


if __name__ == "__main__":
    main()
