//! Runtime vs direct evaluation of hand-built plans (independent of the lowering).

#[path = "../../equikern-emit/tests/common/toy.rs"]
mod toy;

use std::collections::BTreeMap;

use equikern_plan::{KernelPlan, Tensor};
use equikern_wgpu::{Runtime, RuntimeOptions};
use rand::{Rng, SeedableRng};
use toy::{eval_plan, Toy, ToyPath};

fn runtime(opts: RuntimeOptions) -> Option<Runtime> {
    match Runtime::new_blocking(opts) {
        Ok(r) => {
            println!("adapter: {}", r.adapter_name());
            Some(r)
        }
        Err(e) => {
            println!("SKIP: no wgpu adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            None
        }
    }
}

fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut num = 0.0;
    let mut den = 0.0;
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - y).powi(2);
        den += y * y;
    }
    (num / den.max(1e-300)).sqrt()
}

fn toy(shared: bool) -> Toy {
    Toy::new(
        vec![
            ToyPath {
                mul1: 4,
                l1: 1,
                mul2: 2,
                l2: 1,
                lo: 1,
            },
            ToyPath {
                mul1: 3,
                l1: 6,
                mul2: 1,
                l2: 6,
                lo: 6,
            },
            ToyPath {
                mul1: 5,
                l1: 0,
                mul2: 3,
                l2: 2,
                lo: 2,
            },
        ],
        shared,
    )
}

fn check(rt: &Runtime, plan: &KernelPlan, batch: u32, seed: u64) -> f64 {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ins = equikern_wgpu::plan_inputs_of(plan);
    let mut host: BTreeMap<Tensor, Vec<f32>> = BTreeMap::new();
    for t in ins {
        let n = equikern_wgpu::tensor_elements_of(plan, t, batch as u64) as usize;
        host.insert(t, (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect());
    }
    let args: Vec<(Tensor, &[f32])> = host.iter().map(|(t, v)| (*t, v.as_slice())).collect();
    let got = rt.run_blocking(plan, batch, &args).unwrap();
    let f64in: BTreeMap<Tensor, Vec<f64>> = host
        .iter()
        .map(|(t, v)| (*t, v.iter().map(|x| *x as f64).collect()))
        .collect();
    let want = eval_plan(plan, batch, 0, &f64in);
    let mut worst = 0.0f64;
    for (t, g) in &got {
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{t:?}: unwritten (NaN) elements"
        );
        let e = rel_l2(g, &want[t]);
        worst = worst.max(e);
    }
    worst
}

#[test]
fn toy_forward_and_weight_grad() {
    let Some(rt) = runtime(RuntimeOptions {
        poison_outputs: true,
        ..Default::default()
    }) else {
        return;
    };
    let caps = rt.capabilities();
    println!("caps: {caps:?}");
    for shared in [false, true] {
        let t = toy(shared);
        for batch in [1, 7, 1000] {
            let e = check(&rt, &t.forward(caps), batch, batch as u64);
            println!("forward shared={shared} batch={batch}: rel L2 {e:.2e}");
            assert!(e < 1e-5);
            let e = check(&rt, &t.weight_grad(caps, 16), batch, 7 + batch as u64);
            println!("weight grad shared={shared} batch={batch}: rel L2 {e:.2e}");
            assert!(e < 1e-5);
        }
    }
}

#[test]
fn toy_split_batches() {
    for opts in [
        RuntimeOptions {
            poison_outputs: true,
            max_samples_per_dispatch: Some(37),
            ..Default::default()
        },
        RuntimeOptions {
            poison_outputs: true,
            max_storage_binding_bytes: Some(4096),
            ..Default::default()
        },
    ] {
        let Some(rt) = runtime(opts) else {
            return;
        };
        let caps = rt.capabilities();
        for shared in [false, true] {
            let t = toy(shared);
            let e = check(&rt, &t.forward(caps), 301, 3);
            assert!(e < 1e-5, "{e}");
            let e = check(&rt, &t.weight_grad(caps, 16), 301, 4);
            assert!(e < 1e-5, "{e}");
        }
    }
}
