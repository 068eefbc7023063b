//! Human-readable form of a plan (`equikern emit --plan`).

use crate::{Addressing, Contribution, KernelPlan, SampleMode, Segment, Work};
use std::fmt;

/// Terms printed per contribution before eliding the rest.
const SHOW_TERMS: usize = 4;

fn contribution(f: &mut fmt::Formatter<'_>, c: &Contribution, seg: &Segment) -> fmt::Result {
    write!(f, "      path {}: for t < {}:", c.path, c.count)?;
    for (i, o) in c.operands.iter().enumerate() {
        let shared = match o.addressing {
            Addressing::Shared => " shared".to_string(),
            Addressing::Gather { index } => format!(" by {index:?}"),
            Addressing::PerSample => String::new(),
        };
        let factor = if c.scalar_factor == Some(i as u32) {
            " (factor)"
        } else {
            ""
        };
        write!(
            f,
            "  {:?}@{}x{}{}[{}]{}",
            o.tensor, o.offset, o.row_len, shared, o.row, factor
        )?;
    }
    writeln!(f, "  | {} terms", c.terms.len())?;
    for t in c.terms.iter().take(SHOW_TERMS) {
        write!(f, "        {:?}[{}] += {:+.12e}", seg.out, t.out, t.coeff)?;
        for (o, k) in c.operands.iter().zip(&t.comps) {
            write!(f, " * {:?}[{}]", o.tensor, k)?;
        }
        writeln!(f)?;
    }
    if c.terms.len() > SHOW_TERMS {
        writeln!(f, "        ... {} more", c.terms.len() - SHOW_TERMS)?;
    }
    Ok(())
}

impl fmt::Display for KernelPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.dims;
        writeln!(
            f,
            "plan {:?} {:?}: x {} y {} z {} w {}{}; {} kernels; max {} samples/dispatch; hash {}",
            self.direction,
            self.dtype,
            d.dim_in1,
            d.dim_in2,
            d.dim_out,
            d.weight_numel,
            if d.shared_weights { " (shared)" } else { "" },
            self.kernels.len(),
            self.max_samples_per_dispatch,
            self.hash_hex()
        )?;
        writeln!(
            f,
            "terms/sample {}  flops/sample {}",
            self.terms_per_sample(),
            self.flops(1).saturating_sub(self.flops(0))
        )?;
        for (i, t) in self.tables.iter().enumerate() {
            writeln!(f, "tab{i} = {t:?}")?;
        }
        for k in &self.kernels {
            write!(
                f,
                "kernel {} (workgroup {}): {:?} -> {:?}",
                k.name, k.workgroup_size, k.inputs, k.outputs
            )?;
            match &k.work {
                Work::ReduceChunks { input, output, len } => {
                    writeln!(f, "; {output:?}[r] = sum_c {input:?}[c, r] for r < {len}")?;
                }
                Work::Staged(w) => {
                    writeln!(
                        f,
                        "; {:?}, one workgroup per sample, {} tasks, {} elements of workgroup \
                         memory",
                        w.pass, w.tasks, w.shared_len
                    )?;
                    for p in &w.paths {
                        writeln!(
                            f,
                            "  path {}: x[{} + u*{}, u<{}] y[{} + v*{}, v<{}] z[{} + w*{}, w<{}] \
                             w{} staged at {} (stride {}) terms {}",
                            p.path,
                            p.x_offset,
                            p.x_len,
                            p.x_mul,
                            p.y_offset,
                            p.y_len,
                            p.y_mul,
                            p.z_offset,
                            p.z_len,
                            p.z_mul,
                            p.w_offset,
                            p.s_offset,
                            p.s_stride,
                            p.terms.len()
                        )?;
                    }
                }
                Work::Channels(c) => {
                    if c.warp_units() {
                        writeln!(
                            f,
                            "; {} channels/sample, one warp per sample ({} chunks of 32 channels \
                             per lane), {} samples/workgroup, gy by warp shuffles{}",
                            c.channels,
                            c.channel_chunks(),
                            c.samples_per_group,
                            if c.write_gw { ", writes gw" } else { "" }
                        )?;
                    } else {
                        writeln!(
                            f,
                            "; {} channels/sample, {} samples/workgroup, gy summed over channels \
                             ({} elements of workgroup memory){}",
                            c.channels,
                            c.samples_per_group,
                            c.reduction_len(),
                            if c.write_gw { ", writes gw" } else { "" }
                        )?;
                    }
                    if !c.lane_groups().is_empty() {
                        let (max, sum) = c.backward_warp_costs();
                        writeln!(
                            f,
                            "  {} lanes/unit in groups (per-edge cost: max warp {max}, warps {sum}):",
                            c.lanes()
                        )?;
                        for g in c.lane_groups() {
                            writeln!(
                                f,
                                "    x block {} x{} rows: paths {:?} (cost {})",
                                g.x_block,
                                c.lane_group_rows(g),
                                g.paths,
                                c.backward_lane_cost(g.paths.iter().map(|&i| i as usize))
                            )?;
                        }
                    }
                    for p in &c.paths {
                        let mul = c.path_mul(p);
                        writeln!(
                            f,
                            "  path {}{}: x[{} + u*{}] y[{} + v*{}, v<{}] gz[{} + u*{}] w{} terms {}",
                            p.path,
                            if mul < c.channels {
                                format!(" (u<{mul})")
                            } else {
                                String::new()
                            },
                            p.x_offset,
                            p.x_len,
                            p.y_offset,
                            p.y_len,
                            p.y_mul,
                            p.z_offset,
                            p.z_len,
                            p.w_offset
                                .map_or(String::new(), |o| format!("[{o} + u*{} + v]", p.y_mul)),
                            p.terms.len()
                        )?;
                    }
                }
                Work::ReducePieces {
                    input,
                    output,
                    pieces,
                    len,
                } => writeln!(
                    f,
                    "; {output:?}[n, i] = sum over pieces p of n in {pieces:?}: {input:?}[p, i], i < {len}"
                )?,
                Work::Rows {
                    sample_mode,
                    rows_per_sample,
                    segments,
                } => {
                    match sample_mode {
                        SampleMode::PerSample => writeln!(f, "; {rows_per_sample} rows/sample")?,
                        SampleMode::Chunk { samples_per_chunk } => writeln!(
                            f,
                            "; {rows_per_sample} rows/chunk of {samples_per_chunk} samples"
                        )?,
                        SampleMode::Segments { csr } => {
                            writeln!(f, "; {rows_per_sample} rows/node, edges of {csr:?}")?
                        }
                        SampleMode::Pieces { pieces } => {
                            writeln!(f, "; {rows_per_sample} rows/piece of {pieces:?}")?
                        }
                        SampleMode::Scatter { index } => writeln!(
                            f,
                            "; {rows_per_sample} rows/edge, atomic add into node {index:?}"
                        )?,
                    }
                    for s in segments {
                        writeln!(
                            f,
                            "  segment rows {}..{} -> {:?}@{} ({} x {}){}",
                            s.first_row,
                            s.first_row + s.rows,
                            s.out,
                            s.out_offset,
                            s.rows,
                            s.row_len,
                            if s.contributions.is_empty() {
                                " zeros"
                            } else {
                                ""
                            }
                        )?;
                        for c in &s.contributions {
                            contribution(f, c, s)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
