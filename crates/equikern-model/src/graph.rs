//! Periodic radius graph: every ordered pair `(i, j, S)` with `|pos_j − pos_i + S·cell| < r_c`,
//! except `i == j` with `S = 0` — the edge set of ASE/matscipy's `neighbour_list` (self-images
//! included, so cells smaller than `2·r_c` get several images per pair).
//!
//! Minimal implementation: all pairs, with the exact image range per pair from the
//! fractional-coordinate bound `|Δf_k + S_k| · d_k ≤ |r|` (`d_k` = spacing of the lattice
//! planes ⊥ direction k). O(N² · images): meant for the CPU reference and tests; a cell-list
//! version for large systems is next (or `equikern_core::graph` once the conv branch lands).

use crate::error::{ModelError, Result};

type V3 = [f64; 3];

/// An atomic structure: positions (Å), atomic numbers, cell rows = lattice vectors, pbc.
#[derive(Clone, Debug, PartialEq)]
pub struct Structure {
    pub positions: Vec<V3>,
    pub numbers: Vec<u32>,
    pub cell: [V3; 3],
    pub pbc: [bool; 3],
}

/// Edges `center → neighbour`: `src[e] = i`, `dst[e] = j`, `vec[e] = pos_j − pos_i + S·cell`.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub src: Vec<usize>,
    pub dst: Vec<usize>,
    pub shift: Vec<[i64; 3]>,
    pub vec: Vec<V3>,
}

fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}

impl Structure {
    /// Cell volume `|det(cell)|`.
    pub fn volume(&self) -> f64 {
        dot(self.cell[0], cross(self.cell[1], self.cell[2])).abs()
    }

    /// Checks lengths and finiteness.
    pub fn validate(&self) -> Result<()> {
        if self.positions.len() != self.numbers.len() {
            return Err(ModelError::input(
                "numbers",
                format!(
                    "{} atomic numbers for {} positions",
                    self.numbers.len(),
                    self.positions.len()
                ),
            ));
        }
        if self.positions.iter().flatten().any(|x| !x.is_finite()) {
            return Err(ModelError::input("positions", "non-finite coordinate"));
        }
        if self.cell.iter().flatten().any(|x| !x.is_finite()) {
            return Err(ModelError::input("cell", "non-finite entry"));
        }
        Ok(())
    }
}

