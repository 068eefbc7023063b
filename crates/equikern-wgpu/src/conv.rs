//! Running convolution plans (`equikern_plan::lower_conv`): graph validation before any
//! kernel, whole-buffer bindings, dispatches over nodes / edges / pieces with the global
//! first unit in the params, index tables uploaded as `u32`.

use std::collections::BTreeMap;

use equikern_core::conv::{Csr, GraphIndex};
use equikern_emit::params::{ConvParams, DispatchParams};
use equikern_plan::conv::Units;
use equikern_plan::{conv_index_tensors, KernelPlan, SampleMode, Tensor, Work};
use wgpu::util::DeviceExt;

use crate::{Result, Runtime, WgpuError};

fn plan_err(e: equikern_plan::PlanError) -> WgpuError {
    WgpuError::Binding {
        tensor: "graph".into(),
        why: e.to_string(),
    }
}

impl Runtime {
    /// Run convolution `plan` on a graph given as raw index arrays (`u32`, `i32`, `i64`…):
    /// they are validated (bad index, negative, length mismatch → [`WgpuError::Conv`]) before
    /// anything is uploaded. `inputs` gives the float tensors the plan reads (x, y, w…).
    pub async fn run_conv<I: GraphIndex>(
        &self,
        plan: &KernelPlan,
        nodes: usize,
        receiver: &[I],
        sender: &[I],
        inputs: &[(Tensor, &[f32])],
    ) -> Result<BTreeMap<Tensor, Vec<f32>>> {
        let csr = Csr::build(nodes, receiver, sender)?;
        self.run_conv_csr(plan, &csr, inputs).await
    }

