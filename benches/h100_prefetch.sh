#!/usr/bin/env bash
# The L1 prefetches of the tensor-core radial backward kernels (EQUIKERN_MODEL_PREFETCH=1:
# `ek_mlp_backward_tc` its warp's next tile of g_last and emb rows, `ek_gemm_tf32x3_nt` its
# rows' chunk after next), written in session 12 and untimed there (the device time ran out):
# A/B in one build, Si 4,096 and 32,768, two interleaved rounds (picked at 0.3 %); the
# winner's profile at 32,768; the side-by-side with both peers. Carry [".carry", ".peers",
# ".whl", "models/checkpoint_sevennet_0.pth"] (.carry/bins.tar.xz: the stripped `equikern`).
# Pack $OUT afterwards (8 files come back).
set -uo pipefail
source benches/device_prelude.sh
for round in 1 2; do
  for v in 0 1; do
    stage "EQUIKERN_MODEL_PREFETCH=$v (round $round)"
    EQUIKERN_MODEL_PREFETCH=$v timeout 50 b/equikern bench --model "$CKPT" --backend cuda \
      --systems si:4096,si:32768 --reps 10 --warmup 2 --json "$OUT/aux/pf${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/ab.log"
PICK_MIN=0.997 python3 benches/pick_switches.py "$OUT/aux" pf EQUIKERN_MODEL_PREFETCH 0 \
  > /tmp/pick.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/pick.sh
source /tmp/pick.sh
export EQUIKERN_MODEL_PREFETCH
stage "profile at 32,768 (EQUIKERN_MODEL_PREFETCH=$EQUIKERN_MODEL_PREFETCH)"
EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" --backend cuda \
  --systems si:32768 --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_32768.txt"
head -12 "$OUT/prof_32768.txt"
stage "side-by-side with the peers (EQUIKERN_MODEL_PREFETCH=$EQUIKERN_MODEL_PREFETCH)"
mkdir -p "$OUT/model"
OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
sed -n '/== .*report/,$p' "$OUT/model/run.log"
stage done
