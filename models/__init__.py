"""Backbones, motion excitation, heads and the multi-level model (docs/method.md §2); the downstream
classifier of the evaluation protocol (docs/method.md §5)."""

from models.backbone import Backbone
from models.classifier import PROBE_LEVELS, ClassifierHead, VideoClassifier, level_dim, pool_high
from models.loading import (
    RANDOM_INIT_BANNER,
    BackboneLoadError,
    backbone_state_dict,
    build_backbone_from_checkpoint,
    build_eval_backbone,
    load_pretrained_backbone,
    pretraining_args,
)
from models.multilevel import MultiLevelModel, build_model
from models.output import LEVELS, MultiLevelOutput
from models.registry import NETS, build_backbone

__all__ = [
    "LEVELS",
    "RANDOM_INIT_BANNER",
    "NETS",
    "PROBE_LEVELS",
    "Backbone",
    "BackboneLoadError",
    "ClassifierHead",
    "MultiLevelModel",
    "MultiLevelOutput",
    "VideoClassifier",
    "backbone_state_dict",
    "build_backbone",
    "build_backbone_from_checkpoint",
    "build_eval_backbone",
    "build_model",
    "level_dim",
    "load_pretrained_backbone",
    "pool_high",
    "pretraining_args",
]
