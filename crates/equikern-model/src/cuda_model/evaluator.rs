//! [`CudaSevenNet`]: the whole SevenNet step on one CUDA device (see the module docs of
//! `cuda_model`).
//!
//! Radial MLP: its hidden layers run fused (default; [`MLP_ENV`]): `ek_mlp_hidden` (or, in
//! f32 with TF32 `mma` and widths `[nb ≤ 8, 64, 64]`, `ek_mlp_forward_tc_smem`;
//! [`MLP_TC_FWD_ENV`]) computes the last hidden activation `[E, h_K]` from the edge embedding
//! in one launch, the last product is cuBLAS (or 3xTF32), and the backward is `gw · W_lastᵀ`
//! into the same `[E, h_K]` buffer — with 3xTF32 on, `ek_gemm_tf32x3_nt_pipe` (tensor cores,
//! `gw` and the weight streamed through shared-memory rings, `gw` split into TF32 hi/lo as it
//! is used; [`NT_PIPE_ENV`]) or `ek_gemm_tf32x3_nt` ([`TF32X3_BWD_ENV`]`=0` keeps cuBLAS
//! FP32), else cuBLAS — + `ek_mlp_hidden_backward` (or `ek_mlp_backward_tc_smem`;
//! [`MLP_TC_ENV`]), which recomputes the hidden layers per edge from the embedding. Nothing
//! but that one `[E, h_K]` buffer is held for the MLP.
//! With `EQUIKERN_MODEL_MLP=cublas` each hidden layer is a cuBLAS product + `ek_act` and its
//! pre-activations `[E, hidden]` are kept for the backward (the path before the fusion).
//!
//! e3nn Linears: each path is a strided product `y[:, out] (+)= α · x[:, in] · (W ⊗ I_dim)`
//! (`tables::KronGemm`), cuBLAS; in f32 by default as 3xTF32 on tensor cores
//! ([`TF32X3_LINEAR_ENV`]): the input block split once per Linear call into `[hi | hi | lo]`
//! (`ek_split_tf32_rows`, into `gw`), times `[K_hi; K_lo; K_hi]` placed while that switch is
//! on. The
//! backward's transposed Linears are Linears of their own (`LinearTable::transpose`).
//!
//! Memory policy: a layer's per-edge weights `w [E, weight_numel]` (and, on the cuBLAS MLP
//! path, its pre-activations) are kept from the forward to the backward while all layers'
//! together fit [`KEEP_W_ENV`]'s budget (default [`DEFAULT_KEEP_W_BYTES`], 1 GiB: 7net-0 in
//! f32 keeps them up to ≈ 2,700 Si atoms; 4,096 atoms would need 1.6 GB). Beyond it (917,504 edges:
//! 3,488 weights per edge would be 12.8 GB in f32) they are recomputed: the backward reruns
//! each layer's radial MLP from the edge embedding (the last layer's is still in place), one
//! `w` buffer of `E × max(weight_numel)` serves all layers (two, alternating, where the
//! backward recomputes two layers ahead: [`RECOMPUTE_AHEAD_ENV`]), and the MLP's part of the peak
//! is `w` + `gw` + one `[E, 64]` ≈ 7.3 GB at 917,504 edges (f32; the cuBLAS path holds 4
//! hidden `[E, 64]`, 0.70 GB more); by default ([`KEEP_H_ENV`]) the recomputed layers' last
//! hidden activations are kept (4 × 0.23 GB there) and the recomputation is the last product
//! alone. The MLP backward forms input gradients only (no weight
//! gradients). Node tensors are kept per layer (the conv input and the gate input, a few
//! hundred values per atom).

use super::buffers::{Buf, Mem};
use super::cuda_exec::CudaExec;
use super::exec::{Arg, Exec, Kern, Memory, Pod, Side};
use super::gemm::DevReal;
use super::radial_conv::RadialConvKernels;
use super::tables::{
    kron_tf32x3_right, linear_path_iterations, mlp_hidden_shape, mlp_pack, mlp_tc_fits,
    mlp_tc_iterations, mlp_tc_pack, tc_gemm_iterations, tf32x3_mma_fragments, tf32x3_nt_pack,
    tf32x3_right, GateTable, KronGemm, LinearTable, LinearTc, MlpKernels, LINEAR_ROWS,
    MLP_TC_PACK_BYTES, MLP_TC_PACK_FWD_BYTES, TC_MAX_N,
};
use crate::backend::DeviceCounters;
use crate::error::{ModelError, Result};
use crate::graph::{Graph, Structure};
use crate::neighbours_cuda::CudaNeighbourList;
use crate::nn::{Cutoff, Linear};
use crate::sevennet::{check_overlap, edge_lists, Prediction, SevenNet, StepProfile, MIN_DISTANCE};
use equikern::plan::{Direction, Tensor};
use equikern::{ConvOp, Device};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Environment variable: bytes of device memory the per-layer radial-MLP outputs may take
/// to be kept for the backward instead of recomputed (`0`: always recompute).
pub const KEEP_W_ENV: &str = "EQUIKERN_MODEL_KEEP_W_BYTES";

/// Environment variable: how the radial MLP's hidden layers run: `fused` (default: one
/// `ek_mlp_hidden` launch forward, one `ek_mlp_hidden_backward` backward per layer),
/// `fused2` (the same with the two-pass backward `ek_mlp_hidden_backward2`) or `cublas` (a
/// cuBLAS product + `ek_act` per hidden layer, pre-activations kept). For A/B.
pub const MLP_ENV: &str = "EQUIKERN_MODEL_MLP";

/// Default of [`KEEP_W_ENV`]: 1 GiB. Measured on the H100 (Si 4,096 atoms, 1.6 GB of radial
/// outputs, same call): kept 11.04 ms at 2.21 GiB peak, recomputed 12.18 ms at 1.13 GiB
/// (cuEquivariance's peak: 2.68 GiB); at 32,768 atoms recomputing is the only choice that
/// fits half of cuEquivariance's memory. So keep only what is cheap (water 1,029: 0.78 GB).
pub const DEFAULT_KEEP_W_BYTES: u64 = 1 << 30;

/// Partial sums of the virial's first pass.
const VIRIAL_PARTS: usize = 1024;

/// Result values after the atoms' energies and forces: the virial (9) and the smallest
/// squared edge length (the overlap check, `ek_virial_final`).
const RESULT_TAIL: usize = 10;

/// The error for an edge shorter than [`MIN_DISTANCE`] that the host's check did not name
/// (`check_overlap` names the atoms; this only when the device's rounding differs).
fn overlap(min_r2: f64) -> ModelError {
    ModelError::input(
        "positions",
        format!(
            "overlapping atoms: two are {:.3e} Å apart (< {MIN_DISTANCE} Å)",
            min_r2.sqrt()
        ),
    )
}

/// A Linear on the device: table, coefficients, weights (`W` or per-path `Wᵀ`).
struct DevLinear<T: Pod, D: Memory> {
    tab: Buf<i32, D>,
    coef: Buf<T, D>,
    w: Buf<T, D>,
    dim_in: usize,
    dim_out: usize,
    /// `ek_linear`'s column groups per row group.
    cols: usize,
    /// The map as strided products (`LinearTable::kron`) and their `W ⊗ I` matrices.
    kron: Option<(Vec<KronGemm>, Buf<T, D>)>,
    /// f32 with the 3xTF32 Linears on ([`TF32X3_LINEAR_ENV`]): each product's right factor
    /// `[K_hi; K_lo; K_hi]` (`tables::kron_tf32x3_right`): per-product offsets and the buffer.
    kron_tf32: Option<(Vec<usize>, Buf<T, D>)>,
    /// f32: the map as one `ek_linear_tc` launch (`tables::LinearTc`: table, B pack, nodes
    /// per item of each job); `None` where a block's dimension has no tile.
    tc: Option<DevLinearTc<T, D>>,
}

/// `tables::LinearTc` on the device: its table and B pack, and each job's nodes per item.
struct DevLinearTc<T: Pod, D: Memory> {
    tab: Buf<i32, D>,
    pack: Buf<T, D>,
    nodes_per_item: Vec<usize>,
}

/// A radial MLP's hidden layers as `ek_mlp_hidden[_backward]` read them.
struct FusedMlp<T: Pod, D: Memory> {
    /// `tables::mlp_pack` (scaled, padded hidden weights).
    w: Buf<T, D>,
    /// The kernels' `shape` argument and the packed length.
    shape: i32,
    wlen: i32,
}

struct DevGate<D: Memory> {
    tab: Buf<i32, D>,
    t: GateTable,
}

struct DevLayer<T: Pod, D: Memory> {
    sc: DevLinear<T, D>,
    sc_t: DevLinear<T, D>,
    lin1: DevLinear<T, D>,
    lin1_t: DevLinear<T, D>,
    lin2: DevLinear<T, D>,
    lin2_t: DevLinear<T, D>,
    /// `(h_in, h_out, W [h_in, h_out])` of the radial MLP.
    mlp: Vec<(usize, usize, Buf<T, D>)>,
    /// The fused hidden layers' kernel arguments, or why this MLP has none.
    fused: std::result::Result<FusedMlp<T, D>, String>,
    /// f32: the last MLP weight as the 3xTF32 right factor `[W_hi; W_lo; W_hi]`
    /// (`tables::tf32x3_right`), used when `Resident::tf32x3` is on.
    mlp_last_tf32: Option<Buf<T, D>>,
    /// ... in `ek_radial_last_tf32x3`'s fragment order (`tables::tf32x3_mma_fragments`)
    /// where that kernel takes the shape.
    mlp_last_frag: Option<Buf<T, D>>,
    /// f32, hidden widths `[nb ≤ 8, 64, 64]`: `ek_mlp_backward_tc`'s right factors
    /// (`tables::mlp_tc_pack`).
    mlp_tc: Option<Buf<T, D>>,
    /// f32: the last MLP weight `W [a, b]` as `ek_gemm_tf32x3_nt`'s right factor
    /// (`tables::tf32x3_nt_pack`, `a ≤ 64`): the backward's `gw · Wᵀ` on tensor cores.
    mlp_last_nt: Option<Buf<T, D>>,
    /// f32: `ek_conv_radial_bwd`'s variant ids of this layer's groups, in launch order
    /// (`radial_conv::RadialConvKernels`, the same as the compiled source's).
    rcb: Option<Vec<i32>>,
    act_cst: T,
    gate: DevGate<D>,
    gate_cst: T,
    inv_den: T,
    d1: usize,
    dmid: usize,
    numel: usize,
}

struct Params<T: Pod, D: Memory> {
    embed: DevLinear<T, D>,
    readout_hidden: DevLinear<T, D>,
    readout_hidden_t: DevLinear<T, D>,
    readout_energy: DevLinear<T, D>,
    readout_energy_t: DevLinear<T, D>,
    layers: Vec<DevLayer<T, D>>,
    coeffs: Buf<f64, D>,
    scale: Buf<f64, D>,
    shift: Buf<f64, D>,
}

impl<T: Pod, D: Memory> Params<T, D> {
    /// Every Linear (forward and transposed).
    fn linears(&self) -> impl Iterator<Item = &DevLinear<T, D>> {
        [
            &self.embed,
            &self.readout_hidden,
            &self.readout_hidden_t,
            &self.readout_energy,
            &self.readout_energy_t,
        ]
        .into_iter()
        .chain(
            self.layers
                .iter()
                .flat_map(|l| [&l.sc, &l.sc_t, &l.lin1, &l.lin1_t, &l.lin2, &l.lin2_t]),
        )
    }
}

/// Per-step device tensors (grow-only).
struct Workspace<T: Pod, D: Memory> {
    vec: Buf<f64, D>,
    idx: Buf<u32, D>,
    emb: Buf<T, D>,
    sh: Buf<T, D>,
    onehot: Buf<T, D>,
    x: Buf<T, D>,
    agg: Buf<T, D>,
    hs: Vec<Buf<T, D>>,
    ys: Vec<Buf<T, D>>,
    hid: Buf<T, D>,
    out: Buf<T, D>,
    seed: Buf<T, D>,
    g_hid: Buf<T, D>,
    gx: Buf<T, D>,
    gy: Buf<T, D>,
    g_agg: Buf<T, D>,
    gxc: Buf<T, D>,
    /// Radial-MLP pre-activations `[slot][hidden layer]` and outputs `[slot]`: one slot per
    /// layer when kept for the backward, else slot 0 for all (see the module docs).
    pre: Vec<Vec<Buf<T, D>>>,
    w: Vec<Buf<T, D>>,
    /// Hidden activations (forward), then their gradients (backward): shared scratch (the
    /// cuBLAS MLP path).
    act: Vec<Buf<T, D>>,
    /// The fused MLP path: the last hidden activation (forward), then its gradient
    /// (backward), `[E, h_K]`, shared by all layers.
    hl: Buf<T, D>,
    /// ... per layer while `keep_h`: each recomputed layer's last hidden activation, kept
    /// from the forward so the recomputation of `w` is only the last product.
    hk: Vec<Buf<T, D>>,
    /// While `alt_w`: the recomputed layers' 3xTF32 split rows `[E, 3·h_K]` (the
    /// recomputation runs beside the convolution backward, which writes `gw`).
    rsplit: Buf<T, D>,
    gw: Buf<T, D>,
    gsh_l: Buf<T, D>,
    g_sh: Buf<T, D>,
    g_emb: Buf<T, D>,
    fe: Buf<f64, D>,
    vpart: Buf<f64, D>,
    result: Buf<f64, D>,
    /// Whether this structure keeps every layer's `w` and pre-activations.
    keep: bool,
    /// Whether it recomputes `w` from kept last hidden activations (`hk`).
    keep_h: bool,
    /// Whether recomputed `w` alternates between two slots (`w[0]`, `w[1]`), the backward
    /// recomputing each layer's two layers ahead ([`RECOMPUTE_AHEAD_ENV`]).
    alt_w: bool,
}

