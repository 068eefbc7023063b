#!/usr/bin/env bash
# A short device call: `ek_mlp_backward_tc` (EQUIKERN_MODEL_MLP_TC=1) against the default
# fused MLP backward, same binary, Si 4,096 and 32,768, two interleaved rounds; then the GPU
# test against sevenn float64 with it on. Carry [".carry", "models/checkpoint_sevennet_0.pth"].
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" b
tar -C b -xJf .carry/bins.tar.xz
export EQUIKERN_REPO=$PWD XDG_RUNTIME_DIR=/tmp
for round in 1 2; do
  for v in 0 1; do
    echo "-- EQUIKERN_MODEL_MLP_TC=$v (round $round)"
    EQUIKERN_MODEL_MLP_TC=$v timeout 40 b/equikern bench --model models/checkpoint_sevennet_0.pth \
      --backend cuda --systems si:4096,si:32768 --reps 10 --warmup 2 \
      --json "$OUT/tc${round}_$v.json" 2>&1 | grep "^si:"
  done
done
EQUIKERN_MODEL_MLP_TC=1 timeout 40 b/cuda_model --test-threads 1 --nocapture \
  resident_matches_sevenn_float64 2>&1 | grep -E "worst|test result|panicked"
