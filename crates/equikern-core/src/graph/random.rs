//! Seeded random graphs with skewed degree (no external RNG: results never change).

use super::GraphError;

/// SplitMix64: tiny, seedable, good enough for test graphs.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// `(receiver, sender)` of `edges` directed edges on `nodes` nodes: receivers follow a power
/// law `P(rank k) ∝ (k + 1)^-alpha` over a seeded shuffle of the nodes (a few hubs with very
/// long ranges, many nodes with none), senders are uniform. Edges come in random order.
pub fn random_skewed(
    nodes: usize,
    edges: usize,
    alpha: f64,
    seed: u64,
) -> Result<(Vec<u32>, Vec<u32>), GraphError> {
    if nodes == 0 && edges > 0 {
        return Err(GraphError::Random("edges need at least one node"));
    }
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(GraphError::Random("alpha must be finite and >= 0"));
    }
    if nodes >= u32::MAX as usize {
        return Err(GraphError::TooLarge {
            what: "nodes",
            n: nodes,
        });
    }
    let mut rng = SplitMix64(seed);
    let mut label: Vec<u32> = (0..nodes as u32).collect();
    for i in (1..nodes).rev() {
        label.swap(i, rng.below(i + 1));
    }
    let mut cdf = Vec::with_capacity(nodes);
    let mut acc = 0.0;
    for k in 0..nodes {
        acc += ((k + 1) as f64).powf(-alpha);
        cdf.push(acc);
    }
    let mut receiver = Vec::with_capacity(edges);
    let mut sender = Vec::with_capacity(edges);
    for _ in 0..edges {
        let u = rng.unit() * acc;
        let k = cdf.partition_point(|&c| c <= u).min(nodes - 1);
        receiver.push(label[k]);
        sender.push(rng.below(nodes) as u32);
    }
    Ok((receiver, sender))
}