/// SevenNet with every layer resident on a device `D` (CUDA: [`CudaSevenNet`]; the CPU
/// emulation test runs the same step), computing in `T`.
pub struct Resident<T: DevReal, D: Exec<T>> {
    model: SevenNet<T>,
    d: D,
    params: Params<T, D>,
    ws: Mutex<Workspace<T, D>>,
    mem: Arc<Mem>,
    env: (i32, f64, f64),
    sh_dim: usize,
    keep_w_bytes: u64,
    /// The radial MLP's last product as 3xTF32 (f32; see `tf32x3_enabled`).
    tf32x3: bool,
    /// ... by `ek_radial_last_tf32x3` where the device can (see `tf32x3_mma_enabled`).
    tf32x3_mma: bool,
    /// ... and its backward `gw · Wᵀ` by `ek_gemm_tf32x3_nt` ([`TF32X3_BWD_ENV`]).
    tf32x3_bwd: bool,
    /// ... and the e3nn Linear products too, while `tf32x3` is on ([`TF32X3_LINEAR_ENV`]).
    tf32x3_linear: bool,
    /// Smallest `k` and `n` of a Linear product run as 3xTF32 (see
    /// [`DEFAULT_TF32X3_LINEAR_MIN`]).
    tf32x3_linear_min: usize,
    /// The radial MLP's hidden layers fused ([`MLP_ENV`]).
    mlp_fused: bool,
    /// ... with the two-pass backward kernel.
    mlp_two_pass: bool,
    /// The Linears' paths between blocks of dim 3, 5, 7 by `ek_linear_path<dim>` instead of
    /// `W ⊗ I_dim` products ([`LINEAR_PATHS_ENV`]).
    linear_paths: bool,
    /// `ek_mlp_hidden` writes the 3xTF32 split rows itself ([`MLP_SPLIT_ENV`]).
    mlp_split: bool,
    /// The fused MLP's backward by `ek_mlp_backward_tc` ([`MLP_TC_ENV`]).
    mlp_tc: bool,
    /// The fused MLP's forward by `ek_mlp_forward_tc` ([`MLP_TC_FWD_ENV`]).
    mlp_tc_fwd: bool,
    /// L1 prefetches in the tensor-core radial backward kernels ([`PREFETCH_ENV`]).
    prefetch: bool,
    /// The backward `gw · Wᵀ` by `ek_gemm_tf32x3_nt_pipe` where it can run ([`NT_PIPE_ENV`]).
    nt_pipe: bool,
    /// `ek_mlp_backward_tc` with its pack in shared memory where it can run
    /// ([`MLP_TC_SMEM_ENV`]).
    mlp_tc_smem: bool,
    /// Fused MLP, `w` recomputed: keep each layer's last hidden activation ([`KEEP_H_ENV`]).
    keep_h: bool,
    /// f32 Linears by `ek_linear_tc` where they have its table ([`LINEAR_TC_ENV`]).
    linear_tc: bool,
    /// The convolution backward with the radial last product fused in, where a layer has
    /// it ([`CONV_RADIAL_ENV`]).
    conv_radial: bool,
    /// A Linear's products into different output blocks on concurrent lanes ([`LANES_ENV`]).
    lanes: bool,
    /// ... and each layer's radial MLP backward on the side lane ([`SIDE_MLP_BWD_ENV`]).
    side_mlp_bwd: bool,
    /// [`RADIAL_AHEAD_ENV`].
    radial_ahead: bool,
    /// [`RECOMPUTE_AHEAD_ENV`].
    recompute_ahead: bool,
    /// One radial row per edge pair on graphs in pair order ([`PAIR_ROWS_ENV`]).
    pair_rows: bool,
}

/// SevenNet resident on one CUDA device (see the module docs).
pub type CudaSevenNet<T> = Resident<T, CudaExec<T>>;

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::backend("cuda", e)
}

/// The radial MLP's last product as 3xTF32 on tensor cores: on for f32 unless
/// `EQUIKERN_MODEL_TF32X3=0`. Measured on the H100 against sevenn float64 (the 12 reference
/// structures): worst force error 1.93e-5 eV/Å vs 4.87e-6 with plain FP32 products (the
/// acceptance bound is 2e-4), for 11 ms less per step at 32,768 Si atoms (97.3 → 86.2 ms);
/// session 5 saw stress 1.1e-5 relative to the f64 model on a triclinic cell (2–3× the
/// plain products' distance) and kept it off; the speed won (every error stays ≥ 10× inside
/// its bound), and the switch stays for bitwise-FP32 users.
fn tf32x3_enabled<T: DevReal>() -> bool {
    T::NAME == "f32" && std::env::var("EQUIKERN_MODEL_TF32X3").as_deref() != Ok("0")
}

/// Rows per block of `ek_radial_last_tf32x3` (`EK_RL_ROWS`).
const RADIAL_LAST_ROWS: usize = 256;

/// Whether `ek_radial_last_tf32x3` takes a last product of `a` inputs and `b` outputs
/// (`k % 8 == 0`, `k ≤ EK_RL_KMAX`, `n % 8 == 0`; 7net-0: 64 → 960 / 384 / 224).
fn radial_last_mma_fits(a: usize, b: usize) -> bool {
    a > 0 && a.is_multiple_of(8) && a <= 64 && b.is_multiple_of(8)
}

/// The 3xTF32 last product on tensor cores by our kernel (`ek_radial_last_tf32x3`, h split
/// in registers) where the device has them with `EQUIKERN_MODEL_TF32X3_MMA=1`; by default
/// cuBLAS on the split rows written by `ek_split_tf32`. Measured on the H100 (Si 32,768
/// atoms, 917,504 edges): a first version (one block of 128 rows reloading all of `W`
/// through shared memory, loads and `mma` not overlapped) 2.80 ms per call averaged over
/// the 960/384/224-wide products against cuBLAS 1.62 (960) + the split pass 0.34, step 92.3
/// vs 82.5 ms; this one (W in fragment order through L1, 32 rows per warp) 113.3 vs 93.1 ms
/// per step: both lose to the split pass they save.
fn tf32x3_mma_enabled() -> bool {
    std::env::var("EQUIKERN_MODEL_TF32X3_MMA").as_deref() == Ok("1")
}

/// Environment variable: the radial MLP's backward product `gw · W_lastᵀ` by the tensor-core
/// kernel `ek_gemm_tf32x3_nt` (f32 with 3xTF32 on, sm_80+, `a ≤ 64`) unless `0` (cuBLAS,
/// plain FP32). On by default since session 11: in one H100 call, two rounds, Si 32,768
/// 71.16 / 71.13 ms per step against cuBLAS's 71.80 / 71.64 (Si 4,096 equal: 10.51 / 10.49
/// vs 10.47 / 10.56), the product alone 2.561 vs 2.612 ms, rel. L2 2.61e-7 vs cuBLAS FP32's
/// 3.22e-7 at k = 960. Session 7 measured it missing its
/// accuracy (forces vs sevenn float64 1.85e-5 → 1.04e-4 eV/Å): the tensor cores' truncating
/// accumulation over k = 960 chained 360 mma; with each 32-deep chunk's partials added in
/// FP32 (session 9, H100) it matches: rel. L2 2.6e-7 at k = 960 (cuBLAS FP32 3.2e-7), forces
/// 1.96e-5 eV/Å — but 2.55 ms against cuBLAS FP32's 2.62 for 917,504 × 960 → 64, and the
/// SevenNet step equal within noise (Si 32,768: 76.10 vs 76.01 ms).
pub const TF32X3_BWD_ENV: &str = "EQUIKERN_MODEL_TF32X3_BWD";

/// [`TF32X3_BWD_ENV`] is not `0`.
fn tf32x3_bwd_enabled() -> bool {
    std::env::var(TF32X3_BWD_ENV).as_deref() != Ok("0")
}

/// Environment variable: `1` runs the e3nn Linear products as 3xTF32 too (f32, with
/// `EQUIKERN_MODEL_TF32X3` on): every Linear product with `k` and `n` ≥
/// [`DEFAULT_TF32X3_LINEAR_MIN`] on tensor cores, its input block split once into
/// `[hi | hi | lo]` (`ek_split_tf32_rows`, into the radial-gradient buffer `gw`, free during
/// every Linear), times the right factor `[K_hi; K_lo; K_hi]` placed while the switch is
/// on. Default off: on the H100 it lost (Si 32,768: 93.1 ms per step with it, 91.6 without; 4,096:
/// 13.5 vs 13.3): the 74 split passes per step (~4.6 ms) eat the tensor cores' gain on
/// products of only 32,768 rows.
pub const TF32X3_LINEAR_ENV: &str = "EQUIKERN_MODEL_TF32X3_LINEAR";

/// Smallest `k` and `n` of a Linear product run as 3xTF32. Below it a product is a few
/// kFLOP per row, bound by memory and launch latency rather than by FP32 throughput: the
/// split pass (one more read of the block, three writes) and three times the multiply-adds
/// would not be paid back by the tensor cores. Every 7net-0 product is ≥ 64 wide (the
/// narrowest: the readout's 128 → 64); the small test models' are narrower (tests lower it).
pub const DEFAULT_TF32X3_LINEAR_MIN: usize = 64;

fn tf32x3_linear_enabled() -> bool {
    std::env::var(TF32X3_LINEAR_ENV).as_deref() == Ok("1")
}

/// Environment variable: `1` runs the e3nn Linear paths between blocks of dim 3, 5, 7 by
/// `ek_linear_path<dim>` (see kernels.cu), which computes only the path's `mul_in · mul_out
/// · dim` multiply-adds per row; default: every path as a library product, those of dim > 1
/// as `W ⊗ I_dim` (dim times the multiply-adds; at Si 32,768 atoms ≈ 7.9 ms of the 72 ms
/// step are such products). Opt-in until measured on the GPU: written in session 10, checked
/// by the CPU emulation (ragged shapes; the 7net-0 step in f64 and f32) and by NVRTC + ptxas
/// for sm_90 (0 spills; 66 / 99 / 128 registers for dim 3 / 5 / 7), but that session had no
/// device time left to time it (`benches/h100_linear_paths.sh` is the A/B).
pub const LINEAR_PATHS_ENV: &str = "EQUIKERN_MODEL_LINEAR_PATHS";

fn linear_paths_enabled() -> bool {
    std::env::var(LINEAR_PATHS_ENV).as_deref() == Ok("1")
}

/// Environment variable: unless `0`, the fused radial MLP's backward (`[nb ≤ 8, 64, 64]`,
/// f32, TF32 `mma`) runs as `ek_mlp_backward_tc` (3xTF32 on tensor cores, a warp per 16
/// edges) instead of `ek_mlp_hidden_backward` (FP32 pipes, one edge per thread: 1.11 ms per
/// call at 917,504 edges on the H100, four times its FP32 bound). Measured on the H100
/// (session 12, the same binary, two rounds): 0.84 ms per call at 225 registers and one block
/// per SM, the step 69.31 → 67.95 ms at Si 32,768 atoms and 10.17 → 9.92 at 4,096; forces vs
/// sevenn float64 2.6e-5 eV/Å. On by default since.
pub const MLP_TC_ENV: &str = "EQUIKERN_MODEL_MLP_TC";

/// Environment variable: unless `0`, the fused radial MLP's forward (`[nb ≤ 8, 64, 64]`, f32,
/// TF32 `mma`) runs on tensor cores (3xTF32, a warp per 16 edges, the same pack as
/// [`MLP_TC_ENV`]'s) instead of by `ek_mlp_hidden` (FP32 pipes: 0.53 ms per call at 917,504
/// edges on the H100, bound by its broadcast weight loads from shared memory, Nsight Compute
/// session 13): by `ek_mlp_forward_tc_smem`, W1 and W2 in shared memory per block
/// ([`MLP_TC_SMEM_ENV`]): 0.40 ms per call at 71 % of DRAM, the step 64.53 → 63.93 ms at Si
/// 32,768 atoms and 9.54 → 9.43 at 4,096 (session 13, two rounds, faster in each; default
/// since). With `EQUIKERN_MODEL_MLP_TC_SMEM=0`, by `ek_mlp_forward_tc`, the pack read through
/// L1, which lost (session 12: 0.62 ms per call against 0.53).
pub const MLP_TC_FWD_ENV: &str = "EQUIKERN_MODEL_MLP_TC_FWD";

/// Environment variable: `1` has the tensor-core radial backward kernels prefetch into L1
/// what they read next — `ek_mlp_backward_tc` its warp's next tile of `g_last` and `emb`
/// rows, `ek_gemm_tf32x3_nt` its rows' chunk after next — where Nsight Compute showed them
/// latency-bound at 8–16 warps per SM (session 12: the nt kernel a third of its stalls on
/// L1TEX loads). Opt-in: written in session 12, untimed (the session's device time ran out);
/// `benches/h100_prefetch.sh` is its A/B.
pub const PREFETCH_ENV: &str = "EQUIKERN_MODEL_PREFETCH";

/// Environment variable: unless `0`, the radial MLP's backward product `gw · W_lastᵀ` (3xTF32
/// on tensor cores, [`TF32X3_BWD_ENV`]) runs by `ek_gemm_tf32x3_nt_pipe` — A (each warp its
/// rows) and B streamed by `cp.async` into 4-stage rings in shared memory, three chunks in
/// flight — where it can, instead of `ek_gemm_tf32x3_nt` (its next chunk of A in registers).
/// Measured on the H100 (session 13): 2.01 vs 2.63 ms per call at 917,504 × 960 → 64 (55 %
/// of DRAM instead of 44 %), the step 66.61 → 64.15 ms at Si 32,768 atoms and 9.90 → 9.54 at
/// 4,096; a first form with B read through L1 and no barriers had lost (3.05 ms, L1 hit rate
/// 69 %). Needs 192 KB of shared memory per block (sm_90; not sm_80/86/89) and `k % 4 == 0`;
/// elsewhere the older kernel runs.
pub const NT_PIPE_ENV: &str = "EQUIKERN_MODEL_NT_PIPE";

/// Environment variable: `1` runs each f32 e3nn Linear (blocks of dim ≤ 8) as one
/// `ek_linear_tc` launch — every path on tensor cores (3xTF32) as `dim` products over the
/// nodes, input rows and weights streamed through a shared-memory ring — where the device
/// has TF32 `mma` and 104 KB per block, instead of one cuBLAS product per path with
/// `W ⊗ I_dim` (dim times the multiply-adds; at Si 4,096 atoms 74 products per step ≈ 1.9
/// ms, at 32,768 ≈ 10 ms in the session-13 profiles). Opt-in: its first form lost on the
/// H100 (session 14, call 1: 65.7 vs 64.2 ms per step at 32,768 atoms, 9.56 vs 9.45 at
/// 4,096; B read through L1 per `mma`, two stages) and, with 12 tensor-core products chained
/// per partial sum, left the triclinic cell's stress 4.1e-6 eV/Å³ from sevenn float64
/// (bound 2e-6); this form (B staged with the rows, three stages, a fresh partial per k
/// step) is checked by the CPU emulation and NVRTC (122 registers, no spill) but untimed:
/// `benches/h100_linear_tc.sh` is its A/B and GPU tests.
pub const LINEAR_TC_ENV: &str = "EQUIKERN_MODEL_LINEAR_TC";

/// Environment variable: `1` runs each interaction layer's convolution backward fused with
/// its radial network's last product (`ek_conv_radial_bwd`, `radial_conv.rs`): the per-edge
/// weights are recomputed on tensor cores from the kept last hidden activation inside the
/// convolution, and the product's input gradient leaves it, so neither `w` nor `g_w`
/// (`[E, 960]` for SevenNet-0's layers 1-3) is written. Where it runs: f32, TF32 tensor
/// cores with 113 KB of shared memory per block, the fused radial MLP with its last hidden
/// activation kept (layers before the last), and a layer shape that qualifies
/// (`RcbShape::of`). Opt-in until timed.
pub const CONV_RADIAL_ENV: &str = "EQUIKERN_MODEL_CONV_RADIAL";

/// Environment variable: unless `0`, a Linear's plain products into different output blocks
/// (SevenNet-0: the `0e`, `1e`, `2e` blocks) run on concurrent lanes — CUDA streams forked
/// from the step's and joined after the Linear, recorded into the step's graph as parallel
/// branches — up to [`LANES_MAX_ROWS`] rows, and the radial network (edges only) runs on a
/// side lane beside the node-side work: in the forward beside the self-connection and the
/// first Linear, in the backward (its recomputation) beside the gate's backward and lin2ᵀ.
/// Why: at Si 4,096 atoms each Linear product is ≈ 100 blocks of 25 µs (below one wave of
/// the H100's 132 SMs) and a step has 74 of them, one after another (≈ 1.9 ms). Measured on
/// the H100 (session 15, two rounds, same binary): Si 4,096 9.42 → 9.21 ms per step, water
/// 1,029 5.66 → 5.40, Si 32,768 64.07 → 64.05; results bitwise equal (`lanes_match_one_lane`).
/// Off under `EQUIKERN_MODEL_PROFILE` (it times calls on the main stream). On by default.
pub const LANES_ENV: &str = "EQUIKERN_MODEL_LANES";

