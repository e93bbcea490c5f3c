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
score queue included, over four steps (the queue is used, then wraps).
"""
from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from losses import MultiLevelObjective
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


def make_objective() -> MultiLevelObjective:
    # a queue_size that is not a multiple of the global batch (4): the queue still keeps exactly
    # the last 6 gathered rows, the same in both runs
    return MultiLevelObjective(split=1, queue_start=1, queue_size=6, cluster=K, num_clips=N_CLIPS)


def run_steps(data: list[dict[str, torch.Tensor]], rows: slice) -> dict:
    """Run the objective over the steps on ``rows`` of each step's data; totals, grads, labels."""
    objective = make_objective()
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
        record = run_steps(data, slice(rank * B_LOCAL, (rank + 1) * B_LOCAL))
        torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process() -> None:
    data = [make_step_data(seed, WORLD * B_LOCAL) for seed in range(len(EPOCHS))]
    with tempfile.TemporaryDirectory() as tmp:
        data_file = os.path.join(tmp, "data.pt")
        torch.save(data, data_file)
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), data_file, tmp), nprocs=WORLD, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(WORLD)]

    single = run_steps(data, slice(None))
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
