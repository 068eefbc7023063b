//! Channel-fused backward (`Work::Channels`): which products qualify, the kernel's bindings,
//! and the interpreter against the oracle and the row-kernel lowering.

mod common;

use common::*;
use equikern_core::{IrrepNormalization as IN, PathNormalization as PN, TensorProduct};
use equikern_plan::{
    interpret, lower, lower_with, Capabilities, Direction, Dtype, LowerOptions, Tensor, Work,
};

fn caps() -> Capabilities {
    Capabilities {
        f64: true,
        workgroup_memory_bytes: 49152,
        max_storage_buffers_per_stage: 16,
        ..Capabilities::webgpu_min()
    }
}

fn fused(tp: &TensorProduct, caps: &Capabilities) -> bool {
    let plan = lower(tp, Direction::Backward, Dtype::F64, caps).unwrap();
    plan.kernels
        .iter()
        .any(|k| matches!(k.work, Work::Channels(_)))
}

/// Interpreted fused forward and backward vs the oracle and vs the row kernels.
fn check(tp: &TensorProduct, batch: usize, caps: &Capabilities) {
    check_dir(tp, Direction::Forward, batch, caps);
    check_dir(tp, Direction::Backward, batch, caps);
    check_dir(tp, Direction::DoubleBackward, batch, caps);
}

