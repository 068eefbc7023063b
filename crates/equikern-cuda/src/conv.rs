//! Running convolution plans on a CUDA device: graph validated before anything is uploaded,
//! index tables as `u32` buffers, outputs zero-filled (so `Scatter` kernels can add
//! atomically), launches over nodes / edges / pieces with the global first unit passed in.

use std::collections::BTreeMap;

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use equikern_core::conv::{Csr, GraphIndex};
use equikern_emit::cuda::{CudaOptions, Param};
use equikern_plan::conv::GraphSize;
use equikern_plan::{conv_index_tensors, KernelPlan, SampleMode, Tensor, Work};

use crate::device::CudaDevice;
use crate::{compile, exec, CudaError, Real, Result};

/// Runs convolution `plan` on a graph given as raw index arrays (`u32`, `i32`, `i64`…),
/// validated first (a bad index, negative index or length mismatch is
/// [`CudaError::Conv`], before any allocation). `inputs` holds the float tensors the plan
/// reads; returns every tensor it writes.
pub fn run_conv<T: Real, I: GraphIndex>(
    dev: &CudaDevice,
    plan: &KernelPlan,
    nodes: usize,
    receiver: &[I],
    sender: &[I],
    inputs: &BTreeMap<Tensor, Vec<T>>,
) -> Result<BTreeMap<Tensor, Vec<T>>> {
    let csr = Csr::build(nodes, receiver, sender)?;
    run_conv_csr(dev, plan, &csr, inputs)
}

