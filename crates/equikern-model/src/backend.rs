//! Where the model's operations run: the [`Backend`] trait and its implementations.
//!
//! The model ([`SevenNet`]) is written once, generically, against [`Backend<T>`]; a backend
//! supplies the operations of one evaluation in precision `T`:
//!
//! * `graph` — the edge set of one structure, prepared once per structure and reused by every
//!   layer, forward and backward (on a GPU: [`equikern::ConvGraph`], index tables uploaded
//!   once);
//! * `edge_sh` — the edge spherical harmonics, prepared once per structure (on a GPU: uploaded
//!   once) and read by every layer;
//! * `conv_forward` / `conv_backward` — the fused convolution of interaction layer `t`,
//!   `z[i] = Σ_{e: receiver_e = i} TP_t(x[sender_e], y_e, w_e)`, and the gradients of
//!   `⟨grad_z, z⟩` with respect to x (node features), y (edge spherical harmonics) and w
//!   (per-edge radial weights) — the three the forces need. The forward takes `x` and `w` by
//!   value and returns what its backward needs (`Backend::Saved`: on a GPU the device copies,
//!   so nothing is uploaded twice);
//! * the dense layers (`linear`, `radial` MLP, `gate`, with their backward passes). They have
//!   host implementations by default ([`crate::nn`]); a backend overrides them when it runs
//!   them itself.
//!
//! Today the dense layers run on the host and the convolutions on the device; node features
//! go up and come back once per layer and direction. Moving a layer to the device is a change
//! of one backend's method, not of the model. [`DeviceCounters`] reports the transfer time,
//! bytes moved and device memory (for `equikern bench --model`).
//!
//! Backends: [`CpuBackend`] (f64 and f32, the tensor-product oracle of `equikern-core` in `T`
//! itself) and, with the `wgpu`/`cuda` features, [`DeviceBackend`] (the convolutions through
//! [`equikern::ConvOp`]; wgpu f32, CUDA f32 and f64). A `DeviceBackend` holds one `ConvOp`
//! per layer, built once per model: kernels are specialised on the model's tensor products
//! and compiled on first use, never on atom or edge counts, so structures of any size reuse
//! them. [`Evaluator`] picks the backend and dtype at run time (the command line's
//! `--backend`/`--dtype`).

use crate::error::{ModelError, Result};
use crate::graph::Graph;
use crate::graph::Structure;
use crate::nn::{FcTape, FullyConnectedNet, Gate, Linear};
use crate::scalar::Scalar;
use crate::sevennet::{Interaction, Prediction, SevenNet, StepProfile};
use equikern_core::Grads;

/// Cumulative counters a backend keeps: time spent moving data between host and device, the
/// bytes moved, and the device memory its own buffers hold (all zero on the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DeviceCounters {
    /// Seconds spent in host → device uploads and device → host downloads (host wall clock;
    /// a download starts after the device finished the work that produced it).
    pub transfer_s: f64,
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
    /// Bytes of the backend's device buffers alive now, the graph's index tables included.
    pub live_bytes: u64,
    /// The most [`Self::live_bytes`] seen since the backend was made or
    /// [`Backend::reset_peak`]. Per-call scratch of the pieces mode is not included.
    pub peak_bytes: u64,
}

/// The operations one evaluation of the model needs, in precision `T` (see the module docs).
pub trait Backend<T: Scalar> {
    /// One structure's edge set, prepared for the convolutions.
    type Graph;
    /// The edge spherical harmonics `y [edges, dim_sh]` of one structure, prepared once (on a
    /// GPU: uploaded once) and read by every layer, forward and backward.
    type Sh;
    /// What a layer's convolution forward keeps for its backward (on a GPU: the node features
    /// and per-edge weights, left on the device).
    type Saved;

    /// What runs the operations, e.g. `"cpu f32"` or `"wgpu llvmpipe (…) f32"`.
    fn describe(&self) -> String;

    /// The graph of `nodes` atoms and edges `sender → receiver` (SevenNet: the message of edge
    /// `i → j` carries neighbour `j`'s features to centre `i`: receiver `i`, sender `j`).
    fn graph(&self, nodes: usize, receiver: &[u32], sender: &[u32]) -> Result<Self::Graph>;

    /// The edge spherical harmonics of `g` (`[edges, dim_in2]`).
    fn edge_sh(&self, g: &Self::Graph, y: Vec<T>) -> Result<Self::Sh>;

    /// `z [nodes, dim_mid]` of layer `t` (`layer` = `net.layers[t]`) from node features `x`
    /// and per-edge weights `w`, and what its backward needs.
    #[allow(clippy::too_many_arguments)]
    fn conv_forward(
        &self,
        t: usize,
        layer: &Interaction<T>,
        g: &Self::Graph,
        y: &Self::Sh,
        x: Vec<T>,
        w: Vec<T>,
    ) -> Result<(Vec<T>, Self::Saved)>;

    /// Gradients of `⟨grad_z, z⟩` with respect to `x` (nodes), `y` and `w` (edges).
    fn conv_backward(
        &self,
        t: usize,
        layer: &Interaction<T>,
        g: &Self::Graph,
        y: &Self::Sh,
        saved: Self::Saved,
        grad_z: &[T],
    ) -> Result<Grads<T>>;

    /// Transfer time, bytes moved and device memory so far ([`DeviceCounters`]).
    fn counters(&self) -> DeviceCounters {
        DeviceCounters::default()
    }
    /// Restarts [`DeviceCounters::peak_bytes`] from the memory alive now.
    fn reset_peak(&self) {}

