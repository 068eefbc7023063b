#!/usr/bin/env bash
# The resident CUDA SevenNet (equikern_model::cuda_model::CudaSevenNet) on the GPU machine:
# correctness first (test binaries of the same build), then `bench --model --backend cuda`
# (resident) with A/B runs of the generic path and of the cuBLAS-free GEMM kernel.
#
# Build here (no GPU needed), from the repository root:
#   cargo build --release -p equikern-cli
#   cargo test --release -p equikern-model --test cuda_model --test backends --no-run
#   cargo test --release -p equikern-cli --test model_cli --no-run
# then put the stripped binaries in .carry/resident/ as equikern, cuda_model, backends,
# model_cli (the test paths are printed by --no-run: target/release/deps/NAME-HASH), and run
# from the checkout's root with carry [".carry", "models"] (models/checkpoint_sevennet_0.pth
# for the tests that need it; tests/data/sevennet/ is tracked).
# Env: SYSTEMS (default si:4096,water:1029,si:13824,si:32768), REPS (10), SKIP (comma list of:
# tests, bench, ab), B (binary folder, default .carry/resident).
set -uo pipefail
B=${B:-.carry/resident}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
SYSTEMS=${SYSTEMS:-si:4096,water:1029,si:13824,si:32768}
REPS=${REPS:-10}
SKIP=${SKIP:-}
T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }
skip() { [[ ",$SKIP," == *",$1,"* ]]; }
export EQUIKERN_REPO=$PWD EQUIKERN_BIN=$PWD/$B/equikern XDG_RUNTIME_DIR=/tmp
export EQUIKERN_CACHE_DIR=${EQUIKERN_CACHE_DIR:-/tmp/equikern-cache}
CKPT=models/checkpoint_sevennet_0.pth

stage "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
ls /usr/local/cuda/lib64/libcublas.so* 2>/dev/null | head -3
ldconfig -p | grep -m3 libcublas || echo "libcublas not in the ld cache (the GEMM kernel is used then)"

if ! skip tests; then
  stage "cuda_model tests (resident vs sevenn float64, cpu f64, generic path; poisoned workspace)"
  timeout 300 "$B/cuda_model" --test-threads 1 --nocapture 2>&1 | tail -80 | tee "$OUT/cuda_model.log"
  stage "backends tests, cuda (the resident path through Evaluator::on_device)"
  timeout 300 "$B/backends" --test-threads 1 --nocapture cuda 2>&1 | tail -40 | tee "$OUT/backends.log"
  if [ -f "$B/model_cli" ]; then
    stage "model_cli tests (equikern eval --backend cuda)"
    timeout 300 "$B/model_cli" --test-threads 1 cuda 2>&1 | tail -20 | tee "$OUT/model_cli.log"
  fi
fi

if ! skip bench; then
  for dt in ${DTYPES:-f32 f64}; do
    stage "bench --model --backend cuda --dtype $dt (resident)"
    timeout 400 "$B/equikern" bench --model "$CKPT" --backend cuda --dtype $dt --systems "$SYSTEMS" \
      --reps "$REPS" --warmup 2 --json "$OUT/resident_$dt.json" 2>&1 | tail -12 | tee "$OUT/resident_$dt.log"
  done
fi

if ! skip ab; then
  stage "A/B: radial MLP always recomputed (EQUIKERN_MODEL_KEEP_W_BYTES=0), f32"
  EQUIKERN_MODEL_KEEP_W_BYTES=0 timeout 200 "$B/equikern" bench --model "$CKPT" --backend cuda \
    --dtype f32 --systems si:4096 --reps "$REPS" --warmup 2 2>&1 | tail -4
  stage "A/B: radial MLP hidden layers on cuBLAS + ek_act (EQUIKERN_MODEL_MLP=cublas), f32"
  EQUIKERN_MODEL_MLP=cublas timeout 200 "$B/equikern" bench --model "$CKPT" --backend cuda \
    --dtype f32 --systems si:4096 --reps "$REPS" --warmup 2 2>&1 | tail -4
  stage "A/B: GEMM kernel instead of cuBLAS (EQUIKERN_MODEL_GEMM=kernel), f32"
  EQUIKERN_MODEL_GEMM=kernel timeout 200 "$B/equikern" bench --model "$CKPT" --backend cuda \
    --dtype f32 --systems si:4096 --reps 3 --warmup 1 2>&1 | tail -4
  stage "A/B: generic DeviceBackend (EQUIKERN_MODEL_CUDA=generic), f32"
  EQUIKERN_MODEL_CUDA=generic timeout 200 "$B/equikern" bench --model "$CKPT" --backend cuda \
    --dtype f32 --systems si:4096 --reps 3 --warmup 1 2>&1 | tail -4
fi
stage "done"
