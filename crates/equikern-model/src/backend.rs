//! Where the model's operations run: the [`Backend`] trait and its implementations.
//!
//! The model ([`SevenNet`]) is written once, generically, against [`Backend<T>`]; a backend
//! supplies the operations of one evaluation in precision `T`:
//!
//! * `graph` — the edge set of one structure, prepared once per structure and reused by every
//!   layer, forward and backward (on a GPU: [`equikern::ConvGraph`], index tables uploaded
//!   once);
//! * `conv_forward` / `conv_backward` — the fused convolution of interaction layer `t`,
//!   `z[i] = Σ_{e: receiver_e = i} TP_t(x[sender_e], y_e, w_e)`, and the gradients of
//!   `⟨grad_z, z⟩` with respect to x (node features), y (edge spherical harmonics) and w
//!   (per-edge radial weights) — the three the forces need;
//! * the dense layers (`linear`, `radial` MLP, `gate`, with their backward passes). They have
//!   host implementations by default ([`crate::nn`]); a backend overrides them when it runs
//!   them itself.
//!
//! Today every backend takes and returns host slices: the convolutions (the dominant cost) run
//! on the device, the dense layers on the host. Moving a layer to the device is a change of
//! one backend's method, not of the model.
//!
//! Backends: [`CpuBackend`] (f64 and f32, the tensor-product oracle of `equikern-core` in `T`
//! itself) and, with the `wgpu`/`cuda` features, [`DeviceBackend`] (the convolutions through
//! [`equikern::ConvOp`]; wgpu f32, CUDA f32 and f64). A `DeviceBackend` holds one `ConvOp`
//! per layer, built once per model: kernels are specialised on the model's tensor products
//! and compiled on first use, never on atom or edge counts, so structures of any size reuse
//! them. [`Evaluator`] picks the backend and dtype at run time (the command line's
//! `--backend`/`--dtype`).

use crate::error::{ModelError, Result};
use crate::graph::Structure;
use crate::nn::{FcTape, FullyConnectedNet, Gate, Linear};
use crate::scalar::Scalar;
use crate::sevennet::{Interaction, Prediction, SevenNet};
use equikern_core::Grads;

/// The operations one evaluation of the model needs, in precision `T` (see the module docs).
pub trait Backend<T: Scalar> {
    /// One structure's edge set, prepared for the convolutions.
    type Graph;

    /// What runs the operations, e.g. `"cpu f32"` or `"wgpu llvmpipe (…) f32"`.
    fn describe(&self) -> String;

    /// The graph of `nodes` atoms and edges `sender → receiver` (SevenNet: the message of edge
    /// `i → j` carries neighbour `j`'s features to centre `i`: receiver `i`, sender `j`).
    fn graph(&self, nodes: usize, receiver: &[u32], sender: &[u32]) -> Result<Self::Graph>;

    /// `z [nodes, dim_mid]` of layer `t` (`layer` = `net.layers[t]`).
    fn conv_forward(
        &self,
        t: usize,
        layer: &Interaction<T>,
        g: &Self::Graph,
        x: &[T],
        y: &[T],
        w: &[T],
    ) -> Result<Vec<T>>;

    /// Gradients of `⟨grad_z, z⟩` with respect to `x` (nodes), `y` and `w` (edges).
    #[allow(clippy::too_many_arguments)]
    fn conv_backward(
        &self,
        t: usize,
        layer: &Interaction<T>,
        g: &Self::Graph,
        x: &[T],
        y: &[T],
        w: &[T],
        grad_z: &[T],
    ) -> Result<Grads<T>>;

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

    fn conv_forward(
        &self,
        _t: usize,
        layer: &Interaction<T>,
        g: &CpuGraph,
        x: &[T],
        y: &[T],
        w: &[T],
    ) -> Result<Vec<T>> {
        let (d1, _, dmid, _) = layer.tp_dims;
        let xj = gather(x, &g.sender, d1);
        let m = layer
            .tp
            .forward(g.sender.len(), &xj, y, w)
            .map_err(|e| ModelError::Tp(e.to_string()))?;
        Ok(scatter(g.nodes, &g.receiver, &m, dmid))
    }

