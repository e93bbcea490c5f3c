"""Linear probe of a frozen pretrained backbone, with kNN and retrieval (docs/method.md §5, CoCLR's protocol).

The backbone of a train.py checkpoint (--pretrained; net and width from its model_config) is frozen
and kept in eval mode (BatchNorm statistics frozen); only the head trains:
time/space-pooled high feature -> L2 normalisation (--normalize) -> BatchNorm1d (--final_bn) ->
linear classifier. The optimiser is checked to hold only the head's parameters, and after the run
the backbone's state_dict is compared bit for bit with a snapshot taken before (the run fails if
anything moved) — the probe hygiene of MoCo's main_lincls.py.

Training the head:
  --cache_features (default): features are extracted once and the head is trained on the cached
    tensors (CoCLR eval/feature_linear_probe.py; fast). Its lr and weight decay, unless given, are
    chosen by --probe_recipe sweep: one head per (lr, wd) in {1, 0.1, 0.01} x {1e-3, 1e-4} trained
    on 80 % of the TRAINING videos and scored on the other 20 %, then the best retrained on them all
    (the choice and every score go to metrics.json); --probe_recipe coclr is CoCLR's fixed SGD
    lr 1.0, wd 1e-3. Train-split features are, by default
    (--aug_epochs 0), WITHOUT augmentation: the --num_clips clips x centre crop of every training
    video, each clip one training sample (the clips the test uses, so train and test features
    come from the same distribution; the same features are the kNN/retrieval gallery). With
    --aug_epochs N the training features are N passes of the train augmentation (one random clip,
    random crop, flip per video per pass).
  --no-cache_features: the head is trained end to end through the frozen backbone on augmented
    clips for --epochs epochs (CoCLR main_classifier.py --train_what last).
A training loss that becomes non-finite or climbs far above where it started stops the run with an
error (a diverged head's accuracy is not a result); a top-1 within two standard errors of chance
is flagged in the log and in metrics.json (at_chance).
--probe_level: the pooled feature the head, kNN and retrieval read: high (docs/method.md §5), mid, low, or
all three concatenated.
--seq / --img_dim default to the checkpoint's pretraining values (the log says which were used).
Test: --num_clips clips over each video x centre crop (or --ten_crop); softmax averaged per
video; video-level top-1/top-5 and clip-level top-1 of the LAST epoch are reported.
--knn K: cosine kNN classifier (video features = clip features averaged) on the train split.
--retrieval: queries = test-split videos, gallery = train-split videos, features averaged over
clips, mean-centred by the gallery mean (--retrieval_center), L2-normalised, cosine nearest
neighbours; R@k = a video of the query's class among the k nearest (k = 1, 5, 10, 20, 50).

Outputs in --output_dir: args.json, log.jsonl (one line per probe epoch), TensorBoard events (tb/),
metrics.json (percent: top1, top5, clip_top1, knn_top1, retrieval R@k, train_loss / train_top1 of the
last epoch, chance and at_chance; probe = the recipe, lr, wd and sweep scores; init = "pretrained" or
"random", num_train, num_val, skipped_videos = videos replaced by another because of a missing or
corrupt frame, also per split as skipped_videos_train / skipped_videos_val, protocol = the split,
clips x crops and the pretraining checkpoint, ...). A --val_csv video that the --pretrained
checkpoint was pretrained on stops the run before anything is computed (--allow_overlap runs
anyway and records it; docs/evaluation.md). Without
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

from datasets.base import split_overlap
from datasets.downstream import ClipDataset
from engine import cli
from engine.launch import launch
from engine.features import eval_batch_size, extract
from engine.loader import make_loader
from engine.metrics import CENTER_MODES, RETRIEVAL_KS, chance_level, classification_metrics, knn_scores, \
    retrieval_recall, topk_accuracy
from engine.probe import (
    assert_state_unchanged, predict_features, state_snapshot, train_linear_probe, train_probe_end_to_end,
)
from engine.probe_sweep import PROBE_GRID, sweep_linear_probe
from engine.protocol import check_pretraining_overlap, protocol_record
from models import PROBE_LEVELS, RANDOM_INIT_BANNER, ClassifierHead, VideoClassifier, build_eval_backbone, level_dim
from utils import runtime
from utils.amp import resolve_amp
from utils.checkpoint import remove_stale_temps
from utils.logging import RunLogger, prepare_output_dir, write_json
from utils.optim import OPTIMIZERS, build_optimizer

PROG = "eval_linear.py"
# (optimiser, lr, weight decay) of CoCLR's two linear-probe recipes
CACHED_DEFAULTS = ("sgd", 1.0, 1e-3)  # eval/feature_linear_probe.py (--probe_recipe coclr)
END_TO_END_DEFAULTS = ("adam", 1e-3, 1e-3)  # eval/main_classifier.py --train_what last
RECIPES = ("sweep", "coclr")
HEADLINE = ("top1", "top5", "clip_top1", "knn_top1")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser(PROG, __doc__)
    cli.add_downstream_args(parser, "args.json, log.jsonl, TensorBoard events (tb/) and metrics.json",
                            distributed=False, resume=False)
    probe = parser.add_argument_group("linear probe (docs/method.md §5)")
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
    probe.add_argument("--probe_level", default="high", choices=PROBE_LEVELS,
                       help="the pooled backbone feature the head, kNN and retrieval read; all = low, mid "
                            "and high concatenated")
    probe.add_argument("--probe_recipe", default="sweep", choices=RECIPES,
                       help="cached mode, --lr not given: sweep = choose lr and wd on 20 %% of the training "
                            "videos held out; coclr = CoCLR's fixed SGD lr 1.0, wd 1e-3")
    probe.add_argument("--optim", default=None, choices=OPTIMIZERS,
                       help="default: sgd (cached) / adam (end to end); SGD has momentum 0.9")
    probe.add_argument("--lr", type=float, default=None,
                       help="default: by --probe_recipe (cached) / 1e-3 (end to end)")
    probe.add_argument("--wd", type=float, default=None,
                       help="weight decay (default: by --probe_recipe (cached) / 1e-3 (end to end))")
    cli.add_epochs_arg(probe, False, 100, "epochs of head training; 0 = no classifier (kNN / retrieval only)")
    probe.add_argument("--schedule", type=int, nargs="*", default=[60, 80],
                       help="epochs at which the lr is divided by 10")
    probe.add_argument("--feature_batch_size", type=int, default=1024,
                       help="cached mode: feature rows per head-training step")
    other = parser.add_argument_group("kNN and retrieval (docs/method.md §5)")
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
    # where lr / wd come from (metrics.json's probe.recipe): the flags, the sweep, CoCLR's recipe
    args.lr_from = ("given" if args.lr is not None else
                    args.probe_recipe if args.cache_features else "end_to_end_default")
    if args.cache_features and args.lr is None and args.probe_recipe == "sweep":
        return args  # lr (and wd unless given) chosen by the sweep in run()
    args.lr = defaults[1] if args.lr is None else args.lr
    args.wd = defaults[2] if args.wd is None else args.wd
    return args


def choose_recipe(args: argparse.Namespace, recipe: str, new_head: Any, videos_x: torch.Tensor,
                  videos_y: torch.Tensor, device: torch.device, train_kwargs: dict[str, Any],
                  logger: RunLogger) -> dict[str, Any]:
    """The cached probe's lr and wd: as given, CoCLR's, or the best of the sweep on held-out
    training videos (:func:`~engine.probe_sweep.sweep_linear_probe`; CoCLR's when too few
    videos). Sets ``args.lr`` / ``args.wd`` and returns what ``metrics.json`` records."""
    if recipe != "sweep":
        return {"recipe": recipe, "lr": args.lr, "wd": args.wd}
    grid = PROBE_GRID if args.wd is None else tuple(dict.fromkeys((lr, args.wd) for lr, _ in PROBE_GRID))
    best, rows = sweep_linear_probe(new_head, videos_x, videos_y, grid=grid, seed=args.seed,
                                    device=device, **train_kwargs)
    for row in rows:
        score = (f"held-out top-1 {row['holdout_top1']:.1f} %" if "holdout_top1" in row
                 else "diverged")
        logger.print(f"   sweep: lr {row['lr']:g} wd {row['wd']:g}: {score}")
    if best is None:
        why = ("every point diverged" if rows else
               f"{len(videos_y)} training videos are too few to hold 20 % out")
        args.lr, args.wd = CACHED_DEFAULTS[1], CACHED_DEFAULTS[2] if args.wd is None else args.wd
        logger.print(f"=> probe recipe: CoCLR's lr {args.lr:g} wd {args.wd:g} ({why})")
        return {"recipe": "coclr", "why": why, "lr": args.lr, "wd": args.wd, "sweep": rows}
    args.lr, args.wd = best
    logger.print(f"=> probe recipe: lr {args.lr:g} wd {args.wd:g}, the best on the held-out training "
                 "videos; retrained on the whole training split")
    return {"recipe": "sweep", "lr": args.lr, "wd": args.wd, "sweep": rows}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point; returns (and writes to ``metrics.json``) the headline figures."""
    return launch(PROG, run, parse_args(argv))


