//! Running convolution plans (`equikern_plan::lower_conv`): graph validation before any
//! kernel, whole-buffer bindings, dispatches over nodes / edges / pieces with the global
//! first unit in the params, index tables uploaded as `u32`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use equikern_core::conv::{Csr, GraphIndex};
use equikern_emit::params::{ConvParams, DispatchParams};
use equikern_plan::conv::{GraphSize, Units};
use equikern_plan::{conv_index_tensors, KernelPlan, SampleMode, Tensor, Work};
use wgpu::util::DeviceExt;

use crate::{CompiledPlan, Result, Runtime, TensorBuffer, WgpuError};

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

    /// [`Runtime::run_conv`] on an already validated graph (uploads, runs, reads back; for
    /// repeated runs keep a [`WgpuGraph`] and use [`Runtime::encode_conv`]).
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
        let graph = WgpuGraph::new(Arc::new(csr.clone()));
        let given: BTreeMap<Tensor, &[f32]> = inputs.iter().copied().collect();
        let mut bufs: Vec<(Tensor, wgpu::Buffer)> = vec![];
        for t in conv_inputs(plan) {
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
            bufs.push((t, self.upload(&format!("{t:?}"), data)));
        }
        let outs = conv_outputs(plan);
        for &t in &outs {
            let n = plan.conv_buffer_len(t, &gs);
            let b = self.create_storage(&format!("{t:?}"), n);
            if self.options.poison_outputs {
                let nan = vec![f32::NAN; n.max(1) as usize];
                self.queue.write_buffer(&b, 0, bytemuck::cast_slice(&nan));
            }
            bufs.push((t, b));
        }
        let tb: Vec<TensorBuffer> = bufs.iter().map(|(t, b)| TensorBuffer::new(*t, b)).collect();
        self.dispatch_conv(&compiled, &graph, &tb)?;
        let mut res = BTreeMap::new();
        for (t, b) in &bufs {
            if outs.contains(t) {
                let n = plan.conv_buffer_len(*t, &gs);
                res.insert(*t, self.read_f32(b, 0, n).await?);
            }
        }
        Ok(res)
    }

    /// Encodes and submits convolution `compiled` on `graph` with caller-held buffers
    /// (see [`Runtime::encode_conv`]). Returns once submitted.
    pub fn dispatch_conv(
        &self,
        compiled: &CompiledPlan,
        graph: &WgpuGraph,
        buffers: &[TensorBuffer<'_>],
    ) -> Result<wgpu::SubmissionIndex> {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("equikern conv"),
            });
        self.encode_conv(compiled, graph, buffers, &mut enc)?;
        Ok(self.queue.submit([enc.finish()]))
    }

    /// Encodes every kernel of convolution `compiled` on `graph` into `encoder`. `buffers`
    /// holds the plan's inputs ([`conv_inputs`]) and outputs ([`conv_outputs`]), each of at
    /// least `conv_buffer_len` f32 (checked before anything is encoded); the graph's index
    /// tables are uploaded on first use and kept in `graph`; scratch is created per call.
    pub fn encode_conv(
        &self,
        compiled: &CompiledPlan,
        graph: &WgpuGraph,
        buffers: &[TensorBuffer<'_>],
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<()> {
        let plan = compiled.plan();
        if plan.conv.is_none() {
            return Err(plan_err(equikern_plan::PlanError::NotConv));
        }
        let gs = graph.graph_size(plan)?;
        plan.check_graph(&gs).map_err(plan_err)?;
        let mut given: BTreeMap<Tensor, &wgpu::Buffer> = BTreeMap::new();
        for tb in buffers {
            if tb.offset != 0 {
                return Err(WgpuError::Binding {
                    tensor: format!("{:?}", tb.tensor),
                    why: "a convolution binds whole buffers: offset must be 0".into(),
                });
            }
            given.insert(tb.tensor, tb.buffer);
        }
        for t in conv_inputs(plan).into_iter().chain(conv_outputs(plan)) {
            let b = given.get(&t).ok_or_else(|| WgpuError::Binding {
                tensor: format!("{t:?}"),
                why: "no buffer given".into(),
            })?;
            let want = plan.conv_buffer_len(t, &gs).max(1) * 4;
            if b.size() < want {
                return Err(WgpuError::Binding {
                    tensor: format!("{t:?}"),
                    why: format!("buffer of {} bytes, expected at least {want}", b.size()),
                });
            }
        }
        let tables = graph.tables_for(self, plan)?;
        let mut scratch: BTreeMap<Tensor, wgpu::Buffer> = BTreeMap::new();
        for t in plan.kernels.iter().flat_map(|k| k.outputs.iter()) {
            if t.is_scratch() && !scratch.contains_key(t) {
                let n = plan.conv_buffer_len(*t, &gs);
                scratch.insert(*t, self.create_storage(&format!("{t:?}"), n));
            }
        }
        let buf_of = |t: Tensor| -> Result<&wgpu::Buffer> {
            tables
                .get(&t)
                .map(|b| &**b)
                .or_else(|| scratch.get(&t))
                .or_else(|| given.get(&t).copied())
                .ok_or_else(|| WgpuError::Binding {
                    tensor: format!("{t:?}"),
                    why: "no buffer".into(),
                })
        };
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
                // One invocation per (unit, channel): nodes or pieces of the sender view.
                Work::Staged(_) => {
                    return Err(WgpuError::Device(format!(
                        "kernel {}: a staged kernel in a convolution plan",
                        k.name
                    )))
                }
                Work::Channels(c) => {
                    for (s0, n) in plan.dispatches(plan.conv_unit_count(ck.index, &gs)) {
                        let p = DispatchParams {
                            num_samples: n as u32,
                            chunk_base: 0,
                            num_chunks: 0,
                        };
                        dispatches.push((p, s0 as u32, n * c.lanes() as u64));
                    }
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
                    weight_fold: gs.weight_fold as u32,
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
                let mut entries: Vec<wgpu::BindGroupEntry> = vec![];
                for b in &e.bindings {
                    entries.push(wgpu::BindGroupEntry {
                        binding: b.binding,
                        resource: buf_of(b.tensor)?.as_entire_binding(),
                    });
                }
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
        Ok(())
    }
}

/// Float tensors convolution `plan` reads and no kernel writes (what callers pass in).
pub fn conv_inputs(plan: &KernelPlan) -> Vec<Tensor> {
    let written: Vec<Tensor> = plan
        .kernels
        .iter()
        .flat_map(|k| k.outputs.iter().copied())
        .collect();
    let mut v: Vec<Tensor> = plan
        .kernels
        .iter()
        .flat_map(|k| k.inputs.iter().copied())
        .filter(|t| !t.is_index() && !written.contains(t))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Tensors convolution `plan` returns (everything it writes except scratch).
pub fn conv_outputs(plan: &KernelPlan) -> Vec<Tensor> {
    let mut v: Vec<Tensor> = plan
        .kernels
        .iter()
        .flat_map(|k| k.outputs.iter().copied())
        .filter(|t| !t.is_scratch())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// A validated graph for one wgpu device: the `u32` index tables a plan binds are uploaded
/// on first use and kept (a graph is bound to the runtime that first used it), or, for a
/// graph built on the device ([`WgpuGraph::from_device`]), given at construction.
pub struct WgpuGraph {
    csr: Option<Arc<Csr>>,
    nodes: u64,
    edges: u64,
    tables: Mutex<Tables>,
}

/// `(tensor, piece length or 0)` → uploaded `u32` table.
type Tables = BTreeMap<(Tensor, u32), Arc<wgpu::Buffer>>;

impl WgpuGraph {
    pub fn new(csr: Arc<Csr>) -> Self {
        WgpuGraph {
            nodes: csr.nodes as u64,
            edges: csr.edges() as u64,
            csr: Some(csr),
            tables: Mutex::new(BTreeMap::new()),
        }
    }

    /// A graph whose tables were built on the device ([`Runtime::build_csr_tables`]) from the
    /// `u32` `receiver`/`sender` buffers given here. Runs the CSR and atomic modes (pieces
    /// need a host-built graph).
    pub fn from_device(
        csr: crate::DeviceCsr,
        receiver: wgpu::Buffer,
        sender: wgpu::Buffer,
    ) -> Self {
        let t = BTreeMap::from([
            ((Tensor::RecvCsr, 0), Arc::new(csr.recv)),
            ((Tensor::SendCsr, 0), Arc::new(csr.send)),
            ((Tensor::Receiver, 0), Arc::new(receiver)),
            ((Tensor::Sender, 0), Arc::new(sender)),
        ]);
        WgpuGraph {
            csr: None,
            nodes: csr.nodes as u64,
            edges: csr.edges as u64,
            tables: Mutex::new(t),
        }
    }

    /// The host-side graph (validated indices and both views), if it was built on the host.
    pub fn csr(&self) -> Option<&Arc<Csr>> {
        self.csr.as_ref()
    }

    pub fn nodes(&self) -> u64 {
        self.nodes
    }

    pub fn edges(&self) -> u64 {
        self.edges
    }

    /// The graph's sizes for `plan` (piece counts need the host-built graph).
    pub fn graph_size(&self, plan: &KernelPlan) -> Result<GraphSize> {
        match &self.csr {
            Some(c) => Ok(plan.graph_size(c)),
            None if plan.conv.and_then(|c| c.max_piece_edges).is_some() => Err(WgpuError::Binding {
                tensor: "graph".into(),
                why: "a graph built on the device has no pieces: use the CSR mode (max_piece_edges None)".into(),
            }),
            None => Ok(GraphSize {
                nodes: self.nodes,
                edges: self.edges,
                recv_pieces: 0,
                send_pieces: 0,
                weight_fold: 0,
            }),
        }
    }

    /// Bytes of the index tables held so far.
    pub fn table_bytes(&self) -> u64 {
        self.lock().values().map(|b| b.size()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tables_for(
        &self,
        rt: &Runtime,
        plan: &KernelPlan,
    ) -> Result<BTreeMap<Tensor, Arc<wgpu::Buffer>>> {
        let m = plan.conv.and_then(|c| c.max_piece_edges).unwrap_or(0);
        let key = |t: Tensor| match t {
            Tensor::RecvPieces | Tensor::SendPieces => (t, m),
            _ => (t, 0),
        };
        let mut out = BTreeMap::new();
        let mut host: Option<BTreeMap<Tensor, Vec<u32>>> = None;
        for t in plan.kernels.iter().flat_map(|k| k.inputs.iter().copied()) {
            if !t.is_index() || out.contains_key(&t) {
                continue;
            }
            if let Some(b) = self.lock().get(&key(t)) {
                out.insert(t, b.clone());
                continue;
            }
            let csr = self.csr.as_ref().ok_or_else(|| WgpuError::Binding {
                tensor: format!("{t:?}"),
                why: "not among the tables of this device-built graph".into(),
            })?;
            let h = host.get_or_insert_with(|| conv_index_tensors(plan, csr));
            let pad = [0u32];
            let data: &[u32] = match h.get(&t) {
                Some(v) if !v.is_empty() => v,
                _ => &pad,
            };
            let b = Arc::new(
                rt.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(&format!("{t:?}")),
                        contents: bytemuck::cast_slice(data),
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                    }),
            );
            self.lock().insert(key(t), b.clone());
            out.insert(t, b);
        }
        Ok(out)
    }
}
