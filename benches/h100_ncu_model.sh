#!/usr/bin/env bash
# Nsight Compute on chosen kernels of the SevenNet-0 step (Si 32,768 atoms), for the levers
# that timing alone cannot explain. Carry [".carry", "models/checkpoint_sevennet_0.pth"]
# (.carry/bins.tar.xz with the stripped `equikern`). KERNELS: an ncu name regex (default
# the Linear-path kernels and the fused radial-MLP kernels); extra env passes through
# (e.g. EQUIKERN_MODEL_LINEAR_PATHS=1). Writes $OUT/${NCU_NAME:-ncu}.txt.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" b
tar -C b -xJf .carry/bins.tar.xz
export EQUIKERN_REPO=$PWD XDG_RUNTIME_DIR=/tmp
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "no ncu on this machine"; exit 1; }
"$NCU" --version | tail -1
timeout "${NCU_T:-200}" "$NCU" --clock-control none -k "regex:${KERNELS:-ek_linear_path|ek_mlp_hidden}" \
  --launch-count "${COUNT:-12}" --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section MemoryWorkloadAnalysis \
  b/equikern bench --model models/checkpoint_sevennet_0.pth --backend cuda --systems si:32768 \
  --reps 1 --warmup 0 > "$OUT/${NCU_NAME:-ncu}.txt" 2>&1
echo "rc=$?"
grep -E "^  ek_|Duration|Memory Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|Issue Slots Busy|DRAM Throughput|L1/TEX Hit|Mem Busy|Max Bandwidth|Theoretical Occ" "$OUT/${NCU_NAME:-ncu}.txt" | head -150
