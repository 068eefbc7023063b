//! A deliberately broken emitter must make the suite fail: plans are lowered, then mutated
//! (a coefficient's sign flipped; one contribution dropped; every coefficient off by 1e-6) and
//! executed by the plan interpreter as the backend under test. The honest interpreter on the
//! same cases passes.

use equikern_conformance::backends::cpu::CpuBackend;
use equikern_conformance::backends::mutant::{MutantBackend, Mutation};
use equikern_conformance::corpus::{corpus, CorpusSize};
use equikern_conformance::{run, ConformanceBackend, Tolerances};

fn cases() -> Vec<equikern_conformance::Case> {
    let want = [
        "mode/uvw",
        "mode/uvu",
        "edge/shared-weights",
        "edge/unweighted",
        "edge/split-shared",
    ];
    let all = corpus(CorpusSize::Quick, 3).expect("corpus");
    let picked: Vec<_> = all
        .into_iter()
        .filter(|c| want.contains(&c.name.as_str()))
        .collect();
    assert_eq!(picked.len(), want.len(), "test cases present in the corpus");
    picked
}

#[test]
fn mutated_plans_fail_and_honest_ones_pass() {
    let cases = cases();
    for m in [
        Mutation::FlipSign,
        Mutation::DropContribution,
        Mutation::Perturb,
    ] {
        let backends: Vec<Box<dyn ConformanceBackend>> =
            vec![Box::new(CpuBackend), Box::new(MutantBackend::new(m))];
        let report = run(&cases, &backends, &Tolerances::default(), &mut |_| {});
        let mutant = backends[1].name().to_string();
        assert!(!report.pass(), "{m:?}: the suite passed a broken plan");
        for c in &report.cases {
            let honest_fail: Vec<_> = c
                .checks
                .iter()
                .filter(|r| r.backend == "cpu" && !r.pass)
                .collect();
            assert!(honest_fail.is_empty(), "{}: {honest_fail:?}", c.name);
            // Every pass of every case is judged against the oracle and the honest backend,
            // and the mutation reaches every plan: all three oracle checks and all three
            // cross checks must fail.
            for check in [
                "oracle.forward",
                "oracle.backward",
                "oracle.double_backward",
                "cross.forward",
                "cross.backward",
                "cross.double_backward",
            ] {
                let r = c
                    .checks
                    .iter()
                    .find(|r| r.backend == mutant && r.check == check)
                    .unwrap_or_else(|| panic!("{m:?} {}: no {check} row", c.name));
                assert!(
                    !r.pass,
                    "{m:?} {}: {check} passed (rel L2 {:e}, tol {:e})",
                    c.name, r.rel_l2, r.tol
                );
            }
        }
        let md = report.to_markdown();
        assert!(
            md.contains("**FAIL**") && md.contains("## Failures"),
            "{md}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("json");
        assert_eq!(json["pass"], serde_json::Value::Bool(false));
    }
}

/// The same on the real GPU path: mutated plans printed by the WGSL writer and run by the wgpu
/// runtime (lavapipe in CI) fail; the unmutated plans on the same runtime pass.
#[test]
fn mutated_plans_fail_on_wgpu() {
    use equikern_conformance::backends::wgpu_plan::WgpuPlanBackend;
    let honest = match WgpuPlanBackend::open(None) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    eprintln!("{}", honest.describe());
    let mut backends: Vec<Box<dyn ConformanceBackend>> = vec![Box::new(honest)];
    for m in [Mutation::FlipSign, Mutation::DropContribution] {
        backends.push(Box::new(
            WgpuPlanBackend::open(Some(m)).expect("second device"),
        ));
    }
    let cases: Vec<_> = cases()
        .into_iter()
        .filter(|c| c.name != "edge/split-shared")
        .collect();
    let report = run(&cases, &backends, &Tolerances::default(), &mut |_| {});
    assert!(!report.pass());
    for c in &report.cases {
        for r in &c.checks {
            if r.backend == "wgpu-plan" {
                assert!(r.pass, "{} honest {}: {r:?}", c.name, r.check);
            } else if r.check.starts_with("oracle.") || r.check.starts_with("cross.") {
                assert!(!r.pass, "{} {} {} passed", c.name, r.backend, r.check);
            }
        }
    }
}
