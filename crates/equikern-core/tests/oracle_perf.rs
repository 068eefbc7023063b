//! Oracle throughput on the paper suite's mace-large (ignored by default; run in release:
//! `cargo test --release -p equikern-core --test oracle_perf -- --ignored --nocapture`).
//! Batch via `EQUIKERN_PERF_BATCH` (default 50000).

mod oracle_common;

use equikern_core::{load_suite, Oracle};
use oracle_common::*;
use rand::Rng;
use std::time::Instant;

/// Process CPU time (user, system; all threads) in seconds, from /proc (Linux only), so that
/// timings on a shared, loaded machine can be read next to the wall time.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // After the command come state (not numeric, dropped), ppid, …: utime and stime (fields
    // 14 and 15 of stat(5)) land at indices 10 and 11.
    let tick = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
    (tick(10), tick(11))
}

fn timed<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let (t, c) = (Instant::now(), cpu_seconds());
    let r = f();
    let c2 = cpu_seconds();
    eprintln!(
        "{what}: wall {:.2} s, cpu user {:.2} s + sys {:.2} s",
        t.elapsed().as_secs_f64(),
        c2.0 - c.0,
        c2.1 - c.1
    );
    r
}

#[test]
#[ignore]
fn mace_large_forward_time() {
    let Some(text) = paper_suite_text() else {
        return;
    };
    let batch: usize = std::env::var("EQUIKERN_PERF_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let (label, spec) = load_suite(&text).unwrap().remove(0);
    let tp = spec.build().unwrap();
    let mut r = rng(1);
    let mut gen = |n: usize| {
        (0..n)
            .map(|_| r.random_range(-1.0f32..1.0))
            .collect::<Vec<f32>>()
    };
    let x = gen(batch * tp.dim_in1);
    let y = gen(batch * tp.dim_in2);
    let w = gen(tp.weight_len(batch).unwrap());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!("{threads} threads available");
    {
        let o = Oracle::<f32>::new(&tp).unwrap();
        let z = timed(&format!("{label} f32 forward batch {batch}"), || {
            o.forward(batch, &x, &y, &w).unwrap()
        });
        assert_eq!(z.len(), batch * tp.dim_out);
    }
    let up = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (x, y, w) = (up(&x), up(&y), up(&w));
    let o = Oracle::<f64>::new(&tp).unwrap();
    let mut z = timed(&format!("{label} f64 forward batch {batch}"), || {
        o.forward(batch, &x, &y, &w).unwrap()
    });
    timed(
        &format!("{label} f64 forward_into (z reused) batch {batch}"),
        || o.forward_into(batch, &x, &y, &w, &mut z).unwrap(),
    );
    drop(z);
    let nb = batch / 10;
    let gz = vec![0.5; nb * tp.dim_out];
    let g = timed(&format!("{label} f64 backward batch {nb}"), || {
        o.backward(
            nb,
            &x[..nb * tp.dim_in1],
            &y[..nb * tp.dim_in2],
            &w[..nb * tp.weight_numel],
            &gz,
        )
        .unwrap()
    });
    assert_eq!(g.gx.len(), nb * tp.dim_in1);
}

#[test]
fn print_mace_cost() {
    let Some(text) = paper_suite_text() else {
        return;
    };
    for (label, spec) in load_suite(&text).unwrap() {
        let tp = spec.build().unwrap();
        let c = equikern_core::spec::cost::cost(&tp);
        eprintln!(
            "{label}: nnz {} fwd {} bwd {} dims {} {} {} wn {}",
            c.cg_nnz.iter().sum::<usize>(),
            c.flops_forward,
            c.flops_backward,
            tp.dim_in1,
            tp.dim_in2,
            tp.dim_out,
            tp.weight_numel
        );
    }
}
