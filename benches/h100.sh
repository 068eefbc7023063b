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
# Time budget (< ~8 min; each stage has its own timeout, and every stage leaves its rows even
# when cut short: our JSON is rewritten after every row, the peers' rows are read back from
# their logs):
#   equikern cuda  ~1-2 min (33 measurements; NVRTC compiles + upload of random inputs)
#   equikern wgpu  ~1-2 min (Vulkan pipelines + the same measurements)
#   oeq            ~1-2.5 min (JIT compile per problem and direction, then 40 calls each)
#   cue            ~1 min
#   e3nn           forward and backward only: eager e3nn double backward costs ~1 s a call
#                  on the big problems (benzene 560 ms × 40 calls, plus graph building), so
#                  the e3nn double-backward column is left empty ("-"); its forward and
#                  backward stay (the usual baseline).
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
timeout 150 "$BIN" bench --backend cuda --suite "$SUITE" --batch "$BATCH" --dirs "$DIRS" \
  --reps "$REPS" --warmup 10 ${ONLY:+--only "$ONLY"} --json "$OUT/equikern_cuda.json" 2>&1 | tee "$OUT/equikern_cuda.log"

stage "equikern bench --backend wgpu (Vulkan adapter)"
EQUIKERN_ADAPTER=vulkan timeout 150 "$BIN" bench --backend wgpu --suite "$SUITE" --batch "$BATCH" \
  --dirs "$DIRS" --reps "$REPS" --warmup 10 ${ONLY:+--only "$ONLY"} --json "$OUT/equikern_wgpu.json" 2>&1 | tee "$OUT/equikern_wgpu.log"

stage "peers"
# shellcheck disable=SC1091
source .peers/env.sh .peers
peer() { # name timeout dirs
  timeout "$2" python3 .peers/bench_peers.py "$SUITE" --batch "$BATCH" --dirs "$3" --impls "$1" \
    --dtype float32 ${ONLY:+--only "$ONLY"} --out "$OUT/peers_$1.json" 2>&1 | tee "$OUT/peers_$1.log"
}
stage "peers: oeq"
peer oeq 170 "$DIRS"
stage "peers: cue"
peer cue 110 "$DIRS"
stage "peers: e3nn (forward, backward)"
peer e3nn 90 forward,backward

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