/// [`run_conv`] on an already validated graph.
pub fn run_conv_csr<T: Real>(
    dev: &CudaDevice,
    plan: &KernelPlan,
    csr: &Csr,
    inputs: &BTreeMap<Tensor, Vec<T>>,
) -> Result<BTreeMap<Tensor, Vec<T>>> {
    if plan.conv.is_none() {
        return Err(CudaError::Plan("not a convolution plan".into()));
    }
    if T::DTYPE != plan.dtype {
        return Err(CudaError::Dtype {
            plan: plan.dtype,
            data: T::DTYPE,
        });
    }
    let gs = plan.graph_size(csr);
    plan.check_graph(&gs)
        .map_err(|e| CudaError::Plan(e.to_string()))?;
    let loaded = compile::load(dev, plan, CudaOptions::default())?;
    let stream = dev.stream().clone();
    let index = conv_index_tensors(plan, csr);
    let mut ibufs = BTreeMap::new();
    for (t, v) in &index {
        let mut d = stream.alloc_zeros::<u32>(v.len().max(1))?;
        if !v.is_empty() {
            stream.memcpy_htod(v, &mut d.slice_mut(0..v.len()))?;
        }
        ibufs.insert(*t, d);
    }
    let mut fbufs = BTreeMap::new();
    let mut outs = vec![];
    for k in &plan.kernels {
        for &t in &k.inputs {
            if t.is_index() || fbufs.contains_key(&t) {
                continue;
            }
            let want = plan.conv_buffer_len(t, &gs) as usize;
            let v = inputs
                .get(&t)
                .ok_or_else(|| CudaError::Plan(format!("missing input tensor {t:?}")))?;
            if v.len() != want {
                return Err(CudaError::Plan(format!(
                    "tensor {t:?}: expected {want} elements, got {}",
                    v.len()
                )));
            }
            fbufs.insert(t, dev.upload(v)?);
        }
        for &t in &k.outputs {
            let n = plan.conv_buffer_len(t, &gs) as usize;
            fbufs.insert(t, dev.zeros::<T>(n)?);
            if !t.is_scratch() && !outs.contains(&t) {
                outs.push(t);
            }
        }
    }
    let mut ptrs: BTreeMap<Tensor, u64> = BTreeMap::new();
    let mut iguards = vec![];
    for (t, b) in &ibufs {
        let (p, g) = b.device_ptr(&stream);
        ptrs.insert(*t, p);
        iguards.push(g);
    }
    let mut fguards = vec![];
    for (t, b) in fbufs.iter_mut() {
        let (p, g) = b.device_ptr_mut(&stream);
        ptrs.insert(*t, p);
        fguards.push(g);
    }
    for l in conv_launches(plan, &gs) {
        let (ek, func) = (&loaded.emitted.kernels[l.kernel], &loaded.funcs[l.kernel]);
        {
            let (inv, tail) = (l.invocations, l.tail);
            // Plan grid numbering; the device grid holds it (checked by `exec::grid`).
            let mut args: Vec<u64> = vec![];
            for p in &ek.params {
                if let Param::Input(t) | Param::Output(t) = p {
                    args.push(
                        *ptrs.get(t).ok_or_else(|| {
                            CudaError::Plan(format!("tensor {t:?} has no buffer"))
                        })?,
                    );
                }
            }
            let max_x = plan
                .caps
                .max_workgroups_per_dim
                .min(dev.inner.max_grid[0])
                .max(1);
            let (gx, gy) = exec::grid(inv, ek.block_dim, max_x, dev.inner.max_grid[1])?;
            let cfg = LaunchConfig {
                grid_dim: (gx, gy, 1),
                block_dim: (ek.block_dim, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = stream.launch_builder(func);
            for a in &args {
                b.arg(a);
            }
            for a in &tail {
                b.arg(a);
            }
            // SAFETY: pointers in the emitted parameter order, then the six u32 of
            // `Param::Conv`; every buffer holds `conv_buffer_len` elements (checked above).
            unsafe { b.launch(cfg) }?;
        }
    }
    drop(fguards);
    drop(iguards);
    let mut res = BTreeMap::new();
    for t in outs {
        let n = plan.conv_buffer_len(t, &gs) as usize;
        res.insert(t, dev.download(&fbufs[&t], n)?);
    }
    Ok(res)
}

/// One launch of a convolution plan's kernel: invocations and the six `Param::Conv` words
/// `[num_samples, num_chunks, unit_base, num_nodes, num_edges, num_pieces]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLaunch {
    pub kernel: usize,
    pub invocations: u64,
    pub tail: [u32; 6],
}

/// Every launch of `plan` for a graph of size `gs`, in order (empty launches dropped).
pub fn conv_launches(plan: &KernelPlan, gs: &GraphSize) -> Vec<ConvLaunch> {
    let num_chunks = plan.conv_num_chunks(gs.edges) as u32;
    let mut out = vec![];
    for (i, k) in plan.kernels.iter().enumerate() {
        let num_pieces = k
            .inputs
            .iter()
            .find_map(|t| match t {
                Tensor::RecvPieces => Some(gs.recv_pieces),
                Tensor::SendPieces => Some(gs.send_pieces),
                _ => None,
            })
            .unwrap_or(0) as u32;
        // (units, unit base, invocations) per launch
        let mut launches: Vec<(u64, u64, u64)> = vec![];
        match &k.work {
            // Never lowered into a convolution plan (its writer refuses one).
            Work::Channels(_) => {}
            Work::ReduceChunks { len, .. } => launches.push((0, 0, *len as u64)),
            Work::ReducePieces { len, .. } => {
                for (s0, n) in plan.dispatches(gs.nodes) {
                    launches.push((n, s0, n * *len as u64));
                }
            }
            Work::Rows {
                sample_mode,
                rows_per_sample,
                ..
            } => {
                let spc = match sample_mode {
                    SampleMode::Chunk { samples_per_chunk } => *samples_per_chunk as u64,
                    _ => 1,
                };
                for (s0, n) in plan.dispatches(plan.conv_unit_count(i, gs)) {
                    launches.push((n, s0, n.div_ceil(spc) * *rows_per_sample as u64));
                }
            }
        }
        for (n, s0, inv) in launches {
            if inv == 0 {
                continue;
            }
            out.push(ConvLaunch {
                kernel: i,
                invocations: inv,
                tail: [
                    n as u32,
                    num_chunks,
                    s0 as u32,
                    gs.nodes as u32,
                    gs.edges as u32,
                    num_pieces,
                ],
            });
        }
    }
    out
}
