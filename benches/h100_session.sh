#!/usr/bin/env bash
# One device call: the switches' A/B (`h100_linear_paths.sh`), the winner picked from its JSON
# (`pick_switches.py`); under it the radial backward product's A/B (EQUIKERN_MODEL_TF32X3_BWD
# = 0 cuBLAS FP32 / 1 `ek_gemm_tf32x3_nt` / 16 `ek_gemm_tf32x3_nt16`) crossed with
# EQUIKERN_MODEL_MLP_SPLIT (0/1), two rounds, with the kernels' GPU test, its winner picked; then the side-by-side with both peers
# (`h100_model.sh`, SKIP=test: the A/B ran the build's GPU tests) under the winners. Carry
# [".carry", ".peers", ".whl", "models/checkpoint_sevennet_0.pth"]; see both scripts' headers.
# About 8 minutes. At most 8 files come back from a device call, so the call packs $OUT:
#   timeout 570 bash benches/h100_session.sh; cd $OUT && tar -cJf /tmp/s.tar.xz . && rm -rf ./* && mv /tmp/s.tar.xz .
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT/aux"
T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }
SKIP_MODES=1 bash benches/h100_linear_paths.sh > "$OUT/ab.log" 2>&1
grep -A3 "^-- \|^== " "$OUT/ab.log" | grep -v "^system\|^--$" | tail -40
python3 benches/pick_switches.py "$OUT/aux" > /tmp/switches.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/switches.sh
source /tmp/switches.sh
stage "radial backward product: GPU test of both kernels"
timeout 90 b/cuda_model --test-threads 1 --nocapture tf32x3_nt_kernel_matches_f64 2>&1 \
  | grep -v "^\s*$" | tail -20 | tee "$OUT/test_nt.log"
# label: TF32X3_BWD-MLP_SPLIT
for round in 1 2; do
  for v in 0-0 1-0 16-0 0-1 16-1; do
    stage "EQUIKERN_MODEL_TF32X3_BWD=${v%-*} EQUIKERN_MODEL_MLP_SPLIT=${v#*-} (round $round)"
    EQUIKERN_MODEL_TF32X3_BWD=${v%-*} EQUIKERN_MODEL_MLP_SPLIT=${v#*-} timeout 50 b/equikern bench \
      --model models/checkpoint_sevennet_0.pth --backend cuda --systems si:4096,si:32768 \
      --reps 10 --warmup 2 --json "$OUT/aux/bwd${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/bwd.log"
python3 benches/pick_switches.py "$OUT/aux" bwd EQUIKERN_MODEL_TF32X3_BWD,EQUIKERN_MODEL_MLP_SPLIT 0-0 \
  > /tmp/bwd.sh 2> "$OUT/aux/pick_bwd.txt"
cat "$OUT/aux/pick_bwd.txt" /tmp/bwd.sh
source /tmp/bwd.sh
if [ "${EQUIKERN_MODEL_TF32X3_BWD:-0}${EQUIKERN_MODEL_MLP_SPLIT:-0}" != 00 ]; then
  stage "GPU test vs sevenn float64 under the winners"
  timeout 60 b/cuda_model --test-threads 1 --nocapture resident_matches_sevenn_float64 2>&1 \
    | grep -v "^\s*$" | tail -20 | tee "$OUT/test_sevenn_winners.log"
fi
stage "side-by-side with the peers"
mkdir -p "$OUT/model"
env | grep EQUIKERN_MODEL | tee "$OUT/model/switches.txt"
OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
sed -n '/== .*report/,$p' "$OUT/model/run.log"