    /// Blocking [`Runtime::run_conv`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_conv_blocking<I: GraphIndex>(
        &self,
        plan: &KernelPlan,
        nodes: usize,
        receiver: &[I],
        sender: &[I],
        inputs: &[(Tensor, &[f32])],
    ) -> Result<BTreeMap<Tensor, Vec<f32>>> {
        pollster::block_on(self.run_conv(plan, nodes, receiver, sender, inputs))
    }

    /// [`Runtime::run_conv`] on an already validated graph.
    pub async fn run_conv_csr(
        &self,
        plan: &KernelPlan,
        csr: &Csr,
        inputs: &[(Tensor, &[f32])],
    ) -> Result<BTreeMap<Tensor, Vec<f32>>> {
        if plan.conv.is_none() {
            return Err(plan_err(equikern_plan::PlanError::NotConv));
        }
        let gs = plan.graph_size(csr);
        plan.check_graph(&gs).map_err(plan_err)?;
        let compiled = self.prepare(plan).await?;
        let given: BTreeMap<Tensor, &[f32]> = inputs.iter().copied().collect();
        let index = conv_index_tensors(plan, csr);
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let mut bufs: BTreeMap<Tensor, wgpu::Buffer> = BTreeMap::new();
        let mut outs: Vec<Tensor> = vec![];
        for k in &plan.kernels {
            for &t in &k.inputs {
                if bufs.contains_key(&t) {
                    continue;
                }
                let buf = if let Some(v) = index.get(&t) {
                    let pad = [0u32];
                    let data: &[u32] = if v.is_empty() { &pad } else { v };
                    self.device
                        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some(&format!("{t:?}")),
                            contents: bytemuck::cast_slice(data),
                            usage,
                        })
                } else {
                    let want = plan.conv_buffer_len(t, &gs);
                    let data = given.get(&t).ok_or_else(|| WgpuError::Binding {
                        tensor: format!("{t:?}"),
                        why: "missing input".into(),
                    })?;
                    if data.len() as u64 != want {
                        return Err(WgpuError::Binding {
                            tensor: format!("{t:?}"),
                            why: format!("expected {want} elements, got {}", data.len()),
                        });
                    }
                    self.upload(&format!("{t:?}"), data)
                };
                bufs.insert(t, buf);
            }
            for &t in &k.outputs {
                let n = plan.conv_buffer_len(t, &gs);
                let b = self.create_storage(&format!("{t:?}"), n);
                if self.options.poison_outputs {
                    let nan = vec![f32::NAN; n.max(1) as usize];
                    self.queue.write_buffer(&b, 0, bytemuck::cast_slice(&nan));
                }
                bufs.insert(t, b);
                if !t.is_scratch() && !outs.contains(&t) {
                    outs.push(t);
                }
            }
        }
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("equikern conv"),
            });
        let num_chunks = plan.conv_num_chunks(gs.edges);
        let maxg = self.caps.max_workgroups_per_dim;
        for ck in &compiled.kernels {
            let k = &plan.kernels[ck.index];
            let e = &ck.emitted;
            let pieces = |t: &Tensor| match t {
                Tensor::RecvPieces => Some(gs.recv_pieces),
                Tensor::SendPieces => Some(gs.send_pieces),
                _ => None,
            };
            let num_pieces = k.inputs.iter().find_map(pieces).unwrap_or(0) as u32;
            // (params, invocations) per dispatch
            let mut dispatches: Vec<(DispatchParams, u32, u64)> = vec![];
            match &k.work {
                Work::Channels(_) => {
                    return Err(WgpuError::Device(format!(
                        "kernel {}: a channel kernel in a convolution plan",
                        k.name
                    )))
                }
                Work::ReduceChunks { len, .. } => {
                    let p = DispatchParams {
                        num_samples: 0,
                        chunk_base: 0,
                        num_chunks: num_chunks as u32,
                    };
                    dispatches.push((p, 0, *len as u64));
                }
                Work::ReducePieces { len, .. } => {
                    for (s0, n) in plan.dispatches(gs.nodes) {
                        let p = DispatchParams {
                            num_samples: n as u32,
                            chunk_base: 0,
                            num_chunks: 0,
                        };
                        dispatches.push((p, s0 as u32, n * *len as u64));
                    }
                }
                Work::Rows {
                    sample_mode,
                    rows_per_sample,
                    ..
                } => {
                    let units = plan.conv_unit_count(ck.index, &gs);
                    debug_assert!(plan.conv_units(ck.index) != Units::Fixed);
                    let spc = match sample_mode {
                        SampleMode::Chunk { samples_per_chunk } => *samples_per_chunk as u64,
                        _ => 1,
                    };
                    for (s0, n) in plan.dispatches(units) {
                        let c = n.div_ceil(spc);
                        let p = DispatchParams {
                            num_samples: n as u32,
                            chunk_base: (s0 / spc) as u32,
                            num_chunks: c as u32,
                        };
                        dispatches.push((p, s0 as u32, c * *rows_per_sample as u64));
                    }
                }
            }
            for (p, unit_base, inv) in dispatches {
                if inv == 0 {
                    continue;
                }
                let c = ConvParams {
                    unit_base,
                    num_nodes: gs.nodes as u32,
                    num_edges: gs.edges as u32,
                    num_pieces,
                };
                let bases = vec![0u32; e.bindings.len()];
                let words = e.params.encode_conv(p, c, &bases);
                let ubuf = self
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("equikern conv params"),
                        contents: bytemuck::cast_slice(&words),
                        usage: wgpu::BufferUsages::UNIFORM,
                    });
                let mut entries: Vec<wgpu::BindGroupEntry> = e
                    .bindings
                    .iter()
                    .map(|b| wgpu::BindGroupEntry {
                        binding: b.binding,
                        resource: bufs[&b.tensor].as_entire_binding(),
                    })
                    .collect();
                entries.push(wgpu::BindGroupEntry {
                    binding: e.params.binding,
                    resource: ubuf.as_entire_binding(),
                });
                let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(&e.name),
                    layout: &ck.layout,
                    entries: &entries,
                });
                let [gx, gy] = k.grid(inv, maxg);
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(&e.name),
                    timestamp_writes: None,
                });
                pass.set_pipeline(&ck.pipeline);
                pass.set_bind_group(0, &bg, &[]);
                pass.dispatch_workgroups(gx, gy, 1);
            }
        }
        self.queue.submit([enc.finish()]);
        let mut res = BTreeMap::new();
        for t in outs {
            let n = plan.conv_buffer_len(t, &gs);
            res.insert(t, self.read_f32(&bufs[&t], 0, n).await?);
        }
        Ok(res)
    }
}
