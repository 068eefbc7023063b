#!/usr/bin/env bash
# Session 17's first device call: the GPU tests of the committed build (cuda_model,
# neighbours_cuda), a profile at Si 4,096, then the side-by-side with both peers
# (h100_model.sh) and a second reading of ours and OEQ at Si 4,096 (the launch-bound peer
# moves from machine to machine). Everything under $OUT/work, packed as one results.tgz
# (the device tool returns only a few files). Carry [".carry", ".peers", ".whl",
# "models/checkpoint_sevennet_0.pth"], .carry/bins.tar.xz holding equikern, cuda_model and
# neighbours_cuda (stripped).
set -uo pipefail
FINAL=$OUT
OUT=$FINAL/work
source benches/device_prelude.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
stage "neighbours_cuda"
timeout 120 b/neighbours_cuda --test-threads 1 --nocapture 2>&1 | grep -v "^\s*$" | tail -30 > "$OUT/test_neighbours_cuda.log"
grep -E "test result|panicked|FAILED" "$OUT/test_neighbours_cuda.log"
stage "cuda_model"
cuda_model_tests
stage "profile (Si 4,096)"
EQUIKERN_MODEL_PROFILE=1 timeout 60 b/equikern bench --model "$CKPT" --backend cuda \
  --systems si:4096 --reps 5 --warmup 1 > "$OUT/prof_4096.txt" 2>&1
head -12 "$OUT/prof_4096.txt"
stage "switch sweep at Si 4,096 / water (two rounds)"
# where the 32,768-atom choices may not hold at 4,096: plain FP32 radial products, our own
# 3xTF32 last-product kernel, keeping every w (no recomputation), one stream
for round in 1 2; do
  for v in base EQUIKERN_MODEL_TF32X3=0 EQUIKERN_MODEL_TF32X3_MMA=1 \
           EQUIKERN_MODEL_KEEP_W_BYTES=4000000000 EQUIKERN_MODEL_SIDE_MLP_BWD=0 EQUIKERN_MODEL_LANES=0; do
    label=${v%%=*}; label=${label#EQUIKERN_MODEL_}
    if [ "$v" = base ]; then e=(); else e=("$v"); fi
    echo "-- $v (round $round)"
    env "${e[@]}" timeout 60 b/equikern bench --model "$CKPT" --backend cuda \
      --systems si:4096,water:1029 --reps 10 --warmup 2 --json "$OUT/aux/sw${round}_$label.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/sweep.log" | grep -E "^--|^si|^water"
stage "side by side"
SKIP=test OUT=$OUT/model bash benches/h100_model.sh > "$OUT/model.log" 2>&1
tail -24 "$OUT/model.log"
stage "second reading at Si 4,096 (ours, OEQ)"
SKIP=test SYSTEMS=si:4096 IMPLS=oeq OUT=$OUT/model2 bash benches/h100_model.sh > "$OUT/model2.log" 2>&1
tail -8 "$OUT/model2.log"
stage done
tar -C "$FINAL" -czf "$FINAL/results.tgz" work && rm -rf "$FINAL/work"
