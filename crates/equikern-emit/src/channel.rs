//! Printer of a channel-fused backward kernel ([`equikern_plan::ChannelWork`]) for CUDA/HIP
//! and WGSL. One text generator, two spellings: the plan fixes the loads, terms, writes and
//! the order of the `gy` sum; only declarations, indexing and barriers differ.

use std::fmt::Write as _;

use equikern_plan::{
    ChannelBlock, ChannelPass, ChannelPath, ChannelWork, Dtype, Kernel, KernelPlan, LaneGroup,
    SampleMode, Tensor, LANE_CHUNK,
};

use crate::EmitError;

/// How a target spells the few things that differ.
pub(crate) enum Dialect {
    /// CUDA/HIP: per-sample base pointers `xs = x + smp * len` (64-bit), `__shared__`.
    Cuda,
    /// WGSL: bindings indexed with `P.base<i>` (u32), `var<workgroup>`; binding numbers of
    /// the kernel's tensors.
    Wgsl { binding: Vec<(Tensor, u32)> },
}

fn ident(t: Tensor) -> &'static str {
    crate::cuda::tensor_name(t)
}

impl Dialect {
    pub(crate) fn real(&self, d: Dtype) -> &'static str {
        match self {
            Dialect::Cuda => crate::cuda::real_type(d),
            Dialect::Wgsl { .. } => "f32",
        }
    }
    pub(crate) fn lit(&self, c: f64, d: Dtype) -> String {
        match self {
            Dialect::Cuda => crate::cuda::literal(c, d),
            Dialect::Wgsl { .. } => crate::wgsl::f32_literal(c as f32),
        }
    }
    pub(crate) fn let_(&self, d: Dtype, name: &str, e: &str) -> String {
        match self {
            Dialect::Cuda => format!("const {} {name} = {e};", self.real(d)),
            Dialect::Wgsl { .. } => format!("let {name} = {e};"),
        }
    }
    pub(crate) fn var(&self, d: Dtype, name: &str, e: &str) -> String {
        match self {
            Dialect::Cuda => format!("{} {name} = {e};", self.real(d)),
            Dialect::Wgsl { .. } => format!("var {name} = {e};"),
        }
    }
    pub(crate) fn let_u(&self, name: &str, e: &str) -> String {
        match self {
            Dialect::Cuda => format!("const unsigned int {name} = {e};"),
            Dialect::Wgsl { .. } => format!("let {name} = {e};"),
        }
    }
    /// Element `off` (a u32 expression) of the current sample's row of `t`.
    pub(crate) fn at(&self, t: Tensor, off: &str) -> String {
        match self {
            Dialect::Cuda => format!("{}s[{off}]", ident(t)),
            Dialect::Wgsl { .. } => {
                format!("{}[{}b + {off}]", crate::wgsl::tensor_ident(t), ident(t))
            }
        }
    }
    /// Declares the current sample's base of `t` (`len` elements per sample, 0 = shared).
    pub(crate) fn base(
        &self,
        t: Tensor,
        len: u32,
        out: bool,
        d: Dtype,
    ) -> Result<String, EmitError> {
        let n = ident(t);
        Ok(match self {
            Dialect::Cuda => {
                let c = if out { "" } else { "const " };
                let off = if len == 0 {
                    String::new()
                } else {
                    format!(" + (unsigned long long)smp * {len}u")
                };
                format!("{c}{}* __restrict__ {n}s = {n}{off};", self.real(d))
            }
            Dialect::Wgsl { binding } => {
                let b = binding
                    .iter()
                    .find(|(u, _)| *u == t)
                    .map(|p| p.1)
                    .ok_or_else(|| EmitError::InvalidPlan {
                        kernel: "channel".into(),
                        why: format!("{t:?} is not bound"),
                    })?;
                if len == 0 {
                    format!("let {n}b = P.base{b};")
                } else {
                    format!("let {n}b = P.base{b} + smp * {len}u;")
                }
            }
        })
    }
}

/// `we`, edge `e`'s weight row: `e − weight_fold` from the fold on (edges sharing rows,
/// `GraphSize::weight_fold`; 0 folds nothing), else `e`.
fn weight_row(dia: &Dialect) -> String {
    match dia {
        Dialect::Cuda => {
            "const unsigned int we = e - (e >= weight_fold ? weight_fold : 0u); (void)we;".into()
        }
        Dialect::Wgsl { .. } => {
            "let we = e - select(0u, P.weight_fold, e >= P.weight_fold);".into()
        }
    }
}

/// Structural checks, so a malformed plan cannot print out-of-range code.
pub(crate) fn check(plan: &KernelPlan, k: &Kernel, c: &ChannelWork) -> Result<(), String> {
    let d = &plan.dims;
    if c.channels == 0 || c.samples_per_group == 0 {
        return Err("zero channels or samples per group".into());
    }
    if c.conv.is_none() && k.workgroup_size != c.channels * c.samples_per_group {
        return Err("workgroup size is not channels × samples per group".into());
    }
    if c.y_len != d.dim_in2 || c.y_len == 0 {
        return Err("y_len is not dim_in2".into());
    }
    let weighted = d.weight_numel > 0;
    let fwd = c.pass == ChannelPass::Forward;
    let (need_in, need_out) = c.bindings(weighted);
    if let Some(cv) = &c.conv {
        if c.pass == ChannelPass::DoubleBackward || cv.table().is_none() || plan.conv.is_none() {
            return Err(
                "convolution units on a channel kernel other than a conv forward or backward"
                    .into(),
            );
        }
        let ok = match c.pass {
            ChannelPass::Backward => {
                cv.groups.is_empty()
                    && matches!(
                        (cv.units, cv.node_out),
                        (
                            SampleMode::Segments {
                                csr: Tensor::SendCsr
                            },
                            Tensor::GX
                        ) | (
                            SampleMode::Pieces {
                                pieces: Tensor::SendPieces
                            },
                            Tensor::SendPartial
                        )
                    )
            }
            _ => matches!(
                (cv.units, cv.node_out),
                (
                    SampleMode::Segments {
                        csr: Tensor::RecvCsr
                    },
                    Tensor::Z
                ) | (
                    SampleMode::Pieces {
                        pieces: Tensor::RecvPieces
                    },
                    Tensor::RecvPartial
                )
            ),
        };
        if !ok {
            return Err(
                "convolution units must be the receiver view into z (forward) or the sender \
                 view into gx (backward)"
                    .into(),
            );
        }
        if cv.groups.contains(&0)
            || (!cv.groups.is_empty()
                && cv.groups.iter().map(|&n| n as usize).sum::<usize>() != c.z_blocks.len())
        {
            return Err("forward groups do not cover the output blocks".into());
        }
        if !cv.lanes.is_empty() {
            if c.pass != ChannelPass::Backward {
                return Err("lane groups outside a conv backward".into());
            }
            let mut seen = vec![0u32; c.paths.len()];
            for g in &cv.lanes {
                if g.x_block as usize >= c.x_blocks.len() {
                    return Err("lane group names no x block".into());
                }
                if g.paths.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("lane group paths not ascending".into());
                }
                for &p in &g.paths {
                    match (c.paths.get(p as usize), seen.get_mut(p as usize)) {
                        (Some(pth), Some(n)) if pth.x_block == g.x_block => *n += 1,
                        _ => return Err("lane group path of another x block or none".into()),
                    }
                }
            }
            if seen.iter().any(|&n| n != 1) {
                return Err("lane groups do not take every path exactly once".into());
            }
            if (0..c.x_blocks.len()).any(|b| !cv.lanes.iter().any(|g| g.x_block as usize == b)) {
                return Err("an x block without lanes".into());
            }
        }
        if k.workgroup_size != c.lanes() * c.samples_per_group {
            return Err("workgroup size is not lanes × samples per group".into());
        }
    } else if plan.conv.is_some() {
        return Err("a channel kernel without units in a convolution plan".into());
    }
    // Mixed multiplicities: only a backward and a conv forward guard channels past a
    // block's rows.
    let conv_fwd = fwd && c.conv.is_some();
    if c.pass != ChannelPass::Backward && !conv_fwd && !c.uniform() {
        return Err("blocks of different multiplicities outside a backward".into());
    }
    // A forward writes every row of every output block: none may have more rows than
    // channels.
    if fwd && c.z_blocks.iter().any(|b| c.block_mul(b) > c.channels) {
        return Err("z block with more rows than channels".into());
    }
    // (A backward's output block that no path reads may have any multiplicity.)
    for b in &c.z_blocks {
        if b.offset as u64 + c.block_mul(b) as u64 * b.row_len as u64 > d.dim_out as u64 {
            return Err("z block outside a sample".into());
        }
    }
    if c.write_gw {
        if fwd {
            return Err("a forward writes no gw".into());
        }
        if !weighted || d.shared_weights {
            return Err("gw written for shared or no weights".into());
        }
    }
    if k.inputs != need_in || k.outputs != need_out {
        return Err(format!(
            "bindings {:?} -> {:?}, expected {need_in:?} -> {need_out:?}",
            k.inputs, k.outputs
        ));
    }
    for b in &c.x_blocks {
        if c.block_mul(b) > c.channels {
            return Err("x block with more rows than channels".into());
        }
        if b.offset as u64 + c.block_mul(b) as u64 * b.row_len as u64 > d.dim_in1 as u64 {
            return Err("x block outside a sample".into());
        }
    }
    for p in &c.paths {
        let fits = |off: u32, rows: u64, len: u32, total: u32| {
            off as u64 + rows * len as u64 <= total as u64
        };
        let xb = c
            .x_blocks
            .get(p.x_block as usize)
            .ok_or("path names no x block")?;
        if xb.offset != p.x_offset || xb.row_len != p.x_len {
            return Err(format!("path {}: x block mismatch", p.path));
        }
        let zb = c
            .z_blocks
            .get(p.z_block as usize)
            .ok_or("path names no z block")?;
        if zb.offset != p.z_offset || zb.row_len != p.z_len {
            return Err(format!("path {}: z block mismatch", p.path));
        }
        // `uvu`: channel `u` owns row `u` of the path's x and output blocks alike.
        if c.block_mul(xb) != c.block_mul(zb) {
            return Err(format!(
                "path {}: x and z blocks of different multiplicities",
                p.path
            ));
        }
        let m = c.block_mul(xb) as u64;
        if !fits(p.y_offset, p.y_mul as u64, p.y_len, d.dim_in2)
            || !fits(p.z_offset, m, p.z_len, d.dim_out)
        {
            return Err(format!("path {}: block outside a sample", p.path));
        }
        // `None`: an unweighted instruction (w ≡ 1, no gw rows), in any product.
        if let Some(o) = p.w_offset {
            if !weighted || !fits(o, m * p.y_mul as u64, 1, d.weight_numel) {
                return Err(format!("path {}: weights outside the vector", p.path));
            }
        }
        for t in &p.terms {
            if t.i >= p.x_len || t.j >= p.y_len || t.k >= p.z_len || !t.coeff.is_finite() {
                return Err(format!("path {}: term out of range", p.path));
            }
        }
    }
    Ok(())
}

