//! Convolution plans on a wgpu device (lavapipe here) vs the f64 conv oracle: forward,
//! backward, double backward; CSR and piece modes; determinism; graph errors before any kernel.

#[path = "../../equikern-core/tests/conv_common/mod.rs"]
mod conv_common;

use std::collections::BTreeMap;

use conv_common::*;
use equikern_core::conv::{ConvError, ConvOracle, Csr};
use equikern_core::graph::{diamond, radius_graph, random_skewed, DIAMOND_A};
use equikern_core::TensorProduct;
use equikern_plan::{
    lower_conv, lower_conv_with, Capabilities, ConvOptions, Direction, Dtype, LowerOptions, Tensor,
    Work,
};
use equikern_wgpu::{Runtime, RuntimeOptions, WgpuError};

const DET: ConvOptions = ConvOptions {
    atomic: false,
    max_piece_edges: None,
};
const PIECES: ConvOptions = ConvOptions {
    atomic: false,
    max_piece_edges: Some(4),
};

fn runtime() -> Option<Runtime> {
    let opts = RuntimeOptions {
        poison_outputs: true,
        ..Default::default()
    };
    match Runtime::new_blocking(opts) {
        Ok(r) => {
            println!("adapter: {}", r.adapter_name());
            Some(r)
        }
        Err(e) => {
            println!("SKIP: no wgpu adapter ({e})");
            None
        }
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

fn run(
    rt: &Runtime,
    caps: &Capabilities,
    tp: &TensorProduct,
    g: &Csr,
    dir: Direction,
    opts: ConvOptions,
) -> (BTreeMap<Tensor, Vec<f32>>, BTreeMap<Tensor, Vec<f64>>) {
    let plan = lower_conv(tp, dir, Dtype::F32, caps, opts).unwrap();
    let inp = inputs(tp, g, 5);
    let f32s: BTreeMap<Tensor, Vec<f32>> = inp
        .iter()
        .map(|(t, v)| (*t, v.iter().map(|&a| a as f32).collect()))
        .collect();
    let args: Vec<(Tensor, &[f32])> = f32s.iter().map(|(t, v)| (*t, &v[..])).collect();
    let got = rt
        .run_conv_blocking(&plan, g.nodes, &g.receiver, &g.sender, &args)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"));
    (got, oracle(tp, g, dir, &inp))
}

fn rel_l2_f32(got: &[f32], want: &[f64]) -> f64 {
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let g: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    rel_l2(&g, want)
}

#[test]
fn conv_matches_the_oracle_on_the_device() {
    let Some(rt) = runtime() else { return };
    let dev = rt.capabilities();
    // Small grids force several dispatches per kernel (global unit ids via the params).
    let tiny = Capabilities {
        max_workgroups_per_dim: 4,
        ..dev
    };
    let tps = [
        ("uvu per-edge", uvu_per_edge()),
        ("uvw shared", uvw_shared()),
        ("uvu unweighted", uvu_unweighted()),
        // `x` blocks of different multiplicities: the channel-fused forward (groups of 16,
        // 12 and 8 lanes) and backward (guarded rows) where the caps allow them.
        ("uvu multi-mul 16/8/12", uvu_channels_multimul()),
    ];
    let mut worst = [0f64; 3];
    for (gn, g) in graphs() {
        for (tn, tp) in &tps {
            for (di, dir) in [
                Direction::Forward,
                Direction::Backward,
                Direction::DoubleBackward,
            ]
            .into_iter()
            .enumerate()
            {
                for (mn, caps, opts) in [
                    ("csr", dev, DET),
                    ("csr tiny", tiny, DET),
                    ("pieces", dev, PIECES),
                    ("pieces tiny", tiny, PIECES),
                ] {
                    let (got, want) = run(&rt, &caps, tp, &g, dir, opts);
                    assert_eq!(
                        got.keys().collect::<Vec<_>>(),
                        want.keys().collect::<Vec<_>>()
                    );
                    let tol = if dir == Direction::DoubleBackward {
                        1e-4
                    } else {
                        1e-5
                    };
                    for (t, w) in &want {
                        let e = rel_l2_f32(&got[t], w);
                        assert!(e <= tol, "{gn} {tn} {dir:?} {mn} {t:?}: rel L2 {e:e}");
                        worst[di] = worst[di].max(e);
                    }
                }
            }
        }
    }
    println!(
        "worst rel L2 (f32): forward {:.2e}, backward {:.2e}, double backward {:.2e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn conv_is_bit_identical_run_to_run() {
    let Some(rt) = runtime() else { return };
    let dev = rt.capabilities();
    let (_, g) = graphs().remove(1);
    let tp = uvu_per_edge();
    for dir in [
        Direction::Forward,
        Direction::Backward,
        Direction::DoubleBackward,
    ] {
        for opts in [DET, PIECES] {
            let a = run(&rt, &dev, &tp, &g, dir, opts).0;
            let b = run(&rt, &dev, &tp, &g, dir, opts).0;
            let bits = |m: &BTreeMap<Tensor, Vec<f32>>| -> Vec<Vec<u32>> {
                m.values()
                    .map(|v| v.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            assert_eq!(bits(&a), bits(&b), "{dir:?} {opts:?}");
        }
    }
}

#[test]
fn bad_graphs_are_rejected_before_any_kernel() {
    let Some(rt) = runtime() else { return };
    let tp = uvu_per_edge();
    let plan = lower_conv(&tp, Direction::Forward, Dtype::F32, &rt.capabilities(), DET).unwrap();
    let x = vec![0f32; 4 * tp.dim_in1];
    let y = vec![0f32; 3 * tp.dim_in2];
    let w = vec![0f32; 3 * tp.weight_numel];
    let args = [
        (Tensor::X, &x[..]),
        (Tensor::Y, &y[..]),
        (Tensor::W, &w[..]),
    ];
    let e = rt
        .run_conv_blocking(&plan, 4, &[0i64, 4, 1], &[1i64, 2, 3], &args)
        .unwrap_err();
    assert!(
        matches!(
            e,
            WgpuError::Conv(ConvError::Index {
                array: "receiver",
                position: 1,
                value: 4,
                ..
            })
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "receiver[1] = 4 is not a node index (nodes = 4)"
    );
    let e = rt
        .run_conv_blocking(&plan, 4, &[0i32, 1, 2], &[1i32, -2, 3], &args)
        .unwrap_err();
    assert!(e.to_string().starts_with("sender[1] = -2"), "{e}");
    let e = rt
        .run_conv_blocking(&plan, 4, &[0u32, 1], &[1u32, 2, 3], &args)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("receiver has 2 edges but sender has 3"),
        "{e}"
    );
    // Wrong tensor length for the graph: named.
    let e = rt
        .run_conv_blocking(&plan, 4, &[0u32, 1, 2], &[1u32, 2, 3], &args[..2])
        .unwrap_err();
    assert!(e.to_string().contains("W"), "{e}");
    let short = [
        (Tensor::X, &x[1..]),
        (Tensor::Y, &y[..]),
        (Tensor::W, &w[..]),
    ];
    let e = rt
        .run_conv_blocking(&plan, 4, &[0u32, 1, 2], &[1u32, 2, 3], &short)
        .unwrap_err();
    assert!(e.to_string().contains("tensor X"), "{e}");
}

#[test]
fn isolated_nodes_get_zeros_on_the_device() {
    let Some(rt) = runtime() else { return };
    let (n, r, s) = directed();
    let g = Csr::build(n, &r, &s).unwrap();
    let tp = uvu_per_edge();
    for opts in [DET, PIECES] {
        let (got, _) = run(&rt, &rt.capabilities(), &tp, &g, Direction::Forward, opts);
        let z = &got[&Tensor::Z];
        assert!(z[5 * tp.dim_out..].iter().all(|&v| v == 0.0), "{opts:?}");
        assert!(z[..tp.dim_out].iter().all(|&v| v == 0.0), "{opts:?}");
    }
}

#[test]
fn empty_graph_on_the_device() {
    let Some(rt) = runtime() else { return };
    let g = Csr::build::<u32>(3, &[], &[]).unwrap();
    for tp in [uvu_per_edge(), uvw_shared()] {
        for dir in [
            Direction::Forward,
            Direction::Backward,
            Direction::DoubleBackward,
        ] {
            let (got, want) = run(&rt, &rt.capabilities(), &tp, &g, dir, DET);
            for (t, w) in &want {
                assert_eq!(got[t].len(), w.len(), "{dir:?} {t:?}");
                assert!(got[t].iter().all(|&x| x == 0.0), "{dir:?} {t:?}");
            }
        }
    }
}

/// The mixed-multiplicity conv backward with lane groups (SevenNet-like and multi-mul)
/// and without (`conv_backward_lanes: false`), CSR and pieces, on the device: against the
/// f64 oracle, outputs poisoned, bit-identical reruns.
#[test]
fn lane_grouped_backward_on_the_device() {
    let Some(rt) = runtime() else { return };
    let dev = rt.capabilities();
    let (_, g) = graphs().remove(1);
    let mut grouped = 0;
    for (tn, tp) in [
        ("sevennet-like", uvu_sevennet_like()),
        ("multi-mul", uvu_channels_multimul()),
    ] {
        for opts in [DET, PIECES] {
            for lanes in [true, false] {
                let what = format!("{tn} {opts:?} lanes {lanes}");
                let lopts = LowerOptions {
                    conv_backward_lanes: lanes,
                    ..Default::default()
                };
                let plan = lower_conv_with(&tp, Direction::Backward, Dtype::F32, &dev, opts, lopts)
                    .unwrap();
                let Work::Channels(c) = &plan.kernels[0].work else {
                    panic!("{what}: not fused\n{plan}");
                };
                grouped += !c.lane_groups().is_empty() as usize;
                let inp = inputs(&tp, &g, 5);
                let f32s: BTreeMap<Tensor, Vec<f32>> = inp
                    .iter()
                    .map(|(t, v)| (*t, v.iter().map(|&a| a as f32).collect()))
                    .collect();
                let args: Vec<(Tensor, &[f32])> = f32s.iter().map(|(t, v)| (*t, &v[..])).collect();
                let go = || {
                    rt.run_conv_blocking(&plan, g.nodes, &g.receiver, &g.sender, &args)
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                };
                let got = go();
                let want = oracle(&tp, &g, Direction::Backward, &inp);
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    want.keys().collect::<Vec<_>>()
                );
                for (t, w) in &want {
                    let e = rel_l2_f32(&got[t], w);
                    assert!(e <= 1e-5, "{what} {t:?}: rel L2 {e:e}");
                }
                let again = go();
                for (t, v) in &got {
                    let same = v
                        .iter()
                        .zip(&again[t])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{what} {t:?}: rerun differs");
                }
            }
        }
    }
    println!("{grouped} lane-grouped backward plans on the device");
    assert!(grouped >= 2, "{grouped}");
}
