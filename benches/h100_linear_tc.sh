#!/usr/bin/env bash
# Session 14's second call: `ek_linear_tc` (EQUIKERN_MODEL_LINEAR_TC) A/B, 0 against 1 in the
# same binary, Si 4,096 and 32,768, two interleaved rounds; the profiles with it on at both
# sizes (its per-call times next to the products it replaces); Nsight Compute on its
# launches at 32,768; the GPU tests with it on. The side-by-side with the peers is
# benches/h100_switch_ab.sh's. Carry as h100_switch_ab.sh.
set -uo pipefail
source benches/device_prelude.sh
for round in 1 2; do
  for v in 0 1; do
    stage "EQUIKERN_MODEL_LINEAR_TC=$v (round $round)"
    EQUIKERN_MODEL_LINEAR_TC=$v timeout 50 b/equikern bench --model "$CKPT" --backend cuda \
      --systems si:4096,si:32768 --reps 10 --warmup 2 --json "$OUT/aux/ms${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/ab.log"
stage "GPU tests (EQUIKERN_MODEL_LINEAR_TC=1)"
EQUIKERN_MODEL_LINEAR_TC=1 timeout 200 b/cuda_model --test-threads 1 --nocapture 2>&1 \
  | grep -v "^\s*$" | grep -v "^\s*\(Si\|H\|C\|N\|O\)[0-9]* " | tail -60 > "$OUT/test_cuda_model.log"
grep -E "worst|test result|panicked|triclinic" "$OUT/test_cuda_model.log"
for sys in 32768 4096; do
  stage "profile at $sys (EQUIKERN_MODEL_LINEAR_TC=1)"
  EQUIKERN_MODEL_LINEAR_TC=1 EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" \
    --backend cuda --systems si:$sys --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_$sys.txt"
  grep -E "ek_linear_tc|gemm strided|ms per step" "$OUT/prof_$sys.txt" | head -20
done
stage "ncu: ek_linear_tc at 32,768"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
EQUIKERN_MODEL_LINEAR_TC=1 timeout 120 "$NCU" --clock-control none -k "regex:ek_linear_tc" --launch-count 8 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
  b/equikern bench --model "$CKPT" --backend cuda --systems si:32768 --reps 1 --warmup 0 \
  > "$OUT/ncu_ltc.txt" 2>&1
echo "rc=$?"
grep -E "^  ek_|Duration|DRAM Throughput|Issue Slots Busy|Achieved Occupancy|Registers Per|stalled_(long_scoreboard|short_scoreboard|math_pipe|mio_throttle|barrier|wait|not_selected)" \
  "$OUT/ncu_ltc.txt" | head -120
stage done
