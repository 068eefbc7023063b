//! Infinitesimal generators of SO(3) in e3nn's real basis (conventions notes §2.4).

use super::basis::q_dense;
use super::error::So3Error;
use super::wigner3j::MAX_L;

type C64 = (f64, f64);

fn cmul(a: C64, b: C64) -> C64 {
    (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0)
}

/// `Re(Qᴴ X Q)` for a complex `X` given row-major over m.
fn to_real_basis(l: u32, x: &[C64]) -> Vec<f64> {
    let n = 2 * l as usize + 1;
    let q = q_dense(l);
    let mut out = vec![0.0; n * n];
    for a in 0..n {
        for b in 0..n {
            let mut acc = (0.0, 0.0);
            for m in 0..n {
                let qa = (q[m * n + a].0, -q[m * n + a].1);
                if qa == (0.0, 0.0) {
                    continue;
                }
                for mp in 0..n {
                    let t = cmul(cmul(qa, x[m * n + mp]), q[mp * n + b]);
                    acc = (acc.0 + t.0, acc.1 + t.1);
                }
            }
            out[a * n + b] = acc.0;
        }
    }
    out
}

/// e3nn's `so3_generators(l)`: `[X0, X1, X2]`, each row-major `(2l+1)²`. `expm(θ X0)`,
/// `expm(θ X1)`, `expm(θ X2)` are the rotations about x, y, z; for l = 1, `(X_k)_ij = -ε_kij`.
pub fn so3_generators(l: u32) -> Result<[Vec<f64>; 3], So3Error> {
    if l > MAX_L {
        return Err(So3Error::LTooLarge {
            what: "so3_generators",
            l,
            max: MAX_L,
        });
    }
    let n = 2 * l as usize + 1;
    let lf = f64::from(l);
    let mut raising = vec![0.0; n * n];
    let mut lowering = vec![0.0; n * n];
    for idx in 0..n - 1 {
        let m = idx as f64 - lf;
        // raising: |m> -> |m+1> (sub-diagonal); lowering: |m+1> -> |m> (super-diagonal).
        raising[(idx + 1) * n + idx] = -(lf * (lf + 1.0) - m * (m + 1.0)).sqrt();
        lowering[idx * n + idx + 1] = (lf * (lf + 1.0) - (m + 1.0) * m).sqrt();
    }
    let x0: Vec<C64> = (0..n * n)
        .map(|i| ((raising[i] + lowering[i]) / 2.0, 0.0))
        .collect();
    let mut x1 = vec![(0.0, 0.0); n * n];
    for idx in 0..n {
        x1[idx * n + idx] = (0.0, idx as f64 - lf);
    }
    // -(i/2)(raising - lowering)
    let x2: Vec<C64> = (0..n * n)
        .map(|i| (0.0, -(raising[i] - lowering[i]) / 2.0))
        .collect();
    Ok([
        to_real_basis(l, &x0),
        to_real_basis(l, &x1),
        to_real_basis(l, &x2),
    ])
}
