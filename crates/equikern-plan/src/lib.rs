//! The kernel plan: the one narrow waist between the tensor-product spec and every backend.
//!
//! `lower(tp, direction, dtype, caps)` turns a validated [`TensorProduct`] into a [`KernelPlan`]:
//! plain data (printable, hashable, comparable) that the WGSL and CUDA/HIP writers only print
//! and the runtimes only execute. Target differences enter only through [`Capabilities`].
//!
//! ## The model: one trilinear form, gathered per output row
//! Every instruction is a set of index tuples `(x_row, y_row, z_row, w_idx)` fixed by its
//! connection mode (`m1, m2, mo` multiplicities; `w_idx` within the instruction's weight slice):
//!
//! | mode | tuples |
//! |---|---|
//! | uvw | `(u, v, w, (u·m2+v)·mo+w)` |
//! | uvu / uvv | `(u, v, u, u·m2+v)` / `(u, v, v, u·m2+v)` |
//! | uuw / uuu | `(u, u, w, u·mo+w)` / `(u, u, u, u)` |
//! | uvuv | `(u, v, u·m2+v, u·m2+v)` |
//! | uvu<v / u<vw | `(u_q, v_q, q, q)` / `(u_q, v_q, w, q·mo+w)`, q-th pair of triu(m, 1) |
//!
//! and for each CG nonzero `(i, j, k, c)`: `z[z_row, k] += coef·c·W[w_idx]·x[x_row, i]·y[y_row, j]`
//! (`W ≡ 1` when unweighted). Every pass is this form with one slot as output: forward writes
//! z; backward writes x (operands gz, y, w), y (x, gz, w) and w (x, y, gz); double backward
//! writes z from three operand sets (`F(hx,y,w) + F(x,hy,w) + F(x,y,hw)`) and x, y, w from two
//! each. A row kernel *gathers*: for output row `r`, [`Contribution::count`] is the number of
//! tuples with that row and each operand's row is an [`Ix`] of `(r, t)`, a closed form where
//! one is simple (e.g. `q(u, v) = u·m − u(u+1)/2 + v − u − 1`), an [`Ix::Table`] otherwise
//! (`u_q`, `v_q` from `q`). Terms carry `coef·c` (zero coefficients dropped) and component
//! indices: out=z `(i, j[, 0])` → k; out=x `(k, j[, 0])` → i; out=y `(i, k[, 0])` → j;
//! out=w `(i, j, k)` → 0. The weight operand, when present, is the contribution's
//! `scalar_factor`.
//!
//! Segments: one per output block in irreps order (zero-multiplicity blocks skipped), every
//! block present even if no instruction writes it (no contributions: the row is written as
//! zeros); weight gradients get one segment per weighted instruction (rows = ∏ path_shape,
//! row_len 1, `out_offset` = weight offset). Rows of one sample are consecutive invocations,
//! so a workgroup touches one or two samples' contiguous memory.
//!
//! ## Kernels per direction
//! One row kernel per output tensor (rows of different outputs loop over very different
//! channel counts; a warp mixing them waits for its longest lane).
//! * Forward: `forward` `[X, Y, W] → [Z]`.
//! * Backward: `backward_gx` `→ [GX]`, `backward_gy` `→ [GY]`, and per-sample weights
//!   `backward_gw` `→ [GW]`, or shared weights `backward_gw_chunks` ([`SampleMode::Chunk`])
//!   `→ [WPartial]` then `reduce_gw` ([`Work::ReduceChunks`]) `→ [GW]`, chunks in ascending
//!   order (deterministic).
//! * DoubleBackward: `double_backward_dgz` `→ [DGZ]`, `double_backward_dx`, `double_backward_dy`,
//!   and `double_backward_dw` (per-sample) or `double_backward_dw_chunks` + `reduce_dw`.
//! * Channel-fused forward / backward ([`channel`]): `forward_fused` `[X, Y, W] → [Z]` and
//!   `backward_fused` `[X, Y, W, GZ] → [GX, GY, GW]` (shared weights: `→ [GX, GY]` plus the
//!   chunk kernels for GW) replace the row kernels when every instruction is `uvu` over one
//!   channel count (the backward and the convolution forward: over `x` blocks of any
//!   multiplicities, one channel per row of the largest) and the target's workgroup memory
//!   fits the `gy` sum / output staging ([`LowerOptions`] turns this off).
//! * Unweighted products (weight_numel 0) drop every W/HW/GW/DW part.
//! * Long gathers split (see [`Tensor::Scratch`]): a kernel `<name>_parts` before `<name>`.
//!
//! A kernel binds exactly the tensors its contributions read (in [`Tensor`] order), then its
//! outputs. If `inputs + outputs` exceeds `caps.max_storage_buffers_per_stage` lowering fails
//! with [`PlanError::TooManyBindings`] (DGZ needs 7).
//! [`Ix::Table`]s are compile-time constants (`plan.tables`), not bindings.
//!
//! Chunk size (shared-weight gradients): `clamp(next_pow2(weight_numel) / 4, 16, 256)`
//! samples: large weight vectors already give many rows per chunk, so they take long chunks
//! (fewer partial sums, smaller `WPartial`); at batch 5·10^4 every suite problem still has
//! over 10^5 invocations. Halved until one chunk fits a dispatch.
//!
//! Workgroup size: `min(128, max_invocations_per_workgroup, max_workgroup_size_x)`, rounded
//! down to a multiple of `subgroup_size` when known.
//!
//! `max_samples_per_dispatch` is the largest `n` such that, for every row kernel, each
//! per-sample tensor it binds fits one binding (`n·len·elem ≤ max_storage_binding_bytes`, else
//! [`PlanError::BindingTooSmall`] at `n = 1`), the dispatch's `WPartial` rows fit one binding,
//! the grid of [`Kernel::grid`] fits `max_workgroups_per_dim` in both dimensions and every
//! invocation and element index (plus a small base-offset margin) fits in `u32`; it is a
//! multiple of the chunk size when a chunk kernel exists. [`KernelPlan::max_batch`] bounds the
//! whole batch when a reduction must bind all of `WPartial` at once.
//!
//! ## Execution model every backend implements
//! A plan is a sequence of [`Kernel`]s run in order. A `Rows` kernel owns a *row space* per
//! sample: the concatenation of its [`Segment`]s. One invocation (thread) computes one
//! `(sample, row)` pair — or, for [`SampleMode::Chunk`], one `(chunk, row)` pair summing over the
//! chunk's samples in ascending order. A row is `row_len` consecutive output elements
//! (`2l+1` components of one multiplicity channel of an irrep block, or 1 for a weight).
//! The row's value is the sum of its segment's [`Contribution`]s; each contribution loops
//! `t in 0..count(r)`, evaluates its operands' row indices ([`Ix`] expressions of `r`, `t`),
//! loads each operand row, and accumulates its unrolled [`Term`]s (CG nonzeros with the path
//! coefficient folded in). Every output element is written exactly once, by one invocation, with
//! a fixed summation order: results are deterministic and need no atomics.
//!
//! Invocations are numbered `g = (wg_id.y * num_workgroups.x + wg_id.x) * workgroup_size + lid`
//! (a 2-D grid so no dimension exceeds `max_workgroups_per_dim`); `g` maps to
//! `sample = g / rows_per_sample`, `row = g % rows_per_sample` within the current dispatch, and
//! invocations with `sample >= num_samples` (of that dispatch) do nothing. Runtimes split a batch
//! into dispatches of at most [`KernelPlan::max_samples_per_dispatch`] samples and rebase the
//! bindings for each. A chunk kernel's dispatch starts at a multiple of the chunk size; chunk
//! `c` (global) covers samples `[c·spc, min((c+1)·spc, batch))` and writes `WPartial[c, ·]`;
//! the reduction sums `num_chunks = ceil(batch / spc)` chunks.
//!
//! [`interpret`] executes a plan on the CPU exactly this way (see [`interp`]).
//!
//! ## Split long gathers
//! A gradient row of a mul-1 `y` block sums over every `u` of every path into it (MACE
//! backward: 4 GY rows per sample, each ~17 paths × 128 iterations). Backward and double
//! backward split such rows (longer than 4 forward rows of work) into `S` parts (power of
//! two, ≤ subgroup width): kernel `<k>_parts` writes partial rows `r·S + s` to the per-sample
//! [`Tensor::Scratch`] (`Dims::scratch` elements per sample; part `s` runs the iterations
//! `t = s + S·t'`), and kernel `<k>` sums the `S` partial rows in ascending `s` (an ordinary
//! one-operand contribution with coefficient-1 terms). Deterministic; runtimes own and
//! rebase the scratch like any per-sample tensor. Details: `lower::split_long_gathers`.
//!
//! ## Performance notes (ideas, not implemented)
//! * Parts are capped at the subgroup width; the longest problems (benzene double backward:
//!   DY parts still ~90 forward rows of work) may want more, or a subgroup reduction instead
//!   of the scratch round trip.
//! * Operand reuse: consecutive rows of a uvu/uvw segment read the same `y` (or `x`) rows;
//!   staging a sample's operand blocks in workgroup memory would cut global loads.
//! * uvw is a small matrix product per sample (`(x⊗y)[u,v,k] · W[uv, w]`); a tiled variant
//!   (CG contraction once per `(u, v)`, then the weight contraction) saves the repeated CG work.
//! * Weight-gradient rows (row_len 1) reload x, y and gz rows per weight; several weights per
//!   invocation, or the `(u, v)` outer product staged once, would amortise that.
//! * Contributions of different paths with equal operand rows (same `x`, `y` blocks into
//!   several outputs) could share loads if their segments were fused.

