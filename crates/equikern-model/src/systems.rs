//! Benchmark structures, built deterministically: Si diamond supercells and water boxes (the
//! systems of issue #9's performance table, `shared/notes/sevennet.md`).
//!
//! * `si:N` — crystalline Si, diamond structure, cubic lattice constant 5.43 Å (ASE's
//!   `bulk("Si", "diamond", a=5.43, cubic=True)`), repeated k×k×k (N = 8k³: 64, 4,096,
//!   13,824, 32,768); perfect lattice, fully periodic. At the 5 Å cutoff every atom has 28
//!   neighbours (4 + 12 + 12), so N·28 edges (4,096 atoms: 114,688).
//! * `water:N` — m³ water molecules (N = 3m³: 1,029 = 3·7³) in a periodic cube at 1 g/cm³
//!   (edge `(m³·18.015 / 0.602214)^{1/3}` Å: 21.73 Å for 343 molecules); oxygens on the simple
//!   cubic m×m×m grid (cell centres), O–H 0.9572 Å, H–O–H 104.52°, each molecule rotated by a
//!   uniformly random rotation from a fixed seed (ChaCha8, seed 0). 1,029 atoms: 55,726
//!   edges at 5 Å, 0.3 % from the peers' 55,872 (their exact box is not recorded).

use crate::error::{ModelError, Result};
use crate::graph::Structure;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Si's cubic lattice constant (Å).
pub const SI_A: f64 = 5.43;
/// Water box density (g/cm³).
pub const WATER_DENSITY: f64 = 1.0;

/// One benchmark system: `kind:atoms` (`si:4096`, `water:1029`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemSpec {
    pub kind: SystemKind,
    pub atoms: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemKind {
    Si,
    Water,
}

impl SystemSpec {
    /// `si:N` (N = 8k³) or `water:N` (N = 3m³); anything else is an error naming the rule.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: String| ModelError::input(format!("system {s:?}"), why);
        let (kind, n) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| bad("expected KIND:ATOMS, e.g. si:4096 or water:1029".into()))?;
        let atoms: usize = n
            .trim()
            .parse()
            .map_err(|_| bad(format!("{n:?} is not a number of atoms")))?;
        let kind = match kind.trim() {
            "si" => SystemKind::Si,
            "water" => SystemKind::Water,
            other => return Err(bad(format!("unknown kind {other:?} (si, water)"))),
        };
        let spec = SystemSpec { kind, atoms };
        spec.repeats().ok_or_else(|| {
            bad(match kind {
                SystemKind::Si => {
                    format!("si needs 8·k³ atoms (8, 64, 512, 4096, 13824, 32768, …), not {atoms}")
                }
                SystemKind::Water => {
                    format!("water needs 3·m³ atoms (24, 81, 192, 1029, …), not {atoms}")
                }
            })
        })?;
        Ok(spec)
    }

    /// The name as given to [`Self::parse`] (`si:4096`).
    pub fn name(&self) -> String {
        let k = match self.kind {
            SystemKind::Si => "si",
            SystemKind::Water => "water",
        };
        format!("{k}:{}", self.atoms)
    }

    /// k (Si cells per side) or m (water molecules per side), if the count fits.
    pub fn repeats(&self) -> Option<usize> {
        let per = match self.kind {
            SystemKind::Si => 8,
            SystemKind::Water => 3,
        };
        if self.atoms == 0 || !self.atoms.is_multiple_of(per) {
            return None;
        }
        let c = self.atoms / per;
        let k = (c as f64).cbrt().round() as usize;
        (k * k * k == c).then_some(k)
    }

    /// The structure.
    pub fn build(&self) -> Result<Structure> {
        let k = self
            .repeats()
            .ok_or_else(|| ModelError::input(self.name(), "atom count is not a full supercell"))?;
        Ok(match self.kind {
            SystemKind::Si => si_diamond(k),
            SystemKind::Water => water_box(k, 0),
        })
    }
}

/// Diamond Si, k×k×k cubic cells (8k³ atoms).
pub fn si_diamond(k: usize) -> Structure {
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
    let mut positions = Vec::with_capacity(8 * k * k * k);
    for i in 0..k {
        for j in 0..k {
            for l in 0..k {
                for b in &basis {
                    positions.push([
                        (i as f64 + b[0]) * SI_A,
                        (j as f64 + b[1]) * SI_A,
                        (l as f64 + b[2]) * SI_A,
                    ]);
                }
            }
        }
    }
    let n = positions.len();
    let edge = k as f64 * SI_A;
    Structure {
        positions,
        numbers: vec![14; n],
        cell: [[edge, 0.0, 0.0], [0.0, edge, 0.0], [0.0, 0.0, edge]],
        pbc: [true; 3],
    }
}

