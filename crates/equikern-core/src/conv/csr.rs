//! Validated graph indices and their two CSR views (by receiver, by sender).
//!
//! The deterministic convolution reduces each node's edges in a fixed order without atomics:
//! forward and `dgz` loop over a node's *receiver* range, `gx` and `dx` over its *sender*
//! range. Both views are stable counting sorts (O(nodes + edges)), so within a node edges keep
//! ascending edge id: the summation order is the same whether or not the input was sorted.

use super::ConvError;

/// An index type accepted at the API (`u32`, `i32`, `i64`, `u64`, `usize`).
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
graph_index!(u32, i32, i64, u64, usize);

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

    /// True when every edge's receiver is ≥ the previous edge's (the identity `recv_perm`).
    pub fn sorted_by_receiver(&self) -> bool {
        self.receiver.windows(2).all(|w| w[0] <= w[1])
    }
}
