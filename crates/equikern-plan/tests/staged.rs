//! Weight-staged kernels (`Work::Staged`): which products qualify, their bindings and
//! workgroup-memory layout, and the interpreter against the oracle and the row kernels.

mod common;

use common::*;
use equikern_core::{IrrepNormalization as IN, PathNormalization as PN, TensorProduct};
use equikern_plan::{
    interpret, lower, lower_with, Capabilities, Direction, Dtype, LowerOptions, StagedPass, Tensor,
    Work,
};

fn caps() -> Capabilities {
    Capabilities {
        f64: true,
        workgroup_memory_bytes: 49152,
        max_storage_buffers_per_stage: 16,
        ..Capabilities::webgpu_min()
    }
}

fn staged(tp: &TensorProduct, dir: Direction, dtype: Dtype, caps: &Capabilities) -> bool {
    let plan = lower(tp, dir, dtype, caps).unwrap();
    plan.kernels
        .iter()
        .any(|k| matches!(k.work, Work::Staged(_)))
}

/// A DiffDock-shaped product (fully connected, per-sample weights) with multiplicities
/// `a` (vectors) and `b` (scalars).
fn diffdock_like(a: usize, b: usize, l2: bool) -> TensorProduct {
    let in1 = format!("{a}x1o+{a}x1e+{b}x0e+{b}x0o");
    let in2 = if l2 { "1x0e+1x1o+1x2e" } else { "1x0e+1x1o" };
    let mut ins = vec![
        Ins(0, 0, 0, "uvw", true, 1.0),
        Ins(0, 1, 1, "uvw", true, 1.0),
        Ins(0, 1, 2, "uvw", true, 1.0),
        Ins(1, 0, 1, "uvw", true, 1.0),
        Ins(1, 1, 0, "uvw", true, 1.0),
        Ins(1, 1, 3, "uvw", true, 1.0),
        Ins(2, 0, 2, "uvw", true, 1.0),
        Ins(2, 1, 0, "uvw", true, 1.0),
        Ins(3, 0, 3, "uvw", true, 1.0),
        Ins(3, 1, 1, "uvw", true, 1.0),
    ];
    if l2 {
        ins.push(Ins(0, 2, 0, "uvw", true, 1.0));
        ins.push(Ins(1, 2, 1, "uvw", true, 1.0));
    }
    build(&in1, in2, &in1, &ins, false, IN::Component, PN::Element)
}

