//! `equikern suite`: forward + backward of every problem of a suite on the best backend here,
//! timed, and checked on a small batch against the f64 CPU oracle.

use crate::engine::{self, Backend, Elem, Runner, TensorProduct};
use crate::error::{CliError, Result};
use crate::npy::Dtype;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::time::Instant;

/// The suite used when --suite is not given (benches/paper_suite.json, built in).
const DEFAULT_SUITE: &str = include_str!("../../../benches/paper_suite.json");

/// Largest accepted rel_err: f32 kernels round each product once per term (observed ~1e-6 on
/// the paper suite); f64 ones should be near machine precision.
const TOL_F32: f64 = 1e-4;
const TOL_F64: f64 = 1e-10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The best backend present: cuda, then wgpu (any adapter, lavapipe included), then cpu;
    /// cpu for --dtype f64.
    Auto,
    Cuda,
    Wgpu,
    Cpu,
}

/// Run every problem of a suite forward and backward, print a timing and accuracy table.
///
/// Inputs are seeded uniform random numbers in [-1, 1). Each direction is timed on --batch
/// samples (best of --repeat runs); GFLOP/s uses the FLOPs-per-sample counting of `equikern
/// info`. "rel_err" is max over outputs of ||out - ref||_2 / ||ref||_2 on the first
/// --check-batch samples, where ref is the f64 CPU oracle on the same (rounded) inputs; "check"
/// is FAIL above 1e-4 (f32) or 1e-10 (f64), and any FAIL makes the exit status 1.
#[derive(Args, Debug)]
pub struct SuiteArgs {
    /// Suite file ({"problems": [{"label", spec fields...}]}) [default: benches/paper_suite.json, built in].
    #[arg(long, value_name = "FILE")]
    suite: Option<PathBuf>,
    /// Samples per timed run [default: 50000 on a GPU (the paper's batch), 2000 on the CPU
    /// oracle, 200 for wgpu on a CPU adapter such as lavapipe].
    #[arg(long)]
    batch: Option<usize>,
    /// Samples compared with the f64 oracle.
    #[arg(long, default_value_t = 16)]
    check_batch: usize,
    /// Timed runs per direction (the best is reported).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Compute dtype.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Only problems whose label contains this string.
    #[arg(long)]
    filter: Option<String>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// One line of the table.
pub struct Row {
    pub problem: String,
    pub direction: &'static str,
    pub batch: usize,
    pub ms: f64,
    pub gflops: f64,
    pub rel_err: f64,
}

pub fn run(args: &SuiteArgs) -> Result<()> {
    let backend = match args.backend {
        // Only the CPU oracle computes in f64.
        BackendChoice::Auto if args.dtype == Dtype::F64 => Backend::Cpu,
        BackendChoice::Auto => Backend::best(),
        BackendChoice::Cuda => Backend::Cuda,
        BackendChoice::Wgpu => Backend::Wgpu,
        BackendChoice::Cpu => Backend::Cpu,
    };
    backend
        .check_available()
        .map_err(|e| CliError::input(format!("--backend {}: {e}", backend.name())))?;
    if backend != Backend::Cpu && args.dtype != Dtype::F32 {
        return Err(CliError::input(format!(
            "--backend {}: computes in f32 only: use --dtype f32",
            backend.name()
        )));
    }
    let batch = args.batch.unwrap_or(if backend.is_gpu() {
        50_000
    } else if backend == Backend::Cpu {
        2000
    } else {
        200
    });
    if args.repeat == 0 {
        return Err(CliError::input("--repeat must be at least 1"));
    }
    let (text, source) = match &args.suite {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| {
                CliError::input(format!("--suite {}: cannot read: {e}", p.display()))
            })?,
            p.display().to_string(),
        ),
        None => (
            DEFAULT_SUITE.to_string(),
            "benches/paper_suite.json (built in)".to_string(),
        ),
    };
    let problems: Vec<(String, TensorProduct)> = engine::build_suite(&text)
        .map_err(|e| CliError::input(format!("--suite {source}: {e}")))?
        .into_iter()
        .filter(|(label, _)| {
            args.filter
                .as_ref()
                .is_none_or(|f| label.contains(f.as_str()))
        })
        .collect();
    if problems.is_empty() {
        return Err(CliError::input(format!(
            "--suite {source}: no problems{}",
            args.filter
                .as_ref()
                .map(|f| format!(" matching --filter {f:?}"))
                .unwrap_or_default()
        )));
    }
    println!(
        "suite {source}: {} problems, backend {} ({}), dtype {}, batch {}, check batch {}",
        problems.len(),
        backend.name(),
        backend.describe(),
        args.dtype.name(),
        batch,
        args.check_batch.min(batch)
    );

    let tol = match args.dtype {
        Dtype::F32 => TOL_F32,
        Dtype::F64 => TOL_F64,
    };
    let bar = ProgressBar::new(problems.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for (label, tp) in &problems {
        bar.set_message(label.clone());
        let r = match args.dtype {
            Dtype::F32 => run_problem::<f32>(args, batch, backend, label, tp),
            Dtype::F64 => run_problem::<f64>(args, batch, backend, label, tp),
        }?;
        rows.extend(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    print!("{}", table(&rows, tol));
    let bad = rows.iter().filter(|r| !passes(r.rel_err, tol)).count();
    if bad > 0 {
        return Err(CliError::runtime(format!(
            "{bad} of {} results differ from the f64 oracle by more than {tol:.0e}",
            rows.len()
        )));
    }
    println!(
        "all {} results within {tol:.0e} of the f64 oracle",
        rows.len()
    );
    Ok(())
}

/// Seeded inputs for one problem: x, y, w, grad_z.
struct Inputs<T> {
    x: Vec<T>,
    y: Vec<T>,
    w: Vec<T>,
    gz: Vec<T>,
}

fn random_inputs<T: Elem>(tp: &TensorProduct, batch: usize, seed: u64) -> Inputs<T> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = |n: usize| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f64(rng.random_range(-1.0..1.0)))
            .collect()
    };
    let wn = if tp.spec.shared_weights {
        tp.weight_numel
    } else {
        batch * tp.weight_numel
    };
    Inputs {
        x: v(batch * tp.dim_in1),
        y: v(batch * tp.dim_in2),
        w: v(wn),
        gz: v(batch * tp.dim_out),
    }
}

