"""Time OpenEquivariance's fused graph convolution (TensorProductConv, deterministic and atomic)
on the graphs `equikern bench --conv --export-graphs DIR` wrote, so both sides see the same edges.

usage: python3 benches/bench_conv_peers.py GRAPHS_DIR [--suite benches/paper_suite.json]
           [--only label,label] [--graphs name,name] [--dirs forward,backward]
           [--impls oeq-det,oeq-atomic] [--warmup 10] [--reps 30] [--out conv_peers.json]
           [--dry-run]

GRAPHS_DIR/graphs.json lists {name, nodes, edges, receiver, sender} with int64 .npy index files
(edges sorted by (receiver, sender), the order equikern's bench also uses).

OpenEquivariance's convolution sums z[rows[e]] += TP(x[cols[e]], y[e], W[e]): rows are our
receivers, cols our senders. Its deterministic mode wants the edges sorted by (row, col) and a
permutation listing the edges sorted by (col, row) (the transpose, for the x-gradient); the atomic
mode takes the same sorted arrays without the permutation. The sort is checked here (and done,
with y/W drawn in that order, if a file were unsorted).

Driven through its PyTorch module and autograd, as shared/peers/bench_peers.py does:
  forward   z = conv(x, y, w, rows, cols[, perm])                       (no graph)
  backward  grad(z, [x, y, w], g)  with z computed once, outside the timing
CUDA events: --warmup untimed then --reps timed calls, median reported (10 / 30 as the peers'
script). peak_bytes: torch.cuda.max_memory_allocated() over the row (inputs, outputs, index
arrays, the module's workspace), reset before the row's inputs are made.
Rows: {graph, nodes, edges, problem, direction, impl, variant, ms, min_ms, reps, peak_bytes,
wall_s | error}, printed as they finish and written to --out.

--dry-run needs neither torch nor a GPU: it loads and checks every graph (indices in range,
sorted, the transpose permutation) and prints what would be timed.
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("graphs_dir")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--suite", default=os.path.join(here, "paper_suite.json"))
    ap.add_argument("--only", default="", help="problem labels (default: mace-* and nequip-*)")
    ap.add_argument("--graphs", default="", help="graph names from graphs.json (default: all)")
    ap.add_argument("--dirs", default="forward,backward")
    ap.add_argument("--impls", default="oeq-det,oeq-atomic")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default="conv_peers.json")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    for d in a.dirs.split(","):
        if d not in ("forward", "backward"):
            ap.error(f"--dirs: unknown direction {d!r} (forward, backward)")
    for i in a.impls.split(","):
        if i not in ("oeq-det", "oeq-atomic"):
            ap.error(f"--impls: unknown implementation {i!r} (oeq-det, oeq-atomic)")
    if a.reps < 1 or a.warmup < 0:
        ap.error("--reps must be >= 1 and --warmup >= 0")
    return a


def load_graphs(graphs_dir, names=""):
    """[(meta, rows, cols, perm)] with rows/cols int64 sorted by (row, col), perm the transpose."""
    with open(os.path.join(graphs_dir, "graphs.json")) as f:
        manifest = json.load(f)["graphs"]
    want = [n for n in names.split(",") if n]
    for n in want:
        if not any(g["name"] == n for g in manifest):
            raise SystemExit(f"--graphs: no graph named {n!r} in {graphs_dir}/graphs.json")
    out = []
    for g in manifest:
        if want and g["name"] not in want:
            continue
        recv = np.load(os.path.join(graphs_dir, g["receiver"])).astype(np.int64)
        send = np.load(os.path.join(graphs_dir, g["sender"])).astype(np.int64)
        n, e = int(g["nodes"]), int(g["edges"])
        if recv.shape != (e,) or send.shape != (e,):
            raise SystemExit(f"graph {g['name']}: index arrays of shape {recv.shape}/{send.shape}, expected ({e},)")
        for name, v in (("receiver", recv), ("sender", send)):
            if e and (v.min() < 0 or v.max() >= n):
                raise SystemExit(f"graph {g['name']}: {name} index out of range 0..{n}")
        order = np.lexsort((send, recv))  # by receiver, then sender (stable)
        if not np.array_equal(order, np.arange(e)):
            print(f"graph {g['name']}: edges were not sorted by (receiver, sender); sorting", flush=True)
        rows, cols = recv[order], send[order]
        perm = np.lexsort((rows, cols))  # positions of the sorted edges, by (sender, receiver)
        assert np.all(np.diff(cols[perm]) >= 0)
        out.append((g, rows, cols, perm))
    return out


def problem_list(suite_path, only):
    with open(suite_path) as f:
        probs = json.load(f)["problems"]
    if only:
        want = only.split(",")
        for w in want:
            if not any(p["label"] == w for p in probs):
                raise SystemExit(f"--only: no problem labelled {w!r} in {suite_path}")
        # in the order given: cheap problems first, so a run cut short (or a peer failure that
        # poisons the CUDA context) keeps them
        return [next(p for p in probs if p["label"] == w) for w in want]
    return [p for p in probs if p["label"].startswith(("mace", "nequip"))]


def main(argv=None):
    a = parse_args(argv)
    graphs = load_graphs(a.graphs_dir, a.graphs)
    probs = problem_list(a.suite, a.only)
    dirs, impls = a.dirs.split(","), a.impls.split(",")
    print(f"{len(graphs)} graphs x {len(probs)} problems x {len(dirs)} directions x {impls}", flush=True)
    for g, rows, cols, perm in graphs:
        print(f"  graph {g['name']}: {g['nodes']} nodes, {len(rows)} edges, max in-degree "
              f"{np.bincount(rows, minlength=g['nodes']).max() if len(rows) else 0}", flush=True)
    if a.dry_run:
        for p in probs:
            print(f"  problem {p['label']}: {p['irreps_in1']} x {p['irreps_in2']}", flush=True)
        print("dry run: graphs and arguments are fine", flush=True)
        return 0

    import torch
    import openequivariance as oeq

    dev = torch.device("cuda")

    def instr(s):
        return [tuple(i) if len(i) == 6 else tuple(i) + (1.0,) for i in s["instructions"]]

    def problem(s):
        return oeq.TPProblem(s["irreps_in1"], s["irreps_in2"], s["irreps_out"], instr(s),
                             shared_weights=s.get("shared_weights", False), internal_weights=False,
                             irrep_normalization=s.get("irrep_normalization", "component"),
                             path_normalization=s.get("path_normalization", "element"),
                             irrep_dtype=np.float32, weight_dtype=np.float32, label=s["label"])

    def timed(fn):
        for _ in range(a.warmup):
            fn()
        ts = []
        for _ in range(a.reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); fn(); e.record(); torch.cuda.synchronize()
            ts.append(s.elapsed_time(e))
        return float(np.median(ts)), float(np.min(ts))

    out_rows = []

    def emit(row):
        out_rows.append(row)
        print(json.dumps(row), flush=True)
        with open(a.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(0), kind="conv", rows=out_rows), f, indent=1)

    for s in probs:
        p = problem(s)
        d1, d2, d3 = (oeq.Irreps(s[k]).dim for k in ("irreps_in1", "irreps_in2", "irreps_out"))
        for impl in impls:
            det = impl == "oeq-det"
            t0 = time.time()
            try:
                conv = oeq.TensorProductConv(p, deterministic=det, torch_op=True)
            except Exception as ex:  # a peer that cannot build a problem is recorded, not fatal
                for g, rows, _, _ in graphs:
                    for d in dirs:
                        emit(dict(graph=g["name"], nodes=g["nodes"], edges=len(rows), problem=s["label"],
                                  direction=d, impl=impl, variant=impl[4:], ms=None,
                                  error=("build: " + repr(ex))[:300]))
                continue
            build_s = time.time() - t0
            wn = conv.weight_numel
            for g, rows_np, cols_np, perm_np in graphs:
                n, e = int(g["nodes"]), len(rows_np)
                for d in dirs:
                    t1 = time.time()
                    row = dict(graph=g["name"], nodes=n, edges=e, problem=s["label"], direction=d,
                               impl=impl, variant=impl[4:], dtype="float32", build_s=round(build_s, 1))
                    try:
                        torch.cuda.synchronize(); torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                        rows = torch.from_numpy(rows_np).to(dev)
                        cols = torch.from_numpy(cols_np).to(dev)
                        perm = torch.from_numpy(perm_np).to(dev) if det else None
                        gen = torch.Generator(device=dev); gen.manual_seed(12345)
                        rnd = lambda *shape: torch.randn(*shape, device=dev, dtype=torch.float32, generator=gen)
                        x, y = rnd(n, d1), rnd(e, d2)
                        w = rnd(wn) if s.get("shared_weights", False) else rnd(e, wn)
                        if d == "forward":
                            with torch.no_grad():
                                ms, mn = timed(lambda: conv(x, y, w, rows, cols, perm))
                        else:
                            x.requires_grad_(True); y.requires_grad_(True); w.requires_grad_(True)
                            z = conv(x, y, w, rows, cols, perm)
                            gz = rnd(n, d3)
                            ms, mn = timed(lambda: torch.autograd.grad(z, [x, y, w], gz, retain_graph=True))
                        torch.cuda.synchronize()
                        row.update(ms=ms, min_ms=mn, reps=a.reps, timing="events",
                                   peak_bytes=int(torch.cuda.max_memory_allocated()))
                    except Exception as ex:  # e.g. out of memory: recorded, not fatal
                        row.update(ms=None, error=repr(ex)[:300])
                    row["wall_s"] = round(time.time() - t1, 1)
                    # free this row's tensors before the next row's peak is measured
                    x = y = w = z = gz = rows = cols = perm = None  # noqa: F841
                    emit(row)
            conv = None
            torch.cuda.empty_cache()

    print("\n%-26s %-24s %-9s" % ("graph", "problem", "direction") + "".join("%12s" % i for i in impls) + "   (ms)")
    for g, *_ in graphs:
        for s in probs:
            for d in dirs:
                cells = []
                for i in impls:
                    ms = next((r.get("ms") for r in out_rows if r["graph"] == g["name"] and
                               r["problem"] == s["label"] and r["direction"] == d and r["impl"] == i), None)
                    cells.append("%12s" % ("-" if ms is None else "%.3f" % ms))
                print("%-26s %-24s %-9s" % (g["name"], s["label"], d) + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
