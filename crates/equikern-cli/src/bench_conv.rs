//! `equikern bench --conv`: the fused graph convolution timed over graphs × problems.
//!
//! * Graphs are built by our own code (radius graphs with cell lists, a skewed random graph)
//!   and their edges sorted by (receiver, sender), so every implementation sees the same edge
//!   list in the same order; `--export-graphs DIR` writes them (int64 .npy + `graphs.json`)
//!   for `benches/bench_conv_peers.py`.
//! * Variants: `det` (fused, deterministic CSR sums: the default of [`equikern::ConvOp`]),
//!   `pieces` (fused, deterministic, node ranges cut into pieces of `--piece-edges` edges,
//!   summed in a second pass: for hubs of skewed graphs),
//!   `atomic` (fused, per-edge float atomic adds; CUDA), `unfused` (CUDA: gather `x[sender]`,
//!   the tensor product over all edges, then an atomic scatter into receivers; backward
//!   gathers `grad_z[receiver]` too and scatters the per-edge x-gradient into senders),
//!   `det-rows` / `pieces-rows` (`det` / `pieces` with the channel-fused backward turned off:
//!   the row kernels; the A/B of `ConvOp::with_channel_fusion`, asked for by name only),
//!   `det-1g` (`det` with the fused forward's output blocks in one group:
//!   `ConvOp::with_conv_forward_regs(Some(u32::MAX))`, the A/B of the grouping; by name only),
//!   `det-lanes` (`det` with the fused backward's mixed multiplicities on balanced lane
//!   groups instead of one lane per channel: `ConvOp::with_conv_backward_lanes(true)`, the
//!   A/B of the opt-in lane groups; by name only).
//! * Timing as in `bench`: CUDA events / wgpu timestamps / host clock, warm-up, median of
//!   `--reps`. Inputs live on the device, generated there by tiling a random block (so
//!   multi-GB weight tensors cost no host time), shared by every variant of a (graph, problem).
//! * `device_bytes`: what the call needs resident on the device, counted from our own
//!   buffers: inputs, outputs, index tables, scratch (and the unfused path's per-edge
//!   intermediates). A row whose buffers would not fit the free memory is skipped with a
//!   reason.

use super::*;
use equikern::core::conv::Csr;
use equikern::core::graph::{diamond, radius_graph, random_skewed, read_pdb, DIAMOND_A};
use equikern::plan::{Dtype as PlanDtype, KernelPlan, Tensor};
use equikern::{ConvGraph, ConvOp, ConvOptions, Device};
use std::sync::Arc;

const PROTEIN_PDB: &str = include_str!("../../../tests/data/structures/adk_4ake.pdb");

/// A graph of the benchmark: edges sorted by (receiver, sender).
pub struct BenchGraph {
    pub name: String,
    pub about: String,
    pub nodes: usize,
    pub receiver: Vec<u32>,
    pub sender: Vec<u32>,
}

fn bad_graph(spec: &str, why: &str) -> CliError {
    CliError::input(format!(
        "--graphs {spec:?}: {why} (diamond:CELLS:CUTOFF, protein:CUTOFF, skewed:NODES:EDGES)"
    ))
}

/// Parses and builds every graph of `--graphs`.
pub fn build_graphs(list: &str) -> Result<Vec<BenchGraph>> {
    let mut out = vec![];
    for spec in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = spec.split(':').collect();
        let num = |i: usize| -> Result<f64> {
            parts
                .get(i)
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    bad_graph(spec, &format!("field {} must be a positive number", i + 1))
                })
        };
        let int = |i: usize| -> Result<usize> {
            parts
                .get(i)
                .and_then(|p| p.parse::<usize>().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| {
                    bad_graph(spec, &format!("field {} must be a positive integer", i + 1))
                })
        };
        let t0 = Instant::now();
        let (nodes, r, s, about) = match parts[0] {
            "diamond" if parts.len() == 3 => {
                let (cells, cutoff) = (int(1)?, num(2)?);
                if cells > 200 {
                    return Err(bad_graph(spec, "at most 200 cells per side"));
                }
                let st = diamond([cells; 3], DIAMOND_A);
                let g = radius_graph(&st, cutoff).map_err(|e| bad_graph(spec, &e.to_string()))?;
                let n = st.positions.len();
                (
                    n,
                    g.receiver,
                    g.sender,
                    format!("periodic diamond carbon {cells}³ cells, radius graph at {cutoff} Å"),
                )
            }
            "protein" if parts.len() == 2 => {
                let cutoff = num(1)?;
                let st = read_pdb(PROTEIN_PDB).map_err(|e| bad_graph(spec, &e.to_string()))?;
                let g = radius_graph(&st, cutoff).map_err(|e| bad_graph(spec, &e.to_string()))?;
                (
                    st.positions.len(),
                    g.receiver,
                    g.sender,
                    format!("adenylate kinase 4AKE (open), radius graph at {cutoff} Å"),
                )
            }
            "skewed" if parts.len() == 3 => {
                let (n, e) = (int(1)?, int(2)?);
                let (r, s) =
                    random_skewed(n, e, 1.1, 1).map_err(|e| bad_graph(spec, &e.to_string()))?;
                (
                    n,
                    r,
                    s,
                    "random, power-law in-degree (alpha 1.1, seed 1)".to_string(),
                )
            }
            _ => return Err(bad_graph(spec, "unknown graph")),
        };
        // Sorted by (receiver, sender): the order the peers' deterministic mode needs.
        let mut idx: Vec<u32> = (0..r.len() as u32).collect();
        idx.sort_unstable_by_key(|&e| (r[e as usize], s[e as usize], e));
        let receiver: Vec<u32> = idx.iter().map(|&e| r[e as usize]).collect();
        let sender: Vec<u32> = idx.iter().map(|&e| s[e as usize]).collect();
        let name = spec.replace(':', "-");
        println!(
            "graph {name}: {nodes} nodes, {} edges ({about}); built in {:.0} ms",
            receiver.len(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        out.push(BenchGraph {
            name,
            about,
            nodes,
            receiver,
            sender,
        });
    }
    if out.is_empty() {
        return Err(CliError::input("--graphs: no graph given"));
    }
    Ok(out)
}

