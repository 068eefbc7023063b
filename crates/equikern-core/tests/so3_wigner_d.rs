//! Rotations, Wigner D and generators against e3nn 0.6.0 golden values and group properties.
#![allow(clippy::needless_range_loop)] // index notation mirrors the formulas

mod so3_common;

use equikern_core::irreps::{Irrep, Irreps, MulIr, Parity};
use equikern_core::so3::rotation::{det, matmul, transpose};
use equikern_core::so3::{
    angles_to_matrix, angles_to_xyz, d_from_matrix, irreps_d_from_matrix, matrix_to_angles,
    matrix_x, matrix_y, matrix_z, so3_generators, uniform_rotation, wigner_3j, wigner_d,
    xyz_to_angles, Mat3, So3Error, MAX_L,
};
use so3_common::{f64s, golden, max_abs_diff, Uniform};

fn matmul_n(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

fn transpose_n(a: &[f64], n: usize) -> Vec<f64> {
    (0..n * n).map(|idx| a[(idx % n) * n + idx / n]).collect()
}

fn identity(n: usize) -> Vec<f64> {
    (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect()
}

fn flat(r: &Mat3) -> Vec<f64> {
    r.iter().flatten().copied().collect()
}

fn random_rotations(seed: u64, count: usize) -> Vec<Mat3> {
    let mut u = Uniform(seed);
    (0..count)
        .map(|_| uniform_rotation(u.next(), u.next(), u.next()))
        .collect()
}

/// Independent Euler-free D (notes §2.5 recursion), for cross-checking.
fn d_recursive(l: u32, r: &Mat3) -> Vec<f64> {
    let mut d = vec![1.0];
    for lc in 1..=l {
        let c = wigner_3j(lc - 1, 1, lc).unwrap();
        let (np, n) = (2 * lc as usize - 1, 2 * lc as usize + 1);
        let mut next = vec![0.0; n * n];
        for k in 0..n {
            for nn in 0..n {
                let mut acc = 0.0;
                for i in 0..np {
                    for j in 0..3 {
                        for a in 0..np {
                            for b in 0..3 {
                                acc += c.get(i, j, k) * c.get(a, b, nn) * d[i * np + a] * r[j][b];
                            }
                        }
                    }
                }
                next[k * n + nn] = n as f64 * acc;
            }
        }
        d = next;
    }
    d
}

#[test]
fn golden_angles_to_matrix() {
    let g = golden();
    let rot = &g["rotation"];
    let ang = f64s(&rot["angles(alpha,beta,gamma)"]);
    let r = angles_to_matrix(ang[0], ang[1], ang[2]);
    let err = max_abs_diff(&flat(&r), &f64s(&rot["angles_to_matrix"]));
    eprintln!("angles_to_matrix golden: max abs error {err:e}");
    assert!(err < 1e-15);
}

#[test]
fn golden_wigner_d() {
    let g = golden();
    let rot = &g["rotation"];
    let ang = f64s(&rot["angles(alpha,beta,gamma)"]);
    let mut worst = 0.0f64;
    for (key, want) in rot["wigner_D"].as_object().unwrap() {
        let l: u32 = key.parse().unwrap();
        let d = wigner_d(l, ang[0], ang[1], ang[2]).unwrap();
        let err = max_abs_diff(&d, &f64s(want));
        assert!(err < 1e-14, "l={l}: {err:e}");
        // The same through the matrix.
        let r = angles_to_matrix(ang[0], ang[1], ang[2]);
        let err2 = max_abs_diff(&d_from_matrix(l, Parity::Even, &r).unwrap(), &f64s(want));
        assert!(err2 < 1e-14, "l={l} from matrix: {err2:e}");
        worst = worst.max(err).max(err2);
    }
    eprintln!("wigner_D golden: max abs error {worst:e}");
}

#[test]
fn golden_generators() {
    let g = golden();
    let mut worst = 0.0f64;
    for (key, want) in g["rotation"]["so3_generators_xyz"].as_object().unwrap() {
        let l: u32 = key.parse().unwrap();
        let x = so3_generators(l).unwrap();
        let got: Vec<f64> = x.iter().flatten().copied().collect();
        let err = max_abs_diff(&got, &f64s(want));
        assert!(err < 1e-14, "l={l}: {err:e}");
        worst = worst.max(err);
    }
    eprintln!("so3_generators golden: max abs error {worst:e}");
}

/// `[X0, X1] = X2`, `[X1, X2] = X0`, `[X2, X0] = X1`, and X_k is the derivative of D along
/// the rotation about axis k.
#[test]
fn generators_algebra_and_derivative() {
    for l in 0..=8u32 {
        let n = 2 * l as usize + 1;
        let x = so3_generators(l).unwrap();
        for (a, b, c) in [(0, 1, 2), (1, 2, 0), (2, 0, 1)] {
            let ab = matmul_n(&x[a], &x[b], n);
            let ba = matmul_n(&x[b], &x[a], n);
            let comm: Vec<f64> = ab.iter().zip(&ba).map(|(p, q)| p - q).collect();
            assert!(max_abs_diff(&comm, &x[c]) < 1e-12, "l={l} [{a},{b}]");
        }
        let h = 1e-5;
        let mats: [fn(f64) -> Mat3; 3] = [matrix_x, matrix_y, matrix_z];
        for (k, m) in mats.iter().enumerate() {
            let dp = d_from_matrix(l, Parity::Even, &m(h)).unwrap();
            let dm = d_from_matrix(l, Parity::Even, &m(-h)).unwrap();
            let deriv: Vec<f64> = dp
                .iter()
                .zip(&dm)
                .map(|(p, q)| (p - q) / (2.0 * h))
                .collect();
            let err = max_abs_diff(&deriv, &x[k]);
            assert!(
                err < 1e-7 * (1.0 + f64::from(l * l)),
                "l={l} axis {k}: {err:e}"
            );
        }
    }
}

#[test]
fn d1_is_the_rotation_matrix() {
    let mut u = Uniform(7);
    for _ in 0..50 {
        let (a, b, g) = (
            u.next() * 20.0 - 10.0,
            u.next() * 20.0 - 10.0,
            u.next() * 20.0 - 10.0,
        );
        let d = wigner_d(1, a, b, g).unwrap();
        assert!(max_abs_diff(&d, &flat(&angles_to_matrix(a, b, g))) < 1e-14);
    }
    assert_eq!(wigner_d(0, 0.3, 0.2, 0.1).unwrap(), vec![1.0]);
}

#[test]
fn matrix_to_angles_round_trip() {
    let mut cases = random_rotations(11, 100);
    // Near the gimbal-lock poles (β ≈ 0, π) and exactly on them.
    for beta in [
        0.0,
        1e-9,
        1e-5,
        std::f64::consts::PI,
        std::f64::consts::PI - 1e-9,
    ] {
        cases.push(angles_to_matrix(0.4, beta, -1.1));
    }
    cases.push(matrix_z(0.7));
    for r in cases {
        let (a, b, g) = matrix_to_angles(&r);
        let back = angles_to_matrix(a, b, g);
        assert!(max_abs_diff(&flat(&back), &flat(&r)) < 1e-14, "{r:?}");
        assert!((0.0..=std::f64::consts::PI).contains(&b));
    }
}

/// `R(α, β, γ) ŷ = angles_to_xyz(α, β)` and `xyz_to_angles` inverts it (any length).
#[test]
fn polar_axis_angles() {
    let mut u = Uniform(12);
    for _ in 0..50 {
        let (a, b, g) = (u.next() * 6.0 - 3.0, u.next() * 3.0, u.next() * 6.0);
        let r = angles_to_matrix(a, b, g);
        let v = angles_to_xyz(a, b);
        assert!(max_abs_diff(&v, &[r[0][1], r[1][1], r[2][1]]) < 1e-15);
        let (a2, b2) = xyz_to_angles(v.map(|x| 2.5 * x));
        assert!(
            (a2 - a).abs() < 1e-14 && (b2 - b).abs() < 1e-14,
            "{a} {b} -> {a2} {b2}"
        );
    }
}

#[test]
fn uniform_rotation_is_proper_and_orthogonal() {
    for r in random_rotations(3, 100) {
        assert!((det(&r) - 1.0).abs() < 1e-14);
        let rrt = matmul(&r, &transpose(&r));
        assert!(max_abs_diff(&flat(&rrt), &identity(3)) < 1e-14);
    }
    // Mean of R over Haar measure is 0.
    let rs = random_rotations(5, 20000);
    let mut mean = [0.0; 9];
    for r in &rs {
        for (m, x) in mean.iter_mut().zip(flat(r)) {
            *m += x / rs.len() as f64;
        }
    }
    assert!(mean.iter().all(|m| m.abs() < 0.03), "{mean:?}");
}

/// D is an orthogonal representation for every l <= MAX_L, and agrees with the independent
/// 3j recursion (l <= 10).
#[test]
fn homomorphism_orthogonality_recursion() {
    let rs = random_rotations(21, 6);
    let start = std::time::Instant::now();
    let mut worst_hom = 0.0f64;
    let mut worst_rec = 0.0f64;
    for l in 0..=MAX_L {
        let n = 2 * l as usize + 1;
        for pair in rs.chunks(2) {
            let (r1, r2) = (&pair[0], &pair[1]);
            let d1 = d_from_matrix(l, Parity::Even, r1).unwrap();
            let d2 = d_from_matrix(l, Parity::Even, r2).unwrap();
            let d12 = d_from_matrix(l, Parity::Even, &matmul(r1, r2)).unwrap();
            worst_hom = worst_hom.max(max_abs_diff(&matmul_n(&d1, &d2, n), &d12));
            worst_hom = worst_hom.max(max_abs_diff(
                &matmul_n(&d1, &transpose_n(&d1, n), n),
                &identity(n),
            ));
            let inv = d_from_matrix(l, Parity::Even, &transpose(r1)).unwrap();
            worst_hom = worst_hom.max(max_abs_diff(&inv, &transpose_n(&d1, n)));
            if l <= 10 {
                worst_rec = worst_rec.max(max_abs_diff(&d1, &d_recursive(l, r1)));
            }
        }
    }
    eprintln!(
        "D l<=MAX_L: homomorphism/orthogonality error {worst_hom:e}, vs recursion (l<=10) {worst_rec:e}, {:?}",
        start.elapsed()
    );
    assert!(worst_hom < 1e-13);
    assert!(worst_rec < 1e-13);
}

/// Invariance `C_abc = Σ C_a'b'c' D¹_a'a D²_b'b D³_c'c` for all triples up to l = 5.
#[test]
fn wigner_3j_invariance() {
    let rs = random_rotations(99, 3);
    let mut worst = 0.0f64;
    for l1 in 0..=5u32 {
        for l2 in 0..=5u32 {
            for l3 in l1.abs_diff(l2)..=(l1 + l2).min(5) {
                let c = wigner_3j(l1, l2, l3).unwrap();
                let (n1, n2, n3) = (
                    2 * l1 as usize + 1,
                    2 * l2 as usize + 1,
                    2 * l3 as usize + 1,
                );
                for r in &rs {
                    let d1 = d_from_matrix(l1, Parity::Even, r).unwrap();
                    let d2 = d_from_matrix(l2, Parity::Even, r).unwrap();
                    let d3 = d_from_matrix(l3, Parity::Even, r).unwrap();
                    let mut rotated = vec![0.0; c.dense.len()];
                    for &(i, j, k, v) in &c.nonzeros {
                        let (i, j, k) = (i as usize, j as usize, k as usize);
                        for a in 0..n1 {
                            for b in 0..n2 {
                                let f = v * d1[i * n1 + a] * d2[j * n2 + b];
                                for cc in 0..n3 {
                                    rotated[(a * n2 + b) * n3 + cc] += f * d3[k * n3 + cc];
                                }
                            }
                        }
                    }
                    worst = worst.max(max_abs_diff(&rotated, &c.dense));
                }
            }
        }
    }
    eprintln!("wigner_3j invariance (l <= 5): max error {worst:e}");
    assert!(worst < 1e-14);
}

#[test]
fn parity_and_improper_rotations() {
    let minus_i = [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]];
    let neg = |v: Vec<f64>| v.into_iter().map(|x| -x).collect::<Vec<_>>();
    let close = |a: Vec<f64>, b: Vec<f64>| assert!(max_abs_diff(&a, &b) < 1e-15, "{a:?}");
    close(
        d_from_matrix(1, Parity::Odd, &minus_i).unwrap(),
        neg(identity(3)),
    );
    close(
        d_from_matrix(1, Parity::Even, &minus_i).unwrap(),
        identity(3),
    );
    close(
        d_from_matrix(2, Parity::Odd, &minus_i).unwrap(),
        neg(identity(5)),
    );
    close(
        d_from_matrix(3, Parity::Even, &minus_i).unwrap(),
        identity(7),
    );
    // An improper R = -R0: D = p · D(R0); and 1o reproduces R itself.
    for r0 in random_rotations(4, 5) {
        let r = r0.map(|row| row.map(|x| -x));
        assert!(max_abs_diff(&d_from_matrix(1, Parity::Odd, &r).unwrap(), &flat(&r)) < 1e-14);
        for l in 0..=4 {
            let d0 = d_from_matrix(l, Parity::Even, &r0).unwrap();
            assert!(max_abs_diff(&d_from_matrix(l, Parity::Even, &r).unwrap(), &d0) < 1e-14);
            assert!(max_abs_diff(&d_from_matrix(l, Parity::Odd, &r).unwrap(), &neg(d0)) < 1e-14);
        }
    }
}

#[test]
fn irreps_block_diagonal() {
    let ir = |l, p| Irrep { l, p };
    let irreps = Irreps(vec![
        MulIr {
            mul: 2,
            ir: ir(0, Parity::Even),
        },
        MulIr {
            mul: 0,
            ir: ir(3, Parity::Odd),
        },
        MulIr {
            mul: 1,
            ir: ir(1, Parity::Odd),
        },
        MulIr {
            mul: 2,
            ir: ir(2, Parity::Odd),
        },
    ]);
    let dim = irreps.dim();
    assert_eq!(dim, 2 + 3 + 10);
    let r0 = random_rotations(8, 1)[0];
    let r = r0.map(|row| row.map(|x| -x));
    let big = irreps_d_from_matrix(&irreps, &r).unwrap();
    assert_eq!(big.len(), dim * dim);
    let mut expect = vec![0.0; dim * dim];
    let mut off = 0;
    for (l, p, mul) in [
        (0, Parity::Even, 2),
        (1, Parity::Odd, 1),
        (2, Parity::Odd, 2),
    ] {
        let d = d_from_matrix(l, p, &r).unwrap();
        let n = 2 * l as usize + 1;
        for _ in 0..mul {
            for i in 0..n {
                for j in 0..n {
                    expect[(off + i) * dim + off + j] = d[i * n + j];
                }
            }
            off += n;
        }
    }
    assert_eq!(big, expect);
    assert!(irreps_d_from_matrix(&Irreps(vec![]), &r)
        .unwrap()
        .is_empty());
}

#[test]
fn l_above_max_is_an_error() {
    let r = matrix_x(0.3);
    let bad = MAX_L + 1;
    assert!(matches!(
        wigner_d(bad, 0.0, 0.0, 0.0),
        Err(So3Error::LTooLarge { .. })
    ));
    assert!(d_from_matrix(bad, Parity::Odd, &r).is_err());
    assert!(so3_generators(bad).is_err());
    let irreps = Irreps(vec![MulIr {
        mul: 1,
        ir: Irrep {
            l: bad,
            p: Parity::Even,
        },
    }]);
    assert!(irreps_d_from_matrix(&irreps, &r).is_err());
}
