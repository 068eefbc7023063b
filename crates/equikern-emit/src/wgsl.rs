//! WGSL writer: one compute module per [`Kernel`] of a plan.
//!
//! A printer only: the row space, segments, loops, operand addressing and coefficients all
//! come from the plan. Shape of a Rows module: `main` computes the invocation index `g` from
//! the 2-D grid, maps it to `(sample or chunk, row)`, and calls the segment function owning
//! that row; a segment function accumulates its row in scalars and writes it once.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use equikern_plan::{
    Addressing, Contribution, Dtype, Ix, Kernel, KernelPlan, SampleMode, Segment, Tensor, Work,
};

use crate::params::ParamsLayout;
use crate::{EmitError, EmittedKernel, TensorBinding};

/// Print every kernel of `plan` as a WGSL module (f32 plans only).
pub fn emit_wgsl(plan: &KernelPlan) -> Result<Vec<EmittedKernel>, EmitError> {
    if plan.dtype != Dtype::F32 {
        return Err(EmitError::UnsupportedDtype {
            backend: "WGSL",
            dtype: "f64",
        });
    }
    plan.kernels.iter().map(|k| emit_kernel(plan, k)).collect()
}

/// Lowercase WGSL identifier of a tensor's binding.
pub fn tensor_ident(t: Tensor) -> String {
    format!("t_{}", format!("{t:?}").to_lowercase())
}

/// Shortest round-trip decimal of an f32 as a WGSL `f32` literal (always has `.` or `e`).
pub fn f32_literal(v: f32) -> String {
    let mut s = format!("{v:?}");
    if !s.contains(['.', 'e', 'E']) {
        s.push_str(".0");
    }
    s.push('f');
    s
}

pub(crate) struct Ctx<'a> {
    pub(crate) plan: &'a KernelPlan,
    pub(crate) kernel: &'a Kernel,
    bindings: Vec<TensorBinding>,
    tables: BTreeSet<u32>,
    /// Convolution: the node expression of each gather index (`Sender`, `Receiver`).
    pub(crate) gather: Vec<(Tensor, String)>,
}

impl Ctx<'_> {
    pub(crate) fn err(&self, why: impl Into<String>) -> EmitError {
        EmitError::InvalidPlan {
            kernel: self.kernel.name.clone(),
            why: why.into(),
        }
    }

    pub(crate) fn binding_of(&self, t: Tensor, want_output: bool) -> Result<u32, EmitError> {
        self.bindings
            .iter()
            .find(|b| b.tensor == t && b.read_only != want_output)
            .map(|b| b.binding)
            .ok_or_else(|| {
                let role = if want_output { "outputs" } else { "inputs" };
                self.err(format!(
                    "tensor {t:?} is used but not in the kernel's {role}"
                ))
            })
    }

    /// Print an index expression, recording the tables it reads.
    fn ix(&mut self, e: &Ix) -> Result<String, EmitError> {
        Ok(match e {
            Ix::R => "r".into(),
            Ix::T => "t".into(),
            Ix::C(c) => format!("{c}u"),
            Ix::Add(a, b) => format!("({} + {})", self.ix(a)?, self.ix(b)?),
            Ix::Sub(a, b) => format!("({} - {})", self.ix(a)?, self.ix(b)?),
            Ix::Mul(a, b) => format!("({} * {})", self.ix(a)?, self.ix(b)?),
            Ix::Div(a, b) => format!("({} / {})", self.ix(a)?, self.ix(b)?),
            Ix::Mod(a, b) => format!("({} % {})", self.ix(a)?, self.ix(b)?),
            Ix::Table(id, i) => {
                match self.plan.tables.get(*id as usize) {
                    None => return Err(self.err(format!("Ix::Table({id}) out of range"))),
                    Some(t) if t.is_empty() => return Err(self.err(format!("table {id} is empty"))),
                    Some(_) => {}
                }
                self.tables.insert(*id);
                format!("tab{id}[{}]", self.ix(i)?)
            }
        })
    }
}

/// `a + b + …` of the non-empty parts, `0u` if none.
pub(crate) fn sum(parts: &[String]) -> String {
    let p: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty() && *s != "0u")
        .collect();
    if p.is_empty() {
        "0u".into()
    } else {
        p.join(" + ")
    }
}

pub(crate) fn scaled(expr: &str, k: u32) -> String {
    match k {
        0 => String::new(),
        1 => expr.to_string(),
        _ => format!("{expr} * {k}u"),
    }
}