pub mod caps;
pub mod channel;
pub mod conv;
mod display;
pub mod interp;
mod interp_conv;
pub mod ix;
mod lower;
mod lower_conv;
pub mod staged;

pub use caps::Capabilities;
pub use channel::{
    backward_path_cost, chunk_sum, ChannelBlock, ChannelConv, ChannelPass, ChannelPath,
    ChannelTerm, ChannelWork, LaneGroup, LANE_CHUNK,
};
pub use conv::{ConvInfo, ConvOptions};
pub use interp::interpret;
pub use interp_conv::{conv_index_tensors, interpret_conv};
pub use ix::Ix;
pub use lower::{lower, lower_with, LowerOptions};
pub use lower_conv::{lower_conv, lower_conv_with};
pub use staged::{StagedPass, StagedPath, StagedWork};

use equikern_core::TensorProduct;
use serde::{Deserialize, Serialize};

/// Which pass of the tensor product a plan computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    Forward,
    Backward,
    DoubleBackward,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    F32,
    F64,
}

/// Logical tensors a plan reads or writes. Per-sample row lengths: X=dim_in1, Y=dim_in2,
/// W=weight_numel, Z=dim_out; gradients and tangents match their primal.
/// Double backward: given GZ and tangents HX, HY, HW, outputs DX, DY, DW (gradients of
/// S = <GX,HX>+<GY,HY>+<GW,HW> w.r.t. x, y, w) and DGZ (w.r.t. grad_z).
/// `WPartial` is scratch: `[num_chunks, weight_numel]` partial sums of a shared-weight gradient.
/// `Scratch` is per-sample scratch (`Dims::scratch` elements per sample): partial rows of
/// split long gathers, written by a `<kernel>_parts` kernel and summed by the next kernel.
/// Runtimes own both scratch tensors; callers never see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tensor {
    X,
    Y,
    W,
    Z,
    GZ,
    GX,
    GY,
    GW,
    HX,
    HY,
    HW,
    DX,
    DY,
    DW,
    DGZ,
    WPartial,
    Scratch,
    /// Convolution index tensors (`u32`), see [`conv`]: the receiver view
    /// `[offsets (nodes+1) | edge ids by receiver (E) | their senders (E)]`,
    RecvCsr,
    /// the sender view (transpose) `[offsets | edge ids by sender | their receivers]`,
    SendCsr,
    /// and the raw `receiver[e]`, `sender[e]` (E each) for per-edge kernels.
    Receiver,
    Sender,
    /// Piece tables (`u32`, balanced deterministic convolution): `[piece_offsets (nodes+1) |
    /// piece_start (pieces+1) | piece_node (pieces) | edge ids (E) | other ends (E)]`.
    RecvPieces,
    SendPieces,
    /// Scratch partial sums, one row per piece: `[recv pieces, dim_out]`, `[send pieces, dim_in1]`.
    RecvPartial,
    SendPartial,
}

