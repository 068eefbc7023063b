#!/usr/bin/env bash
# Session 12's first device call: `ek_mlp_backward_tc` (EQUIKERN_MODEL_MLP_TC) and
# `ek_mlp_forward_tc` (EQUIKERN_MODEL_MLP_TC_FWD) A/B against the FP32 fused MLP kernels, same binary, Si 4,096 and 32,768, two interleaved rounds; the GPU
# tests with it on (sevenn float64 + the resident rows); the per-kernel profile of the winner;
# Nsight Compute on the Linear-path and radial-MLP kernels; and, when the switch wins, the
# side-by-side with both peers (`h100_model.sh`). Carry [".carry", ".peers", ".whl",
# "models/checkpoint_sevennet_0.pth"], .carry/bins.tar.xz holding equikern and cuda_model
# (stripped), and equikern_old (the build before the residual fold). Pack $OUT afterwards
# (8 files come back).
set -uo pipefail
source benches/device_prelude.sh
for round in 1 2; do
  # label: binary (o: before the residual fold, n: HEAD) - MLP_TC (backward) - MLP_TC_FWD
  for v in o-0-0 n-0-0 n-1-0 n-0-1 n-1-1; do
    IFS=- read -r bv tb tf <<< "$v"
    bin=b/equikern; [ "$bv" = o ] && bin=b/equikern_old
    stage "$bin EQUIKERN_MODEL_MLP_TC=$tb EQUIKERN_MODEL_MLP_TC_FWD=$tf (round $round)"
    EQUIKERN_MODEL_MLP_TC=$tb EQUIKERN_MODEL_MLP_TC_FWD=$tf timeout 50 $bin bench \
      --model "$CKPT" --backend cuda --systems si:4096,si:32768 --reps 10 --warmup 2 \
      --json "$OUT/aux/tc${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/ab.log"
python3 benches/pick_switches.py "$OUT/aux" tc BIN,EQUIKERN_MODEL_MLP_TC,EQUIKERN_MODEL_MLP_TC_FWD \
  o-0-0 > /tmp/pick.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/pick.sh
source /tmp/pick.sh
export EQUIKERN_MODEL_MLP_TC EQUIKERN_MODEL_MLP_TC_FWD
if [ "$BIN" = o ]; then  # h100_model.sh and the profile take b/equikern: the old build
  take_build b/equikern_old
fi
stage "GPU tests with EQUIKERN_MODEL_MLP_TC=1 EQUIKERN_MODEL_MLP_TC_FWD=1"
EQUIKERN_MODEL_MLP_TC=1 EQUIKERN_MODEL_MLP_TC_FWD=1 timeout 150 b/cuda_model --test-threads 1 --nocapture 2>&1 \
  | grep -v "^\s*$" | tail -40 | tee "$OUT/test_cuda_model.log"
stage "profile at 32,768 (MLP_TC ${EQUIKERN_MODEL_MLP_TC}, FWD ${EQUIKERN_MODEL_MLP_TC_FWD})"
EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" --backend cuda \
  --systems si:32768 --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_32768.txt"
head -24 "$OUT/prof_32768.txt"
stage "ncu: Linear paths (opt-in) and radial-MLP kernels"
EQUIKERN_MODEL_LINEAR_PATHS=1 EQUIKERN_MODEL_MLP_TC=1 EQUIKERN_MODEL_MLP_TC_FWD=1 COUNT=40 NCU_T=120 \
  KERNELS="ek_linear_path|ek_mlp_hidden|ek_mlp_.*_tc|ek_gemm_tf32x3_nt" bash benches/h100_ncu_model.sh | tail -5
stage "ncu: library products (the radial MLP's last product among them)"
COUNT=12 NCU_T=60 NCU_NAME=ncu_gemm KERNELS="gemm|xmma|cutlass" bash benches/h100_ncu_model.sh | tail -5
if [ "$BIN$EQUIKERN_MODEL_MLP_TC$EQUIKERN_MODEL_MLP_TC_FWD" != o00 ] || [ -n "${FORCE_SIDE:-}" ]; then
  stage "side-by-side with the peers (MLP_TC ${EQUIKERN_MODEL_MLP_TC}, FWD ${EQUIKERN_MODEL_MLP_TC_FWD})"
  mkdir -p "$OUT/model"
  env | grep EQUIKERN_MODEL | tee "$OUT/model/switches.txt"
  OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
  sed -n '/== .*report/,$p' "$OUT/model/run.log"
fi
stage done
