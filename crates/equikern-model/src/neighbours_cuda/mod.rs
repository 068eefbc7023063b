//! The radius graph of [`Graph::build`] built on a CUDA device, for large systems: the same
//! edges in the same order (the pair order: lead edges sorted by centre, neighbour, shift,
//! then each reversed), the same shifts and bit-identical edge vectors.
//!
//! The kernels (`neighbours.cu`, hand-written CUDA compiled by NVRTC through
//! `equikern-cuda`'s module cache) do what [`Graph::build`] does with the same f64
//! operations (explicit round-to-nearest intrinsics, so no FMA contraction):
//!
//! 1. fractional coordinates from the host's reciprocal basis; for open directions their
//!    minimum and maximum (atomic min/max of order-preserving integer keys, exact);
//! 2. the host's bin layout ([`BinLayout`], computed on the host from the lattice and those
//!    bounds, so the same numbers); wrap into the cell along periodic directions and bin
//!    every atom (count per bin → exclusive scan → fill, then each bin sorted by atom index,
//!    so the bins are deterministic). When the host grid has more bins than the device's
//!    budget ([`bin_budget`]), contiguous runs of host bins are merged (`b' = b·n'/n`, the
//!    reach scaled up to cover the same bins): every candidate the host visits is visited;
//! 3. per atom, the bins within reach with their periodic images (several per axis when the
//!    cell is thinner than the cutoff): count the lead edges (`|v|² < r_c²`, `j > i` or
//!    `j = i` with a positive shift), scan the counts, then write them (so the output is
//!    exactly sized); a last kernel puts each atom's leads in `(neighbour, shift)` order by
//!    rank, computes the edge vectors there, and writes each lead's reverse `pairs` later.
//!
//! Nothing is specialised on atom or edge counts: one module, buffers that only grow
//! ([`CudaNeighbourList`] owns them, for MD), one 8-byte download per call (the edge count;
//! plus 48 bytes for the bounds when a direction is open).
//!
//! This part (the source and the host-side parameters) builds without the `cuda` feature:
//! `tests/neighbours_cuda_cpu.rs` runs the kernels as C++ on the CPU against
//! [`Graph::build`].

use crate::error::Result;
use crate::graph::{BinLayout, Lattice};

mod auto;
#[cfg(feature = "cuda")]
mod device;
pub use auto::{AutoList, GPU_MIN_ATOMS};
#[cfg(feature = "cuda")]
pub use device::CudaNeighbourList;

#[allow(unused_imports)] // doc links
use crate::graph::Graph;

/// The CUDA source of the kernels (also compiled as C++ by the CPU emulation test).
pub const SOURCE: &str = include_str!("neighbours.cu");

/// Threads of the one block `ek_nl_scan` runs with (its shared array's size).
pub const SCAN_THREADS: u32 = 1024;

/// Threads per block of the grid-stride kernels.
pub const BLOCK: u32 = 256;

/// Most device bins for `atoms` atoms: `max(4·atoms, 4096)`, at most 2^30.
pub fn bin_budget(atoms: usize) -> u64 {
    (4 * atoms as u64).clamp(4096, 1 << 30)
}

/// Kernel parameters (see the header of `neighbours.cu` for the layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Reciprocal rows, bin origin, bin width, cell rows, cutoff².
    pub p: [f64; 25],
    /// Host bins, device bins, device reach, periodic flags.
    pub q: [i64; 12],
    /// Device bins in all (`q[3]·q[4]·q[5]`).
    pub bins: usize,
}

/// The host side of one build: the lattice and cutoff, checked as [`Graph::build`] checks
/// them (the same errors).
#[derive(Clone, Debug)]
pub struct Setup {
    lat: Lattice,
    cell: [[f64; 3]; 3],
    pbc: [bool; 3],
    cutoff: f64,
}

/// Order-preserving map of an f64 onto u64 (what `ek_nl_bounds` takes the min/max of).
pub fn order_key(x: f64) -> u64 {
    let u = x.to_bits();
    if u >> 63 == 1 {
        !u
    } else {
        u | (1 << 63)
    }
}

/// The inverse of [`order_key`].
pub fn from_order_key(k: u64) -> f64 {
    f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
}

