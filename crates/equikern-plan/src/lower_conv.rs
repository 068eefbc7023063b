//! Lowering of the fused convolution onto the row-kernel IR (see [`crate::conv`], `CONV.md`).
//!
//! The per-edge work is the tensor product's, gathered per output row exactly as there; only
//! the unit loop changes: node outputs sum over a CSR range of edges (or scatter atomically),
//! edge outputs are per-edge rows with gathered node operands.

use crate::conv::{conv_addressing, ConvInfo, ConvOptions};
use crate::lower::{
    chunk_size, finish, pack_kernels, reduce_kernel, workgroup_size, Binding, KSpec, LowerOptions,
    OutGroup, Slot, Tables, CHUNK_TOO_BIG,
};
use crate::{
    Addressing, Capabilities, Dims, Direction, Dtype, Kernel, KernelPlan, PlanError, SampleMode,
    Tensor, Work,
};
use equikern_core::TensorProduct;

/// Re-addresses node operands as gathers and adds the index tensors the kernel reads.
fn fix(k: &mut Kernel) {
    let Work::Rows {
        sample_mode,
        segments,
        ..
    } = &mut k.work
    else {
        return;
    };
    let mut extra = vec![];
    for o in segments
        .iter_mut()
        .flat_map(|s| s.contributions.iter_mut())
        .flat_map(|c| c.operands.iter_mut())
    {
        o.addressing = conv_addressing(o.tensor, o.addressing);
        if let Addressing::Gather { index } = o.addressing {
            extra.push(index);
        }
    }
    match *sample_mode {
        // The CSR view stores the other end of each edge; the node is the unit itself.
        SampleMode::Segments { csr } => extra = vec![csr],
        SampleMode::Pieces { pieces } => extra = vec![pieces],
        SampleMode::Scatter { index } => extra.push(index),
        _ => {}
    }
    k.inputs.extend(extra);
    k.inputs.sort();
    k.inputs.dedup();
}

/// Most units (nodes or edges) per dispatch: the 2-D grid and `u32` invocation ids. Bindings
/// are whole, so their sizes are checked per graph ([`KernelPlan::check_graph`]).
fn max_units(plan: &KernelPlan) -> Result<u32, PlanError> {
    let caps = &plan.caps;
    let grid_cap = caps.max_workgroups_per_dim as u64 * caps.max_workgroups_per_dim as u64;
    let (mut n_max, mut spc_all) = (u32::MAX as u64, 1u64);
    for k in &plan.kernels {
        let (spc, rows_per_sample): (u64, u32) = match &k.work {
            Work::Rows {
                sample_mode: SampleMode::Chunk { samples_per_chunk },
                rows_per_sample,
                ..
            } => (*samples_per_chunk as u64, *rows_per_sample),
            Work::Rows {
                rows_per_sample, ..
            } => (1, *rows_per_sample),
            // One invocation per (node, element).
            Work::ReducePieces { len, .. } => (1, *len),
            // One invocation per (unit, group, channel).
            Work::Channels(c) => (1, c.lanes()),
            Work::ReduceChunks { .. } | Work::Staged(_) => continue,
        };
        spc_all = spc_all.max(spc);
        if rows_per_sample == 0 {
            continue;
        }
        let wg = k.workgroup_size as u64;
        let max_groups =
            grid_cap.min((u32::MAX as u64 / wg).saturating_sub(caps.max_workgroups_per_dim as u64));
        let units = max_groups * wg / rows_per_sample as u64;
        if units == 0 {
            return Err(PlanError::TooLarge(
                "one unit's rows exceed the largest dispatch grid",
            ));
        }
        n_max = n_max.min(units.saturating_mul(spc));
    }
    let n = n_max / spc_all * spc_all;
    if n == 0 {
        return Err(PlanError::TooLarge(CHUNK_TOO_BIG));
    }
    Ok(n.min(u32::MAX as u64) as u32)
}

/// Lower one direction of the convolution with tensor product `tp` (per-edge or shared
/// weights) for a target with capabilities `caps`.
pub fn lower_conv(
    tp: &TensorProduct,
    direction: Direction,
    dtype: Dtype,
    caps: &Capabilities,
    opts: ConvOptions,
) -> Result<KernelPlan, PlanError> {
    lower_conv_with(tp, direction, dtype, caps, opts, LowerOptions::default())
}