pub(crate) fn konst(k: u32) -> String {
    if k == 0 {
        String::new()
    } else {
        format!("{k}u")
    }
}

fn emit_kernel(plan: &KernelPlan, kernel: &Kernel) -> Result<EmittedKernel, EmitError> {
    let mut bindings = Vec::new();
    for (i, t) in kernel.inputs.iter().chain(&kernel.outputs).enumerate() {
        bindings.push(TensorBinding {
            binding: i as u32,
            tensor: *t,
            read_only: i < kernel.inputs.len(),
        });
    }
    let mut cx = Ctx {
        plan,
        kernel,
        bindings,
        tables: BTreeSet::new(),
        gather: vec![],
    };
    let n = cx.bindings.len() as u32;
    let caps = &plan.caps;
    if n > caps.max_storage_buffers_per_stage {
        return Err(cx.err(format!(
            "{n} storage bindings, target allows {}",
            caps.max_storage_buffers_per_stage
        )));
    }
    let wg = kernel.workgroup_size;
    if wg == 0 || wg > caps.max_invocations_per_workgroup || wg > caps.max_workgroup_size_x {
        return Err(cx.err(format!("workgroup size {wg} outside target limits")));
    }
    let mut seen = BTreeSet::new();
    for b in &cx.bindings {
        if !seen.insert(b.tensor) {
            return Err(cx.err(format!("tensor {:?} bound twice", b.tensor)));
        }
    }

    let body = match &kernel.work {
        Work::Rows {
            sample_mode,
            rows_per_sample,
            segments,
        } => rows_body(&mut cx, *sample_mode, *rows_per_sample, segments)?,
        Work::ReduceChunks { input, output, len } => reduce_body(&cx, *input, *output, *len)?,
        Work::Channels(c) => {
            crate::channel::check(plan, kernel, c).map_err(|why| cx.err(why))?;
            let dia = crate::channel::Dialect::Wgsl {
                binding: cx.bindings.iter().map(|b| (b.tensor, b.binding)).collect(),
            };
            let mut s = crate::channel::shared_decl(&dia, plan, c);
            s.push_str(&main_prologue(kernel.workgroup_size));
            s.push_str(&crate::channel::body(
                &dia,
                plan,
                c,
                "(wid.y * nwg.x + wid.x)",
                "lid",
                "P.num_samples",
            )?);
            s.push_str("}\n");
            s
        }
        Work::Staged(w) => {
            crate::staged::check(plan, kernel, w).map_err(|why| cx.err(why))?;
            let dia = crate::channel::Dialect::Wgsl {
                binding: cx.bindings.iter().map(|b| (b.tensor, b.binding)).collect(),
            };
            let mut s = crate::staged::shared_decl(&dia, plan, w);
            s.push_str(&main_prologue(kernel.workgroup_size));
            s.push_str(&crate::staged::body(
                &dia,
                plan,
                kernel,
                w,
                Some("(wid.y * nwg.x + wid.x)"),
                "lid",
                "P.num_samples",
            )?);
            s.push_str("}\n");
            s
        }
        Work::ReducePieces {
            input,
            output,
            pieces,
            len,
        } => crate::wgsl_conv::reduce_pieces_body(&cx, *input, *output, *pieces, *len)?,
    };

    let conv = plan.conv.is_some();
    let params = ParamsLayout {
        binding: n,
        num_bases: n,
        conv,
    };
    let mut src = String::new();
    let _ = writeln!(
        src,
        "// equikern {:?} kernel `{}` (generated from the kernel plan)\n",
        plan.direction, kernel.name
    );
    src.push_str(
        "struct Params {\n    num_samples: u32,\n    chunk_base: u32,\n    num_chunks: u32,\n",
    );
    src.push_str(if conv {
        "    weight_fold: u32,\n"
    } else {
        "    pad0: u32,\n"
    });
    if conv {
        src.push_str(
            "    unit_base: u32,\n    num_nodes: u32,\n    num_edges: u32,\n    num_pieces: u32,\n",
        );
    }
    for i in 0..params.words() - params.header_words() {
        if i < n {
            let _ = writeln!(src, "    base{i}: u32,");
        } else {
            let _ = writeln!(src, "    pad{}: u32,", i + 1);
        }
    }
    src.push_str("}\n\n");
    for b in &cx.bindings {
        let access = if b.read_only { "read" } else { "read_write" };
        let elem = if b.tensor.is_index() { "u32" } else { "f32" };
        let _ = writeln!(
            src,
            "@group(0) @binding({}) var<storage, {access}> {}: array<{elem}>;",
            b.binding,
            tensor_ident(b.tensor)
        );
    }
    let _ = writeln!(src, "@group(0) @binding({n}) var<uniform> P: Params;\n");
    for id in &cx.tables {
        let t = &plan.tables[*id as usize];
        let items: Vec<String> = t.iter().map(|v| format!("{v}u")).collect();
        let _ = writeln!(
            src,
            "const tab{id} = array<u32, {}>({});",
            t.len(),
            items.join(", ")
        );
    }
    if !cx.tables.is_empty() {
        src.push('\n');
    }
    src.push_str(&body);

    let name: String = kernel
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Ok(EmittedKernel {
        name,
        source: src,
        entry_point: "main".into(),
        workgroup_size: wg,
        bindings: cx.bindings,
        params,
    })
}