/// The kernel body after the invocation index `g` is known: `smp` (the sample), channel `ch`, the fused
/// gradients, and the ordered `gy` sum. `block` is the workgroup's linear index expression,
/// `lid` the local index, `num_samples` the dispatch's sample count.
pub(crate) fn body(
    dia: &Dialect,
    plan: &KernelPlan,
    c: &ChannelWork,
    block: &str,
    lid: &str,
    num_samples: &str,
) -> Result<String, EmitError> {
    if c.conv.is_some() && c.pass == ChannelPass::Forward {
        return conv_forward_body(dia, plan, c, block, lid);
    }
    if c.conv.is_some() {
        return conv_backward_body(dia, plan, c, block, lid);
    }
    match c.pass {
        ChannelPass::Backward => backward_body(dia, plan, c, block, lid, num_samples),
        ChannelPass::Forward => forward_body(dia, plan, c, block, lid, num_samples),
        ChannelPass::DoubleBackward => double_backward_body(dia, plan, c, block, lid, num_samples),
    }
}

/// The opening line of path `p`'s scope in a backward: a plain block, or, where the path's
/// `x` block has fewer rows than the kernel has channels, `if (ch < mul) {` (the same text in
/// CUDA and WGSL). Never holds a barrier, so the barriers stay in uniform control flow.
fn open_path(c: &ChannelWork, p: &ChannelPath, ch: &str) -> String {
    let mul = c.path_mul(p);
    if mul < c.channels {
        format!("if ({ch} < {mul}u) {{ // path {} ({mul} rows)", p.path)
    } else {
        format!("{{ // path {}", p.path)
    }
}

/// `(open, close)` around a block's per-row loads or stores when it has fewer rows than
/// channels (`None`s otherwise).
fn row_guard(
    c: &ChannelWork,
    b: &ChannelBlock,
    ch: &str,
) -> (Option<String>, Option<&'static str>) {
    let mul = c.block_mul(b);
    if mul < c.channels {
        (Some(format!("if ({ch} < {mul}u) {{")), Some("}"))
    } else {
        (None, None)
    }
}

/// `(open, close)` around chunk `k`'s code of a block or path with `mul` rows, in a
/// [`equikern_plan::ChannelConv::warp_units`] backward: a guard on the lane where the chunk
/// is the partial last one (`None`s otherwise).
fn chunk_guard(mul: u32, k: u32) -> (Option<String>, Option<&'static str>) {
    let rows = mul.saturating_sub(k * LANE_CHUNK);
    if rows < LANE_CHUNK {
        (Some(format!("if (l < {rows}u) {{")), Some("}"))
    } else {
        (None, None)
    }
}

/// One invocation's row of an `x` block in the conv backward: the block, the suffix of its
/// `xr`/`gx` registers, the row index expression, and the guard around it (if any).
struct XRow<'a> {
    block: &'a ChannelBlock,
    regs: String,
    row: String,
    guard: Option<String>,
}

/// The `x` rows an invocation of the conv backward owns: one per block (`ch`, guarded where
/// the block has fewer rows than channels), or with warp units one per block and 32-channel
/// chunk with rows (`32k + l`, guarded where the chunk is the block's partial last).
fn x_rows(c: &ChannelWork) -> Vec<XRow<'_>> {
    let mut out = vec![];
    for (b, blk) in c.x_blocks.iter().enumerate() {
        if c.warp_units() {
            for k in 0..c.block_mul(blk).div_ceil(LANE_CHUNK) {
                out.push(XRow {
                    block: blk,
                    regs: format!("{b}_{k}"),
                    row: format!("({}u + l)", k * LANE_CHUNK),
                    guard: chunk_guard(c.block_mul(blk), k).0,
                });
            }
        } else {
            out.push(XRow {
                block: blk,
                regs: format!("{b}"),
                row: "ch".into(),
                guard: row_guard(c, blk, "ch").0,
            });
        }
    }
    out
}

/// `line(component offset, register suffix)` for every component of every row in `rows`,
/// each row inside its guard, all inside `if (smp < num_samples)`.
fn print_x_rows(
    s: &mut String,
    rows: &[XRow<'_>],
    ns: &str,
    line: &dyn Fn(&str, &str) -> Result<String, EmitError>,
) -> Result<(), EmitError> {
    let _ = writeln!(s, "    if (smp < {ns}) {{");
    for r in rows {
        let ind = if r.guard.is_some() { 12 } else { 8 };
        if let Some(g) = &r.guard {
            let _ = writeln!(s, "        {g}");
        }
        for i in 0..r.block.row_len {
            let off = format!("{}u + {} * {}u", r.block.offset + i, r.row, r.block.row_len);
            let reg = format!("{}_{i}", r.regs);
            let _ = writeln!(s, "{:ind$}{}", "", line(&off, &reg)?);
        }
        if r.guard.is_some() {
            let _ = writeln!(s, "        }}");
        }
    }
    let _ = writeln!(s, "    }}");
    Ok(())
}

pub(crate) fn barrier(dia: &Dialect) -> &'static str {
    match dia {
        Dialect::Cuda => "__syncthreads();",
        Dialect::Wgsl { .. } => "workgroupBarrier();",
    }
}

/// Per output block: every channel accumulates its row from the block's paths, writes it to
/// the staging buffer (`lid · (2l+1) + k`: a sample's rows are its block's contiguous range),
/// then the workgroup stores each sample's range with consecutive threads on consecutive
/// elements.
fn forward_body(
    dia: &Dialect,
    plan: &KernelPlan,
    c: &ChannelWork,
    block: &str,
    lid: &str,
    num_samples: &str,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let m = c.channels;
    let zero = dia.lit(0.0, dt);
    let mut s = String::new();
    let ln = |s: &mut String, ind: usize, line: &str| {
        let _ = writeln!(s, "{:ind$}{line}", "");
    };
    ln(&mut s, 4, &dia.let_u("smp", &format!("g / {m}u")));
    ln(&mut s, 4, &dia.let_u("ch", &format!("g - smp * {m}u")));
    let wlen = if d.shared_weights { 0 } else { d.weight_numel };
    // Bases are computed for every thread (dead threads never dereference them).
    ln(&mut s, 4, &dia.base(Tensor::X, d.dim_in1, false, dt)?);
    ln(&mut s, 4, &dia.base(Tensor::Y, d.dim_in2, false, dt)?);
    if d.weight_numel > 0 {
        ln(&mut s, 4, &dia.base(Tensor::W, wlen, false, dt)?);
    }
    let s0 = format!("{block} * {}u", c.samples_per_group);
    let widths: Vec<u32> = c.group_widths().collect();
    if c.z_groups.iter().sum::<u32>() as usize != c.z_blocks.len() || c.z_groups.contains(&0) {
        return Err(EmitError::InvalidPlan {
            kernel: "channel".into(),
            why: "staging groups do not cover the output blocks".into(),
        });
    }
    let mut first = 0usize;
    for (gi, (&nb, &width)) in c.z_groups.iter().zip(&widths).enumerate() {
        let blocks = first..first + nb as usize;
        first += nb as usize;
        let gsize = m * width; // elements per sample of this group
        let goff = c.z_blocks[blocks.start].offset;
        ln(
            &mut s,
            4,
            &format!("{{ // output blocks {blocks:?} (staging group {gi})"),
        );
        ln(
            &mut s,
            8,
            &dia.let_u("st0", &format!("({lid} / {m}u) * {gsize}u")),
        );
        for b in blocks {
            let blk = &c.z_blocks[b];
            let l = blk.row_len;
            let boff = blk.offset - goff;
            ln(&mut s, 8, &format!("{{ // output block {b}"));
            for k in 0..l {
                ln(&mut s, 12, &dia.var(dt, &format!("za{k}"), &zero));
            }
            let paths: Vec<_> = c.paths.iter().filter(|p| p.z_block as usize == b).collect();
            if !paths.is_empty() {
                ln(&mut s, 12, &format!("if (smp < {num_samples}) {{"));
                for p in paths {
                    ln(&mut s, 16, &format!("{{ // path {}", p.path));
                    let mut is: Vec<u32> = p.terms.iter().map(|t| t.i).collect();
                    is.sort_unstable();
                    is.dedup();
                    for i in &is {
                        let e = dia.at(
                            Tensor::X,
                            &format!("{}u + ch * {}u", p.x_offset + i, p.x_len),
                        );
                        ln(&mut s, 20, &dia.let_(dt, &format!("xp{i}"), &e));
                    }
                    for v in 0..p.y_mul {
                        ln(&mut s, 20, "{");
                        let yb = p.y_offset + v * p.y_len;
                        let mut js: Vec<u32> = p.terms.iter().map(|t| t.j).collect();
                        js.sort_unstable();
                        js.dedup();
                        for j in &js {
                            let e = dia.at(Tensor::Y, &format!("{}u", yb + j));
                            ln(&mut s, 24, &dia.let_(dt, &format!("yv{j}"), &e));
                        }
                        for k in 0..l {
                            ln(&mut s, 24, &dia.var(dt, &format!("zv{k}"), &zero));
                        }
                        for t in &p.terms {
                            let line = format!(
                                "zv{} += {} * xp{} * yv{};",
                                t.k,
                                dia.lit(t.coeff, dt),
                                t.i,
                                t.j
                            );
                            ln(&mut s, 24, &line);
                        }
                        match p.w_offset {
                            Some(o) => {
                                let wi = format!("{}u + ch * {}u", o + v, p.y_mul);
                                ln(&mut s, 24, &dia.let_(dt, "wv", &dia.at(Tensor::W, &wi)));
                                for k in 0..l {
                                    ln(&mut s, 24, &format!("za{k} += wv * zv{k};"));
                                }
                            }
                            None => {
                                for k in 0..l {
                                    ln(&mut s, 24, &format!("za{k} += zv{k};"));
                                }
                            }
                        }
                        ln(&mut s, 20, "}");
                    }
                    ln(&mut s, 16, "}");
                }
                ln(&mut s, 12, "}");
            }
            for k in 0..l {
                let line = format!("ek_red[st0 + {}u + ch * {l}u] = za{k};", boff + k);
                ln(&mut s, 12, &line);
            }
            ln(&mut s, 8, "}");
        }
        s.push_str(&stage_out(
            dia,
            plan,
            c,
            lid,
            num_samples,
            &s0,
            gsize,
            goff,
            Tensor::Z,
        )?);
        ln(&mut s, 4, "}");
    }
    Ok(s)
}

