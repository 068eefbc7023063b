//! CSR views: grouping, stability, transpose, packing, validation.

mod conv_common;

use conv_common::directed;
use equikern_core::conv::{ConvError, Csr, End};
use equikern_core::graph::random_skewed;

fn check_view(g: &Csr, by: End) {
    let key = match by {
        End::Receiver => &g.receiver,
        End::Sender => &g.sender,
    };
    let mut seen = vec![false; g.edges()];
    for n in 0..g.nodes {
        let r = g.range(by, n);
        assert!(r.windows(2).all(|w| w[0] < w[1]), "stable: ascending ids");
        for &e in r {
            assert_eq!(key[e as usize] as usize, n);
            assert!(!std::mem::replace(&mut seen[e as usize], true));
        }
    }
    assert!(seen.iter().all(|&s| s), "a permutation");
}

#[test]
fn views_group_every_edge_once_in_order() {
    let (n, r, s) = directed();
    let g = Csr::build(n, &r, &s).unwrap();
    check_view(&g, End::Receiver);
    check_view(&g, End::Sender);
    for seed in 0..5 {
        let (r, s) = random_skewed(100, 2000, 1.5, seed).unwrap();
        let g = Csr::build(100, &r, &s).unwrap();
        check_view(&g, End::Receiver);
        check_view(&g, End::Sender);
        // The transpose of the transpose is the original.
        let t = Csr::build(100, &g.sender, &g.receiver).unwrap();
        assert_eq!(t.recv_offsets, g.send_offsets);
        assert_eq!(t.recv_perm, g.send_perm);
    }
}

#[test]
fn offsets_of_isolated_and_empty() {
    let g = Csr::build::<u32>(3, &[], &[]).unwrap();
    assert_eq!(g.recv_offsets, vec![0; 4]);
    let g = Csr::build(4, &[2u32, 2], &[0u32, 1]).unwrap();
    assert_eq!(g.recv_offsets, vec![0, 0, 0, 2, 2]);
    assert_eq!(g.send_offsets, vec![0, 1, 2, 2, 2]);
    assert!(g.sorted_by_receiver());
}

#[test]
fn packed_layout() {
    let g = Csr::build(3, &[2i32, 0, 2], &[1i32, 2, 0]).unwrap();
    // offsets by receiver | edge ids | their senders
    assert_eq!(g.packed(End::Receiver), vec![0, 1, 1, 3, 1, 0, 2, 2, 1, 0]);
    // offsets by sender | edge ids | their receivers
    assert_eq!(g.packed(End::Sender), vec![0, 1, 2, 3, 2, 0, 1, 2, 2, 0]);
}

#[test]
fn bad_indices_are_named() {
    let e = Csr::build(4, &[0i64, 1, 4], &[0i64, 1, 2]).unwrap_err();
    assert_eq!(
        e,
        ConvError::Index {
            array: "receiver",
            position: 2,
            value: 4,
            nodes: 4
        }
    );
    assert_eq!(
        e.to_string(),
        "receiver[2] = 4 is not a node index (nodes = 4)"
    );
    let e = Csr::build(4, &[0i32, 1], &[0i32, -1]).unwrap_err();
    assert!(e.to_string().starts_with("sender[1] = -1"), "{e}");
    let e = Csr::build(4, &[0u32, 1], &[0u32]).unwrap_err();
    assert_eq!(
        e,
        ConvError::EdgeCount {
            receiver: 2,
            sender: 1
        }
    );
    let e = Csr::build(0, &[0u64], &[0u64]).unwrap_err();
    assert!(matches!(e, ConvError::Index { .. }));
    let e = Csr::build(3, &[u64::MAX], &[0u64]).unwrap_err();
    assert!(e.to_string().contains(&u64::MAX.to_string()), "{e}");
}

#[test]
fn skewed_graph_is_seeded_and_skewed() {
    let a = random_skewed(1000, 20000, 1.1, 3).unwrap();
    assert_eq!(a, random_skewed(1000, 20000, 1.1, 3).unwrap());
    assert_ne!(a, random_skewed(1000, 20000, 1.1, 4).unwrap());
    let g = Csr::build(1000, &a.0, &a.1).unwrap();
    let deg: Vec<u32> = g.recv_offsets.windows(2).map(|w| w[1] - w[0]).collect();
    let max = *deg.iter().max().unwrap();
    let isolated = deg.iter().filter(|&&d| d == 0).count();
    eprintln!("skewed: max in-degree {max}, mean 20, {isolated} nodes receive nothing");
    assert!(max > 1000, "hub degree {max}");
    assert!(isolated > 20);
}

#[test]
fn pieces_tile_each_range() {
    let (r, s) = random_skewed(50, 700, 1.4, 2).unwrap();
    let g = Csr::build(50, &r, &s).unwrap();
    for by in [End::Receiver, End::Sender] {
        let off = match by {
            End::Receiver => &g.recv_offsets,
            End::Sender => &g.send_offsets,
        };
        for m in [1, 3, 16, 1000] {
            let (po, ps, pn) = g.pieces(by, m);
            assert_eq!(pn.len(), g.num_pieces(by, m));
            assert_eq!(ps.len(), pn.len() + 1);
            assert_eq!(*ps.last().unwrap() as usize, g.edges());
            for n in 0..50 {
                let ps_n = &ps[po[n] as usize..=po[n + 1] as usize];
                // Pieces of node n tile exactly its range, each 1..=m long.
                if po[n] == po[n + 1] {
                    assert_eq!(off[n], off[n + 1]);
                    continue;
                }
                assert_eq!(ps_n[0], off[n]);
                assert_eq!(*ps_n.last().unwrap(), off[n + 1]);
                assert!(ps_n.windows(2).all(|w| w[1] > w[0] && w[1] - w[0] <= m));
                assert!(pn[po[n] as usize..po[n + 1] as usize]
                    .iter()
                    .all(|&x| x == n as u32));
            }
            let packed = g.packed_pieces(by, m);
            assert_eq!(packed.len(), 51 + 2 * pn.len() + 1 + 2 * g.edges());
        }
    }
}