pub(crate) fn main_prologue(wg: u32) -> String {
    format!(
        "@compute @workgroup_size({wg})\n\
         fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,\n\
         \x20       @builtin(local_invocation_index) lid: u32) {{\n\
         \x20   let g = (wid.y * nwg.x + wid.x) * {wg}u + lid;\n"
    )
}

fn reduce_body(cx: &Ctx, input: Tensor, output: Tensor, len: u32) -> Result<String, EmitError> {
    let bi = cx.binding_of(input, false)?;
    let bo = cx.binding_of(output, true)?;
    let mut s = main_prologue(cx.kernel.workgroup_size);
    let _ = write!(
        s,
        "    if (g >= {len}u) {{\n        return;\n    }}\n\
         \x20   // Fixed ascending order over chunks: deterministic.\n\
         \x20   var a = 0.0f;\n\
         \x20   for (var c = 0u; c < P.num_chunks; c++) {{\n\
         \x20       a += {}[P.base{bi} + c * {len}u + g];\n\
         \x20   }}\n\
         \x20   {}[P.base{bo} + g] = a;\n}}\n",
        tensor_ident(input),
        tensor_ident(output)
    );
    Ok(s)
}

fn rows_body(
    cx: &mut Ctx,
    mode: SampleMode,
    rows_per_sample: u32,
    segments: &[Segment],
) -> Result<String, EmitError> {
    if rows_per_sample == 0 {
        return Err(cx.err("rows_per_sample is 0"));
    }
    let mut next = 0u32;
    for (i, seg) in segments.iter().enumerate() {
        if seg.first_row != next || seg.rows == 0 {
            return Err(cx.err(format!(
                "segment {i} starts at row {} (expected {next}) with {} rows: segments must tile the row space",
                seg.first_row, seg.rows
            )));
        }
        next = seg
            .first_row
            .checked_add(seg.rows)
            .ok_or_else(|| cx.err("row overflow"))?;
    }
    if next != rows_per_sample {
        return Err(cx.err(format!(
            "segments cover {next} rows, rows_per_sample is {rows_per_sample}"
        )));
    }

    let mut fns = String::new();
    for (i, seg) in segments.iter().enumerate() {
        fns.push_str(&segment_fn(cx, mode, i, seg)?);
        fns.push('\n');
    }

    let rps = rows_per_sample;
    let mut m = main_prologue(cx.kernel.workgroup_size);
    match mode {
        SampleMode::Scatter { .. } => return Err(cx.err(
            "the atomic convolution needs float atomics, which WGSL lacks; lower it deterministic",
        )),
        SampleMode::PerSample | SampleMode::Segments { .. } | SampleMode::Pieces { .. } => {
            let _ = write!(
                m,
                "    let s = g / {rps}u;\n    if (s >= P.num_samples) {{\n        return;\n    }}\n    let row = g - s * {rps}u;\n"
            );
        }
        SampleMode::Chunk { samples_per_chunk } => {
            if samples_per_chunk == 0 {
                return Err(cx.err("samples_per_chunk is 0"));
            }
            let _ = write!(
                m,
                "    let s = g / {rps}u; // chunk index within this dispatch\n    if (s >= P.num_chunks) {{\n        return;\n    }}\n    let row = g - s * {rps}u;\n"
            );
        }
    }
    // A balanced decision tree over segment starts: depth log2(#segments). An else-if chain
    // 80 deep left its last segment unexecuted on lavapipe (Mesa 22.3, nequip-benzene GW).
    select_segment(&mut m, segments, 0, segments.len(), 1);
    m.push_str("}\n");
    fns.push_str(&m);
    Ok(fns)
}

