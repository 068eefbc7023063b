#!/usr/bin/env python3
"""Merge `equikern bench --conv --json` files and `bench_conv_peers.py --out` files (or their
logs, one JSON row per line) into a markdown table of the fused graph convolution.

usage: python3 benches/report_conv.py FILE [FILE ...] [--md OUT.md] [--title TEXT]

One line per graph x problem x direction: milliseconds of every implementation (ours:
equikern-<backend>-<variant>, variants det / pieces / atomic / unfused / det-rows /
pieces-rows (the row-kernel backward, A/B: adds a "det-rows / det" column); peers: oeq-det,
oeq-atomic), the speed-up of our best deterministic CUDA variant over OpenEquivariance's
deterministic one (oeq-det ms / ours ms; > 1: equikern is faster), and device memory in GiB
(ours: counted buffers of the call; peers: torch peak allocated over the row). Rows that were
skipped or failed show "-" (their reasons are listed under the table). Standard library only.
"""
import argparse
import json
import sys


def load(paths):
    rows, meta = [], []
    for p in paths:
        text = open(p).read()
        try:
            doc = json.loads(text)
            rows += doc.get("rows", [])
            meta.append((p, doc.get("device", "?"), doc.get("graphs")))
        except json.JSONDecodeError:
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("{") and '"graph"' in line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
            meta.append((p, "(log)", None))
    return rows, meta


def fmt_ms(v):
    return "-" if v is None else ("%.3f" % v if v < 100 else "%.1f" % v)


def gib(r):
    b = r.get("device_bytes", r.get("peak_bytes"))
    return None if not b else b / 2**30


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--md")
    ap.add_argument("--title", default="Fused graph convolution")
    a = ap.parse_args(argv)
    rows, meta = load(a.files)
    if not rows:
        print("no rows in " + ", ".join(a.files), file=sys.stderr)
        return 1
    impls = []
    for r in rows:
        if r.get("impl") and r["impl"] not in impls:
            impls.append(r["impl"])
    order = lambda i: (not i.startswith("equikern-cuda"), not i.startswith("equikern"), "atomic" in i, i)
    impls.sort(key=order)
    keys = []
    for r in rows:
        k = (r.get("graph"), r.get("problem"), r.get("direction"))
        if k not in keys:
            keys.append(k)
    by = {(r.get("graph"), r.get("problem"), r.get("direction"), r.get("impl")): r for r in rows}
    edges = {r.get("graph"): (r.get("nodes"), r.get("edges")) for r in rows}
    out = ["# " + a.title, ""]
    for p, dev, _ in meta:
        out.append(f"- `{p}`: {dev}")
    out.append("")
    out.append("Graphs: " + "; ".join(f"{g}: {n} nodes, {e} edges" for g, (n, e) in edges.items()))
    out.append("")
    out.append("Milliseconds (median; CUDA events / wgpu timestamps), float32.")
    out.append("")
    ab = "equikern-cuda-det-rows" in impls  # the channel-fusion A/B (--variants det-rows)
    head = ["graph", "problem", "direction"] + impls + ["oeq-det / our best det (cuda)"]
    if ab:
        head.append("det-rows / det (cuda)")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    notes = []
    for k in keys:
        cells = []
        for i in impls:
            r = by.get(k + (i,))
            cell = fmt_ms(r.get("ms")) if r else ""
            if r and r.get("host_ms") is not None:  # CSR built on the device vs on the host
                cell += " (host %s)" % fmt_ms(r["host_ms"])
            cells.append(cell)
            if r and r.get("ms") is None and r.get("error"):
                notes.append(f"{k[0]} {k[1]} {k[2]} {i}: {r['error']}")
        ours = [by[k + (i,)]["ms"] for i in ("equikern-cuda-det", "equikern-cuda-pieces")
                if k + (i,) in by and by[k + (i,)].get("ms")]
        peer = by.get(k + ("oeq-det",), {}).get("ms")
        ratio = "%.2f" % (peer / min(ours)) if ours and peer else "-"
        extra = [ratio]
        if ab:
            f = by.get(k + ("equikern-cuda-det",), {}).get("ms")
            r = by.get(k + ("equikern-cuda-det-rows",), {}).get("ms")
            extra.append("%.2f" % (r / f) if f and r else "-")
        out.append("| " + " | ".join(list(map(str, k)) + cells + extra) + " |")
    out.append("")
    out.append("Device memory, GiB (ours: counted buffers of the call; OpenEquivariance: torch peak allocated).")
    out.append("")
    head = ["graph", "problem", "direction"] + impls
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for k in keys:
        cells = []
        for i in impls:
            r = by.get(k + (i,))
            g = gib(r) if r and r.get("ms") is not None else None
            cells.append("-" if g is None else "%.2f" % g)
        out.append("| " + " | ".join(list(map(str, k)) + cells) + " |")
    if notes:
        out += ["", "Not measured:", ""] + ["- " + n for n in notes]
    text = "\n".join(out) + "\n"
    if a.md:
        open(a.md, "w").write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
