"""Two gloo processes with ``b`` videos each give the single-process objective on ``2b`` videos
(docs/method.md §3, "Distributed semantics").

Gradient bookkeeping. Let ``L_r`` be rank ``r``'s loss (a mean over its own ``b`` videos' terms)
and ``L`` the single-process loss on the ``W·b`` videos. Every term is a mean over equally many
entries per rank, so ``L = (1/W) Σ_r L_r`` (value check: mean of the rank totals = ``L``).
Rank ``r``'s inputs ``x_r`` reach ``L_r`` directly (queries, reversed clips, scores) and every
``L_r'`` through ``all_gather_with_grad`` (keys), whose backward sums over ranks the gradients
sent to ``x_r``'s rows. Hence after ``L_r.backward()`` on every rank,
``x_r.grad = ∂(Σ_r' L_r')/∂x_r = W · ∂L/∂x_r``: each rank's input gradient is ``W`` times the
single-process gradient of its rows, and DDP's averaging over ranks (÷W) then yields exactly the
single-process parameter gradient. Checked for every input of the full objective, graph term and
score queue included, over four steps (the queue is used, then wraps), with either
``--queue_rows``.

``--gather_grad local`` (the reference code's gather: only this rank's slice of the gathered keys
carries gradient) gives ``x_r.grad = ∂L_r/∂x_r`` with the other ranks' rows held constant. That
is checked against float64 loops that compute rank ``r``'s loss in one process on the global batch
with only rank ``r``'s rows differentiable; the loss values are those of ``full``. The test prints
how far the two gradients are apart (``pytest -s``).
"""
from __future__ import annotations

import math
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from losses import LossWeights, MultiLevelObjective
from models.output import LEVELS, MultiLevelOutput

WORLD = 2

B_LOCAL, N_CLIPS, C, K = 2, 3, 8, 6
TIMES = {"low": 8, "mid": 4, "high": 2}
EPOCHS = (0, 1, 2, 3)                     # queue used from epoch 1, graph from epoch 1
FIELDS = ["proj_" + lv for lv in LEVELS] + ["rev_low", "rev_mid"] + \
    ["fl_" + lv for lv in LEVELS] + ["fg_" + lv for lv in LEVELS] + \
    ["graph_" + lv for lv in LEVELS] + ["scores"]


def make_step_data(seed: int, b: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = {}
    for lv in LEVELS:
        d["proj_" + lv] = torch.randn(b, N_CLIPS, C, generator=g)
        d["fl_" + lv] = torch.randn(b, N_CLIPS, TIMES[lv], C, generator=g)
        d["fg_" + lv] = torch.randn(b, TIMES[lv], C, generator=g)
        d["graph_" + lv] = torch.randn(b, N_CLIPS, C, generator=g)
    for lv in ("low", "mid"):
        d["rev_" + lv] = torch.randn(b, N_CLIPS, C, generator=g)
    emb = torch.nn.functional.normalize(torch.randn(b, N_CLIPS, C, generator=g), dim=-1)
    protos = torch.randn(K, C, generator=torch.Generator().manual_seed(99))
    protos = torch.nn.functional.normalize(protos, dim=1)
    d["scores"] = emb @ protos.T
    return d


def as_output(d: dict[str, torch.Tensor]) -> MultiLevelOutput:
    return MultiLevelOutput(
        proj={lv: d["proj_" + lv] for lv in LEVELS},
        proj_reversed={lv: d["rev_" + lv] for lv in ("low", "mid")},
        fine_local={lv: d["fl_" + lv] for lv in LEVELS},
        fine_global={lv: d["fg_" + lv] for lv in LEVELS},
        prototype_scores=d["scores"],
        graph={lv: d["graph_" + lv] for lv in LEVELS},
    )


# objective options of each run: the default, the other queue rows, the reference's gather
CONFIGS = {"default": {}, "plus_batch": {"queue_rows": "plus_batch"}, "local": {"gather_grad": "local"}}
GATHERED = {"proj_high": "ins", "proj_mid": "mot_mid", "proj_low": "mot_low",
            "graph_high": "graph", "graph_mid": "graph", "graph_low": "graph"}


def make_objective(**options: str) -> MultiLevelObjective:
    # a queue_size that is not a multiple of the global batch (4): the queue still keeps exactly
    # the last 6 gathered rows, the same in both runs
    return MultiLevelObjective(split=1, queue_start=1, queue_size=6, cluster=K, num_clips=N_CLIPS,
                               **options)


def run_steps(data: list[dict[str, torch.Tensor]], rows: slice, **options: str) -> dict:
    """Run the objective over the steps on ``rows`` of each step's data; totals, grads, labels."""
    objective = make_objective(**options)
    record: dict = {"total": [], "labels": [], "grads": [], "parts": []}
    for epoch, step in zip(EPOCHS, data):
        inputs = {k: v[rows].clone().requires_grad_(True) for k, v in step.items()}
        result = objective(as_output(inputs), epoch)
        result.total.backward()
        record["total"].append(result.total.detach())
        record["parts"].append({k: v.clone() for k, v in result.parts.items()})
        record["labels"].append(result.pseudo_labels.clone())
        record["grads"].append(
            {k: torch.zeros_like(v) if v.grad is None else v.grad.clone() for k, v in inputs.items()}
        )
    record["queue"] = {k: v.clone() for k, v in objective.queue.state_dict().items()}
    return record


def _worker(rank: int, init_file: str, data_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        data = torch.load(data_file, weights_only=True)
        rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        records = {name: run_steps(data, rows, **options) for name, options in CONFIGS.items()}
        torch.save(records, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process() -> None:
    data = [make_step_data(seed, WORLD * B_LOCAL) for seed in range(len(EPOCHS))]
    with tempfile.TemporaryDirectory() as tmp:
        data_file = os.path.join(tmp, "data.pt")
        torch.save(data, data_file)
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), data_file, tmp), nprocs=WORLD, join=True)
        runs = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]

    singles = {name: run_steps(data, slice(None), **CONFIGS[name]) for name in ("default", "plus_batch")}
    for name, single in singles.items():
        check_equals_one_process([r[name] for r in runs], single)
    # the two --queue_rows solve different problems once the queue is used (epoch 1 on)
    assert not torch.allclose(singles["default"]["parts"][1]["proto"], singles["plus_batch"]["parts"][1]["proto"])
    check_local_gradient(data, [r["local"] for r in runs], [r["default"] for r in runs])