impl Graph {
    pub fn len(&self) -> usize {
        self.src.len()
    }
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }

    /// All edges shorter than `cutoff` (strictly).
    pub fn build(s: &Structure, cutoff: f64) -> Result<Graph> {
        s.validate()?;
        if !(cutoff.is_finite() && cutoff > 0.0) {
            return Err(ModelError::input(
                "cutoff",
                format!("must be finite and > 0, got {cutoff}"),
            ));
        }
        let n = s.positions.len();
        let mut g = Graph::default();
        let periodic = s.pbc.iter().any(|&p| p);
        // Basis for fractional coordinates: non-periodic degenerate rows replaced by unit
        // normals (only the periodic components are used).
        let mut basis = s.cell;
        for k in 0..3 {
            if !s.pbc[k] && norm(basis[k]) < 1e-12 {
                let c = cross(basis[(k + 1) % 3], basis[(k + 2) % 3]);
                let nc = norm(c);
                basis[k] = if nc > 1e-12 {
                    c.map(|x| x / nc)
                } else {
                    [0.0; 3]
                };
                if nc <= 1e-12 {
                    basis[k][k] = 1.0;
                }
            }
        }
        let vol = dot(basis[0], cross(basis[1], basis[2]));
        if periodic && vol.abs() < 1e-12 {
            return Err(ModelError::input(
                "cell",
                "singular cell with periodic boundaries",
            ));
        }
        // fractional coords f = pos · inv(basis): rows of inv are (b1×b2, b2×b0, b0×b1)/vol as columns
        let recip = [
            cross(basis[1], basis[2]).map(|x| x / vol),
            cross(basis[2], basis[0]).map(|x| x / vol),
            cross(basis[0], basis[1]).map(|x| x / vol),
        ];
        let frac: Vec<V3> = s
            .positions
            .iter()
            .map(|p| [dot(*p, recip[0]), dot(*p, recip[1]), dot(*p, recip[2])])
            .collect();
        // plane spacing d_k = 1/|recip_k|; bound on |Δf_k + S_k| is cutoff·|recip_k|
        let reach: V3 = [0, 1, 2].map(|k| cutoff * norm(recip[k]));
        let c2 = cutoff * cutoff;
        for i in 0..n {
            for j in 0..n {
                let mut lo = [0i64; 3];
                let mut hi = [0i64; 3];
                for k in 0..3 {
                    if periodic && s.pbc[k] {
                        let d = frac[j][k] - frac[i][k];
                        lo[k] = (-reach[k] - d).ceil() as i64;
                        hi[k] = (reach[k] - d).floor() as i64;
                    }
                }
                for a in lo[0]..=hi[0] {
                    for b in lo[1]..=hi[1] {
                        for c in lo[2]..=hi[2] {
                            if i == j && a == 0 && b == 0 && c == 0 {
                                continue;
                            }
                            let sh = [a as f64, b as f64, c as f64];
                            let mut v = [0.0; 3];
                            for (d, vd) in v.iter_mut().enumerate() {
                                *vd = s.positions[j][d] - s.positions[i][d]
                                    + sh[0] * s.cell[0][d]
                                    + sh[1] * s.cell[1][d]
                                    + sh[2] * s.cell[2][d];
                            }
                            if dot(v, v) < c2 {
                                g.src.push(i);
                                g.dst.push(j);
                                g.shift.push([a, b, c]);
                                g.vec.push(v);
                            }
                        }
                    }
                }
            }
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcc_neighbour_counts_with_many_images() {
        // primitive fcc, a = 4.05 (Al): 12 neighbours at a/√2 = 2.864, 6 at a = 4.05
        let a = 4.05;
        let s = Structure {
            positions: vec![[0.0; 3]],
            numbers: vec![13],
            cell: [
                [0.0, a / 2.0, a / 2.0],
                [a / 2.0, 0.0, a / 2.0],
                [a / 2.0, a / 2.0, 0.0],
            ],
            pbc: [true; 3],
        };
        assert_eq!(Graph::build(&s, 3.0).unwrap().len(), 12);
        assert_eq!(Graph::build(&s, 4.2).unwrap().len(), 18);
        // open boundaries: none
        let open = Structure {
            pbc: [false; 3],
            ..s.clone()
        };
        assert_eq!(Graph::build(&open, 4.2).unwrap().len(), 0);
    }

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn symmetric_and_shift_consistent() {
        let s = Structure {
            positions: vec![[0.1, 0.2, 0.3], [1.4, 1.1, 0.9], [2.5, 0.3, 1.7]],
            numbers: vec![1, 6, 8],
            cell: [[3.0, 0.0, 0.0], [0.8, 2.9, 0.0], [0.5, 0.7, 3.1]],
            pbc: [true, true, false],
        };
        let g = Graph::build(&s, 4.0).unwrap();
        // every edge has its reverse with the opposite shift
        for e in 0..g.len() {
            let found = (0..g.len()).any(|f| {
                g.src[f] == g.dst[e] && g.dst[f] == g.src[e] && g.shift[f] == g.shift[e].map(|x| -x)
            });
            assert!(found);
            assert_eq!(g.shift[e][2], 0);
        }
        // brute force over a generous image range agrees
        let mut count = 0;
        for i in 0..3 {
            for j in 0..3 {
                for a in -4i64..=4 {
                    for b in -4i64..=4 {
                        if i == j && a == 0 && b == 0 {
                            continue;
                        }
                        let mut v = [0.0; 3];
                        for d in 0..3 {
                            v[d] = s.positions[j][d] - s.positions[i][d]
                                + a as f64 * s.cell[0][d]
                                + b as f64 * s.cell[1][d];
                        }
                        if dot(v, v) < 16.0 {
                            count += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(count, g.len());
    }
}