/// How a kernel's invocations map onto samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SampleMode {
    /// One invocation per `(sample, row)`.
    PerSample,
    /// One invocation per `(chunk, row)`; it sums the chunk's `samples_per_chunk` samples in
    /// ascending order and writes row `r` of chunk `c` to `[c, r]` of its (non-per-sample)
    /// output. Used for shared-weight gradients (deterministic two-level reduction).
    Chunk { samples_per_chunk: u32 },
    /// Convolution, deterministic: one invocation per `(node, row)`; it loops over the node's
    /// range of the CSR view `csr` (`RecvCsr` or `SendCsr`) in ascending position, and the
    /// edge at each position is the "sample" of its per-edge operands. See [`conv`].
    Segments { csr: Tensor },
    /// Convolution, atomic: one invocation per `(edge, row)`; the row is added with float
    /// atomics into row `index[edge]` (`Receiver` or `Sender`) of the node-indexed output,
    /// which the runtime zero-fills before the kernel. Order-dependent rounding.
    Scatter { index: Tensor },
    /// Convolution, balanced deterministic: one invocation per `(piece, row)` of the piece
    /// table `pieces` (`RecvPieces` / `SendPieces`): it sums the piece's positions in
    /// ascending order and writes row `piece` of its partial output (`RecvPartial` /
    /// `SendPartial`); a [`Work::ReducePieces`] follows.
    Pieces { pieces: Tensor },
}

