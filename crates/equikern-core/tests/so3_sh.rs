//! Spherical harmonics against e3nn 0.6.0 golden values, closed forms and their properties.
#![allow(clippy::needless_range_loop)] // index notation mirrors the formulas

mod so3_common;

use equikern_core::irreps::Parity;
use equikern_core::so3::{
    d_from_matrix, spherical_harmonics, spherical_harmonics_with_grad, uniform_rotation,
    ShNormalization, So3Error, MAX_L,
};
use so3_common::{f64s, golden, max_abs_diff, Uniform};
use std::f64::consts::PI;

use ShNormalization::{Component, Integral, Norm};

fn all_ls(lmax: u32) -> Vec<u32> {
    (0..=lmax).collect()
}

fn random_vectors(seed: u64, count: usize) -> Vec<[f64; 3]> {
    let mut u = Uniform(seed);
    (0..count)
        .map(|_| {
            [
                u.next() * 4.0 - 2.0,
                u.next() * 4.0 - 2.0,
                u.next() * 4.0 - 2.0,
            ]
        })
        .collect()
}

#[test]
fn golden_values() {
    let g = golden();
    let sh = &g["spherical_harmonics"];
    let ls: Vec<u32> = sh["ls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let points: Vec<Vec<f64>> = sh["points"].as_array().unwrap().iter().map(f64s).collect();
    let mut worst = [0.0f64; 2];
    for (name, norm) in [
        ("component", Component),
        ("norm", Norm),
        ("integral", Integral),
    ] {
        for normalize in [true, false] {
            let key = format!(
                "{name},normalize={}",
                if normalize { "True" } else { "False" }
            );
            let want = sh[&key].as_array().unwrap_or_else(|| panic!("{key}"));
            assert_eq!(want.len(), points.len());
            for (p, w) in points.iter().zip(want) {
                let y = spherical_harmonics(&ls, [p[0], p[1], p[2]], normalize, norm).unwrap();
                let w = f64s(w);
                // Unnormalised values grow like |v|^l; compare relative to the magnitude.
                let err = y
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                    .fold(0.0, f64::max);
                assert!(err < 1e-14, "{key} at {p:?}: {err:e}");
                assert!(y.iter().all(|x| x.is_finite()));
                worst[usize::from(normalize)] = worst[usize::from(normalize)].max(err);
            }
        }
    }
    eprintln!(
        "spherical_harmonics golden: max error normalize=true {:e}, normalize=false {:e} (abs, relative above 1)",
        worst[1], worst[0]
    );
}

/// Notes §4.3 closed forms (component, homogeneous) for l <= 3.
#[test]
fn closed_forms() {
    let (s3, s5, s7, s15) = (3f64.sqrt(), 5f64.sqrt(), 7f64.sqrt(), 15f64.sqrt());
    let (s42, s70, s105) = (42f64.sqrt(), 70f64.sqrt(), 105f64.sqrt());
    for [x, y, z] in random_vectors(1, 20) {
        let want = vec![
            1.0,
            s3 * x,
            s3 * y,
            s3 * z,
            s15 * x * z,
            s15 * x * y,
            s5 * (y * y - (x * x + z * z) / 2.0),
            s15 * y * z,
            s15 / 2.0 * (z * z - x * x),
            s70 / 4.0 * x * (3.0 * z * z - x * x),
            s105 * x * y * z,
            s42 / 4.0 * x * (4.0 * y * y - x * x - z * z),
            s7 / 2.0 * y * (2.0 * y * y - 3.0 * x * x - 3.0 * z * z),
            s42 / 4.0 * z * (4.0 * y * y - x * x - z * z),
            s105 / 2.0 * y * (z * z - x * x),
            s70 / 4.0 * z * (z * z - 3.0 * x * x),
        ];
        let got = spherical_harmonics(&all_ls(3), [x, y, z], false, Component).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-13, "{got:?}\n{want:?}");
    }
}

