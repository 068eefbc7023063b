//! `equikern bench --model CKPT`: SevenNet steps (energy, forces, stress) on the benchmark
//! systems of issue #9 (`equikern_model::systems`), per backend and dtype.
//!
//! Timing: the host wall clock around the whole step, after `--warmup` untimed steps; the
//! median of `--reps` steps. Device events are not used: the step is orchestrated by the host
//! (the dense layers run there, and every convolution waits for the device before its results
//! are read back), so the wall clock is what a caller sees. Each rep times the model alone
//! (the radius graph built beforehand) and the whole step (radius graph included).
//! The per-phase breakdown (medians over the model-only reps) comes from the model's own
//! phase clock ([`equikern_model::StepProfile`]); the first call (fresh model on the device:
//! kernel compilation on the first system) is timed separately.

use crate::bench::BenchArgs;
use crate::engine::Backend;
use crate::error::{CliError, Result};
use crate::model::{load_model, open_device, place_model, resolve_backend};
use equikern_model::systems::SystemSpec;
use equikern_model::{Evaluator, ModelError, StepProfile};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// What the JSON says about the timing method.
pub const TIMING: &str = "host wall clock around the whole step after warm-up, median of reps \
    (device events are not used: the step is orchestrated from the host, which waits for the \
    device after each convolution)";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn ms(s: f64) -> f64 {
    s * 1e3
}

fn model_err(name: &str, e: ModelError) -> CliError {
    match e {
        ModelError::Input { .. } => CliError::input(format!("--systems {name}: {e}")),
        other => CliError::runtime(format!("{name}: {other}")),
    }
}

/// One system's measurements.
struct Row {
    name: String,
    atoms: usize,
    edges: usize,
    first_call_ms: f64,
    model_ms: Vec<f64>,
    full_ms: Vec<f64>,
    profiles: Vec<StepProfile>,
    nl_ms: Vec<f64>,
    /// Where the radius graph was built (`cuda`: the device list, `cpu`: `Graph::build`).
    nl_on: &'static str,
    peak_bytes: Option<u64>,
    uploaded: u64,
    downloaded: u64,
    energy: f64,
}

impl Row {
    fn json(&self) -> Value {
        let m = median(self.model_ms.clone());
        let f = median(self.full_ms.clone());
        let ph = |get: fn(&StepProfile) -> f64| {
            ms(median(self.profiles.iter().map(get).collect::<Vec<_>>()))
        };
        let reps = self.model_ms.len().max(1) as u64;
        json!({
            "system": self.name,
            "atoms": self.atoms,
            "edges": self.edges,
            "first_call_ms": self.first_call_ms,
            "ms_model": m,
            "ms_model_min": self.model_ms.iter().copied().fold(f64::INFINITY, f64::min),
            "ms_with_nl": f,
            "neighbour_list_on": self.nl_on,
            "atoms_per_s": self.atoms as f64 / (m * 1e-3),
            "atoms_per_s_with_nl": self.atoms as f64 / (f * 1e-3),
            "reps": self.model_ms.len(),
            "phases_ms": {
                "neighbour_list": ms(median(self.nl_ms.clone())),
                "graph": ph(|p| p.graph_s),
                "edge_geometry": ph(|p| p.edge_geometry_s),
                "dense_host": ph(|p| p.dense_s),
                "conv_device": ph(|p| p.conv_s),
                "transfer": ph(|p| p.transfer_s),
                "other": ph(StepProfile::other_s),
            },
            "peak_device_bytes": self.peak_bytes,
            "uploaded_bytes_per_step": self.uploaded / reps,
            "downloaded_bytes_per_step": self.downloaded / reps,
            "energy": self.energy,
        })
    }
}

