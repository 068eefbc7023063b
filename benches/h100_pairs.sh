#!/usr/bin/env bash
# One device call for the radial row per edge pair (session 16): the CUDA neighbour list's
# pair order against the host's (neighbours_cuda), EQUIKERN_MODEL_PAIR_ROWS A/B with the GPU
# tests (h100_ab.sh), a profile at Si 4,096, then the side-by-side with both peers
# (h100_model.sh). Carry [".carry", ".peers", ".whl", "models/checkpoint_sevennet_0.pth"]
# with .carry/bins.tar.xz holding equikern, cuda_model and neighbours_cuda (stripped).
set -uo pipefail
source benches/device_prelude.sh
stage "neighbours_cuda"
timeout 120 b/neighbours_cuda --test-threads 1 --nocapture 2>&1 | grep -v "^\s*$" | tail -30 > "$OUT/test_neighbours_cuda.log"
grep -E "test result|panicked|FAILED" "$OUT/test_neighbours_cuda.log"
SWITCH=EQUIKERN_MODEL_PAIR_ROWS bash benches/h100_ab.sh > "$OUT/ab_session.log" 2>&1
grep -E "^si|^water|test result|worst|panicked|FAILED" "$OUT/ab_session.log" | head -40
stage "profile (Si 4,096)"
EQUIKERN_MODEL_PROFILE=1 timeout 60 b/equikern bench --model "$CKPT" --backend cuda \
  --systems si:4096 --reps 5 --warmup 1 > "$OUT/prof_4096.txt" 2>&1
head -24 "$OUT/prof_4096.txt"
stage "side by side"
SKIP=test OUT=$OUT/model bash benches/h100_model.sh > "$OUT/model.log" 2>&1
tail -30 "$OUT/model.log"
stage done
