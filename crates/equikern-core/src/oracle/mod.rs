//! The CPU oracle: readable, obviously-right reference for every backend (f64 and f32).
//!
//! Layout: `x [batch, dim_in1]`, `y [batch, dim_in2]`, `w [batch, weight_numel]` (per-sample)
//! or `[weight_numel]` (shared), `z [batch, dim_out]`, all row-major, flat slices.
//!
//! The batch is cut into fixed chunks of [`CHUNK`] samples (processed in parallel with the
//! `rayon` feature); shared-weight gradients are summed per chunk in sample order and then
//! over chunks in chunk order, so results do not depend on the thread count.

mod path_kernel;
mod real;

pub use real::Real;

use crate::spec::TensorProduct;
use path_kernel::PathKernel;
use std::ops::Range;

/// Samples per work item (fixed, so the summation order is fixed).
pub const CHUNK: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OracleError {
    #[error("argument {arg}: expected length {expected}, got {actual}")]
    Length {
        arg: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("argument {arg}: length for batch {batch} overflows usize")]
    Overflow { arg: &'static str, batch: usize },
    #[error("inconsistent TensorProduct: {0}")]
    InvalidTensorProduct(String),
}

/// Gradients of `<grad_z, z>`: `gx [batch, dim_in1]`, `gy [batch, dim_in2]`, `gw` shaped as `w`
/// (`[weight_numel]` summed over the batch when shared, else `[batch, weight_numel]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Grads<T> {
    pub gx: Vec<T>,
    pub gy: Vec<T>,
    pub gw: Vec<T>,
}

/// Gradients of `S = <gx,hx> + <gy,hy> + <gw,hw>` w.r.t. x, y, w and grad_z (shapes as those).
#[derive(Clone, Debug, PartialEq)]
pub struct DoubleGrads<T> {
    pub dx: Vec<T>,
    pub dy: Vec<T>,
    pub dw: Vec<T>,
    pub dgz: Vec<T>,
}

/// A tensor product lowered once for repeated evaluation.
#[derive(Clone, Debug)]
pub struct Oracle<T> {
    paths: Vec<PathKernel<T>>,
    dim_in1: usize,
    dim_in2: usize,
    dim_out: usize,
    weight_numel: usize,
    shared_weights: bool,
    scratch: usize,
}

/// Borrowed per-sample rows of an input tensor (`shared` = the same row for every sample).
#[derive(Clone, Copy)]
struct Rows<'a, T> {
    data: &'a [T],
    row: usize,
    shared: bool,
}

impl<'a, T> Rows<'a, T> {
    fn at(&self, s: usize) -> &'a [T] {
        if self.shared {
            self.data
        } else {
            &self.data[s * self.row..][..self.row]
        }
    }
}

fn check_len<T>(arg: &'static str, v: &[T], batch: usize, row: usize) -> Result<(), OracleError> {
    let expected = batch
        .checked_mul(row)
        .ok_or(OracleError::Overflow { arg, batch })?;
    if v.len() != expected {
        return Err(OracleError::Length {
            arg,
            expected,
            actual: v.len(),
        });
    }
    Ok(())
}

/// Splits `buf` (rows of `row` elements) into per-chunk pieces of [`CHUNK`] rows.
fn split_rows<T>(mut buf: &mut [T], row: usize, batch: usize) -> Vec<&mut [T]> {
    let mut out = Vec::new();
    let mut s = 0;
    while s < batch {
        let n = CHUNK.min(batch - s);
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(n * row);
        out.push(head);
        buf = tail;
        s += n;
    }
    out
}

/// Runs `f(samples, outputs)` for each chunk of the batch, giving each call its pieces of the
/// output buffers (`(buffer, row length)`), and returns the per-chunk results in chunk order.
fn for_chunks<T, R, F>(batch: usize, outputs: Vec<(&mut [T], usize)>, f: F) -> Vec<R>
where
    T: Real,
    R: Send,
    F: Fn(Range<usize>, &mut [&mut [T]]) -> R + Sync + Send,
{
    let nchunks = batch.div_ceil(CHUNK);
    let mut jobs: Vec<(Range<usize>, Vec<&mut [T]>)> = (0..nchunks)
        .map(|c| (c * CHUNK..((c + 1) * CHUNK).min(batch), Vec::new()))
        .collect();
    for (buf, row) in outputs {
        for (job, piece) in jobs.iter_mut().zip(split_rows(buf, row, batch)) {
            job.1.push(piece);
        }
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        jobs.into_par_iter()
            .map(|(r, mut outs)| f(r, &mut outs))
            .collect()
    }
    #[cfg(not(feature = "rayon"))]
    {
        jobs.into_iter()
            .map(|(r, mut outs)| f(r, &mut outs))
            .collect()
    }
}

