//! Periodic radius graph: every ordered pair `(i, j, S)` with `|pos_j − pos_i + S·cell| < r_c`,
//! except `i == j` with `S = 0` — the edge set of ASE/matscipy's `neighbour_list` (self-images
//! included, so cells smaller than `2·r_c` get several images per pair).
//!
//! [`Graph::build`] bins atoms in fractional coordinates (bins at least `r_c` wide across
//! the lattice planes, or narrower when the cell is thinner than `r_c`) and visits the bins
//! within reach, unwrapping periodic bin indices into image shifts, so several images of a
//! pair come out naturally: O(N) for fixed density. [`Graph::build_all_pairs`] is the
//! O(N²·images) reference (exact image range per pair from `|Δf_k + S_k|·d_k ≤ |r|`, `d_k` =
//! spacing of the lattice planes ⊥ direction k), which returns edges sorted by
//! `(src, dst, shift)`; [`Graph::build`] returns the same edges in pair order (see [`Graph`]).

use crate::error::{ModelError, Result};
use std::collections::HashMap;

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
///
/// [`Graph::build`] lists them in pairs: its first `pairs` edges are the *leads* (`i < j`, or
/// `i = j` with a shift lexicographically above zero) sorted by `(i, j, S)`, and edge
/// `pairs + p` is lead `p` reversed (`j → i`, `−S`, `−vec` exactly). The two edges of a pair
/// have one length, so a radial network needs one row per pair; `pairs = 0`: no such order
/// (e.g. [`Graph::build_all_pairs`] or a hand-made graph).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub src: Vec<usize>,
    pub dst: Vec<usize>,
    pub shift: Vec<[i64; 3]>,
    pub vec: Vec<V3>,
    pub pairs: usize,
}

/// Whether edge `i → j` with shift `sh` leads its pair (its reverse is `j → i`, `−sh`).
pub(crate) fn leads(i: usize, j: usize, sh: [i64; 3]) -> bool {
    j > i || (j == i && sh > [0, 0, 0])
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

/// The lattice side of both builders (and of the CUDA list, `crate::neighbours_cuda`, which
/// computes fractional coordinates on the device from the same `recip`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Lattice {
    /// Rows of the reciprocal basis: `frac_k = pos · recip[k]` (summed x, y, z in order).
    pub(crate) recip: [V3; 3],
    /// `cutoff · |recip_k|`: bound on `|Δf_k + S_k|` for an edge.
    pub(crate) reach: V3,
    pub(crate) periodic: bool,
}

/// Fractional coordinates and the lattice, shared by both builders.
pub(crate) struct Geometry {
    pub(crate) frac: Vec<V3>,
    pub(crate) lat: Lattice,
}

/// The cell-list layout of [`Graph::build`] per lattice direction: bins, their width in
/// fractional units, the origin, and how many bins either side are visited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BinLayout {
    pub(crate) nbins: [i64; 3],
    pub(crate) width: V3,
    pub(crate) origin: V3,
    pub(crate) reach: [i64; 3],
}

impl BinLayout {
    /// The layout for `geo` with periodic directions `pbc`; `bounds(k)` = (min, max) of the
    /// fractional coordinate `k` over the atoms (asked for open directions only).
    #[allow(clippy::needless_range_loop)]
    pub(crate) fn new(
        lat: &Lattice,
        pbc: [bool; 3],
        cutoff: f64,
        mut bounds: impl FnMut(usize) -> (f64, f64),
    ) -> Result<BinLayout> {
        let mut l = BinLayout {
            nbins: [1; 3],
            width: [1.0; 3],
            origin: [0.0; 3],
            reach: [0; 3],
        };
        for k in 0..3 {
            let need = lat.reach[k]; // cutoff / d_k in fractional units
            if lat.periodic && pbc[k] {
                l.nbins[k] = ((1.0 / need).floor() as i64).clamp(1, 1 << 20);
                l.width[k] = 1.0 / l.nbins[k] as f64;
                l.reach[k] = (need / l.width[k]).ceil() as i64;
            } else {
                let (lo, hi) = bounds(k);
                l.origin[k] = lo;
                l.width[k] = need
                    .max((hi - lo) / (1u64 << 20) as f64)
                    .max(f64::MIN_POSITIVE);
                l.nbins[k] = ((hi - lo) / l.width[k]).floor() as i64 + 1;
                l.reach[k] = 1;
            }
        }
        let visits = l.reach.iter().map(|&r| (2 * r + 1) as f64).product::<f64>();
        if visits > 1e7 {
            return Err(ModelError::input(
                "cutoff",
                format!("cutoff {cutoff} reaches {visits:.0} cells around every atom (cell far thinner than the cutoff)"),
            ));
        }
        Ok(l)
    }

    /// The bin of a wrapped fractional position.
    pub(crate) fn bin_of(&self, f: &V3) -> [i64; 3] {
        [0, 1, 2].map(|k| {
            (((f[k] - self.origin[k]) / self.width[k]).floor() as i64).clamp(0, self.nbins[k] - 1)
        })
    }
}

