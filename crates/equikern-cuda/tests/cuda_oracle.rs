//! GPU results against the f64 oracle: every connection mode, weighted/unweighted,
//! shared/per-sample weights, f32 and f64, batches 1..50 000+, outputs poisoned with NaN.
//! Every test prints "skipped: CUDA not available (…)" and passes where there is no GPU.

mod common;

use common::*;
use equikern_core::oracle;
use equikern_core::TensorProduct;
use equikern_cuda::{
    CacheLevel, CudaDevice, CudaError, CudaOptions, CudaSlice, CudaTensorProduct, Real,
};
use equikern_plan::{Direction, Dtype};

trait Num: Real {
    fn from64(v: f64) -> Self;
    fn to64(self) -> f64;
    const NAN: Self;
}
impl Num for f32 {
    fn from64(v: f64) -> Self {
        v as f32
    }
    fn to64(self) -> f64 {
        self as f64
    }
    const NAN: Self = f32::NAN;
}
impl Num for f64 {
    fn from64(v: f64) -> Self {
        v
    }
    fn to64(self) -> f64 {
        self
    }
    const NAN: Self = f64::NAN;
}

/// Tolerances (rel L2): forward/backward, double backward.
fn tol(d: Dtype) -> (f64, f64) {
    match d {
        Dtype::F32 => (1e-5, 1e-4),
        Dtype::F64 => (1e-12, 1e-12),
    }
}

struct Data {
    x: Vec<f64>,
    y: Vec<f64>,
    w: Vec<f64>,
    gz: Vec<f64>,
    hx: Vec<f64>,
    hy: Vec<f64>,
    hw: Vec<f64>,
}

fn data(tp: &TensorProduct, batch: usize, seed: u64) -> Data {
    Data {
        x: rand_vec(batch * tp.dim_in1, seed),
        y: rand_vec(batch * tp.dim_in2, seed + 1),
        w: rand_vec(w_len(tp, batch), seed + 2),
        gz: rand_vec(batch * tp.dim_out, seed + 3),
        hx: rand_vec(batch * tp.dim_in1, seed + 4),
        hy: rand_vec(batch * tp.dim_in2, seed + 5),
        hw: rand_vec(w_len(tp, batch), seed + 6),
    }
}

fn up<T: Num>(dev: &CudaDevice, v: &[f64]) -> CudaSlice<T> {
    let t: Vec<T> = v.iter().map(|&a| T::from64(a)).collect();
    dev.upload(&t).unwrap()
}

/// A NaN-filled output buffer: any element a kernel fails to write shows up as NaN.
fn poisoned<T: Num>(dev: &CudaDevice, n: usize) -> CudaSlice<T> {
    dev.upload(&vec![T::NAN; n.max(1)]).unwrap()
}

fn down<T: Num>(dev: &CudaDevice, s: &CudaSlice<T>, n: usize) -> Vec<f64> {
    dev.download(s, n)
        .unwrap()
        .into_iter()
        .map(T::to64)
        .collect()
}

fn expect(label: &str, what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{label} {what}: non-finite output (unwritten element?)"
    );
    let e = rel_l2(got, want);
    assert!(e <= tol, "{label} {what}: rel L2 {e:.3e} > {tol:.0e}");
}