def run(args: argparse.Namespace, info: runtime.DistInfo) -> dict[str, Any]:
    """The probe, kNN and retrieval for parsed ``args`` (one process on ``info.device``)."""
    device = info.device
    amp_dtype = resolve_amp(args.amp, device)
    runtime.seed_everything(args.seed)
    remove_stale_temps(args.output_dir)  # of writes a killed run left
    out = prepare_output_dir(args.output_dir, args, fresh=True)  # no resume: nothing of an earlier run stays
    logger = RunLogger(out, enabled=True, purge_step=0)
    logger.truncate_log(0)  # a rerun in the same --output_dir starts a fresh log
    show = not args.no_progress

    leakage = check_pretraining_overlap(args, logger.print)  # refuses test videos seen in pretraining
    backbone, init = build_eval_backbone(args.pretrained, args.net, args.width)
    if init["init"] == "random":
        logger.print(RANDOM_INIT_BANNER)
    else:
        logger.print(f"=> backbone {init['net']} (width {init['width']}) from {init['pretrained']}")
    logger.print(cli.clip_size_line(args))

    train_set = ClipDataset.from_args(args, args.train_csv, train=True, num_classes=args.num_classes)
    num_classes = train_set.num_classes
    test_set = ClipDataset.from_args(args, args.val_csv, train=False, num_classes=num_classes,
                                     ten_crop=args.ten_crop)
    overlap, overlap_warning = split_overlap(train_set, test_set)
    if overlap_warning:
        logger.print(overlap_warning)

    def new_head() -> ClassifierHead:
        return ClassifierHead(level_dim(backbone.out_channels, args.probe_level), num_classes,
                              final_bn=args.final_bn, normalize=args.normalize)

    model = VideoClassifier(backbone, new_head(), frozen=True, level=args.probe_level).to(device)
    snapshot = state_snapshot(model.backbone)
    mode = "cached" if args.cache_features else "end_to_end"
    recipe = args.lr_from
    logger.print(f"=> {num_classes} classes, {len(train_set)} train / {len(test_set)} test videos; "
                 f"probe: {mode} on the {args.probe_level} feature, {args.optim}, "
                 + (f"lr {args.lr} wd {args.wd}" if args.lr is not None else "lr and wd by the sweep")
                 + f", {args.epochs} epochs")

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
                               "train_val_overlap": overlap, "num_clips": args.num_clips, "ten_crop": args.ten_crop,
                               "seq": args.seq, "img_dim": args.img_dim, "probe_level": args.probe_level,
                               "epochs": args.epochs}
    mode_name = "linear" if args.epochs else "retrieval" if args.retrieval else "knn"
    metrics["protocol"] = protocol_record(args, mode_name, len(train_set), len(test_set), leakage)
    if args.epochs:
        if args.cache_features:
            if args.aug_epochs:  # (N, passes, D): one augmented clip per video per pass
                passes = [features(train_set, 1, f"augmented train features {i + 1}/{args.aug_epochs}",
                                   "train") for i in range(args.aug_epochs)]
                videos_x, videos_y = torch.cat([x for x, _ in passes], dim=1), passes[0][1]
            else:
                videos_x, videos_y = gallery_x, gallery_y
            train_kwargs = dict(optim=args.optim, epochs=args.epochs, schedule=args.schedule,
                                batch_size=args.feature_batch_size)
            metrics["probe"] = choose_recipe(args, recipe, new_head, videos_x, videos_y, device,
                                             train_kwargs, logger)
            train = train_linear_probe(
                model.head, videos_x.flatten(0, 1), videos_y.repeat_interleave(videos_x.shape[1]),
                lr=args.lr, weight_decay=args.wd, device=device, seed=args.seed, on_epoch=on_epoch,
                show_progress=show, **train_kwargs)
        else:
            loader = make_loader(train_set, args.batch_size, workers=args.workers, device=device,
                                 order="epoch", seed=args.seed)
            optimizer = build_optimizer([{"params": model.head.parameters()}], args.optim, args.lr, args.wd)
            metrics["probe"] = {"recipe": recipe, "lr": args.lr, "wd": args.wd}
            train = train_probe_end_to_end(
                model, loader, optimizer, epochs=args.epochs, lr=args.lr, schedule=args.schedule,
                device=device, amp_dtype=amp_dtype, seed=args.seed, on_epoch=on_epoch,
                show_progress=show)
            skipped["train"] += train["skipped_videos"]
        metrics.update(train_loss=train["loss"], train_top1=train["train_top1"])
        metrics.update(classification_metrics(predict_features(model.head, test_x, device), test_y))
        metrics.update(chance_level(metrics["top1"], num_classes, len(test_set)))
    if args.knn or args.retrieval:  # video features = clip features averaged (docs/method.md §5)
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
    if metrics.get("at_chance"):
        logger.print(f"WARNING: top-1 {metrics['top1']:.1f} % is within two standard errors of chance "
                     f"({metrics['chance']:.1f} % for {num_classes} classes) on {len(test_set)} test videos: "
                     "the probe found nothing to read in these features; this is not a result")
    logger.close()
    return metrics


if __name__ == "__main__":
    main()
