//! `equikern bench`: device-timed throughput of every problem of a suite, counted the way the
//! peers' benchmark (`shared/peers/bench_peers.py`) counts, plus our own floor.
//!
//! * Timing: CUDA events (cuda), timestamp queries written before and after all passes of a
//!   direction in one encoder (wgpu, when the adapter offers `TIMESTAMP_QUERY` inside
//!   encoders; otherwise the host clock around submit + wait), the host clock (cpu). Warm-up
//!   runs first, then the median of `--reps` runs. Inputs are random (never zeros), resident on
//!   the device, and rotate among several sets when one set would fit in a 50 MB L2.
//! * Rates: FLOPs and bytes exactly as the peers' script (OpenEquivariance's formulas; double
//!   backward uses the backward formulas, as the script does).
//! * Floor: the bytes the direction must move with shared weights counted once
//!   (`cost::traffic(.., true)`), over a device-to-device copy bandwidth measured in this process
//!   (read + write bytes); `pct_floor` = floor_ms / ms × 100.

use crate::engine::{self, Backend, Elem, Runner, TensorProduct};
use crate::error::{CliError, Result};
use crate::npy::Dtype;
use clap::Args;
use equikern::core::spec::cost;
use equikern::plan::Direction;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// The suite used when --suite is not given (benches/paper_suite.json, built in).
const DEFAULT_SUITE: &str = include_str!("../../../benches/paper_suite.json");

/// An input set smaller than this is rotated with others, so repeated runs do not time the L2
/// (50 MB on an H100): sets are added until the rotation covers twice this.
const L2_BYTES: u64 = 50 << 20;
const MAX_SETS: usize = 8;

/// Time every problem of a suite on one backend: device time per direction (median of
/// --reps), GFLOP/s and GB/s counted as the peers' script counts, and % of our byte floor.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Where to run [default: the best present: cuda, then wgpu, then cpu].
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Suite file ({"problems": [...]}) [default: benches/paper_suite.json, built in].
    #[arg(long, value_name = "FILE")]
    suite: Option<PathBuf>,
    /// Samples per run.
    #[arg(long, default_value_t = 50_000)]
    batch: usize,
    /// Directions, comma-separated: forward, backward, double_backward [default: all three;
    /// with --conv: forward,backward].
    #[arg(long)]
    dirs: Option<String>,
    /// Compute dtype (f64: cuda and cpu).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Timed runs per direction (the median is reported).
    #[arg(long, default_value_t = 30)]
    pub reps: usize,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Write the rows as JSON ({"device", "backend", "copy_gbps", "rows": [...]}) here.
    #[arg(long, value_name = "OUT")]
    pub json: Option<PathBuf>,
    /// Only these problems (comma-separated labels, exact).
    #[arg(long, value_name = "LABELS")]
    only: Option<String>,
    /// Size of each buffer of the copy-bandwidth measurement, MiB [default: 1024 on a GPU,
    /// 64 otherwise].
    #[arg(long)]
    copy_mib: Option<u64>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Benchmark the fused graph convolution instead: graphs (--graphs) × problems, fused
    /// deterministic / atomic and the unfused path (--variants).
    #[arg(long, help_heading = "Convolution")]
    conv: bool,
    /// Graphs for --conv, comma-separated: diamond:CELLS:CUTOFF (periodic diamond carbon,
    /// 8·CELLS³ atoms, radius graph), protein:CUTOFF (adenylate kinase 4AKE, radius graph),
    /// skewed:NODES:EDGES (random, power-law in-degree). Edges are sorted by (receiver, sender).
    #[arg(
        long,
        default_value = "diamond:23:2.6,protein:5.0,skewed:100000:1000000",
        help_heading = "Convolution"
    )]
    graphs: String,
    /// Variants for --conv, comma-separated: det (fused, deterministic), pieces (fused,
    /// deterministic, hub ranges cut into --piece-edges pieces), atomic (fused, float atomics:
    /// cuda), unfused (gather + TP over all edges + atomic scatter: cuda), det-rows /
    /// pieces-rows (det / pieces with channel fusion off: row kernels, for A/B), det-1g (det
    /// with the fused forward's output blocks in one group, for A/B); the last three not
    /// default [default: what the backend has].
    #[arg(long, help_heading = "Convolution")]
    variants: Option<String>,
    /// Edges per piece of the `pieces` variant (deterministic two-level sums).
    #[arg(long, default_value_t = 64, help_heading = "Convolution")]
    piece_edges: u32,
    /// Write the --conv graphs here as .npy (int64 receiver/sender) + graphs.json, for the
    /// peers' script (benches/bench_conv_peers.py), before timing.
    #[arg(long, value_name = "DIR", help_heading = "Convolution")]
    export_graphs: Option<PathBuf>,
    /// With --conv and --export-graphs: build and write the graphs, then stop (no timing).
    #[arg(long, help_heading = "Convolution")]
    export_only: bool,
    /// Seconds one (problem, direction) may take: slower directions get fewer timed runs
    /// (at least 5; the row's "reps" says how many) [default: no limit].
    #[arg(long, value_name = "SECONDS")]
    row_limit_s: Option<f64>,
    /// Benchmark a SevenNet checkpoint end to end instead (energy, forces, stress per step on
    /// --systems): ms per step (model only and with the neighbour list), atoms/s, per-phase
    /// breakdown, first call, peak device memory. Uses --backend, --dtype, --reps, --warmup,
    /// --json.
    #[arg(long, value_name = "CKPT", help_heading = "Model")]
    pub model: Option<PathBuf>,
    /// Systems for --model, comma-separated: si:N (diamond Si, a = 5.43 Å, N = 8k³) and
    /// water:N (N = 3m³ molecules' atoms, periodic cube at 1 g/cm³, seeded orientations).
    #[arg(
        long,
        default_value = "si:4096,water:1029,si:13824,si:32768",
        help_heading = "Model"
    )]
    pub systems: String,
    /// With --model: write each of --systems as extended XYZ (`DIR/<system>.extxyz`) for the
    /// peers' script (benches/bench_model_peers.py), then stop (no timing).
    #[arg(long, value_name = "DIR", help_heading = "Model")]
    pub export_systems: Option<PathBuf>,
}

