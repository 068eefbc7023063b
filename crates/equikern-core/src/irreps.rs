//! Irreducible representations of O(3) and their direct sums, with e3nn's grammar and layout.
//!
//! Layout: a block `mul x ir` is `[mul][2l+1]` row-major ("mul_ir"); blocks concatenate in order.

use std::ops::Range;

/// Parity of an irrep. Declared odd-first so the derived order is e3nn's `(l, p)` tuple order
/// (`0o < 0e < 1o < 1e …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Parity {
    Odd,
    Even,
}

/// One irrep `(l, p)`; field order makes the derived `Ord` the e3nn order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Irrep {
    pub l: u32,
    pub p: Parity,
}

/// `mul` copies of one irrep.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MulIr {
    pub mul: usize,
    pub ir: Irrep,
}

/// An ordered direct sum of irreps (structural equality, as e3nn's tuple equality).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Irreps(pub Vec<MulIr>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IrrepsError {
    #[error("invalid irreps string {input:?}: bad token {token:?}: {why}")]
    BadToken {
        input: String,
        token: String,
        why: String,
    },
}

/// Result of [`Irreps::sort`]: `p[old] = new`, `inv[new] = old`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sorted {
    pub irreps: Irreps,
    pub p: Vec<usize>,
    pub inv: Vec<usize>,
}

impl Irrep {
    pub fn dim(&self) -> usize {
        2 * self.l as usize + 1
    }
}

impl Irreps {
    pub fn dim(&self) -> usize {
        self.0.iter().map(|m| m.mul * m.ir.dim()).sum()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `[start, stop)` of each block in the flat feature vector.
    pub fn slices(&self) -> Vec<Range<usize>> {
        let mut off = 0;
        self.0
            .iter()
            .map(|m| {
                let r = off..off + m.mul * m.ir.dim();
                off = r.end;
                r
            })
            .collect()
    }
}
