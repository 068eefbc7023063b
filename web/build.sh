#!/usr/bin/env bash
# Builds the equikern wasm package for the example page into web/pkg (wasm-bindgen --target
# web; no wasm-opt). Usage: web/build.sh [--debug]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
profile=release
flag=--release
if [ "${1:-}" = "--debug" ]; then profile=debug; flag=; fi
# Where cargo really puts artifacts (CARGO_TARGET_DIR, a config file or a wrapper may move it).
target_dir=$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
cargo build -q $flag --target wasm32-unknown-unknown -p equikern-wasm
wasm-bindgen --target web --out-dir web/pkg \
  "$target_dir/wasm32-unknown-unknown/$profile/equikern_wasm.wasm"
echo "web/pkg: $(stat -c %s web/pkg/equikern_wasm_bg.wasm) bytes wasm," \
  "$(gzip -9c web/pkg/equikern_wasm_bg.wasm | wc -c) gzip" >&2
