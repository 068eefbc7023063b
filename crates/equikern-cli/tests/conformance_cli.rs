//! `equikern conformance` end to end on the CPU backend (a filtered quick corpus): reports
//! written, exit status 0; bad flags exit 2 with one line.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_equikern"))
}

#[test]
fn conformance_cpu_subset_passes_and_writes_reports() {
    let dir = std::env::temp_dir().join(format!("equikern-conf-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let (md, json) = (dir.join("r.md"), dir.join("r.json"));
    let out = bin()
        .args([
            "conformance",
            "--backends",
            "cpu",
            "--filter",
            "edge/batch",
            "--seed",
            "5",
        ])
        .arg("--report")
        .arg(&md)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("**PASS**") && stdout.contains("| cpu | f64 |"),
        "{stdout}"
    );
    let md = std::fs::read_to_string(&md).expect("markdown report");
    assert!(md.contains("## Cases") && md.contains("edge/batch1-shared"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid");
    assert_eq!(v["pass"], serde_json::Value::Bool(true));
    assert_eq!(v["cases"].as_array().map(Vec::len), Some(4));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn conformance_bad_flags_exit_2() {
    for args in [
        vec!["conformance", "--backends", "tpu"],
        vec!["conformance", "--quick", "--full"],
    ] {
        let out = bin().args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// A browser backend that cannot open (here: no wasm package) is a skip with the reason, or,
/// with EQUIKERN_CONFORMANCE_REQUIRE_BROWSER=1, an error (exit 1).
#[test]
fn conformance_missing_browser_skips_or_fails_when_required() {
    let dir = std::env::temp_dir().join(format!("equikern-conf-cli-nopkg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let args = [
        "conformance",
        "--backends",
        "cpu,browser",
        "--filter",
        "edge/batch1-shared",
    ];
    let out = bin()
        .args(args)
        .env("EQUIKERN_WASM_PKG", &dir)
        .env_remove("EQUIKERN_CONFORMANCE_REQUIRE_BROWSER")
        .output()
        .expect("run");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("backend browser skipped: backend browser unavailable: no wasm package"),
        "{stderr}"
    );
    assert!(stdout.contains("backend `browser` skipped"), "{stdout}");
    let out = bin()
        .args(args)
        .env("EQUIKERN_WASM_PKG", &dir)
        .env("EQUIKERN_CONFORMANCE_REQUIRE_BROWSER", "1")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("backend browser is required here (EQUIKERN_CONFORMANCE_REQUIRE_BROWSER=1)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
