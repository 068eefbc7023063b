#!/usr/bin/env bash
# Serves the built example page (run web/build.sh first) on http://127.0.0.1:${PORT:-8000}/
# (localhost is a secure context: the page gets navigator.gpu). Chromium needs
# --enable-unsafe-webgpu where WebGPU is not on by default (e.g. Linux).
set -euo pipefail
cd "$(dirname "$0")"
[ -f pkg/equikern_wasm.js ] || { echo "web/pkg missing: run web/build.sh first" >&2; exit 2; }
exec python3 -m http.server --bind 127.0.0.1 "${PORT:-8000}"
