//! equikern in the browser: a small JavaScript/TypeScript API (wasm-bindgen) over the
//! `equikern` facade on WebGPU, plus the f64 CPU oracle.
//!
//! ```js
//! import init, { Device, oracleForward } from "./equikern_wasm.js";
//! await init();
//! const dev = await Device.open();                 // rejects with "... no adapters" without WebGPU
//! const tp = dev.tensorProduct(specJson);          // same JSON as the `equikern` CLI
//! const z = await tp.forward(batch, x, y, w);      // Float32Array in, Float32Array out
//! const g = await tp.backward(batch, x, y, w, z);  // {gradX, gradY, gradW}
//! ```
//!
//! Every GPU call returns a Promise; nothing blocks the page. Errors reject the Promise with
//! an `Error` whose message is the native API's message.
//!
//! **GPU buffers.** wgpu 30's web backend cannot adopt a `GPUDevice` (or `GPUBuffer`) that the
//! page created: it only wraps objects it made itself. So the library opens its own device and
//! hands it to the page ([`Device::gpu_device`]); buffers for the zero-copy calls are
//! [`GpuTensor`]s made by the library, whose `.buffer` is a plain `GPUBuffer` on that device
//! the page may bind in its own passes (usage `STORAGE | COPY_SRC | COPY_DST`).

use std::rc::Rc;

use equikern::{Backend, TensorProductOp, TpSpec, WgpuOptions};
use equikern_core::oracle::Oracle;
use js_sys::{Float32Array, Float64Array, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

fn js_err(msg: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&msg.to_string()).into()
}

/// The JS `GPUDevice` behind a wgpu device (web backend only; `None` in native builds).
fn js_device(d: &equikern::wgpu::Device) -> Option<JsValue> {
    #[cfg(target_arch = "wasm32")]
    return d.as_webgpu().map(|d| JsValue::from(d.clone()));
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = d;
        None
    }
}

/// The JS `GPUBuffer` behind a wgpu buffer (web backend only).
fn js_buffer(b: &equikern::wgpu::Buffer) -> Option<JsValue> {
    #[cfg(target_arch = "wasm32")]
    return b.as_webgpu().map(|b| JsValue::from(b.clone()));
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = b;
        None
    }
}

fn set(o: &Object, k: &str, v: impl Into<JsValue>) {
    // Setting a property on a fresh plain object cannot fail.
    let _ = Reflect::set(o, &JsValue::from_str(k), &v.into());
}

fn f32a(v: &[f32]) -> JsValue {
    Float32Array::from(v).into()
}

fn opt_num(o: &JsValue, k: &str) -> Result<Option<f64>, JsValue> {
    if o.is_undefined() || o.is_null() {
        return Ok(None);
    }
    let v = Reflect::get(o, &JsValue::from_str(k))?;
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.as_f64()
        .filter(|n| n.is_finite() && *n >= 1.0 && n.fract() == 0.0)
        .map(Some)
        .ok_or_else(|| {
            js_err(format!(
                "options.{k}: expected a positive integer, got {v:?}"
            ))
        })
}

fn opt_bool(o: &JsValue, k: &str) -> Result<bool, JsValue> {
    if o.is_undefined() || o.is_null() {
        return Ok(false);
    }
    let v = Reflect::get(o, &JsValue::from_str(k))?;
    if v.is_undefined() || v.is_null() {
        return Ok(false);
    }
    v.as_bool()
        .ok_or_else(|| js_err(format!("options.{k}: expected a boolean, got {v:?}")))
}

