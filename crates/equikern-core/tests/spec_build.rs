//! Spec JSON, validation errors, coefficients, weight layout, builders, cost model, paper suite.

mod oracle_common;

use equikern_core::spec::builders::{channelwise, elementwise, full, fully_connected};
use equikern_core::spec::cost::{cost, traffic};
use equikern_core::spec::{ConnectionMode, Instruction};
use equikern_core::{load_suite, Irrep, IrrepNormalization, PathNormalization, SpecError, TpSpec};
use oracle_common::*;
use ConnectionMode::*;

const EXAMPLE: &str = r#"{"irreps_in1": "2x0e + 2x1o", "irreps_in2": "0e + 1o", "irreps_out": "2x0e+2x1o",
  "instructions": [[0, 0, 0, "uvu", true, 1.0], [1, 1, 0, "uvu", true], [1, 0, 1, "uvu", false, 4]],
  "shared_weights": false, "irrep_normalization": "component", "path_normalization": "element"}"#;

#[test]
fn json_parses_and_round_trips() {
    let s = TpSpec::from_json(EXAMPLE).unwrap();
    assert_eq!(s.irreps_in1, irreps("2x0e+2x1o"));
    assert_eq!(s.instructions.len(), 3);
    assert_eq!(s.instructions[1].path_weight, 1.0);
    assert_eq!(
        s.instructions[2],
        Instruction::new(1, 0, 1, Uvu, false).with_path_weight(4.0)
    );
    assert!(!s.shared_weights);
    let again = TpSpec::from_json(&s.to_json()).unwrap();
    assert_eq!(again, s);
    // serde impls agree with from_json/to_json.
    let via_serde: TpSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(via_serde, s);
    let labeled = s.to_json_labeled("x");
    assert!(labeled.contains("\"label\":\"x\"") && labeled.contains("\"weight_numel\":4"));
    assert_eq!(TpSpec::from_json(&labeled).unwrap(), s);
}

