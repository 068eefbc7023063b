//! Helpers for the convolution tests: small tensor products, seeded data, FD helpers.
#![allow(dead_code)]

use equikern_core::spec::builders::{channelwise, fully_connected};
use equikern_core::{IrrepNormalization, Irreps, PathNormalization, TensorProduct};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn irreps(s: &str) -> Irreps {
    Irreps::parse(s).expect("irreps")
}

/// Channelwise (uvu) product, per-edge weights (NequIP-style).
pub fn uvu_per_edge() -> TensorProduct {
    channelwise(
        &irreps("3x0e+2x1o+2x2e"),
        &irreps("1x0e+1x1o+1x2e"),
        &irreps("3x0e+2x1o+2x1e+2x2e"),
        false,
    )
    .build()
    .expect("build")
}

/// Fully connected (uvw) product with shared weights.
pub fn uvw_shared() -> TensorProduct {
    fully_connected(
        &irreps("2x0e+2x1o"),
        &irreps("1x0e+1x1o"),
        &irreps("2x0e+1x1o+1x1e"),
        IrrepNormalization::Component,
        PathNormalization::Element,
    )
    .build()
    .expect("build")
}

/// The uvu product with every path unweighted.
pub fn uvu_unweighted() -> TensorProduct {
    let mut s = channelwise(
        &irreps("2x0e+2x1o"),
        &irreps("1x0e+1x1o"),
        &irreps("2x0e+2x1o+2x1e"),
        false,
    );
    for i in &mut s.instructions {
        i.has_weight = false;
    }
    s.build().expect("build")
}

/// A product for the channel-fused kernels: every path `uvu` over one multiplicity (8), per-edge
/// weights, a mul-2 `y` block (`v` loop) and several paths into one output irrep.
pub fn uvu_channels() -> TensorProduct {
    channels_spec().build().expect("build")
}

/// [`uvu_channels`] with shared weights.
pub fn uvu_channels_shared() -> TensorProduct {
    let mut s = channels_spec();
    s.shared_weights = true;
    s.build().expect("build")
}

/// [`uvu_channels`] with the first half of its paths unweighted.
pub fn uvu_channels_mixed() -> TensorProduct {
    let mut s = channels_spec();
    let n = s.instructions.len();
    for i in &mut s.instructions[..n / 2] {
        i.has_weight = false;
    }
    s.build().expect("build")
}

fn channels_spec() -> equikern_core::TpSpec {
    channelwise(
        &irreps("8x0e+8x1o+8x2e"),
        &irreps("2x0e+1x1o+1x2e"),
        &irreps("8x0e+8x1o+8x1e+8x2e"),
        false,
    )
}

/// A channel-fused backward product with `x` blocks of different multiplicities (16, 8, 12:
/// 16 channels, guarded rows in the 8- and 12-row blocks), a mul-2 `y` block and several
/// paths into blocks of one irrep but different multiplicities; the first third of the paths
/// unweighted. The product's forward stays on row kernels (one multiplicity only); the
/// convolution forward is fused (groups of 16, 12 and 8 lanes).
pub fn uvu_channels_multimul() -> TensorProduct {
    let mut s = channelwise(
        &irreps("16x0e+8x1o+12x2e"),
        &irreps("2x0e+1x1o+1x2e"),
        &irreps("0e+1o+1e+2e"),
        false,
    );
    let n = s.instructions.len();
    for i in &mut s.instructions[..n / 3] {
        i.has_weight = false;
    }
    s.build().expect("build")
}

/// SevenNet-0's convolution: `128x0e+64x1e+32x2e ⊗ 1x0e+1x1e+1x2e → uvu` (every `l ≤ 2`
/// output), per-edge weights: 128 channels, the `1e`/`2e` blocks guarded.
pub fn uvu_sevennet_like() -> TensorProduct {
    channelwise(
        &irreps("128x0e+64x1e+32x2e"),
        &irreps("1x0e+1x1e+1x2e"),
        &irreps("0e+1e+2e"),
        false,
    )
    .build()
    .expect("build")
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn randv(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `a + h·d`.
pub fn axpy(a: &[f64], h: f64, d: &[f64]) -> Vec<f64> {
    a.iter().zip(d).map(|(x, y)| x + h * y).collect()
}

pub fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// A small directed graph: not symmetric, with a repeated edge, a self loop, a node with only
/// outgoing edges (0), one with only incoming edges (4) and an isolated node (5).
pub fn directed() -> (usize, Vec<i64>, Vec<i64>) {
    // edges sender -> receiver
    let pairs = [
        (0, 1),
        (1, 2),
        (0, 2),
        (2, 4),
        (3, 4),
        (0, 1),
        (3, 3),
        (1, 4),
        (2, 3),
    ];
    let receiver = pairs.iter().map(|p| p.1).collect();
    let sender = pairs.iter().map(|p| p.0).collect();
    (6, receiver, sender)
}
