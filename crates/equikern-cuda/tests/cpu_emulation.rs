//! The CUDA text, run on the CPU: each emitted kernel is compiled as C++ (g++) with a few
//! lines standing in for the CUDA built-ins, its grid is walked thread by thread following the
//! runtime's own launch [`schedule`], and the results are compared with the oracle. This
//! checks the printed kernels and the dispatch/chunk logic where there is no GPU (CI).
//! Kernels with a barrier (channel-fused backward) run each block on real threads (one
//! `std::thread` per CUDA thread, `__syncthreads` a `std::barrier`); staged stores are not
//! covered.

mod common;

use common::*;
use equikern_core::{oracle, ConnectionMode, TensorProduct};
use equikern_cuda::exec::{schedule, wpartial_len};
use equikern_emit::cuda::{emit_with, CudaOptions, EmittedCuda, Param, Target};
use equikern_plan::{Capabilities, Direction, Dtype, KernelPlan, LowerOptions, Tensor, Work};
use std::collections::HashMap;
use std::ffi::c_void;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

const SHIM: &str = r#"
#include <algorithm>
#include <barrier>
#include <thread>
#include <vector>
struct ek_dim3 { unsigned int x, y, z; };
static ek_dim3 blockIdx, gridDim;
static thread_local ek_dim3 threadIdx;
// Kernels with a barrier (channel kernels) run one block at a time on real threads: a
// function-local static is then the block's shared memory.
static std::barrier<>* ek_bar = nullptr;
static inline void __syncthreads() { if (ek_bar) ek_bar->arrive_and_wait(); }
#define __shared__ static
#define __global__
#define __device__
#define __launch_bounds__(n)
template <class T> static inline T __ldg(const T* p) { return *p; }
using std::min;
"#;

fn h100_caps() -> Capabilities {
    Capabilities {
        subgroup_size: 32,
        subgroups: true,
        max_invocations_per_workgroup: 1024,
        max_workgroup_size_x: 1024,
        workgroup_memory_bytes: 232_448,
        max_storage_binding_bytes: 80 << 30,
        max_workgroups_per_dim: 65535,
        max_storage_buffers_per_stage: 256,
        f64: true,
        float_atomics: true,
        warp_shuffles: true,
    }
}

/// One C++ file: each plan's CUDA text in its own namespace, plus a launcher per kernel
/// that walks the whole grid.
fn cpp(plans: &[(KernelPlan, EmittedCuda)]) -> String {
    let mut s = SHIM.to_string();
    for (i, (plan, e)) in plans.iter().enumerate() {
        let threaded: Vec<bool> = plan
            .kernels
            .iter()
            .map(|k| matches!(k.work, Work::Channels(_) | Work::Staged(_)))
            .collect();
        let real = match plan.dtype {
            Dtype::F32 => "float",
            Dtype::F64 => "double",
        };
        let _ = writeln!(s, "namespace ek_p{i} {{\n{}", e.source);
        for (ki, k) in e.kernels.iter().enumerate() {
            let args: Vec<String> = k
                .params
                .iter()
                .enumerate()
                .map(|(j, p)| match p {
                    Param::Input(_) => format!("(const {real}*)a[{j}]"),
                    Param::Output(_) => format!("({real}*)a[{j}]"),
                    Param::NumSamples | Param::NumChunks => "last".into(),
                    // Convolution plans run in conv_cpu_emulation.rs.
                    Param::Conv => unreachable!("tensor-product plans only"),
                })
                .collect();
            if threaded[ki] {
                let _ = writeln!(
                    s,
                    "extern \"C\" void ek_launch_{n}(void** a, unsigned int last, unsigned int gx, unsigned int gy, unsigned int wg) {{\n\
                     gridDim.x = gx; gridDim.y = gy; gridDim.z = 1u;\n\
                     for (unsigned int by = 0; by < gy; ++by) for (unsigned int bx = 0; bx < gx; ++bx) {{\n\
                     blockIdx.x = bx; blockIdx.y = by; blockIdx.z = 0u;\n\
                     std::barrier<> bar(wg); ek_bar = &bar; std::vector<std::thread> th;\n\
                     for (unsigned int t = 0; t < wg; ++t) th.emplace_back([=] {{ threadIdx.x = t; threadIdx.y = 0u; threadIdx.z = 0u; {n}({}); }});\n\
                     for (auto& h : th) h.join(); ek_bar = nullptr; }} }}",
                    args.join(", "),
                    n = k.name
                );
                continue;
            }
            let _ = writeln!(
                s,
                "extern \"C\" void ek_launch_{n}(void** a, unsigned int last, unsigned int gx, unsigned int gy, unsigned int wg) {{\n\
                 gridDim.x = gx; gridDim.y = gy; gridDim.z = 1u;\n\
                 for (unsigned int by = 0; by < gy; ++by) for (unsigned int bx = 0; bx < gx; ++bx) {{\n\
                 blockIdx.x = bx; blockIdx.y = by; blockIdx.z = 0u;\n\
                 for (unsigned int t = 0; t < wg; ++t) {{ threadIdx.x = t; threadIdx.y = 0u; threadIdx.z = 0u; {n}({}); }} }} }}",
                args.join(", "),
                n = k.name
            );
        }
        s.push_str("}\n");
    }
    s
}

