//! The README's Rust example, kept compiling and checked against its comment.

use equikern::core::{oracle, TpSpec};

#[test]
fn readme_rust_example() -> Result<(), Box<dyn std::error::Error>> {
    let tp = TpSpec::from_json(
        r#"{"irreps_in1": "1x1o", "irreps_in2": "1x1o", "irreps_out": "1x0e + 1x1e",
            "instructions": [[0, 0, 0, "uuu", false], [0, 0, 1, "uuu", false]]}"#,
    )?
    .build()?;
    let (x, y) = ([1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]); // batch 1, Cartesian vectors
    let z = oracle::forward(&tp, 1, &x, &y, &[])?; // no weights: weight_numel is 0
                                                   // z = [x·y/√3, (x × y)/√2]
    let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
    let (a, b) = (x, y);
    let cross = [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ];
    let want = [
        dot / 3f64.sqrt(),
        cross[0] / 2f64.sqrt(),
        cross[1] / 2f64.sqrt(),
        cross[2] / 2f64.sqrt(),
    ];
    for (a, b) in z.iter().zip(want) {
        assert!((a - b).abs() < 1e-14, "{z:?} vs {want:?}");
    }
    let g = oracle::backward(&tp, 1, &x, &y, &[], &[1.0, 0.0, 0.0, 0.0])?;
    // d(x·y/√3)/dx = y/√3
    for (a, b) in g.gx.iter().zip(y) {
        assert!((a - b / 3f64.sqrt()).abs() < 1e-14);
    }
    Ok(())
}
