//! A deliberately broken backend: the plan interpreter (f64) run on plans that a
//! [`Mutation`] has edited after lowering, as a buggy emitter would print them. The suite
//! must fail it; `tests/mutation.rs` shows that it does.

use std::sync::Arc;

use equikern_core::TensorProduct;
use equikern_plan::{Direction, KernelPlan, Work};

use super::cpu::PlanInterp;
use super::{BoundOp, ConformanceBackend};
use crate::{Prec, Result};

/// How to break a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Negate the coefficient of the first term of the first contribution of every plan.
    FlipSign,
    /// Remove the last contribution of the first segment that has one, in every plan.
    DropContribution,
    /// Scale every term's coefficient by `1 + 1e-6` (a subtly wrong constant).
    Perturb,
}

impl Mutation {
    /// Apply to every row kernel of `plan`. Returns whether anything changed.
    pub fn apply(self, plan: &mut KernelPlan) -> bool {
        let mut changed = false;
        for k in &mut plan.kernels {
            let Work::Rows { segments, .. } = &mut k.work else {
                continue;
            };
            match self {
                Mutation::FlipSign => {
                    if let Some(t) = segments
                        .iter_mut()
                        .flat_map(|s| s.contributions.iter_mut())
                        .flat_map(|c| c.terms.iter_mut())
                        .next()
                    {
                        t.coeff = -t.coeff;
                        changed = true;
                    }
                }
                Mutation::DropContribution => {
                    if let Some(s) = segments.iter_mut().find(|s| !s.contributions.is_empty()) {
                        s.contributions.pop();
                        changed = true;
                    }
                }
                Mutation::Perturb => {
                    for t in segments
                        .iter_mut()
                        .flat_map(|s| s.contributions.iter_mut())
                        .flat_map(|c| c.terms.iter_mut())
                    {
                        t.coeff *= 1.0 + 1e-6;
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

/// The plan interpreter with a [`Mutation`] applied to every lowered plan.
pub struct MutantBackend {
    pub mutation: Mutation,
    name: String,
}

impl MutantBackend {
    pub fn new(mutation: Mutation) -> Self {
        MutantBackend {
            mutation,
            name: format!("mutant-{mutation:?}").to_lowercase(),
        }
    }
}

impl ConformanceBackend for MutantBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!(
            "{}: plan interpreter on plans broken by {:?}",
            self.name, self.mutation
        )
    }

    fn precisions(&self) -> Vec<Prec> {
        vec![Prec::F64]
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
        _prec: Prec,
        max_samples_per_dispatch: Option<u32>,
    ) -> Result<Box<dyn BoundOp + '_>> {
        let m = self.mutation;
        let mutate = move |_: Direction, p: &mut KernelPlan| {
            m.apply(p);
        };
        Ok(Box::new(PlanInterp::new(
            &self.name,
            tp,
            max_samples_per_dispatch,
            &mutate,
        )?))
    }
}
