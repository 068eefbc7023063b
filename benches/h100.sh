#!/usr/bin/env bash
# The one device call for the H100 benchmark: equikern (CUDA and wgpu/Vulkan) and the peers
# (OpenEquivariance, cuEquivariance, e3nn) on the paper suite, batch 50 000, float32,
# forward / backward / double backward, then benches/report.py.
#
# Run from the repository root on the GPU machine, with carry [".carry", ".gl", ".peers"]:
#   .carry/equikern  the release CLI built here (cargo build --release -p equikern-cli;
#                    cp target/release/equikern .carry/; strip .carry/equikern)
#   .gl/*.deb        the Vulkan loader (shared/notes/gpu-machine.md), unpacked below
#   .peers/          site.tar.xz from shared/peers/fetch.sh, plus env.sh and bench_peers.py
# Writes under $OUT: equikern_{cuda,wgpu}.json (+ .log), peers_{oeq,cue,e3nn}.json (+ .log),
# BENCHMARKS_h100.md, ratio.svg, device.txt.
#
# Time budget: the stage timeouts add up to 560 s (130 + 130 + 140 + 90 + 70) plus ~15 s of
# set-up and report, under the 600 s a device command may run; expected total ~5-7 min. Every
# stage leaves its rows even when cut short: our JSON is rewritten after every row, and the
# peers' rows are read back from their logs (bench_peers.py prints each row as it goes).
#   equikern cuda  33 rows; NVRTC first compiles (PERF.md: up to ~8 s for benzene's double
#                  backward), random inputs generated and uploaded per row; --row-limit-s 8
#                  gives a direction whose 40 runs would pass 8 s fewer timed runs (>= 5; the
#                  row's "reps" says how many).
#   equikern wgpu  the same on the Vulkan adapter, --row-limit-s 5.
#   oeq            JIT compile per problem and direction, 10 + 30 calls each (140 s).
#   cue            90 s.
#   e3nn           forward and backward only (70 s): eager e3nn double backward costs ~0.1-0.6 s
#                  a call on the big problems (benzene 560 ms x 40 calls, plus graph building),
#                  so its double-backward column stays empty ("-"); the peers' README has those
#                  numbers from an earlier run.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
SUITE=${SUITE:-benches/paper_suite.json}
BATCH=${BATCH:-50000}
DIRS=forward,backward,double_backward
BIN=${BIN:-.carry/equikern}
REPS=${REPS:-30}
# ONLY=label,label limits every stage to those problems (for trying the script out).
ONLY=${ONLY:-}
# SKIP=wgpu,e3nn,... leaves stages out (wgpu, oeq, cue, e3nn) when device time is short.
SKIP=${SKIP:-}
skip() { [[ ",$SKIP," == *",$1,"* ]]; }
# Stage timeouts (s) and the cuEquivariance directions, to fit a shorter device budget.
T_CUDA=${T_CUDA:-130} T_WGPU=${T_WGPU:-130} T_OEQ=${T_OEQ:-140} T_CUE=${T_CUE:-90} T_E3NN=${T_E3NN:-70}
CUE_DIRS=${CUE_DIRS:-$DIRS}
T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }

stage "device"
for f in .gl/*.deb; do dpkg -x "$f" / 2>/dev/null; done
ldconfig 2>/dev/null
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit --format=csv
  nvidia-smi -L
  echo "equikern: $($BIN --version 2>&1)"
  nproc
} 2>&1 | tee "$OUT/device.txt"
chmod +x "$BIN" 2>/dev/null

stage "equikern bench --backend cuda"
timeout "$T_CUDA" "$BIN" bench --backend cuda --suite "$SUITE" --batch "$BATCH" --dirs "$DIRS" \
  --reps "$REPS" --warmup 10 --row-limit-s 8 ${ONLY:+--only "$ONLY"} --json "$OUT/equikern_cuda.json" 2>&1 | tee "$OUT/equikern_cuda.log"

stage "equikern bench --backend wgpu (Vulkan adapter)"
skip wgpu || EQUIKERN_ADAPTER=vulkan timeout "$T_WGPU" "$BIN" bench --backend wgpu --suite "$SUITE" --batch "$BATCH" \
  --dirs "$DIRS" --reps "$REPS" --warmup 10 --row-limit-s 5 ${ONLY:+--only "$ONLY"} --json "$OUT/equikern_wgpu.json" 2>&1 | tee "$OUT/equikern_wgpu.log"

stage "peers"
# shellcheck disable=SC1091
source .peers/env.sh .peers
peer() { # name timeout dirs
  skip "$1" && return
  timeout "$2" python3 .peers/bench_peers.py "$SUITE" --batch "$BATCH" --dirs "$3" --impls "$1" \
    --dtype float32 ${ONLY:+--only "$ONLY"} --out "$OUT/peers_$1.json" 2>&1 | tee "$OUT/peers_$1.log"
}
stage "peers: oeq"
peer oeq "$T_OEQ" "$DIRS"
stage "peers: cue"
peer cue "$T_CUE" "$CUE_DIRS"
stage "peers: e3nn (forward, backward)"
peer e3nn "$T_E3NN" forward,backward

stage "report"
inputs=()
for n in equikern_cuda equikern_wgpu peers_oeq peers_cue peers_e3nn; do
  if [ -s "$OUT/$n.json" ]; then inputs+=("$OUT/$n.json")
  elif [ -s "$OUT/$n.log" ]; then inputs+=("$OUT/$n.log"); fi
done
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
python3 benches/report.py "${inputs[@]}" --title "equikern vs peers, ${GPU:-unknown GPU}, batch $BATCH, float32" \
  --md "$OUT/BENCHMARKS_h100.md" --svg "$OUT/ratio.svg"
stage "done"
cat "$OUT/BENCHMARKS_h100.md"
