//! Lowering + interpreter vs an independent scatter-form reference of the trilinear form.

mod common;

use common::*;
use equikern_core::{IrrepNormalization as IN, PathNormalization as PN, TensorProduct};
use equikern_plan::{interpret, lower, Capabilities, Direction, Dtype, PlanError, Tensor, Work};

const DIRS: [Direction; 3] = [
    Direction::Forward,
    Direction::Backward,
    Direction::DoubleBackward,
];
const TOL: f64 = 1e-12;

fn caps64() -> Capabilities {
    Capabilities {
        f64: true,
        ..Capabilities::webgpu_min()
    }
}

/// Caps so small that batches of a few samples need several dispatches and 2-D grids.
fn tiny_caps(tp: &TensorProduct) -> Capabilities {
    let widest = tp
        .dim_in1
        .max(tp.dim_in2)
        .max(tp.dim_out)
        .max(tp.weight_numel) as u64;
    Capabilities {
        subgroup_size: 4,
        max_invocations_per_workgroup: 6,
        max_storage_binding_bytes: widest * 8 * 3,
        max_workgroups_per_dim: 16,
        ..caps64()
    }
}

/// Lower, interpret, compare every output; returns the worst relative L2 error.
fn check(tp: &TensorProduct, dir: Direction, batch: usize, caps: &Capabilities) -> f64 {
    let plan = lower(tp, dir, Dtype::F64, caps).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
    let inp = inputs(tp, dir, batch, 7 + batch as u64);
    let got = interpret(&plan, batch, &inp).unwrap_or_else(|e| panic!("{dir:?}: {e}\n{plan}"));
    let mut worst: f64 = 0.0;
    // Against the core oracle, and against the scatter-form reference of the tests.
    for (name, want) in [
        ("oracle", oracle(tp, dir, batch, &inp)),
        ("scatter", reference(tp, dir, batch, &inp)),
    ] {
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{dir:?} outputs"
        );
        for (t, w) in &want {
            let e = rel_l2(&got[t], w);
            assert!(e <= TOL, "{name} {dir:?} {t:?}: rel L2 {e:e}\n{plan}");
            worst = worst.max(e);
        }
    }
    eprintln!("rel-l2 {dir:?} batch {batch}: {worst:.3e}");
    worst
}

fn check_all(tp: &TensorProduct, batches: &[usize]) {
    for dir in DIRS {
        for &b in batches {
            check(tp, dir, b, &caps64());
        }
    }
}

fn one(
    in1: &str,
    in2: &str,
    out: &str,
    mode: &'static str,
    w: bool,
    shared: bool,
) -> TensorProduct {
    build(
        in1,
        in2,
        out,
        &[Ins(0, 0, 0, mode, w, 1.0)],
        shared,
        IN::Component,
        PN::Element,
    )
}

/// (in1, in2, out, mode, may be unweighted)
const MODES: [(&str, &str, &str, &str, bool); 8] = [
    ("3x1o", "2x2e", "4x2o", "uvw", false),
    ("3x1o", "2x1o", "3x2e", "uvu", true),
    ("3x2e", "2x1o", "2x1o", "uvv", true),
    ("3x1o", "3x1o", "2x0e", "uuw", false),
    ("3x1o", "3x1o", "3x1e", "uuu", true),
    ("2x1o", "3x0e", "6x1o", "uvuv", true),
    ("4x1o", "4x1o", "6x0e", "uvu<v", true),
    ("4x1o", "4x1o", "3x2e", "u<vw", false),
];

#[test]
fn every_mode_weighted_per_sample_and_shared() {
    for (a, b, o, m, _) in MODES {
        for shared in [false, true] {
            check_all(&one(a, b, o, m, true, shared), &[1, 7]);
        }
    }
}

#[test]
fn every_mode_unweighted() {
    for (a, b, o, m, unw) in MODES {
        if unw {
            check_all(&one(a, b, o, m, false, false), &[1, 7]);
        }
    }
    // Unweighted uuw needs a single output copy.
    check_all(&one("3x1o", "3x1o", "1x0e", "uuw", false, false), &[1, 7]);
}