/// Runs all three directions of `ctp` through the device API and compares with the oracle.
fn check_all<T: Num>(
    dev: &CudaDevice,
    ctp: &CudaTensorProduct,
    tp: &TensorProduct,
    batch: usize,
    label: &str,
) {
    let (tol_fb, tol_dd) = tol(T::DTYPE);
    let d = data(tp, batch, batch as u64 * 31 + 7);
    let label = format!("{label} {:?} batch {batch}", T::DTYPE);
    let (x, y, w, gz) = (
        up::<T>(dev, &d.x),
        up::<T>(dev, &d.y),
        up::<T>(dev, &d.w),
        up::<T>(dev, &d.gz),
    );
    let (hx, hy, hw) = (
        up::<T>(dev, &d.hx),
        up::<T>(dev, &d.hy),
        up::<T>(dev, &d.hw),
    );
    let wl = w_len(tp, batch);
    let (n1, n2, no) = (batch * tp.dim_in1, batch * tp.dim_in2, batch * tp.dim_out);

    let want = oracle::forward(tp, batch, &d.x, &d.y, &d.w).unwrap();
    let mut z = poisoned::<T>(dev, no);
    ctp.forward_device(batch, &x, &y, &w, &mut z).unwrap();
    expect(&label, "z", &down(dev, &z, no), &want, tol_fb);

    let g = oracle::backward(tp, batch, &d.x, &d.y, &d.w, &d.gz).unwrap();
    let (mut gx, mut gy, mut gw) = (
        poisoned::<T>(dev, n1),
        poisoned::<T>(dev, n2),
        poisoned::<T>(dev, wl),
    );
    ctp.backward_device(batch, &x, &y, &w, &gz, &mut gx, &mut gy, &mut gw)
        .unwrap();
    expect(&label, "gx", &down(dev, &gx, n1), &g.gx, tol_fb);
    expect(&label, "gy", &down(dev, &gy, n2), &g.gy, tol_fb);
    expect(&label, "gw", &down(dev, &gw, wl), &g.gw, tol_fb);

    let dd =
        oracle::double_backward(tp, batch, &d.x, &d.y, &d.w, &d.gz, &d.hx, &d.hy, &d.hw).unwrap();
    let (mut dx, mut dy, mut dw, mut dgz) = (
        poisoned::<T>(dev, n1),
        poisoned::<T>(dev, n2),
        poisoned::<T>(dev, wl),
        poisoned::<T>(dev, no),
    );
    ctp.double_backward_device(
        batch, &x, &y, &w, &gz, &hx, &hy, &hw, &mut dx, &mut dy, &mut dw, &mut dgz,
    )
    .unwrap();
    expect(&label, "dx", &down(dev, &dx, n1), &dd.dx, tol_dd);
    expect(&label, "dy", &down(dev, &dy, n2), &dd.dy, tol_dd);
    expect(&label, "dw", &down(dev, &dw, wl), &dd.dw, tol_dd);
    expect(&label, "dgz", &down(dev, &dgz, no), &dd.dgz, tol_dd);
}

/// (weighted, shared) variants worth testing for a mode.
fn variants(m: equikern_core::ConnectionMode) -> Vec<(bool, bool)> {
    let mut v = vec![(true, false), (true, true)];
    if !m.requires_weight() {
        v.push((false, false));
    }
    v
}

fn every_mode<T: Num>(batches: &[usize], max_paths: usize) {
    every_mode_with::<T>(batches, max_paths, CudaOptions::default())
}

fn every_mode_with<T: Num>(batches: &[usize], max_paths: usize, opts: CudaOptions) {
    let Some(dev) = device() else { return };
    let mut n = 0;
    for m in MODES {
        for (weighted, shared) in variants(m) {
            let tp = mode_spec(m, weighted, shared, max_paths);
            let label = format!("{m:?} weighted={weighted} shared={shared}");
            let ctp = CudaTensorProduct::new(&dev, &tp, T::DTYPE)
                .unwrap_or_else(|e| panic!("{label}: {e}"))
                .with_options(opts);
            for &b in batches {
                check_all::<T>(&dev, &ctp, &tp, b, &label);
                n += 1;
            }
        }
    }
    println!("{n} cases passed on {}", dev.name());
}

#[test]
fn small_corpus_f32() {
    every_mode::<f32>(&[1, 7], 3);
}

#[test]
fn every_mode_f32() {
    every_mode::<f32>(&[1, 7, 1000], 6);
}

const STAGED: CudaOptions = CudaOptions {
    staged_stores: true,
    segment_tree: false,
};

#[test]
fn small_corpus_staged_f32() {
    every_mode_with::<f32>(&[1, 7], 3, STAGED);
}

const TREE: CudaOptions = CudaOptions {
    staged_stores: false,
    segment_tree: true,
};

#[test]
fn every_mode_tree_f64() {
    every_mode_with::<f64>(&[1, 7, 333], 6, TREE);
}

#[test]
fn every_mode_staged_f32() {
    every_mode_with::<f32>(&[1, 7, 1000], 6, STAGED);
}