/// Environment variable: unless `0` (with the lanes on), each layer's radial MLP backward
/// (`g_w·Wᵀ` and the hidden layers', edges only) also runs on the side lane, beside that
/// layer's `sc_t`, `lin1_t` and the next layer's gate backward and `lin2ᵀ`; the next layer's
/// recomputed `w` follows it there. Measured on the H100 (session 15, lanes on in both, two
/// rounds): Si 4,096 9.16 → 8.92 ms per step, water 1,029 5.41 → 5.30, Si 32,768 63.56 →
/// 63.49; results bitwise equal to one lane. On by default.
pub const SIDE_MLP_BWD_ENV: &str = "EQUIKERN_MODEL_SIDE_MLP_BWD";

/// Environment variable: `1` (with the lanes on, where `w` is recomputed from kept last
/// hidden activations): recomputed `w` alternates between two buffers, so that the backward
/// recomputes each layer's `w` two layers ahead, on a side lane of its own (`Side::Ahead`)
/// beside the convolution backward in between, instead of beside the gate's backward and
/// lin2ᵀ after the previous layer's MLP backward. Costs one more `w` buffer and the split
/// rows' scratch (Si 4,096 atoms: 220 + 44 MB; 32,768: 2.0 GB). Why it was tried: keeping
/// every `w` (no recomputation; 0.54 of cuEquivariance's peak memory, beyond the target) took
/// Si 4,096 from 8.07 to 7.34 ms (H100, session 17). Measured (H100, session 17, two rounds,
/// with [`RADIAL_AHEAD_ENV`] on): Si 4,096 7.99 / 7.90 → 7.92 / 7.89 ms, water 1,029 4.66 /
/// 4.64 → 4.64 / 4.61, Si 32,768 52.48 / 52.59 → 52.59 / 52.49 — no gain for the memory: the
/// recomputation's cost is its share of a saturated GPU, not a wait. Off by default.
pub const RECOMPUTE_AHEAD_ENV: &str = "EQUIKERN_MODEL_RECOMPUTE_AHEAD";

/// Environment variable: `1` (with the lanes on): the forward starts each layer's radial
/// network on the side lane as soon as its inputs and `w`'s buffer are free: layer 0's right
/// after the edge geometry (beside the embedding, `sc` and `lin1`), layer `t + 1`'s right
/// after layer `t`'s convolution has read `w` (before it, with [`RECOMPUTE_AHEAD_ENV`]'s two
/// buffers) — instead of beside `sc` and `lin1` alone. Measured on the H100 (session 17, two
/// rounds, both switches: on / on, on / off, off / on, off / off): Si 4,096 7.92 / 7.89,
/// 7.99 / 7.90, 8.01 / 8.03, 7.96 / 8.01 ms; water 1,029 4.64 / 4.61, 4.66 / 4.64, 4.70 /
/// 4.69, 4.68 / 4.73; Si 32,768 52.59 / 52.49, 52.48 / 52.59, 52.31 / 52.27, 52.29 / 52.70 —
/// ≤ 1 % either way (0.1 ms faster at 4,096, 0.25 slower at 32,768). Off by default.
pub const RADIAL_AHEAD_ENV: &str = "EQUIKERN_MODEL_RADIAL_AHEAD";

/// Environment variable: unless `0`, a graph in pair order (`Graph::build`'s and the CUDA
/// neighbour list's: edge `pairs + p` is edge `p` reversed) gets one radial row per pair. The
/// radial network's input is the edge length alone, so both directions of a pair have the
/// same weights `w`: the MLP and its last product run on half the rows, `w` takes half the
/// memory, the convolutions read row `e − pairs` for `e ≥ pairs` (the plan's weight fold),
/// the pair's gradient is the sum of its two edges' `g_w` rows (`ek_pair_sum`) and each edge
/// takes half of the pair's radial force. Not with [`CONV_RADIAL_ENV`]. On by default.
pub const PAIR_ROWS_ENV: &str = "EQUIKERN_MODEL_PAIR_ROWS";

/// Most rows of a Linear whose output blocks take separate lanes (beyond, each product
/// fills the GPU by itself).
pub const LANES_MAX_ROWS: usize = 8192;

/// Environment variable: unless `0`, the radial MLP's backward on tensor cores
/// ([`MLP_TC_ENV`]) runs by `ek_mlp_backward_tc_smem`: the weight pack (72 KB, read whole by
/// every warp per 16 edges) copied once per block into shared memory and read from there
/// instead of through L1, the blocks the device keeps resident (two per SM) striding over
/// the tiles. Measured on the H100 (session 13): 0.59 vs 0.69 ms per call at 917,504 edges;
/// the step 64.27 → 64.03 ms at Si 32,768 atoms and 9.57 → 9.46 at 4,096 (two rounds, faster
/// in each). Needs 106 KB of shared memory per block; elsewhere `ek_mlp_backward_tc` runs.
/// The forward on tensor cores ([`MLP_TC_FWD_ENV`]) then reads its W1, W2 from shared memory
/// the same way (`ek_mlp_forward_tc_smem`).
pub const MLP_TC_SMEM_ENV: &str = "EQUIKERN_MODEL_MLP_TC_SMEM";

/// Environment variable: unless `0`, `ek_mlp_hidden` writes the last hidden activation
/// directly as the 3xTF32 product's split rows `[hi | hi | lo]` (into `gw`, as
/// `ek_split_tf32` would), where the radial MLP is fused and the product runs on cuBLAS's
/// TF32 tensor ops: no separate pass over `[E, 64]` (`ek_split_tf32`, 0.33 ms per call at Si
/// 32,768 atoms), for writing `[E, 192]` instead of `[E, 64]` (both where the hidden
/// activation is kept). Bit-identical results. Measured on the H100 (session 11): with each
/// lane storing its own row the 705 MB went out at ≈ 0.4 TB/s and the step lost 10 ms at
/// 32,768 atoms; through the per-warp shared tile (`ek_mlp_last_fwd`) `ek_mlp_hidden` takes
/// 0.53 ms per call against 0.41 + 0.33, and the step 69.29 vs 70.17 ms (4,096: 10.25 vs
/// 10.34), median of two rounds. On by default since.
pub const MLP_SPLIT_ENV: &str = "EQUIKERN_MODEL_MLP_SPLIT";

fn mlp_split_enabled() -> bool {
    std::env::var(MLP_SPLIT_ENV).as_deref() != Ok("0")
}

/// Environment variable: unless `0`, when the radial MLP is fused and `w` is recomputed for
/// the backward (beyond [`KEEP_W_ENV`]'s budget), each recomputed layer's last hidden
/// activation `[E, h_K]` is kept from the forward, so the recomputation is the last product
/// alone: at Si 32,768 atoms four `ek_mlp_hidden` launches for 4 × 235 MB more device
/// memory. On by default since session 11 (H100, one call, two rounds, with the Linear paths
/// by kernel: Si 32,768 71.50 / 69.85 ms per step without / with, Si 4,096 11.41 / 11.17;
/// peak 8.88 → 9.75 GiB at 32,768, 0.47 of cuEquivariance's 20.86).
pub const KEEP_H_ENV: &str = "EQUIKERN_MODEL_KEEP_H";

/// [`MLP_ENV`]: `(fused, two-pass backward)`, `None` when not set (fused where the model's
/// shapes allow it, else cuBLAS).
fn mlp_mode_from_env() -> Result<Option<(bool, bool)>> {
    match std::env::var(MLP_ENV) {
        Err(_) => Ok(None),
        Ok(v) => match v.trim() {
            "" => Ok(None),
            "fused" => Ok(Some((true, false))),
            "fused2" => Ok(Some((true, true))),
            "cublas" => Ok(Some((false, false))),
            other => Err(ModelError::Unsupported(format!(
                "{MLP_ENV}={other}: expected `fused`, `fused2` or `cublas`"
            ))),
        },
    }
}

fn cast<T: DevReal>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

impl<T: DevReal, D: Memory> DevLinear<T, D> {
    fn new(d: &D, mem: &Arc<Mem>, t: LinearTable) -> Result<Self> {
        let tc = match &t.kron {
            Some((g, k)) if T::NAME == "f32" => match LinearTc::new(g, k)? {
                Some(tc) => {
                    let pack: Vec<f64> = tc.pack.iter().map(|&v| f64::from(v)).collect();
                    Some(DevLinearTc {
                        tab: Buf::from_host(d, mem, &tc.tab)?,
                        pack: Buf::from_host(d, mem, &cast::<T>(&pack))?,
                        nodes_per_item: tc.nodes_per_item,
                    })
                }
                None => None,
            },
            _ => None,
        };
        // Only products whose rows start 16-byte aligned (cuBLAS's vectorised kernels); the
        // others (the 89-wide one-hot embedding, the 64 → 1 readout) are small and stay on
        // `ek_linear`. (Their slow first profile, 6.3 ms, was cuBLAS's one-time set-up
        // landing on the first product, not the shape.)
        let kron = t.kron.filter(|(g, _)| {
            t.dim_in.is_multiple_of(4)
                && t.dim_out.is_multiple_of(4)
                && g.iter().all(|g| {
                    [g.in_off, g.out_off, g.k, g.n, g.k_off]
                        .iter()
                        .all(|v| v.is_multiple_of(4))
                })
        });
        Ok(DevLinear {
            tab: Buf::from_host(d, mem, &t.tab)?,
            coef: Buf::from_host(d, mem, &cast::<T>(&t.coef))?,
            w: Buf::from_host(d, mem, &cast::<T>(&t.weight))?,
            dim_in: t.dim_in,
            dim_out: t.dim_out,
            cols: t.cols,
            kron: match kron {
                Some((g, k)) => Some((g, Buf::from_host(d, mem, &cast::<T>(&k))?)),
                None => None,
            },
            // made by `Resident::place_linear_tf32` while the 3xTF32 Linears are on
            kron_tf32: None,
            tc,
        })
    }
    fn fwd(d: &D, mem: &Arc<Mem>, l: &Linear<T>) -> Result<Self> {
        Self::new(d, mem, LinearTable::forward(l)?)
    }
    fn bwd(d: &D, mem: &Arc<Mem>, l: &Linear<T>) -> Result<Self> {
        Self::new(d, mem, LinearTable::transpose(l)?)
    }
}

impl<T: DevReal> CudaSevenNet<T> {
    /// Uploads every parameter of `model` to `device` (a CUDA device) once and compiles the
    /// kernels once (NVRTC, cached on disk by equikern-cuda).
    pub fn new(model: &SevenNet<T>, device: Device) -> Result<Self> {
        let exec = CudaExec::new(model, device)?;
        Self::with_exec(model, exec)
    }

    /// The layers' convolutions (their plans are built on first use, then reused).
    pub fn ops(&self) -> &[ConvOp] {
        self.d.ops()
    }
}