fn write_i64(path: &std::path::Path, v: &[u32]) -> Result<()> {
    let ctx = |e: std::io::Error| {
        CliError::runtime(format!(
            "--export-graphs {}: cannot write: {e}",
            path.display()
        ))
    };
    let f = std::fs::File::create(path).map_err(ctx)?;
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<i64>::new()
        .default_dtype()
        .shape(&[v.len() as u64])
        .writer(std::io::BufWriter::new(f))
        .begin_nd()
        .map_err(ctx)?;
    w.extend(v.iter().map(|&a| a as i64)).map_err(ctx)?;
    w.finish().map_err(ctx)
}

/// Writes `DIR/<name>.receiver.npy`, `DIR/<name>.sender.npy` (int64) and `DIR/graphs.json`.
pub fn export_graphs(dir: &std::path::Path, graphs: &[BenchGraph]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::input(format!(
            "--export-graphs {}: cannot create: {e}",
            dir.display()
        ))
    })?;
    let mut list = vec![];
    for g in graphs {
        let (rf, sf) = (
            format!("{}.receiver.npy", g.name),
            format!("{}.sender.npy", g.name),
        );
        write_i64(&dir.join(&rf), &g.receiver)?;
        write_i64(&dir.join(&sf), &g.sender)?;
        list.push(json!({
            "name": g.name,
            "about": g.about,
            "nodes": g.nodes,
            "edges": g.receiver.len(),
            "receiver": rf,
            "sender": sf,
            "sorted": "by (receiver, sender)",
        }));
    }
    let doc = json!({ "graphs": list });
    let path = dir.join("graphs.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    )
    .map_err(|e| {
        CliError::runtime(format!(
            "--export-graphs {}: cannot write: {e}",
            path.display()
        ))
    })?;
    println!("exported {} graphs to {}", graphs.len(), dir.display());
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Det,
    Pieces,
    Atomic,
    Unfused,
    /// `det` / `pieces` with the channel-fused backward off (row kernels; A/B).
    DetRows,
    PiecesRows,
    /// `det` with the fused forward's output blocks in one invocation group (A/B).
    DetOneGroup,
    /// `det` with the fused backward on one lane per channel (no lane groups; A/B).
    DetLanes,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Det => "det",
            Variant::Pieces => "pieces",
            Variant::Atomic => "atomic",
            Variant::Unfused => "unfused",
            Variant::DetRows => "det-rows",
            Variant::PiecesRows => "pieces-rows",
            Variant::DetOneGroup => "det-1g",
            Variant::DetLanes => "det-lanes",
        }
    }
}

fn parse_variants(s: Option<&str>, backend: Backend) -> Result<Vec<Variant>> {
    let default = match backend {
        Backend::Cuda => "det,pieces,atomic,unfused",
        Backend::Wgpu => "det,pieces",
        Backend::Cpu => "det",
    };
    let mut v = vec![];
    for p in s.unwrap_or(default).split(',').map(str::trim) {
        let x = match p {
            "" => continue,
            "det" => Variant::Det,
            "pieces" => Variant::Pieces,
            "atomic" => Variant::Atomic,
            "unfused" => Variant::Unfused,
            "det-rows" => Variant::DetRows,
            "pieces-rows" => Variant::PiecesRows,
            "det-1g" => Variant::DetOneGroup,
            "det-lanes" => Variant::DetLanes,
            o => {
                return Err(CliError::input(format!(
                    "--variants: unknown variant {o:?} (det, pieces, atomic, unfused, det-rows, pieces-rows, det-1g, det-lanes)"
                )))
            }
        };
        let ok = match x {
            Variant::Det => true,
            Variant::Pieces
            | Variant::DetRows
            | Variant::PiecesRows
            | Variant::DetOneGroup
            | Variant::DetLanes => backend != Backend::Cpu,
            _ => backend == Backend::Cuda,
        };
        if !ok {
            return Err(CliError::input(format!(
                "--variants {}: not offered by backend {} (cpu: det; wgpu: det, pieces; cuda: all)",
                x.name(),
                backend.name()
            )));
        }
        v.push(x);
    }
    if v.is_empty() {
        return Err(CliError::input("--variants: none given"));
    }
    Ok(v)
}

