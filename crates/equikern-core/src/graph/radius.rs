//! Radius graphs by cell lists: O(N) for bounded density.
//!
//! Space is cut into cells at least `cutoff` wide, so every neighbour of an atom lies in its
//! own cell or one of the 26 around it. Periodic boxes need `L > 2·cutoff` per axis, so at most
//! one image of an atom is within the cutoff (minimum image); with fewer than 3 cells along an
//! axis the wrapped stencil repeats cells, so it is deduplicated.

use super::{GraphError, Structure};

/// Directed edges `sender → receiver` for every ordered pair of distinct atoms closer than the
/// cutoff (both directions present), grouped by receiver in ascending order.
#[derive(Clone, Debug, PartialEq)]
pub struct RadiusGraph {
    pub receiver: Vec<u32>,
    pub sender: Vec<u32>,
    /// `pos[sender] - pos[receiver]`, minimum image when periodic.
    pub vectors: Vec<[f64; 3]>,
}

struct Grid {
    origin: [f64; 3],
    width: [f64; 3],
    n: [usize; 3],
    periodic: Option<[f64; 3]>,
}

impl Grid {
    fn cell_of(&self, p: [f64; 3]) -> [usize; 3] {
        let mut c = [0; 3];
        for a in 0..3 {
            let f = ((p[a] - self.origin[a]) / self.width[a]).floor();
            c[a] = (f.max(0.0) as usize).min(self.n[a] - 1);
        }
        c
    }
    fn id(&self, c: [usize; 3]) -> usize {
        (c[0] * self.n[1] + c[1]) * self.n[2] + c[2]
    }
    /// Distinct neighbouring cells (including `c`) of the 3×3×3 stencil.
    fn stencil(&self, c: [usize; 3], out: &mut Vec<usize>) {
        out.clear();
        for d0 in -1i64..=1 {
            for d1 in -1i64..=1 {
                'cell: for d2 in -1i64..=1 {
                    let mut nc = [0usize; 3];
                    for (a, d) in [d0, d1, d2].into_iter().enumerate() {
                        let v = c[a] as i64 + d;
                        let n = self.n[a] as i64;
                        nc[a] = if self.periodic.is_some() {
                            v.rem_euclid(n) as usize
                        } else if (0..n).contains(&v) {
                            v as usize
                        } else {
                            continue 'cell;
                        };
                    }
                    out.push(self.id(nc));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// Builds the radius graph of `s` (pairs with distance `< cutoff`).
pub fn radius_graph(s: &Structure, cutoff: f64) -> Result<RadiusGraph, GraphError> {
    if !(cutoff.is_finite() && cutoff > 0.0) {
        return Err(GraphError::Cutoff(cutoff));
    }
    let natoms = s.positions.len();
    if natoms >= u32::MAX as usize {
        return Err(GraphError::TooLarge {
            what: "atoms",
            n: natoms,
        });
    }
    if let Some(i) = s
        .positions
        .iter()
        .position(|p| p.iter().any(|v| !v.is_finite()))
    {
        return Err(GraphError::Position(i));
    }
    let mut pos = s.positions.clone();
    let grid = match s.cell {
        Some(l) => {
            for (axis, &length) in l.iter().enumerate() {
                if length.is_nan() || length <= 2.0 * cutoff {
                    return Err(GraphError::BoxTooSmall {
                        axis,
                        length,
                        cutoff,
                    });
                }
            }
            for p in &mut pos {
                for a in 0..3 {
                    p[a] = p[a].rem_euclid(l[a]);
                }
            }
            let n = l.map(|v| ((v / cutoff).floor() as usize).max(1));
            Grid {
                origin: [0.0; 3],
                width: [l[0] / n[0] as f64, l[1] / n[1] as f64, l[2] / n[2] as f64],
                n,
                periodic: Some(l),
            }
        }
        None => {
            let (mut lo, mut hi) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
            for p in &pos {
                for a in 0..3 {
                    lo[a] = lo[a].min(p[a]);
                    hi[a] = hi[a].max(p[a]);
                }
            }
            if natoms == 0 {
                (lo, hi) = ([0.0; 3], [0.0; 3]);
            }
            // Cells at least `cutoff` wide; cap the count so sparse clouds stay O(N) in memory.
            let cap = (natoms.max(1) as f64).cbrt().ceil() as usize * 2 + 1;
            let n = [0, 1, 2].map(|a| (((hi[a] - lo[a]) / cutoff).floor() as usize).clamp(1, cap));
            Grid {
                origin: lo,
                width: [0, 1, 2].map(|a| ((hi[a] - lo[a]) / n[a] as f64).max(cutoff)),
                n,
                periodic: None,
            }
        }
    };
    // Counting sort of atoms by cell.
    let ncells = grid.n.iter().product::<usize>();
    let cell_of: Vec<usize> = pos.iter().map(|&p| grid.id(grid.cell_of(p))).collect();
    let mut start = vec![0usize; ncells + 1];
    for &c in &cell_of {
        start[c + 1] += 1;
    }
    for c in 0..ncells {
        start[c + 1] += start[c];
    }
    let mut next = start.clone();
    let mut atoms = vec![0u32; natoms];
    for (i, &c) in cell_of.iter().enumerate() {
        atoms[next[c]] = i as u32;
        next[c] += 1;
    }
    let c2 = cutoff * cutoff;
    let mut g = RadiusGraph {
        receiver: vec![],
        sender: vec![],
        vectors: vec![],
    };
    let mut cells = Vec::with_capacity(27);
    for i in 0..natoms {
        let pi = pos[i];
        grid.stencil(grid.cell_of(pi), &mut cells);
        for &c in &cells {
            for &j in &atoms[start[c]..start[c + 1]] {
                if j as usize == i {
                    continue;
                }
                let pj = pos[j as usize];
                let mut d = [pj[0] - pi[0], pj[1] - pi[1], pj[2] - pi[2]];
                if let Some(l) = grid.periodic {
                    for a in 0..3 {
                        d[a] -= l[a] * (d[a] / l[a]).round();
                    }
                }
                if d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < c2 {
                    g.receiver.push(i as u32);
                    g.sender.push(j);
                    g.vectors.push(d);
                }
            }
        }
    }
    if g.receiver.len() >= u32::MAX as usize {
        return Err(GraphError::TooLarge {
            what: "edges",
            n: g.receiver.len(),
        });
    }
    Ok(g)
}
