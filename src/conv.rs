//! [`ConvOp`]: the fused graph convolution `z[i] = Σ_{e: receiver[e]=i} TP(x[sender[e]], y[e],
//! w[e])` bound to a device, on a validated [`ConvGraph`]; forward, backward and double
//! backward on host slices and on device buffers.
//!
//! Deterministic by default: node sums run over CSR ranges in ascending edge id (no atomics;
//! bit-identical run to run), the x-gradient over the sender (transpose) view, so directed
//! graphs are exact. `ConvOptions { atomic: true, .. }` selects per-edge float atomic adds
//! where the device has them (CUDA); `max_piece_edges` cuts hub nodes' ranges into pieces
//! (still deterministic).
//!
//! ```
//! use equikern::{ConvGraph, ConvOp, Device, TpSpec};
//! # fn main() -> Result<(), equikern::Error> {
//! let spec = TpSpec::from_json(r#"{"irreps_in1": "4x0e+4x1o", "irreps_in2": "0e+1o",
//!     "irreps_out": "4x0e+4x1o", "instructions": [[0,0,0,"uvu",true,1.0],[1,1,0,"uvu",true,1.0],
//!     [0,1,1,"uvu",true,1.0],[1,0,1,"uvu",true,1.0]], "shared_weights": false}"#)?;
//! let device = Device::cpu(); // or Device::new(Backend::Wgpu / Backend::Cuda)
//! let op = ConvOp::new(&spec, &device)?;
//! // edges sender -> receiver: 0->1, 2->1, 1->0 (any order; i32/i64/u32 indices)
//! let graph = ConvGraph::new(&device, 3, &[1i64, 1, 0], &[0i64, 2, 1])?;
//! let x = vec![0.5; graph.nodes() * op.dim_in1()];
//! let y = vec![0.25; graph.edges() * op.dim_in2()];
//! let w = vec![1.0; op.weight_len(graph.edges()).unwrap()];
//! let z = op.forward(&graph, &x, &y, &w)?; // [nodes, dim_out]
//! let g = op.backward(&graph, &x, &y, &w, &z)?;
//! assert_eq!(g.gx.len(), x.len());
//! // a bad index is an error before anything runs
//! assert!(ConvGraph::new(&device, 3, &[1i64, 3], &[0i64, 1]).is_err());
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use std::sync::Mutex;

use equikern_core::conv::{ConvOracle, Csr, GraphIndex};
use equikern_core::oracle::{DoubleGrads, Grads};
use equikern_core::{TensorProduct, TpSpec};
use equikern_plan::{
    lower_conv_with, ConvOptions, Direction, Dtype, KernelPlan, LowerOptions, Tensor,
};

use crate::device::{Device, DeviceInner};
use crate::{Error, Result};

/// A graph (directed edges `sender → receiver`) validated for convolutions on one device.
///
/// Indices may be `u32`, `i32`, `i64`, `u64` or `usize`; a negative index, an index ≥
/// `nodes` or a length mismatch is an [`Error::Graph`] naming the array, position and value,
/// raised here, before anything is uploaded. On a GPU the index tables (both CSR views) are
/// uploaded on first use and kept with the graph, so reuse one graph across calls and layers.
pub struct ConvGraph {
    /// The host-built graph; `None` for a graph built on the device.
    csr: Option<Arc<Csr>>,
    nodes: usize,
    edges: usize,
    dev: GraphDev,
    /// See [`ConvGraph::with_weight_fold`] (0: a weight row per edge).
    weight_fold: usize,
}

enum GraphDev {
    Cpu,
    #[cfg(feature = "wgpu")]
    Wgpu(Arc<equikern_wgpu::Runtime>, equikern_wgpu::WgpuGraph),
    #[cfg(feature = "cuda")]
    Cuda(equikern_cuda::CudaGraph),
}

impl ConvGraph {
    /// Validates `receiver`/`sender` and builds both CSR views (O(nodes + edges), on the CPU).
    pub fn new<I: GraphIndex>(
        device: &Device,
        nodes: usize,
        receiver: &[I],
        sender: &[I],
    ) -> Result<ConvGraph> {
        let csr = Arc::new(Csr::build(nodes, receiver, sender)?);
        Ok(Self::from_csr(device, csr))
    }

    /// A graph from an already built [`Csr`].
    pub fn from_csr(device: &Device, csr: Arc<Csr>) -> ConvGraph {
        let dev = match &device.inner {
            DeviceInner::Cpu => GraphDev::Cpu,
            #[cfg(feature = "wgpu")]
            DeviceInner::Wgpu(rt) => {
                GraphDev::Wgpu(rt.clone(), equikern_wgpu::WgpuGraph::new(csr.clone()))
            }
            #[cfg(feature = "cuda")]
            DeviceInner::Cuda(d) => GraphDev::Cuda(equikern_cuda::CudaGraph::new(d, csr.clone())),
        };
        ConvGraph {
            weight_fold: 0,
            nodes: csr.nodes,
            edges: csr.edges(),
            csr: Some(csr),
            dev,
        }
    }

    /// A graph built **on the GPU** from `u32` receiver/sender buffers already on a wgpu
    /// device (`STORAGE | COPY_SRC` usage, `edges` entries each): both CSR views are sorted
    /// and packed there ([`equikern_wgpu::Runtime::build_csr_tables`]), identical to the host
    /// builder's; an index ≥ `nodes` is [`Error::Graph`] naming the array, the smallest bad
    /// position and its value. Such a graph runs the deterministic CSR mode (not pieces).
    #[cfg(feature = "wgpu")]
    pub async fn from_wgpu_buffers_async(
        device: &Device,
        nodes: u32,
        edges: u32,
        receiver: equikern_wgpu::wgpu::Buffer,
        sender: equikern_wgpu::wgpu::Buffer,
    ) -> Result<ConvGraph> {
        let DeviceInner::Wgpu(rt) = &device.inner else {
            return Err(Error::Unsupported(format!(
                "argument device: wgpu buffers need a wgpu device, not {}",
                device.name()
            )));
        };
        let t = match rt.build_csr_tables(nodes, edges, &receiver, &sender).await {
            Err(equikern_wgpu::WgpuError::Conv(e)) => return Err(Error::Graph(e)),
            r => r?,
        };
        Ok(ConvGraph {
            weight_fold: 0,
            csr: None,
            nodes: nodes as usize,
            edges: edges as usize,
            dev: GraphDev::Wgpu(
                rt.clone(),
                equikern_wgpu::WgpuGraph::from_device(t, receiver, sender),
            ),
        })
    }

