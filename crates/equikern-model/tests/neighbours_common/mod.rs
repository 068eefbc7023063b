//! Structures for the CUDA neighbour-list tests (CPU emulation and device): each with the
//! cutoff to build at. Every one is compared with `Graph::build` edge for edge.

#![allow(dead_code)]

use equikern_model::systems::{si_diamond, water_box};
use equikern_model::Structure;

/// Seeded uniform numbers in [0, 1) (a 64-bit LCG's high bits).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn from_frac(cell: [[f64; 3]; 3], f: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|d| f[0] * cell[0][d] + f[1] * cell[1][d] + f[2] * cell[2][d])
}

/// Random fractional positions in `[lo, hi)` of `cell` (a unit-free box of 6 Å when the
/// cell is all zeros).
pub fn random(
    cell: [[f64; 3]; 3],
    pbc: [bool; 3],
    n: usize,
    lo: f64,
    hi: f64,
    seed: u64,
) -> Structure {
    let mut r = Lcg(seed);
    let frame = if cell.iter().flatten().all(|&x| x == 0.0) {
        [[6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]]
    } else {
        cell
    };
    let positions = (0..n)
        .map(|_| {
            let f = [0; 3].map(|_| lo + (hi - lo) * r.next());
            from_frac(frame, f)
        })
        .collect();
    Structure {
        positions,
        numbers: vec![14; n],
        cell,
        pbc,
    }
}

/// The named cases: Si diamond, small triclinic cells (several images), mixed pbc, open
/// molecules, random structures, an isolated atom, the empty structure, atoms far outside
/// the cell.
pub fn cases() -> Vec<(String, Structure, f64)> {
    let mut v: Vec<(String, Structure, f64)> = Vec::new();
    v.push(("si diamond 2x2x2".into(), si_diamond(2), 5.0));
    v.push(("si diamond 3x3x3".into(), si_diamond(3), 5.0));
    v.push(("water box 3^3".into(), water_box(3, 1), 5.0));
    let thin = [[2.9, 0.0, 0.0], [0.6, 2.7, 0.0], [-0.4, 0.5, 3.1]];
    let tric = [[7.0, 0.0, 0.0], [3.5, 6.1, 0.0], [1.0, 1.5, 9.0]];
    let ortho = [[9.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 11.0]];
    let zero = [[0.0; 3]; 3];
    let pbcs = [
        [true; 3],
        [true, false, true],
        [false, true, false],
        [true, true, false],
        [false; 3],
    ];
    let mut seed = 1;
    for (cname, cell) in [
        ("thin", thin),
        ("triclinic", tric),
        ("ortho", ortho),
        ("zero", zero),
    ] {
        for pbc in pbcs {
            if cname == "zero" && pbc.iter().any(|&p| p) {
                continue;
            }
            for &(n, cutoff) in &[(1usize, 4.0), (7, 3.0), (40, 4.5), (120, 5.0)] {
                seed += 1;
                v.push((
                    format!("{cname} {pbc:?} n={n} rc={cutoff}"),
                    random(cell, pbc, n, -0.3, 1.3, seed),
                    cutoff,
                ));
            }
        }
    }
    // a cell much thinner than the cutoff along one direction only: many images of each atom
    let slab = [[1.3, 0.0, 0.0], [0.2, 8.0, 0.0], [0.1, 0.3, 8.5]];
    v.push((
        "thin slab".into(),
        random(slab, [true; 3], 12, 0.0, 1.0, 77),
        5.0,
    ));
    // one atom: in a small periodic cell (its own images), and alone in open space
    v.push((
        "isolated atom, periodic fcc".into(),
        Structure {
            positions: vec![[0.3, -0.2, 0.1]],
            numbers: vec![13],
            cell: [
                [0.0, 2.025, 2.025],
                [2.025, 0.0, 2.025],
                [2.025, 2.025, 0.0],
            ],
            pbc: [true; 3],
        },
        4.2,
    ));
    v.push((
        "isolated atom, open".into(),
        Structure {
            positions: vec![[1.0, 2.0, 3.0]],
            numbers: vec![1],
            cell: zero,
            pbc: [false; 3],
        },
        5.0,
    ));
    v.push((
        "empty".into(),
        Structure {
            positions: vec![],
            numbers: vec![],
            cell: ortho,
            pbc: [true; 3],
        },
        5.0,
    ));
    // a water molecule and a methane far apart, open boundaries
    v.push((
        "open molecules".into(),
        Structure {
            positions: vec![
                [0.0, 0.0, 0.117],
                [0.0, 0.757, -0.469],
                [0.0, -0.757, -0.469],
                [40.0, 40.0, 40.0],
                [40.63, 40.63, 40.63],
                [39.37, 39.37, 40.63],
                [39.37, 40.63, 39.37],
                [40.63, 39.37, 39.37],
            ],
            numbers: vec![8, 1, 1, 6, 1, 1, 1, 1],
            cell: zero,
            pbc: [false; 3],
        },
        3.0,
    ));
    // atoms on the faces of the cell: at 0, a hair below 0 (wrapping rounds up to exactly 1,
    // folded back to 0 with the wrap one less), at the far face, a hair inside it
    // (a cell of several bins per direction, so a wrong wrap changes the images visited)
    for (l, rc) in [([4.0, 4.5, 5.0], 3.2), ([9.0, 9.5, 10.0], 3.0)] {
        let [a, b, c] = l;
        v.push((
            format!("atoms on the cell faces {l:?}"),
            Structure {
                positions: vec![
                    [0.0, 0.0, 0.0],
                    [-1e-17, 1.0, -3e-17],
                    [a, b, c / 2.0],
                    [a - 4e-16, -0.0, c],
                    [a / 2.0, -1e-300, c - 1e-15],
                    [-a, 2.0 * b, -1e-16],
                    [a - 1.0, b - 1.0, c - 1.0],
                    [1.0, -1e-17, 1.0],
                ],
                numbers: vec![14; 8],
                cell: [[a, 0.0, 0.0], [0.0, b, 0.0], [0.0, 0.0, c]],
                pbc: [true; 3],
            },
            rc,
        ));
    }
    // atoms many cells away from the home cell (large wraps), negative coordinates
    v.push((
        "far outside the cell".into(),
        random(tric, [true; 3], 30, -40.0, 35.0, 99),
        4.0,
    ));
    v
}
