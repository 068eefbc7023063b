//! Oracle properties: finite-difference backward / double backward for every mode, linearity,
//! equivariance (rotations and parity), f32 vs f64, e3nn's normalisation invariance, edge cases.

mod oracle_common;

use equikern_core::oracle::{self, Oracle, OracleError};
use equikern_core::so3::{irreps_d_from_matrix, uniform_rotation};
use equikern_core::spec::builders::fully_connected;
use equikern_core::spec::{ConnectionMode, Instruction};
use equikern_core::{IrrepNormalization, Irreps, PathNormalization, TensorProduct, TpSpec};
use oracle_common::*;
use rand::Rng;
use ConnectionMode::*;

/// Multiplicities `(m1, m2, mo)` that satisfy `mode`'s constraint.
fn muls(mode: ConnectionMode, has_weight: bool) -> (usize, usize, usize) {
    match mode {
        Uvw => (2, 3, 2),
        Uvu => (2, 3, 2),
        Uvv => (2, 3, 3),
        Uuw => (3, 3, if has_weight { 2 } else { 1 }),
        Uuu => (3, 3, 3),
        Uvuv => (2, 3, 6),
        UvuLtV => (3, 3, 3),
        ULtVw => (3, 3, 2),
    }
}

/// Every selection-rule-allowed `(i1, i2, io)` of small irreps in one mode: several paths
/// share output blocks, l up to 2 in, 3 out.
fn mode_spec(mode: ConnectionMode, has_weight: bool, shared: bool) -> TpSpec {
    let (m1, m2, mo) = muls(mode, has_weight);
    let in1 = irreps(&format!("{m1}x0e+{m1}x1o+{m1}x2e+{m1}x1e"));
    let in2 = irreps(&format!("{m2}x0e+{m2}x1o+{m2}x2o"));
    let out = irreps(&format!(
        "{mo}x0e+{mo}x1o+{mo}x1e+{mo}x2e+{mo}x2o+{mo}x3o+{mo}x0o"
    ));
    let mut ins = Vec::new();
    for (i1, a) in in1.iter().enumerate() {
        for (i2, b) in in2.iter().enumerate() {
            for (io, o) in out.iter().enumerate() {
                if a.ir.couples_to(b.ir, o.ir) {
                    let pw = 1.0 + 0.25 * ins.len() as f64;
                    ins.push(Instruction::new(i1, i2, io, mode, has_weight).with_path_weight(pw));
                }
            }
        }
    }
    TpSpec::new(in1, in2, out, ins, shared)
}

/// Mixed modes in one product, unweighted instructions between weighted ones.
fn mixed_spec(shared: bool) -> TpSpec {
    TpSpec::new(
        irreps("3x0e+3x1o+2x2e"),
        irreps("3x0e+2x1o"),
        irreps("3x0e+3x1o+2x1e+4x2o+3x1o+2x2e"),
        vec![
            Instruction::new(1, 0, 1, Uuu, false),
            Instruction::new(0, 1, 4, Uvu, true),
            Instruction::new(1, 1, 2, Uvv, true),
            Instruction::new(2, 1, 3, Uvuv, false),
            Instruction::new(0, 0, 0, Uvw, true),
            Instruction::new(1, 1, 0, Uvw, true).with_path_weight(3.0),
            Instruction::new(0, 0, 0, UvuLtV, true),
            Instruction::new(0, 0, 0, Uuw, true),
            Instruction::new(0, 0, 0, ULtVw, true),
            Instruction::new(2, 0, 5, Uvu, false),
        ],
        shared,
    )
}

/// All specs exercised by the property tests, with names.
fn all_specs() -> Vec<(String, TpSpec)> {
    let mut v = Vec::new();
    for mode in ConnectionMode::ALL {
        for has_weight in [true, false] {
            if mode.requires_weight() && !has_weight {
                continue;
            }
            for shared in [true, false] {
                v.push((
                    format!("{mode} w={has_weight} shared={shared}"),
                    mode_spec(mode, has_weight, shared),
                ));
            }
        }
    }
    for shared in [true, false] {
        v.push((format!("mixed shared={shared}"), mixed_spec(shared)));
    }
    for irn in [IrrepNormalization::Norm, IrrepNormalization::None] {
        for pn in [PathNormalization::Path, PathNormalization::None] {
            let mut s = mixed_spec(false);
            s.irrep_normalization = irn;
            s.path_normalization = pn;
            v.push((format!("mixed {irn:?}/{pn:?}"), s));
        }
    }
    v
}