    /// Blocking [`Self::from_wgpu_buffers_async`] (native only).
    #[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
    pub fn from_wgpu_buffers(
        device: &Device,
        nodes: u32,
        edges: u32,
        receiver: equikern_wgpu::wgpu::Buffer,
        sender: equikern_wgpu::wgpu::Buffer,
    ) -> Result<ConvGraph> {
        pollster::block_on(Self::from_wgpu_buffers_async(
            device, nodes, edges, receiver, sender,
        ))
    }

    /// A graph built **on the GPU** from `u32` receiver/sender [`equikern_cuda::CudaSlice`]s
    /// on a CUDA device (`edges` entries each): both CSR views are sorted and packed there
    /// ([`equikern_cuda::CudaDevice::build_csr_tables`]), identical to the host builder's; an
    /// index ≥ `nodes` is [`Error::Graph`] naming the array, the smallest bad position and its
    /// value. Such a graph runs the deterministic CSR mode and the atomic mode (not pieces).
    #[cfg(feature = "cuda")]
    pub fn from_cuda_slices(
        device: &Device,
        nodes: u32,
        edges: u32,
        receiver: equikern_cuda::CudaSlice<u32>,
        sender: equikern_cuda::CudaSlice<u32>,
    ) -> Result<ConvGraph> {
        let DeviceInner::Cuda(d) = &device.inner else {
            return Err(Error::Unsupported(format!(
                "argument device: CUDA buffers need a CUDA device, not {}",
                device.name()
            )));
        };
        let t = match d.build_csr_tables(nodes, edges, &receiver, &sender) {
            Err(equikern_cuda::CudaError::Conv(e)) => return Err(Error::Graph(e)),
            r => r?,
        };
        Ok(ConvGraph {
            weight_fold: 0,
            csr: None,
            nodes: nodes as usize,
            edges: edges as usize,
            dev: GraphDev::Cuda(equikern_cuda::CudaGraph::from_device(
                d, t, receiver, sender,
            )),
        })
    }

    /// [`Self::from_cuda_slices`] into reused buffers: the `edges` receiver/sender indices
    /// (device views) are copied into `pool` and both CSR views built there
    /// ([`equikern_cuda::CsrPool::build`]). A structure no larger than an earlier one
    /// allocates nothing and keeps the tables' addresses. The graph shares the pool's
    /// buffers: drop it before the pool's next build (an error says so otherwise).
    #[cfg(feature = "cuda")]
    pub fn from_cuda_pool(
        device: &Device,
        pool: &mut equikern_cuda::CsrPool,
        nodes: u32,
        edges: u32,
        receiver: &equikern_cuda::cudarc::driver::CudaView<'_, u32>,
        sender: &equikern_cuda::cudarc::driver::CudaView<'_, u32>,
    ) -> Result<ConvGraph> {
        let DeviceInner::Cuda(d) = &device.inner else {
            return Err(Error::Unsupported(format!(
                "argument device: CUDA buffers need a CUDA device, not {}",
                device.name()
            )));
        };
        let g = match pool.build(d, nodes, edges, receiver, sender) {
            Err(equikern_cuda::CudaError::Conv(e)) => return Err(Error::Graph(e)),
            r => r?,
        };
        Ok(ConvGraph {
            weight_fold: 0,
            csr: None,
            nodes: nodes as usize,
            edges: edges as usize,
            dev: GraphDev::Cuda(g),
        })
    }

    /// A graph from an already built [`Csr`] whose CSR-mode index tables are already on the
    /// CUDA device (`(tensor, table)` for `RecvCsr`, `SendCsr`, `Receiver`, `Sender`; see
    /// [`equikern_cuda::CudaGraph::with_device_tables`]): callers that reuse those buffers
    /// across structures build a graph without allocating or uploading.
    ///
    /// # Safety
    /// Each table must start with exactly what `csr` gives for it ([`Csr::packed`],
    /// `csr.receiver`, `csr.sender`) and must not be written while the graph lives.
    #[cfg(feature = "cuda")]
    pub unsafe fn from_csr_with_cuda_tables(
        device: &Device,
        csr: Arc<Csr>,
        tables: Vec<(Tensor, Arc<equikern_cuda::CudaSlice<u32>>)>,
    ) -> Result<ConvGraph> {
        let DeviceInner::Cuda(d) = &device.inner else {
            return Err(Error::Unsupported(format!(
                "argument device: CUDA tables need a CUDA device, not {}",
                device.name()
            )));
        };
        // SAFETY: the caller's contract, passed on.
        let g = unsafe { equikern_cuda::CudaGraph::with_device_tables(d, csr.clone(), tables) }?;
        Ok(ConvGraph {
            weight_fold: 0,
            nodes: csr.nodes,
            edges: csr.edges(),
            csr: Some(csr),
            dev: GraphDev::Cuda(g),
        })
    }

    /// The CUDA device table of `t` (`RecvCsr`, `SendCsr`, `Receiver`, `Sender`) once it is
    /// on the device (always for graphs built there): for the caller's own kernels that walk
    /// the same CSR views. `None` on other backends or before the first upload.
    #[cfg(feature = "cuda")]
    pub fn cuda_table(&self, t: Tensor) -> Option<Arc<equikern_cuda::CudaSlice<u32>>> {
        match &self.dev {
            GraphDev::Cuda(g) => g.table(t),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn edges(&self) -> usize {
        self.edges
    }

    /// The graph with edges sharing weight rows: edge `e ≥ fold` reads row `e − fold` of the
    /// per-edge weights (`fold` ≤ edges; 0: none), e.g. a list of pairs whose second
    /// direction comes `fold` after the first and whose weights depend on the length alone
    /// (see `equikern_plan::conv::GraphSize::weight_fold`). Weight gradients keep a row per
    /// edge. CUDA graphs and channel-fused plans only.
    pub fn with_weight_fold(self, fold: usize) -> Result<Self> {
        if fold == 0 {
            return Ok(ConvGraph {
                weight_fold: 0,
                ..self
            });
        }
        match self.dev {
            #[cfg(feature = "cuda")]
            GraphDev::Cuda(g) => Ok(ConvGraph {
                dev: GraphDev::Cuda(g.with_weight_fold(fold as u64)?),
                weight_fold: fold,
                ..self
            }),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Unsupported(
                "weight_fold: shared weight rows run on CUDA graphs only".into(),
            )),
        }
    }

    /// See [`Self::with_weight_fold`].
    pub fn weight_fold(&self) -> usize {
        self.weight_fold
    }

    /// Rows of per-edge weights on this graph: the edge count, or with a weight fold `f`
    /// `max(f, edges − f)`.
    pub fn weight_rows(&self) -> usize {
        equikern_plan::conv::weight_rows(self.edges as u64, self.weight_fold as u64) as usize
    }

    /// The validated indices and both CSR views, when the graph was built on the host.
    pub fn csr(&self) -> Option<&Arc<Csr>> {
        self.csr.as_ref()
    }

    /// The graph's sizes for a convolution plan (piece counts need a host-built graph).
    pub fn graph_size(&self, plan: &KernelPlan) -> Result<equikern_plan::conv::GraphSize> {
        if let Some(c) = &self.csr {
            return Ok(equikern_plan::conv::GraphSize {
                weight_fold: self.weight_fold as u64,
                ..plan.graph_size(c)
            });
        }
        match &self.dev {
            #[cfg(feature = "wgpu")]
            GraphDev::Wgpu(_, g) => Ok(g.graph_size(plan)?),
            #[cfg(feature = "cuda")]
            GraphDev::Cuda(g) => Ok(g.graph_size(plan)?),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Unsupported("graph has no host CSR".into())),
        }
    }