/// m³ water molecules in a periodic cube at [`WATER_DENSITY`] (see the module docs).
pub fn water_box(m: usize, seed: u64) -> Structure {
    const MASS: f64 = 2.0 * 1.008 + 15.999; // g/mol
    const AVOGADRO_PER_A3: f64 = 0.602_214_076; // (g/cm³) → amu/Å³
    const R_OH: f64 = 0.9572;
    let half = 104.52f64.to_radians() / 2.0;
    let count = m * m * m;
    let edge = (count as f64 * MASS / (WATER_DENSITY * AVOGADRO_PER_A3)).cbrt();
    let a = edge / m as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut positions = Vec::with_capacity(3 * count);
    let mut numbers = Vec::with_capacity(3 * count);
    // Molecule frame: O at the origin, H's in the xy plane, symmetric about y.
    let local = [
        [R_OH * half.sin(), R_OH * half.cos(), 0.0],
        [-R_OH * half.sin(), R_OH * half.cos(), 0.0],
    ];
    for i in 0..m {
        for j in 0..m {
            for l in 0..m {
                let o = [
                    (i as f64 + 0.5) * a,
                    (j as f64 + 0.5) * a,
                    (l as f64 + 0.5) * a,
                ];
                let r = random_rotation(&mut rng);
                positions.push(o);
                numbers.push(8);
                for h in &local {
                    let mut p = o;
                    for (row, pr) in r.iter().zip(p.iter_mut()) {
                        *pr += row[0] * h[0] + row[1] * h[1] + row[2] * h[2];
                    }
                    positions.push(p);
                    numbers.push(1);
                }
            }
        }
    }
    Structure {
        positions,
        numbers,
        cell: [[edge, 0.0, 0.0], [0.0, edge, 0.0], [0.0, 0.0, edge]],
        pbc: [true; 3],
    }
}

/// A uniformly random rotation matrix (Shoemake's unit quaternion from three uniforms).
fn random_rotation(rng: &mut ChaCha8Rng) -> [[f64; 3]; 3] {
    let (u1, u2, u3): (f64, f64, f64) = (rng.random(), rng.random(), rng.random());
    let tau = std::f64::consts::TAU;
    let (a, b) = ((1.0 - u1).sqrt(), u1.sqrt());
    let (w, x, y, z) = (
        a * (tau * u2).sin(),
        a * (tau * u2).cos(),
        b * (tau * u3).sin(),
        b * (tau * u3).cos(),
    );
    [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * w),
            2.0 * (x * z + y * w),
        ],
        [
            2.0 * (x * y + z * w),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * w),
        ],
        [
            2.0 * (x * z - y * w),
            2.0 * (y * z + x * w),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;

    #[test]
    fn parse_and_counts() {
        assert_eq!(SystemSpec::parse("si:4096").unwrap().repeats(), Some(8));
        assert_eq!(SystemSpec::parse("water:1029").unwrap().repeats(), Some(7));
        assert!(SystemSpec::parse("si:4000").is_err());
        assert!(SystemSpec::parse("water:1000").is_err());
        assert!(SystemSpec::parse("cu:32").is_err());
        assert!(SystemSpec::parse("si").is_err());
        assert_eq!(SystemSpec::parse(" si:64 ").unwrap().name(), "si:64");
    }

    #[test]
    fn si_has_28_neighbours_at_5_angstrom() {
        let s = SystemSpec::parse("si:512").unwrap().build().unwrap();
        assert_eq!(s.positions.len(), 512);
        let g = Graph::build(&s, 5.0).unwrap();
        assert_eq!(g.len(), 512 * 28);
    }

    #[test]
    fn water_is_deterministic_and_sane() {
        let a = water_box(3, 0);
        assert_eq!(a, water_box(3, 0));
        assert_eq!(a.positions.len(), 81);
        // 1 g/cm³: 27 molecules in (9.32 Å)³
        assert!((a.volume() - 27.0 * 18.015 / 0.602214076).abs() < 1e-6);
        // intramolecular geometry
        for mol in a.positions.chunks(3) {
            for h in &mol[1..] {
                let d: f64 = (0..3).map(|k| (h[k] - mol[0][k]).powi(2)).sum();
                assert!((d.sqrt() - 0.9572).abs() < 1e-12);
            }
        }
        // no two atoms closer than 0.9 Å (periodic)
        let g = Graph::build(&a, 0.9).unwrap();
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn water_1029_edges_near_the_peers_box() {
        let s = SystemSpec::parse("water:1029").unwrap().build().unwrap();
        let e = Graph::build(&s, 5.0).unwrap().len();
        println!("water:1029: {e} edges at 5 Å (peers' box: 55,872)");
        assert!((e as f64 / 55_872.0 - 1.0).abs() < 0.05, "{e}");
    }
}
