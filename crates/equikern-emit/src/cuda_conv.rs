//! CUDA/HIP for convolution plans: the TP's row bodies inside unit loops (node over a CSR
//! range, piece, edge, chunk of edges), gathers through `u32` index buffers, float atomic adds
//! for `Scatter` kernels, and the ordered piece reduction. Every index is global: pointers are
//! never rebased, `unit_base` gives the launch's first unit (see [`crate::cuda::Param::Conv`]).

use std::fmt::Write as _;

use equikern_plan::{Kernel, KernelPlan, SampleMode, Segment, Tensor, Work};

use crate::cuda::{
    literal, print_contribution, print_table, real_type, tensor_name, CudaKernel, EmittedCuda,
    Param, Target, EMITTER_VERSION,
};
use crate::EmitError;

pub(crate) fn emit_conv(plan: &KernelPlan, target: Target) -> Result<EmittedCuda, EmitError> {
    let mut src = String::new();
    let _ = writeln!(
        src,
        "// equikern convolution kernels (emitter v{EMITTER_VERSION}): {:?}, {}, {} kernel(s).\n\
         // Generated from a kernel plan; do not edit.\n",
        plan.direction,
        real_type(plan.dtype),
        plan.kernels.len()
    );
    for (id, table) in plan.tables.iter().enumerate() {
        print_table(&mut src, id, table);
    }
    if plan
        .kernels
        .iter()
        .any(|k| matches!(&k.work, Work::Channels(c) if c.warp_units()))
    {
        // The xor butterfly within 32 lanes (a CUDA warp; half a 64-lane HIP wavefront).
        let call = match target {
            Target::Cuda => "__shfl_xor_sync(0xffffffffu, v, o)",
            Target::Hip => "__shfl_xor(v, o, 32)",
        };
        let _ = writeln!(
            src,
            "template <class T> __device__ __forceinline__ T ek_xor32(T v, int o) {{ return {call}; }}\n"
        );
    }
    let mut kernels = vec![];
    for k in &plan.kernels {
        kernels.push(print_kernel(&mut src, plan, k)?);
    }
    Ok(EmittedCuda {
        target,
        source: src,
        kernels,
    })
}

fn bad(k: &Kernel, why: &str) -> EmitError {
    EmitError::InvalidPlan {
        kernel: k.name.clone(),
        why: why.into(),
    }
}

fn signature(src: &mut String, plan: &KernelPlan, k: &Kernel) -> Vec<Param> {
    let real = real_type(plan.dtype);
    let mut params = vec![];
    let _ = writeln!(
        src,
        "extern \"C\" __global__ void __launch_bounds__({}) {}(",
        k.workgroup_size, k.name
    );
    for t in &k.inputs {
        let ty = if t.is_index() { "unsigned int" } else { real };
        let _ = writeln!(src, "    const {ty}* __restrict__ {},", tensor_name(*t));
        params.push(Param::Input(*t));
    }
    for t in &k.outputs {
        let _ = writeln!(src, "    {real}* __restrict__ {},", tensor_name(*t));
        params.push(Param::Output(*t));
    }
    src.push_str(
        "    const unsigned int num_samples, const unsigned int num_chunks,\n    \
         const unsigned int unit_base, const unsigned int num_nodes,\n    \
         const unsigned int num_edges, const unsigned int num_pieces,\n    \
         const unsigned int weight_fold)\n{\n",
    );
    params.push(Param::Conv);
    let _ = writeln!(
        src,
        "    (void)num_chunks; (void)num_nodes; (void)num_edges; (void)num_pieces; (void)unit_base;\n    \
         (void)weight_fold;\n    \
         const unsigned int g = (blockIdx.y * gridDim.x + blockIdx.x) * {}u + threadIdx.x;",
        k.workgroup_size
    );
    params
}

