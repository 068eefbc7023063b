//! Inputs, error metrics, Wigner-D actions and structural-zero masks.

use equikern_core::so3::{d_from_matrix, Mat3};
use equikern_core::{Irreps, TensorProduct};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Every input of every pass of one case, f32-representable values in `[-1, 1]`.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub batch: usize,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub w: Vec<f64>,
    pub gz: Vec<f64>,
    pub hx: Vec<f64>,
    pub hy: Vec<f64>,
    pub hw: Vec<f64>,
}

/// `n` uniform values in `[-1, 1]`, rounded to f32.
pub fn random_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| rng.random_range(-1.0f64..1.0) as f32 as f64)
        .collect()
}

impl Inputs {
    pub fn random(tp: &TensorProduct, batch: usize, rng: &mut ChaCha8Rng) -> Inputs {
        let wl = tp.weight_len(batch).unwrap_or(0);
        Inputs {
            batch,
            x: random_vec(rng, batch * tp.dim_in1),
            y: random_vec(rng, batch * tp.dim_in2),
            w: random_vec(rng, wl),
            gz: random_vec(rng, batch * tp.dim_out),
            hx: random_vec(rng, batch * tp.dim_in1),
            hy: random_vec(rng, batch * tp.dim_in2),
            hw: random_vec(rng, wl),
        }
    }

    pub fn db_args(&self) -> [&[f64]; 7] {
        [
            &self.x, &self.y, &self.w, &self.gz, &self.hx, &self.hy, &self.hw,
        ]
    }
}

/// Error of one output against its reference.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Metric {
    pub max_abs: f64,
    pub rel_l2: f64,
}

impl Metric {
    pub fn worst(self, o: Metric) -> Metric {
        Metric {
            max_abs: nan_max(self.max_abs, o.max_abs),
            rel_l2: nan_max(self.rel_l2, o.rel_l2),
        }
    }
}

/// `max` that lets NaN and infinity win.
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::INFINITY
    } else {
        a.max(b)
    }
}

pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Max abs difference and `‖got − want‖₂ / ‖want‖₂` (a zero reference demands an exactly
/// zero result). A length mismatch or a non-finite value is an infinite error.
pub fn compare(got: &[f64], want: &[f64]) -> Metric {
    if got.len() != want.len() || got.iter().any(|x| !x.is_finite()) {
        return Metric {
            max_abs: f64::INFINITY,
            rel_l2: f64::INFINITY,
        };
    }
    let mut max_abs: f64 = 0.0;
    let mut d2 = 0.0;
    for (a, b) in got.iter().zip(want) {
        let d = (a - b).abs();
        max_abs = max_abs.max(d);
        d2 += d * d;
    }
    let n = norm(want);
    let rel_l2 = if d2 == 0.0 {
        0.0
    } else if n == 0.0 {
        f64::INFINITY
    } else {
        d2.sqrt() / n
    };
    Metric { max_abs, rel_l2 }
}

/// The block-diagonal Wigner-D representation of `irreps` for one orthogonal matrix, kept as
/// one small matrix per block (applied sample by sample).
pub struct BlockD {
    dim: usize,
    /// `(offset, mul, n, D (n×n row-major))`.
    blocks: Vec<(usize, usize, usize, Vec<f64>)>,
}

impl BlockD {
    pub fn new(irreps: &Irreps, r: &Mat3) -> Result<BlockD, String> {
        let mut blocks = Vec::new();
        let mut off = 0;
        for m in irreps.iter() {
            let n = m.ir.dim();
            let d = d_from_matrix(m.ir.l, m.ir.p, r).map_err(|e| e.to_string())?;
            blocks.push((off, m.mul, n, d));
            off += m.mul * n;
        }
        Ok(BlockD { dim: off, blocks })
    }

    /// `D · v` for every sample of `v [batch, dim]`.
    pub fn apply(&self, v: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; v.len()];
        if self.dim == 0 {
            return out;
        }
        for (o, i) in out.chunks_mut(self.dim).zip(v.chunks(self.dim)) {
            for (off, mul, n, d) in &self.blocks {
                for u in 0..*mul {
                    let b = off + u * n;
                    for r in 0..*n {
                        o[b + r] = (0..*n).map(|c| d[r * n + c] * i[b + c]).sum();
                    }
                }
            }
        }
        out
    }
}

/// Element ranges of a sample's `x`, `y` and `z` that no instruction reads or writes: their
/// gradients (for x, y) and values (for z) must be exactly zero.
#[derive(Clone, Debug, Default)]
pub struct ZeroMasks {
    pub in1: Vec<std::ops::Range<usize>>,
    pub in2: Vec<std::ops::Range<usize>>,
    pub out: Vec<std::ops::Range<usize>>,
}

impl ZeroMasks {
    pub fn of(tp: &TensorProduct) -> ZeroMasks {
        let unused = |irreps: &Irreps, used: &dyn Fn(usize) -> bool| {
            irreps
                .slices()
                .into_iter()
                .enumerate()
                .filter(|(i, r)| !used(*i) && !r.is_empty())
                .map(|(_, r)| r)
                .collect::<Vec<_>>()
        };
        let ins = |f: &dyn Fn(&equikern_core::Instruction) -> usize, i: usize| {
            tp.spec.instructions.iter().any(|ins| f(ins) == i)
        };
        ZeroMasks {
            in1: unused(&tp.spec.irreps_in1, &|i| ins(&|s| s.i_in1, i)),
            in2: unused(&tp.spec.irreps_in2, &|i| ins(&|s| s.i_in2, i)),
            out: unused(&tp.spec.irreps_out, &|i| ins(&|s| s.i_out, i)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.in1.is_empty() && self.in2.is_empty() && self.out.is_empty()
    }
}

/// Largest |value| of `v [batch, dim]` inside `ranges` of every sample.
pub fn max_abs_in(v: &[f64], dim: usize, ranges: &[std::ops::Range<usize>]) -> f64 {
    if dim == 0 || ranges.is_empty() {
        return 0.0;
    }
    let mut m: f64 = 0.0;
    for s in v.chunks(dim) {
        for r in ranges {
            for x in &s[r.clone()] {
                m = nan_max(m, x.abs());
            }
        }
    }
    m
}