fn mixed(shared: bool, irn: IN, pn: PN) -> TensorProduct {
    build(
        "3x0e+3x1o+2x2o",
        "3x0e+3x1o+1x3e",
        "3x0e+3x1o+4x1e+2x0o+3x0e+9x1o",
        &[
            Ins(0, 0, 0, "uvu", true, 1.0),
            Ins(1, 1, 0, "uuu", false, 1.0),
            Ins(1, 1, 0, "uvu", true, 4.0),
            Ins(0, 1, 1, "uvw", true, 1.0),
            Ins(1, 0, 1, "uvv", false, 0.5),
            Ins(1, 1, 2, "u<vw", true, 1.0),
            Ins(1, 1, 2, "uuw", true, 1.0),
            Ins(1, 1, 4, "uvu<v", true, 1.0),
            Ins(0, 1, 5, "uvuv", true, 1.0),
        ],
        shared,
        irn,
        pn,
    )
}

#[test]
fn mixed_modes_several_into_one_output_and_unwritten_blocks() {
    for shared in [false, true] {
        check_all(&mixed(shared, IN::Component, PN::Element), &[0, 1, 7]);
    }
    // Block 3 (2x0o) is written with zeros by the forward plan.
    let tp = mixed(false, IN::Component, PN::Element);
    let plan = lower(&tp, Direction::Forward, Dtype::F64, &caps64()).unwrap();
    let Work::Rows { segments, .. } = &plan.kernels[0].work else {
        panic!()
    };
    assert_eq!(segments.len(), 6);
    assert!(segments[3].contributions.is_empty());
    let z = &interpret(&plan, 2, &inputs(&tp, Direction::Forward, 2, 1)).unwrap()[&Tensor::Z];
    let off = segments[3].out_offset as usize;
    assert!(z[off..off + 2].iter().all(|&v| v == 0.0));
}

#[test]
fn all_normalisations() {
    for irn in [IN::Component, IN::Norm, IN::None] {
        for pn in [PN::Element, PN::Path, PN::None] {
            for dir in DIRS {
                check(&mixed(false, irn, pn), dir, 3, &caps64());
            }
        }
    }
}

#[test]
fn high_l() {
    let tp = build(
        "2x6e+1x3o",
        "2x5o",
        "2x6o+1x4e+2x2o",
        &[
            Ins(0, 0, 0, "uvu", true, 1.0),
            Ins(1, 0, 1, "uvw", true, 1.0),
            Ins(0, 0, 2, "uvv", true, 1.0),
        ],
        false,
        IN::Component,
        PN::Element,
    );
    check_all(&tp, &[2]);
}

#[test]
fn dispatch_splitting_and_2d_grid() {
    for shared in [false, true] {
        let tp = mixed(shared, IN::Component, PN::Element);
        let caps = tiny_caps(&tp);
        for dir in DIRS {
            let plan = lower(&tp, dir, Dtype::F64, &caps).unwrap();
            assert!(
                plan.max_samples_per_dispatch <= 4,
                "{}",
                plan.max_samples_per_dispatch
            );
            assert!(
                plan.kernels.iter().any(|k| k.grid(
                    k.invocations(plan.max_samples_per_dispatch as u64),
                    caps.max_workgroups_per_dim
                )[1] > 1)
                    || dir == Direction::Forward
            );
            assert!(plan.max_samples_per_dispatch >= 1);
            if let Some(c) = plan.chunk_size() {
                assert_eq!(plan.max_samples_per_dispatch % c, 0);
            }
            for batch in [0, 1, 7, 10] {
                check(&tp, dir, batch, &caps);
            }
        }
    }
}

#[test]
fn binding_too_small_is_an_error() {
    let tp = mixed(false, IN::Component, PN::Element);
    let caps = Capabilities {
        max_storage_binding_bytes: 16,
        ..caps64()
    };
    let e = lower(&tp, Direction::Forward, Dtype::F64, &caps).unwrap_err();
    assert!(matches!(e, PlanError::BindingTooSmall { .. }), "{e}");
    assert!(e.to_string().contains("bytes per sample"));
    let e = lower(
        &tp,
        Direction::Forward,
        Dtype::F64,
        &Capabilities::webgpu_min(),
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::Caps(_)));
}