/// Runtime options from a JS object (all optional).
fn parse_options(o: &JsValue) -> Result<WgpuOptions, JsValue> {
    Ok(WgpuOptions {
        max_samples_per_dispatch: opt_num(o, "maxSamplesPerDispatch")?
            .map(|n| n.min(u32::MAX as f64) as u32),
        max_storage_binding_bytes: opt_num(o, "maxStorageBindingBytes")?.map(|n| n as u64),
        poison_outputs: opt_bool(o, "poisonOutputs")?,
        ..Default::default()
    })
}

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
/** Options for `Device.open` / `createTensorProduct` (all optional; testing aids). */
export interface DeviceOptions {
  /** Clamp the samples per dispatch (forces the runtime to split batches). */
  maxSamplesPerDispatch?: number;
  /** Clamp the storage binding size in bytes (forces batch splitting). */
  maxStorageBindingBytes?: number;
  /** Fill outputs with NaN before each host-array run, so unwritten elements show. */
  poisonOutputs?: boolean;
}
/** Gradients of `<gradZ, z>`; shaped as x, y and w. */
export interface Grads { gradX: Float32Array; gradY: Float32Array; gradW: Float32Array; }
/** Double-backward results; shaped as x, y, w and gradZ. */
export interface DoubleGrads { dx: Float32Array; dy: Float32Array; dw: Float32Array; dgz: Float32Array; }
/** f64 oracle gradients. */
export interface Grads64 { gradX: Float64Array; gradY: Float64Array; gradW: Float64Array; }
/** f64 oracle double-backward results. */
export interface DoubleGrads64 { dx: Float64Array; dy: Float64Array; dw: Float64Array; dgz: Float64Array; }
/** What `Device.info()` reports: adapter, its limits and the capabilities the plans use. */
export interface DeviceInfo {
  adapter: string; backend: string; deviceType: string; driver: string;
  limits: Record<string, number>;
  capabilities: {
    subgroup_size: number; subgroups: boolean; max_invocations_per_workgroup: number;
    max_workgroup_size_x: number; workgroup_memory_bytes: number;
    max_storage_binding_bytes: number; max_workgroups_per_dim: number;
    max_storage_buffers_per_stage: number; f64: boolean; float_atomics: boolean;
    warp_shuffles: boolean;
  };
  timestampQuery: boolean;
}
/** What `TensorProduct.info()` reports. */
export interface TensorProductInfo extends DeviceInfo {
  irreps_in1: string; irreps_in2: string; irreps_out: string;
  dim_in1: number; dim_in2: number; dim_out: number;
  weight_numel: number; shared_weights: boolean; paths: number;
}
"#;

/// A WebGPU device opened by equikern (wgpu's web backend), shared by the tensor products
/// made from it.
#[wasm_bindgen]
pub struct Device {
    dev: equikern::Device,
}

#[wasm_bindgen]
impl Device {
    /// Open the browser's WebGPU adapter with its full limits. Rejects (e.g. "webgpu found no
    /// adapters") when the page has no WebGPU.
    #[wasm_bindgen(unchecked_return_type = "Promise<Device>")]
    pub fn open(
        #[wasm_bindgen(unchecked_param_type = "DeviceOptions")] options: JsValue,
    ) -> Promise {
        let opts = parse_options(&options);
        future_to_promise(async move {
            let dev = equikern::Device::wgpu_async(opts?).await.map_err(js_err)?;
            Ok(Device { dev }.into())
        })
    }

    /// Adapter name, backend, WebGPU limits and the capabilities the kernel plans are
    /// lowered for.
    #[wasm_bindgen(unchecked_return_type = "DeviceInfo")]
    pub fn info(&self) -> Result<JsValue, JsValue> {
        js_sys::JSON::parse(&device_info_json(&self.dev).to_string())
    }

    /// The `GPUDevice` this library computes on: create bind groups or passes on it that use
    /// [`GpuTensor::buffer`]s. (The page cannot hand its own `GPUDevice` to wgpu 30.)
    #[wasm_bindgen(getter, js_name = gpuDevice, unchecked_return_type = "GPUDevice")]
    pub fn gpu_device(&self) -> JsValue {
        self.dev
            .wgpu_runtime()
            .and_then(|rt| js_device(rt.device()))
            .unwrap_or(JsValue::NULL)
    }

    /// Validate a spec (the CLI's JSON) and bind it to this device. Kernels compile on first
    /// use of each direction. Throws on a bad spec.
    #[wasm_bindgen(js_name = tensorProduct)]
    pub fn tensor_product(&self, spec_json: &str) -> Result<TensorProduct, JsValue> {
        let op = TensorProductOp::from_json(spec_json, &self.dev).map_err(js_err)?;
        Ok(TensorProduct { op: Rc::new(op) })
    }

    /// A zero-filled storage buffer of `length` f32 on this device.
    #[wasm_bindgen(js_name = createTensor)]
    pub fn create_tensor(&self, length: usize) -> Result<GpuTensor, JsValue> {
        let rt = runtime(&self.dev)?;
        let buf = rt.upload("equikern tensor", &vec![0.0; length]);
        Ok(GpuTensor {
            rt: rt.clone(),
            buf,
            len: length,
        })
    }

