//! Encoding a compiled plan over a batch: validation, batch splitting, bindings, grids.

use std::collections::BTreeMap;

use equikern_emit::params::DispatchParams;
use equikern_plan::{KernelPlan, SampleMode, Tensor, Work};
use wgpu::util::DeviceExt;

use crate::pipelines::{CompiledKernel, CompiledPlan};
use crate::{Result, Runtime, WgpuError};

/// A device buffer holding one logical tensor, starting at byte `offset` (a multiple of 4).
/// Layout: row-major `[batch, len]` for per-sample tensors, `[weight_numel]` for shared weights.
#[derive(Clone, Copy, Debug)]
pub struct TensorBuffer<'a> {
    pub tensor: Tensor,
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
}

impl<'a> TensorBuffer<'a> {
    pub fn new(tensor: Tensor, buffer: &'a wgpu::Buffer) -> Self {
        TensorBuffer {
            tensor,
            buffer,
            offset: 0,
        }
    }
}

/// Elements of `t` for `batch` samples (shared weights: one copy; scratch: not a user tensor).
pub fn tensor_elements(plan: &KernelPlan, t: Tensor, batch: u64) -> u64 {
    let d = plan.dims;
    let per = d.per_sample_len(t) as u64;
    match t {
        Tensor::WPartial | Tensor::Scratch => 0,
        _ if per > 0 => per * batch,
        Tensor::W | Tensor::GW | Tensor::HW | Tensor::DW => d.weight_numel as u64,
        _ => 0,
    }
}

/// Runtime-owned tensors (never the caller's).
fn is_scratch(t: Tensor) -> bool {
    matches!(t, Tensor::WPartial | Tensor::Scratch)
}

/// Tensors the caller must supply (read by some kernel before any kernel writes them).
pub fn plan_inputs(plan: &KernelPlan) -> Vec<Tensor> {
    let mut written = std::collections::BTreeSet::new();
    let mut v = Vec::new();
    for k in &plan.kernels {
        for t in &k.inputs {
            if !is_scratch(*t) && !written.contains(t) && !v.contains(t) {
                v.push(*t);
            }
        }
        written.extend(k.outputs.iter().copied());
    }
    v
}

/// Tensors the plan produces for the caller.
pub fn plan_outputs(plan: &KernelPlan) -> Vec<Tensor> {
    let mut v = Vec::new();
    for k in &plan.kernels {
        for t in &k.outputs {
            if !is_scratch(*t) && !v.contains(t) {
                v.push(*t);
            }
        }
    }
    v
}

/// One storage binding of one dispatch.
struct Bound {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
    base: u32,
}

