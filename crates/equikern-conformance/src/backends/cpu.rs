//! The CPU backend: the core oracle in f32 (f32 arithmetic throughout) and the plan
//! interpreter in f64 (the lowering executed exactly as a GPU runtime would: dispatches,
//! chunked shared-weight sums, per-row accumulation order).

use std::collections::BTreeMap;
use std::sync::Arc;

use equikern_core::oracle::{DoubleGrads, Grads, Oracle};
use equikern_core::TensorProduct;
use equikern_plan::{interpret, lower, Capabilities, Direction, Dtype, KernelPlan, Tensor};

use super::{backend_err, clamp_dispatch, BoundOp, ConformanceBackend};
use crate::{Prec, Result};

pub struct CpuBackend;

impl ConformanceBackend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn describe(&self) -> String {
        "cpu: core oracle (f32), plan interpreter (f64)".into()
    }

    fn precisions(&self) -> Vec<Prec> {
        vec![Prec::F32, Prec::F64]
    }

    fn deterministic(&self) -> bool {
        true
    }

    fn splits(&self, prec: Prec) -> bool {
        prec == Prec::F64
    }

    fn bind(
        &self,
        tp: &Arc<TensorProduct>,
        prec: Prec,
        max_samples_per_dispatch: Option<u32>,
    ) -> Result<Box<dyn BoundOp + '_>> {
        match prec {
            Prec::F32 => Ok(Box::new(OracleF32(
                Oracle::new(tp).map_err(|e| backend_err("cpu", e))?,
            ))),
            Prec::F64 => Ok(Box::new(PlanInterp::new(
                "cpu",
                tp,
                max_samples_per_dispatch,
                &|_, _| {},
            )?)),
        }
    }
}

struct OracleF32(Oracle<f32>);

fn f32v(v: &[f64]) -> Vec<f32> {
    super::to_f32(v)
}

impl BoundOp for OracleF32 {
    fn forward(&self, batch: usize, x: &[f64], y: &[f64], w: &[f64]) -> Result<Vec<f64>> {
        let z = self
            .0
            .forward(batch, &f32v(x), &f32v(y), &f32v(w))
            .map_err(|e| backend_err("cpu", e))?;
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
            .backward(batch, &f32v(x), &f32v(y), &f32v(w), &f32v(gz))
            .map_err(|e| backend_err("cpu", e))?;
        Ok(super::grads64(g))
    }

    fn double_backward(&self, batch: usize, a: [&[f64]; 7]) -> Result<DoubleGrads<f64>> {
        let [x, y, w, gz, hx, hy, hw] = a.map(f32v);
        let g = self
            .0
            .double_backward(batch, &x, &y, &w, &gz, &hx, &hy, &hw)
            .map_err(|e| backend_err("cpu", e))?;
        Ok(super::dgrads64(g))
    }
}

/// Capabilities the interpreter lowers for: WebGPU's minimums plus f64.
pub fn interp_caps() -> Capabilities {
    Capabilities {
        f64: true,
        ..Capabilities::webgpu_min()
    }
}

/// The three plans of one tensor product, run by the CPU plan interpreter (f64).
pub struct PlanInterp {
    name: String,
    plans: [KernelPlan; 3],
}

impl PlanInterp {
    /// Lower every direction, clamp dispatches, then let `mutate` edit each plan (the
    /// identity for the real backend; a deliberate bug for [`super::mutant`]).
    pub fn new(
        name: &str,
        tp: &TensorProduct,
        max_samples_per_dispatch: Option<u32>,
        mutate: &dyn Fn(Direction, &mut KernelPlan),
    ) -> Result<Self> {
        let caps = interp_caps();
        let one = |d: Direction| -> Result<KernelPlan> {
            let mut p = lower(tp, d, Dtype::F64, &caps).map_err(|e| backend_err(name, e))?;
            clamp_dispatch(&mut p, max_samples_per_dispatch);
            mutate(d, &mut p);
            Ok(p)
        };
        Ok(PlanInterp {
            name: name.to_string(),
            plans: [
                one(Direction::Forward)?,
                one(Direction::Backward)?,
                one(Direction::DoubleBackward)?,
            ],
        })
    }

    fn run(
        &self,
        i: usize,
        batch: usize,
        ins: &[(Tensor, &[f64])],
    ) -> Result<BTreeMap<Tensor, Vec<f64>>> {
        let inputs: BTreeMap<Tensor, Vec<f64>> =
            ins.iter().map(|(t, v)| (*t, v.to_vec())).collect();
        interpret(&self.plans[i], batch, &inputs).map_err(|e| backend_err(&self.name, e))
    }
}

impl BoundOp for PlanInterp {
    fn forward(&self, batch: usize, x: &[f64], y: &[f64], w: &[f64]) -> Result<Vec<f64>> {
        use Tensor::*;
        let mut o = self.run(0, batch, &[(X, x), (Y, y), (W, w)])?;
        Ok(o.remove(&Z).unwrap_or_default())
    }

    fn backward(
        &self,
        batch: usize,
        x: &[f64],
        y: &[f64],
        w: &[f64],
        gz: &[f64],
    ) -> Result<Grads<f64>> {
        use Tensor::*;
        let mut o = self.run(1, batch, &[(X, x), (Y, y), (W, w), (GZ, gz)])?;
        Ok(Grads {
            gx: o.remove(&GX).unwrap_or_default(),
            gy: o.remove(&GY).unwrap_or_default(),
            gw: o.remove(&GW).unwrap_or_default(),
        })
    }

    fn double_backward(&self, batch: usize, a: [&[f64]; 7]) -> Result<DoubleGrads<f64>> {
        use Tensor::*;
        let ins: Vec<(Tensor, &[f64])> = [X, Y, W, GZ, HX, HY, HW].into_iter().zip(a).collect();
        let mut o = self.run(2, batch, &ins)?;
        Ok(DoubleGrads {
            dx: o.remove(&DX).unwrap_or_default(),
            dy: o.remove(&DY).unwrap_or_default(),
            dw: o.remove(&DW).unwrap_or_default(),
            dgz: o.remove(&DGZ).unwrap_or_default(),
        })
    }
}