/// What one (problem, direction) measured.
#[derive(Clone, Debug, Default)]
struct Measured {
    ms: f64,
    min_ms: f64,
    reps: usize,
    input_sets: usize,
    timing: &'static str,
    /// First preparation of this direction (CUDA: emit + NVRTC + load, fresh disk cache;
    /// wgpu: lowering + WGSL + pipeline creation).
    compile_ms: f64,
    /// Preparation again (CUDA: from the disk cache into a fresh module cache; wgpu: the
    /// runtime's in-memory pipeline cache).
    compile_cached_ms: f64,
    compile_detail: String,
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Forward => "forward",
        Direction::Backward => "backward",
        Direction::DoubleBackward => "double_backward",
    }
}

fn parse_dirs(s: &str) -> Result<Vec<Direction>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim() {
            "forward" => Ok(Direction::Forward),
            "backward" => Ok(Direction::Backward),
            "double_backward" => Ok(Direction::DoubleBackward),
            other => Err(CliError::input(format!(
                "--dirs: unknown direction {other:?} (forward, backward, double_backward)"
            ))),
        })
        .collect()
}

/// The peers' counting (bench_peers.py → OpenEquivariance `benchmark/metrics.py`): FLOPs and
/// bytes of one batch. Double backward is charged as backward, as the script does.
pub fn peer_counts(tp: &TensorProduct, d: Direction, batch: usize, elem: usize) -> (u64, u64) {
    let c = cost::cost(tp);
    let t = cost::traffic(tp, batch, elem, false);
    let b = batch as u64;
    match d {
        Direction::Forward => (b * c.flops_forward, t.forward),
        _ => (b * c.flops_backward, t.backward),
    }
}

/// Bytes the direction must move, shared weights once (our floor's numerator).
pub fn floor_bytes(tp: &TensorProduct, d: Direction, batch: usize, elem: usize) -> u64 {
    let t = cost::traffic(tp, batch, elem, true);
    match d {
        Direction::Forward => t.forward,
        Direction::Backward => t.backward,
        Direction::DoubleBackward => t.double_backward,
    }
}

fn median(mut t: Vec<f64>) -> (f64, f64) {
    t.sort_by(f64::total_cmp);
    let n = t.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let m = if n % 2 == 1 {
        t[n / 2]
    } else {
        0.5 * (t[n / 2 - 1] + t[n / 2])
    };
    (m, t[0])
}

/// How many input sets to rotate among so that the rotation covers 2 × L2.
fn input_sets(set_bytes: u64) -> usize {
    if set_bytes >= L2_BYTES {
        return 1;
    }
    ((2 * L2_BYTES).div_ceil(set_bytes.max(1)) as usize).clamp(2, MAX_SETS)
}

fn random_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    // Uniform in [-1, 1), never zero: a xorshift stream seeded from `rng` (fast enough for
    // gigabytes of inputs; the seed keeps runs reproducible).
    let mut s: u64 = rng.random::<u64>() | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // 2^-23 steps in [-1, 1), shifted off zero by half a step.
            ((s >> 40) as f64 + 0.5) / (1u64 << 23) as f64 - 1.0
        })
        .collect()
}

