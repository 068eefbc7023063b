//! CUDA and HIP writer: prints a [`KernelPlan`] as one self-contained, include-free source
//! (NVRTC / hipRTC built-ins only) with one `extern "C" __global__` per plan kernel.
//!
//! Printing only: every decision (rows, segments, loops, terms, workgroup sizes) is in the plan.
//! Kernel parameters, in order: one pointer per input binding (`const T* __restrict__`), one per
//! output binding (`T* __restrict__`), then one `unsigned int`: `num_samples` of this dispatch
//! for row kernels, `num_chunks` for chunk reductions. Runtimes rebase a dispatch by offsetting
//! the pointers (per-sample tensors by the first sample, `WPartial` by the first chunk).
//! Layouts: per-sample tensors `[sample, per_sample_len]`; `WPartial` `[chunk, weight_numel]`
//! for row kernels and `[chunk, len]` for [`Work::ReduceChunks`].

use crate::EmitError;
use equikern_plan::{
    Addressing, Contribution, Dtype, Ix, Kernel, KernelPlan, SampleMode, Segment, Tensor, Work,
};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Bumped whenever the printed text changes for the same plan (part of the runtime cache key).
pub const EMITTER_VERSION: u32 = 1;

/// Which compiler reads the text. Only spellings differ; the plan decides everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Cuda,
    Hip,
}

/// One kernel parameter, in launch order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    Input(Tensor),
    Output(Tensor),
    /// Samples covered by this dispatch (row kernels, both sample modes).
    NumSamples,
    /// Chunks summed by a [`Work::ReduceChunks`] kernel.
    NumChunks,
    /// Convolution kernels (every kernel of a conv plan): seven `unsigned int`s
    /// `num_samples` (units of this launch), `num_chunks` (reductions), `unit_base` (global
    /// first unit), `num_nodes`, `num_edges`, `num_pieces` (of the bound piece table, else 0),
    /// `weight_fold` (edges from it on read weight row `e − weight_fold`; 0: none).
    Conv,
}

/// Launch facts of one emitted kernel (the runtime needs nothing else from the writer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaKernel {
    /// Symbol name (`extern "C"`, so unmangled); equals the plan kernel's name.
    pub name: String,
    pub block_dim: u32,
    pub params: Vec<Param>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmittedCuda {
    pub target: Target,
    pub source: String,
    pub kernels: Vec<CudaKernel>,
}

/// How stores are printed (the plan's results are identical either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CudaOptions {
    /// Where a per-sample row kernel's rows tile its single output in order, a block's
    /// results form one contiguous range: stage them in shared memory and store them
    /// coalesced (rows are 1..2l+1 elements wide, so direct stores are strided).
    pub staged_stores: bool,
    /// Select a row's segment by binary search (nested `if`s, log2 n compares) instead of
    /// an ascending `row < end` chain (up to n compares; backward kernels have ~100 segments).
    pub segment_tree: bool,
}

/// CUDA C++ for NVRTC (or nvcc).
pub fn emit_cuda(plan: &KernelPlan) -> Result<EmittedCuda, EmitError> {
    emit_with(plan, Target::Cuda, CudaOptions::default())
}

/// HIP C++ for hipRTC (offline clang adds `-include hip/hip_runtime.h`).
pub fn emit_hip(plan: &KernelPlan) -> Result<EmittedCuda, EmitError> {
    emit_with(plan, Target::Hip, CudaOptions::default())
}

pub fn emit(plan: &KernelPlan, target: Target) -> Result<EmittedCuda, EmitError> {
    emit_with(plan, target, CudaOptions::default())
}

pub fn emit_with(
    plan: &KernelPlan,
    target: Target,
    opts: CudaOptions,
) -> Result<EmittedCuda, EmitError> {
    if plan.conv.is_some() {
        return crate::cuda_conv::emit_conv(plan, target);
    }
    let mut src = String::new();
    let real = real_type(plan.dtype);
    let _ = writeln!(
        src,
        "// equikern {} kernels (emitter v{EMITTER_VERSION}): {:?}, {real}, warp {}, {} kernel(s).",
        match target {
            Target::Cuda => "CUDA",
            Target::Hip => "HIP",
        },
        plan.direction,
        plan.caps.subgroup_size,
        plan.kernels.len()
    );
    let _ = writeln!(src, "// Generated from a kernel plan; do not edit.\n");
    for (id, table) in plan.tables.iter().enumerate() {
        print_table(&mut src, id, table);
    }
    let mut kernels = Vec::with_capacity(plan.kernels.len());
    for k in &plan.kernels {
        check_kernel(plan, k)?;
        let staged = if opts.staged_stores {
            staged_width(plan, k)
        } else {
            None
        };
        kernels.push(print_kernel(&mut src, plan, k, staged, opts.segment_tree)?);
    }
    Ok(EmittedCuda {
        target,
        source: src,
        kernels,
    })
}

