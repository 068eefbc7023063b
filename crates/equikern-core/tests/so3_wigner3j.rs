//! wigner_3j against e3nn 0.6.0 golden values and its defining properties.

mod so3_common;

use equikern_core::so3::{wigner_3j, So3Error, MAX_L};
use so3_common::{golden, max_abs_diff};

fn triples(lmax: u32) -> Vec<(u32, u32, u32)> {
    let mut t = Vec::new();
    for l1 in 0..=lmax {
        for l2 in 0..=lmax {
            for l3 in l1.abs_diff(l2)..=(l1 + l2).min(lmax) {
                t.push((l1, l2, l3));
            }
        }
    }
    t
}

/// Every triple with l1, l2 <= 3 matches e3nn (dense, including zeros) to 1e-13.
#[test]
fn golden_sparse_tables() {
    let g = golden();
    let table = g["wigner_3j_sparse_ijk_value"].as_object().unwrap();
    assert!(table.len() >= 40);
    let mut worst = 0.0f64;
    for (key, entries) in table {
        let l: Vec<u32> = key.split(',').map(|s| s.parse().unwrap()).collect();
        let c = wigner_3j(l[0], l[1], l[2]).unwrap();
        let mut expect = vec![0.0; c.dense.len()];
        let (d2, d3) = (2 * l[1] as usize + 1, 2 * l[2] as usize + 1);
        for e in entries.as_array().unwrap() {
            let e = e.as_array().unwrap();
            let (i, j, k) = (
                e[0].as_u64().unwrap() as usize,
                e[1].as_u64().unwrap() as usize,
                e[2].as_u64().unwrap() as usize,
            );
            expect[(i * d2 + j) * d3 + k] = e[3].as_f64().unwrap();
        }
        let err = max_abs_diff(&c.dense, &expect);
        assert!(err <= 1e-13, "{key}: max error {err:e}");
        assert_eq!(c.nonzeros.len(), entries.as_array().unwrap().len(), "{key}");
        worst = worst.max(err);
    }
    eprintln!("wigner_3j golden: max abs error {worst:e}");
}

#[test]
fn pinned_values() {
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    close(wigner_3j(0, 0, 0).unwrap().get(0, 0, 0), 1.0);
    let c110 = wigner_3j(1, 1, 0).unwrap();
    for a in 0..3 {
        close(c110.get(a, a, 0), 1.0 / 3f64.sqrt());
    }
    let c111 = wigner_3j(1, 1, 1).unwrap();
    let s6 = 1.0 / 6f64.sqrt();
    let eps = [
        (0, 1, 2, 1.0),
        (0, 2, 1, -1.0),
        (1, 0, 2, -1.0),
        (1, 2, 0, 1.0),
        (2, 0, 1, 1.0),
    ];
    for (a, b, c, s) in eps {
        close(c111.get(a, b, c), s * s6);
    }
    close(c111.get(2, 1, 0), -s6);
    assert_eq!(c111.nonzeros.len(), 6);

    let c112 = wigner_3j(1, 1, 2).unwrap();
    let (s, t) = (1.0 / 10f64.sqrt(), 1.0 / 30f64.sqrt());
    let pins = [
        (0, 2, 0, s),
        (2, 0, 0, s),
        (0, 1, 1, s),
        (1, 0, 1, s),
        (0, 0, 2, -t),
        (1, 1, 2, 2.0 * t),
        (2, 2, 2, -t),
        (1, 2, 3, s),
        (2, 1, 3, s),
        (0, 0, 4, -s),
        (2, 2, 4, s),
    ];
    for (a, b, c, v) in pins {
        close(c112.get(a, b, c), v);
    }
    assert_eq!(c112.nonzeros.len(), 11);
    let c220 = wigner_3j(2, 2, 0).unwrap();
    for a in 0..5 {
        close(c220.get(a, a, 0), 1.0 / 5f64.sqrt());
    }
    let c123 = wigner_3j(1, 2, 3).unwrap();
    let pins = [
        (0, 0, 4, -0.069006555934235),
        (0, 0, 6, -0.267261241912424),
        (0, 1, 3, -0.169030850945703),
        (0, 1, 5, -0.218217890235992),
        (0, 2, 2, 0.239045721866879),
        (1, 2, 3, 0.292770021884560),
    ];
    for (a, b, c, v) in pins {
        close(c123.get(a, b, c), v);
    }
    assert_eq!(c123.nonzeros.len(), 21);
    let c222 = wigner_3j(2, 2, 2).unwrap();
    let pins = [
        (0, 0, 2, -0.239045721866879),
        (0, 1, 3, 0.207019667802706),
        (1, 1, 2, 0.119522860933439),
        (1, 1, 4, -0.207019667802706),
        (2, 2, 2, 0.239045721866879),
    ];
    for (a, b, c, v) in pins {
        close(c222.get(a, b, c), v);
    }
    assert_eq!(c222.nonzeros.len(), 25);
}

