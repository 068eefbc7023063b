//! CPU interpreter: executes a [`KernelPlan`] the way a GPU runtime does — dispatches of at
//! most `max_samples_per_dispatch` samples, the 2-D grid numbering, chunked sample loops and
//! ordered reductions, the per-row accumulation order — so the lowering is tested without a
//! GPU. Outputs start as NaN so an element the plan fails to write shows up.
//!
//! Accumulation order per output row: contributions in order, `t` ascending, terms in order;
//! with a scalar factor `w`, each iteration sums its terms first and then adds `w * sum`.

use crate::{Addressing, KernelPlan, PlanError, SampleMode, Tensor, Work};
use std::collections::BTreeMap;

fn err(kernel: &str, why: String) -> PlanError {
    PlanError::Interp {
        kernel: kernel.to_string(),
        why,
    }
}

/// Run `plan` on a batch. `inputs` holds every tensor the plan reads and no kernel writes, as
/// flat row-major `f64` vectors (see [`crate::Dims::buffer_len`]). Returns every tensor the
/// plan writes except the `WPartial` and `Scratch` scratch tensors.
pub fn interpret(
    plan: &KernelPlan,
    batch: usize,
    inputs: &BTreeMap<Tensor, Vec<f64>>,
) -> Result<BTreeMap<Tensor, Vec<f64>>, PlanError> {
    if plan.conv.is_some() {
        return Err(err("-", "a convolution plan: use interpret_conv".into()));
    }
    let batch = batch as u64;
    if let Some(max) = plan.max_batch() {
        if batch > max {
            return Err(PlanError::BatchTooLarge { batch, max });
        }
    }
    let dims = &plan.dims;
    let num_chunks = plan.num_chunks(batch);
    let mut bufs: BTreeMap<Tensor, Vec<f64>> = BTreeMap::new();
    for k in &plan.kernels {
        for &t in &k.inputs {
            if bufs.contains_key(&t) {
                continue;
            }
            let v = inputs.get(&t).ok_or(PlanError::MissingInput(t))?;
            let expected = dims.buffer_len(t, batch, num_chunks) as usize;
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
            let len = dims.buffer_len(t, batch, num_chunks) as usize;
            bufs.insert(t, vec![f64::NAN; len]);
        }
    }
    for k in &plan.kernels {
        match &k.work {
            Work::ReducePieces { .. } => return Err(err(&k.name, "piece reduction".into())),
            Work::ReduceChunks { input, output, len } => {
                let items = k.invocations(0);
                let inp = &bufs[input];
                let mut out = bufs[output].clone();
                for g in grid_ids(
                    k.grid(items, plan.caps.max_workgroups_per_dim),
                    k.workgroup_size,
                ) {
                    if g >= *len as u64 {
                        continue;
                    }
                    let mut acc = 0.0;
                    for c in 0..num_chunks {
                        acc += inp[(c * *len as u64 + g) as usize];
                    }
                    out[g as usize] = acc;
                }
                bufs.insert(*output, out);
            }
            Work::Channels(c) => {
                if k.workgroup_size != c.samples_per_group * c.channels {
                    return Err(err(&k.name, "workgroup is not samples × channels".into()));
                }
                for (s0, n) in plan.dispatches(batch) {
                    let grid = k.grid(k.invocations(n), plan.caps.max_workgroups_per_dim);
                    if grid[0] > plan.caps.max_workgroups_per_dim
                        || grid[1] > plan.caps.max_workgroups_per_dim
                    {
                        return Err(err(&k.name, format!("grid {grid:?} exceeds the limit")));
                    }
                    let groups = grid[0] as u64 * grid[1] as u64;
                    if groups * (c.samples_per_group as u64) < n {
                        return Err(err(&k.name, "grid does not cover the samples".into()));
                    }
                    for ls in 0..n {
                        crate::channel::interpret_sample(plan, c, s0 + ls, &mut bufs)
                            .map_err(|why| err(&k.name, why))?;
                    }
                }
            }
            Work::Staged(w) => {
                for (s0, n) in plan.dispatches(batch) {
                    let grid = k.grid(k.invocations(n), plan.caps.max_workgroups_per_dim);
                    if grid[0] > plan.caps.max_workgroups_per_dim
                        || grid[1] > plan.caps.max_workgroups_per_dim
                    {
                        return Err(err(&k.name, format!("grid {grid:?} exceeds the limit")));
                    }
                    if (grid[0] as u64) * (grid[1] as u64) < n {
                        return Err(err(&k.name, "grid does not cover the samples".into()));
                    }
                    for ls in 0..n {
                        crate::staged::interpret_sample(plan, w, s0 + ls, &mut bufs)
                            .map_err(|why| err(&k.name, why))?;
                    }
                }
            }
            Work::Rows {
                sample_mode,
                rows_per_sample,
                segments,
            } => {
                let rows = *rows_per_sample as u64;
                if rows == 0 {
                    continue;
                }
                let spc = match sample_mode {
                    SampleMode::Chunk { samples_per_chunk } => *samples_per_chunk as u64,
                    _ => 1,
                };
                for (s0, n) in plan.dispatches(batch) {
                    if spc > 1 && s0 % spc != 0 {
                        return Err(err(
                            &k.name,
                            format!("dispatch start {s0} not chunk-aligned"),
                        ));
                    }
                    let units = n.div_ceil(spc);
                    let items = k.invocations(n);
                    let grid = k.grid(items, plan.caps.max_workgroups_per_dim);
                    if grid[0] > plan.caps.max_workgroups_per_dim
                        || grid[1] > plan.caps.max_workgroups_per_dim
                    {
                        return Err(err(&k.name, format!("grid {grid:?} exceeds the limit")));
                    }
                    let mut writes: Vec<(Tensor, usize, Vec<f64>)> = vec![];
                    for g in grid_ids(grid, k.workgroup_size) {
                        if g > u32::MAX as u64 {
                            return Err(err(&k.name, format!("invocation id {g} exceeds u32")));
                        }
                        let (unit, row) = (g / rows, (g % rows) as u32);
                        if unit >= units {
                            continue;
                        }
                        let seg = segments
                            .iter()
                            .find(|s| row >= s.first_row && row < s.first_row + s.rows)
                            .ok_or_else(|| err(&k.name, format!("row {row} in no segment")))?;
                        let r = row - seg.first_row;
                        let rl = seg.row_len as usize;
                        let mut acc = vec![0.0; rl];
                        let mut tmp = vec![0.0; rl];
                        let samples = unit * spc..((unit + 1) * spc).min(n);
                        for ls in samples {
                            for c in &seg.contributions {
                                let cnt =
                                    c.count.try_eval(r, 0, &plan.tables).ok_or_else(|| {
                                        err(&k.name, format!("count {} fails at r={r}", c.count))
                                    })?;
                                for t in 0..cnt {
                                    // Operand rows' base indices, as the GPU computes them.
                                    let mut base = Vec::with_capacity(c.operands.len());
                                    for o in &c.operands {
                                        let row = o.row.try_eval(r, t, &plan.tables).ok_or_else(
                                            || {
                                                err(
                                                    &k.name,
                                                    format!("row {} fails r={r} t={t}", o.row),
                                                )
                                            },
                                        )?;
                                        let local = row as u64 * o.row_len as u64 + o.offset as u64;
                                        let idx = match o.addressing {
                                            Addressing::PerSample => {
                                                let len = dims.per_sample_len(o.tensor) as u64;
                                                if len == 0 {
                                                    return Err(err(
                                                        &k.name,
                                                        format!("{:?} is not per-sample", o.tensor),
                                                    ));
                                                }
                                                if local + o.row_len as u64 > len {
                                                    return Err(err(
                                                        &k.name,
                                                        format!(
                                                            "{:?} row {row} outside a sample",
                                                            o.tensor
                                                        ),
                                                    ));
                                                }
                                                let rel = ls * len + local;
                                                if rel + o.row_len as u64 > u32::MAX as u64 {
                                                    return Err(err(
                                                        &k.name,
                                                        "element index exceeds u32".into(),
                                                    ));
                                                }
                                                (s0 * len + rel) as usize
                                            }
                                            Addressing::Shared => local as usize,
                                            Addressing::Gather { .. } => {
                                                return Err(err(&k.name, "gather".into()))
                                            }
                                        };
                                        let buf = &bufs[&o.tensor];
                                        if idx + o.row_len as usize > buf.len() {
                                            return Err(err(
                                                &k.name,
                                                format!("{:?}[{idx}] out of bounds", o.tensor),
                                            ));
                                        }
                                        base.push((buf, idx));
                                    }
                                    let skip = c.scalar_factor.map(|i| i as usize);
                                    tmp.iter_mut().for_each(|v| *v = 0.0);
                                    for term in &c.terms {
                                        let mut p = term.coeff;
                                        for (i, ((buf, idx), &comp)) in
                                            base.iter().zip(&term.comps).enumerate()
                                        {
                                            if Some(i) != skip {
                                                p *= buf[idx + comp as usize];
                                            }
                                        }
                                        let slot =
                                            tmp.get_mut(term.out as usize).ok_or_else(|| {
                                                err(
                                                    &k.name,
                                                    format!("term out {} >= row_len", term.out),
                                                )
                                            })?;
                                        *slot += p;
                                    }
                                    let w = skip.map_or(1.0, |i| base[i].0[base[i].1]);
                                    for (a, v) in acc.iter_mut().zip(&tmp) {
                                        *a += w * v;
                                    }
                                }
                            }
                        }
                        let local = seg.out_offset as u64 + r as u64 * rl as u64;
                        let idx = if seg.out == Tensor::WPartial {
                            (s0 / spc + unit) * dims.weight_numel as u64 + local
                        } else {
                            let len = dims.per_sample_len(seg.out) as u64;
                            if len == 0 || spc > 1 {
                                return Err(err(&k.name, format!("{:?} written racily", seg.out)));
                            }
                            (s0 + unit) * len + local
                        };
                        writes.push((seg.out, idx as usize, acc));
                    }
                    // Writes land after the dispatch: a kernel never reads what it writes.
                    for (t, idx, vals) in writes {
                        let buf = bufs.get_mut(&t).expect("outputs allocated");
                        if idx + vals.len() > buf.len() {
                            return Err(err(&k.name, format!("{t:?}[{idx}] out of bounds")));
                        }
                        for (i, v) in vals.into_iter().enumerate() {
                            if !buf[idx + i].is_nan() {
                                return Err(err(
                                    &k.name,
                                    format!("{t:?}[{}] written twice", idx + i),
                                ));
                            }
                            buf[idx + i] = v;
                        }
                    }
                }
            }
        }
    }
    let written: Vec<Tensor> = plan
        .kernels
        .iter()
        .flat_map(|k| k.outputs.iter().copied())
        .filter(|&t| t != Tensor::WPartial && t != Tensor::Scratch)
        .collect();
    Ok(written
        .into_iter()
        .filter_map(|t| bufs.remove(&t).map(|v| (t, v)))
        .collect())
}

/// Global invocation ids of a 2-D grid in hardware order:
/// `(wg.y * grid.x + wg.x) * workgroup_size + local`.
fn grid_ids(grid: [u32; 2], wg: u32) -> impl Iterator<Item = u64> {
    let [gx, gy] = grid;
    (0..gy as u64).flat_map(move |y| {
        (0..gx as u64)
            .flat_map(move |x| (0..wg as u64).map(move |l| (y * gx as u64 + x) * wg as u64 + l))
    })
}