impl<T: DevReal, D: Exec<T>> Resident<T, D> {
    /// `model` on the device operations `d` (parameters uploaded once, here).
    pub fn with_exec(model: &SevenNet<T>, d: D) -> Result<Self> {
        let lmax = model.sh_ls.iter().copied().max().unwrap_or(0);
        if model.sh_ls != (0..=lmax).collect::<Vec<_>>() {
            return Err(ModelError::Unsupported(format!(
                "spherical harmonics degrees {:?}: the resident evaluator needs 0..=lmax",
                model.sh_ls
            )));
        }
        let env = match model.envelope {
            Cutoff::Xplor { r_on, r_cut } if r_cut == model.bessel.cutoff => (0, r_on, 0.0),
            Cutoff::Polynomial { r_cut, p } if r_cut == model.bessel.cutoff => (1, 0.0, p),
            _ => {
                return Err(ModelError::Unsupported(
                    "cutoff envelope and Bessel basis with different cutoffs".into(),
                ))
            }
        };
        let sh_dim: usize = model.sh_ls.iter().map(|l| 2 * *l as usize + 1).sum();
        let mem = Arc::new(Mem::default());
        // The fused MLP kernels of this model's source (the same shapes as `CudaExec` and the
        // emulation compile: `tables::model_kernel_source`).
        let mk = MlpKernels::of(model);
        let rk = RadialConvKernels::of(model);
        let mut layers = Vec::new();
        for (t, l) in model.layers.iter().enumerate() {
            let (d1, d2, dmid, numel) = l.tp_dims;
            if d2 != sh_dim {
                return Err(ModelError::Unsupported(format!(
                    "layer {t}: the convolution's second input is not the edge harmonics"
                )));
            }
            if l.lin2.dim_in != dmid
                || l.lin1.dim_out != d1
                || l.weight_nn.dim_out() != numel
                || l.weight_nn.dim_in() != model.bessel.coeffs.len()
                || l.weight_nn.layers.is_empty()
            {
                return Err(ModelError::Unsupported(format!(
                    "layer {t}: inconsistent dimensions"
                )));
            }
            let mlp = l
                .weight_nn
                .layers
                .iter()
                .map(|(a, b, w)| Ok((*a, *b, Buf::from_host(&d, &mem, w)?)))
                .collect::<Result<Vec<_>>>()?;
            let fused = match mlp_hidden_shape(&l.weight_nn) {
                Ok(w) => {
                    let shape = mk.index(&w).ok_or_else(|| {
                        err(format!("layer {t}: radial MLP shape {w:?} not compiled"))
                    })?;
                    let pack = mlp_pack(&l.weight_nn, mk.vw);
                    debug_assert_eq!(pack.len(), mk.packed_len(shape));
                    Ok(FusedMlp {
                        wlen: i32::try_from(pack.len()).map_err(err)?,
                        w: Buf::from_host(&d, &mem, &cast::<T>(&pack))?,
                        shape: shape as i32,
                    })
                }
                Err(e) => Err(format!("layer {t}: {e}")),
            };
            let gt = GateTable::new(&l.gate)?;
            // the same factors in `ek_radial_last_tf32x3`'s fragment order
            let mlp_last_frag = match (l.weight_nn.layers.last(), T::NAME == "f32") {
                (Some((a, b, w)), true) if radial_last_mma_fits(*a, *b) => {
                    let w32: Vec<f32> = w.iter().map(|v| v.to_f64() as f32).collect();
                    let f: Vec<f64> = tf32x3_mma_fragments(&w32, *a, *b)
                        .into_iter()
                        .map(f64::from)
                        .collect();
                    Some(Buf::from_host(&d, &mem, &cast::<T>(&f))?)
                }
                _ => None,
            };
            let mlp_last_tf32 = match (l.weight_nn.layers.last(), T::NAME == "f32") {
                (Some((a, b, w)), true) => {
                    let w32: Vec<f32> = w.iter().map(|v| v.to_f64() as f32).collect();
                    let cat: Vec<f64> = tf32x3_right(&w32, *a, *b)
                        .into_iter()
                        .map(f64::from)
                        .collect();
                    Some(Buf::from_host(&d, &mem, &cast::<T>(&cat))?)
                }
                _ => None,
            };
            let mlp_last_nt = match (l.weight_nn.layers.last(), T::NAME == "f32") {
                (Some((a, b, w)), true) if *a <= TC_MAX_N => {
                    let w32: Vec<f32> = w.iter().map(|v| v.to_f64() as f32).collect();
                    let pack: Vec<f64> = tf32x3_nt_pack(&w32, *a, *b, true)?
                        .into_iter()
                        .map(f64::from)
                        .collect();
                    Some(Buf::from_host(&d, &mem, &cast::<T>(&pack))?)
                }
                _ => None,
            };
            let mlp_tc = match (mlp_hidden_shape(&l.weight_nn), T::NAME == "f32") {
                (Ok(w), true) if mlp_tc_fits(&w) => {
                    let pack: Vec<f64> = mlp_tc_pack(&l.weight_nn)?
                        .into_iter()
                        .map(f64::from)
                        .collect();
                    Some(Buf::from_host(&d, &mem, &cast::<T>(&pack))?)
                }
                _ => None,
            };
            layers.push(DevLayer {
                fused,
                mlp_tc,
                mlp_last_tf32,
                mlp_last_frag,
                mlp_last_nt,
                rcb: if T::NAME == "f32" {
                    rk.variants(l)
                } else {
                    None
                },
                sc: DevLinear::fwd(&d, &mem, &l.sc)?,
                sc_t: DevLinear::bwd(&d, &mem, &l.sc)?,
                lin1: DevLinear::fwd(&d, &mem, &l.lin1)?,
                lin1_t: DevLinear::bwd(&d, &mem, &l.lin1)?,
                lin2: DevLinear::fwd(&d, &mem, &l.lin2)?,
                lin2_t: DevLinear::bwd(&d, &mem, &l.lin2)?,
                mlp,
                act_cst: l.weight_nn.act_cst,
                gate: DevGate {
                    tab: Buf::from_host(&d, &mem, &gt.tab)?,
                    t: gt,
                },
                gate_cst: l.gate.act_cst,
                inv_den: T::from_f64(1.0 / l.denominator),
                d1,
                dmid,
                numel,
            });
        }
        let params = Params {
            embed: DevLinear::fwd(&d, &mem, &model.embed)?,
            readout_hidden: DevLinear::fwd(&d, &mem, &model.readout_hidden)?,
            readout_hidden_t: DevLinear::bwd(&d, &mem, &model.readout_hidden)?,
            readout_energy: DevLinear::fwd(&d, &mem, &model.readout_energy)?,
            readout_energy_t: DevLinear::bwd(&d, &mem, &model.readout_energy)?,
            layers,
            coeffs: Buf::from_host(&d, &mem, &model.bessel.coeffs)?,
            scale: Buf::from_host(&d, &mem, &model.scale)?,
            shift: Buf::from_host(&d, &mem, &model.shift)?,
        };
        if params.readout_energy.dim_out != 1 {
            return Err(ModelError::Unsupported(
                "the energy readout must output one scalar".into(),
            ));
        }
        let nl = model.layers.len();
        let hidden = model
            .layers
            .iter()
            .map(|l| l.weight_nn.layers.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let b = || Buf::<T, D>::new(&d, &mem);
        let many = |k: usize| (0..k).map(|_| b()).collect::<Result<Vec<_>>>();
        let ws = Workspace {
            vec: Buf::new(&d, &mem)?,
            idx: Buf::new(&d, &mem)?,
            emb: b()?,
            sh: b()?,
            onehot: b()?,
            x: b()?,
            agg: b()?,
            hs: many(nl)?,
            ys: many(nl)?,
            hid: b()?,
            out: b()?,
            seed: b()?,
            g_hid: b()?,
            gx: b()?,
            gy: b()?,
            g_agg: b()?,
            gxc: b()?,
            pre: (0..nl).map(|_| many(hidden)).collect::<Result<_>>()?,
            w: many(nl)?,
            act: many(hidden)?,
            hl: b()?,
            hk: many(nl)?,
            rsplit: b()?,
            gw: b()?,
            gsh_l: b()?,
            g_sh: b()?,
            g_emb: b()?,
            fe: Buf::new(&d, &mem)?,
            vpart: Buf::new(&d, &mem)?,
            result: Buf::new(&d, &mem)?,
            keep: false,
            keep_h: false,
            alt_w: false,
        };
        let mut r = Resident {
            mlp_fused: false,
            mlp_two_pass: false,
            model: model.clone(),
            d,
            params,
            ws: Mutex::new(ws),
            mem,
            env,
            sh_dim,
            tf32x3: tf32x3_enabled::<T>(),
            tf32x3_mma: tf32x3_mma_enabled(),
            tf32x3_bwd: tf32x3_bwd_enabled(),
            tf32x3_linear: tf32x3_linear_enabled(),
            tf32x3_linear_min: DEFAULT_TF32X3_LINEAR_MIN,
            linear_paths: linear_paths_enabled(),
            mlp_split: mlp_split_enabled(),
            mlp_tc: std::env::var(MLP_TC_ENV).as_deref() != Ok("0"),
            mlp_tc_fwd: std::env::var(MLP_TC_FWD_ENV).as_deref() != Ok("0"),
            prefetch: std::env::var(PREFETCH_ENV).as_deref() == Ok("1"),
            nt_pipe: std::env::var(NT_PIPE_ENV).as_deref() != Ok("0"),
            mlp_tc_smem: std::env::var(MLP_TC_SMEM_ENV).as_deref() != Ok("0"),
            keep_h: std::env::var(KEEP_H_ENV).as_deref() != Ok("0"),
            linear_tc: std::env::var(LINEAR_TC_ENV).as_deref() == Ok("1"),
            conv_radial: std::env::var(CONV_RADIAL_ENV).as_deref() == Ok("1"),
            lanes: std::env::var(LANES_ENV).as_deref() != Ok("0"),
            side_mlp_bwd: std::env::var(SIDE_MLP_BWD_ENV).as_deref() != Ok("0"),
            radial_ahead: std::env::var(RADIAL_AHEAD_ENV).as_deref() == Ok("1"),
            recompute_ahead: std::env::var(RECOMPUTE_AHEAD_ENV).as_deref() == Ok("1"),
            pair_rows: std::env::var(PAIR_ROWS_ENV).as_deref() != Ok("0"),
            keep_w_bytes: std::env::var(KEEP_W_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_KEEP_W_BYTES),
        };
        r.place_linear_tf32()?;
        match mlp_mode_from_env()? {
            // Unset: fused where every layer's shape allows it, else all on cuBLAS.
            None => {
                if r.set_mlp_fused(true).is_err() {
                    r.set_mlp_fused(false)?;
                }
            }
            Some((fused, two_pass)) => {
                r.set_mlp_fused(fused)?;
                r.set_mlp_two_pass(two_pass);
            }
        }
        Ok(r)
    }

    /// Runs the radial MLP's hidden layers fused (`ek_mlp_hidden[_backward]`) or as cuBLAS
    /// products + `ek_act` (default from [`MLP_ENV`]). Fused needs every layer's MLP to have
    /// a hidden layer and widths ≤ `tables::MLP_MAX_WIDTH`: else an error naming the layer.
    pub fn set_mlp_fused(&mut self, on: bool) -> Result<()> {
        if on {
            if let Some(Err(e)) = self
                .params
                .layers
                .iter()
                .map(|l| &l.fused)
                .find(|f| f.is_err())
            {
                return Err(ModelError::Unsupported(format!(
                    "{e} ({MLP_ENV}=cublas runs it on cuBLAS)"
                )));
            }
        }
        self.mlp_fused = on;
        Ok(())
    }

    /// The fused MLP's backward as `ek_mlp_hidden_backward2` (two passes through the
    /// gradient row: fewer registers, more memory traffic; for A/B) instead of
    /// `ek_mlp_hidden_backward` (default from [`MLP_ENV`]).
    pub fn set_mlp_two_pass(&mut self, on: bool) {
        self.mlp_two_pass = on;
    }

    /// Runs the Linears' paths between blocks of dim 3, 5 or 7 by `ek_linear_path` (`true`)
    /// or as `W ⊗ I_dim` library products (default from [`LINEAR_PATHS_ENV`]).
    pub fn set_linear_paths(&mut self, on: bool) {
        self.linear_paths = on;
    }

    /// Has the fused radial MLP write its output as the 3xTF32 split rows directly (default
    /// on, see [`MLP_SPLIT_ENV`]; where the product runs on TF32 tensor ops).
    pub fn set_mlp_split(&mut self, on: bool) {
        self.mlp_split = on;
    }

    /// Runs the fused radial MLP's backward on tensor cores (`ek_mlp_backward_tc`, default on,
    /// see [`MLP_TC_ENV`]) where the device has TF32 `mma` and the layer's hidden widths are
    /// `[nb ≤ 8, 64, 64]` (f32); elsewhere `ek_mlp_hidden_backward` runs.
    pub fn set_mlp_tc(&mut self, on: bool) {
        self.mlp_tc = on;
    }

    /// Runs the fused radial MLP's forward on tensor cores (`ek_mlp_forward_tc`, see
    /// [`MLP_TC_FWD_ENV`]) where `ek_mlp_backward_tc` could run; elsewhere `ek_mlp_hidden`.
    pub fn set_mlp_tc_fwd(&mut self, on: bool) {
        self.mlp_tc_fwd = on;
    }

    /// L1 prefetches in the tensor-core radial backward kernels (see [`PREFETCH_ENV`]).
    pub fn set_prefetch(&mut self, on: bool) {
        self.prefetch = on;
    }

    /// The radial backward product by `ek_gemm_tf32x3_nt_pipe` where it can run (see
    /// [`NT_PIPE_ENV`]).
    pub fn set_nt_pipe(&mut self, on: bool) {
        self.nt_pipe = on;
    }

    /// The f32 Linears by `ek_linear_tc` where they can run (see [`LINEAR_TC_ENV`]).
    pub fn set_linear_tc(&mut self, on: bool) {
        self.linear_tc = on;
    }

    /// The convolution backward fused with the radial last product where it can run (see
    /// [`CONV_RADIAL_ENV`]).
    pub fn set_conv_radial(&mut self, on: bool) {
        self.conv_radial = on;
    }

    /// A Linear's products into different output blocks on concurrent lanes where the device
    /// has them (see [`LANES_ENV`]).
    pub fn set_lanes(&mut self, on: bool) {
        self.lanes = on;
    }

    /// With the lanes on, each layer's radial MLP backward on the side lane too (see
    /// [`SIDE_MLP_BWD_ENV`]).
    /// One radial row per edge pair on paired graphs (see [`PAIR_ROWS_ENV`]).
    pub fn set_pair_rows(&mut self, on: bool) {
        self.pair_rows = on;
    }

    /// The weight fold of a graph of `ne` edges whose first `pairs` lead pairs (0: not in
    /// pair order): `pairs` where one radial row per pair applies, else 0.
    fn fold_of(&self, ne: usize, pairs: usize) -> usize {
        if self.pair_rows
            && !self.conv_radial
            && pairs > 0
            && 2 * pairs == ne
            && self.d.weight_fold_ok()
        {
            pairs
        } else {
            0
        }
    }

    pub fn set_side_mlp_bwd(&mut self, on: bool) {
        self.side_mlp_bwd = on;
    }

    /// [`RADIAL_AHEAD_ENV`] for this model.
    pub fn set_radial_ahead(&mut self, on: bool) {
        self.radial_ahead = on;
    }

    /// [`RECOMPUTE_AHEAD_ENV`] for this model (from the next structure on).
    pub fn set_recompute_ahead(&mut self, on: bool) {
        self.recompute_ahead = on;
    }

    /// Whether the radial network runs on the side lane beside the node-side work (the
    /// lanes on, and no 3xTF32 Linear: those use the radial product's split scratch `gw`).
    fn side_lane(&self) -> bool {
        self.lanes && !self.linear_tf32()
    }

    /// Whether every layer but the last takes `ek_conv_radial_bwd` (when it recomputes `w`).
    fn rcb_everywhere(&self) -> bool {
        let l = &self.params.layers;
        self.conv_radial
            && self.mlp_fused
            && self.keep_h
            && self.d.staged(Kern::ConvRadialBwd)
            && l.iter()
                .take(l.len().saturating_sub(1))
                .all(|l| l.rcb.is_some())
    }

    /// The tensor-core MLP backward with its pack in shared memory where it can run (see
    /// [`MLP_TC_SMEM_ENV`]).
    pub fn set_mlp_tc_smem(&mut self, on: bool) {
        self.mlp_tc_smem = on;
    }

    /// Whether the radial MLP's hidden layers run fused.
    pub fn mlp_fused(&self) -> bool {
        self.mlp_fused
    }

    /// The model this evaluator runs.
    pub fn model(&self) -> &SevenNet<T> {
        &self.model
    }

    /// The device operations.
    pub fn exec(&self) -> &D {
        &self.d
    }

    /// e.g. `"NVIDIA H100 80GB HBM3 f32 (resident, cuBLAS, radial MLP fused, 3xTF32
    /// radial+linears)"` (the 3xTF32 part in f32 only: `off`, `radial`, `radial+linears`).
    pub fn describe(&self) -> String {
        let tf32 = match (T::NAME == "f32", self.tf32x3, self.linear_tf32()) {
            (false, ..) => "",
            (true, false, _) => ", 3xTF32 off",
            (true, true, false) => ", 3xTF32 radial",
            (true, true, true) => ", 3xTF32 radial+linears",
        };
        let pipe = T::NAME == "f32" && self.tf32x3 && self.tf32x3_bwd && self.nt_pipe;
        let tf32 = if pipe && self.d.staged(Kern::GemmTf32x3NtPipe) {
            format!("{tf32}, pipelined backward product")
        } else {
            tf32.to_string()
        };
        // the tensor-core MLP kernels, where they would run (f32, TF32 mma, fused)
        let tc = self.mlp_fused && T::NAME == "f32" && self.d.tensor_cores();
        let mlp_tc = match (tc && self.mlp_tc_fwd, tc && self.mlp_tc) {
            (true, true) => " (on tensor cores)",
            (true, false) => " (forward on tensor cores)",
            (false, true) => " (backward on tensor cores)",
            (false, false) => "",
        };
        let mlp_tc =
            if tc && self.mlp_tc && self.mlp_tc_smem && self.d.staged(Kern::MlpBackwardTcSmem) {
                format!("{mlp_tc} (its weights in shared memory)")
            } else {
                mlp_tc.to_string()
            };
        // (lanes where the device has them: the CPU emulation runs one)
        let tf32 = if self.lanes && self.d.fork_side_available() {
            let ahead = match (self.radial_ahead, self.recompute_ahead) {
                (false, false) => "",
                (true, false) => " (the radial network started ahead)",
                (false, true) => " (w recomputed two layers ahead)",
                (true, true) => {
                    " (the radial network started ahead, w recomputed two layers ahead)"
                }
            };
            format!("{tf32}, concurrent lanes{ahead}")
        } else {
            tf32
        };
        let tf32 = if self.pair_rows && !self.conv_radial && self.d.weight_fold_ok() {
            format!("{tf32}, a radial row per edge pair")
        } else {
            tf32
        };
        let tf32 = if T::NAME == "f32" && self.rcb_everywhere() {
            format!("{tf32}, radial last product fused into the convolution backward")
        } else {
            tf32
        };
        format!(
            "{} {} (resident, {}, radial MLP {}{}, l > 0 linear paths {}{tf32})",
            self.d.describe(),
            T::NAME,
            self.d.gemm_name(),
            match (self.mlp_fused, self.mlp_two_pass) {
                (true, false) => "fused",
                (true, true) => "fused2",
                _ => "cublas",
            },
            mlp_tc,
            if self.linear_paths {
                "by kernel"
            } else {
                "as W⊗I products"
            }
        )
    }

    pub fn counters(&self) -> DeviceCounters {
        let m = &self.mem;
        DeviceCounters {
            transfer_s: m.transfer_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            uploaded_bytes: m.up.load(Ordering::Relaxed),
            downloaded_bytes: m.down.load(Ordering::Relaxed),
            live_bytes: m.live.load(Ordering::Relaxed),
            peak_bytes: m.peak.load(Ordering::Relaxed),
        }
    }

    pub fn reset_peak(&self) {
        let m = &self.mem;
        m.peak
            .store(m.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Whether the last structure kept every layer's radial-MLP outputs for the backward
    /// (else they were recomputed; see the module docs).
    pub fn kept_radial_outputs(&self) -> bool {
        self.lock().keep
    }

    /// Keeps the last hidden activations of the layers whose `w` is recomputed (fused MLP;
    /// default from [`KEEP_H_ENV`]).
    pub fn set_keep_h(&mut self, on: bool) {
        self.keep_h = on;
    }

    /// Whether the last structure kept the recomputed layers' last hidden activations.
    pub fn kept_hidden(&self) -> bool {
        self.lock().keep_h
    }

    /// Whether the last structure's backward recomputed `w` two layers ahead, in two
    /// alternating buffers ([`RECOMPUTE_AHEAD_ENV`]).
    pub fn recomputed_ahead(&self) -> bool {
        self.lock().alt_w
    }

    /// Sets the byte budget for keeping radial-MLP outputs (default [`KEEP_W_ENV`] or
    /// [`DEFAULT_KEEP_W_BYTES`]; 0: always recompute).
    pub fn set_keep_w_bytes(&mut self, bytes: u64) {
        self.keep_w_bytes = bytes;
    }

    /// Runs the radial MLP's last product as 3xTF32 on tensor cores (f32 only; default on,
    /// `EQUIKERN_MODEL_TF32X3=0` turns it off).
    pub fn set_tf32x3(&mut self, on: bool) {
        self.tf32x3 = on && T::NAME == "f32";
    }

    /// With 3xTF32 on: the radial last product by our tensor-core kernel where the device
    /// has TF32 `mma` (`true`; default off unless `EQUIKERN_MODEL_TF32X3_MMA=1`) or by
    /// cuBLAS on split rows (`false`).
    pub fn set_tf32x3_mma(&mut self, on: bool) {
        self.tf32x3_mma = on;
    }

    /// Runs the radial MLP's backward product `gw · W_lastᵀ` by `ek_gemm_tf32x3_nt` while
    /// 3xTF32 is on ([`Self::set_tf32x3`]; default on, [`TF32X3_BWD_ENV`]`=0` turns it
    /// off: see there); devices without tensor cores (before sm_80) keep cuBLAS.
    pub fn set_tf32x3_bwd(&mut self, on: bool) {
        self.tf32x3_bwd = on;
    }

    /// Runs the e3nn Linear products as 3xTF32 too while [`Self::set_tf32x3`] is on (default
    /// on; [`TF32X3_LINEAR_ENV`]`=0` turns it off), those with `k` and `n` ≥ `min`
    /// ([`DEFAULT_TF32X3_LINEAR_MIN`]; tests lower it for small models).
    pub fn set_tf32x3_linear(&mut self, on: bool, min: usize) -> Result<()> {
        self.tf32x3_linear = on;
        self.tf32x3_linear_min = min;
        self.place_linear_tf32()
    }

    /// The Linear products' 3xTF32 right factors on the device while the switch is on (f32),
    /// freed while it is off: three times the f32 `W ⊗ I` matrices (7net-0: 61 MB) that the
    /// default path never reads.
    fn place_linear_tf32(&mut self) -> Result<()> {
        let on = self.tf32x3_linear && T::NAME == "f32";
        let (m, p) = (&self.model, &mut self.params);
        let mut all: Vec<(&mut DevLinear<T, D>, &Linear<T>, bool)> = vec![
            (&mut p.embed, &m.embed, false),
            (&mut p.readout_hidden, &m.readout_hidden, false),
            (&mut p.readout_hidden_t, &m.readout_hidden, true),
            (&mut p.readout_energy, &m.readout_energy, false),
            (&mut p.readout_energy_t, &m.readout_energy, true),
        ];
        for (dl, l) in p.layers.iter_mut().zip(&m.layers) {
            all.extend([
                (&mut dl.sc, &l.sc, false),
                (&mut dl.sc_t, &l.sc, true),
                (&mut dl.lin1, &l.lin1, false),
                (&mut dl.lin1_t, &l.lin1, true),
                (&mut dl.lin2, &l.lin2, false),
                (&mut dl.lin2_t, &l.lin2, true),
            ]);
        }
        for (dl, l, transpose) in all {
            if !on || dl.kron.is_none() {
                dl.kron_tf32 = None;
                continue;
            }
            if dl.kron_tf32.is_some() {
                continue;
            }
            let t = if transpose {
                LinearTable::transpose(l)?
            } else {
                LinearTable::forward(l)?
            };
            if let Some((g, k)) = &t.kron {
                // offsets stay multiples of 4 (3·k·n per product)
                let (off, f) = kron_tf32x3_right(g, k)?;
                let f: Vec<f64> = f.into_iter().map(f64::from).collect();
                dl.kron_tf32 = Some((off, Buf::from_host(&self.d, &self.mem, &cast::<T>(&f))?));
            }
        }
        Ok(())
    }

    /// Whether the Linear products run as 3xTF32 (f32, both switches on).
    fn linear_tf32(&self) -> bool {
        self.tf32x3 && self.tf32x3_linear
    }

    /// Bytes of workspace held now (grows to the largest structure seen).
    pub fn workspace_bytes(&self) -> u64 {
        let ws = self.lock();
        let (a, b) = ws.floats();
        a.iter().map(|x| x.bytes()).sum::<u64>()
            + b.iter().map(|x| x.bytes()).sum::<u64>()
            + ws.idx.bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Workspace<T, D>> {
        self.ws.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fills every float workspace buffer with NaN (tests: an element a kernel fails to
    /// write then shows in the results).
    pub fn poison_workspace(&self) -> Result<()> {
        let ws = self.lock();
        let (reals, doubles) = ws.floats();
        for b in reals {
            let n = b.capacity() as u64;
            self.d.launch(
                Kern::Fill,
                n,
                &[
                    Arg::U64(n),
                    Arg::Real(&b.s, 0),
                    Arg::Val(T::from_f64(f64::NAN)),
                ],
            )?;
        }
        for b in doubles {
            let n = b.capacity() as u64;
            self.d.launch(
                Kern::FillF64,
                n,
                &[Arg::U64(n), Arg::F64s(&b.s, 0), Arg::F64(f64::NAN)],
            )?;
        }
        self.d.synchronize()
    }

    /// Energy, forces and stress of `s` (radius graph on the host, the rest on the device).
    pub fn evaluate(&self, s: &Structure) -> Result<Prediction> {
        self.evaluate_profiled(s).map(|r| r.0)
    }

    /// [`Self::evaluate`] with the step's phases.
    pub fn evaluate_profiled(&self, s: &Structure) -> Result<(Prediction, StepProfile)> {
        let t0 = Instant::now();
        s.validate()?;
        let g = Graph::build(s, self.model.cutoff)?;
        let nl = t0.elapsed().as_secs_f64();
        let (p, mut prof) = self.evaluate_graph(s, &g)?;
        prof.neighbour_list_s = nl;
        prof.total_s = t0.elapsed().as_secs_f64();
        Ok((p, prof))
    }

    /// The model-only part of a step, for the radius graph `g` of `s`. Profile: `graph_s` =
    /// checks, CSR views (built on the device from the uploaded indices, or on the host for
    /// tiny graphs), `transfer_s` = the edge vectors' and species' upload, `conv_s` = the
    /// whole device step (launch to results on the host, the one download included).
    pub fn evaluate_graph(&self, s: &Structure, g: &Graph) -> Result<(Prediction, StepProfile)> {
        let t0 = Instant::now();
        s.validate()?;
        let types = self.model.types_of(&s.numbers)?;
        let n = s.positions.len();
        let ne = g.len();
        let (receiver, sender) = edge_lists(n, &g.src, &g.dst)?;
        let vec: Vec<f64> = g.vec.iter().flatten().copied().collect();
        let mut ws = self.lock();
        let fold = self.fold_of(ne, if g.paired() { g.pairs } else { 0 });
        let cg = self.d.graph(n, &receiver, &sender)?;
        let cg = self.d.fold_weights(cg, fold)?;
        let graph_s = t0.elapsed().as_secs_f64();
        self.ensure(&mut ws, n, ne, fold)?;
        let t_up = Instant::now();
        self.d.upload(&vec, &mut ws.vec.s)?;
        let up_s = t_up.elapsed().as_secs_f64();
        self.mem
            .up
            .fetch_add((vec.len() * 8 + 8 * ne) as u64, Ordering::Relaxed);
        let (p, prof, min_r2) =
            self.run_step(&mut ws, s, &types, &cg, ne, fold, None, t0, graph_s, up_s)?;
        drop(ws);
        if min_r2 < MIN_DISTANCE * MIN_DISTANCE {
            check_overlap(g)?;
            return Err(overlap(min_r2));
        }
        Ok((p, prof))
    }

    /// Uploads the species, runs the step on the workspace's edge vectors and `cg`, and
    /// brings back the prediction and the smallest squared edge length (`f64::MAX`-like
    /// without edges) for the caller's overlap check.
    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &self,
        ws: &mut Workspace<T, D>,
        s: &Structure,
        types: &[usize],
        cg: &D::Graph,
        ne: usize,
        fold: usize,
        graph_key: Option<u64>,
        t0: Instant,
        graph_s: f64,
        mut up_s: f64,
    ) -> Result<(Prediction, StepProfile, f64)> {
        let n = s.positions.len();
        let idx: Vec<u32> = types.iter().map(|&t| t as u32).collect();
        let t_up = Instant::now();
        self.d.upload(&idx, &mut ws.idx.s)?;
        up_s += t_up.elapsed().as_secs_f64();
        self.mem
            .up
            .fetch_add((idx.len() * 4) as u64, Ordering::Relaxed);
        let t_dev = Instant::now();
        // Everything the step's launches depend on besides the graph's tables: sizes, the
        // memory policy, the radial MLP's path, and whether any workspace buffer moved.
        let key = graph_key.map(|g| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (
                g,
                n,
                ne,
                fold,
                ws.keep,
                self.tf32x3,
                self.tf32x3_mma,
                self.tf32x3_bwd,
            )
                .hash(&mut h);
            (self.tf32x3_linear, self.tf32x3_linear_min).hash(&mut h);
            (self.mlp_fused, self.mlp_two_pass).hash(&mut h);
            (self.linear_paths, ws.keep_h, self.mlp_split).hash(&mut h);
            (self.mlp_tc, self.mlp_tc_fwd, self.prefetch, self.nt_pipe).hash(&mut h);
            (
                self.mlp_tc_smem,
                self.linear_tc,
                self.conv_radial,
                self.lanes,
                self.side_mlp_bwd,
                self.radial_ahead,
                self.recompute_ahead,
                ws.alt_w,
            )
                .hash(&mut h);
            self.mem.generation.load(Ordering::Relaxed).hash(&mut h);
            h.finish()
        });
        self.d
            .run_step(key, &mut || self.step(ws, cg, n, ne, fold))?;
        // The one synchronisation: results back.
        let len = 4 * n + RESULT_TAIL;
        let res = self.d.download(&ws.result.s, len)?;
        let dev_s = t_dev.elapsed().as_secs_f64();
        self.mem.down.fetch_add((len * 8) as u64, Ordering::Relaxed);
        self.mem
            .transfer_ns
            .fetch_add((up_s * 1e9) as u64, Ordering::Relaxed);
        self.mem.bump(D::graph_bytes(cg));
        let atomic = res[..n].to_vec();
        let forces: Vec<[f64; 3]> = (0..n)
            .map(|a| [res[n + 3 * a], res[n + 3 * a + 1], res[n + 3 * a + 2]])
            .collect();
        let v = &res[4 * n..];
        let virial = [[v[0], v[1], v[2]], [v[3], v[4], v[5]], [v[6], v[7], v[8]]];
        let min_r2 = if ne > 0 { v[9] } else { f64::INFINITY };
        let p = Prediction::assemble(s, atomic, forces, virial, ne);
        let prof = StepProfile {
            neighbour_list_s: 0.0,
            graph_s,
            edge_geometry_s: 0.0,
            dense_s: 0.0,
            conv_s: dev_s,
            transfer_s: up_s,
            total_s: t0.elapsed().as_secs_f64(),
            atoms: n,
            edges: ne,
        };
        Ok((p, prof, min_r2))
    }

    /// Sizes every workspace buffer for `n` atoms and `ne` edges (grow-only; decides whether
    /// the radial-MLP outputs are kept).
    /// `fold`: the graph's weight fold (0 or `ne / 2`: a radial row per pair, see
    /// [`PAIR_ROWS_ENV`]).
    fn ensure(&self, ws: &mut Workspace<T, D>, n: usize, ne: usize, fold: usize) -> Result<()> {
        let d = &self.d;
        // rows of the radial network's tensors
        let nw = equikern::plan::conv::weight_rows(ne as u64, fold as u64) as usize;
        let m = &self.model;
        let nb = m.bessel.coeffs.len();
        let p = &self.params;
        // Node rows: the convolution's output and its gradient (`agg`, `g_agg`) are the
        // wide ones (7net-0: 3,136 values per atom); every other node tensor holds a layer's
        // features (≤ 480), so it gets only that.
        let mut node_max = p.embed.dim_out.max(p.readout_hidden.dim_in);
        let mut conv_max = 0;
        for l in &p.layers {
            node_max = node_max
                .max(l.sc.dim_in)
                .max(l.sc.dim_out)
                .max(l.d1)
                .max(l.gate.t.din as usize)
                .max(l.gate.t.dout as usize);
            conv_max = conv_max.max(l.dmid);
        }
        ws.vec.ensure(d, 3 * ne)?;
        ws.idx.ensure(d, n)?;
        ws.emb.ensure(d, ne * nb)?;
        ws.sh.ensure(d, ne * self.sh_dim)?;
        ws.onehot.ensure(d, n * m.num_species)?;
        for b in [&mut ws.x, &mut ws.gx, &mut ws.gy, &mut ws.gxc] {
            b.ensure(d, n * node_max)?;
        }
        for b in [&mut ws.agg, &mut ws.g_agg] {
            b.ensure(d, n * node_max.max(conv_max))?;
        }
        // Per-layer radial-MLP tensors kept for the backward if they fit the budget.
        let es = std::mem::size_of::<T>() as u64;
        let fused = self.mlp_fused;
        let per_edge: u64 = p
            .layers
            .iter()
            .map(|l| {
                if fused {
                    l.numel as u64
                } else {
                    l.mlp.iter().map(|x| x.1 as u64).sum::<u64>()
                }
            })
            .sum();
        // With the fused convolution backward on every layer that recomputes, the backward
        // never reads `w`: keep the last hidden activations instead (less memory, same work).
        // (Judged per edge, not per row: pair rows halve `w` but keep the same choice, so the
        // peak memory halves too.)
        ws.keep = !self.rcb_everywhere() && ne as u64 * per_edge * es <= self.keep_w_bytes;
        // The layers whose `w` the backward recomputes (all but the last) keep their last
        // hidden activation: the recomputation is then the last product alone.
        ws.keep_h = fused && !ws.keep && self.keep_h;
        let nl = p.layers.len();
        // ... two layers ahead, beside the convolution backward (on a lane of its own)
        ws.alt_w = ws.keep_h
            && nl >= 2
            && self.recompute_ahead
            && self.side_lane()
            && !self.conv_radial
            && self.d.fork_side_available();
        let slots = if ws.keep {
            nl
        } else if ws.alt_w {
            2
        } else {
            1
        };
        for (t, l) in p.layers.iter().enumerate() {
            ws.hs[t].ensure(d, n * l.d1)?;
            ws.ys[t].ensure(d, n * l.sc.dim_out)?;
            if t >= slots {
                ws.w[t].release(d)?;
            }
            if (!ws.keep && t > 0) || fused {
                // recomputing: the other layers' slots are not used; fused: no pre-activations
                for b in &mut ws.pre[t] {
                    b.release(d)?;
                }
            }
            let slot = ws.slot(t);
            ws.w[slot].ensure(d, nw * l.numel)?;
            if !fused {
                for (k, (_, h_out, _)) in l.mlp.iter().enumerate().take(l.mlp.len() - 1) {
                    ws.pre[slot][k].ensure(d, nw * h_out)?;
                    ws.act[k].ensure(d, nw * h_out)?;
                }
            }
        }
        if fused {
            for b in &mut ws.act {
                b.release(d)?;
            }
            let h_last = p
                .layers
                .iter()
                .map(|l| l.mlp.last().map_or(0, |x| x.0))
                .max()
                .unwrap_or(0);
            ws.hl.ensure(d, nw * h_last)?;
        } else {
            ws.hl.release(d)?;
        }
        let mut h_kept = 0;
        for (t, l) in p.layers.iter().enumerate() {
            if ws.keep_h && t + 1 < nl {
                let h = l.mlp.last().map_or(0, |x| x.0);
                h_kept = h_kept.max(h);
                ws.hk[t].ensure(d, nw * h)?;
            } else {
                ws.hk[t].release(d)?;
            }
        }
        if ws.alt_w && self.tf32x3 {
            ws.rsplit.ensure(d, nw * 3 * h_kept)?;
        } else {
            ws.rsplit.release(d)?;
        }
        let hdim = p.readout_hidden.dim_out;
        ws.hid.ensure(d, n * hdim)?;
        ws.g_hid.ensure(d, n * hdim)?;
        ws.out.ensure(d, n)?;
        ws.seed.ensure(d, n)?;
        let numel = p.layers.iter().map(|l| l.numel).max().unwrap_or(0);
        // `gw` is also the split left factor of the 3xTF32 Linear products, `[n, 3·dim_in]`
        // (free during every Linear: written by a layer's convolution backward and read by
        // its radial MLP's backward right after). 7net-0 from a few atoms on: ne · numel is
        // far larger (Si: 28 edges × 3,488 weights vs 3 × 3,136 per atom), so no extra bytes.
        let split = if self.linear_tf32() {
            let w = p
                .linears()
                .filter(|l| l.kron_tf32.is_some())
                .map(|l| l.dim_in)
                .max()
                .unwrap_or(0);
            3 * n * w
        } else {
            0
        };
        ws.gw.ensure(d, (ne * numel).max(split))?;
        ws.gsh_l.ensure(d, ne * self.sh_dim)?;
        ws.g_sh.ensure(d, ne * self.sh_dim)?;
        ws.g_emb.ensure(d, ne * nb)?;
        ws.fe.ensure(d, 3 * ne)?;
        ws.vpart.ensure(d, VIRIAL_PARTS * RESULT_TAIL)?;
        ws.result.ensure(d, 4 * n + RESULT_TAIL)?;
        Ok(())
    }

    /// `y = alpha · L(x)`, or `y += alpha · L(x)` with `accumulate`, on `n` rows (the
    /// residual sums: the products add into `y` (beta = 1) instead of a separate
    /// `ek_accumulate` pass over three arrays). `split`: scratch for the 3xTF32 products'
    /// left factor (`[n, 3·dim_in]`, see [`TF32X3_LINEAR_ENV`]; unused below that size).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        l: &DevLinear<T, D>,
        n: usize,
        x: &D::Buf<T>,
        y: &mut D::Buf<T>,
        alpha: T,
        accumulate: bool,
        split: &mut D::Buf<T>,
    ) -> Result<()> {
        let iterations = (n.div_ceil(LINEAR_ROWS) * l.cols) as u64;
        if iterations == 0 {
            return Ok(());
        }
        if D::capacity(x) < n * l.dim_in || D::capacity(y) < n * l.dim_out {
            return Err(err("linear: workspace too small"));
        }
        // One tensor-core launch for the whole map where it can run.
        if let Some(tc) =
            l.tc.as_ref()
                .filter(|_| self.linear_tc && self.d.staged(Kern::LinearTc))
        {
            let y: &D::Buf<T> = y;
            let per_item = &tc.nodes_per_item;
            let iterations = LinearTc::iterations_of(per_item, n);
            return self.d.launch(
                Kern::LinearTc,
                iterations,
                &[
                    Arg::U64(n as u64),
                    Arg::I32(per_item.len() as i32),
                    Arg::I32s(&tc.tab.s),
                    Arg::Real(&tc.pack.s, 0),
                    Arg::Real(x, 0),
                    Arg::U64(l.dim_in as u64),
                    Arg::Val(alpha),
                    Arg::I32(i32::from(accumulate)),
                    Arg::Real(y, 0),
                    Arg::U64(l.dim_out as u64),
                ],
            );
        }
        // Dense products where the device has them.
        if let Some((gemms, kron)) = &l.kron {
            // 3xTF32: the split row of `x` in `split` has the layout of `x` with every
            // value tripled: block `[in_off, in_off + k)` of a row becomes
            // `[3·in_off, 3·in_off + 3k)` = [hi | hi | lo], row stride 3·dim_in; each block
            // read by a tensor-core product is split once (paths sharing it reuse it).
            let ld3 = 3 * l.dim_in;
            let mut tf32 = l
                .kron_tf32
                .as_ref()
                .filter(|_| self.linear_tf32() && D::capacity(split) >= n * ld3);
            let mut split_blocks: Vec<usize> = Vec::new();
            let min = self.tf32x3_linear_min;
            // Independent output blocks on separate lanes (plain products: the 3xTF32 ones
            // share the split rows): small products fill a fraction of the GPU each.
            let mut blocks: Vec<usize> = vec![];
            for g in gemms {
                if !blocks.contains(&g.out_off) {
                    blocks.push(g.out_off);
                }
            }
            let lanes = if self.lanes && tf32.is_none() && blocks.len() > 1 && n <= LANES_MAX_ROWS {
                self.d.fork(blocks.len() - 1)?
            } else {
                0
            };
            let mut products = || -> Result<bool> {
                let mut done = true;
                for (i, g) in gemms.iter().enumerate() {
                    if lanes > 0 {
                        let b = blocks.iter().position(|&o| o == g.out_off).unwrap_or(0);
                        self.d.set_lane(b % (lanes + 1));
                    }
                    // a block's first product overwrites it unless accumulating
                    let over = g.first && !accumulate;
                    let beta = if over { T::ZERO } else { T::ONE };
                    let alpha_g = alpha * T::from_f64(g.coef);
                    let mut ok = false;
                    if let Some(k) = Kern::linear_path(g.dim).filter(|_| self.linear_paths) {
                        let y: &D::Buf<T> = y;
                        self.d.launch(
                            k,
                            linear_path_iterations(n, g.mul_out),
                            &[
                                Arg::U64(n as u64),
                                Arg::I32(g.mul_in as i32),
                                Arg::I32(g.mul_out as i32),
                                Arg::Real(x, g.in_off),
                                Arg::U64(l.dim_in as u64),
                                Arg::Real(&l.w.s, g.w_off),
                                Arg::Val(alpha_g),
                                Arg::I32(i32::from(!over)),
                                Arg::Real(y, g.out_off),
                                Arg::U64(l.dim_out as u64),
                            ],
                        )?;
                        continue;
                    }
                    if let Some((off, k3)) = tf32.filter(|_| g.k >= min && g.n >= min) {
                        if !split_blocks.contains(&g.in_off) {
                            let s: &D::Buf<T> = split;
                            self.d.launch(
                                Kern::SplitTf32Rows,
                                (n * g.k) as u64,
                                &[
                                    Arg::U64(n as u64),
                                    Arg::I32(g.k as i32),
                                    Arg::Real(x, g.in_off),
                                    Arg::U64(l.dim_in as u64),
                                    Arg::Real(s, 3 * g.in_off),
                                    Arg::U64(ld3 as u64),
                                ],
                            )?;
                            split_blocks.push(g.in_off);
                        }
                        ok = self.d.gemm_strided_tf32(
                            (n, g.n, 3 * g.k),
                            alpha_g,
                            (&*split, 3 * g.in_off, ld3),
                            (&k3.s, off[i], g.n),
                            beta,
                            (&mut *y, g.out_off, l.dim_out),
                        )?;
                        if !ok {
                            // no tensor-core product on this device: plain ones from here on
                            tf32 = None;
                        }
                    }
                    if !ok {
                        ok = self.d.gemm_strided(
                            (n, g.n, g.k),
                            alpha_g,
                            (x, g.in_off, l.dim_in),
                            (&kron.s, g.k_off, g.n),
                            beta,
                            (&mut *y, g.out_off, l.dim_out),
                        )?;
                    }
                    if !ok && i > 0 && accumulate {
                        // `y` already holds some products: the fallback below would add them twice
                        return Err(err("linear: the device refused a product midway"));
                    }
                    done &= ok;
                    if !done {
                        break;
                    }
                }
                Ok(done)
            };
            let done = products();
            if lanes > 0 {
                self.d.join()?;
            }
            if done? {
                return Ok(());
            }
        }
        let y: &D::Buf<T> = y;
        self.d.launch(
            Kern::Linear,
            iterations,
            &[
                Arg::U64(n as u64),
                Arg::Real(x, 0),
                Arg::I32(l.dim_in as i32),
                Arg::Real(y, 0),
                Arg::I32(l.dim_out as i32),
                Arg::Real(&l.w.s, 0),
                Arg::I32s(&l.tab.s),
                Arg::Real(&l.coef.s, 0),
                Arg::Val(alpha),
                // y read back as `add` element by element by the thread that writes it
                if accumulate {
                    Arg::Real(y, 0)
                } else {
                    Arg::Null
                },
                Arg::I32(l.cols as i32),
            ],
        )
    }

    fn act(&self, n: usize, pre: &D::Buf<T>, h: &D::Buf<T>, c: T, backward: bool) -> Result<()> {
        let k = if backward {
            Kern::ActBackward
        } else {
            Kern::Act
        };
        let n = n as u64;
        self.d.launch(
            k,
            n,
            &[Arg::U64(n), Arg::Real(pre, 0), Arg::Real(h, 0), Arg::Val(c)],
        )
    }

    /// Layer `t`'s fused MLP kernel arguments.
    fn fused<'a>(&self, l: &'a DevLayer<T, D>) -> Result<&'a FusedMlp<T, D>> {
        l.fused
            .as_ref()
            .map_err(|e| ModelError::Unsupported(e.clone()))
    }

    /// Layer `t`'s radial MLP: `w [ne, numel]` from `emb`. Fused: the hidden layers by one
    /// `ek_mlp_hidden` launch into `hl` (into the layer's `hk` while `keep_h`); cuBLAS: hidden
    /// pre-activations in the layer's slot, activations in the shared scratch. Then the last
    /// product (cuBLAS, or 3xTF32). `recompute`: again for the backward (with the last hidden
    /// activation kept, only the last product runs).
    fn mlp_forward(
        &self,
        ws: &mut Workspace<T, D>,
        t: usize,
        ne: usize,
        recompute: bool,
    ) -> Result<()> {
        let l = &self.params.layers[t];
        let slot = ws.slot(t);
        let last = l.mlp.len() - 1;
        let kept_h = ws.keep_h && t + 1 < ws.hk.len();
        let hidden = if kept_h { &ws.hk[t] } else { &ws.hl };
        let (a, b, wk) = &l.mlp[last];
        let alpha = T::from_f64(1.0 / (*a as f64).sqrt());
        // The hidden kernel writes the 3xTF32 split rows itself (into `gw`) where cuBLAS
        // then multiplies them: then `hidden` is written only where it is kept.
        let split_here = self.mlp_split
            && last > 0
            && self.tf32x3
            && l.mlp_last_tf32.is_some()
            && !(l.mlp_last_frag.is_some() && self.tf32x3_mma && self.d.tensor_cores())
            && self.d.gemm_tf32_available()
            && D::capacity(&ws.gw.s) >= ne * 3 * a;
        if self.mlp_fused && !(recompute && kept_h) {
            let f = self.fused(l)?;
            let (out, cat) = match (split_here, kept_h) {
                (false, _) => (Arg::Real(&hidden.s, 0), Arg::Null),
                (true, false) => (Arg::Null, Arg::Real(&ws.gw.s, 0)),
                (true, true) => (Arg::Real(&hidden.s, 0), Arg::Real(&ws.gw.s, 0)),
            };
            match (&l.mlp_tc, self.mlp_tc_fwd && self.d.tensor_cores()) {
                (Some(pack), true) => self.d.launch(
                    // the pack in shared memory where the backward's is too (MLP_TC_SMEM_ENV)
                    if self.mlp_tc_smem
                        && self.d.staged(Kern::MlpForwardTcSmem)
                        && D::capacity(&pack.s) * 4 >= MLP_TC_PACK_FWD_BYTES as usize
                    {
                        Kern::MlpForwardTcSmem
                    } else {
                        Kern::MlpForwardTc
                    },
                    mlp_tc_iterations(ne),
                    &[
                        Arg::U64(ne as u64),
                        Arg::I32(l.mlp[0].0 as i32),
                        Arg::Real(&ws.emb.s, 0),
                        Arg::Real(&pack.s, 0),
                        Arg::Val(l.act_cst),
                        out,
                        cat,
                    ],
                )?,
                _ => self.d.launch(
                    Kern::MlpHidden,
                    ne as u64,
                    &[
                        Arg::U64(ne as u64),
                        Arg::I32(f.shape),
                        Arg::Real(&ws.emb.s, 0),
                        Arg::Real(&f.w.s, 0),
                        Arg::I32(f.wlen),
                        Arg::Val(l.act_cst),
                        out,
                        cat,
                    ],
                )?,
            }
            if split_here {
                let cat = l.mlp_last_tf32.as_ref().expect("checked above");
                let out = &mut ws.w[slot].s;
                if self
                    .d
                    .gemm_tf32((ne, *b, 3 * a), alpha, &ws.gw.s, &cat.s, T::ZERO, out)?
                {
                    return Ok(());
                }
                return Err(err("radial MLP: the TF32 product refused after the split"));
            }
        } else if !self.mlp_fused {
            for (k, (a, b, wk)) in l.mlp.iter().enumerate().take(last) {
                let alpha = T::from_f64(1.0 / (*a as f64).sqrt());
                let input = if k == 0 { &ws.emb.s } else { &ws.act[k - 1].s };
                let out = &mut ws.pre[slot][k].s;
                self.d
                    .gemm((ne, *b, *a), alpha, input, &wk.s, false, T::ZERO, out)?;
                self.act(ne * b, &ws.pre[slot][k].s, &ws.act[k].s, l.act_cst, false)?;
            }
        }
        let input = if last == 0 {
            &ws.emb.s
        } else if self.mlp_fused {
            &hidden.s
        } else {
            &ws.act[last - 1].s
        };
        // 3xTF32 on tensor cores (f32): the split row goes through `gw`, free until the
        // backward (its ne · max numel ≥ ne · 3a for every 7net layer).
        if let (Some(cat), true) = (&l.mlp_last_tf32, self.tf32x3) {
            // On tensor cores directly from the hidden activations (split in registers).
            if let (Some(frag), true) = (&l.mlp_last_frag, self.tf32x3_mma && self.d.tensor_cores())
            {
                let out = &ws.w[slot].s;
                return self.d.launch(
                    Kern::RadialLastTf32,
                    (ne.div_ceil(RADIAL_LAST_ROWS) * super::BLOCK as usize) as u64,
                    &[
                        Arg::U64(ne as u64),
                        Arg::I32(*a as i32),
                        Arg::I32(*b as i32),
                        Arg::Real(input, 0),
                        Arg::Real(&frag.s, 0),
                        Arg::Val(alpha),
                        Arg::Real(out, 0),
                    ],
                );
            }
            // (recomputing two layers ahead: its own scratch, `gw` is the convolution's then)
            let split = if recompute && ws.alt_w {
                &ws.rsplit.s
            } else {
                &ws.gw.s
            };
            if D::capacity(split) >= ne * 3 * a {
                self.d.launch(
                    Kern::SplitTf32,
                    (ne * a) as u64,
                    &[
                        Arg::U64(ne as u64),
                        Arg::I32(*a as i32),
                        Arg::Real(input, 0),
                        Arg::Real(split, 0),
                    ],
                )?;
                let out = &mut ws.w[slot].s;
                if self
                    .d
                    .gemm_tf32((ne, *b, 3 * a), alpha, split, &cat.s, T::ZERO, out)?
                {
                    return Ok(());
                }
            }
        }
        let out = &mut ws.w[slot].s;
        self.d
            .gemm((ne, *b, *a), alpha, input, &wk.s, false, T::ZERO, out)
    }

    /// [`Self::mlp_forward`] on side lane `side`, forked from the main stream here (and
    /// after side lane `after`'s work so far) and left open (the caller joins it before `w`
    /// is read); false where it did not open (nothing ran).
    fn mlp_forward_side(
        &self,
        ws: &mut Workspace<T, D>,
        t: usize,
        nw: usize,
        recompute: bool,
        side: Side,
        after: Option<Side>,
    ) -> Result<bool> {
        if !self.d.fork_side(side)? {
            return Ok(false);
        }
        if let Some(on) = after {
            self.d.side_waits(side, on)?;
        }
        self.d.set_side(Some(side));
        let r = self.mlp_forward(ws, t, nw, recompute);
        self.d.set_side(None);
        r.map(|()| true)
    }

    /// Layer `t`'s `w` recomputed on its slot's Ahead lane (after the other slot's: they
    /// share the split rows' scratch); false where the lane did not open (nothing ran).
    fn recompute_ahead(&self, ws: &mut Workspace<T, D>, t: usize, nw: usize) -> Result<bool> {
        let slot = ws.slot(t);
        let other = Side::Ahead(1 - slot);
        self.mlp_forward_side(ws, t, nw, true, Side::Ahead(slot), Some(other))
    }

    /// `g_emb (+)= ∂⟨gw, w⟩/∂emb` of layer `t`'s MLP (input gradient only). Fused: the last
    /// product's transpose into `hl`, then `ek_mlp_hidden_backward` (the hidden layers
    /// recomputed per edge from `emb`); cuBLAS: the activation scratch is overwritten by the
    /// hidden gradients.
    fn mlp_backward(
        &self,
        ws: &mut Workspace<T, D>,
        t: usize,
        ne: usize,
        first: bool,
        g_last_ready: bool,
        pair: usize,
    ) -> Result<()> {
        let l = &self.params.layers[t];
        let last = l.mlp.len() - 1;
        if self.mlp_fused {
            let f = self.fused(l)?;
            // (`ek_conv_radial_bwd` wrote ∂/∂h of the last product into `hl` itself)
            if !g_last_ready {
                self.last_backward(l, ne, &ws.gw.s, &mut ws.hl.s, pair)?;
            }
            if let (Some(pack), true) = (&l.mlp_tc, self.mlp_tc && self.d.tensor_cores()) {
                let nb = l.mlp[0].0;
                // the shared-memory form copies the whole pack per block
                let smem = self.mlp_tc_smem
                    && self.d.staged(Kern::MlpBackwardTcSmem)
                    && D::capacity(&pack.s) * 4 >= MLP_TC_PACK_BYTES as usize;
                return self.d.launch(
                    if smem {
                        Kern::MlpBackwardTcSmem
                    } else {
                        Kern::MlpBackwardTc
                    },
                    mlp_tc_iterations(ne),
                    &[
                        Arg::U64(ne as u64),
                        Arg::I32(nb as i32),
                        Arg::Real(&ws.emb.s, 0),
                        Arg::Real(&pack.s, 0),
                        Arg::Val(l.act_cst),
                        Arg::Real(&ws.hl.s, 0),
                        Arg::Real(&ws.g_emb.s, 0),
                        Arg::I32(i32::from(!first)),
                        Arg::I32(i32::from(self.prefetch)),
                    ],
                );
            }
            let k = if self.mlp_two_pass {
                Kern::MlpHiddenBackward2
            } else {
                Kern::MlpHiddenBackward
            };
            return self.d.launch(
                k,
                ne as u64,
                &[
                    Arg::U64(ne as u64),
                    Arg::I32(f.shape),
                    Arg::Real(&ws.emb.s, 0),
                    Arg::Real(&f.w.s, 0),
                    Arg::I32(f.wlen),
                    Arg::Val(l.act_cst),
                    Arg::Real(&ws.hl.s, 0),
                    Arg::Real(&ws.g_emb.s, 0),
                    Arg::I32(i32::from(!first)),
                ],
            );
        }
        let slot = ws.slot(t);
        for k in (0..=last).rev() {
            let (a, b, wk) = &l.mlp[k];
            let alpha = T::from_f64(1.0 / (*a as f64).sqrt());
            if k > 0 {
                // g_act[k-1] = G · W_kᵀ / √a, G = gw (k = last) or g_pre[k]
                let (lo, hi) = ws.act.split_at_mut(k);
                if k == last {
                    self.last_backward(l, ne, &ws.gw.s, &mut lo[k - 1].s, pair)?;
                } else {
                    self.d.gemm(
                        (ne, *a, *b),
                        alpha,
                        &hi[0].s,
                        &wk.s,
                        true,
                        T::ZERO,
                        &mut lo[k - 1].s,
                    )?;
                }
                self.act(
                    ne * a,
                    &ws.pre[slot][k - 1].s,
                    &ws.act[k - 1].s,
                    l.act_cst,
                    true,
                )?;
            } else {
                let g = if last == 0 { &ws.gw.s } else { &ws.act[0].s };
                let beta = if first { T::ZERO } else { T::ONE };
                self.d
                    .gemm((ne, *a, *b), alpha, g, &wk.s, true, beta, &mut ws.g_emb.s)?;
            }
        }
        Ok(())
    }

    /// Whether layer `l`'s `g_w · W_lastᵀ` runs as `ek_gemm_tf32x3_nt_pipe` (f32, 3xTF32 and
    /// its backward on, tensor cores, the kernel staged, `b % 4 == 0`: it copies A in 16-byte
    /// pieces); it then also sums an edge pair's two `g_w` rows itself.
    fn nt_pipe_for(&self, l: &DevLayer<T, D>) -> bool {
        let b = l.mlp[l.mlp.len() - 1].1;
        l.mlp_last_nt.is_some()
            && self.tf32x3
            && self.tf32x3_bwd
            && self.d.tensor_cores()
            && self.nt_pipe
            && self.d.staged(Kern::GemmTf32x3NtPipe)
            && b.is_multiple_of(4)
    }

    /// `out [ne, a] = gw [ne, b] · W_lastᵀ / √a` (the last MLP product's input gradient):
    /// `ek_gemm_tf32x3_nt` on tensor cores (f32, 3xTF32 and its backward on, `a ≤ 64`,
    /// sm_80+), else cuBLAS.
    /// `pair` > 0: row r of `gw` is the sum of rows r and r + pair (only where
    /// [`Self::nt_pipe_for`]: elsewhere the caller summed them with `ek_pair_sum`).
    fn last_backward(
        &self,
        l: &DevLayer<T, D>,
        ne: usize,
        gw: &D::Buf<T>,
        out: &mut D::Buf<T>,
        pair: usize,
    ) -> Result<()> {
        let (a, b, wk) = &l.mlp[l.mlp.len() - 1];
        let alpha = T::from_f64(1.0 / (*a as f64).sqrt());
        if let (Some(pack), true) = (
            &l.mlp_last_nt,
            self.tf32x3 && self.tf32x3_bwd && self.d.tensor_cores(),
        ) {
            if D::capacity(gw) < (ne + pair) * b || D::capacity(out) < ne * a {
                return Err(err("radial MLP backward: workspace too small"));
            }
            let out: &D::Buf<T> = out;
            let mut args = vec![
                Arg::U64(ne as u64),
                Arg::I32(i32::try_from(*a).map_err(err)?),
                Arg::I32(i32::try_from(*b).map_err(err)?),
                Arg::Val(alpha),
                Arg::Real(gw, 0),
                Arg::Real(&pack.s, 0),
                Arg::Val(T::ZERO),
                Arg::Real(out, 0),
            ];
            if self.nt_pipe_for(l) {
                // (the pair form sums the pair's two g_w rows as it reads them)
                args.push(Arg::U64(pair as u64));
                // (the pair form's tiles are half as tall)
                let rows = if pair > 0 { 2 * ne } else { ne };
                return self
                    .d
                    .launch(Kern::GemmTf32x3NtPipe, tc_gemm_iterations(rows), &args);
            }
            debug_assert_eq!(pair, 0, "the pair sum runs before any other product");
            args.push(Arg::I32(i32::from(self.prefetch)));
            return self
                .d
                .launch(Kern::GemmTf32x3Nt, tc_gemm_iterations(ne), &args);
        }
        self.d
            .gemm((ne, *a, *b), alpha, gw, &wk.s, true, T::ZERO, out)
    }

    fn gate(&self, l: &DevLayer<T, D>, n: usize, x: &D::Buf<T>, y: &D::Buf<T>) -> Result<()> {
        let g = &l.gate.t;
        self.d.launch(
            Kern::Gate,
            (n * g.dout as usize) as u64,
            &[
                Arg::U64(n as u64),
                Arg::Real(x, 0),
                Arg::Real(y, 0),
                Arg::I32(g.ns),
                Arg::I32(g.ng),
                Arg::I32s(&l.gate.tab.s),
                Arg::I32(g.din),
                Arg::I32(g.dout),
                Arg::Val(l.gate_cst),
            ],
        )
    }

    fn gate_backward(
        &self,
        l: &DevLayer<T, D>,
        n: usize,
        x: &D::Buf<T>,
        gy: &D::Buf<T>,
        gx: &D::Buf<T>,
    ) -> Result<()> {
        let g = &l.gate.t;
        self.d.launch(
            Kern::GateBackward,
            (n * g.din as usize) as u64,
            &[
                Arg::U64(n as u64),
                Arg::Real(x, 0),
                Arg::Real(gy, 0),
                Arg::Real(gx, 0),
                Arg::I32(g.ns),
                Arg::I32(g.ng),
                Arg::I32s(&l.gate.tab.s),
                Arg::I32(g.din),
                Arg::I32(g.dout),
                Arg::Val(l.gate_cst),
            ],
        )
    }

    /// The edge-geometry arguments shared by `ek_edge_geometry` and `ek_edge_force` (after
    /// the edge count and vectors).
    fn geometry_args<'a>(&self, p: &'a Params<T, D>) -> [Arg<'a, T, D>; 6] {
        let (kind, r_on, pp) = self.env;
        [
            Arg::F64s(&p.coeffs.s, 0),
            Arg::I32(self.model.bessel.coeffs.len() as i32),
            Arg::F64(self.model.bessel.cutoff),
            Arg::I32(kind),
            Arg::F64(r_on),
            Arg::F64(pp),
        ]
    }