    /// e3nn `Linear` on rows of `x`.
    fn linear(&self, l: &Linear<T>, x: &[T]) -> Result<Vec<T>> {
        Ok(l.forward(x))
    }
    /// Its backward (the map is linear: no tape).
    fn linear_backward(&self, l: &Linear<T>, gy: &[T]) -> Result<Vec<T>> {
        Ok(l.backward(gy))
    }
    /// The radial MLP on the edge embedding: per-edge weights and the tape for its backward.
    fn radial(&self, net: &FullyConnectedNet<T>, emb: &[T]) -> Result<(Vec<T>, FcTape<T>)> {
        Ok(net.forward(emb))
    }
    fn radial_backward(
        &self,
        net: &FullyConnectedNet<T>,
        tape: &FcTape<T>,
        gw: &[T],
    ) -> Result<Vec<T>> {
        Ok(net.backward(tape, gw))
    }
    /// e3nn `Gate` on rows of `x`.
    fn gate(&self, gate: &Gate<T>, x: &[T]) -> Result<Vec<T>> {
        Ok(gate.forward(x))
    }
    fn gate_backward(&self, gate: &Gate<T>, x: &[T], gy: &[T]) -> Result<Vec<T>> {
        Ok(gate.backward(x, gy))
    }
}

/// The CPU: every operation on the host, the convolutions by `equikern-core`'s tensor-product
/// oracle in `T` (gather by sender, per-edge product, sum into receivers in ascending edge
/// order: deterministic, independent of the thread count).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// A graph for [`CpuBackend`]: the edge lists.
#[derive(Clone, Debug)]
pub struct CpuGraph {
    pub nodes: usize,
    pub receiver: Vec<u32>,
    pub sender: Vec<u32>,
}

/// What [`CpuBackend`]'s forward keeps: the layer's node features and per-edge weights.
#[derive(Clone, Debug)]
pub struct CpuSaved<T> {
    pub x: Vec<T>,
    pub w: Vec<T>,
}

fn gather<T: Scalar>(v: &[T], idx: &[u32], len: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(idx.len() * len);
    for &n in idx {
        out.extend_from_slice(&v[n as usize * len..][..len]);
    }
    out
}

/// `out[idx[e]] += per_edge[e]`, edges in ascending order.
fn scatter<T: Scalar>(nodes: usize, idx: &[u32], per_edge: &[T], len: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; nodes * len];
    for (e, &n) in idx.iter().enumerate() {
        let row = &mut out[n as usize * len..][..len];
        for (a, &b) in row.iter_mut().zip(&per_edge[e * len..][..len]) {
            *a += b;
        }
    }
    out
}

impl<T: Scalar> Backend<T> for CpuBackend {
    type Graph = CpuGraph;
    type Sh = Vec<T>;
    type Saved = CpuSaved<T>;

    fn describe(&self) -> String {
        format!("cpu {}", T::NAME)
    }

    fn graph(&self, nodes: usize, receiver: &[u32], sender: &[u32]) -> Result<CpuGraph> {
        check_edges(nodes, receiver, sender)?;
        Ok(CpuGraph {
            nodes,
            receiver: receiver.to_vec(),
            sender: sender.to_vec(),
        })
    }

    fn edge_sh(&self, _g: &CpuGraph, y: Vec<T>) -> Result<Vec<T>> {
        Ok(y)
    }

    fn conv_forward(
        &self,
        _t: usize,
        layer: &Interaction<T>,
        g: &CpuGraph,
        y: &Vec<T>,
        x: Vec<T>,
        w: Vec<T>,
    ) -> Result<(Vec<T>, CpuSaved<T>)> {
        let (d1, _, dmid, _) = layer.tp_dims;
        let xj = gather(&x, &g.sender, d1);
        let m = layer
            .tp
            .forward(g.sender.len(), &xj, y, &w)
            .map_err(|e| ModelError::Tp(e.to_string()))?;
        Ok((scatter(g.nodes, &g.receiver, &m, dmid), CpuSaved { x, w }))
    }

    fn conv_backward(
        &self,
        _t: usize,
        layer: &Interaction<T>,
        g: &CpuGraph,
        y: &Vec<T>,
        saved: CpuSaved<T>,
        grad_z: &[T],
    ) -> Result<Grads<T>> {
        let (d1, _, dmid, _) = layer.tp_dims;
        let xj = gather(&saved.x, &g.sender, d1);
        let gz = gather(grad_z, &g.receiver, dmid);
        let r = layer
            .tp
            .backward(g.sender.len(), &xj, y, &saved.w, &gz)
            .map_err(|e| ModelError::Tp(e.to_string()))?;
        Ok(Grads {
            gx: scatter(g.nodes, &g.sender, &r.gx, d1),
            gy: r.gy,
            gw: r.gw,
        })
    }
}

