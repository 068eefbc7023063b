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
use crate::{Addressing, KernelPlan, PlanError, SampleMode, Tensor, Work};
use serde::{Deserialize, Serialize};

/// What [`crate::lower_conv`] is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvOptions {
    /// Per-edge invocations with float atomic adds (unsorted edges; needs
    /// `caps.float_atomics`; not bit-reproducible). Default: deterministic CSR reductions.
    pub atomic: bool,
}

/// Marks a plan as a convolution plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvInfo {
    pub atomic: bool,
}

/// What a kernel's invocations (units) run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Units {
    Nodes,
    Edges,
    /// Reductions: `len` invocations, independent of the graph.
    Fixed,
}

impl Tensor {
    /// Node-indexed tensors of a convolution (`[nodes, len]`).
    pub fn is_node(self) -> bool {
        use Tensor::*;
        matches!(self, X | GX | HX | DX | Z | GZ | DGZ)
    }
    /// `u32` index tensors of a convolution.
    pub fn is_index(self) -> bool {
        use Tensor::*;
        matches!(self, RecvCsr | SendCsr | Receiver | Sender)
    }
}

impl KernelPlan {
    /// What kernel `k`'s units are (convolution plans).
    pub fn conv_units(&self, k: usize) -> Units {
        match &self.kernels[k].work {
            Work::Rows {
                sample_mode: SampleMode::Segments { .. },
                ..
            } => Units::Nodes,
            Work::Rows { .. } => Units::Edges,
            Work::ReduceChunks { .. } => Units::Fixed,
        }
    }

    /// Chunks of `WPartial` for a graph of `edges` edges.
    pub fn conv_num_chunks(&self, edges: u64) -> u64 {
        self.num_chunks(edges)
    }

    /// Elements of buffer `t` for a graph (index tensors count `u32`s).
    pub fn conv_buffer_len(&self, t: Tensor, nodes: u64, edges: u64) -> u64 {
        let d = &self.dims;
        match t {
            Tensor::RecvCsr | Tensor::SendCsr => nodes + 1 + 2 * edges,
            Tensor::Receiver | Tensor::Sender => edges,
            Tensor::WPartial => self.conv_num_chunks(edges) * d.weight_numel as u64,
            t if t.is_node() => nodes * d.per_sample_len(t) as u64,
            t => match d.per_sample_len(t) {
                0 => d.weight_numel as u64,
                len => edges * len as u64,
            },
        }
    }

    /// Errors unless every tensor the plan binds fits one storage binding and `u32` element
    /// indices for a graph of `nodes` nodes and `edges` edges.
    pub fn check_graph(&self, nodes: u64, edges: u64) -> Result<(), PlanError> {
        if self.conv.is_none() {
            return Err(PlanError::NotConv);
        }
        let es = elem_size(self.dtype);
        for k in &self.kernels {
            for &t in k.inputs.iter().chain(&k.outputs) {
                let bytes = if t.is_index() { 4 } else { es };
                let max_elements = (self.caps.max_storage_binding_bytes / bytes)
                    .min(u32::MAX as u64 - crate::lower::INDEX_MARGIN);
                let elements = self.conv_buffer_len(t, nodes, edges);
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
