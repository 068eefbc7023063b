//! What the resident step needs from a device, as two traits: [`Memory`] (buffers,
//! copies, the graph) and [`Exec`] (kernel launches by [`Kern`] with [`Arg`]s in the
//! kernels' parameter order, matrix products, convolutions). The step is written once
//! against them (`evaluator::Resident`); [`super::CudaExec`] runs it on a GPU, and the CPU
//! emulation test runs the same step with the kernels compiled as C++ (each launch's
//! arguments passed like `cuLaunchKernel`'s `kernelParams`) and the convolutions by the
//! core oracle.

use crate::error::Result;
use equikern::plan::{Direction, Tensor};

/// Element types of device buffers.
pub trait Pod:
    Copy
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
    + cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
{
}
impl Pod for f32 {}
impl Pod for f64 {}
impl Pod for u32 {}
impl Pod for i32 {}

/// The kernels of `kernels.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kern {
    EdgeGeometry,
    EdgeForce,
    OneHot,
    Linear,
    LinearPath3,
    LinearPath5,
    LinearPath7,
    Gate,
    GateBackward,
    Act,
    ActBackward,
    MlpHidden,
    MlpHiddenBackward,
    MlpHiddenBackward2,
    Gemm,
    Accumulate,
    PairSum,
    Fill,
    FillF64,
    SplitTf32,
    RadialLastTf32,
    GemmTf32x3Nt,
    GemmTf32x3NtPipe,
    MlpBackwardTc,
    MlpBackwardTcSmem,
    MlpForwardTc,
    MlpForwardTcSmem,
    SplitTf32Rows,
    LinearTc,
    ConvRadialBwd,
    Readout,
    Forces,
    VirialPartial,
    VirialFinal,
}

impl Kern {
    pub const ALL: [Kern; 34] = [
        Kern::EdgeGeometry,
        Kern::EdgeForce,
        Kern::OneHot,
        Kern::Linear,
        Kern::LinearPath3,
        Kern::LinearPath5,
        Kern::LinearPath7,
        Kern::Gate,
        Kern::GateBackward,
        Kern::Act,
        Kern::ActBackward,
        Kern::MlpHidden,
        Kern::MlpHiddenBackward,
        Kern::MlpHiddenBackward2,
        Kern::Gemm,
        Kern::Accumulate,
        Kern::PairSum,
        Kern::Fill,
        Kern::FillF64,
        Kern::SplitTf32,
        Kern::RadialLastTf32,
        Kern::GemmTf32x3Nt,
        Kern::GemmTf32x3NtPipe,
        Kern::MlpBackwardTc,
        Kern::MlpBackwardTcSmem,
        Kern::MlpForwardTc,
        Kern::MlpForwardTcSmem,
        Kern::SplitTf32Rows,
        Kern::LinearTc,
        Kern::ConvRadialBwd,
        Kern::Readout,
        Kern::Forces,
        Kern::VirialPartial,
        Kern::VirialFinal,
    ];

