//! Wigner D matrices in e3nn's real basis (conventions notes §1.1, §2.5).
//!
//! `D(α, β, γ) = D_y(α) · J D_y(β) Jᵀ · D_y(γ)`: rotations about e3nn's polar axis y are
//! block-diagonal 2×2 rotations by `mθ` (exact closed form), and `J = D(P)` for the fixed
//! rotation `P = R_z(-π/2)` (which maps y to x) turns them into rotations about x. `J` is built
//! once per l with the Euler-free 3j recursion on the exact matrix `P` and cached. This is
//! e3nn's `expm(α X1) expm(β X0) expm(γ X1)` without matrix exponentials; measured error
//! ≲ 1e-14 up to l = MAX_L.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::error::So3Error;
use super::rotation::{det, matrix_to_angles, Mat3};
use super::wigner3j::{wigner_3j, MAX_L};
use crate::irreps::{Irrep, Irreps, Parity};

fn check_l(what: &'static str, l: u32) -> Result<(), So3Error> {
    if l > MAX_L {
        return Err(So3Error::LTooLarge {
            what,
            l,
            max: MAX_L,
        });
    }
    Ok(())
}

/// `D^l(R)` for a proper rotation by the recursion
/// `D^l_kn = (2l+1) Σ C_ijk C_abn D^{l-1}_ia R_jb`, `C = wigner_3j(l-1, 1, l)`.
fn d_by_recursion(l: u32, r: &Mat3) -> Vec<f64> {
    if l == 0 {
        return vec![1.0];
    }
    // Start from the exact D¹ = R rather than recomputing it with rounded 3j.
    let mut d: Vec<f64> = r.iter().flatten().copied().collect();
    for lc in 2..=l {
        let c = wigner_3j(lc - 1, 1, lc).expect("lc <= MAX_L");
        let (np, n) = (2 * lc as usize - 1, 2 * lc as usize + 1);
        let scale = n as f64;
        let mut next = vec![0.0; n * n];
        for &(i, j, k, c1) in &c.nonzeros {
            for &(a, b, nn, c2) in &c.nonzeros {
                next[k as usize * n + nn as usize] +=
                    scale * c1 * c2 * d[i as usize * np + a as usize] * r[j as usize][b as usize];
            }
        }
        d = next;
    }
    d
}

/// `J_l = D^l(R_z(-π/2))`, cached.
fn j_matrix(l: u32) -> Arc<Vec<f64>> {
    type Cache = Mutex<HashMap<u32, Arc<Vec<f64>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(j) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&l) {
        return j.clone();
    }
    let p = [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
    let j = Arc::new(d_by_recursion(l, &p));
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(l).or_insert(j).clone()
}

/// `out = D_y(θ) · m` (left) for an n×n row-major `m`; `D_y` mixes rows `l-μ` and `l+μ`.
fn rot_y_left(l: usize, theta: f64, m: &mut [f64]) {
    let n = 2 * l + 1;
    for mu in 1..=l {
        let (s, c) = (mu as f64 * theta).sin_cos();
        let (p, q) = (l - mu, l + mu);
        for col in 0..n {
            let (x, y) = (m[p * n + col], m[q * n + col]);
            m[p * n + col] = c * x + s * y;
            m[q * n + col] = -s * x + c * y;
        }
    }
}

/// `out = m · D_y(θ)` (right).
fn rot_y_right(l: usize, theta: f64, m: &mut [f64]) {
    let n = 2 * l + 1;
    for mu in 1..=l {
        let (s, c) = (mu as f64 * theta).sin_cos();
        let (p, q) = (l - mu, l + mu);
        for row in 0..n {
            let (x, y) = (m[row * n + p], m[row * n + q]);
            m[row * n + p] = c * x - s * y;
            m[row * n + q] = s * x + c * y;
        }
    }
}

/// e3nn's `wigner_D(l, α, β, γ)`: row-major `(2l+1)²`, equal to `angles_to_matrix(α,β,γ)` for
/// l = 1. Errors if l > MAX_L.
pub fn wigner_d(l: u32, alpha: f64, beta: f64, gamma: f64) -> Result<Vec<f64>, So3Error> {
    check_l("wigner_d", l)?;
    let lu = l as usize;
    let n = 2 * lu + 1;
    let j = j_matrix(l);
    // J D_y(β) Jᵀ = D(R_x(β)): scale J's columns, then multiply by Jᵀ.
    let mut jd = j.as_ref().clone();
    rot_y_right(lu, beta, &mut jd);
    let mut out = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..n {
            out[r * n + c] = (0..n).map(|k| jd[r * n + k] * j[c * n + k]).sum();
        }
    }
    rot_y_left(lu, alpha, &mut out);
    rot_y_right(lu, gamma, &mut out);
    Ok(out)
}

/// e3nn's `Irrep.D_from_matrix`: for `d = sign(det R)`, `D = p^k D^l(angles(d·R))` with
/// `k = 1` for improper `R` (det < 0) and `p = ±1` the parity. `R` should be orthogonal.
pub fn d_from_matrix(l: u32, parity: Parity, r: &Mat3) -> Result<Vec<f64>, So3Error> {
    check_l("d_from_matrix", l)?;
    let improper = det(r) < 0.0;
    let (a, b, g) = matrix_to_angles(&proper_part(r, improper));
    let mut d = wigner_d(l, a, b, g)?;
    if improper && parity == Parity::Odd {
        d.iter_mut().for_each(|x| *x = -*x);
    }
    Ok(d)
}

fn proper_part(r: &Mat3, improper: bool) -> Mat3 {
    if improper {
        r.map(|row| row.map(|x| -x))
    } else {
        *r
    }
}

/// e3nn's `Irreps.D_from_matrix`: block-diagonal, `mul` copies of each irrep's D in list order;
/// row-major `dim × dim`.
pub fn irreps_d_from_matrix(irreps: &Irreps, r: &Mat3) -> Result<Vec<f64>, So3Error> {
    if let Some(bad) = irreps.0.iter().find(|m| m.ir.l > MAX_L) {
        check_l("irreps_d_from_matrix", bad.ir.l)?;
    }
    let improper = det(r) < 0.0;
    let (a, b, g) = matrix_to_angles(&proper_part(r, improper));
    let dim = irreps.dim();
    let mut out = vec![0.0; dim * dim];
    let mut blocks: HashMap<Irrep, Vec<f64>> = HashMap::new();
    let mut offset = 0;
    for mul_ir in &irreps.0 {
        let ir = mul_ir.ir;
        let n = 2 * ir.l as usize + 1;
        if mul_ir.mul == 0 {
            continue;
        }
        let d = match blocks.entry(ir) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let mut d = wigner_d(ir.l, a, b, g)?;
                if improper && ir.p == Parity::Odd {
                    d.iter_mut().for_each(|x| *x = -*x);
                }
                e.insert(d)
            }
        };
        for _ in 0..mul_ir.mul {
            for i in 0..n {
                out[(offset + i) * dim + offset..(offset + i) * dim + offset + n]
                    .copy_from_slice(&d[i * n..(i + 1) * n]);
            }
            offset += n;
        }
    }
    Ok(out)
}
