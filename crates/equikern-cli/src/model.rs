//! `equikern eval` and `equikern md`: a SevenNet checkpoint on extended XYZ structures.

use crate::engine::Backend;
use crate::error::{CliError, Result};
use crate::npy::Dtype;
use clap::{Args, ValueEnum};
use equikern_model::md::{self, DriftMeter, Md, MdOptions, Thermostat};
use equikern_model::{elements, extxyz, Evaluator, Frame, ModelError, Prediction, SevenNet};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Energy (eV), forces (eV/Å) and, for fully periodic structures, stress (eV/Å³, ASE's sign,
/// Voigt xx yy zz yz xz xy) of every frame of an extended XYZ file.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// SevenNet checkpoint (.pth), e.g. models/checkpoint_sevennet_0.pth.
    #[arg(long, value_name = "CKPT")]
    model: PathBuf,
    /// Structures, extended XYZ (as ASE writes it); every frame is evaluated.
    #[arg(long, value_name = "FILE")]
    structure: PathBuf,
    /// Where to compute: cpu (everything on the host), wgpu or cuda (the convolutions on the
    /// GPU, the dense layers on the host for now).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Floating-point type: cpu f64/f32, wgpu f32 only, cuda f32/f64 [default: f32 on wgpu,
    /// f64 otherwise].
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// Write {"energy", "forces", "stress"} as JSON here ("-" = stdout; a list for a
    /// multi-frame file).
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ThermostatArg {
    Langevin,
}

/// Molecular dynamics with a SevenNet checkpoint: velocity Verlet (NVE), or Langevin
/// dynamics (BAOAB) with --thermostat langevin. Units: fs, K, eV, Å, amu.
#[derive(Args, Debug)]
pub struct MdArgs {
    /// SevenNet checkpoint (.pth).
    #[arg(long, value_name = "CKPT")]
    model: PathBuf,
    /// Initial structure, extended XYZ (the last frame is used, as ASE's read does); its
    /// momenta column, if any, gives the initial velocities unless --temperature is set.
    #[arg(long, value_name = "FILE")]
    structure: PathBuf,
    /// Number of time steps.
    #[arg(long)]
    steps: usize,
    /// Time step (fs).
    #[arg(long, value_name = "FS", allow_negative_numbers = true)]
    dt: f64,
    /// Initial velocities from Maxwell–Boltzmann at this temperature (K; zero net momentum,
    /// rescaled to exactly this temperature); also the Langevin target.
    #[arg(long, value_name = "K", allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// Thermostat (default: none, constant energy).
    #[arg(long, value_enum)]
    thermostat: Option<ThermostatArg>,
    /// Langevin friction (1/fs).
    #[arg(
        long,
        value_name = "1/FS",
        default_value_t = 0.01,
        allow_negative_numbers = true
    )]
    friction: f64,
    /// Seed of the initial velocities and the thermostat's noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Trajectory, extended XYZ (positions, forces, momenta, energy, stress, time).
    #[arg(long, value_name = "traj.extxyz")]
    out: PathBuf,
    /// Write every K-th step (the first and last are always written).
    #[arg(long, value_name = "K", default_value_t = 1)]
    every: usize,
    /// Where to compute: cpu, wgpu or cuda (the convolutions on the GPU).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Floating-point type: cpu f64/f32, wgpu f32 only, cuda f32/f64 [default: f32 on wgpu,
    /// f64 otherwise].
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
}

/// The model's target and dtype for `--backend`/`--dtype` (checked before anything loads: an
/// unsupported combination exits 2 naming it).
pub(crate) fn resolve_backend(
    backend: Backend,
    dtype: Option<Dtype>,
) -> Result<(equikern_model::Target, equikern_model::Dtype)> {
    use equikern_model::{Dtype as D, Target as T};
    let target = match backend {
        Backend::Cpu => T::Cpu,
        Backend::Wgpu => T::Wgpu,
        Backend::Cuda => T::Cuda,
    };
    let dtype = match dtype {
        Some(Dtype::F32) => D::F32,
        Some(Dtype::F64) => D::F64,
        None if target == T::Wgpu => D::F32,
        None => D::F64,
    };
    equikern_model::backend::check_combination(target, dtype).map_err(|_| {
        CliError::input(format!(
            "--backend {} --dtype {}: not supported: the {} kernels compute in f32 only; use \
             --dtype f32 there (f64 runs on cpu and cuda)",
            target.name(),
            dtype.name(),
            target.name()
        ))
    })?;
    Ok((target, dtype))
}

