//! MD: units against an analytic harmonic oscillator, NVE energy drift and momentum
//! conservation of a water box (random-weight SevenNet; the real 7net-0 on a water cluster
//! when the checkpoint is present), Langevin thermalisation, Maxwell–Boltzmann start.

mod common;
use common::*;
use equikern_model::md::{self, DriftMeter, Md, MdOptions, Potential, Thermostat};
use equikern_model::units::ACCEL_EV_PER_ANG_AMU_TO_ANG_PER_FS2 as ACCEL;
use equikern_model::{extxyz, Prediction, Result, SevenNet, Structure};
use std::time::Instant;

/// A water molecule at `o` with its H–O–H plane spanned by unit vectors `u`, `w` (⊥).
fn water(o: [f64; 3], u: [f64; 3], w: [f64; 3]) -> [[f64; 3]; 3] {
    let (r, half) = (0.9572, 104.52f64.to_radians() / 2.0);
    let h = |s: f64| [0, 1, 2].map(|d| o[d] + r * (half.cos() * u[d] + s * half.sin() * w[d]));
    [o, h(1.0), h(-1.0)]
}

/// 4 water molecules in a periodic cube of 4.93 Å (≈ 1 g/cm³), O on an fcc lattice.
fn water_box() -> Structure {
    let l = 4.93;
    let sites = [
        [0.1, 0.1, 0.1],
        [0.6, 0.6, 0.1],
        [0.6, 0.1, 0.6],
        [0.1, 0.6, 0.6],
    ];
    let frames = [
        ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
        ([0.0, 1.0, 0.0], [0.0, 0.0, 1.0]),
        ([0.0, 0.0, 1.0], [1.0, 0.0, 0.0]),
        ([-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]),
    ];
    let mut positions = Vec::new();
    let mut numbers = Vec::new();
    for (s, (u, w)) in sites.iter().zip(frames) {
        let m = water(s.map(|x| x * l), u, w);
        positions.extend(m);
        numbers.extend([8, 1, 1]);
    }
    Structure {
        positions,
        numbers,
        cell: [[l, 0.0, 0.0], [0.0, l, 0.0], [0.0, 0.0, l]],
        pbc: [true; 3],
    }
}

/// 3 water molecules, open boundaries (a hydrogen-bonded ring, O–O ≈ 2.85 Å).
fn water_cluster() -> Structure {
    let mut positions = Vec::new();
    let mut numbers = Vec::new();
    for k in 0..3 {
        let a = k as f64 * std::f64::consts::TAU / 3.0;
        let o = [1.65 * a.cos(), 1.65 * a.sin(), 0.0];
        let u = [-a.sin(), a.cos(), 0.0];
        let w = [0.3 * a.cos(), 0.3 * a.sin(), 0.954];
        positions.extend(water(o, u, w));
        numbers.extend([8, 1, 1]);
    }
    Structure {
        positions,
        numbers,
        cell: [[0.0; 3]; 3],
        pbc: [false; 3],
    }
}

/// A diatomic spring `E = ½k(r − r0)²`: analytic period `2π/ω`, `ω = √(k·ACCEL/μ)`.
struct Spring {
    k: f64,
    r0: f64,
}
impl Potential for Spring {
    fn compute(&self, s: &Structure) -> Result<Prediction> {
        let d: Vec<f64> = (0..3)
            .map(|i| s.positions[1][i] - s.positions[0][i])
            .collect();
        let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        let g = self.k * (r - self.r0); // dE/dr
        let f1 = [0, 1, 2].map(|i| -g * d[i] / r);
        Ok(Prediction {
            energy: 0.5 * self.k * (r - self.r0).powi(2),
            atomic_energies: vec![0.0; 2],
            forces: vec![f1.map(|x| -x), f1],
            stress: None,
            num_edges: 2,
        })
    }
}