fn check_edges(nodes: usize, receiver: &[u32], sender: &[u32]) -> Result<()> {
    if receiver.len() != sender.len() {
        return Err(ModelError::input(
            "edges",
            "receiver and sender lengths differ",
        ));
    }
    if let Some(e) =
        (0..receiver.len()).find(|&e| receiver[e] as usize >= nodes || sender[e] as usize >= nodes)
    {
        return Err(ModelError::input(
            format!("edges[{e}]"),
            "atom index out of range",
        ));
    }
    Ok(())
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use device::{DevBuf, DevSaved, DeviceBackend, Elem};

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod device {
    use super::*;
    use equikern::plan::{Direction, Tensor};
    use equikern::{ConvGraph, ConvOp, Device};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    /// Element types of device buffers: f32 (wgpu, CUDA) and f64 (CUDA).
    #[cfg(feature = "cuda")]
    pub trait Elem: Scalar + equikern::cuda_runtime::Real {
        /// The slice as f32 (wgpu buffers hold f32), `None` for f64.
        fn as_f32(v: &[Self]) -> Option<&[f32]>;
        fn from_f32(v: Vec<f32>) -> Option<Vec<Self>>;
    }
    /// Element types of device buffers: f32 (wgpu, CUDA) and f64 (CUDA).
    #[cfg(not(feature = "cuda"))]
    pub trait Elem: Scalar {
        /// The slice as f32 (wgpu buffers hold f32), `None` for f64.
        fn as_f32(v: &[Self]) -> Option<&[f32]>;
        fn from_f32(v: Vec<f32>) -> Option<Vec<Self>>;
    }
    impl Elem for f32 {
        fn as_f32(v: &[f32]) -> Option<&[f32]> {
            Some(v)
        }
        fn from_f32(v: Vec<f32>) -> Option<Vec<f32>> {
            Some(v)
        }
    }
    impl Elem for f64 {
        fn as_f32(_: &[f64]) -> Option<&[f32]> {
            None
        }
        fn from_f32(_: Vec<f32>) -> Option<Vec<f64>> {
            None
        }
    }

    /// Device memory held by one backend's buffers (exact, by allocation size).
    #[derive(Debug, Default)]
    struct Mem {
        live: AtomicU64,
        tables: AtomicU64,
        peak: AtomicU64,
        transfer_ns: AtomicU64,
        up: AtomicU64,
        down: AtomicU64,
    }

    impl Mem {
        fn bump_peak(&self) {
            let now = self.live.load(Ordering::Relaxed) + self.tables.load(Ordering::Relaxed);
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        fn alloc(&self, bytes: u64) {
            self.live.fetch_add(bytes, Ordering::Relaxed);
            self.bump_peak();
        }
        fn free(&self, bytes: u64) {
            self.live.fetch_sub(bytes, Ordering::Relaxed);
        }
        fn transfer(&self, since: Instant) {
            self.transfer_ns
                .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    enum Raw<T> {
        #[cfg(feature = "wgpu")]
        Wgpu(equikern::wgpu::Buffer),
        #[cfg(feature = "cuda")]
        Cuda(equikern::CudaSlice<T>),
        #[allow(dead_code)]
        Never(std::marker::PhantomData<T>),
    }

    /// A device buffer of `len` elements owned by a [`DeviceBackend`] (its bytes are counted
    /// in [`DeviceCounters::live_bytes`] while it lives).
    pub struct DevBuf<T> {
        raw: Raw<T>,
        len: usize,
        bytes: u64,
        mem: Arc<Mem>,
    }

    impl<T> DevBuf<T> {
        pub fn len(&self) -> usize {
            self.len
        }
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }
    }

    impl<T> Drop for DevBuf<T> {
        fn drop(&mut self) {
            self.mem.free(self.bytes);
        }
    }

    impl<T> std::fmt::Debug for DevBuf<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DevBuf").field("len", &self.len).finish()
        }
    }

    /// What a layer's forward leaves on the device for its backward.
    #[derive(Debug)]
    pub struct DevSaved<T> {
        pub x: DevBuf<T>,
        pub w: DevBuf<T>,
    }

    /// The convolutions on an `equikern` device (wgpu: f32; CUDA: f32 and f64) through
    /// [`ConvOp`], one per layer, built once per model; the dense layers on the host.
    ///
    /// Data placement: the graph's index tables are uploaded once per structure (on the first
    /// convolution) and reused by all layers and both directions; the edge spherical
    /// harmonics are uploaded once per structure ([`Backend::edge_sh`]); a layer's node
    /// features and per-edge weights are uploaded once, in its forward, and stay on the device
    /// for its backward. Per layer the host then sends `x`, `w` (forward) and `grad_z`
    /// (backward), and receives `z` (forward) and `gx`, `gy`, `gw` (backward).
    pub struct DeviceBackend {
        device: Device,
        ops: Vec<ConvOp>,
        mem: Arc<Mem>,
    }

    fn dev_err(device: &Device, e: impl std::fmt::Display) -> ModelError {
        ModelError::backend(device.name(), e)
    }

    impl DeviceBackend {
        /// Binds `net`'s convolutions to `device` (kernels compile on first use and are
        /// cached for the life of this backend). `T` is the model's precision: f32 on any
        /// device, f64 on CUDA (the wgpu kernels are f32 only).
        pub fn new<T: Scalar>(device: Device, net: &SevenNet<T>) -> Result<Self> {
            if T::NAME == "f64" && device.backend() == equikern::Backend::Wgpu {
                return Err(ModelError::Unsupported(
                    "backend wgpu with dtype f64 is not supported: the wgpu kernels compute in \
                     f32 (use f32 on wgpu, or f64 on cuda or cpu)"
                        .into(),
                ));
            }
            let ops = net
                .layers
                .iter()
                .map(|l| {
                    ConvOp::from_tensor_product(
                        l.product.clone(),
                        &device,
                        equikern::ConvOptions::default(),
                    )
                    .map(|op| op.with_auto_pieces(true))
                    .map_err(|e| dev_err(&device, e))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(DeviceBackend {
                device,
                ops,
                mem: Arc::default(),
            })
        }

        pub fn device(&self) -> &Device {
            &self.device
        }

        /// The layers' convolutions (for inspection and timing).
        pub fn ops(&self) -> &[ConvOp] {
            &self.ops
        }

        fn op(&self, t: usize) -> Result<&ConvOp> {
            self.ops.get(t).ok_or_else(|| {
                ModelError::Unsupported(format!(
                    "layer {t}: this backend was built for a model of {} layers",
                    self.ops.len()
                ))
            })
        }

        fn make_graph(&self, nodes: usize, receiver: &[u32], sender: &[u32]) -> Result<ConvGraph> {
            check_edges(nodes, receiver, sender)?;
            ConvGraph::new(&self.device, nodes, receiver, sender)
                .map_err(|e| dev_err(&self.device, e))
        }

        fn wrap<T>(&self, raw: Raw<T>, len: usize) -> DevBuf<T> {
            let bytes = (len.max(1) * std::mem::size_of::<T>()) as u64;
            self.mem.alloc(bytes);
            DevBuf {
                raw,
                len,
                bytes,
                mem: self.mem.clone(),
            }
        }

        /// A device copy of `data` (counted as transfer).
        pub fn upload<T: Elem>(&self, label: &str, data: &[T]) -> Result<DevBuf<T>> {
            let t0 = Instant::now();
            let _ = label;
            let raw = match self.device.backend() {
                #[cfg(feature = "wgpu")]
                equikern::Backend::Wgpu => {
                    let rt = self.device.wgpu_runtime().expect("a wgpu device");
                    let v = T::as_f32(data).ok_or_else(|| {
                        ModelError::Unsupported("wgpu buffers hold f32 only".into())
                    })?;
                    Raw::Wgpu(rt.upload(label, v))
                }
                #[cfg(feature = "cuda")]
                equikern::Backend::Cuda => {
                    let d = self.device.cuda_device().expect("a CUDA device");
                    Raw::Cuda(d.upload(data).map_err(|e| dev_err(&self.device, e))?)
                }
                other => {
                    return Err(ModelError::Unsupported(format!(
                        "no device buffers on {other:?}"
                    )))
                }
            };
            self.mem.transfer(t0);
            self.mem
                .up
                .fetch_add(std::mem::size_of_val(data) as u64, Ordering::Relaxed);
            Ok(self.wrap(raw, data.len()))
        }

        /// A device buffer of `len` elements for a kernel to write.
        pub fn alloc<T: Elem>(&self, label: &str, len: usize) -> Result<DevBuf<T>> {
            let _ = label;
            let raw = match self.device.backend() {
                #[cfg(feature = "wgpu")]
                equikern::Backend::Wgpu => {
                    if T::NAME != "f32" {
                        return Err(ModelError::Unsupported("wgpu buffers hold f32 only".into()));
                    }
                    let rt = self.device.wgpu_runtime().expect("a wgpu device");
                    Raw::Wgpu(rt.create_storage(label, len as u64))
                }
                #[cfg(feature = "cuda")]
                equikern::Backend::Cuda => {
                    let d = self.device.cuda_device().expect("a CUDA device");
                    Raw::Cuda(d.zeros::<T>(len).map_err(|e| dev_err(&self.device, e))?)
                }
                other => {
                    return Err(ModelError::Unsupported(format!(
                        "no device buffers on {other:?}"
                    )))
                }
            };
            Ok(self.wrap(raw, len))
        }

        /// Waits until the device finished all submitted work.
        pub fn synchronize(&self) -> Result<()> {
            match self.device.backend() {
                #[cfg(feature = "wgpu")]
                equikern::Backend::Wgpu => self
                    .device
                    .wgpu_runtime()
                    .expect("a wgpu device")
                    .wait_idle()
                    .map_err(|e| dev_err(&self.device, e)),
                #[cfg(feature = "cuda")]
                equikern::Backend::Cuda => self
                    .device
                    .cuda_device()
                    .expect("a CUDA device")
                    .synchronize()
                    .map_err(|e| dev_err(&self.device, e)),
                _ => Ok(()),
            }
        }

        /// The buffer's contents on the host (counted as transfer; call after
        /// [`Self::synchronize`] to keep the kernels' time out of it).
        pub fn download<T: Elem>(&self, b: &DevBuf<T>) -> Result<Vec<T>> {
            let t0 = Instant::now();
            let v = match &b.raw {
                #[cfg(feature = "wgpu")]
                Raw::Wgpu(buf) => {
                    let rt = self.device.wgpu_runtime().expect("a wgpu device");
                    let v = rt
                        .read_f32_blocking(buf, 0, b.len as u64)
                        .map_err(|e| dev_err(&self.device, e))?;
                    T::from_f32(v).ok_or_else(|| {
                        ModelError::Unsupported("wgpu buffers hold f32 only".into())
                    })?
                }
                #[cfg(feature = "cuda")]
                Raw::Cuda(s) => {
                    let d = self.device.cuda_device().expect("a CUDA device");
                    d.download(s, b.len).map_err(|e| dev_err(&self.device, e))?
                }
                Raw::Never(_) => unreachable!(),
            };
            self.mem.transfer(t0);
            self.mem
                .down
                .fetch_add((b.len * std::mem::size_of::<T>()) as u64, Ordering::Relaxed);
            Ok(v)
        }

        /// Runs direction `d` of layer `t`'s convolution on device buffers (submitted, not
        /// waited for).
        fn run<T: Elem>(
            &self,
            t: usize,
            d: Direction,
            g: &ConvGraph,
            inputs: &[(Tensor, &DevBuf<T>)],
            outputs: &mut [(Tensor, &mut DevBuf<T>)],
        ) -> Result<()> {
            let op = self.op(t)?;
            let r = match self.device.backend() {
                #[cfg(feature = "wgpu")]
                equikern::Backend::Wgpu => {
                    let mut bufs: Vec<(Tensor, &equikern::wgpu::Buffer)> = Vec::new();
                    for (t, b) in inputs.iter() {
                        if let Raw::Wgpu(w) = &b.raw {
                            bufs.push((*t, w));
                        }
                    }
                    for (t, b) in outputs.iter() {
                        if let Raw::Wgpu(w) = &b.raw {
                            bufs.push((*t, w));
                        }
                    }
                    pollster::block_on(op.run_buffers_async(d, g, &bufs))
                }
                #[cfg(feature = "cuda")]
                equikern::Backend::Cuda => {
                    let ins: Vec<(Tensor, &equikern::CudaSlice<T>)> = inputs
                        .iter()
                        .filter_map(|(t, b)| match &b.raw {
                            Raw::Cuda(s) => Some((*t, s)),
                            _ => None,
                        })
                        .collect();
                    let mut outs: Vec<(Tensor, &mut equikern::CudaSlice<T>)> = outputs
                        .iter_mut()
                        .filter_map(|(t, b)| match &mut b.raw {
                            Raw::Cuda(s) => Some((*t, s)),
                            _ => None,
                        })
                        .collect();
                    op.run_cuda(d, g, &ins, &mut outs)
                }
                _ => Err(equikern::Error::Unsupported("no device".into())),
            };
            r.map_err(|e| dev_err(&self.device, e))?;
            // The graph's index tables are uploaded on first use and kept with the graph.
            self.mem
                .tables
                .store(g.device_table_bytes(), Ordering::Relaxed);
            self.mem.bump_peak();
            Ok(())
        }

        fn forward<T: Elem>(
            &self,
            t: usize,
            g: &ConvGraph,
            y: &DevBuf<T>,
            x: Vec<T>,
            w: Vec<T>,
        ) -> Result<(Vec<T>, DevSaved<T>)> {
            let op = self.op(t)?;
            let x = self.upload("x", &x)?;
            let w = self.upload("w", &w)?;
            let mut z = self.alloc::<T>("z", g.nodes() * op.dim_out())?;
            use Tensor::*;
            self.run(
                t,
                Direction::Forward,
                g,
                &[(X, &x), (Y, y), (W, &w)],
                &mut [(Z, &mut z)],
            )?;
            self.synchronize()?;
            Ok((self.download(&z)?, DevSaved { x, w }))
        }

        fn backward<T: Elem>(
            &self,
            t: usize,
            g: &ConvGraph,
            y: &DevBuf<T>,
            s: DevSaved<T>,
            grad_z: &[T],
        ) -> Result<Grads<T>> {
            let op = self.op(t)?;
            let gz = self.upload("grad_z", grad_z)?;
            let mut gx = self.alloc::<T>("gx", s.x.len())?;
            let mut gy = self.alloc::<T>("gy", y.len())?;
            let wl = op.weight_len(g.edges()).unwrap_or(0);
            let mut gw = self.alloc::<T>("gw", wl)?;
            use Tensor::*;
            self.run(
                t,
                Direction::Backward,
                g,
                &[(X, &s.x), (Y, y), (W, &s.w), (GZ, &gz)],
                &mut [(GX, &mut gx), (GY, &mut gy), (GW, &mut gw)],
            )?;
            drop(s);
            self.synchronize()?;
            Ok(Grads {
                gx: self.download(&gx)?,
                gy: self.download(&gy)?,
                gw: self.download(&gw)?,
            })
        }

        fn counters_now(&self) -> DeviceCounters {
            let m = &self.mem;
            DeviceCounters {
                transfer_s: m.transfer_ns.load(Ordering::Relaxed) as f64 * 1e-9,
                uploaded_bytes: m.up.load(Ordering::Relaxed),
                downloaded_bytes: m.down.load(Ordering::Relaxed),
                live_bytes: m.live.load(Ordering::Relaxed) + m.tables.load(Ordering::Relaxed),
                peak_bytes: m.peak.load(Ordering::Relaxed),
            }
        }

        fn reset_peak_now(&self) {
            let m = &self.mem;
            let now = m.live.load(Ordering::Relaxed) + m.tables.load(Ordering::Relaxed);
            m.peak.store(now, Ordering::Relaxed);
        }
    }

    macro_rules! device_backend {
        ($t:ty) => {
            impl Backend<$t> for DeviceBackend {
                type Graph = ConvGraph;
                type Sh = DevBuf<$t>;
                type Saved = DevSaved<$t>;

                fn describe(&self) -> String {
                    format!("{} {}", self.device.name(), <$t as Scalar>::NAME)
                }

                fn graph(
                    &self,
                    nodes: usize,
                    receiver: &[u32],
                    sender: &[u32],
                ) -> Result<ConvGraph> {
                    // A new structure: the previous graph's tables are gone with it.
                    self.mem.tables.store(0, Ordering::Relaxed);
                    self.make_graph(nodes, receiver, sender)
                }

                fn edge_sh(&self, _g: &ConvGraph, y: Vec<$t>) -> Result<DevBuf<$t>> {
                    self.upload("y", &y)
                }

                fn conv_forward(
                    &self,
                    t: usize,
                    _layer: &Interaction<$t>,
                    g: &ConvGraph,
                    y: &DevBuf<$t>,
                    x: Vec<$t>,
                    w: Vec<$t>,
                ) -> Result<(Vec<$t>, DevSaved<$t>)> {
                    self.forward(t, g, y, x, w)
                }

                fn conv_backward(
                    &self,
                    t: usize,
                    _layer: &Interaction<$t>,
                    g: &ConvGraph,
                    y: &DevBuf<$t>,
                    saved: DevSaved<$t>,
                    grad_z: &[$t],
                ) -> Result<Grads<$t>> {
                    self.backward(t, g, y, saved, grad_z)
                }

                fn counters(&self) -> DeviceCounters {
                    self.counters_now()
                }

                fn reset_peak(&self) {
                    self.reset_peak_now()
                }
            }
        };
    }
    device_backend!(f32);
    device_backend!(f64);
}

/// Where to run the model: the command line's `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Cpu,
    Wgpu,
    Cuda,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Wgpu => "wgpu",
            Target::Cuda => "cuda",
        }
    }
}