/// Where an operand row of a sample lives. In a convolution plan the sample of a per-edge
/// operand is the current edge, and node operands are gathered through an index tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Addressing {
    /// Element `sample * per_sample_len + offset + row * row_len + comp`.
    PerSample,
    /// Not batched (shared weights): element `offset + row * row_len + comp`.
    Shared,
    /// Convolution: the row of node `index[edge]` (`Sender` or `Receiver`) of the current
    /// edge: element `index[edge] * per_sample_len + offset + row * row_len + comp`.
    Gather { index: Tensor },
}

/// One factor of a contribution: a row of `tensor` selected by `row`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operand {
    pub tensor: Tensor,
    pub addressing: Addressing,
    /// Element offset of the irrep block (or weight slice) within one sample's row.
    pub offset: u32,
    /// Components per row (2l+1, or 1 for a weight).
    pub row_len: u32,
    /// Row index as a function of the output row `r` and the loop counter `t`.
    pub row: Ix,
}

/// One unrolled product: `acc[out] += coeff * Π_k operand_k[comps[k]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Term {
    pub out: u32,
    /// One component index per operand, same order as `Contribution::operands`.
    pub comps: Vec<u32>,
    /// CG value times the path coefficient.
    pub coeff: f64,
}

/// One instruction's (or one operand set's) share of a segment's rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// Index of the instruction in the spec (for naming and debugging).
    pub path: u32,
    /// Iterations of the channel loop for output row `r` (may depend on `r`, e.g. `u<v`).
    pub count: Ix,
    pub operands: Vec<Operand>,
    /// If set, operand index whose row_len is 1 and which multiplies every term (a weight):
    /// writers may factor it out of the term sum.
    pub scalar_factor: Option<u32>,
    pub terms: Vec<Term>,
}

/// A contiguous range of rows of one output tensor computed by one kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub out: Tensor,
    /// Element offset of the block within one sample's output row.
    pub out_offset: u32,
    /// First row of this segment in the kernel's row space.
    pub first_row: u32,
    pub rows: u32,
    pub row_len: u32,
    pub contributions: Vec<Contribution>,
}

/// What a kernel does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Work {
    /// Row kernel (see the crate docs).
    Rows {
        sample_mode: SampleMode,
        rows_per_sample: u32,
        segments: Vec<Segment>,
    },
    /// `out[r] = Σ_{c in 0..num_chunks} WPartial[c, r]` in ascending `c`, for `r < len`.
    /// `num_chunks` is a run-time parameter (depends on the batch).
    ReduceChunks {
        input: Tensor,
        output: Tensor,
        len: u32,
    },
    /// Channel-fused backward ([`channel`]): one invocation per `(sample, channel)`,
    /// `samples_per_group` samples per workgroup; reads X, Y, (W,) GZ once and writes GX,
    /// GY (summed over the channels in workgroup memory) and, per-sample weights, GW.
    Channels(ChannelWork),
    /// Weight-staged kernel ([`staged`]): one workgroup (`workgroup_size` invocations) per
    /// sample; the sample's weights pass through workgroup memory, coalesced both ways.
    Staged(StagedWork),
    /// Convolution: `output[n, i] = Σ_{p in node n's pieces} input[p, i]` in ascending `p`
    /// (zero for none), one invocation per `(node, i)`, `i < len`; node `n`'s pieces are
    /// `pieces[n]..pieces[n + 1]` (the table's first part).
    ReducePieces {
        input: Tensor,
        output: Tensor,
        pieces: Tensor,
        len: u32,
    },
}

