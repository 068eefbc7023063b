//! equikern: Clebsch–Gordan tensor products for O(3)-equivariant networks, e3nn-exact,
//! on wgpu (Vulkan/Metal/DX12/WebGPU), CUDA/HIP and the CPU.

pub use equikern_core as core;
pub use equikern_core::{irreps, oracle, so3, spec};
pub use equikern_core::{Irrep, Irreps, TensorProduct, TpSpec};
pub use equikern_emit as emit;
pub use equikern_plan as plan;
#[cfg(feature = "wgpu")]
pub use equikern_wgpu as wgpu_runtime;
