//! Builds the convolution test graphs and reports their sizes and build times:
//! `cargo run --release -p equikern-core --example conv_graphs`.

use equikern_core::conv::Csr;
use equikern_core::graph::{diamond, radius_graph, random_skewed, read_pdb, Structure, DIAMOND_A};
use std::time::Instant;

fn report(name: &str, s: &Structure, cutoff: f64) {
    let t = Instant::now();
    let g = radius_graph(s, cutoff).expect("radius graph");
    let t_graph = t.elapsed();
    let t = Instant::now();
    let csr = Csr::build(s.positions.len(), &g.receiver, &g.sender).expect("csr");
    let t_csr = t.elapsed();
    let max_deg = csr
        .recv_offsets
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0);
    println!(
        "{name}: {} atoms, cutoff {cutoff} Å: {} edges (mean degree {:.1}, max {max_deg}); \
         radius graph {:.1} ms, CSR views {:.1} ms",
        s.positions.len(),
        g.receiver.len(),
        g.receiver.len() as f64 / s.positions.len() as f64,
        t_graph.as_secs_f64() * 1e3,
        t_csr.as_secs_f64() * 1e3,
    );
}

fn main() {
    let t = Instant::now();
    let d = diamond([23, 23, 23], DIAMOND_A);
    println!(
        "diamond 23³ cells generated in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for cutoff in [2.0, 5.0] {
        report("diamond (periodic)", &d, cutoff);
    }
    let text = include_str!("../../../tests/data/structures/adk_4ake.pdb");
    let p = read_pdb(text).expect("pdb");
    for cutoff in [5.0, 6.0] {
        report("adenylate kinase 4AKE (open)", &p, cutoff);
    }
    {
        let (nodes, edges) = (100_000usize, 2_000_000usize);
        let t = Instant::now();
        let (r, s) = random_skewed(nodes, edges, 1.1, 1).expect("random");
        let t_gen = t.elapsed();
        let t = Instant::now();
        let csr = Csr::build(nodes, &r, &s).expect("csr");
        let deg: Vec<u32> = csr.recv_offsets.windows(2).map(|w| w[1] - w[0]).collect();
        println!(
            "skewed random: {nodes} nodes, {edges} edges (max in-degree {}, {} nodes receive \
             nothing); generated {:.1} ms, CSR views {:.1} ms",
            deg.iter().max().unwrap(),
            deg.iter().filter(|&&d| d == 0).count(),
            t_gen.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}
