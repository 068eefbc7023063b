//! The channel-fused convolution backward (`Work::Channels` with `ChannelConv`): which plans
//! get it, and its interpretation against the f64 conv oracle (rel L2 ≤ 1e-12) on directed,
//! skewed and radius graphs, CSR and pieces, several dispatches, bit-identical reruns.

#[path = "../../equikern-core/tests/conv_common/mod.rs"]
mod conv_common;

use conv_common::*;
use equikern_core::conv::{ConvOracle, Csr};
use equikern_core::graph::{diamond, radius_graph, random_skewed, DIAMOND_A};
use equikern_core::TensorProduct;
use equikern_plan::{
    interpret_conv, lower_conv, lower_conv_with, Capabilities, ConvOptions, Direction, Dtype,
    KernelPlan, LowerOptions, SampleMode, Tensor, Work,
};
use std::collections::BTreeMap;

const TOL: f64 = 1e-12;
const DET: ConvOptions = ConvOptions {
    atomic: false,
    max_piece_edges: None,
};
const PIECES: ConvOptions = ConvOptions {
    atomic: false,
    max_piece_edges: Some(3),
};
const ATOMIC: ConvOptions = ConvOptions {
    atomic: true,
    max_piece_edges: None,
};

/// WebGPU's minimum limits (8 storage buffers, 16 KiB workgroup memory) with f64.
fn caps64() -> Capabilities {
    Capabilities {
        f64: true,
        ..Capabilities::webgpu_min()
    }
}

/// Grids of at most 2×2 workgroups: every kernel needs several dispatches.
fn small_grid() -> Capabilities {
    Capabilities {
        max_workgroups_per_dim: 2,
        ..caps64()
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
        ("per-edge", uvu_channels()),
        ("shared", uvu_channels_shared()),
        ("mixed", uvu_channels_mixed()),
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
    ])
}

fn fused(plan: &KernelPlan) -> Option<&equikern_plan::ChannelWork> {
    plan.kernels.iter().find_map(|k| match &k.work {
        Work::Channels(c) => Some(c),
        _ => None,
    })
}

fn check(plan: &KernelPlan, tp: &TensorProduct, g: &Csr, what: &str) -> BTreeMap<Tensor, Vec<f64>> {
    let inp = inputs(tp, g, 5);
    let got = interpret_conv(plan, g, &inp).unwrap_or_else(|e| panic!("{what}: {e}\n{plan}"));
    let want = equikern_plan::conv::reference(tp, g, Direction::Backward, &inp).unwrap();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (t, w) in &want {
        assert!(
            got[t].iter().all(|v| v.is_finite()),
            "{what} {t:?} not written"
        );
        let e = rel_l2(&got[t], w);
        assert!(e <= TOL, "{what} {t:?}: rel L2 {e:e}");
    }
    got
}

#[test]
fn qualifying_backward_is_one_channel_kernel() {
    for (tn, tp) in tps() {
        let weighted = tp.weight_numel > 0;
        let shared = tp.spec.shared_weights;
        for (mode, opts, table, out) in [
            ("csr", DET, Tensor::SendCsr, Tensor::GX),
            ("pieces", PIECES, Tensor::SendPieces, Tensor::SendPartial),
        ] {
            let plan = lower_conv(&tp, Direction::Backward, Dtype::F32, &caps64(), opts).unwrap();
            let k = &plan.kernels[0];
            let Work::Channels(c) = &k.work else {
                panic!("{tn} {mode}: first kernel is {}\n{plan}", k.name);
            };
            let cv = c.conv.as_ref().expect("conv units");
            assert_eq!(cv.table(), Some(table));
            assert_eq!(cv.node_out, out);
            assert_eq!(c.write_gw, weighted && !shared, "{tn}");
            assert!(k.inputs.contains(&table) && k.outputs.contains(&out));
            assert!(!k.inputs.contains(&Tensor::Sender) && !k.inputs.contains(&Tensor::Receiver));
            // WebGPU's 8 storage buffers.
            assert!(k.inputs.len() + k.outputs.len() <= 8, "{tn} {mode}");
            let names: Vec<&str> = plan.kernels.iter().map(|k| k.name.as_str()).collect();
            let mut want = vec![k.name.as_str()];
            if shared {
                want.extend(["conv_backward_gw_chunks", "reduce_gw"]);
            }
            if mode == "pieces" {
                want.insert(want.len() - 2 * shared as usize, "reduce_pieces_gx");
            }
            let mut a = names.clone();
            let mut b = want.clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{tn} {mode}");
            // Off by option: the row kernels.
            let rows = lower_conv_with(
                &tp,
                Direction::Backward,
                Dtype::F32,
                &caps64(),
                opts,
                LowerOptions {
                    channel_fusion: false,
                },
            )
            .unwrap();
            assert!(fused(&rows).is_none());
        }
    }
}

