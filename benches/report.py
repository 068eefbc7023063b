#!/usr/bin/env python3
"""Merge `equikern bench --json` files and the peers' `bench_peers.py --out` files into a markdown
table and an SVG bar chart.

usage: python3 benches/report.py FILE [FILE ...] [--md OUT.md] [--svg OUT.svg]
                                 [--title TEXT]

Every input holds {"rows": [{problem, direction, impl, batch, dtype, ms, ...}], "device": ...},
or is a log with one such row per line (what bench_peers.py prints as it goes).
impl names: equikern-cuda, equikern-wgpu, equikern-cpu (ours); oeq, cue, e3nn (the peers).
Table: one line per problem x direction, milliseconds of each implementation, the ratio
best-peer ms / our ms (> 1: equikern is faster; "ours" = equikern-cuda, else equikern-wgpu),
and our % of floor (floor = bytes with shared weights once / copy bandwidth measured in the
same process). A second table gives first-call and cached compile times.
Plot: log-scale bars of best-peer / ours per problem and direction (cuda and wgpu).
Standard library only.
"""
import argparse
import json
import math
import sys

OURS = ["equikern-cuda", "equikern-wgpu", "equikern-cpu"]
PEERS = {"oeq": "OpenEquivariance", "cue": "cuEquivariance", "e3nn": "e3nn"}
DIRS = ["forward", "backward", "double_backward"]


def load(paths):
    rows, meta = [], []
    for p in paths:
        try:
            with open(p) as f:
                text = f.read()
        except OSError as e:
            print(f"report: skipping {p}: {e}", file=sys.stderr)
            continue
        try:
            doc = json.loads(text)
        except ValueError:
            # A log of one JSON row per line (bench_peers.py prints each row as it goes).
            doc = {"rows": []}
            for line in text.splitlines():
                line = line.strip()
                if line.startswith("{"):
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(r, dict) and "problem" in r and "impl" in r:
                        doc["rows"].append(r)
            if not doc["rows"]:
                print(f"report: skipping {p}: no JSON rows", file=sys.stderr)
                continue
        rs = doc.get("rows", doc if isinstance(doc, list) else [])
        rows.extend(rs)
        meta.append((p, doc if isinstance(doc, dict) else {}))
    return rows, meta


def fmt_ms(v):
    return "-" if v is None else ("%.3f" % v if v < 100 else "%.1f" % v)


def build(rows):
    """{(problem, direction): {impl: row}}, in first-seen problem order."""
    table, order = {}, []
    for r in rows:
        key = (r.get("problem"), r.get("direction"))
        if key not in table:
            table[key] = {}
            order.append(key)
        ms = r.get("ms")
        prev = table[key].get(r.get("impl"))
        # Keep the faster of duplicate measurements (e.g. two runs of one impl).
        if prev is None or (ms is not None and (prev.get("ms") is None or ms < prev["ms"])):
            table[key][r.get("impl")] = r
    problems = []
    for p, _ in order:
        if p not in problems:
            problems.append(p)
    keys = [(p, d) for p in problems for d in DIRS if (p, d) in table]
    keys += [k for k in order if k not in keys]
    return table, keys


def ms_of(cell, impl):
    r = cell.get(impl)
    return None if r is None else r.get("ms")


def best_peer(cell):
    vals = [(ms_of(cell, k), PEERS[k]) for k in PEERS if ms_of(cell, k) is not None]
    return min(vals) if vals else (None, None)


def ours_of(cell):
    for k in OURS:
        if ms_of(cell, k) is not None:
            return k, cell[k]
    return None, None


