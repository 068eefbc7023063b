#!/usr/bin/env bash
# One device call (branch bwdlanes): SevenNet-0's conv backward (128x0e+64x1e+32x2e, mixed
# multiplicities) with balanced lane groups (det, 384 lanes per node) vs one lane per channel
# (det, 128 lanes, the default; det-lanes the groups), after the GPU correctness tests of the same build.
#
# Run from the repository root on the GPU machine, with carry [".carry"]:
#   .carry/equikern       cargo build --release -p equikern-cli; cp <target>/release/equikern .carry/
#   .carry/conv_cuda_api  cargo test --release -p equikern --test conv_cuda_api --no-run
#                         (copy the printed executable); optional
#   .carry/conv_cuda      cargo test --release -p equikern-cuda --test conv_cuda --no-run; optional
# Writes under $OUT: tests.log, bwdlanes.json, bwdlanes.log.
# Expected: the tests pass (f64 ≤ 1e-12, f32 ≤ 1e-5, poisoned outputs, bitwise reruns);
# (session 7 on the H100: det-lanes 10.90 ms vs det 6.41 at 917 504 edges — the groups lose
# although the cost model's per-edge estimate drops 795 -> 379, CONV.md; so one lane per
# channel stays the default).
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
BIN=${BIN:-.carry/equikern}
GRAPHS=${GRAPHS:-diamond:16:3.2,diamond:8:3.2}
VARIANTS=${VARIANTS:-det,det-lanes,pieces}
DIRS=${DIRS:-backward}
REPS=${REPS:-30}
chmod +x .carry/* 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/tests.log"
for t in conv_cuda_api conv_cuda; do
  if [ -x ".carry/$t" ]; then
    echo "== $t" | tee -a "$OUT/tests.log"
    timeout 240 ".carry/$t" --test-threads 1 2>&1 | tail -40 | tee -a "$OUT/tests.log"
  fi
done
echo "== bench" | tee "$OUT/bwdlanes.log"
timeout 300 "$BIN" bench --conv --backend cuda --suite benches/sevennet_suite.json \
  --only sevennet-0-conv --graphs "$GRAPHS" --dirs "$DIRS" --variants "$VARIANTS" \
  --reps "$REPS" --row-limit-s 5 --json "$OUT/bwdlanes.json" 2>&1 | tee -a "$OUT/bwdlanes.log"
