#!/usr/bin/env bash
# One device call for a model switch, the light form of h100_switch_ab.sh: SWITCH (an
# EQUIKERN_MODEL_* variable; default EQUIKERN_MODEL_LANES) A/B, 0 against 1 in the same
# binary, on SYS (default Si 4,096, water 1,029 and Si 32,768), two interleaved rounds; then
# the GPU tests with it on. Session 15 ran it as `bash benches/h100_ab.sh` (lanes, calls 3-4)
# and `SWITCH=EQUIKERN_MODEL_SIDE_MLP_BWD bash benches/h100_ab.sh` (call 6). Carry as
# h100_switch_ab.sh.
set -uo pipefail
source benches/device_prelude.sh
SWITCH=${SWITCH:-EQUIKERN_MODEL_LANES}
SYS=${SYS:-si:4096,water:1029,si:32768}
for round in 1 2; do
  for v in 0 1; do
    stage "$SWITCH=$v (round $round)"
    env "$SWITCH=$v" timeout 60 b/equikern bench --model "$CKPT" --backend cuda \
      --systems "$SYS" --reps 10 --warmup 2 --json "$OUT/aux/ms${round}_$v.json" 2>&1 | tail -4
  done
done 2>&1 | tee "$OUT/ab.log"
stage "GPU tests ($SWITCH=1)"
(export "$SWITCH=1"; TESTS_T=240 cuda_model_tests)
stage done