    /// A storage buffer holding a copy of `data`.
    #[wasm_bindgen(js_name = tensorFrom)]
    pub fn tensor_from(&self, data: &[f32]) -> Result<GpuTensor, JsValue> {
        let rt = runtime(&self.dev)?;
        Ok(GpuTensor {
            rt: rt.clone(),
            buf: rt.upload("equikern tensor", data),
            len: data.len(),
        })
    }
}

fn runtime(
    dev: &equikern::Device,
) -> Result<&std::sync::Arc<equikern::wgpu_runtime::Runtime>, JsValue> {
    dev.wgpu_runtime()
        .ok_or_else(|| js_err("this device is not a WebGPU device"))
}

/// The adapter as the browser describes it (`GPUDevice.adapterInfo`: vendor, architecture,
/// device, description), e.g. `"google swiftshader (BrowserWebGpu, Cpu)"`. wgpu 30's web
/// backend leaves its own adapter name empty, so this reads the JS object.
pub fn adapter_description(dev: &equikern::Device) -> String {
    let wgpu_name = dev.name();
    let js = dev
        .wgpu_runtime()
        .and_then(|rt| js_device(rt.device()))
        .and_then(|d| Reflect::get(&d, &JsValue::from_str("adapterInfo")).ok())
        .filter(|i| i.is_object());
    let Some(info) = js else {
        return wgpu_name;
    };
    let parts: Vec<String> = ["vendor", "architecture", "device", "description"]
        .iter()
        .filter_map(|k| Reflect::get(&info, &JsValue::from_str(k)).ok())
        .filter_map(|v| v.as_string())
        .filter(|v| !v.is_empty())
        .collect();
    if parts.is_empty() {
        wgpu_name
    } else {
        format!("{} {}", parts.join(" "), wgpu_name.trim_start())
    }
}

fn device_info_json(dev: &equikern::Device) -> serde_json::Value {
    let mut o = serde_json::json!({ "adapter": adapter_description(dev) });
    if let Some(rt) = dev.wgpu_runtime() {
        let i = rt.adapter_info();
        let l = rt.limits();
        o["backend"] = format!("{:?}", i.backend).into();
        o["deviceType"] = format!("{:?}", i.device_type).into();
        o["driver"] = format!("{} {}", i.driver, i.driver_info).trim().into();
        o["limits"] = serde_json::json!({
            "maxComputeInvocationsPerWorkgroup": l.max_compute_invocations_per_workgroup,
            "maxComputeWorkgroupSizeX": l.max_compute_workgroup_size_x,
            "maxComputeWorkgroupStorageSize": l.max_compute_workgroup_storage_size,
            "maxComputeWorkgroupsPerDimension": l.max_compute_workgroups_per_dimension,
            "maxStorageBufferBindingSize": l.max_storage_buffer_binding_size,
            "maxBufferSize": l.max_buffer_size,
            "maxStorageBuffersPerShaderStage": l.max_storage_buffers_per_shader_stage,
            "minStorageBufferOffsetAlignment": l.min_storage_buffer_offset_alignment,
        });
        o["timestampQuery"] = rt
            .device()
            .features()
            .contains(equikern::wgpu::Features::TIMESTAMP_QUERY)
            .into();
    }
    if let Some(c) = dev.capabilities() {
        o["capabilities"] = serde_json::to_value(c).unwrap_or_default();
    }
    o
}

/// Open a device with `options` and bind `specJson` to it (shortcut for
/// `(await Device.open(options)).tensorProduct(specJson)`).
#[wasm_bindgen(js_name = createTensorProduct, unchecked_return_type = "Promise<TensorProduct>")]
pub fn create_tensor_product(
    spec_json: String,
    #[wasm_bindgen(unchecked_param_type = "DeviceOptions")] options: JsValue,
) -> Promise {
    let opts = parse_options(&options);
    future_to_promise(async move {
        // Reject a bad spec before touching the GPU.
        TpSpec::from_json(&spec_json)
            .map_err(|e| js_err(equikern::Error::from(e)))?
            .build()
            .map_err(|e| js_err(equikern::Error::from(e)))?;
        let dev = equikern::Device::wgpu_async(opts?).await.map_err(js_err)?;
        let op = TensorProductOp::from_json(&spec_json, &dev).map_err(js_err)?;
        Ok(TensorProduct { op: Rc::new(op) }.into())
    })
}

