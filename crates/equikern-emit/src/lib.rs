//! Writers: print a [`equikern_plan::KernelPlan`] as WGSL (and, later, CUDA/HIP).
//! Every decision is already in the plan; writers only print it.

mod channel;
pub mod cuda;
mod cuda_conv;
pub mod params;
mod staged;
pub mod wgsl;
mod wgsl_conv;

pub use params::{ConvParams, ParamsLayout};
pub use wgsl::emit_wgsl;

use equikern_plan::Tensor;

/// Why a plan could not be printed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmitError {
    /// The target language cannot express the plan's element type.
    #[error("{backend} backend supports f32 only (plan dtype is {dtype})")]
    UnsupportedDtype {
        backend: &'static str,
        dtype: &'static str,
    },
    /// The plan is internally inconsistent (a bug in the lowering, or a hand-built plan).
    #[error("kernel {kernel}: invalid plan: {why}")]
    InvalidPlan { kernel: String, why: String },
}

/// One storage binding of an emitted kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorBinding {
    pub binding: u32,
    pub tensor: Tensor,
    /// `false` for the kernel's outputs.
    pub read_only: bool,
}

/// One kernel of a plan, printed.
#[derive(Clone, Debug, PartialEq)]
pub struct EmittedKernel {
    pub name: String,
    pub source: String,
    pub entry_point: String,
    pub workgroup_size: u32,
    /// Storage bindings: the kernel's inputs, then its outputs (binding numbers 0..n).
    pub bindings: Vec<TensorBinding>,
    /// The uniform of run-time parameters (binding number n).
    pub params: ParamsLayout,
}
