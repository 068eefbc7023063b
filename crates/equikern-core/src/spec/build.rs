//! Validation of a [`TpSpec`] and derivation of every [`Path`] field (e3nn §3.1–3.5).

use super::{
    Instruction, IrrepNormalization, Path, PathNormalization, SpecError, TensorProduct, TpSpec,
};
use crate::irreps::{Irreps, MulIr};
use crate::so3;

/// Per-instruction data that needs no Clebsch–Gordan coefficients.
struct Shape {
    a: MulIr,
    b: MulIr,
    o: MulIr,
    path_shape: Vec<usize>,
    /// `∏ path_shape` when weighted, else 0.
    numel: usize,
}

fn dims(irreps: &Irreps, field: &str) -> Result<Vec<usize>, SpecError> {
    irreps.checked_dim().ok_or_else(|| SpecError::Field {
        field: field.to_string(),
        why: format!("dimension of {irreps} overflows usize"),
    })?;
    Ok(irreps.slices().iter().map(|r| r.start).collect())
}

impl TpSpec {
    fn instruction_error(&self, index: usize, why: impl Into<String>) -> SpecError {
        SpecError::Instruction {
            index,
            instruction: self.instructions[index].to_string(),
            why: why.into(),
        }
    }

    /// Checks one instruction against the irreps and §3.2 and returns its shape.
    fn check_instruction(&self, index: usize) -> Result<Shape, SpecError> {
        let ins: &Instruction = &self.instructions[index];
        let err = |why: String| self.instruction_error(index, why);
        let pick = |irreps: &Irreps, i: usize, name: &str| {
            irreps.0.get(i).copied().ok_or_else(|| {
                err(format!(
                    "{name} index {i} out of range ({name} = \"{irreps}\" has {} entries)",
                    irreps.len()
                ))
            })
        };
        let a = pick(&self.irreps_in1, ins.i_in1, "irreps_in1")?;
        let b = pick(&self.irreps_in2, ins.i_in2, "irreps_in2")?;
        let o = pick(&self.irreps_out, ins.i_out, "irreps_out")?;
        if a.ir.p.times(b.ir.p) != o.ir.p {
            return Err(err(format!(
                "parity violation: {} x {} cannot give {} (parity of the output must be the product)",
                a.ir, b.ir, o.ir
            )));
        }
        if !a.ir.couples_to(b.ir, o.ir) {
            return Err(err(format!(
                "triangle violation: {} x {} cannot give {} (need |l1-l2| <= l_out <= l1+l2)",
                a.ir, b.ir, o.ir
            )));
        }
        ins.mode
            .check_multiplicities(a.mul, b.mul, o.mul, ins.has_weight)
            .map_err(err)?;
        if ins.mode.requires_weight() && !ins.has_weight {
            return Err(err(format!(
                "mode {:?} requires has_weight = true",
                ins.mode.as_str()
            )));
        }
        if !(ins.path_weight.is_finite() && ins.path_weight >= 0.0) {
            return Err(err(format!(
                "path_weight must be finite and >= 0 (got {})",
                ins.path_weight
            )));
        }
        let path_shape = ins.mode.path_shape(a.mul, b.mul, o.mul);
        let size = path_shape
            .iter()
            .try_fold(1usize, |acc, &s| acc.checked_mul(s))
            .ok_or_else(|| err("path_shape size overflows usize".to_string()))?;
        let numel = if ins.has_weight { size } else { 0 };
        Ok(Shape {
            a,
            b,
            o,
            path_shape,
            numel,
        })
    }

    fn check_all(&self) -> Result<Vec<Shape>, SpecError> {
        (0..self.instructions.len())
            .map(|k| self.check_instruction(k))
            .collect()
    }

    /// Structural validation (everything [`TpSpec::build`] checks except the 3j table).
    pub fn validate(&self) -> Result<(), SpecError> {
        dims(&self.irreps_in1, "irreps_in1")?;
        dims(&self.irreps_in2, "irreps_in2")?;
        dims(&self.irreps_out, "irreps_out")?;
        self.weight_numel().map(|_| ())
    }

    /// `Σ ∏ path_shape` over weighted instructions (validates the instructions).
    pub fn weight_numel(&self) -> Result<usize, SpecError> {
        self.check_all()?
            .iter()
            .try_fold(0usize, |acc, s| acc.checked_add(s.numel))
            .ok_or_else(|| SpecError::Field {
                field: "instructions".into(),
                why: "weight_numel overflows usize".into(),
            })
    }

    /// Validates the spec and derives every [`Path`] field (e3nn §3).
    pub fn build(&self) -> Result<TensorProduct, SpecError> {
        let off1 = dims(&self.irreps_in1, "irreps_in1")?;
        let off2 = dims(&self.irreps_in2, "irreps_in2")?;
        let offo = dims(&self.irreps_out, "irreps_out")?;
        let shapes = self.check_all()?;
        self.weight_numel()?; // overflow check for the running offsets below

        // Fan-in sums and instruction counts per output block (path normalisation).
        let mut fan_in_sum = vec![0.0f64; self.irreps_out.len()];
        let mut n_into = vec![0usize; self.irreps_out.len()];
        for (ins, s) in self.instructions.iter().zip(&shapes) {
            // in1_var = in2_var = 1.
            fan_in_sum[ins.i_out] += ins.mode.fan_in(s.a.mul, s.b.mul);
            n_into[ins.i_out] += 1;
        }

        let mut paths = Vec::with_capacity(shapes.len());
        let mut weight_offset = 0usize;
        for (index, (ins, s)) in self.instructions.iter().zip(shapes).enumerate() {
            let (l1, l2, lo) = (s.a.ir.l, s.b.ir.l, s.o.ir.l);
            let a_norm = match self.irrep_normalization {
                IrrepNormalization::Component => s.o.ir.dim() as f64,
                IrrepNormalization::Norm => (s.a.ir.dim() * s.b.ir.dim()) as f64,
                IrrepNormalization::None => 1.0,
            };
            let x = match self.path_normalization {
                PathNormalization::Element => fan_in_sum[ins.i_out],
                PathNormalization::Path => {
                    ins.mode.fan_in(s.a.mul, s.b.mul) * n_into[ins.i_out] as f64
                }
                PathNormalization::None => 1.0,
            };
            // Same operation order as e3nn: divide (when x > 0), then out_var (= 1), then path_weight.
            let mut alpha = a_norm;
            if x > 0.0 {
                alpha /= x;
            }
            alpha *= ins.path_weight;
            let cg = so3::wigner_3j(l1, l2, lo)
                .map_err(|e| self.instruction_error(index, e.to_string()))?
                .nonzeros
                .clone();
            let this_offset = ins.has_weight.then_some(weight_offset);
            weight_offset += s.numel;
            paths.push(Path {
                instruction: *ins,
                l1,
                l2,
                lo,
                m1: s.a.mul,
                m2: s.b.mul,
                mo: s.o.mul,
                in1_offset: off1[ins.i_in1],
                in2_offset: off2[ins.i_in2],
                out_offset: offo[ins.i_out],
                path_shape: s.path_shape,
                coefficient: alpha.sqrt(),
                weight_offset: this_offset,
                cg,
            });
        }
        Ok(TensorProduct {
            spec: self.clone(),
            paths,
            weight_numel: weight_offset,
            dim_in1: self.irreps_in1.dim(),
            dim_in2: self.irreps_in2.dim(),
            dim_out: self.irreps_out.dim(),
        })
    }
}
