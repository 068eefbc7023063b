//! Conformance against e3nn: every value in `tests/fixtures/e3nn_fixtures.json` (written by
//! `tests/fixtures/gen_e3nn_fixtures.py` with e3nn and torch) must be reproduced to 1e-12
//! relative. Each test reports every mismatching case at once, not just the first.

use equikern::core::oracle;
use equikern::core::so3::{self, ShNormalization};
use equikern::core::TpSpec;
use serde_json::Value;

const TOL: f64 = 1e-12;

fn fixtures() -> Option<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/e3nn_fixtures.json"
    );
    match std::fs::read_to_string(path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("e3nn_fixtures.json is valid JSON")),
        Err(_) => {
            eprintln!("skipped: {path} not present (run tests/fixtures/gen_e3nn_fixtures.py)");
            None
        }
    }
}

/// Flattens nested JSON arrays of numbers.
fn f64s(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(f64s).collect(),
        other => vec![other.as_f64().expect("number")],
    }
}

/// max |a - b| / max |b| (max |a - b| when b is all zeros); infinite on a length mismatch.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    let scale = b.iter().fold(0.0f64, |m, y| m.max(y.abs()));
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

fn report(what: &str, failures: &[String], checked: usize) {
    assert!(checked > 0, "{what}: nothing checked");
    assert!(
        failures.is_empty(),
        "{what}: {} of {checked} cases differ from e3nn:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn wigner_3j_matches_e3nn() {
    let Some(f) = fixtures() else { return };
    let mut failures = Vec::new();
    let triples = f["wigner_3j"].as_array().expect("wigner_3j list");
    for t in triples {
        let l: Vec<u32> = t["l"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ours = match so3::wigner_3j(l[0], l[1], l[2]) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{l:?}: {e}"));
                continue;
            }
        };
        let (n2, n3) = (2 * l[1] as usize + 1, 2 * l[2] as usize + 1);
        let mut want = vec![0.0; ours.dense.len()];
        for nz in t["nonzeros"].as_array().unwrap() {
            let v = f64s(nz);
            let (i, j, k) = (v[0] as usize, v[1] as usize, v[2] as usize);
            want[(i * n2 + j) * n3 + k] = v[3];
        }
        let e = rel_err(&ours.dense, &want);
        if e > TOL {
            failures.push(format!("{l:?}: rel err {e:.2e}"));
        }
    }
    report("wigner_3j", &failures, triples.len());
}

#[test]
fn wigner_d_matches_e3nn() {
    let Some(f) = fixtures() else { return };
    let mut failures = Vec::new();
    let cases = f["wigner_D"].as_array().expect("wigner_D list");
    for c in cases {
        let l = c["l"].as_u64().unwrap() as u32;
        let a = f64s(&c["angles"]);
        let want = f64s(&c["matrix"]);
        match so3::wigner_d(l, a[0], a[1], a[2]) {
            Ok(d) => {
                let e = rel_err(&d, &want);
                if e > TOL {
                    failures.push(format!("l={l} angles={a:?}: rel err {e:.2e}"));
                }
            }
            Err(e) => failures.push(format!("l={l} angles={a:?}: {e}")),
        }
    }
    report("wigner_D", &failures, cases.len());
}

#[test]
fn spherical_harmonics_match_e3nn() {
    let Some(f) = fixtures() else { return };
    let mut failures = Vec::new();
    let cases = f["spherical_harmonics"].as_array().expect("SH list");
    for c in cases {
        let ls: Vec<u32> = f64s(&c["ls"]).iter().map(|&l| l as u32).collect();
        let v = f64s(&c["vector"]);
        let normalize = c["normalize"].as_bool().unwrap();
        let name = c["normalization"].as_str().unwrap();
        let norm = match name {
            "component" => ShNormalization::Component,
            "norm" => ShNormalization::Norm,
            "integral" => ShNormalization::Integral,
            other => panic!("unknown normalization {other}"),
        };
        let want = f64s(&c["values"]);
        match so3::spherical_harmonics(&ls, [v[0], v[1], v[2]], normalize, norm) {
            Ok(y) => {
                let e = rel_err(&y, &want);
                if e > TOL {
                    failures.push(format!(
                        "v={v:?} normalize={normalize} {name}: rel err {e:.2e}"
                    ));
                }
            }
            Err(e) => failures.push(format!("v={v:?} normalize={normalize} {name}: {e}")),
        }
    }
    report("spherical_harmonics", &failures, cases.len());
}

