//! Fused graph convolution plans: `z[i] = Σ_{e: receiver[e] = i} TP(x[sender[e]], y[e], W[e])`.
//!
//! A convolution plan is a [`KernelPlan`] with `conv: Some(..)`, built by
//! [`crate::lower_conv`] from the same row kernels as the tensor product; `CONV.md` beside
//! this crate describes the kernels. What changes for runtimes and writers:
//!
//! * **Units.** A [`SampleMode::Segments`] kernel runs over nodes; every other row kernel over
//!   edges (a `Chunk` kernel over chunks of edges). [`KernelPlan::conv_units`] says which.
//! * **Whole bindings.** Every tensor is bound whole (gathers reach any node); dispatches of
//!   at most `max_samples_per_dispatch` units pass their first unit as a base offset, and
//!   unit ids are global. [`KernelPlan::check_graph`] checks that a graph fits the bindings
//!   and `u32` element indices before anything runs.
//! * **Addressing.** Per-edge operands (`Y`, `W`, tangents, `GY`…) use the current edge's row;
//!   node operands are [`Addressing::Gather`]ed: `X`/`HX` by `Sender`, `GZ` by `Receiver`.
//!   In a `Segments` kernel over `RecvCsr` the sender of the edge at position `k` is
//!   `csr[nodes + 1 + edges + k]` (and the receiver is the node itself); over `SendCsr` the
//!   receiver is stored there. So `Segments` kernels bind only their CSR view.
//! * **Outputs.** Node outputs of `Segments` kernels: the node's row; of `Scatter` kernels:
//!   atomically added into row `index[edge]` of a zero-filled buffer; edge outputs: the edge's
//!   row; `Chunk` kernels: `WPartial[global chunk]`, reduced in ascending order.

use crate::lower::elem_size;
use crate::{Addressing, Kernel, KernelPlan, PlanError, SampleMode, Tensor, Work};
use equikern_core::conv::{Csr, End};
use serde::{Deserialize, Serialize};

/// What [`crate::lower_conv`] is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvOptions {
    /// Per-edge invocations with float atomic adds (unsorted edges; needs
    /// `caps.float_atomics`; not bit-reproducible). Default: deterministic CSR reductions.
    pub atomic: bool,
    /// Deterministic only: cut each node's edge range into pieces of at most this many edges
    /// (two-level sum: `Pieces` kernels, then `ReducePieces`), so a hub node of a skewed
    /// graph is spread over many invocations. `None`: one invocation per node row.
    pub max_piece_edges: Option<u32>,
}

/// Marks a plan as a convolution plan (and how it was asked for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvInfo {
    pub atomic: bool,
    pub max_piece_edges: Option<u32>,
}

/// The sizes of a graph that a convolution plan's buffers and dispatches depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphSize {
    pub nodes: u64,
    pub edges: u64,
    /// Pieces of the receiver / sender views (0 unless the plan uses pieces).
    pub recv_pieces: u64,
    pub send_pieces: u64,
    /// Edges that share weight rows: edge `e` reads row `e − f` of `W` when `e ≥ f`
    /// (`f = weight_fold`), else row `e` — e.g. a graph listing each pair's two directions
    /// `f` apart, whose per-edge weights depend on the length alone. 0: a row per edge.
    /// Gradients (`GW`) keep a row per edge. Channel-fused kernels only.
    pub weight_fold: u64,
}

/// Weight rows of `edges` edges folded at `fold` (see [`GraphSize::weight_fold`]): the edge
/// count, or `max(fold, edges − fold)`.
pub fn weight_rows(edges: u64, fold: u64) -> u64 {
    if fold == 0 || fold >= edges {
        edges
    } else {
        fold.max(edges - fold)
    }
}

impl GraphSize {
    /// Rows of per-edge weight tensors (`W`, `HW`): see [`Self::weight_fold`].
    pub fn weight_rows(&self) -> u64 {
        weight_rows(self.edges, self.weight_fold)
    }
}

/// What a kernel's invocations (units) run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Units {
    Nodes,
    Edges,
    /// Pieces of the given table.
    Pieces(Tensor),
    /// Reductions of `WPartial`: `len` invocations, independent of the graph.
    Fixed,
}