fn backward_body(
    dia: &Dialect,
    plan: &KernelPlan,
    c: &ChannelWork,
    block: &str,
    lid: &str,
    num_samples: &str,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let m = c.channels;
    let zero = dia.lit(0.0, dt);
    let mut s = String::new();
    let ln = |s: &mut String, ind: usize, line: &str| {
        let _ = writeln!(s, "{:ind$}{line}", "");
    };
    ln(&mut s, 4, &dia.let_u("smp", &format!("g / {m}u")));
    ln(&mut s, 4, &dia.let_u("ch", &format!("g - smp * {m}u")));
    for j in 0..c.y_len {
        ln(&mut s, 4, &dia.var(dt, &format!("gy{j}"), &zero));
    }
    ln(&mut s, 4, &format!("if (smp < {num_samples}) {{"));
    let wlen = if d.shared_weights { 0 } else { d.weight_numel };
    ln(&mut s, 8, &dia.base(Tensor::X, d.dim_in1, false, dt)?);
    ln(&mut s, 8, &dia.base(Tensor::Y, d.dim_in2, false, dt)?);
    if d.weight_numel > 0 {
        ln(&mut s, 8, &dia.base(Tensor::W, wlen, false, dt)?);
    }
    ln(&mut s, 8, &dia.base(Tensor::GZ, d.dim_out, false, dt)?);
    ln(&mut s, 8, &dia.base(Tensor::GX, d.dim_in1, true, dt)?);
    if c.write_gw {
        ln(&mut s, 8, &dia.base(Tensor::GW, d.weight_numel, true, dt)?);
    }
    for (b, blk) in c.x_blocks.iter().enumerate() {
        for i in 0..blk.row_len {
            ln(&mut s, 8, &dia.var(dt, &format!("gx{b}_{i}"), &zero));
        }
    }
    for p in &c.paths {
        ln(&mut s, 8, &open_path(c, p, "ch"));
        for i in 0..p.x_len {
            let e = dia.at(
                Tensor::X,
                &format!("{}u + ch * {}u", p.x_offset + i, p.x_len),
            );
            ln(&mut s, 12, &dia.let_(dt, &format!("xp{i}"), &e));
        }
        // Only the gz components some term reads.
        let mut ks: Vec<u32> = p.terms.iter().map(|t| t.k).collect();
        ks.sort_unstable();
        ks.dedup();
        for k in &ks {
            let e = dia.at(
                Tensor::GZ,
                &format!("{}u + ch * {}u", p.z_offset + k, p.z_len),
            );
            ln(&mut s, 12, &dia.let_(dt, &format!("gp{k}"), &e));
        }
        for v in 0..p.y_mul {
            ln(&mut s, 12, "{");
            let yb = p.y_offset + v * p.y_len;
            for j in 0..p.y_len {
                let e = dia.at(Tensor::Y, &format!("{}u", yb + j));
                ln(&mut s, 16, &dia.let_(dt, &format!("yv{j}"), &e));
            }
            let widx = p
                .w_offset
                .map(|o| format!("{}u + ch * {}u", o + v, p.y_mul));
            if let Some(wi) = &widx {
                ln(&mut s, 16, &dia.let_(dt, "wv", &dia.at(Tensor::W, wi)));
            }
            ln(&mut s, 16, &dia.var(dt, "a", &zero));
            for i in 0..p.x_len {
                ln(&mut s, 16, &dia.var(dt, &format!("gxv{i}"), &zero));
            }
            for j in 0..p.y_len {
                ln(&mut s, 16, &dia.var(dt, &format!("gyv{j}"), &zero));
            }
            for (n, t) in p.terms.iter().enumerate() {
                let tn = format!("t{n}");
                let e = format!("{} * gp{}", dia.lit(t.coeff, dt), t.k);
                ln(&mut s, 16, &dia.let_(dt, &tn, &e));
                ln(&mut s, 16, &format!("a += {tn} * xp{} * yv{};", t.i, t.j));
                ln(&mut s, 16, &format!("gxv{} += {tn} * yv{};", t.i, t.j));
                ln(&mut s, 16, &format!("gyv{} += {tn} * xp{};", t.j, t.i));
            }
            let scale = |v: &str| {
                if widx.is_some() {
                    format!("wv * {v}")
                } else {
                    v.to_string()
                }
            };
            for i in 0..p.x_len {
                let line = format!("gx{}_{i} += {};", p.x_block, scale(&format!("gxv{i}")));
                ln(&mut s, 16, &line);
            }
            for j in 0..p.y_len {
                let line = format!("gy{} += {};", yb + j, scale(&format!("gyv{j}")));
                ln(&mut s, 16, &line);
            }
            if let (true, Some(wi)) = (c.write_gw, &widx) {
                ln(&mut s, 16, &format!("{} = a;", dia.at(Tensor::GW, wi)));
            } else {
                let unused = match dia {
                    Dialect::Cuda => "(void)a;",
                    Dialect::Wgsl { .. } => "_ = a;",
                };
                ln(&mut s, 16, unused);
            }
            ln(&mut s, 12, "}");
        }
        ln(&mut s, 8, "}");
    }
    for (b, blk) in c.x_blocks.iter().enumerate() {
        let (open, close) = row_guard(c, blk, "ch");
        if let Some(g) = &open {
            ln(&mut s, 8, g);
        }
        let ind = if open.is_some() { 12 } else { 8 };
        for i in 0..blk.row_len {
            let at = dia.at(
                Tensor::GX,
                &format!("{}u + ch * {}u", blk.offset + i, blk.row_len),
            );
            ln(&mut s, ind, &format!("{at} = gx{b}_{i};"));
        }
        if let Some(g) = close {
            ln(&mut s, 8, g);
        }
    }
    ln(&mut s, 4, "}");
    s.push_str(&reduce_y(
        dia,
        plan,
        c,
        block,
        lid,
        num_samples,
        "gy",
        Tensor::GY,
    )?);
    Ok(s)
}

/// Workgroup-memory declaration of the `gy` reduction.
pub(crate) fn shared_decl(dia: &Dialect, plan: &KernelPlan, c: &ChannelWork) -> String {
    let n = c.reduction_len();
    let conv = c.conv.is_some();
    if (conv && c.pass == ChannelPass::Forward) || c.warp_units() {
        // Stores straight from registers / sums by shuffles: no workgroup memory.
        return String::new();
    }
    match dia {
        Dialect::Cuda if conv => format!(
            "    __shared__ {} ek_red[{n}];\n    __shared__ unsigned int ek_trip;\n",
            dia.real(plan.dtype)
        ),
        Dialect::Cuda => format!("    __shared__ {} ek_red[{n}];\n", dia.real(plan.dtype)),
        Dialect::Wgsl { .. } if conv => {
            format!("var<workgroup> ek_red: array<f32, {n}>;\nvar<workgroup> ek_trip: u32;\n\n")
        }
        Dialect::Wgsl { .. } => format!("var<workgroup> ek_red: array<f32, {n}>;\n\n"),
    }
}

/// The workgroup sum of the per-channel `{prefix}0..` partials (ascending channel order,
/// deterministic) into each sample's row of `out` (`dim_in2` long).
#[allow(clippy::too_many_arguments)]
fn reduce_y(
    dia: &Dialect,
    plan: &KernelPlan,
    c: &ChannelWork,
    block: &str,
    lid: &str,
    num_samples: &str,
    prefix: &str,
    out: Tensor,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let m = c.channels;
    let wg = c.channels * c.samples_per_group;
    let zero = dia.lit(0.0, dt);
    let mut s = String::new();
    let ln = |s: &mut String, ind: usize, line: &str| {
        let _ = writeln!(s, "{:ind$}{line}", "");
    };
    // The gy partials of the workgroup: column j holds every invocation's gy_j (padded by
    // one so a sample's column reads and the row writes hit distinct banks).
    let stride = wg + 1;
    for j in 0..c.y_len {
        ln(
            &mut s,
            4,
            &format!("ek_red[{}u + {lid}] = {prefix}{j};", j * stride),
        );
    }
    ln(
        &mut s,
        4,
        match dia {
            Dialect::Cuda => "__syncthreads();",
            Dialect::Wgsl { .. } => "workgroupBarrier();",
        },
    );
    let items = c.samples_per_group * c.y_len;
    let gy_base = match dia {
        Dialect::Cuda => ident(out).to_string(),
        Dialect::Wgsl { binding } => {
            let b = binding
                .iter()
                .find(|(t, _)| *t == out)
                .map(|p| p.1)
                .ok_or_else(|| EmitError::InvalidPlan {
                    kernel: "channel".into(),
                    why: format!("{out:?} is not bound"),
                })?;
            format!("{}[P.base{b} + ", crate::wgsl::tensor_ident(out))
        }
    };
    let s0 = format!("{block} * {}u", c.samples_per_group);
    match dia {
        Dialect::Cuda => {
            ln(
                &mut s,
                4,
                &format!("for (unsigned int e = {lid}; e < {items}u; e += {wg}u) {{"),
            );
            ln(&mut s, 8, &dia.let_u("q", &format!("e / {}u", c.y_len)));
            ln(&mut s, 8, &dia.let_u("j", &format!("e - q * {}u", c.y_len)));
            ln(&mut s, 8, &dia.let_u("sq", &format!("{s0} + q")));
            ln(&mut s, 8, &format!("if (sq < {num_samples}) {{"));
            ln(&mut s, 12, &dia.var(dt, "acc", &zero));
            ln(
                &mut s,
                12,
                &format!(
                    "const {}* col = ek_red + j * {stride}u + q * {m}u;",
                    dia.real(dt)
                ),
            );
            // Ascending channel order: deterministic.
            ln(
                &mut s,
                12,
                &format!("for (unsigned int u = 0u; u < {m}u; ++u) acc += col[u];"),
            );
            ln(
                &mut s,
                12,
                &format!(
                    "{gy_base}[(unsigned long long)sq * {}u + j] = acc;",
                    d.dim_in2
                ),
            );
            ln(&mut s, 8, "}");
            ln(&mut s, 4, "}");
        }
        Dialect::Wgsl { .. } => {
            ln(
                &mut s,
                4,
                &format!("for (var e = {lid}; e < {items}u; e += {wg}u) {{"),
            );
            ln(&mut s, 8, &format!("let q = e / {}u;", c.y_len));
            ln(&mut s, 8, &format!("let j = e - q * {}u;", c.y_len));
            ln(&mut s, 8, &format!("let sq = {s0} + q;"));
            ln(&mut s, 8, &format!("if (sq < {num_samples}) {{"));
            ln(&mut s, 12, "var acc = 0.0f;");
            ln(&mut s, 12, &format!("let col = j * {stride}u + q * {m}u;"));
            // Ascending channel order: deterministic.
            ln(
                &mut s,
                12,
                &format!("for (var u = 0u; u < {m}u; u++) {{ acc += ek_red[col + u]; }}"),
            );
            ln(
                &mut s,
                12,
                &format!("{gy_base}sq * {}u + j] = acc;", d.dim_in2),
            );
            ln(&mut s, 8, "}");
            ln(&mut s, 4, "}");
        }
    }
    Ok(s)
}

