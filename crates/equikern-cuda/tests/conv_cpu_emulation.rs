//! The CUDA text of convolution plans, compiled as C++ with a host harness that runs every
//! launch's grid sequentially (the conv kernels use no shared memory or barriers, so one
//! thread at a time is a valid schedule; `atomicAdd` becomes a plain add), against the f64
//! conv oracle. Checks the CUDA writer and the runtime's launch planning without a GPU.
//! Skips where no C++ compiler (`c++`) is found.

#[path = "../../equikern-core/tests/conv_common/mod.rs"]
mod conv_common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use conv_common::*;
use equikern_core::conv::{ConvOracle, Csr};
use equikern_core::graph::{diamond, radius_graph, random_skewed, DIAMOND_A};
use equikern_core::TensorProduct;
use equikern_cuda::conv_launches;
use equikern_emit::cuda::{emit_cuda, Param};
use equikern_plan::{
    conv_index_tensors, interpret_conv, lower_conv, lower_conv_with, Capabilities, ConvOptions,
    Direction, Dtype, KernelPlan, LowerOptions, Tensor,
};

const PRELUDE: &str = r#"#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <algorithm>
#include <barrier>
#include <memory>
#include <thread>
#include <vector>
struct ek_dim3 { unsigned x, y, z; };
static ek_dim3 blockIdx, gridDim;
static thread_local ek_dim3 threadIdx;
// Kernels with barriers (channel kernels) run one block at a time on real threads (one
// std::thread per CUDA thread, __syncthreads a std::barrier); a function-local static is
// then the block's shared memory.
static std::barrier<>* ek_bar = nullptr;
static inline void __syncthreads() { if (ek_bar) ek_bar->arrive_and_wait(); }
// A warp's xor shuffle: each lane posts its value, waits for its warp, reads its partner's,
// waits again (so no lane overwrites a value before every partner has read it).
static std::barrier<>* ek_wbar[32];
static double ek_lanes[1024];
template <class T> static T __shfl_xor_sync(unsigned, T v, int o) {
    const unsigned l = threadIdx.x;
    ek_lanes[l] = (double)v;
    ek_wbar[l / 32]->arrive_and_wait();
    const T r = (T)ek_lanes[l ^ (unsigned)o];
    ek_wbar[l / 32]->arrive_and_wait();
    return r;
}
#define __shared__ static
#define __global__
#define __launch_bounds__(n)
#define __device__
#define __forceinline__ inline
#define __restrict__
template <class T> static T __ldg(const T* p) { return *p; }
template <class T> static T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
using std::min;
using std::max;
"#;

fn caps() -> Capabilities {
    Capabilities {
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
        warp_shuffles: true,
    }
}

fn name(t: Tensor) -> String {
    format!("{t:?}").to_lowercase()
}

