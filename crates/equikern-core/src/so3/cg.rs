//! Exact SU(2) Clebsch–Gordan coefficients (integer spins, Condon–Shortley phase).
//!
//! Racah's formula evaluated in big rationals, so a coefficient is returned exactly as
//! `sign · sqrt(square)`; rounding happens only when the caller converts to f64.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, Zero};

/// `n!` for `n = 0..=max` as big integers.
pub(crate) fn factorials(max: usize) -> Vec<BigInt> {
    let mut f = Vec::with_capacity(max + 1);
    f.push(BigInt::one());
    for n in 1..=max {
        let next = &f[n - 1] * BigInt::from(n);
        f.push(next);
    }
    f
}

/// Precomputed data for one coupling `(l1, l2) -> l3` (triangle condition assumed to hold).
pub(crate) struct Coupling<'a> {
    l: [i64; 3],
    fact: &'a [BigInt],
    /// `(2l3+1) (l1+l2-l3)! (l1-l2+l3)! (-l1+l2+l3)! / (l1+l2+l3+1)!`
    triangle: BigRational,
}

impl<'a> Coupling<'a> {
    /// `fact` must hold factorials up to at least `l1 + l2 + l3 + 1`.
    pub(crate) fn new(l1: u32, l2: u32, l3: u32, fact: &'a [BigInt]) -> Self {
        let (a, b, c) = (l1 as usize, l2 as usize, l3 as usize);
        let num = BigInt::from(2 * c + 1) * &fact[a + b - c] * &fact[a + c - b] * &fact[b + c - a];
        let triangle = BigRational::new(num, fact[a + b + c + 1].clone());
        Coupling {
            l: [l1.into(), l2.into(), l3.into()],
            fact,
            triangle,
        }
    }

    /// `<l1 m1; l2 m2 | l3 m1+m2>` as `(sign, value²)`; sign is 0 for a zero coefficient.
    /// Requires `|m1| <= l1`, `|m2| <= l2`, `|m1+m2| <= l3`.
    pub(crate) fn cg(&self, m1: i64, m2: i64) -> (i8, BigRational) {
        let [l1, l2, l3] = self.l;
        let m3 = m1 + m2;
        let f = |n: i64| &self.fact[n as usize];
        // Summation range: every factorial argument below must be >= 0.
        let kmin = 0.max(l2 - l3 - m1).max(l1 - l3 + m2);
        let kmax = (l1 + l2 - l3).min(l1 - m1).min(l2 + m2);
        let mut sum = BigRational::zero();
        for k in kmin..=kmax {
            let den = f(k)
                * f(l1 + l2 - l3 - k)
                * f(l1 - m1 - k)
                * f(l2 + m2 - k)
                * f(l3 - l2 + m1 + k)
                * f(l3 - l1 - m2 + k);
            let term = BigRational::new(BigInt::one(), den);
            if k % 2 == 0 {
                sum += term;
            } else {
                sum -= term;
            }
        }
        if sum.is_zero() {
            return (0, sum);
        }
        let sign = if sum.is_negative() { -1 } else { 1 };
        let m_part = f(l1 + m1) * f(l1 - m1) * f(l2 + m2) * f(l2 - m2) * f(l3 + m3) * f(l3 - m3);
        let square = &self.triangle * BigRational::from_integer(m_part) * &sum * &sum;
        (sign, square)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_traits::ToPrimitive;

    fn cg_f64(l1: u32, m1: i64, l2: u32, m2: i64, l3: u32) -> f64 {
        let fact = factorials(64);
        let (s, sq) = Coupling::new(l1, l2, l3, &fact).cg(m1, m2);
        f64::from(s) * sq.to_f64().unwrap().sqrt()
    }

    #[test]
    fn textbook_values() {
        // <1 1; 1 -1 | 0 0> = 1/sqrt(3), <1 0; 1 0 | 0 0> = -1/sqrt(3), <1 1; 1 0 | 1 1> = 1/sqrt(2)
        let r3 = 1.0 / 3f64.sqrt();
        assert!((cg_f64(1, 1, 1, -1, 0) - r3).abs() < 1e-15);
        assert!((cg_f64(1, 0, 1, 0, 0) + r3).abs() < 1e-15);
        assert!((cg_f64(1, 1, 1, 0, 1) - 0.5f64.sqrt()).abs() < 1e-15);
        assert!((cg_f64(1, 0, 1, 0, 1)).abs() == 0.0);
        // <2 1; 1 -1 | 1 0> = sqrt(3/10)
        assert!((cg_f64(2, 1, 1, -1, 1) - 0.3f64.sqrt()).abs() < 1e-15);
    }
}