/// One GPU kernel (one pipeline / one `__global__`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub name: String,
    /// Read-only bindings, in binding order.
    pub inputs: Vec<Tensor>,
    /// Written bindings, after the inputs in binding order.
    pub outputs: Vec<Tensor>,
    pub workgroup_size: u32,
    pub work: Work,
}

/// Per-sample row lengths of the logical tensors, copied from the spec for the writers and
/// runtimes (so they never need the spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub dim_in1: u32,
    pub dim_in2: u32,
    pub dim_out: u32,
    pub weight_numel: u32,
    pub shared_weights: bool,
    /// Elements per sample of [`Tensor::Scratch`] (0 when no gather is split).
    #[serde(default)]
    pub scratch: u32,
}

/// The whole plan for one direction of one tensor product on one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelPlan {
    pub direction: Direction,
    pub dtype: Dtype,
    pub dims: Dims,
    pub caps: Capabilities,
    /// Constant `u32` tables referenced by [`Ix::Table`].
    pub tables: Vec<Vec<u32>>,
    pub kernels: Vec<Kernel>,
    /// Most samples one dispatch of any kernel may cover (binding-size and grid limits);
    /// runtimes split larger batches into dispatches of at most this many samples.
    /// Convolution plans: most units (nodes or edges) per dispatch (grid limits only).
    pub max_samples_per_dispatch: u32,
    /// Set for fused-convolution plans ([`lower_conv`]); absent from TP plans' serde form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<conv::ConvInfo>,
}

impl Dims {
    pub fn of(tp: &TensorProduct) -> Self {
        Dims {
            dim_in1: tp.dim_in1 as u32,
            dim_in2: tp.dim_in2 as u32,
            dim_out: tp.dim_out as u32,
            weight_numel: tp.weight_numel as u32,
            shared_weights: tp.spec.shared_weights,
            scratch: 0,
        }
    }

    /// Elements per sample of `t` (0 for non-per-sample tensors).
    pub fn per_sample_len(&self, t: Tensor) -> u32 {
        use Tensor::*;
        match t {
            X | GX | HX | DX => self.dim_in1,
            Y | GY | HY | DY => self.dim_in2,
            Z | GZ | DGZ => self.dim_out,
            W | GW | HW | DW => {
                if self.shared_weights {
                    0
                } else {
                    self.weight_numel
                }
            }
            WPartial => 0,
            Scratch => self.scratch,
            // Index tensors: one element per edge (raw) or not per-sample (CSR views).
            Receiver | Sender => 1,
            RecvCsr | SendCsr | RecvPieces | SendPieces => 0,
            RecvPartial => self.dim_out,
            SendPartial => self.dim_in1,
        }
    }
}

/// Why a plan could not be made or run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "tensor {tensor:?} needs {bytes_per_sample} bytes per sample but a storage binding holds \
         at most {max_binding_bytes} bytes"
    )]
    BindingTooSmall {
        tensor: Tensor,
        bytes_per_sample: u64,
        max_binding_bytes: u64,
    },
    #[error("kernel {kernel} needs {needed} storage buffers; the target allows {max}")]
    TooManyBindings {
        kernel: String,
        needed: u32,
        max: u32,
    },
    #[error("capabilities: {0}")]
    Caps(String),
    #[error("too large: {0}")]
    TooLarge(&'static str),
    #[error("batch {batch} exceeds this plan's limit of {max} samples (partial-sum buffer size)")]
    BatchTooLarge { batch: u64, max: u64 },
    #[error("missing input tensor {0:?}")]
    MissingInput(Tensor),
    #[error("input {tensor:?} has {got} elements, expected {expected}")]
    InputLength {
        tensor: Tensor,
        expected: usize,
        got: usize,
    },
    #[error("kernel {kernel}: {why}")]
    Interp { kernel: String, why: String },
    #[error(
        "graph too large: tensor {tensor:?} needs {elements} elements; one binding holds \
         {max_elements}"
    )]
    GraphTooLarge {
        tensor: Tensor,
        elements: u64,
        max_elements: u64,
    },
    #[error("not a convolution plan")]
    NotConv,
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl Dims {
    /// Elements of buffer `t` for a batch: per-sample tensors `batch * len`, shared weights
    /// and their gradients `weight_numel`, `WPartial` `num_chunks * weight_numel`.
    pub fn buffer_len(&self, t: Tensor, batch: u64, num_chunks: u64) -> u64 {
        match (t, self.per_sample_len(t)) {
            (Tensor::WPartial, _) => num_chunks * self.weight_numel as u64,
            (_, 0) => self.weight_numel as u64,
            (_, len) => batch * len as u64,
        }
    }
}