impl Tensor {
    /// Node-indexed tensors of a convolution (`[nodes, len]`).
    pub fn is_node(self) -> bool {
        use Tensor::*;
        matches!(self, X | GX | HX | DX | Z | GZ | DGZ)
    }
    /// Scratch partial sums (never returned to callers).
    pub fn is_scratch(self) -> bool {
        use Tensor::*;
        matches!(self, WPartial | RecvPartial | SendPartial)
    }
    /// `u32` index tensors of a convolution.
    pub fn is_index(self) -> bool {
        use Tensor::*;
        matches!(
            self,
            RecvCsr | SendCsr | Receiver | Sender | RecvPieces | SendPieces
        )
    }
}

impl KernelPlan {
    /// What kernel `k`'s units are (convolution plans).
    pub fn conv_units(&self, k: usize) -> Units {
        match &self.kernels[k].work {
            Work::Rows {
                sample_mode: SampleMode::Segments { .. },
                ..
            }
            | Work::ReducePieces { .. } => Units::Nodes,
            Work::Rows {
                sample_mode: SampleMode::Pieces { pieces },
                ..
            } => Units::Pieces(*pieces),
            Work::Channels(c) => match c.conv.as_ref().map(|cv| cv.units) {
                Some(SampleMode::Segments { .. }) => Units::Nodes,
                Some(SampleMode::Pieces { pieces }) => Units::Pieces(pieces),
                _ => Units::Edges,
            },
            Work::Rows { .. } | Work::Staged(_) => Units::Edges,
            Work::ReduceChunks { .. } => Units::Fixed,
        }
    }

    /// Units of kernel `k` (what [`KernelPlan::dispatches`] splits) for a graph.
    pub fn conv_unit_count(&self, k: usize, g: &GraphSize) -> u64 {
        match self.conv_units(k) {
            Units::Nodes => g.nodes,
            Units::Edges => g.edges,
            Units::Pieces(Tensor::RecvPieces) => g.recv_pieces,
            Units::Pieces(_) => g.send_pieces,
            Units::Fixed => 0,
        }
    }

    /// The sizes of graph `g` for this plan (piece counts by the plan's piece length).
    pub fn graph_size(&self, g: &Csr) -> GraphSize {
        let m = self.conv.and_then(|c| c.max_piece_edges);
        let pieces = |by| m.map_or(0, |m| g.num_pieces(by, m) as u64);
        GraphSize {
            nodes: g.nodes as u64,
            edges: g.edges() as u64,
            recv_pieces: pieces(End::Receiver),
            send_pieces: pieces(End::Sender),
            weight_fold: 0,
        }
    }

    /// Chunks of `WPartial` for a graph of `edges` edges.
    pub fn conv_num_chunks(&self, edges: u64) -> u64 {
        self.num_chunks(edges)
    }

    /// Elements of buffer `t` for a graph (index tensors count `u32`s).
    pub fn conv_buffer_len(&self, t: Tensor, g: &GraphSize) -> u64 {
        let d = &self.dims;
        let (nodes, edges) = (g.nodes, g.edges);
        let table = |p: u64| nodes + 1 + 2 * p + 1 + 2 * edges;
        match t {
            Tensor::RecvPieces => table(g.recv_pieces),
            Tensor::SendPieces => table(g.send_pieces),
            Tensor::RecvPartial => g.recv_pieces * d.dim_out as u64,
            Tensor::SendPartial => g.send_pieces * d.dim_in1 as u64,
            Tensor::RecvCsr | Tensor::SendCsr => nodes + 1 + 2 * edges,
            Tensor::Receiver | Tensor::Sender => edges,
            Tensor::WPartial => self.conv_num_chunks(edges) * d.weight_numel as u64,
            t if t.is_node() => nodes * d.per_sample_len(t) as u64,
            Tensor::W | Tensor::HW if !d.shared_weights => g.weight_rows() * d.weight_numel as u64,
            t => match d.per_sample_len(t) {
                0 => d.weight_numel as u64,
                len => edges * len as u64,
            },
        }
    }

