#!/usr/bin/env bash
# Session 11's second device call: the staged radial-MLP output tile (`ek_mlp_last_fwd`)
# and the split rows written by `ek_mlp_hidden` (EQUIKERN_MODEL_MLP_SPLIT), A/B against the
# previous build (b/equikern_old: direct per-thread row stores) under the new defaults
# (EQUIKERN_MODEL_KEEP_H=1, EQUIKERN_MODEL_TF32X3_BWD=1 given to the old build explicitly),
# two rounds at Si 4,096 and 32,768; the winner's GPU test against sevenn float64 and the
# per-kernel profile at 32,768; then the side-by-side with both peers (`h100_model.sh`).
# Carry [".carry", ".peers", ".whl", "models/checkpoint_sevennet_0.pth"], .carry/bins.tar.xz
# holding equikern, equikern_old and cuda_model (stripped). Pack $OUT afterwards (8 files).
set -uo pipefail
source benches/device_prelude.sh
for round in 1 2; do
  # label: binary (o old, n new) - MLP_SPLIT
  for v in o-0 n-0 n-1; do
    bin=b/equikern; [ "${v%-*}" = o ] && bin=b/equikern_old
    stage "$bin EQUIKERN_MODEL_MLP_SPLIT=${v#*-} (round $round)"
    EQUIKERN_MODEL_KEEP_H=1 EQUIKERN_MODEL_TF32X3_BWD=1 EQUIKERN_MODEL_MLP_SPLIT=${v#*-} timeout 50 $bin bench \
      --model "$CKPT" --backend cuda --systems si:4096,si:32768 --reps 10 --warmup 2 \
      --json "$OUT/aux/ab${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/ab.log"
python3 benches/pick_switches.py "$OUT/aux" ab BIN,EQUIKERN_MODEL_MLP_SPLIT o-0 > /tmp/pick.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/pick.sh
source /tmp/pick.sh
export EQUIKERN_MODEL_MLP_SPLIT
stage "GPU test vs sevenn float64 (new build, split ${EQUIKERN_MODEL_MLP_SPLIT})"
timeout 60 b/cuda_model --test-threads 1 --nocapture resident_matches_sevenn_float64 2>&1 \
  | grep -v "^\s*$" | tail -20 | tee "$OUT/test_sevenn.log"
stage "profile at 32,768 (new build, split ${EQUIKERN_MODEL_MLP_SPLIT})"
EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" --backend cuda \
  --systems si:32768 --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_32768.txt"
head -14 "$OUT/prof_32768.txt"
stage "side-by-side with the peers (build $BIN)"
if [ "$BIN" = o ]; then  # h100_model.sh unpacks .carry/bins.tar.xz: the old build as equikern
  mkdir -p /tmp/ob && cp b/equikern_old /tmp/ob/equikern && tar -C /tmp/ob -cJf .carry/bins.tar.xz .
fi
mkdir -p "$OUT/model"
env | grep EQUIKERN_MODEL | tee "$OUT/model/switches.txt"
OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
sed -n '/== .*report/,$p' "$OUT/model/run.log"
