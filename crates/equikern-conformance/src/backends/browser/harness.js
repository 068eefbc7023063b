// equikern conformance harness: the page side of the `browser` backend. The driver (Rust,
// over WebDriver) sends one request per backend call through `execute/async`; tensors travel
// as base64 of little-endian f32 (exact, NaN included). Outputs are NaN-poisoned before every
// run (device option), so an element the kernels do not write cannot pass.
import init, { Device } from "./pkg/equikern_wasm.js";

const devices = new Map(); // max samples per dispatch (0: none) -> Device
const tps = new Map(); // handle -> TensorProduct
let next = 1;

function b64ToF32(s) {
  const bin = atob(s);
  if (bin.length % 4 !== 0) throw new Error(`tensor of ${bin.length} bytes is not whole f32s`);
  const u = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
  return new Float32Array(u.buffer);
}

function f32ToB64(a) {
  const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let s = "";
  for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
  return btoa(s);
}

async function device(split) {
  const k = split || 0;
  if (!devices.has(k)) {
    const opts = { poisonOutputs: true };
    if (k) opts.maxSamplesPerDispatch = k;
    devices.set(k, await Device.open(opts));
  }
  return devices.get(k);
}

function tp(id) {
  const t = tps.get(id);
  if (!t) throw new Error(`no bound tensor product ${id}`);
  return t;
}

const ready = init();

async function call(req) {
  await ready;
  for (const id of req.free || []) {
    const t = tps.get(id);
    if (t) { t.free(); tps.delete(id); }
  }
  const a = (req.args || []).map(b64ToF32);
  switch (req.op) {
    case "open": {
      const d = await device(0);
      return { info: d.info(), userAgent: navigator.userAgent };
    }
    case "bind": {
      const t = (await device(req.split)).tensorProduct(req.spec);
      const id = next++;
      tps.set(id, t);
      return { id, dimIn1: t.dimIn1, dimIn2: t.dimIn2, dimOut: t.dimOut, weightNumel: t.weightNumel };
    }
    case "forward":
      return { out: [f32ToB64(await tp(req.id).forward(req.batch, a[0], a[1], a[2]))] };
    case "backward": {
      const g = await tp(req.id).backward(req.batch, a[0], a[1], a[2], a[3]);
      return { out: [g.gradX, g.gradY, g.gradW].map(f32ToB64) };
    }
    case "double_backward": {
      const d = await tp(req.id).doubleBackward(req.batch, a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
      return { out: [d.dx, d.dy, d.dw, d.dgz].map(f32ToB64) };
    }
    case "free":
      return {};
    default:
      throw new Error(`unknown harness op ${JSON.stringify(req.op)}`);
  }
}

export const harness = { call };
