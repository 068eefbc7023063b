//! `equikern conformance`: the cross-backend conformance suite (crate
//! `equikern-conformance`) with a progress bar, markdown/JSON reports and an exit status.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use equikern_conformance::corpus::{corpus, CorpusSize};
use equikern_conformance::{available_backends, run, BackendKind, Tolerances};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{CliError, Result};

/// Run the conformance corpus on every backend present: forward, backward and double
/// backward in f32 and f64 against the f64 oracle and each other, gradients against finite
/// differences, equivariance, exact zeros, determinism. Exit status 1 on any failure.
#[derive(Args, Debug)]
pub struct ConformanceArgs {
    /// Comma-separated backends to test (cpu, wgpu, cuda; also wgpu-webgpu: wgpu with
    /// WebGPU-minimum capabilities, and browser: headless Chromium's WebGPU through the wasm
    /// package web/pkg, built by web/build.sh). Absent ones are skipped with the reason, unless
    /// EQUIKERN_CONFORMANCE_REQUIRE_<NAME>=1 (e.g. _BROWSER) makes that an error.
    #[arg(long, default_value = "cpu,wgpu,cuda", value_name = "LIST")]
    backends: String,
    /// The quick corpus (CI size; the default).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The full corpus (whole paper suite, more random specs, larger batches).
    #[arg(long)]
    full: bool,
    /// Seed of the random specs, inputs and rotations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only cases whose name contains this string.
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Write the markdown report here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run_cmd(args: &ConformanceArgs) -> Result<()> {
    let kinds = BackendKind::parse_list(&args.backends)
        .map_err(|e| CliError::input(format!("--backends: {e}")))?;
    let size = if args.full {
        CorpusSize::Full
    } else {
        CorpusSize::Quick
    };
    let mut cases = corpus(size, args.seed).map_err(|e| CliError::runtime(e.to_string()))?;
    if let Some(f) = &args.filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    let (backends, skipped) = available_backends(&kinds);
    for b in &backends {
        eprintln!("backend {}: {}", b.name(), b.describe());
    }
    for (k, why) in &skipped {
        eprintln!("backend {} skipped: {why}", k.name());
    }
    if let Some((k, why)) = skipped.iter().find(|(k, _)| k.required()) {
        return Err(CliError::runtime(format!(
            "backend {} is required here (EQUIKERN_CONFORMANCE_REQUIRE_{}=1) but: {why}",
            k.name(),
            k.name().to_ascii_uppercase().replace('-', "_")
        )));
    }
    if backends.is_empty() {
        return Err(CliError::runtime(
            "none of the requested backends is present",
        ));
    }
    let steps: usize = cases.len() * backends.iter().map(|b| b.precisions().len()).sum::<usize>();
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // A backend that panics fails its case; the run goes on (the tool's own hook would exit).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("conformance: a backend panicked (recorded as a failure): {info}");
    }));
    // Without a terminal (CI logs, GPU hosts) the bar is hidden: print a line now and then.
    let tty = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let mut report = run(&cases, &backends, &Tolerances::default(), &mut |p| {
        bar.set_position(p.done as u64);
        bar.set_message(format!("{} on {}", p.case, p.backend));
        if !tty && (last.elapsed().as_secs() >= 10 || p.done == p.total) {
            eprintln!("[{}/{}] {} on {}", p.done, p.total, p.case, p.backend);
            last = std::time::Instant::now();
        }
    });
    bar.finish_and_clear();
    std::panic::set_hook(hook);
    report.skipped = skipped
        .iter()
        .map(|(k, w)| (k.name().to_string(), w.clone()))
        .collect();
    let filter = args
        .filter
        .as_ref()
        .map_or(String::new(), |f| format!(" --filter {f:?}"));
    report.meta.push(format!(
        "{} corpus, seed {}, {} cases; `equikern conformance --backends {}{} --seed {}{filter}`",
        if args.full { "full" } else { "quick" },
        args.seed,
        cases.len(),
        args.backends,
        if args.full { " --full" } else { "" },
        args.seed
    ));
    let md = report.to_markdown();
    let write = |p: &PathBuf, s: &str| {
        std::fs::write(p, s).map_err(|e| CliError::runtime(format!("writing {}: {e}", p.display())))
    };
    if let Some(p) = &args.report {
        write(p, &md)?;
    }
    if let Some(p) = &args.json {
        write(p, &report.to_json())?;
    }
    // The header and summary (up to the per-case table) on stdout.
    let summary = md.split("\n## Cases").next().unwrap_or(&md);
    println!("{}", summary.trim_end());
    let fails = report.failures().len();
    if fails > 0 {
        return Err(CliError::runtime(format!(
            "{fails} of {} conformance checks failed",
            report.num_checks()
        )));
    }
    Ok(())
}
