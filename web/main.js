// equikern example page: one paper-suite problem (or all of them with ?suite=1) forward and
// backward on WebGPU, checked against the f64 oracle; publishes a JSON result in #result
// (data-done="true") and on the console as "EQUIKERN_RESULT {...}".
//
// Timings: the kernels of one call on GPU tensors (no host copies), measured with GPU
// timestamps where the device has 'timestamp-query' (an empty compute pass writing a timestamp
// is submitted just before the library's work and another just after; queue order brackets
// it), otherwise with performance.now() around the call until the queue is done. `?clock=host`
// forces the fallback. End-to-end host-array calls (upload, dispatch, readback) are always
// timed with performance.now() too.
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

// Times `reps` runs of `fn` (which submits GPU work on `gpu`'s queue); milliseconds each.
class KernelClock {
  constructor(gpu, forceHost) {
    this.gpu = gpu;
    this.kind = !forceHost && gpu && gpu.features.has("timestamp-query") ? "gpu-timestamps" : "performance.now";
    this.why = this.kind === "gpu-timestamps" ? "device has timestamp-query"
      : forceHost ? "?clock=host" : "device lacks timestamp-query";
  }

  async time(fn, reps) {
    if (this.kind === "gpu-timestamps") {
      try {
        return await this.timeGpu(fn, reps);
      } catch (e) {
        this.kind = "performance.now";
        this.why = `GPU timestamps failed (${e && e.message ? e.message : e})`;
      }
    }
    const out = [];
    for (let r = 0; r < reps; r++) {
      const t = performance.now();
      await fn();
      await this.gpu.queue.onSubmittedWorkDone();
      out.push(performance.now() - t);
    }
    return out;
  }

  // One empty compute pass that writes a timestamp at its beginning or end.
  mark(querySet, writes) {
    const enc = this.gpu.createCommandEncoder({ label: "equikern page timestamp" });
    enc.beginComputePass({ timestampWrites: { querySet, ...writes } }).end();
    this.gpu.queue.submit([enc.finish()]);
  }

