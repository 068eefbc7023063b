#!/usr/bin/env python3
"""Loads the example page (web/index.html, built with web/build.sh) in headless Chromium
through chromedriver (W3C WebDriver over HTTP, standard library only) and asserts that the
JSON result the page publishes says pass.

    python3 web/page_test.py [--query '?suite=1&batch=16'] [--json OUT.json] [--timeout S]
    python3 web/page_test.py --no-webgpu   # negative control: expects "no adapters"
    python3 web/page_test.py --expect-clock gpu-timestamps   # fail unless GPU timestamps were used

Exit 0 on pass (or, with --no-webgpu, on the expected failure), 1 otherwise."""
import argparse, functools, http.server, json, os, shutil, socket, subprocess, sys, tempfile
import threading, time, urllib.request

WEB = os.path.dirname(os.path.abspath(__file__))
FLAGS = ["--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic",
         "--disable-dev-shm-usage"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wd(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["value"]
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"webdriver {method} {path}: {e.read().decode()[:500]}") from None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--query", default="")
    ap.add_argument("--json")
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--no-webgpu", action="store_true")
    ap.add_argument("--expect-clock", choices=["gpu-timestamps", "performance.now"],
                    help="fail unless the page timed its kernels with this clock")
    a = ap.parse_args()
    if not os.path.exists(os.path.join(WEB, "pkg", "equikern_wasm.js")):
        sys.exit("web/pkg missing: run web/build.sh first")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=WEB)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    page = f"http://127.0.0.1:{srv.server_address[1]}/index.html{a.query}"

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VK_ICD_FILENAMES", "VK_DRIVER_FILES")}
    drv = subprocess.Popen([shutil.which("chromedriver") or "chromedriver", f"--port={port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    profile = tempfile.mkdtemp(prefix="equikern-chrome-")
    sid = None
    try:
        for _ in range(100):
            try:
                wd(base, "GET", "/status")
                break
            except Exception:
                time.sleep(0.1)
        args = FLAGS + [f"--user-data-dir={profile}"]
        if not a.no_webgpu:
            args.append("--enable-unsafe-webgpu")
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"args": args}}}}
        sid = wd(base, "POST", "/session", caps)["sessionId"]
        wd(base, "POST", f"/session/{sid}/url", {"url": page})
        script = ("const e = document.getElementById('result');"
                  "return e && e.dataset.done === 'true' ? e.textContent : null;")
        t0, res = time.time(), None
        while time.time() - t0 < a.timeout:
            res = wd(base, "POST", f"/session/{sid}/execute/sync", {"script": script, "args": []})
            if res:
                break
            time.sleep(0.5)
        if not res:
            log = wd(base, "POST", f"/session/{sid}/execute/sync",
                     {"script": "return document.getElementById('log').textContent", "args": []})
            print(f"FAIL: no result after {a.timeout:.0f} s; page log:\n{log}")
            return 1
        r = json.loads(res)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(r, f, indent=1)
        if a.no_webgpu:
            ok = (not r["pass"]) and "no adapters" in r.get("error", "").lower()
            print(("PASS" if ok else "FAIL") + f" (negative control, no WebGPU flag): {r.get('error')}")
            return 0 if ok else 1
        print(f"adapter: {r.get('adapter')}")
        print(f"kernel timings: {r.get('clock')} ({r.get('clockWhy')})")
        for p in r.get("results", []):
            print(f"  {p['label']:<24} batch {p['batch']}: kernels fwd {p['fwdMs']:.2f} ms, bwd {p['bwdMs']:.2f} ms "
                  f"({p['clock']}); host arrays {p['hostFwdMs']:.2f}/{p['hostBwdMs']:.2f} ms; "
                  f"rel L2 {p['errFwd']:.1e}/{p['errBwd']:.1e} {'pass' if p['pass'] else 'FAIL'}")
        if a.expect_clock and r.get("clock") != a.expect_clock:
            print(f"FAIL: kernel timings used {r.get('clock')}, expected {a.expect_clock}")
            return 1
        print(("PASS" if r["pass"] else "FAIL") + f": page result ({time.time() - t0:.1f} s)"
              + ("" if r["pass"] else f" {r.get('error', '')}"))
        return 0 if r["pass"] else 1
    finally:
        if sid:
            try:
                wd(base, "DELETE", f"/session/{sid}")
            except Exception:
                pass
        drv.terminate()
        drv.wait(timeout=10)
        srv.shutdown()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
