//! The Rust API in one place: load SevenNet-0 once, evaluate a structure read from extended
//! XYZ (on the CPU, then on wgpu in f32 where an adapter exists), run a few MD steps and write
//! the trajectory.
//!
//! `cargo run --release -p equikern-model --example api -- models/checkpoint_sevennet_0.pth`

use equikern_model::md::{self, DriftMeter, Md, MdOptions, Thermostat};
use equikern_model::{extxyz, Dtype, Evaluator, SevenNet, Target};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/checkpoint_sevennet_0.pth".into());
    let model = SevenNet::load(&path)?; // checkpoint → model, once

    // A structure as ASE writes it (here from a string; extxyz::read(path) for a file).
    let xyz = "2\nLattice=\"0 2.715 2.715 2.715 0 2.715 2.715 2.715 0\" \
               Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n\
               Si 0 0 0\nSi 1.3575 1.3575 1.3575\n";
    let atoms = extxyz::parse(xyz, "inline")?.remove(0).atoms;

    let p = model.evaluate(&atoms)?;
    println!("E = {:.6} eV, F0 = {:?} eV/Å", p.energy, p.forces[0]);
    println!("stress (eV/Å³, xx yy zz yz xz xy) = {:?}", p.stress);

    // The same model on a GPU backend: kernels and cast weights are made once, here; every
    // structure then gets its graph built once and reused by all layers.
    match Evaluator::new(&model, Target::Wgpu, Dtype::F32) {
        Ok(gpu) => {
            let q = gpu.evaluate(&atoms)?;
            println!(
                "{}: E = {:.6} eV, F0 = {:?} eV/Å",
                gpu.describe(),
                q.energy,
                q.forces[0]
            );
        }
        Err(e) => println!("(no wgpu here: {e})"),
    }

    // MD: 300 K Maxwell–Boltzmann start, velocity Verlet at 1 fs.
    let masses = md::masses_of(&atoms.numbers)?;
    let v0 = md::maxwell_boltzmann(&masses, 300.0, 42)?;
    let opts = MdOptions {
        dt: 1.0,
        thermostat: Thermostat::None, // or Thermostat::Langevin { temperature: 300.0, friction: 0.01 }
        seed: 0,
    };
    let mut sim = Md::new(&model, atoms, v0, None, opts)?;
    let mut frames = vec![sim.frame()];
    let mut meter = DriftMeter::default();
    meter.record(sim.total_energy());
    for _ in 0..10 {
        sim.step()?;
        meter.record(sim.total_energy());
        frames.push(sim.frame());
    }
    extxyz::write("api_traj.extxyz", &frames)?;
    let d = meter.summary(2, sim.time()).expect("recorded");
    println!(
        "10 steps: T = {:.1} K, E_tot {:.6} → {:.6} eV; trajectory api_traj.extxyz",
        sim.temperature(),
        d.first,
        d.last
    );
    Ok(())
}
