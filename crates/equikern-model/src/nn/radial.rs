//! Radial parts of the edge embedding: trainable Bessel basis and the cutoff envelopes.

/// `b_n(r) = (2/r_c) · sin(c_n r) / r` with trained frequencies `c_n`
/// (initialised to `nπ/r_c`).
#[derive(Clone, Debug)]
pub struct BesselBasis {
    pub cutoff: f64,
    pub coeffs: Vec<f64>,
}

impl BesselBasis {
    /// Values and `d/dr` at `r > 0`.
    pub fn eval(&self, r: f64) -> (Vec<f64>, Vec<f64>) {
        let pre = 2.0 / self.cutoff;
        let mut v = Vec::with_capacity(self.coeffs.len());
        let mut d = Vec::with_capacity(self.coeffs.len());
        for &c in &self.coeffs {
            let (s, co) = (c * r).sin_cos();
            v.push(pre * s / r);
            d.push(pre * (c * co / r - s / (r * r)));
        }
        (v, d)
    }
}

/// Smooth cutoff envelopes `f(r)` (no clamp beyond `r_c`: edges stop at the cutoff).
#[derive(Clone, Debug)]
pub enum Cutoff {
    /// XPLOR switching: 1 below `r_on`, else
    /// `(r_c² − r²)² (r_c² + 2r² − 3r_on²) / (r_c² − r_on²)³`.
    Xplor { r_on: f64, r_cut: f64 },
    /// Polynomial envelope (DimeNet): `1 − (p+1)(p+2)/2 x^p + p(p+2) x^{p+1} − p(p+1)/2 x^{p+2}`,
    /// `x = r / r_c`.
    Polynomial { r_cut: f64, p: f64 },
}

impl Cutoff {
    /// Value and `d/dr`.
    pub fn eval(&self, r: f64) -> (f64, f64) {
        match *self {
            Cutoff::Xplor { r_on, r_cut } => {
                if r < r_on {
                    return (1.0, 0.0);
                }
                let (rc2, r2, ro2) = (r_cut * r_cut, r * r, r_on * r_on);
                let den = (rc2 - ro2).powi(3);
                let a = rc2 - r2;
                let b = rc2 + 2.0 * r2 - 3.0 * ro2;
                let v = a * a * b / den;
                // d/dr: (2a·(−2r)·b + a²·4r) / den
                let d = (-4.0 * r * a * b + 4.0 * r * a * a) / den;
                (v, d)
            }
            Cutoff::Polynomial { r_cut, p } => {
                let x = r / r_cut;
                let c0 = (p + 1.0) * (p + 2.0) / 2.0;
                let c1 = p * (p + 2.0);
                let c2 = p * (p + 1.0) / 2.0;
                let v = 1.0 - c0 * x.powf(p) + c1 * x.powf(p + 1.0) - c2 * x.powf(p + 2.0);
                let d = (-c0 * p * x.powf(p - 1.0) + c1 * (p + 1.0) * x.powf(p)
                    - c2 * (p + 2.0) * x.powf(p + 1.0))
                    / r_cut;
                (v, d)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(f: impl Fn(f64) -> f64, r: f64) -> f64 {
        let h = 1e-6;
        (f(r + h) - f(r - h)) / (2.0 * h)
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn derivatives_and_boundaries() {
        let b = BesselBasis {
            cutoff: 5.0,
            coeffs: (1..=8)
                .map(|n| n as f64 * std::f64::consts::PI / 5.0 * 1.01)
                .collect(),
        };
        for &r in &[0.3, 1.7, 4.2, 4.9] {
            let (_, d) = b.eval(r);
            for n in 0..8 {
                assert!((fd(|r| b.eval(r).0[n], r) - d[n]).abs() < 1e-7);
            }
        }
        let x = Cutoff::Xplor {
            r_on: 4.5,
            r_cut: 5.0,
        };
        let p = Cutoff::Polynomial { r_cut: 5.0, p: 6.0 };
        for c in [&x, &p] {
            for &r in &[0.5, 3.0, 4.6, 4.95] {
                assert!((fd(|r| c.eval(r).0, r) - c.eval(r).1).abs() < 1e-7);
            }
            assert!(c.eval(5.0).0.abs() < 1e-12);
            assert!(c.eval(5.0).1.abs() < 1e-12);
        }
        assert_eq!(x.eval(4.5 - 1e-12).0, 1.0);
        assert!((x.eval(4.5).0 - 1.0).abs() < 1e-12);
    }
}