/// Adds per-chunk partial sums in chunk order.
fn sum_partials<T: Real>(parts: Vec<Vec<T>>, len: usize) -> Vec<T> {
    let mut total = vec![T::ZERO; len];
    for p in parts {
        for (a, b) in total.iter_mut().zip(p) {
            *a += b;
        }
    }
    total
}

impl<T: Real> Oracle<T> {
    /// Lowers every path once (CG nonzeros with coefficients folded in, index lists per mode).
    pub fn new(tp: &TensorProduct) -> Result<Self, OracleError> {
        let paths = tp
            .paths
            .iter()
            .enumerate()
            .map(|(k, p)| PathKernel::new(tp, k, p))
            .collect::<Result<Vec<_>, _>>()?;
        let scratch = paths.iter().map(|p| p.scratch_len()).max().unwrap_or(0);
        Ok(Oracle {
            paths,
            dim_in1: tp.dim_in1,
            dim_in2: tp.dim_in2,
            dim_out: tp.dim_out,
            weight_numel: tp.weight_numel,
            shared_weights: tp.spec.shared_weights,
            scratch,
        })
    }

    fn check_w(&self, arg: &'static str, w: &[T], batch: usize) -> Result<(), OracleError> {
        let rows = if self.shared_weights { 1 } else { batch };
        check_len(arg, w, rows, self.weight_numel)
    }

    /// `batch · row` for an output buffer, or an overflow error naming it.
    fn out_len(arg: &'static str, batch: usize, row: usize) -> Result<usize, OracleError> {
        batch
            .checked_mul(row)
            .ok_or(OracleError::Overflow { arg, batch })
    }