/// Swaps give sign (-1)^(l1+l2+l3), cyclic permutations none (all triples up to l = 6).
#[test]
fn permutation_symmetry() {
    for (l1, l2, l3) in triples(6) {
        let c = wigner_3j(l1, l2, l3).unwrap();
        let c213 = wigner_3j(l2, l1, l3).unwrap();
        let c231 = wigner_3j(l2, l3, l1).unwrap();
        let c132 = wigner_3j(l1, l3, l2).unwrap();
        let sign = if (l1 + l2 + l3) % 2 == 0 { 1.0 } else { -1.0 };
        let (d1, d2, d3) = (
            2 * l1 as usize + 1,
            2 * l2 as usize + 1,
            2 * l3 as usize + 1,
        );
        for i in 0..d1 {
            for j in 0..d2 {
                for k in 0..d3 {
                    let v = c.get(i, j, k);
                    assert!(
                        (c213.get(j, i, k) - sign * v).abs() < 1e-15,
                        "{l1}{l2}{l3} swap12"
                    );
                    assert!(
                        (c132.get(i, k, j) - sign * v).abs() < 1e-15,
                        "{l1}{l2}{l3} swap23"
                    );
                    assert!((c231.get(j, k, i) - v).abs() < 1e-15, "{l1}{l2}{l3} cyclic");
                }
            }
        }
    }
}

/// Unit Frobenius norm and `Σ_ab C_abc C_abc' = δ/(2l3+1)` for every triple up to l = 10.
#[test]
fn norm_and_orthogonality_up_to_10() {
    let start = std::time::Instant::now();
    let all = triples(10);
    for &(l1, l2, l3) in &all {
        wigner_3j(l1, l2, l3).unwrap();
    }
    eprintln!(
        "built {} triples (l <= 10) in {:?}",
        all.len(),
        start.elapsed()
    );
    let mut worst = 0.0f64;
    for (l1, l2, l3) in all {
        let c = wigner_3j(l1, l2, l3).unwrap();
        let norm: f64 = c.dense.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-13, "{l1},{l2},{l3}: norm² {norm}");
        let d3 = 2 * l3 as usize + 1;
        let mut gram = vec![0.0; d3 * d3];
        for ab in 0..c.dense.len() / d3 {
            let row = &c.dense[ab * d3..(ab + 1) * d3];
            for k in 0..d3 {
                for k2 in 0..d3 {
                    gram[k * d3 + k2] += row[k] * row[k2];
                }
            }
        }
        for k in 0..d3 {
            for k2 in 0..d3 {
                let want = if k == k2 { 1.0 / d3 as f64 } else { 0.0 };
                worst = worst.max((gram[k * d3 + k2] - want).abs());
            }
        }
    }
    assert!(worst < 1e-14, "orthogonality error {worst:e}");
}

/// `C(l,l,0)[a,b,0] = C(0,l,l)[0,a,b] = C(l,0,l)[a,0,b] = δ_ab/sqrt(2l+1)` up to MAX_L.
#[test]
fn identity_couplings() {
    for l in 0..=MAX_L {
        let (a, b, c) = (
            wigner_3j(l, l, 0).unwrap(),
            wigner_3j(0, l, l).unwrap(),
            wigner_3j(l, 0, l).unwrap(),
        );
        let d = 2 * l as usize + 1;
        for i in 0..d {
            for j in 0..d {
                let want = if i == j { 1.0 / (d as f64).sqrt() } else { 0.0 };
                assert!((a.get(i, j, 0) - want).abs() < 1e-15);
                assert!((b.get(0, i, j) - want).abs() < 1e-15);
                assert!((c.get(i, 0, j) - want).abs() < 1e-15);
            }
        }
    }
}

#[test]
fn nonzeros_match_dense() {
    let c = wigner_3j(3, 4, 5).unwrap();
    let (d2, d3) = (9, 11);
    let mut last = None;
    for &(i, j, k, v) in &c.nonzeros {
        let idx = (i as usize * d2 + j as usize) * d3 + k as usize;
        assert_eq!(c.dense[idx], v);
        assert!(v.abs() > 1e-14);
        assert!(last.is_none_or(|p| p < idx), "row-major order");
        last = Some(idx);
    }
    let count = c.dense.iter().filter(|v| v.abs() > 1e-14).count();
    assert_eq!(count, c.nonzeros.len());
}

#[test]
fn invalid_inputs_are_errors() {
    let e = wigner_3j(1, 1, 3).unwrap_err();
    assert!(matches!(
        e,
        So3Error::Wigner3j {
            l1: 1,
            l2: 1,
            l3: 3,
            ..
        }
    ));
    assert!(e.to_string().contains("triangle"), "{e}");
    assert!(wigner_3j(5, 1, 3).is_err());
    let e = wigner_3j(MAX_L + 1, MAX_L + 1, 0).unwrap_err();
    assert!(e.to_string().contains("MAX_L"), "{e}");
}

/// Every triple up to MAX_L builds and has unit norm.
#[test]
fn all_triples_up_to_max_l() {
    let start = std::time::Instant::now();
    let all = triples(MAX_L);
    for &(l1, l2, l3) in &all {
        let c = wigner_3j(l1, l2, l3).unwrap();
        let norm: f64 = c.dense.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-13, "{l1},{l2},{l3}: norm² {norm}");
    }
    eprintln!(
        "built and checked {} triples (l <= {MAX_L}) in {:?}",
        all.len(),
        start.elapsed()
    );
}

/// The largest supported triple builds and is normalised.
#[test]
fn max_l_triple() {
    let start = std::time::Instant::now();
    let c = wigner_3j(MAX_L, MAX_L, MAX_L).unwrap();
    eprintln!(
        "wigner_3j({MAX_L},{MAX_L},{MAX_L}) built in {:?}",
        start.elapsed()
    );
    let norm: f64 = c.dense.iter().map(|v| v * v).sum();
    assert!((norm - 1.0).abs() < 1e-13);
}