fn print_kernel(src: &mut String, plan: &KernelPlan, k: &Kernel) -> Result<CudaKernel, EmitError> {
    let real = real_type(plan.dtype);
    let zero = literal(0.0, plan.dtype);
    if matches!(k.work, Work::Staged(_)) {
        return Err(bad(k, "a staged kernel in a convolution plan"));
    }
    if let Work::Channels(c) = &k.work {
        crate::channel::check(plan, k, c).map_err(|why| bad(k, &why))?;
    }
    let params = signature(src, plan, k);
    match &k.work {
        Work::Staged(_) => {}
        Work::Channels(c) => {
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
        }
        Work::ReduceChunks { input, output, len } => {
            let (i, o) = (tensor_name(*input), tensor_name(*output));
            let _ = writeln!(
                src,
                "    if (g >= {len}u) return;\n    {real} acc = {zero};\n    \
                 for (unsigned int c = 0u; c < num_chunks; ++c) acc += {i}[(unsigned long long)c * {len}u + g];\n    \
                 {o}[g] = acc;\n}}\n"
            );
        }
        Work::ReducePieces {
            input,
            output,
            pieces,
            len,
        } => {
            let (i, o, p) = (
                tensor_name(*input),
                tensor_name(*output),
                tensor_name(*pieces),
            );
            let _ = writeln!(
                src,
                "    const unsigned int nl = g / {len}u;\n    if (nl >= num_samples) return;\n    \
                 const unsigned int c = g - nl * {len}u;\n    const unsigned int node = unit_base + nl;\n    \
                 {real} acc = {zero};\n    // Pieces of the node in ascending order: deterministic.\n    \
                 for (unsigned int q = {p}[node]; q < {p}[node + 1u]; ++q) acc += {i}[(unsigned long long)q * {len}u + c];\n    \
                 {o}[(unsigned long long)node * {len}u + c] = acc;\n}}\n"
            );
        }
        Work::Rows {
            sample_mode,
            rows_per_sample,
            segments,
        } => {
            let rps = *rows_per_sample;
            if rps == 0 {
                src.push_str("    (void)g; (void)num_samples;\n}\n\n");
            } else {
                rows(src, plan, k, *sample_mode, rps, segments)?;
            }
        }
    }
    Ok(CudaKernel {
        name: k.name.clone(),
        block_dim: k.workgroup_size,
        params,
    })
}

