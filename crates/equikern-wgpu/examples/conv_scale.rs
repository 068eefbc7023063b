//! The convolution at scale on a wgpu adapter vs the f64 conv oracle: the 97 336-atom
//! diamond lattice (2 Å radius graph) and a skewed random graph (CSR vs balanced pieces).
//! `cargo run -p equikern-wgpu --example conv_scale` (lavapipe: a correctness run at scale;
//! its times are a CPU rasteriser's, not a GPU's).

use std::collections::BTreeMap;
use std::time::Instant;

use equikern_core::conv::{ConvOracle, Csr};
use equikern_core::graph::{diamond, radius_graph, random_skewed, SplitMix64, DIAMOND_A};
use equikern_core::spec::builders::channelwise;
use equikern_core::Irreps;
use equikern_plan::{lower_conv, ConvOptions, Direction, Dtype, Tensor};
use equikern_wgpu::{Runtime, RuntimeOptions};

fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    let (mut n, mut d) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        n += (*g as f64 - w).powi(2);
        d += w * w;
    }
    (n / d.max(1e-300)).sqrt()
}

fn main() {
    let rt = Runtime::new_blocking(RuntimeOptions::default()).expect("wgpu adapter");
    println!("adapter: {}", rt.adapter_name());
    let ir = |s: &str| Irreps::parse(s).unwrap();
    let tp = channelwise(
        &ir("8x0e+8x1o"),
        &ir("1x0e+1x1o"),
        &ir("8x0e+8x1o+8x1e"),
        false,
    )
    .build()
    .unwrap();
    let t = Instant::now();
    let s = diamond([23, 23, 23], DIAMOND_A);
    let rg = radius_graph(&s, 2.0).unwrap();
    let dia = Csr::build(s.positions.len(), &rg.receiver, &rg.sender).unwrap();
    println!(
        "diamond: {} atoms, {} edges, graph + CSR {:.0} ms",
        dia.nodes,
        dia.edges(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let (r, snd) = random_skewed(20_000, 400_000, 1.1, 7).unwrap();
    let skew = Csr::build(20_000, &r, &snd).unwrap();
    let hub = skew
        .recv_offsets
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    println!("skewed: 20000 nodes, 400000 edges, max in-degree {hub}");
    let caps = rt.capabilities();
    let modes = [
        ("csr", ConvOptions::default()),
        (
            "pieces(32)",
            ConvOptions {
                atomic: false,
                max_piece_edges: Some(32),
            },
        ),
    ];
    for (gname, g) in [("diamond", &dia), ("skewed", &skew)] {
        let mut rng = SplitMix64(1);
        let mut v = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect() };
        let (n, e) = (g.nodes, g.edges());
        let inp: BTreeMap<Tensor, Vec<f64>> = BTreeMap::from([
            (Tensor::X, v(n * tp.dim_in1)),
            (Tensor::Y, v(e * tp.dim_in2)),
            (Tensor::W, v(e * tp.weight_numel)),
            (Tensor::GZ, v(n * tp.dim_out)),
        ]);
        let f32s: BTreeMap<Tensor, Vec<f32>> = inp
            .iter()
            .map(|(t, v)| (*t, v.iter().map(|&a| a as f32).collect()))
            .collect();
        let args: Vec<(Tensor, &[f32])> = f32s.iter().map(|(t, v)| (*t, &v[..])).collect();
        let o = ConvOracle::<f64>::new(&tp).unwrap();
        let z = o
            .forward(g, &inp[&Tensor::X], &inp[&Tensor::Y], &inp[&Tensor::W])
            .unwrap();
        let b = o
            .backward(
                g,
                &inp[&Tensor::X],
                &inp[&Tensor::Y],
                &inp[&Tensor::W],
                &inp[&Tensor::GZ],
            )
            .unwrap();
        for (mname, opts) in modes {
            for dir in [Direction::Forward, Direction::Backward] {
                let plan = lower_conv(&tp, dir, Dtype::F32, &caps, opts).unwrap();
                rt.run_conv_blocking(&plan, n, &g.receiver, &g.sender, &args)
                    .unwrap(); // warm
                let t = Instant::now();
                let got = rt
                    .run_conv_blocking(&plan, n, &g.receiver, &g.sender, &args)
                    .unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let err = match dir {
                    Direction::Forward => rel_l2(&got[&Tensor::Z], &z),
                    _ => rel_l2(&got[&Tensor::GX], &b.gx)
                        .max(rel_l2(&got[&Tensor::GY], &b.gy))
                        .max(rel_l2(&got[&Tensor::GW], &b.gw)),
                };
                println!("{gname} {mname} {dir:?}: {ms:.0} ms (upload + run + readback), rel L2 {err:.2e}");
            }
        }
    }
}