impl Kernel {
    /// Work items of one dispatch covering `n` samples (rows kernels) or of the reduction.
    pub fn invocations(&self, n: u64) -> u64 {
        match &self.work {
            Work::Rows {
                sample_mode,
                rows_per_sample,
                ..
            } => {
                let units = match sample_mode {
                    SampleMode::PerSample
                    | SampleMode::Segments { .. }
                    | SampleMode::Scatter { .. }
                    | SampleMode::Pieces { .. } => n,
                    SampleMode::Chunk { samples_per_chunk } => {
                        n.div_ceil(*samples_per_chunk as u64)
                    }
                };
                units * *rows_per_sample as u64
            }
            Work::ReduceChunks { len, .. } => *len as u64,
            Work::ReducePieces { len, .. } => n * *len as u64,
            Work::Channels(c) => n * c.lanes() as u64,
            Work::Staged(_) => n * self.workgroup_size as u64,
        }
    }

    /// `(rows per sample, samples per chunk)` of a kernel whose invocations cover samples
    /// (row kernels and channel kernels; a channel is a row here), `None` for reductions.
    pub fn sample_rows(&self) -> Option<(u32, u32)> {
        match &self.work {
            Work::Rows {
                sample_mode,
                rows_per_sample,
                ..
            } => Some((
                *rows_per_sample,
                match sample_mode {
                    SampleMode::Chunk { samples_per_chunk } => *samples_per_chunk,
                    _ => 1,
                },
            )),
            Work::Channels(c) => Some((c.lanes(), 1)),
            Work::Staged(_) => Some((self.workgroup_size, 1)),
            Work::ReduceChunks { .. } | Work::ReducePieces { .. } => None,
        }
    }

    /// The 2-D grid `[x, y]` of workgroups for `invocations` work items: `x = min(G, max)`,
    /// `y = ceil(G / x)` with `G = ceil(invocations / workgroup_size)`. Every runtime uses
    /// this shape; invocations past the end exit early.
    pub fn grid(&self, invocations: u64, max_workgroups_per_dim: u32) -> [u32; 2] {
        let g = invocations.div_ceil(self.workgroup_size.max(1) as u64);
        if g == 0 || max_workgroups_per_dim == 0 {
            return [0, 0];
        }
        let x = g.min(max_workgroups_per_dim as u64);
        [x as u32, g.div_ceil(x) as u32]
    }
}

impl KernelPlan {
    /// Samples per chunk of the shared-weight gradient kernels, if any.
    pub fn chunk_size(&self) -> Option<u32> {
        self.kernels.iter().find_map(|k| match k.work {
            Work::Rows {
                sample_mode: SampleMode::Chunk { samples_per_chunk },
                ..
            } => Some(samples_per_chunk),
            _ => None,
        })
    }

    /// Number of chunks (rows of `WPartial`) for a batch: `ceil(batch / samples_per_chunk)`.
    pub fn num_chunks(&self, batch: u64) -> u64 {
        self.chunk_size().map_or(0, |c| batch.div_ceil(c as u64))
    }

    /// Largest batch the plan can run (`WPartial` must fit one binding for the reduction);
    /// `None` when unlimited.
    pub fn max_batch(&self) -> Option<u64> {
        let spc = self.chunk_size()? as u64;
        let es = match self.dtype {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        };
        let wn = self.dims.weight_numel.max(1) as u64;
        let chunks = (self.caps.max_storage_binding_bytes / (wn * es)).min(u32::MAX as u64 / wn);
        Some(chunks * spc)
    }

    /// `(first sample, samples)` of each dispatch of a batch.
    pub fn dispatches(&self, batch: u64) -> impl Iterator<Item = (u64, u64)> {
        let step = self.max_samples_per_dispatch.max(1) as u64;
        (0..batch.div_ceil(step)).map(move |d| (d * step, step.min(batch - d * step)))
    }

