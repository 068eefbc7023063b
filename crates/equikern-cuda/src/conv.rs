//! Running convolution plans on a CUDA device: graph validated before anything is uploaded,
//! index tables as `u32` buffers, outputs zero-filled (so `Scatter` kernels can add
//! atomically), launches over nodes / edges / pieces with the global first unit passed in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use equikern_core::conv::{Csr, GraphIndex};
use equikern_emit::cuda::{CudaOptions, Param};
use equikern_plan::conv::GraphSize;
use equikern_plan::{conv_index_tensors, KernelPlan, SampleMode, Tensor, Work};

use crate::compile::{CompileInfo, Loaded};
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

/// [`run_conv`] on an already validated graph (uploads, runs, downloads; for repeated runs
/// keep a [`CudaConvPlan`] and a [`CudaGraph`] and call [`CudaConvPlan::run_device`]).
pub fn run_conv_csr<T: Real>(
    dev: &CudaDevice,
    plan: &KernelPlan,
    csr: &Csr,
    inputs: &BTreeMap<Tensor, Vec<T>>,
) -> Result<BTreeMap<Tensor, Vec<T>>> {
    let cp = CudaConvPlan::new(dev, plan.clone())?;
    let graph = CudaGraph::new(dev, Arc::new(csr.clone()));
    cp.run_host(&graph, inputs)
}

/// A validated graph bound to one CUDA device: the index tables a plan binds (CSR views,
/// plain index arrays, pieces) are uploaded on first use and kept, or, for a graph built on
/// the device ([`CudaGraph::from_device`]), given at construction.
pub struct CudaGraph {
    dev: CudaDevice,
    csr: Option<Arc<Csr>>,
    nodes: u64,
    edges: u64,
    /// See `GraphSize::weight_fold` (0: a weight row per edge).
    weight_fold: u64,
    tables: Mutex<Tables>,
}

/// `(tensor, piece length or 0)` → uploaded `u32` table.
type Tables = BTreeMap<(Tensor, u32), Arc<CudaSlice<u32>>>;

impl CudaGraph {
    /// Binds `csr` to `dev` (nothing is uploaded yet).
    pub fn new(dev: &CudaDevice, csr: Arc<Csr>) -> Self {
        CudaGraph {
            dev: dev.clone(),
            nodes: csr.nodes as u64,
            edges: csr.edges() as u64,
            csr: Some(csr),
            weight_fold: 0,
            tables: Mutex::new(BTreeMap::new()),
        }
    }

    /// A graph whose CSR views were built on the device ([`CudaDevice::build_csr_tables`])
    /// from the `u32` `receiver`/`sender` buffers given here. Runs the CSR and atomic modes
    /// (pieces need a host-built graph).
    pub fn from_device(
        dev: &CudaDevice,
        t: crate::CudaCsrTables,
        receiver: CudaSlice<u32>,
        sender: CudaSlice<u32>,
    ) -> Self {
        let tables = BTreeMap::from([
            ((Tensor::RecvCsr, 0), Arc::new(t.recv)),
            ((Tensor::SendCsr, 0), Arc::new(t.send)),
            ((Tensor::Receiver, 0), Arc::new(receiver)),
            ((Tensor::Sender, 0), Arc::new(sender)),
        ]);
        CudaGraph {
            dev: dev.clone(),
            csr: None,
            nodes: t.nodes as u64,
            edges: t.edges as u64,
            weight_fold: 0,
            tables: Mutex::new(tables),
        }
    }

    /// A graph built on the device into reused buffers ([`crate::CsrPool::build`]):
    /// `[RecvCsr, SendCsr, Receiver, Sender]`, each at least as long as the graph needs.
    pub(crate) fn from_device_tables(
        dev: &CudaDevice,
        nodes: u32,
        edges: u32,
        [recv, send, receiver, sender]: [Arc<CudaSlice<u32>>; 4],
    ) -> Self {
        let tables = BTreeMap::from([
            ((Tensor::RecvCsr, 0), recv),
            ((Tensor::SendCsr, 0), send),
            ((Tensor::Receiver, 0), receiver),
            ((Tensor::Sender, 0), sender),
        ]);
        CudaGraph {
            dev: dev.clone(),
            csr: None,
            nodes: nodes as u64,
            edges: edges as u64,
            weight_fold: 0,
            tables: Mutex::new(tables),
        }
    }

