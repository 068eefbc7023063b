//! Convolution plans: lowered, interpreted on the CPU as a GPU would run them, and compared
//! with the conv oracle (f64, rel L2 ≤ 1e-12) on directed, skewed and radius graphs.

#[path = "../../equikern-core/tests/conv_common/mod.rs"]
mod conv_common;

use conv_common::*;
use equikern_core::conv::{ConvOracle, Csr};
use equikern_core::graph::{diamond, radius_graph, random_skewed, DIAMOND_A};
use equikern_core::TensorProduct;
use equikern_plan::{
    interpret_conv, lower, lower_conv, Capabilities, ConvOptions, Direction, Dtype, KernelPlan,
    PlanError, SampleMode, Tensor, Work,
};
use std::collections::BTreeMap;

const DIRS: [Direction; 3] = [
    Direction::Forward,
    Direction::Backward,
    Direction::DoubleBackward,
];
const TOL: f64 = 1e-12;
const DET: ConvOptions = ConvOptions {
    atomic: false,
    max_piece_edges: None,
};
const ATOMIC: ConvOptions = ConvOptions {
    atomic: true,
    max_piece_edges: None,
};
/// Balanced deterministic: pieces of at most 3 edges (hubs get many pieces).
const PIECES: ConvOptions = ConvOptions {
    atomic: false,
    max_piece_edges: Some(3),
};

fn caps64() -> Capabilities {
    Capabilities {
        f64: true,
        ..Capabilities::webgpu_min()
    }
}

/// A CUDA-like target: float atomics, no practical binding-count limit.
fn caps_atomic() -> Capabilities {
    Capabilities {
        float_atomics: true,
        max_storage_buffers_per_stage: 64,
        ..caps64()
    }
}

/// Grids so small that every kernel needs several dispatches.
fn tiny(base: Capabilities) -> Capabilities {
    Capabilities {
        subgroup_size: 4,
        max_invocations_per_workgroup: 6,
        max_workgroups_per_dim: 8,
        ..base
    }
}

fn graphs() -> Vec<(&'static str, Csr)> {
    let (n, r, s) = directed();
    let (rr, ss) = random_skewed(60, 500, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([2, 2, 3], DIAMOND_A), 2.6).unwrap();
    vec![
        ("directed", Csr::build(n, &r, &s).unwrap()),
        ("skewed", Csr::build(60, &rr, &ss).unwrap()),
        ("diamond", Csr::build(96, &d.receiver, &d.sender).unwrap()),
    ]
}

fn tps() -> Vec<(&'static str, TensorProduct)> {
    vec![
        ("uvu per-edge", uvu_per_edge()),
        ("uvw shared", uvw_shared()),
        ("uvu unweighted", uvu_unweighted()),
    ]
}

fn inputs(tp: &TensorProduct, g: &Csr, seed: u64) -> BTreeMap<Tensor, Vec<f64>> {
    let mut r = rng(seed);
    let wl = ConvOracle::<f64>::new(tp).unwrap().weight_len(g.edges());
    let (n, e) = (g.nodes, g.edges());
    use Tensor::*;
    BTreeMap::from([
        (X, randv(&mut r, n * tp.dim_in1)),
        (Y, randv(&mut r, e * tp.dim_in2)),
        (W, randv(&mut r, wl)),
        (GZ, randv(&mut r, n * tp.dim_out)),
        (HX, randv(&mut r, n * tp.dim_in1)),
        (HY, randv(&mut r, e * tp.dim_in2)),
        (HW, randv(&mut r, wl)),
    ])
}

fn oracle(
    tp: &TensorProduct,
    g: &Csr,
    dir: Direction,
    i: &BTreeMap<Tensor, Vec<f64>>,
) -> BTreeMap<Tensor, Vec<f64>> {
    equikern_plan::conv::reference(tp, g, dir, i).unwrap()
}

/// Lower, interpret, compare with the oracle; returns the outputs and the worst error.
fn check(
    tp: &TensorProduct,
    g: &Csr,
    dir: Direction,
    caps: &Capabilities,
    opts: ConvOptions,
    what: &str,
) -> (BTreeMap<Tensor, Vec<f64>>, f64) {
    let plan =
        lower_conv(tp, dir, Dtype::F64, caps, opts).unwrap_or_else(|e| panic!("{what}: {e}"));
    let inp = inputs(tp, g, 3);
    let got = interpret_conv(&plan, g, &inp).unwrap_or_else(|e| panic!("{what}: {e}\n{plan}"));
    let want = oracle(tp, g, dir, &inp);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}"
    );
    let mut worst: f64 = 0.0;
    for (t, w) in &want {
        let e = rel_l2_nan(&got[t], w);
        assert!(e <= TOL, "{what} {t:?}: rel L2 {e:e}\n{plan}");
        worst = worst.max(e);
    }
    (got, worst)
}

