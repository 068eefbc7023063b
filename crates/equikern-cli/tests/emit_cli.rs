//! `equikern emit`: every target prints source for every direction; bad requests exit 2.

use std::process::Command;

const SPEC: &str = r#"{"irreps_in1": "2x0e+2x1o", "irreps_in2": "1x0e+3x1o",
  "irreps_out": "2x1o+2x0e+1x2e",
  "instructions": [[0, 1, 0, "uvu", true, 1.0], [1, 1, 1, "uvw", true, 1.0]]}"#;

fn emit(args: &[&str]) -> (i32, String, String) {
    // One file per call: the tests run in parallel threads of one process, and a shared
    // file was truncated by one while the other's child read it (CI, session 14).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("equikern-emit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join(format!("spec-{call}.json"));
    std::fs::write(&spec, SPEC).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_equikern"))
        .arg("emit")
        .arg("--spec")
        .arg(&spec)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_target_and_direction_prints_source() {
    for dir in ["forward", "backward", "double-backward"] {
        let (code, wgsl, err) = emit(&["--target", "wgsl", "--direction", dir]);
        assert_eq!(code, 0, "{err}");
        assert!(wgsl.contains("@compute"), "wgsl {dir}");
        for target in ["cuda", "hip"] {
            let (code, src, err) =
                emit(&["--target", target, "--direction", dir, "--dtype", "f64"]);
            assert_eq!(code, 0, "{err}");
            assert!(
                src.contains("__global__") && src.contains("double"),
                "{target} {dir}"
            );
        }
    }
    // Backward is one kernel per output tensor (GX, GY, GW).
    let (_, cuda, _) = emit(&["--target", "cuda", "--direction", "backward"]);
    assert_eq!(cuda.matches("__global__").count(), 3);
    let (code, plan, _) = emit(&["--plan"]);
    assert_eq!(code, 0);
    assert!(plan.contains("kernel forward"));
}

#[test]
fn f64_wgsl_is_an_input_error() {
    let (code, out, err) = emit(&["--target", "wgsl", "--dtype", "f64"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("f32 only"), "{err}");
}
