//! [`CudaExec`]: the resident step's device operations on a CUDA GPU — the kernels of
//! `kernels.cu` (NVRTC, cached by equikern-cuda), cuBLAS (or `ek_gemm`) for the products,
//! `equikern::ConvOp` for the convolutions, all on equikern-cuda's one stream.

use super::buffers::drv;
use super::exec::{Arg, Exec, Kern, Memory, Pod, Side};
use super::gemm::{DevReal, Gemmer};
use super::tables::{
    model_kernel_source, LINEAR_TC_SMEM_BYTES, MLP_TC_PACK_BYTES, MLP_TC_PACK_FWD_BYTES,
    NT_PIPE_SMEM_BYTES,
};
use super::{launch_cfg, BLOCK};
use crate::error::{ModelError, Result};
use crate::sevennet::SevenNet;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, PushKernelArg};
use equikern::plan::{Direction, Tensor};
use equikern::{ConvGraph, ConvOp, Device};
use equikern_core::conv::{Csr, End};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::backend("cuda", e)
}

/// One CUDA device's operations for a model in `T`.
pub struct CudaExec<T> {
    device: Device,
    stream: Arc<CudaStream>,
    funcs: Vec<CudaFunction>,
    /// Per kernel of [`STAGED`]: its blocks per launch (as many as the device keeps resident:
    /// it strides over its tiles); 0 where it may not run (no tensor cores, or too little
    /// shared memory).
    staged_blocks: Vec<u32>,
    gemm: Gemmer,
    /// Extra lanes (streams, each with its products' handle) for independent work
    /// ([`Exec::fork`]); the lane in use (0: `stream`) and how many the open fork has.
    lanes: Vec<(Arc<CudaStream>, Gemmer)>,
    lane: std::sync::atomic::AtomicUsize,
    forked: std::sync::atomic::AtomicUsize,
    /// Which side lanes ([`Side::index`]) are open.
    side: [std::sync::atomic::AtomicBool; Side::COUNT],
    ops: Vec<ConvOp>,
    /// Whether every layer's convolution runs on graphs whose edges share weight rows.
    fold_ok: bool,
    /// With `EQUIKERN_MODEL_PROFILE` set: each launch, product and convolution is waited
    /// for and its host wall time summed by name (count, seconds); printed when dropped.
    /// For finding the slow part of a step, never for timing one.
    profile: Option<Mutex<Profile>>,
    /// Grow-only CSR tables for graphs built on the device (`graph_on_device`).
    csr_pool: Mutex<Option<equikern::cuda_runtime::CsrPool>>,
    /// The recorded step (`run_step`).
    recorded: Mutex<StepRecording>,
    _t: PhantomData<T>,
}

/// The kernels that stage operands in dynamic shared memory beyond the default 48 KB, with
/// their bytes per block: launched with that much, on a grid of the blocks the device keeps
/// resident (they stride over their tiles).
const STAGED: [(Kern, u32); 5] = [
    (Kern::GemmTf32x3NtPipe, NT_PIPE_SMEM_BYTES),
    (Kern::MlpBackwardTcSmem, MLP_TC_PACK_BYTES),
    (Kern::MlpForwardTcSmem, MLP_TC_PACK_FWD_BYTES),
    (Kern::LinearTc, LINEAR_TC_SMEM_BYTES),
    (Kern::ConvRadialBwd, super::radial_conv::RCB_SMEM_BYTES),
];

