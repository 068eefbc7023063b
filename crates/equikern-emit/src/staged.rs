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
        || (w.pass == StagedPass::Backward && !fits(w.gz_stage, d.dim_out as u64))
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
        let (px, py) = match w.pass {
            StagedPass::Forward => (p.z_len, 0),
            StagedPass::Backward => (p.x_len, p.y_len),
        };
        if !fits(p.part_x, t * px as u64) || !fits(p.part_y, t * py as u64) {
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

/// Loads the staged `x` row `u` and `y` row `v` of a path into `xv*` and `yv*`.
fn load_xy(o: &mut Out, dia: &Dialect, plan: &KernelPlan, w: &StagedWork, p: &StagedPath) {
    let dt = plan.dtype;
    // Only the components some term reads (no unused locals: HIP builds with -Werror).
    let used_i = |i: u32| p.terms.iter().any(|t| t.i == i);
    let used_j = |j: u32| p.terms.iter().any(|t| t.j == j);
    for i in (0..p.x_len).filter(|&i| used_i(i)) {
        let e = sh(&format!(
            "{}u + u * {}u",
            w.x_stage + p.x_offset + i,
            p.x_len
        ));
        o.ln(12, &dia.let_(dt, &format!("xv{i}"), &e));
    }
    for j in (0..p.y_len).filter(|&j| used_j(j)) {
        let e = sh(&format!(
            "{}u + v * {}u",
            w.y_stage + p.y_offset + j,
            p.y_len
        ));
        o.ln(12, &dia.let_(dt, &format!("yv{j}"), &e));
    }
}

/// `a{k} = Σ_terms c · x_i · y_j`.
fn a_terms(o: &mut Out, dia: &Dialect, plan: &KernelPlan, p: &StagedPath) {
    let dt = plan.dtype;
    let zero = dia.lit(0.0, dt);
    for k in 0..p.z_len {
        let mut e = zero.clone();
        for t in p.terms.iter().filter(|t| t.k == k) {
            let _ = write!(e, " + {} * xv{} * yv{}", dia.lit(t.coeff, dt), t.i, t.j);
        }
        o.ln(12, &dia.let_(dt, &format!("a{k}"), &e));
    }
}

/// The kernel body after the prologue defines `g`: one workgroup per sample, `lid` the
/// local index, `num_samples` the dispatch's sample count.
pub(crate) fn body(
    dia: &Dialect,
    plan: &KernelPlan,
    k: &Kernel,
    w: &StagedWork,
    lid: &str,
    num_samples: &str,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let wg = k.workgroup_size;
    let zero = dia.lit(0.0, dt);
    let mut o = Out { s: String::new() };
    // `g` (the invocation index both prologues define) over the workgroup size: the
    // workgroup's linear index.
    o.ln(4, &dia.let_u("smp", &format!("g / {wg}u")));
    // Uniform across the workgroup (one sample per workgroup): safe before barriers.
    o.ln(4, &format!("if (smp >= {num_samples}) {{ return; }}"));
    let lid_u = match dia {
        Dialect::Cuda => format!("(unsigned int){lid}"),
        Dialect::Wgsl { .. } => lid.to_string(),
    };
    o.ln(4, &dia.let_u("li", &lid_u));
    o.ln(4, &dia.base(Tensor::X, d.dim_in1, false, dt)?);
    o.ln(4, &dia.base(Tensor::Y, d.dim_in2, false, dt)?);
    o.ln(4, &dia.base(Tensor::W, d.weight_numel, false, dt)?);
    let bwd = w.pass == StagedPass::Backward;
    if bwd {
        o.ln(4, &dia.base(Tensor::GZ, d.dim_out, false, dt)?);
        o.ln(4, &dia.base(Tensor::GX, d.dim_in1, true, dt)?);
        o.ln(4, &dia.base(Tensor::GY, d.dim_in2, true, dt)?);
        o.ln(4, &dia.base(Tensor::GW, d.weight_numel, true, dt)?);
    } else {
        o.ln(4, &dia.base(Tensor::Z, d.dim_out, true, dt)?);
    }

    // 1. Stage: consecutive invocations on consecutive elements of each source row. Every
    // load of the invocation is issued before the first store, so a workgroup waits for
    // global memory once (a loop per path would wait once per iteration).
    o.ln(
        4,
        "// stage the sample's weights (rows at the plan's stride), x, y (gz): loads, then stores",
    );
    let mut copies: Vec<Staging> = w
        .paths
        .iter()
        .map(|p| {
            let pad = (p.s_stride != p.z_mul).then_some((p.z_mul, p.s_stride));
            (Tensor::W, p.w_offset, p.s_offset, pad, p.weights())
        })
        .collect();
    copies.push((Tensor::X, 0, w.x_stage, None, d.dim_in1));
    copies.push((Tensor::Y, 0, w.y_stage, None, d.dim_in2));
    if bwd {
        copies.push((Tensor::GZ, 0, w.gz_stage, None, d.dim_out));
    }
    let mut stores = vec![];
    let mut n_loads = 0;
    for &(t, src, dst, pad, n) in &copies {
        for round in 0..n.div_ceil(wg) {
            let e = format!("li + {}u", round * wg);
            let full = (round + 1) * wg <= n;
            let l = format!("l{n_loads}");
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

    // 2. Tasks (u, v) of every path.
    o.ln(4, "// tasks: one (path, u, v) each");
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
        load_xy(&mut o, dia, plan, w, p);
        a_terms(&mut o, dia, plan, p);
        if bwd {
            backward_task(&mut o, dia, plan, w, p);
        } else {
            for kk in 0..p.z_len {
                o.ln(
                    12,
                    &format!(
                        "{} = a{kk};",
                        sh(&format!("{}u + q * {}u", p.part_x + kk, p.z_len))
                    ),
                );
            }
        }
        o.ln(8, "}");
    }
    o.ln(4, "}");
    o.ln(4, barrier(dia));

    // 3. Outputs, consecutive invocations on consecutive elements.
    if bwd {
        backward_outputs(&mut o, dia, plan, k, w)?;
    } else {
        o.ln(
            4,
            "// z: per element, the block's paths and their tasks in order",
        );
        let mut body = vec![dia.var(dt, "acc", &zero)];
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
                    sh(&format!("{}u + q * {}u + kk", p.part_x, p.z_len))
                ));
                body.push("    }".into());
            }
            body.push("}".into());
        }
        body.push(format!("{} = acc;", out_at(dia, Tensor::Z, "e")));
        strided(&mut o, dia, 4, "e", "li", d.dim_out, wg, &body);
    }
    Ok(o.s)
}

