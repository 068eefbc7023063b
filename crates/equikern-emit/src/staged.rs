//! Printer of a weight-staged kernel ([`equikern_plan::StagedWork`]) for CUDA/HIP and WGSL:
//! stage the sample's operands in workgroup memory, run the tasks, write the outputs. The
//! plan fixes the layout, the tasks and every summation order; this only spells them.

use std::fmt::Write as _;

use equikern_plan::{Kernel, KernelPlan, StagedPass, StagedPath, StagedWork, Tensor};

use crate::channel::{barrier, Dialect};
use crate::EmitError;

/// The workgroup array.
const S: &str = "ek_s";

/// Structural checks, so a malformed plan cannot print out-of-range code.
pub(crate) fn check(plan: &KernelPlan, k: &Kernel, w: &StagedWork) -> Result<(), String> {
    let d = &plan.dims;
    let (ins, outs) = w.pass.bindings();
    if k.inputs != ins || k.outputs != outs {
        return Err(format!(
            "bindings {:?} -> {:?}, expected {ins:?} -> {outs:?}",
            k.inputs, k.outputs
        ));
    }
    if d.shared_weights || d.weight_numel == 0 {
        return Err("a staged kernel needs per-sample weights".into());
    }
    if k.workgroup_size == 0 {
        return Err("empty workgroup".into());
    }
    let n = w.shared_len as u64;
    let fits = |off: u32, len: u64| off as u64 + len <= n;
    if !fits(w.x_stage, d.dim_in1 as u64)
        || !fits(w.y_stage, d.dim_in2 as u64)
        || (w.pass != StagedPass::Forward && !fits(w.gz_stage, d.dim_out as u64))
        || (w.pass == StagedPass::DoubleBackward
            && (!fits(w.hx_stage, d.dim_in1 as u64)
                || !fits(w.hy_stage, d.dim_in2 as u64)
                || !fits(w.dgz_stage, d.dim_out as u64)))
    {
        return Err("operand stage outside workgroup memory".into());
    }
    let mut tasks = 0u64;
    for p in &w.paths {
        let t = p.tasks() as u64;
        if p.first_task as u64 != tasks {
            return Err(format!("path {}: tasks do not tile", p.path));
        }
        tasks += t;
        if p.x_mul == 0 || p.y_mul == 0 || p.z_mul == 0 || p.s_stride < p.z_mul {
            return Err(format!("path {}: empty or overlapping rows", p.path));
        }
        let inside = |off: u32, mul: u32, len: u32, total: u32| {
            off as u64 + mul as u64 * len as u64 <= total as u64
        };
        if !inside(p.x_offset, p.x_mul, p.x_len, d.dim_in1)
            || !inside(p.y_offset, p.y_mul, p.y_len, d.dim_in2)
            || !inside(p.z_offset, p.z_mul, p.z_len, d.dim_out)
            || p.w_offset as u64 + p.weights() as u64 > d.weight_numel as u64
        {
            return Err(format!("path {}: block outside a sample", p.path));
        }
        if !fits(p.s_offset, t * p.s_stride as u64) {
            return Err(format!("path {}: staged weights outside memory", p.path));
        }
        let (px, py, pa) = match w.pass {
            StagedPass::Forward => (p.z_len, 0, 0),
            StagedPass::Backward => (p.x_len, p.y_len, 0),
            StagedPass::DoubleBackward => (p.x_len, p.y_len, p.z_len),
        };
        if !fits(p.part_x, t * px as u64)
            || !fits(p.part_y, t * py as u64)
            || !fits(p.part_a, t * pa as u64)
            || !fits(p.part_ah, t * pa as u64)
        {
            return Err(format!("path {}: partials outside memory", p.path));
        }
        for term in &p.terms {
            if term.i >= p.x_len
                || term.j >= p.y_len
                || term.k >= p.z_len
                || !term.coeff.is_finite()
            {
                return Err(format!("path {}: term out of range", p.path));
            }
        }
    }
    if tasks != w.tasks as u64 {
        return Err("task count mismatch".into());
    }
    // Paths into one output block (forward) agree on its shape.
    for p in &w.paths {
        for q in &w.paths {
            if p.z_offset == q.z_offset && (p.z_len != q.z_len || p.z_mul != q.z_mul) {
                return Err("paths disagree on an output block".into());
            }
            if p.x_offset == q.x_offset && (p.x_len != q.x_len || p.x_mul != q.x_mul) {
                return Err("paths disagree on an x block".into());
            }
            if p.y_offset == q.y_offset && (p.y_len != q.y_len || p.y_mul != q.y_mul) {
                return Err("paths disagree on a y block".into());
            }
        }
    }
    Ok(())
}

