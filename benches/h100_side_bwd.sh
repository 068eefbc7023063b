#!/usr/bin/env bash
# Session 15: EQUIKERN_MODEL_SIDE_MLP_BWD (with the default lanes: each layer's radial MLP
# backward on the side stream, beside sc_t, lin1_t and the next layer's gate backward and
# lin2ᵀ) A/B, 0 against 1 in the same binary, Si 4,096, water 1,029 and Si 32,768, two
# interleaved rounds; the GPU tests with it on (`lanes_match_one_lane` against one lane).
# Carry as h100_switch_ab.sh.
set -uo pipefail
source benches/device_prelude.sh
SYS=${SYS:-si:4096,water:1029,si:32768}
for round in 1 2; do
  for v in 0 1; do
    stage "EQUIKERN_MODEL_SIDE_MLP_BWD=$v (round $round)"
    EQUIKERN_MODEL_SIDE_MLP_BWD=$v timeout 60 b/equikern bench --model "$CKPT" --backend cuda \
      --systems "$SYS" --reps 10 --warmup 2 --json "$OUT/aux/ms${round}_$v.json" 2>&1 | tail -4
  done
done 2>&1 | tee "$OUT/ab.log"
stage "GPU tests (EQUIKERN_MODEL_SIDE_MLP_BWD=1)"
EQUIKERN_MODEL_SIDE_MLP_BWD=1 timeout 240 b/cuda_model --test-threads 1 --nocapture 2>&1 \
  | grep -v "^\s*$" | grep -v "^\s*\(Si\|H\|C\|N\|O\)[0-9]* " > "$OUT/test_cuda_model.log"
grep -E "worst|test result|panicked|step [0-9]:|fused with the radial|FAILED|failures|f32 energy" "$OUT/test_cuda_model.log" | head -40
stage done