fn check_dir(tp: &TensorProduct, dir: Direction, batch: usize, caps: &Capabilities) {
    let plan = lower(tp, dir, Dtype::F64, caps).unwrap();
    assert!(
        plan.kernels
            .iter()
            .any(|k| matches!(k.work, Work::Channels(_))),
        "{dir:?} not fused:\n{plan}"
    );
    let rows = lower_with(
        tp,
        dir,
        Dtype::F64,
        caps,
        LowerOptions {
            channel_fusion: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!rows
        .kernels
        .iter()
        .any(|k| matches!(k.work, Work::Channels(_))));
    let inp = inputs(tp, dir, batch, 11 + batch as u64);
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

fn nequip_like(m: usize, shared: bool, weighted: bool, pn: PN) -> TensorProduct {
    let in1 = format!("{m}x0e+{m}x1o+{m}x2e");
    let out = format!("{m}x0e+{m}x1o+{m}x1o+{m}x2o+{m}x1e");
    build(
        &in1,
        "1x0e+1x1o+1x2e",
        &out,
        &[
            Ins(0, 0, 0, "uvu", weighted, 1.0),
            Ins(0, 1, 1, "uvu", weighted, 1.0),
            Ins(1, 0, 2, "uvu", weighted, 0.5),
            Ins(2, 1, 2, "uvu", weighted, 1.0),
            Ins(1, 2, 3, "uvu", weighted, 2.0),
            Ins(1, 1, 4, "uvu", weighted, 1.0),
        ],
        shared,
        IN::Component,
        pn,
    )
}

#[test]
fn per_sample_shared_unweighted() {
    for (m, shared, weighted) in [
        (8, false, true),
        (16, true, true),
        (8, false, false),
        (48, false, true),
    ] {
        for pn in [PN::Element, PN::Path, PN::None] {
            let tp = nequip_like(m, shared, weighted, pn);
            for batch in [1, 3, 7] {
                check(&tp, batch, &caps());
            }
        }
    }
}

#[test]
fn y_multiplicity_and_blocks_nobody_reads() {
    // y blocks of multiplicity 2 and 3; x block 2 and y block 2 feed no path (gx/gy zeros);
    // output block 3 is written by nobody.
    let tp = build(
        "8x1o+8x0e+8x2e",
        "2x0e+3x1e+1x2o",
        "8x1o+8x2o+8x0e+8x3e",
        &[
            Ins(0, 0, 0, "uvu", true, 1.0),
            Ins(0, 1, 1, "uvu", true, 1.0),
            Ins(1, 0, 2, "uvu", true, 1.0),
        ],
        false,
        IN::Norm,
        PN::Element,
    );
    check(&tp, 5, &caps());
}

#[test]
fn dispatch_splitting() {
    let tp = nequip_like(16, false, true, PN::Element);
    let c = Capabilities {
        max_storage_binding_bytes: (tp.dim_out * 8 * 3) as u64,
        max_workgroups_per_dim: 4,
        ..caps()
    };
    let plan = lower(&tp, Direction::Backward, Dtype::F64, &c).unwrap();
    assert!(
        plan.max_samples_per_dispatch < 10,
        "{}",
        plan.max_samples_per_dispatch
    );
    check(&tp, 10, &c);
}

#[test]
fn who_qualifies() {
    let c = caps();
    assert!(fused(&nequip_like(32, false, true, PN::Element), &c));
    // Too few channels, mixed modes, uvw: row kernels.
    assert!(!fused(&nequip_like(4, false, true, PN::Element), &c));
    let uvw = build(
        "16x1o",
        "1x1o",
        "16x0e",
        &[Ins(0, 0, 0, "uvw", true, 1.0)],
        false,
        IN::Component,
        PN::Element,
    );
    assert!(!fused(&uvw, &c));
    // The gy reduction must fit workgroup memory.
    let small = Capabilities {
        workgroup_memory_bytes: 1024,
        ..c
    };
    assert!(!fused(&nequip_like(32, false, true, PN::Element), &small));
    // A double backward binds 11 tensors: not under WebGPU's 8.
    let few = Capabilities {
        max_storage_buffers_per_stage: 8,
        ..c
    };
    let tp = nequip_like(32, false, true, PN::Element);
    let db = lower(&tp, Direction::DoubleBackward, Dtype::F64, &few).unwrap();
    assert!(db
        .kernels
        .iter()
        .all(|k| matches!(k.work, Work::Rows { .. })));
    assert!(fused(&tp, &few));
    // Opting out.
    let plan = lower_with(
        &nequip_like(32, false, true, PN::Element),
        Direction::Backward,
        Dtype::F64,
        &c,
        LowerOptions {
            channel_fusion: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(plan
        .kernels
        .iter()
        .all(|k| matches!(k.work, Work::Rows { .. })));
}

#[test]
fn bindings() {
    use Tensor::*;
    let io = |tp: &TensorProduct| {
        lower(tp, Direction::Backward, Dtype::F32, &caps())
            .unwrap()
            .kernels
            .iter()
            .map(|k| (k.name.clone(), k.inputs.clone(), k.outputs.clone()))
            .collect::<Vec<_>>()
    };
    let f = "backward_fused".to_string();
    assert_eq!(
        io(&nequip_like(32, false, true, PN::Element)),
        vec![(f.clone(), vec![X, Y, W, GZ], vec![GX, GY, GW])]
    );
    assert_eq!(
        io(&nequip_like(32, false, false, PN::Element)),
        vec![(f.clone(), vec![X, Y, GZ], vec![GX, GY])]
    );
    let sh = io(&nequip_like(32, true, true, PN::Element));
    assert_eq!(sh[0], (f, vec![X, Y, W, GZ], vec![GX, GY]));
    assert_eq!(sh.last().unwrap().2, vec![GW]);
}

#[test]
fn paper_suite_fuses_mace_and_nequip() {
    let c = Capabilities::cuda_sm90();
    for (label, tp) in paper_suite() {
        let plan = lower(&tp, Direction::Backward, Dtype::F32, &c).unwrap();
        let f = plan
            .kernels
            .iter()
            .any(|k| matches!(k.work, Work::Channels(_)));
        let expect = label.starts_with("mace") || label.starts_with("nequip");
        assert_eq!(f, expect, "{label}\n{plan}");
        if f {
            let c64 = Capabilities { f64: true, ..c };
            for d in [Direction::Backward, Direction::DoubleBackward] {
                check_dir(&tp, d, 2, &c64);
            }
            // Forward: fused only over few output blocks (MACE, NequIP aspirin/water).
            let nb = tp.spec.irreps_out.0.iter().filter(|m| m.mul > 0).count();
            let fwd = lower(&tp, Direction::Forward, Dtype::F32, &c).unwrap();
            let ff = fwd
                .kernels
                .iter()
                .any(|k| matches!(k.work, Work::Channels(_)));
            assert_eq!(ff, nb <= 24, "{label}: {nb} output blocks");
            if ff {
                check_dir(&tp, Direction::Forward, 2, &c64);
            }
        }
    }
}

#[test]
fn mixed_weighted_and_unweighted_instructions() {
    for shared in [false, true] {
        let tp = build(
            "16x0e+16x1o",
            "1x0e+1x1o",
            "16x0e+16x1o+16x1o+16x1e",
            &[
                Ins(0, 0, 0, "uvu", true, 1.0),
                Ins(0, 1, 1, "uvu", false, 1.0),
                Ins(1, 0, 2, "uvu", true, 0.5),
                Ins(1, 1, 3, "uvu", false, 1.0),
                Ins(1, 1, 0, "uvu", true, 1.0),
            ],
            shared,
            IN::Component,
            PN::Element,
        );
        check(&tp, 4, &caps());
    }
}