/// Checks one tensor-product case; returns what differs.
fn check_tp_case(c: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let spec = match TpSpec::from_json(&c["spec"].to_string()) {
        Ok(s) => s,
        Err(e) => return vec![format!("spec: {e}")],
    };
    let tp = match spec.build() {
        Ok(tp) => tp,
        Err(e) => return vec![format!("build: {e}")],
    };
    if tp.weight_numel as u64 != c["weight_numel"].as_u64().unwrap() {
        bad.push(format!(
            "weight_numel {} != {}",
            tp.weight_numel, c["weight_numel"]
        ));
    }
    let coeffs = f64s(&c["coefficients"]);
    let shapes = c["path_shapes"].as_array().unwrap();
    if coeffs.len() != tp.paths.len() {
        bad.push(format!(
            "{} paths, e3nn has {}",
            tp.paths.len(),
            coeffs.len()
        ));
        return bad;
    }
    for (k, p) in tp.paths.iter().enumerate() {
        let e = rel_err(&[p.coefficient], &[coeffs[k]]);
        if e > TOL {
            bad.push(format!(
                "path {k} coefficient {} != {}",
                p.coefficient, coeffs[k]
            ));
        }
        let want: Vec<usize> = f64s(&shapes[k]).iter().map(|&d| d as usize).collect();
        if p.path_shape != want {
            bad.push(format!(
                "path {k} path_shape {:?} != {want:?}",
                p.path_shape
            ));
        }
    }
    let batch = c["batch"].as_u64().unwrap() as usize;
    let g = |k: &str| f64s(&c[k]);
    let (x, y, w, gz) = (g("x"), g("y"), g("w"), g("grad_z"));
    let mut cmp = |what: &str, ours: &[f64], key: &str| {
        let e = rel_err(ours, &g(key));
        if e > TOL {
            bad.push(format!("{what}: rel err {e:.2e}"));
        }
    };
    match oracle::forward(&tp, batch, &x, &y, &w) {
        Ok(z) => cmp("forward z", &z, "z"),
        Err(e) => cmp(&format!("forward ({e})"), &[], "z"),
    }
    match oracle::backward(&tp, batch, &x, &y, &w, &gz) {
        Ok(gr) => {
            cmp("backward grad_x", &gr.gx, "grad_x");
            cmp("backward grad_y", &gr.gy, "grad_y");
            cmp("backward grad_w", &gr.gw, "grad_w");
        }
        Err(e) => cmp(&format!("backward ({e})"), &[], "grad_x"),
    }
    let (hx, hy, hw) = (g("hx"), g("hy"), g("hw"));
    match oracle::double_backward(&tp, batch, &x, &y, &w, &gz, &hx, &hy, &hw) {
        Ok(d) => {
            cmp("double backward dx", &d.dx, "dd_x");
            cmp("double backward dy", &d.dy, "dd_y");
            cmp("double backward dw", &d.dw, "dd_w");
            cmp("double backward dgrad_z", &d.dgz, "dd_grad_z");
        }
        Err(e) => cmp(&format!("double backward ({e})"), &[], "dd_x"),
    }
    bad
}

#[test]
fn tensor_products_match_e3nn() {
    let Some(f) = fixtures() else { return };
    let cases = f["tensor_products"]
        .as_array()
        .expect("tensor_products list");
    let mut failures = Vec::new();
    for c in cases {
        let bad = check_tp_case(c);
        if !bad.is_empty() {
            failures.push(format!(
                "{}: {}",
                c["name"].as_str().unwrap(),
                bad.join("; ")
            ));
        }
    }
    report("tensor_products", &failures, cases.len());
}

#[test]
fn fixtures_cover_the_brief() {
    let Some(f) = fixtures() else { return };
    let names: Vec<&str> = f["tensor_products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for mode in ["uvw", "uvu", "uvv", "uuw", "uuu", "uvuv", "uvu<v", "u<vw"] {
        for norms in ["component-element", "norm-path", "none-none"] {
            let prefix = format!("sweep-{mode}-w-{norms}-");
            assert!(
                names.iter().any(|n| n.starts_with(&prefix)),
                "no case {prefix}*"
            );
        }
    }
    for special in ["mixed-modes-unwritten-block", "high-l", "zero-multiplicity"] {
        assert!(names.contains(&special), "no case {special}");
    }
}
