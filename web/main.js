// equikern example page: one paper-suite problem (or all of them with ?suite=1) forward and
// backward on WebGPU, checked against the f64 oracle; publishes a JSON result in #result
// (data-done="true") and on the console as "EQUIKERN_RESULT {...}".
import init, { Device, paperSuite, oracleForward, oracleBackward } from "./pkg/equikern_wasm.js";

const logEl = document.getElementById("log");
const resultEl = document.getElementById("result");
const lines = [];
function log(s) { lines.push(s); logEl.textContent = lines.join("\n"); console.log(s); }

function publish(obj) {
  const json = JSON.stringify(obj, null, 1);
  resultEl.textContent = json;
  resultEl.dataset.done = "true";
  console.log("EQUIKERN_RESULT " + JSON.stringify(obj));
}

// Seeded values in ±[0.1, 1).
function randArray(n, seed) {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const m = 0.1 + 0.9 * (s / 4294967296);
    a[i] = (s & 256) ? -m : m;
  }
  return a;
}

function relL2(got, want) {
  let num = 0, den = 0;
  for (let i = 0; i < want.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    num += (got[i] - want[i]) ** 2; den += want[i] ** 2;
  }
  return got.length !== want.length ? Infinity : (den === 0 ? Math.sqrt(num) : Math.sqrt(num / den));
}

const median = (v) => { const s = [...v].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

async function runProblem(dev, label, spec, batch, reps) {
  const tp = dev.tensorProduct(spec);
  const wl = tp.sharedWeights ? tp.weightNumel : batch * tp.weightNumel;
  const x = randArray(batch * tp.dimIn1, 1), y = randArray(batch * tp.dimIn2, 2);
  const w = randArray(wl, 3), gz = randArray(batch * tp.dimOut, 4);
  // First calls compile the kernels; time them separately.
  let t = performance.now();
  const z = await tp.forward(batch, x, y, w);
  const fwdFirst = performance.now() - t;
  t = performance.now();
  const g = await tp.backward(batch, x, y, w, gz);
  const bwdFirst = performance.now() - t;
  const fwdMs = [], bwdMs = [];
  for (let r = 0; r < reps; r++) {
    t = performance.now(); await tp.forward(batch, x, y, w); fwdMs.push(performance.now() - t);
    t = performance.now(); await tp.backward(batch, x, y, w, gz); bwdMs.push(performance.now() - t);
  }
  const f64 = (a) => Float64Array.from(a);
  t = performance.now();
  const zr = oracleForward(spec, batch, f64(x), f64(y), f64(w));
  const oracleFwdMs = performance.now() - t;
  t = performance.now();
  const gr = oracleBackward(spec, batch, f64(x), f64(y), f64(w), f64(gz));
  const oracleBwdMs = performance.now() - t;
  const errFwd = relL2(z, zr);
  const errBwd = Math.max(relL2(g.gradX, gr.gradX), relL2(g.gradY, gr.gradY), relL2(g.gradW, gr.gradW));
  const pass = errFwd <= 1e-5 && errBwd <= 1e-5;
  const r = {
    label, batch, pass, errFwd, errBwd,
    fwdMs: Math.min(...fwdMs), bwdMs: Math.min(...bwdMs), fwdMedianMs: median(fwdMs), bwdMedianMs: median(bwdMs), fwdFirstMs: fwdFirst, bwdFirstMs: bwdFirst,
    oracleFwdMs, oracleBwdMs, weightNumel: tp.weightNumel,
  };
  tp.free();
  log(`${label.padEnd(24)} batch ${batch}: fwd ${r.fwdMs.toFixed(2)} ms, bwd ${r.bwdMs.toFixed(2)} ms ` +
      `(first ${fwdFirst.toFixed(0)}/${bwdFirst.toFixed(0)} ms with compile), oracle ${oracleFwdMs.toFixed(1)}/` +
      `${oracleBwdMs.toFixed(1)} ms, rel L2 ${errFwd.toExponential(1)}/${errBwd.toExponential(1)} ` +
      (pass ? "PASS" : "FAIL"));
  return r;
}

async function main() {
  const q = new URLSearchParams(location.search);
  const batch = Number(q.get("batch") || 16);
  const reps = Math.max(1, Number(q.get("reps") || 5));
  const t0 = performance.now();
  await init();
  const suite = paperSuite();
  const wanted = q.get("suite") ? suite.map((p) => p.label) : [q.get("problem") || "nequip-revmd17-benzene"];
  const dev = await Device.open();
  const info = dev.info();
  log(`adapter: ${info.adapter}; timestamp-query: ${info.timestampQuery}`);
  log(`capabilities: ${JSON.stringify(info.capabilities)}`);
  const results = [];
  for (const label of wanted) {
    const p = suite.find((p) => p.label === label);
    if (!p) throw new Error(`no paper-suite problem "${label}"; have: ${suite.map((p) => p.label).join(", ")}`);
    results.push(await runProblem(dev, label, p.spec, batch, reps));
  }
  publish({
    pass: results.every((r) => r.pass), adapter: info.adapter, capabilities: info.capabilities,
    timing: "best of reps, performance.now() around awaited host-array calls (upload + dispatch + readback); first call includes shader compilation",
    totalMs: performance.now() - t0, results,
  });
}

main().catch((e) => {
  log("ERROR: " + (e && e.message ? e.message : e));
  publish({ pass: false, error: String(e && e.message ? e.message : e) });
});