#[test]
fn harmonic_period_checks_the_units() {
    // H2-like: k = 36 eV/Å², masses 1.008 amu → period ≈ 7.6 fs
    let spring = Spring { k: 36.0, r0: 0.74 };
    let s = Structure {
        positions: vec![[0.0; 3], [0.80, 0.0, 0.0]],
        numbers: vec![1, 1],
        cell: [[0.0; 3]; 3],
        pbc: [false; 3],
    };
    let mu = 1.008 / 2.0;
    let period = std::f64::consts::TAU / (36.0 * ACCEL / mu).sqrt();
    let dt = 0.005;
    let opts = MdOptions {
        dt,
        thermostat: Thermostat::None,
        seed: 0,
    };
    let mut sim = Md::new(&spring, s, vec![[0.0; 3]; 2], None, opts).unwrap();
    // the bond starts stretched at rest: r(t) = r0 + 0.06 cos(ωt); find the first return
    // to a maximum by the sign change of dr/dt from + to −.
    let bond = |sim: &Md<Spring>| sim.atoms.positions[1][0] - sim.atoms.positions[0][0];
    let mut prev = bond(&sim);
    let mut rising = false;
    let mut t_max = None;
    for _ in 0..4000 {
        sim.step().unwrap();
        let b = bond(&sim);
        if b > prev {
            rising = true;
        } else if rising {
            t_max = Some(sim.time() - dt);
            break;
        }
        prev = b;
    }
    let t = t_max.expect("oscillates");
    println!("harmonic period: MD {t:.4} fs, analytic {period:.4} fs");
    assert!((t - period).abs() < 2.0 * dt, "{t} vs {period}");
    assert!((period - 7.6).abs() < 0.3);
}

#[test]
fn maxwell_boltzmann_start() {
    let s = water_box();
    let m = md::masses_of(&s.numbers).unwrap();
    let v = md::maxwell_boltzmann(&m, 300.0, 5).unwrap();
    let p = md::momentum(&m, &v);
    assert!(p.iter().all(|x| x.abs() < 1e-14), "{p:?}");
    assert!((md::temperature_of(&m, &v) - 300.0).abs() < 1e-9);
    assert_ne!(v, md::maxwell_boltzmann(&m, 300.0, 6).unwrap());
    assert_eq!(v, md::maxwell_boltzmann(&m, 300.0, 5).unwrap());
    assert!(md::maxwell_boltzmann(&m, -1.0, 5).is_err());
    assert!(md::maxwell_boltzmann(&m, 0.0, 5)
        .unwrap()
        .iter()
        .flatten()
        .all(|x| *x == 0.0));
}

