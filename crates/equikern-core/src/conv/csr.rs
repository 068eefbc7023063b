//! Validated graph indices and their two CSR views (by receiver, by sender).
//!
//! The deterministic convolution reduces each node's edges in a fixed order without atomics:
//! forward and `dgz` loop over a node's *receiver* range, `gx` and `dx` over its *sender*
//! range. Both views are stable counting sorts (O(nodes + edges)), so within a node edges keep
//! ascending edge id: the summation order is the same whether or not the input was sorted.

use super::ConvError;

/// An index type accepted at the API (`u32`, `i32`, `i64`, `u64`, `usize`, `i128`).
pub trait GraphIndex: Copy {
    /// The value widened to `i128` (never truncates, so a bad index is reported as given).
    fn wide(self) -> i128;
}

macro_rules! graph_index {
    ($($t:ty),*) => {$(
        impl GraphIndex for $t {
            fn wide(self) -> i128 {
                self as i128
            }
        }
    )*};
}
graph_index!(u32, i32, i64, u64, usize, i128);

/// Which end of the edges a CSR view groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Receiver,
    Sender,
}

/// Edges of a directed graph (`sender → receiver`) with both CSR views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Csr {
    pub nodes: usize,
    /// Receiver and sender of each edge, in the caller's edge order.
    pub receiver: Vec<u32>,
    pub sender: Vec<u32>,
    /// `recv_offsets[i]..recv_offsets[i + 1]` indexes `recv_perm`: the edges into node `i`.
    pub recv_offsets: Vec<u32>,
    /// Edge ids sorted by receiver (stable: ascending edge id within a receiver).
    pub recv_perm: Vec<u32>,
    /// Transpose: `send_offsets[j]..send_offsets[j + 1]` indexes `send_perm`, the edges out of `j`.
    pub send_offsets: Vec<u32>,
    /// Edge ids sorted by sender (stable).
    pub send_perm: Vec<u32>,
}

fn check_index<I: GraphIndex>(
    array: &'static str,
    v: &[I],
    nodes: usize,
) -> Result<Vec<u32>, ConvError> {
    v.iter()
        .enumerate()
        .map(|(position, &i)| {
            let value = i.wide();
            if value < 0 || value >= nodes as i128 {
                Err(ConvError::Index {
                    array,
                    position,
                    value,
                    nodes,
                })
            } else {
                Ok(value as u32)
            }
        })
        .collect()
}

/// Stable counting sort of edge ids by `key`: `(offsets [nodes + 1], perm [edges])`.
fn counting_sort(key: &[u32], nodes: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; nodes + 1];
    for &k in key {
        offsets[k as usize + 1] += 1;
    }
    for i in 0..nodes {
        offsets[i + 1] += offsets[i];
    }
    let mut next = offsets.clone();
    let mut perm = vec![0u32; key.len()];
    for (e, &k) in key.iter().enumerate() {
        perm[next[k as usize] as usize] = e as u32;
        next[k as usize] += 1;
    }
    (offsets, perm)
}

impl Csr {
    /// Validates `receiver`/`sender` (equal lengths, every index in `0..nodes`) and builds
    /// both views. Errors name the array, the position and the bad value.
    pub fn build<I: GraphIndex>(
        nodes: usize,
        receiver: &[I],
        sender: &[I],
    ) -> Result<Self, ConvError> {
        if receiver.len() != sender.len() {
            return Err(ConvError::EdgeCount {
                receiver: receiver.len(),
                sender: sender.len(),
            });
        }
        // Offsets and edge ids are u32 on every target.
        if nodes >= u32::MAX as usize {
            return Err(ConvError::TooLarge {
                what: "nodes",
                n: nodes,
            });
        }
        if receiver.len() >= u32::MAX as usize {
            return Err(ConvError::TooLarge {
                what: "edges",
                n: receiver.len(),
            });
        }
        let receiver = check_index("receiver", receiver, nodes)?;
        let sender = check_index("sender", sender, nodes)?;
        let (recv_offsets, recv_perm) = counting_sort(&receiver, nodes);
        let (send_offsets, send_perm) = counting_sort(&sender, nodes);
        Ok(Csr {
            nodes,
            receiver,
            sender,
            recv_offsets,
            recv_perm,
            send_offsets,
            send_perm,
        })
    }