fn compile(src: &str, dir: &Path, name: &str) -> Result<libloading::Library, String> {
    let cpp = dir.join(format!("{name}.cpp"));
    let so = dir.join(format!("{name}.so"));
    std::fs::write(&cpp, src).map_err(|e| e.to_string())?;
    let o = Command::new("g++")
        .args([
            "-std=c++20",
            "-O1",
            "-shared",
            "-fPIC",
            "-pthread",
            "-w",
            "-o",
        ])
        .arg(&so)
        .arg(&cpp)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr)
            .chars()
            .take(3000)
            .collect());
    }
    // SAFETY: a library we just built; its initialisers only set up constant tables.
    unsafe { libloading::Library::new(&so) }.map_err(|e| e.to_string())
}

type LaunchFn = unsafe extern "C" fn(*const *mut c_void, u32, u32, u32, u32);

/// Runs `plan` over `batch` samples on host buffers (outputs NaN-poisoned first).
fn run<T: Copy>(
    lib: &libloading::Library,
    plan: &KernelPlan,
    e: &EmittedCuda,
    batch: usize,
    bufs: &mut HashMap<Tensor, Vec<T>>,
    nan: T,
) {
    bufs.insert(
        Tensor::WPartial,
        vec![nan; wpartial_len(plan, batch as u64).max(1) as usize],
    );
    bufs.insert(
        Tensor::Scratch,
        vec![nan; (batch * plan.dims.scratch as usize).max(1)],
    );
    for l in schedule(plan, e, batch as u64, [65535, 65535]).unwrap() {
        let name = format!("ek_launch_{}", e.kernels[l.kernel].name);
        // SAFETY: the launcher's C signature is `LaunchFn` (printed above).
        let f: libloading::Symbol<LaunchFn> = unsafe { lib.get(name.as_bytes()) }.unwrap();
        let mut ptrs: Vec<*mut c_void> = Vec::new();
        for (t, off) in &l.args {
            let v = bufs.get_mut(t).unwrap();
            assert!(*off as usize <= v.len(), "{t:?} offset past the end");
            // SAFETY: in bounds (checked above); kernels index within the plan's layout.
            ptrs.push(unsafe { v.as_mut_ptr().add(*off as usize) }.cast());
        }
        unsafe { f(ptrs.as_ptr(), l.last, l.grid.0, l.grid.1, l.block) };
    }
}

struct Case {
    tp: TensorProduct,
    dtype: Dtype,
    /// Force dispatches of this many chunks (or 16-sample blocks) to exercise splitting.
    split: bool,
    opts: CudaOptions,
    /// Lower the backward with the channel-fused kernel where the product qualifies.
    fusion: bool,
    label: String,
}

fn plans(c: &Case) -> Vec<(KernelPlan, EmittedCuda)> {
    [
        Direction::Forward,
        Direction::Backward,
        Direction::DoubleBackward,
    ]
    .into_iter()
    .map(|d| {
        let opts = LowerOptions {
            channel_fusion: c.fusion,
            ..Default::default()
        };
        let mut p = equikern_plan::lower_with(&c.tp, d, c.dtype, &h100_caps(), opts).unwrap();
        if c.split {
            p.max_samples_per_dispatch = p.chunk_size().unwrap_or(16) * 2;
        }
        let e = emit_with(&p, Target::Cuda, c.opts).unwrap();
        (p, e)
    })
    .collect()
}