/// Bytes of every buffer a conv plan binds for a graph (float tensors at `es` bytes, index
/// tables at 4).
fn plan_bytes(plan: &KernelPlan, csr: &Csr, es: u64) -> u64 {
    let gs = plan.graph_size(csr);
    let mut seen: Vec<Tensor> = vec![];
    let mut total = 0;
    for t in plan
        .kernels
        .iter()
        .flat_map(|k| k.inputs.iter().chain(&k.outputs))
    {
        if seen.contains(t) {
            continue;
        }
        seen.push(*t);
        let b = if t.is_index() { 4 } else { es };
        total += plan.conv_buffer_len(*t, &gs).max(1) * b;
    }
    total
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// One timed row's result.
struct ConvMeasured {
    ms: f64,
    min_ms: f64,
    reps: usize,
    timing: &'static str,
    device_bytes: u64,
    compile_ms: f64,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.export_only {
        let dir = args
            .export_graphs
            .as_ref()
            .ok_or_else(|| CliError::input("--export-only needs --export-graphs DIR"))?;
        return export_graphs(dir, &build_graphs(&args.graphs)?);
    }
    let backend = args.backend.unwrap_or_else(Backend::best);
    backend
        .check_available()
        .map_err(|e| CliError::input(format!("--backend {}: {e}", backend.name())))?;
    if args.dtype != Dtype::F32 {
        return Err(CliError::input("--conv: only --dtype f32 is measured"));
    }
    if args.reps == 0 {
        return Err(CliError::input("--reps must be at least 1"));
    }
    if args.piece_edges == 0 {
        return Err(CliError::input("--piece-edges must be at least 1"));
    }
    let dirs = parse_dirs(args.dirs.as_deref().unwrap_or("forward,backward"))?;
    if dirs.is_empty() {
        return Err(CliError::input("--dirs: no direction given"));
    }
    let variants = parse_variants(args.variants.as_deref(), backend)?;
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
    let problems: Vec<(String, TensorProduct)> = match args.only.as_deref() {
        Some(o) => {
            let want: Vec<&str> = o
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            for l in &want {
                if !all.iter().any(|(label, _)| label == l) {
                    return Err(CliError::input(format!(
                        "--only: no problem labelled {l:?} in {source}"
                    )));
                }
            }
            // In the order given (run the cheap ones first: a stage cut short keeps them).
            want.iter()
                .filter_map(|w| all.iter().find(|(l, _)| l == w).cloned())
                .collect()
        }
        // The message-passing problems: NequIP and MACE.
        None => all
            .into_iter()
            .filter(|(l, _)| l.starts_with("mace") || l.starts_with("nequip"))
            .collect(),
    };
    if problems.is_empty() {
        return Err(CliError::input(format!("--suite {source}: no problems")));
    }
    let graphs = build_graphs(&args.graphs)?;
    if let Some(dir) = &args.export_graphs {
        export_graphs(dir, &graphs)?;
    }
    let mut timer = Timer::open(backend)?;
    let dev = backend
        .facade_device()
        .map_err(|e| CliError::input(format!("--backend {}: {e}", backend.name())))?;
    println!(
        "bench --conv: {} graphs × {} problems × {} directions × variants [{}], backend {} ({}), f32, reps {} (median)",
        graphs.len(),
        problems.len(),
        dirs.len(),
        variants.iter().map(|v| v.name()).collect::<Vec<_>>().join(","),
        backend.name(),
        backend.describe(),
        args.reps
    );
    let header = json!({
        "device": backend.describe(),
        "backend": backend.name(),
        "kind": "conv",
        "timing": timer.timing_name(),
        "dtype": "float32",
        "reps": args.reps,
        "warmup": args.warmup,
        "graphs": graphs.iter().map(|g| json!({
            "name": g.name, "about": g.about, "nodes": g.nodes, "edges": g.receiver.len()
        })).collect::<Vec<_>>(),
    });
    let total = graphs.len() * problems.len() * dirs.len() * variants.len();
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows: Vec<Value> = vec![];
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    for bg in &graphs {
        let csr = Arc::new(
            Csr::build(bg.nodes, &bg.receiver, &bg.sender)
                .map_err(|e| CliError::runtime(format!("graph {}: {e}", bg.name)))?,
        );
        let graph = ConvGraph::from_csr(dev, csr.clone());
        let csr_row = match &timer {
            Timer::Wgpu(w) => Some(wgpu_side::csr_build_row(w, bg)),
            Timer::Cuda(c) => Some(cuda::csr_build_row(c, bg)),
            Timer::Cpu => None,
        };
        if let Some(row) = csr_row {
            // Building both CSR views on the device vs on the host (one core).
            match &row["ms"] {
                Value::Null => say(
                    &pb,
                    format!("{:<20} csr build on the device: {}", bg.name, row["error"]),
                ),
                ms => say(
                    &pb,
                    format!(
                        "{:<20} csr build: device {:.3} ms, host {:.3} ms",
                        bg.name,
                        ms.as_f64().unwrap_or(f64::NAN),
                        row["host_ms"].as_f64().unwrap_or(f64::NAN)
                    ),
                ),
            }
            rows.push(row);
        }
        let mut gctx = GraphCtx::new(&mut timer, bg)?;
        for (label, tp) in &problems {
            let data = gctx.data(&mut timer, tp, &csr, &mut rng);
            for &d in &dirs {
                for &v in &variants {
                    pb.set_message(format!("{} {label} {} {}", bg.name, dir_name(d), v.name()));
                    let imp = format!("equikern-{}-{}", backend.name(), v.name());
                    let e = bg.receiver.len();
                    let (flops, _) = peer_counts(tp, d, e, 4);
                    let mut row = json!({
                        "graph": bg.name,
                        "nodes": bg.nodes,
                        "edges": e,
                        "problem": label,
                        "direction": dir_name(d),
                        "impl": imp,
                        "variant": v.name(),
                        "dtype": "float32",
                        "flops": flops,
                    });
                    let t0 = Instant::now();
                    let r = match &data {
                        Ok(data) => measure(&mut timer, dev, tp, &graph, &gctx, data, d, v, args),
                        Err(e) => Err(e.clone()),
                    };
                    let o = row.as_object_mut().expect("object");
                    match r {
                        Ok(m) => {
                            o.insert("ms".into(), json!(m.ms));
                            o.insert("min_ms".into(), json!(m.min_ms));
                            o.insert("gflops".into(), json!(flops as f64 / (m.ms * 1e6)));
                            o.insert("reps".into(), json!(m.reps));
                            o.insert("timing".into(), json!(m.timing));
                            o.insert("device_bytes".into(), json!(m.device_bytes));
                            o.insert("compile_ms".into(), json!(m.compile_ms));
                            say(
                                &pb,
                                format!(
                                    "{:<20} {label:<24} {:<9} {:<8} {:>10.4} ms {:>8.2} GiB  [{}; compile {:.0} ms]",
                                    bg.name,
                                    dir_name(d),
                                    v.name(),
                                    m.ms,
                                    gib(m.device_bytes),
                                    m.timing,
                                    m.compile_ms
                                ),
                            );
                        }
                        Err(err) => {
                            o.insert("ms".into(), Value::Null);
                            o.insert("error".into(), json!(err));
                            say(
                                &pb,
                                format!(
                                    "{:<20} {label:<24} {:<9} {:<8} error: {err}",
                                    bg.name,
                                    dir_name(d),
                                    v.name()
                                ),
                            );
                        }
                    }
                    o.insert(
                        "wall_s".into(),
                        json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0),
                    );
                    rows.push(row);
                    if let Some(path) = &args.json {
                        write_json(path, &header, &rows)?;
                    }
                    pb.inc(1);
                }
            }
            drop(data);
        }
    }
    pb.finish_and_clear();
    let failed = rows
        .iter()
        .filter(|r| r["ms"].is_null() && !r["error"].as_str().unwrap_or("").starts_with("skipped"))
        .count();
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

/// Per-graph device state (index arrays for the unfused path).
enum GraphCtx {
    Cpu,
    Wgpu,
    Cuda(cuda::CudaGraphCtx),
}

/// Inputs of one (graph, problem), resident where the backend computes.
enum Data {
    Cpu(BTreeMapData),
    Wgpu(wgpu_side::WgpuData),
    Cuda(cuda::CudaData),
}

type BTreeMapData = std::collections::BTreeMap<Tensor, Vec<f32>>;

impl GraphCtx {
    fn new(timer: &mut Timer, g: &BenchGraph) -> Result<GraphCtx> {
        Ok(match timer {
            Timer::Cpu => GraphCtx::Cpu,
            Timer::Wgpu(_) => GraphCtx::Wgpu,
            Timer::Cuda(c) => GraphCtx::Cuda(
                cuda::CudaGraphCtx::new(c, g)
                    .map_err(|e| CliError::runtime(format!("graph {}: {e}", g.name)))?,
            ),
        })
    }

    fn data(
        &mut self,
        timer: &mut Timer,
        tp: &TensorProduct,
        csr: &Csr,
        rng: &mut ChaCha8Rng,
    ) -> std::result::Result<Data, String> {
        let (n, e) = (csr.nodes, csr.edges());
        let wl = if tp.spec.shared_weights { 1 } else { e } * tp.weight_numel;
        // x, y, w, grad_z (tangents of double backward reuse x, y, w).
        let lens = [
            (Tensor::X, n * tp.dim_in1),
            (Tensor::Y, e * tp.dim_in2),
            (Tensor::W, wl),
            (Tensor::GZ, n * tp.dim_out),
        ];
        match timer {
            Timer::Cpu => Ok(Data::Cpu(
                lens.iter()
                    .map(|&(t, len)| {
                        let v: Vec<f32> =
                            random_vec(rng, len).into_iter().map(|a| a as f32).collect();
                        (t, v)
                    })
                    .collect(),
            )),
            Timer::Wgpu(w) => Ok(Data::Wgpu(wgpu_side::WgpuData::new(w, &lens, rng)?)),
            Timer::Cuda(c) => Ok(Data::Cuda(cuda::CudaData::new(c, &lens, rng)?)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    timer: &mut Timer,
    dev: &Device,
    tp: &TensorProduct,
    graph: &ConvGraph,
    gctx: &GraphCtx,
    data: &Data,
    d: Direction,
    v: Variant,
    args: &BenchArgs,
) -> std::result::Result<ConvMeasured, String> {
    let opts = ConvOptions {
        atomic: v == Variant::Atomic,
        max_piece_edges: matches!(v, Variant::Pieces | Variant::PiecesRows)
            .then_some(args.piece_edges),
    };
    let fusion = equikern::plan::LowerOptions {
        channel_fusion: !matches!(v, Variant::DetRows | Variant::PiecesRows),
        conv_forward_regs: (v == Variant::DetOneGroup).then_some(u32::MAX),
        conv_backward_lanes: v == Variant::DetLanes,
    };
    match (timer, data, gctx) {
        (Timer::Cpu, Data::Cpu(m), _) => cpu_measure_conv(dev, tp, graph, m, d, args),
        (Timer::Wgpu(w), Data::Wgpu(data), _) => {
            wgpu_side::measure(w, dev, tp, graph, data, d, opts, fusion, args)
        }
        (Timer::Cuda(c), Data::Cuda(data), GraphCtx::Cuda(g)) => match v {
            Variant::Unfused => cuda::measure_unfused(c, dev, tp, graph, g, data, d, args),
            _ => cuda::measure_fused(c, dev, tp, graph, data, d, opts, fusion, args),
        },
        _ => Err("backend state mismatch".into()),
    }
}

fn cpu_measure_conv(
    dev: &Device,
    tp: &TensorProduct,
    graph: &ConvGraph,
    m: &BTreeMapData,
    d: Direction,
    args: &BenchArgs,
) -> std::result::Result<ConvMeasured, String> {
    let t0 = Instant::now();
    let op = ConvOp::from_tensor_product(tp.clone(), dev, ConvOptions::default())
        .map_err(|e| e.to_string())?;
    let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    let v = |t: Tensor| &m[&t][..];
    use Tensor::*;
    let once = || -> std::result::Result<(), String> {
        let r = match d {
            Direction::Forward => op.forward(graph, v(X), v(Y), v(W)).map(drop),
            Direction::Backward => op.backward(graph, v(X), v(Y), v(W), v(GZ)).map(drop),
            Direction::DoubleBackward => op
                .double_backward(graph, v(X), v(Y), v(W), v(GZ), v(X), v(Y), v(W))
                .map(drop),
        };
        r.map_err(|e| e.to_string())
    };
    let t0 = Instant::now();
    once()?;
    let (warmup, reps) = plan_reps(args, t0.elapsed().as_secs_f64() * 1e3);
    for _ in 0..warmup {
        once()?;
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        once()?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (ms, min_ms) = median(t);
    Ok(ConvMeasured {
        ms,
        min_ms,
        reps,
        timing: "host",
        device_bytes: 0,
        compile_ms,
    })
}

mod wgpu_side {
    use super::*;
    use equikern::wgpu;
    use equikern::wgpu_runtime::Runtime;

    /// A row timing `Runtime::build_csr_tables` (median of 5, host clock around build +
    /// error readback) beside `Csr::build` on the host (median of 3).
    pub fn csr_build_row(w: &wgpu_timer::WgpuTimer, g: &BenchGraph) -> Value {
        let rt = &w.rt;
        let e = g.receiver.len();
        let mut row = json!({
            "graph": g.name, "nodes": g.nodes, "edges": e, "problem": "-",
            "direction": "csr_build", "impl": "equikern-wgpu-gpucsr", "variant": "gpucsr",
        });
        let o = row.as_object_mut().expect("object");
        let mut host = vec![];
        for _ in 0..3 {
            let t0 = Instant::now();
            let c = Csr::build(g.nodes, &g.receiver, &g.sender);
            host.push(t0.elapsed().as_secs_f64() * 1e3);
            drop(c);
        }
        o.insert("host_ms".into(), json!(median(host).0));
        let up = |v: &[u32]| {
            use wgpu::util::DeviceExt;
            let pad = [0u32];
            let data: &[u32] = if v.is_empty() { &pad } else { v };
            rt.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("index"),
                    contents: bytemuck::cast_slice(data),
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                })
        };
        let (r, s) = (up(&g.receiver), up(&g.sender));
        let mut t = vec![];
        for _ in 0..6 {
            let t0 = Instant::now();
            match rt.build_csr_tables_blocking(g.nodes as u32, e as u32, &r, &s) {
                Ok(tables) => {
                    t.push(t0.elapsed().as_secs_f64() * 1e3);
                    drop(tables);
                }
                Err(err) => {
                    o.insert("ms".into(), Value::Null);
                    o.insert("error".into(), json!(format!("skipped: {err}")));
                    return row;
                }
            }
        }
        t.remove(0); // the first call creates the pipelines
        let (ms, min_ms) = median(t);
        o.insert("ms".into(), json!(ms));
        o.insert("min_ms".into(), json!(min_ms));
        o.insert("timing".into(), json!("host"));
        row
    }

    pub struct WgpuData {
        pub bufs: Vec<(Tensor, wgpu::Buffer)>,
    }

    /// A storage buffer of `len` f32 filled by tiling a random block (device-side copies).
    fn tiled(
        rt: &Runtime,
        len: usize,
        rng: &mut ChaCha8Rng,
    ) -> std::result::Result<wgpu::Buffer, String> {
        let bytes = (len.max(1) as u64) * 4;
        if bytes > rt.limits().max_buffer_size {
            return Err(format!(
                "skipped: a buffer of {:.2} GiB exceeds this adapter's max_buffer_size",
                gib(bytes)
            ));
        }
        let block_len = len.clamp(1, 1 << 20);
        let block: Vec<f32> = random_vec(rng, block_len)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let src = rt.upload("tile", &block);
        let dst = rt.create_storage("input", len as u64);
        let mut enc = rt
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let (mut at, blk) = (0u64, block_len as u64 * 4);
        let total = len as u64 * 4;
        while at < total {
            let n = blk.min(total - at);
            enc.copy_buffer_to_buffer(&src, 0, &dst, at, n);
            at += n;
        }
        rt.queue().submit([enc.finish()]);
        Ok(dst)
    }

    impl WgpuData {
        pub fn new(
            w: &wgpu_timer::WgpuTimer,
            lens: &[(Tensor, usize)],
            rng: &mut ChaCha8Rng,
        ) -> std::result::Result<Self, String> {
            let mut bufs = vec![];
            for &(t, len) in lens {
                bufs.push((t, tiled(&w.rt, len, rng)?));
            }
            w.rt.wait_idle().map_err(|e| e.to_string())?;
            Ok(WgpuData { bufs })
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn measure(
        w: &mut wgpu_timer::WgpuTimer,
        dev: &Device,
        tp: &TensorProduct,
        graph: &ConvGraph,
        data: &WgpuData,
        d: Direction,
        opts: ConvOptions,
        fusion: equikern::plan::LowerOptions,
        args: &BenchArgs,
    ) -> std::result::Result<ConvMeasured, String> {
        let t0 = Instant::now();
        let op = ConvOp::from_tensor_product(tp.clone(), dev, opts)
            .map_err(|e| e.to_string())?
            .with_channel_fusion(fusion.channel_fusion)
            .with_conv_forward_regs(fusion.conv_forward_regs)
            .with_conv_backward_lanes(fusion.conv_backward_lanes);
        let compiled = pollster::block_on(op.wgpu_compiled_async(d)).map_err(|e| e.to_string())?;
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        let plan = compiled.plan();
        let csr = graph.csr().ok_or("graph without a host CSR")?;
        plan.check_graph(&plan.graph_size(csr))
            .map_err(|e| format!("skipped: {e}"))?;
        let rt = w.rt.clone();
        let get = |t: Tensor| {
            data.bufs
                .iter()
                .find(|(u, _)| *u == t)
                .map(|(_, b)| b)
                .ok_or_else(|| format!("no input {t:?}"))
        };
        use Tensor::*;
        let outs: Vec<Tensor> = equikern::wgpu_runtime::conv_outputs(plan);
        let out_bufs: Vec<(Tensor, wgpu::Buffer)> = outs
            .iter()
            .map(|&t| {
                let n = plan.conv_buffer_len(t, &plan.graph_size(csr));
                (t, rt.create_storage(&format!("{t:?}"), n))
            })
            .collect();
        let mut bufs: Vec<(Tensor, &wgpu::Buffer)> = vec![];
        for t in equikern::wgpu_runtime::conv_inputs(plan) {
            let src = match t {
                HX => X,
                HY => Y,
                HW => W,
                t => t,
            };
            bufs.push((t, get(src)?));
        }
        for (t, b) in &out_bufs {
            bufs.push((*t, b));
        }
        let device_bytes = plan_bytes(plan, csr, 4);
        let mut encode = |_: usize, enc: &mut wgpu::CommandEncoder| {
            pollster::block_on(op.encode_buffers_async(d, graph, &bufs, enc))
                .map_err(|e| e.to_string())
        };
        let t0 = Instant::now();
        let mut enc = rt
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encode(0, &mut enc)?;
        rt.queue().submit([enc.finish()]);
        rt.wait_idle().map_err(|e| e.to_string())?;
        let (warmup, reps) = plan_reps(args, t0.elapsed().as_secs_f64() * 1e3);
        let t = w.time_runs(warmup, reps, &mut encode)?;
        let (ms, min_ms) = median(t);
        Ok(ConvMeasured {
            ms,
            min_ms,
            reps,
            timing: w.timing_name(),
            device_bytes,
            compile_ms,
        })
    }
}

mod cuda {
    use super::*;
    use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
    use equikern::cuda_runtime::CudaDevice;
    use equikern::{CudaSlice, TensorProductOp};

    /// Gather rows by index and scatter-add rows by index (the unfused path's glue), f32.
    const GLUE: &str = r#"
extern "C" __global__ void ek_gather(const float* __restrict__ src,
    const unsigned int* __restrict__ idx, float* __restrict__ dst,
    unsigned long long rows, unsigned int d) {
  unsigned long long n = rows * (unsigned long long)d;
  unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       t < n; t += step) {
    unsigned long long e = t / d;
    unsigned long long c = t - e * d;
    dst[t] = src[(unsigned long long)idx[e] * d + c];
  }
}
extern "C" __global__ void ek_scatter_add(const float* __restrict__ src,
    const unsigned int* __restrict__ idx, float* __restrict__ dst,
    unsigned long long rows, unsigned int d) {
  unsigned long long n = rows * (unsigned long long)d;
  unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       t < n; t += step) {
    unsigned long long e = t / d;
    unsigned long long c = t - e * d;
    atomicAdd(&dst[(unsigned long long)idx[e] * d + c], src[t]);
  }
}
"#;

    fn err(e: impl std::fmt::Display) -> String {
        e.to_string()
    }

    /// A row timing `CudaDevice::build_csr_tables` (events around the launches and the
    /// error readback; median of 5 after one warm-up) beside `Csr::build` on the host.
    pub fn csr_build_row(c: &cuda_timer::CudaTimer, g: &BenchGraph) -> Value {
        let e = g.receiver.len();
        let mut row = json!({
            "graph": g.name, "nodes": g.nodes, "edges": e, "problem": "-",
            "direction": "csr_build", "impl": "equikern-cuda-gpucsr", "variant": "gpucsr",
        });
        let o = row.as_object_mut().expect("object");
        let mut host = vec![];
        for _ in 0..3 {
            let t0 = Instant::now();
            let c = Csr::build(g.nodes, &g.receiver, &g.sender);
            host.push(t0.elapsed().as_secs_f64() * 1e3);
            drop(c);
        }
        o.insert("host_ms".into(), json!(median(host).0));
        let dev = &c.dev;
        let up = |v: &[u32]| -> std::result::Result<CudaSlice<u32>, String> {
            let s = dev.stream();
            let mut d = s.alloc_zeros::<u32>(v.len().max(1)).map_err(err)?;
            if !v.is_empty() {
                s.memcpy_htod(v, &mut d.slice_mut(0..v.len()))
                    .map_err(err)?;
            }
            Ok(d)
        };
        let res = (|| -> std::result::Result<(f64, f64), String> {
            let (r, s) = (up(&g.receiver)?, up(&g.sender)?);
            let mut run = |_: usize| -> std::result::Result<(), String> {
                dev.build_csr_tables(g.nodes as u32, e as u32, &r, &s)
                    .map(drop)
                    .map_err(err)
            };
            let t = c.time_runs(1, 5, &mut run)?;
            Ok(median(t))
        })();
        match res {
            Ok((ms, min_ms)) => {
                o.insert("ms".into(), json!(ms));
                o.insert("min_ms".into(), json!(min_ms));
                o.insert("timing".into(), json!("events"));
            }
            Err(e) => {
                o.insert("ms".into(), Value::Null);
                o.insert("error".into(), json!(e));
            }
        }
        row
    }

    pub struct CudaGraphCtx {
        receiver: CudaSlice<u32>,
        sender: CudaSlice<u32>,
        nodes: usize,
        edges: usize,
        gather: CudaFunction,
        scatter: CudaFunction,
    }

    impl CudaGraphCtx {
        pub fn new(c: &cuda_timer::CudaTimer, g: &BenchGraph) -> std::result::Result<Self, String> {
            let dev = &c.dev;
            let ptx = cudarc::nvrtc::compile_ptx(GLUE).map_err(|e| format!("glue kernels: {e}"))?;
            let m = dev.context().load_module(ptx).map_err(err)?;
            let gather = m.load_function("ek_gather").map_err(err)?;
            let scatter = m.load_function("ek_scatter_add").map_err(err)?;
            let up = |v: &[u32]| -> std::result::Result<CudaSlice<u32>, String> {
                let s = dev.stream();
                let mut d = s.alloc_zeros::<u32>(v.len().max(1)).map_err(err)?;
                if !v.is_empty() {
                    s.memcpy_htod(v, &mut d.slice_mut(0..v.len()))
                        .map_err(err)?;
                }
                Ok(d)
            };
            Ok(CudaGraphCtx {
                receiver: up(&g.receiver)?,
                sender: up(&g.sender)?,
                nodes: g.nodes,
                edges: g.receiver.len(),
                gather,
                scatter,
            })
        }

        fn launch(
            &self,
            dev: &CudaDevice,
            f: &CudaFunction,
            src: &CudaSlice<f32>,
            idx: &CudaSlice<u32>,
            dst: &mut CudaSlice<f32>,
            d: usize,
        ) -> std::result::Result<(), String> {
            let rows = self.edges as u64;
            let n = rows * d as u64;
            if n == 0 {
                return Ok(());
            }
            let blocks = n.div_ceil(256).min(132 * 64) as u32;
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let d32 = d as u32;
            let stream = dev.stream();
            let mut b = stream.launch_builder(f);
            b.arg(src).arg(idx).arg(dst).arg(&rows).arg(&d32);
            // SAFETY: src holds (rows or nodes) × d, idx rows entries < the gathered side's
            // row count (validated graph), dst the other side; the kernel checks t < rows × d.
            unsafe { b.launch(cfg) }.map(drop).map_err(err)
        }
    }

    pub struct CudaData {
        pub bufs: Vec<(Tensor, CudaSlice<f32>)>,
    }

    impl CudaData {
        pub fn new(
            c: &cuda_timer::CudaTimer,
            lens: &[(Tensor, usize)],
            rng: &mut ChaCha8Rng,
        ) -> std::result::Result<Self, String> {
            let need: u64 = lens.iter().map(|(_, l)| *l as u64 * 4).sum();
            let (free, _) = c.dev.context().mem_get_info().map_err(err)?;
            if need as f64 > free as f64 * 0.9 {
                return Err(format!(
                    "skipped: inputs need {:.2} GiB, {:.2} GiB free",
                    gib(need),
                    gib(free as u64)
                ));
            }
            let mut bufs = vec![];
            for &(t, len) in lens {
                bufs.push((t, tiled(&c.dev, len, rng)?));
            }
            c.dev.synchronize().map_err(err)?;
            Ok(CudaData { bufs })
        }

        fn get(&self, t: Tensor) -> std::result::Result<&CudaSlice<f32>, String> {
            use Tensor::*;
            let t = match t {
                HX => X,
                HY => Y,
                HW => W,
                t => t,
            };
            self.bufs
                .iter()
                .find(|(u, _)| *u == t)
                .map(|(_, b)| b)
                .ok_or_else(|| format!("no input {t:?}"))
        }

        fn bytes(&self) -> u64 {
            self.bufs.iter().map(|(_, b)| b.len() as u64 * 4).sum()
        }
    }

    /// `len` f32 on the device, filled by tiling a random block with device copies.
    fn tiled(
        dev: &CudaDevice,
        len: usize,
        rng: &mut ChaCha8Rng,
    ) -> std::result::Result<CudaSlice<f32>, String> {
        let block_len = len.clamp(1, 1 << 22);
        let block: Vec<f32> = random_vec(rng, block_len)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let src = dev.upload(&block).map_err(err)?;
        let mut dst = dev.zeros::<f32>(len).map_err(err)?;
        let stream = dev.stream();
        let mut at = 0;
        while at < len {
            let n = block_len.min(len - at);
            stream
                .memcpy_dtod(&src.slice(0..n), &mut dst.slice_mut(at..at + n))
                .map_err(err)?;
            at += n;
        }
        Ok(dst)
    }

    fn free_check(dev: &CudaDevice, need: u64) -> std::result::Result<(), String> {
        let (free, _) = dev.context().mem_get_info().map_err(err)?;
        if need as f64 > free as f64 * 0.9 {
            return Err(format!(
                "skipped: needs {:.2} GiB more on the device, {:.2} GiB free",
                gib(need),
                gib(free as u64)
            ));
        }
        Ok(())
    }

    fn finish(
        c: &cuda_timer::CudaTimer,
        args: &BenchArgs,
        run: &mut dyn FnMut(usize) -> std::result::Result<(), String>,
        device_bytes: u64,
        compile_ms: f64,
    ) -> std::result::Result<ConvMeasured, String> {
        let t0 = Instant::now();
        run(0)?;
        c.dev.synchronize().map_err(err)?;
        let (warmup, reps) = plan_reps(args, t0.elapsed().as_secs_f64() * 1e3);
        let t = c.time_runs(warmup, reps, run)?;
        if t.iter().any(|x| !x.is_finite() || *x <= 0.0) {
            return Err(format!("event timing gave non-positive intervals: {t:?}"));
        }
        let (ms, min_ms) = median(t);
        Ok(ConvMeasured {
            ms,
            min_ms,
            reps,
            timing: "events",
            device_bytes,
            compile_ms,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn measure_fused(
        c: &mut cuda_timer::CudaTimer,
        dev: &Device,
        tp: &TensorProduct,
        graph: &ConvGraph,
        data: &CudaData,
        d: Direction,
        opts: ConvOptions,
        fusion: equikern::plan::LowerOptions,
        args: &BenchArgs,
    ) -> std::result::Result<ConvMeasured, String> {
        let t0 = Instant::now();
        let op = ConvOp::from_tensor_product(tp.clone(), dev, opts)
            .map_err(|e| e.to_string())?
            .with_channel_fusion(fusion.channel_fusion)
            .with_conv_forward_regs(fusion.conv_forward_regs)
            .with_conv_backward_lanes(fusion.conv_backward_lanes);
        let plan = op.cuda_plan(d, PlanDtype::F32).map_err(err)?;
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        let p = plan.plan();
        let csr = graph.csr().ok_or("graph without a host CSR")?;
        p.check_graph(&p.graph_size(csr))
            .map_err(|e| format!("skipped: {e}"))?;
        let device_bytes = plan_bytes(p, csr, 4);
        // Outputs and scratch are allocated here; inputs and tables exist already.
        free_check(&c.dev, device_bytes.saturating_sub(data.bytes()))?;
        let gs = p.graph_size(csr);
        let mut outs: Vec<(Tensor, CudaSlice<f32>)> = vec![];
        for t in plan.outputs() {
            let n = p.conv_buffer_len(t, &gs) as usize;
            outs.push((t, c.dev.zeros::<f32>(n).map_err(err)?));
        }
        let mut ins: Vec<(Tensor, &CudaSlice<f32>)> = vec![];
        for t in plan.inputs() {
            ins.push((t, data.get(t)?));
        }
        let mut run = |_: usize| -> std::result::Result<(), String> {
            let mut o: Vec<(Tensor, &mut CudaSlice<f32>)> =
                outs.iter_mut().map(|(t, b)| (*t, b)).collect();
            op.run_cuda(d, graph, &ins, &mut o).map_err(err)
        };
        finish(c, args, &mut run, device_bytes, compile_ms)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn measure_unfused(
        c: &mut cuda_timer::CudaTimer,
        dev: &Device,
        tp: &TensorProduct,
        _graph: &ConvGraph,
        g: &CudaGraphCtx,
        data: &CudaData,
        d: Direction,
        args: &BenchArgs,
    ) -> std::result::Result<ConvMeasured, String> {
        if d == Direction::DoubleBackward {
            return Err("skipped: the unfused path is measured forward and backward only".into());
        }
        let t0 = Instant::now();
        let op = TensorProductOp::from_tensor_product(tp.clone(), dev).map_err(err)?;
        op.cuda_tensor_product(PlanDtype::F32)
            .and_then(|ctp| ctp.prepare(d).map_err(equikern::Error::from))
            .map_err(err)?;
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (n, e) = (g.nodes, g.edges);
        let wl = if tp.spec.shared_weights { 1 } else { e } * tp.weight_numel;
        let cd = c.dev.clone();
        let b4 = |x: usize| x as u64 * 4;
        let tables = b4(2 * e);
        match d {
            Direction::Forward => {
                // xs [E, d1], msg [E, dout], z [N, dout]
                let extra = b4(e * tp.dim_in1) + b4(e * tp.dim_out) + b4(n * tp.dim_out);
                free_check(&cd, extra)?;
                let device_bytes =
                    extra + tables + b4(n * tp.dim_in1) + b4(e * tp.dim_in2) + b4(wl);
                let mut xs = cd.zeros::<f32>(e * tp.dim_in1).map_err(err)?;
                let mut msg = cd.zeros::<f32>(e * tp.dim_out).map_err(err)?;
                let mut z = cd.zeros::<f32>(n * tp.dim_out).map_err(err)?;
                let (x, y, w) = (
                    data.get(Tensor::X)?,
                    data.get(Tensor::Y)?,
                    data.get(Tensor::W)?,
                );
                let mut run = |_: usize| -> std::result::Result<(), String> {
                    g.launch(&cd, &g.gather, x, &g.sender, &mut xs, tp.dim_in1)?;
                    op.forward_cuda(e, &xs, y, w, &mut msg).map_err(err)?;
                    cd.stream().memset_zeros(&mut z).map_err(err)?;
                    g.launch(&cd, &g.scatter, &msg, &g.receiver, &mut z, tp.dim_out)
                };
                finish(c, args, &mut run, device_bytes, compile_ms)
            }
            _ => {
                // xs [E, d1], gzs [E, dout], gxe [E, d1], gy [E, d2], gw, gx [N, d1]
                let extra = 2 * b4(e * tp.dim_in1)
                    + b4(e * tp.dim_out)
                    + b4(e * tp.dim_in2)
                    + b4(wl)
                    + b4(n * tp.dim_in1);
                free_check(&cd, extra)?;
                let device_bytes = extra
                    + tables
                    + b4(n * tp.dim_in1)
                    + b4(e * tp.dim_in2)
                    + b4(wl)
                    + b4(n * tp.dim_out);
                let mut xs = cd.zeros::<f32>(e * tp.dim_in1).map_err(err)?;
                let mut gzs = cd.zeros::<f32>(e * tp.dim_out).map_err(err)?;
                let mut gxe = cd.zeros::<f32>(e * tp.dim_in1).map_err(err)?;
                let mut gy = cd.zeros::<f32>(e * tp.dim_in2).map_err(err)?;
                let mut gw = cd.zeros::<f32>(wl).map_err(err)?;
                let mut gx = cd.zeros::<f32>(n * tp.dim_in1).map_err(err)?;
                let (x, y, w, gz) = (
                    data.get(Tensor::X)?,
                    data.get(Tensor::Y)?,
                    data.get(Tensor::W)?,
                    data.get(Tensor::GZ)?,
                );
                let mut run = |_: usize| -> std::result::Result<(), String> {
                    g.launch(&cd, &g.gather, x, &g.sender, &mut xs, tp.dim_in1)?;
                    g.launch(&cd, &g.gather, gz, &g.receiver, &mut gzs, tp.dim_out)?;
                    op.backward_cuda(e, &xs, y, w, &gzs, &mut gxe, &mut gy, &mut gw)
                        .map_err(err)?;
                    cd.stream().memset_zeros(&mut gx).map_err(err)?;
                    g.launch(&cd, &g.scatter, &gxe, &g.sender, &mut gx, tp.dim_in1)
                };
                finish(c, args, &mut run, device_bytes, compile_ms)
            }
        }
    }
}