#[test]
fn binding_limit_splits_kernels() {
    let tp = mixed(false, IN::Component, PN::Element);
    for max in [7u32, 8, 9, 10, 16] {
        let caps = Capabilities {
            max_storage_buffers_per_stage: max,
            ..caps64()
        };
        // Double backward: one kernel per output (DGZ, DX, DY, DW), whatever the limit.
        let plan = lower(&tp, Direction::DoubleBackward, Dtype::F64, &caps).unwrap();
        let main = plan.kernels.iter().filter(|k| !k.name.ends_with("_parts"));
        assert_eq!(main.count(), 4, "max {max}");
        for dir in DIRS {
            let plan = lower(&tp, dir, Dtype::F64, &caps).unwrap();
            for k in &plan.kernels {
                assert!(
                    (k.inputs.len() + k.outputs.len()) as u32 <= max,
                    "{}",
                    k.name
                );
            }
            check(&tp, dir, 3, &caps);
        }
    }
    // DGZ alone reads six tensors.
    let caps = Capabilities {
        max_storage_buffers_per_stage: 6,
        ..caps64()
    };
    lower(&tp, Direction::Backward, Dtype::F64, &caps).unwrap();
    let e = lower(&tp, Direction::DoubleBackward, Dtype::F64, &caps).unwrap_err();
    assert!(matches!(e, PlanError::TooManyBindings { .. }), "{e}");
}