impl Lattice {
    /// Checks the cell and the cutoff; the reciprocal basis and reach.
    pub(crate) fn new(cell: &[V3; 3], pbc: [bool; 3], cutoff: f64) -> Result<Self> {
        if cell.iter().flatten().any(|x| !x.is_finite()) {
            return Err(ModelError::input("cell", "non-finite entry"));
        }
        if !(cutoff.is_finite() && cutoff > 0.0) {
            return Err(ModelError::input(
                "cutoff",
                format!("must be finite and > 0, got {cutoff}"),
            ));
        }
        let periodic = pbc.iter().any(|&p| p);
        // Basis for fractional coordinates: non-periodic degenerate rows replaced by unit
        // normals (only the periodic components are used for images).
        let mut basis = *cell;
        for k in 0..3 {
            if !pbc[k] && norm(basis[k]) < 1e-12 {
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
        let mut vol = dot(basis[0], cross(basis[1], basis[2]));
        if vol.abs() < 1e-12 {
            if periodic {
                return Err(ModelError::input(
                    "cell",
                    "singular cell with periodic boundaries",
                ));
            }
            // open boundaries with a degenerate cell: plain Cartesian axes
            basis = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
            vol = 1.0;
        }
        let recip = [
            cross(basis[1], basis[2]).map(|x| x / vol),
            cross(basis[2], basis[0]).map(|x| x / vol),
            cross(basis[0], basis[1]).map(|x| x / vol),
        ];
        let reach = [0, 1, 2].map(|k| cutoff * norm(recip[k]));
        Ok(Lattice {
            recip,
            reach,
            periodic,
        })
    }
}

impl Geometry {
    pub(crate) fn new(s: &Structure, cutoff: f64) -> Result<Self> {
        s.validate()?;
        let lat = Lattice::new(&s.cell, s.pbc, cutoff)?;
        let r = lat.recip;
        let frac = s
            .positions
            .iter()
            .map(|p| [dot(*p, r[0]), dot(*p, r[1]), dot(*p, r[2])])
            .collect();
        Ok(Geometry { frac, lat })
    }
}

impl Structure {
    /// `pos_j − pos_i + S·cell`.
    pub fn edge_vector(&self, i: usize, j: usize, shift: [i64; 3]) -> V3 {
        let sh = shift.map(|x| x as f64);
        [0, 1, 2].map(|d| {
            self.positions[j][d] - self.positions[i][d]
                + sh[0] * self.cell[0][d]
                + sh[1] * self.cell[1][d]
                + sh[2] * self.cell[2][d]
        })
    }
}

impl Graph {
    pub fn len(&self) -> usize {
        self.src.len()
    }
    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }

    /// Whether the edges are in [`Graph::build`]'s pair order (checked, not trusted: edge
    /// `pairs + p` must be lead `p` reversed with the exact negated vector).
    pub fn paired(&self) -> bool {
        let (np, ne) = (self.pairs, self.len());
        np > 0
            && 2 * np == ne
            && self.dst.len() == ne
            && self.shift.len() == ne
            && self.vec.len() == ne
            && (0..np).all(|p| {
                let f = np + p;
                leads(self.src[p], self.dst[p], self.shift[p])
                    && self.src[f] == self.dst[p]
                    && self.dst[f] == self.src[p]
                    && self.shift[f] == self.shift[p].map(|x| -x)
                    && self.vec[f] == self.vec[p].map(|x| -x)
            })
    }

    /// The edges sorted by `(i, j, S)` (pairs = 0): the order of [`Graph::build_all_pairs`].
    pub fn sorted(&self) -> Graph {
        let mut ix: Vec<usize> = (0..self.len()).collect();
        ix.sort_by_key(|&e| (self.src[e], self.dst[e], self.shift[e]));
        Graph {
            src: ix.iter().map(|&e| self.src[e]).collect(),
            dst: ix.iter().map(|&e| self.dst[e]).collect(),
            shift: ix.iter().map(|&e| self.shift[e]).collect(),
            vec: ix.iter().map(|&e| self.vec[e]).collect(),
            pairs: 0,
        }
    }

    /// All edges shorter than `cutoff` (strictly), by cell lists.
    pub fn build(s: &Structure, cutoff: f64) -> Result<Graph> {
        let geo = Geometry::new(s, cutoff)?;
        let n = s.positions.len();
        if n == 0 {
            return Ok(Graph::default());
        }
        // wrapped fractional coordinates and the integer wrap w (f_wrapped = f + w)
        let mut fw = geo.frac.clone();
        let mut wrap = vec![[0i64; 3]; n];
        for k in 0..3 {
            if geo.lat.periodic && s.pbc[k] {
                for a in 0..n {
                    let w = -fw[a][k].floor();
                    fw[a][k] += w;
                    if fw[a][k] >= 1.0 {
                        fw[a][k] -= 1.0;
                        wrap[a][k] = w as i64 - 1;
                    } else {
                        wrap[a][k] = w as i64;
                    }
                }
            }
        }
        let layout = BinLayout::new(&geo.lat, s.pbc, cutoff, |k| {
            let lo = fw.iter().map(|f| f[k]).fold(f64::INFINITY, f64::min);
            let hi = fw.iter().map(|f| f[k]).fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        })?;
        let (nbins, reach) = (layout.nbins, layout.reach);
        let bin_of = |f: &V3| layout.bin_of(f);
        let mut bins: HashMap<[i64; 3], Vec<usize>> = HashMap::new();
        for (a, f) in fw.iter().enumerate() {
            bins.entry(bin_of(f)).or_default().push(a);
        }
        let c2 = cutoff * cutoff;
        let mut edges: Vec<(usize, usize, [i64; 3], V3)> = Vec::new();
        for i in 0..n {
            let bi = bin_of(&fw[i]);
            for dx in -reach[0]..=reach[0] {
                for dy in -reach[1]..=reach[1] {
                    for dz in -reach[2]..=reach[2] {
                        let ext = [bi[0] + dx, bi[1] + dy, bi[2] + dz];
                        let mut key = [0i64; 3];
                        let mut img = [0i64; 3];
                        let mut ok = true;
                        for k in 0..3 {
                            if geo.lat.periodic && s.pbc[k] {
                                key[k] = ext[k].rem_euclid(nbins[k]);
                                img[k] = ext[k].div_euclid(nbins[k]);
                            } else if ext[k] < 0 || ext[k] >= nbins[k] {
                                ok = false;
                            } else {
                                key[k] = ext[k];
                            }
                        }
                        if !ok {
                            continue;
                        }
                        let Some(members) = bins.get(&key) else {
                            continue;
                        };
                        for &j in members {
                            // shift relative to the original (unwrapped) positions
                            let sh = [0, 1, 2].map(|k| img[k] + wrap[j][k] - wrap[i][k]);
                            if i == j && sh == [0, 0, 0] {
                                continue;
                            }
                            let v = s.edge_vector(i, j, sh);
                            if dot(v, v) < c2 {
                                edges.push((i, j, sh, v));
                            }
                        }
                    }
                }
            }
        }
        // the leads in (i, j, S) order, then each reversed: the cutoff test and the edge
        // vector are exactly antisymmetric (IEEE negation), so the reverses are the others
        edges.retain(|e| leads(e.0, e.1, e.2));
        edges.sort_by_key(|e| (e.0, e.1, e.2));
        let mut g = Graph {
            pairs: edges.len(),
            ..Graph::default()
        };
        for &(i, j, sh, v) in &edges {
            g.src.push(i);
            g.dst.push(j);
            g.shift.push(sh);
            g.vec.push(v);
        }
        for (i, j, sh, v) in edges {
            g.src.push(j);
            g.dst.push(i);
            g.shift.push(sh.map(|x| -x));
            g.vec.push(v.map(|x| -x));
        }
        Ok(g)
    }

    /// All edges shorter than `cutoff` by checking every pair (reference for [`Graph::build`]).
    pub fn build_all_pairs(s: &Structure, cutoff: f64) -> Result<Graph> {
        let geo = Geometry::new(s, cutoff)?;
        let n = s.positions.len();
        let (frac, reach, periodic) = (&geo.frac, geo.lat.reach, geo.lat.periodic);
        let mut g = Graph::default();
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
                            let v = s.edge_vector(i, j, [a, b, c]);
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

    #[test]
    fn cell_list_equals_all_pairs() {
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let cells = [
            [[2.9, 0.0, 0.0], [0.6, 2.7, 0.0], [-0.4, 0.5, 3.1]], // thin: many images
            [[9.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 11.0]],
            [[7.0, 0.0, 0.0], [3.5, 6.1, 0.0], [1.0, 1.5, 9.0]],
            [[0.0; 3], [0.0; 3], [0.0; 3]],
        ];
        let pbcs = [[true; 3], [true, false, true], [false; 3]];
        for cell in cells {
            for pbc in pbcs {
                if cell[0][0] == 0.0 && pbc.iter().any(|&p| p) {
                    continue;
                }
                for &(n, cutoff) in &[(1usize, 4.0), (7, 3.0), (40, 4.5)] {
                    let positions = (0..n)
                        .map(|_| {
                            let f = [rnd() * 1.6 - 0.3, rnd() * 1.6 - 0.3, rnd() * 1.6 - 0.3];
                            let c = if cell[0][0] == 0.0 {
                                [[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]]
                            } else {
                                cell
                            };
                            [0, 1, 2].map(|d| f[0] * c[0][d] + f[1] * c[1][d] + f[2] * c[2][d])
                        })
                        .collect();
                    let s = Structure {
                        positions,
                        numbers: vec![1; n],
                        cell,
                        pbc,
                    };
                    let paired = Graph::build(&s, cutoff).unwrap();
                    assert!(
                        paired.is_empty() || paired.paired(),
                        "{cell:?} {pbc:?} n={n}"
                    );
                    let a = paired.sorted();
                    let b = Graph::build_all_pairs(&s, cutoff).unwrap();
                    assert_eq!(
                        (&a.src, &a.dst, &a.shift),
                        (&b.src, &b.dst, &b.shift),
                        "{cell:?} {pbc:?} n={n}"
                    );
                    assert_eq!(a.vec, b.vec);
                }
            }
        }
    }
}
