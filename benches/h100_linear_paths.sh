#!/usr/bin/env bash
# One device call: the e3nn Linears' l > 0 paths by `ek_linear_path<dim>` (opt-in,
# EQUIKERN_MODEL_LINEAR_PATHS=1) against the default `W ⊗ I_dim` cuBLAS products, and with them
# the recomputed layers' last hidden activations kept (opt-in, EQUIKERN_MODEL_KEEP_H=1); same
# binary, Si 4,096 and 32,768 atoms, two interleaved rounds (JSON per round and variant in aux/); the build's GPU test against sevenn
# float64 with the paths on; the per-kernel profile at 32,768 with them on; the resident
# modes test (paths on and off per mode; SKIP_MODES=1 leaves it out). Run from the repository root with carry
# [".carry", "models"], .carry/bins.tar.xz holding the stripped `equikern` (cargo build
# --release -p equikern-cli --features cuda) and `cuda_model` (cargo test --release -p
# equikern-model --features cuda --test cuda_model --no-run). About 2 minutes.
set -uo pipefail
OUT=${OUT:-$PWD/out}
T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }
mkdir -p b "$OUT/aux"
tar -C b -xJf .carry/bins.tar.xz
export EQUIKERN_REPO=$PWD XDG_RUNTIME_DIR=/tmp
CKPT=models/checkpoint_sevennet_0.pth
ab() {
  for v in "0 0" "1 0" "1 1"; do
    set -- "$1" $v
    echo "-- EQUIKERN_MODEL_LINEAR_PATHS=$2 EQUIKERN_MODEL_KEEP_H=$3 (round $1)"
    EQUIKERN_MODEL_LINEAR_PATHS=$2 EQUIKERN_MODEL_KEEP_H=$3 timeout 50 b/equikern bench \
      --model "$CKPT" --backend cuda --systems si:4096,si:32768 --reps 10 --warmup 2 \
      --json "$OUT/aux/ab$1_$2$3.json" 2>&1 | tail -8
  done
}
stage "A/B round 1, ms per step"
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; ab 1; } 2>&1 | tee "$OUT/ab1.log"
stage "GPU test vs sevenn float64, paths by kernel, hidden kept"
EQUIKERN_MODEL_LINEAR_PATHS=1 EQUIKERN_MODEL_KEEP_H=1 timeout 60 b/cuda_model --test-threads 1 --nocapture \
  resident_matches_sevenn_float64 2>&1 | grep -v "^\s*$" | tail -40 | tee "$OUT/test_sevenn.log"
stage "profile at 32,768, paths by kernel, hidden kept"
EQUIKERN_MODEL_LINEAR_PATHS=1 EQUIKERN_MODEL_KEEP_H=1 EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" \
  --backend cuda --systems si:32768 --reps 4 --warmup 1 2>&1 | head -70 > "$OUT/prof_32768.txt"
grep -i "linear\|strided\|per step" "$OUT/prof_32768.txt" | head -30
stage "A/B round 2"
ab 2 2>&1 | tee "$OUT/ab2.log"
[ -n "${SKIP_MODES:-}" ] || {
stage "GPU test: the resident modes with the paths on and off (7net-0, f64 and f32)"
timeout 120 b/cuda_model --test-threads 1 --nocapture resident_matches_cpu_f64_on_7net0 2>&1 \
  | grep -v "^\s*$" | grep -v "keep=" | tail -40 | tee "$OUT/test_modes.log"
}
stage "done"
