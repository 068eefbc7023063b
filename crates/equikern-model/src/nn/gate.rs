//! e3nn `Gate` for even scalars (SevenNet: silu for scalars and gates).
//!
//! Input layout (e3nn sorts and simplifies the gate's input irreps; with even scalars
//! first this is `[scalars | gates | gated]`): `n_scalars` scalars, then one gate per gated
//! irrep copy, then the gated blocks. Output: `[c·silu(scalars) | c·silu(gate_k) · gated_k]`
//! (`ElementwiseTensorProduct(0e ⊗ l → l)` with component normalisation is a plain product).

use crate::scalar::Scalar;
use equikern_core::Irreps;

/// The gate computing in `T` (f64 or f32).
#[derive(Clone, Debug)]
pub struct Gate<T = f64> {
    pub n_scalars: usize,
    /// `(mul, 2l+1)` of each gated block, in order.
    pub gated: Vec<(usize, usize)>,
    pub act_cst: T,
    pub dim_in: usize,
    pub dim_out: usize,
}

impl<T: Scalar> Gate<T> {
    /// `scalars`: number of 0e scalars; `gated`: the gated irreps (non-scalars).
    pub fn new(n_scalars: usize, gated: &Irreps, act_cst: T) -> Self {
        let gated: Vec<(usize, usize)> = gated.iter().map(|m| (m.mul, m.ir.dim())).collect();
        let n_gates: usize = gated.iter().map(|g| g.0).sum();
        let gdim: usize = gated.iter().map(|g| g.0 * g.1).sum();
        Gate {
            n_scalars,
            dim_in: n_scalars + n_gates + gdim,
            dim_out: n_scalars + gdim,
            gated,
            act_cst,
        }
    }

    /// The same gate computing in `U`.
    pub fn cast<U: Scalar>(&self) -> Gate<U> {
        Gate {
            n_scalars: self.n_scalars,
            gated: self.gated.clone(),
            act_cst: U::from_f64(self.act_cst.to_f64()),
            dim_in: self.dim_in,
            dim_out: self.dim_out,
        }
    }

    fn n_gates(&self) -> usize {
        self.gated.iter().map(|g| g.0).sum()
    }

    pub fn forward(&self, x: &[T]) -> Vec<T> {
        let n = x.len() / self.dim_in.max(1);
        let (ns, ng) = (self.n_scalars, self.n_gates());
        let c = self.act_cst;
        let mut y = vec![T::ZERO; n * self.dim_out];
        for s in 0..n {
            let xs = &x[s * self.dim_in..][..self.dim_in];
            let ys = &mut y[s * self.dim_out..][..self.dim_out];
            for i in 0..ns {
                ys[i] = c * xs[i].silu();
            }
            let (mut gi, mut off) = (0, 0);
            for &(mul, d) in &self.gated {
                for _ in 0..mul {
                    let g = c * xs[ns + gi].silu();
                    for m in 0..d {
                        ys[ns + off + m] = g * xs[ns + ng + off + m];
                    }
                    gi += 1;
                    off += d;
                }
            }
        }
        y
    }

    /// `gx` from `gy` at input `x`.
    pub fn backward(&self, x: &[T], gy: &[T]) -> Vec<T> {
        let n = x.len() / self.dim_in.max(1);
        let (ns, ng) = (self.n_scalars, self.n_gates());
        let c = self.act_cst;
        let mut gx = vec![T::ZERO; n * self.dim_in];
        for s in 0..n {
            let xs = &x[s * self.dim_in..][..self.dim_in];
            let gys = &gy[s * self.dim_out..][..self.dim_out];
            let gxs = &mut gx[s * self.dim_in..][..self.dim_in];
            for i in 0..ns {
                gxs[i] = c * xs[i].silu_grad() * gys[i];
            }
            let (mut gi, mut off) = (0, 0);
            for &(mul, d) in &self.gated {
                for _ in 0..mul {
                    let g = c * xs[ns + gi].silu();
                    let mut dg = T::ZERO;
                    for m in 0..d {
                        let k = off + m;
                        gxs[ns + ng + k] = g * gys[ns + k];
                        dg += xs[ns + ng + k] * gys[ns + k];
                    }
                    gxs[ns + gi] = c * xs[ns + gi].silu_grad() * dg;
                    gi += 1;
                    off += d;
                }
            }
        }
        gx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_matches_finite_differences() {
        let gate = Gate::new(3, &"2x1e+1x2e".parse().unwrap(), 1.3);
        assert_eq!(gate.dim_in, 3 + 3 + 6 + 5);
        let x: Vec<f64> = (0..2 * gate.dim_in)
            .map(|i| (i as f64 * 0.53).sin())
            .collect();
        let gy: Vec<f64> = (0..2 * gate.dim_out)
            .map(|i| (i as f64 * 0.29).cos())
            .collect();
        let gx = gate.backward(&x, &gy);
        let f = |x: &[f64]| {
            gate.forward(x)
                .iter()
                .zip(&gy)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        };
        for i in 0..x.len() {
            let h = 1e-6;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            assert!(((f(&xp) - f(&xm)) / (2.0 * h) - gx[i]).abs() < 1e-8);
        }
    }
}