/// The floating-point type the model computes in: the command line's `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }
}

/// Backend/dtype combinations the model runs on.
pub const SUPPORTED: [(Target, Dtype); 5] = [
    (Target::Cpu, Dtype::F64),
    (Target::Cpu, Dtype::F32),
    (Target::Wgpu, Dtype::F32),
    (Target::Cuda, Dtype::F32),
    (Target::Cuda, Dtype::F64),
];

/// `Ok` if `target` computes in `dtype`; else the one-line reason.
pub fn check_combination(target: Target, dtype: Dtype) -> Result<()> {
    if SUPPORTED.contains(&(target, dtype)) {
        return Ok(());
    }
    Err(ModelError::Unsupported(format!(
        "backend {} with dtype {} is not supported: the {} kernels compute in f32 only (use \
         --dtype f32 there, or f64 on cuda or cpu)",
        target.name(),
        dtype.name(),
        target.name()
    )))
}

/// A model placed on a backend in a dtype, chosen at run time: load once, evaluate many
/// structures. Kernels and cast weights are made once, here; each structure gets its own
/// graph.
pub struct Evaluator {
    inner: Inner,
    target: Target,
    dtype: Dtype,
    /// Host `Graph::build`, or the CUDA list for large systems on a CUDA device.
    nl: crate::neighbours_cuda::AutoList,
}

