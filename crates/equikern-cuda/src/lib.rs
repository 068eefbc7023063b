//! CUDA runtime for equikern kernel plans (the NVIDIA fast path).
//!
//! * [`CudaDevice`]: one GPU, its stream, its [`Capabilities`] and a module cache.
//! * [`CudaTensorProduct`]: forward / backward / double-backward plans of one tensor product in
//!   one dtype, compiled with NVRTC for the device's own arch on first use; host-slice and
//!   device-buffer ([`CudaSlice`]) entry points; batch splitting; deterministic shared-weight
//!   gradients through the plan's chunk + reduce kernels.
//!
//! Modules are cubins compiled by NVRTC for the device's `sm_XY`, cached per device in memory
//! and on disk in `$EQUIKERN_CACHE_DIR` (default `~/.cache/equikern/cuda/`), keyed by plan hash,
//! dtype, arch, emitter version and source hash. Measurements: `PERF.md` beside this crate.
//!
//! libcuda and libnvrtc are loaded at run time: on a machine without them every constructor
//! returns [`CudaError::NotAvailable`] (never a panic), so the workspace builds and tests
//! everywhere.

mod compile;
mod conv;
mod csr;
mod device;
pub mod exec;
mod timing;
mod tp;

pub use compile::{CacheLevel, CompileInfo};
pub use conv::{conv_launches, run_conv, run_conv_csr, ConvLaunch, CudaConvPlan, CudaGraph};
pub use csr::{CsrPool, CudaCsrTables, CSR_SOURCE};
/// The cudarc version this crate runs on (for callers that launch their own kernels).
pub use cudarc;
pub use cudarc::driver::CudaSlice;
pub use device::{availability, CudaDevice};
pub use timing::Timing;
pub use tp::CudaTensorProduct;

pub use equikern_emit::cuda::CudaOptions;
pub use equikern_plan::{Capabilities, Direction, Dtype};

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA not available: {0}")]
    NotAvailable(String),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("NVRTC compile failed for {arch}: {log}")]
    Compile { arch: String, log: String },
    #[error("plan: {0}")]
    Plan(String),
    #[error("emit: {0}")]
    Emit(#[from] equikern_emit::EmitError),
    #[error("argument {arg}: expected at least {expected} elements, got {actual}")]
    Length {
        arg: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("dtype mismatch: the tensor product was built for {plan:?}, data is {data:?}")]
    Dtype { plan: Dtype, data: Dtype },
    #[error("no {0:?} plan was provided")]
    MissingPlan(Direction),
    /// A convolution's graph was rejected before anything ran.
    #[error(transparent)]
    Conv(#[from] equikern_core::conv::ConvError),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}

pub type Result<T, E = CudaError> = std::result::Result<T, E>;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// Element types the kernels are emitted for.
pub trait Real:
    cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + Copy
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
    + sealed::Sealed
{
    const DTYPE: Dtype;
}

impl Real for f32 {
    const DTYPE: Dtype = Dtype::F32;
}

impl Real for f64 {
    const DTYPE: Dtype = Dtype::F64;
}

#[cfg(test)]
mod tests {
    /// The facade shares devices and tensor products across threads.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::CudaDevice>();
        check::<crate::CudaTensorProduct>();
        check::<crate::CudaError>();
    }

    /// Without libcuda (CI, this machine) construction is a clean error, never a panic.
    #[test]
    fn no_gpu_is_an_error_not_a_panic() {
        match crate::CudaDevice::new(0) {
            Ok(d) => println!("CUDA device present: {}", d.name()),
            Err(e) => {
                assert!(matches!(e, crate::CudaError::NotAvailable(_)), "{e}");
                assert!(e.to_string().starts_with("CUDA not available"));
            }
        }
    }
}
