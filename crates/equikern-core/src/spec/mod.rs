//! Tensor-product spec: e3nn's `o3.TensorProduct` constructor arguments, validation,
//! normalisation coefficients and flattened weight layout.
//!
//! JSON format (read by the CLI, benches and conformance suite):
//! `{"irreps_in1": "...", "irreps_in2": "...", "irreps_out": "...",
//!   "instructions": [[0, 0, 0, "uvu", true, 1.0], ...], "shared_weights": false,
//!   "irrep_normalization": "component", "path_normalization": "element"}`
//!
//! * `path_weight` (6th instruction entry) is optional, default `1.0`.
//! * `shared_weights` (default `false`), `irrep_normalization` (default `"component"`) and
//!   `path_normalization` (default `"element"`) are optional.
//! * Optional `"label"` (string, ignored by [`TpSpec`]) and `"weight_numel"` (checked against
//!   the instructions when given). Any other field is an error.
//!
//! Semantics: `shared/notes/e3nn-conventions.md` §3 (e3nn ≥ 0.5).

mod build;
pub mod builders;
pub mod cost;
mod json;

pub use json::load_suite;

use crate::irreps::Irreps;
use std::fmt;

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

impl ConnectionMode {
    pub const ALL: [ConnectionMode; 8] = [
        ConnectionMode::Uvw,
        ConnectionMode::Uvu,
        ConnectionMode::Uvv,
        ConnectionMode::Uuw,
        ConnectionMode::Uuu,
        ConnectionMode::Uvuv,
        ConnectionMode::UvuLtV,
        ConnectionMode::ULtVw,
    ];

    /// e3nn's name (`"uvu<v"` etc.).
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionMode::Uvw => "uvw",
            ConnectionMode::Uvu => "uvu",
            ConnectionMode::Uvv => "uvv",
            ConnectionMode::Uuw => "uuw",
            ConnectionMode::Uuu => "uuu",
            ConnectionMode::Uvuv => "uvuv",
            ConnectionMode::UvuLtV => "uvu<v",
            ConnectionMode::ULtVw => "u<vw",
        }
    }

    pub fn parse(s: &str) -> Option<ConnectionMode> {
        ConnectionMode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether e3nn requires `has_weight = true` for this mode.
    pub fn requires_weight(self) -> bool {
        matches!(self, ConnectionMode::Uvw | ConnectionMode::ULtVw)
    }

    /// e3nn's `path_shape` for block multiplicities `(m1, m2, mo)` (§3.2); the pair count of
    /// the triangular modes is `m1·(m2−1)/2` (saturating).
    pub fn path_shape(self, m1: usize, m2: usize, mo: usize) -> Vec<usize> {
        let pairs = m1.saturating_mul(m2.saturating_sub(1)) / 2;
        match self {
            ConnectionMode::Uvw => vec![m1, m2, mo],
            ConnectionMode::Uvu | ConnectionMode::Uvv | ConnectionMode::Uvuv => vec![m1, m2],
            ConnectionMode::Uuw => vec![m1, mo],
            ConnectionMode::Uuu => vec![m1],
            ConnectionMode::UvuLtV => vec![pairs],
            ConnectionMode::ULtVw => vec![pairs, mo],
        }
    }

    /// Fan-in `N` of one output component (§3.2), used by path normalisation.
    pub fn fan_in(self, m1: usize, m2: usize) -> f64 {
        let (m1, m2) = (m1 as f64, m2 as f64);
        match self {
            ConnectionMode::Uvw => m1 * m2,
            ConnectionMode::Uvu => m2,
            ConnectionMode::Uvv => m1,
            ConnectionMode::Uuw => m1,
            ConnectionMode::Uuu | ConnectionMode::Uvuv | ConnectionMode::UvuLtV => 1.0,
            ConnectionMode::ULtVw => m1 * (m2 - 1.0) / 2.0,
        }
    }

    /// The multiplicity constraint of §3.2, as an error message when violated.
    pub fn check_multiplicities(
        self,
        m1: usize,
        m2: usize,
        mo: usize,
        has_weight: bool,
    ) -> Result<(), String> {
        let fail = |rule: &str| {
            Err(format!(
                "mode {:?} requires {rule} (got m1={m1}, m2={m2}, mo={mo})",
                self.as_str()
            ))
        };
        match self {
            ConnectionMode::Uvw => Ok(()),
            ConnectionMode::Uvu if mo != m1 => fail("mo == m1"),
            ConnectionMode::Uvv if mo != m2 => fail("mo == m2"),
            ConnectionMode::Uuw if m1 != m2 => fail("m1 == m2"),
            ConnectionMode::Uuw if !has_weight && mo != 1 => fail("mo == 1 when unweighted"),
            ConnectionMode::Uuu if m1 != m2 || m1 != mo => fail("m1 == m2 == mo"),
            ConnectionMode::Uvuv if Some(mo) != m1.checked_mul(m2) => fail("mo == m1*m2"),
            ConnectionMode::UvuLtV if m1 != m2 => fail("m1 == m2"),
            ConnectionMode::UvuLtV if mo != m1.saturating_mul(m1.saturating_sub(1)) / 2 => {
                fail("mo == m1*(m1-1)/2")
            }
            ConnectionMode::ULtVw if m1 != m2 => fail("m1 == m2"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ConnectionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Instruction {
    /// `(i_in1, i_in2, i_out, mode, has_weight)` with `path_weight = 1`.
    pub fn new(
        i_in1: usize,
        i_in2: usize,
        i_out: usize,
        mode: ConnectionMode,
        has_weight: bool,
    ) -> Self {
        Instruction {
            i_in1,
            i_in2,
            i_out,
            mode,
            has_weight,
            path_weight: 1.0,
        }
    }

    pub fn with_path_weight(mut self, path_weight: f64) -> Self {
        self.path_weight = path_weight;
        self
    }
}

/// The JSON array form, e.g. `[0, 0, 0, "uvu", true, 1.0]`.
impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {}, {}, \"{}\", {}, {:?}]",
            self.i_in1, self.i_in2, self.i_out, self.mode, self.has_weight, self.path_weight
        )
    }
}

impl IrrepNormalization {
    pub fn as_str(self) -> &'static str {
        match self {
            IrrepNormalization::Component => "component",
            IrrepNormalization::Norm => "norm",
            IrrepNormalization::None => "none",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Component, Self::Norm, Self::None]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl PathNormalization {
    pub fn as_str(self) -> &'static str {
        match self {
            PathNormalization::Element => "element",
            PathNormalization::Path => "path",
            PathNormalization::None => "none",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Element, Self::Path, Self::None]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl TpSpec {
    /// A spec with e3nn's default normalisations (component / element).
    pub fn new(
        irreps_in1: Irreps,
        irreps_in2: Irreps,
        irreps_out: Irreps,
        instructions: Vec<Instruction>,
        shared_weights: bool,
    ) -> Self {
        TpSpec {
            irreps_in1,
            irreps_in2,
            irreps_out,
            instructions,
            shared_weights,
            irrep_normalization: IrrepNormalization::default(),
            path_normalization: PathNormalization::default(),
        }
    }
}

impl TensorProduct {
    /// Expected length of `w` for `batch` samples: `weight_numel` when shared, else
    /// `batch · weight_numel` (`None` on overflow).
    pub fn weight_len(&self, batch: usize) -> Option<usize> {
        if self.spec.shared_weights {
            Some(self.weight_numel)
        } else {
            batch.checked_mul(self.weight_numel)
        }
    }

    /// Whether the weights are one vector for the whole batch.
    pub fn shared_weights(&self) -> bool {
        self.spec.shared_weights
    }
}
