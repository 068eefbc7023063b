#!/usr/bin/env python3
"""Side-by-side table of `equikern bench --model --json` and benches/bench_model_peers.py output.

    python3 benches/report_model.py model_cuda.json model_peers.json [--md OUT.md]

Per system: our model-only and with-neighbour-list ms per step, each peer's, the speed-up over
the faster peer (model only, and whole step), peak device memory against cuEquivariance's, and
first-call times. Issue #9's targets are printed beside the ratios they judge.
"""
import argparse
import json

TARGET_SPEEDUP = {"si:4096": 4.0, "si:32768": 1.5}


def load_ours(path):
    d = json.load(open(path))
    return d, {r["system"]: r for r in d.get("systems", [])}


def load_peers(path):
    d = json.load(open(path))
    rows = d["rows"] if isinstance(d, dict) else d
    out = {}
    for r in rows:
        if "model_ms" in r:
            out.setdefault(r["system"], {})[r["impl"]] = r
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("peers")
    ap.add_argument("--md")
    a = ap.parse_args()
    meta, ours = load_ours(a.ours)
    peers = load_peers(a.peers)
    lines = [
        f"equikern: {meta.get('device', '?')} {meta.get('dtype', '')}; peers: sevenn 0.13.0 float32",
        "",
        "| system | atoms / edges | ours ms (model / +nl) | OEQ ms (model / +graph) | cuEq ms (model / +graph) "
        "| speed-up vs faster peer (model / step) | target | peak GiB ours / OEQ / cuEq | ours / cuEq memory "
        "| first call s ours / OEQ / cuEq |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in ours.items():
        p = peers.get(name, {})
        o, c = p.get("oeq"), p.get("cueq")
        pm = [x["model_ms"] for x in (o, c) if x]
        ps = [x["step_ms"] for x in (o, c) if x]
        sm = f"{min(pm) / r['ms_model']:.2f}×" if pm else "-"
        ss = f"{min(ps) / r['ms_with_nl']:.2f}×" if ps else "-"
        gib = lambda b: f"{b / 2**30:.2f}" if b else "-"
        mem = f"{r['peak_device_bytes'] / c['peak_bytes']:.2f}" if c and r.get("peak_device_bytes") else "-"
        fc = lambda x: f"{x['first_ms'] / 1e3:.2f}" if x else "-"
        tgt = TARGET_SPEEDUP.get(name)
        lines.append(
            f"| {name} | {r['atoms']} / {r['edges']} | {r['ms_model']:.2f} / {r['ms_with_nl']:.2f} "
            f"| {o['model_ms']:.2f} / {o['step_ms']:.2f} | " if o else
            f"| {name} | {r['atoms']} / {r['edges']} | {r['ms_model']:.2f} / {r['ms_with_nl']:.2f} | - | "
        )
        lines[-1] += (f"{c['model_ms']:.2f} / {c['step_ms']:.2f} | " if c else "- | ")
        lines[-1] += (
            f"{sm} / {ss} | {'≥ %.1f×' % tgt if tgt else ''} | {gib(r.get('peak_device_bytes'))} / "
            f"{gib(o and o['peak_bytes'])} / {gib(c and c['peak_bytes'])} | {mem} (≤ 0.5) | "
            f"{r['first_call_ms'] / 1e3:.2f} / {fc(o)} / {fc(c)} |"
        )
    text = "\n".join(lines)
    print(text)
    if a.md:
        open(a.md, "w").write(text + "\n")


if __name__ == "__main__":
    main()