    /// Stable hash of the plan's serde_json form (FNV-1a 64, hex): the kernel-cache key.
    pub fn hash_hex(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// Term evaluations per sample over all row kernels (each term: one product of
    /// coefficient and operand components).
    pub fn terms_per_sample(&self) -> u64 {
        self.per_sample_sum(|c, _| c.terms.len() as u64)
            + self.channel_sum(|p| p.terms.len() as u64)
            + self.staged_sum(|_, p| p.tasks() as u64 * p.terms.len() as u64)
    }

    /// Floating-point operations the plan executes for a batch, counting as writers evaluate
    /// it: a term is `coeff * a * b (* w)` plus an add; with a scalar factor the weight is
    /// multiplied once per loop iteration (2 flops) and terms skip it. Reductions add
    /// `num_chunks * weight_numel`.
    pub fn flops(&self, batch: u64) -> u64 {
        let per = self.per_sample_sum(|c, _| {
            let ops = c.operands.len() as u64;
            match c.scalar_factor {
                Some(_) => c.terms.len() as u64 * ops + 2,
                None => c.terms.len() as u64 * (ops + 1),
            }
        });
        // Channel kernels: per term `t = coeff·gz`, `gw += t·x·y`, `gx += t·y`, `gy += t·x`
        // (8 flops); per (path, v) the weight scales the gx and gy partials; the `gy` sum adds
        // one per channel.
        let chan = self.channel_sum(|p| 8 * p.terms.len() as u64 + 2 * (p.x_len + p.y_len) as u64)
            + self
                .kernels
                .iter()
                .filter_map(|k| match &k.work {
                    Work::Channels(c) => Some(c.channels as u64 * c.y_len as u64),
                    _ => None,
                })
                .sum::<u64>();
        // Staged kernels: per task `A = Σ coeff·x·y` (3 per term); forward: 2 per weight and
        // output component; backward: per weight and output component `gw += A·gz`,
        // `T += w·gz` (4), per task the gx and gy partials from `T` (6 per term).
        let staged = self.staged_sum(|pass, p| {
            let per_task = match pass {
                StagedPass::Forward => 3 * p.terms.len() as u64,
                StagedPass::Backward => 9 * p.terms.len() as u64,
                StagedPass::DoubleBackward => 20 * p.terms.len() as u64,
            };
            let per_weight = match pass {
                StagedPass::Forward => 2,
                StagedPass::Backward => 4,
                StagedPass::DoubleBackward => 10,
            } * p.z_len as u64;
            p.tasks() as u64 * per_task + p.weights() as u64 * per_weight
        });
        let chan = chan + staged;
        let red: u64 = self
            .kernels
            .iter()
            .filter_map(|k| match k.work {
                Work::ReduceChunks { len, .. } => Some(len as u64 * self.num_chunks(batch)),
                _ => None,
            })
            .sum();
        (per + chan) * batch + red
    }

    /// Σ over staged kernels and their paths of `f(pass, path)`.
    fn staged_sum(&self, f: impl Fn(StagedPass, &StagedPath) -> u64) -> u64 {
        let mut total = 0;
        for k in &self.kernels {
            if let Work::Staged(w) = &k.work {
                total += w.paths.iter().map(|p| f(w.pass, p)).sum::<u64>();
            }
        }
        total
    }

    /// Σ over channel kernels, paths, their channels and `v` of `f(path)`.
    fn channel_sum(&self, f: impl Fn(&ChannelPath) -> u64) -> u64 {
        let mut total = 0;
        for k in &self.kernels {
            if let Work::Channels(c) = &k.work {
                for p in &c.paths {
                    total += c.path_mul(p) as u64 * p.y_mul as u64 * f(p);
                }
            }
        }
        total
    }

    /// Σ over row kernels, segments, rows `r` and loop iterations of `f(contribution, r)`.
    fn per_sample_sum(&self, f: impl Fn(&Contribution, u32) -> u64) -> u64 {
        let mut total = 0;
        for k in &self.kernels {
            if let Work::Rows { segments, .. } = &k.work {
                for s in segments {
                    for c in &s.contributions {
                        for r in 0..s.rows {
                            let n = c.count.try_eval(r, 0, &self.tables).unwrap_or(0) as u64;
                            total += n * f(c, r);
                        }
                    }
                }
            }
        }
        total
    }
}