const BATCH: usize = 3;

fn forward(tp: &TensorProduct, x: &[f64], y: &[f64], w: &[f64]) -> Vec<f64> {
    oracle::forward(tp, x.len() / tp.dim_in1.max(1), x, y, w).unwrap()
}

fn axpy(a: f64, x: &[f64], y: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(x, y)| y + a * x).collect()
}

fn assert_close(what: &str, got: f64, want: f64, scale: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * scale.max(1e-300),
        "{what}: {got} vs {want} (scale {scale})"
    );
}

/// Backward vs central differences of `L = <gz, F(x, y, w)>` along random directions.
#[test]
fn backward_matches_finite_differences() {
    for (seed, (name, spec)) in all_specs().into_iter().enumerate() {
        let tp = build(&spec);
        let (x, y, w) = random_inputs(&tp, BATCH, seed as u64);
        let mut r = rng(1000 + seed as u64);
        let gz = randv(&mut r, BATCH * tp.dim_out);
        let g = oracle::backward(&tp, BATCH, &x, &y, &w, &gz).unwrap();
        assert_eq!(g.gw.len(), w.len());
        let loss = |x: &[f64], y: &[f64], w: &[f64]| dot(&gz, &forward(&tp, x, y, w));
        let eps = 1e-3;
        for _ in 0..2 {
            let (dx, dy, dw) = (
                randv(&mut r, x.len()),
                randv(&mut r, y.len()),
                randv(&mut r, w.len()),
            );
            let fd_x = (loss(&axpy(eps, &dx, &x), &y, &w) - loss(&axpy(-eps, &dx, &x), &y, &w))
                / (2.0 * eps);
            let fd_y = (loss(&x, &axpy(eps, &dy, &y), &w) - loss(&x, &axpy(-eps, &dy, &y), &w))
                / (2.0 * eps);
            let fd_w = (loss(&x, &y, &axpy(eps, &dw, &w)) - loss(&x, &y, &axpy(-eps, &dw, &w)))
                / (2.0 * eps);
            let scale = loss(&x, &y, &w).abs() + 1.0;
            assert_close(&format!("{name} gx"), dot(&g.gx, &dx), fd_x, scale, 1e-9);
            assert_close(&format!("{name} gy"), dot(&g.gy, &dy), fd_y, scale, 1e-9);
            assert_close(&format!("{name} gw"), dot(&g.gw, &dw), fd_w, scale, 1e-9);
        }
    }
}

/// Double backward vs central differences of `S = <gx,hx> + <gy,hy> + <gw,hw>`.
#[test]
fn double_backward_matches_finite_differences() {
    for (seed, (name, spec)) in all_specs().into_iter().enumerate() {
        let tp = build(&spec);
        let (x, y, w) = random_inputs(&tp, BATCH, 50 + seed as u64);
        let mut r = rng(2000 + seed as u64);
        let gz = randv(&mut r, BATCH * tp.dim_out);
        let (hx, hy, hw) = (
            randv(&mut r, x.len()),
            randv(&mut r, y.len()),
            randv(&mut r, w.len()),
        );
        let d = oracle::double_backward(&tp, BATCH, &x, &y, &w, &gz, &hx, &hy, &hw).unwrap();
        assert_eq!(
            (d.dx.len(), d.dy.len(), d.dw.len(), d.dgz.len()),
            (x.len(), y.len(), w.len(), gz.len())
        );
        let s = |x: &[f64], y: &[f64], w: &[f64], gz: &[f64]| {
            let g = oracle::backward(&tp, BATCH, x, y, w, gz).unwrap();
            dot(&g.gx, &hx) + dot(&g.gy, &hy) + dot(&g.gw, &hw)
        };
        let eps = 1e-3;
        let scale = s(&x, &y, &w, &gz).abs() + 1.0;
        let (dx, dy, dw, dgz) = (
            randv(&mut r, x.len()),
            randv(&mut r, y.len()),
            randv(&mut r, w.len()),
            randv(&mut r, gz.len()),
        );
        let fd = |plus: f64, minus: f64| (plus - minus) / (2.0 * eps);
        let fx = fd(
            s(&axpy(eps, &dx, &x), &y, &w, &gz),
            s(&axpy(-eps, &dx, &x), &y, &w, &gz),
        );
        let fy = fd(
            s(&x, &axpy(eps, &dy, &y), &w, &gz),
            s(&x, &axpy(-eps, &dy, &y), &w, &gz),
        );
        let fw = fd(
            s(&x, &y, &axpy(eps, &dw, &w), &gz),
            s(&x, &y, &axpy(-eps, &dw, &w), &gz),
        );
        let fg = fd(
            s(&x, &y, &w, &axpy(eps, &dgz, &gz)),
            s(&x, &y, &w, &axpy(-eps, &dgz, &gz)),
        );
        assert_close(&format!("{name} dx"), dot(&d.dx, &dx), fx, scale, 1e-9);
        assert_close(&format!("{name} dy"), dot(&d.dy, &dy), fy, scale, 1e-9);
        assert_close(&format!("{name} dw"), dot(&d.dw, &dw), fw, scale, 1e-9);
        assert_close(&format!("{name} dgz"), dot(&d.dgz, &dgz), fg, scale, 1e-9);
    }
}