pub(crate) fn shared_decl(dia: &Dialect, plan: &KernelPlan, w: &StagedWork) -> String {
    let n = w.shared_len.max(1);
    match dia {
        Dialect::Cuda => format!("    __shared__ {} {S}[{n}];\n", dia.real(plan.dtype)),
        Dialect::Wgsl { .. } => format!("var<workgroup> {S}: array<f32, {n}>;\n\n"),
    }
}

/// One source range copied into workgroup memory: `(tensor, first source element, first
/// staged element, (W, stride) of padded rows, elements)`.
type Staging = (Tensor, u32, u32, Option<(u32, u32)>, u32);

struct Out {
    s: String,
}

impl Out {
    fn ln(&mut self, ind: usize, line: &str) {
        let _ = writeln!(self.s, "{:ind$}{line}", "");
    }
}

/// `for (e = lid; e < n; e += wg)` in the dialect, with `body` lines inside.
#[allow(clippy::too_many_arguments)]
fn strided(
    o: &mut Out,
    dia: &Dialect,
    ind: usize,
    var: &str,
    lid: &str,
    n: u32,
    wg: u32,
    body: &[String],
) {
    match dia {
        Dialect::Cuda => {
            o.ln(ind, "#pragma unroll 4");
            o.ln(
                ind,
                &format!("for (unsigned int {var} = {lid}; {var} < {n}u; {var} += {wg}u) {{"),
            );
        }
        Dialect::Wgsl { .. } => o.ln(
            ind,
            &format!("for (var {var} = {lid}; {var} < {n}u; {var} += {wg}u) {{"),
        ),
    }
    for l in body {
        o.ln(ind + 4, l);
    }
    o.ln(ind, "}");
}

fn sh(i: &str) -> String {
    format!("{S}[{i}]")
}

/// Loads the staged rows `u` of `x`-like and `v` of `y`-like operands (stage offsets `xs`,
/// `ys`) of a path into `{px}*` and `{py}*`: only the components some term reads (no unused
/// locals: HIP builds with -Werror).
#[allow(clippy::too_many_arguments)]
fn load_rows(
    o: &mut Out,
    dia: &Dialect,
    plan: &KernelPlan,
    p: &StagedPath,
    xs: u32,
    ys: u32,
    px: &str,
    py: &str,
) {
    let dt = plan.dtype;
    for i in (0..p.x_len).filter(|&i| p.terms.iter().any(|t| t.i == i)) {
        let e = sh(&format!("{}u + u * {}u", xs + p.x_offset + i, p.x_len));
        o.ln(12, &dia.let_(dt, &format!("{px}{i}"), &e));
    }
    for j in (0..p.y_len).filter(|&j| p.terms.iter().any(|t| t.j == j)) {
        let e = sh(&format!("{}u + v * {}u", ys + p.y_offset + j, p.y_len));
        o.ln(12, &dia.let_(dt, &format!("{py}{j}"), &e));
    }
}

/// `{name}{k} = Σ_terms c · f(term)` for every output component `k`.
fn sum_k(
    o: &mut Out,
    dia: &Dialect,
    plan: &KernelPlan,
    p: &StagedPath,
    name: &str,
    f: impl Fn(&equikern_plan::ChannelTerm) -> String,
) {
    let dt = plan.dtype;
    for k in 0..p.z_len {
        let mut e = dia.lit(0.0, dt);
        for t in p.terms.iter().filter(|t| t.k == k) {
            let _ = write!(e, " + {} * {}", dia.lit(t.coeff, dt), f(t));
        }
        o.ln(12, &dia.let_(dt, &format!("{name}{k}"), &e));
    }
}