#[test]
fn every_mode_staged_f64() {
    every_mode_with::<f64>(&[1, 7, 333], 6, STAGED);
}

#[test]
fn every_mode_f64() {
    every_mode::<f64>(&[1, 7, 1000], 6);
}

#[test]
fn large_batch_f32() {
    let Some(dev) = device() else { return };
    for (m, shared) in [
        (equikern_core::ConnectionMode::Uvu, true),
        (equikern_core::ConnectionMode::Uvw, false),
    ] {
        let tp = mode_spec(m, true, shared, 6);
        let ctp = CudaTensorProduct::new(&dev, &tp, Dtype::F32).unwrap();
        check_all::<f32>(&dev, &ctp, &tp, 50_003, &format!("{m:?} shared={shared}"));
    }
}

/// Plans forced to tiny dispatches: exercises batch splitting and chunk rebasing.
#[test]
fn split_dispatches() {
    let Some(dev) = device() else { return };
    for dtype in [Dtype::F32, Dtype::F64] {
        for (m, shared) in [
            (equikern_core::ConnectionMode::Uvw, true),
            (equikern_core::ConnectionMode::Uvuv, false),
        ] {
            let tp = mode_spec(m, true, shared, 4);
            let caps = dev.capabilities();
            let plans: Vec<_> = [
                Direction::Forward,
                Direction::Backward,
                Direction::DoubleBackward,
            ]
            .into_iter()
            .map(|d| {
                let mut p = equikern_plan::lower(&tp, d, dtype, &caps).unwrap();
                p.max_samples_per_dispatch = p.chunk_size().unwrap_or(16) * 2;
                p
            })
            .collect();
            let ctp = CudaTensorProduct::from_plans(&dev, plans).unwrap();
            match dtype {
                Dtype::F32 => check_all::<f32>(&dev, &ctp, &tp, 1003, "split"),
                Dtype::F64 => check_all::<f64>(&dev, &ctp, &tp, 1003, "split"),
            }
        }
    }
}

#[test]
fn host_api_matches_oracle() {
    let Some(dev) = device() else { return };
    let tp = mode_spec(equikern_core::ConnectionMode::Uvu, true, true, 6);
    let ctp = CudaTensorProduct::new(&dev, &tp, Dtype::F64).unwrap();
    let b = 77;
    let d = data(&tp, b, 5);
    let z = ctp.forward(b, &d.x, &d.y, &d.w).unwrap();
    expect(
        "host",
        "z",
        &z,
        &oracle::forward(&tp, b, &d.x, &d.y, &d.w).unwrap(),
        1e-12,
    );
    let g = ctp.backward(b, &d.x, &d.y, &d.w, &d.gz).unwrap();
    let o = oracle::backward(&tp, b, &d.x, &d.y, &d.w, &d.gz).unwrap();
    expect("host", "gw", &g.gw, &o.gw, 1e-12);
    expect("host", "gx", &g.gx, &o.gx, 1e-12);
    let dd = ctp
        .double_backward(b, &d.x, &d.y, &d.w, &d.gz, &d.hx, &d.hy, &d.hw)
        .unwrap();
    let o = oracle::double_backward(&tp, b, &d.x, &d.y, &d.w, &d.gz, &d.hx, &d.hy, &d.hw).unwrap();
    expect("host", "dgz", &dd.dgz, &o.dgz, 1e-12);
    expect("host", "dw", &dd.dw, &o.dw, 1e-12);
    // Batch 0 is valid: empty outputs, zero shared-weight gradient.
    let g0 = ctp
        .backward::<f64>(0, &[], &[], &d.w[..tp.weight_numel], &[])
        .unwrap();
    assert!(g0.gw.iter().all(|&v| v == 0.0) && g0.gx.is_empty());
}

