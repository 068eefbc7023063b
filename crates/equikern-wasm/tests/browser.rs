//! equikern in headless Chromium (WebGPU: Dawn + SwiftShader on a CPU machine), against the
//! f64 oracle compiled into the same wasm module.
//!
//! `cargo test --target wasm32-unknown-unknown -p equikern-wasm` (runner and browser flags:
//! `.cargo/config.toml`, `crates/equikern-wasm/webdriver.json`). Every connection mode with
//! shared and per-sample weights, every paper-suite problem, forward / backward / double
//! backward, a batch split over several dispatches, the JS API (Promises, GPU tensors,
//! rejected Promises with the native messages) — outputs poisoned with NaN.
#![cfg(target_arch = "wasm32")]

#[path = "../../../tests/wgpu_support/corpus.rs"]
mod corpus;

use equikern::oracle::Oracle;
use equikern::{Device, TensorProductOp, TpSpec, WgpuOptions};
use js_sys::{Float32Array, Float64Array, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const TOL_FWD: f64 = 1e-5;
const TOL_BWD: f64 = 1e-5;
const TOL_DBL: f64 = 1e-4;

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Seeded values in ±[0.1, 1) (splitmix64; no OS randomness in a browser test).
fn rand_vec(state: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 / (1u64 << 53) as f64;
            let m = 0.1 + 0.9 * u;
            (if z & 1 == 0 { m } else { -m }) as f32
        })
        .collect()
}

fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| *x as f64).collect()
}

fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "non-finite output (an element the kernels did not write?)"
    );
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - w).powi(2);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

async fn device(opts: WgpuOptions) -> Device {
    let opts = WgpuOptions {
        poison_outputs: true,
        ..opts
    };
    match Device::wgpu_async(opts).await {
        Ok(d) => d,
        Err(e) => panic!("no WebGPU device: {e}"),
    }
}

/// Forward, backward and (if `dbl`) double backward of `spec` vs the f64 oracle.
async fn check(dev: &Device, label: &str, spec: &TpSpec, batch: usize, seed: u64, dbl: bool) {
    let t0 = now_ms();
    let op = TensorProductOp::new(spec, dev).expect("op");
    let oracle = Oracle::<f64>::new(op.tensor_product()).expect("oracle");
    let mut s = seed;
    let wl = op.weight_len(batch).unwrap();
    let x = rand_vec(&mut s, batch * op.dim_in1());
    let y = rand_vec(&mut s, batch * op.dim_in2());
    let w = rand_vec(&mut s, wl);
    let gz = rand_vec(&mut s, batch * op.dim_out());
    let (xd, yd, wd, gzd) = (f64v(&x), f64v(&y), f64v(&w), f64v(&gz));

    let z = op.forward_async(batch, &x, &y, &w).await;
    let z = z.unwrap_or_else(|e| panic!("{label}: forward: {e}"));
    let fwd = rel_l2(&z, &oracle.forward(batch, &xd, &yd, &wd).unwrap());

    let g = op.backward_async(batch, &x, &y, &w, &gz).await;
    let g = g.unwrap_or_else(|e| panic!("{label}: backward: {e}"));
    let gr = oracle.backward(batch, &xd, &yd, &wd, &gzd).unwrap();
    let bwd = rel_l2(&g.gx, &gr.gx)
        .max(rel_l2(&g.gy, &gr.gy))
        .max(rel_l2(&g.gw, &gr.gw));

    let mut dd = 0.0;
    if dbl {
        let hx = rand_vec(&mut s, batch * op.dim_in1());
        let hy = rand_vec(&mut s, batch * op.dim_in2());
        let hw = rand_vec(&mut s, wl);
        let d = op
            .double_backward_async(batch, &x, &y, &w, &gz, &hx, &hy, &hw)
            .await
            .unwrap_or_else(|e| panic!("{label}: double backward: {e}"));
        let dr = oracle
            .double_backward(
                batch,
                &xd,
                &yd,
                &wd,
                &gzd,
                &f64v(&hx),
                &f64v(&hy),
                &f64v(&hw),
            )
            .unwrap();
        dd = rel_l2(&d.dx, &dr.dx)
            .max(rel_l2(&d.dy, &dr.dy))
            .max(rel_l2(&d.dw, &dr.dw))
            .max(rel_l2(&d.dgz, &dr.dgz));
    }
    console_log!(
        "{label:<28} batch {batch:>3} shared={:<5} fwd {fwd:.1e} bwd {bwd:.1e} dbl {dd:.1e} ({:.0} ms)",
        spec.shared_weights,
        now_ms() - t0
    );
    assert!(fwd <= TOL_FWD, "{label}: forward rel L2 {fwd:.2e}");
    assert!(bwd <= TOL_BWD, "{label}: backward rel L2 {bwd:.2e}");
    assert!(dd <= TOL_DBL, "{label}: double backward rel L2 {dd:.2e}");
}

