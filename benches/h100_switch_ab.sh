#!/usr/bin/env bash
# One device call for a model switch: SWITCH (an EQUIKERN_MODEL_* variable; default
# EQUIKERN_MODEL_MLP_TC_SMEM, session 13's fourth call; its fifth and sixth ran
# SWITCH=EQUIKERN_MODEL_MLP_TC_FWD and EQUIKERN_MODEL_MMA_ORDER) A/B, 0 against 1, in the
# same binary, Si 4,096 and 32,768, two interleaved rounds
# (picked at 0.3 %); the GPU tests with it on; the profiles of the pick at 32,768 and 4,096;
# the side-by-side with both peers when it wins (or with FORCE_SIDE); Nsight Compute stall
# reasons of the kernels matching KERNELS with the switch off and on. Carry [".carry",
# ".peers", ".whl", "models/checkpoint_sevennet_0.pth"], .carry/bins.tar.xz holding the
# stripped `equikern` and `cuda_model`. Pack $OUT afterwards.
set -uo pipefail
source benches/device_prelude.sh
SWITCH=${SWITCH:-EQUIKERN_MODEL_MLP_TC_SMEM}
KERNELS=${KERNELS:-ek_mlp_backward_tc|ek_gemm_tf32x3_nt_pipe}
for round in 1 2; do
  for v in 0 1; do
    stage "$SWITCH=$v (round $round)"
    env "$SWITCH=$v" timeout 50 b/equikern bench --model "$CKPT" --backend cuda \
      --systems si:4096,si:32768 --reps 10 --warmup 2 --json "$OUT/aux/ms${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/ab.log"
PICK_MIN=0.997 python3 benches/pick_switches.py "$OUT/aux" ms "$SWITCH" 0 \
  > /tmp/pick.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/pick.sh
source /tmp/pick.sh
export "${SWITCH?}"
ON=${!SWITCH}
stage "GPU tests ($SWITCH=1)"
env "$SWITCH=1" timeout 200 b/cuda_model --test-threads 1 --nocapture 2>&1 \
  | grep -v "^\s*$" | grep -v "^\s*\(Si\|H\|C\|N\|O\)[0-9]* " | tail -60 | tee "$OUT/test_cuda_model.log" | tail -12
for sys in 32768 4096; do
  stage "profile at $sys ($SWITCH=$ON)"
  EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" --backend cuda \
    --systems si:$sys --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_$sys.txt"
  head -12 "$OUT/prof_$sys.txt"
done
if [ "$ON" = 1 ] || [ -n "${FORCE_SIDE:-}" ]; then
  stage "side-by-side with the peers ($SWITCH=$ON)"
  mkdir -p "$OUT/model"
  OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
  sed -n '/== .*report/,$p' "$OUT/model/run.log"
fi
stage "ncu: stall reasons of $KERNELS"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
for v in 0 1; do
  env "$SWITCH=$v" timeout 100 "$NCU" --clock-control none -k "regex:$KERNELS" --launch-count 6 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section ComputeWorkloadAnalysis \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    b/equikern bench --model "$CKPT" --backend cuda --systems si:32768 --reps 1 --warmup 0 \
    > "$OUT/ncu_stalls_$v.txt" 2>&1
  echo "rc=$?"
  grep -E "^  ek_|Duration|Compute \(SM\) Throughput|DRAM Throughput|Issue Slots Busy|Eligible Warps|stalled_(long_scoreboard|short_scoreboard|math_pipe|mio_throttle|barrier|wait|lg_throttle|not_selected)" \
    "$OUT/ncu_stalls_$v.txt" | awk '!seen[$0]++' | head -60
done
stage done
