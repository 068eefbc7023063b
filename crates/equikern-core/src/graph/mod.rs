//! Graphs to run convolutions on: radius graphs by cell lists, structure generators and
//! readers, seeded random graphs with skewed degree.
//!
//! * [`radius_graph`] — all ordered pairs closer than a cutoff, O(N) via cell lists, open or
//!   periodic (orthorhombic box, minimum image).
//! * [`diamond`] — a diamond-carbon supercell; [`read_pdb`] — atoms of a PDB file.
//! * [`random_skewed`] — receivers drawn from a power law (hubs), senders uniform.

mod pdb;
mod radius;
mod random;

pub use pdb::read_pdb;
pub use radius::{radius_graph, RadiusGraph};
pub use random::{random_skewed, SplitMix64};

/// Atom positions (Å), optionally in a periodic orthorhombic box `[0, L)³`.
#[derive(Clone, Debug, PartialEq)]
pub struct Structure {
    pub positions: Vec<[f64; 3]>,
    /// Box edge lengths when periodic in all three directions.
    pub cell: Option<[f64; 3]>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    #[error("cutoff {0} must be finite and > 0")]
    Cutoff(f64),
    #[error("periodic box length {length} along axis {axis} must exceed 2 × cutoff ({cutoff})")]
    BoxTooSmall {
        axis: usize,
        length: f64,
        cutoff: f64,
    },
    #[error("position of atom {0} is not finite")]
    Position(usize),
    #[error("{what} = {n} exceeds the u32 index range")]
    TooLarge { what: &'static str, n: usize },
    #[error("PDB line {line}: {why}")]
    Pdb { line: usize, why: String },
    #[error("random graph: {0}")]
    Random(&'static str),
}

/// Conventional cubic lattice constant of diamond carbon (Å).
pub const DIAMOND_A: f64 = 3.567;

/// A periodic diamond supercell of `n[0] × n[1] × n[2]` conventional cells (8 atoms each) with
/// lattice constant `a`: fcc sites plus the same shifted by `a/4 (1,1,1)`.
pub fn diamond(n: [usize; 3], a: f64) -> Structure {
    const BASIS: [[f64; 3]; 8] = [
        [0.0, 0.0, 0.0],
        [0.0, 0.5, 0.5],
        [0.5, 0.0, 0.5],
        [0.5, 0.5, 0.0],
        [0.25, 0.25, 0.25],
        [0.25, 0.75, 0.75],
        [0.75, 0.25, 0.75],
        [0.75, 0.75, 0.25],
    ];
    let mut positions = Vec::with_capacity(8 * n[0] * n[1] * n[2]);
    for i in 0..n[0] {
        for j in 0..n[1] {
            for k in 0..n[2] {
                for b in BASIS {
                    positions.push([
                        (i as f64 + b[0]) * a,
                        (j as f64 + b[1]) * a,
                        (k as f64 + b[2]) * a,
                    ]);
                }
            }
        }
    }
    Structure {
        positions,
        cell: Some([n[0] as f64 * a, n[1] as f64 * a, n[2] as f64 * a]),
    }
}
