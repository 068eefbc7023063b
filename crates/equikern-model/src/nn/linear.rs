//! e3nn `o3.Linear` (no biases): a weighted map between equal irreps.
//!
//! Instructions: every `(i_in, i_out)` with `irreps_in[i_in].ir == irreps_out[i_out].ir`,
//! loop order `i_in` outer, `i_out` inner; weight of each `[mul_in, mul_out]` row-major,
//! concatenated in instruction order. Path normalisation `element`:
//! `out[i_out][w, m] = Σ_{ins → i_out} Σ_u W[u, w] x[i_in][u, m] / √fan_in(i_out)`, with
//! `fan_in(i_out) = Σ mul_in` over the instructions into `i_out`. Output blocks that no
//! instruction reaches are zero.

use crate::error::{ModelError, Result};
use crate::scalar::{cast_vec, Scalar};
use equikern_core::Irreps;

/// One path of a [`Linear`] (`irreps_in` block → `irreps_out` block of the same irrep):
/// `out[out_off + w·dim + m] += coef · Σ_u W[w_off + u·mul_out + w] · x[in_off + u·dim + m]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearPath<T> {
    pub in_off: usize,
    pub out_off: usize,
    pub mul_in: usize,
    pub mul_out: usize,
    pub dim: usize,
    pub w_off: usize,
    pub coef: T,
}

#[derive(Clone, Debug)]
struct Ins<T> {
    in_off: usize,
    out_off: usize,
    mul_in: usize,
    mul_out: usize,
    dim: usize,
    w_off: usize,
    coef: T,
}

/// e3nn `Linear(irreps_in, irreps_out)` with its flat weight, computing in `T` (f64 or f32).
#[derive(Clone, Debug)]
pub struct Linear<T = f64> {
    pub irreps_in: Irreps,
    pub irreps_out: Irreps,
    pub weight: Vec<T>,
    ins: Vec<Ins<T>>,
    pub dim_in: usize,
    pub dim_out: usize,
}

impl Linear<f64> {
    /// Number of weights e3nn allocates for these irreps.
    pub fn weight_numel(irreps_in: &Irreps, irreps_out: &Irreps) -> usize {
        let mut n = 0;
        for a in irreps_in.iter() {
            for b in irreps_out.iter() {
                if a.ir == b.ir {
                    n += a.mul * b.mul;
                }
            }
        }
        n
    }
}

impl<T: Scalar> Linear<T> {
    /// `name` is used in errors (the state-dict key).
    pub fn new(irreps_in: Irreps, irreps_out: Irreps, weight: Vec<T>, name: &str) -> Result<Self> {
        let si = irreps_in.slices();
        let so = irreps_out.slices();
        let mut ins = Vec::new();
        let mut w_off = 0;
        for (i, a) in irreps_in.iter().enumerate() {
            for (o, b) in irreps_out.iter().enumerate() {
                if a.ir == b.ir {
                    ins.push(Ins {
                        in_off: si[i].start,
                        out_off: so[o].start,
                        mul_in: a.mul,
                        mul_out: b.mul,
                        dim: a.ir.dim(),
                        w_off,
                        coef: T::ZERO,
                    });
                    w_off += a.mul * b.mul;
                }
            }
        }
        if weight.len() != w_off {
            return Err(ModelError::key(
                name,
                format!(
                    "Linear({irreps_in} -> {irreps_out}) needs {w_off} weights, found {}",
                    weight.len()
                ),
            ));
        }
        let fan: Vec<usize> = ins
            .iter()
            .map(|x| {
                ins.iter()
                    .filter(|y| y.out_off == x.out_off)
                    .map(|y| y.mul_in)
                    .sum()
            })
            .collect();
        for (x, f) in ins.iter_mut().zip(fan) {
            x.coef = T::from_f64(if f > 0 { 1.0 / (f as f64).sqrt() } else { 0.0 });
        }
        Ok(Linear {
            dim_in: irreps_in.dim(),
            dim_out: irreps_out.dim(),
            irreps_in,
            irreps_out,
            weight,
            ins,
        })
    }

    /// The paths in instruction order (what the host loops run; device kernels are built
    /// from these).
    pub fn paths(&self) -> Vec<LinearPath<T>> {
        self.ins
            .iter()
            .map(|p| LinearPath {
                in_off: p.in_off,
                out_off: p.out_off,
                mul_in: p.mul_in,
                mul_out: p.mul_out,
                dim: p.dim,
                w_off: p.w_off,
                coef: p.coef,
            })
            .collect()
    }

    /// The same layer computing in `U` (weights and coefficients cast once).
    pub fn cast<U: Scalar>(&self) -> Linear<U> {
        Linear {
            irreps_in: self.irreps_in.clone(),
            irreps_out: self.irreps_out.clone(),
            weight: cast_vec(&self.weight),
            ins: self
                .ins
                .iter()
                .map(|p| Ins {
                    in_off: p.in_off,
                    out_off: p.out_off,
                    mul_in: p.mul_in,
                    mul_out: p.mul_out,
                    dim: p.dim,
                    w_off: p.w_off,
                    coef: U::from_f64(p.coef.to_f64()),
                })
                .collect(),
            dim_in: self.dim_in,
            dim_out: self.dim_out,
        }
    }

