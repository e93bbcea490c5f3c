#!/usr/bin/env bash
# Every GPU check in one bounded command (docs/performance.md, "On a GPU").
#
#   bash scripts/gpu_check.sh [STAGE ...]     # default: env tests step compile loader train
#
# Stages (each bounded by `timeout`; a failing stage is reported and the next one runs):
#   env     GPU, driver, python and the packages the project imports
#   tests   tests/test_cuda.py and the CUDA test of tests/test_models.py
#   step    bench_step.py --compare: R3D-18, 16x112^2, batch 32, fp32 / bf16 / channels-last /
#           both (the CUDA defaults of train.py are chosen from this table and the next)
#   compile the same step under torch.compile: fp32, bf16, bf16 + channels-last (fp32 again as
#           the baseline of this run)
#   loader  bench_loader.py --no-profile --quick: the pipelines, and the --gpu_augment colour
#           step timed on the GPU (host->device copy included)
#   train   a 2-epoch train.py run on 400 synthetic 64^2 videos with the CUDA defaults and
#           --gpu_augment, then a resume to 3 epochs (NCCL/DDP/SyncBatchNorm need 2 GPUs: a
#           machine with several runs this stage with --multiprocessing-distributed added)
#   demo    make demo's --setting gpu (not in the default list: it needs its own call)
#
# TRAIN_FLAGS adds flags to the train stage (e.g. --multiprocessing-distributed on several GPUs).
# Output: $OUT (the device tool's folder) or ./runs/gpu_check: gpu_check.log with everything,
# summary.txt with one line per stage, the train and demo metrics. The default stages are sized
# to end in under 10 minutes on one H200 even if every stage ran to its timeout
# (20 + 100 + 120 + 180 + 60 + 100 s); run it with the device tool's timeout_s 600.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIR=${OUT:-runs/gpu_check}
mkdir -p "$DIR"
LOG=$DIR/gpu_check.log
SUMMARY=$DIR/summary.txt
: >"$SUMMARY"
export PYTHONUNBUFFERED=1
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env tests step compile loader train)

stage_env() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$PY" - <<'EOF'
import importlib, platform, torch, torchvision
print("python", platform.python_version(), "torch", torch.__version__, "torchvision",
      torchvision.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
for name in ("numpy", "pandas", "PIL", "tqdm", "tensorboard", "matplotlib", "av", "pytest"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError as err:
        print(name, "MISSING:", err)
EOF
}

stage_tests() {
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    "tests/test_models.py::test_cuda_bf16_forward_backward"
}

stage_step() {
  "$PY" scripts/bench_step.py --compare --variants bf16,cl,bf16_cl --batch 32 --steps 5
}

stage_compile() {  # one run per variant: a compile that overruns the limit loses only its row
  local variant rc=0
  for variant in bf16_cl_compile compile bf16_compile; do
    "$PY" scripts/bench_step.py --compare --variants "$variant" --batch 32 --steps 5 || rc=1
  done
  return $rc
}

stage_loader() {
  "$PY" scripts/bench_loader.py --no-profile --quick
}

stage_train() {
  local data=$DIR/data out=$DIR/train
  "$PY" scripts/make_synthetic.py --out "$data" --num_videos 400 --frames 48 --size 64 &&
  local argv=(train.py --csv_file "$data/pretrain.csv" --seq 16 --img_dim 64 --width 0.5
              --channel 128 --cluster 64 --train_batch 64 --split 1 --queue_start 1
              --queue_size 256 --workers 8 --gpu_augment --output_dir "$out" --log_every 2
              ${TRAIN_FLAGS:-}) &&
  "$PY" "${argv[@]}" --epoch 2 &&
  "$PY" "${argv[@]}" --epoch 3 &&
  cp "$out/metrics.json" "$DIR/train_metrics.json"
}

stage_demo() {
  "$PY" scripts/demo.py --setting gpu --output_dir "$DIR/demo" --data_dir "$DIR/demo_data" &&
  cp "$DIR/demo/report.md" "$DIR/demo_report.md" && cp "$DIR/demo/metrics.json" "$DIR/demo_metrics.json"
}

declare -A LIMIT=([env]=20 [tests]=100 [step]=120 [compile]=180 [loader]=60 [train]=100
                  [demo]=560)
for stage in "${STAGES[@]}"; do
  if [ -z "${LIMIT[$stage]:-}" ]; then
    echo "unknown stage '$stage' (env tests step compile loader train demo)" | tee -a "$SUMMARY"; exit 2
  fi
  echo "=== $stage (limit ${LIMIT[$stage]} s)" | tee -a "$LOG"
  start=$SECONDS
  export -f "stage_$stage"; export PY DIR
  timeout --kill-after=10 "${LIMIT[$stage]}" bash -c "stage_$stage" >>"$LOG" 2>&1
  rc=$?
  line="$stage: rc=$rc ($((SECONDS - start)) s)$([ $rc -eq 124 ] && echo ', timed out')"
  echo "$line" | tee -a "$SUMMARY" "$LOG"
done
