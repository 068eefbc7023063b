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

/// Every direction of the product (not the convolution): the backward fused with one
/// invocation per row of the largest block; the forward (staged in workgroup memory) and
/// the double backward not fused (one multiplicity only; the conv forward is fused, see
/// `conv_channels.rs`).
fn check_mixed(tp: &TensorProduct, batch: usize, caps: &Capabilities, what: &str) {
    check_dir(tp, Direction::Backward, batch, caps);
    let plan = lower(tp, Direction::Backward, Dtype::F64, caps).unwrap();
    let c = plan
        .kernels
        .iter()
        .find_map(|k| match &k.work {
            Work::Channels(c) => Some(c),
            _ => None,
        })
        .unwrap();
    let top = tp.spec.irreps_in1.0.iter().map(|m| m.mul).max().unwrap();
    assert_eq!(c.channels as usize, top, "{what}");
    assert!(!c.uniform(), "{what}: one multiplicity");
    for p in &c.paths {
        let m1 = tp.spec.irreps_in1.0[tp.spec.instructions[p.path as usize].i_in1].mul;
        assert_eq!(c.path_mul(p) as usize, m1, "{what}");
    }
    for d in [Direction::Forward, Direction::DoubleBackward] {
        let p = lower(tp, d, Dtype::F64, caps).unwrap();
        assert!(
            !p.kernels
                .iter()
                .any(|k| matches!(k.work, Work::Channels(_))),
            "{what} {d:?} fused with mixed multiplicities"
        );
    }
}

/// SevenNet-0's convolution product: `128x0e+64x1e+32x2e ⊗ 1x0e+1x1e+1x2e`, every `uvu` path.
#[test]
fn mixed_multiplicities_sevennet_like() {
    use equikern_core::spec::builders::channelwise;
    for shared in [false, true] {
        let mut spec = channelwise(
            &irreps("128x0e+64x1e+32x2e"),
            &irreps("1x0e+1x1e+1x2e"),
            &irreps("0e+1e+2e"),
            false,
        );
        spec.shared_weights = shared;
        let tp = build_spec(spec);
        check_mixed(&tp, 3, &caps(), &format!("sevennet shared={shared}"));
    }
}

/// Random `uvu` products over `x` blocks of random multiplicities (largest ≥ 8), random
/// `y` multiplicities, a random subset of paths, some unweighted.
#[test]
fn mixed_multiplicities_random() {
    use equikern_core::spec::builders::channelwise;
    use rand::{Rng, SeedableRng};
    let irs = ["0e", "1o", "1e", "2e", "2o"];
    let mut ran = 0;
    for seed in 0..8u64 {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n1 = r.random_range(2..5usize);
        let mut muls: Vec<usize> = (0..n1).map(|_| r.random_range(1..17usize)).collect();
        muls[r.random_range(0..n1)] = r.random_range(8..20usize);
        if muls.iter().all(|&m| m == muls[0]) {
            muls[0] += 1;
        }
        let in1: Vec<String> = muls
            .iter()
            .map(|m| format!("{m}x{}", irs[r.random_range(0..irs.len())]))
            .collect();
        let in2: Vec<String> = (0..r.random_range(1..4usize))
            .map(|_| format!("{}x{}", r.random_range(1..3), irs[r.random_range(0..3)]))
            .collect();
        let mut spec = channelwise(
            &irreps(&in1.join("+")),
            &irreps(&in2.join("+")),
            &irreps("0e+0o+1o+1e+2e+2o"),
            false,
        );
        // Drop some paths (their output blocks stay, unwritten by any path: gz unread).
        let keep: Vec<bool> = (0..spec.instructions.len())
            .map(|_| r.random_range(0..4) != 0)
            .collect();
        let mut k = keep.iter();
        spec.instructions.retain(|_| *k.next().unwrap());
        if spec.instructions.is_empty() {
            continue;
        }
        for i in &mut spec.instructions {
            i.has_weight = r.random_range(0..3) != 0;
        }
        spec.shared_weights = r.random_range(0..3) == 0;
        let what = format!("seed {seed}: {} ⊗ {}", in1.join("+"), in2.join("+"));
        let tp = build_spec(spec);
        let used: Vec<usize> = tp
            .spec
            .instructions
            .iter()
            .map(|i| tp.spec.irreps_in1.0[i.i_in1].mul)
            .collect();
        if used.iter().all(|&m| m == used[0]) && muls.iter().all(|&m| m == muls[0]) {
            continue;
        }
        check_mixed(&tp, 5, &caps(), &what);
        ran += 1;
    }
    assert!(ran >= 4, "only {ran} random products ran");
}