fn out_at(dia: &Dialect, t: Tensor, off: &str) -> String {
    dia.at(t, off)
}

fn loop_head(dia: &Dialect, var: &str, n: u32) -> String {
    match dia {
        Dialect::Cuda => format!("for (unsigned int {var} = 0u; {var} < {n}u; ++{var}) {{"),
        Dialect::Wgsl { .. } => format!("for (var {var} = 0u; {var} < {n}u; {var}++) {{"),
    }
}

/// Task `(u, v)` of a backward path: the weight row's gradient in place, `T`, then the `gx`
/// and `gy` partials.
fn backward_task(o: &mut Out, dia: &Dialect, plan: &KernelPlan, w: &StagedWork, p: &StagedPath) {
    let dt = plan.dtype;
    let zero = dia.lit(0.0, dt);
    for k in 0..p.z_len {
        o.ln(12, &dia.var(dt, &format!("tk{k}"), &zero));
    }
    o.ln(
        12,
        &dia.let_u("row", &format!("{}u + q * {}u", p.s_offset, p.s_stride)),
    );
    o.ln(12, &loop_head(dia, "wi", p.z_mul));
    o.ln(16, &dia.let_(dt, "wv", &sh("row + wi")));
    let mut gw = zero.clone();
    for k in 0..p.z_len {
        let e = sh(&format!(
            "{}u + wi * {}u",
            w.gz_stage + p.z_offset + k,
            p.z_len
        ));
        o.ln(16, &dia.let_(dt, &format!("g{k}"), &e));
        let _ = write!(gw, " + a{k} * g{k}");
    }
    for k in 0..p.z_len {
        o.ln(16, &format!("tk{k} += wv * g{k};"));
    }
    o.ln(16, &format!("{} = {gw};", sh("row + wi")));
    o.ln(12, "}");
    for i in 0..p.x_len {
        let mut e = zero.clone();
        for t in p.terms.iter().filter(|t| t.i == i) {
            let _ = write!(e, " + {} * yv{} * tk{}", dia.lit(t.coeff, dt), t.j, t.k);
        }
        o.ln(
            12,
            &format!(
                "{} = {e};",
                sh(&format!("{}u + q * {}u", p.part_x + i, p.x_len))
            ),
        );
    }
    for j in 0..p.y_len {
        let mut e = zero.clone();
        for t in p.terms.iter().filter(|t| t.j == j) {
            let _ = write!(e, " + {} * xv{} * tk{}", dia.lit(t.coeff, dt), t.i, t.k);
        }
        o.ln(
            12,
            &format!(
                "{} = {e};",
                sh(&format!("{}u + q * {}u", p.part_y + j, p.y_len))
            ),
        );
    }
}

