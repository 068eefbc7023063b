//! The `browser` backend in headless Chromium: a small subset of the quick corpus against the
//! oracle and the cpu backend, the native API's error messages through the page, and the
//! negative control (Chromium without `--enable-unsafe-webgpu` must report no adapter, not
//! pass). Needs chromium, chromedriver and the wasm package (`web/build.sh`); without them the
//! tests print why and skip, unless `EQUIKERN_CONFORMANCE_REQUIRE_BROWSER=1` (CI).
#![cfg(feature = "browser")]

use std::sync::Arc;

use equikern_conformance::backends::browser::{BrowserBackend, BrowserOptions};
use equikern_conformance::corpus::{corpus, CorpusSize};
use equikern_conformance::{run, BackendKind, ConformanceBackend, Prec, Tolerances};

/// The backend, or `None` (printed reason) where the machine lacks what it needs.
fn open(o: &BrowserOptions) -> Option<equikern_conformance::Result<BrowserBackend>> {
    match BrowserBackend::open_with(o) {
        Err(equikern_conformance::Error::Unavailable { why, .. })
            if !BackendKind::Browser.required() && prerequisite_missing(&why) =>
        {
            eprintln!("SKIPPED: browser backend unavailable: {why}");
            None
        }
        r => Some(r),
    }
}

/// Absent software (a skip) as opposed to a browser that runs but fails (an error).
fn prerequisite_missing(why: &str) -> bool {
    why.contains("not found on PATH") || why.contains("no wasm package")
}

#[test]
fn quick_subset_in_the_browser() {
    let Some(b) = open(&BrowserOptions::from_env()) else {
        return;
    };
    let b = b.unwrap_or_else(|e| panic!("browser backend: {e}"));
    eprintln!("backend browser: {}", b.describe());
    assert!(!b.adapter().is_empty() && b.adapter() != "?");
    // Every connection mode, a mixed spec with unwritten outputs, per-sample and shared
    // weights, batch 0, and forced batch splitting.
    let want = [
        "mode/uvw",
        "mode/uvu",
        "mode/uuu",
        "mixed/0",
        "edge/shared-weights",
        "edge/batch0",
        "edge/split-shared",
    ];
    let cases: Vec<_> = corpus(CorpusSize::Quick, 1)
        .expect("corpus")
        .into_iter()
        .filter(|c| want.contains(&c.name.as_str()))
        .collect();
    assert_eq!(cases.len(), want.len(), "corpus names changed: {want:?}");
    let cpu = BackendKind::Cpu.open().expect("cpu backend");
    let backends: Vec<Box<dyn ConformanceBackend>> = vec![cpu, Box::new(b)];
    let report = run(&cases, &backends, &Tolerances::default(), &mut |_| {});
    let browser_checks: Vec<_> = report
        .cases
        .iter()
        .flat_map(|c| c.checks.iter())
        .filter(|r| r.backend == "browser")
        .collect();
    for (c, r) in report.failures() {
        eprintln!(
            "FAIL {} {} {} {}: rel L2 {:e}, tol {:e} ({})",
            c.name, r.backend, r.prec, r.check, r.rel_l2, r.tol, r.note
        );
    }
    // Every case ran in the browser, was compared with the oracle and with cpu (f32), and was
    // checked for determinism.
    for c in &report.cases {
        for check in [
            "oracle.forward",
            "oracle.double_backward",
            "cross.backward",
            "determinism",
        ] {
            assert!(
                c.checks
                    .iter()
                    .any(|r| r.backend == "browser" && r.check == check),
                "{}: no browser {check} check",
                c.name
            );
        }
    }
    assert!(report.pass(), "{} failures", report.failures().len());
    eprintln!(
        "{} cases, {} browser checks passed",
        report.cases.len(),
        browser_checks.len()
    );
}

#[test]
fn native_errors_reach_the_driver() {
    let Some(b) = open(&BrowserOptions::from_env()) else {
        return;
    };
    let b = b.unwrap_or_else(|e| panic!("browser backend: {e}"));
    let case = corpus(CorpusSize::Quick, 1)
        .expect("corpus")
        .into_iter()
        .find(|c| c.name == "mode/uvw")
        .expect("mode/uvw");
    let tp = Arc::new(case.spec.build().expect("spec"));
    let op = b.bind(&tp, Prec::F32, None).expect("bind");
    let x = vec![0.5; 2 * tp.dim_in1 - 1];
    let y = vec![0.25; 2 * tp.dim_in2];
    let w = vec![1.0; tp.weight_len(2).expect("weights")];
    let e = op
        .forward(2, &x, &y, &w)
        .expect_err("a short x must be rejected");
    assert!(e.to_string().contains("argument x"), "{e}");
    assert!(b.bind(&tp, Prec::F64, None).is_err(), "f64 in the browser");
    // The op still works after the error.
    let x = vec![0.5; 2 * tp.dim_in1];
    let z = op.forward(2, &x, &y, &w);
    assert_eq!(z.expect("forward").len(), 2 * tp.dim_out);
}

#[test]
fn negative_control_without_webgpu_flag() {
    let o = BrowserOptions {
        webgpu: false,
        ..BrowserOptions::from_env()
    };
    let Some(r) = open(&o) else {
        return;
    };
    match r {
        Ok(b) => panic!(
            "the browser backend opened without --enable-unsafe-webgpu: {}",
            b.describe()
        ),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("negative control: {msg}");
            assert!(
                msg.to_lowercase().contains("no adapters"),
                "expected 'no adapters', got: {msg}"
            );
        }
    }
}
