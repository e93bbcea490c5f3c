"""The combined multi-level objective (docs/method.md §3, "Total").

``L = w_ins L_ins + w_lg_high L_lg,high + w_mot_mid L_mot,mid + w_lg_mid L_lg,mid
+ w_mot_low L_mot,low + w_lg_low L_lg,low + w_proto L_proto
[+ w_graph (w_graph_high L_high + w_graph_mid L_mid + w_graph_low L_low) from --split on]``

with the method's defaults (docs/method.md §3) 1, 1, 0.5, 0.5, 0.3, 0.3, 0.5, 1 and 1 / 0.5 / 0.3. Every weight is a
flag (:func:`add_loss_args`), so an ablation is a command line; a weight of 0 skips its term.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from utils.amp import fp32_region
from utils.distributed import GATHER_GRADS, all_gather_no_grad, local_rows
from losses.alignment import local_global_alignment
from losses.contrast import instance_contrast, instance_graph, motion_contrast
from losses.graph import graph_loss, graph_target
from losses.prototypes import QUEUE_ROWS, ScoreQueue, pseudo_labels, swapped_prediction
from models.output import MultiLevelOutput


@dataclass
class LossWeights:
    """Weights of the terms of the total loss (docs/method.md §3 "Total"); 0 disables a term."""

    ins: float = 1.0
    lg_high: float = 1.0
    mot_mid: float = 0.5
    lg_mid: float = 0.5
    mot_low: float = 0.3
    lg_low: float = 0.3
    proto: float = 0.5
    graph: float = 1.0
    graph_high: float = 1.0
    graph_mid: float = 0.5
    graph_low: float = 0.3

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LossWeights:
        """Build from the ``--w_<name>`` flags of :func:`add_loss_args` (missing → default)."""
        return cls(**{f.name: float(getattr(args, f"w_{f.name}", f.default)) for f in fields(cls)})


_WEIGHT_HELP = {
    "ins": "high-level instance contrast L_ins (docs/method.md §3.1)",
    "lg_high": "local-global alignment at the high level (§3.3)",
    "mot_mid": "motion contrast at the mid level (§3.2)",
    "lg_mid": "local-global alignment at the mid level (§3.3)",
    "mot_low": "motion contrast at the low level (§3.2)",
    "lg_low": "local-global alignment at the low level (§3.3)",
    "proto": "prototypical swapped prediction L_proto (§3.4)",
    "graph": "graph constraint L_graph, from --split on (§3.5)",
    "graph_high": "high level inside L_graph (§3.5)",
    "graph_mid": "mid level inside L_graph (§3.5)",
    "graph_low": "low level inside L_graph (§3.5)",
}


def add_loss_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the objective's flags: one ``--w_<term>`` per weight, ``--tau``, ``--queue_start``,
    ``--queue_size``, ``--queue_rows``, ``--eps``, ``--sinkhorn_iters``, ``--proto_temperature``,
    ``--gather_grad`` (docs/method.md §3).

    ``--thres``, ``--split`` and ``--cluster`` are the reference's own flags and are left to the
    entry script (:meth:`MultiLevelObjective.from_args` reads them).
    """
    group = parser.add_argument_group("objective (docs/method.md §3)")
    for f in fields(LossWeights):
        group.add_argument(
            f"--w_{f.name}", type=float, default=f.default,
            help=f"weight of the {_WEIGHT_HELP[f.name]}; 0 disables it (default {f.default})",
        )
    group.add_argument("--tau", type=float, default=0.07,
                       help="temperature of the contrast, alignment and graph softmaxes (default 0.07)")
    group.add_argument("--queue_start", type=int, default=10,
                       help="first epoch whose Sinkhorn codes also use the score queue (default 10)")
    group.add_argument("--queue_size", type=int, default=1024,
                       help="score-queue length in videos over all ranks (default 1024)")
    group.add_argument("--queue_rows", choices=QUEUE_ROWS, default="include_batch",
                       help="rows of the Sinkhorn problem once the queue is used (docs/method.md "
                            "§3.4): include_batch = the newest --queue_size gathered rows, the "
                            "current global batch among them, as in the reference code; "
                            "plus_batch = up to --queue_size rows of earlier steps plus the batch "
                            "(--queue_size + B rows). Either way the codes are the batch's rows "
                            "(default include_batch)")
    group.add_argument("--eps", type=float, default=0.05,
                       help="Sinkhorn entropic regularisation epsilon (default 0.05)")
    group.add_argument("--sinkhorn_iters", type=int, default=3,
                       help="Sinkhorn-Knopp iterations (default 3)")
    group.add_argument("--proto_temperature", type=float, default=0.1,
                       help="softmax temperature of the swapped prediction (default 0.1)")
    group.add_argument("--gather_grad", choices=GATHER_GRADS, default="full",
                       help="gradient through the keys gathered over processes for L_ins, L_mot "
                            "and L_graph (docs/method.md §3, Distributed semantics): full = every "
                            "process's loss reaches every row, so N processes with batch b equal "
                            "one process with batch N*b; local = each process's loss reaches only "
                            "its own rows, the reference code's own-slice gradient, for exact "
                            "reproduction of the paper's 4-GPU runs. The same in one process "
                            "(default full)")
    return parser


