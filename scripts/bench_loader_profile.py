"""Per-stage cost of the pretraining loader and of the reference's, for
``scripts/bench_loader.py`` (which op dominates, and the gap to the decode-only target stage by
stage)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF1
import torchvision.transforms.v2.functional as TF
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.color import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from datasets.color_affine import color_matrices  # noqa: E402
from datasets.frames import frame_path, gather_frames, load_frames  # noqa: E402
from datasets.pretrain import PretrainDataset  # noqa: E402
from datasets.transforms import PretrainAugment, color_augment, random_resized_crop_box  # noqa: E402
from scripts.bench_common import interleaved, print_table, summarise  # noqa: E402
from scripts.bench_reference import REFERENCE_SIZE, ReferencePipeline, draw_window  # noqa: E402

TARGET_VS_DECODE = 0.60


def consume(outputs: Iterable[object]) -> None:
    """Run a stage over all its inputs, dropping each output at once (as the pipelines do,
    so that a stage does not hold all its outputs and page-fault for them)."""
    for _ in outputs:
        pass


def profile_stages(dataset: PretrainDataset, plans: list[tuple[int, int]],
                   args: argparse.Namespace, baseline: bool = True) -> None:
    """Per-stage ms/sample of ours and the baseline on the plans' frames (interleaved repeats).

    The colour stages of ours are cumulative: the fast kernel's first pass (float planes,
    brightness clamp, channel means), + :func:`color_matrices`, + the rest of ``color_augment``
    (offsets, product, clamp), printed as marginal costs, all per clip. Then what
    ``PretrainDataset`` runs: the sample's uint8 clips copied into one block and coloured in one
    call (no float stack), and beside it the torchvision-exact kernel.
    Then the gap to the decode-only target, stage by stage. ``baseline=False``: ours only."""
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

    def over_clips(fn: Callable[[torch.Tensor], object], data: list[torch.Tensor]
                   ) -> Callable[[], None]:
        return lambda: consume(fn(c) for c in data)

    def first_pass(clip: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fast kernel's first pass, as in ``color_augment``: float planes, the brightness
        clamp ``min(x, 255/b)``, the channel means."""
        x = torch.empty(clip.shape).copy_(clip).view(clip.shape[0], 3, -1)
        torch.minimum(x, (255.0 / params["brightness"]).view(-1, 1, 1), out=x)
        return x.mean(-1)

    def colour(fn: Callable[[torch.Tensor, dict[str, torch.Tensor]], object]
               ) -> Callable[[], None]:
        return lambda: consume(fn(c, d) for c, d in zip(small, draws))

    samples = [(torch.stack(small[i:i + n1]), draws[i:i + n1]) for i in range(0, len(small), n1)]

    def sample_in_one_call() -> None:
        for clips, ds in samples:
            out = torch.empty(clips.shape, dtype=torch.uint8)
            for dest, clip in zip(out, clips):
                dest.copy_(clip)
            color_augment(out, {k: torch.stack([d[k] for d in ds]) for k in ds[0]})

    ours = {
        "decode (read + decode_jpeg)": lambda: consume(load_frames(f, u) for f, u, _ in inputs),
        "crop box + gather the clip's crops": lambda: consume(crop_clip(f, r)
                                                              for f, r in clip_rows),
        "resize (uint8, channels last)": over_clips(
            lambda c: TF.resize(c, size, antialias=True), crops),
        "flip": over_clips(lambda c: c.flip(-1), small),
        "draw the colour factors": over_clips(lambda c: aug.draw_color(c.shape[0]), small),
        "colour: to float + brightness clamp + means": colour(first_pass),
        "colour: + the per-frame matrices": colour(
            lambda c, d: (first_pass(c, d), color_matrices(d, c.shape[0], c.device))),
        "colour: + offsets, product, clamp (= color_augment)": colour(color_augment),
        "the sample's uint8 clips, their colour in one call (PretrainDataset)": sample_in_one_call,
        "instead: torchvision-exact colour (exact=True)": colour(
            lambda c, d: color_augment(c, d, exact=True)),
    }
    base = profile_baseline(inputs, args) if baseline else {}
    times = interleaved({**{("ours", k): v for k, v in ours.items()},
                         **{("base", k): v for k, v in base.items()}},
                        repeats=max(3, args.repeats), warmup=1)
    per = {k: summarise(v)["median"] * 1e3 / len(plans) for k, v in times.items()}
    faults = {k: summarise(v)["faults_median"] / len(plans) for k, v in times.items()}
    cumulative = [name for name in ours if name.startswith("colour: ")]
    marginal = {("ours", cumulative[0]): per[("ours", cumulative[0])]}
    for prev, cur in zip(cumulative, cumulative[1:]):
        marginal[("ours", cur)] = per[("ours", cur)] - per[("ours", prev)]
    rows = []
    for (who, name), ms in per.items():
        key = (who, name)
        if who == "ours" and name in cumulative:
            ms = marginal[key]
            name = name + " (marginal)"
        rows.append((f"{who}: {name}", f"{ms:.2f}", f"{faults[key]:.0f}"))
    if baseline:
        hue = per[("base", "ColorJitter (all four)")] - per[("base", "ColorJitter without hue")]
        rows.append(("base: ColorJitter: hue part (difference)", f"{hue:.2f}", ""))
    print(f"\nper-stage cost, ms per sample ({n1} clips x {args.seq} frames, median of "
          f"{max(3, args.repeats)} interleaved passes; stages timed in isolation)")
    print_table(("stage", "ms/sample", "page faults/sample (whole call)"), rows)
    stage = {name: per[("ours", name)] for name in ours}
    geometry = sum(stage[name] for name in list(ours)[1:4])
    sample_colour = stage["the sample's uint8 clips, their colour in one call (PretrainDataset)"]
    colour_ms = sample_colour + stage["draw the colour factors"]
    decode = stage["decode (read + decode_jpeg)"]
    allowed = decode / TARGET_VS_DECODE
    print(f"gap to {TARGET_VS_DECODE:.0%} of decode-only, stage by stage (ms/sample): decode "
          f"{decode:.2f} + geometry (crop, resize, flip) {geometry:.2f} + colour (draws + one call per sample) "
          f"{colour_ms:.2f} = {decode + geometry + colour_ms:.2f}"
          f"; the target allows {allowed:.2f} (decode / {TARGET_VS_DECODE:.2f}), i.e. "
          f"{allowed - decode:.2f} after the decode: geometry alone takes "
          f"{geometry / (allowed - decode):.0%} of that, and writing the float clips (the kernel's "
          f"product + clamp) is memory-bound")


def profile_baseline(inputs: list[tuple[str, list[int], torch.Tensor]],
                     args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """The baseline's stages for :func:`profile_stages` on the same frames (``inputs``: folder,
    distinct frame indices and clip rows per sample)."""
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

    return {
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