    fn host_csr(&self) -> Result<&Csr> {
        self.csr.as_deref().ok_or_else(|| {
            Error::Unsupported("argument graph: built on the device, it has no host CSR".into())
        })
    }

    /// Bytes of index tables held on the device so far (0 on the CPU).
    pub fn device_table_bytes(&self) -> u64 {
        match &self.dev {
            GraphDev::Cpu => 0,
            #[cfg(feature = "wgpu")]
            GraphDev::Wgpu(_, g) => g.table_bytes(),
            #[cfg(feature = "cuda")]
            GraphDev::Cuda(g) => g.table_bytes(),
        }
    }

    fn backend_name(&self) -> &'static str {
        match &self.dev {
            GraphDev::Cpu => "cpu",
            #[cfg(feature = "wgpu")]
            GraphDev::Wgpu(..) => "wgpu",
            #[cfg(feature = "cuda")]
            GraphDev::Cuda(_) => "cuda",
        }
    }
}

impl std::fmt::Debug for ConvGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvGraph")
            .field("nodes", &self.nodes())
            .field("edges", &self.edges())
            .field("backend", &self.backend_name())
            .finish()
    }
}

/// A fused graph convolution with one tensor product, ready to run on a [`Device`].
///
/// Layouts (row-major, flat): `x [nodes, dim_in1]`, `y [edges, dim_in2]`, `w [edges,
/// weight_numel]` (or `[weight_numel]` with shared weights), `z [nodes, dim_out]`; gradients
/// and tangents are shaped as their primal. Edges are in the caller's order (sorting is not
/// needed). Kernels are lowered and compiled on first use of each direction and cached.
pub struct ConvOp {
    tp: Arc<TensorProduct>,
    device: Device,
    opts: ConvOptions,
    /// Deterministic CSR mode that switches to pieces on graphs with a hub (see
    /// [`ConvOp::with_auto_pieces`]).
    auto_pieces: bool,
    /// Lowering options (channel fusion of a qualifying backward; on by default).
    lower: LowerOptions,
    exec: Exec,
}

/// A node range longer than this many edges makes the deterministic CSR mode a long serial
/// chain for one thread; such graphs run in pieces of [`AUTO_PIECE_EDGES`] instead. Measured
/// on the H100 (BENCHMARKS.md v0.2): a 135 k-edge hub, nequip-water forward 53 ms → 1.5 ms;
/// graphs with ranges of ~100 edges stay faster without pieces (protein 0.112 vs 0.145 ms).
pub const AUTO_PIECES_RANGE: usize = 512;
/// Piece length when [`AUTO_PIECES_RANGE`] is exceeded.
pub const AUTO_PIECE_EDGES: u32 = 64;

/// Compiled plans by (direction slot, max_piece_edges).
#[cfg(feature = "wgpu")]
type WgpuPlans = BTreeMap<(usize, Option<u32>), Arc<equikern_wgpu::CompiledPlan>>;
/// Loaded plans by (direction slot, f64, max_piece_edges).
#[cfg(feature = "cuda")]
type CudaPlans = BTreeMap<(usize, bool, Option<u32>), Arc<equikern_cuda::CudaConvPlan>>;

enum Exec {
    Cpu(Box<ConvOracle<f64>>),
    #[cfg(feature = "wgpu")]
    Wgpu(Mutex<WgpuPlans>),
    #[cfg(feature = "cuda")]
    Cuda(Mutex<CudaPlans>),
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn slot(d: Direction) -> usize {
    match d {
        Direction::Forward => 0,
        Direction::Backward => 1,
        Direction::DoubleBackward => 2,
    }
}

fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| *x as f64).collect()
}

