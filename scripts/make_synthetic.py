"""Generate the synthetic motion-class video data set used by the demo and the tests.

    python scripts/make_synthetic.py --out data/synthetic

Writes frame folders plus ``pretrain.csv`` (path,num_frames), ``train.csv`` and ``val.csv``
(path,num_frames,label) with paths relative to ``--out``; the class is the elevation of the
motion of textured objects, left or right at random (see ``datasets/synthetic.py``), so single
frames carry no class information and a horizontal flip keeps the class. Deterministic from ``--seed``; an existing set made with the same parameters is
reused (``synthetic.json``) unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets.synthetic import make_synthetic  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a small labelled synthetic video data set whose class is carried by "
                    "motion only (elevation of moving textured objects; appearance random per "
                    "video or from a shared pool; left/right random, so a horizontal flip keeps the class). Time reversal "
                    "maps class c to C-1-c (up <-> down).",
        epilog="example: python scripts/make_synthetic.py --out data/synthetic --num_videos 300",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_videos", type=int, default=300, help="videos (classes round-robin)")
    parser.add_argument("--frames", type=int, default=48,
                        help="frames per video (pretraining needs more than --sample x --seq)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--num_classes", type=int, default=4,
                        help="motion elevations (4: up, rise30, fall30, down)")
    parser.add_argument("--val_fraction", type=float, default=0.25,
                        help="fraction of each class in val.csv")
    parser.add_argument("--segment", type=int, default=0,
                        help="frames per appearance segment: background and object looks are "
                             "re-drawn this often while the motion continues; 0 = never")
    parser.add_argument("--looks", type=int, default=0,
                        help="pool of appearances shared by all videos, each video taking one at "
                             "random whatever its class (the demo uses 4); 0 = one per video")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if --out holds a set with the same parameters")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Generate (or reuse) the data set; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        csvs = make_synthetic(args.out, num_videos=args.num_videos, frames=args.frames,
                              size=args.size, num_classes=args.num_classes, seed=args.seed,
                              val_fraction=args.val_fraction, segment=args.segment,
                              looks=args.looks,
                              force=args.force)
    except ValueError as err:
        parser.error(str(err))
    print(f"synthetic data set in {os.path.abspath(args.out)} ({time.perf_counter() - start:.1f} s): "
          + ", ".join(f"{name}={path}" for name, path in csvs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