#[test]
fn json_defaults_and_optional_fields() {
    let s = TpSpec::from_json(r#"{"irreps_in1": "0e", "irreps_in2": "0e", "irreps_out": "0e", "instructions": [[0,0,0,"uuu",false]]}"#).unwrap();
    assert!(!s.shared_weights);
    assert_eq!(s.irrep_normalization, IrrepNormalization::Component);
    assert_eq!(s.path_normalization, PathNormalization::Element);
    let s = TpSpec::from_json(r#"{"label": "a", "weight_numel": 1, "irreps_in1": "0e", "irreps_in2": "0e", "irreps_out": "0e", "instructions": [[0,0,0,"uuu",true]], "shared_weights": true, "irrep_normalization": "norm", "path_normalization": "none"}"#).unwrap();
    assert!(s.shared_weights);
    assert_eq!(s.irrep_normalization, IrrepNormalization::Norm);
    assert_eq!(s.path_normalization, PathNormalization::None);
}

fn json_err(s: &str) -> String {
    TpSpec::from_json(s).unwrap_err().to_string()
}

#[test]
fn json_errors() {
    let base = |extra: &str, ins: &str| {
        format!(
            r#"{{"irreps_in1": "2x0e", "irreps_in2": "0e", "irreps_out": "2x0e", "instructions": [{ins}]{extra}}}"#
        )
    };
    assert!(json_err(&base(r#", "bogus": 1"#, r#"[0,0,0,"uvu",true]"#)).contains("bogus"));
    assert!(
        json_err(&base(r#", "weight_numel": 3"#, r#"[0,0,0,"uvu",true]"#)).contains("weight_numel")
    );
    assert!(json_err(&base("", r#"[0,0,0,"uvx",true]"#)).contains("uvx"));
    assert!(
        json_err(&base("", r#"[0,0,0,"uvu",true],[0,0,-1,"uvu",true]"#)).contains("instruction 1")
    );
    assert!(json_err(&base("", r#"[0,0,0,"uvu"]"#)).contains("5 or 6"));
    assert!(json_err(&base("", r#"[0,0,0,"uvu",1]"#)).contains("has_weight"));
    assert!(json_err(&base(
        r#", "irrep_normalization": "foo""#,
        r#"[0,0,0,"uvu",true]"#
    ))
    .contains("irrep_normalization"));
    assert!(json_err(&base(
        r#", "path_normalization": "foo""#,
        r#"[0,0,0,"uvu",true]"#
    ))
    .contains("path_normalization"));
    assert!(json_err(
        r#"{"irreps_in1": "1x", "irreps_in2": "0e", "irreps_out": "0e", "instructions": []}"#
    )
    .contains("irreps_in1"));
    assert!(matches!(TpSpec::from_json("{"), Err(SpecError::Json(_))));
    assert!(matches!(TpSpec::from_json("[]"), Err(SpecError::Json(_))));
}

fn build_err(in1: &str, in2: &str, out: &str, ins: Instruction) -> SpecError {
    let spec = TpSpec::new(
        irreps(in1),
        irreps(in2),
        irreps(out),
        vec![Instruction::new(0, 0, 0, Uvw, true), ins],
        true,
    );
    spec.build().unwrap_err()
}

#[test]
fn build_errors_name_the_instruction_and_reason() {
    let cases = [
        (
            ("0e", "0e", "0e"),
            Instruction::new(1, 0, 0, Uvw, true),
            "out of range",
        ),
        (
            ("0e", "0e", "0e"),
            Instruction::new(0, 3, 0, Uvw, true),
            "irreps_in2 index 3",
        ),
        (
            ("0e", "0e", "0e"),
            Instruction::new(0, 0, 9, Uvw, true),
            "irreps_out index 9",
        ),
        (
            ("0e+1o", "0e+1o", "0e+1o"),
            Instruction::new(1, 1, 1, Uvw, true),
            "parity",
        ),
        (
            ("0e+1o", "0e+1o", "0e+3e"),
            Instruction::new(1, 1, 1, Uvw, true),
            "triangle",
        ),
        (
            ("0e+2x0e", "0e", "0e+3x0e"),
            Instruction::new(1, 0, 1, Uvu, true),
            "mo == m1",
        ),
        (
            ("0e+2x0e", "0e+3x0e", "0e+2x0e"),
            Instruction::new(1, 1, 1, Uvv, true),
            "mo == m2",
        ),
        (
            ("0e+2x0e", "0e+3x0e", "0e"),
            Instruction::new(1, 1, 0, Uuw, true),
            "m1 == m2",
        ),
        (
            ("0e+2x0e", "0e+2x0e", "0e+2x0e"),
            Instruction::new(1, 1, 1, Uuw, false),
            "mo == 1",
        ),
        (
            ("0e+2x0e", "0e+2x0e", "0e+3x0e"),
            Instruction::new(1, 1, 1, Uuu, true),
            "m1 == m2 == mo",
        ),
        (
            ("0e+2x0e", "0e+3x0e", "0e+5x0e"),
            Instruction::new(1, 1, 1, Uvuv, false),
            "mo == m1*m2",
        ),
        (
            ("0e+3x0e", "0e+3x0e", "0e+2x0e"),
            Instruction::new(1, 1, 1, UvuLtV, true),
            "mo == m1*(m1-1)/2",
        ),
        (
            ("0e+3x0e", "0e+2x0e", "0e+2x0e"),
            Instruction::new(1, 1, 1, ULtVw, true),
            "m1 == m2",
        ),
        (
            ("0e", "0e", "0e"),
            Instruction::new(0, 0, 0, Uvw, false),
            "requires has_weight",
        ),
        (
            ("0e", "0e", "0e"),
            Instruction::new(0, 0, 0, ULtVw, false),
            "requires has_weight",
        ),
        (
            ("0e", "0e", "0e"),
            Instruction::new(0, 0, 0, Uvw, true).with_path_weight(-1.0),
            "path_weight",
        ),
        (
            ("0e", "0e", "0e"),
            Instruction::new(0, 0, 0, Uvw, true).with_path_weight(f64::NAN),
            "path_weight",
        ),
        (
            ("17e", "17e", "0e"),
            Instruction::new(0, 0, 0, Uvw, true),
            "MAX_L",
        ),
    ];
    for ((a, b, o), ins, why) in cases {
        let e = build_err(a, b, o, ins);
        let SpecError::Instruction {
            index, instruction, ..
        } = &e
        else {
            panic!("{e}")
        };
        let msg = e.to_string();
        // The MAX_L case fails already at instruction 0 (all l are 17 there).
        if why != "MAX_L" {
            assert_eq!(*index, 1, "{msg}");
            assert_eq!(instruction, &ins.to_string());
        }
        assert!(msg.contains(why), "expected {why:?} in {msg:?}");
    }
}

#[test]
fn weight_offsets_skip_unweighted_instructions() {
    let spec = TpSpec::new(
        irreps("2x0e+3x1o"),
        irreps("0e+2x1o"),
        irreps("2x0e+3x1o+6x1e+3x1e"),
        vec![
            Instruction::new(1, 1, 2, Uvuv, false),
            Instruction::new(0, 0, 0, Uvw, true),
            Instruction::new(1, 0, 1, Uvu, false),
            Instruction::new(1, 1, 0, Uvw, true),
            Instruction::new(1, 1, 3, Uvu, true),
        ],
        true,
    );
    let tp = build(&spec);
    let offs: Vec<_> = tp.paths.iter().map(|p| p.weight_offset).collect();
    assert_eq!(offs, [None, Some(0), None, Some(4), Some(16)]);
    assert_eq!(tp.weight_numel, 22);
    assert_eq!(spec.weight_numel().unwrap(), 22);
    let p = &tp.paths[4];
    assert_eq!((p.in1_offset, p.in2_offset, p.out_offset), (2, 1, 29));
    assert_eq!((p.l1, p.l2, p.lo, p.m1, p.m2, p.mo), (1, 1, 1, 3, 2, 3));
    assert_eq!(p.path_shape, vec![3, 2]);
    assert_eq!(p.cg.len(), 6);
    assert_eq!((tp.dim_in1, tp.dim_in2, tp.dim_out), (11, 7, 38));
}

/// §3.4 by hand for every normalisation pair, including user path weights and several
/// instructions into one output.
#[test]
fn coefficients_follow_section_3_4() {
    let spec = |irn, pn| TpSpec {
        irreps_in1: irreps("2x0e+2x1o+3x1e"),
        irreps_in2: irreps("0e+1o+4x1o"),
        irreps_out: irreps("2x1o+3x0e"),
        instructions: vec![
            Instruction::new(0, 1, 0, Uvw, true), // N = 2·1
            Instruction::new(1, 0, 0, Uvu, true).with_path_weight(2.0), // N = 1
            Instruction::new(2, 2, 0, Uvv, false).with_path_weight(0.5), // 3x1e⊗4x1o→? (mo = m2 = 4 ≠ 2)
        ],
        shared_weights: true,
        irrep_normalization: irn,
        path_normalization: pn,
    };
    // The third instruction is invalid (uvv needs mo = m2); check the error then drop it.
    assert!(
        spec(IrrepNormalization::Component, PathNormalization::Element)
            .build()
            .is_err()
    );
    let spec = |irn, pn| {
        let mut s = spec(irn, pn);
        s.irreps_in2 = irreps("0e+1o+2x1o");
        s.instructions[2] = Instruction::new(2, 2, 0, Uvv, false).with_path_weight(0.5); // 3x1e⊗2x1o→2x1o? parity e·o=o ✓, N = m1 = 3
        s
    };
    let n = [2.0, 1.0, 3.0];
    let pw = [1.0, 2.0, 0.5];
    let l = [(0u32, 1u32), (1, 0), (1, 1)];
    for irn in [
        IrrepNormalization::Component,
        IrrepNormalization::Norm,
        IrrepNormalization::None,
    ] {
        for pn in [
            PathNormalization::Element,
            PathNormalization::Path,
            PathNormalization::None,
        ] {
            let tp = build(&spec(irn, pn));
            for k in 0..3 {
                let a = match irn {
                    IrrepNormalization::Component => 3.0,
                    IrrepNormalization::Norm => ((2 * l[k].0 + 1) * (2 * l[k].1 + 1)) as f64,
                    IrrepNormalization::None => 1.0,
                };
                let x = match pn {
                    PathNormalization::Element => n.iter().sum::<f64>(),
                    PathNormalization::Path => n[k] * 3.0,
                    PathNormalization::None => 1.0,
                };
                let c = (a / x * pw[k]).sqrt();
                assert!(
                    (tp.paths[k].coefficient - c).abs() < 1e-15,
                    "{irn:?} {pn:?} path {k}"
                );
            }
        }
    }
}

#[test]
fn zero_multiplicities_and_empty_irreps_are_valid() {
    let spec = TpSpec::new(
        irreps("0x0e+1o"),
        irreps("0x0e+1o"),
        irreps("0x0e+0e"),
        vec![
            Instruction::new(0, 0, 0, Uvw, true),
            Instruction::new(1, 1, 1, Uvw, true),
            Instruction::new(0, 0, 0, Uvu, true),
        ],
        true,
    );
    let tp = build(&spec);
    assert_eq!(tp.weight_numel, 1);
    assert_eq!(tp.paths[0].path_shape, vec![0, 0, 0]);
    // fan-in of out 0 is 0 → division skipped: c = sqrt(1).
    assert_eq!(tp.paths[0].coefficient, 1.0);
    let empty = TpSpec::new(irreps(""), irreps(""), irreps(""), vec![], false);
    let tp = build(&empty);
    assert_eq!(
        (tp.dim_in1, tp.dim_in2, tp.dim_out, tp.weight_numel),
        (0, 0, 0, 0)
    );
    // triangular modes with m = 0 or 1 have no pairs
    let spec = TpSpec::new(
        irreps("1x1o"),
        irreps("1x1o"),
        irreps("0x1e"),
        vec![Instruction::new(0, 0, 0, UvuLtV, true)],
        true,
    );
    assert_eq!(build(&spec).paths[0].path_shape, vec![0]);
}

#[test]
fn fully_connected_matches_golden_case_0() {
    let g = golden();
    let case = &g["tensor_product_cases"][0];
    let spec = fully_connected(
        &irreps("2x0e + 1x1o"),
        &irreps("1x0e + 1x1o"),
        &irreps("2x0e + 1x1o + 1x1e"),
        IrrepNormalization::Component,
        PathNormalization::Element,
    );
    let got: Vec<(usize, usize, usize)> = spec
        .instructions
        .iter()
        .map(|i| (i.i_in1, i.i_in2, i.i_out))
        .collect();
    let want: Vec<(usize, usize, usize)> = case["instructions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i[0].as_u64().unwrap() as usize,
                i[1].as_u64().unwrap() as usize,
                i[2].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn channelwise_matches_nequip_golden_and_mace_large() {
    let g = golden();
    let case = &g["tensor_product_cases"][1];
    let spec = channelwise(
        &irreps("2x0e + 2x1o"),
        &irreps("1x0e+1x1o+1x2e"),
        &irreps("0e+1o+2e"),
        false,
    );
    assert_eq!(
        spec.irreps_out.to_string(),
        case["irreps_out"].as_str().unwrap()
    );
    let got: Vec<(usize, usize, usize)> = spec
        .instructions
        .iter()
        .map(|i| (i.i_in1, i.i_in2, i.i_out))
        .collect();
    assert_eq!(
        got,
        [
            (0, 0, 0),
            (0, 1, 2),
            (0, 2, 5),
            (1, 0, 3),
            (1, 1, 1),
            (1, 1, 6),
            (1, 2, 4)
        ]
    );
    assert!(!spec.shared_weights);
    let tp = build(&spec);
    assert_eq!(tp.weight_numel, 14);
    let s3 = 3f64.sqrt();
    let s5 = 5f64.sqrt();
    for (p, c) in tp.paths.iter().zip([1.0, s3, s5, s3, 1.0, s5, s3]) {
        assert!((p.coefficient - c).abs() < 1e-15);
    }
    // MACE (instructions sorted by output) reproduces the paper suite's mace-large.
    let Some(text) = paper_suite_text() else {
        return;
    };
    let suite = load_suite(&text).unwrap();
    let (label, mace) = &suite[0];
    assert_eq!(label, "mace-large");
    let built = channelwise(
        &irreps("128x0e+128x1o+128x2e"),
        &Irreps::spherical_harmonics(3),
        &irreps("128x0e+128x1o+128x2e+128x3o"),
        true,
    );
    assert_eq!(&built, mace);
}
use equikern_core::Irreps;

#[test]
fn elementwise_and_full_match_golden() {
    let g = golden();
    let case = &g["tensor_product_cases"][2];
    let spec = elementwise(
        &irreps("1x0e + 2x1o"),
        &irreps("3x1o"),
        None,
        IrrepNormalization::Component,
    )
    .unwrap();
    assert_eq!(
        spec.irreps_in1.to_string(),
        case["irreps_in1"].as_str().unwrap()
    );
    assert_eq!(
        spec.irreps_in2.to_string(),
        case["irreps_in2"].as_str().unwrap()
    );
    assert_eq!(
        spec.irreps_out.to_string(),
        case["irreps_out"].as_str().unwrap()
    );
    assert_eq!(spec.instructions.len(), 4);
    assert!(elementwise(
        &irreps("2x0e"),
        &irreps("3x0e"),
        None,
        IrrepNormalization::Component
    )
    .is_err());
    let filtered = elementwise(
        &irreps("2x1o"),
        &irreps("2x1o"),
        Some(&[Irrep::new(1, equikern_core::Parity::Even)]),
        IrrepNormalization::Component,
    )
    .unwrap();
    assert_eq!(filtered.irreps_out.to_string(), "2x1e");

    let case = &g["tensor_product_cases"][3];
    let spec = full(
        &irreps("1x0e + 1x1o"),
        &irreps("1x1o + 1x2e"),
        None,
        IrrepNormalization::Component,
    );
    assert_eq!(
        spec.irreps_out.to_string(),
        case["irreps_out"].as_str().unwrap()
    );
    let got: Vec<(usize, usize, usize)> = spec
        .instructions
        .iter()
        .map(|i| (i.i_in1, i.i_in2, i.i_out))
        .collect();
    let want: Vec<(usize, usize, usize)> = case["instructions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i[0].as_u64().unwrap() as usize,
                i[1].as_u64().unwrap() as usize,
                i[2].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(spec
        .instructions
        .iter()
        .all(|i| i.mode == Uvuv && !i.has_weight));
}

#[test]
fn paper_suite_builds_with_listed_weight_numel() {
    let Some(text) = paper_suite_text() else {
        eprintln!("paper suite not found; skipped");
        return;
    };
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let listed: Vec<u64> = raw["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["weight_numel"].as_u64().unwrap())
        .collect();
    let suite = load_suite(&text).unwrap();
    assert_eq!(suite.len(), listed.len());
    for ((label, spec), n) in suite.iter().zip(listed) {
        let tp = spec.build().unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(tp.weight_numel as u64, n, "{label}");
        let c = cost(&tp);
        assert!(c.flops_forward > 0 && c.flops_backward > 0, "{label}");
    }
    // A wrong weight_numel is rejected, naming the problem.
    let bad = text.replacen("\"weight_numel\": 2176", "\"weight_numel\": 2175", 1);
    let e = load_suite(&bad).unwrap_err().to_string();
    assert!(
        e.contains("mace-large") && e.contains("weight_numel"),
        "{e}"
    );
}

#[test]
fn cost_model_counts() {
    // §7 example: nnz per path (0e0e0e:1, 0e1o1o:3, 1o0e1o:3, 1o1o0e:3, 1o1o1e:6).
    let spec = fully_connected(
        &irreps("2x0e + 1x1o"),
        &irreps("1x0e + 1x1o"),
        &irreps("2x0e + 1x1o + 1x1e"),
        IrrepNormalization::Component,
        PathNormalization::Element,
    );
    let tp = build(&spec);
    let c = cost(&tp);
    assert_eq!(c.cg_nnz, vec![1, 3, 3, 3, 6]);
    // s0·s1 = 2, 2, 1, 1, 1; weights (2lo+1)·∏shape = 1·4, 3·2, 3·1, 1·2, 3·1
    let fwd = 3 * (2 + 3 * 2 + 3 + 3 + 6) + (4 + 6 + 3 + 2 + 3);
    assert_eq!(c.flops_forward, fwd as u64);
    assert_eq!(c.flops_backward, 9 * (2 + 6 + 3 + 3 + 6));
    let t = traffic(&tp, 10, 4, true);
    // x 5, y 4, z 8 per sample; 10 shared weights once.
    assert_eq!(t.forward, 4 * (10 * (5 + 4 + 8) + 10));
    assert_eq!(t.backward, 4 * (2 * (10 * 9 + 10) + 80));
    assert_eq!(t.double_backward, 4 * (3 * (10 * 9 + 10) + 160));
    let t = traffic(&tp, 10, 8, false);
    assert_eq!(t.forward, 8 * (10 * (5 + 4 + 8) + 100));
}

#[test]
fn weight_numel_may_be_any_json_number() {
    let j = |n: &str| {
        format!(
            r#"{{"weight_numel": {n}, "irreps_in1": "0e", "irreps_in2": "0e", "irreps_out": "0e", "instructions": [[0,0,0,"uuu",true]]}}"#
        )
    };
    assert!(TpSpec::from_json(&j("1")).is_ok());
    assert!(TpSpec::from_json(&j("1.0")).is_ok());
    assert!(TpSpec::from_json(&j("1.5")).is_err());
    assert!(TpSpec::from_json(&j("\"1\"")).is_err());
}