    /// The whole step on the device (no synchronisation).
    /// One step on a graph of `n` atoms and `ne` edges whose edges from `fold` on share the
    /// radial rows of the edges `fold` before them (0: a row per edge).
    fn step(
        &self,
        ws: &mut Workspace<T, D>,
        cg: &D::Graph,
        n: usize,
        ne: usize,
        fold: usize,
    ) -> Result<()> {
        let m = &self.model;
        // rows of the radial network (the first `nw` edges' lengths)
        let nw = equikern::plan::conv::weight_rows(ne as u64, fold as u64) as usize;
        let p = &self.params;
        let d = &self.d;
        let (n64, ne64) = (n as u64, ne as u64);
        let one = T::ONE;
        let nl = p.layers.len();
        // ---- edge geometry
        if ne > 0 {
            let mut args = vec![Arg::U64(ne64), Arg::F64s(&ws.vec.s, 0)];
            args.extend(self.geometry_args(p));
            args.extend([Arg::Real(&ws.emb.s, 0), Arg::Real(&ws.sh.s, 0)]);
            d.launch(Kern::EdgeGeometry, ne64, &args)?;
        }
        // layer 0's radial network (edges only) on the side lane beside the embedding
        let ahead = ne > 0 && self.radial_ahead && self.side_lane();
        let mut started = ahead && self.mlp_forward_side(ws, 0, nw, false, Side::Radial, None)?;
        // ---- embedding
        let ns = m.num_species;
        d.launch(
            Kern::OneHot,
            n64 * ns as u64,
            &[
                Arg::U64(n64),
                Arg::U32s(&ws.idx.s, 0),
                Arg::I32(ns as i32),
                Arg::Real(&ws.onehot.s, 0),
            ],
        )?;
        self.linear(
            &p.embed,
            n,
            &ws.onehot.s,
            &mut ws.x.s,
            one,
            false,
            &mut ws.gw.s,
        )?;
        // ---- interaction blocks
        for (t, l) in p.layers.iter().enumerate() {
            // the radial network (edges only) on the side lane: started ahead, or now beside
            // the two Linears
            let side = std::mem::take(&mut started)
                || (ne > 0
                    && !ahead
                    && self.side_lane()
                    && self.mlp_forward_side(ws, t, nw, false, Side::Radial, None)?);
            // the self-connection first, into the block's output: the Linear after the
            // convolution adds to it
            self.linear(&l.sc, n, &ws.x.s, &mut ws.ys[t].s, one, false, &mut ws.gw.s)?;
            self.linear(
                &l.lin1,
                n,
                &ws.x.s,
                &mut ws.hs[t].s,
                one,
                false,
                &mut ws.gw.s,
            )?;
            if side {
                d.join_side(Side::Radial)?;
            }
            if ne > 0 {
                if !side {
                    self.mlp_forward(ws, t, nw, false)?;
                }
                // two `w` slots: the next layer's radial network beside this convolution
                if ahead && ws.alt_w && t + 1 < nl {
                    started = self.mlp_forward_side(ws, t + 1, nw, false, Side::Radial, None)?;
                }
                let slot = ws.slot(t);
                use Tensor::*;
                d.conv(
                    t,
                    Direction::Forward,
                    cg,
                    &[(X, &ws.hs[t].s), (Y, &ws.sh.s), (W, &ws.w[slot].s)],
                    &mut [(Z, &mut ws.agg.s)],
                )?;
            } else {
                d.zero(&mut ws.agg.s)?;
            }
            // the next layer's radial network, now that the convolution has read `w`
            if ahead && !ws.alt_w && t + 1 < nl {
                started = self.mlp_forward_side(ws, t + 1, nw, false, Side::Radial, None)?;
            }
            self.linear(
                &l.lin2,
                n,
                &ws.agg.s,
                &mut ws.ys[t].s,
                l.inv_den,
                true,
                &mut ws.gw.s,
            )?;
            self.gate(l, n, &ws.ys[t].s, &ws.x.s)?;
        }
        // ---- readout
        self.linear(
            &p.readout_hidden,
            n,
            &ws.x.s,
            &mut ws.hid.s,
            one,
            false,
            &mut ws.gw.s,
        )?;
        self.linear(
            &p.readout_energy,
            n,
            &ws.hid.s,
            &mut ws.out.s,
            one,
            false,
            &mut ws.gw.s,
        )?;
        d.launch(
            Kern::Readout,
            n64,
            &[
                Arg::U64(n64),
                Arg::Real(&ws.out.s, 0),
                Arg::U32s(&ws.idx.s, 0),
                Arg::F64s(&p.scale.s, 0),
                Arg::F64s(&p.shift.s, 0),
                Arg::F64s(&ws.result.s, 0),
                Arg::Real(&ws.seed.s, 0),
            ],
        )?;
        // ---- backward
        self.linear(
            &p.readout_energy_t,
            n,
            &ws.seed.s,
            &mut ws.g_hid.s,
            one,
            false,
            &mut ws.gw.s,
        )?;
        self.linear(
            &p.readout_hidden_t,
            n,
            &ws.g_hid.s,
            &mut ws.gx.s,
            one,
            false,
            &mut ws.gw.s,
        )?;
        // the side lane carries the radial network's edge-only work: a layer's MLP backward,
        // then the next layer's recomputed w, beside the node-side Linears between them
        let mut side_open = false;
        // Two `w` slots: layer t's `w` is recomputed on its slot's Ahead lane once layer
        // t + 2's convolution backward has read that slot (the first one, t = nl − 2, into
        // the slot the forward's last layer did not use, now).
        let ahead_bwd = ne > 0 && ws.alt_w;
        let mut issued = vec![false; nl];
        if ahead_bwd && nl >= 2 {
            issued[nl - 2] = self.recompute_ahead(ws, nl - 2, nw)?;
        }
        for t in (0..nl).rev() {
            let l = &p.layers[t];
            // w recomputed on the side lane beside the gate's backward and lin2ᵀ
            let recompute = ne > 0 && !ws.keep && t + 1 != nl;
            let side = recompute
                && !ahead_bwd
                && !self.rcb_everywhere()
                && self.side_lane()
                && (side_open || d.fork_side(Side::Radial)?);
            side_open |= side;
            if side {
                d.set_side(Some(Side::Radial));
                let r = self.mlp_forward(ws, t, nw, true);
                d.set_side(None);
                r?;
            }
            self.gate_backward(l, n, &ws.ys[t].s, &ws.gx.s, &ws.gy.s)?;
            self.linear(
                &l.lin2_t,
                n,
                &ws.gy.s,
                &mut ws.g_agg.s,
                l.inv_den,
                false,
                &mut ws.gw.s,
            )?;
            // the convolution reads w and overwrites g_w: the side lane's work first
            if side_open {
                d.join_side(Side::Radial)?;
                side_open = false;
            }
            if ahead_bwd && recompute {
                if issued[t] {
                    d.join_side(Side::Ahead(ws.slot(t)))?;
                } else {
                    // (not issued ahead: on the main lane, after any use of the split scratch)
                    d.join_side(Side::Ahead(0))?;
                    d.join_side(Side::Ahead(1))?;
                    self.mlp_forward(ws, t, nw, true)?;
                }
            }
            // the convolution backward with the radial last product fused in: w and g_w never
            // stored (the kept last hidden activation and W go in, ∂/∂h comes out into `hl`)
            let fused_rcb = match &l.rcb {
                Some(v)
                    if self.conv_radial
                        && self.mlp_fused
                        && ws.keep_h
                        && t + 1 < ws.hk.len()
                        && ne > 0
                        && d.staged(Kern::ConvRadialBwd) =>
                {
                    Some(v)
                }
                _ => None,
            };
            if ne > 0 {
                // ∂/∂h of the radial last product: in `hl` from the fused kernel, else from
                // `g_w` in the MLP backward
                let g_last_ready = if let Some(vars) = fused_rcb {
                    let (_, send) = D::graph_views(cg);
                    let (a, _, wk) = &l.mlp[l.mlp.len() - 1];
                    let alpha = T::from_f64(1.0 / (*a as f64).sqrt());
                    for (i, &v) in vars.iter().enumerate() {
                        d.launch(
                            Kern::ConvRadialBwd,
                            n64 * 32,
                            &[
                                Arg::I32(v),
                                Arg::U64(n64),
                                Arg::U64(ne64),
                                Arg::U32s(send, 0),
                                Arg::Real(&ws.hs[t].s, 0),
                                Arg::Real(&ws.sh.s, 0),
                                Arg::Real(&ws.hk[t].s, 0),
                                Arg::Real(&wk.s, 0),
                                Arg::Real(&ws.g_agg.s, 0),
                                Arg::Val(alpha),
                                Arg::I32(i32::from(i == 0)),
                                Arg::Real(&ws.gxc.s, 0),
                                Arg::Real(&ws.gsh_l.s, 0),
                                Arg::Real(&ws.hl.s, 0),
                            ],
                        )?;
                    }
                    true
                } else {
                    if recompute && !side && !ahead_bwd {
                        // w was not kept: recompute this layer's radial MLP.
                        self.mlp_forward(ws, t, nw, true)?;
                    }
                    let slot = ws.slot(t);
                    use Tensor::*;
                    d.conv(
                        t,
                        Direction::Backward,
                        cg,
                        &[
                            (X, &ws.hs[t].s),
                            (Y, &ws.sh.s),
                            (W, &ws.w[slot].s),
                            (GZ, &ws.g_agg.s),
                        ],
                        &mut [
                            (GX, &mut ws.gxc.s),
                            (GY, &mut ws.gsh_l.s),
                            (GW, &mut ws.gw.s),
                        ],
                    )?;
                    // this layer's slot is read: layer t − 2's `w` goes into it
                    if ahead_bwd && t >= 2 {
                        issued[t - 2] = self.recompute_ahead(ws, t - 2, nw)?;
                    }
                    if fold > 0 && !self.nt_pipe_for(l) {
                        // a pair's gradient: its two edges' rows, edge e + fold onto e (the
                        // pipelined product sums them as it reads them)
                        let len = (nw * l.numel) as u64;
                        d.launch(Kern::PairSum, len, &[Arg::U64(len), Arg::Real(&ws.gw.s, 0)])?;
                    }
                    false
                };
                let len = ne64 * self.sh_dim as u64;
                d.launch(
                    Kern::Accumulate,
                    len,
                    &[
                        Arg::U64(len),
                        Arg::Real(&ws.g_sh.s, 0),
                        Arg::Real(&ws.gsh_l.s, 0),
                        Arg::I32(i32::from(t + 1 == nl)),
                    ],
                )?;
                // the MLP backward (edges only) on the side lane beside sc_t, lin1_t and the
                // next layer's gate backward and lin2ᵀ
                let first = t + 1 == nl;
                if !g_last_ready
                    && self.side_mlp_bwd
                    && self.mlp_fused
                    && self.side_lane()
                    && d.fork_side(Side::Radial)?
                {
                    side_open = true;
                    d.set_side(Some(Side::Radial));
                    let pair = if self.nt_pipe_for(l) { fold } else { 0 };
                    let r = self.mlp_backward(ws, t, nw, first, false, pair);
                    d.set_side(None);
                    r?;
                } else {
                    let pair = if self.nt_pipe_for(l) { fold } else { 0 };
                    self.mlp_backward(ws, t, nw, first, g_last_ready, pair)?;
                }
            } else {
                d.zero(&mut ws.gxc.s)?;
            }
            self.linear(&l.sc_t, n, &ws.gy.s, &mut ws.gx.s, one, false, &mut ws.gw.s)?;
            self.linear(
                &l.lin1_t,
                n,
                &ws.gxc.s,
                &mut ws.gx.s,
                one,
                true,
                &mut ws.gw.s,
            )?;
        }
        if side_open {
            d.join_side(Side::Radial)?;
        }
        d.join_side(Side::Ahead(0))?;
        d.join_side(Side::Ahead(1))?;
        // ---- edge forces, forces, virial
        if ne > 0 {
            let mut args = vec![Arg::U64(ne64), Arg::F64s(&ws.vec.s, 0)];
            args.extend(self.geometry_args(p));
            args.extend([
                Arg::Real(&ws.g_emb.s, 0),
                Arg::Real(&ws.g_sh.s, 0),
                Arg::F64s(&ws.fe.s, 0),
                Arg::U64(fold as u64),
            ]);
            d.launch(Kern::EdgeForce, ne64, &args)?;
        }
        let (recv, send) = D::graph_views(cg);
        d.launch(
            Kern::Forces,
            n64,
            &[
                Arg::U64(n64),
                Arg::U32s(recv, 0),
                Arg::U32s(send, 0),
                Arg::F64s(&ws.fe.s, 0),
                Arg::F64s(&ws.result.s, n),
            ],
        )?;
        let parts = VIRIAL_PARTS as u64;
        d.launch(
            Kern::VirialPartial,
            parts * RESULT_TAIL as u64,
            &[
                Arg::U64(ne64),
                Arg::U64(parts),
                Arg::F64s(&ws.vec.s, 0),
                Arg::F64s(&ws.fe.s, 0),
                Arg::F64s(&ws.vpart.s, 0),
            ],
        )?;
        d.launch(
            Kern::VirialFinal,
            RESULT_TAIL as u64,
            &[
                Arg::U64(parts),
                Arg::F64s(&ws.vpart.s, 0),
                Arg::F64s(&ws.result.s, 4 * n),
            ],
        )?;
        Ok(())
    }
}