#[test]
fn bad_arguments_are_errors() {
    let Some(dev) = device() else { return };
    let tp = mode_spec(equikern_core::ConnectionMode::Uvw, true, false, 2);
    let ctp = CudaTensorProduct::new(&dev, &tp, Dtype::F32).unwrap();
    let x = vec![0f32; 3 * tp.dim_in1];
    let y = vec![0f32; 3 * tp.dim_in2];
    let w = vec![0f32; 3 * tp.weight_numel];
    assert!(matches!(
        ctp.forward(3, &x[1..], &y, &w),
        Err(CudaError::Length { arg: "x", .. })
    ));
    assert!(matches!(
        ctp.forward(3, &x, &y, &w[..2]),
        Err(CudaError::Length { .. })
    ));
    let x64 = vec![0f64; 3 * tp.dim_in1];
    let r = ctp.forward(3, &x64, &x64, &x64);
    assert!(matches!(r, Err(CudaError::Dtype { .. })), "{r:?}");
    let (dx, dy, dw) = (
        dev.upload(&x).unwrap(),
        dev.upload(&y).unwrap(),
        dev.upload(&w).unwrap(),
    );
    let mut z = dev.zeros::<f32>(5).unwrap();
    assert!(matches!(
        ctp.forward_device(3, &dx, &dy, &dw, &mut z),
        Err(CudaError::Length { arg: "z", .. })
    ));
}