/// Warm-up and timed runs for a row, given one run's host time: with --row-limit-s, a
/// direction whose runs would take longer is timed fewer times (at least 5; the row's
/// `reps` says how many).
fn plan_reps(args: &BenchArgs, probe_ms: f64) -> (usize, usize) {
    match args.row_limit_s {
        Some(limit) if probe_ms * (args.warmup + args.reps) as f64 > limit * 1e3 => {
            let warmup = args.warmup.min(2);
            let fit = (limit * 1e3 / probe_ms.max(1e-6)) as usize;
            (warmup, fit.saturating_sub(warmup).clamp(5, args.reps))
        }
        _ => (args.warmup, args.reps),
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(ckpt) = &args.model {
        if args.conv {
            return Err(CliError::input(
                "--model and --conv are separate benchmarks",
            ));
        }
        return crate::bench_model::run(args, ckpt);
    }
    if args.export_systems.is_some() {
        return Err(CliError::input("--export-systems goes with --model"));
    }
    if !args.conv && (args.export_only || args.export_graphs.is_some()) {
        return Err(CliError::input(
            "--export-graphs / --export-only go with --conv",
        ));
    }
    if args.conv {
        return conv_bench::run(args);
    }
    let backend = args.backend.unwrap_or_else(Backend::best);
    backend
        .check_available()
        .map_err(|e| CliError::input(format!("--backend {}: {e}", backend.name())))?;
    if args.dtype == Dtype::F64 && !backend.has_f64() {
        return Err(CliError::input(format!(
            "--backend {}: computes in f32 only: use --dtype f32",
            backend.name()
        )));
    }
    if args.reps == 0 {
        return Err(CliError::input("--reps must be at least 1"));
    }
    if args.batch == 0 {
        return Err(CliError::input("--batch must be at least 1"));
    }
    let dirs = parse_dirs(
        args.dirs
            .as_deref()
            .unwrap_or("forward,backward,double_backward"),
    )?;
    if dirs.is_empty() {
        return Err(CliError::input("--dirs: no direction given"));
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
    let all = engine::build_suite(&text)
        .map_err(|e| CliError::input(format!("--suite {source}: {e}")))?;
    let only: Option<Vec<&str>> = args.only.as_deref().map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    });
    if let Some(o) = &only {
        for l in o {
            if !all.iter().any(|(label, _)| label == l) {
                return Err(CliError::input(format!(
                    "--only: no problem labelled {l:?} in {source}"
                )));
            }
        }
    }
    let problems: Vec<(String, TensorProduct)> = all
        .into_iter()
        .filter(|(l, _)| only.as_ref().is_none_or(|o| o.contains(&l.as_str())))
        .collect();
    if problems.is_empty() {
        return Err(CliError::input(format!("--suite {source}: no problems")));
    }
    let elem = match args.dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    let dtype_name = match args.dtype {
        Dtype::F32 => "float32",
        Dtype::F64 => "float64",
    };
    let imp = format!("equikern-{}", backend.name());
    let mut timer = Timer::open(backend)?;
    let copy_mib = args
        .copy_mib
        .unwrap_or(if backend.is_gpu() { 1024 } else { 64 })
        .max(1);
    let (copy_gbps, copy_timing) = timer
        .copy_bandwidth(copy_mib << 20)
        .map_err(|e| CliError::runtime(format!("copy bandwidth: {e}")))?;
    println!(
        "bench {source}: {} problems × {} directions, backend {} ({}), dtype {}, batch {}, reps {} (median), copy bandwidth {:.1} GB/s ({} MiB, {})",
        problems.len(),
        dirs.len(),
        backend.name(),
        backend.describe(),
        dtype_name,
        args.batch,
        args.reps,
        copy_gbps,
        copy_mib,
        copy_timing
    );
    let pb = ProgressBar::new((problems.len() * dirs.len()) as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let header = json!({
        "device": backend.describe(),
        "backend": backend.name(),
        "impl": imp,
        "timing": timer.timing_name(),
        "copy_gbps": copy_gbps,
        "copy_bytes": 2 * (copy_mib << 20),
        "copy_timing": copy_timing,
        "batch": args.batch,
        "dtype": dtype_name,
        "reps": args.reps,
        "warmup": args.warmup,
    });
    let mut rows: Vec<Value> = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    for (label, tp) in &problems {
        for &d in &dirs {
            pb.set_message(format!("{label} {}", dir_name(d)));
            let (flops, bytes) = peer_counts(tp, d, args.batch, elem);
            let fb = floor_bytes(tp, d, args.batch, elem);
            let floor_ms = fb as f64 / (copy_gbps * 1e6);
            let mut row = json!({
                "problem": label,
                "direction": dir_name(d),
                "impl": imp,
                "batch": args.batch,
                "dtype": dtype_name,
                "flops": flops,
                "bytes": bytes,
                "floor_bytes": fb,
                "floor_ms": floor_ms,
                "copy_gbps": copy_gbps,
            });
            let t0 = Instant::now();
            let r = match args.dtype {
                Dtype::F32 => timer.measure::<f32>(tp, d, args, &mut rng),
                Dtype::F64 => timer.measure::<f64>(tp, d, args, &mut rng),
            };
            let o = row.as_object_mut().expect("object");
            match r {
                Ok(m) => {
                    o.insert("ms".into(), json!(m.ms));
                    o.insert("min_ms".into(), json!(m.min_ms));
                    o.insert("gflops".into(), json!(flops as f64 / (m.ms * 1e6)));
                    o.insert("gbps".into(), json!(bytes as f64 / (m.ms * 1e6)));
                    o.insert("pct_floor".into(), json!(100.0 * floor_ms / m.ms));
                    o.insert("timing".into(), json!(m.timing));
                    o.insert("reps".into(), json!(m.reps));
                    o.insert("input_sets".into(), json!(m.input_sets));
                    o.insert("compile_ms".into(), json!(m.compile_ms));
                    o.insert("compile_cached_ms".into(), json!(m.compile_cached_ms));
                    o.insert("compile_detail".into(), json!(m.compile_detail));
                    say(&pb, format!(
                        "{label:<26} {:<16} {:>10.4} ms {:>9.1} GFLOP/s {:>8.1} GB/s {:>6.1}% of floor  [{}; compile {:.0} ms, cached {:.1} ms]",
                        dir_name(d),
                        m.ms,
                        flops as f64 / (m.ms * 1e6),
                        bytes as f64 / (m.ms * 1e6),
                        100.0 * floor_ms / m.ms,
                        m.timing,
                        m.compile_ms,
                        m.compile_cached_ms
                    ));
                }
                Err(e) => {
                    o.insert("ms".into(), Value::Null);
                    o.insert("error".into(), json!(e));
                    say(&pb, format!("{label:<26} {:<16} error: {e}", dir_name(d)));
                }
            }
            o.insert(
                "wall_s".into(),
                json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0),
            );
            rows.push(row);
            // Rewritten after every row: a run cut short still leaves its rows.
            if let Some(path) = &args.json {
                write_json(path, &header, &rows)?;
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let failed = rows.iter().filter(|r| r["ms"].is_null()).count();
    if let Some(path) = &args.json {
        println!("wrote {} rows to {}", rows.len(), path.display());
    }
    if failed > 0 {
        return Err(CliError::runtime(format!(
            "{failed} of {} measurements failed (see the rows above)",
            rows.len()
        )));
    }
    Ok(())
}

/// `header` with `"rows": rows`, pretty-printed to `path`.
fn write_json(path: &std::path::Path, header: &Value, rows: &[Value]) -> Result<()> {
    let mut doc = header.clone();
    if let Some(o) = doc.as_object_mut() {
        o.insert("rows".into(), Value::Array(rows.to_vec()));
    }
    let text = serde_json::to_string_pretty(&doc)
        .map_err(|e| CliError::runtime(format!("--json: {e}")))?;
    std::fs::write(path, text)
        .map_err(|e| CliError::runtime(format!("--json {}: cannot write: {e}", path.display())))
}

/// A line above the progress bar (or plain, when the bar is hidden: not a terminal).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        println!("{line}");
    } else {
        pb.println(line);
    }
}

/// Backend-specific timing.
enum Timer {
    Cpu,
    Wgpu(wgpu_timer::WgpuTimer),
    Cuda(cuda_timer::CudaTimer),
}

impl Timer {
    fn open(backend: Backend) -> Result<Timer> {
        let dev = backend
            .facade_device()
            .map_err(|e| CliError::input(format!("--backend {}: {e}", backend.name())))?;
        Ok(match backend {
            Backend::Cpu => Timer::Cpu,
            Backend::Wgpu => Timer::Wgpu(wgpu_timer::WgpuTimer::new(dev).map_err(CliError::input)?),
            Backend::Cuda => Timer::Cuda(cuda_timer::CudaTimer::new(dev).map_err(CliError::input)?),
        })
    }

    fn timing_name(&self) -> &'static str {
        match self {
            Timer::Cpu => "host",
            Timer::Wgpu(w) => w.timing_name(),
            Timer::Cuda(_) => "events",
        }
    }

    /// Device-to-device copy bandwidth, GB/s (read + write bytes), and how it was timed.
    fn copy_bandwidth(&mut self, bytes: u64) -> std::result::Result<(f64, &'static str), String> {
        match self {
            Timer::Cpu => {
                let n = (bytes / 8) as usize;
                let src: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
                let mut dst = vec![0f64; n];
                let mut t = Vec::new();
                for _ in 0..5 {
                    let t0 = Instant::now();
                    dst.copy_from_slice(&src);
                    std::hint::black_box(&mut dst);
                    t.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                let (ms, _) = median(t);
                Ok((2.0 * (n * 8) as f64 / (ms * 1e6), "host"))
            }
            Timer::Wgpu(w) => w.copy_bandwidth(bytes),
            Timer::Cuda(c) => c.copy_bandwidth(bytes),
        }
    }

    fn measure<T: Elem + MaybeCuda>(
        &mut self,
        tp: &TensorProduct,
        d: Direction,
        args: &BenchArgs,
        rng: &mut ChaCha8Rng,
    ) -> std::result::Result<Measured, String> {
        match self {
            Timer::Cpu => cpu_measure::<T>(tp, d, args, rng),
            Timer::Wgpu(w) => w.measure::<T>(tp, d, args, rng),
            Timer::Cuda(c) => T::cuda_measure(c, tp, d, args, rng),
        }
    }
}

/// f32 and f64 both run on CUDA; the bound keeps `Timer::measure` generic.
trait MaybeCuda: Sized {
    fn cuda_measure(
        c: &mut cuda_timer::CudaTimer,
        tp: &TensorProduct,
        d: Direction,
        args: &BenchArgs,
        rng: &mut ChaCha8Rng,
    ) -> std::result::Result<Measured, String>;
}

impl MaybeCuda for f32 {
    fn cuda_measure(
        c: &mut cuda_timer::CudaTimer,
        tp: &TensorProduct,
        d: Direction,
        args: &BenchArgs,
        rng: &mut ChaCha8Rng,
    ) -> std::result::Result<Measured, String> {
        c.measure::<f32>(tp, d, args, rng)
    }
}

impl MaybeCuda for f64 {
    fn cuda_measure(
        c: &mut cuda_timer::CudaTimer,
        tp: &TensorProduct,
        d: Direction,
        args: &BenchArgs,
        rng: &mut ChaCha8Rng,
    ) -> std::result::Result<Measured, String> {
        c.measure::<f64>(tp, d, args, rng)
    }
}

/// The CPU oracle, timed with the host clock (inputs rotate among sets as on a GPU).
fn cpu_measure<T: Elem>(
    tp: &TensorProduct,
    d: Direction,
    args: &BenchArgs,
    rng: &mut ChaCha8Rng,
) -> std::result::Result<Measured, String> {
    let t0 = Instant::now();
    let runner = Runner::<T>::new(Backend::Cpu, tp)?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let b = args.batch;
    let wl = if tp.spec.shared_weights {
        tp.weight_numel
    } else {
        b * tp.weight_numel
    };
    let lens = [
        b * tp.dim_in1,
        b * tp.dim_in2,
        wl,
        b * tp.dim_out,
        b * tp.dim_in1,
        b * tp.dim_in2,
        wl,
    ];
    let set_bytes: u64 = lens
        .iter()
        .map(|n| (n * std::mem::size_of::<T>()) as u64)
        .sum();
    let nsets = input_sets(set_bytes).min(2);
    let sets: Vec<Vec<Vec<T>>> = (0..nsets)
        .map(|_| {
            lens.iter()
                .map(|&n| random_vec(rng, n).into_iter().map(T::from_f64).collect())
                .collect()
        })
        .collect();
    let once = |s: &Vec<Vec<T>>| -> std::result::Result<(), String> {
        match d {
            Direction::Forward => runner.forward(b, &s[0], &s[1], &s[2]).map(drop),
            Direction::Backward => runner.backward(b, &s[0], &s[1], &s[2], &s[3]).map(drop),
            Direction::DoubleBackward => runner
                .double_backward(b, &s[0], &s[1], &s[2], &s[3], &s[4], &s[5], &s[6])
                .map(drop),
        }
    };
    let t0 = Instant::now();
    once(&sets[0])?;
    let (warmup, reps) = plan_reps(args, t0.elapsed().as_secs_f64() * 1e3);
    for i in 0..warmup {
        once(&sets[i % nsets])?;
    }
    let mut t = Vec::with_capacity(reps);
    for i in 0..reps {
        let t0 = Instant::now();
        once(&sets[i % nsets])?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (ms, min_ms) = median(t);
    Ok(Measured {
        ms,
        min_ms,
        reps,
        input_sets: nsets,
        timing: "host",
        compile_ms,
        compile_cached_ms: 0.0,
        compile_detail: "oracle tables".into(),
    })
}

#[path = "bench_conv.rs"]
mod conv_bench;

mod wgpu_timer {
    use super::*;
    use equikern::plan::{lower, Dtype as PlanDtype, Tensor};
    use equikern::wgpu;
    use equikern::wgpu_runtime::{plan_inputs_of, plan_outputs_of, tensor_elements_of};
    use equikern::wgpu_runtime::{Runtime, TensorBuffer};
    use equikern::Device;
    use std::sync::Arc;

    pub struct WgpuTimer {
        pub(super) rt: Arc<Runtime>,
        timestamps: bool,
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        pollster::block_on(f)
    }

    impl WgpuTimer {
        pub fn new(dev: &Device) -> std::result::Result<Self, String> {
            let rt = dev.wgpu_runtime().ok_or("not a wgpu device")?.clone();
            let need =
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
            let timestamps = rt.device().features().contains(need)
                && std::env::var_os("EQUIKERN_BENCH_HOST_TIMING").is_none();
            Ok(WgpuTimer { rt, timestamps })
        }

        pub fn timing_name(&self) -> &'static str {
            if self.timestamps {
                "timestamps"
            } else {
                "host"
            }
        }

        /// Times `reps` runs of `encode` after `warmup` untimed ones: timestamps before and
        /// after each run's passes in one encoder, or the host clock around submit + wait.
        pub(super) fn time_runs(
            &self,
            warmup: usize,
            reps: usize,
            encode: &mut dyn FnMut(
                usize,
                &mut wgpu::CommandEncoder,
            ) -> std::result::Result<(), String>,
        ) -> std::result::Result<Vec<f64>, String> {
            let dev = self.rt.device();
            let queue = self.rt.queue();
            let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
            let new_enc = || {
                dev.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("equikern bench"),
                })
            };
            for i in 0..warmup {
                let mut enc = new_enc();
                encode(i, &mut enc)?;
                queue.submit([enc.finish()]);
            }
            self.rt.wait_idle().map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(reps);
            if self.timestamps {
                let n = (2 * reps) as u32;
                let qs = dev.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("equikern bench"),
                    ty: wgpu::QueryType::Timestamp,
                    count: n,
                });
                for i in 0..reps {
                    let mut enc = new_enc();
                    enc.write_timestamp(&qs, 2 * i as u32);
                    encode(warmup + i, &mut enc)?;
                    enc.write_timestamp(&qs, 2 * i as u32 + 1);
                    queue.submit([enc.finish()]);
                }
                let size = n as u64 * 8;
                let resolve = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamps"),
                    size,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                let staging = dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamps readback"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let mut enc = new_enc();
                enc.resolve_query_set(&qs, 0..n, &resolve, 0);
                enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, size);
                queue.submit([enc.finish()]);
                let (tx, rx) = std::sync::mpsc::channel();
                staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
                self.rt.wait_idle().map_err(|e| e.to_string())?;
                rx.recv()
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("map timestamps: {e}"))?;
                let ticks: Vec<u64> = {
                    let view = staging
                        .slice(..)
                        .get_mapped_range()
                        .map_err(|e| e.to_string())?;
                    view.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect()
                };
                staging.unmap();
                let period_ns = queue.get_timestamp_period() as f64;
                for i in 0..reps {
                    let dt = ticks[2 * i + 1].wrapping_sub(ticks[2 * i]);
                    out.push(dt as f64 * period_ns * 1e-6);
                }
            } else {
                for i in 0..reps {
                    let mut enc = new_enc();
                    encode(warmup + i, &mut enc)?;
                    let t0 = Instant::now();
                    queue.submit([enc.finish()]);
                    self.rt.wait_idle().map_err(|e| e.to_string())?;
                    out.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            if let Some(e) = block(scope.pop()) {
                return Err(format!("wgpu validation: {e}"));
            }
            if out.iter().any(|t| !t.is_finite() || *t <= 0.0) {
                return Err(format!(
                    "device timing gave non-positive intervals: {out:?}"
                ));
            }
            Ok(out)
        }

        pub fn copy_bandwidth(
            &mut self,
            bytes: u64,
        ) -> std::result::Result<(f64, &'static str), String> {
            let max = self.rt.limits().max_buffer_size;
            let bytes = bytes.min(max / 4 * 4).max(4 << 20) / 4 * 4;
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let dev = self.rt.device();
            let mk = |label| {
                dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            };
            let (src, dst) = (mk("copy src"), mk("copy dst"));
            // Non-zero contents, written in 16 MiB pieces.
            let piece = (16u64 << 20).min(bytes);
            let data: Vec<f32> = random_vec(&mut rng, (piece / 4) as usize)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let mut at = 0;
            while at < bytes {
                let n = piece.min(bytes - at);
                self.rt.queue().write_buffer(
                    &src,
                    at,
                    bytemuck::cast_slice(&data[..(n / 4) as usize]),
                );
                at += n;
            }
            let t = self.time_runs(2, 10, &mut |_, enc| {
                enc.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
                Ok(())
            })?;
            let (ms, _) = median(t);
            Ok((2.0 * bytes as f64 / (ms * 1e6), self.timing_name()))
        }

        pub fn measure<T: Elem>(
            &mut self,
            tp: &TensorProduct,
            d: Direction,
            args: &BenchArgs,
            rng: &mut ChaCha8Rng,
        ) -> std::result::Result<Measured, String> {
            if T::NAME != "f32" {
                return Err("wgpu computes in f32 only".into());
            }
            let rt = &self.rt;
            let t0 = Instant::now();
            let plan =
                lower(tp, d, PlanDtype::F32, &rt.capabilities()).map_err(|e| e.to_string())?;
            let compiled = block(rt.prepare(&plan)).map_err(|e| e.to_string())?;
            let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
            let t1 = Instant::now();
            let again = block(rt.prepare(&plan)).map_err(|e| e.to_string())?;
            let compile_cached_ms = t1.elapsed().as_secs_f64() * 1e3;
            drop(again);
            let batch = u32::try_from(args.batch).map_err(|_| "batch over u32::MAX")?;
            let b = batch as u64;
            let ins = plan_inputs_of(&plan);
            let outs = plan_outputs_of(&plan);
            let set_bytes: u64 = ins
                .iter()
                .map(|&t| tensor_elements_of(&plan, t, b) * 4)
                .sum();
            let nsets = input_sets(set_bytes);
            let sets: Vec<Vec<(Tensor, wgpu::Buffer)>> = (0..nsets)
                .map(|s| {
                    ins.iter()
                        .map(|&t| {
                            let n = tensor_elements_of(&plan, t, b) as usize;
                            let v: Vec<f32> =
                                random_vec(rng, n).into_iter().map(|x| x as f32).collect();
                            (t, rt.upload(&format!("{t:?}#{s}"), &v))
                        })
                        .collect()
                })
                .collect();
            let out_bufs: Vec<(Tensor, wgpu::Buffer)> = outs
                .iter()
                .map(|&t| {
                    (
                        t,
                        rt.create_storage(&format!("{t:?}"), tensor_elements_of(&plan, t, b)),
                    )
                })
                .collect();
            let mut encode = |i: usize, enc: &mut wgpu::CommandEncoder| {
                let bufs: Vec<TensorBuffer> = sets[i % nsets]
                    .iter()
                    .chain(&out_bufs)
                    .map(|(t, buf)| TensorBuffer::new(*t, buf))
                    .collect();
                rt.encode(&compiled, batch, &bufs, enc)
                    .map_err(|e| e.to_string())
            };
            // One run on the host clock sizes the row (see --row-limit-s).
            let t0 = Instant::now();
            let mut enc = rt
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            encode(0, &mut enc)?;
            rt.queue().submit([enc.finish()]);
            rt.wait_idle().map_err(|e| e.to_string())?;
            let (warmup, reps) = plan_reps(args, t0.elapsed().as_secs_f64() * 1e3);
            let t = self.time_runs(warmup, reps, &mut encode)?;
            let (ms, min_ms) = median(t);
            Ok(Measured {
                ms,
                min_ms,
                reps,
                input_sets: nsets,
                timing: self.timing_name(),
                compile_ms,
                compile_cached_ms,
                compile_detail: format!(
                    "{} kernels; first: lower + WGSL + pipelines, cached: runtime pipeline cache",
                    plan.kernels.len()
                ),
            })
        }
    }
}

