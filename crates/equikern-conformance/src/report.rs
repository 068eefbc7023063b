//! The report: every check of every case, a summary per backend and precision, markdown and
//! JSON renderings.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::backends::ConformanceBackend;
use crate::checks::CheckResult;
use crate::corpus::Case;
use crate::Prec;

/// One case with its results.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub group: String,
    pub spec: String,
    pub batch: usize,
    pub split: Option<u32>,
    pub seed: u64,
    pub checks: Vec<CheckResult>,
}

impl CaseReport {
    pub fn pass(&self) -> bool {
        self.checks.iter().all(|c| c.pass)
    }
}

/// Totals of one backend in one precision.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub backend: String,
    pub prec: String,
    pub cases: usize,
    pub cases_failed: usize,
    pub checks: usize,
    pub checks_failed: usize,
    /// Worst `rel_l2 / tol` per check kind (`oracle.forward`, `fd.backward`, …; exact checks
    /// report their max abs instead).
    pub worst: BTreeMap<String, Worst>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Worst {
    pub rel_l2: f64,
    pub max_abs: f64,
    pub tol: f64,
    pub case: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// `(name, description)` of the backends that ran.
    pub backends: Vec<(String, String)>,
    /// `(name, reason)` of the backends that were asked for but are not present.
    pub skipped: Vec<(String, String)>,
    pub cases: Vec<CaseReport>,
    /// Free-form header lines (corpus, seed, command).
    pub meta: Vec<String>,
}

/// Check kind without the pass suffix: `equiv.rotation.forward` → `equiv.rotation`.
fn kind(check: &str) -> String {
    match check.split('.').collect::<Vec<_>>().as_slice() {
        ["oracle", p] => format!("oracle.{p}"),
        [a, b, _] => format!("{a}.{b}"),
        [a, _] if *a == "cross" => "cross".into(),
        _ => check.to_string(),
    }
}

fn fmt_e(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.is_finite() {
        format!("{v:.1e}")
    } else {
        "inf".into()
    }
}

impl Report {
    pub fn new(backends: &[Box<dyn ConformanceBackend>]) -> Report {
        Report {
            backends: backends
                .iter()
                .map(|b| (b.name().to_string(), b.describe()))
                .collect(),
            ..Report::default()
        }
    }

    pub fn push_case(&mut self, case: &Case, checks: Vec<CheckResult>) {
        self.cases.push(CaseReport {
            name: case.name.clone(),
            group: case.group.clone(),
            spec: case.spec.to_json(),
            batch: case.batch,
            split: case.split,
            seed: case.seed,
            checks,
        });
    }

    pub fn pass(&self) -> bool {
        self.cases.iter().all(CaseReport::pass)
    }

    pub fn failures(&self) -> Vec<(&CaseReport, &CheckResult)> {
        self.cases
            .iter()
            .flat_map(|c| c.checks.iter().filter(|r| !r.pass).map(move |r| (c, r)))
            .collect()
    }

    pub fn num_checks(&self) -> usize {
        self.cases.iter().map(|c| c.checks.len()).sum()
    }