fn check(c: &Case, lib: &libloading::Library, ps: &[(KernelPlan, EmittedCuda)], batch: usize) {
    let tp = &c.tp;
    let wl = w_len(tp, batch);
    let r = |n, s| rand_vec(n, s + batch as u64);
    let (x, y, w, gz) = (
        r(batch * tp.dim_in1, 1),
        r(batch * tp.dim_in2, 2),
        r(wl, 3),
        r(batch * tp.dim_out, 4),
    );
    let (hx, hy, hw) = (r(batch * tp.dim_in1, 5), r(batch * tp.dim_in2, 6), r(wl, 7));
    let z = oracle::forward(tp, batch, &x, &y, &w).unwrap();
    let g = oracle::backward(tp, batch, &x, &y, &w, &gz).unwrap();
    let d = oracle::double_backward(tp, batch, &x, &y, &w, &gz, &hx, &hy, &hw).unwrap();
    use Tensor::*;
    let want: Vec<(Tensor, &Vec<f64>)> = vec![
        (Z, &z),
        (GX, &g.gx),
        (GY, &g.gy),
        (GW, &g.gw),
        (DX, &d.dx),
        (DY, &d.dy),
        (DW, &d.dw),
        (DGZ, &d.dgz),
    ];
    let inputs: Vec<(Tensor, &Vec<f64>)> = vec![
        (X, &x),
        (Y, &y),
        (W, &w),
        (GZ, &gz),
        (HX, &hx),
        (HY, &hy),
        (HW, &hw),
    ];
    let tol = match c.dtype {
        Dtype::F32 => 1e-5,
        Dtype::F64 => 1e-12,
    };
    macro_rules! go {
        ($t:ty) => {{
            let mut bufs: HashMap<Tensor, Vec<$t>> = HashMap::new();
            for (t, v) in &inputs {
                let mut h: Vec<$t> = v.iter().map(|&a| a as $t).collect();
                h.push(0.0); // never empty
                bufs.insert(*t, h);
            }
            for (t, v) in &want {
                bufs.insert(*t, vec![<$t>::NAN; v.len() + 1]);
            }
            for (p, e) in ps {
                run::<$t>(lib, p, e, batch, &mut bufs, <$t>::NAN);
            }
            for (t, v) in &want {
                let got: Vec<f64> = bufs[t][..v.len()].iter().map(|&a| a as f64).collect();
                assert!(
                    got.iter().all(|a| a.is_finite()),
                    "{} batch {batch} {t:?}: unwritten element",
                    c.label
                );
                let err = rel_l2(&got, v);
                let tol = if matches!(t, DX | DY | DW | DGZ) && c.dtype == Dtype::F32 {
                    1e-4
                } else {
                    tol
                };
                assert!(
                    err <= tol,
                    "{} batch {batch} {t:?}: rel L2 {err:.2e}",
                    c.label
                );
                assert!(
                    !bufs[t][v.len()].is_finite(),
                    "{} {t:?}: wrote past the end",
                    c.label
                );
            }
        }};
    }
    match c.dtype {
        Dtype::F32 => go!(f32),
        Dtype::F64 => go!(f64),
    }
}

