//! Convolution plans on a CUDA GPU vs the f64 conv oracle: CSR, piece and atomic modes,
//! f32 and f64, forward / backward / double backward, determinism, graph errors.
//! Prints "skipped: CUDA not available (…)" and passes where there is no GPU.

#[path = "../../equikern-core/tests/conv_common/mod.rs"]
mod conv_common;

use std::collections::BTreeMap;

use conv_common::*;
use equikern_core::conv::{ConvError, ConvOracle, Csr};
use equikern_core::graph::{diamond, radius_graph, random_skewed, DIAMOND_A};
use equikern_core::TensorProduct;
use equikern_cuda::{run_conv, CudaDevice, CudaError, Real};
use equikern_plan::{
    lower_conv, lower_conv_with, Capabilities, ConvOptions, Direction, Dtype, LowerOptions, Tensor,
    Work,
};

const DIRS: [Direction; 3] = [
    Direction::Forward,
    Direction::Backward,
    Direction::DoubleBackward,
];

fn device() -> Option<CudaDevice> {
    match CudaDevice::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: CUDA not available ({e})");
            None
        }
    }
}

fn modes() -> [(&'static str, ConvOptions); 3] {
    [
        ("csr", ConvOptions::default()),
        (
            "pieces",
            ConvOptions {
                atomic: false,
                max_piece_edges: Some(4),
            },
        ),
        (
            "atomic",
            ConvOptions {
                atomic: true,
                max_piece_edges: None,
            },
        ),
    ]
}

fn graphs() -> Vec<(&'static str, Csr)> {
    let (n, r, s) = directed();
    let (rr, ss) = random_skewed(300, 6000, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([3, 3, 3], DIAMOND_A), 3.0).unwrap();
    vec![
        ("directed", Csr::build(n, &r, &s).unwrap()),
        ("skewed", Csr::build(300, &rr, &ss).unwrap()),
        ("diamond", Csr::build(216, &d.receiver, &d.sender).unwrap()),
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

trait Num: Real {
    fn from64(v: f64) -> Self;
    fn to64(self) -> f64;
}
impl Num for f32 {
    fn from64(v: f64) -> Self {
        v as f32
    }
    fn to64(self) -> f64 {
        self as f64
    }
}
impl Num for f64 {
    fn from64(v: f64) -> Self {
        v
    }
    fn to64(self) -> f64 {
        self
    }
}

#[allow(clippy::type_complexity)]
fn run<T: Num>(
    dev: &CudaDevice,
    caps: &Capabilities,
    tp: &TensorProduct,
    g: &Csr,
    dir: Direction,
    opts: ConvOptions,
) -> (BTreeMap<Tensor, Vec<T>>, BTreeMap<Tensor, Vec<f64>>) {
    let dtype = if T::DTYPE == Dtype::F32 {
        Dtype::F32
    } else {
        Dtype::F64
    };
    let plan = lower_conv(tp, dir, dtype, caps, opts).unwrap();
    let inp = inputs(tp, g, 5);
    let conv: BTreeMap<Tensor, Vec<T>> = inp
        .iter()
        .map(|(t, v)| (*t, v.iter().map(|&a| T::from64(a)).collect()))
        .collect();
    let got = run_conv(dev, &plan, g.nodes, &g.receiver, &g.sender, &conv)
        .unwrap_or_else(|e| panic!("{dir:?} {opts:?}: {e}"));
    (got, oracle(tp, g, dir, &inp))
}

fn check<T: Num>(dev: &CudaDevice, caps: &Capabilities) -> [f64; 3] {
    let tps = [
        ("uvu per-edge", uvu_per_edge()),
        ("uvw shared", uvw_shared()),
        ("uvu unweighted", uvu_unweighted()),
        // Channel-fused backward (CSR, pieces) where they qualify.
        ("uvu M8 per-edge", uvu_channels()),
        ("uvu M8 shared", uvu_channels_shared()),
        ("uvu M8 mixed", uvu_channels_mixed()),
        // `x` blocks of different multiplicities: both fused (backward guarded, forward
        // groups of 16, 12 and 8 lanes); the double backward on row kernels.
        ("uvu multi-mul 16/8/12", uvu_channels_multimul()),
    ];
    let (t1, t2) = if T::DTYPE == Dtype::F32 {
        (1e-5, 1e-4)
    } else {
        (1e-12, 1e-12)
    };
    let mut worst = [0f64; 3];
    for (gn, g) in graphs() {
        for (tn, tp) in &tps {
            for (di, dir) in DIRS.into_iter().enumerate() {
                for (mn, opts) in modes() {
                    let (got, want) = run::<T>(dev, caps, tp, &g, dir, opts);
                    assert_eq!(
                        got.keys().collect::<Vec<_>>(),
                        want.keys().collect::<Vec<_>>()
                    );
                    let tol = if dir == Direction::DoubleBackward {
                        t2
                    } else {
                        t1
                    };
                    for (t, w) in &want {
                        let gv: Vec<f64> = got[t].iter().map(|v| v.to64()).collect();
                        let e = if gv.iter().all(|v| v.is_finite()) {
                            rel_l2(&gv, w)
                        } else {
                            f64::INFINITY
                        };
                        assert!(e <= tol, "{gn} {tn} {dir:?} {mn} {t:?}: rel L2 {e:e}");
                        worst[di] = worst[di].max(e);
                    }
                }
            }
        }
    }
    worst
}

#[test]
fn conv_matches_the_oracle_f32_and_f64() {
    let Some(dev) = device() else { return };
    let caps = dev.capabilities();
    println!(
        "device {} caps float_atomics={}",
        dev.name(),
        caps.float_atomics
    );
    let tiny = Capabilities {
        max_workgroups_per_dim: 4,
        ..caps
    };
    for c in [caps, tiny] {
        let w32 = check::<f32>(&dev, &c);
        let w64 = check::<f64>(&dev, &c);
        println!("worst rel L2 f32 (fwd, bwd, dbl): {w32:?}; f64: {w64:?}");
    }
}

#[test]
fn deterministic_modes_are_bit_identical() {
    let Some(dev) = device() else { return };
    let caps = dev.capabilities();
    let (_, g) = graphs().remove(1);
    let tp = uvu_per_edge();
    for dir in DIRS {
        for (mn, opts) in modes().into_iter().take(2) {
            let a = run::<f32>(&dev, &caps, &tp, &g, dir, opts).0;
            let b = run::<f32>(&dev, &caps, &tp, &g, dir, opts).0;
            let bits = |m: &BTreeMap<Tensor, Vec<f32>>| -> Vec<Vec<u32>> {
                m.values()
                    .map(|v| v.iter().map(|x| x.to_bits()).collect())
                    .collect()
            };
            assert_eq!(bits(&a), bits(&b), "{dir:?} {mn}");
        }
    }
}

#[test]
fn bad_graphs_are_rejected() {
    let Some(dev) = device() else { return };
    let tp = uvu_per_edge();
    let plan = lower_conv(
        &tp,
        Direction::Forward,
        Dtype::F32,
        &dev.capabilities(),
        ConvOptions::default(),
    )
    .unwrap();
    let inp: BTreeMap<Tensor, Vec<f32>> = BTreeMap::from([
        (Tensor::X, vec![0.0; 4 * tp.dim_in1]),
        (Tensor::Y, vec![0.0; 3 * tp.dim_in2]),
        (Tensor::W, vec![0.0; 3 * tp.weight_numel]),
    ]);
    let e = run_conv(&dev, &plan, 4, &[0i64, 4, 1], &[1i64, 2, 3], &inp).unwrap_err();
    assert!(
        matches!(
            e,
            CudaError::Conv(ConvError::Index {
                array: "receiver",
                position: 1,
                ..
            })
        ),
        "{e}"
    );
    let e = run_conv(&dev, &plan, 4, &[0i32, 1, 2], &[1i32, -1, 3], &inp).unwrap_err();
    assert!(e.to_string().starts_with("sender[1] = -1"), "{e}");
    let e = run_conv(&dev, &plan, 4, &[0u32, 1], &[1u32, 2, 3], &inp).unwrap_err();
    assert!(e.to_string().contains("receiver has 2 edges"), "{e}");
}

/// The mixed-multiplicity conv backward with balanced lane groups (SevenNet-like: 384 lanes
/// per node; multi-mul: a partial last 32-lane chunk) and with one lane per channel
/// (`conv_backward_lanes: false`), CSR and pieces, f32 and f64: against the f64 oracle,
/// outputs poisoned by the runtime, bit-identical reruns.
#[test]
fn lane_grouped_backward_matches_the_oracle() {
    let Some(dev) = device() else { return };
    let caps = dev.capabilities();
    fn one<T: Num>(dev: &CudaDevice, caps: &Capabilities) -> (f64, usize) {
        let dtype = if T::DTYPE == Dtype::F32 {
            Dtype::F32
        } else {
            Dtype::F64
        };
        let tol = if dtype == Dtype::F32 { 1e-5 } else { 1e-12 };
        let (mut worst, mut grouped) = (0f64, 0);
        for (gn, g) in graphs().into_iter().skip(1) {
            for (tn, tp) in [
                ("sevennet-like", uvu_sevennet_like()),
                ("multi-mul", uvu_channels_multimul()),
            ] {
                for (mn, opts) in modes().into_iter().take(2) {
                    for lanes in [true, false] {
                        let what = format!("{gn} {tn} {mn} {dtype:?} lanes {lanes}");
                        let lopts = LowerOptions {
                            conv_backward_lanes: lanes,
                            ..Default::default()
                        };
                        let plan =
                            lower_conv_with(&tp, Direction::Backward, dtype, caps, opts, lopts)
                                .unwrap();
                        let Work::Channels(c) = &plan.kernels[0].work else {
                            panic!("{what}: not fused\n{plan}");
                        };
                        assert_eq!(!c.lane_groups().is_empty(), lanes, "{what}");
                        grouped += lanes as usize;
                        let inp = inputs(&tp, &g, 5);
                        let conv: BTreeMap<Tensor, Vec<T>> = inp
                            .iter()
                            .map(|(t, v)| (*t, v.iter().map(|&a| T::from64(a)).collect()))
                            .collect();
                        let go = || {
                            run_conv(dev, &plan, g.nodes, &g.receiver, &g.sender, &conv)
                                .unwrap_or_else(|e| panic!("{what}: {e}"))
                        };
                        let got = go();
                        let want = oracle(&tp, &g, Direction::Backward, &inp);
                        assert_eq!(
                            got.keys().collect::<Vec<_>>(),
                            want.keys().collect::<Vec<_>>()
                        );
                        for (t, w) in &want {
                            let gv: Vec<f64> = got[t].iter().map(|v| v.to64()).collect();
                            let e = if gv.iter().all(|v| v.is_finite()) {
                                rel_l2(&gv, w)
                            } else {
                                f64::INFINITY
                            };
                            assert!(e <= tol, "{what} {t:?}: rel L2 {e:e}");
                            worst = worst.max(e);
                        }
                        let again = go();
                        for (t, v) in &got {
                            let same = v
                                .iter()
                                .zip(&again[t])
                                .all(|(a, b)| a.to64().to_bits() == b.to64().to_bits());
                            assert!(same, "{what} {t:?}: rerun differs");
                        }
                    }
                }
            }
        }
        (worst, grouped)
    }
    let (w32, n32) = one::<f32>(&dev, &caps);
    let (w64, n64) = one::<f64>(&dev, &caps);
    println!("lane-grouped backward: worst rel L2 f32 {w32:.2e} ({n32} grouped plans), f64 {w64:.2e} ({n64})");
}