/// Element `e` of output `t` (no per-sample base: `e` is absolute in the dispatch).
fn out_at(dia: &Dialect, t: Tensor, e: &str) -> Result<String, EmitError> {
    match dia {
        Dialect::Cuda => Ok(format!("{}[{e}]", ident(t))),
        Dialect::Wgsl { binding } => binding
            .iter()
            .find(|(u, _)| *u == t)
            .map(|p| format!("{}[P.base{} + {e}]", crate::wgsl::tensor_ident(t), p.1))
            .ok_or_else(|| EmitError::InvalidPlan {
                kernel: "channel".into(),
                why: format!("{t:?} is not bound"),
            }),
    }
}

/// The double backward: per staging group of output blocks, each channel accumulates its
/// `dgz` rows (staged and stored like the forward's `z`) and, from the same loads, its `dx`
/// rows, `dy` partials and `dw` entries; then `dx` is stored and `dy` summed like `gy`.
/// Per term with `c` the coefficient and `t = c·gz[k]`:
/// `dgz[k] += w·c·(hx_i y_j + x_i hy_j) + hw·c·x_i y_j`, `dx[i] += w·t·hy_j + hw·t·y_j`,
/// `dy[j] += w·t·hx_i + hw·t·x_i`, `dw += t·(hx_i y_j + x_i hy_j)`.
fn double_backward_body(
    dia: &Dialect,
    plan: &KernelPlan,
    c: &ChannelWork,
    block: &str,
    lid: &str,
    num_samples: &str,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let m = c.channels;
    let zero = dia.lit(0.0, dt);
    let weighted = d.weight_numel > 0;
    let mut s = String::new();
    let ln = |s: &mut String, ind: usize, line: &str| {
        let _ = writeln!(s, "{:ind$}{line}", "");
    };
    ln(&mut s, 4, &dia.let_u("smp", &format!("g / {m}u")));
    ln(&mut s, 4, &dia.let_u("ch", &format!("g - smp * {m}u")));
    let wlen = if d.shared_weights { 0 } else { d.weight_numel };
    // Bases are computed for every thread (dead threads never dereference them).
    for (t, len, out) in [
        (Tensor::X, d.dim_in1, false),
        (Tensor::Y, d.dim_in2, false),
        (Tensor::GZ, d.dim_out, false),
        (Tensor::HX, d.dim_in1, false),
        (Tensor::HY, d.dim_in2, false),
        (Tensor::DX, d.dim_in1, true),
    ] {
        ln(&mut s, 4, &dia.base(t, len, out, dt)?);
    }
    if weighted {
        ln(&mut s, 4, &dia.base(Tensor::W, wlen, false, dt)?);
        ln(&mut s, 4, &dia.base(Tensor::HW, wlen, false, dt)?);
    }
    if c.write_gw {
        ln(&mut s, 4, &dia.base(Tensor::DW, d.weight_numel, true, dt)?);
    }
    for j in 0..c.y_len {
        ln(&mut s, 4, &dia.var(dt, &format!("dy{j}"), &zero));
    }
    for (b, blk) in c.x_blocks.iter().enumerate() {
        for i in 0..blk.row_len {
            ln(&mut s, 4, &dia.var(dt, &format!("dx{b}_{i}"), &zero));
        }
    }
    let s0 = format!("{block} * {}u", c.samples_per_group);
    let widths: Vec<u32> = c.group_widths().collect();
    if c.z_groups.iter().sum::<u32>() as usize != c.z_blocks.len() || c.z_groups.contains(&0) {
        return Err(EmitError::InvalidPlan {
            kernel: "channel".into(),
            why: "staging groups do not cover the output blocks".into(),
        });
    }
    let mut first = 0usize;
    for (gi, (&nb, &width)) in c.z_groups.iter().zip(&widths).enumerate() {
        let blocks = first..first + nb as usize;
        first += nb as usize;
        let gsize = m * width;
        let goff = c.z_blocks[blocks.start].offset;
        ln(
            &mut s,
            4,
            &format!("{{ // output blocks {blocks:?} (staging group {gi})"),
        );
        ln(
            &mut s,
            8,
            &dia.let_u("st0", &format!("({lid} / {m}u) * {gsize}u")),
        );
        for b in blocks {
            let blk = &c.z_blocks[b];
            let l = blk.row_len;
            let boff = blk.offset - goff;
            ln(&mut s, 8, &format!("{{ // output block {b}"));
            for k in 0..l {
                ln(&mut s, 12, &dia.var(dt, &format!("za{k}"), &zero));
            }
            let paths: Vec<_> = c.paths.iter().filter(|p| p.z_block as usize == b).collect();
            if !paths.is_empty() {
                ln(&mut s, 12, &format!("if (smp < {num_samples}) {{"));
                for p in paths {
                    ln(&mut s, 16, &format!("{{ // path {}", p.path));
                    for i in 0..p.x_len {
                        let off = format!("{}u + ch * {}u", p.x_offset + i, p.x_len);
                        ln(
                            &mut s,
                            20,
                            &dia.let_(dt, &format!("xp{i}"), &dia.at(Tensor::X, &off)),
                        );
                        ln(
                            &mut s,
                            20,
                            &dia.let_(dt, &format!("hxp{i}"), &dia.at(Tensor::HX, &off)),
                        );
                    }
                    for k in 0..p.z_len {
                        let off = format!("{}u + ch * {}u", p.z_offset + k, p.z_len);
                        ln(
                            &mut s,
                            20,
                            &dia.let_(dt, &format!("gp{k}"), &dia.at(Tensor::GZ, &off)),
                        );
                    }
                    for v in 0..p.y_mul {
                        ln(&mut s, 20, "{");
                        let yb = p.y_offset + v * p.y_len;
                        for j in 0..p.y_len {
                            let off = format!("{}u", yb + j);
                            ln(
                                &mut s,
                                24,
                                &dia.let_(dt, &format!("yv{j}"), &dia.at(Tensor::Y, &off)),
                            );
                            ln(
                                &mut s,
                                24,
                                &dia.let_(dt, &format!("hyv{j}"), &dia.at(Tensor::HY, &off)),
                            );
                        }
                        let widx = p
                            .w_offset
                            .map(|o| format!("{}u + ch * {}u", o + v, p.y_mul));
                        if let Some(wi) = &widx {
                            ln(&mut s, 24, &dia.let_(dt, "wv", &dia.at(Tensor::W, wi)));
                            ln(&mut s, 24, &dia.let_(dt, "hwv", &dia.at(Tensor::HW, wi)));
                        }
                        for k in 0..p.z_len {
                            ln(&mut s, 24, &dia.var(dt, &format!("zv{k}"), &zero));
                            ln(&mut s, 24, &dia.var(dt, &format!("zh{k}"), &zero));
                        }
                        for i in 0..p.x_len {
                            ln(&mut s, 24, &dia.var(dt, &format!("dxv{i}"), &zero));
                            ln(&mut s, 24, &dia.var(dt, &format!("dxh{i}"), &zero));
                        }
                        for j in 0..p.y_len {
                            ln(&mut s, 24, &dia.var(dt, &format!("dyv{j}"), &zero));
                            ln(&mut s, 24, &dia.var(dt, &format!("dyh{j}"), &zero));
                        }
                        ln(&mut s, 24, &dia.var(dt, "a", &zero));
                        for (n, t) in p.terms.iter().enumerate() {
                            let (i, j, k) = (t.i, t.j, t.k);
                            let cl = dia.lit(t.coeff, dt);
                            let tn = format!("t{n}");
                            let mix = format!("m{n}");
                            ln(
                                &mut s,
                                24,
                                &dia.let_(dt, &mix, &format!("hxp{i} * yv{j} + xp{i} * hyv{j}")),
                            );
                            ln(&mut s, 24, &format!("zv{k} += {cl} * {mix};"));
                            ln(&mut s, 24, &format!("zh{k} += {cl} * xp{i} * yv{j};"));
                            ln(&mut s, 24, &dia.let_(dt, &tn, &format!("{cl} * gp{k}")));
                            ln(&mut s, 24, &format!("dxv{i} += {tn} * hyv{j};"));
                            ln(&mut s, 24, &format!("dxh{i} += {tn} * yv{j};"));
                            ln(&mut s, 24, &format!("dyv{j} += {tn} * hxp{i};"));
                            ln(&mut s, 24, &format!("dyh{j} += {tn} * xp{i};"));
                            ln(&mut s, 24, &format!("a += {tn} * {mix};"));
                        }
                        let comb = |v: &str, h: &str| {
                            if widx.is_some() {
                                format!("wv * {v} + hwv * {h}")
                            } else {
                                v.to_string()
                            }
                        };
                        for k in 0..p.z_len {
                            ln(
                                &mut s,
                                24,
                                &format!(
                                    "za{k} += {};",
                                    comb(&format!("zv{k}"), &format!("zh{k}"))
                                ),
                            );
                        }
                        for i in 0..p.x_len {
                            let e = comb(&format!("dxv{i}"), &format!("dxh{i}"));
                            ln(&mut s, 24, &format!("dx{}_{i} += {e};", p.x_block));
                        }
                        for j in 0..p.y_len {
                            let e = comb(&format!("dyv{j}"), &format!("dyh{j}"));
                            ln(&mut s, 24, &format!("dy{} += {e};", yb + j));
                        }
                        if let (true, Some(wi)) = (c.write_gw, &widx) {
                            ln(&mut s, 24, &format!("{} = a;", dia.at(Tensor::DW, wi)));
                        } else {
                            let unused = match dia {
                                Dialect::Cuda => "(void)a;",
                                Dialect::Wgsl { .. } => "_ = a;",
                            };
                            ln(&mut s, 24, unused);
                        }
                        ln(&mut s, 20, "}");
                    }
                    ln(&mut s, 16, "}");
                }
                ln(&mut s, 12, "}");
            }
            for k in 0..l {
                let line = format!("ek_red[st0 + {}u + ch * {l}u] = za{k};", boff + k);
                ln(&mut s, 12, &line);
            }
            ln(&mut s, 8, "}");
        }
        s.push_str(&stage_out(
            dia,
            plan,
            c,
            lid,
            num_samples,
            &s0,
            gsize,
            goff,
            Tensor::DGZ,
        )?);
        ln(&mut s, 4, "}");
    }
    ln(&mut s, 4, &format!("if (smp < {num_samples}) {{"));
    for (b, blk) in c.x_blocks.iter().enumerate() {
        for i in 0..blk.row_len {
            let at = dia.at(
                Tensor::DX,
                &format!("{}u + ch * {}u", blk.offset + i, blk.row_len),
            );
            ln(&mut s, 8, &format!("{at} = dx{b}_{i};"));
        }
    }
    ln(&mut s, 4, "}");
    s.push_str(&reduce_y(
        dia,
        plan,
        c,
        block,
        lid,
        num_samples,
        "dy",
        Tensor::DY,
    )?);
    Ok(s)
}

