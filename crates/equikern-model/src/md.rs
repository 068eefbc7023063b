//! Molecular dynamics on any [`Potential`]: velocity Verlet (NVE) and Langevin dynamics by
//! the BAOAB splitting (Leimkuhler & Matthews), in eV, Å, fs, amu, K (see [`crate::units`]).
//!
//! * NVE: `v += ½dt·a; x += dt·v; F = F(x); v += ½dt·a` with `a = F/m · ACCEL`
//!   (1 eV/(Å·amu) = 9.6485e-3 Å/fs²).
//! * Langevin (BAOAB): `v += ½dt·a; x += ½dt·v; v = c₁v + c₂·√(k_BT/m')·ξ; x += ½dt·v;
//!   F = F(x); v += ½dt·a`, `c₁ = exp(−γ·dt)`, `c₂ = √(1 − c₁²)`, `m' = m / ACCEL`
//!   (so `k_BT/m'` is a velocity² in Å²/fs²), ξ standard normal (ChaCha8, seeded:
//!   runs are reproducible).
//!
//! Positions are not wrapped into the cell (the neighbour list handles any image), so
//! trajectories stay continuous.

use crate::elements;
use crate::error::{ModelError, Result};
use crate::extxyz::Frame;
use crate::graph::Structure;
use crate::sevennet::{Prediction, SevenNet};
use crate::units::{ACCEL_EV_PER_ANG_AMU_TO_ANG_PER_FS2 as ACCEL, ASE_TIME_FS, KB_EV_PER_K};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type V3 = [f64; 3];

/// Anything that gives energy (eV) and forces (eV/Å) for a structure.
pub trait Potential {
    fn compute(&self, atoms: &Structure) -> Result<Prediction>;
}

impl Potential for SevenNet {
    fn compute(&self, atoms: &Structure) -> Result<Prediction> {
        self.evaluate(atoms)
    }
}

/// Temperature control.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Thermostat {
    /// Plain velocity Verlet: constant energy (NVE).
    None,
    /// Langevin dynamics at `temperature` (K) with friction `friction` (1/fs), BAOAB.
    Langevin { temperature: f64, friction: f64 },
}

/// Integration settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MdOptions {
    /// Time step (fs).
    pub dt: f64,
    pub thermostat: Thermostat,
    /// Seed of the thermostat's noise.
    pub seed: u64,
}

/// Standard atomic weights (amu) of the atoms; an unknown atomic number is an error.
pub fn masses_of(numbers: &[u32]) -> Result<Vec<f64>> {
    numbers
        .iter()
        .enumerate()
        .map(|(a, &z)| {
            elements::mass(z).ok_or_else(|| {
                ModelError::input(format!("numbers[{a}]"), format!("no element with Z = {z}"))
            })
        })
        .collect()
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller (one of the pair; simple and exact in distribution).
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Velocities (Å/fs) drawn from the Maxwell–Boltzmann distribution at `temperature` (K),
/// with the centre-of-mass velocity removed and then rescaled so the instantaneous
/// temperature (3N − 3 degrees of freedom; 3 for a single atom, which keeps its
/// momentum) is exactly `temperature`.
pub fn maxwell_boltzmann(masses: &[f64], temperature: f64, seed: u64) -> Result<Vec<V3>> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(ModelError::input(
            "temperature",
            format!("must be finite and ≥ 0 K, got {temperature}"),
        ));
    }
    let n = masses.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v: Vec<V3> = masses
        .iter()
        .map(|&m| {
            let s = (KB_EV_PER_K * temperature * ACCEL / m).sqrt();
            [
                normal(&mut rng) * s,
                normal(&mut rng) * s,
                normal(&mut rng) * s,
            ]
        })
        .collect();
    if n > 1 {
        let p = momentum(masses, &v);
        let mt: f64 = masses.iter().sum();
        for vi in &mut v {
            for d in 0..3 {
                vi[d] -= p[d] / mt;
            }
        }
    }
    let t = temperature_of(masses, &v);
    if t > 0.0 {
        let f = (temperature / t).sqrt();
        for vi in &mut v {
            for x in vi.iter_mut() {
                *x *= f;
            }
        }
    }
    Ok(v)
}

/// Total momentum (amu·Å/fs).
pub fn momentum(masses: &[f64], v: &[V3]) -> V3 {
    let mut p = [0.0; 3];
    for (m, vi) in masses.iter().zip(v) {
        for d in 0..3 {
            p[d] += m * vi[d];
        }
    }
    p
}