mod cuda_timer {
    use super::*;
    use cudarc::driver::sys::CUevent_flags;
    use equikern::cuda_runtime::{CudaDevice, CudaTensorProduct, Real};
    use equikern::plan::{Dtype as PlanDtype, Tensor};
    use equikern::{CudaSlice, Device, TensorProductOp};

    pub struct CudaTimer {
        pub(super) dev: CudaDevice,
        cache_dir: PathBuf,
    }

    impl Drop for CudaTimer {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.cache_dir);
        }
    }

    fn err(e: impl std::fmt::Display) -> String {
        e.to_string()
    }

    impl CudaTimer {
        pub fn new(dev: &Device) -> std::result::Result<Self, String> {
            let dev = dev.cuda_device().ok_or("not a CUDA device")?.clone();
            // A fresh on-disk module cache: "first call" really compiles, "cached" reads it.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let cache_dir =
                std::env::temp_dir().join(format!("equikern-bench-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&cache_dir).map_err(err)?;
            Ok(CudaTimer { dev, cache_dir })
        }

        /// Event-timed runs of `f` (warm-up first), all on the device's stream.
        pub(super) fn time_runs(
            &self,
            warmup: usize,
            reps: usize,
            f: &mut dyn FnMut(usize) -> std::result::Result<(), String>,
        ) -> std::result::Result<Vec<f64>, String> {
            let stream = self.dev.stream().clone();
            for i in 0..warmup {
                f(i)?;
            }
            stream.synchronize().map_err(err)?;
            let mut ev = Vec::with_capacity(reps);
            for i in 0..reps {
                let a = stream
                    .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(err)?;
                f(warmup + i)?;
                let b = stream
                    .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(err)?;
                ev.push((a, b));
            }
            stream.synchronize().map_err(err)?;
            ev.iter()
                .map(|(a, b)| a.elapsed_ms(b).map(f64::from).map_err(err))
                .collect()
        }

        pub fn copy_bandwidth(
            &mut self,
            bytes: u64,
        ) -> std::result::Result<(f64, &'static str), String> {
            let n = (bytes / 4) as usize;
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let piece: Vec<f32> = random_vec(&mut rng, n.min(1 << 22))
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let host: Vec<f32> = piece.iter().copied().cycle().take(n).collect();
            let src = self.dev.upload(&host).map_err(err)?;
            drop(host);
            let mut dst = self.dev.zeros::<f32>(n).map_err(err)?;
            let stream = self.dev.stream().clone();
            let t = self.time_runs(2, 10, &mut |_| {
                stream.memcpy_dtod(&src, &mut dst).map_err(err)
            })?;
            let (ms, _) = median(t);
            Ok((2.0 * (n * 4) as f64 / (ms * 1e6), "events"))
        }

        pub fn measure<T: Elem + Real>(
            &mut self,
            tp: &TensorProduct,
            d: Direction,
            args: &BenchArgs,
            rng: &mut ChaCha8Rng,
        ) -> std::result::Result<Measured, String> {
            let dtype = if T::NAME == "f64" {
                PlanDtype::F64
            } else {
                PlanDtype::F32
            };
            // First call: a device handle with an empty module cache in memory and on disk.
            let first = self
                .dev
                .clone()
                .with_cache_dir(Some(self.cache_dir.clone()));
            let op =
                TensorProductOp::from_tensor_product(tp.clone(), &Device::from_cuda_device(first))
                    .map_err(err)?;
            let ctp = op.cuda_tensor_product(dtype).map_err(err)?;
            let info = ctp.prepare(d).map_err(err)?;
            // Cached: another fresh memory cache, the module now on disk.
            let second = self
                .dev
                .clone()
                .with_cache_dir(Some(self.cache_dir.clone()));
            let info2 = CudaTensorProduct::new(&second, tp, dtype)
                .and_then(|c| c.prepare(d))
                .map_err(err)?;
            let plan = ctp.plan(d).ok_or("no plan")?;
            let used: Vec<Tensor> = plan
                .kernels
                .iter()
                .flat_map(|k| k.inputs.iter().chain(&k.outputs).copied())
                .collect();
            let b = args.batch;
            let len = |t: Tensor| -> usize {
                if !used.contains(&t) {
                    return 1;
                }
                match t {
                    Tensor::X | Tensor::GX | Tensor::HX | Tensor::DX => b * tp.dim_in1,
                    Tensor::Y | Tensor::GY | Tensor::HY | Tensor::DY => b * tp.dim_in2,
                    Tensor::Z | Tensor::GZ | Tensor::DGZ => b * tp.dim_out,
                    _ if tp.spec.shared_weights => tp.weight_numel,
                    _ => b * tp.weight_numel,
                }
            };
            use Tensor::*;
            let in_t: &[Tensor] = match d {
                Direction::Forward => &[X, Y, W],
                Direction::Backward => &[X, Y, W, GZ],
                Direction::DoubleBackward => &[X, Y, W, GZ, HX, HY, HW],
            };
            let out_t: &[Tensor] = match d {
                Direction::Forward => &[Z],
                Direction::Backward => &[GX, GY, GW],
                Direction::DoubleBackward => &[DX, DY, DW, DGZ],
            };
            let set_bytes: u64 = in_t
                .iter()
                .map(|&t| (len(t) * std::mem::size_of::<T>()) as u64)
                .sum();
            let nsets = input_sets(set_bytes);
            let mut sets: Vec<Vec<CudaSlice<T>>> = Vec::with_capacity(nsets);
            for _ in 0..nsets {
                let mut s = Vec::new();
                for &t in in_t {
                    let v: Vec<T> = random_vec(rng, len(t))
                        .into_iter()
                        .map(T::from_f64)
                        .collect();
                    s.push(self.dev.upload(&v).map_err(err)?);
                }
                sets.push(s);
            }
            let mut outs: Vec<CudaSlice<T>> = out_t
                .iter()
                .map(|&t| self.dev.zeros::<T>(len(t)).map_err(err))
                .collect::<std::result::Result<_, _>>()?;
            let mut run = |i: usize| -> std::result::Result<(), String> {
                let s = &sets[i % nsets];
                let r = match d {
                    Direction::Forward => op.forward_cuda(b, &s[0], &s[1], &s[2], &mut outs[0]),
                    Direction::Backward => {
                        let [gx, gy, gw] = &mut outs[..] else {
                            return Err("outputs".into());
                        };
                        op.backward_cuda(b, &s[0], &s[1], &s[2], &s[3], gx, gy, gw)
                    }
                    Direction::DoubleBackward => {
                        let [dx, dy, dw, dgz] = &mut outs[..] else {
                            return Err("outputs".into());
                        };
                        op.double_backward_cuda(
                            b,
                            [&s[0], &s[1], &s[2], &s[3], &s[4], &s[5], &s[6]],
                            [dx, dy, dw, dgz],
                        )
                    }
                };
                r.map_err(err)
            };
            // One run on the host clock sizes the row (see --row-limit-s).
            let t0 = Instant::now();
            run(0)?;
            self.dev.synchronize().map_err(err)?;
            let (warmup, reps) = plan_reps(args, t0.elapsed().as_secs_f64() * 1e3);
            let t = self.time_runs(warmup, reps, &mut run)?;
            if t.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                return Err(format!("event timing gave non-positive intervals: {t:?}"));
            }
            let (ms, min_ms) = median(t);
            Ok(Measured {
                ms,
                min_ms,
                reps,
                input_sets: nsets,
                timing: "events",
                compile_ms: info.total_ms,
                compile_cached_ms: info2.total_ms,
                compile_detail: format!(
                    "{} kernels, {} bytes of source; first: {:?} (emit {:.1} + nvrtc {:.1} + load {:.1} ms), cached: {:?}",
                    info.kernels,
                    info.source_bytes,
                    info.level,
                    info.emit_ms,
                    info.nvrtc_ms,
                    info.load_ms,
                    info2.level
                ),
            })
        }
    }
}
