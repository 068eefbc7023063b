//! CPU interpreter of convolution plans, executing them as a GPU runtime does: whole bindings,
//! dispatches of at most `max_samples_per_dispatch` units with global unit ids, the 2-D grid
//! numbering, CSR loops in ascending position, atomics emulated in invocation order.
//!
//! Accumulation order per output row: edges in the unit's order, then (as for the tensor
//! product) contributions in order, `t` ascending, terms in order, `w * Σ terms` per iteration.

use crate::{Addressing, KernelPlan, PlanError, SampleMode, Tensor, Work};
use equikern_core::conv::{Csr, End};
use std::collections::BTreeMap;

fn err(kernel: &str, why: String) -> PlanError {
    PlanError::Interp {
        kernel: kernel.to_string(),
        why,
    }
}

/// The `u32` index tensors of graph `g` that convolution `plan` binds.
pub fn conv_index_tensors(plan: &KernelPlan, g: &Csr) -> BTreeMap<Tensor, Vec<u32>> {
    let bound: Vec<Tensor> = plan
        .kernels
        .iter()
        .flat_map(|k| k.inputs.iter().copied())
        .collect();
    let m = plan.conv.and_then(|c| c.max_piece_edges).unwrap_or(1);
    let mut out = BTreeMap::new();
    for t in bound {
        let v = match t {
            Tensor::RecvCsr => g.packed(End::Receiver),
            Tensor::SendCsr => g.packed(End::Sender),
            Tensor::Receiver => g.receiver.clone(),
            Tensor::Sender => g.sender.clone(),
            Tensor::RecvPieces => g.packed_pieces(End::Receiver, m),
            Tensor::SendPieces => g.packed_pieces(End::Sender, m),
            _ => continue,
        };
        out.insert(t, v);
    }
    out
}

/// One edge visited by an invocation: its id and both ends.
#[derive(Clone, Copy)]
struct Edge {
    id: u64,
    recv: u64,
    send: u64,
}