impl Runtime {
    /// Encode and submit every kernel of `compiled` for `batch` samples on caller-held
    /// buffers. Returns once submitted (nothing waits on the GPU).
    pub fn dispatch(
        &self,
        compiled: &CompiledPlan,
        batch: u32,
        buffers: &[TensorBuffer<'_>],
    ) -> Result<wgpu::SubmissionIndex> {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("equikern"),
            });
        self.encode(compiled, batch, buffers, &mut enc)?;
        Ok(self.queue.submit([enc.finish()]))
    }

    /// Encode every kernel of `compiled` into `encoder` (for chaining layers in one
    /// submission). All lengths are checked before anything is encoded.
    pub fn encode(
        &self,
        compiled: &CompiledPlan,
        batch: u32,
        buffers: &[TensorBuffer<'_>],
        encoder: &mut wgpu::CommandEncoder,
    ) -> Result<()> {
        let plan = &compiled.plan;
        if plan.conv.is_some() {
            return Err(WgpuError::Device(
                "a convolution plan: run it with Runtime::run_conv".into(),
            ));
        }
        // Per-sample scratch of split gathers: the whole batch (kernels run one after another
        // over every dispatch), bound and rebased per dispatch like any per-sample tensor.
        let sample_scratch = match plan.dims.scratch {
            0 => None,
            len => {
                let bytes = batch as u64 * len as u64 * 4;
                if bytes > self.limits.max_buffer_size {
                    return Err(WgpuError::Batch {
                        batch: batch as u64,
                        why: format!(
                            "split gathers need {bytes} bytes of scratch, over the buffer limit {}",
                            self.limits.max_buffer_size
                        ),
                    });
                }
                Some(self.sample_scratch(bytes))
            }
        };
        let mut bufs = self.check_buffers(plan, batch, buffers)?;
        if let Some(b) = &sample_scratch {
            bufs.insert(Tensor::Scratch, TensorBuffer::new(Tensor::Scratch, b));
        }
        let align = self.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let ualign = self.limits.min_uniform_buffer_offset_alignment.max(16) as u64;

        // Split every kernel first: the scratch size depends on the chunk count.
        let mut splits = Vec::new();
        let mut max_chunks = 0u64;
        for k in &compiled.kernels {
            let s = self.split(plan, k, batch)?;
            if let Work::Rows {
                sample_mode: SampleMode::Chunk { samples_per_chunk },
                ..
            } = &k.emitted_kernel(plan).work
            {
                let chunks: u64 = s
                    .iter()
                    .map(|(_, n)| n.div_ceil(*samples_per_chunk) as u64)
                    .sum();
                max_chunks = max_chunks.max(chunks);
            }
            splits.push(s);
        }
        let wn = plan.dims.weight_numel as u64;
        let scratch_bytes = (max_chunks * wn).max(1) * 4;
        if scratch_bytes > self.caps.max_storage_binding_bytes {
            return Err(WgpuError::Batch {
                batch: batch as u64,
                why: format!(
                    "shared-weight reduction needs {scratch_bytes} bytes of scratch, over the binding limit {}",
                    self.caps.max_storage_binding_bytes
                ),
            });
        }
        let scratch = self.scratch(scratch_bytes);

        let mut chunks_written: Option<u32> = None;
        for (k, split) in compiled.kernels.iter().zip(&splits) {
            let kplan = k.emitted_kernel(plan);
            let e = &k.emitted;
            // Per dispatch: params, bindings, grid.
            let mut dispatches: Vec<(Vec<u32>, Vec<Bound>, u64)> = Vec::new();
            match &kplan.work {
                Work::Channels(_) | Work::Staged(_) => {
                    for &(s0, n) in split {
                        let p = DispatchParams {
                            num_samples: n,
                            chunk_base: 0,
                            num_chunks: 0,
                        };
                        let mut bound = Vec::new();
                        for b in &e.bindings {
                            bound.push(self.bind(plan, &bufs, &scratch, b.tensor, s0, n, align)?);
                        }
                        let bases: Vec<u32> = bound.iter().map(|b| b.base).collect();
                        let inv = kplan.invocations(n as u64);
                        dispatches.push((e.params.encode(p, &bases), bound, inv));
                    }
                }
                Work::Rows {
                    sample_mode,
                    rows_per_sample,
                    ..
                } => {
                    let mut chunk_base = 0u32;
                    for &(s0, n) in split {
                        let (groups, p) = match sample_mode {
                            SampleMode::Segments { .. }
                            | SampleMode::Pieces { .. }
                            | SampleMode::Scatter { .. } => {
                                return Err(WgpuError::Device(format!(
                                    "kernel {}: a convolution kernel (use run_conv)",
                                    e.name
                                )))
                            }
                            SampleMode::PerSample => (
                                n,
                                DispatchParams {
                                    num_samples: n,
                                    chunk_base: 0,
                                    num_chunks: 0,
                                },
                            ),
                            SampleMode::Chunk { samples_per_chunk } => {
                                let c = n.div_ceil(*samples_per_chunk);
                                let p = DispatchParams {
                                    num_samples: n,
                                    chunk_base,
                                    num_chunks: c,
                                };
                                chunk_base += c;
                                (c, p)
                            }
                        };
                        let mut bound = Vec::new();
                        for b in &e.bindings {
                            bound.push(self.bind(plan, &bufs, &scratch, b.tensor, s0, n, align)?);
                        }
                        let bases: Vec<u32> = bound.iter().map(|b| b.base).collect();
                        let inv = groups as u64 * *rows_per_sample as u64;
                        dispatches.push((e.params.encode(p, &bases), bound, inv));
                    }
                    if let SampleMode::Chunk { .. } = sample_mode {
                        chunks_written = Some(chunk_base);
                    }
                }
                Work::ReducePieces { .. } => {
                    return Err(WgpuError::Device(format!(
                        "kernel {}: a convolution kernel (use run_conv)",
                        e.name
                    )))
                }
                Work::ReduceChunks { len, .. } => {
                    let Some(total) = chunks_written else {
                        return Err(WgpuError::Device(format!(
                            "kernel {}: ReduceChunks before any Chunk kernel",
                            e.name
                        )));
                    };
                    let p = DispatchParams {
                        num_samples: batch,
                        chunk_base: 0,
                        num_chunks: total,
                    };
                    let mut bound = Vec::new();
                    for b in &e.bindings {
                        bound.push(self.bind(plan, &bufs, &scratch, b.tensor, 0, batch, align)?);
                    }
                    let bases: Vec<u32> = bound.iter().map(|b| b.base).collect();
                    dispatches.push((e.params.encode(p, &bases), bound, *len as u64));
                }
            }
            if dispatches.is_empty() {
                continue;
            }
            // One uniform buffer holds every dispatch's params at aligned strides.
            let stride = e.params.bytes().div_ceil(ualign) * ualign;
            let mut words = vec![0u32; (stride / 4) as usize * dispatches.len()];
            for (i, (p, _, _)) in dispatches.iter().enumerate() {
                let at = i * (stride / 4) as usize;
                words[at..at + p.len()].copy_from_slice(p);
            }
            let params = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("equikern params"),
                    contents: bytemuck::cast_slice(&words),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let mut groups = Vec::new();
            for (i, (_, bound, inv)) in dispatches.iter().enumerate() {
                let mut entries: Vec<wgpu::BindGroupEntry> = bound
                    .iter()
                    .zip(&e.bindings)
                    .map(|(b, eb)| wgpu::BindGroupEntry {
                        binding: eb.binding,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &b.buffer,
                            offset: b.offset,
                            size: wgpu::BufferSize::new(b.size),
                        }),
                    })
                    .collect();
                entries.push(wgpu::BindGroupEntry {
                    binding: e.params.binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
                        offset: i as u64 * stride,
                        size: wgpu::BufferSize::new(e.params.bytes()),
                    }),
                });
                let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&e.name),
                    layout: &k.layout,
                    entries: &entries,
                });
                groups.push((bg, self.grid(*inv, e.workgroup_size)?));
            }
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&e.name),
                timestamp_writes: None,
            });
            pass.set_pipeline(&k.pipeline);
            for (bg, (x, y)) in &groups {
                if *x == 0 {
                    continue;
                }
                pass.set_bind_group(0, bg, &[]);
                pass.dispatch_workgroups(*x, *y, 1);
            }
        }
        Ok(())
    }

    /// Validate the caller's buffers against the plan and batch; map tensor -> buffer.
    fn check_buffers<'b>(
        &self,
        plan: &KernelPlan,
        batch: u32,
        buffers: &[TensorBuffer<'b>],
    ) -> Result<BTreeMap<Tensor, TensorBuffer<'b>>> {
        let mut m = BTreeMap::new();
        for b in buffers {
            if m.insert(b.tensor, *b).is_some() {
                return Err(WgpuError::Binding {
                    tensor: format!("{:?}", b.tensor),
                    why: "given twice".into(),
                });
            }
        }
        let mut needed: Vec<Tensor> = plan_inputs(plan);
        needed.extend(plan_outputs(plan));
        for t in &needed {
            let name = format!("{t:?}");
            let Some(b) = m.get(t) else {
                return Err(WgpuError::Binding {
                    tensor: name,
                    why: "missing: the plan reads or writes it".into(),
                });
            };
            let elems = tensor_elements(plan, *t, batch as u64).max(1);
            let need = b.offset + elems * 4;
            if !b.offset.is_multiple_of(4) {
                return Err(WgpuError::Binding {
                    tensor: name,
                    why: format!("offset {} is not a multiple of 4", b.offset),
                });
            }
            if need > b.buffer.size() {
                return Err(WgpuError::Binding {
                    tensor: name,
                    why: format!(
                        "buffer of {} bytes is too small: expected at least {need} bytes ({elems} f32 from offset {})",
                        b.buffer.size(),
                        b.offset
                    ),
                });
            }
            if !b.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
                return Err(WgpuError::Binding {
                    tensor: name,
                    why: "buffer lacks BufferUsages::STORAGE".into(),
                });
            }
        }
        // An output may not share a buffer with anything else bound (read/write hazard).
        for t in plan_outputs(plan) {
            let ob = m[&t].buffer;
            for (u, b) in &m {
                if *u != t && needed.contains(u) && b.buffer == ob {
                    return Err(WgpuError::Binding {
                        tensor: format!("{t:?}"),
                        why: format!("output buffer is also bound as {u:?}"),
                    });
                }
            }
        }
        Ok(m)
    }

    /// Samples per dispatch for kernel `k`: `[(first_sample, samples)]` covering the batch.
    fn split(&self, plan: &KernelPlan, k: &CompiledKernel, batch: u32) -> Result<Vec<(u32, u32)>> {
        let kp = k.emitted_kernel(plan);
        let (rows, spc) = match &kp.work {
            Work::Rows {
                rows_per_sample,
                sample_mode,
                ..
            } => (
                *rows_per_sample as u64,
                match sample_mode {
                    SampleMode::Chunk { samples_per_chunk } => *samples_per_chunk as u64,
                    _ => 1,
                },
            ),
            Work::Channels(c) => (c.lanes() as u64, 1),
            Work::Staged(_) => (kp.workgroup_size as u64, 1),
            Work::ReduceChunks { .. } | Work::ReducePieces { .. } => return Ok(vec![(0, batch)]),
        };
        let align = self.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let mut nmax = plan.max_samples_per_dispatch.max(1) as u64;
        if let Some(o) = self.options.max_samples_per_dispatch {
            nmax = nmax.min(o.max(1) as u64);
        }
        let bind = self.caps.max_storage_binding_bytes;
        for t in kp.inputs.iter().chain(&kp.outputs) {
            let per = plan.dims.per_sample_len(*t) as u64 * 4;
            if per > 0 {
                if bind < per + align {
                    return Err(WgpuError::Batch {
                        batch: batch as u64,
                        why: format!(
                            "one sample of {t:?} ({per} bytes) does not fit the binding limit {bind}"
                        ),
                    });
                }
                nmax = nmax.min((bind - align) / per);
            }
        }
        // Grid: x and y each within the per-dimension limit; g must stay below 2^32.
        let wg = k.emitted.workgroup_size as u64;
        let dim = self.caps.max_workgroups_per_dim.max(1) as u64;
        let max_inv = (dim * dim * wg).min(1 << 31);
        let per_group = rows.max(1);
        // Chunk kernels: grid counts chunks, so a dispatch of n samples has n/spc groups.
        nmax = nmax.min((max_inv / per_group).saturating_mul(spc));
        if spc > 1 && nmax >= spc {
            nmax = nmax / spc * spc;
        }
        if nmax == 0 {
            return Err(WgpuError::Batch {
                batch: batch as u64,
                why: format!("kernel {} cannot fit one sample in a dispatch", kp.name),
            });
        }
        let nmax = nmax.min(u32::MAX as u64) as u32;
        let mut v = Vec::new();
        let mut s0 = 0u32;
        while s0 < batch {
            let n = nmax.min(batch - s0);
            v.push((s0, n));
            s0 += n;
        }
        Ok(v)
    }

    /// Binding of `t` for the dispatch covering samples `s0 .. s0 + n`.
    #[allow(clippy::too_many_arguments)]
    fn bind(
        &self,
        plan: &KernelPlan,
        bufs: &BTreeMap<Tensor, TensorBuffer<'_>>,
        scratch: &wgpu::Buffer,
        t: Tensor,
        s0: u32,
        n: u32,
        align: u64,
    ) -> Result<Bound> {
        if t == Tensor::WPartial {
            return Ok(Bound {
                buffer: scratch.clone(),
                offset: 0,
                size: scratch.size(),
                base: 0,
            });
        }
        let tb = bufs.get(&t).ok_or_else(|| WgpuError::Binding {
            tensor: format!("{t:?}"),
            why: "missing".into(),
        })?;
        let per = plan.dims.per_sample_len(t) as u64;
        let (start, elems) = if per > 0 {
            (tb.offset + s0 as u64 * per * 4, (n as u64 * per).max(1))
        } else {
            (tb.offset, tensor_elements(plan, t, 0).max(1))
        };
        let offset = start / align * align;
        let base = (start - offset) / 4;
        let size = (base + elems) * 4;
        if size
            > self
                .caps
                .max_storage_binding_bytes
                .min(self.limits.max_storage_buffer_binding_size)
        {
            return Err(WgpuError::Binding {
                tensor: format!("{t:?}"),
                why: format!("{size} bytes exceed the storage binding limit"),
            });
        }
        Ok(Bound {
            buffer: tb.buffer.clone(),
            offset,
            size,
            base: base as u32,
        })
    }

    /// 2-D grid for `inv` invocations.
    fn grid(&self, inv: u64, wg: u32) -> Result<(u32, u32)> {
        let groups = inv.div_ceil(wg as u64);
        let dim = self.caps.max_workgroups_per_dim.max(1) as u64;
        let x = groups.min(dim);
        let y = if x == 0 { 0 } else { groups.div_ceil(x) };
        if y > dim {
            return Err(WgpuError::Device(format!(
                "grid of {groups} workgroups exceeds {dim} x {dim}"
            )));
        }
        Ok((x as u32, y as u32))
    }

    /// The runtime-owned per-sample scratch of split gathers, grown as needed.
    fn sample_scratch(&self, bytes: u64) -> wgpu::Buffer {
        let mut g = self
            .sample_scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(b) = g.as_ref() {
            if b.size() >= bytes {
                return b.clone();
            }
        }
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equikern sample scratch"),
            size: bytes.max(256),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        *g = Some(b.clone());
        b
    }

    /// The runtime-owned shared-weight scratch, grown as needed.
    fn scratch(&self, bytes: u64) -> wgpu::Buffer {
        let mut g = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = g.as_ref() {
            if b.size() >= bytes {
                return b.clone();
            }
        }
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equikern scratch"),
            size: bytes.max(256),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        *g = Some(b.clone());
        b
    }
}

impl CompiledKernel {
    /// The plan kernel this pipeline was made from.
    pub(crate) fn emitted_kernel<'p>(&self, plan: &'p KernelPlan) -> &'p equikern_plan::Kernel {
        &plan.kernels[self.index]
    }
}
