//! [`TensorProductOp`]: one tensor product bound to one device, with host-slice and
//! device-buffer calls for forward, backward and double backward.

use std::sync::{Arc, Mutex};

use equikern_core::oracle::{DoubleGrads, Grads, Oracle};
use equikern_core::{TensorProduct, TpSpec};
use equikern_plan::Direction;

use crate::device::{Device, DeviceInner};
use crate::{Error, Result};

/// A tensor product `z = TP(x, y; w)` ready to run on a [`Device`].
///
/// Layouts (row-major, flat): `x [batch, dim_in1]`, `y [batch, dim_in2]`, `z [batch, dim_out]`,
/// `w [batch, weight_numel]` or `[weight_numel]` with shared weights; gradients and tangents
/// are shaped as their primal (a shared-weight gradient is summed over the batch).
///
/// Kernels are lowered and compiled on first use of each direction and cached.
pub struct TensorProductOp {
    tp: Arc<TensorProduct>,
    device: Device,
    exec: Exec,
}

enum Exec {
    Cpu(Box<Oracle<f64>>),
    #[cfg(feature = "wgpu")]
    Wgpu(crate::wgpu_exec::WgpuExec),
}

impl TensorProductOp {
    /// Validate `spec` and bind it to `device` (no kernel is compiled yet).
    pub fn new(spec: &TpSpec, device: &Device) -> Result<Self> {
        Self::from_tensor_product(spec.build()?, device)
    }

    /// Parse a JSON spec (see [`equikern_core::spec`]) and bind it to `device`.
    pub fn from_json(json: &str, device: &Device) -> Result<Self> {
        Self::new(&TpSpec::from_json(json)?, device)
    }

    /// Bind an already built tensor product to `device`.
    pub fn from_tensor_product(tp: TensorProduct, device: &Device) -> Result<Self> {
        let exec = match &device.inner {
            DeviceInner::Cpu => Exec::Cpu(Box::new(Oracle::new(&tp)?)),
            #[cfg(feature = "wgpu")]
            DeviceInner::Wgpu(rt) => Exec::Wgpu(crate::wgpu_exec::WgpuExec::new(rt.clone())),
        };
        Ok(TensorProductOp {
            tp: Arc::new(tp),
            device: device.clone(),
            exec,
        })
    }

    pub fn tensor_product(&self) -> &TensorProduct {
        &self.tp
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dim_in1(&self) -> usize {
        self.tp.dim_in1
    }

    pub fn dim_in2(&self) -> usize {
        self.tp.dim_in2
    }

    pub fn dim_out(&self) -> usize {
        self.tp.dim_out
    }

    pub fn weight_numel(&self) -> usize {
        self.tp.weight_numel
    }

    pub fn shared_weights(&self) -> bool {
        self.tp.spec.shared_weights
    }

    /// Expected length of a weight-shaped argument for `batch`.
    pub fn weight_len(&self, batch: usize) -> Option<usize> {
        if self.shared_weights() {
            Some(self.tp.weight_numel)
        } else {
            batch.checked_mul(self.tp.weight_numel)
        }
    }

    fn check(
        &self,
        arg: &'static str,
        v: &[f32],
        batch: usize,
        per: usize,
        what: &str,
    ) -> Result<()> {
        let expected = batch
            .checked_mul(per)
            .ok_or_else(|| Error::Batch(format!("batch {batch} × {what} {per} overflows usize")))?;
        if v.len() != expected {
            return Err(Error::Length {
                arg,
                expected,
                actual: v.len(),
                why: format!("batch {batch} × {what} {per}"),
            });
        }
        Ok(())
    }

    fn check_w(&self, arg: &'static str, v: &[f32], batch: usize) -> Result<()> {
        if self.shared_weights() {
            if v.len() != self.tp.weight_numel {
                return Err(Error::Length {
                    arg,
                    expected: self.tp.weight_numel,
                    actual: v.len(),
                    why: "shared weights: weight_numel".into(),
                });
            }
            Ok(())
        } else {
            self.check(arg, v, batch, self.tp.weight_numel, "weight_numel")
        }
    }

    fn check_xyw(&self, batch: usize, x: &[f32], y: &[f32], w: &[f32]) -> Result<()> {
        self.check("x", x, batch, self.tp.dim_in1, "dim_in1")?;
        self.check("y", y, batch, self.tp.dim_in2, "dim_in2")?;
        self.check_w("w", w, batch)
    }

    /// `z = TP(x, y; w)`, `[batch, dim_out]`.
    pub async fn forward_async(
        &self,
        batch: usize,
        x: &[f32],
        y: &[f32],
        w: &[f32],
    ) -> Result<Vec<f32>> {
        self.check_xyw(batch, x, y, w)?;
        match &self.exec {
            Exec::Cpu(o) => Ok(f32v(o.forward(batch, &f64v(x), &f64v(y), &f64v(w))?)),
            #[cfg(feature = "wgpu")]
            Exec::Wgpu(e) => e.forward(&self.tp, batch, x, y, w).await,
        }
    }

    /// Gradients of `<grad_z, z>` w.r.t. x, y and w.
    pub async fn backward_async(
        &self,
        batch: usize,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        grad_z: &[f32],
    ) -> Result<Grads<f32>> {
        self.check_xyw(batch, x, y, w)?;
        self.check("grad_z", grad_z, batch, self.tp.dim_out, "dim_out")?;
        match &self.exec {
            Exec::Cpu(o) => {
                let g = o.backward(batch, &f64v(x), &f64v(y), &f64v(w), &f64v(grad_z))?;
                Ok(Grads {
                    gx: f32v(g.gx),
                    gy: f32v(g.gy),
                    gw: f32v(g.gw),
                })
            }
            #[cfg(feature = "wgpu")]
            Exec::Wgpu(e) => e.backward(&self.tp, batch, x, y, w, grad_z).await,
        }
    }

    /// Gradients of `S = <gx,hx> + <gy,hy> + <gw,hw>` (the backward outputs against tangents
    /// `hx, hy, hw`) w.r.t. x, y, w and grad_z.
    #[allow(clippy::too_many_arguments)]
    pub async fn double_backward_async(
        &self,
        batch: usize,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        grad_z: &[f32],
        hx: &[f32],
        hy: &[f32],
        hw: &[f32],
    ) -> Result<DoubleGrads<f32>> {
        self.check_xyw(batch, x, y, w)?;
        self.check("grad_z", grad_z, batch, self.tp.dim_out, "dim_out")?;
        self.check("hx", hx, batch, self.tp.dim_in1, "dim_in1")?;
        self.check("hy", hy, batch, self.tp.dim_in2, "dim_in2")?;
        self.check_w("hw", hw, batch)?;
        match &self.exec {
            Exec::Cpu(o) => {
                let g = o.double_backward(
                    batch,
                    &f64v(x),
                    &f64v(y),
                    &f64v(w),
                    &f64v(grad_z),
                    &f64v(hx),
                    &f64v(hy),
                    &f64v(hw),
                )?;
                Ok(DoubleGrads {
                    dx: f32v(g.dx),
                    dy: f32v(g.dy),
                    dw: f32v(g.dw),
                    dgz: f32v(g.dgz),
                })
            }
            #[cfg(feature = "wgpu")]
            Exec::Wgpu(e) => {
                e.double_backward(&self.tp, batch, [x, y, w, grad_z, hx, hy, hw])
                    .await
            }
        }
    }

    /// Blocking [`Self::forward_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward(&self, batch: usize, x: &[f32], y: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_async(batch, x, y, w))
    }