def loss_args_error(args: argparse.Namespace) -> str | None:
    """The first problem with the :func:`add_loss_args` flags, as a message for ``parser.error``,
    or ``None`` when they are usable."""
    negative = [f"--w_{f.name}" for f in fields(LossWeights) if getattr(args, f"w_{f.name}") < 0]
    if negative:
        return f"{', '.join(negative)}: a loss weight must be >= 0 (0 disables the term)"
    for name in ("tau", "eps", "proto_temperature"):
        if not getattr(args, name) > 0:
            return f"--{name} {getattr(args, name)}: a temperature must be > 0"
    if args.sinkhorn_iters < 1:
        return f"--sinkhorn_iters {args.sinkhorn_iters}: Sinkhorn needs at least 1 iteration"
    if args.queue_size < 0 or args.queue_start < 0:
        return (f"--queue_size {args.queue_size} / --queue_start {args.queue_start}: both must be >= 0 "
                "(--queue_size 0 disables the queue)")
    return None


@dataclass
class ObjectiveResult:
    """``total``: the scalar loss to backpropagate (float32). ``parts``: detached scalars for
    logging — every computed term under its name (``ins``, ``mot_mid``, ``lg_low``, ``proto``,
    ``graph_high``, ``graph`` = the level-weighted sum, ...), each weighted term as
    ``<name>_weighted``, ``total`` and ``num_pseudo_labels`` (distinct pseudo-labels in the
    global batch). ``pseudo_labels``: ``(b,)`` long, this rank's videos."""

    total: Tensor
    parts: dict[str, Tensor]
    pseudo_labels: Tensor


