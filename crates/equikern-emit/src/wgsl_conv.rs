//! WGSL for convolution plans: the unit loops (node over a CSR range, piece, edge, chunk of
//! edges), gathers through index buffers, and the ordered piece reduction. The row bodies
//! are the tensor product's; every index is global (bindings are whole, `P.unit_base` gives
//! the dispatch's first unit).

use std::fmt::Write as _;

use equikern_plan::{SampleMode, Segment, Tensor};

use crate::wgsl::{konst, main_prologue, scaled, sum, tensor_ident, Ctx};
use crate::EmitError;

/// Opens the unit's edge loop (binding `s` to the edge) and records the gather expressions;
/// returns the body's indentation.
pub(crate) fn unit_prologue(
    cx: &mut Ctx,
    f: &mut String,
    mode: SampleMode,
) -> Result<&'static str, EmitError> {
    // Tables: [.. | edge ids (E) | other ends (E)] after a head of `head` words.
    fn view(table: Tensor, head: &str, f: &mut String) -> Vec<(Tensor, String)> {
        let t = tensor_ident(table);
        let _ = writeln!(
            f,
            "    let ids = {head};\n    let oth = ids + P.num_edges;\n    for (var k = lo; k < hi; k++) {{\n        let s = {t}[ids + k];\n        let nb = {t}[oth + k];"
        );
        let (own, other) = ends(table);
        vec![(own, "node".into()), (other, "nb".into())]
    }
    match mode {
        SampleMode::Segments { csr } => {
            let t = tensor_ident(csr);
            cx.binding_of(csr, false)?;
            let _ = writeln!(
                f,
                "    let node = P.unit_base + s_in;\n    let lo = {t}[node];\n    let hi = {t}[node + 1u];"
            );
            cx.gather = view(csr, "P.num_nodes + 1u", f);
        }
        SampleMode::Pieces { pieces } => {
            let t = tensor_ident(pieces);
            cx.binding_of(pieces, false)?;
            // [piece_offsets (N+1) | piece_start (NP+1) | piece_node (NP) | ids | others]
            let _ = writeln!(
                f,
                "    let piece = P.unit_base + s_in;\n    let starts = P.num_nodes + 1u;\n    let nodes_at = starts + P.num_pieces + 1u;\n    let node = {t}[nodes_at + piece];\n    let lo = {t}[starts + piece];\n    let hi = {t}[starts + piece + 1u];"
            );
            cx.gather = view(pieces, "nodes_at + P.num_pieces", f);
        }
        SampleMode::PerSample => {
            f.push_str("    let s = P.unit_base + s_in;\n");
            edge_gathers(cx);
            return Ok("    ");
        }
        SampleMode::Chunk { samples_per_chunk } => {
            let _ = writeln!(
                f,
                "    // Edges of chunk s_in, ascending.\n    let e_begin = P.unit_base + s_in * {samples_per_chunk}u;\n    let e_end = min(e_begin + {samples_per_chunk}u, P.unit_base + P.num_samples);\n    for (var s = e_begin; s < e_end; s++) {{"
            );
            edge_gathers(cx);
        }
        SampleMode::Scatter { .. } => {
            return Err(cx.err("float atomics are not available in WGSL"));
        }
    }
    Ok("        ")
}

/// (the unit's own end, the stored other end) of a CSR view or piece table.
fn ends(table: Tensor) -> (Tensor, Tensor) {
    match table {
        Tensor::RecvCsr | Tensor::RecvPieces => (Tensor::Receiver, Tensor::Sender),
        _ => (Tensor::Sender, Tensor::Receiver),
    }
}

/// Per-edge kernels read both ends from the raw index buffers (when bound).
fn edge_gathers(cx: &mut Ctx) {
    cx.gather = [Tensor::Sender, Tensor::Receiver]
        .into_iter()
        .map(|t| (t, format!("{}[s]", tensor_ident(t))))
        .collect();
}

/// Element index of the output row.
pub(crate) fn out_index(
    cx: &Ctx,
    mode: SampleMode,
    seg: &Segment,
    bo: u32,
) -> Result<String, EmitError> {
    let dims = cx.plan.dims;
    let rl = seg.row_len;
    let unit = match mode {
        SampleMode::Segments { .. } => "node",
        SampleMode::Pieces { .. } => "piece",
        SampleMode::PerSample => "s",
        SampleMode::Chunk { .. } => {
            return Ok(sum(&[
                format!("P.base{bo}"),
                scaled("(P.chunk_base + s_in)", dims.weight_numel),
                konst(seg.out_offset),
                scaled("r", rl),
            ]))
        }
        SampleMode::Scatter { .. } => return Err(cx.err("float atomics are not available in WGSL")),
    };
    let len = dims.per_sample_len(seg.out);
    if len == 0 {
        return Err(cx.err(format!("{:?} is not a row tensor", seg.out)));
    }
    Ok(sum(&[
        format!("P.base{bo}"),
        scaled(unit, len),
        konst(seg.out_offset),
        scaled("r", rl),
    ]))
}

/// `output[n, i] = Σ_{p in n's pieces} input[p, i]`, pieces ascending.
pub(crate) fn reduce_pieces_body(
    cx: &Ctx,
    input: Tensor,
    output: Tensor,
    pieces: Tensor,
    len: u32,
) -> Result<String, EmitError> {
    let (bi, bo, bp) = (
        cx.binding_of(input, false)?,
        cx.binding_of(output, true)?,
        cx.binding_of(pieces, false)?,
    );
    if len == 0 {
        return Err(cx.err("piece reduction of length 0"));
    }
    let mut s = main_prologue(cx.kernel.workgroup_size);
    let _ = write!(
        s,
        "    let n_local = g / {len}u;\n    if (n_local >= P.num_samples) {{\n        return;\n    }}\n\
         \x20   let i = g - n_local * {len}u;\n    let node = P.unit_base + n_local;\n\
         \x20   // Fixed ascending order over the node's pieces: deterministic.\n\
         \x20   var a = 0.0f;\n\
         \x20   for (var p = {tp}[P.base{bp} + node]; p < {tp}[P.base{bp} + node + 1u]; p++) {{\n\
         \x20       a += {ti}[P.base{bi} + p * {len}u + i];\n\
         \x20   }}\n\
         \x20   {to}[P.base{bo} + node * {len}u + i] = a;\n}}\n",
        tp = tensor_ident(pieces),
        ti = tensor_ident(input),
        to = tensor_ident(output),
    );
    Ok(s)
}
