#!/usr/bin/env python3
"""Pick the model switches that measured fastest in `h100_linear_paths.sh`'s A/B.

Reads aux/ab<round>_<LP><KH>.json (LP = EQUIKERN_MODEL_LINEAR_PATHS, KH = EQUIKERN_MODEL_KEEP_H),
scores each variant by its model ms relative to the 00 variant, averaged over systems and
rounds, and prints `export` lines for the winner (a variant must beat 00 by 1 % to be taken,
so noise does not flip a default). Usage: pick_switches.py AUX_DIR
"""
import glob, json, os, statistics, sys
from collections import defaultdict

aux = sys.argv[1]
ms = defaultdict(lambda: defaultdict(list))  # variant -> system -> [ms]
for f in glob.glob(os.path.join(aux, "ab*_*.json")):
    variant = os.path.basename(f).split("_")[1].split(".")[0]
    for row in json.load(open(f))["systems"]:
        ms[variant][row["system"]].append(row["ms_model"])
base = ms.get("00")
if not base:
    sys.exit("no baseline (00) rows in " + aux)
score = {}
for v, per in ms.items():
    ratios = [statistics.median(per[s]) / statistics.median(base[s]) for s in base if s in per]
    score[v] = statistics.mean(ratios)
    print(f"# {v}: " + ", ".join(f"{s} {statistics.median(per[s]):.2f} ms" for s in sorted(per)) + f"; relative {score[v]:.4f}", file=sys.stderr)
best = min(score, key=score.get)
if score[best] > 0.99:
    best = "00"
print(f"export EQUIKERN_MODEL_LINEAR_PATHS={best[0]} EQUIKERN_MODEL_KEEP_H={best[1]}")
