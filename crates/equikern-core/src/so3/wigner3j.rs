//! Real-basis Wigner 3j symbols exactly as e3nn's `o3.wigner_3j` (unit Frobenius norm).
//!
//! Construction (conventions notes §2.2–2.3): exact SU(2) Clebsch–Gordan coefficients, change
//! to e3nn's real basis with the `(-i)^l` phase, real part, divide by `sqrt(2 l3 + 1)` (the
//! exact Frobenius norm). Each complex term is `±i^k sqrt(rational)`, so every entry is a sum of
//! at most four correctly rounded square roots: accurate to a few ulp (≲ 4e-16 absolute)
//! for all `l <= MAX_L`. Results are cached per triple.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::ToPrimitive;

use super::basis::q_row;
use super::cg::{factorials, Coupling};
pub use super::error::So3Error;

/// Largest l supported by [`wigner_3j`] (and by the D matrices and spherical harmonics built on
/// it); larger l is an error. Building one triple at l = 16 takes milliseconds.
pub const MAX_L: u32 = 16;

/// Dense `[2l1+1][2l2+1][2l3+1]` row-major tensor plus its nonzeros (|v| > 1e-14).
#[derive(Clone, Debug)]
pub struct Wigner3j {
    pub l1: u32,
    pub l2: u32,
    pub l3: u32,
    pub dense: Vec<f64>,
    /// `(i, j, k, value)` in row-major order.
    pub nonzeros: Vec<(u32, u32, u32, f64)>,
}

impl Wigner3j {
    /// `C[i][j][k]`.
    pub fn get(&self, i: usize, j: usize, k: usize) -> f64 {
        let (d2, d3) = (2 * self.l2 as usize + 1, 2 * self.l3 as usize + 1);
        self.dense[(i * d2 + j) * d3 + k]
    }
}

type Cache = Mutex<HashMap<(u32, u32, u32), Arc<Wigner3j>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn factorial_table() -> &'static [BigInt] {
    static FACT: OnceLock<Vec<BigInt>> = OnceLock::new();
    FACT.get_or_init(|| factorials(3 * MAX_L as usize + 1))
}

/// e3nn's `wigner_3j(l1, l2, l3)`, cached. Errors on a triangle violation or l > MAX_L.
pub fn wigner_3j(l1: u32, l2: u32, l3: u32) -> Result<Arc<Wigner3j>, So3Error> {
    let err = |why: String| So3Error::Wigner3j { l1, l2, l3, why };
    if l1.max(l2).max(l3) > MAX_L {
        return Err(err(format!("l > MAX_L = {MAX_L} is not supported")));
    }
    if l3 < l1.abs_diff(l2) || l3 > l1 + l2 {
        return Err(err(format!(
            "triangle condition |l1-l2| <= l3 <= l1+l2 violated (|{l1}-{l2}| <= {l3} <= {})",
            l1 + l2
        )));
    }
    let key = (l1, l2, l3);
    if let Some(hit) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(hit.clone());
    }
    // Built outside the lock; a concurrent duplicate build is harmless (same result).
    let built = Arc::new(build(l1, l2, l3));
    let mut map = cache().lock().unwrap_or_else(|e| e.into_inner());
    Ok(map.entry(key).or_insert(built).clone())
}

fn build(l1: u32, l2: u32, l3: u32) -> Wigner3j {
    let (d1, d2, d3) = (
        2 * l1 as usize + 1,
        2 * l2 as usize + 1,
        2 * l3 as usize + 1,
    );
    let coupling = Coupling::new(l1, l2, l3, factorial_table());
    let (li1, li2, li3) = (i64::from(l1), i64::from(l2), i64::from(l3));
    let mut dense = vec![0.0f64; d1 * d2 * d3];
    // e3nn asserts the imaginary part vanishes; we track it to check the same.
    let mut imag = vec![0.0f64; d1 * d2 * d3];
    for m1 in -li1..=li1 {
        for m2 in -li2..=li2 {
            let m3 = m1 + m2;
            if m3.abs() > li3 {
                continue;
            }
            let cg = coupling.cg(m1, m2);
            if cg.sign == 0 {
                continue;
            }
            let (r1, r2, r3) = (q_row(li1, m1), q_row(li2, m2), q_row(li3, m3));
            // |Q1 Q2 Q3| = 2^(-h/2) with h fixed by which m's are nonzero. CG² carries a factor
            // 2l3+1 that the Frobenius normalisation cancels exactly, so the entry magnitude is
            // sqrt(num / (den 2^h)): one correctly rounded quotient, one sqrt.
            let h = r1[0].2 + r2[0].2 + r3[0].2;
            let mag = BigRational::new_raw(cg.num, cg.den << h)
                .to_f64()
                .expect("finite rational")
                .sqrt();
            let v = f64::from(cg.sign) * mag;
            for &(a, k1, _) in &r1 {
                for &(b, k2, _) in &r2 {
                    for &(c, k3, _) in &r3 {
                        // conj(Q3) flips the sign of k3.
                        let k = (k1 + k2 - k3).rem_euclid(4);
                        let idx = (a * d2 + b) * d3 + c;
                        match k {
                            0 => dense[idx] += v,
                            1 => imag[idx] += v,
                            2 => dense[idx] -= v,
                            _ => imag[idx] -= v,
                        }
                    }
                }
            }
        }
    }
    debug_assert!(
        imag.iter().all(|x| x.abs() < 1e-12),
        "wigner_3j({l1},{l2},{l3}): imaginary part does not vanish"
    );
    let mut nonzeros = Vec::new();
    for (idx, &v) in dense.iter().enumerate() {
        if v.abs() > 1e-14 {
            let (i, rest) = (idx / (d2 * d3), idx % (d2 * d3));
            nonzeros.push((i as u32, (rest / d3) as u32, (rest % d3) as u32, v));
        }
    }
    Wigner3j {
        l1,
        l2,
        l3,
        dense,
        nonzeros,
    }
}