/// Writes (or, `add`, adds to) the task's `x`- and `y`-side partials:
/// `part_x[q, i] = Σ_terms c · fx(term)`, `part_y[q, j] = Σ_terms c · fy(term)`.
#[allow(clippy::too_many_arguments)]
fn partials(
    o: &mut Out,
    dia: &Dialect,
    plan: &KernelPlan,
    p: &StagedPath,
    add: bool,
    fx: impl Fn(&equikern_plan::ChannelTerm) -> String,
    fy: impl Fn(&equikern_plan::ChannelTerm) -> String,
) {
    let dt = plan.dtype;
    let op = if add { "+=" } else { "=" };
    for i in 0..p.x_len {
        let mut e = dia.lit(0.0, dt);
        for t in p.terms.iter().filter(|t| t.i == i) {
            let _ = write!(e, " + {} * {}", dia.lit(t.coeff, dt), fx(t));
        }
        let at = sh(&format!("{}u + q * {}u", p.part_x + i, p.x_len));
        o.ln(12, &format!("{at} {op} {e};"));
    }
    for j in 0..p.y_len {
        let mut e = dia.lit(0.0, dt);
        for t in p.terms.iter().filter(|t| t.j == j) {
            let _ = write!(e, " + {} * {}", dia.lit(t.coeff, dt), fy(t));
        }
        let at = sh(&format!("{}u + q * {}u", p.part_y + j, p.y_len));
        o.ln(12, &format!("{at} {op} {e};"));
    }
}

/// Copies source ranges into workgroup memory: every load of the invocation first, then the
/// stores (a workgroup waits for global memory once, not once per range or loop iteration),
/// consecutive invocations on consecutive elements; then a barrier.
fn stage(o: &mut Out, dia: &Dialect, plan: &KernelPlan, wg: u32, copies: &[Staging], tag: &str) {
    let dt = plan.dtype;
    let zero = dia.lit(0.0, dt);
    let mut stores = vec![];
    let mut n_loads = 0;
    for &(t, src, dst, pad, n) in copies {
        for round in 0..n.div_ceil(wg) {
            let e = format!("li + {}u", round * wg);
            let full = (round + 1) * wg <= n;
            let l = format!("{tag}{n_loads}");
            n_loads += 1;
            let load = dia.at(t, &format!("{src}u + {e}"));
            let line = match (dia, full) {
                (_, true) => dia.let_(dt, &l, &load),
                (Dialect::Cuda, false) => {
                    dia.let_(dt, &l, &format!("({e} < {n}u) ? {load} : {zero}"))
                }
                (Dialect::Wgsl { .. }, false) => format!(
                    "{} if ({e} < {n}u) {{ {l} = {load}; }}",
                    dia.var(dt, &l, &zero)
                ),
            };
            o.ln(4, &line);
            let at = match pad {
                None => format!("{dst}u + {e}"),
                Some((zm, stride)) => format!("{dst}u + ({e}) / {zm}u * {stride}u + ({e}) % {zm}u"),
            };
            let store = format!("{} = {l};", sh(&at));
            stores.push(if full {
                store
            } else {
                format!("if ({e} < {n}u) {{ {store} }}")
            });
        }
    }
    for st in stores {
        o.ln(4, &st);
    }
    o.ln(4, barrier(dia));
}

/// The staged copy of a per-sample weight tensor (`W` or `HW`), rows at the plan's stride.
fn weight_copies(w: &StagedWork, t: Tensor) -> Vec<Staging> {
    w.paths
        .iter()
        .map(|p| {
            let pad = (p.s_stride != p.z_mul).then_some((p.z_mul, p.s_stride));
            (t, p.w_offset, p.s_offset, pad, p.weights())
        })
        .collect()
}

