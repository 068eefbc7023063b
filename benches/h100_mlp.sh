#!/usr/bin/env bash
# The fused radial MLP (ek_mlp_hidden / ek_mlp_hidden_backward) on the GPU machine: the
# resident GPU tests, then per-kernel profiles and per-step times, fused (register backward),
# fused2 (two-pass backward, ek_mlp_hidden_backward2) and the cuBLAS + ek_act path
# (EQUIKERN_MODEL_MLP=cublas), same binary, same machine.
#
# Build here (no GPU needed), from the repository root:
#   cargo build --release -p equikern-cli
#   cargo test --release -p equikern-model --test cuda_model --no-run
# then put the stripped binaries in .carry/resident/ as equikern and cuda_model (the test's
# path is printed by --no-run: target/release/deps/cuda_model-HASH), and run from the
# checkout's root with carry [".carry", "models"].
# Env: SYSTEMS (default si:32768,si:4096), REPS (5), B (binary folder, default .carry/resident).
set -uo pipefail
B=${B:-.carry/resident}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
SYSTEMS=${SYSTEMS:-si:32768,si:4096}
REPS=${REPS:-5}
T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }
export EQUIKERN_REPO=$PWD XDG_RUNTIME_DIR=/tmp
export EQUIKERN_CACHE_DIR=${EQUIKERN_CACHE_DIR:-/tmp/equikern-cache}
CKPT=models/checkpoint_sevennet_0.pth
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"

stage "cuda_model tests (fused in both memory modes and cuBLAS MLP vs the CPU f64 model)"
timeout 300 "$B/cuda_model" --test-threads 1 --nocapture 2>&1 | tail -60 | tee "$OUT/mlp_cuda_model.log"

for mode in fused fused2 cublas; do
  stage "per-kernel profile, MLP $mode, f32 (EQUIKERN_MODEL_PROFILE=1: waits after every call)"
  EQUIKERN_MODEL_MLP=$mode EQUIKERN_MODEL_PROFILE=1 timeout 200 "$B/equikern" bench --model "$CKPT" \
    --backend cuda --dtype f32 --systems si:32768 --reps 2 --warmup 1 2>&1 \
    | grep -E "ek_mlp|ek_act|gemm m|PROFILE|si:|resident" | head -40 | tee "$OUT/mlp_profile_$mode.log"
done
for dt in f32 f64; do
  for mode in fused fused2 cublas; do
    stage "step times, MLP $mode, $dt (no profiling)"
    EQUIKERN_MODEL_MLP=$mode timeout 300 "$B/equikern" bench --model "$CKPT" --backend cuda \
      --dtype $dt --systems "$SYSTEMS" --reps "$REPS" --warmup 2 \
      --json "$OUT/mlp_${mode}_$dt.json" 2>&1 | tail -6 | tee "$OUT/mlp_${mode}_$dt.log"
  done
done
stage "done"