#[test]
fn cuda_text_runs_on_cpu_and_matches_oracle() {
    if !Command::new("g++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("skipped: no g++ to compile the CUDA text for the CPU");
        return;
    }
    let mut cases = Vec::new();
    for m in MODES {
        for (weighted, shared) in [(true, false), (true, true), (false, false)] {
            if !weighted && m.requires_weight() {
                continue;
            }
            let tp = mode_spec(m, weighted, shared, 4);
            for segment_tree in [false, true] {
                cases.push(Case {
                    tp: tp.clone(),
                    dtype: Dtype::F64,
                    split: false,
                    opts: CudaOptions {
                        segment_tree,
                        ..Default::default()
                    },
                    fusion: true,
                    label: format!("{m:?} weighted={weighted} shared={shared} tree={segment_tree}"),
                });
            }
        }
    }
    for (m, shared) in [
        (ConnectionMode::Uvw, true),
        (ConnectionMode::Uvuv, false),
        (ConnectionMode::Uvu, true),
    ] {
        let tp = mode_spec(m, true, shared, 4);
        cases.push(Case {
            tp: tp.clone(),
            dtype: Dtype::F32,
            split: false,
            opts: CudaOptions::default(),
            fusion: true,
            label: format!("{m:?} shared={shared} f32"),
        });
        cases.push(Case {
            tp,
            dtype: Dtype::F64,
            split: true,
            opts: CudaOptions {
                segment_tree: true,
                ..Default::default()
            },
            fusion: true,
            label: format!("{m:?} shared={shared} split tree"),
        });
    }
    // Long gathers split into `_parts` kernels and per-sample Scratch (mul-1 `y` blocks).
    let tp = long_gather_spec();
    for (dtype, split) in [(Dtype::F64, false), (Dtype::F32, true)] {
        let c = Case {
            tp: tp.clone(),
            dtype,
            split,
            opts: CudaOptions::default(),
            fusion: false,
            label: format!("long gathers {dtype:?} split={split}"),
        };
        let ps = plans(&c);
        assert!(
            ps[1].0.dims.scratch > 0 && ps[2].0.dims.scratch > 0,
            "no gather split"
        );
        cases.push(c);
    }
    // The channel-fused backward (threads + barrier), several blocks and partial blocks.
    for (m, weighted, shared, dtype, split) in [
        (16, true, false, Dtype::F64, false),
        (8, true, true, Dtype::F32, true),
        (8, false, false, Dtype::F64, true),
    ] {
        let c = Case {
            tp: uvu_spec(m, weighted, shared),
            dtype,
            split,
            opts: CudaOptions::default(),
            fusion: true,
            label: format!("channel-fused m={m} weighted={weighted} shared={shared} {dtype:?}"),
        };
        assert!(
            plans(&c)[1]
                .0
                .kernels
                .iter()
                .any(|k| matches!(k.work, Work::Channels(_))),
            "{}: not fused",
            c.label
        );
        cases.push(c);
    }
    // The channel-fused backward over x blocks of different multiplicities (guarded rows).
    for ((a, b, cm), weighted, shared, dtype, split) in [
        ((16, 8, 12), true, false, Dtype::F64, false),
        ((8, 16, 4), true, true, Dtype::F32, true),
        ((12, 3, 9), false, false, Dtype::F64, true),
    ] {
        let c = Case {
            tp: uvu_mixed_spec(a, b, cm, weighted, shared),
            dtype,
            split,
            opts: CudaOptions::default(),
            fusion: true,
            label: format!(
                "channel-fused mixed muls {a}/{b}/{cm} weighted={weighted} shared={shared} {dtype:?}"
            ),
        };
        assert!(
            plans(&c)[1]
                .0
                .kernels
                .iter()
                .any(|k| matches!(&k.work, Work::Channels(w) if !w.uniform())),
            "{}: not fused",
            c.label
        );
        cases.push(c);
    }
    // The weight-staged forward and backward (threads + barriers), uvw with per-sample weights.
    for (a, b, dtype, split) in [(4, 12, Dtype::F64, false), (3, 10, Dtype::F32, true)] {
        let c = Case {
            tp: uvw_staged_spec(a, b),
            dtype,
            split,
            opts: CudaOptions::default(),
            fusion: true,
            label: format!("weight-staged {a}/{b} {dtype:?} split={split}"),
        };
        let ps = plans(&c);
        for p in &ps {
            assert!(
                p.0.kernels
                    .iter()
                    .any(|k| matches!(k.work, Work::Staged(_))),
                "{}: not staged",
                c.label
            );
        }
        cases.push(c);
    }
    let dir = std::env::temp_dir().join(format!("equikern-cpu-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Two compilers at a time (two cores on CI).
    let failures: Vec<String> = std::thread::scope(|s| {
        let (a, b) = cases.split_at(cases.len() / 2);
        let dir = &dir;
        let work = move |part: &[Case], tag: &str| {
            let mut f = Vec::new();
            for (i, c) in part.iter().enumerate() {
                let ps = plans(c);
                let names: Vec<&str> = ps
                    .iter()
                    .flat_map(|(_, e)| e.kernels.iter().map(|k| k.name.as_str()))
                    .collect();
                let mut uniq = names.clone();
                uniq.sort();
                uniq.dedup();
                assert_eq!(
                    uniq.len(),
                    names.len(),
                    "kernel names repeat across directions"
                );
                match compile(&cpp(&ps), dir, &format!("{tag}{i}")) {
                    Err(e) => f.push(format!("{}: {e}", c.label)),
                    Ok(lib) => {
                        for batch in [1, 7, 300] {
                            check(c, &lib, &ps, batch);
                        }
                    }
                }
            }
            f
        };
        let h = s.spawn(move || work(a, "a"));
        let mut f = work(b, "b");
        f.extend(h.join().unwrap());
        f
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{} cases checked", cases.len());
}

/// MACE-like: 16 channels times a mul-1 `y`, uvu (GY rows sum over every u of every path).
fn long_gather_spec() -> TensorProduct {
    use equikern_core::{Instruction, Irreps, TpSpec};
    let ins = [(0, 0, 0), (0, 1, 1), (1, 0, 2), (1, 1, 3), (1, 1, 4)]
        .iter()
        .map(|&(a, b, o)| Instruction::new(a, b, o, ConnectionMode::Uvu, true))
        .collect();
    TpSpec {
        irreps_in1: Irreps::parse("16x0e+16x1o").unwrap(),
        irreps_in2: Irreps::parse("1x0e+1x1o").unwrap(),
        irreps_out: Irreps::parse("16x0e+16x1o+16x1o+16x0e+16x1e").unwrap(),
        instructions: ins,
        shared_weights: false,
        irrep_normalization: Default::default(),
        path_normalization: Default::default(),
    }
    .build()
    .unwrap()
}
