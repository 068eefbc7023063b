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

/// A backend that panics (or errors) fails its case; the run goes on.
#[test]
fn panicking_and_failing_backends_are_failures_not_crashes() {
    use equikern_conformance::{BoundOp, Prec};
    use equikern_core::oracle::{DoubleGrads, Grads};
    use std::sync::Arc;

    struct Bad(bool);
    struct BadOp(bool);
    impl BoundOp for BadOp {
        fn forward(
            &self,
            _: usize,
            _: &[f64],
            _: &[f64],
            _: &[f64],
        ) -> equikern_conformance::Result<Vec<f64>> {
            if self.0 {
                panic!("deliberate");
            }
            Err(equikern_conformance::Error::Backend {
                backend: "bad".into(),
                why: "deliberate error".into(),
            })
        }
        fn backward(
            &self,
            _: usize,
            _: &[f64],
            _: &[f64],
            _: &[f64],
            _: &[f64],
        ) -> equikern_conformance::Result<Grads<f64>> {
            unreachable!()
        }
        fn double_backward(
            &self,
            _: usize,
            _: [&[f64]; 7],
        ) -> equikern_conformance::Result<DoubleGrads<f64>> {
            unreachable!()
        }
    }
    impl ConformanceBackend for Bad {
        fn name(&self) -> &str {
            if self.0 {
                "panics"
            } else {
                "errors"
            }
        }
        fn describe(&self) -> String {
            self.name().into()
        }
        fn precisions(&self) -> Vec<Prec> {
            vec![Prec::F32]
        }
        fn deterministic(&self) -> bool {
            true
        }
        fn splits(&self, _: Prec) -> bool {
            false
        }
        fn bind(
            &self,
            _: &Arc<equikern_core::TensorProduct>,
            _: Prec,
            _: Option<u32>,
        ) -> equikern_conformance::Result<Box<dyn BoundOp + '_>> {
            Ok(Box::new(BadOp(self.0)))
        }
    }
    let backends: Vec<Box<dyn ConformanceBackend>> = vec![
        Box::new(Bad(true)),
        Box::new(Bad(false)),
        Box::new(CpuBackend),
    ];
    let cases: Vec<_> = cases().into_iter().take(2).collect();
    let report = run(&cases, &backends, &Tolerances::default(), &mut |_| {});
    assert!(!report.pass());
    for c in &report.cases {
        let run_rows: Vec<_> = c.checks.iter().filter(|r| r.check == "run").collect();
        assert_eq!(run_rows.len(), 2, "{}", c.name);
        assert!(run_rows[0].note.contains("panicked: deliberate"));
        assert!(run_rows[1].note.contains("deliberate error"));
        assert!(c
            .checks
            .iter()
            .filter(|r| r.backend == "cpu")
            .all(|r| r.pass));
    }
}
