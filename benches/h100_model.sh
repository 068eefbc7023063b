#!/usr/bin/env bash
# One device call for the SevenNet end-to-end benchmark (issue #9): equikern's `bench --model`
# and sevenn's own PyTorch model (+ OpenEquivariance / cuEquivariance) on the SAME atoms, then
# the table. Run from the repository root on the GPU machine with carry
# [".carry", ".peers", ".whl", "models"]:
#   .carry/bins.tar.xz  stripped binaries: equikern (cargo build --release -p equikern-cli
#                       --features cuda) and optionally backends (cargo test --release -p
#                       equikern-model --test backends --no-run): run first, a correctness check
#                       of the same build on the GPU; and optionally neighbours_cuda (cargo
#                       test --release -p equikern-model --test neighbours_cuda --no-run): the
#                       CUDA neighbour list vs the host's, edge for edge, with host/device times
#   .peers/             shared/peers/fetch.sh output (OEQ, cuEquivariance) + env.sh
#   .whl/               sevenn 0.13.0 (checkpoints trimmed), ase, braceexpand, matscipy wheels
#   models/checkpoint_sevennet_0.pth
# Env: SYSTEMS (default si:4096,water:1029,si:13824,si:32768), IMPLS (oeq,cueq), REPS (10),
# SKIP (comma list of: test, ours, peers), OURS_T / PEERS_T (stage timeouts, s).
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT" b
SYSTEMS=${SYSTEMS:-si:4096,water:1029,si:13824,si:32768}
IMPLS=${IMPLS:-oeq,cueq}
REPS=${REPS:-10}
SKIP=${SKIP:-}
T0=$(date +%s)
stage() { echo; echo "== [$(($(date +%s) - T0)) s] $*"; }
skip() { [[ ",$SKIP," == *",$1,"* ]]; }

stage "device"
tar -C b -xJf .carry/bins.tar.xz
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
export EQUIKERN_REPO=$PWD EQUIKERN_BIN=$PWD/b/equikern XDG_RUNTIME_DIR=/tmp
CKPT=models/checkpoint_sevennet_0.pth

if ! skip test; then
  # Every carried test binary: `name[:filter]` (TESTS overrides the list).
  for t in ${TESTS:-cuda_model backends:cuda neighbours_cuda}; do
    name=${t%%:*}; filter=${t#*:}; [ "$filter" = "$t" ] && filter=""
    [ -f "b/$name" ] || continue
    stage "correctness: $name $filter"
    timeout 150 "b/$name" --test-threads 1 --nocapture $filter 2>&1 | grep -v "^\s*$" | tail -60 | tee "$OUT/test_$name.log"
  done
fi

stage "systems (built by equikern, exported for the peers)"
b/equikern bench --model "$CKPT" --systems "$SYSTEMS" --export-systems /tmp/systems 2>&1 | tail -5

if ! skip ours; then
  stage "equikern bench --model --backend cuda"
  timeout "${OURS_T:-200}" b/equikern bench --model "$CKPT" --backend cuda --systems "$SYSTEMS" \
    --reps "$REPS" --warmup 2 --json "$OUT/model_cuda.json" 2>&1 | tail -60 | tee "$OUT/model_cuda.log"
fi

if ! skip peers; then
  stage "sevenn + peers (same atoms)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl 2>&1 | tail -3
  source .peers/env.sh .peers
  export PYTHONPATH=/tmp/site:$PYTHONPATH
  timeout "${PEERS_T:-300}" python3 benches/bench_model_peers.py /tmp/systems --checkpoint "$CKPT" \
    --impls "$IMPLS" --reps "$REPS" --warmup 2 --out "$OUT/model_peers.json" 2>&1 | grep -v Warning | tail -40 | tee "$OUT/model_peers.log"
fi
if [ -s "$OUT/model_cuda.json" ] && [ -s "$OUT/model_peers.json" ]; then
  stage "report"
  python3 benches/report_model.py "$OUT/model_cuda.json" "$OUT/model_peers.json" --md "$OUT/BENCHMARKS_model.md"
fi
stage "done"