/// Initial value of the bounds buffer: min keys at `u64::MAX`, max keys at 0.
pub const BOUNDS_INIT: [u64; 6] = [u64::MAX, u64::MAX, u64::MAX, 0, 0, 0];

impl Setup {
    pub fn new(cell: [[f64; 3]; 3], pbc: [bool; 3], cutoff: f64) -> Result<Self> {
        let lat = Lattice::new(&cell, pbc, cutoff)?;
        Ok(Setup {
            lat,
            cell,
            pbc,
            cutoff,
        })
    }

    fn periodic(&self, k: usize) -> bool {
        self.lat.periodic && self.pbc[k]
    }

    /// Whether some direction is open (then `ek_nl_bounds` runs first).
    pub fn needs_bounds(&self) -> bool {
        (0..3).any(|k| !self.periodic(k))
    }

    /// What `ek_nl_bounds` needs (the reciprocal rows and the periodic flags).
    pub fn bounds_params(&self) -> Params {
        let mut p = [0.0; 25];
        let mut q = [0i64; 12];
        for k in 0..3 {
            p[3 * k..3 * k + 3].copy_from_slice(&self.lat.recip[k]);
            q[9 + k] = self.periodic(k) as i64;
        }
        Params { p, q, bins: 0 }
    }

    /// The parameters of the build for `atoms` atoms (> 0), `bounds` read back from
    /// `ek_nl_bounds` (ignored when every direction is periodic) and at most `max_bins`
    /// device bins. Errors as [`Graph::build`] (a cutoff reaching too many cells).
    pub fn params(&self, bounds: &[u64; 6], max_bins: u64) -> Result<Params> {
        let layout = BinLayout::new(&self.lat, self.pbc, self.cutoff, |k| {
            (from_order_key(bounds[k]), from_order_key(bounds[3 + k]))
        })?;
        let mut cn = layout.nbins;
        let max_bins = max_bins.clamp(1, 1 << 31) as i64;
        while cn[0] * cn[1] * cn[2] > max_bins {
            let k = (0..3).fold(0, |m, k| if cn[k] > cn[m] { k } else { m });
            cn[k] = (cn[k] + 1) / 2;
        }
        let mut p = self.bounds_params().p;
        let mut q = [0i64; 12];
        for k in 0..3 {
            p[9 + k] = layout.origin[k];
            p[12 + k] = layout.width[k];
            p[15 + 3 * k..18 + 3 * k].copy_from_slice(&self.cell[k]);
            let n = layout.nbins[k];
            q[k] = n;
            q[3 + k] = cn[k];
            q[6 + k] = (layout.reach[k] * cn[k] + n - 1) / n;
            q[9 + k] = self.periodic(k) as i64;
        }
        p[24] = self.cutoff * self.cutoff;
        Ok(Params {
            p,
            q,
            bins: (cn[0] * cn[1] * cn[2]) as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_sort_like_f64_and_invert() {
        let xs = [
            f64::NEG_INFINITY,
            -3.5e300,
            -1.0,
            -1e-300,
            -0.0,
            0.0,
            1e-300,
            0.25,
            7.0,
            f64::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{w:?}");
        }
        for x in xs {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn merged_bins_cover_the_host_reach() {
        let s = Setup::new(
            [[100.0, 0.0, 0.0], [0.0, 90.0, 0.0], [0.0, 0.0, 80.0]],
            [true; 3],
            3.0,
        )
        .unwrap();
        let full = s.params(&BOUNDS_INIT, u64::MAX).unwrap();
        assert_eq!(&full.q[0..3], &[33, 30, 26]);
        assert_eq!(&full.q[3..6], &full.q[0..3]);
        assert_eq!(&full.q[6..9], &[1, 1, 1]);
        let small = s.params(&BOUNDS_INIT, 100).unwrap();
        assert!(small.bins <= 100, "{:?}", small.q);
        for k in 0..3 {
            assert!(small.q[3 + k] <= small.q[k] && small.q[6 + k] >= 1);
        }
        // a thin periodic cell: one bin, several images
        let thin = Setup::new(
            [[2.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0]],
            [true; 3],
            5.0,
        )
        .unwrap();
        let p = thin.params(&BOUNDS_INIT, u64::MAX).unwrap();
        assert_eq!((p.q[0], p.q[6]), (1, 3));
    }
}
