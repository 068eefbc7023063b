#!/usr/bin/env bash
# Session 12's second device call: `ek_mlp_backward_tc` at two blocks per SM (128 registers,
# pre1 recomputed; b/equikern, where it is the default) against the first call's form (225
# registers, one block; b/equikern_old with EQUIKERN_MODEL_MLP_TC=1) and against the FP32
# kernel (b/equikern, EQUIKERN_MODEL_MLP_TC=0), Si 4,096 and 32,768, two interleaved rounds;
# the GPU tests of the new build; profiles at 32,768 and 4,096; ncu on the kernel; the
# side-by-side with both peers (`h100_model.sh`). Carry [".carry", ".peers", ".whl",
# "models/checkpoint_sevennet_0.pth"]. Pack $OUT afterwards (8 files come back).
set -uo pipefail
source benches/device_prelude.sh
for round in 1 2; do
  # label: binary (o: the first call's kernel, n: two blocks per SM) - MLP_TC
  for v in o-1 n-1 n-0; do
    bin=b/equikern; [ "${v%-*}" = o ] && bin=b/equikern_old
    stage "$bin EQUIKERN_MODEL_MLP_TC=${v#*-} (round $round)"
    EQUIKERN_MODEL_MLP_TC=${v#*-} timeout 50 $bin bench --model "$CKPT" --backend cuda \
      --systems si:4096,si:32768 --reps 10 --warmup 2 --json "$OUT/aux/tc${round}_$v.json" 2>&1 | tail -3
  done
done 2>&1 | tee "$OUT/ab.log"
python3 benches/pick_switches.py "$OUT/aux" tc BIN,EQUIKERN_MODEL_MLP_TC o-1 > /tmp/pick.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/pick.sh
source /tmp/pick.sh
export EQUIKERN_MODEL_MLP_TC
if [ "$BIN" = o ]; then  # the profile and h100_model.sh take b/equikern: the old build
  take_build b/equikern_old
fi
stage "GPU tests (new build, its defaults)"
env -u EQUIKERN_MODEL_MLP_TC timeout 150 b/cuda_model --test-threads 1 --nocapture 2>&1 \
  | grep -v "^\s*$" | tail -40 | tee "$OUT/test_cuda_model.log"
for sys in 32768 4096; do
  stage "profile at $sys (build $BIN, MLP_TC $EQUIKERN_MODEL_MLP_TC)"
  EQUIKERN_MODEL_PROFILE=1 timeout 30 b/equikern bench --model "$CKPT" --backend cuda \
    --systems si:$sys --reps 4 --warmup 1 2>&1 | head -60 > "$OUT/prof_$sys.txt"
  head -12 "$OUT/prof_$sys.txt"
done
stage "ncu: ek_mlp_backward_tc"
COUNT=2 NCU_T=60 KERNELS="ek_mlp_backward_tc" bash benches/h100_ncu_model.sh | tail -12
stage "side-by-side with the peers (build $BIN, MLP_TC $EQUIKERN_MODEL_MLP_TC)"
mkdir -p "$OUT/model"
env | grep EQUIKERN_MODEL | tee "$OUT/model/switches.txt"
OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
sed -n '/== .*report/,$p' "$OUT/model/run.log"
stage done
