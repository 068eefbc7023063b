//! The CUDA side of [`crate::TensorProductOp`]: one [`CudaTensorProduct`] per dtype (built on
//! first use), host-slice runs and runs on caller-held [`CudaSlice`]s.

use std::sync::OnceLock;

use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::TensorProduct;
use equikern_cuda::{CudaDevice, CudaSlice, CudaTensorProduct, Real};
use equikern_plan::Dtype;

use crate::{Error, Result, TensorProductOp};

pub(crate) struct CudaExec {
    dev: CudaDevice,
    f32: OnceLock<CudaTensorProduct>,
    f64: OnceLock<CudaTensorProduct>,
}

impl CudaExec {
    pub fn new(dev: CudaDevice) -> Self {
        CudaExec {
            dev,
            f32: OnceLock::new(),
            f64: OnceLock::new(),
        }
    }

    /// The tensor product lowered for `dtype` (all three directions; modules compile lazily).
    pub fn get(&self, tp: &TensorProduct, dtype: Dtype) -> Result<&CudaTensorProduct> {
        let cell = match dtype {
            Dtype::F32 => &self.f32,
            Dtype::F64 => &self.f64,
        };
        if let Some(t) = cell.get() {
            return Ok(t);
        }
        let t = CudaTensorProduct::new(&self.dev, tp, dtype)?;
        // A racing thread may have set it first; either value is the same lowering.
        let _ = cell.set(t);
        cell.get()
            .ok_or_else(|| Error::Unsupported("CUDA tensor product was not initialised".into()))
    }
}

/// Calls on CUDA device buffers ([`CudaSlice`] of `f32` or `f64`, allocated on
/// [`crate::Device::cuda_device`]'s context). Layouts as for the host calls; outputs are
/// written by the kernels in full. Launches go to the device's stream and return without
/// waiting.
impl TensorProductOp {
    /// The CUDA tensor product of this op in `dtype` (compile info, sources, event timing).
    pub fn cuda_tensor_product(&self, dtype: Dtype) -> Result<&CudaTensorProduct> {
        self.cuda_exec()?.get(self.tp_arc(), dtype)
    }

    /// `z = TP(x, y; w)` on CUDA buffers (`z` holds `batch * dim_out` elements).
    pub fn forward_cuda<T: Real>(
        &self,
        batch: usize,
        x: &CudaSlice<T>,
        y: &CudaSlice<T>,
        w: &CudaSlice<T>,
        z: &mut CudaSlice<T>,
    ) -> Result<()> {
        Ok(self
            .cuda_tensor_product(T::DTYPE)?
            .forward_device(batch, x, y, w, z)?)
    }

    /// Backward on CUDA buffers: writes `gx`, `gy`, `gw`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_cuda<T: Real>(
        &self,
        batch: usize,
        x: &CudaSlice<T>,
        y: &CudaSlice<T>,
        w: &CudaSlice<T>,
        grad_z: &CudaSlice<T>,
        gx: &mut CudaSlice<T>,
        gy: &mut CudaSlice<T>,
        gw: &mut CudaSlice<T>,
    ) -> Result<()> {
        Ok(self
            .cuda_tensor_product(T::DTYPE)?
            .backward_device(batch, x, y, w, grad_z, gx, gy, gw)?)
    }

    /// Double backward on CUDA buffers: `inputs = [x, y, w, grad_z, hx, hy, hw]`,
    /// `outputs = [dx, dy, dw, dgz]`.
    pub fn double_backward_cuda<T: Real>(
        &self,
        batch: usize,
        inputs: [&CudaSlice<T>; 7],
        outputs: [&mut CudaSlice<T>; 4],
    ) -> Result<()> {
        let [x, y, w, gz, hx, hy, hw] = inputs;
        let [dx, dy, dw, dgz] = outputs;
        Ok(self
            .cuda_tensor_product(T::DTYPE)?
            .double_backward_device(batch, x, y, w, gz, hx, hy, hw, dx, dy, dw, dgz)?)
    }
}

pub(crate) fn forward<T: Real>(
    c: &CudaTensorProduct,
    batch: usize,
    x: &[T],
    y: &[T],
    w: &[T],
) -> Result<Vec<T>> {
    Ok(c.forward(batch, x, y, w)?)
}

pub(crate) fn backward<T: Real>(
    c: &CudaTensorProduct,
    batch: usize,
    a: [&[T]; 4],
) -> Result<Grads<T>> {
    Ok(c.backward(batch, a[0], a[1], a[2], a[3])?)
}

pub(crate) fn double_backward<T: Real>(
    c: &CudaTensorProduct,
    batch: usize,
    a: [&[T]; 7],
) -> Result<DoubleGrads<T>> {
    Ok(c.double_backward(batch, a[0], a[1], a[2], a[3], a[4], a[5], a[6])?)
}
