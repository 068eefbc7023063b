//! The convolution oracle against a brute-force per-edge TP + scatter, and finite differences
//! of its backward and double backward (directed graphs, per-edge / shared / no weights).

mod conv_common;

use conv_common::*;
use equikern_core::conv::{ConvOracle, Csr};
use equikern_core::graph::random_skewed;
use equikern_core::{Oracle, TensorProduct};

fn graphs() -> Vec<(&'static str, Csr)> {
    let (n, r, s) = directed();
    let (rr, ss) = random_skewed(40, 300, 1.2, 9).unwrap();
    vec![
        ("directed", Csr::build(n, &r, &s).unwrap()),
        ("skewed", Csr::build(40, &rr, &ss).unwrap()),
    ]
}

fn tps() -> Vec<(&'static str, TensorProduct)> {
    vec![
        ("uvu per-edge", uvu_per_edge()),
        ("uvw shared", uvw_shared()),
        ("uvu unweighted", uvu_unweighted()),
    ]
}

/// Five-point central difference: exact (to rounding) for polynomials of degree ≤ 4, and the
/// conv is a polynomial of degree ≤ 3 along any line.
fn fd5(f: impl Fn(f64) -> f64) -> f64 {
    let h = 1e-2;
    (8.0 * (f(h) - f(-h)) - (f(2.0 * h) - f(-2.0 * h))) / (12.0 * h)
}

struct Data {
    x: Vec<f64>,
    y: Vec<f64>,
    w: Vec<f64>,
    gz: Vec<f64>,
    hx: Vec<f64>,
    hy: Vec<f64>,
    hw: Vec<f64>,
}

fn data(tp: &TensorProduct, g: &Csr, seed: u64) -> Data {
    let mut r = rng(seed);
    let wl = ConvOracle::<f64>::new(tp).unwrap().weight_len(g.edges());
    let (n, e) = (g.nodes, g.edges());
    Data {
        x: randv(&mut r, n * tp.dim_in1),
        y: randv(&mut r, e * tp.dim_in2),
        w: randv(&mut r, wl),
        gz: randv(&mut r, n * tp.dim_out),
        hx: randv(&mut r, n * tp.dim_in1),
        hy: randv(&mut r, e * tp.dim_in2),
        hw: randv(&mut r, wl),
    }
}

/// One TP call per edge, added into the receiver's row in edge order.
fn brute_forward(tp: &TensorProduct, g: &Csr, d: &Data) -> Vec<f64> {
    let o = Oracle::<f64>::new(tp).unwrap();
    let (d1, d2, dz, wn) = (tp.dim_in1, tp.dim_in2, tp.dim_out, tp.weight_numel);
    let mut z = vec![0.0; g.nodes * dz];
    for e in 0..g.edges() {
        let (i, j) = (g.receiver[e] as usize, g.sender[e] as usize);
        let w = if tp.spec.shared_weights {
            &d.w[..]
        } else {
            &d.w[e * wn..(e + 1) * wn]
        };
        let m = o
            .forward(1, &d.x[j * d1..][..d1], &d.y[e * d2..][..d2], w)
            .unwrap();
        for (a, b) in z[i * dz..][..dz].iter_mut().zip(m) {
            *a += b;
        }
    }
    z
}

#[test]
fn forward_matches_brute_force_bitwise() {
    for (gn, g) in graphs() {
        for (tn, tp) in tps() {
            let d = data(&tp, &g, 1);
            let z = ConvOracle::new(&tp)
                .unwrap()
                .forward(&g, &d.x, &d.y, &d.w)
                .unwrap();
            assert_eq!(z, brute_forward(&tp, &g, &d), "{gn} {tn}");
        }
    }
}

#[test]
fn isolated_nodes_get_zeros() {
    let (n, r, s) = directed();
    let g = Csr::build(n, &r, &s).unwrap();
    let tp = uvu_per_edge();
    let d = data(&tp, &g, 2);
    let o = ConvOracle::new(&tp).unwrap();
    let z = o.forward(&g, &d.x, &d.y, &d.w).unwrap();
    let b = o.backward(&g, &d.x, &d.y, &d.w, &d.gz).unwrap();
    let dz = tp.dim_out;
    // Node 0 receives nothing, node 5 is isolated: exact zeros.
    assert!(z[..dz].iter().all(|&v| v == 0.0));
    assert!(z[5 * dz..].iter().all(|&v| v == 0.0));
    // Nodes 4 and 5 send nothing: zero gx.
    assert!(b.gx[4 * tp.dim_in1..].iter().all(|&v| v == 0.0));
}

