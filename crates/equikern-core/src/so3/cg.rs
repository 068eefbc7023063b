//! Exact SU(2) Clebsch–Gordan coefficients (integer spins, Condon–Shortley phase).
//!
//! Racah's formula in exact integer arithmetic: a coefficient is returned as
//! `sign · sqrt(num / den)`; rounding happens only when the caller converts to f64.

use num_bigint::BigInt;
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

/// `hi! / lo!` for `lo <= hi` (small product of consecutive integers).
fn falling(hi: i64, lo: i64) -> BigInt {
    let mut p = BigInt::one();
    for n in lo + 1..=hi {
        p *= n as u64;
    }
    p
}

/// One coupling `(l1, l2) -> l3` (triangle condition assumed to hold).
pub(crate) struct Coupling<'a> {
    l: [i64; 3],
    fact: &'a [BigInt],
    /// `(l1+l2-l3)! (l1-l2+l3)! (-l1+l2+l3)!` and `(l1+l2+l3+1)!`: the triangle factor
    /// without its `2l3+1`.
    tri_num: BigInt,
    tri_den: &'a BigInt,
}

/// `CG² = (2 l3 + 1) · num / den`, exactly, with the sign of CG.
pub(crate) struct CgSquare {
    pub sign: i8,
    pub num: BigInt,
    pub den: BigInt,
}

impl<'a> Coupling<'a> {
    /// `fact` must hold factorials up to at least `l1 + l2 + l3 + 1`.
    pub(crate) fn new(l1: u32, l2: u32, l3: u32, fact: &'a [BigInt]) -> Self {
        let (a, b, c) = (l1 as usize, l2 as usize, l3 as usize);
        Coupling {
            l: [l1.into(), l2.into(), l3.into()],
            fact,
            tri_num: &fact[a + b - c] * &fact[a + c - b] * &fact[b + c - a],
            tri_den: &fact[a + b + c + 1],
        }
    }

    /// `<l1 m1; l2 m2 | l3 m1+m2>`; `sign` is 0 for a zero coefficient.
    /// Requires `|m1| <= l1`, `|m2| <= l2`, `|m1+m2| <= l3`.
    pub(crate) fn cg(&self, m1: i64, m2: i64) -> CgSquare {
        let [l1, l2, l3] = self.l;
        let m3 = m1 + m2;
        let f = |n: i64| &self.fact[n as usize];
        // Racah sum Σ_k (-1)^k / [k! (a-k)! (b-k)! (c-k)! (d+k)! (e+k)!], all arguments >= 0.
        let (a, b, c, d, e) = (l1 + l2 - l3, l1 - m1, l2 + m2, l3 - l2 + m1, l3 - l1 - m2);
        let kmin = 0.max(-d).max(-e);
        let kmax = a.min(b).min(c);
        // Multiplying by P = kmax! (a-kmin)! (b-kmin)! (c-kmin)! (d+kmax)! (e+kmax)! makes every
        // term an integer; consecutive terms differ by a ratio of small integers.
        let mut term =
            falling(kmax, kmin) * falling(d + kmax, d + kmin) * falling(e + kmax, e + kmin);
        let mut sum = BigInt::zero();
        for k in kmin..=kmax {
            if k % 2 == 0 {
                sum += &term;
            } else {
                sum -= &term;
            }
            if k < kmax {
                term *= ((a - k) * (b - k) * (c - k)) as u64;
                term /= ((k + 1) * (d + k + 1) * (e + k + 1)) as u64;
            }
        }
        if sum.is_zero() {
            return CgSquare {
                sign: 0,
                num: sum,
                den: BigInt::one(),
            };
        }
        let sign = if sum.is_negative() { -1 } else { 1 };
        let p = f(kmax) * f(a - kmin) * f(b - kmin) * f(c - kmin) * f(d + kmax) * f(e + kmax);
        let m_part = f(l1 + m1) * f(l1 - m1) * f(l2 + m2) * f(l2 - m2) * f(l3 + m3) * f(l3 - m3);
        CgSquare {
            sign,
            num: &self.tri_num * m_part * &sum * &sum,
            den: self.tri_den * &p * &p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_rational::BigRational;
    use num_traits::ToPrimitive;

    fn cg_f64(l1: u32, m1: i64, l2: u32, m2: i64, l3: u32) -> f64 {
        let fact = factorials(64);
        let c = Coupling::new(l1, l2, l3, &fact).cg(m1, m2);
        let sq = BigRational::new(c.num * (2 * l3 + 1), c.den);
        f64::from(c.sign) * sq.to_f64().unwrap().sqrt()
    }

    #[test]
    fn textbook_values() {
        // <1 1; 1 -1 | 0 0> = 1/sqrt(3), <1 0; 1 0 | 0 0> = -1/sqrt(3), <1 1; 1 0 | 1 1> = 1/sqrt(2)
        let r3 = 1.0 / 3f64.sqrt();
        assert!((cg_f64(1, 1, 1, -1, 0) - r3).abs() < 1e-15);
        assert!((cg_f64(1, 0, 1, 0, 0) + r3).abs() < 1e-15);
        assert!((cg_f64(1, 1, 1, 0, 1) - 0.5f64.sqrt()).abs() < 1e-15);
        assert_eq!(cg_f64(1, 0, 1, 0, 1), 0.0);
        // <2 1; 1 -1 | 1 0> = sqrt(3/10), <2 0; 1 0 | 1 0> = -sqrt(2/5)
        assert!((cg_f64(2, 1, 1, -1, 1) - 0.3f64.sqrt()).abs() < 1e-15);
        assert!((cg_f64(2, 0, 1, 0, 1) + 0.4f64.sqrt()).abs() < 1e-15);
    }

    /// Orthonormality Σ_{m1} CG(m1, M-m1)² = 1 exactly, in rationals.
    #[test]
    fn exact_orthonormality() {
        let fact = factorials(64);
        let (l1, l2, l3) = (7u32, 5u32, 9u32);
        let cp = Coupling::new(l1, l2, l3, &fact);
        for m3 in -(l3 as i64)..=l3 as i64 {
            let mut total = BigRational::zero();
            for m1 in -(l1 as i64)..=l1 as i64 {
                let m2 = m3 - m1;
                if m2.abs() <= l2 as i64 {
                    let c = cp.cg(m1, m2);
                    total += BigRational::new(c.num * (2 * l3 + 1), c.den);
                }
            }
            assert_eq!(total, BigRational::one());
        }
    }
}
