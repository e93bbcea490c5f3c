"""Benchmark one full pretraining step (docs/method.md §2–§4) and the objective's share of it.

A step is what ``engine/pretrain.py`` does per batch: renormalise the prototypes, forward the
``n + 1`` clips of ``--batch`` videos through the multi-level model (graph heads on), the whole
objective of docs/method.md §3 (every term incl. the graph constraint, Sinkhorn over a full score queue),
backward, and an Adam step (lr 1e-3, wd 1e-5, docs/method.md §4). Inputs are random clips (no data
loading: see ``bench_loader.py``).

Reported per variant: clips/s (``batch × (n+1)`` clips per step; median step, and best = fastest
step), ms/step (wall; process CPU time too), minor page faults per step (memory the allocator
gave back to the OS and got again: ``--keep_heap`` stops that on glibc), peak memory, and the
fraction of the step spent in the objective: steps with the objective replaced by a trivial sum
of every model output (the same model graph gets gradients) alternate with real steps in the same
run; ``(t_real − t_trivial) / t_real`` is the objective's forward + its share of the backward
(from the medians, and from the minima: on a shared machine the fastest step of each kind is the
least disturbed one). When the objective is a small part of a long step, that difference drowns
in the machine's noise, so the objective is also timed **alone** (forward + backward on the
model's outputs detached as leaves, the fastest of 3 per round) and divided by the fastest real
step: a lower bound of its share (the backward through the heads is not in it).

Peak memory: CUDA ``torch.cuda.max_memory_allocated`` over the variant's steps (reset when the
variant starts: parameters, Adam state, activations). CPU, two figures: the growth of the
process's peak RSS (``resource.getrusage(...).ru_maxrss``) over the first real step after the
model, optimizer and inputs were built (activations + gradients + Adam state + allocator slack;
only the first variant of a process sees a fresh peak), and a tensor estimate that does not
depend on the allocator: parameters × 4 (weights, gradients, Adam's two moments) + the distinct
storages autograd saves for backward (``saved_tensors_hooks``) in one real step.

Variants: ``--amp bf16`` (one autocast context, as train.py), ``--channels_last`` (weights and
input in ``channels_last_3d``: the layout train.py and the evaluation scripts use on every
device), ``--compile`` (``torch.compile`` of the model; the objective stays eager). ``--compare``
runs fp32 (contiguous), bf16, channels-last (fp32 and bf16) and compile (fp32, bf16, bf16 with
channels-last) one after another and prints a table with ratios vs fp32, plus each variant's
first-step loss vs fp32's (same initial weights, inputs and queue). On CPU the autocast and compile variants are skipped
with a message unless ``--force_variants`` (only to test the code paths); fp32 and channels-last
are compared on CPU too.

    python scripts/bench_step.py                                   # R3D-18, 16x112^2, batch 4
    python scripts/bench_step.py --width 0.25 --seq 16 --img_dim 32 --batch 4  # tiny CPU setting
    python scripts/bench_step.py --quick                           # a few seconds (make bench)
    python scripts/bench_step.py --threads 1 --keep_heap           # CPU without per-step faults
    python scripts/bench_step.py --compare --batch 32              # on a GPU
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.amp import autocast, make_scaler  # noqa: E402
from utils.runtime import resolve_device  # noqa: E402
from losses import LossWeights, MultiLevelObjective  # noqa: E402
from models import NETS, build_model  # noqa: E402
from models.output import MultiLevelOutput  # noqa: E402
from scripts.bench_common import (  # noqa: E402
    keep_heap, machine_line, minor_faults, print_table, sync,
)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Variant:
    """One way to run the step."""

    name: str
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False

    @property
    def cuda_only(self) -> bool:
        """bf16/fp16 autocast and torch.compile: measured on CUDA only (channels-last is
        train.py's layout on every device, so it is compared on CPU too)."""
        return self.amp != "off" or self.compile


COMPARE = {  # --variants key -> variant, in the order --compare runs them
    "fp32": Variant("fp32"),
    "bf16": Variant("bf16 autocast", amp="bf16"),
    "cl": Variant("channels_last_3d", channels_last=True),
    "bf16_cl": Variant("bf16 + channels_last_3d", amp="bf16", channels_last=True),
    "compile": Variant("torch.compile", compile=True),
    "bf16_compile": Variant("bf16 + torch.compile", amp="bf16", compile=True),
    "bf16_cl_compile": Variant("bf16 + channels_last_3d + torch.compile", amp="bf16",
                               channels_last=True, compile=True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default="r3d_18", choices=NETS, help="backbone (default r3d_18)")
    p.add_argument("--width", type=float, default=None,
                   help="backbone width multiplier (default 1)")
    p.add_argument("--batch", type=int, default=None, help="videos per step (default 4)")
    p.add_argument("--sample", type=int, default=2, help="local clips per video n (default 2)")
    p.add_argument("--seq", type=int, default=None, help="frames per clip T (default 16)")
    p.add_argument("--img_dim", type=int, default=None, help="clip side (default 112)")
    p.add_argument("--channel", type=int, default=128, help="head width (default 128)")
    p.add_argument("--cluster", type=int, default=None, help="prototypes K (default 1000)")
    p.add_argument("--queue_size", type=int, default=None, help="score-queue rows (default 1024)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps of each kind (real / trivial objective), alternating "
                        "(default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps of each kind first (default 1; compile variants get >= 2)")
    p.add_argument("--amp", default="off", choices=tuple(AMP_DTYPES),
                   help="autocast dtype (default off = fp32)")
    p.add_argument("--channels_last", action="store_true", help="channels_last_3d weights/input")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compare", action="store_true",
                   help="run fp32 / bf16 / channels-last / compile side by side (CPU: fp32 and channels-last)")
    p.add_argument("--variants", default=",".join(COMPARE),
                   help=f"with --compare: comma-separated subset of {','.join(COMPARE)} "
                        "(default all; fp32 is always run, as the reference)")
    p.add_argument("--force_variants", action="store_true",
                   help="run the CUDA variants on CPU too (tests the code paths only)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch default, all cores; 1 with --quick on CPU: "
                        "on a shared machine idle intra-op threads wake up slowly and small ops "
                        "wait for them)")
    p.add_argument("--keep_heap", action="store_true",
                   help="glibc: keep freed memory instead of returning it to the OS (no mmap, "
                        "no trim; see bench_common.keep_heap): removes the per-step page faults")
    p.add_argument("--quick", action="store_true",
                   help="tiny setting unless given explicitly: width 0.25, 8x32^2, batch 4, K 100, "
                        "queue 128, 2 steps, 1 CPU thread")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    full = {"width": 1.0, "batch": 4, "seq": 16, "img_dim": 112, "cluster": 1000,
            "queue_size": 1024, "steps": 3}
    quick = {"width": 0.25, "batch": 4, "seq": 8, "img_dim": 32, "cluster": 100,
             "queue_size": 128, "steps": 2}
    for key, value in full.items():  # flags given explicitly win over both
        if getattr(args, key) is None:
            setattr(args, key, quick[key] if args.quick else value)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(COMPARE))
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {','.join(COMPARE)}")
    if min(args.batch, args.steps, args.sample) < 1 or args.warmup < 0:
        p.error("--batch, --steps and --sample must be >= 1, --warmup >= 0")
    return args