/// `Y(Rv) = D(R) Y(v)` for every l <= MAX_L, proper and improper R (parity (-1)^l).
#[test]
fn equivariance_up_to_max_l() {
    let mut u = Uniform(5);
    let mut worst = 0.0f64;
    for v in random_vectors(2, 4) {
        let r0 = uniform_rotation(u.next(), u.next(), u.next());
        for sign in [1.0, -1.0] {
            let r = r0.map(|row| row.map(|x| sign * x));
            let rv = [0, 1, 2].map(|i| (0..3).map(|j| r[i][j] * v[j]).sum::<f64>());
            for normalize in [false, true] {
                let y = spherical_harmonics(&all_ls(MAX_L), v, normalize, Norm).unwrap();
                let yr = spherical_harmonics(&all_ls(MAX_L), rv, normalize, Norm).unwrap();
                for l in 0..=MAX_L {
                    let p = if l % 2 == 0 {
                        Parity::Even
                    } else {
                        Parity::Odd
                    };
                    let d = d_from_matrix(l, p, &r).unwrap();
                    let n = 2 * l as usize + 1;
                    let off = (l * l) as usize;
                    let scale = if normalize {
                        1.0
                    } else {
                        (v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
                            .sqrt()
                            .powi(l as i32)
                    };
                    for i in 0..n {
                        let dy: f64 = (0..n).map(|j| d[i * n + j] * y[off + j]).sum();
                        worst = worst.max((dy - yr[off + i]).abs() / scale.max(1.0));
                    }
                }
            }
        }
    }
    eprintln!("SH equivariance (l <= {MAX_L}, relative to |v|^l): {worst:e}");
    assert!(worst < 1e-13);
}

/// Parity `Y(-v) = (-1)^l Y(v)` and homogeneity `Y(s v) = s^l Y(v)` (normalize = false).
#[test]
fn parity_and_homogeneity() {
    for v in random_vectors(3, 5) {
        let y = spherical_harmonics(&all_ls(MAX_L), v, false, Component).unwrap();
        let ym = spherical_harmonics(&all_ls(MAX_L), v.map(|x| -x), false, Component).unwrap();
        let y2 = spherical_harmonics(&all_ls(MAX_L), v.map(|x| 0.5 * x), false, Component).unwrap();
        for l in 0..=MAX_L {
            let sign = if l % 2 == 0 { 1.0 } else { -1.0 };
            for i in (l * l) as usize..((l + 1) * (l + 1)) as usize {
                assert_eq!(ym[i], sign * y[i]);
                assert!(
                    (y2[i] - 0.5f64.powi(l as i32) * y[i]).abs() <= 1e-12 * y[i].abs().max(1.0)
                );
            }
        }
    }
}

/// Gauss–Legendre nodes and weights on [-1, 1] (Newton on P_n).
fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let mut x = (PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
            let mut dp = 0.0;
            for _ in 0..100 {
                let (mut p0, mut p1) = (1.0, x);
                for k in 2..=n {
                    let p2 = ((2 * k - 1) as f64 * x * p1 - (k - 1) as f64 * p0) / k as f64;
                    p0 = p1;
                    p1 = p2;
                }
                dp = n as f64 * (x * p1 - p0) / (x * x - 1.0);
                let dx = p1 / dp;
                x -= dx;
                if dx.abs() < 1e-16 {
                    break;
                }
            }
            (x, 2.0 / ((1.0 - x * x) * dp * dp))
        })
        .collect()
}