pub(crate) fn real_type(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "float",
        Dtype::F64 => "double",
    }
}

/// Exact literal: the coefficient rounded once to the kernel's type, printed so it round-trips.
pub(crate) fn literal(c: f64, d: Dtype) -> String {
    match d {
        Dtype::F32 => format!("{:e}f", c as f32),
        Dtype::F64 => format!("{c:e}"),
    }
}

pub(crate) fn tensor_name(t: Tensor) -> &'static str {
    use Tensor::*;
    match t {
        X => "x",
        Y => "y",
        W => "w",
        Z => "z",
        GZ => "gz",
        GX => "gx",
        GY => "gy",
        GW => "gw",
        HX => "hx",
        HY => "hy",
        HW => "hw",
        DX => "dx",
        DY => "dy",
        DW => "dw",
        DGZ => "dgz",
        WPartial => "wpartial",
        Scratch => "scratch",
        RecvCsr => "recv_csr",
        SendCsr => "send_csr",
        Receiver => "receiver",
        Sender => "sender",
        RecvPieces => "recv_pieces",
        SendPieces => "send_pieces",
        RecvPartial => "recv_partial",
        SendPartial => "send_partial",
    }
}

pub(crate) fn print_table(src: &mut String, id: usize, table: &[u32]) {
    // A zero-length array is not C++; an unused 1-element table is harmless.
    let n = table.len().max(1);
    let _ = write!(src, "__device__ const unsigned int ek_tab{id}[{n}] = {{");
    if table.is_empty() {
        src.push_str("0u");
    }
    for (i, v) in table.iter().enumerate() {
        if i > 0 {
            src.push_str(if i % 16 == 0 { ",\n    " } else { ", " });
        }
        let _ = write!(src, "{v}u");
    }
    src.push_str("};\n\n");
}

fn ix(e: &Ix) -> String {
    match e {
        Ix::R => "r".into(),
        Ix::T => "t".into(),
        Ix::C(c) => format!("{c}u"),
        Ix::Add(a, b) => format!("({} + {})", ix(a), ix(b)),
        Ix::Sub(a, b) => format!("({} - {})", ix(a), ix(b)),
        Ix::Mul(a, b) => format!("({} * {})", ix(a), ix(b)),
        Ix::Div(a, b) => format!("({} / {})", ix(a), ix(b)),
        Ix::Mod(a, b) => format!("({} % {})", ix(a), ix(b)),
        Ix::Table(id, i) => format!("ek_tab{id}[{}]", ix(i)),
    }
}

fn ix_uses_t(e: &Ix) -> bool {
    match e {
        Ix::T => true,
        Ix::R | Ix::C(_) => false,
        Ix::Add(a, b) | Ix::Sub(a, b) | Ix::Mul(a, b) | Ix::Div(a, b) | Ix::Mod(a, b) => {
            ix_uses_t(a) || ix_uses_t(b)
        }
        Ix::Table(_, i) => ix_uses_t(i),
    }
}