/// Print the call of the segment owning `row`, among `segs[lo..hi]`.
fn select_segment(m: &mut String, segs: &[Segment], lo: usize, hi: usize, depth: usize) {
    let ind = "    ".repeat(depth);
    if hi - lo == 1 {
        let first = segs[lo].first_row;
        if first == 0 {
            let _ = writeln!(m, "{ind}seg{lo}(s, row);");
        } else {
            let _ = writeln!(m, "{ind}seg{lo}(s, row - {first}u);");
        }
        return;
    }
    let mid = (lo + hi) / 2;
    let _ = writeln!(m, "{ind}if (row < {}u) {{", segs[mid].first_row);
    select_segment(m, segs, lo, mid, depth + 1);
    let _ = writeln!(m, "{ind}}} else {{");
    select_segment(m, segs, mid, hi, depth + 1);
    let _ = writeln!(m, "{ind}}}");
}

fn segment_fn(
    cx: &mut Ctx,
    mode: SampleMode,
    index: usize,
    seg: &Segment,
) -> Result<String, EmitError> {
    let dims = cx.plan.dims;
    let bo = cx.binding_of(seg.out, true)?;
    let rl = seg.row_len;
    if rl == 0 {
        return Err(cx.err(format!("segment {index} has row_len 0")));
    }
    let mut f = String::new();
    let _ = writeln!(
        f,
        "// rows {}..{} of {:?}: block at element {}, {} per row",
        seg.first_row,
        seg.first_row + seg.rows,
        seg.out,
        seg.out_offset,
        rl
    );
    let _ = writeln!(f, "fn seg{index}(s_in: u32, r: u32) {{");
    for k in 0..rl {
        let _ = writeln!(f, "    var a{k} = 0.0f;");
    }
    let conv = cx.plan.conv.is_some();
    let ind = match mode {
        _ if conv => crate::wgsl_conv::unit_prologue(cx, &mut f, mode)?,
        SampleMode::PerSample => {
            f.push_str("    let s = s_in;\n");
            "    "
        }
        SampleMode::Chunk { samples_per_chunk } => {
            let _ = writeln!(
                f,
                "    // Samples of chunk s_in, in ascending order.\n    let s_begin = s_in * {samples_per_chunk}u;\n    let s_end = min(s_begin + {samples_per_chunk}u, P.num_samples);\n    for (var s = s_begin; s < s_end; s++) {{"
            );
            "        "
        }
        SampleMode::Segments { .. } | SampleMode::Pieces { .. } | SampleMode::Scatter { .. } => {
            return Err(cx.err("convolution sample mode in a tensor-product plan"))
        }
    };
    for c in &seg.contributions {
        contribution(cx, &mut f, ind, rl, c)?;
    }
    if conv && !matches!(mode, SampleMode::PerSample) || matches!(mode, SampleMode::Chunk { .. }) {
        f.push_str("    }\n");
    }
    let out_ix = match mode {
        _ if conv => crate::wgsl_conv::out_index(cx, mode, seg, bo)?,
        SampleMode::PerSample => {
            let len = dims.per_sample_len(seg.out);
            if len == 0 {
                return Err(cx.err(format!(
                    "per-sample kernel writes non-per-sample tensor {:?}",
                    seg.out
                )));
            }
            sum(&[
                format!("P.base{bo}"),
                scaled("s", len),
                konst(seg.out_offset),
                scaled("r", rl),
            ])
        }
        SampleMode::Chunk { .. } => sum(&[
            format!("P.base{bo}"),
            scaled("(P.chunk_base + s_in)", dims.weight_numel),
            konst(seg.out_offset),
            scaled("r", rl),
        ]),
        _ => return Err(cx.err("convolution sample mode in a tensor-product plan")),
    };
    let _ = writeln!(f, "    let o = {out_ix};");
    let out = tensor_ident(seg.out);
    for k in 0..rl {
        if k == 0 {
            let _ = writeln!(f, "    {out}[o] = a0;");
        } else {
            let _ = writeln!(f, "    {out}[o + {k}u] = a{k};");
        }
    }
    f.push_str("}\n");
    Ok(f)
}

