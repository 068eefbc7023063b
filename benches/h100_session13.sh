#!/usr/bin/env bash
# Session 13's device calls: `ek_gemm_tf32x3_nt_pipe` (EQUIKERN_MODEL_NT_PIPE=1: the radial
# backward product with A and B streamed by cp.async into 4-stage shared-memory rings; in
# call 2 its first form, B through L1 and no block barriers) A/B against
# `ek_gemm_tf32x3_nt` in the same binary, Si 4,096 and 32,768, two interleaved rounds (picked
# at 0.3 %); the GPU tests (both kernels alone against f64 and timed; the resident rows; sevenn
# float64 with the pipe on); the profile of the pick at 32,768; Nsight Compute on both
# kernels; the side-by-side with both peers. Carry [".carry", ".peers", ".whl",
# "models/checkpoint_sevennet_0.pth"], .carry/bins.tar.xz holding the stripped `equikern` and
# `cuda_model`. Pack $OUT afterwards.
set -uo pipefail
source benches/device_prelude.sh
for round in 1 2; do
  for v in 0 1; do
    stage "EQUIKERN_MODEL_NT_PIPE=$v (round $round)"
    EQUIKERN_MODEL_NT_PIPE=$v timeout 50 b/equikern bench --model "$CKPT" --backend cuda \
      --systems si:4096,si:32768 --reps 10 --warmup 2 --json "$OUT/aux/np${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/ab.log"
PICK_MIN=0.997 python3 benches/pick_switches.py "$OUT/aux" np EQUIKERN_MODEL_NT_PIPE 0 \
  > /tmp/pick.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/pick.sh
source /tmp/pick.sh
export EQUIKERN_MODEL_NT_PIPE
stage "GPU tests (EQUIKERN_MODEL_NT_PIPE=1 for sevenn float64)"
EQUIKERN_MODEL_NT_PIPE=1 timeout 200 b/cuda_model --test-threads 1 --nocapture 2>&1 \
  | grep -v "^\s*$" | grep -v "^\s*\(Si\|H\|C\|N\|O\)[0-9]* " | tail -60 | tee "$OUT/test_cuda_model.log" | tail -25
stage "profile at 32,768 (EQUIKERN_MODEL_NT_PIPE=$EQUIKERN_MODEL_NT_PIPE)"
EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" --backend cuda \
  --systems si:32768 --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_32768.txt"
head -14 "$OUT/prof_32768.txt"
stage "side-by-side with the peers (EQUIKERN_MODEL_NT_PIPE=$EQUIKERN_MODEL_NT_PIPE)"
mkdir -p "$OUT/model"
OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
sed -n '/== .*report/,$p' "$OUT/model/run.log"
stage "ncu: both backward product kernels"
EQUIKERN_MODEL_NT_PIPE=1 COUNT=2 NCU_T=80 NCU_NAME=ncu_pipe KERNELS="ek_gemm_tf32x3_nt_pipe" \
  bash benches/h100_ncu_model.sh | tail -30
[ -n "${NCU_OLD:-}" ] && EQUIKERN_MODEL_NT_PIPE=0 COUNT=2 NCU_T=80 NCU_NAME=ncu_nt \
  KERNELS="ek_gemm_tf32x3_nt" bash benches/h100_ncu_model.sh | tail -30
stage done