/// The workspace's `real` and `f64` buffers.
type FloatBufs<'a, T, D> = (Vec<&'a Buf<T, D>>, Vec<&'a Buf<f64, D>>);

impl<T: Pod, D: Memory> Workspace<T, D> {
    /// The radial-MLP slot of layer `t`.
    fn slot(&self, t: usize) -> usize {
        if self.keep {
            t
        } else if self.alt_w {
            // the last layer's `w` (read first by the backward) in slot 0
            (self.w.len() - 1 - t) % 2
        } else {
            0
        }
    }

    /// Every float buffer: `(real ones, f64 ones)`.
    fn floats(&self) -> FloatBufs<'_, T, D> {
        let mut a = vec![
            &self.emb,
            &self.sh,
            &self.onehot,
            &self.x,
            &self.agg,
            &self.hid,
            &self.out,
            &self.seed,
            &self.g_hid,
            &self.gx,
            &self.gy,
            &self.g_agg,
            &self.gxc,
            &self.gw,
            &self.gsh_l,
            &self.g_sh,
            &self.g_emb,
        ];
        a.extend(
            self.hs
                .iter()
                .chain(&self.ys)
                .chain(&self.w)
                .chain(&self.act),
        );
        a.push(&self.hl);
        a.push(&self.rsplit);
        a.extend(&self.hk);
        a.extend(self.pre.iter().flatten());
        (a, vec![&self.vec, &self.fe, &self.vpart, &self.result])
    }
}