/// `gw` copied out of the staged rows; `gx` and `gy` summed from the partials.
fn backward_outputs(
    o: &mut Out,
    dia: &Dialect,
    plan: &KernelPlan,
    k: &Kernel,
    w: &StagedWork,
) -> Result<(), EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let wg = k.workgroup_size;
    let zero = dia.lit(0.0, dt);
    o.ln(4, "// gw: the staged rows back, coalesced");
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
            out_at(dia, Tensor::GW, &format!("{}u + e", p.w_offset)),
            sh(&src)
        ));
        strided(o, dia, 4, "e", "li", p.weights(), wg, &body);
    }
    // Distinct x / y blocks in order of first use.
    let mut xb: Vec<&StagedPath> = vec![];
    let mut yb: Vec<&StagedPath> = vec![];
    for p in &w.paths {
        if !xb.iter().any(|q| q.x_offset == p.x_offset) {
            xb.push(p);
        }
        if !yb.iter().any(|q| q.y_offset == p.y_offset) {
            yb.push(p);
        }
    }
    o.ln(4, "// gx: per element, the block's paths and v in order");
    let mut body = vec![dia.var(dt, "acc", &zero)];
    for b in &xb {
        body.push(format!(
            "if (e >= {}u && e < {}u) {{",
            b.x_offset,
            b.x_offset + b.x_mul * b.x_len
        ));
        body.push(format!(
            "    {}",
            dia.let_u("r", &format!("e - {}u", b.x_offset))
        ));
        body.push(format!(
            "    {}",
            dia.let_u("u", &format!("r / {}u", b.x_len))
        ));
        body.push(format!(
            "    {}",
            dia.let_u("i", &format!("r - u * {}u", b.x_len))
        ));
        for p in w.paths.iter().filter(|p| p.x_offset == b.x_offset) {
            for v in 0..p.y_mul {
                body.push(format!(
                    "    acc += {};",
                    sh(&format!(
                        "{}u + (u * {}u + {v}u) * {}u + i",
                        p.part_x, p.y_mul, p.x_len
                    ))
                ));
            }
        }
        body.push("}".into());
    }
    body.push(format!("{} = acc;", out_at(dia, Tensor::GX, "e")));
    strided(o, dia, 4, "e", "li", d.dim_in1, wg, &body);

    o.ln(4, "// gy: per element, the block's paths and u in order");
    let mut body = vec![dia.var(dt, "acc", &zero)];
    for b in &yb {
        body.push(format!(
            "if (e >= {}u && e < {}u) {{",
            b.y_offset,
            b.y_offset + b.y_mul * b.y_len
        ));
        body.push(format!(
            "    {}",
            dia.let_u("r", &format!("e - {}u", b.y_offset))
        ));
        body.push(format!(
            "    {}",
            dia.let_u("v", &format!("r / {}u", b.y_len))
        ));
        body.push(format!(
            "    {}",
            dia.let_u("j", &format!("r - v * {}u", b.y_len))
        ));
        for p in w.paths.iter().filter(|p| p.y_offset == b.y_offset) {
            body.push(format!("    {}", loop_head(dia, "u", p.x_mul)));
            body.push(format!(
                "        acc += {};",
                sh(&format!(
                    "{}u + (u * {}u + v) * {}u + j",
                    p.part_y, p.y_mul, p.y_len
                ))
            ));
            body.push("    }".into());
        }
        body.push("}".into());
    }
    body.push(format!("{} = acc;", out_at(dia, Tensor::GY, "e")));
    strided(o, dia, 4, "e", "li", d.dim_in2, wg, &body);
    Ok(())
}