/// `for t in tasks` with one branch per path: its `q`, `u`, `v`, then `task(p)`; a barrier
/// after.
fn tasks(
    o: &mut Out,
    dia: &Dialect,
    w: &StagedWork,
    wg: u32,
    comment: &str,
    mut task: impl FnMut(&mut Out, &StagedPath),
) {
    o.ln(4, &format!("// tasks: one (path, u, v) each: {comment}"));
    let tloop = match dia {
        Dialect::Cuda => format!("for (unsigned int t = li; t < {}u; t += {wg}u) {{", w.tasks),
        Dialect::Wgsl { .. } => format!("for (var t = li; t < {}u; t += {wg}u) {{", w.tasks),
    };
    o.ln(4, &tloop);
    for p in &w.paths {
        o.ln(
            8,
            &format!(
                "if (t >= {}u && t < {}u) {{ // path {}",
                p.first_task,
                p.first_task + p.tasks(),
                p.path
            ),
        );
        o.ln(12, &dia.let_u("q", &format!("t - {}u", p.first_task)));
        o.ln(12, &dia.let_u("u", &format!("q / {}u", p.y_mul)));
        o.ln(12, &dia.let_u("v", &format!("q - u * {}u", p.y_mul)));
        task(o, p);
        o.ln(8, "}");
    }
    o.ln(4, "}");
    o.ln(4, barrier(dia));
}

/// Where an output phase writes.
enum Dest {
    Global(Tensor),
    Shared(u32),
}

/// Per output element `(w, k)` of each path's block: `init + Σ_paths Σ_tasks
/// staged_weight[task, w] · a[task, k]` (`a` at `a_off(path)`, `z_len` per task), written to
/// `dest`; elements no path reaches get `init` (or zero).
#[allow(clippy::too_many_arguments)]
fn z_phase(
    o: &mut Out,
    dia: &Dialect,
    plan: &KernelPlan,
    w: &StagedWork,
    wg: u32,
    a_off: impl Fn(&StagedPath) -> u32,
    init: Option<u32>,
    dest: Dest,
) {
    let dt = plan.dtype;
    let start = match init {
        Some(at) => sh(&format!("{at}u + e")),
        None => dia.lit(0.0, dt),
    };
    let mut body = vec![dia.var(dt, "acc", &start)];
    for b in w.z_blocks() {
        let n = b.z_mul * b.z_len;
        body.push(format!(
            "if (e >= {}u && e < {}u) {{",
            b.z_offset,
            b.z_offset + n
        ));
        body.push(format!(
            "    {}",
            dia.let_u("r", &format!("e - {}u", b.z_offset))
        ));
        body.push(format!(
            "    {}",
            dia.let_u("wi", &format!("r / {}u", b.z_len))
        ));
        body.push(format!(
            "    {}",
            dia.let_u("kk", &format!("r - wi * {}u", b.z_len))
        ));
        for p in w.paths.iter().filter(|p| p.z_offset == b.z_offset) {
            body.push(format!("    {}", loop_head(dia, "q", p.tasks())));
            body.push(format!(
                "        acc += {} * {};",
                sh(&format!("{}u + q * {}u + wi", p.s_offset, p.s_stride)),
                sh(&format!("{}u + q * {}u + kk", a_off(p), p.z_len))
            ));
            body.push("    }".into());
        }
        body.push("}".into());
    }
    body.push(match dest {
        Dest::Global(t) => format!("{} = acc;", dia.at(t, "e")),
        Dest::Shared(at) => format!("{} = acc;", sh(&format!("{at}u + e"))),
    });
    strided(o, dia, 4, "e", "li", plan.dims.dim_out, wg, &body);
}

