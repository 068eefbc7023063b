//! Forward oracle and spec coefficients vs e3nn 0.6.0 golden values (§7, §8).
#![allow(clippy::approx_constant)] // literal golden values

mod oracle_common;

use equikern_core::spec::{ConnectionMode, Instruction};
use equikern_core::{oracle, IrrepNormalization, PathNormalization, TpSpec};
use oracle_common::*;
use serde_json::Value;

/// User path weights are not stored in the JSON (only the final coefficient); the one case that
/// uses them names them in its title.
fn user_path_weights(name: &str, n: usize) -> Vec<f64> {
    if name.contains("(1,0,0,'uvw',True,2.0)") {
        vec![1.0, 2.0, 1.0]
    } else {
        vec![1.0; n]
    }
}

fn spec_of_case(case: &Value) -> TpSpec {
    let name = case["name"].as_str().unwrap();
    let ins = case["instructions"].as_array().unwrap();
    let pw = user_path_weights(name, ins.len());
    let norms = case["irrep_normalization_path_normalization"]
        .as_array()
        .unwrap();
    TpSpec {
        irreps_in1: irreps(case["irreps_in1"].as_str().unwrap()),
        irreps_in2: irreps(case["irreps_in2"].as_str().unwrap()),
        irreps_out: irreps(case["irreps_out"].as_str().unwrap()),
        instructions: ins
            .iter()
            .zip(pw)
            .map(|(i, pw)| {
                let u = |k: usize| i[k].as_u64().unwrap() as usize;
                Instruction::new(
                    u(0),
                    u(1),
                    u(2),
                    ConnectionMode::parse(i[3].as_str().unwrap()).unwrap(),
                    i[4].as_bool().unwrap(),
                )
                .with_path_weight(pw)
            })
            .collect(),
        shared_weights: case["shared_weights"].as_bool().unwrap(),
        irrep_normalization: IrrepNormalization::parse(norms[0].as_str().unwrap()).unwrap(),
        path_normalization: PathNormalization::parse(norms[1].as_str().unwrap()).unwrap(),
    }
}

#[test]
fn every_golden_case_matches_e3nn() {
    let g = golden();
    let cases = g["tensor_product_cases"].as_array().unwrap();
    assert!(cases.len() >= 11);
    let mut worst = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let tp = build(&spec_of_case(case));
        assert_eq!(
            tp.weight_numel as u64,
            case["weight_numel"].as_u64().unwrap(),
            "{name}"
        );
        for (k, (path, ins)) in tp
            .paths
            .iter()
            .zip(case["instructions"].as_array().unwrap())
            .enumerate()
        {
            let shape: Vec<usize> = ins[5]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(path.path_shape, shape, "{name} path {k} shape");
            let c = ins[6].as_f64().unwrap();
            if path.coefficient != c {
                eprintln!(
                    "{name} path {k}: coefficient differs from e3nn by {:e}",
                    path.coefficient - c
                );
            }
            assert!(
                (path.coefficient - c).abs() <= 1e-15 * c.abs(),
                "{name} path {k}: c {} vs {c}",
                path.coefficient
            );
        }
        let x1 = f64s(&case["x1"]);
        let x2 = f64s(&case["x2"]);
        let batch = x1.len() / tp.dim_in1;
        assert_eq!(batch, 2);
        let w = case.get("weights").map(f64s).unwrap_or_default();
        let out = oracle::forward(&tp, batch, &x1, &x2, &w).unwrap();
        let expect = f64s(&case["out"]);
        let err = rel_err(&out, &expect);
        eprintln!("{name}: rel err {err:.2e}");
        assert!(
            err <= 1e-12,
            "{name}: rel err {err:e}\n got {out:?}\n expected {expect:?}"
        );
        worst = worst.max(err);
    }
    eprintln!("worst golden rel err {worst:.2e}");
}

/// §7 worked example, inputs from the closed-form formulas (no fixture).
#[test]
fn worked_example_section_7() {
    let spec = equikern_core::spec::builders::fully_connected(
        &irreps("2x0e + 1x1o"),
        &irreps("1x0e + 1x1o"),
        &irreps("2x0e + 1x1o + 1x1e"),
        IrrepNormalization::Component,
        PathNormalization::Element,
    );
    let tp = build(&spec);
    assert_eq!(tp.weight_numel, 10);
    let offsets: Vec<_> = tp.paths.iter().map(|p| p.weight_offset).collect();
    assert_eq!(offsets, [Some(0), Some(4), Some(6), Some(7), Some(9)]);
    let s3 = 3f64.sqrt();
    let cs: Vec<f64> = tp.paths.iter().map(|p| p.coefficient).collect();
    for (a, b) in cs.iter().zip([1.0 / s3, 1.0, 1.0, 1.0 / s3, s3]) {
        assert!((a - b).abs() < 1e-15);
    }
    let x1: Vec<f64> = (0..2)
        .flat_map(|b| (0..5).map(move |i| (((3 * i + 5 * b) % 7) as f64 - 3.0) / 4.0))
        .collect();
    let x2: Vec<f64> = (0..2)
        .flat_map(|b| (0..4).map(move |i| (((2 * i + 3 * b) % 5) as f64 - 2.0) / 2.0))
        .collect();
    let w: Vec<f64> = (0..10)
        .map(|k| (((5 * k) % 9) as f64 - 4.0) / 8.0)
        .collect();
    let out = oracle::forward(&tp, 2, &x1, &x2, &w).unwrap();
    let expect = [
        -0.299839684279,
        0.0541265877365,
        0.0541265877365,
        0.0902109795609,
        -0.0180421959122,
        0.132582521472,
        -0.132582521472,
        -0.265165042945,
        -0.0597088625788,
        -0.0180421959122,
        0.171400861166,
        0.0270632938683,
        -0.180421959122,
        0.265165042945,
        0.0883883476483,
        0.265165042945,
    ];
    for (a, b) in out.iter().zip(expect) {
        assert!((a - b).abs() < 1e-11, "{a} vs {b}");
    }
}

/// §7 single-path closed forms for 1o ⊗ 1o (uuu, unweighted).
#[test]
fn single_path_closed_forms() {
    let x = [1.0, 2.0, 3.0];
    let y = [-1.0, 0.5, 2.0];
    let cases: [(&str, &[f64]); 3] = [
        ("0e", &[3.4641016151377553]),
        (
            "1e",
            &[1.76776695296637, -3.53553390593274, 1.76776695296637],
        ),
        (
            "2e",
            &[
                -0.707106781186548,
                -1.06066017177982,
                -1.22474487139159,
                3.88908729652601,
                4.94974746830583,
            ],
        ),
    ];
    for (out, expect) in cases {
        let spec = TpSpec::new(
            irreps("1o"),
            irreps("1o"),
            irreps(out),
            vec![Instruction::new(0, 0, 0, ConnectionMode::Uuu, false)],
            true,
        );
        let z = oracle::forward(&build(&spec), 1, &x, &y, &[]).unwrap();
        assert!(rel_err(&z, expect) < 1e-13, "{out}: {z:?}");
    }
}