fn rel_l2_nan(got: &[f64], want: &[f64]) -> f64 {
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    rel_l2(got, want)
}

#[test]
fn every_mode_matches_the_oracle() {
    for (gn, g) in graphs() {
        for (tn, tp) in tps() {
            for dir in DIRS {
                for (mn, caps, opts) in [
                    ("deterministic", caps64(), DET),
                    ("deterministic tiny", tiny(caps64()), DET),
                    ("pieces", caps64(), PIECES),
                    ("pieces tiny", tiny(caps64()), PIECES),
                    ("atomic", caps_atomic(), ATOMIC),
                    ("atomic tiny", tiny(caps_atomic()), ATOMIC),
                ] {
                    let what = format!("{gn} {tn} {dir:?} {mn}");
                    let (_, e) = check(&tp, &g, dir, &caps, opts, &what);
                    eprintln!("{what}: rel L2 {e:.2e}");
                }
            }
        }
    }
}

#[test]
fn tiny_caps_split_into_several_dispatches() {
    let (_, g) = graphs().remove(1);
    let tp = uvu_per_edge();
    for (dir, opts) in DIRS.into_iter().flat_map(|d| [(d, DET), (d, PIECES)]) {
        let plan = lower_conv(&tp, dir, Dtype::F64, &tiny(caps64()), opts).unwrap();
        let gs = plan.graph_size(&g);
        for k in 0..plan.kernels.len() {
            if !matches!(plan.kernels[k].work, Work::ReduceChunks { .. }) {
                let units = plan.conv_unit_count(k, &gs);
                assert!(plan.dispatches(units).count() > 1, "{dir:?} kernel {k}");
            }
        }
    }
}

#[test]
fn deterministic_is_bit_identical() {
    let (_, g) = graphs().remove(1);
    for (_, tp) in tps() {
        for dir in DIRS {
            let a = check(&tp, &g, dir, &caps64(), DET, "a").0;
            let b = check(&tp, &g, dir, &caps64(), DET, "b").0;
            assert_eq!(a, b);
            // The dispatch split does not change any sum's order either.
            let c = check(&tp, &g, dir, &tiny(caps64()), DET, "c").0;
            assert_eq!(a, c, "{dir:?}");
            let p = check(&tp, &g, dir, &caps64(), PIECES, "p").0;
            let q = check(&tp, &g, dir, &tiny(caps64()), PIECES, "q").0;
            assert_eq!(p, q, "{dir:?} pieces");
        }
    }
}