def check_equals_one_process(ranks: list[dict], single: dict) -> None:
    for step, epoch in enumerate(EPOCHS):
        mean_total = sum(r["total"][step] for r in ranks) / WORLD
        torch.testing.assert_close(mean_total, single["total"][step], atol=1e-5, rtol=1e-5)
        # every component too (means over ranks); the pseudo-label count is global already
        for name, value in single["parts"][step].items():
            got = sum(r["parts"][step][name] for r in ranks) / WORLD
            torch.testing.assert_close(got, value, atol=1e-5, rtol=1e-5, msg=f"{name} @ {epoch}")
        if epoch >= 1:
            assert "graph" in single["parts"][step]
        labels = torch.cat([r["labels"][step] for r in ranks])
        assert torch.equal(labels, single["labels"][step])
        for name in FIELDS:
            rank_grads = torch.cat([r["grads"][step][name] for r in ranks])
            torch.testing.assert_close(
                rank_grads, WORLD * single["grads"][step][name], atol=1e-5, rtol=1e-4,
                msg=f"grad of {name} at epoch {epoch}",
            )
    # every rank holds the single process's queue: the last 6 gathered rows, in order
    for r in ranks:
        assert int(r["queue"]["filled"]) == int(single["queue"]["filled"]) == 6
        torch.testing.assert_close(r["queue"]["scores"], single["queue"]["scores"])


# ----------------------------------------------------------------------------- --gather_grad local


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.double(), dim=-1)


def ref_contrast_rank(z: torch.Tensor, videos: range, z_rev: torch.Tensor | None = None,
                      tau: float = 0.07) -> torch.Tensor:
    """One rank's L_ins (docs/method.md §3.1) or, with ``z_rev``, L_mot (§3.2), by loops: the mean
    over the queries of ``videos``, keys = every clip of the global batch ``z (B, n, C)``."""
    zn = _unit(z)
    big_b, n, _ = zn.shape
    losses = []
    for i in videos:
        for a in range(n):
            pos = neg = 0.0
            for j in range(big_b):
                for c in range(n):
                    e = torch.exp(zn[i, a] @ zn[j, c] / tau)
                    if j == i and c != a:
                        pos = pos + e
                    elif j != i:
                        neg = neg + e
            if z_rev is not None:
                for c in range(n):
                    neg = neg + torch.exp(zn[i, a] @ _unit(z_rev)[i, c] / tau)
            losses.append(-torch.log(pos / (pos + neg)))
    return torch.stack(losses).mean()


