"""Linear probe of a frozen pretrained backbone, with kNN and retrieval (METHOD §5, CoCLR's protocol).

The backbone of a train.py checkpoint (--pretrained; net and width from its model_config) is frozen
and kept in eval mode (BatchNorm statistics frozen); only the head trains:
time/space-pooled high feature -> L2 normalisation (--normalize) -> BatchNorm1d (--final_bn) ->
linear classifier. The optimiser is checked to hold only the head's parameters, and after the run
the backbone's state_dict is compared bit for bit with a snapshot taken before (the run fails if
anything moved) — the probe hygiene of MoCo's main_lincls.py.

Training the head:
  --cache_features (default): features are extracted once and the head is trained on the cached
    tensors (CoCLR eval/feature_linear_probe.py; fast). Train-split features are, by default
    (--aug_epochs 0), WITHOUT augmentation: the --num_clips clips x centre crop of every training
    video, each clip one training sample (the clips the test uses, so train and test features
    come from the same distribution; the same features are the kNN/retrieval gallery). With
    --aug_epochs N the training features are N passes of the train augmentation (one random clip,
    random crop, flip per video per pass).
  --no-cache_features: the head is trained end to end through the frozen backbone on augmented
    clips for --epochs epochs (CoCLR main_classifier.py --train_what last).
Test: --num_clips clips over each video x centre crop (or --ten_crop); softmax averaged per
video; video-level top-1/top-5 and clip-level top-1 of the LAST epoch are reported.
--knn K: cosine kNN classifier (video features = clip features averaged) on the train split.
--retrieval: queries = test-split videos, gallery = train-split videos, features averaged over
clips, mean-centred by the gallery mean (--retrieval_center), L2-normalised, cosine nearest
neighbours; R@k = a video of the query's class among the k nearest (k = 1, 5, 10, 20, 50).

Outputs in --output_dir: args.json, log.jsonl (one line per probe epoch), TensorBoard events (tb/),
metrics.json (percent: top1, top5, clip_top1, knn_top1, retrieval R@k; init = "pretrained" or
"random", num_train, num_val, skipped_videos = videos replaced by another because of a missing or
corrupt frame, also per split as skipped_videos_train / skipped_videos_val, ...). Without
--pretrained the backbone is RANDOMLY INITIALISED: the baseline every result is compared with
(init = "random" in metrics.json).

Examples:
  # UCF101 split 1: linear probe + kNN + retrieval of a pretrained backbone
  python eval_linear.py --pretrained runs/pretrain/checkpoint_last.pth \\
      --train_csv data/ucf101/train_split1.csv --val_csv data/ucf101/test_split1.csv \\
      --num_classes 101 --knn 20 --retrieval --output_dir runs/ucf101_linear
  # the random-initialisation baseline of the same protocol
  python eval_linear.py --net r3d_18 --train_csv ... --val_csv ... --output_dir runs/ucf101_linear_random
  # retrieval only (no classifier)
  python eval_linear.py --pretrained CKPT --epochs 0 --retrieval --train_csv ... --val_csv ... --output_dir ...
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from datasets.downstream import ClipDataset
from engine import cli
from engine.features import eval_batch_size, extract
from engine.loader import make_loader
from engine.metrics import CENTER_MODES, RETRIEVAL_KS, classification_metrics, knn_scores, retrieval_recall, \
    topk_accuracy
from engine.probe import (
    assert_state_unchanged, predict_features, state_snapshot, train_linear_probe, train_probe_end_to_end,
)
from models import RANDOM_INIT_BANNER, ClassifierHead, VideoClassifier, build_eval_backbone
from utils import runtime
from utils.amp import resolve_amp
from utils.logging import RunLogger, prepare_output_dir, write_json
from utils.optim import OPTIMIZERS, build_optimizer

PROG = "eval_linear.py"
# (optimiser, lr, weight decay) when not given: CoCLR's two linear-probe recipes
CACHED_DEFAULTS = ("sgd", 1.0, 1e-3)  # eval/feature_linear_probe.py
END_TO_END_DEFAULTS = ("adam", 1e-3, 1e-3)  # eval/main_classifier.py --train_what last
HEADLINE = ("top1", "top5", "clip_top1", "knn_top1")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(PROG, __doc__)
    cli.add_downstream_args(parser, "args.json, log.jsonl, TensorBoard events (tb/) and metrics.json",
                            distributed=False, resume=False)
    probe = parser.add_argument_group("linear probe (METHOD §5)")
    probe.add_argument("--cache_features", action=argparse.BooleanOptionalAction, default=True,
                       help="extract features once and train the head on the cached tensors; "
                            "--no-cache_features trains end to end through the frozen backbone")
    probe.add_argument("--aug_epochs", type=int, default=0,
                       help="cached mode: 0 = train on the un-augmented test-style clips of every "
                            "training video (--num_clips x centre crop); N = N passes of the train "
                            "augmentation, one random clip per video per pass")
    probe.add_argument("--final_bn", action=argparse.BooleanOptionalAction, default=True,
                       help="BatchNorm1d before the linear layer (CoCLR's linear probe)")
    probe.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                       help="L2-normalise the pooled feature before the head (CoCLR's linear probe)")
    probe.add_argument("--optim", default=None, choices=OPTIMIZERS,
                       help="default: sgd (cached) / adam (end to end); SGD has momentum 0.9")
    probe.add_argument("--lr", type=float, default=None, help="default: 1.0 (cached) / 1e-3 (end to end)")
    probe.add_argument("--wd", type=float, default=None, help="weight decay (default: 1e-3)")
    cli.add_epochs_arg(probe, False, 100, "epochs of head training; 0 = no classifier (kNN / retrieval only)")
    probe.add_argument("--schedule", type=int, nargs="*", default=[60, 80],
                       help="epochs at which the lr is divided by 10")
    probe.add_argument("--feature_batch_size", type=int, default=1024,
                       help="cached mode: feature rows per head-training step")
    other = parser.add_argument_group("kNN and retrieval (METHOD §5)")
    other.add_argument("--knn", type=int, default=0, metavar="K",
                       help="also report the top-1 of a cosine K-nearest-neighbour classifier (0 = off)")
    other.add_argument("--knn_temperature", type=float, default=0.07,
                       help="kNN votes weigh exp(cos / T); 0 = plain majority vote")
    other.add_argument("--retrieval", action="store_true",
                       help="also report video retrieval R@1/5/10/20/50 (test split -> train split)")
    other.add_argument("--retrieval_center", default="gallery", choices=CENTER_MODES,
                       help="mean-centring before cosine similarity: by the gallery (train) mean, "
                            "each split by its own mean (CoCLR's code), or none (applies to --knn too)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """eval_linear.py's own checks (``ValueError`` with one message)."""
    cli.check_downstream(args)
    cli.check_at_least(args, 0, "epochs", "aug_epochs", "knn")
    cli.require(not (args.aug_epochs and not args.cache_features),
                "--aug_epochs only applies to cached features; drop it or --no-cache_features")
    cli.require(args.epochs or args.knn or args.retrieval,
                "--epochs 0 trains no classifier: ask for --knn K and/or --retrieval")
    cli.check_at_least(args, 2, "feature_batch_size")
    cli.require((runtime.launched_world_size() or 1) == 1,
                "eval_linear.py runs in one process (feature extraction of a frozen backbone); launch it "
                "with python, not torchrun")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags (one message for a bad combination) and fill the mode-dependent
    optimiser defaults."""
    args = cli.parse_checked(build_parser(), argv, check_args)
    defaults = CACHED_DEFAULTS if args.cache_features else END_TO_END_DEFAULTS
    args.optim = args.optim or defaults[0]
    args.lr = defaults[1] if args.lr is None else args.lr
    args.wd = defaults[2] if args.wd is None else args.wd
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point; returns (and writes to ``metrics.json``) the headline figures."""
    return cli.launch(PROG, run, parse_args(argv))