enum Inner {
    CpuF64(SevenNet<f64>),
    CpuF32(SevenNet<f32>),
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    DevF32(SevenNet<f32>, DeviceBackend),
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    DevF64(SevenNet<f64>, DeviceBackend),
    /// The whole step resident on a CUDA device.
    #[cfg(feature = "cuda")]
    CudaF32(Box<crate::cuda_model::CudaSevenNet<f32>>),
    #[cfg(feature = "cuda")]
    CudaF64(Box<crate::cuda_model::CudaSevenNet<f64>>),
}

/// `EQUIKERN_MODEL_CUDA=generic` picks the generic [`DeviceBackend`] on CUDA (convolutions on
/// the device, dense layers on the host) instead of the resident evaluator (A/B runs).
pub const CUDA_PATH_ENV: &str = "EQUIKERN_MODEL_CUDA";

impl Evaluator {
    /// `model` on `target` in `dtype` (opens the device: an error if it is unavailable or the
    /// combination is not supported, see [`check_combination`]).
    pub fn new(model: &SevenNet<f64>, target: Target, dtype: Dtype) -> Result<Self> {
        check_combination(target, dtype)?;
        match target {
            Target::Cpu => Ok(Self::cpu(model, dtype)),
            #[cfg(feature = "wgpu")]
            Target::Wgpu => {
                let d = equikern::Device::new(equikern::Backend::Wgpu)
                    .map_err(|e| ModelError::backend("wgpu", e))?;
                Self::on_device(model, d, dtype)
            }
            #[cfg(feature = "cuda")]
            Target::Cuda => {
                let d = equikern::Device::new(equikern::Backend::Cuda)
                    .map_err(|e| ModelError::backend("cuda", e))?;
                Self::on_device(model, d, dtype)
            }
            #[allow(unreachable_patterns)]
            other => Err(ModelError::backend(
                other.name(),
                format!(
                    "not available: equikern-model was built without the `{}` feature",
                    other.name()
                ),
            )),
        }
    }

