"""The objectives of docs/method.md §3, one module each, plus the combined objective."""
from losses.alignment import local_global_alignment
from losses.contrast import instance_contrast, instance_graph, motion_contrast, multi_positive_contrast
from losses.graph import graph_loss, graph_target
from losses.objective import LossWeights, MultiLevelObjective, ObjectiveResult, add_loss_args
from losses.prototypes import (
    ScoreQueue,
    pseudo_labels,
    sinkhorn,
    swapped_prediction,
)

__all__ = [
    "LossWeights",
    "MultiLevelObjective",
    "ObjectiveResult",
    "ScoreQueue",
    "add_loss_args",
    "graph_loss",
    "graph_target",
    "instance_contrast",
    "instance_graph",
    "local_global_alignment",
    "motion_contrast",
    "multi_positive_contrast",
    "pseudo_labels",
    "sinkhorn",
    "swapped_prediction",
]