fn f32v(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

impl ConvOp {
    /// The deterministic convolution of `spec` on `device`, with automatic pieces on graphs
    /// with a hub ([`Self::with_auto_pieces`]).
    pub fn new(spec: &TpSpec, device: &Device) -> Result<Self> {
        Ok(Self::with_options(spec, device, ConvOptions::default())?.with_auto_pieces(true))
    }

    /// With `on` and the default options, a host-built graph whose longest node range (either
    /// CSR view) exceeds [`AUTO_PIECES_RANGE`] edges runs in pieces of [`AUTO_PIECE_EDGES`]
    /// (still deterministic: a fixed two-level order); other graphs, and explicit options,
    /// run as asked.
    pub fn with_auto_pieces(mut self, on: bool) -> Self {
        self.auto_pieces = on;
        self
    }

    /// With `on` (the default) a deterministic forward or backward of a product that qualifies
    /// (every path `uvu`: NequIP, MACE, and `x` blocks of different multiplicities: SevenNet)
    /// runs as one channel-fused kernel over the receiver (forward) or sender view
    /// (backward); off: the row kernels (for A/B measurements). Set before the first call.
    pub fn with_channel_fusion(mut self, on: bool) -> Self {
        self.lower.channel_fusion = on;
        self
    }

    /// The fused forward's output grouping: the register budget of one invocation's
    /// accumulators (`LowerOptions::conv_forward_regs`; `None`: the plan's default,
    /// `Some(u32::MAX)`: one group). For A/B measurements and tests; set before the first call.
    pub fn with_conv_forward_regs(mut self, regs: Option<u32>) -> Self {
        self.lower.conv_forward_regs = regs;
        self
    }

    /// The fused backward of `x` blocks of different multiplicities (SevenNet): balanced
    /// lane groups (on; measured slower on the H100, see `LowerOptions::
    /// conv_backward_lanes`) or one lane per channel (off, the default). For A/B measurements and tests; set before the first call.
    pub fn with_conv_backward_lanes(mut self, on: bool) -> Self {
        self.lower.conv_backward_lanes = on;
        self
    }

    /// The options a call on `g` runs with.
    pub fn options_for(&self, g: &ConvGraph) -> ConvOptions {
        let default = self.opts == ConvOptions::default();
        match (&g.csr, self.auto_pieces && default) {
            (Some(csr), true) if max_range(csr) > AUTO_PIECES_RANGE => ConvOptions {
                atomic: false,
                max_piece_edges: Some(AUTO_PIECE_EDGES),
            },
            _ => self.opts,
        }
    }

    /// With explicit options: `atomic` (float atomic adds; needs a device with float atomics,
    /// i.e. CUDA) or `max_piece_edges` (deterministic, hub ranges cut into pieces).
    pub fn with_options(spec: &TpSpec, device: &Device, opts: ConvOptions) -> Result<Self> {
        Self::from_tensor_product(spec.build()?, device, opts)
    }

    /// Bind an already built tensor product.
    pub fn from_tensor_product(
        tp: TensorProduct,
        device: &Device,
        opts: ConvOptions,
    ) -> Result<Self> {
        if opts.atomic && opts.max_piece_edges.is_some() {
            return Err(Error::Unsupported(
                "conv options: max_piece_edges applies to the deterministic convolution, not the atomic one".into(),
            ));
        }
        if opts.max_piece_edges == Some(0) {
            return Err(Error::Unsupported(
                "conv options: max_piece_edges must be at least 1".into(),
            ));
        }
        // The WGSL writer has no float atomic add (WGSL offers none), whatever the adapter.
        let atomics = device.backend() != crate::Backend::Wgpu
            && device.capabilities().is_some_and(|c| c.float_atomics);
        if opts.atomic && !atomics {
            return Err(Error::Unsupported(format!(
                "conv options: atomic needs float atomics, which {} lacks (use the default deterministic mode)",
                device.name()
            )));
        }
        let exec = match &device.inner {
            DeviceInner::Cpu => Exec::Cpu(Box::new(ConvOracle::new(&tp).map_err(Error::Graph)?)),
            #[cfg(feature = "wgpu")]
            DeviceInner::Wgpu(_) => Exec::Wgpu(Mutex::new(BTreeMap::new())),
            #[cfg(feature = "cuda")]
            DeviceInner::Cuda(_) => Exec::Cuda(Mutex::new(BTreeMap::new())),
        };
        Ok(ConvOp {
            tp: Arc::new(tp),
            device: device.clone(),
            opts,
            auto_pieces: false,
            lower: LowerOptions::default(),
            exec,
        })
    }

    pub fn tensor_product(&self) -> &TensorProduct {
        &self.tp
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn options(&self) -> ConvOptions {
        self.opts
    }

    pub fn dim_in1(&self) -> usize {
        self.tp.dim_in1
    }

    pub fn dim_in2(&self) -> usize {
        self.tp.dim_in2
    }

    pub fn dim_out(&self) -> usize {
        self.tp.dim_out
    }

    pub fn weight_numel(&self) -> usize {
        self.tp.weight_numel
    }

    pub fn shared_weights(&self) -> bool {
        self.tp.spec.shared_weights
    }

    /// Expected length of a weight-shaped argument for a graph of `edges` edges.
    pub fn weight_len(&self, edges: usize) -> Option<usize> {
        if self.shared_weights() {
            Some(self.tp.weight_numel)
        } else {
            edges.checked_mul(self.tp.weight_numel)
        }
    }

    /// Whether this convolution's forward and backward in `dtype` (CSR and pieces alike) run
    /// on graphs whose edges share weight rows ([`ConvGraph::with_weight_fold`]): every
    /// kernel reading per-edge weights is channel-fused. `false` on the CPU oracle.
    pub fn folds_weights(&self, dtype: Dtype) -> bool {
        let Some(caps) = self.device.capabilities() else {
            return false;
        };
        let pieces = ConvOptions {
            max_piece_edges: Some(AUTO_PIECE_EDGES),
            ..self.opts
        };
        [Direction::Forward, Direction::Backward]
            .into_iter()
            .flat_map(|d| [(d, self.opts), (d, pieces)])
            .all(|(d, o)| {
                lower_conv_with(&self.tp, d, dtype, &caps, o, self.lower)
                    .is_ok_and(|p| p.folds_weights())
            })
    }

    /// The plan of one direction in `dtype` for this device (lowered, not cached).
    pub fn plan(&self, direction: Direction, dtype: Dtype) -> Result<KernelPlan> {
        let caps = self
            .device
            .capabilities()
            .ok_or_else(|| Error::Unsupported("the CPU oracle runs no kernel plan".into()))?;
        Ok(lower_conv_with(
            &self.tp, direction, dtype, &caps, self.opts, self.lower,
        )?)
    }

    /// Expected length of tensor `t` (x, y, w, z and their gradients/tangents) on `g`.
    fn len_of(&self, t: Tensor, g: &ConvGraph) -> Result<usize> {
        let (n, e) = (g.nodes(), g.edges());
        use Tensor::*;
        let (rows, per, what) = match t {
            X | GX | HX | DX => (n, self.tp.dim_in1, "nodes × dim_in1"),
            Z | GZ | DGZ => (n, self.tp.dim_out, "nodes × dim_out"),
            Y | GY | HY | DY => (e, self.tp.dim_in2, "edges × dim_in2"),
            _ if self.shared_weights() => (1, self.tp.weight_numel, "shared weights: weight_numel"),
            // (edges sharing weight rows: see ConvGraph::with_weight_fold)
            W | HW => (
                g.weight_rows(),
                self.tp.weight_numel,
                "weight rows × weight_numel",
            ),
            _ => (e, self.tp.weight_numel, "edges × weight_numel"),
        };
        rows.checked_mul(per)
            .ok_or_else(|| Error::Batch(format!("{what} = {rows} × {per} overflows usize")))
    }

    fn why(&self, t: Tensor, g: &ConvGraph) -> String {
        use Tensor::*;
        let (n, e) = (g.nodes(), g.edges());
        match t {
            X | GX | HX | DX => format!("nodes {n} × dim_in1 {}", self.tp.dim_in1),
            Z | GZ | DGZ => format!("nodes {n} × dim_out {}", self.tp.dim_out),
            Y | GY | HY | DY => format!("edges {e} × dim_in2 {}", self.tp.dim_in2),
            _ if self.shared_weights() => "shared weights: weight_numel".into(),
            W | HW if g.weight_fold() > 0 => format!(
                "weight rows {} (edges {e}, weight fold {}) × weight_numel {}",
                g.weight_rows(),
                g.weight_fold(),
                self.tp.weight_numel
            ),
            _ => format!("edges {e} × weight_numel {}", self.tp.weight_numel),
        }
    }

    fn check_len(&self, arg: &'static str, t: Tensor, actual: usize, g: &ConvGraph) -> Result<()> {
        let expected = self.len_of(t, g)?;
        if actual != expected {
            return Err(Error::Length {
                arg,
                expected,
                actual,
                why: self.why(t, g),
            });
        }
        Ok(())
    }

    fn check_graph(&self, g: &ConvGraph) -> Result<()> {
        let ok = matches!((&self.exec, &g.dev), (Exec::Cpu(_), GraphDev::Cpu));
        #[cfg(feature = "wgpu")]
        let ok = ok || matches!((&self.exec, &g.dev), (Exec::Wgpu(_), GraphDev::Wgpu(..)));
        #[cfg(feature = "cuda")]
        let ok = ok || matches!((&self.exec, &g.dev), (Exec::Cuda(_), GraphDev::Cuda(_)));
        if !ok {
            return Err(Error::Unsupported(format!(
                "argument graph: made for backend {}, but this convolution runs on {}",
                g.backend_name(),
                self.device.name()
            )));
        }
        Ok(())
    }

    /// Names and tensors of a direction's host inputs, checked against the graph.
    fn check_inputs<T>(&self, g: &ConvGraph, a: &[(&'static str, Tensor, &[T])]) -> Result<()> {
        self.check_graph(g)?;
        for (arg, t, v) in a {
            self.check_len(arg, *t, v.len(), g)?;
        }
        Ok(())
    }

    async fn host_f32(
        &self,
        d: Direction,
        g: &ConvGraph,
        a: &[(&'static str, Tensor, &[f32])],
    ) -> Result<BTreeMap<Tensor, Vec<f32>>> {
        self.check_inputs(g, a)?;
        match &self.exec {
            Exec::Cpu(o) => {
                let m: BTreeMap<Tensor, Vec<f64>> =
                    a.iter().map(|(_, t, v)| (*t, f64v(v))).collect();
                Ok(cpu_run(o, d, g.host_csr()?, &m)?
                    .into_iter()
                    .map(|(t, v)| (t, f32v(v)))
                    .collect())
            }
            #[cfg(feature = "wgpu")]
            Exec::Wgpu(_) => {
                let GraphDev::Wgpu(rt, wg) = &g.dev else {
                    return Err(Error::Unsupported("graph is not on this device".into()));
                };
                let c = self.wgpu_plan(rt, d, self.options_for(g)).await?;
                let plan = c.plan();
                let gs = wg.graph_size(plan)?;
                plan.check_graph(&gs)?;
                let mut bufs = vec![];
                for t in equikern_wgpu::conv_inputs(plan) {
                    let v = a
                        .iter()
                        .find(|(_, u, _)| *u == t)
                        .ok_or(equikern_plan::PlanError::MissingInput(t))?;
                    bufs.push((t, rt.upload(&format!("{t:?}"), v.2)));
                }
                let outs = equikern_wgpu::conv_outputs(plan);
                for &t in &outs {
                    let n = plan.conv_buffer_len(t, &gs);
                    bufs.push((t, rt.create_storage(&format!("{t:?}"), n)));
                }
                let tb: Vec<equikern_wgpu::TensorBuffer> = bufs
                    .iter()
                    .map(|(t, b)| equikern_wgpu::TensorBuffer::new(*t, b))
                    .collect();
                rt.dispatch_conv(&c, wg, &tb)?;
                let mut res = BTreeMap::new();
                for (t, b) in &bufs {
                    if outs.contains(t) {
                        let n = plan.conv_buffer_len(*t, &gs);
                        res.insert(*t, rt.read_f32(b, 0, n).await?);
                    }
                }
                Ok(res)
            }
            #[cfg(feature = "cuda")]
            Exec::Cuda(_) => self.cuda_host(d, g, a),
        }
    }

    fn host_f64(
        &self,
        d: Direction,
        g: &ConvGraph,
        a: &[(&'static str, Tensor, &[f64])],
    ) -> Result<BTreeMap<Tensor, Vec<f64>>> {
        self.check_inputs(g, a)?;
        match &self.exec {
            Exec::Cpu(o) => {
                let m: BTreeMap<Tensor, Vec<f64>> =
                    a.iter().map(|(_, t, v)| (*t, v.to_vec())).collect();
                cpu_run(o, d, g.host_csr()?, &m)
            }
            #[cfg(feature = "cuda")]
            Exec::Cuda(_) => self.cuda_host(d, g, a),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Unsupported(format!(
                "f64 needs a CUDA device or the CPU oracle; this convolution runs on {} (f32 only)",
                self.device.name()
            ))),
        }
    }

    /// `z [nodes, dim_out]`.
    pub async fn forward_async(
        &self,
        g: &ConvGraph,
        x: &[f32],
        y: &[f32],
        w: &[f32],
    ) -> Result<Vec<f32>> {
        use Tensor::*;
        let mut o = self
            .host_f32(
                Direction::Forward,
                g,
                &[("x", X, x), ("y", Y, y), ("w", W, w)],
            )
            .await?;
        Ok(o.remove(&Z).unwrap_or_default())
    }

    /// Gradients of `<grad_z, z>` w.r.t. x, y and w.
    pub async fn backward_async(
        &self,
        g: &ConvGraph,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        grad_z: &[f32],
    ) -> Result<Grads<f32>> {
        use Tensor::*;
        let o = self
            .host_f32(
                Direction::Backward,
                g,
                &[
                    ("x", X, x),
                    ("y", Y, y),
                    ("w", W, w),
                    ("grad_z", GZ, grad_z),
                ],
            )
            .await?;
        Ok(grads(o, self.weight_len(g.edges()).unwrap_or(0)))
    }

    /// Gradients of `S = <gx,hx> + <gy,hy> + <gw,hw>` (the backward outputs against tangents
    /// `hx, hy, hw`) w.r.t. x, y, w and grad_z.
    #[allow(clippy::too_many_arguments)]
    pub async fn double_backward_async(
        &self,
        g: &ConvGraph,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        grad_z: &[f32],
        hx: &[f32],
        hy: &[f32],
        hw: &[f32],
    ) -> Result<DoubleGrads<f32>> {
        let o = self
            .host_f32(
                Direction::DoubleBackward,
                g,
                &dbl_args(x, y, w, grad_z, hx, hy, hw),
            )
            .await?;
        Ok(double_grads(o, self.weight_len(g.edges()).unwrap_or(0)))
    }

    /// Blocking [`Self::forward_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward(&self, g: &ConvGraph, x: &[f32], y: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_async(g, x, y, w))
    }

    /// Blocking [`Self::backward_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward(
        &self,
        g: &ConvGraph,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        grad_z: &[f32],
    ) -> Result<Grads<f32>> {
        pollster::block_on(self.backward_async(g, x, y, w, grad_z))
    }

    /// Blocking [`Self::double_backward_async`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn double_backward(
        &self,
        g: &ConvGraph,
        x: &[f32],
        y: &[f32],
        w: &[f32],
        grad_z: &[f32],
        hx: &[f32],
        hy: &[f32],
        hw: &[f32],
    ) -> Result<DoubleGrads<f32>> {
        pollster::block_on(self.double_backward_async(g, x, y, w, grad_z, hx, hy, hw))
    }

    /// [`Self::forward`] computing in f64 (CUDA or the CPU oracle).
    pub fn forward_f64(&self, g: &ConvGraph, x: &[f64], y: &[f64], w: &[f64]) -> Result<Vec<f64>> {
        use Tensor::*;
        let mut o = self.host_f64(
            Direction::Forward,
            g,
            &[("x", X, x), ("y", Y, y), ("w", W, w)],
        )?;
        Ok(o.remove(&Z).unwrap_or_default())
    }

    /// [`Self::backward`] computing in f64 (CUDA or the CPU oracle).
    pub fn backward_f64(
        &self,
        g: &ConvGraph,
        x: &[f64],
        y: &[f64],
        w: &[f64],
        grad_z: &[f64],
    ) -> Result<Grads<f64>> {
        use Tensor::*;
        let o = self.host_f64(
            Direction::Backward,
            g,
            &[
                ("x", X, x),
                ("y", Y, y),
                ("w", W, w),
                ("grad_z", GZ, grad_z),
            ],
        )?;
        Ok(grads(o, self.weight_len(g.edges()).unwrap_or(0)))
    }

    /// [`Self::double_backward`] computing in f64 (CUDA or the CPU oracle).
    #[allow(clippy::too_many_arguments)]
    pub fn double_backward_f64(
        &self,
        g: &ConvGraph,
        x: &[f64],
        y: &[f64],
        w: &[f64],
        grad_z: &[f64],
        hx: &[f64],
        hy: &[f64],
        hw: &[f64],
    ) -> Result<DoubleGrads<f64>> {
        let o = self.host_f64(
            Direction::DoubleBackward,
            g,
            &dbl_args(x, y, w, grad_z, hx, hy, hw),
        )?;
        Ok(double_grads(o, self.weight_len(g.edges()).unwrap_or(0)))
    }

    #[cfg(feature = "wgpu")]
    async fn wgpu_plan(
        &self,
        rt: &equikern_wgpu::Runtime,
        d: Direction,
        opts: ConvOptions,
    ) -> Result<Arc<equikern_wgpu::CompiledPlan>> {
        let Exec::Wgpu(slots) = &self.exec else {
            return Err(Error::Unsupported("not a wgpu convolution".into()));
        };
        let key = (slot(d), opts.max_piece_edges);
        let lock = || slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = lock().get(&key).cloned() {
            return Ok(c);
        }
        let plan = lower_conv_with(
            &self.tp,
            d,
            Dtype::F32,
            &rt.capabilities(),
            opts,
            self.lower,
        )?;
        let c = rt.prepare(&plan).await?;
        lock().insert(key, c.clone());
        Ok(c)
    }

    /// The compiled wgpu plan of one direction (for inspection and timing).
    #[cfg(feature = "wgpu")]
    pub async fn wgpu_compiled_async(
        &self,
        d: Direction,
    ) -> Result<Arc<equikern_wgpu::CompiledPlan>> {
        let rt = self.device.wgpu_runtime().ok_or_else(|| {
            Error::Unsupported(format!(
                "device buffers need a wgpu device; this convolution runs on {}",
                self.device.name()
            ))
        })?;
        self.wgpu_plan(rt, d, self.opts).await
    }

    /// Encodes one direction on wgpu device buffers into `encoder` (nothing is submitted):
    /// `buffers` pairs each plan tensor (X, Y, W, GZ, HX, HY, HW in; Z, GX, GY, GW, DX, DY,
    /// DW, DGZ out, as the direction needs) with a buffer of at least its length.
    #[cfg(feature = "wgpu")]
    pub async fn encode_buffers_async(
        &self,
        d: Direction,
        g: &ConvGraph,
        buffers: &[(Tensor, &equikern_wgpu::wgpu::Buffer)],
        encoder: &mut equikern_wgpu::wgpu::CommandEncoder,
    ) -> Result<()> {
        self.check_graph(g)?;
        let GraphDev::Wgpu(rt, wg) = &g.dev else {
            return Err(Error::Unsupported("graph is not on a wgpu device".into()));
        };
        for (t, b) in buffers {
            let want = self.len_of(*t, g)? as u64 * 4;
            if b.size() < want {
                return Err(Error::Length {
                    arg: tensor_arg(*t),
                    expected: want as usize,
                    actual: b.size() as usize,
                    why: format!("bytes: {} × 4", self.why(*t, g)),
                });
            }
        }
        let c = self.wgpu_plan(rt, d, self.options_for(g)).await?;
        let tb: Vec<equikern_wgpu::TensorBuffer> = buffers
            .iter()
            .map(|(t, b)| equikern_wgpu::TensorBuffer::new(*t, b))
            .collect();
        rt.encode_conv(&c, wg, &tb, encoder)?;
        Ok(())
    }

    /// Runs one direction on wgpu device buffers (see [`Self::encode_buffers_async`]) and
    /// submits; returns without waiting for the GPU.
    #[cfg(feature = "wgpu")]
    pub async fn run_buffers_async(
        &self,
        d: Direction,
        g: &ConvGraph,
        buffers: &[(Tensor, &equikern_wgpu::wgpu::Buffer)],
    ) -> Result<()> {
        let rt = self
            .device
            .wgpu_runtime()
            .ok_or_else(|| Error::Unsupported("not a wgpu device".into()))?;
        let mut enc =
            rt.device()
                .create_command_encoder(&equikern_wgpu::wgpu::CommandEncoderDescriptor {
                    label: Some("equikern conv"),
                });
        self.encode_buffers_async(d, g, buffers, &mut enc).await?;
        rt.queue().submit([enc.finish()]);
        Ok(())
    }

    /// `z = conv(x, y, w)` on wgpu device buffers.
    #[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
    pub fn forward_buffers(
        &self,
        g: &ConvGraph,
        x: &equikern_wgpu::wgpu::Buffer,
        y: &equikern_wgpu::wgpu::Buffer,
        w: &equikern_wgpu::wgpu::Buffer,
        z: &equikern_wgpu::wgpu::Buffer,
    ) -> Result<()> {
        use Tensor::*;
        pollster::block_on(self.run_buffers_async(
            Direction::Forward,
            g,
            &[(X, x), (Y, y), (W, w), (Z, z)],
        ))
    }

    /// Backward on wgpu device buffers: writes `gx`, `gy`, `gw`.
    #[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
    #[allow(clippy::too_many_arguments)]
    pub fn backward_buffers(
        &self,
        g: &ConvGraph,
        x: &equikern_wgpu::wgpu::Buffer,
        y: &equikern_wgpu::wgpu::Buffer,
        w: &equikern_wgpu::wgpu::Buffer,
        grad_z: &equikern_wgpu::wgpu::Buffer,
        gx: &equikern_wgpu::wgpu::Buffer,
        gy: &equikern_wgpu::wgpu::Buffer,
        gw: &equikern_wgpu::wgpu::Buffer,
    ) -> Result<()> {
        use Tensor::*;
        pollster::block_on(self.run_buffers_async(
            Direction::Backward,
            g,
            &[
                (X, x),
                (Y, y),
                (W, w),
                (GZ, grad_z),
                (GX, gx),
                (GY, gy),
                (GW, gw),
            ],
        ))
    }

    /// Double backward on wgpu device buffers: `inputs = [x, y, w, grad_z, hx, hy, hw]`,
    /// `outputs = [dx, dy, dw, dgz]`.
    #[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
    pub fn double_backward_buffers(
        &self,
        g: &ConvGraph,
        inputs: [&equikern_wgpu::wgpu::Buffer; 7],
        outputs: [&equikern_wgpu::wgpu::Buffer; 4],
    ) -> Result<()> {
        use Tensor::*;
        let b: Vec<(Tensor, &equikern_wgpu::wgpu::Buffer)> =
            [X, Y, W, GZ, HX, HY, HW, DX, DY, DW, DGZ]
                .into_iter()
                .zip(inputs.into_iter().chain(outputs))
                .collect();
        pollster::block_on(self.run_buffers_async(Direction::DoubleBackward, g, &b))
    }
}

/// The argument name of a tensor in error messages.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn tensor_arg(t: Tensor) -> &'static str {
    use Tensor::*;
    match t {
        X => "x",
        Y => "y",
        W => "w",
        Z => "z",
        GZ => "grad_z",
        GX => "gx",
        GY => "gy",
        GW => "gw",
        HX => "hx",
        HY => "hy",
        HW => "hw",
        DX => "dx",
        DY => "dy",
        DW => "dw",
        DGZ => "dgz",
        _ => "buffer",
    }
}

#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn dbl_args<'a, T>(
    x: &'a [T],
    y: &'a [T],
    w: &'a [T],
    gz: &'a [T],
    hx: &'a [T],
    hy: &'a [T],
    hw: &'a [T],
) -> [(&'static str, Tensor, &'a [T]); 7] {
    use Tensor::*;
    [
        ("x", X, x),
        ("y", Y, y),
        ("w", W, w),
        ("grad_z", GZ, gz),
        ("hx", HX, hx),
        ("hy", HY, hy),
        ("hw", HW, hw),
    ]
}

/// Weight gradients of a weightless product are empty; anything else absent is zeros.
fn take<T: Clone + Default>(o: &mut BTreeMap<Tensor, Vec<T>>, t: Tensor, len: usize) -> Vec<T> {
    o.remove(&t).unwrap_or_else(|| vec![T::default(); len])
}

fn grads<T: Clone + Default>(mut o: BTreeMap<Tensor, Vec<T>>, wl: usize) -> Grads<T> {
    Grads {
        gx: o.remove(&Tensor::GX).unwrap_or_default(),
        gy: o.remove(&Tensor::GY).unwrap_or_default(),
        gw: take(&mut o, Tensor::GW, wl),
    }
}

fn double_grads<T: Clone + Default>(mut o: BTreeMap<Tensor, Vec<T>>, wl: usize) -> DoubleGrads<T> {
    DoubleGrads {
        dx: o.remove(&Tensor::DX).unwrap_or_default(),
        dy: o.remove(&Tensor::DY).unwrap_or_default(),
        dw: take(&mut o, Tensor::DW, wl),
        dgz: o.remove(&Tensor::DGZ).unwrap_or_default(),
    }
}

fn cpu_run(
    o: &ConvOracle<f64>,
    d: Direction,
    g: &Csr,
    m: &BTreeMap<Tensor, Vec<f64>>,
) -> Result<BTreeMap<Tensor, Vec<f64>>> {
    use Tensor::*;
    let v = |t: Tensor| m.get(&t).map(|x| &x[..]).unwrap_or(&[]);
    let mut out = BTreeMap::new();
    match d {
        Direction::Forward => {
            out.insert(Z, o.forward(g, v(X), v(Y), v(W))?);
        }
        Direction::Backward => {
            let r = o.backward(g, v(X), v(Y), v(W), v(GZ))?;
            out.insert(GX, r.gx);
            out.insert(GY, r.gy);
            out.insert(GW, r.gw);
        }
        Direction::DoubleBackward => {
            let r = o.double_backward(g, v(X), v(Y), v(W), v(GZ), v(HX), v(HY), v(HW))?;
            out.insert(DX, r.dx);
            out.insert(DY, r.dy);
            out.insert(DW, r.dw);
            out.insert(DGZ, r.dgz);
        }
    }
    Ok(out)
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use equikern_cuda::{CudaConvPlan, CudaSlice, Real};

    impl ConvOp {
        /// The CUDA plan of one direction in `dtype` with the op's own options (emitted and
        /// loaded once, cached).
        pub fn cuda_plan(&self, d: Direction, dtype: Dtype) -> Result<Arc<CudaConvPlan>> {
            self.cuda_plan_with(d, dtype, self.opts)
        }

        fn cuda_plan_with(
            &self,
            d: Direction,
            dtype: Dtype,
            opts: ConvOptions,
        ) -> Result<Arc<CudaConvPlan>> {
            let Exec::Cuda(plans) = &self.exec else {
                return Err(Error::Unsupported(format!(
                    "CUDA buffers need a CUDA device; this convolution runs on {}",
                    self.device.name()
                )));
            };
            let dev = self
                .device
                .cuda_device()
                .ok_or_else(|| Error::Unsupported("not a CUDA device".into()))?;
            let key = (slot(d), dtype == Dtype::F64, opts.max_piece_edges);
            let lock = || plans.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = lock().get(&key) {
                return Ok(p.clone());
            }
            let plan = lower_conv_with(&self.tp, d, dtype, &dev.capabilities(), opts, self.lower)?;
            let p = Arc::new(CudaConvPlan::new(dev, plan)?);
            lock().insert(key, p.clone());
            Ok(p)
        }

        pub(super) fn cuda_host<T: Real>(
            &self,
            d: Direction,
            g: &ConvGraph,
            a: &[(&'static str, Tensor, &[T])],
        ) -> Result<BTreeMap<Tensor, Vec<T>>> {
            let GraphDev::Cuda(cg) = &g.dev else {
                return Err(Error::Unsupported("graph is not on a CUDA device".into()));
            };
            let p = self.cuda_plan_with(d, T::DTYPE, self.options_for(g))?;
            let gs = cg.graph_size(p.plan())?;
            p.plan().check_graph(&gs)?;
            let m: BTreeMap<Tensor, Vec<T>> = a
                .iter()
                .filter(|(_, t, _)| p.inputs().contains(t))
                .map(|(_, t, v)| (*t, v.to_vec()))
                .collect();
            Ok(p.run_host(cg, &m)?)
        }

        /// Runs one direction on CUDA buffers (`inputs`/`outputs` pair plan tensors with
        /// buffers of at least their length, checked). Launches go to the device's stream and
        /// return without waiting. Outputs the atomic mode adds into are zeroed first.
        pub fn run_cuda<T: Real>(
            &self,
            d: Direction,
            g: &ConvGraph,
            inputs: &[(Tensor, &CudaSlice<T>)],
            outputs: &mut [(Tensor, &mut CudaSlice<T>)],
        ) -> Result<()> {
            self.check_graph(g)?;
            let GraphDev::Cuda(cg) = &g.dev else {
                return Err(Error::Unsupported("graph is not on a CUDA device".into()));
            };
            for (t, b) in inputs {
                self.check_min(*t, b.len(), g)?;
            }
            for (t, b) in outputs.iter() {
                self.check_min(*t, b.len(), g)?;
            }
            let p = self.cuda_plan_with(d, T::DTYPE, self.options_for(g))?;
            Ok(p.run_device(cg, inputs, outputs)?)
        }

        fn check_min(&self, t: Tensor, actual: usize, g: &ConvGraph) -> Result<()> {
            let expected = self.len_of(t, g)?;
            if actual < expected {
                return Err(Error::Length {
                    arg: tensor_arg(t),
                    expected,
                    actual,
                    why: format!("at least {}", self.why(t, g)),
                });
            }
            Ok(())
        }

        /// `z = conv(x, y, w)` on CUDA buffers.
        pub fn forward_cuda<T: Real>(
            &self,
            g: &ConvGraph,
            x: &CudaSlice<T>,
            y: &CudaSlice<T>,
            w: &CudaSlice<T>,
            z: &mut CudaSlice<T>,
        ) -> Result<()> {
            use Tensor::*;
            self.run_cuda(
                Direction::Forward,
                g,
                &[(X, x), (Y, y), (W, w)],
                &mut [(Z, z)],
            )
        }

        /// Backward on CUDA buffers: writes `gx`, `gy`, `gw`.
        #[allow(clippy::too_many_arguments)]
        pub fn backward_cuda<T: Real>(
            &self,
            g: &ConvGraph,
            x: &CudaSlice<T>,
            y: &CudaSlice<T>,
            w: &CudaSlice<T>,
            grad_z: &CudaSlice<T>,
            gx: &mut CudaSlice<T>,
            gy: &mut CudaSlice<T>,
            gw: &mut CudaSlice<T>,
        ) -> Result<()> {
            use Tensor::*;
            self.run_cuda(
                Direction::Backward,
                g,
                &[(X, x), (Y, y), (W, w), (GZ, grad_z)],
                &mut [(GX, gx), (GY, gy), (GW, gw)],
            )
        }

        /// Double backward on CUDA buffers: `inputs = [x, y, w, grad_z, hx, hy, hw]`,
        /// `outputs = [dx, dy, dw, dgz]`.
        pub fn double_backward_cuda<T: Real>(
            &self,
            g: &ConvGraph,
            inputs: [&CudaSlice<T>; 7],
            outputs: [&mut CudaSlice<T>; 4],
        ) -> Result<()> {
            use Tensor::*;
            let ins: Vec<(Tensor, &CudaSlice<T>)> =
                [X, Y, W, GZ, HX, HY, HW].into_iter().zip(inputs).collect();
            let mut outs: Vec<(Tensor, &mut CudaSlice<T>)> =
                [DX, DY, DW, DGZ].into_iter().zip(outputs).collect();
            self.run_cuda(Direction::DoubleBackward, g, &ins, &mut outs)
        }
    }
}

impl std::fmt::Debug for ConvOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvOp")
            .field("dim_in1", &self.tp.dim_in1)
            .field("dim_in2", &self.tp.dim_in2)
            .field("dim_out", &self.tp.dim_out)
            .field("weight_numel", &self.tp.weight_numel)
            .field("shared_weights", &self.tp.spec.shared_weights)
            .field("options", &self.opts)
            .field("device", &self.device)
            .finish()
    }
}

/// Longest node range (edges into one node, or out of one node) of a graph.
fn max_range(csr: &Csr) -> usize {
    let longest = |o: &[u32]| {
        o.windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    };
    longest(&csr.recv_offsets).max(longest(&csr.send_offsets))
}