/// Every tensor any kernel binds, in a fixed order.
fn bound(plan: &KernelPlan) -> Vec<Tensor> {
    let mut v: Vec<Tensor> = plan
        .kernels
        .iter()
        .flat_map(|k| k.inputs.iter().chain(&k.outputs).copied())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Compiles the plan's CUDA text with the harness; `None` without a C++ compiler.
fn build(plan: &KernelPlan, dir: &Path) -> Option<PathBuf> {
    let em = emit_cuda(plan).unwrap();
    let tensors = bound(plan);
    let mut src = String::from(PRELUDE);
    src.push_str(&em.source);
    src.push_str("\n// ---- harness ----\n");
    for t in &tensors {
        let ty = if t.is_index() {
            "unsigned int"
        } else {
            "double"
        };
        let _ = writeln!(src, "static {ty}* T_{};", name(*t));
    }
    src.push_str("static void call(int k, const unsigned* a) {\n    switch (k) {\n");
    for (i, k) in em.kernels.iter().enumerate() {
        let args: Vec<String> = k
            .params
            .iter()
            .filter_map(|p| match p {
                Param::Input(t) | Param::Output(t) => Some(format!("T_{}", name(*t))),
                _ => None,
            })
            .chain((0..7).map(|j| format!("a[{j}]")))
            .collect();
        let _ = writeln!(src, "    case {i}: {}({}); break;", k.name, args.join(", "));
    }
    src.push_str("    }\n}\n");
    let threaded: Vec<&str> = plan
        .kernels
        .iter()
        .map(|k| {
            // (The conv forward's channel kernel has no barriers: one thread at a time.)
            if matches!(&k.work, equikern_plan::Work::Channels(c)
                if c.pass != equikern_plan::ChannelPass::Forward)
            {
                "true"
            } else {
                "false"
            }
        })
        .collect();
    let _ = writeln!(
        src,
        "static const bool threaded[] = {{{}}};",
        threaded.join(", ")
    );
    src.push_str("int main() {\n    FILE* f; size_t n;\n");
    for t in &tensors {
        let (nm, sz) = (name(*t), if t.is_index() { 4 } else { 8 });
        let _ = writeln!(
            src,
            "    f = fopen(\"{nm}.bin\", \"rb\"); fseek(f, 0, SEEK_END); n = ftell(f) / {sz}; rewind(f);\n    \
             T_{nm} = ({}*)calloc(n + 1, {sz}); if (fread(T_{nm}, {sz}, n, f) != n) return 2; fclose(f);",
            if t.is_index() { "unsigned int" } else { "double" }
        );
    }
    src.push_str(
        "    f = fopen(\"launches.txt\", \"r\");\n    unsigned k, gx, gy, bd, a[7];\n    \
         while (fscanf(f, \"%u %u %u %u %u %u %u %u %u %u %u\", &k, &gx, &gy, &bd, &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6]) == 11) {\n        \
         gridDim = {gx, gy, 1};\n        \
         if (threaded[k]) {\n            \
         for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {\n                \
         blockIdx = {x, y, 0}; std::barrier<> bar(bd); ek_bar = &bar; std::vector<std::thread> th;\n                \
         std::vector<std::unique_ptr<std::barrier<>>> wb;\n                \
         for (unsigned w = 0; w * 32 < bd; ++w) { wb.emplace_back(new std::barrier<>(std::min(32u, bd - 32 * w))); ek_wbar[w] = wb.back().get(); }\n                \
         const unsigned* ap = a; const int kk = (int)k;\n                \
         for (unsigned t = 0; t < bd; ++t) th.emplace_back([=] { threadIdx = {t, 0, 0}; call(kk, ap); });\n                \
         for (auto& h : th) h.join();\n                ek_bar = nullptr;\n            }\n            continue;\n        }\n        \
         for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) for (unsigned t = 0; t < bd; ++t) {\n            \
         blockIdx = {x, y, 0}; threadIdx = {t, 0, 0}; call((int)k, a);\n        }\n    }\n    fclose(f);\n",
    );
    for t in tensors.iter().filter(|t| !t.is_index()) {
        let nm = name(*t);
        let _ = writeln!(
            src,
            "    f = fopen(\"{nm}.bin\", \"rb\"); fseek(f, 0, SEEK_END); n = ftell(f) / 8; fclose(f);\n    \
             f = fopen(\"{nm}.out\", \"wb\"); fwrite(T_{nm}, 8, n, f); fclose(f);"
        );
    }
    src.push_str("    return 0;\n}\n");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("emu.cpp"), &src).unwrap();
    let exe = dir.join("emu");
    let out = Command::new("c++")
        .args([
            "-std=c++20",
            "-O1",
            "-ffp-contract=off",
            "-pthread",
            "-w",
            "emu.cpp",
            "-o",
            "emu",
        ])
        .current_dir(dir)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "compiling the emitted CUDA as C++ failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

fn run(
    plan: &KernelPlan,
    exe: &Path,
    g: &Csr,
    inp: &BTreeMap<Tensor, Vec<f64>>,
) -> BTreeMap<Tensor, Vec<f64>> {
    run_folded(plan, exe, g, inp, 0)
}

/// [`run`] on a graph whose edges from `fold` on share weight rows (`W` has
/// `GraphSize::weight_rows` rows).
fn run_folded(
    plan: &KernelPlan,
    exe: &Path,
    g: &Csr,
    inp: &BTreeMap<Tensor, Vec<f64>>,
    fold: u64,
) -> BTreeMap<Tensor, Vec<f64>> {
    let dir = exe.parent().unwrap();
    let gs = equikern_plan::conv::GraphSize {
        weight_fold: fold,
        ..plan.graph_size(g)
    };
    let idx = conv_index_tensors(plan, g);
    for t in bound(plan) {
        let bytes: Vec<u8> = if let Some(v) = idx.get(&t) {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        } else if let Some(v) = inp
            .get(&t)
            .filter(|_| !plan.kernels.iter().any(|k| k.outputs.contains(&t)))
        {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        } else if plan.conv.is_some_and(|c| c.atomic) {
            // The runtime zero-fills what atomic kernels add into.
            vec![0u8; plan.conv_buffer_len(t, &gs) as usize * 8]
        } else {
            // Poisoned: an element a kernel fails to write stays NaN.
            (0..plan.conv_buffer_len(t, &gs))
                .flat_map(|_| f64::NAN.to_le_bytes())
                .collect()
        };
        std::fs::write(dir.join(format!("{}.bin", name(t))), bytes).unwrap();
    }
    let mut l = String::new();
    for c in conv_launches(plan, &gs) {
        let k = &plan.kernels[c.kernel];
        let [gx, gy] = k.grid(c.invocations, plan.caps.max_workgroups_per_dim);
        let t = c.tail;
        let _ = writeln!(
            l,
            "{} {gx} {gy} {} {} {} {} {} {} {} {}",
            c.kernel, k.workgroup_size, t[0], t[1], t[2], t[3], t[4], t[5], t[6]
        );
    }
    std::fs::write(dir.join("launches.txt"), l).unwrap();
    let st = Command::new(exe).current_dir(dir).status().unwrap();
    assert!(st.success());
    let mut out = BTreeMap::new();
    for k in &plan.kernels {
        for &t in &k.outputs {
            if t.is_scratch() {
                continue;
            }
            let b = std::fs::read(dir.join(format!("{}.out", name(t)))).unwrap();
            let v: Vec<f64> = b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            out.insert(t, v);
        }
    }
    out
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

#[test]
fn emitted_cuda_runs_right_on_a_cpu_schedule() {
    let (n, r, s) = directed();
    let (rr, ss) = random_skewed(60, 500, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([2, 2, 3], DIAMOND_A), 2.6).unwrap();
    let graphs = [
        ("directed", Csr::build(n, &r, &s).unwrap()),
        ("skewed", Csr::build(60, &rr, &ss).unwrap()),
        ("diamond", Csr::build(96, &d.receiver, &d.sender).unwrap()),
    ];
    let modes = [
        ("csr", ConvOptions::default()),
        (
            "pieces",
            ConvOptions {
                atomic: false,
                max_piece_edges: Some(3),
            },
        ),
        (
            "atomic",
            ConvOptions {
                atomic: true,
                max_piece_edges: None,
            },
        ),
    ];
    let tiny = Capabilities {
        max_workgroups_per_dim: 3,
        max_invocations_per_workgroup: 64,
        ..caps()
    };
    let tps = [
        ("uvu per-edge", uvu_per_edge(), true),
        ("uvw shared", uvw_shared(), false),
        ("uvu unweighted", uvu_unweighted(), false),
    ];
    let root = std::env::temp_dir().join(format!("equikern_conv_emu_{}", std::process::id()));
    let mut worst: f64 = 0.0;
    let mut case = 0;
    for (tn, tp, with_tiny) in &tps {
        for dir in [
            Direction::Forward,
            Direction::Backward,
            Direction::DoubleBackward,
        ] {
            for (mn, opts) in modes {
                let cs: &[Capabilities] = if *with_tiny {
                    &[caps(), tiny]
                } else {
                    &[caps()]
                };
                for c in cs {
                    let plan = lower_conv(tp, dir, Dtype::F64, c, opts).unwrap();
                    case += 1;
                    let Some(exe) = build(&plan, &root.join(case.to_string())) else {
                        println!("skipped: no C++ compiler");
                        return;
                    };
                    for (gn, g) in &graphs {
                        let inp = inputs(tp, g, 3);
                        let got = run(&plan, &exe, g, &inp);
                        let want = oracle(tp, g, dir, &inp);
                        assert_eq!(
                            got.keys().collect::<Vec<_>>(),
                            want.keys().collect::<Vec<_>>()
                        );
                        for (t, w) in &want {
                            let e = rel_l2(&got[t], w);
                            assert!(e <= 1e-12, "{tn} {dir:?} {mn} {gn} {t:?}: rel L2 {e:e}");
                            worst = worst.max(e);
                        }
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("{case} plans, worst rel L2 {worst:.2e}");
}

/// Edges sharing weight rows (`GraphSize::weight_fold`): the channel-fused forward and
/// backward read row `e − fold` for `e ≥ fold` — the oracle gets those rows expanded to one
/// per edge; `GW` keeps a row per edge. Half and a third of the edges folded; plans with
/// other kernels refuse a fold.
#[test]
fn channel_kernels_fold_shared_weight_rows() {
    let d = radius_graph(&diamond([2, 2, 3], DIAMOND_A), 2.6).unwrap();
    let (rr, ss) = random_skewed(60, 500, 1.3, 11).unwrap();
    let graphs = [
        ("diamond", Csr::build(96, &d.receiver, &d.sender).unwrap()),
        ("skewed", Csr::build(60, &rr, &ss).unwrap()),
    ];
    let root = std::env::temp_dir().join(format!("equikern_conv_fold_{}", std::process::id()));
    let mut case = 0;
    for (tn, tp) in [
        ("per-edge", uvu_channels()),
        ("sevennet-like", uvu_sevennet_like()),
    ] {
        for dir in [Direction::Forward, Direction::Backward] {
            let plan = lower_conv(&tp, dir, Dtype::F64, &caps(), ConvOptions::default()).unwrap();
            assert!(
                matches!(plan.kernels[0].work, equikern_plan::Work::Channels(_)),
                "{tn} {dir:?}: not fused"
            );
            case += 1;
            let Some(exe) = build(&plan, &root.join(case.to_string())) else {
                println!("skipped: no C++ compiler");
                return;
            };
            for (gn, g) in &graphs {
                let e = g.edges() as u64;
                for fold in [e / 2, e / 3] {
                    let gs = equikern_plan::conv::GraphSize {
                        weight_fold: fold,
                        ..plan.graph_size(g)
                    };
                    let (rows, numel) = (gs.weight_rows() as usize, tp.weight_numel);
                    let mut inp = inputs(&tp, g, 11);
                    let w_rows = inp[&Tensor::W][..rows * numel].to_vec();
                    let w_full: Vec<f64> = (0..e)
                        .flat_map(|k| {
                            let r = if k >= fold { k - fold } else { k } as usize;
                            w_rows[r * numel..(r + 1) * numel].to_vec()
                        })
                        .collect();
                    inp.insert(Tensor::W, w_full);
                    let want = oracle(&tp, g, dir, &inp);
                    inp.insert(Tensor::W, w_rows);
                    let got = run_folded(&plan, &exe, g, &inp, fold);
                    for (t, w) in &want {
                        let err = rel_l2(&got[t], w);
                        assert!(err <= 1e-12, "{tn} {dir:?} {gn} fold {fold} {t:?}: {err:e}");
                    }
                }
            }
        }
    }
    // a plan of row kernels (the atomic mode) refuses a fold
    let plan = lower_conv(
        &uvu_per_edge(),
        Direction::Forward,
        Dtype::F64,
        &caps(),
        ConvOptions {
            atomic: true,
            max_piece_edges: None,
        },
    )
    .unwrap();
    let (_, g) = &graphs[0];
    let gs = equikern_plan::conv::GraphSize {
        weight_fold: 3,
        ..plan.graph_size(g)
    };
    let e = plan.check_graph(&gs).unwrap_err().to_string();
    assert!(e.contains("weight_fold 3"), "{e}");
    assert!(plan.check_graph(&plan.graph_size(g)).is_ok());
    let _ = std::fs::remove_dir_all(&root);
    println!("{case} plans with folded weight rows");
}

/// The channel-fused backward (one kernel over the sender view, barriers and workgroup
/// memory): its CUDA text on real threads per block, CSR and pieces, one and several
/// launches, against the f64 oracle; outputs poisoned; reruns bit-identical.
#[test]
fn fused_backward_cuda_runs_right_on_threads() {
    let (n, r, s) = directed();
    let (rr, ss) = random_skewed(60, 500, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([2, 2, 3], DIAMOND_A), 2.6).unwrap();
    let graphs = [
        ("directed", Csr::build(n, &r, &s).unwrap()),
        ("skewed", Csr::build(60, &rr, &ss).unwrap()),
        ("diamond", Csr::build(96, &d.receiver, &d.sender).unwrap()),
    ];
    let small = Capabilities {
        max_workgroups_per_dim: 2,
        ..caps()
    };
    let root = std::env::temp_dir().join(format!("equikern_conv_fused_{}", std::process::id()));
    let mut case = 0;
    for (tn, tp) in [
        ("per-edge", uvu_channels()),
        ("shared", uvu_channels_shared()),
        ("mixed", uvu_channels_mixed()),
        ("multi-mul", uvu_channels_multimul()),
        ("sevennet-like", uvu_sevennet_like()),
    ] {
        for (mn, opts) in [
            ("csr", ConvOptions::default()),
            (
                "pieces",
                ConvOptions {
                    atomic: false,
                    max_piece_edges: Some(3),
                },
            ),
        ] {
            for c in [caps(), small] {
                let plan = lower_conv(&tp, Direction::Backward, Dtype::F64, &c, opts).unwrap();
                assert!(
                    matches!(plan.kernels[0].work, equikern_plan::Work::Channels(_)),
                    "{tn} {mn}: not fused"
                );
                case += 1;
                let Some(exe) = build(&plan, &root.join(case.to_string())) else {
                    println!("skipped: no C++ compiler");
                    return;
                };
                for (gn, g) in &graphs {
                    let inp = inputs(&tp, g, 7);
                    let got = run(&plan, &exe, g, &inp);
                    let want = oracle(&tp, g, Direction::Backward, &inp);
                    assert_eq!(
                        got.keys().collect::<Vec<_>>(),
                        want.keys().collect::<Vec<_>>()
                    );
                    for (t, w) in &want {
                        let e = rel_l2(&got[t], w);
                        assert!(e <= 1e-12, "{tn} {mn} {gn} {t:?}: rel L2 {e:e}");
                    }
                    let again = run(&plan, &exe, g, &inp);
                    for (t, v) in &got {
                        let same = v
                            .iter()
                            .zip(&again[t])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{tn} {mn} {gn} {t:?}: rerun differs");
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("{case} fused plans on threads");
}

/// The channel-fused forward (one kernel over the receiver view, output blocks in
/// invocation groups; no barriers, so one thread at a time), CSR and pieces, one and
/// several launches, one and several groups, against the f64 oracle; outputs poisoned;
/// reruns bit-identical, and identical across dispatch splits and groupings.
#[test]
fn fused_forward_cuda_runs_right_on_threads() {
    use equikern_plan::{lower_conv_with, LowerOptions, Work};
    let (n, r, s) = directed();
    let (rr, ss) = random_skewed(60, 500, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([2, 2, 3], DIAMOND_A), 2.6).unwrap();
    let graphs = [
        ("directed", Csr::build(n, &r, &s).unwrap()),
        ("skewed", Csr::build(60, &rr, &ss).unwrap()),
        ("diamond", Csr::build(96, &d.receiver, &d.sender).unwrap()),
    ];
    let small = Capabilities {
        max_workgroups_per_dim: 2,
        ..caps()
    };
    let root = std::env::temp_dir().join(format!("equikern_conv_ffwd_{}", std::process::id()));
    let mut case = 0;
    for (tn, tp) in [
        ("per-edge", uvu_channels()),
        ("shared", uvu_channels_shared()),
        ("mixed", uvu_channels_mixed()),
        // `x` blocks of different multiplicities: groups of their own widths.
        ("multi-mul", uvu_channels_multimul()),
        ("sevennet-like", uvu_sevennet_like()),
    ] {
        for (mn, opts) in [
            ("csr", ConvOptions::default()),
            (
                "pieces",
                ConvOptions {
                    atomic: false,
                    max_piece_edges: Some(3),
                },
            ),
        ] {
            // Per graph: the first plan's results, which every other plan must reproduce.
            let mut first: BTreeMap<&str, BTreeMap<Tensor, Vec<f64>>> = BTreeMap::new();
            // (`span`: every output block in one group, hand-made: with mixed multiplicities
            // the group's lanes are the largest block's rows and the smaller blocks' rows are
            // guarded `ch < mul`.)
            for (c, regs, span) in [
                (caps(), None, false),
                (small, Some(8), false),
                (caps(), Some(1), false),
                (caps(), None, true),
            ] {
                let lo = LowerOptions {
                    conv_forward_regs: regs,
                    ..Default::default()
                };
                let mut plan =
                    match lower_conv_with(&tp, Direction::Forward, Dtype::F64, &c, opts, lo) {
                        Ok(p) => p,
                        // SevenNet-like in pieces: the `z` reduction's 3 136 invocations per node
                        // outgrow a 2×2 grid.
                        Err(e) if tn == "sevennet-like" && c.max_workgroups_per_dim == 2 => {
                            println!("{tn} {mn} {regs:?}: {e}");
                            continue;
                        }
                        Err(e) => panic!("{tn} {mn} {regs:?}: {e}"),
                    };
                if span {
                    let k = &mut plan.kernels[0];
                    let Work::Channels(cw) = &mut k.work else {
                        panic!("{tn} {mn}: not fused");
                    };
                    if cw.uniform() {
                        continue;
                    }
                    cw.conv.as_mut().unwrap().groups.clear();
                    cw.samples_per_group = 1;
                    k.workgroup_size = cw.lanes();
                    assert_eq!(cw.lanes(), cw.channels);
                }
                let Work::Channels(cw) = &plan.kernels[0].work else {
                    panic!("{tn} {mn}: not fused");
                };
                let groups = cw.conv.as_ref().unwrap().groups.len();
                assert!(regs.is_none() || groups > 1, "{tn} {mn} {regs:?}");
                let src = emit_cuda(&plan).unwrap().source;
                assert_eq!(
                    src.contains("if (ch < "),
                    span,
                    "{tn} {mn} {regs:?}: guards only where a group spans multiplicities"
                );
                assert_eq!(
                    src.contains("lanes per unit"),
                    !cw.uniform() && !span,
                    "{tn} {mn} {regs:?}: lane decode by group widths"
                );
                println!("{tn} {mn} {regs:?} span={span}: {} group(s)", groups.max(1));
                case += 1;
                let Some(exe) = build(&plan, &root.join(case.to_string())) else {
                    println!("skipped: no C++ compiler");
                    return;
                };
                for (gn, g) in &graphs {
                    let inp = inputs(&tp, g, 9);
                    let got = run(&plan, &exe, g, &inp);
                    let want = oracle(&tp, g, Direction::Forward, &inp);
                    assert_eq!(
                        got.keys().collect::<Vec<_>>(),
                        want.keys().collect::<Vec<_>>()
                    );
                    for (t, w) in &want {
                        let e = rel_l2(&got[t], w);
                        assert!(e <= 1e-12, "{tn} {mn} {regs:?} {gn} {t:?}: rel L2 {e:e}");
                    }
                    let again = run(&plan, &exe, g, &inp);
                    let bits = |a: &BTreeMap<Tensor, Vec<f64>>, b: &BTreeMap<Tensor, Vec<f64>>| {
                        a.iter().all(|(t, v)| {
                            v.iter().zip(&b[t]).all(|(x, y)| x.to_bits() == y.to_bits())
                        })
                    };
                    assert!(bits(&got, &again), "{tn} {mn} {regs:?} {gn}: rerun differs");
                    match first.get(gn) {
                        Some(f) => assert!(bits(f, &got), "{tn} {mn} {regs:?} {gn}: differs"),
                        None => {
                            first.insert(gn, got);
                        }
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    println!("{case} fused forward plans on threads");
}

/// Random `uvu` products over `x` blocks of different multiplicities (largest ≥ 8; some
/// paths unweighted, some shared weights), for the lane-grouped conv backward.
fn random_mixed(seed: u64) -> Option<(String, TensorProduct)> {
    use equikern_core::spec::builders::channelwise;
    use rand::Rng;
    let irs = ["0e", "1o", "1e", "2e", "2o"];
    let mut r = rng(300 + seed);
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
        return None;
    }
    for i in &mut spec.instructions {
        i.has_weight = r.random_range(0..3) != 0;
    }
    spec.shared_weights = r.random_range(0..4) == 0;
    let what = format!("seed {seed}: {} ⊗ {}", in1.join("+"), in2.join("+"));
    Some((what, spec.build().unwrap()))
}

/// The lane-grouped conv backward (mixed multiplicities: lanes as (x block, row, slice of
/// its paths), per-edge gy in 32-lane trees, slices' gx added in order): its CUDA text on
/// real threads per block for SevenNet-0's conv (the bench suite), the SevenNet-like and
/// multi-mul products (a partial last chunk) and random mixed products, CSR and pieces,
/// one and several launches: against the f64 oracle (rel L2 ≤ 1e-12), outputs poisoned,
/// **bit-identical to the interpreter** (which sums in the GPU's order) and across reruns;
/// the one-lane-per-channel plan (`conv_backward_lanes: false`) too, which on these
/// 32-lane capabilities runs a warp per unit with `gy` by `xor` shuffles (emulated by lanes
/// waiting on their warp; [`equikern_plan::ChannelConv::warp_units`]).
#[test]
fn lane_grouped_backward_cuda_matches_the_interpreter_bitwise() {
    let (rr, ss) = random_skewed(60, 500, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([2, 2, 3], DIAMOND_A), 2.6).unwrap();
    let graphs = [
        ("skewed", Csr::build(60, &rr, &ss).unwrap()),
        ("diamond", Csr::build(96, &d.receiver, &d.sender).unwrap()),
    ];
    let small = Capabilities {
        max_workgroups_per_dim: 2,
        ..caps()
    };
    let suite =
        equikern_core::spec::load_suite(include_str!("../../../benches/sevennet_suite.json"))
            .unwrap();
    let mut tps: Vec<(String, TensorProduct)> = vec![
        (suite[0].0.clone(), suite[0].1.clone().build().unwrap()),
        ("multi-mul".into(), uvu_channels_multimul()),
    ];
    tps.extend((0..5).filter_map(random_mixed));
    let root = std::env::temp_dir().join(format!("equikern_conv_lanes_{}", std::process::id()));
    let (mut case, mut grouped) = (0, 0);
    for (tn, tp) in &tps {
        for (mn, opts) in [
            ("csr", ConvOptions::default()),
            (
                "pieces",
                ConvOptions {
                    atomic: false,
                    max_piece_edges: Some(3),
                },
            ),
        ] {
            for (cn, c) in [("caps", caps()), ("small grid", small)] {
                for lanes in [true, false] {
                    // SevenNet-0 (384 threads a block, slow on CPU threads): both modes with
                    // lane groups, CSR without, on the H100-like limits only.
                    // The small grid (many launches, a thread per lane each) and the
                    // one-lane mapping (tested above) with CSR and lane groups only.
                    let big = tn.starts_with("sevennet");
                    if big && (cn != "caps" || (!lanes && mn == "pieces")) {
                        continue;
                    }
                    if cn != "caps" && (!lanes || mn == "pieces") {
                        continue;
                    }
                    let lopts = LowerOptions {
                        conv_backward_lanes: lanes,
                        ..Default::default()
                    };
                    let what = format!("{tn} {mn} {cn} lanes {lanes}");
                    let plan =
                        match lower_conv_with(tp, Direction::Backward, Dtype::F64, &c, opts, lopts)
                        {
                            Ok(p) => p,
                            // Shared weights' row kernels may not fit a 2×2 grid.
                            Err(e) if cn != "caps" => {
                                println!("{what}: {e}");
                                continue;
                            }
                            Err(e) => panic!("{what}: {e}"),
                        };
                    let equikern_plan::Work::Channels(cw) = &plan.kernels[0].work else {
                        panic!("{what}: not fused\n{plan}");
                    };
                    let is_grouped = !cw.lane_groups().is_empty();
                    // (A grouping that estimates worse than one lane per channel is not
                    // taken; SevenNet-0's is.)
                    assert!(!is_grouped || (lanes && !cw.uniform()), "{what}");
                    assert!(!big || is_grouped == lanes, "{what}");
                    // One lane per channel on a 32-lane target: a warp per unit (shuffles).
                    assert!(!big || lanes || cw.warp_units(), "{what}");
                    grouped += is_grouped as usize;
                    case += 1;
                    let Some(exe) = build(&plan, &root.join(case.to_string())) else {
                        println!("skipped: no C++ compiler");
                        return;
                    };
                    // (The diamond graph with CSR only: pieces of 3 edges are many blocks.)
                    let ng = if big || mn == "pieces" { 1 } else { 2 };
                    for (gn, g) in graphs.iter().take(ng) {
                        let inp = inputs(tp, g, 9);
                        let got = run(&plan, &exe, g, &inp);
                        let want = oracle(tp, g, Direction::Backward, &inp);
                        assert_eq!(
                            got.keys().collect::<Vec<_>>(),
                            want.keys().collect::<Vec<_>>()
                        );
                        for (t, w) in &want {
                            let e = rel_l2(&got[t], w);
                            assert!(e <= 1e-12, "{what} {gn} {t:?}: rel L2 {e:e}");
                        }
                        // (What the channel kernel writes; shared weights' gw comes from
                        // the row kernels.)
                        let interp = interpret_conv(&plan, g, &inp).unwrap();
                        for t in plan.kernels[0]
                            .outputs
                            .iter()
                            .filter(|t| got.contains_key(t))
                        {
                            let same = got[t]
                                .iter()
                                .zip(&interp[t])
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "{what} {gn} {t:?}: differs from the interpreter");
                        }
                        let again = run(&plan, &exe, g, &inp);
                        for (t, v) in &got {
                            let same = v
                                .iter()
                                .zip(&again[t])
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(same, "{what} {gn} {t:?}: rerun differs");
                        }
                    }
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    assert!(grouped >= 10, "only {grouped} lane-grouped plans");
    println!("{case} plans on threads, {grouped} lane-grouped");
}
