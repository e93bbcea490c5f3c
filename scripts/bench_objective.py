"""Benchmark the multi-level objective (docs/method.md §3) against a per-sample loop baseline.

Forward + backward of the objective alone at the paper's scale (global batch 256 videos, n = 2
clips, K = 1000 prototypes, 128 channels, t = 8/4/2, a full 1024-row score queue, every term
including the graph constraint) on random features that require grad. The baseline computes the
same loss the way the reference code did: Python loops over the videos for the instance / motion
contrasts, the alignment and the graph term (explicit negative pools, ``exp``-sum probabilities),
one Sinkhorn call per clip. Both are checked to agree (loss and input gradients) before timing.

    python scripts/bench_objective.py            # paper scale
    python scripts/bench_objective.py --quick    # a few seconds (``make bench``)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from losses import LossWeights, MultiLevelObjective  # noqa: E402
from models.output import LEVELS, MultiLevelOutput  # noqa: E402

TIMES = {"low": 8, "mid": 4, "high": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true",
                   help="small size (batch 32, K 100, queue 128, 3 repeats, 1 CPU thread unless "
                        "--threads): a few seconds")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch", type=int, default=256, help="global batch in videos (default 256)")
    p.add_argument("--sample", type=int, default=2, help="local clips per video n (default 2)")
    p.add_argument("--cluster", type=int, default=1000, help="prototypes K (default 1000)")
    p.add_argument("--channel", type=int, default=128, help="feature width C (default 128)")
    p.add_argument("--queue_size", type=int, default=1024, help="score-queue rows (default 1024)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each (default 5)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch default; 1 is steadier on a shared machine, "
                        "where idle intra-op threads wake up slowly)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.cluster, args.queue_size, args.repeats = 32, 100, 128, 3
    return args


def make_inputs(
    b: int, n: int, c: int, k: int, device: torch.device, seed: int
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d: dict[str, torch.Tensor] = {}
    for lv in LEVELS:
        d[f"proj_{lv}"] = torch.randn(b, n, c, generator=g)
        d[f"fl_{lv}"] = torch.randn(b, n, TIMES[lv], c, generator=g)
        d[f"fg_{lv}"] = torch.randn(b, TIMES[lv], c, generator=g)
        d[f"graph_{lv}"] = torch.randn(b, n, c, generator=g)
    for lv in ("low", "mid"):
        d[f"rev_{lv}"] = torch.randn(b, n, c, generator=g)
    emb = F.normalize(torch.randn(b, n, c, generator=g), dim=-1)
    protos = F.normalize(torch.randn(k, c, generator=g), dim=1)
    d["scores"] = emb @ protos.T
    return {name: t.to(device).requires_grad_(True) for name, t in d.items()}


def as_output(d: dict[str, torch.Tensor]) -> MultiLevelOutput:
    return MultiLevelOutput(
        proj={lv: d[f"proj_{lv}"] for lv in LEVELS},
        proj_reversed={lv: d[f"rev_{lv}"] for lv in ("low", "mid")},
        fine_local={lv: d[f"fl_{lv}"] for lv in LEVELS},
        fine_global={lv: d[f"fg_{lv}"] for lv in LEVELS},
        prototype_scores=d["scores"],
        graph={lv: d[f"graph_{lv}"] for lv in LEVELS},
    )


# --------------------------------------------------------------------------- loop baseline
# Reference-code style (per-video loops); single process, same maths as losses/.


def loop_instance(
    z: torch.Tensor, tau: float, reversed_own: torch.Tensor | None = None
) -> torch.Tensor:
    """Instance (or, with ``reversed_own``, motion) contrast with one iteration per video."""
    b, n, c = z.shape
    zn = F.normalize(z, dim=-1)
    rn = F.normalize(reversed_own, dim=-1) if reversed_own is not None else None
    off_diag = 1.0 - torch.eye(n, device=z.device)
    losses = []
    for i in range(b):
        pool = [zn[:i].reshape(-1, c), zn[i + 1:].reshape(-1, c)]
        if rn is not None:
            pool.append(rn[i])
        negatives = torch.cat(pool, 0)
        pos = (torch.exp(zn[i] @ zn[i].T / tau) * off_diag).sum(1)
        neg = torch.exp(zn[i] @ negatives.T / tau).sum(1)
        losses.append(-torch.log(pos / (pos + neg)))
    return torch.cat(losses).mean()


def loop_alignment(fine_local: torch.Tensor, fine_global: torch.Tensor, tau: float) -> torch.Tensor:
    b, n, t, _ = fine_local.shape
    losses = []
    for v in range(b):
        pooled = [F.adaptive_avg_pool1d(fine_local[v, m].T[None], t // n)[0].T for m in range(n)]
        local = F.normalize(torch.cat(pooled, 0), dim=-1)
        glob = F.normalize(fine_global[v], dim=-1)
        logits = local @ glob.T / tau
        target = torch.arange(t, device=logits.device)
        losses.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
    return torch.stack(losses).mean()


@torch.no_grad()
def loop_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    q = torch.exp((scores - scores.max()) / eps).T
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdim=True) * k
        q /= q.sum(0, keepdim=True) * n
    return (q * n).T


def loop_graph(g_ins: torch.Tensor, labels: torch.Tensor, feats: dict[str, torch.Tensor],
               w: LossWeights, thres: float, tau: float) -> torch.Tensor:
    b = g_ins.shape[0]
    ins = g_ins.clone()
    diag = ins.diagonal().clone()
    ins[ins < thres] = 0
    ins[torch.arange(b), torch.arange(b)] = diag
    sem = torch.zeros_like(ins)
    for i in range(b):
        sem[i, torch.arange(b, device=ins.device)[labels == labels[i]]] = 1
    target = ins * sem
    target = target / target.sum(1, keepdim=True)
    total = 0.0
    for lv, lw in (("high", w.graph_high), ("mid", w.graph_mid), ("low", w.graph_low)):
        g0 = F.normalize(feats[lv][:, 0], dim=-1)
        g1 = F.normalize(feats[lv][:, 1], dim=-1)
        rows = [-(F.log_softmax(g0[i] @ g1.T / tau, 0) * target[i]).sum() for i in range(b)]
        total = total + lw * torch.stack(rows).sum() / (b * b)
    return total


def loop_objective(d: dict[str, torch.Tensor], queue_rows: torch.Tensor, w: LossWeights,
                   tau: float = 0.07, thres: float = 0.05, eps: float = 0.05, iters: int = 3,
                   temp: float = 0.1) -> torch.Tensor:
    zh = d["proj_high"]
    total = w.ins * loop_instance(zh, tau)
    zn = F.normalize(zh.detach(), dim=-1)
    g_ins = torch.softmax(zn[:, 0] @ zn[:, 1].T / tau, dim=1)
    total = total + w.mot_mid * loop_instance(d["proj_mid"], tau, d["rev_mid"])
    total = total + w.mot_low * loop_instance(d["proj_low"], tau, d["rev_low"])
    for lv in LEVELS:
        total = total + getattr(w, f"lg_{lv}") * loop_alignment(d[f"fl_{lv}"], d[f"fg_{lv}"], tau)
    scores = d["scores"]
    b, n, _ = scores.shape
    # the reference's queue: the batch is queued first, Sinkhorn runs on the whole (full) queue
    rows = max(queue_rows.shape[1], b)
    codes = torch.stack(
        [loop_sinkhorn(torch.cat([queue_rows[a], scores[:, a].detach()])[-rows:], eps, iters)[-b:]
         for a in range(n)], 1)
    log_p = F.log_softmax(scores / temp, dim=-1)
    proto = -0.5 * ((codes[:, 1] * log_p[:, 0]).sum(-1) + (codes[:, 0] * log_p[:, 1]).sum(-1))
    total = total + w.proto * proto.mean()
    labels = codes.sum(1).argmax(-1)
    graph = {lv: d[f"graph_{lv}"] for lv in LEVELS}
    return total + w.graph * loop_graph(g_ins, labels, graph, w, thres, tau)


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward(
    fn, inputs: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    for t in inputs.values():
        t.grad = None
    loss = fn()
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in inputs.items()}


def time_pair(fns: dict, inputs: dict[str, torch.Tensor], device: torch.device,
              repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds of each ``fn`` (forward + backward), interleaved so that
    both see the same background load; one untimed warm-up each."""
    for fn in fns.values():
        forward_backward(fn, inputs)
    sync(device)
    times = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            forward_backward(fn, inputs)
            sync(device)
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick and device.type == "cpu":
        torch.set_num_threads(1)
    if args.sample != 2:
        raise SystemExit("--sample: the loop baseline (like the reference) handles n = 2 only")
    b, n, k = args.batch, args.sample, args.cluster
    inputs = make_inputs(b, n, args.channel, k, device, args.seed)
    w = LossWeights()
    objective = MultiLevelObjective(w, split=0, queue_start=0, queue_size=args.queue_size,
                                    cluster=k, num_clips=n).to(device).eval()
    g = torch.Generator().manual_seed(args.seed + 1)
    past = F.normalize(torch.randn(args.queue_size, n, args.channel, generator=g), dim=-1)
    protos = F.normalize(torch.randn(k, args.channel, generator=g), dim=1)
    objective.queue.push((past @ protos.T).to(device))      # a full queue; eval(): kept fixed
    queue_rows = objective.queue.rows()

    def vectorised() -> torch.Tensor:
        return objective(as_output(inputs), epoch=1).total

    def baseline() -> torch.Tensor:
        return loop_objective(inputs, queue_rows, w)

    loss_v, grads_v = forward_backward(vectorised, inputs)
    grads_v = {name: gr.clone() for name, gr in grads_v.items()}
    loss_b, grads_b = forward_backward(baseline, inputs)
    diff_loss = (loss_v - loss_b).abs().item()
    diff_grad = max((grads_v[name] - grads_b[name]).abs().max().item() for name in inputs)
    print(f"device {device} | threads {torch.get_num_threads()} | global batch {b} | n {n} | "
          f"K {k} | C {args.channel} | t 8/4/2 | queue {args.queue_size} | all terms incl. graph")
    print(f"agreement: loss {loss_v.item():.6f} vs {loss_b.item():.6f}, max |diff| {diff_loss:.2e}; "
          f"input grads max |diff| {diff_grad:.2e}")
    if diff_loss > 1e-4 * max(1.0, abs(loss_b.item())) or diff_grad > 1e-4:
        raise SystemExit("the vectorised objective and the loop baseline disagree")

    times = time_pair({"vectorised": vectorised, "loop": baseline}, inputs, device, args.repeats)
    med = {name: {kind: statistics.median(v) for kind, v in t.items()} for name, t in times.items()}
    lo = {name: {kind: min(v) for kind, v in t.items()} for name, t in times.items()}
    for name, label in (("vectorised", "vectorised objective"), ("loop", "loop baseline       ")):
        print(f"{label}: wall median {med[name]['wall'] * 1e3:9.2f} ms (min "
              f"{lo[name]['wall'] * 1e3:.2f}) | process CPU median {med[name]['cpu'] * 1e3:9.2f} ms")
    ratio = med["loop"]["wall"] / med["vectorised"]["wall"]
    ratio_cpu = med["loop"]["cpu"] / med["vectorised"]["cpu"]
    print(f"speed-up            : {ratio:.1f}x wall (median of {args.repeats} interleaved repeats), "
          f"{lo['loop']['wall'] / lo['vectorised']['wall']:.1f}x (min), {ratio_cpu:.1f}x process CPU")
    return {"vectorised_s": med["vectorised"]["wall"], "loop_s": med["loop"]["wall"],
            "ratio": ratio, "ratio_cpu": ratio_cpu, "loss_diff": diff_loss, "grad_diff": diff_grad}


if __name__ == "__main__":
    main()