/// After a staging group is in workgroup memory: barrier, each sample's `gsize` elements
/// stored to `out` at `goff` with consecutive threads on consecutive elements, barrier.
#[allow(clippy::too_many_arguments)]
fn stage_out(
    dia: &Dialect,
    plan: &KernelPlan,
    c: &ChannelWork,
    lid: &str,
    num_samples: &str,
    s0: &str,
    gsize: u32,
    goff: u32,
    out: Tensor,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let wg = c.channels * c.samples_per_group;
    let items = c.samples_per_group * gsize;
    let mut s = String::new();
    let ln = |s: &mut String, ind: usize, line: &str| {
        let _ = writeln!(s, "{:ind$}{line}", "");
    };
    ln(&mut s, 8, barrier(dia));
    let (head, idx) = match dia {
        Dialect::Cuda => (
            format!("for (unsigned int e = {lid}; e < {items}u; e += {wg}u) {{"),
            format!("(unsigned long long)sq * {}u + {goff}u + r", d.dim_out),
        ),
        Dialect::Wgsl { .. } => (
            format!("for (var e = {lid}; e < {items}u; e += {wg}u) {{"),
            format!("sq * {}u + {goff}u + r", d.dim_out),
        ),
    };
    ln(&mut s, 8, &head);
    ln(&mut s, 12, &dia.let_u("q", &format!("e / {gsize}u")));
    ln(&mut s, 12, &dia.let_u("r", &format!("e - q * {gsize}u")));
    ln(&mut s, 12, &dia.let_u("sq", &format!("{s0} + q")));
    let t = out_at(dia, out, &idx)?;
    ln(
        &mut s,
        12,
        &format!("if (sq < {num_samples}) {{ {t} = ek_red[e]; }}"),
    );
    ln(&mut s, 8, "}");
    ln(&mut s, 8, barrier(dia));
    Ok(s)
}