    fn w_rows<'a>(&self, w: &'a [T]) -> Rows<'a, T> {
        Rows {
            data: w,
            row: self.weight_numel,
            shared: self.shared_weights,
        }
    }

    fn check_xy(&self, batch: usize, x: &[T], y: &[T], w: &[T]) -> Result<(), OracleError> {
        check_len("x", x, batch, self.dim_in1)?;
        check_len("y", y, batch, self.dim_in2)?;
        self.check_w("w", w, batch)
    }

    /// `z = TP(x, y; w)`, shape `[batch, dim_out]`.
    pub fn forward(&self, batch: usize, x: &[T], y: &[T], w: &[T]) -> Result<Vec<T>, OracleError> {
        self.check_xy(batch, x, y, w)?;
        let mut z = vec![T::ZERO; Self::out_len("z", batch, self.dim_out)?];
        self.forward_into(batch, x, y, w, &mut z)?;
        Ok(z)
    }

    /// As [`Oracle::forward`], overwriting a caller-provided `z` of `batch · dim_out` elements
    /// (no allocation of the output: useful for large batches and timing).
    pub fn forward_into(
        &self,
        batch: usize,
        x: &[T],
        y: &[T],
        w: &[T],
        z: &mut [T],
    ) -> Result<(), OracleError> {
        self.check_xy(batch, x, y, w)?;
        check_len("z", z, batch, self.dim_out)?;
        let (xr, yr, wr) = (
            self.rows(x, self.dim_in1),
            self.rows(y, self.dim_in2),
            self.w_rows(w),
        );
        for_chunks(batch, vec![(z, self.dim_out)], |samples, outs| {
            let mut t = vec![T::ZERO; self.scratch];
            for (n, s) in samples.enumerate() {
                let zs = &mut outs[0][n * self.dim_out..][..self.dim_out];
                zs.fill(T::ZERO); // untouched blocks must be exact zeros
                for p in &self.paths {
                    p.forward(xr.at(s), yr.at(s), wr.at(s), zs, &mut t);
                }
            }
        });
        Ok(())
    }

    /// Gradients of `<grad_z, z>` w.r.t. x, y and w.
    pub fn backward(
        &self,
        batch: usize,
        x: &[T],
        y: &[T],
        w: &[T],
        grad_z: &[T],
    ) -> Result<Grads<T>, OracleError> {
        self.check_xy(batch, x, y, w)?;
        check_len("grad_z", grad_z, batch, self.dim_out)?;
        let (xr, yr, wr) = (
            self.rows(x, self.dim_in1),
            self.rows(y, self.dim_in2),
            self.w_rows(w),
        );
        let gzr = self.rows(grad_z, self.dim_out);
        Self::out_len("gx", batch, self.dim_in1)?;
        Self::out_len("gy", batch, self.dim_in2)?;
        let mut gx = vec![T::ZERO; batch * self.dim_in1];
        let mut gy = vec![T::ZERO; batch * self.dim_in2];
        let (wn, shared) = (self.weight_numel, self.shared_weights);
        let mut gw = vec![T::ZERO; if shared { 0 } else { batch * wn }];
        let parts = for_chunks(
            batch,
            vec![
                (gx.as_mut_slice(), self.dim_in1),
                (gy.as_mut_slice(), self.dim_in2),
                (gw.as_mut_slice(), if shared { 0 } else { wn }),
            ],
            |samples, outs| {
                let (mut g, mut t) = (vec![T::ZERO; self.scratch], vec![T::ZERO; self.scratch]);
                let mut partial = vec![T::ZERO; if shared { wn } else { 0 }];
                let [gx_c, gy_c, gw_c] = outs else {
                    unreachable!("three outputs")
                };
                for (n, s) in samples.enumerate() {
                    let gx_s = &mut gx_c[n * self.dim_in1..][..self.dim_in1];
                    let gy_s = &mut gy_c[n * self.dim_in2..][..self.dim_in2];
                    let gw_s: &mut [T] = if shared {
                        &mut partial
                    } else {
                        &mut gw_c[n * wn..][..wn]
                    };
                    for p in &self.paths {
                        p.backward(
                            xr.at(s),
                            yr.at(s),
                            wr.at(s),
                            gzr.at(s),
                            Some(&mut *gx_s),
                            Some(&mut *gy_s),
                            Some(&mut *gw_s),
                            &mut g,
                            &mut t,
                        );
                    }
                }
                partial
            },
        );
        if shared {
            gw = sum_partials(parts, wn);
        }
        Ok(Grads { gx, gy, gw })
    }

    /// Gradients of `S = <gx,hx> + <gy,hy> + <gw,hw>` (with `(gx,gy,gw)` = [`Oracle::backward`])
    /// w.r.t. x, y, w and grad_z. TP is trilinear in (x, y, w), so with `F` = forward and
    /// `Bx, By, Bw` = the backward maps:
    /// `dgz = F(hx,y,w) + F(x,hy,w) + F(x,y,hw)`, `dx = Bx(gz;hy,w) + Bx(gz;y,hw)`,
    /// `dy = By(gz;hx,w) + By(gz;x,hw)`, `dw = Bw(gz;hx,y) + Bw(gz;x,hy)`. Unweighted paths are
    /// bilinear (W ≡ 1 does not vary), so they drop out of the `hw` terms.
    #[allow(clippy::too_many_arguments)]
    pub fn double_backward(
        &self,
        batch: usize,
        x: &[T],
        y: &[T],
        w: &[T],
        grad_z: &[T],
        hx: &[T],
        hy: &[T],
        hw: &[T],
    ) -> Result<DoubleGrads<T>, OracleError> {
        self.check_xy(batch, x, y, w)?;
        check_len("grad_z", grad_z, batch, self.dim_out)?;
        check_len("hx", hx, batch, self.dim_in1)?;
        check_len("hy", hy, batch, self.dim_in2)?;
        self.check_w("hw", hw, batch)?;
        let (d1, d2, dout, wn, shared) = (
            self.dim_in1,
            self.dim_in2,
            self.dim_out,
            self.weight_numel,
            self.shared_weights,
        );
        let (xr, yr, wr) = (self.rows(x, d1), self.rows(y, d2), self.w_rows(w));
        let (hxr, hyr, hwr) = (self.rows(hx, d1), self.rows(hy, d2), self.w_rows(hw));
        let gzr = self.rows(grad_z, dout);
        Self::out_len("dgz", batch, dout)?;
        let mut dx = vec![T::ZERO; batch * d1];
        let mut dy = vec![T::ZERO; batch * d2];
        let mut dgz = vec![T::ZERO; batch * dout];
        let mut dw = vec![T::ZERO; if shared { 0 } else { batch * wn }];
        let parts = for_chunks(
            batch,
            vec![
                (dx.as_mut_slice(), d1),
                (dy.as_mut_slice(), d2),
                (dgz.as_mut_slice(), dout),
                (dw.as_mut_slice(), if shared { 0 } else { wn }),
            ],
            |samples, outs| {
                let (mut g, mut t) = (vec![T::ZERO; self.scratch], vec![T::ZERO; self.scratch]);
                let mut partial = vec![T::ZERO; if shared { wn } else { 0 }];
                let [dx_c, dy_c, dgz_c, dw_c] = outs else {
                    unreachable!("four outputs")
                };
                for (n, s) in samples.enumerate() {
                    let dx_s = &mut dx_c[n * d1..][..d1];
                    let dy_s = &mut dy_c[n * d2..][..d2];
                    let dgz_s = &mut dgz_c[n * dout..][..dout];
                    let dw_s: &mut [T] = if shared {
                        &mut partial
                    } else {
                        &mut dw_c[n * wn..][..wn]
                    };
                    let (x, y, w, gz) = (xr.at(s), yr.at(s), wr.at(s), gzr.at(s));
                    let (hx, hy, hw) = (hxr.at(s), hyr.at(s), hwr.at(s));
                    for p in &self.paths {
                        p.forward(hx, y, w, dgz_s, &mut t);
                        p.forward(x, hy, w, dgz_s, &mut t);
                        if p.weighted() {
                            p.forward(x, y, hw, dgz_s, &mut t);
                        }
                        // Bx(gz;hy,w) and Bw(gz;x,hy)
                        p.backward(
                            x,
                            hy,
                            w,
                            gz,
                            Some(&mut *dx_s),
                            None,
                            Some(&mut *dw_s),
                            &mut g,
                            &mut t,
                        );
                        // By(gz;hx,w) and Bw(gz;hx,y)
                        p.backward(
                            hx,
                            y,
                            w,
                            gz,
                            None,
                            Some(&mut *dy_s),
                            Some(&mut *dw_s),
                            &mut g,
                            &mut t,
                        );
                        // Bx(gz;y,hw) and By(gz;x,hw); unweighted paths do not depend on w
                        if p.weighted() {
                            p.backward(
                                x,
                                y,
                                hw,
                                gz,
                                Some(&mut *dx_s),
                                Some(&mut *dy_s),
                                None,
                                &mut g,
                                &mut t,
                            );
                        }
                    }
                }
                partial
            },
        );
        if shared {
            dw = sum_partials(parts, wn);
        }
        Ok(DoubleGrads { dx, dy, dw, dgz })
    }

    fn rows<'a>(&self, data: &'a [T], row: usize) -> Rows<'a, T> {
        Rows {
            data,
            row,
            shared: false,
        }
    }
}

/// `z = TP(x, y; w)`; see [`Oracle::forward`].
pub fn forward<T: Real>(
    tp: &TensorProduct,
    batch: usize,
    x: &[T],
    y: &[T],
    w: &[T],
) -> Result<Vec<T>, OracleError> {
    Oracle::new(tp)?.forward(batch, x, y, w)
}

/// See [`Oracle::backward`].
pub fn backward<T: Real>(
    tp: &TensorProduct,
    batch: usize,
    x: &[T],
    y: &[T],
    w: &[T],
    grad_z: &[T],
) -> Result<Grads<T>, OracleError> {
    Oracle::new(tp)?.backward(batch, x, y, w, grad_z)
}

/// See [`Oracle::double_backward`].
#[allow(clippy::too_many_arguments)]
pub fn double_backward<T: Real>(
    tp: &TensorProduct,
    batch: usize,
    x: &[T],
    y: &[T],
    w: &[T],
    grad_z: &[T],
    hx: &[T],
    hy: &[T],
    hw: &[T],
) -> Result<DoubleGrads<T>, OracleError> {
    Oracle::new(tp)?.double_backward(batch, x, y, w, grad_z, hx, hy, hw)
}