/// The kernel body after the prologue defines `g`: one workgroup per sample (`block`, the
/// workgroup's linear index, where the dialect needs it spelled from workgroup ids), `lid` the
/// local index, `num_samples` the dispatch's sample count.
pub(crate) fn body(
    dia: &Dialect,
    plan: &KernelPlan,
    k: &Kernel,
    w: &StagedWork,
    block: Option<&str>,
    lid: &str,
    num_samples: &str,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let wg = k.workgroup_size;
    let mut o = Out { s: String::new() };
    // The workgroup's linear index. WGSL's uniformity analysis must see it come from
    // workgroup ids alone (`g / wg` involves the local index); CUDA has no such rule and
    // uses `g`, which its prologue defines.
    let smp = match block {
        Some(b) => b.to_string(),
        None => format!("g / {wg}u"),
    };
    o.ln(4, &dia.let_u("smp", &smp));
    // Uniform across the workgroup (one sample per workgroup): safe before barriers.
    o.ln(4, &format!("if (smp >= {num_samples}) {{ return; }}"));
    let lid_u = match dia {
        Dialect::Cuda => format!("(unsigned int){lid}"),
        Dialect::Wgsl { .. } => lid.to_string(),
    };
    o.ln(4, &dia.let_u("li", &lid_u));
    let (ins, outs) = w.pass.bindings();
    for t in &ins {
        o.ln(4, &dia.base(*t, d.per_sample_len(*t), false, dt)?);
    }
    for t in &outs {
        o.ln(4, &dia.base(*t, d.per_sample_len(*t), true, dt)?);
    }
    let mut copies = weight_copies(w, Tensor::W);
    copies.push((Tensor::X, 0, w.x_stage, None, d.dim_in1));
    copies.push((Tensor::Y, 0, w.y_stage, None, d.dim_in2));
    if w.pass != StagedPass::Forward {
        copies.push((Tensor::GZ, 0, w.gz_stage, None, d.dim_out));
    }
    if w.pass == StagedPass::DoubleBackward {
        copies.push((Tensor::HX, 0, w.hx_stage, None, d.dim_in1));
        copies.push((Tensor::HY, 0, w.hy_stage, None, d.dim_in2));
    }
    o.ln(
        4,
        "// stage the sample's weights (rows at the plan's stride) and operands",
    );
    stage(&mut o, dia, plan, wg, &copies, "l");
    match w.pass {
        StagedPass::Forward => {
            tasks(&mut o, dia, w, wg, "A = sum c x y", |o, p| {
                load_rows(o, dia, plan, p, w.x_stage, w.y_stage, "xv", "yv");
                sum_k(o, dia, plan, p, "a", |t| format!("xv{} * yv{}", t.i, t.j));
                for kk in 0..p.z_len {
                    let at = sh(&format!("{}u + q * {}u", p.part_x + kk, p.z_len));
                    o.ln(12, &format!("{at} = a{kk};"));
                }
            });
            o.ln(
                4,
                "// z: per element, the block's paths and their tasks in order",
            );
            z_phase(
                &mut o,
                dia,
                plan,
                w,
                wg,
                |p| p.part_x,
                None,
                Dest::Global(Tensor::Z),
            );
        }
        StagedPass::Backward => {
            tasks(
                &mut o,
                dia,
                w,
                wg,
                "gw in place, T, gx/gy partials",
                |o, p| {
                    load_rows(o, dia, plan, p, w.x_stage, w.y_stage, "xv", "yv");
                    sum_k(o, dia, plan, p, "a", |t| format!("xv{} * yv{}", t.i, t.j));
                    weight_loop(o, dia, plan, w, p, "tk", true);
                    partials(
                        o,
                        dia,
                        plan,
                        p,
                        false,
                        |t| format!("yv{} * tk{}", t.j, t.k),
                        |t| format!("xv{} * tk{}", t.i, t.k),
                    );
                },
            );
            gradient_outputs(
                &mut o,
                dia,
                plan,
                w,
                wg,
                [Tensor::GW, Tensor::GX, Tensor::GY],
            );
        }
        StagedPass::DoubleBackward => {
            tasks(
                &mut o,
                dia,
                w,
                wg,
                "A, Ah, T of w, dx/dy partials",
                |o, p| {
                    load_rows(o, dia, plan, p, w.x_stage, w.y_stage, "xv", "yv");
                    load_rows(o, dia, plan, p, w.hx_stage, w.hy_stage, "hxv", "hyv");
                    sum_k(o, dia, plan, p, "a", |t| format!("xv{} * yv{}", t.i, t.j));
                    sum_k(o, dia, plan, p, "ah", |t| {
                        format!("(hxv{i} * yv{j} + xv{i} * hyv{j})", i = t.i, j = t.j)
                    });
                    for kk in 0..p.z_len {
                        let a = sh(&format!("{}u + q * {}u", p.part_a + kk, p.z_len));
                        let ah = sh(&format!("{}u + q * {}u", p.part_ah + kk, p.z_len));
                        o.ln(12, &format!("{a} = a{kk};"));
                        o.ln(12, &format!("{ah} = ah{kk};"));
                    }
                    weight_loop(o, dia, plan, w, p, "tk", false);
                    partials(
                        o,
                        dia,
                        plan,
                        p,
                        false,
                        |t| format!("hyv{} * tk{}", t.j, t.k),
                        |t| format!("hxv{} * tk{}", t.i, t.k),
                    );
                },
            );
            o.ln(4, "// dgz, the w half: per element, sum of w * Ah");
            z_phase(
                &mut o,
                dia,
                plan,
                w,
                wg,
                |p| p.part_ah,
                None,
                Dest::Shared(w.dgz_stage),
            );
            o.ln(4, barrier(dia));
            o.ln(4, "// stage hw over w");
            stage(&mut o, dia, plan, wg, &weight_copies(w, Tensor::HW), "m");
            o.ln(4, "// dgz, the hw half: + sum of hw * A, stored");
            z_phase(
                &mut o,
                dia,
                plan,
                w,
                wg,
                |p| p.part_a,
                Some(w.dgz_stage),
                Dest::Global(Tensor::DGZ),
            );
            // The tasks below overwrite hw with dw.
            o.ln(4, barrier(dia));
            tasks(
                &mut o,
                dia,
                w,
                wg,
                "T of hw, dw in place, dx/dy partials",
                |o, p| {
                    load_rows(o, dia, plan, p, w.x_stage, w.y_stage, "xv", "yv");
                    for kk in 0..p.z_len {
                        let e = sh(&format!("{}u + q * {}u", p.part_ah + kk, p.z_len));
                        o.ln(12, &dia.let_(dt, &format!("a{kk}"), &e));
                    }
                    weight_loop(o, dia, plan, w, p, "th", true);
                    partials(
                        o,
                        dia,
                        plan,
                        p,
                        true,
                        |t| format!("yv{} * th{}", t.j, t.k),
                        |t| format!("xv{} * th{}", t.i, t.k),
                    );
                },
            );
            gradient_outputs(
                &mut o,
                dia,
                plan,
                w,
                wg,
                [Tensor::DW, Tensor::DX, Tensor::DY],
            );
        }
    }
    Ok(o.s)
}