/// The f32 plan (what fits 48 KiB at DiffDock's size), interpreted in f64.
fn check_dir(tp: &TensorProduct, dir: Direction, batch: usize, caps: &Capabilities) {
    let plan = lower(tp, dir, Dtype::F32, caps).unwrap();
    assert!(
        plan.kernels
            .iter()
            .any(|k| matches!(k.work, Work::Staged(_))),
        "{dir:?} not staged:\n{plan}"
    );
    let rows = lower_with(
        tp,
        dir,
        Dtype::F32,
        caps,
        LowerOptions {
            channel_fusion: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(rows
        .kernels
        .iter()
        .all(|k| matches!(k.work, Work::Rows { .. } | Work::ReduceChunks { .. })));
    let inp = inputs(tp, dir, batch, 5 + batch as u64);
    let got = interpret(&plan, batch, &inp).unwrap_or_else(|e| panic!("{e}\n{plan}"));
    let by_rows = interpret(&rows, batch, &inp).unwrap();
    let want = oracle(tp, dir, batch, &inp);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (t, w) in &want {
        assert!(got[t].iter().all(|v| v.is_finite()), "{t:?} unwritten");
        let e = rel_l2(&got[t], w);
        assert!(e <= 1e-12, "{t:?}: rel L2 {e:e} vs oracle\n{plan}");
        let e = rel_l2(&got[t], &by_rows[t]);
        assert!(e <= 1e-12, "{t:?}: rel L2 {e:e} vs row kernels");
    }
}

#[test]
fn diffdock_shapes_match_the_oracle() {
    let c = caps();
    for (a, b, l2) in [(4, 12, false), (3, 9, true), (10, 48, false)] {
        let tp = diffdock_like(a, b, l2);
        for batch in [1, 3, 17] {
            check_dir(&tp, Direction::Forward, batch, &c);
            check_dir(&tp, Direction::Backward, batch, &c);
            check_dir(&tp, Direction::DoubleBackward, batch, &c);
        }
    }
}

#[test]
fn several_y_channels_and_a_block_nobody_writes() {
    // V = 2 (tasks (u, v)), an output block no path reaches (zeros), path normalisation.
    let tp = build(
        "8x0e+5x1o",
        "2x0e+2x1o",
        "7x0e+4x1o+3x2e",
        &[
            Ins(0, 0, 0, "uvw", true, 1.0),
            Ins(1, 1, 0, "uvw", true, 1.0),
            Ins(0, 1, 1, "uvw", true, 0.5),
            Ins(1, 0, 1, "uvw", true, 1.0),
        ],
        false,
        IN::Norm,
        PN::Path,
    );
    assert!(tp.weight_numel >= 256, "{}", tp.weight_numel);
    for batch in [1, 4] {
        check_dir(&tp, Direction::Forward, batch, &caps());
        check_dir(&tp, Direction::Backward, batch, &caps());
        check_dir(&tp, Direction::DoubleBackward, batch, &caps());
    }
}

#[test]
fn who_qualifies() {
    let c = caps();
    let tp = diffdock_like(10, 48, false);
    assert!(staged(&tp, Direction::Forward, Dtype::F32, &c));
    assert!(staged(&tp, Direction::Backward, Dtype::F32, &c));
    assert!(staged(&tp, Direction::DoubleBackward, Dtype::F32, &c));
    // f64: 2 x the workgroup memory, over 48 KiB -> row kernels.
    assert!(!staged(&tp, Direction::Backward, Dtype::F64, &c));
    // WebGPU's 16 KiB of workgroup memory: DiffDock's 6 928 weights do not fit.
    let web = Capabilities::webgpu_min();
    assert!(!staged(&tp, Direction::Backward, Dtype::F32, &web));
    // A smaller one does (7 bindings of the backward fit 8; the double backward's 11 do not).
    let small = diffdock_like(4, 12, false);
    assert!(staged(&small, Direction::Backward, Dtype::F32, &web));
    assert!(!staged(&small, Direction::DoubleBackward, Dtype::F32, &web));
    // Shared weights, too few weights, other modes: row kernels.
    let shared = build(
        "10x1o+48x0e",
        "1x0e+1x1o",
        "10x1o+48x0e",
        &[
            Ins(0, 0, 0, "uvw", true, 1.0),
            Ins(1, 0, 1, "uvw", true, 1.0),
        ],
        true,
        IN::Component,
        PN::Element,
    );
    assert!(!staged(&shared, Direction::Backward, Dtype::F32, &c));
    let tiny = build(
        "4x1o",
        "1x1o",
        "4x0e",
        &[Ins(0, 0, 0, "uvw", true, 1.0)],
        false,
        IN::Component,
        PN::Element,
    );
    assert!(!staged(&tiny, Direction::Backward, Dtype::F32, &c));
    let mixed = build(
        "32x1o+32x0e",
        "1x0e+1x1o",
        "32x1o+32x0e",
        &[
            Ins(0, 0, 0, "uvu", true, 1.0),
            Ins(1, 0, 1, "uvw", true, 1.0),
        ],
        false,
        IN::Component,
        PN::Element,
    );
    assert!(!staged(&mixed, Direction::Backward, Dtype::F32, &c));
    // Opting out.
    let rows = lower_with(
        &tp,
        Direction::Backward,
        Dtype::F32,
        &c,
        LowerOptions {
            channel_fusion: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!rows
        .kernels
        .iter()
        .any(|k| matches!(k.work, Work::Staged(_))));
}

#[test]
fn layout_and_bindings() {
    let tp = diffdock_like(10, 48, false);
    let plan = lower(&tp, Direction::Backward, Dtype::F32, &caps()).unwrap();
    assert_eq!(plan.kernels.len(), 1, "{plan}");
    let k = &plan.kernels[0];
    assert_eq!(k.inputs, vec![Tensor::X, Tensor::Y, Tensor::W, Tensor::GZ]);
    assert_eq!(k.outputs, vec![Tensor::GX, Tensor::GY, Tensor::GW]);
    let Work::Staged(w) = &k.work else {
        panic!("{plan}")
    };
    assert_eq!(w.pass, StagedPass::Backward);
    assert_eq!(w.tasks, 10 * 6 + 48 * 4);
    assert!(k.workgroup_size >= 32 && k.workgroup_size <= 256);
    assert_eq!(k.workgroup_size % 32, 0);
    // Regions in order and disjoint; odd backward strides; tasks tile 0..tasks.
    let mut end = 0;
    let mut next_task = 0;
    for p in &w.paths {
        assert_eq!(p.s_offset, end);
        assert!(p.s_stride >= p.z_mul && p.s_stride % 2 == 1);
        end += p.tasks() * p.s_stride;
        assert_eq!(p.first_task, next_task);
        next_task += p.tasks();
    }
    assert_eq!(next_task, w.tasks);
    assert_eq!(w.x_stage, end);
    assert_eq!(w.y_stage, w.x_stage + plan.dims.dim_in1);
    assert_eq!(w.gz_stage, w.y_stage + plan.dims.dim_in2);
    assert!(w.shared_len as u64 * 4 <= 48 << 10);
    let weights: u32 = w.paths.iter().map(|p| p.weights()).sum();
    assert_eq!(weights, plan.dims.weight_numel);
    assert!(plan.flops(1) > 0);
}

#[test]
fn dispatch_splitting() {
    // Tiny grids: a batch spans several dispatches.
    let c = Capabilities {
        max_workgroups_per_dim: 6,
        ..caps()
    };
    let tp = diffdock_like(4, 12, false);
    let plan = lower(&tp, Direction::Backward, Dtype::F32, &c).unwrap();
    assert!(plan.max_samples_per_dispatch <= 36, "{plan}");
    check_dir(&tp, Direction::Forward, 40, &c);
    check_dir(&tp, Direction::Backward, 40, &c);
    check_dir(&tp, Direction::DoubleBackward, 40, &c);
}