    /// A host-built graph whose CSR-mode index tables the caller already holds on this
    /// device (e.g. buffers reused across structures, so a new graph uploads and allocates
    /// nothing): `(tensor, table)` for any of `RecvCsr`, `SendCsr` (the packed views of
    /// [`Csr::packed`]), `Receiver`, `Sender`. Other tables (pieces) are uploaded on first
    /// use as usual. A table may be longer than the graph needs.
    ///
    /// # Safety
    /// Each table must start with exactly the contents [`Csr::packed`] / `csr.receiver` /
    /// `csr.sender` give for `csr` (the kernels index device memory through them), and must
    /// not be written while this graph lives.
    pub unsafe fn with_device_tables(
        dev: &CudaDevice,
        csr: Arc<Csr>,
        tables: Vec<(Tensor, Arc<CudaSlice<u32>>)>,
    ) -> Result<Self> {
        let (n, e) = (csr.nodes, csr.edges());
        let mut map = BTreeMap::new();
        for (t, b) in tables {
            let need = match t {
                Tensor::RecvCsr | Tensor::SendCsr => n + 1 + 2 * e,
                Tensor::Receiver | Tensor::Sender => e,
                other => {
                    return Err(CudaError::Plan(format!(
                        "{other:?} is not a CSR-mode index table"
                    )))
                }
            };
            if b.len() < need {
                return Err(CudaError::Length {
                    arg: "index table",
                    expected: need,
                    actual: b.len(),
                });
            }
            map.insert((t, 0), b);
        }
        Ok(CudaGraph {
            dev: dev.clone(),
            nodes: n as u64,
            edges: e as u64,
            csr: Some(csr),
            weight_fold: 0,
            tables: Mutex::new(map),
        })
    }

    /// The graph with edges sharing weight rows: edge `e ≥ fold` reads row `e − fold` of
    /// `W` (e.g. each pair's two directions `fold` apart, their weights a function of the
    /// length alone; see `GraphSize::weight_fold`); `fold` ≤ the edge count, 0 for none.
    /// Only channel-fused plans run on such a graph (`check_graph` says so).
    pub fn with_weight_fold(mut self, fold: u64) -> Result<Self> {
        if fold > self.edges {
            return Err(CudaError::Plan(format!(
                "weight_fold {fold}: more than the graph's {} edges",
                self.edges
            )));
        }
        self.weight_fold = fold;
        Ok(self)
    }

    /// The host-side graph, if it was built on the host.
    pub fn csr(&self) -> Option<&Arc<Csr>> {
        self.csr.as_ref()
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// The graph's sizes for `plan` (piece counts need the host-built graph).
    pub fn graph_size(&self, plan: &KernelPlan) -> Result<GraphSize> {
        let gs = match &self.csr {
            Some(c) => plan.graph_size(c),
            None if plan.conv.and_then(|c| c.max_piece_edges).is_some() => {
                return Err(CudaError::Plan(
                    "a graph built on the device has no pieces: use the CSR mode (max_piece_edges None)"
                        .into(),
                ))
            }
            None => GraphSize {
                nodes: self.nodes,
                edges: self.edges,
                recv_pieces: 0,
                send_pieces: 0,
                weight_fold: 0,
            },
        };
        Ok(GraphSize {
            weight_fold: self.weight_fold,
            ..gs
        })
    }

    /// Bytes of the index tables held so far.
    pub fn table_bytes(&self) -> u64 {
        self.lock().values().map(|t| t.len() as u64 * 4).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device table held for `t` (CSR mode: `RecvCsr`, `SendCsr`, `Receiver`, `Sender`),
    /// if uploaded or built already: for kernels of the caller's own that read the same views.
    pub fn table(&self, t: Tensor) -> Option<Arc<CudaSlice<u32>>> {
        let m = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(t, 0)).cloned()
    }

    /// The tables `plan` binds, uploading the missing ones.
    fn tables_for(&self, plan: &KernelPlan) -> Result<BTreeMap<Tensor, Arc<CudaSlice<u32>>>> {
        let m = plan.conv.and_then(|c| c.max_piece_edges).unwrap_or(0);
        let mut out = BTreeMap::new();
        let mut missing = vec![];
        {
            let map = self.lock();
            for t in plan.kernels.iter().flat_map(|k| k.inputs.iter()) {
                if !t.is_index() || out.contains_key(t) {
                    continue;
                }
                let key = (*t, piece_key(*t, m));
                match map.get(&key) {
                    Some(b) => {
                        out.insert(*t, b.clone());
                    }
                    None => missing.push(*t),
                }
            }
        }
        if !missing.is_empty() {
            let csr = self.csr.as_ref().ok_or_else(|| {
                CudaError::Plan(format!(
                    "{:?} is not among the tables of this device-built graph",
                    missing[0]
                ))
            })?;
            let host = conv_index_tensors(plan, csr);
            let stream = self.dev.stream().clone();
            for t in missing {
                let v = host
                    .get(&t)
                    .ok_or_else(|| CudaError::Plan(format!("no index table {t:?}")))?;
                let mut d = stream.alloc_zeros::<u32>(v.len().max(1))?;
                if !v.is_empty() {
                    stream.memcpy_htod(v, &mut d.slice_mut(0..v.len()))?;
                }
                let d = Arc::new(d);
                self.lock().insert((t, piece_key(t, m)), d.clone());
                out.insert(t, d);
            }
        }
        Ok(out)
    }
}

fn piece_key(t: Tensor, m: u32) -> u32 {
    match t {
        Tensor::RecvPieces | Tensor::SendPieces => m,
        _ => 0,
    }
}

/// A convolution plan compiled for one CUDA device (emitted and loaded once), run on
/// [`CudaGraph`]s with caller-held buffers.
pub struct CudaConvPlan {
    dev: CudaDevice,
    plan: KernelPlan,
    loaded: Loaded,
}

impl CudaConvPlan {
    /// Emits and loads `plan` (NVRTC on a cache miss).
    pub fn new(dev: &CudaDevice, plan: KernelPlan) -> Result<Self> {
        if plan.conv.is_none() {
            return Err(CudaError::Plan("not a convolution plan".into()));
        }
        let loaded = compile::load(dev, &plan, CudaOptions::default())?;
        Ok(CudaConvPlan {
            dev: dev.clone(),
            plan,
            loaded,
        })
    }

    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// How the module was obtained (compile/load times).
    pub fn compile_info(&self) -> &CompileInfo {
        &self.loaded.info
    }

