//! Tensor-product spec: e3nn's `o3.TensorProduct` constructor arguments, validation,
//! normalisation coefficients and flattened weight layout.
//!
//! JSON format (read by the CLI, benches and conformance suite):
//! `{"irreps_in1": "...", "irreps_in2": "...", "irreps_out": "...",
//!   "instructions": [[0, 0, 0, "uvu", true, 1.0], ...], "shared_weights": false,
//!   "irrep_normalization": "component", "path_normalization": "element"}`

use crate::irreps::Irreps;

/// e3nn's eight connection modes. JSON names: `uvw uvu uvv uuw uuu uvuv uvu<v u<vw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionMode {
    Uvw,
    Uvu,
    Uvv,
    Uuw,
    Uuu,
    Uvuv,
    /// `uvu<v`
    UvuLtV,
    /// `u<vw`
    ULtVw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum IrrepNormalization {
    #[default]
    Component,
    Norm,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PathNormalization {
    #[default]
    Element,
    Path,
    None,
}

/// `(i_in1, i_in2, i_out, mode, has_weight, path_weight)` as given by the user.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Instruction {
    pub i_in1: usize,
    pub i_in2: usize,
    pub i_out: usize,
    pub mode: ConnectionMode,
    pub has_weight: bool,
    pub path_weight: f64,
}

/// The user-facing description of a tensor product (unvalidated).
#[derive(Clone, Debug, PartialEq)]
pub struct TpSpec {
    pub irreps_in1: Irreps,
    pub irreps_in2: Irreps,
    pub irreps_out: Irreps,
    pub instructions: Vec<Instruction>,
    pub shared_weights: bool,
    pub irrep_normalization: IrrepNormalization,
    pub path_normalization: PathNormalization,
}

/// One validated instruction with everything a kernel needs, in instruction order.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub instruction: Instruction,
    pub l1: u32,
    pub l2: u32,
    pub lo: u32,
    pub m1: usize,
    pub m2: usize,
    pub mo: usize,
    /// Element offsets of the three blocks in a sample's x, y and z rows.
    pub in1_offset: usize,
    pub in2_offset: usize,
    pub out_offset: usize,
    /// e3nn's `path_shape` (the weight tensor's shape for this instruction).
    pub path_shape: Vec<usize>,
    /// Final coefficient `c = sqrt(alpha)` multiplied into this path (e3nn §3.4).
    pub coefficient: f64,
    /// Offset into the flat weight vector; `None` when unweighted.
    pub weight_offset: Option<usize>,
    /// Wigner 3j nonzeros `(i, j, k, value)` for `(l1, l2, lo)` (coefficient NOT folded in).
    pub cg: Vec<(u32, u32, u32, f64)>,
}

/// A validated tensor product: the spec plus derived per-path data.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorProduct {
    pub spec: TpSpec,
    pub paths: Vec<Path>,
    pub weight_numel: usize,
    pub dim_in1: usize,
    pub dim_in2: usize,
    pub dim_out: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {why}")]
    Field { field: String, why: String },
    #[error("instruction {index} {instruction}: {why}")]
    Instruction {
        index: usize,
        instruction: String,
        why: String,
    },
    #[error("spec JSON: {0}")]
    Json(String),
}