/// Opens the GPU device of `backend` (none for the cpu): unavailable → exit 2 naming it.
pub(crate) fn open_device(backend: Backend) -> Result<Option<equikern::Device>> {
    if backend == Backend::Cpu {
        return Ok(None);
    }
    backend
        .facade_device()
        .map(|d| Some(d.clone()))
        .map_err(|e| CliError::input(format!("--backend {}: {e}", backend.name())))
}

/// The model on its backend: kernels and cast weights are made once, here.
pub(crate) fn place_model(
    model: &SevenNet,
    device: Option<equikern::Device>,
    dtype: equikern_model::Dtype,
) -> Result<Evaluator> {
    match device {
        None => Ok(Evaluator::cpu(model, dtype)),
        Some(d) => Evaluator::on_device(model, d, dtype).map_err(|e| match e {
            ModelError::Unsupported(m) => CliError::input(m),
            other => CliError::runtime(other.to_string()),
        }),
    }
}

/// The CPU model allocates tens of MB of per-edge buffers per layer and frees them again;
/// glibc returns such blocks to the kernel (mmap/munmap, heap trimming), so every call pays
/// page faults to get them back (a fifth of the CPU time of a 64-atom eval). Keeping freed
/// memory in the heap (mmap only above 32 MiB, no trimming, 256 MiB top pad) removes 70 %
/// of them: Si 64 eval 0.95 → 0.72 s CPU time.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocator tuning parameters (under its own lock);
    // no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

pub(crate) fn load_model(path: &Path) -> Result<SevenNet> {
    keep_freed_memory();
    SevenNet::load(path).map_err(|e| match e {
        ModelError::Io { .. } => CliError::input(format!("--model: {e}")),
        other => CliError::input(format!("--model {}: {other}", path.display())),
    })
}

fn read_structures(path: &Path) -> Result<Vec<Frame>> {
    let frames = extxyz::read(path).map_err(|e| match e {
        ModelError::Io { .. } => CliError::input(format!("--structure: {e}")),
        other => CliError::input(format!("--structure {other}")),
    })?;
    if frames.is_empty() {
        return Err(CliError::input(format!(
            "--structure {}: no frames",
            path.display()
        )));
    }
    Ok(frames)
}

/// A model error on frame `k` of `path`: bad input → exit 2, naming the frame.
fn frame_err(path: &Path, k: usize, nframes: usize, e: ModelError) -> CliError {
    let at = if nframes > 1 {
        format!("--structure {} frame {k}", path.display())
    } else {
        format!("--structure {}", path.display())
    };
    match e {
        ModelError::Input { .. } | ModelError::Io { .. } => CliError::input(format!("{at}: {e}")),
        other => CliError::runtime(format!("{at}: {other}")),
    }
}

/// The JSON of one result: `{"energy", "forces", "stress"?}`.
pub fn prediction_json(p: &Prediction) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("energy".into(), json!(p.energy));
    o.insert("forces".into(), json!(p.forces));
    if let Some(s) = p.stress {
        o.insert("stress".into(), json!(s));
    }
    Value::Object(o)
}

fn formula(numbers: &[u32]) -> String {
    let mut counts: Vec<(u32, usize)> = Vec::new();
    for &z in numbers {
        match counts.iter_mut().find(|c| c.0 == z) {
            Some(c) => c.1 += 1,
            None => counts.push((z, 1)),
        }
    }
    counts
        .iter()
        .map(|&(z, n)| {
            let s = elements::symbol(z).unwrap_or("?");
            if n == 1 {
                s.to_string()
            } else {
                format!("{s}{n}")
            }
        })
        .collect()
}

fn write_out(path: &Path, text: &str, flag: &str) -> Result<()> {
    if path == Path::new("-") {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, format!("{text}\n"))
        .map_err(|e| CliError::input(format!("{flag} {}: {e}", path.display())))
}

pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let (_, dtype) = resolve_backend(args.backend, args.dtype)?;
    let frames = read_structures(&args.structure)?;
    let device = open_device(args.backend)?;
    let t = Instant::now();
    let model = load_model(&args.model)?;
    let model = place_model(&model, device, dtype)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let nf = frames.len();
    let mut results = Vec::with_capacity(nf);
    for (k, f) in frames.iter().enumerate() {
        let t = Instant::now();
        let p = model
            .evaluate(&f.atoms)
            .map_err(|e| frame_err(&args.structure, k, nf, e))?;
        results.push((p, t.elapsed().as_secs_f64() * 1e3));
    }
    let to_stdout = args.json.as_deref() == Some(Path::new("-"));
    if !to_stdout {
        print_human(&frames, &results, load_ms, &model.describe());
    }
    if let Some(out) = &args.json {
        let v = if nf == 1 {
            prediction_json(&results[0].0)
        } else {
            Value::Array(results.iter().map(|r| prediction_json(&r.0)).collect())
        };
        let text = serde_json::to_string_pretty(&v)
            .map_err(|e| CliError::runtime(format!("--json: {e}")))?;
        write_out(out, &text, "--json")?;
    }
    Ok(())
}

fn print_human(frames: &[Frame], results: &[(Prediction, f64)], load_ms: f64, on: &str) {
    println!("model loaded in {load_ms:.0} ms, running on {on}");
    let tf = |b: bool| if b { 'T' } else { 'F' };
    for (k, (f, (p, ms))) in frames.iter().zip(results).enumerate() {
        let s = &f.atoms;
        let n = s.positions.len();
        println!(
            "frame {k}: {} ({n} atoms), pbc {} {} {}, {} edges, {ms:.1} ms",
            formula(&s.numbers),
            tf(s.pbc[0]),
            tf(s.pbc[1]),
            tf(s.pbc[2]),
            p.num_edges
        );
        println!(
            "  energy  {:.8} eV  ({:.8} eV/atom)",
            p.energy,
            p.energy / n.max(1) as f64
        );
        let fmax = p
            .forces
            .iter()
            .map(|v| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt())
            .fold(0.0, f64::max);
        println!("  max |F| {fmax:.6} eV/Å");
        if n <= 32 {
            println!("  forces (eV/Å):");
            for (a, v) in p.forces.iter().enumerate() {
                println!(
                    "    {a:>4} {:<2} {:>14.8} {:>14.8} {:>14.8}",
                    elements::symbol(s.numbers[a]).unwrap_or("?"),
                    v[0],
                    v[1],
                    v[2]
                );
            }
        } else {
            println!("  forces: {n} rows (use --json to get them)");
        }
        if let Some(st) = p.stress {
            println!(
                "  stress (eV/Å³; xx yy zz yz xz xy) {:.8e} {:.8e} {:.8e} {:.8e} {:.8e} {:.8e}",
                st[0], st[1], st[2], st[3], st[4], st[5]
            );
            let gpa = 160.217_663_4;
            println!(
                "  pressure −tr(σ)/3 = {:.4} GPa",
                -(st[0] + st[1] + st[2]) / 3.0 * gpa
            );
        }
    }
}