fn ix_check(e: &Ix, tables: usize) -> Result<(), String> {
    match e {
        Ix::R | Ix::T | Ix::C(_) => Ok(()),
        Ix::Add(a, b) | Ix::Sub(a, b) | Ix::Mul(a, b) | Ix::Div(a, b) | Ix::Mod(a, b) => {
            ix_check(a, tables)?;
            ix_check(b, tables)
        }
        Ix::Table(id, i) if (*id as usize) < tables => ix_check(i, tables),
        Ix::Table(id, _) => Err(format!("index expression names table {id} of {tables}")),
    }
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Structural checks so printing cannot produce out-of-range code from a malformed plan.
fn check_kernel(plan: &KernelPlan, k: &Kernel) -> Result<(), EmitError> {
    let bad = |why: String| EmitError::InvalidPlan {
        kernel: k.name.clone(),
        why,
    };
    if !is_ident(&k.name) {
        return Err(bad("name is not a C identifier".into()));
    }
    if k.workgroup_size == 0 || k.workgroup_size > plan.caps.max_invocations_per_workgroup.max(1) {
        return Err(bad(format!("workgroup size {}", k.workgroup_size)));
    }
    let all: BTreeSet<Tensor> = k.inputs.iter().chain(&k.outputs).copied().collect();
    if all.len() != k.inputs.len() + k.outputs.len() {
        return Err(bad("a tensor is bound twice".into()));
    }
    match &k.work {
        Work::Channels(c) => crate::channel::check(plan, k, c).map_err(bad)?,
        Work::Staged(w) => crate::staged::check(plan, k, w).map_err(bad)?,
        Work::ReducePieces { .. } => return Err(bad("convolution kernel".into())),
        Work::ReduceChunks { input, output, .. } => {
            if !k.inputs.contains(input) || !k.outputs.contains(output) {
                return Err(bad("reduction tensors are not bound".into()));
            }
        }
        Work::Rows {
            sample_mode,
            rows_per_sample,
            segments,
        } => {
            if let SampleMode::Chunk { samples_per_chunk } = sample_mode {
                if *samples_per_chunk == 0 {
                    return Err(bad("zero samples per chunk".into()));
                }
            }
            let mut next_row = 0u32;
            for s in segments {
                // Printed as an ascending `row < end` chain.
                if s.first_row < next_row {
                    return Err(bad("segments overlap or are out of order".into()));
                }
                next_row = s.first_row.saturating_add(s.rows);
                if !k.outputs.contains(&s.out) {
                    return Err(bad(format!("segment output {:?} is not bound", s.out)));
                }
                if s.first_row
                    .checked_add(s.rows)
                    .is_none_or(|e| e > *rows_per_sample)
                {
                    return Err(bad("segment rows exceed rows_per_sample".into()));
                }
                for c in &s.contributions {
                    ix_check(&c.count, plan.tables.len()).map_err(&bad)?;
                    if let Some(f) = c.scalar_factor {
                        match c.operands.get(f as usize) {
                            Some(o) if o.row_len == 1 => {}
                            _ => return Err(bad("scalar factor is not a 1-wide operand".into())),
                        }
                    }
                    for o in &c.operands {
                        if !k.inputs.contains(&o.tensor) {
                            return Err(bad(format!("operand {:?} is not bound", o.tensor)));
                        }
                        ix_check(&o.row, plan.tables.len()).map_err(&bad)?;
                    }
                    for t in &c.terms {
                        if t.out >= s.row_len
                            || t.comps.len() != c.operands.len()
                            || t.comps
                                .iter()
                                .zip(&c.operands)
                                .any(|(&i, o)| i >= o.row_len)
                        {
                            return Err(bad(format!("path {}: term out of range", c.path)));
                        }
                        if !t.coeff.is_finite() {
                            return Err(bad(format!("path {}: coefficient not finite", c.path)));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_signature(src: &mut String, plan: &KernelPlan, k: &Kernel, last: &str) -> Vec<Param> {
    let real = real_type(plan.dtype);
    let mut params = Vec::new();
    let _ = writeln!(
        src,
        "extern \"C\" __global__ void __launch_bounds__({}) {}(",
        k.workgroup_size, k.name
    );
    for t in &k.inputs {
        let _ = writeln!(src, "    const {real}* __restrict__ {},", tensor_name(*t));
        params.push(Param::Input(*t));
    }
    for t in &k.outputs {
        let _ = writeln!(src, "    {real}* __restrict__ {},", tensor_name(*t));
        params.push(Param::Output(*t));
    }
    let _ = writeln!(src, "    const unsigned int {last})\n{{");
    params.push(if last == "num_chunks" {
        Param::NumChunks
    } else {
        Param::NumSamples
    });
    // 2-D grid numbering (plan docs): no grid dimension exceeds the device limit.
    let _ = writeln!(
        src,
        "    const unsigned int g = (blockIdx.y * gridDim.x + blockIdx.x) * {}u + threadIdx.x;",
        k.workgroup_size
    );
    params
}

/// Widest row if `k` qualifies for staged stores: per-sample rows that tile its one output in
/// order, with the staging buffer within the target's shared memory (and 48 KiB static).
fn staged_width(plan: &KernelPlan, k: &Kernel) -> Option<u32> {
    let Work::Rows {
        sample_mode: SampleMode::PerSample,
        rows_per_sample,
        segments,
    } = &k.work
    else {
        return None;
    };
    let [out] = k.outputs[..] else { return None };
    let len = plan.dims.per_sample_len(out);
    let (mut off, mut row, mut width) = (0u64, 0u32, 0u32);
    for s in segments.iter().filter(|s| s.rows > 0) {
        if s.out != out || s.out_offset as u64 != off || s.first_row != row {
            return None;
        }
        off += s.rows as u64 * s.row_len as u64;
        row = row.checked_add(s.rows)?;
        width = width.max(s.row_len);
    }
    let es = match plan.dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    let bytes = k.workgroup_size as u64 * width as u64 * es + 16;
    let fits = bytes <= (plan.caps.workgroup_memory_bytes as u64).min(48 << 10);
    (len > 0 && off == len as u64 && row == *rows_per_sample && width > 0 && fits).then_some(width)
}

fn print_kernel(
    src: &mut String,
    plan: &KernelPlan,
    k: &Kernel,
    staged: Option<u32>,
    tree: bool,
) -> Result<CudaKernel, EmitError> {
    let real = real_type(plan.dtype);
    let params = match &k.work {
        Work::Channels(c) => {
            let p = print_signature(src, plan, k, "num_samples");
            let dia = crate::channel::Dialect::Cuda;
            src.push_str(&crate::channel::shared_decl(&dia, plan, c));
            src.push_str(&crate::channel::body(
                &dia,
                plan,
                c,
                "(blockIdx.y * gridDim.x + blockIdx.x)",
                "threadIdx.x",
                "num_samples",
            )?);
            src.push_str("}\n\n");
            p
        }
        Work::Staged(w) => {
            let p = print_signature(src, plan, k, "num_samples");
            let dia = crate::channel::Dialect::Cuda;
            src.push_str(&crate::staged::shared_decl(&dia, plan, w));
            src.push_str(&crate::staged::body(
                &dia,
                plan,
                k,
                w,
                None,
                "threadIdx.x",
                "num_samples",
            )?);
            src.push_str("}\n\n");
            p
        }
        Work::ReducePieces { .. } => {
            return Err(EmitError::InvalidPlan {
                kernel: k.name.clone(),
                why: "convolution kernel".into(),
            })
        }
        Work::ReduceChunks { input, output, len } => {
            let p = print_signature(src, plan, k, "num_chunks");
            let (i, o) = (tensor_name(*input), tensor_name(*output));
            let _ = writeln!(src, "    if (g >= {len}u) return;");
            let _ = writeln!(src, "    {real} acc = {};", literal(0.0, plan.dtype));
            // Ascending chunk order: the deterministic second level of the reduction.
            let _ = writeln!(
                src,
                "    for (unsigned int c = 0u; c < num_chunks; ++c) acc += __ldg({i} + (unsigned long long)c * {len}u + g);"
            );
            let _ = writeln!(src, "    {o}[g] = acc;\n}}\n");
            p
        }
        Work::Rows {
            sample_mode,
            rows_per_sample,
            segments,
        } => {
            let p = print_signature(src, plan, k, "num_samples");
            let rps = *rows_per_sample;
            if rps == 0 {
                // Nothing to compute (no rows); keep the symbol so launch tables stay uniform.
                src.push_str("    (void)g;\n    (void)num_samples;\n}\n\n");
                return Ok(CudaKernel {
                    name: k.name.clone(),
                    block_dim: k.workgroup_size,
                    params: p,
                });
            }
            if let Some(width) = staged {
                print_staged_rows(src, plan, k, segments, rps, width);
                return Ok(CudaKernel {
                    name: k.name.clone(),
                    block_dim: k.workgroup_size,
                    params: p,
                });
            }
            let item = match sample_mode {
                SampleMode::Chunk { .. } => "chunk",
                _ => "sample",
            };
            let _ = writeln!(src, "    const unsigned int {item} = g / {rps}u;");
            let _ = writeln!(src, "    const unsigned int row = g - {item} * {rps}u;");
            match sample_mode {
                SampleMode::PerSample
                | SampleMode::Segments { .. }
                | SampleMode::Pieces { .. }
                | SampleMode::Scatter { .. } => {
                    let _ = writeln!(src, "    if (sample >= num_samples) return;");
                }
                SampleMode::Chunk { samples_per_chunk } => {
                    let spc = samples_per_chunk;
                    let _ = writeln!(
                        src,
                        "    if (chunk >= (num_samples + {}u) / {spc}u) return;",
                        spc - 1
                    );
                    let _ = writeln!(src, "    const unsigned int s0 = chunk * {spc}u;");
                    let _ = writeln!(
                        src,
                        "    const unsigned int s1 = min(s0 + {spc}u, num_samples);"
                    );
                }
            }
            let live: Vec<&Segment> = segments.iter().filter(|s| s.rows > 0).collect();
            if tree {
                print_tree(src, plan, &live, sample_mode);
            } else {
                for s in live {
                    print_segment(src, plan, s, sample_mode, None);
                }
            }
            src.push_str("}\n\n");
            p
        }
    };
    Ok(CudaKernel {
        name: k.name.clone(),
        block_dim: k.workgroup_size,
        params,
    })
}

/// Base pointer of `t` for the current sample (per-sample layout) or the whole tensor (shared).
fn base_expr(plan: &KernelPlan, t: Tensor, addressing: Addressing) -> String {
    let len = plan.dims.per_sample_len(t);
    match addressing {
        Addressing::Shared => tensor_name(t).to_string(),
        // Convolution: the row of node `n_sender` / `n_receiver` (set by the unit loop).
        Addressing::Gather { index } => format!(
            "({} + (unsigned long long)n_{} * {len}u)",
            tensor_name(t),
            format!("{index:?}").to_lowercase()
        ),
        Addressing::PerSample if len == 0 => tensor_name(t).to_string(),
        Addressing::PerSample => {
            format!("({} + (unsigned long long)sample * {len}u)", tensor_name(t))
        }
    }
}

/// Binary search over ascending segments; each leaf keeps its `row < end` guard (and returns).
fn print_tree(src: &mut String, plan: &KernelPlan, segs: &[&Segment], mode: &SampleMode) {
    match segs {
        [] => {}
        [s] => print_segment(src, plan, s, mode, None),
        _ => {
            let (lo, hi) = segs.split_at(segs.len() / 2);
            let _ = writeln!(src, "    if (row < {}u) {{", hi[0].first_row);
            print_tree(src, plan, lo, mode);
            src.push_str("    } else {\n");
            print_tree(src, plan, hi, mode);
            src.push_str("    }\n");
        }
    }
}

/// A per-sample row kernel whose block results are one contiguous range of its output:
/// compute into registers, stage in shared memory, store coalesced.
fn print_staged_rows(
    src: &mut String,
    plan: &KernelPlan,
    k: &Kernel,
    segments: &[Segment],
    rps: u32,
    width: u32,
) {
    let real = real_type(plan.dtype);
    let zero = literal(0.0, plan.dtype);
    let wg = k.workgroup_size;
    let out = tensor_name(k.outputs[0]);
    let _ = writeln!(src, "    __shared__ {real} ek_stage[{}];", wg * width);
    src.push_str("    __shared__ unsigned long long ek_lo, ek_hi;\n");
    // A block past the end (2-D grid padding) is dead as a whole: leave before any barrier.
    let _ = writeln!(
        src,
        "    if ((g - threadIdx.x) / {rps}u >= num_samples) return;"
    );
    let _ = writeln!(src, "    const unsigned int sample = g / {rps}u;");
    let _ = writeln!(src, "    const unsigned int row = g - sample * {rps}u;");
    src.push_str("    const bool live = sample < num_samples;\n");
    src.push_str("    unsigned long long e = 0ull;\n    unsigned int n_out = 0u;\n");
    for j in 0..width {
        let _ = writeln!(src, "    {real} out{j} = {zero};");
    }
    src.push_str("    if (live) {\n");
    let mut first = true;
    for s in segments.iter().filter(|s| s.rows > 0) {
        print_segment(src, plan, s, &SampleMode::PerSample, Some(first));
        first = false;
    }
    src.push_str("    }\n");
    src.push_str("    if (threadIdx.x == 0u) ek_lo = e;\n");
    let _ = writeln!(
        src,
        "    if (live && (threadIdx.x == {}u || (sample + 1u == num_samples && row == {}u))) ek_hi = e + n_out;",
        wg - 1,
        rps - 1
    );
    src.push_str("    __syncthreads();\n    const unsigned long long lo = ek_lo;\n");
    src.push_str("    if (live) {\n        const unsigned int b = (unsigned int)(e - lo);\n");
    for j in 0..width {
        let _ = writeln!(
            src,
            "        if ({j}u < n_out) ek_stage[b + {j}u] = out{j};"
        );
    }
    src.push_str("    }\n    __syncthreads();\n");
    src.push_str("    const unsigned int total = (unsigned int)(ek_hi - lo);\n");
    let _ = writeln!(
        src,
        "    for (unsigned int i = threadIdx.x; i < total; i += {wg}u) {out}[lo + i] = ek_stage[i];\n}}\n"
    );
}

/// `staged`: `None` prints a store-and-return tail; `Some(first)` prints an `if`/`else if`
/// arm that leaves the row in `out*`, `e` and `n_out` for [`print_staged_rows`].
fn print_segment(
    src: &mut String,
    plan: &KernelPlan,
    s: &Segment,
    mode: &SampleMode,
    staged: Option<bool>,
) {
    if s.rows == 0 {
        return;
    }
    let real = real_type(plan.dtype);
    let zero = literal(0.0, plan.dtype);
    let end = s.first_row + s.rows;
    let kw = if staged == Some(false) {
        "else if"
    } else {
        "if"
    };
    let _ = writeln!(src, "    {kw} (row < {end}u) {{");
    let _ = writeln!(
        src,
        "        // {:?}[{}..] rows {}..{end}",
        s.out, s.out_offset, s.first_row
    );
    if s.first_row == 0 {
        let _ = writeln!(src, "        const unsigned int r = row;");
    } else {
        let _ = writeln!(
            src,
            "        const unsigned int r = row - {}u;",
            s.first_row
        );
    }
    for j in 0..s.row_len {
        let _ = writeln!(src, "        {real} acc{j} = {zero};");
    }
    let ind = match mode {
        SampleMode::PerSample
        | SampleMode::Segments { .. }
        | SampleMode::Pieces { .. }
        | SampleMode::Scatter { .. } => "        ",
        SampleMode::Chunk { .. } => {
            // Ascending sample order within the chunk: deterministic first level.
            let _ = writeln!(
                src,
                "        for (unsigned int sample = s0; sample < s1; ++sample) {{"
            );
            "            "
        }
    };
    for c in &s.contributions {
        print_contribution(src, plan, c, ind);
    }
    if let SampleMode::Chunk { .. } = mode {
        let _ = writeln!(src, "        }}");
    }
    if staged.is_some() {
        let len = plan.dims.per_sample_len(s.out);
        let _ = writeln!(
            src,
            "        e = (unsigned long long)sample * {len}u + ({}u + r * {}u);",
            s.out_offset, s.row_len
        );
        let _ = writeln!(src, "        n_out = {}u;", s.row_len);
        for j in 0..s.row_len {
            let _ = writeln!(src, "        out{j} = acc{j};");
        }
        let _ = writeln!(src, "    }}");
        return;
    }
    let out = tensor_name(s.out);
    let dst = match (mode, s.out) {
        (SampleMode::Chunk { .. }, Tensor::WPartial) => format!(
            "{out} + (unsigned long long)chunk * {}u",
            plan.dims.weight_numel
        ),
        (SampleMode::Chunk { .. }, _) => out.to_string(),
        (_, t) => base_expr(plan, t, Addressing::PerSample),
    };
    let _ = writeln!(
        src,
        "        {real}* __restrict__ o = {dst} + ({}u + r * {}u);",
        s.out_offset, s.row_len
    );
    for j in 0..s.row_len {
        let _ = writeln!(src, "        o[{j}] = acc{j};");
    }
    let _ = writeln!(src, "        return;\n    }}");
}

pub(crate) fn print_contribution(src: &mut String, plan: &KernelPlan, c: &Contribution, ind: &str) {
    if matches!(c.count, Ix::C(0)) || c.terms.is_empty() {
        return;
    }
    let real = real_type(plan.dtype);
    let uses_t = c.operands.iter().any(|o| ix_uses_t(&o.row));
    let _ = writeln!(src, "{ind}{{ // path {}", c.path);
    let inner = format!("{ind}    ");
    let body_ind = match (&c.count, uses_t) {
        (Ix::C(1), false) => inner.clone(),
        (Ix::C(1), true) => {
            let _ = writeln!(src, "{inner}const unsigned int t = 0u;");
            inner.clone()
        }
        (n, _) => {
            let _ = writeln!(src, "{inner}const unsigned int n = {};", ix(n));
            let _ = writeln!(src, "{inner}for (unsigned int t = 0u; t < n; ++t) {{");
            format!("{inner}    ")
        }
    };
    // Load only the components some term reads.
    for (k, o) in c.operands.iter().enumerate() {
        let used: BTreeSet<u32> = c.terms.iter().map(|t| t.comps[k]).collect();
        let _ = writeln!(
            src,
            "{body_ind}const {real}* p{k} = {} + ({}u + {} * {}u);",
            base_expr(plan, o.tensor, o.addressing),
            o.offset,
            ix(&o.row),
            o.row_len
        );
        for i in used {
            let _ = writeln!(src, "{body_ind}const {real} v{k}_{i} = __ldg(p{k} + {i});");
        }
    }
    let product = |t: &equikern_plan::Term, skip: Option<u32>| {
        let mut e = literal(t.coeff, plan.dtype);
        if t.coeff < 0.0 {
            e = format!("({e})");
        }
        for (k, i) in t.comps.iter().enumerate() {
            if Some(k as u32) != skip {
                let _ = write!(e, " * v{k}_{i}");
            }
        }
        e
    };
    match c.scalar_factor {
        Some(f) => {
            // Factor the weight out of each output component's term sum.
            let outs: BTreeSet<u32> = c.terms.iter().map(|t| t.out).collect();
            for j in outs {
                let sum: Vec<String> = c
                    .terms
                    .iter()
                    .filter(|t| t.out == j)
                    .map(|t| product(t, Some(f)))
                    .collect();
                let _ = writeln!(src, "{body_ind}acc{j} += v{f}_0 * ({});", sum.join(" + "));
            }
        }
        None => {
            for t in &c.terms {
                let _ = writeln!(src, "{body_ind}acc{} += {};", t.out, product(t, None));
            }
        }
    }
    if body_ind.len() > inner.len() {
        let _ = writeln!(src, "{inner}}}");
    }
    let _ = writeln!(src, "{ind}}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use equikern_plan::{Capabilities, Dims, Direction, Operand, Term};

    /// `z[0] = w * Σ_i c x[i] y[i]` (1x1o ⊗ 1x1o → 1x0e), and a shared-weight gradient kernel
    /// pair (Chunk + ReduceChunks) — hand-made, independent of the lowering.
    fn tiny_plan(dtype: Dtype) -> KernelPlan {
        let c = 1.0 / 3f64.sqrt();
        let op = |tensor, addressing, row_len| Operand {
            tensor,
            addressing,
            offset: 0,
            row_len,
            row: Ix::R,
        };
        let fwd = Kernel {
            name: "ek_fwd".into(),
            inputs: vec![Tensor::X, Tensor::Y, Tensor::W],
            outputs: vec![Tensor::Z],
            workgroup_size: 128,
            work: Work::Rows {
                sample_mode: SampleMode::PerSample,
                rows_per_sample: 1,
                segments: vec![Segment {
                    out: Tensor::Z,
                    out_offset: 0,
                    first_row: 0,
                    rows: 1,
                    row_len: 1,
                    contributions: vec![Contribution {
                        path: 0,
                        count: Ix::C(1),
                        operands: vec![
                            op(Tensor::X, Addressing::PerSample, 3),
                            op(Tensor::Y, Addressing::PerSample, 3),
                            op(Tensor::W, Addressing::Shared, 1),
                        ],
                        scalar_factor: Some(2),
                        terms: (0..3)
                            .map(|i| Term {
                                out: 0,
                                comps: vec![i, i, 0],
                                coeff: if i == 1 { -c } else { c },
                            })
                            .collect(),
                    }],
                }],
            },
        };
        let gw = Kernel {
            name: "ek_gw_chunks".into(),
            inputs: vec![Tensor::X, Tensor::Y, Tensor::GZ],
            outputs: vec![Tensor::WPartial],
            workgroup_size: 64,
            work: Work::Rows {
                sample_mode: SampleMode::Chunk {
                    samples_per_chunk: 256,
                },
                rows_per_sample: 1,
                segments: vec![Segment {
                    out: Tensor::WPartial,
                    out_offset: 0,
                    first_row: 0,
                    rows: 1,
                    row_len: 1,
                    contributions: vec![Contribution {
                        path: 0,
                        count: Ix::Table(0, Box::new(Ix::R)),
                        operands: vec![
                            op(Tensor::X, Addressing::PerSample, 3),
                            op(Tensor::Y, Addressing::PerSample, 3),
                            op(Tensor::GZ, Addressing::PerSample, 1),
                        ],
                        scalar_factor: None,
                        terms: vec![Term {
                            out: 0,
                            comps: vec![0, 0, 0],
                            coeff: c,
                        }],
                    }],
                }],
            },
        };
        let red = Kernel {
            name: "ek_gw_reduce".into(),
            inputs: vec![Tensor::WPartial],
            outputs: vec![Tensor::GW],
            workgroup_size: 64,
            work: Work::ReduceChunks {
                input: Tensor::WPartial,
                output: Tensor::GW,
                len: 1,
            },
        };
        KernelPlan {
            conv: None,
            direction: Direction::Forward,
            dtype,
            dims: Dims {
                dim_in1: 3,
                dim_in2: 3,
                dim_out: 1,
                weight_numel: 1,
                shared_weights: true,
                scratch: 0,
            },
            caps: Capabilities::webgpu_min(),
            tables: vec![vec![1]],
            kernels: vec![fwd, gw, red],
            max_samples_per_dispatch: 1 << 20,
        }
    }

    #[test]
    fn prints_every_kernel_with_params() {
        let e = emit_cuda(&tiny_plan(Dtype::F32)).unwrap();
        assert_eq!(e.kernels.len(), 3);
        assert_eq!(
            e.kernels[0].params,
            vec![
                Param::Input(Tensor::X),
                Param::Input(Tensor::Y),
                Param::Input(Tensor::W),
                Param::Output(Tensor::Z),
                Param::NumSamples
            ]
        );
        assert_eq!(e.kernels[2].params.last(), Some(&Param::NumChunks));
        for k in ["ek_fwd", "ek_gw_chunks", "ek_gw_reduce"] {
            assert!(e.source.contains(&format!(") {k}(")), "{k}");
        }
        assert!(!e.source.contains("#include"));
        assert!(e.source.contains("__ldg("));
        assert!(e.source.contains("__restrict__"));
    }

    #[test]
    fn literals_are_exact() {
        let c = 1.0 / 3f64.sqrt();
        let f = emit_cuda(&tiny_plan(Dtype::F32)).unwrap().source;
        let lit32 = format!("{:e}f", c as f32);
        assert!(f.contains(&lit32), "{f}");
        let parsed: f32 = lit32.trim_end_matches('f').parse().unwrap();
        assert_eq!(parsed, c as f32);
        let d = emit_cuda(&tiny_plan(Dtype::F64)).unwrap().source;
        let lit64 = format!("{c:e}");
        assert!(d.contains(&lit64) && d.contains("double"));
        assert_eq!(lit64.parse::<f64>().unwrap(), c);
        assert!(d.contains(&format!("(-{c:e})")));
    }

    #[test]
    fn chunk_kernels_sum_in_order() {
        let s = emit_cuda(&tiny_plan(Dtype::F32)).unwrap().source;
        assert!(s.contains("for (unsigned int sample = s0; sample < s1; ++sample)"));
        assert!(s.contains("for (unsigned int c = 0u; c < num_chunks; ++c)"));
        assert!(s.contains("ek_tab0[r]"));
    }

    #[test]
    fn hip_text_matches_cuda_modulo_header() {
        let p = tiny_plan(Dtype::F64);
        let (c, h) = (emit_cuda(&p).unwrap(), emit_hip(&p).unwrap());
        assert_eq!(h.target, Target::Hip);
        assert_eq!(c.kernels, h.kernels);
        let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
        assert_eq!(body(&c.source), body(&h.source));
    }

    #[test]
    fn staged_stores_only_where_rows_tile_one_output() {
        let p = tiny_plan(Dtype::F32);
        let opts = CudaOptions {
            staged_stores: true,
            ..Default::default()
        };
        let e = emit_with(&p, Target::Cuda, opts).unwrap();
        // The forward kernel tiles z; the chunk kernel (Chunk mode) and reduction do not stage.
        assert_eq!(
            e.source.matches("__shared__ float ek_stage[128]").count(),
            1
        );
        assert!(e.source.contains("__syncthreads();"));
        assert_eq!(e.kernels, emit_cuda(&p).unwrap().kernels);
    }

    #[test]
    fn segment_tree_nests_ifs() {
        let mut p = tiny_plan(Dtype::F32);
        if let Work::Rows {
            segments,
            rows_per_sample,
            ..
        } = &mut p.kernels[0].work
        {
            let mut s2 = segments[0].clone();
            s2.first_row = 1;
            s2.out_offset = 1;
            segments.push(s2);
            *rows_per_sample = 2;
        }
        p.dims.dim_out = 2;
        let opts = CudaOptions {
            segment_tree: true,
            ..Default::default()
        };
        let s = emit_with(&p, Target::Cuda, opts).unwrap().source;
        assert!(
            s.contains("    if (row < 1u) {\n    if (row < 1u) {"),
            "{s}"
        );
        assert!(s.contains("    } else {\n    if (row < 2u) {"), "{s}");
    }

    #[test]
    fn empty_row_kernel_prints_no_division() {
        let mut p = tiny_plan(Dtype::F32);
        if let Work::Rows {
            segments,
            rows_per_sample,
            ..
        } = &mut p.kernels[0].work
        {
            segments.clear();
            *rows_per_sample = 0;
        }
        let s = emit_cuda(&p).unwrap().source;
        assert!(!s.contains("/ 0u"));
    }

    #[test]
    fn malformed_plans_are_errors_not_panics() {
        let mut p = tiny_plan(Dtype::F32);
        p.kernels[0].name = "bad name".into();
        assert!(emit_cuda(&p).is_err());
        let mut p = tiny_plan(Dtype::F32);
        if let Work::Rows { segments, .. } = &mut p.kernels[0].work {
            segments[0].contributions[0].terms[0].comps[0] = 7;
        }
        assert!(emit_cuda(&p).is_err());
        let mut p = tiny_plan(Dtype::F32);
        p.tables.clear();
        assert!(emit_cuda(&p).is_err());
        let mut p = tiny_plan(Dtype::F32);
        p.kernels[0].inputs.pop();
        assert!(emit_cuda(&p).is_err());
    }
}