/// Kinetic energy (eV).
pub fn kinetic_energy(masses: &[f64], v: &[V3]) -> f64 {
    masses
        .iter()
        .zip(v)
        .map(|(m, vi)| 0.5 * m * (vi[0] * vi[0] + vi[1] * vi[1] + vi[2] * vi[2]))
        .sum::<f64>()
        / ACCEL
}

/// Degrees of freedom used for temperatures: 3N − 3 (momentum conserved), 3 for one atom.
pub fn degrees_of_freedom(n: usize) -> usize {
    if n > 1 {
        3 * n - 3
    } else {
        3 * n
    }
}

/// Instantaneous temperature (K): `2 E_kin / (dof · k_B)`.
pub fn temperature_of(masses: &[f64], v: &[V3]) -> f64 {
    let dof = degrees_of_freedom(masses.len());
    if dof == 0 {
        return 0.0;
    }
    2.0 * kinetic_energy(masses, v) / (dof as f64 * KB_EV_PER_K)
}

/// An MD run in progress: the state after `step` steps.
pub struct Md<'p, P: Potential + ?Sized> {
    potential: &'p P,
    pub atoms: Structure,
    /// Velocities (Å/fs).
    pub velocities: Vec<V3>,
    /// Masses (amu).
    pub masses: Vec<f64>,
    /// The potential's output at the current positions.
    pub prediction: Prediction,
    pub step: usize,
    pub options: MdOptions,
    rng: ChaCha8Rng,
}

impl<'p, P: Potential + ?Sized> Md<'p, P> {
    /// Starts a run: validates the options, evaluates the initial forces. `velocities` in
    /// Å/fs (e.g. from [`maxwell_boltzmann`]); `masses` default to the standard atomic weights.
    pub fn new(
        potential: &'p P,
        atoms: Structure,
        velocities: Vec<V3>,
        masses: Option<Vec<f64>>,
        options: MdOptions,
    ) -> Result<Self> {
        atoms.validate()?;
        let n = atoms.positions.len();
        if !(options.dt.is_finite() && options.dt > 0.0) {
            return Err(ModelError::input(
                "dt",
                format!("must be finite and > 0 fs, got {}", options.dt),
            ));
        }
        if let Thermostat::Langevin {
            temperature,
            friction,
        } = options.thermostat
        {
            if !(temperature.is_finite() && temperature >= 0.0) {
                return Err(ModelError::input(
                    "temperature",
                    format!("must be finite and ≥ 0 K, got {temperature}"),
                ));
            }
            if !(friction.is_finite() && friction > 0.0) {
                return Err(ModelError::input(
                    "friction",
                    format!("must be finite and > 0 (1/fs), got {friction}"),
                ));
            }
        }
        let masses = match masses {
            Some(m) => m,
            None => masses_of(&atoms.numbers)?,
        };
        if masses.len() != n {
            return Err(ModelError::input(
                "masses",
                format!("{} masses for {n} atoms", masses.len()),
            ));
        }
        if let Some(a) = masses.iter().position(|m| !(m.is_finite() && *m > 0.0)) {
            return Err(ModelError::input(
                format!("masses[{a}]"),
                "must be finite and > 0",
            ));
        }
        if velocities.len() != n {
            return Err(ModelError::input(
                "velocities",
                format!("{} velocities for {n} atoms", velocities.len()),
            ));
        }
        if velocities.iter().flatten().any(|x| !x.is_finite()) {
            return Err(ModelError::input("velocities", "non-finite value"));
        }
        let prediction = potential.compute(&atoms)?;
        Ok(Md {
            potential,
            atoms,
            velocities,
            masses,
            prediction,
            step: 0,
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            options,
        })
    }

    fn kick(&mut self, h: f64) {
        for ((v, f), m) in self
            .velocities
            .iter_mut()
            .zip(&self.prediction.forces)
            .zip(&self.masses)
        {
            let k = h * ACCEL / m;
            for d in 0..3 {
                v[d] += k * f[d];
            }
        }
    }

    fn drift(&mut self, h: f64) {
        for (x, v) in self.atoms.positions.iter_mut().zip(&self.velocities) {
            for d in 0..3 {
                x[d] += h * v[d];
            }
        }
    }

