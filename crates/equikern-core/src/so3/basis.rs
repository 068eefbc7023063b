//! e3nn's change of basis from the real to the complex (|l m⟩) basis (conventions notes §2.2).

/// Nonzero entries of row `m` of `Q_l` (complex = Q · real): `(real index a, k, h)` meaning
/// `Q[m, a] = i^k · 2^(-h/2)`. Includes e3nn's overall `(-i)^l` phase.
pub(crate) fn q_row(l: i64, m: i64) -> Vec<(usize, i64, u32)> {
    let phase = 3 * l; // (-i)^l = i^(3l)
    let (a_pos, a_neg) = ((l + m.abs()) as usize, (l - m.abs()) as usize);
    match m.signum() {
        0 => vec![(l as usize, phase, 0)],
        -1 => vec![(a_pos, phase, 1), (a_neg, phase + 3, 1)],
        _ => vec![(a_pos, phase + 2 * m, 1), (a_neg, phase + 1 + 2 * m, 1)],
    }
}

/// `i^k` as `(re, im)`.
fn i_pow(k: i64) -> (f64, f64) {
    match k.rem_euclid(4) {
        0 => (1.0, 0.0),
        1 => (0.0, 1.0),
        2 => (-1.0, 0.0),
        _ => (0.0, -1.0),
    }
}

/// Dense `Q_l` as `(re, im)` pairs, row-major `[m + l][a]`.
pub(crate) fn q_dense(l: u32) -> Vec<(f64, f64)> {
    let n = 2 * l as usize + 1;
    let li = i64::from(l);
    let mut q = vec![(0.0, 0.0); n * n];
    for m in -li..=li {
        for (a, k, h) in q_row(li, m) {
            let (re, im) = i_pow(k);
            let s = if h == 1 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            q[(m + li) as usize * n + a] = (re * s, im * s);
        }
    }
    q
}
