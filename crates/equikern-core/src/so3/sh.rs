//! Spherical harmonics exactly as e3nn's `o3.spherical_harmonics` (conventions notes §4).
//!
//! e3nn's frame: y is the polar axis; `Y¹ ∝ (x, y, z)`. Built by the recursion
//! `Y^{l+1}_c = k_l Σ_ab C_cab Y^l_a v_b` with `C = wigner_3j(l+1, l, 1)`: the l+1 part of
//! `Y^l ⊗ v` is a harmonic polynomial of degree l+1, and `k_l` fixes component normalisation
//! and e3nn's sign (`Y^l_{m=0}(ŷ) = +√(2l+1)`). Homogeneous of degree l when `normalize` is
//! false. Supports `l <= MAX_L`; measured agreement with e3nn ≲ 1e-15 (l ≤ 4 golden) and
//! equivariance/orthonormality to ≲ 1e-13 up to MAX_L.

use std::sync::OnceLock;

use super::error::So3Error;
use super::wigner3j::{wigner_3j, MAX_L};

/// Output scaling, as e3nn's `normalization` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShNormalization {
    /// `‖Y^l(x̂)‖² = 2l+1` (each component has mean square 1 on the sphere).
    Component,
    /// `‖Y^l(x̂)‖ = 1`.
    Norm,
    /// `∫ (Y^l_m)² dΩ = 1` (e3nn's default).
    Integral,
}

impl ShNormalization {
    fn factor(self, l: u32) -> f64 {
        match self {
            ShNormalization::Component => 1.0,
            ShNormalization::Norm => 1.0 / f64::from(2 * l + 1).sqrt(),
            ShNormalization::Integral => 1.0 / (4.0 * std::f64::consts::PI).sqrt(),
        }
    }
}

/// torch `F.normalize`'s epsilon: the zero vector maps to zero, never NaN.
const NORMALIZE_EPS: f64 = 1e-12;

/// Recursion step l -> l+1: `(c, a, b, k_l · C_cab)` over the nonzeros of `wigner_3j(l+1, l, 1)`.
type Step = Vec<(usize, usize, usize, f64)>;

fn steps() -> &'static [Step] {
    static STEPS: OnceLock<Vec<Step>> = OnceLock::new();
    STEPS.get_or_init(|| {
        (0..MAX_L)
            .map(|l| {
                let c = wigner_3j(l + 1, l, 1).expect("l + 1 <= MAX_L");
                let k = f64::from(2 * l + 3).sqrt()
                    / (f64::from(2 * l + 1).sqrt() * c.get(l as usize + 1, l as usize, 1));
                c.nonzeros
                    .iter()
                    .map(|&(i, j, b, v)| (i as usize, j as usize, b as usize, k * v))
                    .collect()
            })
            .collect()
    })
}

fn check(ls: &[u32]) -> Result<u32, So3Error> {
    let lmax = ls.iter().copied().max().unwrap_or(0);
    if lmax > MAX_L {
        return Err(So3Error::LTooLarge {
            what: "spherical_harmonics",
            l: lmax,
            max: MAX_L,
        });
    }
    Ok(lmax)
}

/// `(u, du/dv)`: `v / max(|v|, eps)` and its Jacobian (torch semantics), or `(v, I)`.
fn prepare(v: [f64; 3], normalize: bool) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut jac = [[0.0; 3]; 3];
    if !normalize {
        for (d, row) in jac.iter_mut().enumerate() {
            row[d] = 1.0;
        }
        return (v, jac);
    }
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let scale = n.max(NORMALIZE_EPS);
    let u = v.map(|x| x / scale);
    for (i, row) in jac.iter_mut().enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            let id = if i == j { 1.0 } else { 0.0 };
            // Below eps the clamp is constant, so only the 1/eps scaling remains.
            *x = if n > NORMALIZE_EPS {
                (id - u[i] * u[j]) / n
            } else {
                id / scale
            };
        }
    }
    (u, jac)
}