    /// `y [n, dim_out]` from `x [n, dim_in]`.
    pub fn forward(&self, x: &[T]) -> Vec<T> {
        use rayon::prelude::*;
        let (di, dout) = (self.dim_in, self.dim_out);
        let n = x.len() / di.max(1);
        let mut y = vec![T::ZERO; n * dout];
        if di == 0 || dout == 0 {
            return y;
        }
        // Per sample and instruction: T[m, w] = Σ_u x[u, m] W[u, w] (contiguous axpy over w),
        // then y[w, m] += coef · T[m, w]. Rows in parallel, each in a fixed order.
        let tmax = self
            .ins
            .iter()
            .map(|p| p.dim * p.mul_out)
            .max()
            .unwrap_or(0);
        y.par_chunks_mut(ROWS * dout)
            .zip(x.par_chunks(ROWS * di))
            .for_each(|(yc, xc)| {
                let mut t = vec![T::ZERO; tmax];
                for (ys, xs) in yc.chunks_exact_mut(dout).zip(xc.chunks_exact(di)) {
                    for p in &self.ins {
                        let (d, mo) = (p.dim, p.mul_out);
                        let t = &mut t[..d * mo];
                        t.fill(T::ZERO);
                        for u in 0..p.mul_in {
                            let wrow = &self.weight[p.w_off + u * mo..][..mo];
                            for m in 0..d {
                                let c = xs[p.in_off + u * d + m];
                                if c == T::ZERO {
                                    continue;
                                }
                                for (a, &wv) in t[m * mo..][..mo].iter_mut().zip(wrow) {
                                    *a += c * wv;
                                }
                            }
                        }
                        let yb = &mut ys[p.out_off..][..d * mo];
                        for m in 0..d {
                            for w in 0..mo {
                                yb[w * d + m] += p.coef * t[m * mo + w];
                            }
                        }
                    }
                }
            });
        y
    }

    /// `gx [n, dim_in]` from `gy [n, dim_out]` (the map is linear in x).
    pub fn backward(&self, gy: &[T]) -> Vec<T> {
        use rayon::prelude::*;
        let (di, dout) = (self.dim_in, self.dim_out);
        let n = gy.len() / dout.max(1);
        let mut gx = vec![T::ZERO; n * di];
        if di == 0 || dout == 0 {
            return gx;
        }
        // Wᵀ per instruction ([mul_out, mul_in]), so that T[m, u] = Σ_w gy[w, m] Wᵀ[w, u] is a
        // contiguous axpy over u; then gx[u, m] += coef · T[m, u].
        let mut wt = vec![T::ZERO; self.weight.len()];
        for p in &self.ins {
            for u in 0..p.mul_in {
                for w in 0..p.mul_out {
                    wt[p.w_off + w * p.mul_in + u] = self.weight[p.w_off + u * p.mul_out + w];
                }
            }
        }
        let tmax = self.ins.iter().map(|p| p.dim * p.mul_in).max().unwrap_or(0);
        gx.par_chunks_mut(ROWS * di)
            .zip(gy.par_chunks(ROWS * dout))
            .for_each(|(gc, yc)| {
                let mut t = vec![T::ZERO; tmax];
                for (gxs, gys) in gc.chunks_exact_mut(di).zip(yc.chunks_exact(dout)) {
                    for p in &self.ins {
                        let (d, mi) = (p.dim, p.mul_in);
                        let t = &mut t[..d * mi];
                        t.fill(T::ZERO);
                        for w in 0..p.mul_out {
                            let wrow = &wt[p.w_off + w * mi..][..mi];
                            for m in 0..d {
                                let c = gys[p.out_off + w * d + m];
                                if c == T::ZERO {
                                    continue;
                                }
                                for (a, &wv) in t[m * mi..][..mi].iter_mut().zip(wrow) {
                                    *a += c * wv;
                                }
                            }
                        }
                        let gb = &mut gxs[p.in_off..][..d * mi];
                        for m in 0..d {
                            for u in 0..mi {
                                gb[u * d + m] += p.coef * t[m * mi + u];
                            }
                        }
                    }
                }
            });
        gx
    }
}

/// Samples per parallel task.
const ROWS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rnd(n: usize, seed: u64) -> Vec<f64> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn fan_in_and_layout() {
        // 2x0e + 1x1e -> 3x0e: fan_in 2, weight [2,3]
        let l = Linear::new(
            "2x0e+1x1e".parse().unwrap(),
            "3x0e".parse().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "t",
        )
        .unwrap();
        let y = l.forward(&[1.0, 10.0, 7.0, 7.0, 7.0]);
        let c = 1.0 / 2f64.sqrt();
        for (a, b) in y.iter().zip([c * 41.0, c * 52.0, c * 63.0]) {
            assert!((a - b).abs() < 1e-13);
        }
        // two input blocks into one output: fan_in = 2 + 1
        let l = Linear::new(
            "2x0e+1x0e".parse().unwrap(),
            "1x0e".parse().unwrap(),
            vec![1.0, 1.0, 1.0],
            "t",
        )
        .unwrap();
        let y = l.forward(&[1.0, 2.0, 3.0]);
        assert!((y[0] - 6.0 / 3f64.sqrt()).abs() < 1e-15);
        assert!(Linear::<f64>::new(
            "1x0e".parse().unwrap(),
            "1x0e".parse().unwrap(),
            vec![],
            "bad.key"
        )
        .unwrap_err()
        .to_string()
        .contains("bad.key"));
    }

    #[test]
    fn backward_is_transpose() {
        let (i, o): (Irreps, Irreps) = (
            "3x0e+2x1e+1x2e".parse().unwrap(),
            "2x0e+3x1e+2x2e".parse().unwrap(),
        );
        let w = rnd(Linear::weight_numel(&i, &o), 1);
        let l = Linear::new(i, o, w, "t").unwrap();
        let x = rnd(2 * l.dim_in, 2);
        let gy = rnd(2 * l.dim_out, 3);
        let y = l.forward(&x);
        let gx = l.backward(&gy);
        let lhs: f64 = y.iter().zip(&gy).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&gx).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-13);
    }
}