/// A tensor product `z = TP(x, y; w)` bound to a WebGPU device. Layouts are flat row-major:
/// `x [batch, dim_in1]`, `y [batch, dim_in2]`, `z [batch, dim_out]`, `w [batch, weight_numel]`
/// (or `[weight_numel]` with shared weights).
#[wasm_bindgen]
pub struct TensorProduct {
    op: Rc<TensorProductOp>,
}

#[wasm_bindgen]
impl TensorProduct {
    /// Irreps, dimensions, `weight_numel`, and the device's adapter, limits and capabilities.
    #[wasm_bindgen(unchecked_return_type = "TensorProductInfo")]
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let tp = self.op.tensor_product();
        let mut o = device_info_json(self.op.device());
        o["irreps_in1"] = tp.spec.irreps_in1.to_string().into();
        o["irreps_in2"] = tp.spec.irreps_in2.to_string().into();
        o["irreps_out"] = tp.spec.irreps_out.to_string().into();
        o["dim_in1"] = tp.dim_in1.into();
        o["dim_in2"] = tp.dim_in2.into();
        o["dim_out"] = tp.dim_out.into();
        o["weight_numel"] = tp.weight_numel.into();
        o["shared_weights"] = tp.spec.shared_weights.into();
        o["paths"] = tp.paths.len().into();
        js_sys::JSON::parse(&o.to_string())
    }

    #[wasm_bindgen(getter, js_name = dimIn1)]
    pub fn dim_in1(&self) -> usize {
        self.op.dim_in1()
    }
    #[wasm_bindgen(getter, js_name = dimIn2)]
    pub fn dim_in2(&self) -> usize {
        self.op.dim_in2()
    }
    #[wasm_bindgen(getter, js_name = dimOut)]
    pub fn dim_out(&self) -> usize {
        self.op.dim_out()
    }
    #[wasm_bindgen(getter, js_name = weightNumel)]
    pub fn weight_numel(&self) -> usize {
        self.op.weight_numel()
    }
    #[wasm_bindgen(getter, js_name = sharedWeights)]
    pub fn shared_weights(&self) -> bool {
        self.op.shared_weights()
    }

    /// `z = TP(x, y; w)`: resolves to a `Float32Array` `[batch, dim_out]`.
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    pub fn forward(&self, batch: usize, x: Vec<f32>, y: Vec<f32>, w: Vec<f32>) -> Promise {
        let op = self.op.clone();
        future_to_promise(async move {
            let z = op.forward_async(batch, &x, &y, &w).await.map_err(js_err)?;
            Ok(f32a(&z))
        })
    }

    /// Gradients of `<gradZ, z>` w.r.t. x, y and w (a shared-weight gradient is summed over
    /// the batch).
    #[wasm_bindgen(unchecked_return_type = "Promise<Grads>")]
    pub fn backward(
        &self,
        batch: usize,
        x: Vec<f32>,
        y: Vec<f32>,
        w: Vec<f32>,
        grad_z: Vec<f32>,
    ) -> Promise {
        let op = self.op.clone();
        future_to_promise(async move {
            let g = op
                .backward_async(batch, &x, &y, &w, &grad_z)
                .await
                .map_err(js_err)?;
            let o = Object::new();
            set(&o, "gradX", f32a(&g.gx));
            set(&o, "gradY", f32a(&g.gy));
            set(&o, "gradW", f32a(&g.gw));
            Ok(o.into())
        })
    }

    /// Gradients of `<gradX,hx> + <gradY,hy> + <gradW,hw>` w.r.t. x, y, w and gradZ.
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(js_name = doubleBackward, unchecked_return_type = "Promise<DoubleGrads>")]
    pub fn double_backward(
        &self,
        batch: usize,
        x: Vec<f32>,
        y: Vec<f32>,
        w: Vec<f32>,
        grad_z: Vec<f32>,
        hx: Vec<f32>,
        hy: Vec<f32>,
        hw: Vec<f32>,
    ) -> Promise {
        let op = self.op.clone();
        future_to_promise(async move {
            let d = op
                .double_backward_async(batch, &x, &y, &w, &grad_z, &hx, &hy, &hw)
                .await
                .map_err(js_err)?;
            let o = Object::new();
            set(&o, "dx", f32a(&d.dx));
            set(&o, "dy", f32a(&d.dy));
            set(&o, "dw", f32a(&d.dw));
            set(&o, "dgz", f32a(&d.dgz));
            Ok(o.into())
        })
    }

    /// Forward on GPU tensors (no host copies): writes `z`. Resolves once submitted.
    #[wasm_bindgen(js_name = forwardBuffers, unchecked_return_type = "Promise<void>")]
    pub fn forward_buffers(
        &self,
        batch: usize,
        x: &GpuTensor,
        y: &GpuTensor,
        w: &GpuTensor,
        z: &GpuTensor,
    ) -> Promise {
        let op = self.op.clone();
        let b = [&x.buf, &y.buf, &w.buf, &z.buf].map(Clone::clone);
        future_to_promise(async move {
            let [x, y, w, z] = &b;
            op.forward_buffers_async(batch, x, y, w, z)
                .await
                .map_err(js_err)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Backward on GPU tensors: writes `gradX`, `gradY`, `gradW`.
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(js_name = backwardBuffers, unchecked_return_type = "Promise<void>")]
    pub fn backward_buffers(
        &self,
        batch: usize,
        x: &GpuTensor,
        y: &GpuTensor,
        w: &GpuTensor,
        grad_z: &GpuTensor,
        grad_x: &GpuTensor,
        grad_y: &GpuTensor,
        grad_w: &GpuTensor,
    ) -> Promise {
        let op = self.op.clone();
        let b = [x, y, w, grad_z, grad_x, grad_y, grad_w].map(|t| t.buf.clone());
        future_to_promise(async move {
            let [x, y, w, gz, gx, gy, gw] = &b;
            op.backward_buffers_async(batch, x, y, w, gz, gx, gy, gw)
                .await
                .map_err(js_err)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Double backward on GPU tensors: reads `x, y, w, gradZ, hx, hy, hw`, writes
    /// `dx, dy, dw, dgz`.
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(js_name = doubleBackwardBuffers, unchecked_return_type = "Promise<void>")]
    pub fn double_backward_buffers(
        &self,
        batch: usize,
        x: &GpuTensor,
        y: &GpuTensor,
        w: &GpuTensor,
        grad_z: &GpuTensor,
        hx: &GpuTensor,
        hy: &GpuTensor,
        hw: &GpuTensor,
        dx: &GpuTensor,
        dy: &GpuTensor,
        dw: &GpuTensor,
        dgz: &GpuTensor,
    ) -> Promise {
        let op = self.op.clone();
        let ins = [x, y, w, grad_z, hx, hy, hw].map(|t| t.buf.clone());
        let outs = [dx, dy, dw, dgz].map(|t| t.buf.clone());
        future_to_promise(async move {
            op.double_backward_buffers_async(batch, ins.each_ref(), outs.each_ref())
                .await
                .map_err(js_err)?;
            Ok(JsValue::UNDEFINED)
        })
    }
}

/// A storage buffer of f32 on a [`Device`] (`GPUBufferUsage.STORAGE | COPY_SRC | COPY_DST`).
#[wasm_bindgen]
#[derive(Clone)]
pub struct GpuTensor {
    rt: std::sync::Arc<equikern::wgpu_runtime::Runtime>,
    buf: equikern::wgpu::Buffer,
    len: usize,
}

#[wasm_bindgen]
impl GpuTensor {
    /// Number of f32 elements.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> usize {
        self.len
    }

    /// The underlying `GPUBuffer` (on `Device.gpuDevice`), for the page's own passes.
    #[wasm_bindgen(getter, unchecked_return_type = "GPUBuffer")]
    pub fn buffer(&self) -> JsValue {
        js_buffer(&self.buf).unwrap_or(JsValue::NULL)
    }

    /// Queue a write of `data` at element `offset` (default 0; ordered before later GPU work).
    pub fn write(&self, data: &[f32], offset: Option<usize>) -> Result<(), JsValue> {
        let offset = offset.unwrap_or(0);
        if offset.checked_add(data.len()).is_none_or(|e| e > self.len) {
            return Err(js_err(format!(
                "argument data: {} elements at offset {offset} exceed the tensor's {}",
                data.len(),
                self.len
            )));
        }
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.rt
            .queue()
            .write_buffer(&self.buf, offset as u64 * 4, &bytes);
        Ok(())
    }

    /// Copy the whole tensor back to the host (after all submitted work).
    #[wasm_bindgen(unchecked_return_type = "Promise<Float32Array>")]
    pub fn read(&self) -> Promise {
        let t = self.clone();
        future_to_promise(async move {
            let v =
                t.rt.read_f32(&t.buf, 0, t.len as u64)
                    .await
                    .map_err(js_err)?;
            Ok(f32a(&v))
        })
    }
}

// ---- the f64 CPU oracle -------------------------------------------------------------------

fn oracle(spec_json: &str) -> Result<Oracle<f64>, JsValue> {
    let tp = TpSpec::from_json(spec_json)
        .and_then(|s| s.build())
        .map_err(|e| js_err(equikern::Error::from(e)))?;
    Oracle::new(&tp).map_err(|e| js_err(equikern::Error::from(e)))
}

fn ora<T>(r: Result<T, equikern_core::oracle::OracleError>) -> Result<T, JsValue> {
    r.map_err(|e| js_err(equikern::Error::from(e)))
}

/// f64 CPU oracle forward of `specJson` (synchronous; throws on bad input).
#[wasm_bindgen(js_name = oracleForward)]
pub fn oracle_forward(
    spec_json: &str,
    batch: usize,
    x: &[f64],
    y: &[f64],
    w: &[f64],
) -> Result<Float64Array, JsValue> {
    let z = ora(oracle(spec_json)?.forward(batch, x, y, w))?;
    Ok(Float64Array::from(&z[..]))
}

/// f64 CPU oracle backward: `{gradX, gradY, gradW}`.
#[wasm_bindgen(js_name = oracleBackward, unchecked_return_type = "Grads64")]
pub fn oracle_backward(
    spec_json: &str,
    batch: usize,
    x: &[f64],
    y: &[f64],
    w: &[f64],
    grad_z: &[f64],
) -> Result<JsValue, JsValue> {
    let g = ora(oracle(spec_json)?.backward(batch, x, y, w, grad_z))?;
    let o = Object::new();
    set(&o, "gradX", Float64Array::from(&g.gx[..]));
    set(&o, "gradY", Float64Array::from(&g.gy[..]));
    set(&o, "gradW", Float64Array::from(&g.gw[..]));
    Ok(o.into())
}

/// f64 CPU oracle double backward: `{dx, dy, dw, dgz}`.
#[allow(clippy::too_many_arguments)]
#[wasm_bindgen(js_name = oracleDoubleBackward, unchecked_return_type = "DoubleGrads64")]
pub fn oracle_double_backward(
    spec_json: &str,
    batch: usize,
    x: &[f64],
    y: &[f64],
    w: &[f64],
    grad_z: &[f64],
    hx: &[f64],
    hy: &[f64],
    hw: &[f64],
) -> Result<JsValue, JsValue> {
    let d = ora(oracle(spec_json)?.double_backward(batch, x, y, w, grad_z, hx, hy, hw))?;
    let o = Object::new();
    set(&o, "dx", Float64Array::from(&d.dx[..]));
    set(&o, "dy", Float64Array::from(&d.dy[..]));
    set(&o, "dw", Float64Array::from(&d.dw[..]));
    set(&o, "dgz", Float64Array::from(&d.dgz[..]));
    Ok(o.into())
}

/// The paper-suite problems bundled with equikern, as `[{label, spec}]` (spec: the CLI JSON).
#[wasm_bindgen(js_name = paperSuite, unchecked_return_type = "{label: string, spec: string}[]")]
pub fn paper_suite() -> Result<JsValue, JsValue> {
    let suite = equikern_core::spec::load_suite(include_str!("../../../benches/paper_suite.json"))
        .map_err(|e| js_err(equikern::Error::from(e)))?;
    let arr = js_sys::Array::new();
    for (label, spec) in suite {
        let o = Object::new();
        set(&o, "label", label.as_str());
        set(&o, "spec", spec.to_json());
        arr.push(&o);
    }
    Ok(arr.into())
}

/// `"wgpu"`: the backend the GPU calls use (the oracle is always available).
#[wasm_bindgen(js_name = backendName)]
pub fn backend_name() -> String {
    format!("{:?}", Backend::Wgpu).to_lowercase()
}