pub fn run_md(args: &MdArgs) -> Result<()> {
    let (_, dtype) = resolve_backend(args.backend, args.dtype)?;
    if !(args.dt.is_finite() && args.dt > 0.0) {
        return Err(CliError::input(format!(
            "--dt: must be a finite time step > 0 fs, got {}",
            args.dt
        )));
    }
    if args.dt > 10.0 {
        return Err(CliError::input(format!(
            "--dt {}: time steps above 10 fs are not stable for atomistic MD (typical: 0.5–2 fs)",
            args.dt
        )));
    }
    if args.every == 0 {
        return Err(CliError::input("--every: must be ≥ 1"));
    }
    if let Some(t) = args.temperature {
        if !(t.is_finite() && t >= 0.0) {
            return Err(CliError::input(format!(
                "--temperature: must be finite and ≥ 0 K, got {t}"
            )));
        }
    }
    let thermostat = match args.thermostat {
        None => Thermostat::None,
        Some(ThermostatArg::Langevin) => {
            let Some(t) = args.temperature else {
                return Err(CliError::input(
                    "--thermostat langevin needs --temperature (the target, K)",
                ));
            };
            if !(args.friction.is_finite() && args.friction > 0.0) {
                return Err(CliError::input(format!(
                    "--friction: must be finite and > 0 (1/fs), got {}",
                    args.friction
                )));
            }
            Thermostat::Langevin {
                temperature: t,
                friction: args.friction,
            }
        }
    };
    let mut frames = read_structures(&args.structure)?;
    let nf = frames.len();
    let start = frames.pop().expect("at least one frame");
    let atoms = start.atoms;
    let n = atoms.positions.len();
    if n == 0 {
        return Err(CliError::input(format!(
            "--structure {}: no atoms",
            args.structure.display()
        )));
    }
    let sarg = |e: ModelError| frame_err(&args.structure, nf - 1, nf, e);
    let masses = md::masses_of(&atoms.numbers).map_err(sarg)?;
    let velocities = match (args.temperature, &start.momenta) {
        (Some(t), _) => md::maxwell_boltzmann(&masses, t, args.seed).map_err(sarg)?,
        (None, Some(p)) => md::velocities_from_momenta(p, &masses),
        (None, None) => vec![[0.0; 3]; n],
    };
    let device = open_device(args.backend)?;
    let model = load_model(&args.model)?;
    let model = place_model(&model, device, dtype)?;
    let options = MdOptions {
        dt: args.dt,
        thermostat,
        seed: args.seed.wrapping_add(0x9E37_79B9_7F4A_7C15),
    };
    let mut sim = Md::new(&model, atoms, velocities, Some(masses), options).map_err(sarg)?;
    let file = std::fs::File::create(&args.out)
        .map_err(|e| CliError::input(format!("--out {}: {e}", args.out.display())))?;
    let mut out = std::io::BufWriter::new(file);
    let write_frame = |out: &mut std::io::BufWriter<std::fs::File>, sim: &Md<Evaluator>| {
        let mut s = String::new();
        extxyz::write_frame(&mut s, &sim.frame())
            .and_then(|_| {
                out.write_all(s.as_bytes())
                    .and_then(|_| out.flush())
                    .map_err(|source| ModelError::Io {
                        path: args.out.display().to_string(),
                        source,
                    })
            })
            .map_err(|e| CliError::runtime(format!("--out: {e}")))
    };
    write_frame(&mut out, &sim)?;
    let mut meter = DriftMeter::default();
    meter.record(sim.total_energy());
    let mode = match thermostat {
        Thermostat::None => "NVE (velocity Verlet)".to_string(),
        Thermostat::Langevin {
            temperature,
            friction,
        } => format!("Langevin BAOAB, {temperature} K, friction {friction}/fs"),
    };
    println!(
        "md: {} ({n} atoms{}), {} steps × {} fs, {mode}, T0 = {:.1} K, E0 = {:.6} eV, on {}",
        formula(&sim.atoms.numbers),
        if nf > 1 {
            format!(", frame {} of {nf}", nf - 1)
        } else {
            String::new()
        },
        args.steps,
        args.dt,
        sim.temperature(),
        sim.total_energy(),
        model.describe()
    );
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed}<{eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let mut t_sum = 0.0;
    for k in 1..=args.steps {
        sim.step().map_err(|e| {
            bar.abandon();
            match e {
                ModelError::Input { .. } => CliError::input(format!(
                    "--structure {}: {e} (the run became unphysical; try a smaller --dt)",
                    args.structure.display()
                )),
                other => CliError::runtime(other.to_string()),
            }
        })?;
        let etot = sim.total_energy();
        if !etot.is_finite() {
            bar.abandon();
            return Err(CliError::runtime(format!(
                "step {k}: total energy is not finite (try a smaller --dt)"
            )));
        }
        meter.record(etot);
        t_sum += sim.temperature();
        if k % args.every == 0 || k == args.steps {
            write_frame(&mut out, &sim)?;
        }
        bar.set_message(format!("T {:.0} K  E {:.4} eV", sim.temperature(), etot));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let d = meter
        .summary(n, sim.time())
        .expect("at least the first energy is recorded");
    println!(
        "done: {} steps, {:.3} ps in {secs:.1} s ({:.1} ms/step), trajectory {}",
        args.steps,
        sim.time() / 1000.0,
        1e3 * secs / args.steps.max(1) as f64,
        args.out.display()
    );
    if args.steps > 0 {
        println!(
            "temperature: mean {:.1} K, final {:.1} K",
            t_sum / args.steps as f64,
            sim.temperature()
        );
    }
    println!(
        "total energy: first {:.8} eV, last {:.8} eV; drift {:+.3e} eV/atom/ps, max |E−E0| {:.3e} eV/atom{}",
        d.first,
        d.last,
        d.per_atom_per_ps,
        d.max_excursion_per_atom,
        if thermostat == Thermostat::None {
            ""
        } else {
            " (thermostatted: not conserved)"
        }
    );
    Ok(())
}
