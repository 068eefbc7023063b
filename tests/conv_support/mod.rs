//! Shared checks of the facade's convolution ([`equikern::ConvOp`]) against the f64 conv
//! oracle (`equikern_plan::conv::reference`), for any device.
#![allow(dead_code)]

#[path = "../../crates/equikern-core/tests/conv_common/mod.rs"]
pub mod conv_common;

use std::collections::BTreeMap;

use conv_common::*;
use equikern::plan::{conv::reference, Direction, Tensor};
use equikern::{ConvGraph, ConvOp, ConvOptions, Device, TensorProduct};
use equikern_core::conv::Csr;
use equikern_core::graph::{diamond, radius_graph, random_skewed, DIAMOND_A};

pub const DIRS: [Direction; 3] = [
    Direction::Forward,
    Direction::Backward,
    Direction::DoubleBackward,
];

pub fn products() -> Vec<(&'static str, TensorProduct)> {
    vec![
        ("uvu per-edge", uvu_per_edge()),
        ("uvw shared", uvw_shared()),
        ("uvu unweighted", uvu_unweighted()),
    ]
}

/// Products that qualify for the channel-fused forward and backward (all `uvu`):
/// multiplicity 8, and `x` blocks of different multiplicities (guarded rows in the
/// backward; the forward's groups one multiplicity each, as many lanes as its rows).
pub fn channel_products() -> Vec<(&'static str, TensorProduct)> {
    vec![
        ("uvu M8 per-edge", uvu_channels()),
        ("uvu M8 shared", uvu_channels_shared()),
        ("uvu M8 mixed", uvu_channels_mixed()),
        ("uvu multi-mul 16/8/12", uvu_channels_multimul()),
        ("uvu sevennet-like 128/64/32", uvu_sevennet_like()),
    ]
}

/// Whether a conv forward plan of product `name` at output grouping `regs` may stay on row
/// kernels: a finer grouping of the SevenNet-like product gives a node more lanes (up to
/// one per output row, 960) than a workgroup may hold.
#[allow(dead_code)]
pub fn forward_may_not_fuse(name: &str, regs: Option<u32>) -> bool {
    name.contains("sevennet") && regs.is_some()
}

/// (name, nodes, receiver, sender): a directed graph, a skewed random graph, a radius graph of
/// a diamond lattice, and a graph whose last nodes are isolated.
pub fn graphs() -> Vec<(&'static str, usize, Vec<i64>, Vec<i64>)> {
    let (n, r, s) = directed();
    let (rr, ss) = random_skewed(200, 3000, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([2, 2, 2], DIAMOND_A), 3.0).unwrap();
    let wide = |v: &[u32]| v.iter().map(|&a| a as i64).collect::<Vec<i64>>();
    let (ir, is): (Vec<i64>, Vec<i64>) = (0..40).map(|e| ((e * 7) % 6, (e * 5 + 1) % 6)).unzip();
    vec![
        ("directed", n, r, s),
        ("skewed", 200, wide(&rr), wide(&ss)),
        ("diamond", 64, wide(&d.receiver), wide(&d.sender)),
        ("isolated", 11, ir, is),
    ]
}

pub fn inputs(
    tp: &TensorProduct,
    nodes: usize,
    edges: usize,
    seed: u64,
) -> BTreeMap<Tensor, Vec<f64>> {
    let mut r = rng(seed);
    let wl = if tp.spec.shared_weights { 1 } else { edges } * tp.weight_numel;
    use Tensor::*;
    BTreeMap::from([
        (X, randv(&mut r, nodes * tp.dim_in1)),
        (Y, randv(&mut r, edges * tp.dim_in2)),
        (W, randv(&mut r, wl)),
        (GZ, randv(&mut r, nodes * tp.dim_out)),
        (HX, randv(&mut r, nodes * tp.dim_in1)),
        (HY, randv(&mut r, edges * tp.dim_in2)),
        (HW, randv(&mut r, wl)),
    ])
}

pub fn f32v(v: &[f64]) -> Vec<f32> {
    v.iter().map(|a| *a as f32).collect()
}

pub fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|a| *a as f64).collect()
}

/// Runs one direction through the facade's f32 host calls; outputs keyed by tensor.
pub fn run_f32(
    op: &ConvOp,
    g: &ConvGraph,
    d: Direction,
    i: &BTreeMap<Tensor, Vec<f32>>,
) -> equikern::Result<BTreeMap<Tensor, Vec<f32>>> {
    use Tensor::*;
    let v = |t| &i[&t][..];
    Ok(match d {
        Direction::Forward => BTreeMap::from([(Z, op.forward(g, v(X), v(Y), v(W))?)]),
        Direction::Backward => {
            let r = op.backward(g, v(X), v(Y), v(W), v(GZ))?;
            BTreeMap::from([(GX, r.gx), (GY, r.gy), (GW, r.gw)])
        }
        Direction::DoubleBackward => {
            let r = op.double_backward(g, v(X), v(Y), v(W), v(GZ), v(HX), v(HY), v(HW))?;
            BTreeMap::from([(DX, r.dx), (DY, r.dy), (DW, r.dw), (DGZ, r.dgz)])
        }
    })
}

/// Every product × graph × direction through the f32 host calls of `dev` with `opts`,
/// against the f64 oracle (rel L2 ≤ `tol`); deterministic modes are also rerun and must be
/// bit-identical. Returns the worst error seen.
pub fn check_host_f32(dev: &Device, opts: ConvOptions, tol: f64) -> f64 {
    check_host_f32_with(dev, opts, tol, products(), true)
}