/// Blocks per launch of `f` with `bytes` of dynamic shared memory (resident blocks per SM ×
/// SMs), raising its limit to `bytes` here, where the device has TF32 tensor cores and room
/// for at least one such block per SM; else 0.
fn staged_blocks(cuda: &equikern::cuda_runtime::CudaDevice, f: &CudaFunction, bytes: u32) -> u32 {
    use cudarc::driver::sys::{CUdevice_attribute as A, CUfunction_attribute as F};
    if cuda.compute_capability().0 < 8 {
        return 0;
    }
    let ctx = cuda.context();
    let (Ok(optin), Ok(sms)) = (
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
        ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
    ) else {
        return 0;
    };
    if optin < bytes as i32
        || f.set_attribute(
            F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .is_err()
    {
        return 0;
    }
    let per_sm = f
        .occupancy_max_active_blocks_per_multiprocessor(BLOCK, bytes as usize, None)
        .unwrap_or(0);
    per_sm * u32::try_from(sms).unwrap_or(0)
}

/// Extra lanes of a [`CudaExec`]: two for [`Exec::fork`], then the side lanes
/// ([`Exec::fork_side`]).
const FORK_LANES: usize = 2;
const LANES: usize = FORK_LANES + Side::COUNT;

impl<T> CudaExec<T> {
    /// The stream and products' handle of the lane in use.
    fn cur(&self) -> (&Arc<CudaStream>, &Gemmer) {
        match self.lane.load(std::sync::atomic::Ordering::Relaxed) {
            0 => (&self.stream, &self.gemm),
            i => {
                let (s, g) = &self.lanes[i - 1];
                (s, g)
            }
        }
    }

    fn timed<R>(&self, name: impl FnOnce() -> String, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let Some(p) = &self.profile else { return f() };
        self.stream.synchronize().map_err(drv)?;
        let t0 = std::time::Instant::now();
        let r = f()?;
        self.stream.synchronize().map_err(drv)?;
        let dt = t0.elapsed().as_secs_f64();
        let mut m = p.lock().unwrap_or_else(|e| e.into_inner());
        // The first step pays one-time costs (cuBLAS set-up, lazy module loading) on
        // whichever call comes first: only later steps are counted.
        if m.steps >= 1 {
            let e = m.calls.entry(name()).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += dt;
        }
        Ok(r)
    }
}

impl<T> Drop for CudaExec<T> {
    fn drop(&mut self) {
        let Some(p) = &self.profile else { return };
        let m = p.lock().unwrap_or_else(|e| e.into_inner());
        let total: f64 = m.calls.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = m.calls.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let steps = m.steps.saturating_sub(1).max(1) as f64;
        eprintln!(
            "EQUIKERN_MODEL_PROFILE: {total:.3} s in {} kinds of call over {} steps after the first ({:.3} ms per step)",
            rows.len(),
            m.steps.saturating_sub(1),
            total * 1e3 / steps
        );
        for (k, (n, s)) in rows {
            eprintln!(
                "  {:>6.2} %  {:>9.3} ms/step  {:>6.1} calls/step  {:>9.4} ms/call  {k}",
                100.0 * s / total.max(1e-30),
                s * 1e3 / steps,
                *n as f64 / steps,
                s * 1e3 / *n as f64
            );
        }
    }
}

/// A structure's graph on CUDA: the convolutions' `ConvGraph` and the packed CSR views the
/// force kernel reads (the same device buffers).
pub struct CudaGraphTables {
    conv: ConvGraph,
    recv: Arc<CudaSlice<u32>>,
    send: Arc<CudaSlice<u32>>,
    key: u64,
}

impl CudaGraphTables {
    /// Names the tables' device addresses and lengths (equal keys: the same buffers).
    pub fn table_key(&self) -> u64 {
        self.key
    }
}

impl<T: DevReal> CudaExec<T> {
    /// Compiles the kernels for `model` (once per model and dtype; NVRTC results cached in
    /// memory and on disk) and binds its convolutions to `device`.
    pub fn new(model: &SevenNet<T>, device: Device) -> Result<Self> {
        let cuda = device.cuda_device().ok_or_else(|| {
            ModelError::backend(
                device.name(),
                "the resident evaluator needs a CUDA device (equikern::Backend::Cuda)",
            )
        })?;
        let stream = cuda.stream().clone();
        let src = model_kernel_source(model)?;
        let (module, _) = cuda
            .load_source(&format!("equikern-sevennet-{}", T::NAME), &src)
            .map_err(err)?;
        let funcs = Kern::ALL
            .iter()
            .map(|k| module.load_function(k.name()).map_err(err))
            .collect::<Result<Vec<_>>>()?;
        let ops = model
            .layers
            .iter()
            .map(|l| {
                ConvOp::from_tensor_product(
                    l.product.clone(),
                    &device,
                    equikern::ConvOptions::default(),
                )
                .map(|op| op.with_auto_pieces(true))
                .map_err(err)
            })
            .collect::<Result<Vec<_>>>()?;
        let fold_ok = ops.iter().all(|op| op.folds_weights(T::DTYPE));
        let profile = std::env::var_os("EQUIKERN_MODEL_PROFILE").map(|_| Mutex::default());
        let staged_blocks = STAGED
            .iter()
            .map(|&(k, bytes)| staged_blocks(cuda, &funcs[k.index()], bytes))
            .collect();
        let lanes = (0..LANES)
            .map(|_| {
                let s = stream.fork().map_err(drv)?;
                let g = Gemmer::new(&s);
                Ok((s, g))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CudaExec {
            staged_blocks,
            profile,
            gemm: Gemmer::new(&stream),
            lanes,
            lane: Default::default(),
            forked: Default::default(),
            side: Default::default(),
            device,
            stream,
            funcs,
            ops,
            fold_ok,
            csr_pool: Mutex::new(None),
            recorded: Mutex::new(StepRecording {
                off: std::env::var(GRAPH_ENV).is_ok_and(|v| v.trim() == "0"),
                ..Default::default()
            }),
            _t: PhantomData,
        })
    }

    /// Whether steps may be recorded as CUDA graphs and replayed (default: on unless
    /// `EQUIKERN_MODEL_CUDA_GRAPH=0`; a capture the driver refuses turns it off).
    pub fn set_recording(&self, on: bool) {
        let mut st = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        st.off = !on;
        st.graph = None;
        st.last = None;
    }

    /// Steps run from a recorded CUDA graph so far.
    pub fn replays(&self) -> u64 {
        self.recorded.lock().map(|s| s.replays).unwrap_or(0)
    }

    /// The layers' convolutions (their plans are built on first use, then reused).
    pub fn ops(&self) -> &[ConvOp] {
        &self.ops
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Makes the device's context current on this thread (cuBLAS uses the current context;
    /// kernel launches bind it themselves).
    pub fn bind(&self) -> Result<()> {
        self.stream.context().bind_to_thread().map_err(drv)
    }
}

/// Environment variable: `0` turns off recording steps as CUDA graphs (`run_step`).
pub const GRAPH_ENV: &str = "EQUIKERN_MODEL_CUDA_GRAPH";

/// Edges from which a structure's CSR views are built on the device (see `graph`).
pub const DEVICE_CSR_MIN_EDGES: usize = 16_384;

impl<T: DevReal> CudaExec<T> {
    /// The CSR views built on the host and uploaded (small graphs).
    fn graph_from_host(
        &self,
        n: usize,
        receiver: &[u32],
        sender: &[u32],
    ) -> Result<CudaGraphTables> {
        let csr = Arc::new(Csr::build(n, receiver, sender).map_err(err)?);
        let data = [
            (Tensor::RecvCsr, csr.packed(End::Receiver)),
            (Tensor::SendCsr, csr.packed(End::Sender)),
            (Tensor::Receiver, csr.receiver.clone()),
            (Tensor::Sender, csr.sender.clone()),
        ];
        let mut named = Vec::with_capacity(4);
        for (t, v) in data {
            let mut b = self
                .stream
                .alloc_zeros::<u32>(v.len().max(1))
                .map_err(drv)?;
            if !v.is_empty() {
                self.stream
                    .memcpy_htod(&v, &mut b.slice_mut(0..v.len()))
                    .map_err(drv)?;
            }
            named.push((t, Arc::new(b)));
        }
        // SAFETY: the tables were just filled with exactly csr's views and are never written.
        let conv = unsafe { ConvGraph::from_csr_with_cuda_tables(&self.device, csr, named) }
            .map_err(err)?;
        self.tables_of(conv)
    }
}

impl<T: DevReal> CudaExec<T> {
    /// Both CSR views of a graph whose `edges` receiver/sender indices are on the device
    /// already (`CudaNeighbourList`'s): copied into the exec's grow-only table pool, then
    /// sorted there; nothing crosses to the host but the builder's error word. The tables
    /// keep their addresses from one structure to the next while they fit (no allocation
    /// per step).
    pub fn graph_on_device(
        &self,
        n: usize,
        edges: usize,
        receiver: Option<CudaView<'_, u32>>,
        sender: Option<CudaView<'_, u32>>,
    ) -> Result<CudaGraphTables> {
        let (Some(r), Some(s)) = (receiver, sender) else {
            if edges > 0 {
                return Err(err(format!("graph: {edges} edges but no index buffers")));
            }
            return self.graph_from_host(n, &[], &[]);
        };
        if r.len() != edges || s.len() != edges {
            return Err(err(format!(
                "graph: {edges} edges, {} receivers, {} senders",
                r.len(),
                s.len()
            )));
        }
        let mut pool = self.csr_pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.is_none() {
            let dev = self
                .device
                .cuda_device()
                .ok_or_else(|| err("graph: not a CUDA device"))?;
            *pool = Some(equikern::cuda_runtime::CsrPool::new(dev).map_err(err)?);
        }
        let conv = ConvGraph::from_cuda_pool(
            &self.device,
            pool.as_mut().expect("made above"),
            graph_u32(n, "atoms")?,
            graph_u32(edges, "edges")?,
            &r,
            &s,
        )
        .map_err(err)?;
        self.tables_of(conv)
    }

    fn tables_of(&self, conv: ConvGraph) -> Result<CudaGraphTables> {
        let table = |t: Tensor| {
            conv.cuda_table(t)
                .ok_or_else(|| err(format!("graph: no device table {t:?}")))
        };
        let (recv, send) = (table(Tensor::RecvCsr)?, table(Tensor::SendCsr)?);
        // The tables' addresses and lengths, for the key of a recorded step.
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for t in [
                Tensor::RecvCsr,
                Tensor::SendCsr,
                Tensor::Receiver,
                Tensor::Sender,
            ] {
                if let Some(b) = conv.cuda_table(t) {
                    let (p, _sync) = b.device_ptr(&self.stream);
                    (p, b.len()).hash(&mut h);
                }
            }
            (conv.nodes(), conv.edges()).hash(&mut h);
            h.finish()
        };
        Ok(CudaGraphTables {
            conv,
            recv,
            send,
            key,
        })
    }

    /// The exec's stream (kernels, products and copies are ordered on it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `dst[..src.len()] = src`, device to device.
    pub fn copy_view<E: Pod>(&self, src: &CudaView<'_, E>, dst: &mut CudaSlice<E>) -> Result<()> {
        if dst.len() < src.len() {
            return Err(err(format!(
                "copy of {} elements into a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        let len = src.len();
        self.stream
            .memcpy_dtod(src, &mut dst.slice_mut(0..len))
            .map_err(drv)
    }

    fn graph_from_slices(
        &self,
        n: usize,
        edges: usize,
        r: CudaSlice<u32>,
        s: CudaSlice<u32>,
    ) -> Result<CudaGraphTables> {
        let conv = ConvGraph::from_cuda_slices(
            &self.device,
            graph_u32(n, "atoms")?,
            graph_u32(edges, "edges")?,
            r,
            s,
        )
        .map_err(err)?;
        self.tables_of(conv)
    }
}

impl<T: DevReal> Memory for CudaExec<T> {
    type Buf<E: Pod> = CudaSlice<E>;
    type Graph = CudaGraphTables;

    fn describe(&self) -> String {
        self.device.name().to_string()
    }

    fn alloc<E: Pod>(&self, n: usize) -> Result<CudaSlice<E>> {
        self.stream.alloc_zeros::<E>(n.max(1)).map_err(drv)
    }

    fn capacity<E: Pod>(b: &CudaSlice<E>) -> usize {
        b.len()
    }

    fn upload<E: Pod>(&self, src: &[E], dst: &mut CudaSlice<E>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        if dst.len() < src.len() {
            return Err(err(format!(
                "upload of {} elements into a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        self.stream
            .memcpy_htod(src, &mut dst.slice_mut(0..src.len()))
            .map_err(drv)
    }

    fn download(&self, src: &CudaSlice<f64>, n: usize) -> Result<Vec<f64>> {
        if src.len() < n {
            return Err(err(format!("download of {n} elements from {}", src.len())));
        }
        self.stream.clone_dtoh(&src.slice(0..n)).map_err(drv)
    }

    fn zero<E: Pod>(&self, b: &mut CudaSlice<E>) -> Result<()> {
        self.stream.memset_zeros(b).map_err(drv)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(drv)
    }

    fn graph(&self, n: usize, receiver: &[u32], sender: &[u32]) -> Result<CudaGraphTables> {
        // Both CSR views sorted and packed on the device (the same tables as the host
        // builder's; the indices go up once, 8 B per edge; an index ≥ n is an error naming it
        // before any convolution runs). Measured on the H100 (graph phase of a step), with
        // the bitonic sort (~400 launches): 917 504 edges 29.6 ms host → 16.2 ms device,
        // 114 688 edges 2.9 ms host, 3.75 ms device; the counting sort (~16 launches) is
        // used for neighbour lists now (degrees ≤ 256). Tiny graphs stay on the host.
        if receiver.len() < DEVICE_CSR_MIN_EDGES {
            return self.graph_from_host(n, receiver, sender);
        }
        if receiver.len() != sender.len() {
            return Err(err(format!(
                "graph: {} receivers, {} senders",
                receiver.len(),
                sender.len()
            )));
        }
        let up = |v: &[u32]| -> Result<CudaSlice<u32>> {
            let mut b = self
                .stream
                .alloc_zeros::<u32>(v.len().max(1))
                .map_err(drv)?;
            if !v.is_empty() {
                self.stream
                    .memcpy_htod(v, &mut b.slice_mut(0..v.len()))
                    .map_err(drv)?;
            }
            Ok(b)
        };
        self.graph_from_slices(n, receiver.len(), up(receiver)?, up(sender)?)
    }

    fn weight_fold_ok(&self) -> bool {
        self.fold_ok
    }

    fn fold_weights(&self, g: CudaGraphTables, fold: usize) -> Result<CudaGraphTables> {
        Ok(CudaGraphTables {
            conv: g.conv.with_weight_fold(fold).map_err(err)?,
            ..g
        })
    }

    fn graph_views(g: &CudaGraphTables) -> (&CudaSlice<u32>, &CudaSlice<u32>) {
        (&g.recv, &g.send)
    }

    fn graph_bytes(g: &CudaGraphTables) -> u64 {
        g.conv.device_table_bytes()
    }
}

/// A kernel argument's value as pushed to the launch.
enum Val<T> {
    Ptr(u64),
    I32(i32),
    U64(u64),
    F64(f64),
    Real(T),
}

impl<T: DevReal> Exec<T> for CudaExec<T> {
    fn launch(&self, k: Kern, iterations: u64, args: &[Arg<'_, T, Self>]) -> Result<()> {
        self.timed(
            || match (k, args) {
                // the product's shape in the profile, like cuBLAS's entries
                (
                    Kern::GemmTf32x3Nt | Kern::GemmTf32x3NtPipe,
                    [Arg::U64(m), Arg::I32(n), Arg::I32(kk), ..],
                ) => {
                    format!("{} m{m} n{n} k{kk} B^T", k.name())
                }
                (
                    Kern::LinearPath3 | Kern::LinearPath5 | Kern::LinearPath7,
                    [Arg::U64(m), Arg::I32(mi), Arg::I32(mo), ..],
                ) => format!("{} m{m} {mi} -> {mo}", k.name()),
                (Kern::LinearTc, [Arg::U64(m), Arg::I32(jobs), .., Arg::U64(ldy)]) => {
                    format!("{} m{m} jobs{jobs} ->{ldy}", k.name())
                }
                (Kern::ConvRadialBwd, [Arg::I32(v), ..]) => format!("{} v{v}", k.name()),
                _ => k.name().to_string(),
            },
            || self.launch_now(k, iterations, args),
        )
    }

    fn gemm(
        &self,
        dims: (usize, usize, usize),
        alpha: T,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
        trans_b: bool,
        beta: T,
        c: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.timed(
            || {
                format!(
                    "gemm m{} n{} k{}{}",
                    dims.0,
                    dims.1,
                    dims.2,
                    if trans_b { " B^T" } else { "" }
                )
            },
            || {
                // cuBLAS runs in the thread's current context (launches and copies bind it
                // themselves; a cuBLAS call alone does not).
                self.bind()?;
                let (st, gm) = self.cur();
                gm.gemm(
                    st,
                    &self.funcs[Kern::Gemm.index()],
                    dims,
                    alpha,
                    a,
                    b,
                    trans_b,
                    beta,
                    c,
                )
            },
        )
    }

    fn gemm_tf32_available(&self) -> bool {
        matches!(self.cur().1, Gemmer::Blas(_))
    }

    fn gemm_tf32(
        &self,
        dims: (usize, usize, usize),
        alpha: T,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
        beta: T,
        c: &mut CudaSlice<T>,
    ) -> Result<bool> {
        self.timed(
            || format!("gemm 3xtf32 m{} n{} k{}", dims.0, dims.1, dims.2),
            || {
                self.bind()?;
                let (st, gm) = self.cur();
                gm.gemm_tf32(
                    st,
                    &self.funcs[Kern::Gemm.index()],
                    dims,
                    alpha,
                    a,
                    b,
                    beta,
                    c,
                )
            },
        )
    }

    fn gemm_strided(
        &self,
        dims: (usize, usize, usize),
        alpha: T,
        a: (&CudaSlice<T>, usize, usize),
        b: (&CudaSlice<T>, usize, usize),
        beta: T,
        c: (&mut CudaSlice<T>, usize, usize),
    ) -> Result<bool> {
        self.timed(
            || format!("gemm strided m{} n{} k{}", dims.0, dims.1, dims.2),
            || {
                self.bind()?;
                self.cur().1.gemm_strided(dims, alpha, a, b, beta, c)
            },
        )
    }

    fn gemm_strided_tf32(
        &self,
        dims: (usize, usize, usize),
        alpha: T,
        a: (&CudaSlice<T>, usize, usize),
        b: (&CudaSlice<T>, usize, usize),
        beta: T,
        c: (&mut CudaSlice<T>, usize, usize),
    ) -> Result<bool> {
        self.timed(
            || format!("gemm strided 3xtf32 m{} n{} k{}", dims.0, dims.1, dims.2),
            || {
                self.bind()?;
                self.cur().1.gemm_strided_tf32(dims, alpha, a, b, beta, c)
            },
        )
    }

    fn conv(
        &self,
        layer: usize,
        d: Direction,
        g: &CudaGraphTables,
        inputs: &[(Tensor, &CudaSlice<T>)],
        outputs: &mut [(Tensor, &mut CudaSlice<T>)],
    ) -> Result<()> {
        self.timed(
            || format!("conv layer {layer} {d:?}"),
            || {
                let op = self
                    .ops
                    .get(layer)
                    .ok_or_else(|| err(format!("layer {layer}: no such convolution")))?;
                op.run_cuda(d, &g.conv, inputs, outputs).map_err(err)
            },
        )
    }

    fn gemm_name(&self) -> &'static str {
        self.gemm.name()
    }

    fn fork(&self, n: usize) -> Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        // (the profile times each call on the main stream alone; the side lanes come last)
        let n = n.min(FORK_LANES);
        if n == 0 || self.profile.is_some() || self.forked.load(Relaxed) != 0 {
            return Ok(0);
        }
        let ev = self.stream.record_event(None).map_err(drv)?;
        for (s, _) in &self.lanes[..n] {
            s.wait(&ev).map_err(drv)?;
        }
        self.forked.store(n, Relaxed);
        Ok(n)
    }

    fn set_lane(&self, i: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.lane.store(i.min(self.forked.load(Relaxed)), Relaxed);
    }

    fn join(&self) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.forked.swap(0, Relaxed);
        self.lane.store(0, Relaxed);
        for (s, _) in &self.lanes[..n] {
            let ev = s.record_event(None).map_err(drv)?;
            self.stream.wait(&ev).map_err(drv)?;
        }
        Ok(())
    }

    fn fork_side_available(&self) -> bool {
        self.profile.is_none() && !self.lanes.is_empty()
    }

    fn fork_side(&self, s: Side) -> Result<bool> {
        use std::sync::atomic::Ordering::Relaxed;
        let i = s.index();
        if self.profile.is_some() || self.side[i].load(Relaxed) {
            return Ok(false);
        }
        let ev = self.stream.record_event(None).map_err(drv)?;
        self.lanes[FORK_LANES + i].0.wait(&ev).map_err(drv)?;
        self.side[i].store(true, Relaxed);
        Ok(true)
    }

    fn set_side(&self, s: Option<Side>) {
        use std::sync::atomic::Ordering::Relaxed;
        // (lane j > 0 is `self.lanes[j - 1]`)
        let lane = match s {
            Some(s) if self.side[s.index()].load(Relaxed) => FORK_LANES + s.index() + 1,
            _ => 0,
        };
        self.lane.store(lane, Relaxed);
    }

    fn side_waits(&self, s: Side, on: Side) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let (i, j) = (s.index(), on.index());
        if i != j && self.side[i].load(Relaxed) && self.side[j].load(Relaxed) {
            let ev = self.lanes[FORK_LANES + j]
                .0
                .record_event(None)
                .map_err(drv)?;
            self.lanes[FORK_LANES + i].0.wait(&ev).map_err(drv)?;
        }
        Ok(())
    }

    fn join_side(&self, s: Side) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        self.lane.store(0, Relaxed);
        let i = s.index();
        if self.side[i].swap(false, Relaxed) {
            let ev = self.lanes[FORK_LANES + i]
                .0
                .record_event(None)
                .map_err(drv)?;
            self.stream.wait(&ev).map_err(drv)?;
        }
        Ok(())
    }

    /// sm_80 and later (the kernels are compiled for the device's own arch).
    fn tensor_cores(&self) -> bool {
        self.device
            .cuda_device()
            .is_some_and(|d| d.compute_capability().0 >= 8)
    }

    fn staged(&self, k: Kern) -> bool {
        STAGED
            .iter()
            .position(|s| s.0 == k)
            .is_some_and(|i| self.staged_blocks[i] > 0)
    }

    /// The first step of a key runs as launched; the second is captured into a CUDA graph
    /// and replayed, and so is every later step of that key (one graph launch instead of a
    /// few hundred launches whose host-side cost left the GPU idle between small kernels).
    /// A capture the driver refuses turns recording off for this exec (steps run as
    /// launched, and say so once on stderr).
    fn run_step(&self, key: Option<u64>, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        if let Some(p) = &self.profile {
            let r = f();
            p.lock().unwrap_or_else(|e| e.into_inner()).steps += 1;
            return r;
        }
        let Some(key) = key else { return f() };
        let mut st = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if st.off {
            return f();
        }
        if let Some((k, g)) = &st.graph {
            if *k == key {
                g.0.launch().map_err(drv)?;
                st.replays += 1;
                return Ok(());
            }
        }
        if st.last != Some(key) {
            st.last = Some(key);
            st.graph = None;
            return f();
        }
        st.graph = None;
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        if let Err(e) = self
            .stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        {
            eprintln!("equikern: CUDA graph capture refused ({e}); steps run as launched");
            st.off = true;
            return f();
        }
        let r = f();
        let g = self.stream.end_capture(CUgraphInstantiate_flags(0));
        match (r, g) {
            (Ok(()), Ok(Some(g))) => {
                g.launch().map_err(drv)?;
                st.graph = Some((key, Recorded(g)));
                st.replays += 1;
                Ok(())
            }
            (r, g) => {
                let why = match (&r, &g) {
                    (Err(e), _) => e.to_string(),
                    (_, Err(e)) => e.to_string(),
                    _ => "no graph".into(),
                };
                eprintln!("equikern: CUDA graph capture refused ({why}); steps run as launched");
                st.off = true;
                f()
            }
        }
    }
}

/// A graph size as the device builders take it.
fn graph_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| err(format!("graph: {v} {what} exceed u32")))
}

/// A captured step (`cudarc`'s graph holds raw driver handles; the exec's mutex serialises
/// every use, as the driver requires).
struct Recorded(cudarc::driver::CudaGraph);

// SAFETY: only used under `CudaExec::recorded`'s mutex (graph objects must not be used from
// two threads at once; moving between threads is allowed).
unsafe impl Send for Recorded {}

/// `EQUIKERN_MODEL_PROFILE`'s tally: steps done, and per call name (count, seconds) from
/// the end of the first step on (the graph built for the next step included).
#[derive(Default)]
struct Profile {
    steps: u64,
    calls: std::collections::BTreeMap<String, (u64, f64)>,
}

/// The recorded-step state of an exec.
#[derive(Default)]
struct StepRecording {
    /// The key of the last step run as launched.
    last: Option<u64>,
    graph: Option<(u64, Recorded)>,
    /// Recording refused by the driver, or turned off (`EQUIKERN_MODEL_CUDA_GRAPH=0`).
    off: bool,
    /// Steps run from a recording.
    replays: u64,
}

impl<T: DevReal> CudaExec<T> {
    fn launch_now(&self, k: Kern, iterations: u64, args: &[Arg<'_, T, Self>]) -> Result<()> {
        if iterations == 0 {
            return Ok(());
        }
        let (st, _) = self.cur();
        let mut guards = Vec::new();
        let mut vals: Vec<Val<T>> = Vec::with_capacity(args.len());
        for a in args {
            vals.push(match a {
                Arg::Real(b, off) => {
                    let (p, g) = b.device_ptr(st);
                    guards.push(g);
                    Val::Ptr(p + (off * std::mem::size_of::<T>()) as u64)
                }
                Arg::F64s(b, off) => {
                    let (p, g) = b.device_ptr(st);
                    guards.push(g);
                    Val::Ptr(p + (off * 8) as u64)
                }
                Arg::U32s(b, off) => {
                    let (p, g) = b.device_ptr(st);
                    guards.push(g);
                    Val::Ptr(p + (off * 4) as u64)
                }
                Arg::I32s(b) => {
                    let (p, g) = b.device_ptr(st);
                    guards.push(g);
                    Val::Ptr(p)
                }
                Arg::U64(v) => Val::U64(*v),
                Arg::I32(v) => Val::I32(*v),
                Arg::F64(v) => Val::F64(*v),
                Arg::Val(v) => Val::Real(*v),
                Arg::Null => Val::Ptr(0),
            });
        }
        let f = &self.funcs[k.index()];
        let mut b = st.launch_builder(f);
        for v in &vals {
            match v {
                Val::Ptr(p) => b.arg(p),
                Val::I32(x) => b.arg(x),
                Val::U64(x) => b.arg(x),
                Val::F64(x) => b.arg(x),
                Val::Real(x) => b.arg(x),
            };
        }
        // SAFETY: the step sizes every buffer for the iterations it launches (see
        // `Resident::ensure`); the arguments follow the kernel's parameter list.
        let mut cfg = launch_cfg(iterations);
        if let Some(i) = STAGED.iter().position(|s| s.0 == k) {
            if self.staged_blocks[i] == 0 {
                return Err(ModelError::backend(
                    "cuda",
                    format!("{} on a device that cannot run it (Exec::staged)", k.name()),
                ));
            }
            cfg.grid_dim.0 = cfg.grid_dim.0.min(self.staged_blocks[i]);
            cfg.shared_mem_bytes = STAGED[i].1;
        }
        unsafe { b.launch(cfg) }
            .map_err(|e| ModelError::backend("cuda", format!("launching {}: {e}", k.name())))?;
        drop(guards);
        Ok(())
    }
}