fn loop_head(dia: &Dialect, var: &str, n: u32) -> String {
    match dia {
        Dialect::Cuda => format!("for (unsigned int {var} = 0u; {var} < {n}u; ++{var}) {{"),
        Dialect::Wgsl { .. } => format!("for (var {var} = 0u; {var} < {n}u; {var}++) {{"),
    }
}

/// The task's loop over its staged weight row: `{acc}_k += weight · gz[w, k]` and, with
/// `in_place`, the row's gradient `Σ_k a_k · gz[w, k]` written over the weight it came from.
fn weight_loop(
    o: &mut Out,
    dia: &Dialect,
    plan: &KernelPlan,
    w: &StagedWork,
    p: &StagedPath,
    acc: &str,
    in_place: bool,
) {
    let dt = plan.dtype;
    let zero = dia.lit(0.0, dt);
    for k in 0..p.z_len {
        o.ln(12, &dia.var(dt, &format!("{acc}{k}"), &zero));
    }
    o.ln(
        12,
        &dia.let_u("row", &format!("{}u + q * {}u", p.s_offset, p.s_stride)),
    );
    o.ln(12, &loop_head(dia, "wi", p.z_mul));
    o.ln(16, &dia.let_(dt, "wv", &sh("row + wi")));
    let mut grad = zero.clone();
    for k in 0..p.z_len {
        let e = sh(&format!(
            "{}u + wi * {}u",
            w.gz_stage + p.z_offset + k,
            p.z_len
        ));
        o.ln(16, &dia.let_(dt, &format!("g{k}"), &e));
        let _ = write!(grad, " + a{k} * g{k}");
    }
    for k in 0..p.z_len {
        o.ln(16, &format!("{acc}{k} += wv * g{k};"));
    }
    if in_place {
        o.ln(16, &format!("{} = {grad};", sh("row + wi")));
    }
    o.ln(12, "}");
}