/// The convolution backward over the sender view ([`equikern_plan::ChannelConv`]): invocation
/// `(unit, ch)` loads its sender's `x` row `ch` once, walks the unit's range in step with the
/// workgroup's other units (trip count: their longest range, read by one thread and shared,
/// so every barrier is in uniform control flow), and per position `k` (edge `e`, receiver
/// `rcv`) reads `y[e]`, `w[e]` row `ch`, `gz[rcv]` row `ch`, writes `gw[e]` row `ch` and
/// its `gy` partials; after a barrier each `(unit, j)` of the workgroup sums its edge's
/// column in ascending channel order into `gy[e, j]`. `gx` is stored once after the loop.
fn conv_backward_body(
    dia: &Dialect,
    plan: &KernelPlan,
    c: &ChannelWork,
    block: &str,
    lid: &str,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let m = c.channels;
    let spg = c.samples_per_group;
    let lane_grouped = !c.lane_groups().is_empty();
    let warp = c.warp_units();
    if warp && !matches!(dia, Dialect::Cuda) {
        return Err(EmitError::InvalidPlan {
            kernel: "channel".into(),
            why: "warp units need warp shuffles (CUDA/HIP printers only)".into(),
        });
    }
    let lanes = c.lanes();
    let wg = lanes * spg;
    let zero = dia.lit(0.0, dt);
    let bad = |why: &str| EmitError::InvalidPlan {
        kernel: "channel".into(),
        why: why.into(),
    };
    let cv = c
        .conv
        .as_ref()
        .ok_or_else(|| bad("not a convolution channel kernel"))?;
    let table = cv.table().ok_or_else(|| bad("no unit table"))?;
    let pieces = matches!(cv.units, SampleMode::Pieces { .. });
    let cuda = matches!(dia, Dialect::Cuda);
    let p = if cuda { "" } else { "P." };
    let ns = format!("{p}num_samples");
    // Element `base * len + off` of `t` (64-bit on CUDA; `len` 0: not per-row).
    let el = |t: Tensor, base: &str, len: u32, off: &str| -> Result<String, EmitError> {
        let e = match (len, cuda) {
            (0, _) => off.to_string(),
            (_, true) => format!("(unsigned long long){base} * {len}u + {off}"),
            (_, false) => format!("{base} * {len}u + {off}"),
        };
        out_at(dia, t, &e)
    };
    let tab = |i: &str| out_at(dia, table, i);
    let uvar = |name: &str, e: &str| match dia {
        Dialect::Cuda => format!("unsigned int {name} = {e};"),
        Dialect::Wgsl { .. } => format!("var {name}: u32 = {e};"),
    };
    let mut s = String::new();
    let ln = |s: &mut String, ind: usize, line: &str| {
        let _ = writeln!(s, "{:ind$}{line}", "");
    };
    // Sets `lo`, `hi` (view positions) and `node` of dispatch-local unit `u`.
    let range = |s: &mut String,
                 ind: usize,
                 u: &str,
                 lo: &str,
                 hi: &str,
                 node: Option<&str>|
     -> Result<(), EmitError> {
        let unit = format!("{p}unit_base + {u}");
        if pieces {
            let st = format!("{p}num_nodes + 1u");
            ln(
                s,
                ind,
                &format!("{lo} = {};", tab(&format!("{st} + {unit}"))?),
            );
            ln(
                s,
                ind,
                &format!("{hi} = {};", tab(&format!("{st} + {unit} + 1u"))?),
            );
            if let Some(n) = node {
                let at = format!("{st} + {p}num_pieces + 1u + {unit}");
                ln(s, ind, &format!("{n} = {};", tab(&at)?));
            }
        } else {
            ln(s, ind, &format!("{lo} = {};", tab(&unit)?));
            ln(
                s,
                ind,
                &format!("{hi} = {};", tab(&format!("{unit} + 1u"))?),
            );
            if let Some(n) = node {
                ln(s, ind, &format!("{n} = {unit};"));
            }
        }
        Ok(())
    };
    if lane_grouped {
        // Lane `l` of unit `smp`: group `grp` (the last whose first lane is ≤ l), row `r`.
        ln(&mut s, 4, &dia.let_u("smp", &format!("g / {lanes}u")));
        ln(&mut s, 4, &dia.let_u("l", &format!("g - smp * {lanes}u")));
        ln(&mut s, 4, &uvar("grp", "0u"));
        ln(&mut s, 4, &uvar("r", "l"));
        for (gi, &(first, _, _)) in c.lane_layout().0.iter().enumerate().skip(1) {
            ln(
                &mut s,
                4,
                &format!("if (l >= {first}u) {{ grp = {gi}u; r = l - {first}u; }}"),
            );
        }
    } else if warp {
        // Unit `smp` is warp `g / 32`; lane `l` does channels `l + 32·k`.
        ln(&mut s, 4, &dia.let_u("smp", &format!("g / {LANE_CHUNK}u")));
        ln(
            &mut s,
            4,
            &dia.let_u("l", &format!("g - smp * {LANE_CHUNK}u")),
        );
    } else {
        ln(&mut s, 4, &dia.let_u("smp", &format!("g / {m}u")));
        ln(&mut s, 4, &dia.let_u("ch", &format!("g - smp * {m}u")));
    }
    if !warp {
        ln(&mut s, 4, &dia.let_u("s0", &format!("{block} * {spg}u")));
    }
    // Where the view's edge ids start (their other ends follow, num_edges later).
    let ids = if pieces {
        format!("{p}num_nodes + 1u + 2u * {p}num_pieces + 1u")
    } else {
        format!("{p}num_nodes + 1u")
    };
    ln(&mut s, 4, &dia.let_u("ids", &ids));
    ln(&mut s, 4, &dia.let_u("oth", &format!("ids + {p}num_edges")));
    ln(&mut s, 4, &uvar("lo", "0u"));
    ln(&mut s, 4, &uvar("hi", "0u"));
    ln(&mut s, 4, &uvar("node", "0u"));
    ln(&mut s, 4, &format!("if (smp < {ns}) {{"));
    range(&mut s, 8, "smp", "lo", "hi", Some("node"))?;
    ln(&mut s, 4, "}");
    if !warp {
        // The trip count: the longest range among the workgroup's units.
        ln(&mut s, 4, &format!("if ({lid} == 0u) {{"));
        ln(&mut s, 8, &uvar("tm", "0u"));
        ln(&mut s, 8, &uvar("l2", "0u"));
        ln(&mut s, 8, &uvar("h2", "0u"));
        let qloop = match dia {
            Dialect::Cuda => format!("for (unsigned int qq = 0u; qq < {spg}u; ++qq) {{"),
            Dialect::Wgsl { .. } => format!("for (var qq = 0u; qq < {spg}u; qq++) {{"),
        };
        ln(&mut s, 8, &qloop);
        ln(&mut s, 12, &format!("if (s0 + qq < {ns}) {{"));
        range(&mut s, 16, "s0 + qq", "l2", "h2", None)?;
        ln(&mut s, 16, "tm = max(tm, h2 - l2);");
        ln(&mut s, 12, "}");
        ln(&mut s, 8, "}");
        ln(&mut s, 8, "ek_trip = tm;");
        ln(&mut s, 4, "}");
        match dia {
            Dialect::Cuda => {
                ln(&mut s, 4, "__syncthreads();");
                ln(&mut s, 4, "const unsigned int trips = ek_trip;");
            }
            Dialect::Wgsl { .. } => ln(&mut s, 4, "let trips = workgroupUniformLoad(&ek_trip);"),
        }
    }
    // The sender's x row `ch`, loaded once; gx accumulates over the whole range.
    if lane_grouped {
        // One row of the lane's block: `xr0..`, `gx0..` (the widest block's length).
        let width = c.x_blocks.iter().map(|b| b.row_len).max().unwrap_or(0);
        for i in 0..width {
            ln(&mut s, 4, &dia.var(dt, &format!("xr{i}"), &zero));
            ln(&mut s, 4, &dia.var(dt, &format!("gx{i}"), &zero));
        }
        ln(&mut s, 4, &format!("if (smp < {ns}) {{"));
        for (gi, g) in c.lane_groups().iter().enumerate() {
            let open = if gi == 0 { "if" } else { "} else if" };
            ln(&mut s, 8, &format!("{open} (grp == {gi}u) {{"));
            let blk = c
                .x_blocks
                .get(g.x_block as usize)
                .ok_or_else(|| bad("lane group names no x block"))?;
            for i in 0..blk.row_len {
                let off = format!("{}u + r * {}u", blk.offset + i, blk.row_len);
                let e = el(Tensor::X, "node", d.dim_in1, &off)?;
                ln(&mut s, 12, &format!("xr{i} = {e};"));
            }
        }
        ln(&mut s, 8, "}");
        ln(&mut s, 4, "}");
    } else {
        // Warp units: per block and chunk `k` with rows there (`xr{b}_{k}_{i}`); else per
        // block (`xr{b}_{i}`).
        let rows = x_rows(c);
        for r in &rows {
            for i in 0..r.block.row_len {
                ln(&mut s, 4, &dia.var(dt, &format!("xr{}_{i}", r.regs), &zero));
                ln(&mut s, 4, &dia.var(dt, &format!("gx{}_{i}", r.regs), &zero));
            }
        }
        print_x_rows(&mut s, &rows, &ns, &|off, reg| {
            Ok(format!(
                "xr{reg} = {};",
                el(Tensor::X, "node", d.dim_in1, off)?
            ))
        })?;
    }
    let wlen = if d.shared_weights { 0 } else { d.weight_numel };
    // Path `pth`'s per-edge code for row `row` (receiver `rcv`, edge `e`): `xr(i)` names
    // the `x` row's components, `gx(i)` its `gx` accumulators.
    let path_code = |s: &mut String,
                     ind: usize,
                     pth: &ChannelPath,
                     row: &str,
                     xr: &dyn Fn(u32) -> String,
                     gx: &dyn Fn(u32) -> String|
     -> Result<(), EmitError> {
        let mut ks: Vec<u32> = pth.terms.iter().map(|t| t.k).collect();
        ks.sort_unstable();
        ks.dedup();
        for k in &ks {
            let off = format!("{}u + {row} * {}u", pth.z_offset + k, pth.z_len);
            let e = el(Tensor::GZ, "rcv", d.dim_out, &off)?;
            ln(s, ind, &dia.let_(dt, &format!("gp{k}"), &e));
        }
        let mut js: Vec<u32> = pth.terms.iter().map(|t| t.j).collect();
        js.sort_unstable();
        js.dedup();
        for v in 0..pth.y_mul {
            ln(s, ind, "{");
            let yb = pth.y_offset + v * pth.y_len;
            for j in &js {
                let e = el(Tensor::Y, "e", d.dim_in2, &format!("{}u", yb + j))?;
                ln(s, ind + 4, &dia.let_(dt, &format!("yv{j}"), &e));
            }
            let widx = pth
                .w_offset
                .map(|o| format!("{}u + {row} * {}u", o + v, pth.y_mul));
            if let Some(wi) = &widx {
                let e = el(Tensor::W, "we", wlen, wi)?;
                ln(s, ind + 4, &dia.let_(dt, "wv", &e));
            }
            ln(s, ind + 4, &dia.var(dt, "a", &zero));
            for i in 0..pth.x_len {
                ln(s, ind + 4, &dia.var(dt, &format!("gxv{i}"), &zero));
            }
            for j in 0..pth.y_len {
                ln(s, ind + 4, &dia.var(dt, &format!("gyv{j}"), &zero));
            }
            for (n, t) in pth.terms.iter().enumerate() {
                let tn = format!("t{n}");
                let e = format!("{} * gp{}", dia.lit(t.coeff, dt), t.k);
                ln(s, ind + 4, &dia.let_(dt, &tn, &e));
                ln(s, ind + 4, &format!("a += {tn} * {} * yv{};", xr(t.i), t.j));
                ln(s, ind + 4, &format!("gxv{} += {tn} * yv{};", t.i, t.j));
                ln(s, ind + 4, &format!("gyv{} += {tn} * {};", t.j, xr(t.i)));
            }
            let scale = |v: &str| {
                if widx.is_some() {
                    format!("wv * {v}")
                } else {
                    v.to_string()
                }
            };
            for i in 0..pth.x_len {
                let line = format!("{} += {};", gx(i), scale(&format!("gxv{i}")));
                ln(s, ind + 4, &line);
            }
            for j in 0..pth.y_len {
                let line = format!("gy{} += {};", yb + j, scale(&format!("gyv{j}")));
                ln(s, ind + 4, &line);
            }
            match (c.write_gw, &widx) {
                (true, Some(wi)) => {
                    let at = el(Tensor::GW, "e", d.weight_numel, wi)?;
                    ln(s, ind + 4, &format!("{at} = a;"));
                }
                _ => ln(s, ind + 4, if cuda { "(void)a;" } else { "_ = a;" }),
            }
            ln(s, ind, "}");
        }
        Ok(())
    };
    // After the range: the unit's gx rows into its node's (CSR) or piece's (pieces) row.
    let gx_row = if pieces {
        format!("({p}unit_base + smp)")
    } else {
        "node".to_string()
    };
    let store_gx = |s: &mut String| -> Result<(), EmitError> {
        print_x_rows(s, &x_rows(c), &ns, &|off, reg| {
            Ok(format!(
                "{} = gx{reg};",
                el(cv.node_out, &gx_row, d.dim_in1, off)?
            ))
        })
    };
    if warp {
        // The unit's own range (the warp's lanes agree on it, so the shuffles are
        // uniform); per edge the chunks in order, then the lanes' gy partials by an xor
        // butterfly (lane 0 holds the pairwise tree), stored by lane 0.
        ln(&mut s, 4, "for (unsigned int t = 0u; lo + t < hi; ++t) {");
        ln(&mut s, 8, &dia.let_u("e", &tab("ids + lo + t")?));
        ln(&mut s, 8, &weight_row(dia));
        ln(&mut s, 8, &dia.let_u("rcv", &tab("oth + lo + t")?));
        for j in 0..c.y_len {
            ln(&mut s, 8, &dia.var(dt, &format!("gy{j}"), &zero));
        }
        for k in 0..c.channel_chunks() {
            let row = format!("ch{k}");
            ln(
                &mut s,
                8,
                &dia.let_u(&row, &format!("{}u + l", k * LANE_CHUNK)),
            );
            for pth in c.paths.iter().filter(|p| c.path_mul(p) > k * LANE_CHUNK) {
                let (open, _) = chunk_guard(c.path_mul(pth), k);
                let open = open.unwrap_or_else(|| "{".into());
                ln(&mut s, 8, &format!("{open} // path {}", pth.path));
                let xb = pth.x_block;
                path_code(
                    &mut s,
                    12,
                    pth,
                    &row,
                    &|i| format!("xr{xb}_{k}_{i}"),
                    &|i| format!("gx{xb}_{k}_{i}"),
                )?;
                ln(&mut s, 8, "}");
            }
        }
        for j in 0..c.y_len {
            for o in [16u32, 8, 4, 2, 1] {
                ln(&mut s, 8, &format!("gy{j} += ek_xor32(gy{j}, {o});"));
            }
        }
        ln(&mut s, 8, "if (l == 0u) {");
        for j in 0..c.y_len {
            let at = el(Tensor::GY, "e", d.dim_in2, &format!("{j}u"))?;
            ln(&mut s, 12, &format!("{at} = gy{j};"));
        }
        ln(&mut s, 8, "}");
        ln(&mut s, 4, "}");
        store_gx(&mut s)?;
        return Ok(s);
    }
    let tloop = match dia {
        Dialect::Cuda => "for (unsigned int t = 0u; t < trips; ++t) {",
        Dialect::Wgsl { .. } => "for (var t = 0u; t < trips; t++) {",
    };
    ln(&mut s, 4, tloop);
    for j in 0..c.y_len {
        ln(&mut s, 8, &dia.var(dt, &format!("gy{j}"), &zero));
    }
    // Threads past the dispatch have lo = hi = 0.
    ln(&mut s, 8, "if (lo + t < hi) {");
    ln(&mut s, 12, &dia.let_u("e", &tab("ids + lo + t")?));
    ln(&mut s, 12, &weight_row(dia));
    ln(&mut s, 12, &dia.let_u("rcv", &tab("oth + lo + t")?));
    if lane_grouped {
        for (gi, grp) in c.lane_groups().iter().enumerate() {
            let open = if gi == 0 { "if" } else { "} else if" };
            ln(&mut s, 12, &format!("{open} (grp == {gi}u) {{"));
            for &pi in &grp.paths {
                let pth = c
                    .paths
                    .get(pi as usize)
                    .ok_or_else(|| bad("lane group names no path"))?;
                ln(&mut s, 16, &format!("{{ // path {}", pth.path));
                path_code(&mut s, 20, pth, "r", &|i| format!("xr{i}"), &|i| {
                    format!("gx{i}")
                })?;
                ln(&mut s, 16, "}");
            }
        }
        ln(&mut s, 12, "}");
    } else {
        for pth in &c.paths {
            ln(&mut s, 12, &open_path(c, pth, "ch"));
            let xb = pth.x_block;
            path_code(&mut s, 16, pth, "ch", &|i| format!("xr{xb}_{i}"), &|i| {
                format!("gx{xb}_{i}")
            })?;
            ln(&mut s, 12, "}");
        }
    }
    ln(&mut s, 8, "}");
    if lane_grouped {
        // The gy partials of position t: per unit, chunks of LANE_CHUNK lanes summed as
        // pairwise trees (one invocation per unit, component and chunk), then per unit and
        // component the chunk sums in ascending order.
        let stride = wg + 1;
        for j in 0..c.y_len {
            ln(
                &mut s,
                8,
                &format!("ek_red[{}u + {lid}] = gy{j};", j * stride),
            );
        }
        ln(&mut s, 8, barrier(dia));
        let nch = c.lane_chunks();
        let yl = c.y_len;
        let cbase = yl * stride;
        let items = spg * yl * nch;
        let loop_ = |var: &str, n: u32| match dia {
            Dialect::Cuda => {
                format!("for (unsigned int {var} = {lid}; {var} < {n}u; {var} += {wg}u) {{")
            }
            Dialect::Wgsl { .. } => {
                format!("for (var {var} = {lid}; {var} < {n}u; {var} += {wg}u) {{")
            }
        };
        ln(&mut s, 8, &loop_("it", items));
        ln(&mut s, 12, &dia.let_u("qq", &format!("it / {}u", yl * nch)));
        ln(
            &mut s,
            12,
            &dia.let_u("j", &format!("(it - qq * {}u) / {nch}u", yl * nch)),
        );
        ln(
            &mut s,
            12,
            &dia.let_u("ck", &format!("it - qq * {}u - j * {nch}u", yl * nch)),
        );
        ln(
            &mut s,
            12,
            &dia.let_u(
                "cb",
                &format!("j * {stride}u + qq * {lanes}u + ck * {LANE_CHUNK}u"),
            ),
        );
        // Lane i of the chunk; past the unit's lanes (a partial last chunk): 0.
        let full = lanes % LANE_CHUNK;
        let v = |i: u32| -> String {
            let ld = format!("ek_red[cb + {i}u]");
            if full == 0 || i < full {
                ld
            } else if cuda {
                format!("(ck < {}u ? {ld} : {zero})", nch - 1)
            } else {
                format!("select({zero}, {ld}, ck < {}u)", nch - 1)
            }
        };
        let half = LANE_CHUNK / 2;
        for i in 0..half {
            let e = format!("{} + {}", v(i), v(i + half));
            ln(&mut s, 12, &dia.var(dt, &format!("k{i}"), &e));
        }
        let mut off = half / 2;
        while off > 0 {
            for i in 0..off {
                ln(&mut s, 12, &format!("k{i} = k{i} + k{};", i + off));
            }
            off /= 2;
        }
        ln(&mut s, 12, &format!("ek_red[{cbase}u + it] = k0;"));
        ln(&mut s, 8, "}");
        ln(&mut s, 8, barrier(dia));
        ln(&mut s, 8, &loop_("it", spg * yl));
        ln(&mut s, 12, &dia.let_u("qq", &format!("it / {yl}u")));
        ln(&mut s, 12, &dia.let_u("j", &format!("it - qq * {yl}u")));
        ln(&mut s, 12, &format!("if (s0 + qq < {ns}) {{"));
        ln(&mut s, 16, &uvar("l2", "0u"));
        ln(&mut s, 16, &uvar("h2", "0u"));
        range(&mut s, 16, "s0 + qq", "l2", "h2", None)?;
        ln(&mut s, 16, "if (l2 + t < h2) {");
        ln(&mut s, 20, &dia.let_u("e2", &tab("ids + l2 + t")?));
        ln(&mut s, 20, &dia.var(dt, "acc", &zero));
        let cloop = match dia {
            Dialect::Cuda => format!(
                "for (unsigned int u = 0u; u < {nch}u; ++u) acc += ek_red[{cbase}u + it * {nch}u + u];"
            ),
            Dialect::Wgsl { .. } => format!(
                "for (var u = 0u; u < {nch}u; u++) {{ acc += ek_red[{cbase}u + it * {nch}u + u]; }}"
            ),
        };
        ln(&mut s, 20, &cloop);
        let at = el(Tensor::GY, "e2", d.dim_in2, "j")?;
        ln(&mut s, 20, &format!("{at} = acc;"));
        ln(&mut s, 16, "}");
        ln(&mut s, 12, "}");
        ln(&mut s, 8, "}");
        ln(&mut s, 8, barrier(dia));
        ln(&mut s, 4, "}");
        // gx: slices past 0 stage their partial rows (after the loop's last barrier the
        // memory is free); after a barrier slice 0 adds them in slice order and stores the
        // row of the unit's node (CSR) or piece (pieces).
        let (layout, stage) = c.lane_layout();
        let groups = c.lane_groups();
        let at_stage = |st: u32, len: u32, i: u32| {
            format!("ek_red[(smp - s0) * {stage}u + {st}u + r * {len}u + {i}u]")
        };
        let row_len = |g: &LaneGroup| c.x_blocks.get(g.x_block as usize).map_or(0, |b| b.row_len);
        if stage > 0 {
            ln(&mut s, 4, &format!("if (smp < {ns}) {{"));
            let mut first = true;
            for (gi, (g, &(_, _, st))) in groups.iter().zip(&layout).enumerate() {
                let Some(st) = st else { continue };
                let open = if first { "if" } else { "} else if" };
                first = false;
                ln(&mut s, 8, &format!("{open} (grp == {gi}u) {{"));
                for i in 0..row_len(g) {
                    ln(
                        &mut s,
                        12,
                        &format!("{} = gx{i};", at_stage(st, row_len(g), i)),
                    );
                }
            }
            ln(&mut s, 8, "}");
            ln(&mut s, 4, "}");
            ln(&mut s, 4, barrier(dia));
        }
        let row = if pieces {
            format!("({p}unit_base + smp)")
        } else {
            "node".to_string()
        };
        ln(&mut s, 4, &format!("if (smp < {ns}) {{"));
        let mut first = true;
        for (gi, (g, &(_, slice, _))) in groups.iter().zip(&layout).enumerate() {
            if slice != 0 {
                continue;
            }
            let open = if first { "if" } else { "} else if" };
            first = false;
            ln(&mut s, 8, &format!("{open} (grp == {gi}u) {{"));
            let blk = c
                .x_blocks
                .get(g.x_block as usize)
                .ok_or_else(|| bad("lane group names no x block"))?;
            for (g2, &(_, _, st)) in groups.iter().zip(&layout) {
                let Some(st) = st.filter(|_| g2.x_block == g.x_block) else {
                    continue;
                };
                for i in 0..blk.row_len {
                    let e = at_stage(st, blk.row_len, i);
                    ln(&mut s, 12, &format!("gx{i} = gx{i} + {e};"));
                }
            }
            for i in 0..blk.row_len {
                let off = format!("{}u + r * {}u", blk.offset + i, blk.row_len);
                let at = el(cv.node_out, &row, d.dim_in1, &off)?;
                ln(&mut s, 12, &format!("{at} = gx{i};"));
            }
        }
        ln(&mut s, 8, "}");
        ln(&mut s, 4, "}");
        return Ok(s);
    }
    // The workgroup's gy partials of position t, summed per unit in ascending channel order.
    let stride = wg + 1;
    for j in 0..c.y_len {
        ln(
            &mut s,
            8,
            &format!("ek_red[{}u + {lid}] = gy{j};", j * stride),
        );
    }
    ln(&mut s, 8, barrier(dia));
    let items = spg * c.y_len;
    let iloop = match dia {
        Dialect::Cuda => format!("for (unsigned int it = {lid}; it < {items}u; it += {wg}u) {{"),
        Dialect::Wgsl { .. } => format!("for (var it = {lid}; it < {items}u; it += {wg}u) {{"),
    };
    ln(&mut s, 8, &iloop);
    ln(&mut s, 12, &dia.let_u("qq", &format!("it / {}u", c.y_len)));
    ln(
        &mut s,
        12,
        &dia.let_u("j", &format!("it - qq * {}u", c.y_len)),
    );
    ln(&mut s, 12, &format!("if (s0 + qq < {ns}) {{"));
    ln(&mut s, 16, &uvar("l2", "0u"));
    ln(&mut s, 16, &uvar("h2", "0u"));
    range(&mut s, 16, "s0 + qq", "l2", "h2", None)?;
    ln(&mut s, 16, "if (l2 + t < h2) {");
    ln(&mut s, 20, &dia.let_u("e2", &tab("ids + l2 + t")?));
    ln(&mut s, 20, &dia.var(dt, "acc", &zero));
    let uloop = match dia {
        Dialect::Cuda => format!(
            "for (unsigned int u = 0u; u < {m}u; ++u) acc += ek_red[j * {stride}u + qq * {m}u + u];"
        ),
        Dialect::Wgsl { .. } => format!(
            "for (var u = 0u; u < {m}u; u++) {{ acc += ek_red[j * {stride}u + qq * {m}u + u]; }}"
        ),
    };
    ln(&mut s, 20, &uloop);
    let at = el(Tensor::GY, "e2", d.dim_in2, "j")?;
    ln(&mut s, 20, &format!("{at} = acc;"));
    ln(&mut s, 16, "}");
    ln(&mut s, 12, "}");
    ln(&mut s, 8, "}");
    ln(&mut s, 8, barrier(dia));
    ln(&mut s, 4, "}");
    store_gx(&mut s)?;
    Ok(s)
}