/// All degrees 0..=lmax (component normalisation) at `u`, concatenated, and optionally
/// `d/du` as `[dim][3]`.
fn all_degrees(lmax: u32, u: [f64; 3], want_grad: bool) -> (Vec<f64>, Vec<[f64; 3]>) {
    let total = ((lmax + 1) * (lmax + 1)) as usize;
    let mut y = Vec::with_capacity(total);
    let mut g: Vec<[f64; 3]> = Vec::with_capacity(if want_grad { total } else { 0 });
    y.push(1.0);
    if want_grad {
        g.push([0.0; 3]);
    }
    for (l, step) in steps().iter().enumerate().take(lmax as usize) {
        let (prev, cur) = (l * l, (l + 1) * (l + 1));
        let n_next = 2 * l + 3;
        let mut next = vec![0.0; n_next];
        let mut next_g = vec![[0.0; 3]; if want_grad { n_next } else { 0 }];
        for &(c, a, b, w) in step {
            next[c] += w * y[prev + a] * u[b];
            if want_grad {
                let ga = g[prev + a];
                for d in 0..3 {
                    next_g[c][d] += w * ga[d] * u[b];
                }
                next_g[c][b] += w * y[prev + a];
            }
        }
        debug_assert_eq!(y.len(), cur);
        y.extend_from_slice(&next);
        g.extend_from_slice(&next_g);
    }
    (y, g)
}

/// e3nn's `spherical_harmonics(ls, v, normalize, normalization)`: `Y^l(v)` for each l in `ls`
/// (any order, repeats allowed), concatenated, each of length 2l+1 with index `a = m + l`.
/// With `normalize`, `v` is divided by `max(|v|, 1e-12)`, so the zero vector gives `Y⁰` and
/// zeros. Errors if some l > MAX_L.
pub fn spherical_harmonics(
    ls: &[u32],
    v: [f64; 3],
    normalize: bool,
    normalization: ShNormalization,
) -> Result<Vec<f64>, So3Error> {
    let lmax = check(ls)?;
    let (u, _) = prepare(v, normalize);
    let (all, _) = all_degrees(lmax, u, false);
    let mut out = Vec::with_capacity(ls.iter().map(|&l| 2 * l as usize + 1).sum());
    for &l in ls {
        let f = normalization.factor(l);
        out.extend(
            all[(l * l) as usize..((l + 1) * (l + 1)) as usize]
                .iter()
                .map(|x| f * x),
        );
    }
    Ok(out)
}

/// [`spherical_harmonics`] and its Jacobian with respect to `v`: `grad[i][d] = ∂Y_i/∂v_d`
/// (one row of 3 per output component), through the normalisation when `normalize` is set
/// (torch's derivative of `v / max(|v|, 1e-12)`).
pub fn spherical_harmonics_with_grad(
    ls: &[u32],
    v: [f64; 3],
    normalize: bool,
    normalization: ShNormalization,
) -> Result<(Vec<f64>, Vec<[f64; 3]>), So3Error> {
    let lmax = check(ls)?;
    let (u, du_dv) = prepare(v, normalize);
    let (all, all_g) = all_degrees(lmax, u, true);
    let dim = ls.iter().map(|&l| 2 * l as usize + 1).sum();
    let mut out = Vec::with_capacity(dim);
    let mut grad = Vec::with_capacity(dim);
    for &l in ls {
        let f = normalization.factor(l);
        let range = (l * l) as usize..((l + 1) * (l + 1)) as usize;
        out.extend(all[range.clone()].iter().map(|x| f * x));
        for gu in &all_g[range] {
            let mut row = [0.0; 3];
            for (d, x) in row.iter_mut().enumerate() {
                *x = f * (0..3).map(|k| gu[k] * du_dv[k][d]).sum::<f64>();
            }
            grad.push(row);
        }
    }
    Ok((out, grad))
}