    /// One time step. On error (e.g. atoms came too close) the state is left at the failed
    /// step's positions and the error names what happened.
    pub fn step(&mut self) -> Result<()> {
        let dt = self.options.dt;
        self.kick(0.5 * dt);
        match self.options.thermostat {
            Thermostat::None => self.drift(dt),
            Thermostat::Langevin {
                temperature,
                friction,
            } => {
                self.drift(0.5 * dt);
                let c1 = (-friction * dt).exp();
                let c2 = (1.0 - c1 * c1).sqrt();
                for (v, m) in self.velocities.iter_mut().zip(&self.masses) {
                    let s = (KB_EV_PER_K * temperature * ACCEL / m).sqrt();
                    for x in v.iter_mut() {
                        *x = c1 * *x + c2 * s * normal(&mut self.rng);
                    }
                }
                self.drift(0.5 * dt);
            }
        }
        self.prediction = self.potential.compute(&self.atoms).map_err(|e| match e {
            ModelError::Input { field, why } => ModelError::Input {
                field: format!("MD step {}: {field}", self.step + 1),
                why,
            },
            other => other,
        })?;
        self.kick(0.5 * dt);
        self.step += 1;
        Ok(())
    }

    pub fn kinetic_energy(&self) -> f64 {
        kinetic_energy(&self.masses, &self.velocities)
    }
    pub fn potential_energy(&self) -> f64 {
        self.prediction.energy
    }
    pub fn total_energy(&self) -> f64 {
        self.kinetic_energy() + self.prediction.energy
    }
    pub fn temperature(&self) -> f64 {
        temperature_of(&self.masses, &self.velocities)
    }
    pub fn momentum(&self) -> V3 {
        momentum(&self.masses, &self.velocities)
    }
    /// Simulated time (fs).
    pub fn time(&self) -> f64 {
        self.step as f64 * self.options.dt
    }

    /// The current state as an extended XYZ frame: positions, forces, momenta (ASE units, so
    /// ASE reads the velocities back), energy, stress, and `time` (fs), `step`,
    /// `temperature` (K), `kinetic_energy`, `total_energy` (eV) in the comment line.
    pub fn frame(&self) -> Frame {
        let mut f = Frame::new(self.atoms.clone());
        f.energy = Some(self.prediction.energy);
        f.stress = self.prediction.stress;
        f.forces = Some(self.prediction.forces.clone());
        f.momenta = Some(
            self.velocities
                .iter()
                .zip(&self.masses)
                .map(|(v, m)| v.map(|x| x * m * ASE_TIME_FS))
                .collect(),
        );
        f.info = vec![
            ("step".into(), self.step.to_string()),
            ("time".into(), format!("{}", self.time())),
            ("temperature".into(), format!("{}", self.temperature())),
            (
                "kinetic_energy".into(),
                format!("{}", self.kinetic_energy()),
            ),
            ("total_energy".into(), format!("{}", self.total_energy())),
        ];
        f
    }
}

/// Velocities (Å/fs) from a frame's `momenta` column (ASE units) and masses.
pub fn velocities_from_momenta(momenta: &[V3], masses: &[f64]) -> Vec<V3> {
    momenta
        .iter()
        .zip(masses)
        .map(|(p, m)| p.map(|x| x / (m * ASE_TIME_FS)))
        .collect()
}

/// Energy conservation over a run: first and last total energies, their difference per
/// atom per ps, and the largest excursion from the first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Drift {
    pub first: f64,
    pub last: f64,
    /// `(last − first) / N / (t in ps)` (eV/atom/ps).
    pub per_atom_per_ps: f64,
    /// `max |E(t) − E(0)| / N` (eV/atom).
    pub max_excursion_per_atom: f64,
}

/// Tracks total energies along a run and summarises the drift.
#[derive(Clone, Debug, Default)]
pub struct DriftMeter {
    first: Option<f64>,
    last: f64,
    max_dev: f64,
}

impl DriftMeter {
    pub fn record(&mut self, total_energy: f64) {
        let first = *self.first.get_or_insert(total_energy);
        self.last = total_energy;
        self.max_dev = self.max_dev.max((total_energy - first).abs());
    }
    /// Summary for `n_atoms` atoms over `time_fs` femtoseconds (`None` before any record).
    pub fn summary(&self, n_atoms: usize, time_fs: f64) -> Option<Drift> {
        let first = self.first?;
        let n = n_atoms.max(1) as f64;
        let ps = time_fs / 1000.0;
        Some(Drift {
            first,
            last: self.last,
            per_atom_per_ps: if ps > 0.0 {
                (self.last - first) / n / ps
            } else {
                0.0
            },
            max_excursion_per_atom: self.max_dev / n,
        })
    }
}
