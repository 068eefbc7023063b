//! Plans run directly on the wgpu runtime (`Runtime::run`), bypassing the facade, with an
//! optional [`Mutation`] applied after lowering: the "broken WGSL emitter" of the mutation
//! test, on the real GPU path (the writer prints the broken plan, the device runs it).

use std::collections::BTreeMap;
use std::sync::Arc;

use equikern::wgpu_runtime::{Runtime, RuntimeOptions};
use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::TensorProduct;
use equikern_plan::{lower, Direction, Dtype, KernelPlan, Tensor};

use super::mutant::Mutation;
use super::{backend_err, to_f32, to_f64, BoundOp, ConformanceBackend};
use crate::{Error, Prec, Result};

pub struct WgpuPlanBackend {
    rt: Arc<Runtime>,
    mutation: Option<Mutation>,
    name: String,
}

impl WgpuPlanBackend {
    pub fn open(mutation: Option<Mutation>) -> Result<Self> {
        let rt = Runtime::new_blocking(RuntimeOptions {
            poison_outputs: true,
            ..RuntimeOptions::default()
        })
        .map_err(|e| Error::Unavailable {
            backend: "wgpu".into(),
            why: e.to_string(),
        })?;
        let name = match mutation {
            Some(m) => format!("wgpu-mutant-{m:?}").to_lowercase(),
            None => "wgpu-plan".into(),
        };
        Ok(WgpuPlanBackend {
            rt: Arc::new(rt),
            mutation,
            name,
        })
    }
}

impl ConformanceBackend for WgpuPlanBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        let m = self
            .mutation
            .map_or(String::new(), |m| format!(", plans broken by {m:?}"));
        format!(
            "{}: wgpu runtime on {}{m}",
            self.name,
            self.rt.adapter_name()
        )
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
            return Err(backend_err(&self.name, "f32 only"));
        }
        let caps = self.rt.capabilities();
        let one = |d: Direction| -> Result<KernelPlan> {
            let mut p = lower(tp, d, Dtype::F32, &caps).map_err(|e| backend_err(&self.name, e))?;
            super::clamp_dispatch(&mut p, max_samples_per_dispatch);
            if let Some(m) = self.mutation {
                m.apply(&mut p);
            }
            Ok(p)
        };
        Ok(Box::new(PlanOp {
            b: self,
            plans: [
                one(Direction::Forward)?,
                one(Direction::Backward)?,
                one(Direction::DoubleBackward)?,
            ],
        }))
    }
}

struct PlanOp<'a> {
    b: &'a WgpuPlanBackend,
    plans: [KernelPlan; 3],
}

impl PlanOp<'_> {
    fn run(
        &self,
        i: usize,
        batch: usize,
        ins: &[(Tensor, &[f64])],
    ) -> Result<BTreeMap<Tensor, Vec<f64>>> {
        let name = &self.b.name;
        let batch = u32::try_from(batch).map_err(|e| backend_err(name, e))?;
        let owned: Vec<(Tensor, Vec<f32>)> = ins.iter().map(|(t, v)| (*t, to_f32(v))).collect();
        let plan = &self.plans[i];
        let needed = equikern::wgpu_runtime::plan_inputs_of(plan);
        let args: Vec<(Tensor, &[f32])> = owned
            .iter()
            .filter(|(t, _)| needed.contains(t))
            .map(|(t, v)| (*t, v.as_slice()))
            .collect();
        let out = self
            .b
            .rt
            .run_blocking(plan, batch, &args)
            .map_err(|e| backend_err(name, e))?;
        Ok(out.into_iter().map(|(t, v)| (t, to_f64(&v))).collect())
    }
}

impl BoundOp for PlanOp<'_> {
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
