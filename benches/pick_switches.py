#!/usr/bin/env python3
"""Pick the model switches that measured fastest in a device A/B.

Usage: pick_switches.py AUX_DIR [PREFIX ENV1,ENV2,... BASE]
Reads AUX_DIR/<PREFIX><round>_<label>.json (`equikern bench --json`), label = the switches'
values, one character each, or joined by '-' (one switch: the whole label) (default: PREFIX `ab`, switches
EQUIKERN_MODEL_LINEAR_PATHS,EQUIKERN_MODEL_KEEP_H, base `00`, as `h100_linear_paths.sh`
writes them). Scores each variant by its model ms relative to BASE's, per system (median over
rounds), averaged over systems, and prints one `export` line for the winner; a variant must
beat BASE by 1 % (env PICK_MIN: the largest relative score taken, default 0.99) to be taken, so noise does not flip a default, and its energies must match
BASE's to 1e-5 relative.
"""
import glob, json, os, statistics, sys
from collections import defaultdict

aux = sys.argv[1]
prefix, envs, base_label = (sys.argv[2], sys.argv[3].split(","), sys.argv[4]) if len(sys.argv) > 4 else (
    "ab", ["EQUIKERN_MODEL_LINEAR_PATHS", "EQUIKERN_MODEL_KEEP_H"], "00")
ms = defaultdict(lambda: defaultdict(list))  # label -> system -> [ms]
energy = defaultdict(dict)  # label -> system -> eV
for f in glob.glob(os.path.join(aux, f"{prefix}*_*.json")):
    label = os.path.basename(f)[: -len(".json")].split("_", 1)[1]
    for row in json.load(open(f))["systems"]:
        ms[label][row["system"]].append(row["ms_model"])
        energy[label][row["system"]] = row["energy"]
base = ms.get(base_label)
if not base:
    sys.exit(f"no baseline ({base_label}) rows in {aux}")
score = {}
for v, per in list(ms.items()):
    # a variant whose energy moved is wrong, not fast: never picked
    bad = [s for s in energy[v] if abs(energy[v][s] - energy[base_label].get(s, energy[v][s]))
           > 1e-5 * abs(energy[base_label].get(s, 1.0))]
    if bad:
        print(f"# {v}: energy differs from {base_label} on {bad}: dropped", file=sys.stderr)
        continue
    ratios = [statistics.median(per[s]) / statistics.median(base[s]) for s in base if s in per]
    score[v] = statistics.mean(ratios)
    print(f"# {v}: " + ", ".join(f"{s} {statistics.median(per[s]):.2f} ms" for s in sorted(per))
          + f"; relative {score[v]:.4f}", file=sys.stderr)
best = min(score, key=score.get)
if score[best] > float(os.environ.get("PICK_MIN", "0.99")):
    best = base_label
values = [best] if len(envs) == 1 else best.split("-") if "-" in best else list(best)
print("export " + " ".join(f"{e}={v}" for e, v in zip(envs, values)))