    /// The `extern "C"` name in `kernels.cu`.
    pub fn name(self) -> &'static str {
        match self {
            Kern::EdgeGeometry => "ek_edge_geometry",
            Kern::EdgeForce => "ek_edge_force",
            Kern::OneHot => "ek_one_hot",
            Kern::Linear => "ek_linear",
            Kern::LinearPath3 => "ek_linear_path3",
            Kern::LinearPath5 => "ek_linear_path5",
            Kern::LinearPath7 => "ek_linear_path7",
            Kern::Gate => "ek_gate",
            Kern::GateBackward => "ek_gate_backward",
            Kern::Act => "ek_act",
            Kern::ActBackward => "ek_act_backward",
            Kern::MlpHidden => "ek_mlp_hidden",
            Kern::MlpHiddenBackward => "ek_mlp_hidden_backward",
            Kern::MlpHiddenBackward2 => "ek_mlp_hidden_backward2",
            Kern::Gemm => "ek_gemm",
            Kern::Accumulate => "ek_accumulate",
            Kern::PairSum => "ek_pair_sum",
            Kern::Fill => "ek_fill",
            Kern::FillF64 => "ek_fill_f64",
            Kern::SplitTf32 => "ek_split_tf32",
            Kern::RadialLastTf32 => "ek_radial_last_tf32x3",
            Kern::GemmTf32x3Nt => "ek_gemm_tf32x3_nt",
            Kern::GemmTf32x3NtPipe => "ek_gemm_tf32x3_nt_pipe",
            Kern::MlpBackwardTc => "ek_mlp_backward_tc",
            Kern::MlpBackwardTcSmem => "ek_mlp_backward_tc_smem",
            Kern::MlpForwardTc => "ek_mlp_forward_tc",
            Kern::MlpForwardTcSmem => "ek_mlp_forward_tc_smem",
            Kern::SplitTf32Rows => "ek_split_tf32_rows",
            Kern::LinearTc => "ek_linear_tc",
            Kern::ConvRadialBwd => "ek_conv_radial_bwd",
            Kern::Readout => "ek_readout",
            Kern::Forces => "ek_forces",
            Kern::VirialPartial => "ek_virial_partial",
            Kern::VirialFinal => "ek_virial_final",
        }
    }

    /// `ek_linear_path<dim>` (one Linear path between blocks of that irrep dimension).
    pub fn linear_path(dim: usize) -> Option<Kern> {
        match dim {
            3 => Some(Kern::LinearPath3),
            5 => Some(Kern::LinearPath5),
            7 => Some(Kern::LinearPath7),
            _ => None,
        }
    }

    /// Position in [`Kern::ALL`].
    pub fn index(self) -> usize {
        Kern::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

/// One kernel argument: a buffer (from an element offset) or a value.
pub enum Arg<'a, T: Pod, D: Memory> {
    /// A `real*` buffer from element `offset`.
    Real(&'a D::Buf<T>, usize),
    /// A `double*` buffer from element `offset`.
    F64s(&'a D::Buf<f64>, usize),
    /// An `unsigned*` buffer from element `offset`.
    U32s(&'a D::Buf<u32>, usize),
    /// An `int*` buffer.
    I32s(&'a D::Buf<i32>),
    U64(u64),
    I32(i32),
    F64(f64),
    /// A `real` value.
    Val(T),
    /// A null pointer.
    Null,
}

/// Buffers and copies.
pub trait Memory: Sized {
    type Buf<E: Pod>: Send;
    /// A graph prepared for the convolutions.
    type Graph;
    fn describe(&self) -> String;
    /// A zeroed buffer of `n ≥ 1` elements.
    fn alloc<E: Pod>(&self, n: usize) -> Result<Self::Buf<E>>;
    fn capacity<E: Pod>(b: &Self::Buf<E>) -> usize;
    /// Copies `src` into the start of `dst` (in stream order).
    fn upload<E: Pod>(&self, src: &[E], dst: &mut Self::Buf<E>) -> Result<()>;
    /// The first `n` elements (waits for the work before it).
    fn download(&self, src: &Self::Buf<f64>, n: usize) -> Result<Vec<f64>>;
    fn zero<E: Pod>(&self, b: &mut Self::Buf<E>) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// The graph of `n` atoms with these edges (sender → receiver), its CSR views on the
    /// device.
    fn graph(&self, n: usize, receiver: &[u32], sender: &[u32]) -> Result<Self::Graph>;
    /// `g` with its edges from `fold` on reading the weight rows `fold` before them (a
    /// radial row per edge pair; 0: a row per edge).
    fn fold_weights(&self, g: Self::Graph, fold: usize) -> Result<Self::Graph>;
    /// Whether [`Self::fold_weights`] may fold (every convolution's kernels index weights
    /// through the fold); default: yes.
    fn weight_fold_ok(&self) -> bool {
        true
    }
    /// The graph's packed CSR views on the device, by receiver and by sender (the layout of
    /// `Csr::packed`).
    fn graph_views(g: &Self::Graph) -> (&Self::Buf<u32>, &Self::Buf<u32>);
    /// Device bytes the graph's tables hold.
    fn graph_bytes(g: &Self::Graph) -> u64;
}

/// The side lanes beside the main one ([`Exec::fork_side`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The radial network: its forward, its MLP backward, the recomputed `w` beside them.
    Radial,
    /// The backward's recomputed `w` two layers ahead, one lane per `w` slot (0 or 1), so
    /// that waiting for one layer's `w` does not wait for the next one's.
    Ahead(usize),
}

impl Side {
    /// How many side lanes there are.
    pub const COUNT: usize = 3;

    /// This side lane's place among them.
    pub fn index(self) -> usize {
        match self {
            Side::Radial => 0,
            Side::Ahead(slot) => 1 + slot.min(1),
        }
    }
}

/// Launches, products and convolutions in precision `T`.
pub trait Exec<T: Pod>: Memory {
    /// Runs kernel `k` over `iterations` grid-stride iterations with `args` in its
    /// parameter order.
    fn launch(&self, k: Kern, iterations: u64, args: &[Arg<'_, T, Self>]) -> Result<()>;
    /// Row-major `C[m, n] = alpha · A[m, k] · op(B) + beta · C` (`op(B)` = `B [k, n]`, or
    /// the transpose of `B [n, k]` when `trans_b`).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        dims: (usize, usize, usize),
        alpha: T,
        a: &Self::Buf<T>,
        b: &Self::Buf<T>,
        trans_b: bool,
        beta: T,
        c: &mut Self::Buf<T>,
    ) -> Result<()>;
    /// Row-major `C[m, n] = alpha · A[m, k] · B[k, n] + beta · C` on sub-blocks (each
    /// operand: buffer, first element, row stride). `Ok(false)` where the device has no
    /// such product (the caller uses a kernel instead).
    #[allow(clippy::type_complexity)]
    fn gemm_strided(
        &self,
        _dims: (usize, usize, usize),
        _alpha: T,
        _a: (&Self::Buf<T>, usize, usize),
        _b: (&Self::Buf<T>, usize, usize),
        _beta: T,
        _c: (&mut Self::Buf<T>, usize, usize),
    ) -> Result<bool> {
        Ok(false)
    }
    /// Whether [`Self::gemm_tf32`] runs its product (rather than answering `Ok(false)`).
    fn gemm_tf32_available(&self) -> bool {
        false
    }
    /// Row-major `C[m, n] = alpha · A[m, k] · B[k, n] + beta · C` with operands already
    /// exact in TF32 (the 3xTF32 factors), on tensor cores where the device has them;
    /// `Ok(false)` elsewhere (the caller then runs the plain product).
    fn gemm_tf32(
        &self,
        _dims: (usize, usize, usize),
        _alpha: T,
        _a: &Self::Buf<T>,
        _b: &Self::Buf<T>,
        _beta: T,
        _c: &mut Self::Buf<T>,
    ) -> Result<bool> {
        Ok(false)
    }
    /// Whether the kernels' tensor-core paths may run (`mma.sync` TF32: sm_80+); where not,
    /// `ek_gemm_tf32x3_nt` is empty and the caller runs the plain product.
    fn tensor_cores(&self) -> bool {
        false
    }
    /// Whether `k`, a kernel staging operands in dynamic shared memory beyond the default
    /// 48 KB (`ek_gemm_tf32x3_nt_pipe`: [`super::tables::NT_PIPE_SMEM_BYTES`],
    /// `ek_mlp_backward_tc_smem`: [`super::tables::MLP_TC_PACK_BYTES`],
    /// `ek_mlp_forward_tc_smem`: [`super::tables::MLP_TC_PACK_FWD_BYTES`], `ek_linear_tc`:
    /// [`super::tables::LINEAR_TC_SMEM_BYTES`]), may run: tensor
    /// cores, and room for its blocks (set up for it).
    fn staged(&self, _k: Kern) -> bool {
        false
    }
    /// [`Self::gemm_strided`] with operands already exact in TF32 (the 3xTF32 factors of
    /// the Linear products), on tensor cores where the device has them; `Ok(false)`
    /// elsewhere (the caller then runs the plain product).
    #[allow(clippy::type_complexity)]
    fn gemm_strided_tf32(
        &self,
        _dims: (usize, usize, usize),
        _alpha: T,
        _a: (&Self::Buf<T>, usize, usize),
        _b: (&Self::Buf<T>, usize, usize),
        _beta: T,
        _c: (&mut Self::Buf<T>, usize, usize),
    ) -> Result<bool> {
        Ok(false)
    }
    /// Direction `d` of layer `layer`'s convolution on `g`.
    fn conv(
        &self,
        layer: usize,
        d: Direction,
        g: &Self::Graph,
        inputs: &[(Tensor, &Self::Buf<T>)],
        outputs: &mut [(Tensor, &mut Self::Buf<T>)],
    ) -> Result<()>;
    /// What runs the products (e.g. `"cuBLAS"`).
    fn gemm_name(&self) -> &'static str;
    /// Lets the work queued next run on up to `n` more lanes (streams) besides the main one,
    /// each starting after everything queued so far; returns how many it opened (0: one
    /// lane only, the default). Work goes to the lane [`Self::set_lane`] names until
    /// [`Self::join`].
    fn fork(&self, n: usize) -> Result<usize> {
        let _ = n;
        Ok(0)
    }
    /// Sends the next launches and products to lane `i` (0: the main one; `i ≤` what
    /// [`Self::fork`] opened). Work on one lane keeps its order; lanes run concurrently.
    fn set_lane(&self, i: usize) {
        let _ = i;
    }
    /// The main lane waits for every forked lane's work; later work goes to it.
    fn join(&self) -> Result<()> {
        Ok(())
    }
    /// Whether [`Self::fork`] and [`Self::fork_side`] may open lanes (outside profiling).
    fn fork_side_available(&self) -> bool {
        false
    }
    /// Opens side lane `s`, a stream after everything queued so far that runs beside the
    /// main lane (and beside [`Self::fork`]'s lanes and the other side lanes) until
    /// [`Self::join_side`]; `false`: none (it is open already, or one lane only, the default).
    fn fork_side(&self, s: Side) -> Result<bool> {
        let _ = s;
        Ok(false)
    }
    /// Sends the next launches and products to side lane `s` (if open) or the main one.
    fn set_side(&self, s: Option<Side>) {
        let _ = s;
    }
    /// Side lane `s`'s later work waits for side lane `on`'s work so far (both open; else
    /// nothing: one lane keeps its order anyway).
    fn side_waits(&self, s: Side, on: Side) -> Result<()> {
        let _ = (s, on);
        Ok(())
    }
    /// The main lane waits for side lane `s`'s work (if open) and closes it.
    fn join_side(&self, s: Side) -> Result<()> {
        let _ = s;
        Ok(())
    }
    /// Runs `f` (the launches of one step), or a recording of them: `key` names everything
    /// the launches depend on (sizes, buffer addresses), so equal keys mean identical
    /// launches; `None`: not recordable. Default: runs `f`.
    fn run_step(&self, key: Option<u64>, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let _ = key;
        f()
    }
}
