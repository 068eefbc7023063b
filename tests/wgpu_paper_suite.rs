//! wgpu vs the f64 oracle on every problem of the paper suite (forward, backward, double
//! backward at a small batch; shared and per-sample weights as the suite gives them), plus
//! lavapipe timings of a few problems on device buffers.

mod wgpu_support;
use std::time::Instant;

use equikern::emit::emit_wgsl;
use equikern::plan::{lower, Direction, Dtype};
use equikern::TensorProductOp;
use rand::SeedableRng;
use wgpu_support::{assert_dirs, corpus, device, rand_vec, Dirs};

#[test]
fn paper_suite_vs_oracle() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    // lavapipe compiles with LLVM on a CPU: a direction whose WGSL exceeds this many bytes
    // takes minutes there, so CI skips it unless EQUIKERN_WGPU_FULL=1 (then: all, ~6 min).
    let full = std::env::var("EQUIKERN_WGPU_FULL").is_ok_and(|v| v == "1");
    let budget = if full { usize::MAX } else { 200 << 10 };
    let caps = dev.wgpu_runtime().unwrap().capabilities();
    let mut worst = [0.0f64; 3];
    for (label, spec) in corpus::paper_suite() {
        let tp = spec.build().unwrap();
        let size = |d| -> usize {
            let plan = lower(&tp, d, Dtype::F32, &caps).unwrap();
            emit_wgsl(&plan)
                .unwrap()
                .iter()
                .map(|k| k.source.len())
                .sum()
        };
        let (fs, bs, ds) = (
            size(Direction::Forward),
            size(Direction::Backward),
            size(Direction::DoubleBackward),
        );
        let dirs = Dirs {
            bwd: bs <= budget,
            dbl: ds <= budget,
        };
        if fs > budget || !dirs.bwd || !dirs.dbl {
            println!("{label}: skipping directions over {} KB of WGSL (fwd {} KB, bwd {} KB, dbl {} KB); EQUIKERN_WGPU_FULL=1 runs them", budget >> 10, fs >> 10, bs >> 10, ds >> 10);
        }
        let e = assert_dirs(&dev, &label, &spec, 3, 17, dirs);
        worst = [
            worst[0].max(e.fwd),
            worst[1].max(e.bwd),
            worst[2].max(e.dbl),
        ];
    }
    println!(
        "paper suite worst: fwd {:.1e} bwd {:.1e} dbl {:.1e}",
        worst[0], worst[1], worst[2]
    );
}

/// Kernel time (submit to idle) on device buffers, after a warm-up run.
#[test]
fn paper_suite_timings() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    let rt = dev.wgpu_runtime().unwrap().clone();
    let batch = 1000usize;
    for (label, spec) in corpus::paper_suite() {
        if ![
            "nequip-water",
            "DiffDock-L=1",
            "mace-medium",
            "tetris-poly-2",
        ]
        .contains(&label.as_str())
        {
            continue;
        }
        let op = TensorProductOp::new(&spec, &dev).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let x = rt.upload("x", &rand_vec(&mut rng, batch * op.dim_in1()));
        let y = rt.upload("y", &rand_vec(&mut rng, batch * op.dim_in2()));
        let w = rt.upload("w", &rand_vec(&mut rng, op.weight_len(batch).unwrap()));
        let gz = rt.upload("gz", &rand_vec(&mut rng, batch * op.dim_out()));
        let z = rt.create_storage("z", (batch * op.dim_out()) as u64);
        let gx = rt.create_storage("gx", (batch * op.dim_in1()) as u64);
        let gy = rt.create_storage("gy", (batch * op.dim_in2()) as u64);
        let gw = rt.create_storage("gw", op.weight_len(batch).unwrap() as u64);
        let t = Instant::now();
        op.forward_buffers(batch, &x, &y, &w, &z).unwrap();
        op.backward_buffers(batch, &x, &y, &w, &gz, &gx, &gy, &gw)
            .unwrap();
        rt.wait_idle().unwrap();
        let first = t.elapsed().as_secs_f64();
        let t = Instant::now();
        op.forward_buffers(batch, &x, &y, &w, &z).unwrap();
        rt.wait_idle().unwrap();
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        op.backward_buffers(batch, &x, &y, &w, &gz, &gx, &gy, &gw)
            .unwrap();
        rt.wait_idle().unwrap();
        let b = t.elapsed().as_secs_f64();
        println!(
            "timing {label:<16} batch {batch}: forward {:.1} ms, backward {:.1} ms (first call incl. compile {:.2} s)",
            f * 1e3,
            b * 1e3,
            first
        );
    }
}
