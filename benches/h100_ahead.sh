#!/usr/bin/env bash
# Session 17's second device call: the recomputation two layers ahead in two `w` buffers
# (EQUIKERN_MODEL_RECOMPUTE_AHEAD) and the forward's radial network started ahead
# (EQUIKERN_MODEL_RADIAL_AHEAD), A/B in one binary (both on, each off, both off) on Si 4,096,
# water 1,029 and Si 32,768, two interleaved rounds; the GPU tests; a profile at Si 4,096;
# then the side-by-side with both peers (h100_model.sh). Everything under $OUT/work, packed
# as one results.tgz. Carry [".carry", ".peers", ".whl", "models/checkpoint_sevennet_0.pth"],
# .carry/bins.tar.xz holding equikern and cuda_model (stripped). Short form (little device
# time left): SIDE=0 skips the side-by-side, TEST_FILTER picks the GPU tests (a name part).
set -uo pipefail
SIDE=${SIDE:-1}
TEST_FILTER=${TEST_FILTER:-}
FINAL=$OUT
OUT=$FINAL/work
source benches/device_prelude.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
stage "A/B (two rounds)"
for round in 1 2; do
  for v in base EQUIKERN_MODEL_RECOMPUTE_AHEAD=0 EQUIKERN_MODEL_RADIAL_AHEAD=0 both_off; do
    case $v in
      base) e=() ;;
      both_off) e=(EQUIKERN_MODEL_RECOMPUTE_AHEAD=0 EQUIKERN_MODEL_RADIAL_AHEAD=0) ;;
      *) e=("$v") ;;
    esac
    label=${v%%=*}; label=${label#EQUIKERN_MODEL_}
    echo "-- $v (round $round)"
    env "${e[@]}" timeout 90 b/equikern bench --model "$CKPT" --backend cuda \
      --systems si:4096,water:1029,si:32768 --reps 10 --warmup 2 --json "$OUT/aux/ab${round}_$label.json" 2>&1 | tail -4
  done
done 2>&1 | tee "$OUT/ab.log" | grep -E "^--|^si|^water"
stage "GPU tests"
# shellcheck disable=SC2086 # (filters: none, one or several words)
cuda_model_tests $TEST_FILTER
if [ "$SIDE" = 1 ]; then
  stage "side by side"
  SKIP=test OUT=$OUT/model bash benches/h100_model.sh > "$OUT/model.log" 2>&1
  tail -12 "$OUT/model.log"
fi
stage done
tar -C "$FINAL" -czf "$FINAL/results.tgz" work && rm -rf "$FINAL/work"