# ------------------------------------------------------------------------------ the step
def trivial_objective(out: MultiLevelOutput) -> torch.Tensor:
    """A stand-in objective: the sum of the means of every model output, so that the whole model
    graph (heads, prototypes, backbone) receives gradients at negligible cost."""
    tensors = [out.prototype_scores]
    for group in (out.proj, out.proj_reversed, out.fine_local, out.fine_global, out.graph or {}):
        tensors.extend(group.values())
    return torch.stack([t.float().mean() for t in tensors]).sum()


class StepRunner:
    """Model, objective (full queue), Adam and inputs of one variant, and its training step."""

    def __init__(self, args: argparse.Namespace, variant: Variant, device: torch.device) -> None:
        self.device = device
        self.variant = variant
        self.dtype = AMP_DTYPES[variant.amp]
        torch.manual_seed(args.seed)
        self.model = build_model(net=args.net, width=args.width, channel=args.channel,
                                 cluster=args.cluster).to(device)
        if variant.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.raw = self.model
        self.forward: Callable = torch.compile(self.model) if variant.compile else self.model
        self.objective = MultiLevelObjective(
            LossWeights(), split=0, queue_start=0, queue_size=args.queue_size,
            cluster=args.cluster, num_clips=args.sample).to(device).train()
        g = torch.Generator().manual_seed(args.seed + 1)
        past = F.normalize(torch.randn(args.queue_size, args.sample, args.channel, generator=g),
                           dim=-1)
        protos = F.normalize(torch.randn(args.cluster, args.channel, generator=g), dim=1)
        self.objective.queue.push((past @ protos.T).to(device))  # a full queue from step 1
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, betas=(0.9, 0.999),
                                          weight_decay=1e-5)
        self.scaler = make_scaler(self.dtype, device)
        shape = (args.batch, args.sample + 1, 3, args.seq, args.img_dim, args.img_dim)
        # Noise with a per-clip contrast and per-clip colour offset, so that the clips' features
        # differ (pure noise pools to nearly the same feature for every clip).
        clips = (torch.randn(shape, generator=g) * torch.rand(*shape[:2], 1, 1, 1, 1, generator=g)
                 .add_(0.5) + torch.randn(*shape[:3], 1, 1, 1, generator=g))
        if variant.channels_last:  # (b, n+1, T, H, W, 3) storage: flatten(0, 1) is channels-last
            clips = clips.permute(0, 1, 3, 4, 5, 2).contiguous().permute(0, 1, 5, 2, 3, 4)
        self.clips = clips.to(device)
        self.clips_per_step = args.batch * (args.sample + 1)

    def step(self, real: bool) -> float:
        """One training step; returns the loss (a host sync, as train.py's one per step)."""
        self.raw.normalize_prototypes()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.dtype):
            out = self.forward(self.clips, with_graph=True)
            loss = self.objective(out, epoch=1).total if real else trivial_objective(out)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def detached_outputs(self) -> MultiLevelOutput:
        """The model's outputs for the inputs, as leaves that require grad (no model graph)."""
        with torch.no_grad(), autocast(self.device, self.dtype):
            out = self.forward(self.clips, with_graph=True)

        def leaf(t: torch.Tensor) -> torch.Tensor:
            return t.detach().clone().requires_grad_(True)

        return MultiLevelOutput(
            proj={k: leaf(v) for k, v in out.proj.items()},
            proj_reversed={k: leaf(v) for k, v in out.proj_reversed.items()},
            fine_local={k: leaf(v) for k, v in out.fine_local.items()},
            fine_global={k: leaf(v) for k, v in out.fine_global.items()},
            prototype_scores=leaf(out.prototype_scores),
            graph={k: leaf(v) for k, v in (out.graph or {}).items()},
        )

    def objective_alone(self, out: MultiLevelOutput) -> None:
        """Forward + backward of the objective only, on :meth:`detached_outputs`."""
        with autocast(self.device, self.dtype):
            loss = self.objective(out, epoch=1).total
        loss.backward()