/// [`check_host_f32`] over `products`, with channel fusion `fusion`.
pub fn check_host_f32_with(
    dev: &Device,
    opts: ConvOptions,
    tol: f64,
    products: Vec<(&'static str, TensorProduct)>,
    fusion: bool,
) -> f64 {
    let mut worst = 0f64;
    for (pname, tp) in products {
        let op = ConvOp::from_tensor_product(tp.clone(), dev, opts)
            .unwrap()
            .with_channel_fusion(fusion);
        for (gname, n, r, s) in graphs() {
            let g = ConvGraph::new(dev, n, &r, &s).unwrap();
            let csr = Csr::build(n, &r, &s).unwrap();
            let ins = inputs(&tp, n, g.edges(), 17);
            let ins32: BTreeMap<Tensor, Vec<f32>> =
                ins.iter().map(|(t, v)| (*t, f32v(v))).collect();
            // What the f32 device sees, exactly.
            let ins_r: BTreeMap<Tensor, Vec<f64>> =
                ins32.iter().map(|(t, v)| (*t, f64v(v))).collect();
            for d in DIRS {
                let want = reference(&tp, &csr, d, &ins_r).unwrap();
                let got = run_f32(&op, &g, d, &ins32).unwrap();
                for (t, w) in &want {
                    let gv = &got[t];
                    assert_eq!(gv.len(), w.len(), "{pname} {gname} {d:?} {t:?} length");
                    assert!(
                        gv.iter().all(|a| a.is_finite()),
                        "{pname} {gname} {d:?} {t:?}: non-finite output"
                    );
                    let e = rel_l2(&f64v(gv), w);
                    assert!(
                        e <= tol,
                        "{pname} {gname} {d:?} {t:?}: rel L2 {e:.3e} > {tol:e}"
                    );
                    worst = worst.max(e);
                }
                if !opts.atomic {
                    let again = run_f32(&op, &g, d, &ins32).unwrap();
                    for (t, v) in &got {
                        let same = v
                            .iter()
                            .zip(&again[t])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{pname} {gname} {d:?} {t:?}: rerun not bit-identical");
                    }
                }
            }
        }
    }
    worst
}

/// Bad graphs and bad lengths are errors naming what is wrong, on any device.
pub fn check_errors(dev: &Device) {
    let tp = uvu_per_edge();
    let op = ConvOp::from_tensor_product(tp.clone(), dev, ConvOptions::default()).unwrap();
    // index ≥ nodes
    let e = ConvGraph::new(dev, 4, &[0i64, 1, 4], &[1i64, 2, 3]).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, equikern::Error::Graph(_)), "{m}");
    assert!(
        m.contains("receiver[2] = 4") && m.contains("nodes = 4"),
        "{m}"
    );
    // negative index
    let m = ConvGraph::new(dev, 4, &[0i32, 1, 2], &[1i32, -1, 3])
        .unwrap_err()
        .to_string();
    assert!(m.contains("sender[1] = -1"), "{m}");
    // length mismatch
    let m = ConvGraph::new(dev, 4, &[0u32, 1, 2], &[1u32, 2])
        .unwrap_err()
        .to_string();
    assert!(m.contains("receiver has 3 edges but sender has 2"), "{m}");
    // wrong x / y / w / grad_z lengths
    let g = ConvGraph::new(dev, 4, &[0u32, 1, 2], &[1u32, 2, 3]).unwrap();
    let x = vec![0.5f32; 4 * tp.dim_in1];
    let y = vec![0.5f32; 3 * tp.dim_in2];
    let w = vec![0.5f32; 3 * tp.weight_numel];
    let m = op.forward(&g, &x[1..], &y, &w).unwrap_err().to_string();
    assert!(m.contains("argument x") && m.contains("nodes 4"), "{m}");
    let m = op.forward(&g, &x, &y[1..], &w).unwrap_err().to_string();
    assert!(m.contains("argument y") && m.contains("edges 3"), "{m}");
    let m = op.forward(&g, &x, &y, &w[2..]).unwrap_err().to_string();
    assert!(m.contains("argument w"), "{m}");
    let gz = vec![0.5f32; 4 * tp.dim_out + 1];
    let m = op.backward(&g, &x, &y, &w, &gz).unwrap_err().to_string();
    assert!(m.contains("argument grad_z"), "{m}");
    // a graph made for another backend
    if dev.backend() != equikern::Backend::Cpu {
        let gc = ConvGraph::new(&Device::cpu(), 4, &[0u32, 1, 2], &[1u32, 2, 3]).unwrap();
        let m = op.forward(&gc, &x, &y, &w).unwrap_err().to_string();
        assert!(m.contains("argument graph"), "{m}");
    }
    // piece length 0
    let m = ConvOp::from_tensor_product(
        tp,
        dev,
        ConvOptions {
            atomic: false,
            max_piece_edges: Some(0),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(m.contains("max_piece_edges"), "{m}");
}

pub fn pieces(p: u32) -> ConvOptions {
    ConvOptions {
        atomic: false,
        max_piece_edges: Some(p),
    }
}

pub fn atomic() -> ConvOptions {
    ConvOptions {
        atomic: true,
        max_piece_edges: None,
    }
}
