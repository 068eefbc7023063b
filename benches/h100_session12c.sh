#!/usr/bin/env bash
# Session 12's third device call: L1 prefetches — `ek_mlp_backward_tc` with the warp's next
# tile (g_last and emb rows) prefetched (b/equikern_m), and also `ek_gemm_tf32x3_nt` with its
# rows' chunk c + 2 prefetched (b/equikern) — against the second call's build (no prefetch;
# b/equikern_old), Si 4,096 and 32,768, two interleaved rounds (picked at
# 0.3 %: both are the same kernel otherwise); the winner's profile at 32,768; the
# side-by-side with both peers. Carry [".carry", ".peers", ".whl",
# "models/checkpoint_sevennet_0.pth"]. Pack $OUT afterwards (8 files come back).
set -uo pipefail
source benches/device_prelude.sh
for round in 1 2; do
  for v in o m n; do
    bin=b/equikern; [ "$v" = o ] && bin=b/equikern_old; [ "$v" = m ] && bin=b/equikern_m
    stage "$bin (round $round)"
    timeout 50 $bin bench --model "$CKPT" --backend cuda --systems si:4096,si:32768 --reps 10 \
      --warmup 2 --json "$OUT/aux/pf${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/ab.log"
PICK_MIN=0.997 python3 benches/pick_switches.py "$OUT/aux" pf BIN o > /tmp/pick.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/pick.sh
source /tmp/pick.sh
if [ "$BIN" != n ]; then  # the profile and h100_model.sh take b/equikern: the winner
  src=b/equikern_old; [ "$BIN" = m ] && src=b/equikern_m
  cp $src b/equikern
  mkdir -p /tmp/ob && cp $src /tmp/ob/equikern && tar -C /tmp/ob -cJf .carry/bins.tar.xz .
fi
stage "profile at 32,768 (build $BIN)"
EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" --backend cuda \
  --systems si:32768 --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_32768.txt"
head -12 "$OUT/prof_32768.txt"
stage "side-by-side with the peers (build $BIN)"
mkdir -p "$OUT/model"
OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
sed -n '/== .*report/,$p' "$OUT/model/run.log"
stage done