/// Exact quadrature: `∫ Y_a Y_b dΩ = δ_ab` (integral normalisation) for all l <= MAX_L, and
/// the norm identities of `component` / `norm` at every node.
#[test]
fn orthonormality_and_normalisations() {
    let lmax = MAX_L;
    let dim = ((lmax + 1) * (lmax + 1)) as usize;
    let n_theta = lmax as usize + 2;
    let n_phi = 2 * lmax as usize + 3;
    let mut gram = vec![0.0; dim * dim];
    let mut worst_norm = 0.0f64;
    for (ct, wt) in gauss_legendre(n_theta) {
        let st = (1.0 - ct * ct).sqrt();
        for k in 0..n_phi {
            let phi = 2.0 * PI * k as f64 / n_phi as f64;
            // e3nn's polar axis is y.
            let v = [st * phi.sin(), ct, st * phi.cos()];
            let y = spherical_harmonics(&all_ls(lmax), v, true, Integral).unwrap();
            let w = wt * 2.0 * PI / n_phi as f64;
            for a in 0..dim {
                for b in 0..dim {
                    gram[a * dim + b] += w * y[a] * y[b];
                }
            }
            let c = spherical_harmonics(&all_ls(lmax), v, true, Component).unwrap();
            let nn = spherical_harmonics(&all_ls(lmax), v, true, Norm).unwrap();
            for l in 0..=lmax {
                let r = (l * l) as usize..((l + 1) * (l + 1)) as usize;
                let sc: f64 = c[r.clone()].iter().map(|x| x * x).sum();
                let sn: f64 = nn[r].iter().map(|x| x * x).sum();
                worst_norm = worst_norm
                    .max((sc / f64::from(2 * l + 1) - 1.0).abs())
                    .max((sn - 1.0).abs());
            }
        }
    }
    let mut eye = vec![0.0; dim * dim];
    for a in 0..dim {
        eye[a * dim + a] = 1.0;
    }
    let err = max_abs_diff(&gram, &eye);
    eprintln!("SH orthonormality (l <= {lmax}): {err:e}; norm identities: {worst_norm:e}");
    assert!(err < 1e-13);
    assert!(worst_norm < 1e-13);
}

