//! Scalar activations and e3nn's second-moment normalisation (`normalize2mom`).
//!
//! e3nn wraps every activation of `FullyConnectedNet` and `Gate` as `c · f(x)` with
//! `c = 1/√E[f(z)²]`, `z ~ N(0, 1)` (and `c := 1` when |c − 1| < 1e-4). **e3nn estimates the
//! expectation by Monte Carlo**: 1,000,000 float64 samples of `torch.randn` from a CPU
//! generator seeded with 0, then `f(z).pow(2).mean()`. That estimate differs from the exact
//! expectation at the 1e-4 level, so an exact re-implementation must reproduce the samples:
//! [`normalize2mom_torch`] re-creates torch's CPU normal sampler (mt19937 seeded with 0,
//! 53-bit uniforms from two 32-bit draws, Box–Muller over blocks of 16: `u1 = 1 − U[j]`,
//! `u2 = U[j+8]`, `z[j] = ρ cos θ`, `z[j+8] = ρ sin θ`). [`normalize2mom_quadrature`] gives the
//! exact expectation (trapezoid rule on [−14, 14], step 1/1024: spectrally accurate for this
//! smooth, Gaussian-decaying integrand, error far below 1e-15) for comparison.

/// `silu(x) = x · sigmoid(x)`.
pub fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// `d silu / dx = s + x s (1 − s)`, `s = sigmoid(x)`.
pub fn silu_grad(x: f64) -> f64 {
    let s = 1.0 / (1.0 + (-x).exp());
    s + x * s * (1.0 - s)
}

/// `1/√E[f(z)²]` for `z ~ N(0,1)`, by quadrature (exact to ~1e-15).
pub fn normalize2mom_quadrature(f: impl Fn(f64) -> f64) -> f64 {
    let h = 1.0 / 1024.0;
    let n = (14.0 / h) as i64;
    let norm = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    let mut s = 0.0;
    for k in -n..=n {
        let z = k as f64 * h;
        let v = f(z);
        s += v * v * norm * (-0.5 * z * z).exp();
    }
    1.0 / (s * h).sqrt()
}

/// Mersenne Twister MT19937 (32-bit), standard seeding.
struct Mt19937 {
    mt: [u32; 624],
    idx: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { mt, idx: 624 }
    }
    fn next_u32(&mut self) -> u32 {
        if self.idx >= 624 {
            for i in 0..624 {
                let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.mt[i] = v;
            }
            self.idx = 0;
        }
        let mut y = self.mt[self.idx];
        self.idx += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// The `n` float64 samples of torch's CPU `torch.randn(n, generator=seed 0)` (n a multiple
/// of 16, as e3nn's 1,000,000).
pub fn torch_randn_f64(n: usize, seed: u32) -> Vec<f64> {
    let mut rng = Mt19937::new(seed);
    let mut data: Vec<f64> = (0..n)
        .map(|_| {
            let hi = u64::from(rng.next_u32());
            let lo = u64::from(rng.next_u32());
            let r = (hi << 32) | lo;
            (r & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
        })
        .collect();
    let two_pi = 2.0 * std::f64::consts::PI;
    for block in data.chunks_exact_mut(16) {
        for j in 0..8 {
            let u1 = 1.0 - block[j];
            let u2 = block[j + 8];
            let radius = (-2.0 * u1.ln()).sqrt();
            let theta = two_pi * u2;
            block[j] = radius * theta.cos();
            block[j + 8] = radius * theta.sin();
        }
    }
    data
}

/// e3nn's constant exactly as e3nn computes it (Monte Carlo over torch's seed-0 samples;
/// see the module docs), including the `|c − 1| < 1e-4 → 1` rule.
pub fn normalize2mom_torch(f: impl Fn(f64) -> f64) -> f64 {
    let z = torch_randn_f64(1_000_000, 0);
    let m = z.iter().map(|&x| f(x) * f(x)).sum::<f64>() / z.len() as f64;
    let c = 1.0 / m.sqrt();
    if (c - 1.0).abs() < 1e-4 {
        1.0
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_grad_matches_finite_differences() {
        for &x in &[-3.0, -0.5, 0.0, 0.7, 4.0] {
            let h = 1e-6;
            let fd = (silu(x + h) - silu(x - h)) / (2.0 * h);
            assert!((fd - silu_grad(x)).abs() < 1e-9, "{x}");
        }
    }

    #[test]
    fn normalize2mom_constants() {
        // identity: E[z²] = 1 exactly
        assert!((normalize2mom_quadrature(|z| z) - 1.0).abs() < 1e-13);
        // tanh-free check: E[z⁴] = 3
        assert!((normalize2mom_quadrature(|z| z * z) - 1.0 / 3f64.sqrt()).abs() < 1e-13);
        let q = normalize2mom_quadrature(silu);
        let mc = normalize2mom_torch(silu);
        println!("silu normalize2mom: quadrature {q:.15}, torch-MC {mc:.15}");
        // MC with 1e6 samples: within a few 1e-3 of the exact value
        assert!((q - mc).abs() / q < 3e-3);
        // the samples are standard normal
        let z = torch_randn_f64(1_000_000, 0);
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|x| x * x).sum::<f64>() / z.len() as f64;
        assert!(mean.abs() < 5e-3 && (var - 1.0).abs() < 5e-3);
    }
}