/// Runs NVE and returns (drift summary, max |P(t)|, ms/step).
fn nve<P: Potential>(
    pot: &P,
    s: Structure,
    temperature: f64,
    steps: usize,
    dt: f64,
) -> (md::Drift, f64, f64) {
    let n = s.positions.len();
    let m = md::masses_of(&s.numbers).unwrap();
    let v = md::maxwell_boltzmann(&m, temperature, 11).unwrap();
    let opts = MdOptions {
        dt,
        thermostat: Thermostat::None,
        seed: 0,
    };
    let mut sim = Md::new(pot, s, v, None, opts).unwrap();
    let mut meter = DriftMeter::default();
    meter.record(sim.total_energy());
    let mut pmax: f64 = 0.0;
    let t = Instant::now();
    for _ in 0..steps {
        sim.step().unwrap();
        meter.record(sim.total_energy());
        pmax = sim.momentum().iter().fold(pmax, |a, x| a.max(x.abs()));
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    (meter.summary(n, sim.time()).unwrap(), pmax, ms)
}

#[test]
fn nve_water_box_random_model_energy_drift_and_momentum() {
    let model = small_model("XPLOR", 3);
    let (d, pmax, ms) = nve(&model, water_box(), 300.0, 1000, 0.5);
    println!(
        "random-weight model, water box 12 atoms, 1000 × 0.5 fs: {ms:.2} ms/step, E0 {:.6} eV, \
         E_last {:.6} eV, drift {:+.3e} eV/atom/ps, max |E−E0| {:.3e} eV/atom, max |P| {pmax:.2e}",
        d.first, d.last, d.per_atom_per_ps, d.max_excursion_per_atom
    );
    // measured: drift ≈ 1.4e-7 eV/atom/ps, excursion ≈ 1.7e-7 eV/atom
    assert!(d.per_atom_per_ps.abs() < 1e-5, "{d:?}");
    assert!(d.max_excursion_per_atom < 1e-5, "{d:?}");
    // Σ F = 0 exactly up to rounding: momentum stays at its (zero) start
    assert!(pmax < 1e-10, "momentum {pmax}");
}

#[test]
fn nve_water_cluster_real_model_energy_drift() {
    let Some(model) = real_model() else { return };
    let steps = std::env::var("EQUIKERN_MD_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (d, pmax, ms) = nve(&model, water_cluster(), 300.0, steps, 0.5);
    println!(
        "7net-0, water cluster 9 atoms (open), {steps} × 0.5 fs: {ms:.1} ms/step, E0 {:.6} eV, \
         E_last {:.6} eV, drift {:+.3e} eV/atom/ps, max |E−E0| {:.3e} eV/atom, max |P| {pmax:.2e}",
        d.first, d.last, d.per_atom_per_ps, d.max_excursion_per_atom
    );
    // measured (1,000 steps): drift +2.8e-4 eV/atom/ps, max |E−E0| 4.6e-4 eV/atom; over
    // fewer steps the per-ps figure is dominated by the O–H oscillation of E(t)
    if steps >= 1000 {
        assert!(d.per_atom_per_ps.abs() < 2e-3, "{d:?}");
    }
    assert!((d.last - d.first).abs() / 9.0 < 1e-3, "{d:?}");
    assert!(d.max_excursion_per_atom < 2e-3, "{d:?}");
    assert!(pmax < 1e-10, "momentum {pmax}");
}

#[test]
fn langevin_thermalises_towards_the_target() {
    let model = small_model("XPLOR", 3);
    let s = water_box();
    let n = s.positions.len();
    let target = 300.0;
    let opts = MdOptions {
        dt: 0.5,
        thermostat: Thermostat::Langevin {
            temperature: target,
            friction: 0.05,
        },
        seed: 1,
    };
    // start cold: the thermostat has to heat it
    let mut sim = Md::new(&model, s, vec![[0.0; 3]; n], None, opts).unwrap();
    let mut sum = 0.0;
    let (warm, steps) = (200, 800);
    for k in 0..steps {
        sim.step().unwrap();
        if k >= warm {
            sum += sim.temperature();
        }
    }
    let mean = sum / (steps - warm) as f64;
    println!("Langevin, 12 atoms from 0 K, target {target} K: mean T over steps {warm}..{steps} = {mean:.1} K");
    assert!((mean - target).abs() < 0.3 * target, "mean T {mean}");
    // same seed → same trajectory; another seed → another one
    let run = |seed| {
        let mut sim = Md::new(
            &model,
            water_box(),
            vec![[0.0; 3]; n],
            None,
            MdOptions { seed, ..opts },
        )
        .unwrap();
        for _ in 0..5 {
            sim.step().unwrap();
        }
        sim.atoms.positions
    };
    assert_eq!(run(4), run(4));
    assert_ne!(run(4), run(5));
}

#[test]
fn frames_carry_velocities_through_extxyz() {
    let model: SevenNet = small_model("poly_cut", 2);
    let s = water_box();
    let m = md::masses_of(&s.numbers).unwrap();
    let v = md::maxwell_boltzmann(&m, 200.0, 2).unwrap();
    let opts = MdOptions {
        dt: 0.5,
        thermostat: Thermostat::None,
        seed: 0,
    };
    let mut sim = Md::new(&model, s, v, None, opts).unwrap();
    sim.step().unwrap();
    let text = extxyz::to_string(&[sim.frame()]).unwrap();
    let f = extxyz::parse(&text, "traj").unwrap().remove(0);
    assert_eq!(f.atoms.positions, sim.atoms.positions);
    assert_eq!(f.energy, Some(sim.potential_energy()));
    assert_eq!(f.forces.as_ref(), Some(&sim.prediction.forces));
    let back = md::velocities_from_momenta(f.momenta.as_ref().unwrap(), &m);
    for (a, b) in back.iter().flatten().zip(sim.velocities.iter().flatten()) {
        assert!((a - b).abs() <= 1e-15 * b.abs().max(1e-3));
    }
    assert!(f.info.iter().any(|(k, v)| k == "step" && v == "1"));
}

#[test]
fn bad_md_input_is_an_error() {
    let model = small_model("XPLOR", 3);
    let s = water_box();
    let n = s.positions.len();
    let opts = MdOptions {
        dt: 0.5,
        thermostat: Thermostat::None,
        seed: 0,
    };
    let e = |r: Result<Md<SevenNet>>| r.err().expect("error").to_string();
    assert!(e(Md::new(
        &model,
        s.clone(),
        vec![[0.0; 3]; n - 1],
        None,
        opts
    ))
    .contains("velocities"));
    assert!(e(Md::new(
        &model,
        s.clone(),
        vec![[0.0; 3]; n],
        None,
        MdOptions { dt: -1.0, ..opts }
    ))
    .contains("dt"));
    let lang = MdOptions {
        thermostat: Thermostat::Langevin {
            temperature: 300.0,
            friction: 0.0,
        },
        ..opts
    };
    assert!(e(Md::new(&model, s.clone(), vec![[0.0; 3]; n], None, lang)).contains("friction"));
    let mut bad = s.clone();
    bad.numbers[0] = 14; // Si: not in the small model
    assert!(e(Md::new(&model, bad, vec![[0.0; 3]; n], None, opts)).contains("numbers[0]"));
    let mut close = s;
    close.positions[1] = close.positions[0].map(|x| x + 0.03);
    assert!(e(Md::new(&model, close, vec![[0.0; 3]; n], None, opts)).contains("overlapping"));
}

/// Every atom on its own spring to a fixed site: `E = Σ ½k|x − x₀|²`.
struct Tethers {
    k: f64,
    sites: Vec<[f64; 3]>,
}
impl Potential for Tethers {
    fn compute(&self, s: &Structure) -> Result<Prediction> {
        let mut e = 0.0;
        let forces = s
            .positions
            .iter()
            .zip(&self.sites)
            .map(|(x, x0)| {
                let d = [0, 1, 2].map(|i| x[i] - x0[i]);
                e += 0.5 * self.k * (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
                d.map(|v| -self.k * v)
            })
            .collect();
        Ok(Prediction {
            energy: e,
            atomic_energies: vec![0.0; s.positions.len()],
            forces,
            stress: None,
            num_edges: 0,
        })
    }
}

#[test]
fn langevin_samples_equipartition_exactly_enough() {
    // 48 independent 3-D oscillators of mixed masses: ⟨E_kin⟩ = ⟨E_pot⟩ = (3/2)·N·k_B·T.
    let n = 48;
    let sites: Vec<[f64; 3]> = (0..n).map(|a| [a as f64 * 3.0, 0.0, 0.0]).collect();
    let numbers: Vec<u32> = (0..n).map(|a| [1, 8, 29][a % 3]).collect();
    let pot = Tethers {
        k: 4.0,
        sites: sites.clone(),
    };
    let s = Structure {
        positions: sites,
        numbers,
        cell: [[0.0; 3]; 3],
        pbc: [false; 3],
    };
    let t = 500.0;
    let opts = MdOptions {
        dt: 1.0,
        thermostat: Thermostat::Langevin {
            temperature: t,
            friction: 0.1,
        },
        seed: 9,
    };
    let mut sim = Md::new(&pot, s, vec![[0.0; 3]; n], None, opts).unwrap();
    for _ in 0..500 {
        sim.step().unwrap();
    }
    let (mut ke, mut pe) = (0.0, 0.0);
    let steps = 40_000;
    for _ in 0..steps {
        sim.step().unwrap();
        ke += sim.kinetic_energy();
        pe += sim.potential_energy();
    }
    let want = 1.5 * n as f64 * equikern_model::units::KB_EV_PER_K * t;
    let (ke, pe) = (ke / steps as f64 / want, pe / steps as f64 / want);
    println!("Langevin BAOAB, 48 tethered atoms at {t} K: ⟨E_kin⟩/(3/2 N kT) = {ke:.4}, ⟨E_pot⟩/(3/2 N kT) = {pe:.4}");
    // statistical error ≈ 1 % (48·3 dof, ~4,000 friction times); a wrong noise amplitude
    // (units, √2, c₂) is off by ≥ 10 %
    assert!((ke - 1.0).abs() < 0.04, "kinetic {ke}");
    assert!((pe - 1.0).abs() < 0.04, "potential {pe}");
}

/// Lennard-Jones over all pairs (open boundaries), as ASE's `LennardJones(rc=100,
/// smooth=False)` up to its constant energy shift (which `energy_shift` subtracts).
struct LennardJones {
    sigma: f64,
    epsilon: f64,
    energy_shift_per_pair: f64,
}
impl Potential for LennardJones {
    fn compute(&self, s: &Structure) -> Result<Prediction> {
        let n = s.positions.len();
        let mut forces = vec![[0.0; 3]; n];
        let mut e = 0.0;
        for i in 0..n {
            for j in i + 1..n {
                let d = [0, 1, 2].map(|k| s.positions[j][k] - s.positions[i][k]);
                let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
                let c6 = (self.sigma * self.sigma / r2).powi(3);
                e += 4.0 * self.epsilon * (c6 * c6 - c6) - self.energy_shift_per_pair;
                // F_j = −dE/dr_j = 24ε(2c12 − c6)/r² · d
                let g = 24.0 * self.epsilon * (2.0 * c6 * c6 - c6) / r2;
                for k in 0..3 {
                    forces[j][k] += g * d[k];
                    forces[i][k] -= g * d[k];
                }
            }
        }
        Ok(Prediction {
            energy: e,
            atomic_energies: vec![0.0; n],
            forces,
            stress: None,
            num_edges: n * (n - 1),
        })
    }
}

/// ASE's own VelocityVerlet on 13 LJ argon atoms (`tests/data/md/gen_ase_vv.py`): the same
/// trajectory, step for step (units, masses, integrator).
#[test]
fn velocity_verlet_matches_ase() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/md/ase_vv_lj13.json");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let rows = |v: &serde_json::Value| -> Vec<[f64; 3]> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| [0, 1, 2].map(|i| x[i].as_f64().unwrap()))
            .collect()
    };
    let (sigma, epsilon) = (r["sigma"].as_f64().unwrap(), r["epsilon"].as_f64().unwrap());
    let sr6 = (sigma / 100.0f64).powi(6);
    let lj = LennardJones {
        sigma,
        epsilon,
        energy_shift_per_pair: 4.0 * epsilon * (sr6 * sr6 - sr6),
    };
    let numbers: Vec<u32> = r["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z.as_u64().unwrap() as u32)
        .collect();
    let masses: Vec<f64> = r["masses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_f64().unwrap())
        .collect();
    // our table gives ASE's argon mass
    assert_eq!(md::masses_of(&numbers).unwrap(), masses);
    let s = Structure {
        positions: rows(&r["positions"]),
        numbers,
        cell: [[0.0; 3]; 3],
        pbc: [false; 3],
    };
    let opts = MdOptions {
        dt: r["dt_fs"].as_f64().unwrap(),
        thermostat: Thermostat::None,
        seed: 0,
    };
    let mut sim = Md::new(&lj, s, rows(&r["velocities"]), None, opts).unwrap();
    // ASE's units are CODATA 2014, ours CODATA 2018: kinetic energies of the same Å/fs
    // velocities differ by 7.8e-9 relative (the amu/eV ratio); everything else is exact.
    let k_rel = (sim.kinetic_energy() / (r["energy"].as_f64().unwrap() - sim.potential_energy())
        - 1.0)
        .abs();
    println!("initial kinetic energy vs ASE: relative {k_rel:.1e}");
    assert!(k_rel < 2e-8, "{k_rel}");
    for c in r["checkpoints"].as_array().unwrap() {
        let step = c["step"].as_u64().unwrap() as usize;
        while sim.step < step {
            sim.step().unwrap();
        }
        let dx = sim
            .atoms
            .positions
            .iter()
            .flatten()
            .zip(rows(&c["positions"]).iter().flatten())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let dv = sim
            .velocities
            .iter()
            .flatten()
            .zip(rows(&c["velocities"]).iter().flatten())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let de = (sim.total_energy() - c["total_energy"].as_f64().unwrap()).abs();
        let dk = (sim.kinetic_energy() - c["kinetic_energy"].as_f64().unwrap()).abs();
        println!("step {step}: vs ASE max |Δx| {dx:.1e} Å, |Δv| {dv:.1e} Å/fs, |ΔE_tot| {de:.1e} eV, |ΔE_kin| {dk:.1e} eV");
        // at the CODATA-difference level (a wrong half-kick or unit would be ≥ 1e-4 off)
        assert!(
            dx < 1e-8 && dv < 1e-10 && de < 5e-9 && dk < 5e-9,
            "step {step}"
        );
    }
}