    fn conv_backward(
        &self,
        _t: usize,
        layer: &Interaction<T>,
        g: &CpuGraph,
        x: &[T],
        y: &[T],
        w: &[T],
        grad_z: &[T],
    ) -> Result<Grads<T>> {
        let (d1, _, dmid, _) = layer.tp_dims;
        let xj = gather(x, &g.sender, d1);
        let gz = gather(grad_z, &g.receiver, dmid);
        let r = layer
            .tp
            .backward(g.sender.len(), &xj, y, w, &gz)
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
pub use device::DeviceBackend;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod device {
    use super::*;
    use equikern::{ConvGraph, ConvOp, Device};

    /// The convolutions on an `equikern` device (wgpu: f32; CUDA: f32 and f64) through
    /// [`ConvOp`], one per layer, built once per model; the dense layers on the host.
    pub struct DeviceBackend {
        device: Device,
        ops: Vec<ConvOp>,
    }

    fn dev_err(device: &Device, e: equikern::Error) -> ModelError {
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
            Ok(DeviceBackend { device, ops })
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
    }

    impl Backend<f32> for DeviceBackend {
        type Graph = ConvGraph;

        fn describe(&self) -> String {
            format!("{} f32", self.device.name())
        }

        fn graph(&self, nodes: usize, receiver: &[u32], sender: &[u32]) -> Result<ConvGraph> {
            self.make_graph(nodes, receiver, sender)
        }

        fn conv_forward(
            &self,
            t: usize,
            _layer: &Interaction<f32>,
            g: &ConvGraph,
            x: &[f32],
            y: &[f32],
            w: &[f32],
        ) -> Result<Vec<f32>> {
            self.op(t)?
                .forward(g, x, y, w)
                .map_err(|e| dev_err(&self.device, e))
        }

        fn conv_backward(
            &self,
            t: usize,
            _layer: &Interaction<f32>,
            g: &ConvGraph,
            x: &[f32],
            y: &[f32],
            w: &[f32],
            grad_z: &[f32],
        ) -> Result<Grads<f32>> {
            self.op(t)?
                .backward(g, x, y, w, grad_z)
                .map_err(|e| dev_err(&self.device, e))
        }
    }

    impl Backend<f64> for DeviceBackend {
        type Graph = ConvGraph;

        fn describe(&self) -> String {
            format!("{} f64", self.device.name())
        }

        fn graph(&self, nodes: usize, receiver: &[u32], sender: &[u32]) -> Result<ConvGraph> {
            self.make_graph(nodes, receiver, sender)
        }

        fn conv_forward(
            &self,
            t: usize,
            _layer: &Interaction<f64>,
            g: &ConvGraph,
            x: &[f64],
            y: &[f64],
            w: &[f64],
        ) -> Result<Vec<f64>> {
            self.op(t)?
                .forward_f64(g, x, y, w)
                .map_err(|e| dev_err(&self.device, e))
        }

        fn conv_backward(
            &self,
            t: usize,
            _layer: &Interaction<f64>,
            g: &ConvGraph,
            x: &[f64],
            y: &[f64],
            w: &[f64],
            grad_z: &[f64],
        ) -> Result<Grads<f64>> {
            self.op(t)?
                .backward_f64(g, x, y, w, grad_z)
                .map_err(|e| dev_err(&self.device, e))
        }
    }
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
}

enum Inner {
    CpuF64(SevenNet<f64>),
    CpuF32(SevenNet<f32>),
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    DevF32(SevenNet<f32>, DeviceBackend),
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    DevF64(SevenNet<f64>, DeviceBackend),
}

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
    /// [`Self::cpu`]).
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    pub fn on_device(
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
        })
    }

    /// The device backend (wgpu/CUDA), `None` on the CPU.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    pub fn device_backend(&self) -> Option<&DeviceBackend> {
        match &self.inner {
            Inner::DevF32(_, b) | Inner::DevF64(_, b) => Some(b),
            _ => None,
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
        }
    }

    /// Energy, forces and stress (as [`SevenNet::evaluate`], on this backend and dtype).
    pub fn evaluate(&self, s: &Structure) -> Result<Prediction> {
        match &self.inner {
            Inner::CpuF64(m) => m.evaluate_on(&CpuBackend, s),
            Inner::CpuF32(m) => m.evaluate_on(&CpuBackend, s),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF32(m, b) => m.evaluate_on(b, s),
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            Inner::DevF64(m, b) => m.evaluate_on(b, s),
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
        }
    }
}

impl crate::md::Potential for Evaluator {
    fn compute(&self, atoms: &Structure) -> Result<Prediction> {
        self.evaluate(atoms)
    }
}
