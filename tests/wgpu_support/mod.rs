//! Helpers for the wgpu tests: device or skip, seeded inputs, oracle comparison.
#![allow(dead_code)]

pub mod corpus;

use std::time::Instant;

use equikern::oracle::Oracle;
use equikern::{Device, TensorProductOp, TpSpec, WgpuOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A lavapipe/real wgpu device with poisoned outputs, or `None` (printed skip reason).
pub fn device(opts: WgpuOptions) -> Option<Device> {
    let opts = WgpuOptions {
        poison_outputs: true,
        ..opts
    };
    match Device::wgpu(opts) {
        Ok(d) => {
            println!("adapter: {}", d.name());
            Some(d)
        }
        Err(e) => {
            println!("SKIP: no wgpu adapter: {e} (CI installs mesa-vulkan-drivers for lavapipe)");
            None
        }
    }
}

/// Seeded values in ±[0.1, 1) (never zero).
pub fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let m: f32 = rng.random_range(0.1..1.0);
            if rng.random::<bool>() {
                m
            } else {
                -m
            }
        })
        .collect()
}

pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "non-finite output (an element the kernels did not write?)"
    );
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - w).powi(2);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| *x as f64).collect()
}

/// Worst relative L2 errors of forward, backward and double backward against the f64 oracle
/// on seeded inputs (0 for directions not run).
pub struct Errors {
    pub fwd: f64,
    pub bwd: f64,
    pub dbl: f64,
}

pub const TOL_FWD: f64 = 1e-5;
pub const TOL_BWD: f64 = 1e-5;
pub const TOL_DBL: f64 = 1e-4;

/// Run forward, backward and (if `dbl`) double backward on `dev`, compare with the oracle.
pub fn check_spec(dev: &Device, spec: &TpSpec, batch: usize, seed: u64, dirs: Dirs) -> Errors {
    let (bwd_on, dbl) = (dirs.bwd, dirs.dbl);
    let op = TensorProductOp::new(spec, dev).expect("op");
    let tp = op.tensor_product().clone();
    let oracle = Oracle::<f64>::new(&tp).expect("oracle");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let wl = op.weight_len(batch).unwrap();
    let x = rand_vec(&mut rng, batch * op.dim_in1());
    let y = rand_vec(&mut rng, batch * op.dim_in2());
    let w = rand_vec(&mut rng, wl);
    let gz = rand_vec(&mut rng, batch * op.dim_out());
    let (xd, yd, wd, gzd) = (f64v(&x), f64v(&y), f64v(&w), f64v(&gz));

    let z = op.forward(batch, &x, &y, &w).expect("forward");
    let zr = oracle.forward(batch, &xd, &yd, &wd).unwrap();
    let fwd = rel_l2(&z, &zr);

    let mut bwd = 0.0;
    if bwd_on {
        let g = op.backward(batch, &x, &y, &w, &gz).expect("backward");
        let gr = oracle.backward(batch, &xd, &yd, &wd, &gzd).unwrap();
        bwd = rel_l2(&g.gx, &gr.gx)
            .max(rel_l2(&g.gy, &gr.gy))
            .max(rel_l2(&g.gw, &gr.gw));
    }

    let mut dblv = 0.0;
    if dbl {
        let hx = rand_vec(&mut rng, batch * op.dim_in1());
        let hy = rand_vec(&mut rng, batch * op.dim_in2());
        let hw = rand_vec(&mut rng, wl);
        let d = op
            .double_backward(batch, &x, &y, &w, &gz, &hx, &hy, &hw)
            .expect("double backward");
        let dr = oracle
            .double_backward(
                batch,
                &xd,
                &yd,
                &wd,
                &gzd,
                &f64v(&hx),
                &f64v(&hy),
                &f64v(&hw),
            )
            .unwrap();
        dblv = rel_l2(&d.dx, &dr.dx)
            .max(rel_l2(&d.dy, &dr.dy))
            .max(rel_l2(&d.dw, &dr.dw))
            .max(rel_l2(&d.dgz, &dr.dgz));
    }
    Errors {
        fwd,
        bwd,
        dbl: dblv,
    }
}

/// Check and assert the tolerances; returns the errors for reporting.
pub fn assert_spec(
    dev: &Device,
    label: &str,
    spec: &TpSpec,
    batch: usize,
    seed: u64,
    dbl: bool,
) -> Errors {
    assert_dirs(dev, label, spec, batch, seed, Dirs { bwd: true, dbl })
}

/// Which directions besides forward to check.
#[derive(Clone, Copy)]
pub struct Dirs {
    pub bwd: bool,
    pub dbl: bool,
}

/// [`assert_spec`] with a choice of directions.
pub fn assert_dirs(
    dev: &Device,
    label: &str,
    spec: &TpSpec,
    batch: usize,
    seed: u64,
    dirs: Dirs,
) -> Errors {
    let t = Instant::now();
    let e = check_spec(dev, spec, batch, seed, dirs);
    println!(
        "{label:<28} batch {batch:>5} shared={:<5} fwd {:.1e} bwd {:.1e} dbl {:.1e} ({:.2}s)",
        spec.shared_weights,
        e.fwd,
        e.bwd,
        e.dbl,
        t.elapsed().as_secs_f64()
    );
    assert!(e.fwd <= TOL_FWD, "{label}: forward rel L2 {:.2e}", e.fwd);
    assert!(e.bwd <= TOL_BWD, "{label}: backward rel L2 {:.2e}", e.bwd);
    assert!(
        e.dbl <= TOL_DBL,
        "{label}: double backward rel L2 {:.2e}",
        e.dbl
    );
    e
}