/// [`lower_conv`] with lowering options: `channel_fusion` (default on) lets a deterministic
/// forward or backward of a product that qualifies for the channel kernel
/// ([`crate::channel`]: all `uvu`; `x` blocks of any multiplicities, the forward's output
/// groups one multiplicity each) run as one channel kernel over the
/// receiver view (forward) or the sender view (backward) ([`crate::ChannelConv`]) instead
/// of the row kernels; `conv_forward_regs` overrides the forward's output grouping
/// ([`crate::channel::CONV_FORWARD_REGS`]); `conv_backward_lanes` (default off) lets a
/// backward with `x` blocks of different multiplicities take balanced lane groups
/// ([`crate::ChannelConv::lanes`]).
pub fn lower_conv_with(
    tp: &TensorProduct,
    direction: Direction,
    dtype: Dtype,
    caps: &Capabilities,
    opts: ConvOptions,
    lopts: LowerOptions,
) -> Result<KernelPlan, PlanError> {
    use Tensor::*;
    if dtype == Dtype::F64 && !caps.f64 {
        return Err(PlanError::Caps(
            "f64 requested but the target lacks f64".into(),
        ));
    }
    if opts.atomic && opts.max_piece_edges.is_some() {
        return Err(PlanError::Caps(
            "max_piece_edges applies to the deterministic convolution, not the atomic one".into(),
        ));
    }
    if opts.max_piece_edges == Some(0) {
        return Err(PlanError::TooLarge("max_piece_edges must be at least 1"));
    }
    if opts.atomic && !caps.float_atomics {
        return Err(PlanError::Caps(
            "the atomic convolution needs float_atomics, which the target lacks".into(),
        ));
    }
    for (what, v) in [
        ("dim_in1", tp.dim_in1),
        ("dim_in2", tp.dim_in2),
        ("dim_out", tp.dim_out),
        ("weight_numel", tp.weight_numel),
    ] {
        if v > u32::MAX as usize {
            return Err(PlanError::TooLarge(what));
        }
    }
    let dims = Dims::of(tp);
    let wg = workgroup_size(caps)?;
    let weighted = tp.weight_numel > 0;
    let shared = tp.spec.shared_weights;
    let b = |x, y, z, w| Binding { x, y, z, w };
    let grp = |slot, tensor, bindings: Vec<Binding>| OutGroup {
        slot,
        tensor,
        bindings,
    };
    let spc = chunk_size(dims.weight_numel);
    let chunk = SampleMode::Chunk {
        samples_per_chunk: spc,
    };
    let edge = SampleMode::PerSample;
    // Node outputs: by receiver (z, dgz) or by sender (gx, dx).
    let pieces = opts.max_piece_edges.is_some();
    let (by_recv, by_send, sfx) = if opts.atomic {
        (
            SampleMode::Scatter { index: Receiver },
            SampleMode::Scatter { index: Sender },
            "_atomic",
        )
    } else if pieces {
        (
            SampleMode::Pieces { pieces: RecvPieces },
            SampleMode::Pieces { pieces: SendPieces },
            "_pieces",
        )
    } else {
        (
            SampleMode::Segments { csr: RecvCsr },
            SampleMode::Segments { csr: SendCsr },
            "",
        )
    };
    // With pieces, node outputs go to per-piece partials first, then an ordered reduction.
    let mut piece_reduce: Vec<Kernel> = vec![];
    let mut node_out = |t: Tensor| -> Tensor {
        if !pieces {
            return t;
        }
        let (partial, table, len) = if matches!(t, Z | DGZ) {
            (RecvPartial, RecvPieces, dims.dim_out)
        } else {
            (SendPartial, SendPieces, dims.dim_in1)
        };
        piece_reduce.push(Kernel {
            name: format!("reduce_pieces_{}", format!("{t:?}").to_lowercase()),
            inputs: vec![partial, table],
            outputs: vec![t],
            workgroup_size: wg,
            work: Work::ReducePieces {
                input: partial,
                output: t,
                pieces: table,
                len,
            },
        });
        partial
    };
    let ks = |name: &str, mode, groups| KSpec {
        name: format!("conv_{name}"),
        mode,
        groups,
    };
    // The channel-fused forward over the receiver view and backward over the sender view
    // (deterministic modes only).
    let mut fused: Option<Kernel> = None;
    if direction == Direction::Forward && lopts.channel_fusion && !opts.atomic {
        let out = if pieces { RecvPartial } else { Z };
        let regs = lopts
            .conv_forward_regs
            .unwrap_or(crate::channel::CONV_FORWARD_REGS);
        if let Some(c) = crate::channel::conv_channel_work(
            tp,
            crate::ChannelPass::Forward,
            dtype,
            caps,
            by_recv,
            out,
            regs,
            false,
        ) {
            let (inputs, outputs) = c.bindings(weighted);
            let z = node_out(Z);
            debug_assert_eq!(z, out);
            fused = Some(Kernel {
                name: format!("conv_forward_fused{sfx}"),
                inputs,
                outputs,
                workgroup_size: c.samples_per_group * c.lanes(),
                work: Work::Channels(c),
            });
        }
    }
    if direction == Direction::Backward && lopts.channel_fusion && !opts.atomic {
        let (units, out) = match by_send {
            SampleMode::Pieces { .. } => (by_send, SendPartial),
            _ => (by_send, GX),
        };
        if let Some(c) = crate::channel::conv_channel_work(
            tp,
            crate::ChannelPass::Backward,
            dtype,
            caps,
            units,
            out,
            0,
            lopts.conv_backward_lanes,
        ) {
            let (inputs, outputs) = c.bindings(weighted);
            let gx = node_out(GX);
            debug_assert_eq!(gx, out);
            fused = Some(Kernel {
                name: format!("conv_backward_fused{sfx}"),
                inputs,
                outputs,
                workgroup_size: c.samples_per_group * c.lanes(),
                work: Work::Channels(c),
            });
        }
    }
    let (specs, reduce): (Vec<KSpec>, Option<Tensor>) = match direction {
        Direction::Forward if fused.is_some() => (vec![], None),
        Direction::Forward => (
            vec![ks(
                &format!("forward{sfx}"),
                by_recv,
                vec![grp(Slot::Z, node_out(Z), vec![b(X, Y, Z, W)])],
            )],
            None,
        ),
        Direction::Backward if fused.is_some() => {
            if weighted && shared {
                let gw = grp(Slot::W, WPartial, vec![b(X, Y, GZ, W)]);
                (vec![ks("backward_gw_chunks", chunk, vec![gw])], Some(GW))
            } else {
                (vec![], None)
            }
        }
        Direction::Backward => {
            let bind = vec![b(X, Y, GZ, W)];
            let mut v = vec![ks(
                &format!("backward_gx{sfx}"),
                by_send,
                vec![grp(Slot::X, node_out(GX), bind.clone())],
            )];
            let gy = grp(Slot::Y, GY, bind.clone());
            let mut red = None;
            if weighted && !shared {
                let gw = grp(Slot::W, GW, bind);
                v.push(ks("backward_gygw", edge, vec![gy, gw]));
            } else {
                v.push(ks("backward_gy", edge, vec![gy]));
                if weighted {
                    let gw = grp(Slot::W, WPartial, bind);
                    v.push(ks("backward_gw_chunks", chunk, vec![gw]));
                    red = Some(GW);
                }
            }
            (v, red)
        }
        Direction::DoubleBackward => {
            let mut dgz = vec![b(HX, Y, DGZ, W), b(X, HY, DGZ, W)];
            let mut dx = vec![b(DX, HY, GZ, W)];
            let mut dy = vec![b(HX, DY, GZ, W)];
            if weighted {
                dgz.push(b(X, Y, DGZ, HW));
                dx.push(b(DX, Y, GZ, HW));
                dy.push(b(X, DY, GZ, HW));
            }
            let dw = vec![b(HX, Y, GZ, DW), b(X, HY, GZ, DW)];
            let mut v = vec![
                ks(
                    &format!("double_backward_dgz{sfx}"),
                    by_recv,
                    vec![grp(Slot::Z, node_out(DGZ), dgz)],
                ),
                ks(
                    &format!("double_backward_dx{sfx}"),
                    by_send,
                    vec![grp(Slot::X, node_out(DX), dx)],
                ),
            ];
            let mut red = None;
            if weighted && !shared {
                let g = vec![grp(Slot::Y, DY, dy), grp(Slot::W, DW, dw)];
                v.push(ks("double_backward_dydw", edge, g));
            } else {
                v.push(ks("double_backward_dy", edge, vec![grp(Slot::Y, DY, dy)]));
                if weighted {
                    let g = vec![grp(Slot::W, WPartial, dw)];
                    v.push(ks("double_backward_dw_chunks", chunk, g));
                    red = Some(DW);
                }
            }
            (v, red)
        }
    };
    let mut tables = Tables::default();
    let mut kernels: Vec<Kernel> = fused.into_iter().collect();
    kernels.extend(pack_kernels(tp, specs, &dims, wg, caps, &mut tables, &fix)?);
    kernels.extend(piece_reduce);
    if let Some(out) = reduce {
        kernels.push(reduce_kernel(out, &dims, wg, caps)?);
    }
    let plan = KernelPlan {
        direction,
        dtype,
        dims,
        caps: *caps,
        tables: tables.0,
        kernels,
        max_samples_per_dispatch: 0,
        conv: Some(ConvInfo {
            atomic: opts.atomic,
            max_piece_edges: opts.max_piece_edges,
        }),
    };
    finish(plan, spc, max_units)
}