def run(args: argparse.Namespace, info: runtime.DistInfo) -> dict[str, Any]:
    """The probe, kNN and retrieval for parsed ``args`` (one process on ``info.device``)."""
    device = info.device
    amp_dtype = resolve_amp(args.amp, device)
    runtime.seed_everything(args.seed)
    out = prepare_output_dir(args.output_dir, args)
    logger = RunLogger(out, enabled=True, purge_step=0)
    logger.truncate_log(0)  # a rerun in the same --output_dir starts a fresh log
    show = not args.no_progress

    backbone, init = build_eval_backbone(args.pretrained, args.net, args.width)
    if init["init"] == "random":
        logger.print(RANDOM_INIT_BANNER)
    else:
        logger.print(f"=> backbone {init['net']} (width {init['width']}) from {init['pretrained']}")

    train_set = ClipDataset.from_args(args, args.train_csv, train=True, num_classes=args.num_classes)
    num_classes = train_set.num_classes
    test_set = ClipDataset.from_args(args, args.val_csv, train=False, num_classes=num_classes,
                                     ten_crop=args.ten_crop)
    head = ClassifierHead(backbone.out_channels["high"], num_classes, final_bn=args.final_bn,
                          normalize=args.normalize)
    model = VideoClassifier(backbone, head, frozen=True).to(device)
    snapshot = state_snapshot(model.backbone)
    mode = "cached" if args.cache_features else "end_to_end"
    logger.print(f"=> {num_classes} classes, {len(train_set)} train / {len(test_set)} test videos; "
                 f"probe: {mode}, {args.optim} lr {args.lr} wd {args.wd}, {args.epochs} epochs")

    skipped = {"train": 0, "val": 0}  # videos replaced because of a missing/corrupt frame

    def features(dataset: Any, clips_per_video: int, desc: str,
                 split: str) -> tuple[torch.Tensor, torch.Tensor]:
        batch = eval_batch_size(args.batch_size, clips_per_video)
        loader = make_loader(dataset, batch, workers=args.workers, device=device)  # every video, in order
        x, y, n = extract(model.features, loader, device, amp_dtype, show, desc)
        skipped[split] += n
        return x, y

    # The backbone is frozen, so every feature is computed once: test (N, K, D), train-split
    # test-style clips = the kNN / retrieval gallery and the un-augmented probe training set.
    test_x, test_y = features(test_set, args.num_clips * (10 if args.ten_crop else 1), "test features",
                              "val")
    gallery_x = gallery_y = None
    if args.knn or args.retrieval or (args.epochs and args.cache_features and not args.aug_epochs):
        gallery_set = ClipDataset.from_args(args, args.train_csv, train=False, num_classes=num_classes)
        gallery_x, gallery_y = features(gallery_set, args.num_clips, "train features (test-style clips)",
                                        "train")

    def on_epoch(epoch: int, stats: dict[str, float], trained: ClassifierHead) -> None:
        record: dict[str, Any] = {"epoch": epoch, **stats}
        logger.scalars("probe", stats, epoch)
        if args.eval_freq and (epoch + 1) % args.eval_freq == 0 and epoch + 1 < args.epochs:
            val = classification_metrics(predict_features(trained, test_x, device), test_y)
            logger.scalars("val", val, epoch)
            record.update({f"val_{k}": v for k, v in val.items()})
        logger.log_epoch(record)

    metrics: dict[str, Any] = {**init, "mode": mode, "num_classes": num_classes,
                               "num_train": len(train_set), "num_val": len(test_set),
                               "num_clips": args.num_clips, "ten_crop": args.ten_crop,
                               "epochs": args.epochs}
    if args.epochs:
        if args.cache_features:
            if args.aug_epochs:
                passes = [features(train_set, 1, f"augmented train features {i + 1}/{args.aug_epochs}",
                                   "train") for i in range(args.aug_epochs)]
                train_x = torch.cat([x for x, _ in passes]).flatten(0, 1)
                train_y = torch.cat([y for _, y in passes])
            else:
                train_x = gallery_x.flatten(0, 1)
                train_y = gallery_y.repeat_interleave(gallery_x.shape[1])
            train_linear_probe(model.head, train_x, train_y, optim=args.optim, lr=args.lr,
                               weight_decay=args.wd, epochs=args.epochs, schedule=args.schedule,
                               batch_size=args.feature_batch_size, device=device, seed=args.seed,
                               on_epoch=on_epoch, show_progress=show)
        else:
            loader = make_loader(train_set, args.batch_size, workers=args.workers, device=device,
                                 order="epoch", seed=args.seed)
            optimizer = build_optimizer([{"params": model.head.parameters()}], args.optim, args.lr, args.wd)
            skipped["train"] += train_probe_end_to_end(
                model, loader, optimizer, epochs=args.epochs, lr=args.lr, schedule=args.schedule,
                device=device, amp_dtype=amp_dtype, seed=args.seed, on_epoch=on_epoch,
                show_progress=show)
        metrics.update(classification_metrics(predict_features(model.head, test_x, device), test_y))
    if args.knn or args.retrieval:  # video features = clip features averaged (METHOD §5)
        test_videos, gallery_videos = test_x.mean(1).to(device), gallery_x.mean(1).to(device)
    if args.knn:
        votes = knn_scores(gallery_videos, gallery_y, test_videos, args.knn, num_classes,
                           temperature=args.knn_temperature or None, center=args.retrieval_center)
        metrics.update(knn_top1=100.0 * topk_accuracy(votes, test_y, (1,))[1], knn_k=args.knn)
    if args.retrieval:
        recall = retrieval_recall(test_videos, test_y, gallery_videos, gallery_y, RETRIEVAL_KS,
                                  center=args.retrieval_center)
        metrics["retrieval"] = {f"R@{k}": 100.0 * v for k, v in recall.items()}

    assert_state_unchanged(model.backbone, snapshot)  # raises if the frozen backbone moved
    metrics["backbone_unchanged"] = True
    metrics.update(skipped_videos=skipped["train"] + skipped["val"],
                   skipped_videos_train=skipped["train"], skipped_videos_val=skipped["val"])
    headline = {k: metrics[k] for k in HEADLINE if k in metrics}
    logger.scalars("test", headline, args.epochs)
    write_json(out / "metrics.json", metrics)
    logger.print("=> " + " ".join(f"{k}={v:.2f}" for k, v in headline.items())
                 + "".join(f" {k}={v:.2f}" for k, v in metrics.get("retrieval", {}).items())
                 + f" skipped_videos={metrics['skipped_videos']}"
                 + (" (RANDOM INIT)" if init["init"] == "random" else ""))
    logger.close()
    return metrics


if __name__ == "__main__":
    main()