impl<T: Elem> Inputs<T> {
    /// The first `n` samples (shared weights stay whole).
    fn head(&self, tp: &TensorProduct, n: usize) -> Inputs<T> {
        let w = if tp.spec.shared_weights {
            self.w.clone()
        } else {
            self.w[..n * tp.weight_numel].to_vec()
        };
        Inputs {
            x: self.x[..n * tp.dim_in1].to_vec(),
            y: self.y[..n * tp.dim_in2].to_vec(),
            w,
            gz: self.gz[..n * tp.dim_out].to_vec(),
        }
    }

    fn to_f64(&self) -> Inputs<f64> {
        let c = |v: &[T]| v.iter().map(|a| a.to_f64()).collect();
        Inputs {
            x: c(&self.x),
            y: c(&self.y),
            w: c(&self.w),
            gz: c(&self.gz),
        }
    }
}

/// max over outputs of ||a - b|| / ||b|| (0 when both are zero).
fn rel_err<T: Elem>(pairs: &[(&[T], &[f64])]) -> f64 {
    pairs
        .iter()
        .map(|(a, b)| {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (x, y) in a.iter().zip(b.iter()) {
                num += (x.to_f64() - y).powi(2);
                den += y * y;
            }
            if den == 0.0 {
                num.sqrt()
            } else {
                (num / den).sqrt()
            }
        })
        .fold(0.0, f64::max)
}

fn best_ms(repeat: usize, mut f: impl FnMut() -> std::result::Result<(), String>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat {
        let t = Instant::now();
        f().map_err(CliError::runtime)?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn run_problem<T: Elem>(
    args: &SuiteArgs,
    batch: usize,
    backend: Backend,
    label: &str,
    tp: &TensorProduct,
) -> Result<Vec<Row>> {
    let err = |e: String| CliError::runtime(format!("{label}: {e}"));
    let runner = Runner::<T>::new(backend, tp)
        .map_err(|e| CliError::input(format!("--backend {}: {e}", backend.name())))?;
    let reference = Runner::<f64>::new(Backend::Cpu, tp).map_err(err)?;
    let cost = engine::cost(tp);
    let n = batch;
    let inp = random_inputs::<T>(tp, n, args.seed);

    // Accuracy first: it also warms up (compiles kernels) before anything is timed.
    let m = args.check_batch.min(n);
    let small = inp.head(tp, m);
    let small64 = small.to_f64();
    let z = runner
        .forward(m, &small.x, &small.y, &small.w)
        .map_err(err)?;
    let z64 = reference
        .forward(m, &small64.x, &small64.y, &small64.w)
        .map_err(err)?;
    let g = runner
        .backward(m, &small.x, &small.y, &small.w, &small.gz)
        .map_err(err)?;
    let g64 = reference
        .backward(m, &small64.x, &small64.y, &small64.w, &small64.gz)
        .map_err(err)?;
    let fwd_err = rel_err::<T>(&[(&z, &z64)]);
    let bwd_err = rel_err::<T>(&[(&g.gx, &g64.gx), (&g.gy, &g64.gy), (&g.gw, &g64.gw)]);

    let fwd_ms = best_ms(args.repeat, || {
        runner.forward(n, &inp.x, &inp.y, &inp.w).map(drop)
    })
    .map_err(|e| err(e.msg))?;
    let bwd_ms = best_ms(args.repeat, || {
        runner
            .backward(n, &inp.x, &inp.y, &inp.w, &inp.gz)
            .map(drop)
    })
    .map_err(|e| err(e.msg))?;

    let gflops = |flops: u64, ms: f64| flops as f64 * n as f64 / (ms * 1e-3) / 1e9;
    Ok(vec![
        Row {
            problem: label.to_string(),
            direction: "forward",
            batch: n,
            ms: fwd_ms,
            gflops: gflops(cost.flops_forward, fwd_ms),
            rel_err: fwd_err,
        },
        Row {
            problem: label.to_string(),
            direction: "backward",
            batch: n,
            ms: bwd_ms,
            gflops: gflops(cost.flops_backward, bwd_ms),
            rel_err: bwd_err,
        },
    ])
}

/// NaN fails too.
fn passes(rel_err: f64, tol: f64) -> bool {
    rel_err <= tol
}

pub fn table(rows: &[Row], tol: f64) -> String {
    let w = rows
        .iter()
        .map(|r| r.problem.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut s = format!(
        "{:<w$}  {:<9} {:>7} {:>10} {:>9} {:>10}  check\n",
        "problem", "direction", "batch", "ms", "GFLOP/s", "rel_err"
    );
    for r in rows {
        let check = if passes(r.rel_err, tol) { "ok" } else { "FAIL" };
        s += &format!(
            "{:<w$}  {:<9} {:>7} {:>10.3} {:>9.3} {:>10.2e}  {check}\n",
            r.problem, r.direction, r.batch, r.ms, r.gflops, r.rel_err
        );
    }
    s
}
