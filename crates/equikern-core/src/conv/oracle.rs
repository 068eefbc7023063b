//! The convolution oracle: gather per-edge operands, run the tensor-product oracle on the
//! edge batch, scatter the per-edge results in a fixed order.
//!
//! The conv is `z = R · TP(S x, y, w)` with `S` the gather by sender and `R` the sum into
//! receivers (`R = G_recvᵀ`). So backward is the TP's backward at `(S x, y, w, G_recv gz)`
//! with `gx = Sᵀ gx_edge`, and double backward is the TP's at the gathered tangents
//! (`S hx`) with `dx = Sᵀ dx_edge`, `dgz = R dgz_edge`; edge-indexed results pass through.

use super::{ConvError, Csr, End};
use crate::{DoubleGrads, Grads, Oracle, Real, TensorProduct};

/// A tensor product prepared for convolutions over any graph.
#[derive(Clone, Debug)]
pub struct ConvOracle<T> {
    tp: Oracle<T>,
    dim_in1: usize,
    dim_in2: usize,
    dim_out: usize,
    weight_numel: usize,
    shared: bool,
}

fn check<T>(arg: &'static str, v: &[T], expected: usize) -> Result<(), ConvError> {
    if v.len() != expected {
        return Err(ConvError::Length {
            arg,
            expected,
            actual: v.len(),
        });
    }
    Ok(())
}

/// Rows `v[idx[e]]` for every edge: `[edges, len]`.
fn gather<T: Real>(v: &[T], idx: &[u32], len: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(idx.len() * len);
    for &n in idx {
        out.extend_from_slice(&v[n as usize * len..][..len]);
    }
    out
}

/// `out[n] = Σ_{e in n's range of view by} per_edge[e]`, ascending edge id (the CSR is stable).
fn scatter<T: Real>(g: &Csr, by: End, per_edge: &[T], len: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; g.nodes * len];
    for (n, row) in out.chunks_mut(len.max(1)).enumerate().take(g.nodes) {
        for &e in g.range(by, n) {
            for (a, &b) in row.iter_mut().zip(&per_edge[e as usize * len..][..len]) {
                *a += b;
            }
        }
    }
    out
}

impl<T: Real> ConvOracle<T> {
    pub fn new(tp: &TensorProduct) -> Result<Self, ConvError> {
        Ok(ConvOracle {
            tp: Oracle::new(tp)?,
            dim_in1: tp.dim_in1,
            dim_in2: tp.dim_in2,
            dim_out: tp.dim_out,
            weight_numel: tp.weight_numel,
            shared: tp.spec.shared_weights,
        })
    }

    fn check_inputs(&self, g: &Csr, x: &[T], y: &[T], w: &[T]) -> Result<(), ConvError> {
        let e = g.edges();
        check("x", x, g.nodes * self.dim_in1)?;
        check("y", y, e * self.dim_in2)?;
        let wl = if self.shared { 1 } else { e } * self.weight_numel;
        check("w", w, wl)
    }

    /// `z [nodes, dim_out]`.
    pub fn forward(&self, g: &Csr, x: &[T], y: &[T], w: &[T]) -> Result<Vec<T>, ConvError> {
        self.check_inputs(g, x, y, w)?;
        let xs = gather(x, &g.sender, self.dim_in1);
        let msg = self.tp.forward(g.edges(), &xs, y, w)?;
        Ok(scatter(g, End::Receiver, &msg, self.dim_out))
    }

    /// Gradients of `<grad_z, z>`: `gx [nodes, dim_in1]`, `gy [edges, dim_in2]`, `gw` as `w`.
    pub fn backward(
        &self,
        g: &Csr,
        x: &[T],
        y: &[T],
        w: &[T],
        grad_z: &[T],
    ) -> Result<Grads<T>, ConvError> {
        self.check_inputs(g, x, y, w)?;
        check("grad_z", grad_z, g.nodes * self.dim_out)?;
        let xs = gather(x, &g.sender, self.dim_in1);
        let gzs = gather(grad_z, &g.receiver, self.dim_out);
        let r = self.tp.backward(g.edges(), &xs, y, w, &gzs)?;
        Ok(Grads {
            gx: scatter(g, End::Sender, &r.gx, self.dim_in1),
            gy: r.gy,
            gw: r.gw,
        })
    }

    /// Gradients of `S = <gx,hx> + <gy,hy> + <gw,hw>` w.r.t. x, y, w and grad_z.
    #[allow(clippy::too_many_arguments)]
    pub fn double_backward(
        &self,
        g: &Csr,
        x: &[T],
        y: &[T],
        w: &[T],
        grad_z: &[T],
        hx: &[T],
        hy: &[T],
        hw: &[T],
    ) -> Result<DoubleGrads<T>, ConvError> {
        self.check_inputs(g, x, y, w)?;
        check("grad_z", grad_z, g.nodes * self.dim_out)?;
        check("hx", hx, g.nodes * self.dim_in1)?;
        check("hy", hy, y.len())?;
        check("hw", hw, w.len())?;
        let xs = gather(x, &g.sender, self.dim_in1);
        let hxs = gather(hx, &g.sender, self.dim_in1);
        let gzs = gather(grad_z, &g.receiver, self.dim_out);
        let r = self
            .tp
            .double_backward(g.edges(), &xs, y, w, &gzs, &hxs, hy, hw)?;
        Ok(DoubleGrads {
            dx: scatter(g, End::Sender, &r.dx, self.dim_in1),
            dy: r.dy,
            dw: r.dw,
            dgz: scatter(g, End::Receiver, &r.dgz, self.dim_out),
        })
    }

    pub fn weight_len(&self, edges: usize) -> usize {
        if self.shared {
            self.weight_numel
        } else {
            edges * self.weight_numel
        }
    }
}