/// Directional derivative of `<gz, conv(x, y, w)>` by central differences vs the backward.
#[test]
fn backward_matches_finite_differences() {
    for (gn, g) in graphs() {
        for (tn, tp) in tps() {
            let o = ConvOracle::new(&tp).unwrap();
            let d = data(&tp, &g, 3);
            let (dx, dy, dw) = (d.hx.clone(), d.hy.clone(), d.hw.clone());
            let f = |h: f64| {
                let z = o
                    .forward(
                        &g,
                        &axpy(&d.x, h, &dx),
                        &axpy(&d.y, h, &dy),
                        &axpy(&d.w, h, &dw),
                    )
                    .unwrap();
                dot(&d.gz, &z)
            };
            let fd = fd5(f);
            let b = o.backward(&g, &d.x, &d.y, &d.w, &d.gz).unwrap();
            let an = dot(&b.gx, &dx) + dot(&b.gy, &dy) + dot(&b.gw, &dw);
            let err = (fd - an).abs() / an.abs().max(1e-12);
            eprintln!("{gn} {tn}: backward FD rel err {err:.2e}");
            assert!(err < 1e-10, "{gn} {tn}: fd {fd} vs {an}");
        }
    }
}

/// Directional derivative of `S = <gx,hx>+<gy,hy>+<gw,hw>` in (x, y, w, gz) vs double backward.
#[test]
fn double_backward_matches_finite_differences() {
    for (gn, g) in graphs() {
        for (tn, tp) in tps() {
            let o = ConvOracle::new(&tp).unwrap();
            let d = data(&tp, &g, 4);
            let mut r = rng(44);
            let (ex, ey, ew, egz) = (
                randv(&mut r, d.x.len()),
                randv(&mut r, d.y.len()),
                randv(&mut r, d.w.len()),
                randv(&mut r, d.gz.len()),
            );
            let s = |h: f64| {
                let b = o
                    .backward(
                        &g,
                        &axpy(&d.x, h, &ex),
                        &axpy(&d.y, h, &ey),
                        &axpy(&d.w, h, &ew),
                        &axpy(&d.gz, h, &egz),
                    )
                    .unwrap();
                dot(&b.gx, &d.hx) + dot(&b.gy, &d.hy) + dot(&b.gw, &d.hw)
            };
            let fd = fd5(s);
            let r = o
                .double_backward(&g, &d.x, &d.y, &d.w, &d.gz, &d.hx, &d.hy, &d.hw)
                .unwrap();
            let an = dot(&r.dx, &ex) + dot(&r.dy, &ey) + dot(&r.dw, &ew) + dot(&r.dgz, &egz);
            let err = (fd - an).abs() / an.abs().max(1e-12);
            eprintln!("{gn} {tn}: double backward FD rel err {err:.2e}");
            assert!(err < 1e-10, "{gn} {tn}: fd {fd} vs {an}");
        }
    }
}

/// The transpose matters: on a directed graph, gx computed with the receiver view (the
/// peers' shortcut, only right for symmetric graphs) differs from the correct one.
#[test]
fn directed_graph_needs_the_transpose() {
    let (n, r, s) = directed();
    let g = Csr::build(n, &r, &s).unwrap();
    let swapped = Csr::build(n, &s, &r).unwrap();
    let tp = uvu_per_edge();
    let d = data(&tp, &g, 5);
    let o = ConvOracle::new(&tp).unwrap();
    let right = o.backward(&g, &d.x, &d.y, &d.w, &d.gz).unwrap();
    let wrong = o.backward(&swapped, &d.x, &d.y, &d.w, &d.gz).unwrap();
    assert!(rel_l2(&wrong.gx, &right.gx) > 1e-2);
}

#[test]
fn f32_close_to_f64() {
    let (_, g) = graphs().remove(1);
    let tp = uvu_per_edge();
    let d = data(&tp, &g, 6);
    let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let z64 = ConvOracle::<f64>::new(&tp)
        .unwrap()
        .forward(&g, &d.x, &d.y, &d.w)
        .unwrap();
    let z32 = ConvOracle::<f32>::new(&tp)
        .unwrap()
        .forward(&g, &f(&d.x), &f(&d.y), &f(&d.w))
        .unwrap();
    let z32: Vec<f64> = z32.into_iter().map(f64::from).collect();
    assert!(rel_l2(&z32, &z64) < 1e-5);
}

#[test]
fn wrong_lengths_are_errors() {
    let (n, r, s) = directed();
    let g = Csr::build(n, &r, &s).unwrap();
    let tp = uvu_per_edge();
    let d = data(&tp, &g, 7);
    let o = ConvOracle::new(&tp).unwrap();
    let e = o.forward(&g, &d.x[1..], &d.y, &d.w).unwrap_err();
    assert!(e.to_string().contains("argument x"), "{e}");
    let e = o.backward(&g, &d.x, &d.y, &d.w, &d.gz[1..]).unwrap_err();
    assert!(e.to_string().contains("grad_z"), "{e}");
}
