//! Times the CPU f64 model on Si diamond supercells: `cargo run --release -p equikern-model
//! --example eval_timing [reps]` (needs `models/checkpoint_sevennet_0.pth`).

use equikern_model::{sevennet::Options, Checkpoint, SevenNet, Structure};
use std::time::Instant;

fn si(n: usize) -> Structure {
    let a = 5.43;
    let basis = [
        [0.0, 0.0, 0.0],
        [0.0, 0.5, 0.5],
        [0.5, 0.0, 0.5],
        [0.5, 0.5, 0.0],
        [0.25, 0.25, 0.25],
        [0.25, 0.75, 0.75],
        [0.75, 0.25, 0.75],
        [0.75, 0.75, 0.25],
    ];
    let mut positions = Vec::new();
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                for b in &basis {
                    let p = [
                        (b[0] + i as f64) * a,
                        (b[1] + j as f64) * a,
                        (b[2] + k as f64) * a,
                    ];
                    let r = ((positions.len() as f64) * 1.37).sin() * 0.03;
                    positions.push(p.map(|x| x + r));
                }
            }
        }
    }
    let l = a * n as f64;
    Structure {
        numbers: vec![14; positions.len()],
        positions,
        cell: [[l, 0.0, 0.0], [0.0, l, 0.0], [0.0, 0.0, l]],
        pbc: [true; 3],
    }
}

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/checkpoint_sevennet_0.pth"
    );
    let ck = match Checkpoint::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e} (run crates/equikern-model/fetch_checkpoint.sh)");
            std::process::exit(2);
        }
    };
    let t = Instant::now();
    let model = SevenNet::from_checkpoint(&ck, Options::default()).expect("model");
    println!("model built in {:.2} s", t.elapsed().as_secs_f64());
    for n in [1, 2] {
        let s = si(n);
        let t = Instant::now();
        let p = model.evaluate(&s).expect("evaluate");
        println!(
            "Si {} atoms, {} edges: E/atom {:.6} eV, energy+forces+stress {:.1} ms",
            s.positions.len(),
            p.num_edges,
            p.energy / s.positions.len() as f64,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}
