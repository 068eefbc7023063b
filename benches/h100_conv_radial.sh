#!/usr/bin/env bash
# Session 15: `ek_conv_radial_bwd` (EQUIKERN_MODEL_CONV_RADIAL: the convolution backward with
# the radial last product fused in): h100_ab.sh's A/B and GPU tests for it
# (`conv_radial_within_the_f32_tolerance` runs it off and on); then the profiles with it on
# and Nsight Compute on its launches at 4,096. Carry as h100_switch_ab.sh.
set -uo pipefail
SWITCH=EQUIKERN_MODEL_CONV_RADIAL bash benches/h100_ab.sh
source benches/device_prelude.sh
for sys in 4096 32768; do
  stage "profile at $sys (EQUIKERN_MODEL_CONV_RADIAL=1)"
  EQUIKERN_MODEL_CONV_RADIAL=1 EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" \
    --backend cuda --systems si:$sys --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_$sys.txt"
  head -24 "$OUT/prof_$sys.txt"
done
stage "ncu: ek_conv_radial_bwd at 4,096"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
EQUIKERN_MODEL_CONV_RADIAL=1 timeout 150 "$NCU" --clock-control none -k "regex:ek_conv_radial_bwd" --launch-count 4 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
  --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
  b/equikern bench --model "$CKPT" --backend cuda --systems si:4096 --reps 1 --warmup 0 \
  > "$OUT/ncu_rcb.txt" 2>&1
echo "rc=$?"
grep -E "^  ek_|Duration|DRAM Throughput|L1/TEX Hit|L2 Hit|Compute \(SM\) Throughput|Issue Slots Busy|Achieved Occupancy|Registers Per|Eligible Warps|stalled_(long_scoreboard|short_scoreboard|math_pipe|mio_throttle|barrier|wait|lg_throttle|not_selected)" \
  "$OUT/ncu_rcb.txt" | head -80
stage done