/// The convolution forward over the receiver view ([`equikern_plan::ChannelConv`]): lane
/// `(group, q, ch)` of the workgroup runs unit `block · spg + q`, channel `ch` of its group
/// of output blocks. It walks the unit's range on its own (no barriers, no workgroup
/// memory): per position (edge `e`, sender `snd`) it loads the `x[snd]` row `ch` components
/// and the `y[e]` components its group's paths use, then per block, path and `v` the weight
/// `w[e, ·, ch·y_mul + v]` and adds `w·Σ coeff·x·y` into the block's accumulators. The rows
/// are stored once after the loop into row `unit` of `z` (CSR) or of `RecvPartial` (pieces).
fn conv_forward_body(
    dia: &Dialect,
    plan: &KernelPlan,
    c: &ChannelWork,
    block: &str,
    lid: &str,
) -> Result<String, EmitError> {
    let d = &plan.dims;
    let dt = plan.dtype;
    let m = c.channels;
    let spg = c.samples_per_group;
    let bad = |why: &str| EmitError::InvalidPlan {
        kernel: "channel".into(),
        why: why.into(),
    };
    let cv = c
        .conv
        .as_ref()
        .ok_or_else(|| bad("not a convolution channel kernel"))?;
    let table = cv.table().ok_or_else(|| bad("no unit table"))?;
    let pieces = matches!(cv.units, SampleMode::Pieces { .. });
    let cuda = matches!(dia, Dialect::Cuda);
    let p = if cuda { "" } else { "P." };
    let ns = format!("{p}num_samples");
    let zero = dia.lit(0.0, dt);
    // Element `base * len + off` of `t` (64-bit on CUDA; `len` 0: not per-row).
    let el = |t: Tensor, base: &str, len: u32, off: &str| -> Result<String, EmitError> {
        let e = match (len, cuda) {
            (0, _) => off.to_string(),
            (_, true) => format!("(unsigned long long){base} * {len}u + {off}"),
            (_, false) => format!("{base} * {len}u + {off}"),
        };
        out_at(dia, t, &e)
    };
    let tab = |i: &str| out_at(dia, table, i);
    let mut s = String::new();
    let ln = |s: &mut String, ind: usize, line: &str| {
        let _ = writeln!(s, "{:ind$}{line}", "");
    };
    let per_group = spg * m;
    if cuda {
        ln(&mut s, 4, "(void)g;");
    }
    let groups = c.conv_groups();
    let lanes: Vec<u32> = groups.iter().map(|g| c.group_lanes(g)).collect();
    if lanes.iter().all(|&l| l == m) {
        ln(
            &mut s,
            4,
            &dia.let_u("grp", &format!("{lid} / {per_group}u")),
        );
        ln(
            &mut s,
            4,
            &dia.let_u("q", &format!("({lid} - grp * {per_group}u) / {m}u")),
        );
        ln(
            &mut s,
            4,
            &dia.let_u("ch", &format!("{lid} - grp * {per_group}u - q * {m}u")),
        );
    } else {
        // Groups of different widths `L_g` (mixed multiplicities): group `g` holds lanes
        // `[O_g·spg, (O_g + L_g)·spg)`, unit `q` of it lanes `q·L_g + u` past the start.
        for v in ["grp", "q", "ch"] {
            ln(
                &mut s,
                4,
                &if cuda {
                    format!("unsigned int {v} = 0u;")
                } else {
                    format!("var {v} = 0u;")
                },
            );
        }
        let mut start = 0u32;
        for (gi, &l) in lanes.iter().enumerate() {
            let end = start + l * spg;
            let head = match (gi, gi + 1 == lanes.len()) {
                (0, true) => "{".to_string(),
                (0, false) => format!("if ({lid} < {end}u) {{"),
                (_, true) => "} else {".to_string(),
                (_, false) => format!("}} else if ({lid} < {end}u) {{"),
            };
            ln(
                &mut s,
                4,
                &format!("{head} // group {gi}: {l} lanes per unit"),
            );
            ln(&mut s, 8, &format!("grp = {gi}u;"));
            ln(&mut s, 8, &format!("q = ({lid} - {start}u) / {l}u;"));
            ln(&mut s, 8, &format!("ch = {lid} - {start}u - q * {l}u;"));
            start = end;
        }
        ln(&mut s, 4, "}");
    }
    ln(
        &mut s,
        4,
        &dia.let_u("smp", &format!("{block} * {spg}u + q")),
    );
    ln(&mut s, 4, &format!("if (smp < {ns}) {{"));
    // The unit (a node, or a piece of the receiver view): its range and output row.
    ln(
        &mut s,
        8,
        &dia.let_u("unit", &format!("{p}unit_base + smp")),
    );
    let (lo, hi, ids) = if pieces {
        let st = format!("{p}num_nodes + 1u");
        (
            tab(&format!("{st} + unit"))?,
            tab(&format!("{st} + unit + 1u"))?,
            format!("{p}num_nodes + 1u + 2u * {p}num_pieces + 1u"),
        )
    } else {
        (
            tab("unit")?,
            tab("unit + 1u")?,
            format!("{p}num_nodes + 1u"),
        )
    };
    ln(&mut s, 8, &dia.let_u("lo", &lo));
    ln(&mut s, 8, &dia.let_u("hi", &hi));
    // Edge ids in view order, then the other ends (senders), num_edges later.
    ln(&mut s, 8, &dia.let_u("ids", &ids));
    ln(&mut s, 8, &dia.let_u("oth", &format!("ids + {p}num_edges")));
    ln(
        &mut s,
        8,
        if cuda {
            "(void)lo; (void)hi; (void)oth;"
        } else {
            "_ = lo; _ = hi; _ = oth;"
        },
    );
    let wlen = if d.shared_weights { 0 } else { d.weight_numel };
    for (gi, blocks) in groups.iter().enumerate() {
        let head = if gi == 0 { "if" } else { "} else if" };
        let gl = lanes[gi];
        ln(
            &mut s,
            8,
            &format!("{head} (grp == {gi}u) {{ // output blocks {blocks:?}"),
        );
        let paths: Vec<_> = c
            .paths
            .iter()
            .filter(|pth| blocks.contains(&(pth.z_block as usize)))
            .collect();
        for &b in blocks {
            for k in 0..c.z_blocks[b].row_len {
                ln(&mut s, 12, &dia.var(dt, &format!("za{b}_{k}"), &zero));
            }
        }
        if !paths.is_empty() {
            let kloop = match dia {
                Dialect::Cuda => "for (unsigned int k = lo; k < hi; ++k) {",
                Dialect::Wgsl { .. } => "for (var k = lo; k < hi; k++) {",
            };
            if cv.edge_unroll > 1 && matches!(dia, Dialect::Cuda) {
                ln(&mut s, 12, &format!("#pragma unroll {}", cv.edge_unroll));
            }
            ln(&mut s, 12, kloop);
            ln(&mut s, 16, &dia.let_u("e", &tab("ids + k")?));
            ln(&mut s, 16, &weight_row(dia));
            ln(&mut s, 16, &dia.let_u("snd", &tab("oth + k")?));
            // The y components the group's terms read, once.
            let mut ys: Vec<u32> = paths
                .iter()
                .flat_map(|pth| {
                    (0..pth.y_mul).flat_map(move |v| {
                        pth.terms
                            .iter()
                            .map(move |t| pth.y_offset + v * pth.y_len + t.j)
                    })
                })
                .collect();
            ys.sort_unstable();
            ys.dedup();
            for j in ys {
                let e = el(Tensor::Y, "e", d.dim_in2, &format!("{j}u"))?;
                ln(&mut s, 16, &dia.let_(dt, &format!("y{j}"), &e));
            }
            // By multiplicity, descending: the channels with a row in blocks of `mul` rows
            // (guarded where fewer than the group's lanes) load those blocks' x components
            // and add their paths (blocks in order, each block's paths in order: the same
            // per-block order as one pass over the group's blocks).
            let mut muls: Vec<u32> = paths.iter().map(|pth| c.path_mul(pth)).collect();
            muls.sort_unstable_by(|a, b| b.cmp(a));
            muls.dedup();
            for mul in muls {
                let guarded = mul < gl;
                let ind = if guarded { 20 } else { 16 };
                if guarded {
                    ln(
                        &mut s,
                        16,
                        &format!("if (ch < {mul}u) {{ // blocks of {mul} rows"),
                    );
                }
                let class: Vec<_> = paths.iter().filter(|pth| c.path_mul(pth) == mul).collect();
                let mut xs: Vec<(u32, u32)> = class
                    .iter()
                    .flat_map(|pth| pth.terms.iter().map(|t| (pth.x_block, t.i)))
                    .collect();
                xs.sort_unstable();
                xs.dedup();
                for (xb, i) in xs {
                    let blk = &c.x_blocks[xb as usize];
                    let off = format!("{}u + ch * {}u", blk.offset + i, blk.row_len);
                    let e = el(Tensor::X, "snd", d.dim_in1, &off)?;
                    ln(&mut s, ind, &dia.let_(dt, &format!("xr{xb}_{i}"), &e));
                }
                for &b in blocks {
                    let l = c.z_blocks[b].row_len;
                    for pth in class.iter().filter(|pth| pth.z_block as usize == b) {
                        for v in 0..pth.y_mul {
                            ln(&mut s, ind, &format!("{{ // path {}, v = {v}", pth.path));
                            let yb = pth.y_offset + v * pth.y_len;
                            for k in 0..l {
                                ln(&mut s, ind + 4, &dia.var(dt, &format!("zv{k}"), &zero));
                            }
                            for t in &pth.terms {
                                let line = format!(
                                    "zv{} += {} * xr{}_{} * y{};",
                                    t.k,
                                    dia.lit(t.coeff, dt),
                                    pth.x_block,
                                    t.i,
                                    yb + t.j
                                );
                                ln(&mut s, ind + 4, &line);
                            }
                            match pth.w_offset {
                                Some(o) => {
                                    let wi = format!("{}u + ch * {}u", o + v, pth.y_mul);
                                    let e = el(Tensor::W, "we", wlen, &wi)?;
                                    ln(&mut s, ind + 4, &dia.let_(dt, "wv", &e));
                                    for k in 0..l {
                                        ln(&mut s, ind + 4, &format!("za{b}_{k} += wv * zv{k};"));
                                    }
                                }
                                None => {
                                    for k in 0..l {
                                        ln(&mut s, ind + 4, &format!("za{b}_{k} += zv{k};"));
                                    }
                                }
                            }
                            ln(&mut s, ind, "}");
                        }
                    }
                }
                if guarded {
                    ln(&mut s, 16, "}");
                }
            }
            ln(&mut s, 12, "}");
        }
        // Row `ch` of each block: 2l+1 consecutive elements (a warp's rows are contiguous).
        // (Only the rows a block has: `ch < mul` where it has fewer than the group's lanes.)
        for &b in blocks {
            let blk = &c.z_blocks[b];
            let mul = c.block_mul(blk);
            let guarded = mul < gl;
            if guarded {
                ln(&mut s, 12, &format!("if (ch < {mul}u) {{"));
            }
            let ind = if guarded { 16 } else { 12 };
            for k in 0..blk.row_len {
                let off = format!("{}u + ch * {}u", blk.offset + k, blk.row_len);
                let at = el(cv.node_out, "unit", d.dim_out, &off)?;
                ln(&mut s, ind, &format!("{at} = za{}_{k};", b));
            }
            if guarded {
                ln(&mut s, 12, "}");
            }
        }
    }
    ln(&mut s, 8, "}");
    ln(&mut s, 4, "}");
    Ok(s)
}
