#!/usr/bin/env bash
# Pretraining on all GPUs of one machine with torchrun (no SLURM).
#
#   scripts/pretrain_torchrun.sh k400            # Kinetics-400 recipe (docs/method.md §4)
#   scripts/pretrain_torchrun.sh ucf101          # UCF101 recipe
#   NGPU=2 CSV=my.csv OUT=runs/x scripts/pretrain_torchrun.sh ucf101 --epoch 10   # extra flags last
#
# --max-restarts 3 + --resume auto: if a worker crashes, torchrun restarts all workers and they
# continue from checkpoint_last.pth, written at least every --checkpoint_minutes (15) inside an
# epoch. Rerunning the script after the machine went down does the same; SIGTERM to torchrun makes
# train.py checkpoint after its current step and stop (train.py exits 75; torchrun reports the
# signal as a failure).
set -euo pipefail

RECIPE=${1:-k400}
shift || true
NGPU=${NGPU:-$( (nvidia-smi -L 2>/dev/null || true) | grep -c "^GPU" || true)}
NGPU=$(( NGPU > 0 ? NGPU : 1 ))
PYTHON=${PYTHON:-.venv/bin/python}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}             # the paper's 64 per GPU x 4 GPUs

case "$RECIPE" in
  k400)   CSV=${CSV:-data/kinetics400/kinetics400_train.csv}; OUT=${OUT:-runs/k400_r3d18}
          RECIPE_FLAGS=(--cluster 1000 --epoch 100 --lr_decay 70 --split 20) ;;
  ucf101) CSV=${CSV:-data/ucf101/ucf101_pretrain_split1.csv}; OUT=${OUT:-runs/ucf101_r3d18}
          RECIPE_FLAGS=(--cluster 200 --epoch 300 --lr_decay 200 --split 50) ;;
  *) echo "usage: $0 k400|ucf101 [extra train.py flags]" >&2; exit 2 ;;
esac

if (( GLOBAL_BATCH % NGPU != 0 )); then
  echo "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of NGPU=$NGPU" >&2; exit 1
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" --max-restarts=3 \
  train.py --csv_file "$CSV" --output_dir "$OUT" --resume auto \
    --train_batch $((GLOBAL_BATCH / NGPU)) --workers 8 --thres 0.05 "${RECIPE_FLAGS[@]}" "$@"
