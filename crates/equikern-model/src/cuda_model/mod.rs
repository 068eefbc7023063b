//! SevenNet resident on a CUDA GPU: [`CudaSevenNet`] (feature `cuda`).
//!
//! One evaluation uploads the edge vectors (f64) and one `u32` table (species, both CSR
//! views of the graph), runs every layer on the device — edge geometry, embedding, the
//! interaction blocks (e3nn Linear products by cuBLAS — in f32 as 3xTF32 on tensor cores,
//! `EQUIKERN_MODEL_TF32X3_LINEAR=0` for plain FP32 — and Gate kernels, radial MLP hidden
//! layers fused in one kernel and its last product by cuBLAS, convolutions by
//! `equikern::ConvOp`), readout, the backward pass to `∂E/∂r_e`, edge forces, per-atom
//! forces and the virial — and downloads atomic energies, forces and the virial in one copy
//! at the end (the only synchronisation of the step). Kernels (`kernels.cu`) are compiled
//! once per (model, dtype) through equikern-cuda's NVRTC module cache; workspace buffers
//! only grow, so steps on structures no larger than an earlier one allocate nothing.
//!
//! * [`exec`] — the device operations the step is written against ([`exec::Memory`],
//!   [`exec::Exec`]); [`CudaExec`] implements them on CUDA, the CPU emulation test on the
//!   kernels compiled as C++.
//! * [`tables`] — the kernel source and the host-built tables (no GPU needed: the CPU
//!   emulation test compiles the same text as C++).

pub mod radial_conv;
pub mod tables;

#[cfg(feature = "cuda")]
mod buffers;
#[cfg(feature = "cuda")]
mod cuda_exec;
#[cfg(feature = "cuda")]
mod evaluator;
#[cfg(feature = "cuda")]
pub mod exec;
#[cfg(feature = "cuda")]
mod gemm;

#[cfg(feature = "cuda")]
pub use cuda_exec::CudaExec;
#[cfg(feature = "cuda")]
pub use evaluator::{
    CudaSevenNet, Resident, CONV_RADIAL_ENV, DEFAULT_KEEP_W_BYTES, DEFAULT_TF32X3_LINEAR_MIN,
    KEEP_H_ENV, KEEP_W_ENV, LANES_ENV, LANES_MAX_ROWS, LINEAR_PATHS_ENV, LINEAR_TC_ENV, MLP_ENV,
    MLP_SPLIT_ENV, MLP_TC_ENV, MLP_TC_FWD_ENV, PAIR_ROWS_ENV, PREFETCH_ENV, SIDE_MLP_BWD_ENV,
    TF32X3_BWD_ENV, TF32X3_LINEAR_ENV,
};
#[cfg(feature = "cuda")]
pub use gemm::DevReal;

/// Threads per block of every hand-written kernel (grid-stride loops).
#[cfg(feature = "cuda")]
pub(crate) const BLOCK: u32 = tables::BLOCK_THREADS;

/// A grid for `n` grid-stride iterations.
#[cfg(feature = "cuda")]
pub(crate) fn launch_cfg(n: u64) -> cudarc::driver::LaunchConfig {
    let blocks = n.div_ceil(BLOCK as u64).clamp(1, 1 << 20) as u32;
    cudarc::driver::LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}