    /// Blocking [`Self::backward_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward(
        &self,
        batch: usize,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        grad_z: &[f32],
    ) -> Result<Grads<f32>> {
        pollster::block_on(self.backward_async(batch, x, y, w, grad_z))
    }

    /// Blocking [`Self::double_backward_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn double_backward(
        &self,
        batch: usize,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        grad_z: &[f32],
        hx: &[f32],
        hy: &[f32],
        hw: &[f32],
    ) -> Result<DoubleGrads<f32>> {
        pollster::block_on(self.double_backward_async(batch, x, y, w, grad_z, hx, hy, hw))
    }

    /// The WGSL of every kernel of one direction (lowered for this device), for inspection.
    #[cfg(feature = "wgpu")]
    pub async fn wgsl_async(&self, direction: Direction) -> Result<Vec<(String, String)>> {
        match &self.exec {
            Exec::Wgpu(e) => {
                let c = e.compiled(&self.tp, direction).await?;
                Ok(c.sources()
                    .map(|(n, s)| (n.to_string(), s.to_string()))
                    .collect())
            }
            Exec::Cpu(_) => Err(Error::Unsupported(
                "WGSL is only produced for a wgpu device".into(),
            )),
        }
    }

    #[cfg(feature = "wgpu")]
    pub(crate) fn wgpu_exec(&self) -> Result<&crate::wgpu_exec::WgpuExec> {
        match &self.exec {
            Exec::Wgpu(e) => Ok(e),
            _ => Err(Error::Unsupported(format!(
                "device buffers need a wgpu device; this tensor product runs on {}",
                self.device.name()
            ))),
        }
    }

    pub(crate) fn tp_arc(&self) -> &Arc<TensorProduct> {
        &self.tp
    }
}

/// Plans per direction, lowered once.
pub(crate) type PlanSlots<T> = Mutex<[Option<T>; 3]>;

pub(crate) fn slot(d: Direction) -> usize {
    match d {
        Direction::Forward => 0,
        Direction::Backward => 1,
        Direction::DoubleBackward => 2,
    }
}

fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| *x as f64).collect()
}

fn f32v(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

impl std::fmt::Debug for TensorProductOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorProductOp")
            .field("dim_in1", &self.tp.dim_in1)
            .field("dim_in2", &self.tp.dim_in2)
            .field("dim_out", &self.tp.dim_out)
            .field("weight_numel", &self.tp.weight_numel)
            .field("shared_weights", &self.tp.spec.shared_weights)
            .field("device", &self.device)
            .finish()
    }
}