def ref_graph_rank(g: torch.Tensor, videos: range, target: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """One rank's L_ℓ of docs/method.md §3.5 by loops: rows ``videos`` of the global ``target``."""
    gn = _unit(g)
    big_b = gn.shape[0]
    total = 0.0
    for i in videos:
        logits = torch.stack([gn[i, 0] @ gn[j, 1] / tau for j in range(big_b)])
        log_p = logits - torch.logsumexp(logits, 0)
        for j in range(big_b):
            total = total - log_p[j] * target[i, j]
    return total / (len(videos) * big_b)


def ref_target(z_high: torch.Tensor, labels: torch.Tensor, thres: float = 0.05, tau: float = 0.07) -> torch.Tensor:
    """The global ``G`` of docs/method.md §3.5 (``B × B``), from G_ins and the pseudo-labels."""
    zn = _unit(z_high)
    g = torch.softmax(zn[:, 0] @ zn[:, 1].T / tau, dim=1)
    keep = ((g >= thres) & (labels[:, None] == labels[None, :])) | torch.eye(len(labels), dtype=torch.bool)
    g = g * keep
    return g / g.sum(1, keepdim=True)


def local_rank_grad(step: dict[str, torch.Tensor], field: str, rank: int, labels: torch.Tensor,
                    epoch: int) -> torch.Tensor:
    """∂(rank ``rank``'s weighted term of ``field``)/∂(its rows of ``field``), every other row
    of the global batch a constant: the gradient the reference's own-slice gather gives."""
    w = LossWeights()
    videos = range(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    x = step[field].double()
    own = x[videos.start:videos.stop].clone().requires_grad_(True)
    z = torch.cat([x[:videos.start], own, x[videos.stop:]])
    level = field.split("_")[1]
    if field == "proj_high":
        loss = w.ins * ref_contrast_rank(z, videos)
    elif field.startswith("proj_"):
        loss = getattr(w, f"mot_{level}") * ref_contrast_rank(z, videos, step[f"rev_{level}"])
    elif epoch >= 1:                                          # the graph term, from split = 1
        target = ref_target(step["proj_high"], labels)
        loss = w.graph * getattr(w, f"graph_{level}") * ref_graph_rank(z, videos, target)
    else:
        return torch.zeros_like(own)
    loss.backward()
    return own.grad


def check_local_gradient(data: list[dict[str, torch.Tensor]], local: list[dict], full: list[dict]) -> None:
    """--gather_grad local: same values as full; the inputs that are gathered get the brute-force
    own-rows gradient, the others the full-mode gradient (they reach their own rank's loss only)."""
    diffs: dict[str, float] = {}
    for step, epoch in enumerate(EPOCHS):
        for r in range(WORLD):
            torch.testing.assert_close(local[r]["total"][step], full[r]["total"][step], atol=1e-6, rtol=1e-6)
            assert torch.equal(local[r]["labels"][step], full[r]["labels"][step])
        labels = torch.cat([r["labels"][step] for r in full])
        for name in FIELDS:
            got = [local[r]["grads"][step][name] for r in range(WORLD)]
            if name not in GATHERED:
                for r in range(WORLD):
                    torch.testing.assert_close(got[r], full[r]["grads"][step][name], atol=1e-6, rtol=1e-5)
                continue
            for r in range(WORLD):
                expected = local_rank_grad(data[step], name, r, labels, epoch)
                torch.testing.assert_close(got[r].double(), expected, atol=1e-5, rtol=1e-4,
                                           msg=f"local grad of {name}, rank {r}, epoch {epoch}")
            g_local = torch.cat(got)
            g_full = torch.cat([full[r]["grads"][step][name] for r in range(WORLD)])
            if g_full.abs().max() > 0:
                rel = ((g_local - g_full).abs().max() / g_full.abs().max()).item()
                diffs[GATHERED[name] + "/" + name] = max(diffs.get(GATHERED[name] + "/" + name, 0.0), rel)
    print("\n--gather_grad local vs full, 2 processes x 2 videos: max |difference| of the input "
          "gradient as % of its largest entry (worst step):")
    for key, rel in sorted(diffs.items()):
        print(f"  {key:18s} {100 * rel:5.1f} %")
    # the reference's gradient leaves out the other rank's terms: a difference of the order of
    # the gradient itself, on every gathered term
    assert all(0.01 < rel < 10 and math.isfinite(rel) for rel in diffs.values()), diffs
    assert {key.split("/")[0] for key in diffs} == {"ins", "mot_mid", "mot_low", "graph"}