pub fn run(args: &BenchArgs, ckpt: &Path) -> Result<()> {
    let backend = args.backend.unwrap_or_else(Backend::best);
    let (target, mdtype) = resolve_backend(backend, Some(args.dtype))?;
    if args.reps == 0 {
        return Err(CliError::input("--reps must be at least 1"));
    }
    let specs: Vec<SystemSpec> = args
        .systems
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| SystemSpec::parse(s).map_err(|e| CliError::input(format!("--systems: {e}"))))
        .collect::<Result<_>>()?;
    if specs.is_empty() {
        return Err(CliError::input("--systems: no system given"));
    }
    if let Some(dir) = &args.export_systems {
        return export_systems(&specs, dir);
    }
    let device = open_device(backend)?;
    let t = Instant::now();
    let model = load_model(ckpt)?;
    let load_ms = ms(t.elapsed().as_secs_f64());
    let t = Instant::now();
    let ev = place_model(&model, device.clone(), mdtype)?;
    let place_ms = ms(t.elapsed().as_secs_f64());
    let on = ev.describe();
    let to_stdout = args.json.as_deref() == Some(Path::new("-"));
    let say = |s: String| {
        if to_stdout {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    };
    say(format!(
        "bench --model {}: {} system(s) on {on}; model loaded in {load_ms:.0} ms, placed in \
         {place_ms:.0} ms",
        ckpt.display(),
        specs.len()
    ));
    let per = 1 + args.warmup + 2 * args.reps;
    let bar = ProgressBar::new((specs.len() * per) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed}<{eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    let mut ev = Some(ev);
    for spec in &specs {
        let name = spec.name();
        bar.set_message(format!("{name}: building"));
        let s = spec.build().map_err(|e| model_err(&name, e))?;
        // A fresh evaluator per system (kernels come from the cache): its peak memory is
        // this system's alone, not the grow-only workspace of a larger one before it.
        let e = match ev.take() {
            Some(e) => e,
            None => place_model(&model, device.clone(), mdtype)?,
        };
        let r = measure(&e, &s, &name, args, &bar).inspect_err(|_| bar.abandon())?;
        drop(e);
        rows.push(r);
    }
    bar.finish_and_clear();
    let out: Vec<Value> = rows.iter().map(Row::json).collect();
    print_table(&out, &say);
    if let Some(path) = &args.json {
        let v = json!({
            "command": "bench --model",
            "model": ckpt.display().to_string(),
            "backend": target.name(),
            "dtype": mdtype.name(),
            "device": on,
            "timing": TIMING,
            "warmup": args.warmup,
            "reps": args.reps,
            "load_ms": load_ms,
            "place_ms": place_ms,
            "peak_device_bytes_note": "the model's own device buffers, the graph's index \
                tables and the device neighbour list's buffers, by allocation size, one fresh \
                evaluator per system (null on the cpu); per-call scratch of the pieces mode, \
                cuBLAS's workspace and the driver's context are not included",
            "systems": out,
        });
        let text = serde_json::to_string_pretty(&v)
            .map_err(|e| CliError::runtime(format!("--json: {e}")))?;
        if to_stdout {
            println!("{text}");
        } else {
            std::fs::write(path, format!("{text}\n"))
                .map_err(|e| CliError::input(format!("--json {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// Writes each system as extended XYZ (`DIR/<name>.extxyz`, ':' in names becomes '_') so the
/// peers run the very same atoms.
fn export_systems(specs: &[SystemSpec], dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::input(format!("--export-systems {}: {e}", dir.display())))?;
    for spec in specs {
        let name = spec.name();
        let s = spec.build().map_err(|e| model_err(&name, e))?;
        let n = s.numbers.len();
        let path = dir.join(format!("{}.extxyz", name.replace(':', "_")));
        equikern_model::extxyz::write(&path, &[equikern_model::extxyz::Frame::new(s)])
            .map_err(|e| CliError::input(format!("--export-systems {}: {e}", path.display())))?;
        println!("{name}: {n} atoms -> {}", path.display());
    }
    Ok(())
}

fn measure(
    ev: &Evaluator,
    s: &equikern_model::Structure,
    name: &str,
    args: &BenchArgs,
    bar: &ProgressBar,
) -> Result<Row> {
    let err = |e| model_err(name, e);
    ev.reset_peak();
    bar.set_message(format!("{name}: first call"));
    let t = Instant::now();
    let (p, _) = ev.evaluate_profiled(s).map_err(err)?;
    let first_call_ms = ms(t.elapsed().as_secs_f64());
    bar.inc(1);
    bar.set_message(format!("{name}: warm-up"));
    for _ in 0..args.warmup {
        ev.evaluate_profiled(s).map_err(err)?;
        bar.inc(1);
    }
    bar.set_message(format!("{name}: timing"));
    let c0 = ev.counters();
    let (mut model_ms, mut full_ms, mut profiles, mut nl_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.reps {
        // the whole step, radius graph included; the model alone = the rest (on a resident
        // CUDA evaluator the graph goes from the device's neighbour list straight in)
        let t = Instant::now();
        let (_, prof) = ev.evaluate_profiled(s).map_err(err)?;
        let full = t.elapsed().as_secs_f64();
        full_ms.push(ms(full));
        nl_ms.push(prof.neighbour_list_s);
        model_ms.push(ms(full - prof.neighbour_list_s));
        profiles.push(prof);
        bar.inc(2);
    }
    let c1 = ev.counters();
    let gpu = ev.target() != equikern_model::Target::Cpu;
    Ok(Row {
        name: name.to_string(),
        atoms: s.positions.len(),
        edges: p.num_edges,
        first_call_ms,
        model_ms,
        full_ms,
        profiles,
        nl_ms,
        nl_on: ev.neighbour_list_on(s),
        peak_bytes: gpu.then_some(c1.peak_bytes),
        uploaded: c1.uploaded_bytes - c0.uploaded_bytes,
        downloaded: c1.downloaded_bytes - c0.downloaded_bytes,
        energy: p.energy,
    })
}

fn print_table(rows: &[Value], say: &dyn Fn(String)) {
    say(format!(
        "{:<12} {:>7} {:>9} {:>10} {:>10} {:>12} {:>10} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>10}",
        "system", "atoms", "edges", "ms model", "ms +nl", "atoms/s", "first ms",
        "nl", "graph", "geom", "dense", "conv", "xfer", "other", "peak MiB"
    ));
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let p = |k: &str| r["phases_ms"][k].as_f64().unwrap_or(f64::NAN);
        let peak = r["peak_device_bytes"]
            .as_u64()
            .map(|b| format!("{:.1}", b as f64 / (1u64 << 20) as f64))
            .unwrap_or_else(|| "-".into());
        say(format!(
            "{:<12} {:>7} {:>9} {:>10.2} {:>10.2} {:>12.0} {:>10.1} | {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} | {:>10}",
            r["system"].as_str().unwrap_or("?"),
            r["atoms"].as_u64().unwrap_or(0),
            r["edges"].as_u64().unwrap_or(0),
            f("ms_model"),
            f("ms_with_nl"),
            f("atoms_per_s"),
            f("first_call_ms"),
            p("neighbour_list"),
            p("graph"),
            p("edge_geometry"),
            p("dense_host"),
            p("conv_device"),
            p("transfer"),
            p("other"),
            peak
        ));
    }
}
