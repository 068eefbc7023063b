//! equikern: Clebsch–Gordan tensor products for O(3)-equivariant networks, e3nn-exact,
//! on wgpu (Vulkan/Metal/DX12/WebGPU), CUDA/HIP and the CPU.
//!
//! ```no_run
//! use equikern::{Backend, Device, TensorProductOp, TpSpec};
//! # fn main() -> Result<(), equikern::Error> {
//! let spec = TpSpec::from_json(r#"{"irreps_in1": "8x0e+8x1o", "irreps_in2": "0e+1o",
//!     "irreps_out": "8x0e+8x1o", "instructions": [[0,0,0,"uvu",true,1.0],[1,1,0,"uvu",true,1.0],
//!     [0,1,1,"uvu",true,1.0],[1,0,1,"uvu",true,1.0]], "shared_weights": false}"#)?;
//! let device = Device::new(Backend::Wgpu)?; // or Backend::Cpu (the f64 oracle)
//! let op = TensorProductOp::new(&spec, &device)?;
//! let batch = 4;
//! let x = vec![0.5; batch * op.dim_in1()];
//! let y = vec![0.25; batch * op.dim_in2()];
//! let w = vec![1.0; op.weight_len(batch).unwrap()];
//! let z = op.forward(batch, &x, &y, &w)?;
//! let g = op.backward(batch, &x, &y, &w, &z)?;
//! # let _ = g; Ok(()) }
//! ```
//!
//! Every call has an `_async` core (browsers must not block) and, on native targets, a
//! blocking wrapper. On a wgpu device, `*_buffers` calls take `wgpu::Buffer`s the caller holds
//! (created on [`Device::wgpu_runtime`]'s device), so layers chain without host copies; on a
//! CUDA device, `*_cuda` calls take [`CudaSlice`]s (f32 or f64), and `*_f64` host calls
//! compute in f64 (CUDA and the CPU oracle).

mod conv;
#[cfg(feature = "cuda")]
mod cuda_exec;
mod device;
mod error;
mod op;
#[cfg(feature = "wgpu")]
mod wgpu_exec;

pub use conv::{ConvGraph, ConvOp, AUTO_PIECES_RANGE, AUTO_PIECE_EDGES};
#[cfg(feature = "wgpu")]
pub use device::WgpuOptions;
pub use device::{Backend, Device};
pub use equikern_plan::ConvOptions;
pub use error::{Error, Result};
pub use op::TensorProductOp;

pub use equikern_core as core;
pub use equikern_core::oracle::{DoubleGrads, Grads};
pub use equikern_core::{irreps, oracle, so3, spec};
pub use equikern_core::{Irrep, Irreps, TensorProduct, TpSpec};
/// The CUDA runtime (devices, `CudaSlice` buffers, NVRTC module cache, event timing).
#[cfg(feature = "cuda")]
pub use equikern_cuda as cuda_runtime;
#[cfg(feature = "cuda")]
pub use equikern_cuda::CudaSlice;
pub use equikern_emit as emit;
pub use equikern_plan as plan;
#[cfg(feature = "wgpu")]
pub use equikern_wgpu as wgpu_runtime;
#[cfg(feature = "wgpu")]
pub use equikern_wgpu::wgpu;
