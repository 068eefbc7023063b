//! Helpers shared by the so3 integration tests.
#![allow(dead_code)]

use serde_json::Value;

/// The e3nn 0.6.0 golden values (`tests/fixtures/e3nn_golden.json` at the workspace root).
pub fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/e3nn_golden.json"
    );
    let text = std::fs::read_to_string(path).expect("golden JSON");
    serde_json::from_str(&text).expect("valid JSON")
}

pub fn f64s(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(f64s).collect(),
        other => vec![other.as_f64().expect("number")],
    }
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Tiny deterministic generator (SplitMix64) for uniform numbers in [0, 1).
pub struct Uniform(pub u64);

impl Uniform {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
