//! Radius graphs by cell lists against brute force; the diamond lattice; the protein.

use equikern_core::graph::{diamond, radius_graph, read_pdb, SplitMix64, Structure, DIAMOND_A};

fn brute(s: &Structure, cutoff: f64) -> Vec<(u32, u32)> {
    let p = &s.positions;
    let mut v = vec![];
    for i in 0..p.len() {
        for j in 0..p.len() {
            if i == j {
                continue;
            }
            let mut d2 = 0.0;
            for a in 0..3 {
                let mut d = p[j][a] - p[i][a];
                if let Some(l) = s.cell {
                    d -= l[a] * (d / l[a]).round();
                }
                d2 += d * d;
            }
            if d2 < cutoff * cutoff {
                v.push((i as u32, j as u32));
            }
        }
    }
    v
}

fn pairs(s: &Structure, cutoff: f64) -> Vec<(u32, u32)> {
    let g = radius_graph(s, cutoff).unwrap();
    let mut v: Vec<_> = g.receiver.into_iter().zip(g.sender).collect();
    v.sort();
    v
}

fn cloud(n: usize, l: f64, seed: u64) -> Vec<[f64; 3]> {
    let mut r = SplitMix64(seed);
    (0..n)
        .map(|_| [r.unit() * l, r.unit() * l, r.unit() * l - 0.5 * l])
        .collect()
}

#[test]
fn cell_lists_match_brute_force() {
    for (seed, l, cutoff) in [
        (1, 10.0, 1.5),
        (2, 10.0, 4.0),
        (3, 7.0, 3.2),
        (4, 20.0, 2.5),
    ] {
        let positions = cloud(300, l, seed);
        let open = Structure {
            positions: positions.clone(),
            cell: None,
        };
        assert_eq!(pairs(&open, cutoff), brute(&open, cutoff), "open {seed}");
        // Periodic (3.2 in a 7.0 box: 2 cells per axis, the wrapped stencil repeats).
        let per = Structure {
            positions,
            cell: Some([l, l * 1.1, l * 0.95]),
        };
        assert_eq!(pairs(&per, cutoff), brute(&per, cutoff), "periodic {seed}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let s = diamond([1, 1, 1], DIAMOND_A);
    assert!(radius_graph(&s, 2.0)
        .unwrap_err()
        .to_string()
        .contains("2 × cutoff"));
    assert!(radius_graph(&s, -1.0).is_err());
    let nan = Structure {
        positions: vec![[0.0; 3], [f64::NAN, 0.0, 0.0]],
        cell: None,
    };
    assert!(radius_graph(&nan, 1.0)
        .unwrap_err()
        .to_string()
        .contains("atom 1"));
}

#[test]
fn diamond_shells() {
    let s = diamond([3, 3, 3], DIAMOND_A);
    assert_eq!(s.positions.len(), 216);
    // Nearest neighbours at a·√3/4 = 1.5446 Å: 4 each.
    let g = radius_graph(&s, 2.0).unwrap();
    assert_eq!(g.receiver.len(), 4 * 216);
    for v in &g.vectors {
        let d = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        assert!((d - DIAMOND_A * 3f64.sqrt() / 4.0).abs() < 1e-9);
    }
    // Shells up to 5 Å: 4 + 12 + 12 + 6 + 12 + 24 + 16 = 86.
    let g = radius_graph(&s, 5.0).unwrap();
    assert_eq!(g.receiver.len(), 86 * 216);
    assert_eq!(pairs(&s, 5.0), brute(&s, 5.0));
}

#[test]
fn protein_graph() {
    let text = include_str!("../../../tests/data/structures/adk_4ake.pdb");
    let s = read_pdb(text).unwrap();
    assert_eq!(s.positions.len(), 3341);
    assert_eq!(s.cell, None);
    assert_eq!(pairs(&s, 5.0), brute(&s, 5.0));
    let e = read_pdb("ATOM      1 N    MET     1     -11.05x  26.680  12.742\n").unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
}