    /// The first kernel that reads per-edge weights without the weight fold (only the
    /// channel-fused printers index `W` through it; see [`GraphSize::weight_fold`]).
    fn kernel_without_fold(&self) -> Option<&Kernel> {
        let per_edge_w = |k: &Kernel| {
            !self.dims.shared_weights
                && k.inputs.iter().any(|t| matches!(t, Tensor::W | Tensor::HW))
        };
        self.kernels
            .iter()
            .find(|k| per_edge_w(k) && !matches!(k.work, Work::Channels(_)))
    }

    /// Whether this plan runs on graphs whose edges share weight rows
    /// ([`GraphSize::weight_fold`] > 0).
    pub fn folds_weights(&self) -> bool {
        self.kernel_without_fold().is_none()
    }

    /// Errors unless every tensor the plan binds fits one storage binding and `u32` element
    /// indices for graph `g`.
    pub fn check_graph(&self, g: &GraphSize) -> Result<(), PlanError> {
        if self.conv.is_none() {
            return Err(PlanError::NotConv);
        }
        let es = elem_size(self.dtype);
        if g.weight_fold > 0 {
            if let Some(k) = self.kernel_without_fold() {
                return Err(PlanError::Unsupported(format!(
                    "kernel {}: shared weight rows (weight_fold {}) need channel-fused kernels",
                    k.name, g.weight_fold
                )));
            }
        }
        for k in &self.kernels {
            for &t in k.inputs.iter().chain(&k.outputs) {
                let bytes = if t.is_index() { 4 } else { es };
                let max_elements = (self.caps.max_storage_binding_bytes / bytes)
                    .min(u32::MAX as u64 - crate::lower::INDEX_MARGIN);
                let elements = self.conv_buffer_len(t, g);
                if elements > max_elements {
                    return Err(PlanError::GraphTooLarge {
                        tensor: t,
                        elements,
                        max_elements,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The convolution's operand addressing: node tensors gathered through the edge's sender
/// (`X`, `HX`) or receiver (`GZ`); the rest as in the tensor product.
pub(crate) fn conv_addressing(t: Tensor, a: Addressing) -> Addressing {
    match t {
        Tensor::X | Tensor::HX => Addressing::Gather {
            index: Tensor::Sender,
        },
        Tensor::GZ => Addressing::Gather {
            index: Tensor::Receiver,
        },
        _ => a,
    }
}

/// The f64 conv oracle's outputs for `dir`, keyed by the plan's tensors (the reference every
/// conv backend test compares `interpret_conv` and the GPU runtimes against). `inputs` holds
/// X, Y, W, GZ, HX, HY, HW as needed by `dir`.
pub fn reference(
    tp: &equikern_core::TensorProduct,
    g: &Csr,
    dir: crate::Direction,
    inputs: &std::collections::BTreeMap<Tensor, Vec<f64>>,
) -> Result<std::collections::BTreeMap<Tensor, Vec<f64>>, PlanError> {
    use crate::Direction;
    use Tensor::*;
    let err = |e: equikern_core::conv::ConvError| PlanError::Interp {
        kernel: "conv oracle".into(),
        why: e.to_string(),
    };
    let o = equikern_core::conv::ConvOracle::<f64>::new(tp).map_err(err)?;
    let v = |t: Tensor| {
        inputs
            .get(&t)
            .map(|x| &x[..])
            .ok_or(PlanError::MissingInput(t))
    };
    let weighted = tp.weight_numel > 0;
    let mut m = std::collections::BTreeMap::new();
    match dir {
        Direction::Forward => {
            m.insert(Z, o.forward(g, v(X)?, v(Y)?, v(W)?).map_err(err)?);
        }
        Direction::Backward => {
            let r = o.backward(g, v(X)?, v(Y)?, v(W)?, v(GZ)?).map_err(err)?;
            m.insert(GX, r.gx);
            m.insert(GY, r.gy);
            if weighted {
                m.insert(GW, r.gw);
            }
        }
        Direction::DoubleBackward => {
            let r = o
                .double_backward(g, v(X)?, v(Y)?, v(W)?, v(GZ)?, v(HX)?, v(HY)?, v(HW)?)
                .map_err(err)?;
            m.insert(DX, r.dx);
            m.insert(DY, r.dy);
            m.insert(DGZ, r.dgz);
            if weighted {
                m.insert(DW, r.dw);
            }
        }
    }
    Ok(m)
}