/// Component-wise gradient check on one small mixed spec (catches errors that a random
/// direction could average out).
#[test]
fn backward_componentwise_on_mixed_spec() {
    let tp = build(&mixed_spec(false));
    let (x, y, w) = random_inputs(&tp, 2, 7);
    let gz = randv(&mut rng(8), 2 * tp.dim_out);
    let g = oracle::backward(&tp, 2, &x, &y, &w, &gz).unwrap();
    let loss = |x: &[f64], y: &[f64], w: &[f64]| dot(&gz, &forward(&tp, x, y, w));
    let unit = |n: usize, i: usize| {
        (0..n)
            .map(|k| if k == i { 1.0 } else { 0.0 })
            .collect::<Vec<_>>()
    };
    let base = loss(&x, &y, &w);
    for i in 0..x.len() {
        let fd = loss(&axpy(1.0, &unit(x.len(), i), &x), &y, &w) - base; // exact: linear in x
        assert_close(&format!("gx[{i}]"), g.gx[i], fd, base.abs() + 1.0, 1e-12);
    }
    for i in 0..y.len() {
        let fd = loss(&x, &axpy(1.0, &unit(y.len(), i), &y), &w) - base;
        assert_close(&format!("gy[{i}]"), g.gy[i], fd, base.abs() + 1.0, 1e-12);
    }
    for i in 0..w.len() {
        let fd = loss(&x, &y, &axpy(1.0, &unit(w.len(), i), &w)) - base;
        assert_close(&format!("gw[{i}]"), g.gw[i], fd, base.abs() + 1.0, 1e-12);
    }
}

#[test]
fn linear_in_each_input() {
    for (seed, (name, spec)) in all_specs().into_iter().enumerate() {
        let tp = build(&spec);
        let (x, y, w) = random_inputs(&tp, BATCH, 300 + seed as u64);
        let (x2, y2, w2) = random_inputs(&tp, BATCH, 400 + seed as u64);
        let (a, b) = (0.7, -1.3);
        let comb = |u: &[f64], v: &[f64]| {
            u.iter()
                .zip(v)
                .map(|(u, v)| a * u + b * v)
                .collect::<Vec<_>>()
        };
        let f = |x: &[f64], y: &[f64], w: &[f64]| forward(&tp, x, y, w);
        let checks = [
            (
                f(&comb(&x, &x2), &y, &w),
                comb(&f(&x, &y, &w), &f(&x2, &y, &w)),
                "x",
            ),
            (
                f(&x, &comb(&y, &y2), &w),
                comb(&f(&x, &y, &w), &f(&x, &y2, &w)),
                "y",
            ),
        ];
        for (lhs, rhs, arg) in checks {
            assert!(rel_err(&lhs, &rhs) < 1e-13, "{name}: not linear in {arg}");
        }
        if tp.weight_numel > 0 {
            // Affine in w: unweighted paths (W ≡ 1) are the constant part F(x, y, 0).
            let f0 = f(&x, &y, &vec![0.0; w.len()]);
            let all_weighted = spec.instructions.iter().all(|i| i.has_weight);
            assert_eq!(all_weighted, f0.iter().all(|&v| v == 0.0), "{name}");
            let minus0 = |v: Vec<f64>| v.iter().zip(&f0).map(|(a, b)| a - b).collect::<Vec<_>>();
            let lhs = minus0(f(&x, &y, &comb(&w, &w2)));
            let rhs = comb(&minus0(f(&x, &y, &w)), &minus0(f(&x, &y, &w2)));
            assert!(rel_err(&lhs, &rhs) < 1e-13, "{name}: not linear in w");
        }
    }
}

