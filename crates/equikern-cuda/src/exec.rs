//! Launching a compiled plan over a batch: kernels in plan order, each row kernel split into
//! dispatches of at most `max_samples_per_dispatch` samples with its pointers rebased.

use crate::compile::Loaded;
use crate::device::CudaDevice;
use crate::{CudaError, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use equikern_emit::cuda::Param;
use equikern_plan::{KernelPlan, SampleMode, Tensor, Work};

/// Element base device pointers of the tensors a plan touches (`WPartial` included).
pub(crate) type Ptrs = Vec<(Tensor, u64)>;

/// Elements of `WPartial` a plan needs for `batch` samples (0 if it has no chunk kernel).
pub(crate) fn wpartial_len(plan: &KernelPlan, batch: u64) -> u64 {
    let mut len = 0;
    let mut chunks = 0;
    for k in &plan.kernels {
        match &k.work {
            Work::Rows {
                sample_mode: SampleMode::Chunk { samples_per_chunk },
                ..
            } => {
                chunks = batch.div_ceil(*samples_per_chunk as u64);
                len = len.max(chunks * plan.dims.weight_numel as u64);
            }
            Work::ReduceChunks { len: l, .. } => len = len.max(chunks * *l as u64),
            _ => {}
        }
    }
    len
}

fn ptr_of(ptrs: &Ptrs, t: Tensor) -> Result<u64> {
    ptrs.iter()
        .find(|(u, _)| *u == t)
        .map(|p| p.1)
        .ok_or_else(|| CudaError::Plan(format!("tensor {t:?} has no buffer")))
}

/// 2-D grid of the plan's numbering: `x = min(blocks, max)`, `y = ceil(blocks / x)`.
pub(crate) fn grid(dev: &CudaDevice, invocations: u64, block: u32) -> Result<(u32, u32)> {
    let blocks = invocations.div_ceil(block as u64);
    let lim = dev.inner.caps.max_workgroups_per_dim as u64;
    let x = blocks.min(lim).max(1);
    let y = blocks.div_ceil(x);
    if y > dev.inner.max_grid[1] as u64 || invocations > u32::MAX as u64 {
        return Err(CudaError::Plan(format!(
            "{invocations} invocations exceed the grid"
        )));
    }
    Ok((x as u32, y as u32))
}

/// Runs every kernel of `plan` over `batch` samples. `ptrs` are element-0 device pointers of
/// buffers the caller has checked to be large enough.
pub(crate) fn run(
    dev: &CudaDevice,
    plan: &KernelPlan,
    loaded: &Loaded,
    batch: u64,
    ptrs: &Ptrs,
) -> Result<()> {
    let es = match plan.dtype {
        equikern_plan::Dtype::F32 => 4u64,
        equikern_plan::Dtype::F64 => 8,
    };
    let step = plan.max_samples_per_dispatch as u64;
    if step == 0 && batch > 0 {
        return Err(CudaError::Plan("max_samples_per_dispatch is 0".into()));
    }
    let stream = dev.stream();
    let mut chunks_so_far = 0u64;
    for ((k, ek), func) in plan
        .kernels
        .iter()
        .zip(&loaded.emitted.kernels)
        .zip(&loaded.funcs)
    {
        // (first sample, samples, first chunk, invocations, last parameter) per launch.
        let mut launches: Vec<(u64, u64, u64, u64, u32)> = Vec::new();
        match &k.work {
            Work::Rows {
                sample_mode,
                rows_per_sample,
                ..
            } => {
                let spc = match sample_mode {
                    SampleMode::PerSample => 1,
                    SampleMode::Chunk { samples_per_chunk } => *samples_per_chunk as u64,
                    _ => return Err(CudaError::Plan("a convolution plan".into())),
                };
                if spc > 1 && (step / spc) * spc != step {
                    return Err(CudaError::Plan(
                        "dispatch size is not a multiple of the chunk size".into(),
                    ));
                }
                if spc > 1 {
                    chunks_so_far = batch.div_ceil(spc);
                }
                let mut s0 = 0;
                while s0 < batch {
                    let n = step.min(batch - s0);
                    let inv = n.div_ceil(spc) * *rows_per_sample as u64;
                    launches.push((s0, n, s0 / spc, inv, n as u32));
                    s0 += n;
                }
            }
            Work::ReduceChunks { len, .. } => {
                launches.push((0, 0, 0, *len as u64, chunks_so_far as u32));
            }
            Work::ReducePieces { .. } => {
                return Err(CudaError::Plan("a convolution plan".into()));
            }
        }
        for (s0, _n, c0, inv, last) in launches {
            if inv == 0 {
                continue;
            }
            let mut args: Vec<u64> = Vec::with_capacity(ek.params.len());
            for p in &ek.params {
                let t = match p {
                    Param::Input(t) | Param::Output(t) => *t,
                    Param::NumSamples | Param::NumChunks | Param::Conv => continue,
                };
                let base = ptr_of(ptrs, t)?;
                let off = match (t, &k.work) {
                    (Tensor::WPartial, Work::Rows { .. }) => c0 * plan.dims.weight_numel as u64,
                    (Tensor::WPartial, _) => 0,
                    _ => s0 * plan.dims.per_sample_len(t) as u64,
                };
                args.push(base + off * es);
            }
            let (gx, gy) = grid(dev, inv, ek.block_dim)?;
            let cfg = LaunchConfig {
                grid_dim: (gx, gy, 1),
                block_dim: (ek.block_dim, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = stream.launch_builder(func);
            for a in &args {
                b.arg(a);
            }
            b.arg(&last);
            // SAFETY: the parameter list matches the emitted signature (pointers in `params`
            // order, then one u32); buffers were length-checked by the caller.
            unsafe { b.launch(cfg) }?;
        }
    }
    Ok(())
}