/// The weight gradient copied out of the staged rows; the `x`- and `y`-side gradients summed
/// from the partials (`[weight, x, y]` output tensors).
fn gradient_outputs(
    o: &mut Out,
    dia: &Dialect,
    plan: &KernelPlan,
    w: &StagedWork,
    wg: u32,
    [tw, tx, ty]: [Tensor; 3],
) {
    let d = &plan.dims;
    o.ln(4, "// weight gradient: the staged rows back, coalesced");
    for p in &w.paths {
        let src = if p.s_stride == p.z_mul {
            format!("{}u + e", p.s_offset)
        } else {
            format!(
                "{}u + r * {}u + (e - r * {}u)",
                p.s_offset, p.s_stride, p.z_mul
            )
        };
        let mut body = vec![];
        if p.s_stride != p.z_mul {
            body.push(dia.let_u("r", &format!("e / {}u", p.z_mul)));
        }
        body.push(format!(
            "{} = {};",
            dia.at(tw, &format!("{}u + e", p.w_offset)),
            sh(&src)
        ));
        strided(o, dia, 4, "e", "li", p.weights(), wg, &body);
    }
    o.ln(
        4,
        "// x side: per element, the block's paths and v in order",
    );
    let x_side = Side {
        of: &|p: &StagedPath| (p.x_offset, p.x_mul, p.x_len),
        names: ("u", "i"),
        terms: &|p: &StagedPath| {
            (0..p.y_mul)
                .map(|v| {
                    let at = format!(
                        "{}u + (u * {}u + {v}u) * {}u + i",
                        p.part_x, p.y_mul, p.x_len
                    );
                    format!("    acc += {};", sh(&at))
                })
                .collect()
        },
    };
    side_sums(o, dia, plan, w, wg, &x_side, tx, d.dim_in1);
    o.ln(
        4,
        "// y side: per element, the block's paths and u in order",
    );
    let y_side = Side {
        of: &|p: &StagedPath| (p.y_offset, p.y_mul, p.y_len),
        names: ("v", "j"),
        terms: &|p: &StagedPath| {
            let at = format!("{}u + (u * {}u + v) * {}u + j", p.part_y, p.y_mul, p.y_len);
            vec![
                format!("    {}", loop_head(dia, "u", p.x_mul)),
                format!("        acc += {};", sh(&at)),
                "    }".into(),
            ]
        },
    };
    side_sums(o, dia, plan, w, wg, &y_side, ty, d.dim_in2);
}

/// One input side of a gradient: a path's block `(offset, multiplicity, 2l+1)`, the names of
/// its row and component indices, and the lines adding a path's partials to `acc`.
struct Side<'a> {
    of: &'a dyn Fn(&StagedPath) -> (u32, u32, u32),
    names: (&'static str, &'static str),
    terms: &'a dyn Fn(&StagedPath) -> Vec<String>,
}

/// Per element of `out` (`len` per sample): the partials of every path into its block, in
/// path order (zero for blocks no path reads).
#[allow(clippy::too_many_arguments)]
fn side_sums(
    o: &mut Out,
    dia: &Dialect,
    plan: &KernelPlan,
    w: &StagedWork,
    wg: u32,
    side: &Side<'_>,
    out: Tensor,
    len: u32,
) {
    let mut blocks: Vec<(u32, u32, u32)> = vec![];
    for p in &w.paths {
        let b = (side.of)(p);
        if !blocks.iter().any(|q| q.0 == b.0) {
            blocks.push(b);
        }
    }
    let (row, comp) = side.names;
    let mut body = vec![dia.var(plan.dtype, "acc", &dia.lit(0.0, plan.dtype))];
    for (off, mul, l) in blocks {
        body.push(format!("if (e >= {off}u && e < {}u) {{", off + mul * l));
        body.push(format!("    {}", dia.let_u("r", &format!("e - {off}u"))));
        body.push(format!("    {}", dia.let_u(row, &format!("r / {l}u"))));
        body.push(format!(
            "    {}",
            dia.let_u(comp, &format!("r - {row} * {l}u"))
        ));
        for p in w.paths.iter().filter(|p| (side.of)(p).0 == off) {
            body.extend((side.terms)(p));
        }
        body.push("}".into());
    }
    body.push(format!("{} = acc;", dia.at(out, "e")));
    strided(o, dia, 4, "e", "li", len, wg, &body);
}