fn apply_d(d: &[f64], dim: usize, v: &[f64]) -> Vec<f64> {
    v.chunks(dim)
        .flat_map(|row| {
            (0..dim).map(move |i| (0..dim).map(|j| d[i * dim + j] * row[j]).sum::<f64>())
        })
        .collect()
}

fn check_equivariance(name: &str, tp: &TensorProduct, seed: u64) {
    let s = &tp.spec;
    let (x, y, w) = random_inputs(tp, 2, seed);
    let mut r = rng(seed + 77);
    for k in 0..3 {
        let rot = uniform_rotation(r.random(), r.random(), r.random());
        let neg = rot.map(|row| row.map(|v| -v));
        for (mat, what) in [(rot, "rotation"), (neg, "rotation+parity")] {
            let d1 = irreps_d_from_matrix(&s.irreps_in1, &mat).unwrap();
            let d2 = irreps_d_from_matrix(&s.irreps_in2, &mat).unwrap();
            let dout = irreps_d_from_matrix(&s.irreps_out, &mat).unwrap();
            let lhs = forward(
                tp,
                &apply_d(&d1, tp.dim_in1, &x),
                &apply_d(&d2, tp.dim_in2, &y),
                &w,
            );
            let rhs = apply_d(&dout, tp.dim_out, &forward(tp, &x, &y, &w));
            let e = rel_err(&lhs, &rhs);
            assert!(e < 1e-12, "{name}: {what} {k}: rel err {e:e}");
        }
    }
}

#[test]
fn equivariant_under_rotations_and_parity() {
    for (seed, (name, spec)) in all_specs().into_iter().enumerate() {
        check_equivariance(&name, &build(&spec), 500 + seed as u64);
    }
    // e3nn's tensor_product_sub_test: FCTP on 1e+2e+3x3o (all three).
    let i = irreps("1e+2e+3x3o");
    let fc = fully_connected(
        &i,
        &i,
        &i,
        IrrepNormalization::Component,
        PathNormalization::Element,
    );
    check_equivariance("FCTP 1e+2e+3x3o", &build(&fc), 9);
}

#[test]
fn f32_agrees_with_f64() {
    for (seed, (name, spec)) in all_specs().into_iter().enumerate() {
        let tp = build(&spec);
        let (x, y, w) = random_inputs(&tp, BATCH, 600 + seed as u64);
        let mut r = rng(700 + seed as u64);
        let gz = randv(&mut r, BATCH * tp.dim_out);
        let (hx, hy, hw) = (
            randv(&mut r, x.len()),
            randv(&mut r, y.len()),
            randv(&mut r, w.len()),
        );
        let f32v = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let f64v = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let (xs, ys, ws, gzs) = (f32v(&x), f32v(&y), f32v(&w), f32v(&gz));
        let tol = 2e-6;
        let z64 = oracle::forward(&tp, BATCH, &x, &y, &w).unwrap();
        let z32 = oracle::forward(&tp, BATCH, &xs, &ys, &ws).unwrap();
        let e = rel_err(&f64v(&z32), &z64);
        assert!(e < tol, "{name}: forward f32 rel err {e:e}");
        let g64 = oracle::backward(&tp, BATCH, &x, &y, &w, &gz).unwrap();
        let g32 = oracle::backward(&tp, BATCH, &xs, &ys, &ws, &gzs).unwrap();
        for (a, b, what) in [
            (&g32.gx, &g64.gx, "gx"),
            (&g32.gy, &g64.gy, "gy"),
            (&g32.gw, &g64.gw, "gw"),
        ] {
            let e = rel_err(&f64v(a), b);
            assert!(e < tol, "{name}: {what} f32 rel err {e:e}");
        }
        let d64 = oracle::double_backward(&tp, BATCH, &x, &y, &w, &gz, &hx, &hy, &hw).unwrap();
        let d32 = oracle::double_backward(
            &tp,
            BATCH,
            &xs,
            &ys,
            &ws,
            &gzs,
            &f32v(&hx),
            &f32v(&hy),
            &f32v(&hw),
        )
        .unwrap();
        for (a, b, what) in [
            (&d32.dx, &d64.dx, "dx"),
            (&d32.dy, &d64.dy, "dy"),
            (&d32.dw, &d64.dw, "dw"),
            (&d32.dgz, &d64.dgz, "dgz"),
        ] {
            let e = rel_err(&f64v(a), b);
            assert!(e < tol, "{name}: {what} f32 rel err {e:e}");
        }
    }
}

