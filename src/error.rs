//! The one error type of the public API.

use equikern_core::oracle::OracleError;
use equikern_core::SpecError;
use equikern_emit::EmitError;
use equikern_plan::PlanError;

/// Everything that can go wrong building or running a tensor product. Messages name the
/// offending argument or field, with expected and actual values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec (irreps, instructions, normalisations) is invalid.
    #[error("spec: {0}")]
    Spec(#[from] SpecError),
    /// A host argument has the wrong length.
    #[error("argument {arg}: expected length {expected} ({why}), got {actual}")]
    Length {
        arg: &'static str,
        expected: usize,
        actual: usize,
        why: String,
    },
    /// A batch outside what the backend can run.
    #[error("argument batch: {0}")]
    Batch(String),
    /// The requested backend is not compiled in or not present on this machine.
    #[error("backend {backend} unavailable: {why}")]
    Unavailable { backend: &'static str, why: String },
    /// An operation the chosen backend does not offer (e.g. device buffers on the CPU).
    #[error("{0}")]
    Unsupported(String),
    /// A convolution's graph or arguments were rejected (bad index, negative index, length
    /// mismatch) before anything ran.
    #[error("graph: {0}")]
    Graph(#[from] equikern_core::conv::ConvError),
    #[error("plan: {0}")]
    Plan(#[from] PlanError),
    #[error("shader writer: {0}")]
    Emit(#[from] EmitError),
    #[error("cpu oracle: {0}")]
    Oracle(#[from] OracleError),
    #[cfg(feature = "wgpu")]
    #[error("wgpu: {0}")]
    Wgpu(#[from] equikern_wgpu::WgpuError),
    #[cfg(feature = "cuda")]
    #[error("cuda: {0}")]
    Cuda(#[from] equikern_cuda::CudaError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