/// First call compiles with NVRTC; a fresh device handle on the same disk cache loads the
/// cubin; a second prepare is a memory hit.
#[test]
fn module_cache_levels() {
    let Some(dev) = device() else { return };
    let dir = std::env::temp_dir().join(format!("equikern-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tp = mode_spec(equikern_core::ConnectionMode::Uvu, true, false, 6);
    let d1 = dev.clone().with_cache_dir(Some(dir.clone()));
    let a = CudaTensorProduct::new(&d1, &tp, Dtype::F32).unwrap();
    let i1 = a.prepare(Direction::Forward).unwrap();
    let i2 = a.prepare(Direction::Forward).unwrap();
    let d2 = dev.clone().with_cache_dir(Some(dir.clone()));
    let b = CudaTensorProduct::new(&d2, &tp, Dtype::F32).unwrap();
    let i3 = b.prepare(Direction::Forward).unwrap();
    let c = CudaTensorProduct::new(&d2, &tp, Dtype::F32).unwrap();
    let i4 = c.prepare(Direction::Forward).unwrap();
    println!("compile: first {:.1} ms (nvrtc {:.1}, load {:.1}), same object {:?}, disk {:.1} ms, memory {:.1} ms",
        i1.total_ms, i1.nvrtc_ms, i1.load_ms, i2.level, i3.total_ms, i4.total_ms);
    assert_eq!(i1.level, CacheLevel::Compiled);
    assert_eq!(i2.level, CacheLevel::Memory);
    assert_eq!(i3.level, CacheLevel::Disk);
    assert_eq!(i4.level, CacheLevel::Memory);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every paper-suite problem compiles in all directions and matches the oracle at batch 3.
#[test]
fn paper_suite_f32_small_batch() {
    let Some(dev) = device() else { return };
    for (label, tp) in paper_suite() {
        let ctp = CudaTensorProduct::new(&dev, &tp, Dtype::F32).unwrap();
        for d in [
            Direction::Forward,
            Direction::Backward,
            Direction::DoubleBackward,
        ] {
            let i = ctp.prepare(d).unwrap();
            println!(
                "{label:24} {d:?}: {} kernels, {} KiB source, {:?} in {:.0} ms (nvrtc {:.0} ms)",
                i.kernels,
                i.source_bytes / 1024,
                i.level,
                i.total_ms,
                i.nvrtc_ms
            );
        }
        check_all::<f32>(&dev, &ctp, &tp, 3, &label);
        let staged = CudaTensorProduct::new(&dev, &tp, Dtype::F32)
            .unwrap()
            .with_options(STAGED);
        check_all::<f32>(&dev, &staged, &tp, 5, &format!("{label} staged"));
        let tree = CudaTensorProduct::new(&dev, &tp, Dtype::F32)
            .unwrap()
            .with_options(TREE);
        check_all::<f32>(&dev, &tree, &tp, 5, &format!("{label} tree"));
    }
}

/// Paper-suite timing at batch 50 000 (f32 forward, backward, double backward; with
/// `EK_BENCH_ALL` set also staged forward and segment-tree backward). Run with `--ignored`.
#[test]
#[ignore]
fn bench_paper_suite() {
    let Some(dev) = device() else { return };
    let batch = 50_000;
    println!(
        "device {} ({}), batch {batch}, f32, median of 30 after 5 warm-up runs",
        dev.name(),
        dev.arch()
    );
    for (label, tp) in paper_suite() {
        let plain = CudaTensorProduct::new(&dev, &tp, Dtype::F32).unwrap();
        let staged = CudaTensorProduct::new(&dev, &tp, Dtype::F32)
            .unwrap()
            .with_options(STAGED);
        let tree = CudaTensorProduct::new(&dev, &tp, Dtype::F32)
            .unwrap()
            .with_options(TREE);
        let mut line = format!("{label:24}");
        let all = std::env::var("EK_BENCH_ALL").is_ok();
        let mut runs = vec![
            (Direction::Forward, &plain, "fwd"),
            (Direction::Backward, &plain, "bwd"),
            (Direction::DoubleBackward, &plain, "dbl"),
        ];
        if all {
            runs.push((Direction::Forward, &staged, "fwd-staged"));
            runs.push((Direction::Backward, &tree, "bwd-tree"));
        }
        for (d, ctp, name) in runs {
            let c = ctp.prepare(d).unwrap();
            let t = ctp.time::<f32>(d, batch, 5, 30).unwrap();
            line += &format!(
                "  {name} {:8.3} ms (min {:.3}, compile {:.0} ms {:?})",
                t.median_ms, t.min_ms, c.total_ms, c.level
            );
        }
        println!("{line}");
    }
}

/// Runs everywhere: every test spec builds, lowers for an H100-like target and prints.
#[test]
fn test_specs_lower_and_print_without_gpu() {
    let caps = equikern_plan::Capabilities {
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
    };
    let mut n = 0;
    for m in MODES {
        for (weighted, shared) in variants(m) {
            let tp = mode_spec(m, weighted, shared, 6);
            assert!(!tp.paths.is_empty(), "{m:?}");
            for d in [
                Direction::Forward,
                Direction::Backward,
                Direction::DoubleBackward,
            ] {
                for dt in [Dtype::F32, Dtype::F64] {
                    let plan = equikern_plan::lower(&tp, d, dt, &caps).unwrap();
                    equikern_emit::cuda::emit_cuda(&plan).unwrap();
                    let split = split_by_output(&plan);
                    let outs: usize = split.kernels.iter().map(|k| k.outputs.len()).sum();
                    assert!(outs >= plan.kernels.len());
                    equikern_emit::cuda::emit_cuda(&split).unwrap();
                    n += 1;
                }
            }
        }
    }
    println!("{n} plans printed");
}

/// `plan` keeping only the segments that write one of `keep` (rows renumbered; kernels left
/// without rows dropped, and the reduction with them): times each output's share.
fn only(
    plan: &equikern_plan::KernelPlan,
    keep: &[equikern_plan::Tensor],
) -> equikern_plan::KernelPlan {
    use equikern_plan::Work;
    let mut p = plan.clone();
    for k in &mut p.kernels {
        if let Work::Rows {
            segments,
            rows_per_sample,
            ..
        } = &mut k.work
        {
            segments.retain(|s| keep.contains(&s.out));
            let mut first = 0;
            for s in segments.iter_mut() {
                s.first_row = first;
                first += s.rows;
            }
            *rows_per_sample = first;
        }
    }
    p.kernels.retain(|k| {
        !matches!(
            k.work,
            Work::Rows {
                rows_per_sample: 0,
                ..
            }
        )
    });
    if p.chunk_size().is_none() {
        p.kernels
            .retain(|k| !matches!(k.work, Work::ReduceChunks { .. }));
    }
    p
}

/// Where backward time goes: each output tensor's rows timed alone (batch 50 000, f32).
#[test]
#[ignore]
fn bench_backward_breakdown() {
    use equikern_plan::Tensor::*;
    let Some(dev) = device() else { return };
    let batch = 50_000;
    for (label, tp) in paper_suite() {
        let full = equikern_plan::lower(&tp, Direction::Backward, Dtype::F32, &dev.capabilities())
            .unwrap();
        let mut line = format!("{label:24}");
        for (name, keep) in [
            ("all", vec![GX, GY, GW, WPartial]),
            ("gx", vec![GX]),
            ("gy", vec![GY]),
            ("gw", vec![GW, WPartial]),
        ] {
            let p = only(&full, &keep);
            if p.kernels.is_empty() {
                continue;
            }
            let ctp = CudaTensorProduct::from_plans(&dev, vec![p]).unwrap();
            let t = ctp.time::<f32>(Direction::Backward, batch, 3, 30).unwrap();
            line += &format!("  {name} {:8.3} ms", t.median_ms);
        }
        println!("{line}");
    }
}

/// `plan` with every row kernel split into one kernel per output tensor (same segments, rows
/// renumbered): a plan-level experiment, measured by `bench_split_outputs`.
fn split_by_output(plan: &equikern_plan::KernelPlan) -> equikern_plan::KernelPlan {
    use equikern_plan::Work;
    let mut p = plan.clone();
    p.kernels.clear();
    for k in &plan.kernels {
        match &k.work {
            Work::Rows { .. } if k.outputs.len() > 1 => {
                for &t in &k.outputs {
                    let mut part = only(
                        &equikern_plan::KernelPlan {
                            kernels: vec![k.clone()],
                            ..plan.clone()
                        },
                        &[t],
                    );
                    if let Some(mut kk) = part.kernels.pop() {
                        if matches!(kk.work, Work::Rows { .. }) {
                            kk.name = format!("{}_{t:?}", k.name);
                            kk.outputs = vec![t];
                            p.kernels.push(kk);
                        }
                    }
                }
            }
            _ => p.kernels.push(k.clone()),
        }
    }
    p
}

/// Backward and double backward as lowered vs. split into one kernel per output (batch
/// 50 000, f32): how much the mixing of short and long rows in one kernel costs.
#[test]
#[ignore]
fn bench_split_outputs() {
    let Some(dev) = device() else { return };
    let batch = 50_000;
    for (label, tp) in paper_suite() {
        let mut line = format!("{label:24}");
        for d in [Direction::Backward, Direction::DoubleBackward] {
            let full = equikern_plan::lower(&tp, d, Dtype::F32, &dev.capabilities()).unwrap();
            let split = split_by_output(&full);
            for (name, p) in [("as-lowered", full), ("split", split)] {
                let ctp = CudaTensorProduct::from_plans(&dev, vec![p]).unwrap();
                let t = ctp.time::<f32>(d, batch, 3, 30).unwrap();
                line += &format!("  {d:?} {name} {:8.3} ms", t.median_ms);
            }
        }
        println!("{line}");
    }
}

/// The split plans compute the same results (so the timing above compares like with like).
#[test]
fn split_plans_match_oracle() {
    let Some(dev) = device() else { return };
    for (m, shared) in [
        (equikern_core::ConnectionMode::Uvu, false),
        (equikern_core::ConnectionMode::Uvw, true),
    ] {
        let tp = mode_spec(m, true, shared, 6);
        let plans: Vec<_> = [
            Direction::Forward,
            Direction::Backward,
            Direction::DoubleBackward,
        ]
        .into_iter()
        .map(|d| {
            split_by_output(&equikern_plan::lower(&tp, d, Dtype::F32, &dev.capabilities()).unwrap())
        })
        .collect();
        let ctp = CudaTensorProduct::from_plans(&dev, plans).unwrap();
        check_all::<f32>(&dev, &ctp, &tp, 1000, "split by output");
    }
}

/// The channel-fused backward (`Work::Channels`: one thread per (sample, channel), `gy`
/// summed in shared memory) against the oracle: per-sample, shared and no weights, 8 to
/// 128 channels, f32 and f64, batches up to 50 003 (several workgroups' partial groups).
#[test]
fn channel_fused_backward() {
    let Some(dev) = device() else { return };
    for (m, weighted, shared) in [
        (8, true, false),
        (32, true, true),
        (16, false, false),
        (48, true, false),
        (128, true, false),
    ] {
        let tp = uvu_spec(m, weighted, shared);
        let label = format!("uvu m={m} weighted={weighted} shared={shared}");
        for dtype in [Dtype::F32, Dtype::F64] {
            let ctp = CudaTensorProduct::new(&dev, &tp, dtype).unwrap();
            let plan = ctp.plan(Direction::Backward).unwrap();
            assert!(
                plan.kernels
                    .iter()
                    .any(|k| matches!(k.work, equikern_plan::Work::Channels(_))),
                "{label}: not fused"
            );
            for b in [1, 7, 1000, 50_003] {
                match dtype {
                    Dtype::F32 => check_all::<f32>(&dev, &ctp, &tp, b, &label),
                    Dtype::F64 => check_all::<f64>(&dev, &ctp, &tp, b, &label),
                }
            }
        }
    }
    println!("channel-fused backward: 5 specs x f32/f64 x 4 batches passed");
}

/// The channel-fused backward over `x` blocks of different multiplicities (SevenNet-like
/// `128/64/32` and smaller: `max mul` channels, guarded rows) against the oracle: per-sample,
/// shared and no weights, f32 and f64, batches up to 50 003. Outputs poisoned (`check_all`).
#[test]
fn channel_fused_backward_mixed_multiplicities() {
    let Some(dev) = device() else { return };
    for ((a, b, c), weighted, shared) in [
        ((128, 64, 32), true, false),
        ((16, 8, 12), true, true),
        ((12, 3, 9), false, false),
        ((32, 48, 8), true, false),
    ] {
        let tp = uvu_mixed_spec(a, b, c, weighted, shared);
        let label = format!("uvu muls {a}/{b}/{c} weighted={weighted} shared={shared}");
        for dtype in [Dtype::F32, Dtype::F64] {
            let ctp = CudaTensorProduct::new(&dev, &tp, dtype).unwrap();
            let plan = ctp.plan(Direction::Backward).unwrap();
            assert!(
                plan.kernels
                    .iter()
                    .any(|k| matches!(&k.work, equikern_plan::Work::Channels(w) if !w.uniform())),
                "{label}: not fused"
            );
            for n in [1, 7, 1000, 50_003] {
                match dtype {
                    Dtype::F32 => check_all::<f32>(&dev, &ctp, &tp, n, &label),
                    Dtype::F64 => check_all::<f64>(&dev, &ctp, &tp, n, &label),
                }
            }
        }
    }
    println!("mixed-multiplicity channel backward: 4 specs x f32/f64 x 4 batches passed");
}

/// Small batches only: the memcheck run (`compute-sanitizer --tool memcheck`).
#[test]
fn weight_staged_small_batches() {
    let Some(dev) = device() else { return };
    for (a, b) in [(10, 48), (3, 10)] {
        let tp = uvw_staged_spec(a, b);
        let ctp = CudaTensorProduct::new(&dev, &tp, Dtype::F32).unwrap();
        for n in [1, 2, 33] {
            check_all::<f32>(&dev, &ctp, &tp, n, &format!("uvw staged {a}/{b}"));
        }
    }
}

#[test]
fn weight_staged_kernels() {
    let Some(dev) = device() else { return };
    // DiffDock-L=1's shape and a small one; f64 at DiffDock's size exceeds 48 KiB of shared
    // memory and runs the row kernels (checked too).
    for (a, b) in [(10, 48), (3, 10)] {
        let tp = uvw_staged_spec(a, b);
        let label = format!("uvw staged {a}/{b}");
        for dtype in [Dtype::F32, Dtype::F64] {
            let ctp = CudaTensorProduct::new(&dev, &tp, dtype).unwrap();
            for dir in [
                Direction::Forward,
                Direction::Backward,
                Direction::DoubleBackward,
            ] {
                let staged = ctp
                    .plan(dir)
                    .unwrap()
                    .kernels
                    .iter()
                    .any(|k| matches!(k.work, equikern_plan::Work::Staged(_)));
                assert!(
                    staged || (dtype == Dtype::F64 && a == 10),
                    "{label} {dtype:?} {dir:?}: not staged"
                );
            }
            // The f64 oracle's double backward at DiffDock's size takes minutes at 50 003.
            let big = if dtype == Dtype::F32 { 50_003 } else { 2_000 };
            for n in [1, 7, 1000, big] {
                match dtype {
                    Dtype::F32 => check_all::<f32>(&dev, &ctp, &tp, n, &label),
                    Dtype::F64 => check_all::<f64>(&dev, &ctp, &tp, n, &label),
                }
            }
        }
    }
    println!("weight-staged kernels: 2 specs x f32/f64 x 4 batches passed");
}

/// Backward at batch 50 000, channel-fused vs the row kernels, for the paper-suite problems
/// that fuse (`--ignored --nocapture`).
#[test]
#[ignore]
fn bench_channel_fusion() {
    let Some(dev) = device() else { return };
    let batch = 50_000;
    println!(
        "device {}, batch {batch}, f32 backward, median of 30",
        dev.name()
    );
    // ONLY=label,label limits the run.
    let only = std::env::var("ONLY").unwrap_or_default();
    for (label, tp) in paper_suite() {
        if !only.is_empty() && !only.split(',').any(|o| o == label) {
            continue;
        }
        let fused = CudaTensorProduct::new(&dev, &tp, Dtype::F32).unwrap();
        let fplan = fused.plan(Direction::Backward).unwrap();
        if !fplan.kernels.iter().any(|k| {
            matches!(
                k.work,
                equikern_plan::Work::Channels(_) | equikern_plan::Work::Staged(_)
            )
        }) {
            continue;
        }
        let rows_plan = |d| {
            equikern_plan::lower_with(
                &tp,
                d,
                Dtype::F32,
                &dev.capabilities(),
                equikern_plan::LowerOptions {
                    channel_fusion: false,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let rows = CudaTensorProduct::from_plans(
            &dev,
            vec![
                rows_plan(Direction::Forward),
                rows_plan(Direction::Backward),
                rows_plan(Direction::DoubleBackward),
            ],
        )
        .unwrap();
        // Correct first: the fused plan against the oracle at a small batch.
        let d = data(&tp, 5, 99);
        let g = oracle::backward(&tp, 5, &d.x, &d.y, &d.w, &d.gz).unwrap();
        let (n1, n2, wl) = (5 * tp.dim_in1, 5 * tp.dim_in2, w_len(&tp, 5));
        let (x, y, w, gz) = (
            up::<f32>(&dev, &d.x),
            up::<f32>(&dev, &d.y),
            up::<f32>(&dev, &d.w),
            up::<f32>(&dev, &d.gz),
        );
        let (mut gx, mut gy, mut gw) = (
            poisoned::<f32>(&dev, n1),
            poisoned::<f32>(&dev, n2),
            poisoned::<f32>(&dev, wl),
        );
        fused
            .backward_device(5, &x, &y, &w, &gz, &mut gx, &mut gy, &mut gw)
            .unwrap();
        expect(&label, "gx", &down(&dev, &gx, n1), &g.gx, 1e-5);
        expect(&label, "gy", &down(&dev, &gy, n2), &g.gy, 1e-5);
        expect(&label, "gw", &down(&dev, &gw, wl), &g.gw, 1e-5);
        let tf = fused
            .time::<f32>(Direction::Backward, batch, 5, 30)
            .unwrap();
        let tr = rows.time::<f32>(Direction::Backward, batch, 5, 30).unwrap();
        let ff = fused.time::<f32>(Direction::Forward, batch, 5, 30).unwrap();
        let fr = rows.time::<f32>(Direction::Forward, batch, 5, 30).unwrap();
        let df = fused
            .time::<f32>(Direction::DoubleBackward, batch, 3, 20)
            .unwrap();
        let dr = rows
            .time::<f32>(Direction::DoubleBackward, batch, 3, 20)
            .unwrap();
        println!(
            "{label:24} fwd fused {:7.3} rows {:7.3} | bwd fused {:7.3} rows {:7.3} | dbl fused {:7.3} rows {:7.3} ms",
            ff.median_ms, fr.median_ms, tf.median_ms, tr.median_ms, df.median_ms, dr.median_ms
        );
    }
}