fn contribution(
    cx: &mut Ctx,
    f: &mut String,
    ind: &str,
    row_len: u32,
    c: &Contribution,
) -> Result<(), EmitError> {
    let dims = cx.plan.dims;
    let nops = c.operands.len();
    if let Some(k) = c.scalar_factor {
        match c.operands.get(k as usize) {
            Some(op) if op.row_len == 1 => {}
            _ => return Err(cx.err(format!("path {}: bad scalar_factor {k}", c.path))),
        }
    }
    // Components actually read, per operand.
    let mut used: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); nops];
    for term in &c.terms {
        if term.comps.len() != nops || term.out >= row_len {
            return Err(cx.err(format!(
                "path {}: term {term:?} does not match {nops} operands / row length {row_len}",
                c.path
            )));
        }
        for (k, &comp) in term.comps.iter().enumerate() {
            if comp >= c.operands[k].row_len {
                return Err(cx.err(format!(
                    "path {}: component {comp} outside row of {}",
                    c.path, c.operands[k].row_len
                )));
            }
            used[k].insert(comp);
        }
        let v = term.coeff as f32;
        if !v.is_finite() {
            return Err(cx.err(format!(
                "path {}: coefficient {} not finite in f32",
                c.path, term.coeff
            )));
        }
    }
    if c.terms.is_empty() || c.count == Ix::C(0) {
        return Ok(());
    }

    let _ = writeln!(f, "{ind}// path {}", c.path);
    let inner = format!("{ind}    ");
    if let Ix::C(1) = c.count {
        let _ = writeln!(f, "{ind}{{\n{inner}let t = 0u;");
    } else {
        let count = cx.ix(&c.count)?;
        let _ = writeln!(f, "{ind}for (var t = 0u; t < {count}; t++) {{");
    }
    for (k, op) in c.operands.iter().enumerate() {
        let b = cx.binding_of(op.tensor, false)?;
        let row = cx.ix(&op.row)?;
        let row_term = scaled(&row, op.row_len);
        let ix = match op.addressing {
            Addressing::PerSample => {
                let len = dims.per_sample_len(op.tensor);
                if len == 0 {
                    return Err(cx.err(format!(
                        "path {}: per-sample addressing of non-per-sample tensor {:?}",
                        c.path, op.tensor
                    )));
                }
                sum(&[
                    format!("P.base{b}"),
                    scaled("s", len),
                    konst(op.offset),
                    row_term,
                ])
            }
            Addressing::Shared => sum(&[format!("P.base{b}"), konst(op.offset), row_term]),
            Addressing::Gather { index } => {
                let node = cx
                    .gather
                    .iter()
                    .find(|(t, _)| *t == index)
                    .map(|(_, e)| e.clone())
                    .ok_or_else(|| cx.err(format!("gather by {index:?} not available")))?;
                sum(&[
                    format!("P.base{b}"),
                    scaled(&format!("({node})"), dims.per_sample_len(op.tensor)),
                    konst(op.offset),
                    row_term,
                ])
            }
        };
        let _ = writeln!(f, "{inner}let i{k} = {ix};");
        let name = tensor_ident(op.tensor);
        for comp in &used[k] {
            if *comp == 0 {
                let _ = writeln!(f, "{inner}let v{k}_0 = {name}[i{k}];");
            } else {
                let _ = writeln!(f, "{inner}let v{k}_{comp} = {name}[i{k} + {comp}u];");
            }
        }
    }
    // Group terms by output component, keeping the plan's order within each group.
    let sf = c.scalar_factor.map(|k| k as usize);
    for o in 0..row_len {
        let mut expr = String::new();
        let mut nterms = 0;
        for term in c.terms.iter().filter(|t| t.out == o) {
            let v = term.coeff as f32;
            if v == 0.0 {
                continue;
            }
            let mut prod = f32_literal(v.abs());
            for (k, comp) in term.comps.iter().enumerate() {
                if Some(k) != sf {
                    let _ = write!(prod, " * v{k}_{comp}");
                }
            }
            let sign = if v < 0.0 { "-" } else { "+" };
            if nterms == 0 {
                if v < 0.0 {
                    expr.push('-');
                }
            } else {
                if nterms % 4 == 0 {
                    let _ = write!(expr, "\n{inner}    ");
                } else {
                    expr.push(' ');
                }
                let _ = write!(expr, "{sign} ");
            }
            expr.push_str(&prod);
            nterms += 1;
        }
        if nterms == 0 {
            continue;
        }
        match sf {
            Some(k) => {
                let _ = writeln!(f, "{inner}a{o} += v{k}_0 * ({expr});");
            }
            None => {
                let _ = writeln!(f, "{inner}a{o} += {expr};");
            }
        }
    }
    let _ = writeln!(f, "{ind}}}");
    Ok(())
}