#[test]
fn kernel_structure() {
    use Tensor::*;
    let per = mixed(false, IN::Component, PN::Element);
    let sh = mixed(true, IN::Component, PN::Element);
    let c = caps64();
    // Split gathers (`*_parts` kernels and their Scratch input) aside.
    let io = |tp, d| {
        lower(tp, d, Dtype::F64, &c)
            .unwrap()
            .kernels
            .iter()
            .filter(|k| !k.name.ends_with("_parts"))
            .map(|k| {
                let ins = k.inputs.iter().filter(|&&t| t != Scratch).copied();
                (ins.collect(), k.outputs.clone())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(io(&per, Direction::Forward), vec![(vec![X, Y, W], vec![Z])]);
    assert_eq!(
        io(&per, Direction::Backward),
        vec![
            (vec![Y, W, GZ], vec![GX]),
            (vec![X, W, GZ], vec![GY]),
            (vec![X, Y, GZ], vec![GW])
        ]
    );
    assert_eq!(
        io(&sh, Direction::Backward),
        vec![
            (vec![Y, W, GZ], vec![GX]),
            (vec![X, W, GZ], vec![GY]),
            (vec![X, Y, GZ], vec![WPartial]),
            (vec![WPartial], vec![GW])
        ]
    );
    let db = io(&per, Direction::DoubleBackward);
    assert_eq!(db[0], (vec![X, Y, W, HX, HY, HW], vec![DGZ]));
    assert!(db.len() >= 2);
}

#[test]
fn hash_display_counts() {
    let tp = mixed(false, IN::Component, PN::Element);
    let a = lower(
        &tp,
        Direction::Forward,
        Dtype::F32,
        &Capabilities::webgpu_min(),
    )
    .unwrap();
    let b = lower(
        &tp,
        Direction::Forward,
        Dtype::F32,
        &Capabilities::webgpu_min(),
    )
    .unwrap();
    assert_eq!(a.hash_hex(), b.hash_hex());
    assert_eq!(a.hash_hex().len(), 16);
    let c = lower(
        &tp,
        Direction::Backward,
        Dtype::F32,
        &Capabilities::webgpu_min(),
    )
    .unwrap();
    assert_ne!(a.hash_hex(), c.hash_hex());
    let s = a.to_string();
    assert!(
        s.contains("kernel forward") && s.contains("zeros") && s.contains("tab"),
        "{s}"
    );
    // Terms per sample = Σ_paths tuples × CG nonzeros.
    let want: u64 = tp
        .paths
        .iter()
        .map(|p| tuples(p).len() as u64 * p.cg.len() as u64)
        .sum();
    assert_eq!(a.terms_per_sample(), want);
    assert!(a.flops(10) > 10 * want);
    let json = serde_json::to_string(&a).unwrap();
    let back: equikern_plan::KernelPlan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, a);
}

#[test]
fn paper_suite_lowers_under_webgpu_min() {
    let caps = Capabilities::webgpu_min();
    for (label, tp) in paper_suite() {
        for dir in DIRS {
            let plan =
                lower(&tp, dir, Dtype::F32, &caps).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert!(plan.max_samples_per_dispatch > 0);
            for k in &plan.kernels {
                assert!(
                    (k.inputs.len() + k.outputs.len()) as u32 <= caps.max_storage_buffers_per_stage
                );
            }
        }
    }
}

#[test]
fn paper_suite_interpreted() {
    for (label, tp) in paper_suite() {
        for dir in DIRS {
            let e = check(&tp, dir, 2, &caps64());
            eprintln!("{label} {dir:?}: {e:.2e}");
        }
    }
}

#[test]
fn batch_beyond_partial_sum_buffer_is_an_error() {
    let tp = mixed(true, IN::Component, PN::Element);
    let caps = tiny_caps(&tp);
    let plan = lower(&tp, Direction::Backward, Dtype::F64, &caps).unwrap();
    let max = plan.max_batch().unwrap() as usize;
    check(&tp, Direction::Backward, max, &caps);
    let inp = inputs(&tp, Direction::Backward, max + 1, 1);
    let e = interpret(&plan, max + 1, &inp).unwrap_err();
    assert!(matches!(e, PlanError::BatchTooLarge { .. }), "{e}");
    // Per-sample weights: no limit.
    let per = mixed(false, IN::Component, PN::Element);
    let plan = lower(&per, Direction::Backward, Dtype::F64, &tiny_caps(&per)).unwrap();
    assert_eq!(plan.max_batch(), None);
}

#[test]
fn degenerate_specs() {
    // No instructions at all: every output is zeros, nothing is read.
    let tp = build(
        "2x1o",
        "1x0e",
        "3x1o+1x0e",
        &[],
        false,
        IN::Component,
        PN::Element,
    );
    check_all(&tp, &[0, 3]);
    let plan = lower(&tp, Direction::Forward, Dtype::F64, &caps64()).unwrap();
    assert!(plan.kernels[0].inputs.is_empty());
    // Zero-multiplicity blocks and an instruction without tuples (u<vw with m = 1).
    let tp = build(
        "0x1o+1x1o+2x0e",
        "1x1o+0x0e+2x0e",
        "0x0e+1x1e+1x0e+3x0e",
        &[
            Ins(0, 0, 0, "uvw", true, 1.0),
            Ins(1, 0, 2, "u<vw", true, 1.0),
            Ins(2, 2, 3, "uvw", true, 1.0),
            Ins(1, 0, 1, "uvu", false, 1.0),
        ],
        false,
        IN::Component,
        PN::Element,
    );
    check_all(&tp, &[0, 1, 7]);
}

/// Random valid specs (seeded): mixed modes, reused and fresh output blocks, random
/// weights/sharing/normalisation, on default and tiny caps.
#[test]
fn random_specs() {
    use equikern_core::{ConnectionMode as M, Instruction, Irrep, Irreps, MulIr, Parity, TpSpec};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let modes = [
        M::Uvw,
        M::Uvu,
        M::Uvv,
        M::Uuw,
        M::Uuu,
        M::Uvuv,
        M::UvuLtV,
        M::ULtVw,
    ];
    for _ in 0..40 {
        let block = |rng: &mut rand_chacha::ChaCha8Rng| MulIr {
            mul: rng.random_range(1..5),
            ir: Irrep {
                l: rng.random_range(0..4),
                p: if rng.random_bool(0.5) {
                    Parity::Even
                } else {
                    Parity::Odd
                },
            },
        };
        let in1: Vec<MulIr> = (0..rng.random_range(1..4))
            .map(|_| block(&mut rng))
            .collect();
        let in2: Vec<MulIr> = (0..rng.random_range(1..4))
            .map(|_| block(&mut rng))
            .collect();
        let mut out: Vec<MulIr> = vec![];
        let mut ins = vec![];
        for _ in 0..rng.random_range(1..6) {
            let (a, b) = (
                rng.random_range(0..in1.len()),
                rng.random_range(0..in2.len()),
            );
            let (m1, m2) = (in1[a].mul, in2[b].mul);
            let mode = modes[rng.random_range(0..modes.len())];
            let weighted = mode.requires_weight() || rng.random_bool(0.7);
            let mo = match mode {
                M::Uvw | M::ULtVw => rng.random_range(1..4),
                M::Uvu => m1,
                M::Uvv => m2,
                M::Uuw if weighted => rng.random_range(1..4),
                M::Uuw => 1,
                M::Uuu => m1,
                M::Uvuv => m1 * m2,
                M::UvuLtV => m1 * (m1.max(1) - 1) / 2,
            };
            if matches!(mode, M::Uuw | M::Uuu | M::UvuLtV | M::ULtVw) && m1 != m2 {
                continue;
            }
            let (l1, l2) = (in1[a].ir.l, in2[b].ir.l);
            let lo = rng.random_range(l1.abs_diff(l2)..=l1 + l2);
            let p = if in1[a].ir.p == in2[b].ir.p {
                Parity::Even
            } else {
                Parity::Odd
            };
            let want = MulIr {
                mul: mo,
                ir: Irrep { l: lo, p },
            };
            let o = match out.iter().position(|m| *m == want) {
                Some(o) if rng.random_bool(0.6) => o,
                _ => {
                    out.push(want);
                    out.len() - 1
                }
            };
            ins.push(
                Instruction::new(a, b, o, mode, weighted)
                    .with_path_weight(rng.random_range(0.5..2.0)),
            );
        }
        if rng.random_bool(0.3) {
            out.push(block(&mut rng)); // nobody writes it
        }
        let mut spec = TpSpec::new(
            Irreps(in1),
            Irreps(in2),
            Irreps(out),
            ins,
            rng.random_bool(0.4),
        );
        spec.irrep_normalization = [IN::Component, IN::Norm, IN::None][rng.random_range(0..3)];
        spec.path_normalization = [PN::Element, PN::Path, PN::None][rng.random_range(0..3)];
        let tp = build_spec(spec);
        for dir in DIRS {
            check(&tp, dir, 3, &caps64());
            check(&tp, dir, 5, &tiny_caps(&tp));
        }
    }
}

/// Long gathers of the paper suite are split (GY rows of mul-1 `y` blocks) and the split
/// plans still match the oracle (`paper_suite_interpreted`); forward never splits.
#[test]
fn long_gathers_split() {
    let caps = Capabilities {
        subgroup_size: 32,
        max_storage_buffers_per_stage: 256,
        max_storage_binding_bytes: 1 << 34,
        ..caps64()
    };
    let mut split = 0;
    for (label, tp) in paper_suite() {
        for d in DIRS {
            let plan = lower(&tp, d, Dtype::F32, &caps).unwrap();
            let parts: Vec<String> = plan
                .kernels
                .iter()
                .filter(|k| k.name.ends_with("_parts"))
                .map(|k| {
                    let Work::Rows {
                        rows_per_sample, ..
                    } = &k.work
                    else {
                        panic!()
                    };
                    format!("{} ({rows_per_sample} rows)", k.name)
                })
                .collect();
            if d == Direction::Forward {
                assert!(parts.is_empty() && plan.dims.scratch == 0, "{label}");
            }
            split += parts.len();
            println!("{label:24} {d:?}: scratch {} {parts:?}", plan.dims.scratch);
        }
    }
    assert!(split > 0);
}

/// Diagnostic: per kernel, rows per sample and loop work (Σ count × (terms + loads)) with the
/// median and longest row, for three paper-suite problems (`--ignored --nocapture`).
#[test]
#[ignore]
fn work_per_kernel() {
    let caps = Capabilities {
        subgroup_size: 32,
        max_storage_buffers_per_stage: 256,
        max_storage_binding_bytes: 1 << 34,
        ..caps64()
    };
    for (label, tp) in paper_suite() {
        if !(label.contains("benzene")
            || label.contains("DiffDock-L=1")
            || label.contains("mace-large"))
        {
            continue;
        }
        println!(
            "{label}: in1 {} in2 {} out {} w {}",
            tp.spec.irreps_in1, tp.spec.irreps_in2, tp.spec.irreps_out, tp.weight_numel
        );
        for d in DIRS {
            let plan = lower(&tp, d, Dtype::F32, &caps).unwrap();
            for k in &plan.kernels {
                let Work::Rows {
                    rows_per_sample,
                    segments,
                    ..
                } = &k.work
                else {
                    continue;
                };
                let mut ws = vec![];
                for s in segments {
                    for r in 0..s.rows {
                        let w: u64 = s
                            .contributions
                            .iter()
                            .map(|c| {
                                let n = c.count.try_eval(r, 0, &plan.tables).unwrap() as u64;
                                n * (c.terms.len() as u64
                                    + c.operands.iter().map(|o| o.row_len as u64).sum::<u64>())
                            })
                            .sum();
                        ws.push(w);
                    }
                }
                let tot: u64 = ws.iter().sum();
                ws.sort();
                println!(
                    "  {:32} rows {rows_per_sample:6} work {tot:9} median {:6} max {:7} segs {}",
                    k.name,
                    ws[ws.len() / 2],
                    ws.last().unwrap(),
                    segments.len()
                );
            }
        }
    }
}
