//! The wgpu side of [`crate::TensorProductOp`]: lowering per direction, host runs, and runs
//! on caller-held device buffers.

use std::collections::BTreeMap;
use std::sync::Arc;

use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::TensorProduct;
use equikern_plan::{lower, Direction, Dtype, Tensor};
use equikern_wgpu::{wgpu, CompiledPlan, Runtime, TensorBuffer};

use crate::op::{slot, PlanSlots};
use crate::{Error, Result, TensorProductOp};

pub(crate) struct WgpuExec {
    rt: Arc<Runtime>,
    plans: PlanSlots<Arc<CompiledPlan>>,
}

impl WgpuExec {
    pub fn new(rt: Arc<Runtime>) -> Self {
        WgpuExec {
            rt,
            plans: Default::default(),
        }
    }

    /// The compiled plan of one direction (lowered for this device's capabilities).
    pub async fn compiled(&self, tp: &TensorProduct, d: Direction) -> Result<Arc<CompiledPlan>> {
        if let Some(c) = self.lock()[slot(d)].clone() {
            return Ok(c);
        }
        let plan = lower(tp, d, Dtype::F32, &self.rt.capabilities())?;
        let c = self.rt.prepare(&plan).await?;
        self.lock()[slot(d)] = Some(c.clone());
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<Arc<CompiledPlan>>; 3]> {
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(
        &self,
        tp: &TensorProduct,
        d: Direction,
        batch: usize,
        inputs: &[(Tensor, &[f32])],
    ) -> Result<BTreeMap<Tensor, Vec<f32>>> {
        let c = self.compiled(tp, d).await?;
        let b = check_batch(&c, batch)?;
        Ok(self.rt.run_compiled(&c, b, inputs).await?)
    }

    pub async fn forward(
        &self,
        tp: &TensorProduct,
        batch: usize,
        x: &[f32],
        y: &[f32],
        w: &[f32],
    ) -> Result<Vec<f32>> {
        use Tensor::*;
        let mut o = self
            .run(tp, Direction::Forward, batch, &[(X, x), (Y, y), (W, w)])
            .await?;
        Ok(o.remove(&Z).unwrap_or_default())
    }

    pub async fn backward(
        &self,
        tp: &TensorProduct,
        batch: usize,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        gz: &[f32],
    ) -> Result<Grads<f32>> {
        use Tensor::*;
        let mut o = self
            .run(
                tp,
                Direction::Backward,
                batch,
                &[(X, x), (Y, y), (W, w), (GZ, gz)],
            )
            .await?;
        Ok(Grads {
            gx: o.remove(&GX).unwrap_or_default(),
            gy: o.remove(&GY).unwrap_or_default(),
            gw: o.remove(&GW).unwrap_or_default(),
        })
    }

    pub async fn double_backward(
        &self,
        tp: &TensorProduct,
        batch: usize,
        a: [&[f32]; 7],
    ) -> Result<DoubleGrads<f32>> {
        use Tensor::*;
        let ins: Vec<(Tensor, &[f32])> = [X, Y, W, GZ, HX, HY, HW].into_iter().zip(a).collect();
        let mut o = self.run(tp, Direction::DoubleBackward, batch, &ins).await?;
        Ok(DoubleGrads {
            dx: o.remove(&DX).unwrap_or_default(),
            dy: o.remove(&DY).unwrap_or_default(),
            dw: o.remove(&DW).unwrap_or_default(),
            dgz: o.remove(&DGZ).unwrap_or_default(),
        })
    }

    async fn dispatch(
        &self,
        tp: &TensorProduct,
        d: Direction,
        batch: usize,
        bufs: &[(Tensor, &wgpu::Buffer)],
    ) -> Result<()> {
        let c = self.compiled(tp, d).await?;
        let b = check_batch(&c, batch)?;
        let tb: Vec<TensorBuffer> = bufs.iter().map(|(t, b)| TensorBuffer::new(*t, b)).collect();
        self.rt.dispatch(&c, b, &tb)?;
        Ok(())
    }
}

fn check_batch(c: &CompiledPlan, batch: usize) -> Result<u32> {
    let b = u32::try_from(batch)
        .map_err(|_| Error::Batch(format!("{batch} samples exceed u32::MAX; split the batch")))?;
    if let Some(max) = c.plan().max_batch() {
        if batch as u64 > max {
            return Err(Error::Batch(format!(
                "{batch} samples exceed this device's limit of {max} for shared-weight gradients"
            )));
        }
    }
    Ok(b)
}

/// Calls on device buffers the caller holds (created on [`Runtime::device`] of this op's
/// device, with `STORAGE` usage). Layouts as for the host calls; outputs are written by the
/// kernels in full. These return once the work is submitted: chain further GPU work, or read
/// back with [`Runtime::read_f32`].
impl TensorProductOp {
    /// `z = TP(x, y; w)` on device buffers.
    pub async fn forward_buffers_async(
        &self,
        batch: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        w: &wgpu::Buffer,
        z: &wgpu::Buffer,
    ) -> Result<()> {
        use Tensor::*;
        self.wgpu_exec()?
            .dispatch(
                self.tp_arc(),
                Direction::Forward,
                batch,
                &[(X, x), (Y, y), (W, w), (Z, z)],
            )
            .await
    }

