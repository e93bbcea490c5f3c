#!/usr/bin/env bash
# Kinetics-400 pretraining on SLURM, one node or several (docs/method.md §4 recipe: R3D-18, 16x112x112,
# global batch 256 = 64 per GPU x 4 GPUs, Adam 1e-3, 100 epochs, lr x0.1 at 70, graph from 20).
#
#   sbatch scripts/slurm/pretrain_k400.sh                       # 1 node x 4 GPUs (the paper's setup)
#   sbatch --nodes 2 scripts/slurm/pretrain_k400.sh             # 2 nodes x 4 GPUs, same global batch
#   CSV=/data/k400/train.csv OUT=runs/k400 GPUS_PER_NODE=8 sbatch --gpus-per-node 8 scripts/slurm/pretrain_k400.sh
#
# One torchrun per node (srun --ntasks-per-node 1); torchrun starts one train.py per GPU and joins
# the nodes through a c10d rendezvous on the first node. Recovery, without anyone watching:
#   - time limit: --signal sends SIGUSR1 to this script 3 minutes before it; the script sends
#     SIGTERM to the job's steps (scancel --signal=TERM): every train.py finishes its step, rank 0
#     writes checkpoint_last.pth (inside the epoch), all exit (status 75, "requeue me"), torchrun
#     waiting up to --shutdown_timeout for them, and the script requeues the job (scontrol requeue);
#   - preemption with a notice (a SIGTERM or SIGUSR1 that reaches train.py or this script first):
#     the same; a preemption that kills at once loses what a kill loses (below);
#   - a crashed worker: torchrun restarts all workers (--max-restarts), train.py continues from
#     checkpoint_last.pth (--resume auto);
#   - a kill without warning (node failure): checkpoint_last.pth is at most --checkpoint_minutes
#     (15) old, and the requeued job continues from it.
# The requeued job runs this same script: --resume auto continues with the next batch.
#SBATCH --job-name=mlv-k400
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=40
#SBATCH --mem=0
#SBATCH --time=72:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@180
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

set -euo pipefail

CSV=${CSV:-data/kinetics400/kinetics400_train.csv}        # rows: /abs/path/to/frames,num_frames
OUT=${OUT:-runs/k400_r3d18}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}             # the paper's 64 x 4
WORKERS=${WORKERS:-8}                         # DataLoader workers per GPU
PYTHON=${PYTHON:-.venv/bin/python}
PORT=${PORT:-29500}

NNODES=${SLURM_NNODES:-1}
WORLD=$((NNODES * GPUS_PER_NODE))
if (( GLOBAL_BATCH % WORLD != 0 )); then
  echo "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of $WORLD GPUs" >&2; exit 1
fi
HEAD=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" | head -n 1)

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# Fail fast instead of hanging when a rank dies (also set by train.py; listed for clarity).
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1

echo "$(date) job ${SLURM_JOB_ID:-local} restart ${SLURM_RESTART_COUNT:-0}: $NNODES node(s) x $GPUS_PER_NODE GPU(s), head $HEAD"

notice="" srun_pid=""
on_notice() {  # the time limit is near, or the job is being preempted: checkpoint, then requeue
  notice=$1
  echo "$(date) $notice: asking train.py to checkpoint and stop"
  # SIGTERM to every process of the job's steps, not to this script and not through srun (srun
  # turns a SIGTERM of its own into SIGKILL of its tasks). train.py finishes its step, writes
  # checkpoint_last.pth and exits 75; torchrun waits --shutdown_timeout seconds for that.
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    scancel --signal=TERM "$SLURM_JOB_ID" || true
  elif [[ -n "$srun_pid" ]]; then
    kill -TERM "$srun_pid" 2>/dev/null || true
  fi
}
trap 'on_notice SIGUSR1' USR1
trap 'on_notice SIGTERM' TERM

srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" \
  --rdzv_id="${SLURM_JOB_ID:-mlv}" --rdzv_backend=c10d --rdzv_endpoint="$HEAD:$PORT" \
  --max-restarts=3 --shutdown_timeout=150 \
  train.py \
    --csv_file "$CSV" --output_dir "$OUT" --resume auto \
    --net r3d_18 --seq 16 --sample 2 --img_dim 112 --rate 3.0 \
    --train_batch $((GLOBAL_BATCH / WORLD)) --workers "$WORKERS" \
    --cluster 1000 --epoch 100 --lr_decay 70 --split 20 --thres 0.05 \
    --lr 1e-3 --wd 1e-5 --channel 128 --amp auto --save_every 10 --dist_timeout 1800 \
    --checkpoint_minutes 15 \
    "$@" &
srun_pid=$!
status=0
wait "$srun_pid" || status=$?
while kill -0 "$srun_pid" 2>/dev/null; do  # a trap interrupted wait: wait for the checkpoint
  status=0
  wait "$srun_pid" || status=$?
done
if [[ -n "$notice" && ! -f "$OUT/metrics.json" ]]; then  # metrics.json: the run finished anyway
  echo "$(date) stopped after $notice (status $status): requeueing job ${SLURM_JOB_ID:-local}"
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    scontrol requeue "$SLURM_JOB_ID" || true  # already requeued by a preemption: nothing to do
  fi
  exit 0
fi
exit "$status"