#[wasm_bindgen_test]
async fn adapter_and_capabilities() {
    let dev = device(WgpuOptions::default()).await;
    let caps = dev.capabilities().expect("wgpu caps");
    let rt = dev.wgpu_runtime().unwrap();
    let adapter = equikern_wasm::adapter_description(&dev);
    console_log!("adapter: {adapter}");
    console_log!("capabilities: {caps:?}");
    // What the plans may use comes from the adapter; through wgpu 30 on the web there are
    // never f64, float atomics or subgroups.
    assert!(
        !caps.f64 && !caps.float_atomics && !caps.subgroups,
        "{caps:?}"
    );
    assert_eq!(
        caps.max_invocations_per_workgroup,
        rt.limits().max_compute_invocations_per_workgroup
    );
    if adapter.to_lowercase().contains("swiftshader") {
        assert_eq!(caps.max_invocations_per_workgroup, 256, "{caps:?}");
        assert_eq!(caps.workgroup_memory_bytes, 32768, "{caps:?}");
        assert_eq!(caps.max_storage_buffers_per_stage, 10, "{caps:?}");
    }
}

#[wasm_bindgen_test]
async fn every_mode_shared_and_per_sample() {
    let dev = device(WgpuOptions::default()).await;
    for shared in [false, true] {
        for (label, spec) in corpus::mode_specs(shared) {
            check(&dev, &label, &spec, 3, 11, true).await;
        }
    }
}

#[wasm_bindgen_test]
async fn paper_suite_all_directions() {
    let dev = device(WgpuOptions::default()).await;
    for (label, spec) in corpus::paper_suite() {
        check(&dev, &label, &spec, 2, 5, true).await;
    }
}

#[wasm_bindgen_test]
async fn batch_split_over_dispatches() {
    let dev = device(WgpuOptions {
        max_samples_per_dispatch: Some(3),
        ..Default::default()
    })
    .await;
    let modes = corpus::mode_specs(false);
    let shared = corpus::mode_specs(true);
    for (label, spec) in [&modes[0], &modes[1], &shared[0], &shared[4]] {
        check(&dev, &format!("split {label}"), spec, 10, 7, true).await;
    }
}

// ---- the JS API, as a page sees it ----------------------------------------------------------

async fn await_js(p: js_sys::Promise) -> Result<JsValue, String> {
    JsFuture::from(p).await.map_err(|e| {
        e.dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .unwrap_or_else(|| format!("{e:?}"))
    })
}

fn get(o: &JsValue, k: &str) -> JsValue {
    Reflect::get(o, &JsValue::from_str(k)).unwrap()
}

fn f32s(v: &JsValue) -> Vec<f32> {
    v.dyn_ref::<Float32Array>().expect("Float32Array").to_vec()
}

