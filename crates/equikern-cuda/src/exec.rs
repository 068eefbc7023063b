//! Launching a compiled plan over a batch. [`schedule`] is the pure part (kernels in plan
//! order, each row kernel split into dispatches of at most `max_samples_per_dispatch`
//! samples with its pointers rebased); [`run`] issues it on the device.

use crate::compile::Loaded;
use crate::device::CudaDevice;
use crate::{CudaError, Result};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use equikern_emit::cuda::{EmittedCuda, Param};
use equikern_plan::{KernelPlan, SampleMode, Tensor, Work};

/// Element base device pointers of the tensors a plan touches (`WPartial` included).
pub(crate) type Ptrs = Vec<(Tensor, u64)>;

/// One kernel launch of a [`schedule`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Index into the plan's (and the emitted source's) kernels.
    pub kernel: usize,
    /// `(x, y)` blocks of the plan's 2-D grid numbering.
    pub grid: (u32, u32),
    pub block: u32,
    /// Pointer parameters in order: the tensor and the element offset to add to its base.
    pub args: Vec<(Tensor, u64)>,
    /// The trailing `unsigned int`: samples of this dispatch, or chunks for a reduction.
    pub last: u32,
}

/// Elements of `WPartial` a plan needs for `batch` samples (0 if it has no chunk kernel).
pub fn wpartial_len(plan: &KernelPlan, batch: u64) -> u64 {
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

/// 2-D grid of the plan's numbering: `x = min(blocks, max)`, `y = ceil(blocks / x)`.
pub(crate) fn grid(invocations: u64, block: u32, max_x: u32, max_y: u32) -> Result<(u32, u32)> {
    let blocks = invocations.div_ceil(block as u64);
    let x = blocks.min(max_x as u64).max(1);
    let y = blocks.div_ceil(x);
    if y > max_y as u64 || invocations > u32::MAX as u64 {
        return Err(CudaError::Plan(format!(
            "{invocations} invocations exceed the grid"
        )));
    }
    Ok((x as u32, y as u32))
}

/// Every launch that runs `plan` over `batch` samples, in order. `max_grid` bounds the grid:
/// `x` by the plan's `max_workgroups_per_dim`, `y` by the device.
pub fn schedule(
    plan: &KernelPlan,
    emitted: &EmittedCuda,
    batch: u64,
    max_grid: [u32; 2],
) -> Result<Vec<Launch>> {
    if emitted.kernels.len() != plan.kernels.len() {
        return Err(CudaError::Plan(
            "emitted kernels do not match the plan".into(),
        ));
    }
    let step = plan.max_samples_per_dispatch as u64;
    if step == 0 && batch > 0 {
        return Err(CudaError::Plan("max_samples_per_dispatch is 0".into()));
    }
    if plan.conv.is_some() {
        return Err(CudaError::Plan(
            "a convolution plan: run it with equikern_cuda::run_conv".into(),
        ));
    }
    let max_x = plan.caps.max_workgroups_per_dim.min(max_grid[0]).max(1);
    let mut out = Vec::new();
    let mut chunks_so_far = 0u64;
    for (i, (k, ek)) in plan.kernels.iter().zip(&emitted.kernels).enumerate() {
        // (first sample, first chunk, invocations, last parameter) per launch.
        let mut parts: Vec<(u64, u64, u64, u32)> = Vec::new();
        match &k.work {
            Work::Rows {
                sample_mode,
                rows_per_sample,
                ..
            } => {
                let spc = match sample_mode {
                    SampleMode::Chunk { samples_per_chunk } => *samples_per_chunk as u64,
                    _ => 1,
                };
                // Chunks must not straddle dispatches: WPartial rows are rebased per dispatch.
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
                    parts.push((s0, s0 / spc, inv, n as u32));
                    s0 += n;
                }
            }
            Work::Channels(_) | Work::Staged(_) => {
                let mut s0 = 0;
                while s0 < batch {
                    let n = step.min(batch - s0);
                    parts.push((s0, s0, k.invocations(n), n as u32));
                    s0 += n;
                }
            }
            Work::ReduceChunks { len, .. } => {
                parts.push((0, 0, *len as u64, chunks_so_far as u32));
            }
            Work::ReducePieces { .. } => {
                return Err(CudaError::Plan("a convolution plan".into()));
            }
        }
        for (s0, c0, inv, last) in parts {
            if inv == 0 {
                continue;
            }
            let args = ek
                .params
                .iter()
                .filter_map(|p| match p {
                    Param::Input(t) | Param::Output(t) => Some(*t),
                    Param::NumSamples | Param::NumChunks | Param::Conv => None,
                })
                .map(|t| {
                    let off = match (t, &k.work) {
                        (Tensor::WPartial, Work::Rows { .. }) => c0 * plan.dims.weight_numel as u64,
                        (Tensor::WPartial, _) => 0,
                        _ => s0 * plan.dims.per_sample_len(t) as u64,
                    };
                    (t, off)
                })
                .collect();
            out.push(Launch {
                kernel: i,
                grid: grid(inv, ek.block_dim, max_x, max_grid[1])?,
                block: ek.block_dim,
                args,
                last,
            });
        }
    }
    Ok(out)
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
    let stream = dev.stream();
    for l in schedule(plan, &loaded.emitted, batch, dev.inner.max_grid)? {
        let args: Vec<u64> = l
            .args
            .iter()
            .map(|(t, off)| {
                ptrs.iter()
                    .find(|(u, _)| u == t)
                    .map(|p| p.1 + off * es)
                    .ok_or_else(|| CudaError::Plan(format!("tensor {t:?} has no buffer")))
            })
            .collect::<Result<_>>()?;
        let cfg = LaunchConfig {
            grid_dim: (l.grid.0, l.grid.1, 1),
            block_dim: (l.block, 1, 1),
            shared_mem_bytes: 0,
        };
        let func = loaded
            .funcs
            .get(l.kernel)
            .ok_or_else(|| CudaError::Plan("kernel index".into()))?;
        let mut b = stream.launch_builder(func);
        for a in &args {
            b.arg(a);
        }
        b.arg(&l.last);
        // SAFETY: the parameter list matches the emitted signature (pointers in `params`
        // order, then one u32); buffers were length-checked by the caller.
        unsafe { b.launch(cfg) }?;
    }
    Ok(())
}