    /// On the CPU (any dtype).
    pub fn cpu(model: &SevenNet<f64>, dtype: Dtype) -> Self {
        let inner = match dtype {
            Dtype::F64 => Inner::CpuF64(model.clone()),
            Dtype::F32 => Inner::CpuF32(model.cast()),
        };
        Evaluator {
            inner,
            target: Target::Cpu,
            dtype,
            nl: Default::default(),
        }
    }

    /// On a device the caller opened (e.g. a chosen wgpu adapter; a CPU device gives
    /// [`Self::cpu`]).
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    pub fn on_device(
        model: &SevenNet<f64>,
        device: equikern::Device,
        dtype: Dtype,
    ) -> Result<Self> {
        match device.backend() {
            equikern::Backend::Cpu => Ok(Self::cpu(model, dtype)),
            other => Err(ModelError::backend(
                format!("{other:?}"),
                "not available: equikern-model was built without the `wgpu` and `cuda` features",
            )),
        }
    }

    /// On a device the caller opened (e.g. a chosen wgpu adapter; a CPU device gives
    /// [`Self::cpu`]). On CUDA the whole step is resident on the device
    /// ([`crate::cuda_model::CudaSevenNet`]) unless `EQUIKERN_MODEL_CUDA=generic`
    /// ([`Self::on_device_generic`]).
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    pub fn on_device(
        model: &SevenNet<f64>,
        device: equikern::Device,
        dtype: Dtype,
    ) -> Result<Self> {
        #[cfg(feature = "cuda")]
        if device.backend() == equikern::Backend::Cuda
            && std::env::var(CUDA_PATH_ENV).as_deref() != Ok("generic")
        {
            check_combination(Target::Cuda, dtype)?;
            let inner = match dtype {
                Dtype::F32 => Inner::CudaF32(Box::new(crate::cuda_model::CudaSevenNet::new(
                    &model.cast::<f32>(),
                    device,
                )?)),
                Dtype::F64 => Inner::CudaF64(Box::new(crate::cuda_model::CudaSevenNet::new(
                    model, device,
                )?)),
            };
            return Ok(Evaluator {
                inner,
                target: Target::Cuda,
                dtype,
                nl: crate::neighbours_cuda::AutoList::from_env()?,
            });
        }
        Self::on_device_generic(model, device, dtype)
    }

