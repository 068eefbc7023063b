#!/usr/bin/env bash
# One device call for the fused-convolution benchmark (issue #6): equikern's conv (CUDA: det,
# pieces, atomic, unfused; wgpu/Vulkan: det, pieces) and OpenEquivariance's TensorProductConv
# (deterministic and atomic) on the SAME graphs (exported by our CLI), forward and backward,
# float32; then benches/report_conv.py.
#
# Run from the repository root on the GPU machine, with carry [".carry", ".gl", ".peers"]:
#   .carry/equikern  the release CLI built here (cargo build --release -p equikern-cli;
#                    cp <target>/release/equikern .carry/; strip .carry/equikern)
#   .gl/*.deb        the Vulkan loader (shared/notes/gpu-machine.md), unpacked below (wgpu stage)
#   .peers/          site.tar.xz from shared/peers/fetch.sh, plus env.sh
#   .carry/conv_cuda_api (optional) the facade's CUDA conv test binary (cargo test --release -p
#                    equikern --test conv_cuda_api --no-run; copy the printed executable): run
#                    first, so the numbers come with a correctness check of the same build
# Writes under $OUT: conv_cuda.json/.log, conv_wgpu.json/.log, conv_peers.json/.log,
# graphs.json (the manifest of the exported graphs), BENCHMARKS_conv.md, device.txt.
#
# Time budget (stage timeouts): export 20 + test 60 + cuda 200 + peers 170 + wgpu 70 = 520 s
# (SKIP_WGPU=1: cuda 270; .carry/conv_cuda adds up to 40: then set CUDA_T=230),
# plus ~15 s of set-up and report: under the 600 s a device command may run. Every stage leaves its
# rows when cut short (JSON rewritten after every row; the peers' rows are also in the log).
# Expected: cuda ~100 rows (+3 csr_build rows), NVRTC compiles first (~1-8 s per plan, on the
# first graph), then --row-limit-s 3 per row; OEQ JIT-compiles 8 modules (~5-10 s each).
# If a stage runs out, rerun with fewer problems/graphs (ONLY=..., GRAPHS=...): the NVRTC disk
# cache (~/.cache/equikern/cuda) survives between processes of one device session.
#   GRAPHS    diamond:23:2.6 (97 336 atoms, 16 neighbours: 1.56 M edges), protein:5.0 (4AKE,
#             3 341 atoms, 146 k edges), skewed:100000:1000000 (max in-degree ~135 k)
#   PROBLEMS  nequip-water, nequip-lips, mace-medium, mace-large (ONLY=... to change); cheap
#             graphs and problems first, so a stage cut short by its timeout (or a peer failure
#             that poisons its CUDA context, e.g. on the 3.4 G-element mace-large weights of the
#             diamond graph) keeps the rows before it.
#   mace-large on the diamond graph: W is 1.56 M x 2176 floats (13.6 GB); the unfused path
#   would need ~57 GB of per-edge messages and is skipped with its reason when it does not fit;
#   wgpu rows over its 4 GB buffer limit are skipped likewise.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
BIN=${BIN:-.carry/equikern}
GRAPHS=${GRAPHS:-protein:5.0,skewed:100000:1000000,diamond:23:2.6}
ONLY=${ONLY:-nequip-water,nequip-lips,mace-medium,mace-large}
DIRS=${DIRS:-forward,backward}
REPS=${REPS:-30}
# VARIANTS: our CUDA variants; the channel-fusion A/B adds det-rows (and pieces-rows): the
# deterministic backward with the row kernels instead of the channel-fused kernel.
VARIANTS=${VARIANTS:-det,pieces,atomic,unfused}
# Seconds of the CUDA stage (the wgpu stage's 70 s go to it when SKIP_WGPU is set).
CUDA_T=${CUDA_T:-$([ -n "${SKIP_WGPU:-}" ] && echo 270 || echo 200)}
GDIR=${GDIR:-/tmp/equikern-conv-graphs}
T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }

stage "device"
for f in .gl/*.deb; do dpkg -x "$f" / 2>/dev/null; done
ldconfig 2>/dev/null
chmod +x "$BIN" 2>/dev/null
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv
  echo "equikern: $($BIN --version 2>&1)"
  nproc
} 2>&1 | tee "$OUT/device.txt"

stage "graphs (built by equikern, exported for the peers)"
timeout 20 "$BIN" bench --conv --export-only --graphs "$GRAPHS" --export-graphs "$GDIR" 2>&1 | tee "$OUT/graphs.log"
cp "$GDIR/graphs.json" "$OUT/graphs.json" 2>/dev/null

if [ -x .carry/conv_cuda_api ] || [ -f .carry/conv_cuda_api ]; then
  stage "correctness: the facade's CUDA conv vs the f64 oracle (csr, pieces, atomic, fused backward; f64; CudaSlices)"
  chmod +x .carry/conv_cuda_api
  timeout 60 .carry/conv_cuda_api --test-threads 1 --nocapture 2>&1 | tee "$OUT/conv_cuda_api.log"
fi
if [ -f .carry/conv_cuda ]; then
  stage "correctness: equikern-cuda conv tests (every mode, f64)"
  chmod +x .carry/conv_cuda
  timeout 40 .carry/conv_cuda --test-threads 1 --nocapture 2>&1 | tee "$OUT/conv_cuda.log.txt"
fi

stage "equikern bench --conv --backend cuda"
timeout "$CUDA_T" "$BIN" bench --conv --backend cuda --graphs "$GRAPHS" --only "$ONLY" --dirs "$DIRS" \
  --variants "$VARIANTS" --reps "$REPS" --warmup 10 --row-limit-s 3 --json "$OUT/conv_cuda.json" 2>&1 | tee "$OUT/conv_cuda.log"

stage "OpenEquivariance TensorProductConv (det, atomic)"
# shellcheck disable=SC1091
source .peers/env.sh .peers
timeout 170 python3 benches/bench_conv_peers.py "$GDIR" --only "$ONLY" --dirs "$DIRS" \
  --impls oeq-det,oeq-atomic --warmup 10 --reps "$REPS" --out "$OUT/conv_peers.json" 2>&1 | tee "$OUT/conv_peers.log"

if [ -z "${SKIP_WGPU:-}" ]; then
stage "equikern bench --conv --backend wgpu (Vulkan adapter)"
EQUIKERN_ADAPTER=vulkan timeout 70 "$BIN" bench --conv --backend wgpu --graphs "$GRAPHS" --only "$ONLY" \
  --dirs "$DIRS" --reps "$REPS" --warmup 10 --row-limit-s 2 --json "$OUT/conv_wgpu.json" 2>&1 | tee "$OUT/conv_wgpu.log"
fi

stage "report"
inputs=()
for n in conv_cuda conv_wgpu conv_peers; do
  if [ -s "$OUT/$n.json" ]; then inputs+=("$OUT/$n.json")
  elif [ -s "$OUT/$n.log" ]; then inputs+=("$OUT/$n.log"); fi
done
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
python3 benches/report_conv.py "${inputs[@]}" --title "Fused graph convolution, ${GPU:-unknown GPU}, float32" \
  --md "$OUT/BENCHMARKS_conv.md"
stage "done"
