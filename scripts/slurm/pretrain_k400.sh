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
#   - a crashed worker: torchrun restarts all workers (--max-restarts), train.py continues from
#     checkpoint_last.pth (--resume auto), losing at most the epoch in progress;
#   - preemption / node failure / time limit: --requeue puts the job back in the queue, and the
#     same command resumes the same way (resubmitting by hand works too).
#SBATCH --job-name=mlv-k400
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=40
#SBATCH --mem=0
#SBATCH --time=72:00:00
#SBATCH --requeue
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

srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" \
  --rdzv_id="${SLURM_JOB_ID:-mlv}" --rdzv_backend=c10d --rdzv_endpoint="$HEAD:$PORT" \
  --max-restarts=3 \
  train.py \
    --csv_file "$CSV" --output_dir "$OUT" --resume auto \
    --net r3d_18 --seq 16 --sample 2 --img_dim 112 --rate 3.0 \
    --train_batch $((GLOBAL_BATCH / WORLD)) --workers "$WORKERS" \
    --cluster 1000 --epoch 100 --lr_decay 70 --split 20 --thres 0.05 \
    --lr 1e-3 --wd 1e-5 --channel 128 --amp auto --save_every 10 --dist_timeout 1800 \
    "$@"