    /// Backward on device buffers: writes `gx`, `gy`, `gw`.
    #[allow(clippy::too_many_arguments)]
    pub async fn backward_buffers_async(
        &self,
        batch: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        w: &wgpu::Buffer,
        grad_z: &wgpu::Buffer,
        gx: &wgpu::Buffer,
        gy: &wgpu::Buffer,
        gw: &wgpu::Buffer,
    ) -> Result<()> {
        use Tensor::*;
        let b = [
            (X, x),
            (Y, y),
            (W, w),
            (GZ, grad_z),
            (GX, gx),
            (GY, gy),
            (GW, gw),
        ];
        self.wgpu_exec()?
            .dispatch(self.tp_arc(), Direction::Backward, batch, &b)
            .await
    }

    /// Double backward on device buffers: `inputs = [x, y, w, grad_z, hx, hy, hw]`,
    /// `outputs = [dx, dy, dw, dgz]`.
    pub async fn double_backward_buffers_async(
        &self,
        batch: usize,
        inputs: [&wgpu::Buffer; 7],
        outputs: [&wgpu::Buffer; 4],
    ) -> Result<()> {
        use Tensor::*;
        let b: Vec<(Tensor, &wgpu::Buffer)> = [X, Y, W, GZ, HX, HY, HW, DX, DY, DW, DGZ]
            .into_iter()
            .zip(inputs.into_iter().chain(outputs))
            .collect();
        self.wgpu_exec()?
            .dispatch(self.tp_arc(), Direction::DoubleBackward, batch, &b)
            .await
    }

    /// Blocking [`Self::forward_buffers_async`] (native; blocks only to compile on first use).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_buffers(
        &self,
        batch: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        w: &wgpu::Buffer,
        z: &wgpu::Buffer,
    ) -> Result<()> {
        pollster::block_on(self.forward_buffers_async(batch, x, y, w, z))
    }

    /// Blocking [`Self::backward_buffers_async`].
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn backward_buffers(
        &self,
        batch: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        w: &wgpu::Buffer,
        grad_z: &wgpu::Buffer,
        gx: &wgpu::Buffer,
        gy: &wgpu::Buffer,
        gw: &wgpu::Buffer,
    ) -> Result<()> {
        pollster::block_on(self.backward_buffers_async(batch, x, y, w, grad_z, gx, gy, gw))
    }

    /// Blocking [`Self::double_backward_buffers_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn double_backward_buffers(
        &self,
        batch: usize,
        inputs: [&wgpu::Buffer; 7],
        outputs: [&wgpu::Buffer; 4],
    ) -> Result<()> {
        pollster::block_on(self.double_backward_buffers_async(batch, inputs, outputs))
    }
}