fn rows(
    src: &mut String,
    plan: &KernelPlan,
    k: &Kernel,
    mode: SampleMode,
    rps: u32,
    segments: &[Segment],
) -> Result<(), EmitError> {
    let _ = writeln!(
        src,
        "    const unsigned int unit = g / {rps}u;\n    const unsigned int row = g - unit * {rps}u;"
    );
    // Unit prologue; `(loop head, indentation)` of the per-edge loop inside each segment.
    let has = |t: Tensor| k.inputs.contains(&t);
    let edge_ends = |src: &mut String, ind: &str| {
        for t in [Tensor::Sender, Tensor::Receiver] {
            if has(t) {
                let n = tensor_name(t);
                let _ = writeln!(src, "{ind}const unsigned int n_{n} = {n}[sample];");
            }
        }
    };
    let table_loop = |table: Tensor| -> String {
        let tn = tensor_name(table);
        let (own, other) = match table {
            Tensor::RecvCsr | Tensor::RecvPieces => ("receiver", "sender"),
            _ => ("sender", "receiver"),
        };
        format!(
            "        for (unsigned int k = lo; k < hi; ++k) {{\n            \
             const unsigned int sample = {tn}[ids + k];\n            \
             const unsigned int n_{other} = {tn}[ids + num_edges + k];\n            \
             const unsigned int n_{own} = node;\n            (void)n_{own}; (void)n_{other};\n"
        )
    };
    let (head, ind): (String, &str) = match mode {
        SampleMode::Segments { csr } => {
            let t = tensor_name(csr);
            let _ = writeln!(
                src,
                "    if (unit >= num_samples) return;\n    const unsigned int node = unit_base + unit;\n    \
                 const unsigned int lo = {t}[node], hi = {t}[node + 1u];\n    \
                 const unsigned int ids = num_nodes + 1u;"
            );
            (table_loop(csr), "            ")
        }
        SampleMode::Pieces { pieces } => {
            let t = tensor_name(pieces);
            let _ = writeln!(
                src,
                "    if (unit >= num_samples) return;\n    const unsigned int piece = unit_base + unit;\n    \
                 const unsigned int starts = num_nodes + 1u;\n    \
                 const unsigned int nodes_at = starts + num_pieces + 1u;\n    \
                 const unsigned int node = {t}[nodes_at + piece];\n    \
                 const unsigned int lo = {t}[starts + piece], hi = {t}[starts + piece + 1u];\n    \
                 const unsigned int ids = nodes_at + num_pieces;"
            );
            (table_loop(pieces), "            ")
        }
        SampleMode::PerSample | SampleMode::Scatter { .. } => {
            let _ = writeln!(
                src,
                "    if (unit >= num_samples) return;\n    const unsigned int sample = unit_base + unit;"
            );
            edge_ends(src, "    ");
            (String::new(), "        ")
        }
        SampleMode::Chunk {
            samples_per_chunk: spc,
        } => {
            let _ = writeln!(
                src,
                "    if (unit >= (num_samples + {}u) / {spc}u) return;\n    \
                 const unsigned int e0 = unit_base + unit * {spc}u;\n    \
                 const unsigned int e1 = min(e0 + {spc}u, unit_base + num_samples);",
                spc - 1
            );
            let mut h =
                String::from("        for (unsigned int sample = e0; sample < e1; ++sample) {\n");
            edge_ends(&mut h, "            ");
            (h, "            ")
        }
    };
    let real = real_type(plan.dtype);
    let zero = literal(0.0, plan.dtype);
    for s in segments.iter().filter(|s| s.rows > 0) {
        let end = s.first_row + s.rows;
        let _ = writeln!(
            src,
            "    if (row < {end}u) {{\n        const unsigned int r = row - {}u;",
            s.first_row
        );
        for j in 0..s.row_len {
            let _ = writeln!(src, "        {real} acc{j} = {zero};");
        }
        src.push_str(&head);
        for c in &s.contributions {
            print_contribution(src, plan, c, ind);
        }
        if !head.is_empty() {
            src.push_str("        }\n");
        }
        let out = tensor_name(s.out);
        let len = plan.dims.per_sample_len(s.out);
        let unit_ix = match mode {
            SampleMode::Segments { .. } => "node".to_string(),
            SampleMode::Pieces { .. } => "piece".to_string(),
            SampleMode::PerSample => "sample".to_string(),
            SampleMode::Scatter { index } => format!("n_{}", tensor_name(index)),
            SampleMode::Chunk { samples_per_chunk } => {
                if s.out != Tensor::WPartial {
                    return Err(bad(k, "chunk kernel writes a row tensor"));
                }
                format!("(unit_base / {samples_per_chunk}u + unit)")
            }
        };
        let row_len = match mode {
            SampleMode::Chunk { .. } => plan.dims.weight_numel,
            _ => len,
        };
        if row_len == 0 {
            return Err(bad(k, "output is not a row tensor"));
        }
        let _ = writeln!(
            src,
            "        {real}* __restrict__ o = {out} + ((unsigned long long){unit_ix} * {row_len}u + {}u + r * {}u);",
            s.out_offset, s.row_len
        );
        for j in 0..s.row_len {
            if let SampleMode::Scatter { .. } = mode {
                // Float atomics (atomicAdd(double*) needs sm_60+).
                let _ = writeln!(src, "        atomicAdd(o + {j}, acc{j});");
            } else {
                let _ = writeln!(src, "        o[{j}] = acc{j};");
            }
        }
        src.push_str("        return;\n    }\n");
    }
    src.push_str("}\n\n");
    Ok(())
}
