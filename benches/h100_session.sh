#!/usr/bin/env bash
# One device call: the switches' A/B (`h100_linear_paths.sh`), the winner picked from its JSON
# (`pick_switches.py`), then the side-by-side with both peers (`h100_model.sh`, SKIP=test: the
# A/B already ran the build's GPU tests) under the winning switches. Carry [".carry", ".peers",
# ".whl", "models/checkpoint_sevennet_0.pth"]; see both scripts' headers. About 6 minutes. Everything returns as one session.tar.xz.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
bash benches/h100_linear_paths.sh > "$OUT/ab.log" 2>&1
grep -A3 "^-- \|^== " "$OUT/ab.log" | grep -v "^system\|^--$" | tail -40
python3 benches/pick_switches.py "$OUT/aux" > /tmp/switches.sh 2> "$OUT/aux/pick.txt"
cat "$OUT/aux/pick.txt" /tmp/switches.sh
source /tmp/switches.sh
mkdir -p "$OUT/model"
env | grep EQUIKERN_MODEL > "$OUT/model/switches.txt"
OUT="$OUT/model" SKIP=test bash benches/h100_model.sh > "$OUT/model/run.log" 2>&1
sed -n '/== .*report/,$p' "$OUT/model/run.log"
# At most 8 files come back from a device call: one archive of everything.
(cd "$OUT" && tar -cJf /tmp/session.tar.xz . && rm -rf ./* && mv /tmp/session.tar.xz .)
