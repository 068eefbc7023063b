//! The wgpu backend, through the public facade (`equikern::TensorProductOp`), f32.
//! Outputs are poisoned with NaN before every dispatch (runtime test option), so an element
//! the kernels fail to write cannot pass. Batch splitting is forced through the runtime's
//! `max_samples_per_dispatch` option on a second device opened for that purpose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use equikern::{Device, TensorProductOp, WgpuOptions};
use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::TensorProduct;
use equikern_plan::Capabilities;

use super::{backend_err, to_f32, BoundOp, ConformanceBackend};
use crate::{Error, Prec, Result};

pub struct WgpuBackend {
    name: &'static str,
    device: Device,
    split_devices: Mutex<HashMap<u32, Device>>,
    clamp_caps: Option<Capabilities>,
}

impl WgpuBackend {
    fn options(&self, max_samples_per_dispatch: Option<u32>) -> WgpuOptions {
        WgpuOptions {
            poison_outputs: true,
            max_samples_per_dispatch,
            clamp_caps: self.clamp_caps,
            ..WgpuOptions::default()
        }
    }

    /// Open the best adapter (or `EQUIKERN_ADAPTER`).
    pub fn open() -> Result<Self> {
        Self::open_with("wgpu", None)
    }

    /// The same adapter with its capabilities clamped to WebGPU's guaranteed minimums, so
    /// the plans are the ones a browser gets (e.g. kernels split to 8 storage buffers).
    pub fn open_webgpu_shaped() -> Result<Self> {
        Self::open_with("wgpu-webgpu", Some(Capabilities::webgpu_min()))
    }

    fn open_with(name: &'static str, clamp_caps: Option<Capabilities>) -> Result<Self> {
        let mut b = WgpuBackend {
            name,
            device: Device::cpu(),
            split_devices: Mutex::new(HashMap::new()),
            clamp_caps,
        };
        b.device = Device::wgpu(b.options(None)).map_err(|e| Error::Unavailable {
            backend: name.into(),
            why: e.to_string(),
        })?;
        Ok(b)
    }

    fn device_for(&self, split: Option<u32>) -> Result<Device> {
        let Some(n) = split else {
            return Ok(self.device.clone());
        };
        let mut m = self.split_devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = m.get(&n) {
            return Ok(d.clone());
        }
        let d = Device::wgpu(self.options(Some(n))).map_err(|e| backend_err(self.name, e))?;
        m.insert(n, d.clone());
        Ok(d)
    }
}

impl ConformanceBackend for WgpuBackend {
    fn name(&self) -> &str {
        self.name
    }

    fn describe(&self) -> String {
        let shaped = if self.clamp_caps.is_some() {
            ", capabilities clamped to WebGPU's minimums"
        } else {
            ""
        };
        format!("{}: {}{shaped}", self.name, self.device.name())
    }

    fn precisions(&self) -> Vec<Prec> {
        vec![Prec::F32]
    }

    fn deterministic(&self) -> bool {
        true
    }

    fn splits(&self, _prec: Prec) -> bool {
        true
    }

    fn bind(
        &self,
        tp: &Arc<TensorProduct>,
        prec: Prec,
        max_samples_per_dispatch: Option<u32>,
    ) -> Result<Box<dyn BoundOp + '_>> {
        if prec != Prec::F32 {
            return Err(backend_err("wgpu", "the facade runs wgpu in f32 only"));
        }
        let dev = self.device_for(max_samples_per_dispatch)?;
        let op = TensorProductOp::from_tensor_product(TensorProduct::clone(tp), &dev)
            .map_err(|e| backend_err("wgpu", e))?;
        Ok(Box::new(WgpuOp(op)))
    }
}

struct WgpuOp(TensorProductOp);

impl BoundOp for WgpuOp {
    fn forward(&self, batch: usize, x: &[f64], y: &[f64], w: &[f64]) -> Result<Vec<f64>> {
        let z = self
            .0
            .forward(batch, &to_f32(x), &to_f32(y), &to_f32(w))
            .map_err(|e| backend_err("wgpu", e))?;
        Ok(super::to_f64(&z))
    }

    fn backward(
        &self,
        batch: usize,
        x: &[f64],
        y: &[f64],
        w: &[f64],
        gz: &[f64],
    ) -> Result<Grads<f64>> {
        let g = self
            .0
            .backward(batch, &to_f32(x), &to_f32(y), &to_f32(w), &to_f32(gz))
            .map_err(|e| backend_err("wgpu", e))?;
        Ok(super::grads64(g))
    }

    fn double_backward(&self, batch: usize, a: [&[f64]; 7]) -> Result<DoubleGrads<f64>> {
        let [x, y, w, gz, hx, hy, hw] = a.map(to_f32);
        let g = self
            .0
            .double_backward(batch, &x, &y, &w, &gz, &hx, &hy, &hw)
            .map_err(|e| backend_err("wgpu", e))?;
        Ok(super::dgrads64(g))
    }
}
