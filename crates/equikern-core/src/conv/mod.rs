//! Fused graph convolution (message passing): for every edge `e` (sender `j = sender[e]`,
//! receiver `i = receiver[e]`), `z[i] += TP(x[j], y[e], W[e])`.
//!
//! * [`Csr`] — validated indices and the receiver / sender CSR views (stable counting sorts).
//! * [`ConvOracle`] — the readable f64/f32 reference: per-edge TP via [`crate::Oracle`], then a
//!   fixed-order sum (ascending edge id within each node).
//!
//! Shapes: `x [nodes, dim_in1]`, `y [edges, dim2]`, `w [edges, weight_numel]` or
//! `[weight_numel]` (shared), `z [nodes, dim_out]`. Isolated nodes get zeros.

mod csr;
mod oracle;

pub use csr::{Csr, End, GraphIndex};
pub use oracle::ConvOracle;

use crate::OracleError;

/// Why a convolution's inputs were rejected (before any work is done).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvError {
    #[error("{array}[{position}] = {value} is not a node index (nodes = {nodes})")]
    Index {
        array: &'static str,
        position: usize,
        value: i128,
        nodes: usize,
    },
    #[error("receiver has {receiver} edges but sender has {sender}")]
    EdgeCount { receiver: usize, sender: usize },
    #[error("{what} = {n} exceeds the u32 index range")]
    TooLarge { what: &'static str, n: usize },
    #[error("argument {arg}: expected length {expected}, got {actual}")]
    Length {
        arg: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error(transparent)]
    Oracle(#[from] OracleError),
}
