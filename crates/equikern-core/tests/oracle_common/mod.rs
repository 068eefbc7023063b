//! Helpers shared by the spec/oracle integration tests.
#![allow(dead_code)]

use equikern_core::{Irreps, TensorProduct, TpSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// The e3nn 0.6.0 golden values (`tests/fixtures/e3nn_golden.json` at the workspace root).
pub fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/e3nn_golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden JSON")).expect("valid JSON")
}

/// The OpenEquivariance paper suite: a copy in `tests/fixtures` (so CI has it), else the
/// shared original.
pub fn paper_suite_text() -> Option<String> {
    let copy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/paper_suite.json"
    );
    std::fs::read_to_string(copy)
        .or_else(|_| std::fs::read_to_string("/work/shared/problems/paper_suite.json"))
        .ok()
}

pub fn f64s(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(f64s).collect(),
        other => vec![other.as_f64().expect("number")],
    }
}

pub fn irreps(s: &str) -> Irreps {
    Irreps::parse(s).expect("irreps")
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in [-1, 1) (never all zeros).
pub fn randv(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn norm_inf(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// max |a-b| / max(‖b‖∞, tiny).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let d = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    d / norm_inf(b).max(1e-300)
}

/// Random x, y, w for `batch` samples.
pub fn random_inputs(
    tp: &TensorProduct,
    batch: usize,
    seed: u64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut r = rng(seed);
    let x = randv(&mut r, batch * tp.dim_in1);
    let y = randv(&mut r, batch * tp.dim_in2);
    let w = randv(&mut r, tp.weight_len(batch).unwrap());
    (x, y, w)
}

pub fn build(spec: &TpSpec) -> TensorProduct {
    spec.build().unwrap_or_else(|e| panic!("build failed: {e}"))
}