/// e3nn's `test_fully_connected_normalization`: element normalisation is invariant to
/// splitting multiplicities.
#[test]
fn fully_connected_normalization_invariant_to_splitting() {
    let fc = |s: &str| {
        build(&fully_connected(
            &irreps(s),
            &irreps(s),
            &irreps("0e"),
            IrrepNormalization::Component,
            PathNormalization::Element,
        ))
    };
    let (a, b) = (fc("10x0e"), fc("3x0e + 7x0e"));
    assert_eq!((a.weight_numel, b.weight_numel), (100, 100));
    let mut r = rng(11);
    let x = randv(&mut r, 4 * 10);
    let y = randv(&mut r, 4 * 10);
    let za = oracle::forward(&a, 4, &x, &y, &vec![1.0; 100]).unwrap();
    let zb = oracle::forward(&b, 4, &x, &y, &vec![1.0; 100]).unwrap();
    assert!(rel_err(&za, &zb) < 1e-14, "{za:?} vs {zb:?}");
}

#[test]
fn untouched_output_blocks_are_exact_zeros_and_batch_zero_works() {
    let spec = TpSpec::new(
        irreps("2x1o"),
        irreps("1o"),
        irreps("3x2o+2x0e+5x1e+0x2e"),
        vec![Instruction::new(0, 0, 1, Uvu, true)],
        true,
    );
    let tp = build(&spec);
    let (x, y, w) = random_inputs(&tp, 4, 3);
    let z = oracle::forward(&tp, 4, &x, &y, &w).unwrap();
    for row in z.chunks(tp.dim_out) {
        assert!(row[..15].iter().chain(&row[17..]).all(|v| v.to_bits() == 0));
        assert!(row[15..17].iter().all(|&v| v != 0.0));
    }
    assert!(oracle::forward::<f64>(&tp, 0, &[], &[], &w)
        .unwrap()
        .is_empty());
    let g = oracle::backward::<f64>(&tp, 0, &[], &[], &w, &[]).unwrap();
    assert_eq!(g.gw, vec![0.0; tp.weight_numel]);
    let d = oracle::double_backward::<f64>(&tp, 0, &[], &[], &w, &[], &[], &[], &w).unwrap();
    assert!(d.dx.is_empty() && d.dgz.is_empty() && d.dw.iter().all(|&v| v == 0.0));
    // Zero multiplicities / empty irreps.
    let empty = build(&TpSpec::new(
        Irreps::default(),
        Irreps::default(),
        Irreps::default(),
        vec![],
        false,
    ));
    assert_eq!(
        oracle::forward::<f64>(&empty, 5, &[], &[], &[]).unwrap(),
        Vec::<f64>::new()
    );
    let zero = build(&TpSpec::new(
        irreps("0x1o+1o"),
        irreps("0x1o"),
        irreps("0x0e+1e"),
        vec![
            Instruction::new(0, 0, 0, Uvw, true),
            Instruction::new(1, 0, 1, Uvu, true),
        ],
        false,
    ));
    let (x, y, w) = random_inputs(&zero, 2, 4);
    assert_eq!(oracle::forward(&zero, 2, &x, &y, &w).unwrap(), vec![0.0; 6]);
}

#[test]
fn length_errors_name_the_argument() {
    let tp = build(&mixed_spec(false));
    let (x, y, w) = random_inputs(&tp, 2, 5);
    let gz = vec![0.5; 2 * tp.dim_out];
    let e = oracle::forward(&tp, 2, &x[1..], &y, &w).unwrap_err();
    assert_eq!(
        e,
        OracleError::Length {
            arg: "x",
            expected: 2 * tp.dim_in1,
            actual: 2 * tp.dim_in1 - 1
        }
    );
    assert!(e.to_string().contains("argument x"));
    assert!(matches!(
        oracle::forward(&tp, 2, &x, &y[1..], &w),
        Err(OracleError::Length { arg: "y", .. })
    ));
    assert!(matches!(
        oracle::forward(&tp, 2, &x, &y, &w[..tp.weight_numel]),
        Err(OracleError::Length { arg: "w", .. })
    ));
    assert!(matches!(
        oracle::backward(&tp, 2, &x, &y, &w, &gz[1..]),
        Err(OracleError::Length { arg: "grad_z", .. })
    ));
    assert!(matches!(
        oracle::double_backward(&tp, 2, &x, &y, &w, &gz, &x, &y, &w[1..]),
        Err(OracleError::Length { arg: "hw", .. })
    ));
    assert!(matches!(
        oracle::double_backward(&tp, 2, &x, &y, &w, &gz, &x[1..], &y, &w),
        Err(OracleError::Length { arg: "hx", .. })
    ));
    assert!(matches!(
        oracle::forward::<f64>(&tp, usize::MAX, &[], &[], &[]),
        Err(OracleError::Overflow { arg: "x", .. })
    ));
    // A hand-broken TensorProduct is an error, not a panic.
    let mut broken = tp.clone();
    broken.paths[0].out_offset = tp.dim_out;
    assert!(matches!(
        Oracle::<f64>::new(&broken),
        Err(OracleError::InvalidTensorProduct(_))
    ));
    let mut broken = tp.clone();
    broken.paths[1].weight_offset = Some(tp.weight_numel);
    assert!(Oracle::<f64>::new(&broken).is_err());
    let mut broken = tp.clone();
    broken.paths[2].cg.push((9, 0, 0, 1.0));
    assert!(Oracle::<f64>::new(&broken).is_err());
}