#[test]
fn zero_vector() {
    for norm in [Component, Norm, Integral] {
        for normalize in [true, false] {
            let y = spherical_harmonics(&[0, 1, 2, 5], [0.0; 3], normalize, norm).unwrap();
            let y0 = if norm == Integral {
                1.0 / (4.0 * PI).sqrt()
            } else {
                1.0
            };
            assert_eq!(y[0], y0);
            assert!(y[1..].iter().all(|&x| x == 0.0));
            let (_, g) =
                spherical_harmonics_with_grad(&[0, 1, 3], [0.0; 3], normalize, norm).unwrap();
            assert!(g.iter().flatten().all(|x| x.is_finite()));
        }
    }
    // e3nn test: zero vector, normalize=False, norm, ls [0, 1] -> [1, 0, 0, 0].
    assert_eq!(
        spherical_harmonics(&[0, 1], [0.0; 3], false, Norm).unwrap(),
        vec![1.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn ls_order_and_repeats() {
    let v = [0.3, -0.4, 1.2];
    let all = spherical_harmonics(&all_ls(3), v, true, Component).unwrap();
    let y = spherical_harmonics(&[2, 0, 2, 1], v, true, Component).unwrap();
    let want: Vec<f64> = [&all[4..9], &all[0..1], &all[4..9], &all[1..4]].concat();
    assert_eq!(y, want);
    assert!(spherical_harmonics(&[], v, true, Component)
        .unwrap()
        .is_empty());
}

/// Jacobian against central finite differences, l <= 10, both normalize modes.
#[test]
fn gradient_matches_finite_differences() {
    let ls = all_ls(10);
    let mut worst = 0.0f64;
    for v in random_vectors(4, 10) {
        for normalize in [true, false] {
            for norm in [Component, Integral] {
                let (y, g) = spherical_harmonics_with_grad(&ls, v, normalize, norm).unwrap();
                assert_eq!(y, spherical_harmonics(&ls, v, normalize, norm).unwrap());
                assert_eq!(g.len(), y.len());
                let h = 1e-6;
                for d in 0..3 {
                    let (mut vp, mut vm) = (v, v);
                    vp[d] += h;
                    vm[d] -= h;
                    let yp = spherical_harmonics(&ls, vp, normalize, norm).unwrap();
                    let ym = spherical_harmonics(&ls, vm, normalize, norm).unwrap();
                    for i in 0..y.len() {
                        let fd = (yp[i] - ym[i]) / (2.0 * h);
                        let scale = 1.0 + g[i][d].abs() + y[i].abs();
                        worst = worst.max((fd - g[i][d]).abs() / scale);
                    }
                }
            }
        }
    }
    eprintln!("SH gradient vs finite differences (relative): {worst:e}");
    assert!(worst < 1e-6);
}

/// With normalize = true, the gradient is tangent: `Σ_d ∂Y/∂v_d v_d = 0`.
#[test]
fn normalized_gradient_is_tangent() {
    for v in random_vectors(6, 10) {
        let (_, g) = spherical_harmonics_with_grad(&all_ls(MAX_L), v, true, Norm).unwrap();
        for row in g {
            let radial: f64 = (0..3).map(|d| row[d] * v[d]).sum();
            assert!(radial.abs() < 1e-10 * (1.0 + row.iter().map(|x| x.abs()).sum::<f64>()));
        }
    }
}

#[test]
fn l_above_max_is_an_error() {
    let e = spherical_harmonics(&[1, MAX_L + 1], [1.0, 0.0, 0.0], true, Norm).unwrap_err();
    assert!(matches!(e, So3Error::LTooLarge { .. }));
    assert!(spherical_harmonics_with_grad(&[MAX_L + 3], [1.0, 0.0, 0.0], true, Norm).is_err());
}

/// Independent sign check of wigner_3j: for l1+l2+l3 even it is +(Gaunt tensor
/// `∫ Y^l1_a Y^l2_b Y^l3_c dΩ`) normalised to unit Frobenius norm (notes §2.3), l <= 6.
#[test]
fn wigner_3j_is_the_normalised_gaunt_tensor() {
    use equikern_core::so3::wigner_3j;
    let lmax = 6u32;
    let dim = ((lmax + 1) * (lmax + 1)) as usize;
    // Degree <= 3 lmax polynomials: exact with these node counts.
    let nodes = gauss_legendre(2 * lmax as usize);
    let n_phi = 3 * lmax as usize + 2;
    let mut samples = Vec::new();
    for &(ct, wt) in &nodes {
        let st = (1.0 - ct * ct).sqrt();
        for k in 0..n_phi {
            let phi = 2.0 * PI * k as f64 / n_phi as f64;
            let y = spherical_harmonics(
                &all_ls(lmax),
                [st * phi.sin(), ct, st * phi.cos()],
                true,
                Integral,
            )
            .unwrap();
            samples.push((wt * 2.0 * PI / n_phi as f64, y));
        }
    }
    assert_eq!(samples[0].1.len(), dim);
    let mut worst = 0.0f64;
    for l1 in 0..=lmax {
        for l2 in 0..=lmax {
            for l3 in l1.abs_diff(l2)..=(l1 + l2).min(lmax) {
                if (l1 + l2 + l3) % 2 == 1 {
                    continue;
                }
                let c = wigner_3j(l1, l2, l3).unwrap();
                let (n1, n2, n3) = (
                    2 * l1 as usize + 1,
                    2 * l2 as usize + 1,
                    2 * l3 as usize + 1,
                );
                let (o1, o2, o3) = ((l1 * l1) as usize, (l2 * l2) as usize, (l3 * l3) as usize);
                let mut gaunt = vec![0.0; n1 * n2 * n3];
                for (w, y) in &samples {
                    for a in 0..n1 {
                        for b in 0..n2 {
                            let f = w * y[o1 + a] * y[o2 + b];
                            for cc in 0..n3 {
                                gaunt[(a * n2 + b) * n3 + cc] += f * y[o3 + cc];
                            }
                        }
                    }
                }
                let norm = gaunt.iter().map(|x| x * x).sum::<f64>().sqrt();
                let g: Vec<f64> = gaunt.iter().map(|x| x / norm).collect();
                let err = max_abs_diff(&g, &c.dense);
                assert!(err < 1e-12, "({l1},{l2},{l3}): {err:e}");
                worst = worst.max(err);
            }
        }
    }
    eprintln!("wigner_3j vs normalised Gaunt tensor (l <= {lmax}): {worst:e}");
}
