//! The channel-fused convolution forward and backward (`Work::Channels` with `ChannelConv`):
//! which plans get them, and their interpretation against the f64 conv oracle (rel L2 ≤
//! 1e-12) on directed, skewed and radius graphs, CSR and pieces, several dispatches, output
//! groups, bit-identical reruns.

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
        // `x` blocks of different multiplicities (guarded rows, groups of their own widths
        // in the forward).
        ("multi-mul", uvu_channels_multimul()),
        ("sevennet-like", uvu_sevennet_like()),
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
    let want = equikern_plan::conv::reference(tp, g, plan.direction, &inp).unwrap();
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
                    ..Default::default()
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
    let p = lower_conv(
        &uvu_channels(),
        Direction::Forward,
        Dtype::F32,
        &caps,
        ATOMIC,
    )
    .unwrap();
    assert!(fused(&p).is_none());
    let p = lower_conv(
        &uvu_channels(),
        Direction::DoubleBackward,
        Dtype::F32,
        &caps64(),
        DET,
    )
    .unwrap();
    assert!(fused(&p).is_none());
    for tp in [uvu_per_edge(), uvw_shared(), uvu_unweighted()] {
        for d in [Direction::Forward, Direction::Backward] {
            let p = lower_conv(&tp, d, Dtype::F32, &caps64(), DET).unwrap();
            assert!(fused(&p).is_none(), "{d:?}");
        }
    }
    // Mixed multiplicities: the backward and the forward (both modes), the largest
    // multiplicity's channels; the forward's groups each within one multiplicity, as many
    // lanes as that multiplicity's rows. The double backward stays on row kernels.
    for tp in [uvu_channels_multimul(), uvu_sevennet_like()] {
        let top = tp.spec.irreps_in1.0.iter().map(|m| m.mul).max().unwrap();
        for opts in [DET, PIECES] {
            for d in [Direction::Backward, Direction::Forward] {
                let p = lower_conv(&tp, d, Dtype::F32, &caps64(), opts).unwrap();
                let c = fused(&p).unwrap_or_else(|| panic!("mixed multiplicities {d:?} fused"));
                assert_eq!(c.channels as usize, top);
                assert!(!c.uniform());
                if d == Direction::Forward {
                    let mut lanes = 0;
                    for g in c.conv_groups() {
                        let muls: Vec<u32> =
                            g.iter().map(|&b| c.block_mul(&c.z_blocks[b])).collect();
                        assert!(muls.iter().all(|&m| m == muls[0]), "{muls:?}");
                        assert_eq!(c.group_lanes(&g), muls[0]);
                        lanes += muls[0];
                    }
                    assert_eq!(c.lanes(), lanes);
                    assert!(
                        c.lanes() > c.channels,
                        "one group per multiplicity at least"
                    );
                }
            }
        }
        let p = lower_conv(&tp, Direction::DoubleBackward, Dtype::F32, &caps64(), DET).unwrap();
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

fn forward_plan(
    tp: &TensorProduct,
    caps: &Capabilities,
    opts: ConvOptions,
    regs: Option<u32>,
) -> KernelPlan {
    lower_conv_with(
        tp,
        Direction::Forward,
        Dtype::F64,
        caps,
        opts,
        LowerOptions {
            conv_forward_regs: regs,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Output groupings the forward tests run: the default (one group for these products),
/// several groups (4 words: f64 blocks of width ≤ 2 each alone or paired), one per block.
const GROUPINGS: [(&str, Option<u32>); 3] = [
    ("default", None),
    ("groups", Some(8)),
    ("per block", Some(1)),
];

/// Whether grouping `regs` of product `tn` fits one workgroup of [`caps64`] (256
/// invocations): the SevenNet-like product's finer groupings give a unit 960 lanes (one per
/// output row), more than a workgroup holds, so it is fused at the default grouping only.
fn grouping_fits(tn: &str, regs: Option<u32>) -> bool {
    !(tn == "sevennet-like" && regs.is_some())
}

/// Whether the forward of `tn` lowers on [`small_grid`] in pieces mode: the pieces' `z`
/// reduction runs one invocation per output element of a node (3 136 for SevenNet-like),
/// more than a 2×2 grid of 256 holds.
fn small_grid_pieces_fit(tn: &str, small: bool, opts: ConvOptions) -> bool {
    !(tn == "sevennet-like" && small && opts.max_piece_edges.is_some())
}

#[test]
fn qualifying_forward_is_one_channel_kernel() {
    for (tn, tp) in tps() {
        for (mode, opts, table, out) in [
            ("csr", DET, Tensor::RecvCsr, Tensor::Z),
            ("pieces", PIECES, Tensor::RecvPieces, Tensor::RecvPartial),
        ] {
            let plan = lower_conv(&tp, Direction::Forward, Dtype::F32, &caps64(), opts).unwrap();
            let k = &plan.kernels[0];
            let Work::Channels(c) = &k.work else {
                panic!("{tn} {mode}: first kernel is {}\n{plan}", k.name);
            };
            let cv = c.conv.as_ref().expect("conv units");
            assert_eq!(cv.table(), Some(table));
            assert_eq!(cv.node_out, out);
            assert!(!c.write_gw);
            assert_eq!(k.outputs, vec![out]);
            assert!(k.inputs.contains(&table));
            assert!(!k.inputs.contains(&Tensor::Sender) && !k.inputs.contains(&Tensor::Receiver));
            assert_eq!(k.workgroup_size, c.samples_per_group * c.lanes());
            let names: Vec<&str> = plan.kernels.iter().map(|k| k.name.as_str()).collect();
            if mode == "pieces" {
                assert_eq!(names, ["conv_forward_fused_pieces", "reduce_pieces_z"]);
            } else {
                assert_eq!(names, ["conv_forward_fused"]);
            }
            let rows = lower_conv_with(
                &tp,
                Direction::Forward,
                Dtype::F32,
                &caps64(),
                opts,
                LowerOptions {
                    channel_fusion: false,
                    ..Default::default()
                },
            )
            .unwrap();
            assert!(fused(&rows).is_none());
            // Groups: a partition of the output blocks, one group per block at budget 1.
            if !grouping_fits(tn, Some(1)) {
                let p = forward_plan(&tp, &caps64(), opts, Some(1));
                assert!(
                    fused(&p).is_none(),
                    "{tn}: more lanes than a workgroup holds"
                );
                continue;
            }
            let p = forward_plan(&tp, &caps64(), opts, Some(1));
            let c = fused(&p).unwrap();
            let g = &c.conv.as_ref().unwrap().groups;
            assert_eq!(g.len(), c.z_blocks.len(), "{tn}");
            // One invocation per row: each group (one block) has as many lanes as rows.
            let rows: u32 = c.z_blocks.iter().map(|b| c.block_mul(b)).sum();
            assert_eq!(c.lanes(), rows, "{tn}");
            if c.uniform() {
                assert_eq!(c.lanes(), c.channels * g.len() as u32);
            }
            assert!(p.kernels[0].workgroup_size <= caps64().max_invocations_per_workgroup);
        }
    }
}

#[test]
fn fused_forward_matches_the_oracle() {
    for (gn, g) in graphs() {
        for (tn, tp) in tps() {
            for (mn, caps, opts) in [
                ("csr", caps64(), DET),
                ("csr small grid", small_grid(), DET),
                ("pieces", caps64(), PIECES),
                ("pieces small grid", small_grid(), PIECES),
            ] {
                for (grn, regs) in GROUPINGS {
                    if !grouping_fits(tn, regs)
                        || !small_grid_pieces_fit(tn, mn.contains("small"), opts)
                    {
                        continue;
                    }
                    let what = format!("{gn} {tn} {mn} {grn}");
                    let plan = forward_plan(&tp, &caps, opts, regs);
                    let c = fused(&plan).unwrap_or_else(|| panic!("{what}: not fused"));
                    if regs.is_some() {
                        assert!(c.conv.as_ref().unwrap().groups.len() > 1, "{what}");
                    }
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
}

#[test]
fn fused_forward_is_bit_identical_across_reruns_dispatch_splits_and_groupings() {
    let (_, g) = graphs().remove(1);
    for (tn, tp) in tps() {
        for opts in [DET, PIECES] {
            let a = forward_plan(&tp, &caps64(), opts, None);
            let ra = check(&a, &tp, &g, tn);
            assert!(ra == check(&a, &tp, &g, tn), "{tn}: rerun differs");
            // Neither the dispatch split nor the grouping changes any sum's order.
            for (grn, regs) in GROUPINGS {
                if !grouping_fits(tn, regs) || !small_grid_pieces_fit(tn, true, opts) {
                    continue;
                }
                let b = forward_plan(&tp, &small_grid(), opts, regs);
                assert!(ra == check(&b, &tp, &g, tn), "{tn} {grn}: results differ");
            }
        }
    }
}

/// Nodes without incoming edges get a zero `z`; an empty graph runs.
#[test]
fn receivers_without_edges_get_zero_z() {
    let (n, r, s) = directed();
    let g = Csr::build(n, &r, &s).unwrap();
    let tp = uvu_channels();
    for opts in [DET, PIECES] {
        let plan = forward_plan(&tp, &caps64(), opts, Some(8));
        let got = check(&plan, &tp, &g, "directed");
        let z = &got[&Tensor::Z];
        let empty: Vec<usize> = (0..n)
            .filter(|&i| !r.iter().any(|&x| x as usize == i))
            .collect();
        assert!(!empty.is_empty());
        for i in 0..n {
            let row = &z[i * tp.dim_out..(i + 1) * tp.dim_out];
            assert_eq!(
                row.iter().all(|&v| v == 0.0),
                empty.contains(&i),
                "node {i}"
            );
        }
        let e = Csr::build(3, &[] as &[u32], &[] as &[u32]).unwrap();
        let out = interpret_conv(&plan, &e, &inputs(&tp, &e, 1)).unwrap();
        assert!(out[&Tensor::Z].iter().all(|&v| v == 0.0));
    }
}

/// The forward's units are the receiver view's nodes or pieces.
#[test]
fn forward_units_are_receivers() {
    let (_, g) = graphs().remove(1);
    let tp = uvu_channels();
    for (opts, pieces) in [(DET, false), (PIECES, true)] {
        let plan = forward_plan(&tp, &caps64(), opts, None);
        let gs = plan.graph_size(&g);
        let want = if pieces { gs.recv_pieces } else { gs.nodes };
        assert_eq!(plan.conv_unit_count(0, &gs), want);
    }
}

/// Every NequIP and MACE problem of the suite takes the fused conv forward (f32, H100-like
/// limits); output groups by the default register budget: one for water and MACE (22 and 26
/// floats per channel), two for lips (102).
#[test]
fn suite_forward_fuses_with_groups() {
    let caps = Capabilities {
        subgroup_size: 32,
        subgroups: true,
        max_invocations_per_workgroup: 1024,
        max_workgroup_size_x: 1024,
        workgroup_memory_bytes: 48 << 10,
        max_storage_binding_bytes: 1 << 40,
        max_workgroups_per_dim: 65535,
        max_storage_buffers_per_stage: 64,
        f64: true,
        float_atomics: true,
        warp_shuffles: false,
    };
    let suite = equikern_core::spec::load_suite(include_str!("data/paper_suite.json")).unwrap();
    let mut seen = 0;
    for (label, spec) in suite {
        if !(label.starts_with("nequip") || label.starts_with("mace")) {
            continue;
        }
        let tp = spec.build().unwrap();
        let plan = lower_conv(&tp, Direction::Forward, Dtype::F32, &caps, DET).unwrap();
        let c = fused(&plan).unwrap_or_else(|| panic!("{label}: not fused"));
        let groups = c.conv.as_ref().unwrap().groups.len().max(1);
        let widths: Vec<u32> = c
            .conv_groups()
            .into_iter()
            .map(|r| r.iter().map(|&b| c.z_blocks[b].row_len).sum())
            .collect();
        println!("{label}: M {} groups {widths:?}", c.channels);
        match label.as_str() {
            "nequip-water" | "mace-medium" => assert_eq!(groups, 1, "{label}"),
            "nequip-lips" => assert_eq!(widths, [52, 50], "{label}"),
            _ => {}
        }
        assert!(widths.iter().all(|&w| w <= 64), "{label}: {widths:?}");
        seen += 1;
    }
    assert!(seen >= 5);
}

/// Per-edge cost of the conv forward, fused vs row kernels, for the suite's NequIP/MACE
/// problems (f32; CONV.md quotes the numbers): bytes the threads request (index words, `x`
/// gathers, `y`, `w`; broadcasts counted per thread), the bytes that must come from L2/DRAM
/// at least (x row once per edge, y, w, z amortised over `deg` edges per node), and FLOPs
/// (`coeff·x·y` + add per term, `w·zv` + add per output element, per channel and `v`).
/// Also SevenNet-0's conv (`benches/sevennet_suite.json`, mixed multiplicities: per-group
/// lanes, per-path rows) at the Si diamond 16³ degree (917 504 edges / 32 768 atoms).
/// `cargo test --release -p equikern-plan --test conv_channels forward_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn forward_cost_per_edge() {
    let mut suite = equikern_core::spec::load_suite(include_str!("data/paper_suite.json")).unwrap();
    suite.extend(
        equikern_core::spec::load_suite(include_str!("../../../benches/sevennet_suite.json"))
            .unwrap(),
    );
    println!(
        "| problem | M | groups (floats/ch) | fused: lanes, idx/x/y/w B requested, total KB | rows: lanes, idx/x/y/w B requested, total KB | min B (x+y+w+z/deg) | FLOPs |"
    );
    for (label, spec) in suite {
        if ![
            "nequip-water",
            "nequip-lips",
            "mace-medium",
            "sevennet-0-conv",
        ]
        .contains(&label.as_str())
        {
            continue;
        }
        let deg = if label.starts_with("sevennet") {
            917_504.0 / 32_768.0 // Si diamond 16³: 28 edges per atom
        } else {
            145_982.0 / 3_341.0 // protein 4AKE, 5 Å
        };
        let tp = spec.build().unwrap();
        let plan = lower_conv(
            &tp,
            Direction::Forward,
            Dtype::F32,
            &Capabilities::webgpu_min(),
            DET,
        )
        .unwrap();
        let c = fused(&plan).unwrap();
        let groups = c.conv_groups();
        let widths: Vec<u32> = groups
            .iter()
            .map(|r| r.iter().map(|&b| c.z_blocks[b].row_len).sum())
            .collect();
        // fused, per edge, summed over lanes
        let (mut fi, mut fx, mut fy, mut fw) = (0.0, 0.0, 0.0, 0.0);
        for r in &groups {
            let m = c.group_lanes(r) as f64;
            let ps: Vec<_> = c
                .paths
                .iter()
                .filter(|p| r.contains(&(p.z_block as usize)))
                .collect();
            let mut xs: Vec<(u32, u32)> = ps
                .iter()
                .flat_map(|p| p.terms.iter().map(|t| (p.x_block, t.i)))
                .collect();
            xs.sort_unstable();
            xs.dedup();
            let mut ys: Vec<u32> = ps
                .iter()
                .flat_map(|p| {
                    (0..p.y_mul).flat_map(move |v| {
                        p.terms.iter().map(move |t| p.y_offset + v * p.y_len + t.j)
                    })
                })
                .collect();
            ys.sort_unstable();
            ys.dedup();
            let nw: u32 = ps
                .iter()
                .filter(|p| p.w_offset.is_some())
                .map(|p| p.y_mul)
                .sum();
            fi += m * 8.0;
            fx += m * 4.0 * xs.len() as f64;
            fy += m * 4.0 * ys.len() as f64;
            fw += m * 4.0 * nw as f64;
        }
        // rows: one lane per (output block, channel); per edge its paths' operand rows
        let (mut ri, mut rx, mut ry, mut rw, mut rl) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (b, blk) in c.z_blocks.iter().enumerate() {
            let m = c.block_mul(blk) as f64;
            rl += m;
            ri += m * 8.0;
            for p in c.paths.iter().filter(|p| p.z_block as usize == b) {
                rx += m * 4.0 * p.x_len as f64;
                ry += m * 4.0 * (p.y_mul * p.y_len) as f64;
                rw += m * 4.0 * p.w_offset.map_or(0, |_| p.y_mul) as f64;
            }
        }
        let flops: f64 = c
            .paths
            .iter()
            .map(|p| {
                c.path_mul(p) as f64
                    * p.y_mul as f64
                    * (3.0 * p.terms.len() as f64 + 2.0 * p.z_len as f64)
            })
            .sum();
        let min = 4.0 * (tp.dim_in1 + tp.dim_in2 + tp.weight_numel) as f64
            + 4.0 * tp.dim_out as f64 / deg;
        println!(
            "| {label} | {} | {} {widths:?} | {} lanes, {:.0}/{:.0}/{:.0}/{:.0}, {:.1} | {} lanes, {:.0}/{:.0}/{:.0}/{:.0}, {:.1} | {:.0} | {:.0} |",
            c.channels,
            groups.len(),
            c.lanes(),
            fi, fx, fy, fw,
            (fi + fx + fy + fw) / 1e3,
            rl,
            ri, rx, ry, rw,
            (ri + rx + ry + rw) / 1e3,
            min,
            flops,
        );
    }
}

/// `benches/sevennet_suite.json` (the bench problem for the mixed-multiplicity channel
/// kernels): it builds; its backward is one channel kernel of 128 channels with guarded rows
/// and its forward one channel kernel of 128 channels whose groups are the 128-, 64- and
/// 32-row blocks (224 lanes per node; CSR and pieces, f32 on the H100's limits); both match
/// the oracle on a skewed graph. With warp shuffles (CUDA) the backward runs a warp per
/// sender (4 chunks of 32 channels per lane), which matches the oracle too.
#[test]
fn sevennet_suite_is_fused() {
    let suite =
        equikern_core::spec::load_suite(include_str!("../../../benches/sevennet_suite.json"))
            .unwrap();
    assert_eq!(suite.len(), 1);
    let (label, spec) = &suite[0];
    assert_eq!(label, "sevennet-0-conv");
    let tp = &spec.clone().build().unwrap();
    let h100 = Capabilities::cuda_sm90();
    for opts in [DET, PIECES] {
        let p = lower_conv(tp, Direction::Backward, Dtype::F32, &h100, opts).unwrap();
        let c = fused(&p).expect("fused backward");
        assert_eq!(c.channels, 128);
        assert!(!c.uniform());
        // CUDA: a warp per sender, 4 chunks of 32 channels per lane, no workgroup memory.
        assert!(c.warp_units(), "{p}");
        assert_eq!(
            (c.lanes(), c.channel_chunks(), c.reduction_len()),
            (32, 4, 0)
        );
        assert_eq!(p.kernels[0].workgroup_size, 32 * c.samples_per_group);
        let no_shuffles = Capabilities {
            warp_shuffles: false,
            ..h100
        };
        let p = lower_conv(tp, Direction::Backward, Dtype::F32, &no_shuffles, opts).unwrap();
        let c = fused(&p).expect("fused backward");
        assert!(!c.warp_units() && c.lanes() == 128, "{p}");
        let p = lower_conv(tp, Direction::Forward, Dtype::F32, &h100, opts).unwrap();
        let c = fused(&p).expect("fused forward");
        assert_eq!(c.channels, 128);
        assert!(!c.uniform());
        let lanes: Vec<u32> = c.conv_groups().iter().map(|g| c.group_lanes(g)).collect();
        assert_eq!(lanes, [128, 64, 32], "{p}");
        assert_eq!(p.kernels[0].workgroup_size, 224);
    }
    let (_, g) = graphs().remove(1);
    for d in [Direction::Backward, Direction::Forward] {
        for opts in [DET, PIECES] {
            let plan = lower_conv(tp, d, Dtype::F64, &caps64(), opts).unwrap();
            assert!(fused(&plan).is_some(), "{d:?}");
            check(&plan, tp, &g, &format!("{label} {d:?}"));
        }
    }
    // The warp-per-sender backward (CUDA's), interpreted in its lanes' order.
    for opts in [DET, PIECES] {
        let plan = lower_conv(tp, Direction::Backward, Dtype::F64, &h100, opts).unwrap();
        assert!(fused(&plan).is_some_and(|c| c.warp_units()), "{plan}");
        check(&plan, tp, &g, &format!("{label} warp units"));
    }
}

/// Random `uvu` convolutions over `x` blocks of random multiplicities (largest ≥ 8),
/// random `y` multiplicities, a random subset of paths (some output blocks then unwritten:
/// zeros), some unweighted, per-edge or shared weights: the forward is one channel kernel
/// of the largest multiplicity's channels, every group within one multiplicity, and
/// matches the oracle (CSR and pieces, default and finer groupings where they fit, a small
/// grid); the backward too.
#[test]
fn mixed_multiplicities_random_forward() {
    use equikern_core::spec::builders::channelwise;
    use rand::Rng;
    let irs = ["0e", "1o", "1e", "2e", "2o"];
    let (_, g) = graphs().remove(1);
    let mut ran = 0;
    for seed in 0..10u64 {
        let mut r = rng(100 + seed);
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
        let tp = spec.build().unwrap();
        let top = tp.spec.irreps_in1.0.iter().map(|m| m.mul).max().unwrap();
        let mut mixed = false;
        for (mn, caps, opts) in [
            ("csr", caps64(), DET),
            ("pieces", caps64(), PIECES),
            ("csr small grid", small_grid(), DET),
        ] {
            for (grn, regs) in GROUPINGS {
                let w = format!("{what} {mn} {grn}");
                let lopts = LowerOptions {
                    conv_forward_regs: regs,
                    ..Default::default()
                };
                let plan = match lower_conv_with(
                    &tp,
                    Direction::Forward,
                    Dtype::F64,
                    &caps,
                    opts,
                    lopts,
                ) {
                    Ok(p) => p,
                    // The row kernels of a wide product may not fit a 2×2 grid.
                    Err(e) if mn.contains("small") && regs.is_some() => {
                        println!("{w}: {e}");
                        continue;
                    }
                    Err(e) => panic!("{w}: {e}"),
                };
                let Some(c) = fused(&plan) else {
                    // Only a grouping whose lanes outgrow the workgroup may fall back.
                    assert!(regs.is_some(), "{w}: not fused\n{plan}");
                    continue;
                };
                assert_eq!(c.channels as usize, top, "{w}");
                mixed |= !c.uniform();
                for grp in c.conv_groups() {
                    let l = c.group_lanes(&grp);
                    assert!(
                        grp.iter().all(|&b| c.block_mul(&c.z_blocks[b]) == l),
                        "{w}: a group spans multiplicities"
                    );
                }
                check(&plan, &tp, &g, &w);
            }
            let plan = lower_conv(&tp, Direction::Backward, Dtype::F64, &caps, opts).unwrap();
            check(&plan, &tp, &g, &format!("{what} {mn} backward"));
        }
        ran += mixed as usize;
    }
    assert!(ran >= 4, "only {ran} mixed random products ran");
}

/// The lane groups of a conv backward: every `x` block's paths split over its groups
/// exactly once (each group's paths ascending, all of its block), at least one group per
/// block, the lanes within the workgroup.
fn check_lane_groups(c: &equikern_plan::ChannelWork, caps: &Capabilities, what: &str) {
    let groups = c.lane_groups();
    let mut seen = vec![0usize; c.paths.len()];
    for g in groups {
        assert!(g.paths.windows(2).all(|w| w[0] < w[1]), "{what}: {g:?}");
        for &p in &g.paths {
            assert_eq!(c.paths[p as usize].x_block, g.x_block, "{what}");
            seen[p as usize] += 1;
        }
    }
    assert!(seen.iter().all(|&n| n == 1), "{what}: paths {seen:?}");
    for b in 0..c.x_blocks.len() {
        assert!(
            groups.iter().any(|g| g.x_block as usize == b),
            "{what}: block {b} has no lanes"
        );
    }
    assert!(c.lanes() * c.samples_per_group <= caps.max_invocations_per_workgroup);
}

/// The backward of SevenNet-0's conv (`benches/sevennet_suite.json`) takes balanced lane
/// groups (H100 limits, f32; WebGPU's minimum limits, which hold fewer lanes): its
/// estimated per-edge time ([`ChannelWork::backward_edge_estimate`]: the heaviest warp or
/// the issue slots over 4 schedulers) and its heaviest warp drop below the
/// one-lane-per-channel mapping's; both match the oracle.
/// `cargo test --release -p equikern-plan --test conv_channels backward_lanes -- --nocapture`
#[test]
fn sevennet_backward_lanes_balance() {
    let suite =
        equikern_core::spec::load_suite(include_str!("../../../benches/sevennet_suite.json"))
            .unwrap();
    let (label, spec) = &suite[0];
    let tp = &spec.clone().build().unwrap();
    let webgpu = Capabilities::webgpu_min();
    for (cn, caps) in [("h100", Capabilities::cuda_sm90()), ("webgpu-min", webgpu)] {
        for opts in [DET, PIECES] {
            let plan = |lanes: bool| {
                let lopts = LowerOptions {
                    conv_backward_lanes: lanes,
                    ..Default::default()
                };
                lower_conv_with(tp, Direction::Backward, Dtype::F32, &caps, opts, lopts).unwrap()
            };
            let (old, new) = (plan(false), plan(true));
            let (co, cn2) = (fused(&old).unwrap(), fused(&new).unwrap());
            assert!(co.lane_groups().is_empty());
            check_lane_groups(cn2, &caps, &format!("{label} {cn}"));
            let (om, os) = co.backward_warp_costs();
            let (nm, ns) = cn2.backward_warp_costs();
            let groups: Vec<String> = cn2
                .lane_groups()
                .iter()
                .map(|g| {
                    format!(
                        "b{}x{}:{:?}={}",
                        g.x_block,
                        cn2.lane_group_rows(g),
                        g.paths,
                        cn2.backward_lane_cost(g.paths.iter().map(|&i| i as usize))
                    )
                })
                .collect();
            println!(
                "{label} {cn} {:?}: old {} lanes, max warp {om}, sum {os}, estimate {}; new {} lanes \
                 (wg {}), max warp {nm}, sum {ns}, estimate {}; groups {}",
                opts.max_piece_edges,
                co.lanes(),
                co.backward_edge_estimate(),
                cn2.lanes(),
                new.kernels.iter().map(|k| k.workgroup_size).max().unwrap(),
                cn2.backward_edge_estimate(),
                groups.join(" ")
            );
            assert!(nm < om, "{cn}: max warp {nm} vs {om}");
            assert!(
                cn2.backward_edge_estimate() < co.backward_edge_estimate(),
                "{cn}: estimate"
            );
        }
    }
    // f64 on WebGPU's 16 KiB of workgroup memory: the lanes' gy columns do not fit, one
    // lane per channel.
    let (_, g) = graphs().remove(1);
    let sm90 = Capabilities::cuda_sm90();
    for opts in [DET, PIECES] {
        for (cn, caps, lanes) in [
            ("h100", &sm90, false),
            ("h100", &sm90, true),
            ("webgpu-min f64", &caps64(), true),
        ] {
            let lopts = LowerOptions {
                conv_backward_lanes: lanes,
                ..Default::default()
            };
            let plan =
                lower_conv_with(tp, Direction::Backward, Dtype::F64, caps, opts, lopts).unwrap();
            let grouped = !fused(&plan).unwrap().lane_groups().is_empty();
            assert_eq!(grouped, lanes && cn == "h100", "{cn} {lanes}");
            check(&plan, tp, &g, &format!("{label} {cn} lanes {lanes}"));
        }
    }
}

/// Random `uvu` convolutions over `x` blocks of random multiplicities (2-4 blocks, largest
/// 8-47, some paths unweighted, some shared weights): the backward takes lane groups
/// (every path once, every block with lanes, within the workgroup) whose estimated per-edge
/// time is at most the one-lane-per-channel mapping's, and matches the oracle with and
/// without them (CSR, pieces, a small grid).
#[test]
fn mixed_multiplicities_random_backward_lanes() {
    use equikern_core::spec::builders::channelwise;
    use rand::Rng;
    let irs = ["0e", "1o", "1e", "2e", "2o"];
    let (_, g) = graphs().remove(1);
    let sm90 = Capabilities {
        f64: true,
        ..Capabilities::cuda_sm90()
    };
    let mut grouped = 0;
    for seed in 0..12u64 {
        let mut r = rng(500 + seed);
        let n1 = r.random_range(2..5usize);
        let mut muls: Vec<usize> = (0..n1).map(|_| r.random_range(1..41usize)).collect();
        muls[r.random_range(0..n1)] = r.random_range(8..48usize);
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
        spec.shared_weights = r.random_range(0..4) == 0;
        let what = format!("seed {seed}: {} ⊗ {}", in1.join("+"), in2.join("+"));
        let tp = spec.build().unwrap();
        for (mn, caps, opts) in [
            ("csr", sm90, DET),
            ("pieces", sm90, PIECES),
            ("csr webgpu-min f64", caps64(), DET),
            ("csr small grid", small_grid(), DET),
        ] {
            let mut est = vec![];
            for lanes in [false, true] {
                let w = format!("{what} {mn} lanes {lanes}");
                let lopts = LowerOptions {
                    conv_backward_lanes: lanes,
                    ..Default::default()
                };
                let plan =
                    match lower_conv_with(&tp, Direction::Backward, Dtype::F64, &caps, opts, lopts)
                    {
                        Ok(p) => p,
                        Err(e) if mn.contains("small") => {
                            println!("{w}: {e}");
                            continue;
                        }
                        Err(e) => panic!("{w}: {e}"),
                    };
                let c = fused(&plan).unwrap_or_else(|| panic!("{w}: not fused\n{plan}"));
                if lanes && !c.lane_groups().is_empty() {
                    grouped += 1;
                    check_lane_groups(c, &caps, &w);
                } else {
                    assert!(c.lane_groups().is_empty() || !c.uniform(), "{w}");
                }
                est.push(c.backward_edge_estimate());
                check(&plan, &tp, &g, &w);
            }
            if let [old, new] = est[..] {
                assert!(new <= old, "{what} {mn}: estimate {new} > {old}");
            }
        }
    }
    assert!(grouped >= 20, "only {grouped} lane-grouped plans");
}

/// Which conv backwards run a warp per sender on CUDA (`ChannelConv::warp_units`, decided
/// from the H100 A/B): mixed multiplicities (SevenNet-0) and one multiplicity of 32
/// (nequip-water, nequip-lips); one multiplicity above 32 (MACE's 128, revMD17's 64) keeps a
/// lane per channel; never without warp shuffles (WGSL).
#[test]
fn warp_units_where_measured_faster() {
    let suite = equikern_core::spec::load_suite(include_str!("data/paper_suite.json")).unwrap();
    let h100 = Capabilities::cuda_sm90();
    let mut seen = 0;
    for (label, spec) in suite {
        let want = match label.as_str() {
            "nequip-water" | "nequip-lips" => true,
            "mace-medium" | "mace-large" | "nequip-revmd17-aspirin" => false,
            _ => continue,
        };
        let tp = spec.build().unwrap();
        let p = lower_conv(&tp, Direction::Backward, Dtype::F32, &h100, DET).unwrap();
        let c = fused(&p).unwrap_or_else(|| panic!("{label}: not fused\n{p}"));
        assert_eq!(c.warp_units(), want, "{label}\n{p}");
        let webgpu = lower_conv(&tp, Direction::Backward, Dtype::F32, &caps64(), DET).unwrap();
        assert!(fused(&webgpu).is_none_or(|c| !c.warp_units()), "{label}");
        seen += 1;
    }
    assert_eq!(seen, 5);
}

/// The fused conv forward unrolls its receiver's edge loop by `FORWARD_EDGE_UNROLL` (2, the
/// H100 harness's best, near the access floor) for mixed multiplicities and one multiplicity
/// of 32 (SevenNet-0, NequIP); one multiplicity above 32 (MACE, revMD17's 64) measured
/// slower and stays rolled, and the backward keeps its loop (its unroll measured slower).
#[test]
fn forward_edge_loop_unrolled_by_two() {
    use equikern_plan::channel::FORWARD_EDGE_UNROLL;
    assert_eq!(FORWARD_EDGE_UNROLL, 2);
    let suite = equikern_core::spec::load_suite(include_str!("data/paper_suite.json")).unwrap();
    let h100 = Capabilities::cuda_sm90();
    let mut seen = 0;
    for (label, spec) in suite {
        let tp = spec.build().unwrap();
        let fwd = lower_conv(&tp, Direction::Forward, Dtype::F32, &h100, DET).unwrap();
        let Some(c) = fused(&fwd) else { continue };
        let unroll = c.conv.as_ref().map(|cv| cv.edge_unroll);
        let want = if c.uniform() && c.channels != 32 {
            1
        } else {
            2
        };
        assert_eq!(unroll, Some(want), "{label}\n{fwd}");
        match label.as_str() {
            "nequip-water" | "nequip-lips" => assert_eq!(want, 2, "{label}"),
            "mace-medium" | "mace-large" => assert_eq!(want, 1, "{label}"),
            _ => {}
        }
        let bwd = lower_conv(&tp, Direction::Backward, Dtype::F32, &h100, DET).unwrap();
        if let Some(c) = fused(&bwd) {
            assert!(
                c.conv.as_ref().is_some_and(|cv| cv.edge_unroll <= 1),
                "{label}"
            );
        }
        seen += 1;
    }
    assert!(seen >= 5, "{seen} fused forwards");
}