impl<T: DevReal> Resident<T, CudaExec<T>> {
    /// The model-only part of a step of `s` on its radius graph `list`, built on this
    /// evaluator's device ([`CudaNeighbourList::build`]): the edge indices, CSR views and
    /// edge vectors never leave the device; the host sees the species going up and the
    /// results coming back. Errors as [`Self::evaluate_graph`] (an overlap is named from the
    /// list's host copy, made only then).
    pub fn evaluate_device_list(
        &self,
        s: &Structure,
        list: &CudaNeighbourList,
    ) -> Result<(Prediction, StepProfile)> {
        let t0 = Instant::now();
        s.validate()?;
        let types = self.model.types_of(&s.numbers)?;
        let n = s.positions.len();
        if list.atoms() != n {
            return Err(ModelError::input(
                "neighbour list",
                format!("built for {} atoms, the structure has {n}", list.atoms()),
            ));
        }
        if !Arc::ptr_eq(list.device().stream(), self.d.stream()) {
            return Err(ModelError::input(
                "neighbour list",
                "built on another device or stream than the evaluator's",
            ));
        }
        let ne = list.edges();
        let mut ws = self.lock();
        let fold = self.fold_of(ne, list.pairs());
        let cg = self
            .d
            .graph_on_device(n, ne, list.receiver(), list.sender())?;
        let cg = self.d.fold_weights(cg, fold)?;
        let graph_s = t0.elapsed().as_secs_f64();
        self.ensure(&mut ws, n, ne, fold)?;
        if let Some(v) = list.vectors() {
            self.d.copy_view(&v, &mut ws.vec.s)?;
        }
        // The tables come from the exec's grow-only pool: same addresses, same key.
        let key = Some(cg.table_key());
        let (p, prof, min_r2) =
            self.run_step(&mut ws, s, &types, &cg, ne, fold, key, t0, graph_s, 0.0)?;
        // The graph shares the pool's tables: gone before another thread's step may build.
        drop(cg);
        drop(ws);
        if min_r2 < MIN_DISTANCE * MIN_DISTANCE {
            check_overlap(&list.download()?)?;
            return Err(overlap(min_r2));
        }
        Ok((p, prof))
    }
}