#[test]
fn isolated_nodes_get_zeros() {
    let (n, r, s) = directed();
    let g = Csr::build(n, &r, &s).unwrap();
    let tp = uvu_per_edge();
    for opts in [DET, ATOMIC, PIECES] {
        let (z, _) = check(&tp, &g, Direction::Forward, &caps_atomic(), opts, "iso");
        let z = &z[&Tensor::Z];
        assert!(z[5 * tp.dim_out..].iter().all(|&v| v == 0.0));
        assert!(z[..tp.dim_out].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn deterministic_plans_fit_webgpu_bindings() {
    for (_, tp) in tps() {
        for (dir, opts) in DIRS.into_iter().flat_map(|d| [(d, DET), (d, PIECES)]) {
            let plan = lower_conv(&tp, dir, Dtype::F32, &Capabilities::webgpu_min(), opts).unwrap();
            for k in &plan.kernels {
                assert!(k.inputs.len() + k.outputs.len() <= 8, "{}", k.name);
                if let Work::Rows {
                    sample_mode: SampleMode::Segments { .. },
                    ..
                } = k.work
                {
                    // A CSR kernel binds its view, never the raw index arrays.
                    assert!(!k.inputs.contains(&Tensor::Sender));
                    assert!(!k.inputs.contains(&Tensor::Receiver));
                }
            }
        }
    }
}

#[test]
fn atomic_needs_float_atomics() {
    let e = lower_conv(
        &uvu_per_edge(),
        Direction::Forward,
        Dtype::F32,
        &Capabilities::webgpu_min(),
        ATOMIC,
    )
    .unwrap_err();
    assert!(e.to_string().contains("float_atomics"), "{e}");
}

#[test]
fn graph_too_large_for_a_binding() {
    let caps = Capabilities {
        max_storage_binding_bytes: 1024,
        ..caps64()
    };
    let plan = lower_conv(&uvu_per_edge(), Direction::Forward, Dtype::F64, &caps, DET).unwrap();
    let (_, g) = graphs().remove(1);
    let e = interpret_conv(&plan, &g, &inputs(&uvu_per_edge(), &g, 1)).unwrap_err();
    assert!(matches!(e, PlanError::GraphTooLarge { .. }), "{e}");
    let one = equikern_plan::conv::GraphSize {
        nodes: 1,
        edges: 1,
        recv_pieces: 0,
        send_pieces: 0,
        weight_fold: 0,
    };
    assert!(plan.check_graph(&one).is_ok());
}

#[test]
fn wrong_input_length_is_an_error() {
    let (_, g) = graphs().remove(0);
    let tp = uvu_per_edge();
    let plan = lower_conv(&tp, Direction::Forward, Dtype::F64, &caps64(), DET).unwrap();
    let mut inp = inputs(&tp, &g, 1);
    inp.get_mut(&Tensor::Y).unwrap().pop();
    let e = interpret_conv(&plan, &g, &inp).unwrap_err();
    assert!(
        matches!(
            e,
            PlanError::InputLength {
                tensor: Tensor::Y,
                ..
            }
        ),
        "{e}"
    );
}

/// Tensor-product plans are unchanged by the convolution: no `conv` key in their serde form,
/// and the TP interpreter refuses convolution plans.
#[test]
fn tp_plans_untouched() {
    let tp = uvu_per_edge();
    let p: KernelPlan = lower(&tp, Direction::Forward, Dtype::F64, &caps64()).unwrap();
    assert!(!serde_json::to_string(&p).unwrap().contains("conv"));
    let c = lower_conv(&tp, Direction::Forward, Dtype::F64, &caps64(), DET).unwrap();
    let back: KernelPlan = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    assert!(equikern_plan::interpret(&c, 1, &BTreeMap::new()).is_err());
}

/// Paper-suite products (uvu per-edge, uvw shared) on a radius graph of protein atoms.
#[test]
fn suite_problems_on_a_protein_graph() {
    let text = include_str!("../../../tests/data/structures/adk_4ake.pdb");
    let mut s = equikern_core::graph::read_pdb(text).unwrap();
    s.positions.truncate(30);
    let rg = radius_graph(&s, 4.0).unwrap();
    let g = Csr::build(30, &rg.receiver, &rg.sender).unwrap();
    eprintln!("protein slice: 30 atoms, {} edges", g.edges());
    let suite = equikern_core::spec::load_suite(include_str!("data/paper_suite.json")).unwrap();
    for (label, spec) in suite {
        if !["nequip-water", "DiffDock-L=1", "tetris-poly-2"].contains(&label.as_str()) {
            continue;
        }
        let tp = spec.build().unwrap();
        for dir in DIRS {
            for (caps, opts) in [(caps64(), DET), (caps_atomic(), ATOMIC), (caps64(), PIECES)] {
                let what = format!("{label} {dir:?} atomic={}", opts.atomic);
                let (_, e) = check(&tp, &g, dir, &caps, opts, &what);
                eprintln!("{what}: rel L2 {e:.2e}");
            }
        }
    }
}

#[test]
fn piece_options_are_checked() {
    let tp = uvu_per_edge();
    let bad = ConvOptions {
        atomic: true,
        max_piece_edges: Some(4),
    };
    let e = lower_conv(&tp, Direction::Forward, Dtype::F64, &caps_atomic(), bad).unwrap_err();
    assert!(e.to_string().contains("max_piece_edges"), "{e}");
    let zero = ConvOptions {
        atomic: false,
        max_piece_edges: Some(0),
    };
    let e = lower_conv(&tp, Direction::Forward, Dtype::F64, &caps64(), zero).unwrap_err();
    assert!(e.to_string().contains("max_piece_edges"), "{e}");
}

/// With pieces, the hub of a skewed graph is spread: no invocation sums more than the piece
/// length, and the pieces count stays ≤ nodes + edges / length.
#[test]
fn pieces_bound_the_work_per_invocation() {
    let (r, s) = random_skewed(200, 5000, 1.3, 5).unwrap();
    let g = Csr::build(200, &r, &s).unwrap();
    let hub = g
        .recv_offsets
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    let plan = lower_conv(
        &uvu_per_edge(),
        Direction::Forward,
        Dtype::F64,
        &caps64(),
        PIECES,
    )
    .unwrap();
    let gs = plan.graph_size(&g);
    let (po, ps, _) = g.pieces(equikern_core::conv::End::Receiver, 3);
    let longest = ps.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    eprintln!(
        "hub in-degree {hub}; {} pieces, longest {longest}",
        gs.recv_pieces
    );
    assert!(longest <= 3 && hub > 100);
    assert_eq!(gs.recv_pieces as usize, *po.last().unwrap() as usize);
    assert!(gs.recv_pieces <= 200 + 5000 / 3);
}

/// A graph without edges: node outputs are zeros, edge outputs empty, shared-weight
/// gradients zero (no chunks to reduce).
#[test]
fn empty_graph() {
    let g = Csr::build::<u32>(4, &[], &[]).unwrap();
    for (_, tp) in tps() {
        for dir in DIRS {
            for opts in [DET, PIECES] {
                let (got, _) = check(&tp, &g, dir, &caps64(), opts, "empty");
                for (t, v) in &got {
                    assert!(v.iter().all(|&x| x == 0.0), "{dir:?} {t:?}");
                }
            }
        }
    }
}
