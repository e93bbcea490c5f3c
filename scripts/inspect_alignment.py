"""Where the local–global alignment puts its probability (docs/method.md §3.3), for a train.py checkpoint.

``L_lg`` matches the ``t`` pooled steps of the local clips to the ``t`` steps of the global clip.
Its value alone does not say what was learned: this script prints, per level, the mean over
videos of ``softmax_k(<local_m, global_k>/τ)`` (row ``m`` = local step, column ``k`` = global
step, in %) next to the loss and its chance value ``ln t``. A diagonal matrix means the
timestamps are resolved; mass split between ``k = m`` and ``k = m ± t/n`` means the position
inside a local clip is resolved but not which of the ``n`` clips it is (docs/demo.md
shows such a case).

    python scripts/inspect_alignment.py --checkpoint runs/demo/pretrain_full/checkpoint_last.pth \\
        --csv_file data/synthetic_demo/pretrain.csv

The clips are drawn and augmented as in training (the checkpoint's ``--seq --sample --img_dim
--rate --color_strength --grayscale_p``), the model runs in eval mode.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import PretrainDataset  # noqa: E402
from engine.loader import make_loader  # noqa: E402
from utils.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from losses.alignment import alignment_logits, alignment_loss  # noqa: E402
from models import MultiLevelModel  # noqa: E402
from models.output import LEVELS  # noqa: E402


def alignment_assignment(logits: torch.Tensor) -> torch.Tensor:
    """Mean over videos of the local→global softmax of :func:`alignment_logits` ``(b, t, t)``:
    ``(t, t)``, rows sum to 1."""
    return logits.softmax(dim=2).mean(dim=0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train.py checkpoint")
    p.add_argument("--csv_file", required=True, help="pretraining CSV (rows 'path,num_frames')")
    p.add_argument("--data_root", default=None, help="folder for relative CSV paths")
    p.add_argument("--videos", type=int, default=64, help="videos to average over (default 64)")
    p.add_argument("--batch", type=int, default=16, help="videos per forward pass (default 16)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clip draws (default 0)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as err:
        raise SystemExit(f"inspect_alignment.py: error: {err}") from None
    if "model_config" not in ckpt or "args" not in ckpt:
        raise SystemExit(f"{args.checkpoint}: not a train.py checkpoint (no model_config/args)")
    run = ckpt["args"]
    model = MultiLevelModel(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    device = torch.device(args.device)
    model.to(device).eval()
    dataset = PretrainDataset(args.csv_file, seq=run["seq"], sample=run["sample"],
                              img_dim=run["img_dim"], rate=run["rate"], data_root=args.data_root,
                              color_strength=run["color_strength"], grayscale_p=run["grayscale_p"])
    torch.manual_seed(args.seed)
    subset = torch.utils.data.Subset(dataset, range(min(args.videos, len(dataset))))
    sums = {lv: 0.0 for lv in LEVELS}
    losses = {lv: 0.0 for lv in LEVELS}
    count = 0
    with torch.no_grad():
        for clips, _ in make_loader(subset, args.batch, workers=args.workers, device=device):
            out = model(clips.to(device))
            b = clips.shape[0]
            for lv in LEVELS:
                logits = alignment_logits(out.fine_local[lv], out.fine_global[lv], run["tau"])
                sums[lv] = sums[lv] + b * alignment_assignment(logits).cpu()
                losses[lv] += b * alignment_loss(logits).item()
            count += b
    result: dict[str, Any] = {"videos": count}
    print(f"{args.checkpoint}: local-global alignment on {count} videos "
          f"(rows: local step m, columns: global step k, % of the softmax)")
    for lv in LEVELS:
        matrix = sums[lv] / count
        t = matrix.shape[0]
        loss = losses[lv] / count
        result[lv] = {"assignment": matrix.tolist(), "loss": loss, "chance": math.log(t),
                      "diagonal": matrix.diagonal().mean().item()}
        print(f"\n{lv}: t = {t}, L_lg = {loss:.3f} (chance ln {t} = {math.log(t):.3f}), "
              f"mean diagonal {100 * result[lv]['diagonal']:.0f} %")
        for row in matrix:
            print("  " + " ".join(f"{100 * v:3.0f}" for v in row.tolist()))
    return result


if __name__ == "__main__":
    main()