/// Batches spanning several chunks give the same rows as one-sample calls; shared-weight
/// gradients equal the sum of per-sample ones; per-sample weights that are all equal reproduce
/// shared weights.
#[test]
fn batching_and_weight_sharing_are_consistent() {
    let shared = build(&mixed_spec(true));
    let per = build(&mixed_spec(false));
    let batch = 2 * oracle::CHUNK + 5;
    let (x, y, w) = random_inputs(&shared, batch, 21);
    let gz = randv(&mut rng(22), batch * shared.dim_out);
    let z = oracle::forward(&shared, batch, &x, &y, &w).unwrap();
    let wrep: Vec<f64> = (0..batch).flat_map(|_| w.iter().copied()).collect();
    assert_eq!(oracle::forward(&per, batch, &x, &y, &wrep).unwrap(), z);
    let (d1, d2, dout) = (shared.dim_in1, shared.dim_in2, shared.dim_out);
    for s in [0, 63, 64, batch - 1] {
        let zs = oracle::forward(&shared, 1, &x[s * d1..][..d1], &y[s * d2..][..d2], &w).unwrap();
        assert_eq!(&z[s * dout..][..dout], &zs[..]);
    }
    let gs = oracle::backward(&shared, batch, &x, &y, &w, &gz).unwrap();
    let gp = oracle::backward(&per, batch, &x, &y, &wrep, &gz).unwrap();
    assert_eq!((&gs.gx, &gs.gy), (&gp.gx, &gp.gy));
    let summed: Vec<f64> = (0..shared.weight_numel)
        .map(|k| (0..batch).map(|s| gp.gw[s * per.weight_numel + k]).sum())
        .collect();
    assert!(rel_err(&gs.gw, &summed) < 1e-13);
    // Double backward: shared dw is the batch sum of per-sample dw (with hw repeated).
    let mut r = rng(23);
    let (hx, hy, hw) = (
        randv(&mut r, x.len()),
        randv(&mut r, y.len()),
        randv(&mut r, w.len()),
    );
    let hwrep: Vec<f64> = (0..batch).flat_map(|_| hw.iter().copied()).collect();
    let ds = oracle::double_backward(&shared, batch, &x, &y, &w, &gz, &hx, &hy, &hw).unwrap();
    let dp = oracle::double_backward(&per, batch, &x, &y, &wrep, &gz, &hx, &hy, &hwrep).unwrap();
    assert_eq!((&ds.dx, &ds.dy, &ds.dgz), (&dp.dx, &dp.dy, &dp.dgz));
    let summed: Vec<f64> = (0..shared.weight_numel)
        .map(|k| (0..batch).map(|s| dp.dw[s * per.weight_numel + k]).sum())
        .collect();
    assert!(rel_err(&ds.dw, &summed) < 1e-13);
}

#[test]
fn forward_into_overwrites_the_buffer() {
    let tp = build(&mixed_spec(false));
    let batch = oracle::CHUNK + 3;
    let (x, y, w) = random_inputs(&tp, batch, 31);
    let o = Oracle::<f64>::new(&tp).unwrap();
    let mut z = vec![f64::NAN; batch * tp.dim_out];
    o.forward_into(batch, &x, &y, &w, &mut z).unwrap();
    assert_eq!(z, o.forward(batch, &x, &y, &w).unwrap());
    assert!(matches!(
        o.forward_into(batch, &x, &y, &w, &mut z[1..]),
        Err(OracleError::Length { arg: "z", .. })
    ));
}