/// Run convolution `plan` on graph `g`. `inputs` holds every float tensor the plan reads and
/// no kernel writes (see [`KernelPlan::conv_buffer_len`]); index tensors come from `g`.
/// Returns every tensor the plan writes except scratch (`WPartial`, piece partials).
pub fn interpret_conv(
    plan: &KernelPlan,
    g: &Csr,
    inputs: &BTreeMap<Tensor, Vec<f64>>,
) -> Result<BTreeMap<Tensor, Vec<f64>>, PlanError> {
    let gs = plan.graph_size(g);
    let (nodes, edges) = (gs.nodes, gs.edges);
    plan.check_graph(&gs)?;
    let dims = &plan.dims;
    let idx = conv_index_tensors(plan, g);
    let mut bufs: BTreeMap<Tensor, Vec<f64>> = BTreeMap::new();
    for k in &plan.kernels {
        for &t in k.inputs.iter().filter(|t| !t.is_index()) {
            if bufs.contains_key(&t) {
                continue;
            }
            let v = inputs.get(&t).ok_or(PlanError::MissingInput(t))?;
            let expected = plan.conv_buffer_len(t, &gs) as usize;
            if v.len() != expected {
                return Err(PlanError::InputLength {
                    tensor: t,
                    expected,
                    got: v.len(),
                });
            }
            bufs.insert(t, v.clone());
        }
        for &t in &k.outputs {
            let atomic = matches!(
                k.work,
                Work::Rows {
                    sample_mode: SampleMode::Scatter { .. },
                    ..
                }
            );
            // Atomic outputs are zero-filled by the runtime; others must be written once.
            let fill = if atomic { 0.0 } else { f64::NAN };
            let len = plan.conv_buffer_len(t, &gs) as usize;
            bufs.insert(t, vec![fill; len]);
        }
    }
    let num_chunks = plan.conv_num_chunks(edges);
    for (ki, k) in plan.kernels.iter().enumerate() {
        let (sample_mode, rows, segments) = match &k.work {
            Work::ReduceChunks { input, output, len } => {
                let mut out = bufs[output].clone();
                let inp = &bufs[input];
                for r in 0..*len as u64 {
                    let mut acc = 0.0;
                    for c in 0..num_chunks {
                        acc += inp[(c * *len as u64 + r) as usize];
                    }
                    out[r as usize] = acc;
                }
                bufs.insert(*output, out);
                continue;
            }
            Work::ReducePieces {
                input,
                output,
                pieces,
                len,
            } => {
                let len = *len as u64;
                let (po, inp) = (&idx[pieces], &bufs[input]);
                let mut out = bufs[output].clone();
                for (s0, n) in plan.dispatches(nodes) {
                    let grid = k.grid(n * len, plan.caps.max_workgroups_per_dim);
                    for gid in grid_ids(grid, k.workgroup_size) {
                        let (node, i) = (s0 + gid / len.max(1), gid % len.max(1));
                        if gid >= n * len {
                            continue;
                        }
                        let mut acc = 0.0;
                        for p in po[node as usize]..po[node as usize + 1] {
                            acc += inp[(p as u64 * len + i) as usize];
                        }
                        out[(node * len + i) as usize] = acc;
                    }
                }
                bufs.insert(*output, out);
                continue;
            }
            Work::Staged(_) => {
                return Err(err(&k.name, "a staged kernel in a convolution plan".into()))
            }
            Work::Channels(c) => {
                let Some(table) = c.conv.as_ref().and_then(|cv| cv.table()) else {
                    return Err(err(&k.name, "a channel kernel without units".into()));
                };
                let tab = &idx[&table];
                let total = plan.conv_unit_count(ki, &gs);
                let pieces = matches!(table, Tensor::SendPieces | Tensor::RecvPieces);
                let np = if pieces { total } else { 0 };
                for (s0, n) in plan.dispatches(total) {
                    let grid = k.grid(n * c.lanes() as u64, plan.caps.max_workgroups_per_dim);
                    if grid[0] > plan.caps.max_workgroups_per_dim
                        || grid[1] > plan.caps.max_workgroups_per_dim
                    {
                        return Err(err(&k.name, format!("grid {grid:?} exceeds the limit")));
                    }
                    // Every unit of the dispatch is covered by the grid, exactly once.
                    let covered = grid[0] as u64 * grid[1] as u64 * k.workgroup_size as u64;
                    if covered < n * c.lanes() as u64 {
                        return Err(err(&k.name, "grid too small".into()));
                    }
                    for unit in s0..s0 + n {
                        let at = |i: u64| tab[i as usize] as u64;
                        // (node, first position, end, ids at)
                        let (node, lo, hi, ids) = if pieces {
                            let (start, pnode) = (nodes + 1, nodes + 1 + np + 1);
                            (
                                at(pnode + unit),
                                at(start + unit),
                                at(start + unit + 1),
                                pnode + np,
                            )
                        } else {
                            (unit, at(unit), at(unit + 1), nodes + 1)
                        };
                        let list: Vec<(u64, u64)> = (lo..hi)
                            .map(|p| (at(ids + p), at(ids + edges + p)))
                            .collect();
                        match c.pass {
                            crate::ChannelPass::Forward => crate::channel::interpret_conv_forward(
                                plan, c, unit, &list, &mut bufs,
                            ),
                            _ => crate::channel::interpret_conv_backward(
                                plan, c, node, unit, &list, &mut bufs,
                            ),
                        }
                        .map_err(|why| err(&k.name, why))?;
                    }
                }
                continue;
            }
            Work::Rows {
                sample_mode,
                rows_per_sample,
                segments,
            } => (sample_mode, *rows_per_sample as u64, segments),
        };
        if rows == 0 {
            continue;
        }
        let total = plan.conv_unit_count(ki, &gs);
        let spc = match sample_mode {
            SampleMode::Chunk { samples_per_chunk } => *samples_per_chunk as u64,
            _ => 1,
        };
        for (s0, n) in plan.dispatches(total) {
            if s0 % spc != 0 {
                return Err(err(
                    &k.name,
                    format!("dispatch start {s0} not chunk-aligned"),
                ));
            }
            let units = n.div_ceil(spc);
            let grid = k.grid(units * rows, plan.caps.max_workgroups_per_dim);
            if grid[0] > plan.caps.max_workgroups_per_dim
                || grid[1] > plan.caps.max_workgroups_per_dim
            {
                return Err(err(&k.name, format!("grid {grid:?} exceeds the limit")));
            }
            let mut writes: Vec<(Tensor, usize, Vec<f64>)> = vec![];
            for gid in grid_ids(grid, k.workgroup_size) {
                if gid > u32::MAX as u64 {
                    return Err(err(&k.name, format!("invocation id {gid} exceeds u32")));
                }
                let (unit, row) = (gid / rows, (gid % rows) as u32);
                if unit >= units {
                    continue;
                }
                let seg = segments
                    .iter()
                    .find(|s| row >= s.first_row && row < s.first_row + s.rows)
                    .ok_or_else(|| err(&k.name, format!("row {row} in no segment")))?;
                let r = row - seg.first_row;
                let u = s0 + unit; // global node or edge (or first edge of a chunk)
                let edge = |e: u64| Edge {
                    id: e,
                    recv: g.receiver[e as usize] as u64,
                    send: g.sender[e as usize] as u64,
                };
                // The edges this invocation sums over, in order.
                let list: Vec<Edge> = match *sample_mode {
                    SampleMode::Segments { csr } => {
                        let c = &idx[&csr];
                        let (lo, hi) = (c[u as usize] as u64, c[u as usize + 1] as u64);
                        (lo..hi)
                            .map(|p| {
                                let id = c[(nodes + 1 + p) as usize] as u64;
                                let other = c[(nodes + 1 + edges + p) as usize] as u64;
                                match csr {
                                    Tensor::RecvCsr => Edge {
                                        id,
                                        recv: u,
                                        send: other,
                                    },
                                    _ => Edge {
                                        id,
                                        recv: other,
                                        send: u,
                                    },
                                }
                            })
                            .collect()
                    }
                    SampleMode::Chunk { .. } => {
                        let first = s0 + unit * spc;
                        (first..(first + spc).min(s0 + n)).map(edge).collect()
                    }
                    SampleMode::Pieces { pieces } => {
                        let tab = &idx[&pieces];
                        let np = match pieces {
                            Tensor::RecvPieces => gs.recv_pieces,
                            _ => gs.send_pieces,
                        };
                        let (start, pnode) = (nodes + 1, nodes + 1 + np + 1);
                        let (ids, other) = (pnode + np, pnode + np + edges);
                        let at = |i: u64| tab[i as usize] as u64;
                        let node = at(pnode + u);
                        (at(start + u)..at(start + u + 1))
                            .map(|p| {
                                let (id, o) = (at(ids + p), at(other + p));
                                if pieces == Tensor::RecvPieces {
                                    Edge {
                                        id,
                                        recv: node,
                                        send: o,
                                    }
                                } else {
                                    Edge {
                                        id,
                                        recv: o,
                                        send: node,
                                    }
                                }
                            })
                            .collect()
                    }
                    SampleMode::PerSample | SampleMode::Scatter { .. } => vec![edge(u)],
                };
                let rl = seg.row_len as usize;
                let mut acc = vec![0.0; rl];
                let mut tmp = vec![0.0; rl];
                for e in &list {
                    for c in &seg.contributions {
                        let cnt = c.count.try_eval(r, 0, &plan.tables).ok_or_else(|| {
                            err(&k.name, format!("count {} fails at r={r}", c.count))
                        })?;
                        for t in 0..cnt {
                            let mut base = Vec::with_capacity(c.operands.len());
                            for o in &c.operands {
                                let orow = o.row.try_eval(r, t, &plan.tables).ok_or_else(|| {
                                    err(&k.name, format!("row {} fails r={r} t={t}", o.row))
                                })?;
                                let local = orow as u64 * o.row_len as u64 + o.offset as u64;
                                let len = dims.per_sample_len(o.tensor) as u64;
                                let at = match o.addressing {
                                    Addressing::Shared => local,
                                    Addressing::PerSample => e.id * len + local,
                                    Addressing::Gather { index } => {
                                        let node = match index {
                                            Tensor::Receiver => e.recv,
                                            Tensor::Sender => e.send,
                                            t => {
                                                return Err(err(
                                                    &k.name,
                                                    format!("gather by {t:?}"),
                                                ))
                                            }
                                        };
                                        node * len + local
                                    }
                                };
                                if o.addressing != Addressing::Shared
                                    && local + o.row_len as u64 > len
                                {
                                    return Err(err(
                                        &k.name,
                                        format!("{:?} row {orow} outside a row", o.tensor),
                                    ));
                                }
                                let buf = &bufs[&o.tensor];
                                if at as usize + o.row_len as usize > buf.len() {
                                    return Err(err(
                                        &k.name,
                                        format!("{:?}[{at}] out of bounds", o.tensor),
                                    ));
                                }
                                base.push((buf, at as usize));
                            }
                            let skip = c.scalar_factor.map(|i| i as usize);
                            tmp.iter_mut().for_each(|v| *v = 0.0);
                            for term in &c.terms {
                                let mut p = term.coeff;
                                for (i, ((buf, at), &comp)) in
                                    base.iter().zip(&term.comps).enumerate()
                                {
                                    if Some(i) != skip {
                                        p *= buf[at + comp as usize];
                                    }
                                }
                                *tmp.get_mut(term.out as usize).ok_or_else(|| {
                                    err(&k.name, format!("term out {} >= row_len", term.out))
                                })? += p;
                            }
                            let w = skip.map_or(1.0, |i| base[i].0[base[i].1]);
                            for (a, v) in acc.iter_mut().zip(&tmp) {
                                *a += w * v;
                            }
                        }
                    }
                }
                let local = seg.out_offset as u64 + r as u64 * rl as u64;
                let len = dims.per_sample_len(seg.out) as u64;
                let at = match *sample_mode {
                    SampleMode::Chunk { .. } => {
                        if seg.out != Tensor::WPartial {
                            return Err(err(&k.name, format!("{:?} written racily", seg.out)));
                        }
                        (s0 / spc + unit) * dims.weight_numel as u64 + local
                    }
                    _ if len == 0 => {
                        return Err(err(&k.name, format!("{:?} written racily", seg.out)))
                    }
                    SampleMode::Scatter { index } => {
                        let e = list[0];
                        let node = if index == Tensor::Receiver {
                            e.recv
                        } else {
                            e.send
                        };
                        node * len + local
                    }
                    _ => u * len + local,
                };
                writes.push((seg.out, at as usize, acc));
            }
            // Writes land after the dispatch: a kernel never reads what it writes.
            let atomic = matches!(sample_mode, SampleMode::Scatter { .. });
            for (t, at, vals) in writes {
                let buf = bufs.get_mut(&t).expect("outputs allocated");
                if at + vals.len() > buf.len() {
                    return Err(err(&k.name, format!("{t:?}[{at}] out of bounds")));
                }
                for (i, v) in vals.into_iter().enumerate() {
                    if atomic {
                        buf[at + i] += v;
                    } else if buf[at + i].is_nan() {
                        buf[at + i] = v;
                    } else {
                        return Err(err(&k.name, format!("{t:?}[{}] written twice", at + i)));
                    }
                }
            }
        }
    }
    let written: Vec<Tensor> = plan
        .kernels
        .iter()
        .flat_map(|k| k.outputs.iter().copied())
        .filter(|&t| !t.is_scratch())
        .collect();
    Ok(written
        .into_iter()
        .filter_map(|t| bufs.remove(&t).map(|v| (t, v)))
        .collect())
}

/// Global invocation ids of a 2-D grid in hardware order.
fn grid_ids(grid: [u32; 2], wg: u32) -> impl Iterator<Item = u64> {
    let [gx, gy] = grid;
    (0..gy as u64).flat_map(move |y| {
        (0..gx as u64)
            .flat_map(move |x| (0..wg as u64).map(move |l| (y * gx as u64 + x) * wg as u64 + l))
    })
}