class MultiLevelObjective(nn.Module):
    """All of docs/method.md §3 on one :class:`~models.output.MultiLevelOutput`.

    Holds the Sinkhorn score queue (buffers ``queue.scores`` / ``queue.filled``, in
    ``state_dict()``). The queue takes the batch's scores at every training-mode forward (all
    epochs, as the reference does, so it is full when it is first used) and is used from
    ``queue_start`` on; in ``eval()`` mode it is left unchanged. Sinkhorn codes (hence the
    pseudo-labels) are computed even when ``proto`` has weight 0. With ``n > 2`` clips, ``G_ins``
    and the graph term use clips 0 and 1, as docs/method.md §3.1/§3.5 define them.
    ``queue_rows`` picks the Sinkhorn rows (:meth:`ScoreQueue.rows_used`); ``gather_grad`` the
    gradient of the gathered keys (:func:`utils.distributed.all_gather_with_grad`).
    """

    def __init__(
        self,
        weights: LossWeights | None = None,
        tau: float = 0.07,
        thres: float = 0.05,
        split: int = 20,
        queue_start: int = 10,
        queue_size: int = 1024,
        cluster: int = 1000,
        eps: float = 0.05,
        sinkhorn_iters: int = 3,
        proto_temperature: float = 0.1,
        num_clips: int = 2,
        queue_rows: str = "include_batch",
        gather_grad: str = "full",
    ) -> None:
        super().__init__()
        if queue_rows not in QUEUE_ROWS or gather_grad not in GATHER_GRADS:
            raise ValueError(f"queue_rows={queue_rows!r} / gather_grad={gather_grad!r}: expected one "
                             f"of {QUEUE_ROWS} / {GATHER_GRADS}")
        self.queue_rows = queue_rows
        self.gather_grad = gather_grad
        self.weights = weights if weights is not None else LossWeights()
        self.tau = tau
        self.thres = thres
        self.split = split
        self.queue_start = queue_start
        self.eps = eps
        self.sinkhorn_iters = sinkhorn_iters
        self.proto_temperature = proto_temperature
        self.queue = ScoreQueue(queue_size, cluster, num_clips)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MultiLevelObjective:
        """Build from :func:`add_loss_args` flags plus the entry script's ``--thres``,
        ``--split``, ``--cluster`` and ``--sample``."""
        return cls(
            LossWeights.from_args(args), tau=args.tau, thres=args.thres, split=args.split,
            queue_start=args.queue_start, queue_size=args.queue_size, cluster=args.cluster,
            eps=args.eps, sinkhorn_iters=args.sinkhorn_iters,
            proto_temperature=getattr(args, "proto_temperature", 0.1),
            num_clips=getattr(args, "sample", 2),
            queue_rows=getattr(args, "queue_rows", "include_batch"),
            gather_grad=getattr(args, "gather_grad", "full"),
        )

    def checkpoint_state(self) -> dict[str, Any]:
        """The objective's part of a checkpoint: ``{"queue": {"scores": (n, size, K), "filled"},
        "buffers": {...}}`` on CPU. The score queue is the same on every rank (docs/method.md §3.4), so
        rank 0's is the run's."""
        own = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {"queue": {k: v.clone() for k, v in self.queue.state_dict().items()},
                "buffers": {k: v for k, v in own.items() if not k.startswith("queue.")}}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`checkpoint_state`, on every rank (any number of ranks). A queue
        saved as per-rank shards ``(world, n, shard, K)`` (checkpoint format version 1) becomes
        one queue of all their filled rows (Sinkhorn does not depend on the row order)."""
        if state.get("buffers"):
            self.load_state_dict(state["buffers"], strict=False)
        queue = state.get("queue")
        if queue is None:
            return
        if queue["scores"].dim() == 4:
            scores, filled = queue["scores"], int(queue["filled"])
            world, n, shard, k = scores.shape
            rows = scores[:, :, shard - filled:].permute(1, 0, 2, 3).reshape(n, world * filled, k)
            queue = {"scores": rows, "filled": torch.tensor(world * filled)}
        self.queue.load_state_dict(queue)

    def needs_graph(self, epoch: int) -> bool:
        """Whether ``forward`` at ``epoch`` needs ``out.graph`` (epoch >= split and the graph
        term has a nonzero weight)."""
        w = self.weights
        return epoch >= self.split and w.graph != 0 and any((w.graph_high, w.graph_mid, w.graph_low))

    def forward(self, out: MultiLevelOutput, epoch: int) -> ObjectiveResult:
        """The total loss of docs/method.md §3 for this rank's batch (see the module docstring)."""
        w = self.weights
        scores = out.prototype_scores
        b = scores.shape[0]
        with_graph = self.needs_graph(epoch)
        if with_graph and out.graph is None:
            raise ValueError(
                f"epoch {epoch} >= split {self.split}: the graph term needs out.graph; call the "
                "model with with_graph=objective.needs_graph(epoch)"
            )
        parts: dict[str, Tensor] = {}
        weighted: list[tuple[str, float, Tensor]] = []
        with fp32_region(scores):
            g_ins = None
            if w.ins:
                l_ins, g_ins = instance_contrast(out.proj["high"], self.tau, self.gather_grad)
                weighted.append(("ins", w.ins, l_ins))
            elif with_graph:
                g_ins = instance_graph(out.proj["high"], self.tau)
            for level in ("mid", "low"):
                if getattr(w, f"mot_{level}"):
                    loss = motion_contrast(out.proj[level], out.proj_reversed[level], self.tau,
                                           self.gather_grad)
                    weighted.append((f"mot_{level}", getattr(w, f"mot_{level}"), loss))
            for level in ("high", "mid", "low"):
                if getattr(w, f"lg_{level}"):
                    loss = local_global_alignment(
                        out.fine_local[level], out.fine_global[level], self.tau
                    )
                    weighted.append((f"lg_{level}", getattr(w, f"lg_{level}"), loss))

            # Codes always (cheap, no grad): they give the pseudo-labels the graph needs.
            codes = self.queue.codes(
                scores, use_queue=epoch >= self.queue_start, eps=self.eps, iters=self.sinkhorn_iters,
                rows=self.queue_rows,
            )
            if self.training:
                self.queue.push(scores)
            labels = pseudo_labels(codes)
            labels_global = all_gather_no_grad(labels)
            if w.proto:
                weighted.append(
                    ("proto", w.proto, swapped_prediction(scores, codes, self.proto_temperature))
                )

            if with_graph:
                assert g_ins is not None and out.graph is not None
                target = graph_target(g_ins, labels, labels_global, self.thres, local_rows(b).start)
                l_graph = scores.new_zeros((), dtype=torch.float32)
                for level in ("high", "mid", "low"):
                    lw = getattr(w, f"graph_{level}")
                    if lw:
                        g = out.graph[level]
                        loss = graph_loss(g[:, 0], g[:, 1], target, self.tau, self.gather_grad)
                        parts[f"graph_{level}"] = loss.detach()
                        l_graph = l_graph + lw * loss
                weighted.append(("graph", w.graph, l_graph))

            total = scores.new_zeros((), dtype=torch.float32)
            for name, weight, loss in weighted:
                total = total + weight * loss
                parts[name] = loss.detach()
                parts[f"{name}_weighted"] = (weight * loss).detach()
            parts["total"] = total.detach()
            seen = torch.zeros(scores.shape[-1], device=scores.device)
            parts["num_pseudo_labels"] = seen.index_fill_(0, labels_global, 1.0).sum()
        return ObjectiveResult(total=total, parts=parts, pseudo_labels=labels)