    /// Totals per backend and precision, in first-seen order.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut order: Vec<(String, Prec)> = Vec::new();
        let mut map: BTreeMap<(String, Prec), Summary> = BTreeMap::new();
        for c in &self.cases {
            let mut seen: BTreeMap<(String, Prec), bool> = BTreeMap::new();
            for r in &c.checks {
                let key = (r.backend.clone(), r.prec);
                if !map.contains_key(&key) {
                    order.push(key.clone());
                }
                let s = map.entry(key.clone()).or_insert_with(|| Summary {
                    backend: r.backend.clone(),
                    prec: r.prec.name().into(),
                    ..Summary::default()
                });
                s.checks += 1;
                if !r.pass {
                    s.checks_failed += 1;
                }
                *seen.entry(key).or_insert(true) &= r.pass;
                let ratio = |w: &Worst| {
                    if w.tol > 0.0 {
                        w.rel_l2 / w.tol
                    } else {
                        w.max_abs
                    }
                };
                let cand = Worst {
                    rel_l2: r.rel_l2,
                    max_abs: r.max_abs,
                    tol: r.tol,
                    case: c.name.clone(),
                };
                let e = s
                    .worst
                    .entry(kind(&r.check))
                    .or_insert_with(|| cand.clone());
                let (a, b) = (ratio(&cand), ratio(e));
                if a > b || a.is_nan() {
                    *e = cand;
                }
            }
            for (key, ok) in seen {
                if let Some(s) = map.get_mut(&key) {
                    s.cases += 1;
                    if !ok {
                        s.cases_failed += 1;
                    }
                }
            }
        }
        order.into_iter().filter_map(|k| map.remove(&k)).collect()
    }

    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            pass: bool,
            summary: Vec<Summary>,
            #[serde(flatten)]
            report: &'a Report,
        }
        let out = Out {
            pass: self.pass(),
            summary: self.summaries(),
            report: self,
        };
        // Infinite errors become null in JSON; that is what serde_json does with non-finite
        // floats, and the `pass` flags carry the verdict.
        serde_json::to_string_pretty(&out).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The markdown report: header, summary, failures, per-case table.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# equikern conformance report\n");
        for m in &self.meta {
            let _ = writeln!(s, "- {m}");
        }
        for (n, d) in &self.backends {
            let _ = writeln!(s, "- backend `{n}`: {d}");
        }
        for (n, why) in &self.skipped {
            let _ = writeln!(s, "- backend `{n}` skipped: {why}");
        }
        let verdict = if self.pass() { "PASS" } else { "FAIL" };
        let _ = writeln!(
            s,
            "\n**{verdict}**: {} cases, {} checks, {} failed.\n",
            self.cases.len(),
            self.num_checks(),
            self.failures().len()
        );
        let _ = writeln!(s, "## Summary\n");
        let _ = writeln!(
            s,
            "| backend | prec | cases (failed) | checks (failed) | worst oracle F / B / DB (rel L2) | worst fd B / DB | worst equiv rot / refl | zeros | determinism |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for m in self.summaries() {
            let w = |k: &str| m.worst.get(k).map_or("-".into(), |w| fmt_e(w.rel_l2));
            let _ = writeln!(
                s,
                "| {} | {} | {} ({}) | {} ({}) | {} / {} / {} | {} / {} | {} / {} | {} | {} |",
                m.backend,
                m.prec,
                m.cases,
                m.cases_failed,
                m.checks,
                m.checks_failed,
                w("oracle.forward"),
                w("oracle.backward"),
                w("oracle.double_backward"),
                w("fd.backward"),
                w("fd.double_backward"),
                w("equiv.rotation"),
                w("equiv.reflection"),
                m.worst
                    .get("zeros")
                    .map_or("-".into(), |w| fmt_e(w.max_abs)),
                m.worst
                    .get("determinism")
                    .map_or("-", |w| if w.rel_l2 == 0.0 {
                        "bitwise"
                    } else {
                        "DIFFERS"
                    }),
            );
        }
        let fails = self.failures();
        if !fails.is_empty() {
            let _ = writeln!(s, "\n## Failures\n");
            let _ = writeln!(
                s,
                "| case | backend | prec | check | max abs | rel L2 | tol | note |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
            for (c, r) in fails {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.name,
                    r.backend,
                    r.prec,
                    r.check,
                    fmt_e(r.max_abs),
                    fmt_e(r.rel_l2),
                    fmt_e(r.tol),
                    r.note.replace('|', "\\|")
                );
            }
        }
        let _ = writeln!(s, "\n## Cases\n");
        let _ = writeln!(
            s,
            "Per case, backend and precision: max abs error / rel. L2 error against the f64 oracle for each pass, the tolerance (F/B, DB), and the other checks passed (cross-backend, finite differences, equivariance, zeros, determinism).\n"
        );
        let _ = writeln!(
            s,
            "| case | batch | backend | prec | forward | backward | double backward | tol F,B / DB | other checks | pass |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for c in &self.cases {
            let mut keys: Vec<(String, Prec)> = Vec::new();
            for r in &c.checks {
                let k = (r.backend.clone(), r.prec);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            for (b, p) in keys {
                let rows: Vec<&CheckResult> = c
                    .checks
                    .iter()
                    .filter(|r| r.backend == b && r.prec == p)
                    .collect();
                let get = |name: &str| rows.iter().find(|r| r.check == name);
                let cell = |name: &str| {
                    get(name).map_or("-".into(), |r| {
                        format!("{} / {}", fmt_e(r.max_abs), fmt_e(r.rel_l2))
                    })
                };
                let tol = |name: &str| get(name).map_or("-".into(), |r| fmt_e(r.tol));
                let other: Vec<&&CheckResult> = rows
                    .iter()
                    .filter(|r| !r.check.starts_with("oracle."))
                    .collect();
                let other_ok = other.iter().filter(|r| r.pass).count();
                let split = c
                    .split
                    .map_or(String::new(), |n| format!(" (≤{n}/dispatch)"));
                let _ = writeln!(
                    s,
                    "| {} | {}{} | {} | {} | {} | {} | {} | {} / {} | {}/{} | {} |",
                    c.name,
                    c.batch,
                    split,
                    b,
                    p,
                    cell("oracle.forward"),
                    cell("oracle.backward"),
                    cell("oracle.double_backward"),
                    tol("oracle.forward"),
                    tol("oracle.double_backward"),
                    other_ok,
                    other.len(),
                    if rows.iter().all(|r| r.pass) {
                        "✓"
                    } else {
                        "✗"
                    }
                );
            }
        }
        s
    }
}
