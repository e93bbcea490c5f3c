"""Numerical checks printed by ``scripts/bench_loader.py``: that the pipelines it compares see
the same data (:func:`check_agreement`), and how far the fast colour kernel is from torchvision's
maths under the same docs/method.md §1 draws (:func:`colour_deviation`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision.transforms.functional as TF1
from PIL import Image
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets.pretrain as pretrain_module  # noqa: E402
from datasets.color import draw_color_params  # noqa: E402
from datasets.frames import frame_path, load_frames  # noqa: E402
from datasets.pretrain import PretrainDataset  # noqa: E402
from datasets.sampling import pretrain_indices  # noqa: E402
from datasets.transforms import PretrainAugment, color_augment, color_augment_batch  # noqa: E402
from scripts.bench_reference import ReferencePipeline, pil_color  # noqa: E402


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


def colour_deviation(clips: torch.Tensor, seed: int) -> dict[str, float]:
    """The default (fast) colour kernel against torchvision's maths (``exact=True``) on uint8 clips
    ``(C, T, 3, S, S)`` under the same docs/method.md §1 draws, per pixel in normalised units:

    * ``fast_mean`` / ``fast_p99`` / ``fast_max``: |fast − exact|;
    * ``jitter_mean`` / ``jitter_max``: |exact − grayscale only|, the jitter's own size;
    * ``pil_mean`` / ``pil_max``: |the reference code's PIL colour (:func:`pil_color`) − exact|,
      how far the reference itself was from torchvision's float maths.
    """
    torch.manual_seed(seed)
    lead = clips.shape[:2]
    params = {key: value.view(lead) for key, value in draw_color_params(lead.numel()).items()}
    exact = color_augment(clips, params, exact=True)
    fast = (color_augment(clips, params) - exact).abs().flatten()
    gray = {key: params[key] for key in ("gray", "gray_channel")}
    jitter = (exact - color_augment(clips, gray, exact=True)).abs()
    pil = torch.stack([pil_color(clip, {key: value[i] for key, value in params.items()})
                       for i, clip in enumerate(clips)])
    pil = (pil - exact).abs()
    return {"fast_mean": fast.mean().item(), "fast_max": fast.max().item(),
            "fast_p99": fast.kthvalue(int(0.99 * fast.numel())).values.item(),
            "jitter_mean": jitter.mean().item(), "jitter_max": jitter.max().item(),
            "pil_mean": pil.mean().item(), "pil_max": pil.max().item()}


def deviation_sources(dataset: PretrainDataset, args: argparse.Namespace
                      ) -> dict[str, torch.Tensor]:
    """uint8 clips ``(4, T, 3, S, S)`` (docs/method.md §1 boxes and flips) for :func:`colour_deviation`:
    from the first ``T`` frames of the benchmark's video 0, and from a real photo (matplotlib's
    ``grace_hopper.jpg``, every frame the same photo) when its sample data is installed."""
    torch.manual_seed(args.seed)
    aug = PretrainAugment(args.img_dim)
    frames = {"benchmark frames": load_frames(dataset.paths[0], list(range(args.seq)))}
    try:
        from matplotlib import cbook
        photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
        image = decode_jpeg(torch.frombuffer(bytearray(photo.read_bytes()), dtype=torch.uint8),
                            mode=ImageReadMode.RGB)
        frames["photo grace_hopper.jpg"] = image.unsqueeze(0).expand(args.seq, -1, -1, -1)
    except (ImportError, OSError, ValueError):
        pass
    return {name: torch.stack([aug.geometric(f.contiguous()) for _ in range(4)])
            for name, f in frames.items()}