def saved_tensor_bytes(runner: StepRunner) -> int:
    """Bytes of the distinct storages autograd saves for backward in one real step (the
    activations), parameters excluded: a load-independent activation-memory figure."""
    params = {p.untyped_storage().data_ptr() for p in runner.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        runner.step(real=True)
    return sum(seen.values())


def max_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(args: argparse.Namespace, variant: Variant, device: torch.device) -> dict[str, float]:
    """Build ``variant`` and time ``--steps`` real and trivial steps in alternation."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    runner = StepRunner(args, variant, device)
    rss_before = max_rss_bytes()
    first_loss = runner.step(real=True)  # the first real step, also the memory probe
    sync(device)
    rss_delta = max_rss_bytes() - rss_before
    param_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    # Parameters + gradients + Adam's two moments + the activations saved for backward.
    estimate = (4 * param_bytes + saved_tensor_bytes(runner)
                if device.type == "cpu" and not variant.compile else float("nan"))
    warmup = max(args.warmup, 2 if variant.compile else 0)
    for i in range(warmup):
        if i:
            runner.step(real=True)
        runner.step(real=False)
    sync(device)
    leaves = runner.detached_outputs()
    runner.objective_alone(leaves)
    times: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    faults: list[int] = []
    alone: list[float] = []
    for _ in range(args.steps):
        for real in (True, False):
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            start_faults = minor_faults()
            runner.step(real)
            sync(device)
            times[real].append(time.perf_counter() - start)
            cpu[real].append(time.process_time() - start_cpu)
            if real:
                faults.append(minor_faults() - start_faults)
        for _ in range(3):
            start = time.perf_counter()
            runner.objective_alone(leaves)
            sync(device)
            alone.append(time.perf_counter() - start)
    t_real, t_trivial = statistics.median(times[True]), statistics.median(times[False])
    m_real, m_trivial = min(times[True]), min(times[False])
    result = {
        "step_s": t_real, "step_min_s": m_real, "trivial_s": t_trivial, "trivial_min_s": m_trivial,
        "step_cpu_s": statistics.median(cpu[True]),
        "page_faults": statistics.median(faults),
        "clips_per_s": runner.clips_per_step / t_real,
        "clips_per_s_best": runner.clips_per_step / m_real,
        "objective_fraction": (t_real - t_trivial) / t_real,
        "objective_fraction_min": (m_real - m_trivial) / m_real,
        "objective_alone_s": min(alone),
        "objective_alone_fraction": min(alone) / m_real,
        "first_loss": first_loss,
        "peak_mem_bytes": (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                           else rss_delta),
        "tensor_estimate_bytes": estimate,
    }
    del runner
    return result


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick and device.type == "cpu":
        torch.set_num_threads(1)
    if args.keep_heap and not keep_heap():
        print("--keep_heap: not glibc, ignored")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.compare:
        variants = [v for key, v in COMPARE.items() if key == "fp32" or key in args.variants]
    else:
        name = "+".join([x for x, on in (("bf16" if args.amp == "bf16" else args.amp,
                                          args.amp != "off"),
                                         ("channels_last_3d", args.channels_last),
                                         ("torch.compile", args.compile)) if on]) or "fp32"
        variants = [Variant(name, amp=args.amp, channels_last=args.channels_last,
                            compile=args.compile)]
    if device.type == "cpu" and not args.force_variants:
        skipped = [v.name for v in variants if v.cuda_only]
        if skipped:
            print(f"CPU: skipping {', '.join(skipped)} (CUDA variants; --force_variants runs "
                  "them anyway, to test the code paths)")
        variants = [v for v in variants if not v.cuda_only]
        if not variants:
            variants = [Variant("fp32")]
    n1 = args.sample + 1
    print(machine_line(device))
    print(f"step: {args.net} width {args.width:g} | batch {args.batch} videos x {n1} clips x "
          f"{args.seq}x{args.img_dim}^2 | K {args.cluster} | queue {args.queue_size} (full) | all "
          f"terms incl. graph | Adam | {args.steps} timed steps of each kind, alternating, medians"
          + (" | --keep_heap" if args.keep_heap else ""))
    results = {v.name: measure(args, v, device) for v in variants}
    cuda = device.type == "cuda"
    memory = "peak CUDA allocated" if cuda else "RSS growth 1st step"
    base = results.get("fp32")
    rows = []
    for name, r in results.items():
        row = [name, f"{r['clips_per_s']:.2f}", f"{r['clips_per_s_best']:.2f}",
               f"{r['step_s'] * 1e3:.0f}", f"{r['step_cpu_s'] * 1e3:.0f}",
               f"{r['page_faults'] / 1e3:.0f}k",
               f"{r['trivial_s'] * 1e3:.0f}",
               f"{r['objective_fraction']:.1%} / {r['objective_fraction_min']:.1%}",
               f"{r['objective_alone_s'] * 1e3:.1f} ({r['objective_alone_fraction']:.1%})",
               f"{r['peak_mem_bytes'] / 2**20:.0f}"]
        if not cuda:
            row.append(f"{r['tensor_estimate_bytes'] / 2**20:.0f}")
        row.append(f"{r['first_loss']:.4f}")
        if base is not None and len(results) > 1:
            row += [f"{r['clips_per_s'] / base['clips_per_s']:.2f}x",
                    f"{abs(r['first_loss'] - base['first_loss']):.1e}"]
        rows.append(row)
    header = ["variant", "clips/s", "best", "ms/step", "CPU ms/step", "page faults",
              "ms trivial-obj",
              "objective share (median / min)", "ms objective alone (share)", f"MiB {memory}"]
    if not cuda:
        header.append("MiB tensors")
    header.append("loss step 1")
    if base is not None and len(results) > 1:
        header += ["vs fp32", "|loss - fp32|"]
    print()
    print_table(header, rows)
    if not cuda:
        print("memory on CPU: 'RSS growth' = growth of the process's peak RSS over the first "
              "real step (ru_maxrss; only the first variant of a process sees a fresh peak); "
              "'tensors' = parameters x 4 (weights, grads, Adam moments) + storages saved for "
              "backward")
    return results


if __name__ == "__main__":
    main()