    pub fn edges(&self) -> usize {
        self.receiver.len()
    }

    /// Edge ids of node `n`'s range in the view `by`, in summation order.
    pub fn range(&self, by: End, n: usize) -> &[u32] {
        let (off, perm) = match by {
            End::Receiver => (&self.recv_offsets, &self.recv_perm),
            End::Sender => (&self.send_offsets, &self.send_perm),
        };
        &perm[off[n] as usize..off[n + 1] as usize]
    }

    /// The view packed as one `u32` array, the layout kernels bind (`RecvCsr` / `SendCsr` in
    /// the plan): `[offsets (nodes+1) | edge ids in view order (E) | other end of each (E)]`.
    /// The third part saves kernels a dependent load (and a binding) per edge.
    pub fn packed(&self, by: End) -> Vec<u32> {
        let (off, perm, other) = match by {
            End::Receiver => (&self.recv_offsets, &self.recv_perm, &self.sender),
            End::Sender => (&self.send_offsets, &self.send_perm, &self.receiver),
        };
        let mut v = Vec::with_capacity(off.len() + 2 * perm.len());
        v.extend_from_slice(off);
        v.extend_from_slice(perm);
        v.extend(perm.iter().map(|&e| other[e as usize]));
        v
    }

    /// Pieces of at most `max_len` edges (≥ 1) cutting each node's range of view `by`, in
    /// node order: `(piece_offsets [nodes+1], piece_start [pieces+1], piece_node [pieces])`.
    /// Node `n` owns pieces `piece_offsets[n]..piece_offsets[n+1]`; piece `p` covers view
    /// positions `piece_start[p]..piece_start[p+1]`. Fixed by the graph and `max_len` alone,
    /// so a two-level sum over pieces is deterministic on any hardware.
    pub fn pieces(&self, by: End, max_len: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let off = match by {
            End::Receiver => &self.recv_offsets,
            End::Sender => &self.send_offsets,
        };
        let max_len = max_len.max(1);
        let mut piece_offsets = Vec::with_capacity(self.nodes + 1);
        let (mut start, mut node) = (vec![], vec![]);
        for n in 0..self.nodes {
            piece_offsets.push(start.len() as u32);
            let mut p = off[n];
            while p < off[n + 1] {
                start.push(p);
                node.push(n as u32);
                p = p.saturating_add(max_len).min(off[n + 1]);
            }
        }
        piece_offsets.push(start.len() as u32);
        start.push(self.edges() as u32);
        (piece_offsets, start, node)
    }

    /// Number of pieces of [`Csr::pieces`].
    pub fn num_pieces(&self, by: End, max_len: u32) -> usize {
        let off = match by {
            End::Receiver => &self.recv_offsets,
            End::Sender => &self.send_offsets,
        };
        let m = max_len.max(1) as usize;
        off.windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .map(|d| d.div_ceil(m))
            .sum()
    }

    /// The pieces packed with the view's edge ids and other ends, the one index tensor a
    /// piece kernel binds (`RecvPieces` / `SendPieces`): `[piece_offsets (nodes+1) |
    /// piece_start (pieces+1) | piece_node (pieces) | edge ids (E) | other ends (E)]`.
    pub fn packed_pieces(&self, by: End, max_len: u32) -> Vec<u32> {
        let (po, ps, pn) = self.pieces(by, max_len);
        let view = self.packed(by);
        let mut v = Vec::with_capacity(po.len() + ps.len() + pn.len() + 2 * self.edges());
        v.extend(po);
        v.extend(ps);
        v.extend(pn);
        v.extend_from_slice(&view[self.nodes + 1..]);
        v
    }

    /// True when every edge's receiver is ≥ the previous edge's (the identity `recv_perm`).
    pub fn sorted_by_receiver(&self) -> bool {
        self.receiver.windows(2).all(|w| w[0] <= w[1])
    }
}
