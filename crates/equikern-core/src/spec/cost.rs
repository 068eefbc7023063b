//! Cost model: FLOPs and memory traffic, for throughput numbers comparable with
//! OpenEquivariance's.
//!
//! **FLOPs** (per sample, OpenEquivariance's counting). For each instruction with CG nonzero
//! count `nnz` and `s0, s1` = the first two `path_shape` entries (1 when absent):
//! * forward: `3·nnz·s0·s1` (two multiplies and one add per nonzero per `(s0, s1)` pair) plus,
//!   for weighted instructions, `(2·l_out+1)·∏path_shape` (applying the weights);
//! * backward: `9·nnz·s0·s1` (the CG contraction three times: for grad x, grad y, grad w).
//!
//! These are *nominal* counts: they ignore the coefficient multiply, the accumulation of the
//! weighted products and the sparsity of any particular implementation.
//!
//! **Bytes** (per batch): every input, output and gradient is counted as read or written exactly
//! once, `elem_bytes` each (4 for f32, 8 for f64):
//! * forward: read x, y, w; write z;
//! * backward: read x, y, w, grad_z; write gx, gy, gw;
//! * double backward: read x, y, w, grad_z, hx, hy, hw; write dx, dy, dw, dgz.
//!
//! A weight tensor (w, gw, hw, dw) costs `batch·weight_numel` elements with per-sample weights.
//! With shared weights it costs `weight_numel` once if `shared_weights_once`, else
//! `batch·weight_numel` (as if re-read by every sample).

use super::TensorProduct;

/// Per-path and per-sample totals; see the module docs for the counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cost {
    /// CG nonzeros of each path, in instruction order.
    pub cg_nnz: Vec<usize>,
    /// Forward FLOPs per sample.
    pub flops_forward: u64,
    /// Backward FLOPs per sample.
    pub flops_backward: u64,
}

/// Bytes moved for one batch; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traffic {
    pub forward: u64,
    pub backward: u64,
    pub double_backward: u64,
}

/// FLOP counts per sample (OpenEquivariance's convention).
pub fn cost(tp: &TensorProduct) -> Cost {
    let mut forward = 0u64;
    let mut backward = 0u64;
    let mut cg_nnz = Vec::with_capacity(tp.paths.len());
    for p in &tp.paths {
        let nnz = p.cg.len() as u64;
        let s0 = p.path_shape.first().copied().unwrap_or(1) as u64;
        let s1 = p.path_shape.get(1).copied().unwrap_or(1) as u64;
        forward += 3 * nnz * s0 * s1;
        if p.instruction.has_weight {
            let numel: u64 = p.path_shape.iter().map(|&s| s as u64).product();
            forward += (2 * p.lo as u64 + 1) * numel;
        }
        backward += 9 * nnz * s0 * s1;
        cg_nnz.push(p.cg.len());
    }
    Cost {
        cg_nnz,
        flops_forward: forward,
        flops_backward: backward,
    }
}

/// Memory traffic for `batch` samples of `elem_bytes`-byte scalars.
pub fn traffic(
    tp: &TensorProduct,
    batch: usize,
    elem_bytes: usize,
    shared_weights_once: bool,
) -> Traffic {
    let (b, e) = (batch as u64, elem_bytes as u64);
    let (x, y, z) = (
        b * tp.dim_in1 as u64,
        b * tp.dim_in2 as u64,
        b * tp.dim_out as u64,
    );
    let w = if tp.spec.shared_weights && shared_weights_once {
        tp.weight_numel as u64
    } else {
        b * tp.weight_numel as u64
    };
    Traffic {
        forward: e * (x + y + w + z),
        backward: e * (2 * (x + y + w) + z),
        double_backward: e * (3 * (x + y + w) + 2 * z),
    }
}