  async timeGpu(fn, reps) {
    const gpu = this.gpu, n = 2 * reps;
    gpu.pushErrorScope("validation");
    const qs = gpu.createQuerySet({ type: "timestamp", count: n });
    for (let r = 0; r < reps; r++) {
      this.mark(qs, { beginningOfPassWriteIndex: 2 * r });
      await fn();
      this.mark(qs, { endOfPassWriteIndex: 2 * r + 1 });
    }
    const resolve = gpu.createBuffer({ size: 8 * n, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    const read = gpu.createBuffer({ size: 8 * n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    const enc = gpu.createCommandEncoder();
    enc.resolveQuerySet(qs, 0, n, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, read, 0, 8 * n);
    gpu.queue.submit([enc.finish()]);
    const err = await gpu.popErrorScope();
    if (err) throw new Error(err.message);
    await read.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(read.getMappedRange().slice(0));
    read.unmap();
    read.destroy(); resolve.destroy(); qs.destroy();
    const out = [];
    for (let r = 0; r < reps; r++) {
      // Never-written queries resolve to 0; a clock that runs backwards is no clock.
      if (t[2 * r] === 0n || t[2 * r + 1] < t[2 * r]) throw new Error(`timestamps ${t[2 * r]}, ${t[2 * r + 1]}`);
      out.push(Number(t[2 * r + 1] - t[2 * r]) / 1e6);
    }
    return out;
  }
}

async function runProblem(dev, clock, label, spec, batch, reps) {
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
  // End to end, host arrays.
  const hostFwdMs = [], hostBwdMs = [];
  for (let r = 0; r < reps; r++) {
    t = performance.now(); await tp.forward(batch, x, y, w); hostFwdMs.push(performance.now() - t);
    t = performance.now(); await tp.backward(batch, x, y, w, gz); hostBwdMs.push(performance.now() - t);
  }
  // Kernels only, GPU tensors.
  const [tx, ty, tw, tgz] = [x, y, w, gz].map((a) => dev.tensorFrom(a));
  const tz = dev.createTensor(z.length);
  const [tgx, tgy, tgw] = [x, y, w].map((a) => dev.createTensor(a.length));
  const fwdMs = await clock.time(() => tp.forwardBuffers(batch, tx, ty, tw, tz), reps);
  const bwdMs = await clock.time(() => tp.backwardBuffers(batch, tx, ty, tw, tgz, tgx, tgy, tgw), reps);
  const zBuf = await tz.read(), gxBuf = await tgx.read();
  for (const b of [tx, ty, tw, tgz, tz, tgx, tgy, tgw]) b.free();
  const f64 = (a) => Float64Array.from(a);
  t = performance.now();
  const zr = oracleForward(spec, batch, f64(x), f64(y), f64(w));
  const oracleFwdMs = performance.now() - t;
  t = performance.now();
  const gr = oracleBackward(spec, batch, f64(x), f64(y), f64(w), f64(gz));
  const oracleBwdMs = performance.now() - t;
  const errFwd = Math.max(relL2(z, zr), relL2(zBuf, zr));
  const errBwd = Math.max(relL2(g.gradX, gr.gradX), relL2(g.gradY, gr.gradY), relL2(g.gradW, gr.gradW),
    relL2(gxBuf, gr.gradX));
  const pass = errFwd <= 1e-5 && errBwd <= 1e-5;
  const r = {
    label, batch, pass, errFwd, errBwd, clock: clock.kind,
    fwdMs: Math.min(...fwdMs), bwdMs: Math.min(...bwdMs), fwdMedianMs: median(fwdMs), bwdMedianMs: median(bwdMs),
    hostFwdMs: Math.min(...hostFwdMs), hostBwdMs: Math.min(...hostBwdMs), fwdFirstMs: fwdFirst, bwdFirstMs: bwdFirst,
    oracleFwdMs, oracleBwdMs, weightNumel: tp.weightNumel,
  };
  tp.free();
  log(`${label.padEnd(24)} batch ${batch}: kernels fwd ${r.fwdMs.toFixed(2)} ms, bwd ${r.bwdMs.toFixed(2)} ms ` +
      `(${clock.kind}); host arrays ${r.hostFwdMs.toFixed(2)}/${r.hostBwdMs.toFixed(2)} ms ` +
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
  const clock = new KernelClock(dev.gpuDevice, q.get("clock") === "host");
  log(`adapter: ${info.adapter}; timestamp-query: ${info.timestampQuery}`);
  log(`capabilities: ${JSON.stringify(info.capabilities)}`);
  log(`kernel timings: ${clock.kind} (${clock.why})`);
  const results = [];
  for (const label of wanted) {
    const p = suite.find((p) => p.label === label);
    if (!p) throw new Error(`no paper-suite problem "${label}"; have: ${suite.map((p) => p.label).join(", ")}`);
    results.push(await runProblem(dev, clock, label, p.spec, batch, reps));
  }
  if (clock.kind === "performance.now") log(`kernel timings: ${clock.kind} (${clock.why})`);
  publish({
    pass: results.every((r) => r.pass), adapter: info.adapter, capabilities: info.capabilities,
    clock: clock.kind, clockWhy: clock.why,
    timing: (clock.kind === "gpu-timestamps"
      ? "fwdMs/bwdMs: best of reps, GPU timestamps (empty timestamp passes submitted just before and after one call on GPU tensors; Chrome quantizes them, typically to 0.1 ms)"
      : "fwdMs/bwdMs: best of reps, performance.now() around one call on GPU tensors until queue.onSubmittedWorkDone()") +
      "; hostFwdMs/hostBwdMs: best of reps, performance.now() around awaited host-array calls (upload + dispatch + readback); first call includes shader compilation",
    totalMs: performance.now() - t0, results,
  });
}

main().catch((e) => {
  log("ERROR: " + (e && e.message ? e.message : e));
  publish({ pass: false, error: String(e && e.message ? e.message : e) });
});
