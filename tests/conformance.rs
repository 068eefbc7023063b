//! The quick conformance corpus on every backend present here (CI: cpu + wgpu on lavapipe).
//! `EQUIKERN_CONFORMANCE_REQUIRE_WGPU=1` turns a missing wgpu adapter into a failure, so CI
//! cannot silently skip the GPU path. The markdown report is written to
//! `target/conformance-quick.md`.

use std::time::Instant;

use equikern_conformance::corpus::{corpus, CorpusSize};
use equikern_conformance::{available_backends, run, BackendKind, Tolerances};

#[test]
fn quick_corpus_all_backends_present() {
    let t0 = Instant::now();
    let seed = std::env::var("EQUIKERN_CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let cases = corpus(CorpusSize::Quick, seed).expect("corpus");
    let (backends, skipped) = available_backends(&BackendKind::ALL);
    for b in &backends {
        eprintln!("backend {}: {}", b.name(), b.describe());
    }
    for (k, why) in &skipped {
        eprintln!("backend {} skipped: {why}", k.name());
        if *k == BackendKind::Wgpu
            && std::env::var("EQUIKERN_CONFORMANCE_REQUIRE_WGPU").is_ok_and(|v| v == "1")
        {
            panic!("wgpu is required here (EQUIKERN_CONFORMANCE_REQUIRE_WGPU=1) but: {why}");
        }
    }
    let mut last = Instant::now();
    let mut report = run(&cases, &backends, &Tolerances::default(), &mut |p| {
        if last.elapsed().as_secs_f64() > 5.0 || p.done == p.total {
            eprintln!("[{:>4}/{}] {} on {}", p.done, p.total, p.case, p.backend);
            last = Instant::now();
        }
    });
    report.skipped = skipped
        .iter()
        .map(|(k, w)| (k.name().to_string(), w.clone()))
        .collect();
    report.meta.push(format!("quick corpus, seed {seed}"));
    let md = report.to_markdown();
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance-quick.md");
    let _ = std::fs::write(&out, &md);
    eprintln!(
        "{} cases, {} checks, {:.1} s; report: {}",
        report.cases.len(),
        report.num_checks(),
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    let fails = report.failures();
    for (c, r) in &fails {
        eprintln!(
            "FAIL {} {} {} {}: max abs {:e}, rel L2 {:e}, tol {:e} ({})",
            c.name, r.backend, r.prec, r.check, r.max_abs, r.rel_l2, r.tol, r.note
        );
    }
    assert!(
        fails.is_empty(),
        "{} conformance checks failed",
        fails.len()
    );
}