def markdown(table, keys, meta, title):
    out = [f"# {title}", ""]
    for p, doc in meta:
        bits = [f"`{p}`"]
        if doc.get("device"):
            bits.append(f"device {doc['device']}")
        if doc.get("impl"):
            bits.append(doc["impl"])
        if doc.get("copy_gbps"):
            bits.append(f"copy bandwidth {doc['copy_gbps']:.0f} GB/s ({doc.get('copy_timing', '?')})")
        if doc.get("timing"):
            bits.append(f"timing: {doc['timing']}")
        if doc.get("batch"):
            bits.append(f"batch {doc['batch']}")
        if doc.get("dtype"):
            bits.append(str(doc["dtype"]))
        out.append("- " + ", ".join(bits))
    out += [
        "",
        "Milliseconds, median. ratio = best peer ms / our ms (> 1: equikern faster; ours = "
        "equikern-cuda, else equikern-wgpu). % of floor = (bytes with shared weights once / "
        "measured copy bandwidth) / ms.",
        "",
        "| problem | direction | equikern-cuda | equikern-wgpu | OpenEquivariance | "
        "cuEquivariance | e3nn | best peer / ours | % of floor (cuda) | % of floor (wgpu) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        cell = table[key]
        bp, bp_name = best_peer(cell)
        _, ours = ours_of(cell)
        ratio = "-"
        if bp is not None and ours is not None and ours.get("ms"):
            ratio = "%.2f× (%s)" % (bp / ours["ms"], bp_name)

        def pct(impl):
            r = cell.get(impl)
            return "-" if r is None or r.get("pct_floor") is None else "%.0f%%" % r["pct_floor"]

        out.append(
            "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
            % (
                key[0],
                key[1],
                fmt_ms(ms_of(cell, "equikern-cuda")),
                fmt_ms(ms_of(cell, "equikern-wgpu")),
                fmt_ms(ms_of(cell, "oeq")),
                fmt_ms(ms_of(cell, "cue")),
                fmt_ms(ms_of(cell, "e3nn")),
                ratio,
                pct("equikern-cuda"),
                pct("equikern-wgpu"),
            )
        )
    errs = [
        (k, impl, r.get("error"))
        for k in keys
        for impl, r in table[k].items()
        if r.get("ms") is None and r.get("error")
    ]
    if errs:
        out += ["", "Failed or unsupported:", ""]
        for (p, d), impl, e in errs:
            out.append(f"- {p} {d} {impl}: {str(e)[:160]}")
    comp = [
        (k, impl, r)
        for k in keys
        for impl, r in table[k].items()
        if impl.startswith("equikern") and r.get("compile_ms") is not None
    ]
    if comp:
        out += [
            "",
            "## Compile times (ms)",
            "",
            "First call: CUDA emit + NVRTC + module load with an empty cache (the first problem "
            "also loads NVRTC); wgpu lowering + WGSL + pipeline creation. Cached: CUDA from the "
            "on-disk cache into a fresh memory cache; wgpu the runtime's in-memory pipeline cache.",
            "",
            "| problem | direction | impl | first call | cached |",
            "|---|---|---|---|---|",
        ]
        for (p, d), impl, r in comp:
            out.append(
                "| %s | %s | %s | %.1f | %.2f |"
                % (p, d, impl, r["compile_ms"], r.get("compile_cached_ms") or 0.0)
            )
    return "\n".join(out) + "\n"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(table, keys, title):
    series = [("equikern-cuda", "#2a7ab0"), ("equikern-wgpu", "#e08a1e")]
    items = []
    for key in keys:
        cell = table[key]
        bp, _ = best_peer(cell)
        vals = []
        for impl, _c in series:
            m = ms_of(cell, impl)
            vals.append(None if bp is None or not m else bp / m)
        if any(v is not None for v in vals):
            items.append((key, vals))
    bar_h, gap, left, width, top = 7, 6, 260, 420, 46
    group_h = bar_h * len(series) + gap
    height = top + group_h * max(len(items), 1) + 40
    lo, hi = -3.0, 3.0  # log2 range: 1/8x .. 8x
    finite = [math.log2(v) for _, vs in items for v in vs if v]
    if finite:
        lo = min(lo, math.floor(min(finite)))
        hi = max(hi, math.ceil(max(finite)))

    def x(v):
        return left + (max(lo, min(hi, v)) - lo) / (hi - lo) * width

    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 30}" height="{height}" '
        'font-family="sans-serif" font-size="10">',
        f'<text x="10" y="16" font-size="13">{esc(title)}: best peer ms / equikern ms '
        "(log scale; right of 1: equikern faster)</text>",
    ]
    for i, (impl, c) in enumerate(series):
        o.append(f'<rect x="{10 + 130 * i}" y="26" width="10" height="8" fill="{c}"/>')
        o.append(f'<text x="{24 + 130 * i}" y="34">{impl}</text>')
    for e in range(int(lo), int(hi) + 1):
        xe = x(e)
        o.append(
            f'<line x1="{xe:.1f}" y1="{top - 4}" x2="{xe:.1f}" y2="{height - 30}" '
            f'stroke="{"#000" if e == 0 else "#ddd"}" stroke-width="{1.2 if e == 0 else 0.6}"/>'
        )
        lab = ("%g" % (2.0**e)) + "×"
        o.append(f'<text x="{xe:.1f}" y="{height - 16}" text-anchor="middle">{lab}</text>')
    for gi, ((p, d), vals) in enumerate(items):
        y0 = top + gi * group_h
        o.append(
            f'<text x="{left - 6}" y="{y0 + bar_h * len(series) / 2 + 3:.1f}" '
            f'text-anchor="end">{esc(p)} {esc(d)}</text>'
        )
        for si, v in enumerate(vals):
            if v is None:
                continue
            a, b = x(0), x(math.log2(v))
            o.append(
                f'<rect x="{min(a, b):.1f}" y="{y0 + si * bar_h}" width="{max(abs(b - a), 0.8):.1f}" '
                f'height="{bar_h - 1}" fill="{series[si][1]}"><title>{esc(series[si][0])} '
                f"{esc(p)} {esc(d)}: {v:.2f}x</title></rect>"
            )
    o.append("</svg>")
    return "\n".join(o) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--md", default=None, help="write the markdown here (default: stdout)")
    ap.add_argument("--svg", default=None, help="write the SVG plot here")
    ap.add_argument("--title", default="equikern vs peers")
    a = ap.parse_args()
    rows, meta = load(a.files)
    if not rows:
        print("report: no rows in the inputs", file=sys.stderr)
        return 1
    table, keys = build(rows)
    md = markdown(table, keys, meta, a.title)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
        print(f"report: wrote {a.md} ({len(keys)} problem x direction lines)")
    else:
        sys.stdout.write(md)
    if a.svg:
        with open(a.svg, "w") as f:
            f.write(svg(table, keys, a.title))
        print(f"report: wrote {a.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