#[test]
fn only_what_qualifies_is_fused() {
    // Atomic mode, the other directions, products with mixed multiplicities: row kernels.
    let caps = Capabilities {
        float_atomics: true,
        max_storage_buffers_per_stage: 64,
        ..caps64()
    };
    let p = lower_conv(
        &uvu_channels(),
        Direction::Backward,
        Dtype::F32,
        &caps,
        ATOMIC,
    )
    .unwrap();
    assert!(fused(&p).is_none());
    for d in [Direction::Forward, Direction::DoubleBackward] {
        let p = lower_conv(&uvu_channels(), d, Dtype::F32, &caps64(), DET).unwrap();
        assert!(fused(&p).is_none(), "{d:?}");
    }
    for tp in [uvu_per_edge(), uvw_shared(), uvu_unweighted()] {
        let p = lower_conv(&tp, Direction::Backward, Dtype::F32, &caps64(), DET).unwrap();
        assert!(fused(&p).is_none());
    }
    // Too little workgroup memory for the `gy` columns.
    let small = Capabilities {
        workgroup_memory_bytes: 1024,
        ..caps64()
    };
    let p = lower_conv(
        &uvu_channels(),
        Direction::Backward,
        Dtype::F32,
        &small,
        DET,
    )
    .unwrap();
    assert!(fused(&p).is_none());
}

#[test]
fn fused_backward_matches_the_oracle() {
    for (gn, g) in graphs() {
        for (tn, tp) in tps() {
            for (mn, caps, opts) in [
                ("csr", caps64(), DET),
                ("csr small grid", small_grid(), DET),
                ("pieces", caps64(), PIECES),
                ("pieces small grid", small_grid(), PIECES),
            ] {
                let what = format!("{gn} {tn} {mn}");
                let plan = lower_conv(&tp, Direction::Backward, Dtype::F64, &caps, opts).unwrap();
                assert!(fused(&plan).is_some(), "{what}");
                if mn.contains("small") {
                    let gs = plan.graph_size(&g);
                    let units = plan.conv_unit_count(0, &gs);
                    assert!(
                        g.edges() < 20 || plan.dispatches(units).count() > 1,
                        "{what}: one dispatch"
                    );
                }
                check(&plan, &tp, &g, &what);
            }
        }
    }
}

#[test]
fn fused_is_bit_identical_across_reruns_and_dispatch_splits() {
    let (_, g) = graphs().remove(1);
    for (tn, tp) in tps() {
        for opts in [DET, PIECES] {
            let a = lower_conv(&tp, Direction::Backward, Dtype::F64, &caps64(), opts).unwrap();
            let b = lower_conv(&tp, Direction::Backward, Dtype::F64, &small_grid(), opts).unwrap();
            let ra = check(&a, &tp, &g, tn);
            assert!(ra == check(&a, &tp, &g, tn), "{tn}: rerun differs");
            let mut rb = check(&b, &tp, &g, tn);
            let mut ra = ra;
            if tp.spec.shared_weights {
                // The shared `gw` chunks shrink with the dispatch (not this kernel's sum).
                ra.remove(&Tensor::GW);
                rb.remove(&Tensor::GW);
            }
            assert!(ra == rb, "{tn}: the dispatch split changed a sum");
        }
    }
}

/// Isolated nodes and nodes without outgoing edges get a zero `gx`; an empty graph runs.
#[test]
fn senders_without_edges_get_zero_gx() {
    let (n, r, s) = directed();
    let g = Csr::build(n, &r, &s).unwrap();
    let tp = uvu_channels();
    for opts in [DET, PIECES] {
        let plan = lower_conv(&tp, Direction::Backward, Dtype::F64, &caps64(), opts).unwrap();
        let got = check(&plan, &tp, &g, "directed");
        let gx = &got[&Tensor::GX];
        // Nodes 4 (only incoming edges) and 5 (isolated) send nothing.
        assert!(gx[4 * tp.dim_in1..].iter().all(|&v| v == 0.0));
        assert!(gx[..tp.dim_in1].iter().any(|&v| v != 0.0));
        let empty = Csr::build(3, &[] as &[u32], &[] as &[u32]).unwrap();
        let out = interpret_conv(&plan, &empty, &inputs(&tp, &empty, 1)).unwrap();
        assert!(out[&Tensor::GX].iter().all(|&v| v == 0.0));
    }
}

/// The fused plan's units are the sender view's nodes or pieces.
#[test]
fn units_are_senders() {
    let (_, g) = graphs().remove(1);
    let tp = uvu_channels();
    for (opts, pieces) in [(DET, false), (PIECES, true)] {
        let plan = lower_conv(&tp, Direction::Backward, Dtype::F32, &caps64(), opts).unwrap();
        let gs = plan.graph_size(&g);
        let want = if pieces { gs.send_pieces } else { gs.nodes };
        assert_eq!(plan.conv_unit_count(0, &gs), want);
        let c = fused(&plan).unwrap();
        let m = c.conv.as_ref().unwrap().units;
        assert!(matches!(
            (m, pieces),
            (SampleMode::Segments { .. }, false) | (SampleMode::Pieces { .. }, true)
        ));
    }
}