    /// Float tensors the plan reads and no kernel writes (what callers pass as inputs).
    pub fn inputs(&self) -> Vec<Tensor> {
        let written: Vec<Tensor> = self
            .plan
            .kernels
            .iter()
            .flat_map(|k| k.outputs.iter().copied())
            .collect();
        let mut v: Vec<Tensor> = self
            .plan
            .kernels
            .iter()
            .flat_map(|k| k.inputs.iter().copied())
            .filter(|t| !t.is_index() && !written.contains(t))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Tensors the plan returns (everything it writes except scratch).
    pub fn outputs(&self) -> Vec<Tensor> {
        let mut v: Vec<Tensor> = self
            .plan
            .kernels
            .iter()
            .flat_map(|k| k.outputs.iter().copied())
            .filter(|t| !t.is_scratch())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Bytes of scratch (`WPartial`, piece partials) one run allocates for graph `gs`.
    pub fn scratch_bytes(&self, gs: &GraphSize) -> u64 {
        let es = match self.plan.dtype {
            equikern_plan::Dtype::F32 => 4,
            equikern_plan::Dtype::F64 => 8,
        };
        let mut seen = vec![];
        let mut total = 0;
        for t in self.plan.kernels.iter().flat_map(|k| k.outputs.iter()) {
            if t.is_scratch() && !seen.contains(t) {
                seen.push(*t);
                total += self.plan.conv_buffer_len(*t, gs).max(1) * es;
            }
        }
        total
    }

    /// Uploads `inputs`, runs on `graph`, downloads every output.
    pub fn run_host<T: Real>(
        &self,
        graph: &CudaGraph,
        inputs: &BTreeMap<Tensor, Vec<T>>,
    ) -> Result<BTreeMap<Tensor, Vec<T>>> {
        let gs = graph.graph_size(&self.plan)?;
        let mut ins = vec![];
        for t in self.inputs() {
            let want = self.plan.conv_buffer_len(t, &gs) as usize;
            let v = inputs
                .get(&t)
                .ok_or_else(|| CudaError::Plan(format!("missing input tensor {t:?}")))?;
            if v.len() != want {
                return Err(CudaError::Plan(format!(
                    "tensor {t:?}: expected {want} elements, got {}",
                    v.len()
                )));
            }
            ins.push((t, self.dev.upload(v)?));
        }
        let mut outs = vec![];
        for t in self.outputs() {
            let n = self.plan.conv_buffer_len(t, &gs) as usize;
            outs.push((t, self.dev.zeros::<T>(n)?));
        }
        {
            let ir: Vec<(Tensor, &CudaSlice<T>)> = ins.iter().map(|(t, b)| (*t, b)).collect();
            let mut or: Vec<(Tensor, &mut CudaSlice<T>)> =
                outs.iter_mut().map(|(t, b)| (*t, b)).collect();
            self.run_device(graph, &ir, &mut or)?;
        }
        let mut res = BTreeMap::new();
        for (t, b) in &outs {
            let n = self.plan.conv_buffer_len(*t, &gs) as usize;
            res.insert(*t, self.dev.download(b, n)?);
        }
        Ok(res)
    }

    /// Runs the plan on `graph` with caller-held buffers: `inputs` are the tensors of
    /// [`Self::inputs`], `outputs` those of [`Self::outputs`], each holding at least
    /// `conv_buffer_len` elements (checked). Outputs that atomic (`Scatter`) kernels add into
    /// are zeroed first; scratch is allocated per call. Launches go to the device's stream
    /// and return without waiting.
    pub fn run_device<T: Real>(
        &self,
        graph: &CudaGraph,
        inputs: &[(Tensor, &CudaSlice<T>)],
        outputs: &mut [(Tensor, &mut CudaSlice<T>)],
    ) -> Result<()> {
        let plan = &self.plan;
        if T::DTYPE != plan.dtype {
            return Err(CudaError::Dtype {
                plan: plan.dtype,
                data: T::DTYPE,
            });
        }
        let gs = graph.graph_size(plan)?;
        plan.check_graph(&gs)
            .map_err(|e| CudaError::Plan(e.to_string()))?;
        let dev = &self.dev;
        let stream = dev.stream().clone();
        let check_len = |t: Tensor, len: usize| -> Result<()> {
            let want = plan.conv_buffer_len(t, &gs) as usize;
            if len < want {
                return Err(CudaError::Plan(format!(
                    "buffer {t:?}: expected at least {want} elements, got {len}"
                )));
            }
            Ok(())
        };
        for t in self.inputs() {
            let b = inputs
                .iter()
                .find(|(u, _)| *u == t)
                .ok_or_else(|| CudaError::Plan(format!("missing input buffer {t:?}")))?;
            check_len(t, b.1.len())?;
        }
        for t in self.outputs() {
            let b = outputs
                .iter()
                .find(|(u, _)| *u == t)
                .ok_or_else(|| CudaError::Plan(format!("missing output buffer {t:?}")))?;
            check_len(t, b.1.len())?;
        }
        // Outputs that Scatter kernels accumulate into start at zero.
        let scattered: Vec<Tensor> = plan
            .kernels
            .iter()
            .filter(|k| {
                matches!(
                    k.work,
                    Work::Rows {
                        sample_mode: SampleMode::Scatter { .. },
                        ..
                    }
                )
            })
            .flat_map(|k| k.outputs.iter().copied())
            .collect();
        for (t, b) in outputs.iter_mut() {
            if scattered.contains(t) {
                stream.memset_zeros(&mut **b)?;
            }
        }
        let tables = graph.tables_for(plan)?;
        let mut scratch: BTreeMap<Tensor, CudaSlice<T>> = BTreeMap::new();
        for t in plan.kernels.iter().flat_map(|k| k.outputs.iter()) {
            if t.is_scratch() && !scratch.contains_key(t) {
                let n = plan.conv_buffer_len(*t, &gs) as usize;
                scratch.insert(*t, stream.alloc_zeros::<T>(n.max(1))?);
            }
        }
        let mut ptrs: BTreeMap<Tensor, u64> = BTreeMap::new();
        let mut iguards = vec![];
        for (t, b) in &tables {
            let (p, g) = b.device_ptr(&stream);
            ptrs.insert(*t, p);
            iguards.push(g);
        }
        let mut rguards = vec![];
        for (t, b) in inputs {
            if !ptrs.contains_key(t) {
                let (p, g) = b.device_ptr(&stream);
                ptrs.insert(*t, p);
                rguards.push(g);
            }
        }
        let mut wguards = vec![];
        for (t, b) in outputs.iter_mut() {
            let (p, g) = b.device_ptr_mut(&stream);
            ptrs.insert(*t, p);
            wguards.push(g);
        }
        for (t, b) in scratch.iter_mut() {
            let (p, g) = b.device_ptr_mut(&stream);
            ptrs.insert(*t, p);
            wguards.push(g);
        }
        let loaded = &self.loaded;
        for l in conv_launches(plan, &gs) {
            let (ek, func) = (&loaded.emitted.kernels[l.kernel], &loaded.funcs[l.kernel]);
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
            // SAFETY: pointers in the emitted parameter order, then the seven u32 of
            // `Param::Conv`; every buffer holds `conv_buffer_len` elements (checked above).
            unsafe { b.launch(cfg) }?;
        }
        drop(wguards);
        drop(rguards);
        drop(iguards);
        // Scratch is freed stream-ordered after the launches.
        drop(scratch);
        Ok(())
    }
}

/// One launch of a convolution plan's kernel: invocations and the seven `Param::Conv` words
/// `[num_samples, num_chunks, unit_base, num_nodes, num_edges, num_pieces, weight_fold]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLaunch {
    pub kernel: usize,
    pub invocations: u64,
    pub tail: [u32; 7],
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
            // One invocation per (unit, channel): nodes or pieces of the sender view.
            // Never lowered into a convolution plan (its writer refuses one).
            Work::Staged(_) => {}
            Work::Channels(c) => {
                for (s0, n) in plan.dispatches(plan.conv_unit_count(i, gs)) {
                    launches.push((n, s0, n * c.lanes() as u64));
                }
            }
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
                    gs.weight_fold as u32,
                ],
            });
        }
    }
    out
}
