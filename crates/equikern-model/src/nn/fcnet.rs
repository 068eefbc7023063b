//! e3nn `FullyConnectedNet(hs, act)`: no biases, `x ← act(x · W / √h_in)` for every layer but
//! the last (plain `x · W / √h_in`), `act` scaled by its normalize2mom constant. Weights
//! `[h_in, h_out]` row-major per layer (state-dict `layer{k}.weight`).

use crate::error::{ModelError, Result};
use crate::scalar::{cast_vec, Scalar};

/// The network computing in `T` (f64 or f32).
#[derive(Clone, Debug)]
pub struct FullyConnectedNet<T = f64> {
    /// `(h_in, h_out, W[h_in*h_out])`
    pub layers: Vec<(usize, usize, Vec<T>)>,
    /// normalize2mom constant of silu.
    pub act_cst: T,
}

/// Values kept by [`FullyConnectedNet::forward`] for the backward pass.
pub struct FcTape<T = f64> {
    /// Pre-activations of each hidden layer, `[n, h_out]`.
    pre: Vec<Vec<T>>,
}

impl<T: Scalar> FullyConnectedNet<T> {
    pub fn new(layers: Vec<(usize, usize, Vec<T>)>, act_cst: T, name: &str) -> Result<Self> {
        for (k, (a, b, w)) in layers.iter().enumerate() {
            if w.len() != a * b {
                return Err(ModelError::key(
                    format!("{name}.layer{k}.weight"),
                    "size mismatch",
                ));
            }
            if k > 0 && layers[k - 1].1 != *a {
                return Err(ModelError::key(
                    format!("{name}.layer{k}.weight"),
                    "layer widths do not chain",
                ));
            }
        }
        Ok(FullyConnectedNet { layers, act_cst })
    }

    /// The same network computing in `U`.
    pub fn cast<U: Scalar>(&self) -> FullyConnectedNet<U> {
        FullyConnectedNet {
            layers: self
                .layers
                .iter()
                .map(|(a, b, w)| (*a, *b, cast_vec(w)))
                .collect(),
            act_cst: U::from_f64(self.act_cst.to_f64()),
        }
    }

    pub fn dim_in(&self) -> usize {
        self.layers.first().map_or(0, |l| l.0)
    }
    pub fn dim_out(&self) -> usize {
        self.layers.last().map_or(0, |l| l.1)
    }

    /// `y[n, b] = scale · x[n, a] · w[a, b]`, rows in parallel (each row's sum is in a fixed
    /// order, so the result does not depend on the thread count).
    fn matmul(x: &[T], n: usize, a: usize, b: usize, w: &[T], scale: T) -> Vec<T> {
        use rayon::prelude::*;
        let mut y = vec![T::ZERO; n * b];
        if a == 0 || b == 0 {
            return y;
        }
        const ROWS: usize = 16;
        y.par_chunks_mut(ROWS * b)
            .zip(x.par_chunks(ROWS * a))
            .for_each(|(yc, xc)| {
                for (ys, xs) in yc.chunks_exact_mut(b).zip(xc.chunks_exact(a)) {
                    for (k, &xv) in xs.iter().enumerate() {
                        if xv == T::ZERO {
                            continue;
                        }
                        let c = xv * scale;
                        for (o, &wv) in ys.iter_mut().zip(&w[k * b..][..b]) {
                            *o += c * wv;
                        }
                    }
                }
            });
        debug_assert!(n * a == x.len());
        y
    }

    /// `[n, h_last]` from `[n, h_0]`, and the tape for [`FullyConnectedNet::backward`].
    pub fn forward(&self, x: &[T]) -> (Vec<T>, FcTape<T>) {
        let n = x.len() / self.dim_in().max(1);
        let mut h = x.to_vec();
        let mut pre = Vec::new();
        let last = self.layers.len().saturating_sub(1);
        for (k, (a, b, w)) in self.layers.iter().enumerate() {
            let z = Self::matmul(&h, n, *a, *b, w, T::from_f64(1.0 / (*a as f64).sqrt()));
            if k < last {
                h = z.iter().map(|&v| self.act_cst * v.silu()).collect();
                pre.push(z);
            } else {
                h = z;
            }
        }
        (h, FcTape { pre })
    }

    /// `gx [n, h_0]` from `gy [n, h_last]`.
    pub fn backward(&self, tape: &FcTape<T>, gy: &[T]) -> Vec<T> {
        let n = gy.len() / self.dim_out().max(1);
        let mut g = gy.to_vec();
        for k in (0..self.layers.len()).rev() {
            let (a, b, w) = &self.layers[k];
            if k < self.layers.len() - 1 {
                for (gv, &z) in g.iter_mut().zip(&tape.pre[k]) {
                    *gv *= self.act_cst * z.silu_grad();
                }
            }
            // gx = g · Wᵀ / √a, as a row-major product with Wᵀ (contiguous inner loop)
            let mut wt = vec![T::ZERO; a * b];
            for i in 0..*a {
                for j in 0..*b {
                    wt[j * a + i] = w[i * b + j];
                }
            }
            let gx = Self::matmul(&g, n, *b, *a, &wt, T::from_f64(1.0 / (*a as f64).sqrt()));
            g = gx;
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn backward_matches_finite_differences() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut w = |a: usize, b: usize| {
            (
                a,
                b,
                (0..a * b)
                    .map(|_| r.random_range(-1.0..1.0))
                    .collect::<Vec<f64>>(),
            )
        };
        let net = FullyConnectedNet::new(vec![w(4, 6), w(6, 5), w(5, 3)], 1.679, "t").unwrap();
        let x: Vec<f64> = (0..8).map(|i| (i as f64 * 0.37).sin()).collect();
        let gy: Vec<f64> = (0..6).map(|i| (i as f64 * 0.71).cos()).collect();
        let (_, tape) = net.forward(&x);
        let gx = net.backward(&tape, &gy);
        let f = |x: &[f64]| {
            net.forward(x)
                .0
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
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            assert!((fd - gx[i]).abs() < 1e-8, "{i}: {fd} vs {}", gx[i]);
        }
    }
}
