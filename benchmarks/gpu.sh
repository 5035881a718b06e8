#!/usr/bin/env bash
# Issue 12's GPU checks, prepared as one call of a lent GPU machine (its image has jax with CUDA,
# flax, optax and chex; nothing can be fetched there). Once, on the development machine:
#
#   mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/ && echo /.data/ >> .git/info/exclude
#
# then run `bash benchmarks/gpu.sh` there with `.data` carried, and a limit of about 9 minutes.
# Each step has its own time limit, so a slow one leaves the others their figures. Everything
# lands in $OUT (default /tmp/gpu_checks): the three result files and a log per step.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export SUPSUP_DATA_DIR="$PWD/.data/fashion-mnist"

step() {  # step NAME SECONDS COMMAND...: run it under its limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%T), limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: exit $? after ${SECONDS}s in all"
  tail -n 25 "$OUT/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$PY" -c \
  'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'
} >"$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# One-Shot, the superposition and Binary over the bank with the plain-JAX twin (the only variant
# on a GPU), against float32 stacked masks, up to the paper's 2500 tasks.
step oneshot 240 "$PY" benchmarks/oneshot.py --models fc1024,lenet300_100 --tasks 100,1000,2500 \
  --variants xla --max-baseline-gib 30 --max-exhaustive-k 100 --max-per-example-k 10 \
  --repeats 7 --out "$OUT/oneshot_gpu.json"
step train_throughput 90 "$PY" benchmarks/train_throughput.py --out "$OUT/train_throughput_gpu.json"
# The FC 1024-1024 protocol's wall time per task, and a 250-task LeNet run's memory.
step end_to_end 180 "$PY" benchmarks/end_to_end.py --tasks 3 --out "$OUT/end_to_end_gpu.json"