const SPEC: &str = r#"{"irreps_in1": "2x0e + 1x1o", "irreps_in2": "1x0e + 1x1o", "irreps_out": "2x0e + 1x1o + 1x1e",
 "instructions": [[0, 0, 0, "uvw", true], [1, 1, 0, "uvw", true], [0, 1, 1, "uvw", true],
                  [1, 0, 1, "uvu", true, 2.0], [1, 1, 2, "uuu", false]]}"#;

#[wasm_bindgen_test]
async fn js_api_promises_buffers_and_errors() {
    use equikern_wasm as ek;
    let opts = js_sys::Object::new();
    Reflect::set(&opts, &"poisonOutputs".into(), &true.into()).unwrap();
    let dev: ek::Device = {
        let v = await_js(ek::Device::open(opts.into())).await.expect("open");
        // A Device crossed JS as a wrapper object; rebuild it through the JS-side constructor.
        ek_device_from(v)
    };
    let info = dev.info().unwrap();
    console_log!(
        "info: {}",
        String::from(js_sys::JSON::stringify(&info).unwrap())
    );
    assert!(get(&info, "adapter").as_string().is_some());
    let tp = dev.tensor_product(SPEC).expect("spec");
    let tinfo = tp.info().unwrap();
    assert_eq!(
        get(&tinfo, "weight_numel").as_f64(),
        Some(tp.weight_numel() as f64)
    );
    let batch = 4;
    let mut s = 3u64;
    let x = rand_vec(&mut s, batch * tp.dim_in1());
    let y = rand_vec(&mut s, batch * tp.dim_in2());
    let w = rand_vec(&mut s, batch * tp.weight_numel());
    let gz = rand_vec(&mut s, batch * tp.dim_out());
    let (xd, yd, wd, gzd) = (f64v(&x), f64v(&y), f64v(&w), f64v(&gz));

    // Host arrays.
    let z = await_js(tp.forward(batch, x.clone(), y.clone(), w.clone()))
        .await
        .expect("forward");
    let zr = ek::oracle_forward(SPEC, batch, &xd, &yd, &wd)
        .unwrap()
        .to_vec();
    assert!(rel_l2(&f32s(&z), &zr) <= TOL_FWD);
    let g = await_js(tp.backward(batch, x.clone(), y.clone(), w.clone(), gz.clone()))
        .await
        .expect("backward");
    let gr = ek::oracle_backward(SPEC, batch, &xd, &yd, &wd, &gzd).unwrap();
    for k in ["gradX", "gradY", "gradW"] {
        let want = get(&gr, k).dyn_into::<Float64Array>().unwrap().to_vec();
        assert!(rel_l2(&f32s(&get(&g, k)), &want) <= TOL_BWD, "{k}");
    }
    let hx = rand_vec(&mut s, x.len());
    let hy = rand_vec(&mut s, y.len());
    let hw = rand_vec(&mut s, w.len());
    let d = await_js(tp.double_backward(
        batch,
        x.clone(),
        y.clone(),
        w.clone(),
        gz.clone(),
        hx.clone(),
        hy.clone(),
        hw.clone(),
    ))
    .await
    .expect("double backward");
    let dr = ek::oracle_double_backward(
        SPEC,
        batch,
        &xd,
        &yd,
        &wd,
        &gzd,
        &f64v(&hx),
        &f64v(&hy),
        &f64v(&hw),
    )
    .unwrap();
    for k in ["dx", "dy", "dw", "dgz"] {
        let want = get(&dr, k).dyn_into::<Float64Array>().unwrap().to_vec();
        assert!(rel_l2(&f32s(&get(&d, k)), &want) <= TOL_DBL, "{k}");
    }

    // GPU tensors: no host copies between the calls.
    let (tx, ty, tw) = (
        dev.tensor_from(&x).unwrap(),
        dev.tensor_from(&y).unwrap(),
        dev.tensor_from(&w).unwrap(),
    );
    let tz = dev.create_tensor(batch * tp.dim_out()).unwrap();
    tz.write(&vec![f32::NAN; tz.length()], None).unwrap();
    assert!(tz.buffer().is_object(), "GPUBuffer handle");
    assert!(dev.gpu_device().is_object(), "GPUDevice handle");
    await_js(tp.forward_buffers(batch, &tx, &ty, &tw, &tz))
        .await
        .expect("forwardBuffers");
    let zb = f32s(&await_js(tz.read()).await.expect("read"));
    assert!(rel_l2(&zb, &zr) <= TOL_FWD);
    let tgz = dev.tensor_from(&gz).unwrap();
    let outs: Vec<_> = [x.len(), y.len(), w.len()]
        .iter()
        .map(|n| dev.create_tensor(*n).unwrap())
        .collect();
    await_js(tp.backward_buffers(batch, &tx, &ty, &tw, &tgz, &outs[0], &outs[1], &outs[2]))
        .await
        .expect("backwardBuffers");
    let gxb = f32s(&await_js(outs[0].read()).await.unwrap());
    let want = get(&gr, "gradX")
        .dyn_into::<Float64Array>()
        .unwrap()
        .to_vec();
    assert!(rel_l2(&gxb, &want) <= TOL_BWD);

    let t = |v: &[f32]| dev.tensor_from(v).unwrap();
    let (thx, thy, thw) = (t(&hx), t(&hy), t(&hw));
    let nan = |n: usize| t(&vec![f32::NAN; n]);
    let (tdx, tdy, tdw, tdgz) = (nan(x.len()), nan(y.len()), nan(w.len()), nan(gz.len()));
    await_js(tp.double_backward_buffers(
        batch, &tx, &ty, &tw, &tgz, &thx, &thy, &thw, &tdx, &tdy, &tdw, &tdgz,
    ))
    .await
    .expect("doubleBackwardBuffers");
    for (k, tt) in [("dx", &tdx), ("dy", &tdy), ("dw", &tdw), ("dgz", &tdgz)] {
        let got = f32s(&await_js(tt.read()).await.unwrap());
        let want = get(&dr, k).dyn_into::<Float64Array>().unwrap().to_vec();
        assert!(rel_l2(&got, &want) <= TOL_DBL, "buffers {k}");
    }

    // Errors reject the Promise with the native API's message.
    let e = await_js(tp.forward(batch, x[1..].to_vec(), y.clone(), w.clone()))
        .await
        .expect_err("short x must reject");
    console_log!("rejected as expected: {e}");
    assert!(e.contains("argument x: expected length"), "{e}");
    let e = dev
        .tensor_product(r#"{"irreps_in1": "1x9q"}"#)
        .err()
        .expect("bad spec must throw");
    let e = String::from(e.dyn_into::<js_sys::Error>().unwrap().message());
    console_log!("bad spec throws: {e}");
    assert!(e.starts_with("spec"), "{e}");
    let e = await_js(ek::create_tensor_product("{".into(), JsValue::UNDEFINED))
        .await
        .expect_err("bad JSON must reject");
    assert!(e.starts_with("spec"), "{e}");
    assert!(ek::oracle_forward(SPEC, 1, &xd, &yd, &wd).is_err());
    let bad = js_sys::Object::new();
    Reflect::set(&bad, &"maxSamplesPerDispatch".into(), &(-1).into()).unwrap();
    let e = await_js(ek::Device::open(bad.into()))
        .await
        .expect_err("bad option");
    assert!(e.contains("maxSamplesPerDispatch"), "{e}");
    // The bundled suite lists every paper problem with a CLI-format spec.
    let suite = js_sys::Array::from(&ek::paper_suite().unwrap());
    assert_eq!(suite.length() as usize, corpus::paper_suite().len());
}

/// The `Device` a Promise resolved to: wasm-bindgen's JS wrapper around the Rust value.
fn ek_device_from(v: JsValue) -> equikern_wasm::Device {
    use wasm_bindgen::convert::TryFromJsValue;
    equikern_wasm::Device::try_from_js_value(v).expect("a Device")
}
