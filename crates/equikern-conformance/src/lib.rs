//! equikern's cross-backend conformance suite.
//!
//! * [`corpus`]: the cases (paper suite, e3nn-style builders over seeded random irreps, every
//!   connection mode alone and mixed, edge cases), `quick` for CI and `full` for a GPU host.
//! * [`backends`]: the [`ConformanceBackend`] trait and its implementations — `cpu` (oracle in
//!   f32, plan interpreter in f64), `wgpu` (the facade), `cuda` (feature `cuda`), `browser`
//!   (headless Chromium's WebGPU through the wasm package, over WebDriver; feature `browser`),
//!   and [`backends::mutant`], a deliberately broken plan executor that must fail.
//! * [`checks`]: per case, backend and precision — forward, backward and double backward
//!   against the f64 oracle, against the other backends, against finite differences of the
//!   backend's own lower-order pass, equivariance under rotations and reflections, exact
//!   zeros where no instruction writes, determinism.
//! * [`report`]: markdown and JSON.
//!
//! Entry point: [`run`]. See `docs/conformance.md` for what each check proves.

pub mod backends;
pub mod checks;
pub mod corpus;
pub mod data;
pub mod report;

pub use backends::{available_backends, BackendKind, BoundOp, ConformanceBackend};
pub use checks::{CheckResult, Tolerances};
pub use corpus::{Case, CorpusSize};
pub use report::Report;

use serde::Serialize;

/// Floating-point precision a backend runs a case in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Prec {
    F32,
    F64,
}

impl Prec {
    pub fn name(self) -> &'static str {
        match self {
            Prec::F32 => "f32",
            Prec::F64 => "f64",
        }
    }
}

impl std::fmt::Display for Prec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of the suite itself (a backend failing a case is a failed check, not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backend {backend}: {why}")]
    Backend { backend: String, why: String },
    #[error("backend {backend} unavailable: {why}")]
    Unavailable { backend: String, why: String },
    #[error("corpus: {0}")]
    Corpus(String),
    #[error("unknown backend {0:?} (expected cpu, wgpu, cuda, wgpu-webgpu or browser)")]
    UnknownBackend(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Progress of a run, reported once per (case, backend, precision) step.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    pub case: &'a str,
    pub backend: &'a str,
}

/// Run every case on every backend (in both precisions where the backend has them).
/// `progress` is called after each step. Never panics on backend failures: they are
/// recorded as failed checks with the error message.
pub fn run(
    cases: &[Case],
    backends: &[Box<dyn ConformanceBackend>],
    tol: &Tolerances,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Report {
    let total: usize = cases.len() * backends.iter().map(|b| b.precisions().len()).sum::<usize>();
    let mut report = Report::new(backends);
    let mut done = 0;
    for case in cases {
        let rows = checks::run_case(case, backends, tol, &mut |b| {
            done += 1;
            progress(Progress {
                done,
                total,
                case: &case.name,
                backend: b,
            });
        });
        report.push_case(case, rows);
    }
    report
}
