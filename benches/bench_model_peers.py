#!/usr/bin/env python3
"""sevenn's own PyTorch SevenNet-0 on the systems `equikern bench --model` measures.

The systems come from `equikern bench --model CKPT --systems ... --export-systems DIR` (the very
same atoms, extended XYZ). Per system and implementation (sevenn + OpenEquivariance, sevenn +
cuEquivariance, plain e3nn), float32, energy + forces + stress per step:
  * model_ms: the model on a graph built once (sevenn's own neighbour list), median of reps,
    torch.cuda.synchronize() around each call (host wall clock, as our bench);
  * step_ms: graph build + model (what an MD step pays), median of reps;
  * first_ms: the first model call of the process for this system (JIT / compile included);
  * peak_bytes: torch.cuda.max_memory_allocated() over the system's calls.
Needs torch, e3nn, ase, matscipy, sevenn==0.13.0 (+ openequivariance / cuequivariance for
those rows) importable: see shared/notes/sevennet.md. Each row is printed as JSON when done,
so a timeout keeps the rows already measured.

    python3 benches/bench_model_peers.py DIR --checkpoint models/checkpoint_sevennet_0.pth \
        --impls oeq,cueq --reps 10 --warmup 2 --out peers_model.json
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

import torch


def build_model(path, impl, device):
    from sevenn.util import load_checkpoint

    torch.set_default_dtype(torch.float32)
    cp = load_checkpoint(path)
    flags = {"enable_oeq": impl == "oeq", "enable_cueq": impl == "cueq", "enable_flash": False}
    model = cp.build_model(**flags)
    model.set_is_batch_data(False)
    model.eval()
    model.to(device)
    cutoff = float(cp.config["cutoff"])
    return model, cutoff


def graph(atoms, cutoff, device):
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from sevenn.util import dtype_correct

    dct = unlabeled_atoms_to_graph(atoms, cutoff, with_shift=False)
    dct = {
        k: (v if k == KEY.INFO else dtype_correct(v, float_dtype=torch.float32))
        for k, v in dct.items()
    }
    data = AtomGraphData(**dct)
    data.to(device)
    return data


def call(model, data):
    import sevenn._keys as KEY

    # The model mutates its input dict: give it a fresh shallow copy each call.
    out = model(data.clone())
    torch.cuda.synchronize()
    return out, KEY


def timed(f):
    torch.cuda.synchronize()
    t = time.perf_counter()
    r = f()
    torch.cuda.synchronize()
    return r, (time.perf_counter() - t) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", help="folder of <system>.extxyz from `equikern bench --model --export-systems`")
    ap.add_argument("--checkpoint", default="models/checkpoint_sevennet_0.pth")
    ap.add_argument("--impls", default="oeq,cueq", help="oeq, cueq, e3nn")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ase.io import read

    device = torch.device("cuda")
    # Smallest systems first: a stage cut short by its timeout keeps the cheap rows.
    files = sorted(glob.glob(os.path.join(args.dir, "*.extxyz")), key=os.path.getsize)
    if not files:
        sys.exit(f"no .extxyz in {args.dir}")
    rows = []
    for impl in [s for s in args.impls.split(",") if s]:
        try:
            t0 = time.perf_counter()
            model, cutoff = build_model(args.checkpoint, impl, device)
            build_ms = (time.perf_counter() - t0) * 1e3
        except Exception as e:  # an absent peer package: say so, go on with the others
            print(json.dumps({"impl": impl, "error": f"build: {e!r}"}), flush=True)
            continue
        for path in files:
            name = os.path.basename(path)[: -len(".extxyz")].replace("_", ":")
            atoms = read(path)
            row = {"impl": impl, "system": name, "atoms": len(atoms), "dtype": "float32",
                   "build_model_ms": build_ms, "timing": "host wall clock, cuda synchronize"}
            try:
                torch.cuda.reset_peak_memory_stats()
                data, graph_ms = timed(lambda: graph(atoms, cutoff, device))
                (out, KEY), first_ms = timed(lambda: call(model, data))
                row["edges"] = int(out[KEY.EDGE_IDX].shape[1])
                row["energy"] = float(out[KEY.PRED_TOTAL_ENERGY].detach().cpu().item())
                row["first_ms"] = first_ms + graph_ms
                for _ in range(args.warmup):
                    call(model, data)
                model_ms = [timed(lambda: call(model, data))[1] for _ in range(args.reps)]
                step_ms = [timed(lambda: call(model, graph(atoms, cutoff, device)))[1]
                           for _ in range(args.reps)]
                row["model_ms"] = statistics.median(model_ms)
                row["step_ms"] = statistics.median(step_ms)
                row["atoms_per_s"] = len(atoms) / (row["model_ms"] / 1e3)
                row["peak_bytes"] = int(torch.cuda.max_memory_allocated())
            except Exception as e:
                row["error"] = repr(e)
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.out:  # rewritten after every row: a timeout keeps what was measured
                with open(args.out, "w") as f:
                    json.dump({"rows": rows}, f, indent=1)
        del model
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