    /// On a device through the generic [`DeviceBackend`] (convolutions on the device, dense
    /// layers on the host), also on CUDA.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    pub fn on_device_generic(
        model: &SevenNet<f64>,
        device: equikern::Device,
        dtype: Dtype,
    ) -> Result<Self> {
        let target = match device.backend() {
            equikern::Backend::Cpu => return Ok(Self::cpu(model, dtype)),
            equikern::Backend::Wgpu => Target::Wgpu,
            equikern::Backend::Cuda => Target::Cuda,
        };
        check_combination(target, dtype)?;
        let inner = match dtype {
            Dtype::F32 => {
                let m: SevenNet<f32> = model.cast();
                let b = DeviceBackend::new(device, &m)?;
                Inner::DevF32(m, b)
            }
            Dtype::F64 => {
                let b = DeviceBackend::new(device, model)?;
                Inner::DevF64(model.clone(), b)
            }
        };
        Ok(Evaluator {
            inner,
            target,
            dtype,
            nl: crate::neighbours_cuda::AutoList::from_env()?,
        })
    }

    /// The device backend (wgpu/CUDA), `None` on the CPU and for the resident CUDA
    /// evaluator ([`Self::is_resident`]).
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    pub fn device_backend(&self) -> Option<&DeviceBackend> {
        match &self.inner {
            Inner::DevF32(_, b) | Inner::DevF64(_, b) => Some(b),
            _ => None,
        }
    }

    /// Whether the whole step runs resident on a CUDA device ([`crate::cuda_model`]).
    pub fn is_resident(&self) -> bool {
        match &self.inner {
            #[cfg(feature = "cuda")]
            Inner::CudaF32(_) | Inner::CudaF64(_) => true,
            _ => false,
        }
    }

    pub fn target(&self) -> Target {
        self.target
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// What runs it, e.g. `"cpu f64"`, `"llvmpipe (LLVM 15.0.7, 256 bits) (Vulkan, Cpu) f32"`.
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::CpuF64(_) => Backend::<f64>::describe(&CpuBackend),
            Inner::CpuF32(_) => Backend::<f32>::describe(&CpuBackend),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF32(_, b) => Backend::<f32>::describe(b),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF64(_, b) => Backend::<f64>::describe(b),
            #[cfg(feature = "cuda")]
            Inner::CudaF32(c) => c.describe(),
            #[cfg(feature = "cuda")]
            Inner::CudaF64(c) => c.describe(),
        }
    }

    /// Energy, forces and stress (as [`SevenNet::evaluate`], on this backend and dtype).
    pub fn evaluate(&self, s: &Structure) -> Result<Prediction> {
        self.evaluate_profiled(s).map(|r| r.0)
    }

    /// [`Self::evaluate`] with the wall-clock time of each phase ([`StepProfile`]).
    pub fn evaluate_profiled(&self, s: &Structure) -> Result<(Prediction, StepProfile)> {
        let t0 = std::time::Instant::now();
        // Resident on CUDA with the device's radius graph: the graph stays there.
        #[cfg(feature = "cuda")]
        if let Some(dev) = self.neighbour_list_device(s) {
            let cutoff = self.cutoff();
            let r = match &self.inner {
                Inner::CudaF32(c) => Some(
                    self.nl
                        .with_device_list(dev, s, cutoff, |l| c.evaluate_device_list(s, l)),
                ),
                Inner::CudaF64(c) => Some(
                    self.nl
                        .with_device_list(dev, s, cutoff, |l| c.evaluate_device_list(s, l)),
                ),
                _ => None,
            };
            if let Some(r) = r {
                let ((p, mut prof), nl) = r?;
                prof.neighbour_list_s = nl;
                prof.total_s = t0.elapsed().as_secs_f64();
                return Ok((p, prof));
            }
        }
        let g = self.neighbour_list(s)?;
        let nl = t0.elapsed().as_secs_f64();
        let (p, mut prof) = self.evaluate_graph(s, &g)?;
        prof.neighbour_list_s = nl;
        prof.total_s = t0.elapsed().as_secs_f64();
        Ok((p, prof))
    }

    /// The radius graph of `s` at the model's cutoff (what [`Self::evaluate_graph`] takes):
    /// [`Graph::build`], or on a CUDA device for systems of at least
    /// `EQUIKERN_GPU_NL_MIN_ATOMS` atoms (default
    /// [`crate::neighbours_cuda::GPU_MIN_ATOMS`]; `off`: never) the same graph built there
    /// ([`crate::neighbours_cuda::CudaNeighbourList`]).
    pub fn neighbour_list(&self, s: &Structure) -> Result<Graph> {
        s.validate()?;
        #[cfg(feature = "cuda")]
        if let Some(dev) = self.neighbour_list_device(s) {
            return self.nl.build_on(dev, s, self.cutoff());
        }
        Graph::build(s, self.cutoff())
    }

    /// From how many atoms a CUDA evaluator builds the radius graph on the device (`None`:
    /// never); the default comes from `EQUIKERN_GPU_NL_MIN_ATOMS`.
    pub fn set_gpu_neighbour_list_min_atoms(&mut self, min_atoms: Option<usize>) {
        self.nl = crate::neighbours_cuda::AutoList::with_min_atoms(min_atoms);
    }

    /// Where [`Self::neighbour_list`] builds the graph of `s`: `"cuda"` or `"cpu"`.
    pub fn neighbour_list_on(&self, s: &Structure) -> &'static str {
        #[cfg(feature = "cuda")]
        if self.neighbour_list_device(s).is_some() {
            return "cuda";
        }
        let _ = s;
        "cpu"
    }

    #[cfg(feature = "cuda")]
    fn neighbour_list_device(&self, s: &Structure) -> Option<&equikern::cuda_runtime::CudaDevice> {
        if self.target != Target::Cuda || !self.nl.uses_device(s.positions.len()) {
            return None;
        }
        match &self.inner {
            Inner::CudaF32(c) => c.exec().device().cuda_device(),
            Inner::CudaF64(c) => c.exec().device().cuda_device(),
            _ => self.device_backend()?.device().cuda_device(),
        }
    }

    /// The model's cutoff radius (Å).
    pub fn cutoff(&self) -> f64 {
        match &self.inner {
            Inner::CpuF64(m) => m.cutoff,
            Inner::CpuF32(m) => m.cutoff,
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF32(m, _) => m.cutoff,
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF64(m, _) => m.cutoff,
            #[cfg(feature = "cuda")]
            Inner::CudaF32(c) => c.model().cutoff,
            #[cfg(feature = "cuda")]
            Inner::CudaF64(c) => c.model().cutoff,
        }
    }

    /// The model-only part of a step: `s` with its radius graph `g` from
    /// [`Self::neighbour_list`] (see [`SevenNet::evaluate_graph_on`]).
    pub fn evaluate_graph(&self, s: &Structure, g: &Graph) -> Result<(Prediction, StepProfile)> {
        match &self.inner {
            Inner::CpuF64(m) => m.evaluate_graph_on(&CpuBackend, s, g),
            Inner::CpuF32(m) => m.evaluate_graph_on(&CpuBackend, s, g),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF32(m, b) => m.evaluate_graph_on(b, s, g),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF64(m, b) => m.evaluate_graph_on(b, s, g),
            #[cfg(feature = "cuda")]
            Inner::CudaF32(c) => c.evaluate_graph(s, g),
            #[cfg(feature = "cuda")]
            Inner::CudaF64(c) => c.evaluate_graph(s, g),
        }
    }

    /// The backend's transfer and memory counters (zeros on the CPU).
    pub fn counters(&self) -> DeviceCounters {
        let mut c = self.backend_counters();
        // The device neighbour list's buffers (grow-only, held across steps) count too.
        let nl = self.nl.device_bytes();
        c.live_bytes += nl;
        c.peak_bytes += nl;
        c
    }

    fn backend_counters(&self) -> DeviceCounters {
        match &self.inner {
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF32(_, b) => Backend::<f32>::counters(b),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF64(_, b) => Backend::<f64>::counters(b),
            #[cfg(feature = "cuda")]
            Inner::CudaF32(c) => c.counters(),
            #[cfg(feature = "cuda")]
            Inner::CudaF64(c) => c.counters(),
            _ => DeviceCounters::default(),
        }
    }

    /// Restarts the peak of [`Self::counters`] from the memory alive now.
    pub fn reset_peak(&self) {
        match &self.inner {
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF32(_, b) => Backend::<f32>::reset_peak(b),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF64(_, b) => Backend::<f64>::reset_peak(b),
            #[cfg(feature = "cuda")]
            Inner::CudaF32(c) => c.reset_peak(),
            #[cfg(feature = "cuda")]
            Inner::CudaF64(c) => c.reset_peak(),
            _ => {}
        }
    }

    /// The model's atomic numbers, ascending.
    pub fn species(&self) -> Vec<u32> {
        match &self.inner {
            Inner::CpuF64(m) => m.species(),
            Inner::CpuF32(m) => m.species(),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF32(m, _) => m.species(),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF64(m, _) => m.species(),
            #[cfg(feature = "cuda")]
            Inner::CudaF32(c) => c.model().species(),
            #[cfg(feature = "cuda")]
            Inner::CudaF64(c) => c.model().species(),
        }
    }
}

impl crate::md::Potential for Evaluator {
    fn compute(&self, atoms: &Structure) -> Result<Prediction> {
        self.evaluate(atoms)
    }
}
