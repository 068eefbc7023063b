#!/usr/bin/env bash
# One device call (branch mixfwd): SevenNet-0's conv forward (128x0e+64x1e+32x2e, mixed
# multiplicities) fused vs row kernels, after the GPU correctness tests of the same build.
#
# Run from the repository root on the GPU machine, with carry [".carry"]:
#   .carry/equikern       cargo build --release -p equikern-cli; cp <target>/release/equikern .carry/
#   .carry/conv_cuda_api  cargo test --release -p equikern --test conv_cuda_api --no-run
#                         (copy the printed executable); optional
#   .carry/conv_cuda      cargo test --release -p equikern-cuda --test conv_cuda --no-run; optional
# Writes under $OUT: tests.log, mixfwd.json, mixfwd.log.
# Expected: the tests pass (mixed-multiplicity forward fused, f64 ≤ 1e-12, f32 ≤ 1e-5, poisoned
# outputs); forward det (fused, 224 lanes per node) well under det-rows (2.46 ms per layer at
# 917 504 edges in session 5); byte floor ≈ 1.2 ms (x rows from L2) to 1.7 ms (from DRAM).
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
BIN=${BIN:-.carry/equikern}
GRAPHS=${GRAPHS:-diamond:16:3.2,protein:5.0}
VARIANTS=${VARIANTS:-det,det-rows,det-1g,pieces}
DIRS=${DIRS:-forward,backward}
REPS=${REPS:-30}
chmod +x .carry/* 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/tests.log"
for t in conv_cuda_api conv_cuda; do
  if [ -x ".carry/$t" ]; then
    echo "== $t" | tee -a "$OUT/tests.log"
    timeout 240 ".carry/$t" --test-threads 1 2>&1 | tail -40 | tee -a "$OUT/tests.log"
  fi
done
echo "== bench" | tee "$OUT/mixfwd.log"
timeout 300 "$BIN" bench --conv --backend cuda --suite benches/sevennet_suite.json \
  --only sevennet-0-conv --graphs "$GRAPHS" --dirs "$DIRS" --variants "$VARIANTS" \
  --reps "$REPS" --row-limit-s 5 --json "$OUT/mixfwd.json" 2>&1 | tee -a "$OUT/mixfwd.log"
