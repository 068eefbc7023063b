//! Channel-fused backward: one invocation per `(sample, channel u)` computes every gradient
//! that channel touches, reading each operand element once.
//!
//! The row kernels of the backward gather one output tensor each, so `x`, `y`, `w` and `gz`
//! are each read by two or three kernels (about 2.4× the bytes that must move for MACE/NequIP).
//! When every instruction is `uvu` and every `x` and output block shares one multiplicity
//! `M` (MACE, NequIP), channel `u` of a sample owns row `u` of every `x` block, of every output
//! block and of every path's weights: one invocation can load them once and produce
//! `gx[u, ·]`, `gw[path, u, ·]` and a partial `gy`. The partial `gy` rows of a sample's `M`
//! invocations are summed in workgroup memory in ascending `u` (deterministic, no atomics).
//!
//! Per invocation `(s, u)`, for each path `p` and `v < y_mul`:
//! ```text
//! a      = Σ_terms coeff · gz[u, k] · x[u, i] · y[v, j]        → gw[p, u·y_mul + v]   (a weight gradient)
//! gx[u,i] += w[p, u·y_mul + v] · Σ_terms coeff · gz[u, k] · y[v, j]
//! gy[v,j] += w[p, u·y_mul + v] · Σ_terms coeff · gz[u, k] · x[u, i]   (then summed over u)
//! ```
//! (`w ≡ 1` unweighted). Shared weights keep their chunked gradient kernels; this kernel then
//! writes only `gx` and `gy`.
//!
//! **Mixed multiplicities (backward, conv forward).** The backward also takes `x` blocks of different
//! multiplicities (SevenNet: `128x0e+64x1e+32x2e`): `uvu` gives each path's output block
//! the multiplicity of its `x` block, so channel `u` still owns row `u` of both. The kernel
//! then has `M = max mul` channels per sample, and channel `u` does a path's work (and
//! stores its `x` block's `gx` row) only where `u < mul` of the path's `x` block
//! ([`ChannelBlock::mul`]); every channel still writes its (possibly zero) `gy` partial, so
//! the ascending-`u` sum and its barriers are unchanged (the guards hold no barrier). The
//! convolution forward ([`ChannelConv`]) takes them too: channel `u` adds a path into its
//! output row only where `u < mul` and stores only the rows its blocks have (it has no
//! barrier: the rows go straight from registers to memory), and an invocation group whose
//! blocks all have fewer rows than `M` leaves its channels past the largest idle. The
//! product's forward (staged in workgroup memory) and the double backward keep one
//! multiplicity.

use equikern_core::{ConnectionMode, TensorProduct};
use serde::{Deserialize, Serialize};

use crate::{Capabilities, Dtype};

/// An `x` or output block: its element offset in a sample's row, `2l+1` and its
/// multiplicity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelBlock {
    pub offset: u32,
    pub row_len: u32,
    /// Rows (multiplicity) of the block: channel `u` owns row `u` for `u < mul`. `0` (plans
    /// serialized before mixed multiplicities): [`ChannelWork::channels`] rows. Only a
    /// backward or a convolution forward may have blocks below `channels` (see
    /// [`ChannelWork::block_mul`]).
    #[serde(default)]
    pub mul: u32,
}

/// One CG nonzero with the path coefficient folded in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelTerm {
    pub i: u32,
    pub j: u32,
    pub k: u32,
    pub coeff: f64,
}

/// One `uvu` instruction as the channel kernel reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelPath {
    /// Index of the instruction in the spec.
    pub path: u32,
    /// Index into [`ChannelWork::x_blocks`] (the `gx` accumulator it adds to).
    pub x_block: u32,
    pub x_offset: u32,
    pub x_len: u32,
    pub y_offset: u32,
    pub y_len: u32,
    /// Multiplicity of the `y` block (`v` runs over it).
    pub y_mul: u32,
    pub z_offset: u32,
    pub z_len: u32,
    /// Index into [`ChannelWork::z_blocks`].
    pub z_block: u32,
    /// Offset of the path's `[M, y_mul]` weights in a sample's weight row; `None` unweighted.
    pub w_offset: Option<u32>,
    pub terms: Vec<ChannelTerm>,
}

/// Which pass a channel kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelPass {
    /// `z[u] = Σ_paths w·CG(x[u], y[v])`, one output block at a time: each block's rows
    /// are staged in workgroup memory and stored as one contiguous range per sample
    /// (the per-thread rows are `2l+1` wide, so direct stores would be strided).
    Forward,
    /// `gx`, `gw` and the `gy` partials (see the module docs).
    Backward,
    /// The second-order pass: `dgz` (staged like the forward's output), `dx`, `dw` and the
    /// `dy` partials (summed like `gy`), from `x, y, w, gz, hx, hy, hw`.
    DoubleBackward,
}

impl ChannelPass {
    /// `(inputs, outputs)` of the kernel (weight tensors only for weighted products; the
    /// weight gradient only when `weight_grad`).
    pub fn bindings(
        self,
        weighted: bool,
        weight_grad: bool,
    ) -> (Vec<crate::Tensor>, Vec<crate::Tensor>) {
        use crate::Tensor::*;
        let (mut i, mut o) = match self {
            ChannelPass::Forward => (vec![X, Y], vec![Z]),
            ChannelPass::Backward => (vec![X, Y], vec![GX, GY]),
            ChannelPass::DoubleBackward => (vec![X, Y], vec![DX, DY]),
        };
        if weighted {
            i.push(W);
        }
        match self {
            ChannelPass::Forward => {}
            ChannelPass::Backward => {
                i.push(GZ);
                if weight_grad {
                    o.push(GW);
                }
            }
            ChannelPass::DoubleBackward => {
                i.extend([GZ, HX, HY]);
                if weighted {
                    i.push(HW);
                }
                if weight_grad {
                    o.push(DW);
                }
                o.push(DGZ);
            }
        }
        (i, o)
    }
}

/// A channel-fused kernel's work (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelWork {
    pub pass: ChannelPass,
    /// Every nonzero-multiplicity output block, in irreps order (Forward: all have `M`
    /// channels; each path names its block in [`ChannelPath::z_block`]).
    pub z_blocks: Vec<ChannelBlock>,
    /// `M`: invocations per sample.
    pub channels: u32,
    /// Samples per workgroup (`workgroup_size = samples_per_group · channels`).
    pub samples_per_group: u32,
    /// Every nonzero-multiplicity `x` block, in irreps order (all have `M` channels).
    pub x_blocks: Vec<ChannelBlock>,
    /// `dim_in2`: the per-invocation partial `gy` row summed over a sample's channels.
    pub y_len: u32,
    pub paths: Vec<ChannelPath>,
    /// Whether the weight gradient (`gw`, or `dw` in a double backward) is written here
    /// (per-sample weights).
    pub write_gw: bool,
    /// Forward: consecutive output blocks staged together (counts of `z_blocks`, in order):
    /// a group's rows fill the staging buffer, then one barrier and one coalesced store.
    #[serde(default)]
    pub z_groups: Vec<u32>,
    /// Set in convolution plans (see [`ChannelConv`]); absent from tensor-product plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ChannelConv>,
}

/// The convolution form of a channel kernel.
///
/// **Forward** (`units` over the receiver view `RecvCsr` / `RecvPieces`, `node_out` `Z` /
/// `RecvPartial`): one invocation per `(unit, group g, channel u < L_g)` (see
/// [`ChannelConv::groups`]; `L_g` = [`ChannelWork::group_lanes`], `M` with one
/// multiplicity; lane `O_g·units_per_workgroup + q·L_g + u` of a workgroup with
/// `O_g = Σ_{g'<g} L_g'`, so a warp never mixes groups when every `L_g` is a multiple of the
/// warp). With blocks of different multiplicities channel `u` adds into and stores only the
/// rows its group's blocks have (`u < mul`; the groups are formed within one multiplicity,
/// so no invocation idles). It walks its unit's edges in view order (ascending
/// edge id) on its own (no barriers): per edge `e` (sender `j`) it reads the `x[j]` row `u`
/// blocks its group's paths use, the `y[e]` components they use and the group's weights
/// `w[e, p, u·y_mul + v]`, and adds every path's `w·CG(x, y)` into its group's output rows
/// `u`, kept in registers over the whole range (paths in block order, `v`, terms in order).
/// The rows are stored once at the end, straight from registers (a thread's `2l+1` values
/// are contiguous and a warp's rows of a block are one contiguous range: the `z` store is
/// once per node, ~2-5 % of the bytes, so no staging barrier).
///
/// **Backward**: one invocation per
/// `(unit, channel u)` where a unit is a node's range of the sender view (`SendCsr`) or a
/// piece of it (`SendPieces`). The unit's `channels` invocations walk its edges in view
/// order together (the trip count is the longest range of the workgroup's units, so the
/// barriers stay uniform); per edge `e` (receiver `i`) each reads `y[e]`, `w[e]` row `u` and
/// `gz[i]` row `u`, writes `gw[e, ·, u·y_mul + v]` and its `gy` partial, and the partials
/// are summed in workgroup memory in ascending `u` into `gy[e]` (or a unit is one warp
/// looping over the channels, [`ChannelConv::warp_units`]). The sender's `x` row `u`
/// is loaded once; its `gx` row `u` is accumulated over the range in registers (ascending
/// position = ascending edge id) and stored once into row `unit` of `node_out`. With `x`
/// blocks of different multiplicities the lanes are lane groups instead
/// ([`ChannelConv::lanes`], [`LaneGroup`]: `(x block, row, slice of its paths)`, balanced by
/// a per-edge cost model), the `gy` partials summed per 32-lane chunk, then chunks ascending.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelConv {
    /// `Segments { csr: SendCsr }` or `Pieces { pieces: SendPieces }`.
    pub units: crate::SampleMode,
    /// `GX` (CSR) or `SendPartial` (pieces; a `ReducePieces` follows); forward: `Z` or
    /// `RecvPartial`.
    pub node_out: crate::Tensor,
    /// Forward: the output blocks split into invocation groups (counts of consecutive
    /// blocks in [`ChannelWork::forward_block_order`]: descending multiplicity, then
    /// `z_blocks` order); each group is computed by its own `M` invocations per unit, which each
    /// re-read the edge's inputs the group needs (from L1/L2), so a thread holds only its
    /// group's accumulators in registers. Empty: one group (the backward).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
    /// Backward with `x` blocks of different multiplicities: the lane groups of a unit
    /// (see [`LaneGroup`]); empty: one lane per channel `u < M` (every block's paths where
    /// `u < mul`, the mapping of one multiplicity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lanes: Vec<LaneGroup>,
    /// Backward without lane groups, on targets whose printers have warp shuffles
    /// (`caps.warp_shuffles`, at least [`LANE_CHUNK`] lanes): a unit is one warp of
    /// [`LANE_CHUNK`] lanes and lane `l` does the channels `l, l + 32, …` in that order (each
    /// 32-channel chunk only the paths of blocks with rows in it), so every warp carries a
    /// whole unit's work and walks its range alone: no barrier, no workgroup memory. An
    /// edge's `gy` is the warp's `xor` butterfly ([`chunk_sum`] over the lanes) of each lane's
    /// partial, accumulated over its chunks in ascending order. Off: one lane per channel,
    /// a unit's lanes in step, `gy` summed in workgroup memory in ascending `u` per edge
    /// (on SevenNet-0's mixed multiplicities the first warp then does 15 paths, the last two
    /// 3, and the others wait at each edge's barrier). Taken for mixed multiplicities
    /// (`M ≥ 32`) and for one multiplicity of exactly 32; one multiplicity above 32 keeps a
    /// lane per channel, whose warps are balanced. H100, backward ms (CUDA events): SevenNet-0
    /// at 114,688 edges 0.854 → 0.625; nequip-water 2.27 → 2.20 and nequip-lips 9.97 → 9.67
    /// (M = 32) at 1.56 M edges; but mace-medium (M = 128) 7.61 → 8.69.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warp_units: bool,
    /// Forward: the receiver's edge loop unrolled by this factor where the printer has an
    /// unroll hint (CUDA/HIP `#pragma unroll`; WGSL has none), so two edges' loads are in
    /// flight per iteration; 0 or 1: no hint. [`FORWARD_EDGE_UNROLL`] on fused forwards with
    /// mixed multiplicities or one multiplicity of exactly 32 (where the H100 measured it
    /// faster); one multiplicity above 32 keeps the loop as written.
    #[serde(default, skip_serializing_if = "no_unroll")]
    pub edge_unroll: u32,
}

fn no_unroll(u: &u32) -> bool {
    *u <= 1
}

/// [`ChannelConv::edge_unroll`] of the fused conv forward. Measured on the H100 (SevenNet-0
/// conv forward, 917,504 edges of a synthetic Si graph, the emitted kernel in an nvcc
/// harness, median of 20): 2.44 ms as emitted, 1.79 ms unrolled by 2, against 1.73 ms for
/// a kernel that only streams the same `w` rows and sender `x` rows (the access floor).
/// Reading the next edge's ids one iteration ahead instead: 2.81 ms (worse). The backward's
/// loop unrolled by 2: 5.48 → 5.95 ms (worse; not taken). `bench --conv` forward (det, CUDA
/// events, median of 20), rolled → unrolled: SevenNet-0 at 917,504 edges 2.40 → 1.76 ms,
/// nequip-water 0.95 → 0.92 and nequip-lips 3.10 → 2.89 (M = 32, 1.56 M edges), but
/// mace-medium (M = 128) 3.06 → 3.31: so uniform multiplicities above 32 stay rolled.
pub const FORWARD_EDGE_UNROLL: u32 = 2;

/// One lane group of a mixed-multiplicity conv backward ([`ChannelConv::lanes`]): lane `r`
/// of the group (`r < mul` of its `x` block, lanes `O + r` of a unit with `O` the rows of
/// the groups before it) owns row `r` of `x` block `x_block` and does the paths `paths`
/// (indices into [`ChannelWork::paths`], ascending, all of that block): their weight
/// gradients, its `gx` partial and its `gy` partial per edge. A block's paths may be split
/// over several groups (its *slices*, numbered in list order); slice 0 adds the other
/// slices' `gx` partials in slice order after the unit's edges (through workgroup memory)
/// and stores the row. Per edge the `gy` partials of a unit's lanes are summed in chunks of
/// [`LANE_CHUNK`] consecutive lanes (each a pairwise tree, see [`chunk_sum`]), then the
/// chunk sums in ascending order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LaneGroup {
    pub x_block: u32,
    pub paths: Vec<u32>,
}

/// Lanes per `gy` chunk of a lane-grouped conv backward (a warp).
pub const LANE_CHUNK: u32 = 32;

/// The sum of up to [`LANE_CHUNK`] partials as a pairwise tree (missing lanes are `0`):
/// `v[i] += v[i + 16]` for `i < 16`, then `+8`, `+4`, `+2`, `+1`, the order a warp's
/// `xor` butterfly leaves in lane 0 (so a shuffle reduction gives the same bits).
pub fn chunk_sum(vals: &[f64]) -> f64 {
    let mut v = [0.0f64; LANE_CHUNK as usize];
    for (o, x) in v.iter_mut().zip(vals) {
        *o = *x;
    }
    let mut off = LANE_CHUNK as usize / 2;
    while off > 0 {
        for i in 0..off {
            v[i] += v[i + off];
        }
        off /= 2;
    }
    v[0]
}

impl ChannelConv {
    /// The index table the units walk.
    pub fn table(&self) -> Option<crate::Tensor> {
        match self.units {
            crate::SampleMode::Segments { csr } => Some(csr),
            crate::SampleMode::Pieces { pieces } => Some(pieces),
            _ => None,
        }
    }
}

impl ChannelWork {
    /// The multiplicity of block `b` (`0`: every channel, see [`ChannelBlock::mul`]).
    pub fn block_mul(&self, b: &ChannelBlock) -> u32 {
        if b.mul == 0 {
            self.channels
        } else {
            b.mul
        }
    }

    /// The multiplicity of path `p` (that of its `x` block; `channels` when the block index
    /// is out of range, which the printers' checks reject).
    pub fn path_mul(&self, p: &ChannelPath) -> u32 {
        self.x_blocks
            .get(p.x_block as usize)
            .map_or(self.channels, |b| self.block_mul(b))
    }

    /// Whether every `x` and output block has all `channels` rows (required of a product's
    /// forward and a double backward).
    pub fn uniform(&self) -> bool {
        self.x_blocks
            .iter()
            .chain(&self.z_blocks)
            .all(|b| self.block_mul(b) == self.channels)
    }

    /// Invocations per unit: the conv forward's [`ChannelWork::group_lanes`] summed over its
    /// groups (`channels × groups` with one multiplicity), else `channels`.
    pub fn lanes(&self) -> u32 {
        match &self.conv {
            Some(_) if self.pass == ChannelPass::Forward => self
                .conv_groups()
                .iter()
                .map(|g| self.group_lanes(g))
                .sum::<u32>(),
            Some(cv) if self.pass == ChannelPass::Backward && !cv.lanes.is_empty() => cv
                .lanes
                .iter()
                .map(|g| self.lane_group_rows(g))
                .sum::<u32>(),
            Some(cv) if self.pass == ChannelPass::Backward && cv.warp_units => LANE_CHUNK,
            _ => self.channels,
        }
    }

    /// The lane groups of a mixed-multiplicity conv backward (empty: one lane per channel).
    pub fn lane_groups(&self) -> &[LaneGroup] {
        match &self.conv {
            Some(cv) if self.pass == ChannelPass::Backward => &cv.lanes,
            _ => &[],
        }
    }

    /// Lanes of a lane group: the rows of its `x` block (`0` for a block out of range).
    pub fn lane_group_rows(&self, g: &LaneGroup) -> u32 {
        self.x_blocks
            .get(g.x_block as usize)
            .map_or(0, |b| self.block_mul(b))
    }

    /// Per lane group: its first lane in a unit, its slice (how many groups of its block
    /// come before it) and, for a slice past 0, where its `gx` partial rows start in a unit's
    /// staging area; and the staging area's length per unit (elements).
    pub fn lane_layout(&self) -> (Vec<(u32, u32, Option<u32>)>, u32) {
        let (mut out, mut lane, mut stage) = (vec![], 0u32, 0u32);
        let mut seen = vec![0u32; self.x_blocks.len()];
        for g in self.lane_groups() {
            let rows = self.lane_group_rows(g);
            let slice = seen.get(g.x_block as usize).copied().unwrap_or(0);
            if let Some(n) = seen.get_mut(g.x_block as usize) {
                *n += 1;
            }
            let st = (slice > 0).then_some(stage);
            if slice > 0 {
                let len = self
                    .x_blocks
                    .get(g.x_block as usize)
                    .map_or(0, |b| b.row_len);
                stage += rows * len;
            }
            out.push((lane, slice, st));
            lane += rows;
        }
        (out, stage)
    }

    /// `gy` chunks per unit of a lane-grouped backward (`⌈lanes / LANE_CHUNK⌉`).
    pub fn lane_chunks(&self) -> u32 {
        self.lanes().div_ceil(LANE_CHUNK)
    }

    /// Whether the backward runs one unit per warp ([`ChannelConv::warp_units`]).
    pub fn warp_units(&self) -> bool {
        matches!(&self.conv, Some(cv) if self.pass == ChannelPass::Backward && cv.warp_units)
    }

    /// The 32-channel chunks a lane of a [`ChannelConv::warp_units`] backward walks.
    pub fn channel_chunks(&self) -> u32 {
        self.channels.div_ceil(LANE_CHUNK)
    }

    /// The output blocks in the order the conv forward's groups take them: descending
    /// multiplicity, irreps order within one (the identity with one multiplicity).
    pub fn forward_block_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.z_blocks.len()).collect();
        order.sort_by_key(|&b| std::cmp::Reverse(self.block_mul(&self.z_blocks[b])));
        order
    }

    /// The conv forward's invocation groups: each group's output blocks (indices into
    /// `z_blocks`, ascending), consecutive in [`ChannelWork::forward_block_order`]; one group
    /// covering every block when none are set.
    pub fn conv_groups(&self) -> Vec<Vec<usize>> {
        let order = self.forward_block_order();
        let groups = self.conv.as_ref().map(|cv| &cv.groups[..]).unwrap_or(&[]);
        let counts: Vec<usize> = if groups.is_empty() {
            vec![order.len()]
        } else {
            groups.iter().map(|&n| n as usize).collect()
        };
        let mut next = 0usize;
        counts
            .into_iter()
            .map(|n| {
                let end = (next + n).min(order.len());
                let mut g = order[next.min(end)..end].to_vec();
                next = end;
                g.sort_unstable();
                g
            })
            .collect()
    }

    /// Invocations per unit of a conv forward group: the most rows of its blocks (channel
    /// `u < this` owns row `u` of each block that has one); `channels` for an empty group.
    pub fn group_lanes(&self, blocks: &[usize]) -> u32 {
        blocks
            .iter()
            .filter_map(|&b| self.z_blocks.get(b))
            .map(|b| self.block_mul(b))
            .max()
            .unwrap_or(self.channels)
    }

    /// `(inputs, outputs)` of the kernel, in binding order.
    pub fn bindings(&self, weighted: bool) -> (Vec<crate::Tensor>, Vec<crate::Tensor>) {
        let (mut i, mut o) = self.pass.bindings(weighted, self.write_gw);
        if let Some(cv) = &self.conv {
            if let Some(t) = cv.table() {
                i.push(t);
            }
            i.sort();
            for t in &mut o {
                if matches!(t, crate::Tensor::GX | crate::Tensor::Z) {
                    *t = cv.node_out;
                }
            }
        }
        (i, o)
    }

    /// `Σ (2l+1)` of each staging group's blocks (elements per channel).
    pub fn group_widths(&self) -> impl Iterator<Item = u32> + '_ {
        let mut next = 0usize;
        self.z_groups.iter().map(move |&n| {
            let w = self.z_blocks[next..next + n as usize]
                .iter()
                .map(|b| b.row_len)
                .sum();
            next += n as usize;
            w
        })
    }

    /// Elements of workgroup memory the `gy` reduction uses: one padded column per `y`
    /// component (`workgroup_size + 1` apart, so neither the writes nor the per-sample sums
    /// of one column collide in banks).
    pub fn reduction_len(&self) -> u32 {
        if (self.conv.is_some() && self.pass == ChannelPass::Forward) || self.warp_units() {
            // The conv forward stores from registers; warp units sum by shuffles.
            return 0;
        }
        if !self.lane_groups().is_empty() {
            // The lanes' `gy` columns, then each unit's chunk sums; after the edges the
            // `gx` partials of slices past 0 (the same memory).
            let spg = self.samples_per_group;
            // (Padded by a chunk: a partial last chunk's missing lanes may be read, then
            // discarded.)
            let cols = self.y_len * (spg * self.lanes() + 1)
                + spg * self.y_len * self.lane_chunks()
                + LANE_CHUNK;
            return cols.max(spg * self.lane_layout().1);
        }
        match self.pass {
            ChannelPass::Backward => self.y_len * (self.samples_per_group * self.channels + 1),
            // Forward: the staging buffer of the largest group of output blocks.
            ChannelPass::Forward => {
                self.samples_per_group * self.channels * self.group_widths().max().unwrap_or(1)
            }
            // Both, one after the other in the same memory.
            ChannelPass::DoubleBackward => {
                (self.y_len * (self.samples_per_group * self.channels + 1)).max(
                    self.samples_per_group * self.channels * self.group_widths().max().unwrap_or(1),
                )
            }
        }
    }
}

/// The largest `y` row kept in registers per invocation.
const MAX_Y_LEN: u32 = 64;
/// The largest `y` multiplicity (its loop is unrolled).
const MAX_Y_MUL: usize = 4;
/// Below this many channels per sample the row kernels keep more threads busy.
const MIN_CHANNELS: usize = 8;
/// Most output blocks a fused forward takes (see `channel_work`).
const MAX_FORWARD_BLOCKS: usize = 24;
/// Workgroup memory a forward's output staging may use (several workgroups per SM).
const STAGE_BYTES: u32 = 16 << 10;

/// The nonzero-multiplicity blocks of `irreps` in order, and each irreps index's position
/// among them (`None` for a zero-multiplicity block).
fn blocks(irreps: &equikern_core::Irreps) -> (Vec<ChannelBlock>, Vec<Option<u32>>) {
    let mut out = vec![];
    let mut index = vec![None; irreps.0.len()];
    for (bi, (mi, range)) in irreps.0.iter().zip(irreps.slices()).enumerate() {
        if mi.mul != 0 {
            index[bi] = Some(out.len() as u32);
            out.push(ChannelBlock {
                offset: range.start as u32,
                row_len: mi.ir.dim() as u32,
                mul: mi.mul as u32,
            });
        }
    }
    (out, index)
}

/// The channel-fused backward of `tp`, if it qualifies on these capabilities.
pub(crate) fn channel_work(
    tp: &TensorProduct,
    pass: ChannelPass,
    dtype: Dtype,
    caps: &Capabilities,
    default_wg: u32,
) -> Option<ChannelWork> {
    channel_work_for(tp, pass, dtype, caps, default_wg, false)
}

/// [`channel_work`]; `conv`: for a convolution kernel (no forward staging or block limit:
/// [`conv_channel_work`] sizes and checks the kernel).
fn channel_work_for(
    tp: &TensorProduct,
    pass: ChannelPass,
    dtype: Dtype,
    caps: &Capabilities,
    default_wg: u32,
    conv: bool,
) -> Option<ChannelWork> {
    if tp.paths.is_empty() || tp.dim_in2 == 0 || tp.dim_in2 > MAX_Y_LEN as usize {
        return None;
    }
    // Channels: the largest `x` multiplicity (a backward's smaller blocks are guarded).
    let m = tp
        .spec
        .irreps_in1
        .0
        .iter()
        .map(|mi| mi.mul)
        .max()
        .unwrap_or(0);
    if m < MIN_CHANNELS || m > caps.max_invocations_per_workgroup as usize {
        return None;
    }
    // Blocks of different multiplicities: the backward and the convolution forward (whose
    // rows are stored straight from registers, no barrier to keep uniform).
    let mixed_ok = pass == ChannelPass::Backward || (pass == ChannelPass::Forward && conv);
    if !mixed_ok
        && tp
            .spec
            .irreps_in1
            .0
            .iter()
            .any(|mi| mi.mul != 0 && mi.mul != m)
    {
        return None;
    }
    let weighted = tp.weight_numel > 0;
    let (x_blocks, block_of) = blocks(&tp.spec.irreps_in1);
    // A forward over many output blocks runs faster as row kernels (many more threads per
    // sample, no staging rounds); measured on the H100: fused wins at 8-17 output blocks
    // (MACE, NequIP aspirin/water), loses at 30-64 (NequIP lips/toluene/benzene), PERF.md.
    // (The conv forward sums many edges per store and splits the blocks into groups.)
    if pass == ChannelPass::Forward
        && !conv
        && tp.spec.irreps_out.0.iter().filter(|mi| mi.mul > 0).count() > MAX_FORWARD_BLOCKS
    {
        return None;
    }
    // Output blocks: every row of a forward's output is written by its channel (a mixed
    // conv forward: row `u` of a block by channel `u`, so no block may have more rows than
    // channels; one no path writes is stored as zeros).
    if pass != ChannelPass::Backward
        && tp
            .spec
            .irreps_out
            .0
            .iter()
            .any(|mi| mi.mul != 0 && if mixed_ok { mi.mul > m } else { mi.mul != m })
    {
        return None;
    }
    let (z_blocks, z_block_of) = blocks(&tp.spec.irreps_out);
    let mut paths = vec![];
    for (n, p) in tp.paths.iter().enumerate() {
        let ins = &p.instruction;
        // `uvu`: the output block has the `x` block's multiplicity (channel `u` owns row `u`
        // of both); one multiplicity outside the backward and the conv forward.
        if ins.mode != ConnectionMode::Uvu
            || p.mo != p.m1
            || (!mixed_ok && p.m1 != m)
            || p.m2 > MAX_Y_MUL
        {
            return None;
        }
        if p.m2 == 0 {
            continue;
        }
        let terms: Vec<ChannelTerm> =
            p.cg.iter()
                .map(|&(i, j, k, c)| ChannelTerm {
                    i,
                    j,
                    k,
                    coeff: c * p.coefficient,
                })
                .filter(|t| t.coeff != 0.0)
                .collect();
        paths.push(ChannelPath {
            path: n as u32,
            x_block: block_of[ins.i_in1]?,
            x_offset: p.in1_offset as u32,
            x_len: 2 * p.l1 + 1,
            y_offset: p.in2_offset as u32,
            y_len: 2 * p.l2 + 1,
            y_mul: p.m2 as u32,
            z_offset: p.out_offset as u32,
            z_len: 2 * p.lo + 1,
            z_block: z_block_of[ins.i_out]?,
            w_offset: p.weight_offset.map(|o| o as u32),
            terms,
        });
    }
    let m = m as u32;
    let samples_per_group = (default_wg / m).max(1);
    let es = match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    // Forward staging groups: as many consecutive output blocks as fit the budget.
    let mut z_groups = vec![];
    if pass != ChannelPass::Backward && !conv {
        let budget = caps.workgroup_memory_bytes.min(STAGE_BYTES) as u64;
        let per_elem = (samples_per_group * m) as u64 * es;
        let (mut n, mut width) = (0u32, 0u64);
        for b in &z_blocks {
            if n > 0 && (width + b.row_len as u64) * per_elem > budget {
                z_groups.push(n);
                (n, width) = (0, 0);
            }
            n += 1;
            width += b.row_len as u64;
        }
        if n > 0 {
            z_groups.push(n);
        }
    }
    let work = ChannelWork {
        pass,
        z_blocks,
        channels: m,
        samples_per_group,
        x_blocks,
        y_len: tp.dim_in2 as u32,
        paths,
        write_gw: pass != ChannelPass::Forward && weighted && !tp.spec.shared_weights,
        z_groups,
        conv: None,
    };
    if conv {
        return Some(work);
    }
    let wg = samples_per_group * m;
    let (ins, outs) = pass.bindings(weighted, work.write_gw);
    if (ins.len() + outs.len()) as u32 > caps.max_storage_buffers_per_stage {
        return None;
    }
    if wg > caps.max_invocations_per_workgroup
        || wg > caps.max_workgroup_size_x
        || work.reduction_len() as u64 * es > caps.workgroup_memory_bytes as u64
    {
        return None;
    }
    Some(work)
}

/// Invocations per workgroup of a convolution channel kernel (units per workgroup =
/// `max(1, this / M)`): small groups, since the units of one workgroup walk their edge
/// ranges in step and idle past the end of a shorter range.
const CONV_GROUP_INVOCATIONS: u32 = 64;
/// Units (warps) per workgroup of a [`ChannelConv::warp_units`] backward.
const WARP_UNITS_PER_GROUP: u32 = 4;

/// Register budget (32-bit words) for one conv-forward invocation's output accumulators.
/// A conv forward invocation keeps its output rows in registers over the node's whole edge
/// range; with the `x` row, the `y` components, the weights of an edge in flight and
/// addresses on top, 64 words of accumulators keep a thread near 128 registers (16 warps
/// per H100 SM). Wider outputs (NequIP lips/toluene/benzene: 102-214 floats per channel)
/// are split into groups of consecutive output blocks, each its own invocations
/// ([`ChannelConv::groups`]): more, lighter threads (a 3 341-node graph at `M = 32` is only
/// 107 k invocations per group, under the H100's 270 k resident), for re-reading the
/// edge's index, `x` and `y` (L1/L2 hits) once per extra group; the weights, the
/// dominant DRAM stream, are read once in total. `LowerOptions::conv_forward_regs`
/// overrides it (A/B, tests).
pub const CONV_FORWARD_REGS: u32 = 64;

/// Output blocks split into the fewest groups of consecutive blocks whose accumulators
/// (`Σ (2l+1)` elements of `words` 32-bit words each) fit `budget`, balanced by width
/// (a single block wider than the budget is its own group). Counts of blocks per group.
pub(crate) fn forward_groups(blocks: &[ChannelBlock], words: u32, budget: u32) -> Vec<u32> {
    let width = |b: &ChannelBlock| b.row_len as u64 * words as u64;
    let total: u64 = blocks.iter().map(width).sum();
    let budget = budget.max(1) as u64;
    let mut n = total.div_ceil(budget).max(1);
    loop {
        // Close a group once it reaches the balanced target (or the next block would
        // overflow the budget).
        let target = total.div_ceil(n);
        let (mut groups, mut count, mut w) = (vec![], 0u32, 0u64);
        for b in blocks {
            if count > 0 && w + width(b) > budget {
                groups.push(count);
                (count, w) = (0, 0);
            }
            count += 1;
            w += width(b);
            if w >= target {
                groups.push(count);
                (count, w) = (0, 0);
            }
        }
        if count > 0 {
            groups.push(count);
        }
        if groups.len() as u64 <= n || groups.len() >= blocks.len() {
            return groups;
        }
        n += 1;
    }
}

/// Per-edge work of one lane of a conv backward, besides its paths: the edge's id and
/// receiver, the `gy` partial stores (plus [`ChannelPath`]'s `y_len` per `v`), the
/// lane's share of the `gy` sum.
const LANE_EDGE_OVERHEAD: u64 = 4;

/// Per-edge cost of path `p` on one lane of a conv backward (an instruction count: the
/// `gz` loads of the components it uses; per `v` the `y` loads, the weight, the `gw`
/// store, 4 per term (`t = coeff·gz`, then `a`, `gx`, `gy` FMAs) and the scaled `gx`/`gy`
/// adds).
pub fn backward_path_cost(p: &ChannelPath) -> u64 {
    let distinct = |f: &dyn Fn(&ChannelTerm) -> u32| {
        let mut v: Vec<u32> = p.terms.iter().map(f).collect();
        v.sort_unstable();
        v.dedup();
        v.len() as u64
    };
    let (ks, js) = (distinct(&|t| t.k), distinct(&|t| t.j));
    ks + p.y_mul as u64 * (js + 2 + 4 * p.terms.len() as u64 + (p.x_len + p.y_len) as u64)
}

impl ChannelWork {
    /// Per-edge cost of one lane doing `paths` (indices into `paths`) of a conv backward
    /// ([`backward_path_cost`] summed, plus the per-lane overhead).
    pub fn backward_lane_cost(&self, paths: impl IntoIterator<Item = usize>) -> u64 {
        LANE_EDGE_OVERHEAD
            + self.y_len as u64
            + paths
                .into_iter()
                .filter_map(|i| self.paths.get(i))
                .map(backward_path_cost)
                .sum::<u64>()
    }

    /// Per-edge cost of each lane of a unit of this conv backward, in lane order: lane
    /// groups ([`ChannelConv::lanes`]) or one lane per channel `u` doing every path with a
    /// row `u`.
    pub fn backward_lane_costs(&self) -> Vec<u64> {
        let groups = self.lane_groups();
        if groups.is_empty() {
            return (0..self.channels)
                .map(|u| {
                    self.backward_lane_cost(
                        (0..self.paths.len()).filter(|&i| u < self.path_mul(&self.paths[i])),
                    )
                })
                .collect();
        }
        groups
            .iter()
            .flat_map(|g| {
                let c = self.backward_lane_cost(g.paths.iter().map(|&i| i as usize));
                std::iter::repeat_n(c, self.lane_group_rows(g) as usize)
            })
            .collect()
    }

    /// `(max, sum)` over a unit's warps ([`LANE_CHUNK`] consecutive lanes, a warp costing
    /// its heaviest lane) of the per-edge cost: the edge's critical path and the issue
    /// slots it takes.
    pub fn backward_warp_costs(&self) -> (u64, u64) {
        let costs = self.backward_lane_costs();
        let warps: Vec<u64> = costs
            .chunks(LANE_CHUNK as usize)
            .map(|w| w.iter().copied().max().unwrap_or(0))
            .collect();
        (warps.iter().copied().max().unwrap_or(0), warps.iter().sum())
    }

    /// The estimated per-edge time of a conv backward's unit: the most of its heaviest
    /// warp, its issue slots over an SM's 4 schedulers, and the heaviest scheduler's share
    /// when warp `i` of the unit goes to scheduler `i mod 4` (the warps of a workgroup of
    /// 4·k warps do).
    pub fn backward_edge_estimate(&self) -> u64 {
        let costs = self.backward_lane_costs();
        let mut sched = [0u64; 4];
        for (i, w) in costs.chunks(LANE_CHUNK as usize).enumerate() {
            sched[i % 4] += w.iter().copied().max().unwrap_or(0);
        }
        let (max, sum) = self.backward_warp_costs();
        max.max(sum.div_ceil(4))
            .max(sched.iter().copied().max().unwrap_or(0))
    }
}

/// The lane groups of a mixed-multiplicity conv backward: blocks in descending
/// multiplicity (irreps order within one), each block's paths in `n_b` slices (longest
/// path first onto the lightest slice; paths ascending within a slice, slices by their
/// first path). Starting from one slice per block, the heaviest block (by lane cost) gets
/// one more slice while it has paths to split and the lanes fit `max_lanes` and `fits`;
/// the grouping with the lowest [`ChannelWork::backward_edge_estimate`] wins (ties: the
/// fewest lanes). `None` with one multiplicity, or where one lane per channel estimates
/// less.
fn backward_lanes(
    c: &ChannelWork,
    max_lanes: u32,
    fits: impl Fn(&ChannelWork) -> bool,
) -> Option<Vec<LaneGroup>> {
    if c.uniform() || c.pass != ChannelPass::Backward {
        return None;
    }
    let nb = c.x_blocks.len();
    let mut order: Vec<usize> = (0..nb).collect();
    order.sort_by_key(|&b| std::cmp::Reverse(c.block_mul(&c.x_blocks[b])));
    let block_paths: Vec<Vec<usize>> = (0..nb)
        .map(|b| {
            (0..c.paths.len())
                .filter(|&i| c.paths[i].x_block as usize == b)
                .collect()
        })
        .collect();
    let slices = |b: usize, n: usize| -> Vec<Vec<usize>> {
        let ps = &block_paths[b];
        let n = n.clamp(1, ps.len().max(1));
        let mut by_cost = ps.clone();
        by_cost.sort_by_key(|&i| (std::cmp::Reverse(backward_path_cost(&c.paths[i])), i));
        let mut sl: Vec<(u64, Vec<usize>)> = vec![(0, vec![]); n];
        for i in by_cost {
            let k = (0..n).min_by_key(|&k| (sl[k].0, k)).unwrap_or(0);
            sl[k].0 += backward_path_cost(&c.paths[i]);
            sl[k].1.push(i);
        }
        let mut out: Vec<Vec<usize>> = sl
            .into_iter()
            .map(|(_, mut v)| {
                v.sort_unstable();
                v
            })
            .filter(|v| !v.is_empty())
            .collect();
        if out.is_empty() {
            out.push(vec![]);
        }
        out.sort_by_key(|v| v.first().copied());
        out
    };
    let build = |n: &[usize]| -> ChannelWork {
        let mut w = c.clone();
        let lanes = order
            .iter()
            .flat_map(|&b| {
                slices(b, n[b]).into_iter().map(move |ps| LaneGroup {
                    x_block: b as u32,
                    paths: ps.into_iter().map(|i| i as u32).collect(),
                })
            })
            .collect();
        if let Some(cv) = &mut w.conv {
            cv.lanes = lanes;
        }
        w.samples_per_group = 1;
        w
    };
    let mut n = vec![1usize; nb];
    let first = build(&n);
    if first.lanes() > max_lanes || !fits(&first) {
        return None;
    }
    let mut best = (first.backward_edge_estimate(), first.lanes(), n.clone());
    loop {
        // The heaviest block: its heaviest slice's lane cost.
        let heavy = (0..nb)
            .filter(|&b| !block_paths[b].is_empty())
            .map(|b| {
                let cost = slices(b, n[b])
                    .into_iter()
                    .map(|ps| c.backward_lane_cost(ps))
                    .max()
                    .unwrap_or(0);
                (cost, b)
            })
            .max_by_key(|&(cost, b)| (cost, std::cmp::Reverse(b)));
        let Some((_, b)) = heavy else { break };
        if n[b] >= block_paths[b].len() {
            break;
        }
        n[b] += 1;
        let w = build(&n);
        if w.lanes() > max_lanes || !fits(&w) {
            break;
        }
        let est = (w.backward_edge_estimate(), w.lanes());
        if est < (best.0, best.1) {
            best = (est.0, est.1, n.clone());
        }
    }
    // (Only where it beats one lane per channel.)
    let mut one = c.clone();
    one.samples_per_group = 1;
    if let Some(cv) = &mut one.conv {
        cv.lanes.clear();
    }
    if best.0 > one.backward_edge_estimate() {
        return None;
    }
    build(&best.2).conv.map(|cv| cv.lanes)
}

/// A convolution channel kernel (see [`ChannelConv`]) of `tp`, if it qualifies on these
/// capabilities: backward: `units` `Segments{SendCsr}` or `Pieces{SendPieces}`; forward:
/// `Segments{RecvCsr}` or `Pieces{RecvPieces}`, output blocks grouped by `forward_regs`
/// ([`CONV_FORWARD_REGS`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_channel_work(
    tp: &TensorProduct,
    pass: ChannelPass,
    dtype: Dtype,
    caps: &Capabilities,
    units: crate::SampleMode,
    node_out: crate::Tensor,
    forward_regs: u32,
    lane_groups: bool,
) -> Option<ChannelWork> {
    if pass == ChannelPass::DoubleBackward {
        return None;
    }
    let mut c = channel_work_for(tp, pass, dtype, caps, CONV_GROUP_INVOCATIONS, true)?;
    let es = match dtype {
        Dtype::F32 => 4,
        Dtype::F64 => 8,
    };
    // Forward: groups within each multiplicity (blocks in descending multiplicity), so a
    // group's invocations are its blocks' rows and none idles.
    let groups = if pass == ChannelPass::Forward {
        let order = c.forward_block_order();
        let mut groups = vec![];
        let mut start = 0;
        while start < order.len() {
            let mul = c.block_mul(&c.z_blocks[order[start]]);
            let end = order[start..]
                .iter()
                .position(|&b| c.block_mul(&c.z_blocks[b]) != mul)
                .map_or(order.len(), |n| start + n);
            let class: Vec<ChannelBlock> = order[start..end]
                .iter()
                .map(|&b| c.z_blocks[b].clone())
                .collect();
            groups.extend(forward_groups(&class, es as u32 / 4, forward_regs));
            start = end;
        }
        groups
    } else {
        vec![]
    };
    c.samples_per_group = (CONV_GROUP_INVOCATIONS / c.channels).max(1);
    let edge_unroll = if pass == ChannelPass::Forward && (!c.uniform() || c.channels == LANE_CHUNK)
    {
        FORWARD_EDGE_UNROLL
    } else {
        1
    };
    c.conv = Some(ChannelConv {
        units,
        node_out,
        groups,
        lanes: vec![],
        warp_units: false,
        edge_unroll,
    });
    let max_wg = caps
        .max_invocations_per_workgroup
        .min(caps.max_workgroup_size_x);
    let fits_memory =
        |w: &ChannelWork| w.reduction_len() as u64 * es + 4 <= caps.workgroup_memory_bytes as u64;
    // Mixed multiplicities (backward): lanes as (block, row, slice of its paths), balanced
    // (see [`backward_lanes`]); the one-lane-per-channel mapping where they do not fit.
    if let Some(lanes) = lane_groups
        .then(|| backward_lanes(&c, max_wg, fits_memory))
        .flatten()
    {
        if let Some(cv) = &mut c.conv {
            cv.lanes = lanes;
        }
        c.samples_per_group = (CONV_GROUP_INVOCATIONS / c.lanes()).max(1);
    }
    // Several groups: fewer units per workgroup while it is over the limit (or over the
    // workgroup memory, lane groups).
    let lane_grouped = !c.lane_groups().is_empty();
    if pass == ChannelPass::Backward
        && !lane_grouped
        && caps.warp_shuffles
        && caps.subgroup_size >= LANE_CHUNK
        && c.channels >= LANE_CHUNK
        && (!c.uniform() || c.channels == LANE_CHUNK)
    {
        if let Some(cv) = &mut c.conv {
            cv.warp_units = true;
        }
        c.samples_per_group = WARP_UNITS_PER_GROUP;
    }
    while c.samples_per_group > 1
        && (c.samples_per_group * c.lanes() > max_wg || (lane_grouped && !fits_memory(&c)))
    {
        c.samples_per_group /= 2;
    }
    let wg = c.samples_per_group * c.lanes();
    let (ins, outs) = c.bindings(tp.weight_numel > 0);
    if (ins.len() + outs.len()) as u32 > caps.max_storage_buffers_per_stage
        || wg > caps.max_invocations_per_workgroup
        || wg > caps.max_workgroup_size_x
        // the `gy` columns and the shared trip count
        || !fits_memory(&c)
    {
        return None;
    }
    Some(c)
}
/// Channel `u` of a backward, paths and `v` in order, terms in order: adds `w·Σ coeff·gz·y`
/// to its `gx` rows (`gxa`, one per x block), `w·Σ coeff·gz·x` to its `gy` partial, and
/// writes its weight gradients `Σ coeff·gz·x·y` (per-sample weights; each exactly once).
/// Shared by the product's and the convolution's interpreters.
#[allow(clippy::too_many_arguments)]
fn channel_backward(
    c: &ChannelWork,
    u: u32,
    x: &[f64],
    y: &[f64],
    w: &[f64],
    gz: &[f64],
    gxa: &mut [Vec<f64>],
    gyp: &mut [f64],
    gw: &mut [f64],
) -> Result<(), String> {
    paths_backward(c, c.paths.iter(), u, x, y, w, gz, gxa, gyp, gw)
}

/// [`channel_backward`] over the paths `paths` only (a lane group's).
#[allow(clippy::too_many_arguments)]
fn paths_backward<'a>(
    c: &ChannelWork,
    paths: impl Iterator<Item = &'a ChannelPath>,
    u: u32,
    x: &[f64],
    y: &[f64],
    w: &[f64],
    gz: &[f64],
    gxa: &mut [Vec<f64>],
    gyp: &mut [f64],
    gw: &mut [f64],
) -> Result<(), String> {
    let get = |v: &[f64], i: u32| -> Result<f64, String> {
        v.get(i as usize)
            .copied()
            .ok_or_else(|| format!("index {i} out of bounds"))
    };
    for p in paths {
        // Rows `u ≥ mul` of a smaller block do not exist: no work (mixed multiplicities).
        if u >= c.path_mul(p) {
            continue;
        }
        let xb = p.x_offset + u * p.x_len;
        let zb = p.z_offset + u * p.z_len;
        for v in 0..p.y_mul {
            let yb = p.y_offset + v * p.y_len;
            let widx = p.w_offset.map(|o| o + u * p.y_mul + v);
            let wv = match widx {
                Some(i) => get(w, i)?,
                None => 1.0,
            };
            let (mut a, mut gxv, mut gyv) = (
                0.0,
                vec![0.0; p.x_len as usize],
                vec![0.0; p.y_len as usize],
            );
            for t in &p.terms {
                let g = t.coeff * get(gz, zb + t.k)?;
                let (xi, yj) = (get(x, xb + t.i)?, get(y, yb + t.j)?);
                a += g * xi * yj;
                gxv[t.i as usize] += g * yj;
                gyv[t.j as usize] += g * xi;
            }
            let acc = gxa
                .get_mut(p.x_block as usize)
                .ok_or("x block out of range")?;
            for (o, g) in acc.iter_mut().zip(&gxv) {
                *o += wv * g;
            }
            for (j, g) in gyv.iter().enumerate() {
                *gyp.get_mut(yb as usize + j)
                    .ok_or("y component out of range")? += wv * g;
            }
            if let (true, Some(i)) = (c.write_gw, widx) {
                let slot = gw.get_mut(i as usize).ok_or("gw index out of range")?;
                if !slot.is_nan() {
                    return Err(format!("GW[{i}] written twice"));
                }
                *slot = a;
            }
        }
    }
    Ok(())
}

/// Runs unit `unit` of a convolution channel backward on the CPU in the GPU's order: per
/// channel `u` ascending, the unit's edges in view order (`edges`: `(edge id, receiver)`),
/// per edge the paths, `v` and terms in order; `gx` accumulates over the edges, each edge's
/// `gy` partials are summed in ascending `u` (warp units: lane `l`'s channels `l, l + 32, …`
/// into one partial, the lanes' partials by [`chunk_sum`]). `node` is the sender; `gx` goes to row `unit`
/// of the kernel's node output. Outputs must be unwritten (NaN) before.
pub(crate) fn interpret_conv_backward(
    plan: &crate::KernelPlan,
    c: &ChannelWork,
    node: u64,
    unit: u64,
    edges: &[(u64, u64)],
    bufs: &mut Bufs,
) -> Result<(), String> {
    use crate::Tensor::*;
    let d = &plan.dims;
    let cv = c.conv.as_ref().ok_or("not a convolution channel kernel")?;
    if !cv.lanes.is_empty() {
        return interpret_conv_backward_lanes(plan, c, node, unit, edges, bufs);
    }
    let weighted = d.weight_numel > 0;
    let x = sample_row(plan, X, node, bufs)?;
    let m = c.channels as usize;
    let mut gx = vec![f64::NAN; d.dim_in1 as usize];
    let mut gxa: Vec<Vec<Vec<f64>>> = (0..m)
        .map(|_| {
            c.x_blocks
                .iter()
                .map(|b| vec![0.0; b.row_len as usize])
                .collect()
        })
        .collect();
    for &(e, recv) in edges {
        let y = sample_row(plan, Y, e, bufs)?;
        let gz = sample_row(plan, GZ, recv, bufs)?;
        let w = if weighted {
            sample_row(plan, W, e, bufs)?
        } else {
            vec![]
        };
        let mut gw = vec![f64::NAN; d.weight_numel as usize];
        let mut gy = vec![0.0; c.y_len as usize];
        if cv.warp_units {
            // Lane l: channels l, l + 32, … into one partial; then the lanes' tree.
            let lanes = LANE_CHUNK as usize;
            let mut parts = vec![vec![0.0; c.y_len as usize]; lanes];
            for (l, part) in parts.iter_mut().enumerate() {
                for u in (l..m).step_by(lanes) {
                    channel_backward(c, u as u32, &x, &y, &w, &gz, &mut gxa[u], part, &mut gw)?;
                }
            }
            for (j, o) in gy.iter_mut().enumerate() {
                let vals: Vec<f64> = parts.iter().map(|p| p[j]).collect();
                *o = chunk_sum(&vals);
            }
        } else {
            let mut gy_parts = vec![vec![0.0; c.y_len as usize]; m];
            for (u, gyp) in gy_parts.iter_mut().enumerate() {
                channel_backward(c, u as u32, &x, &y, &w, &gz, &mut gxa[u], gyp, &mut gw)?;
            }
            for part in &gy_parts {
                for (o, v) in gy.iter_mut().zip(part) {
                    *o += v;
                }
            }
        }
        put_row(plan, GY, e, &gy, bufs)?;
        if c.write_gw {
            put_row(plan, GW, e, &gw, bufs)?;
        }
    }
    for (u, blocks) in gxa.into_iter().enumerate() {
        for (b, acc) in c.x_blocks.iter().zip(blocks) {
            if u as u32 >= c.block_mul(b) {
                continue;
            }
            for (i, v) in acc.into_iter().enumerate() {
                let slot = gx
                    .get_mut((b.offset + u as u32 * b.row_len) as usize + i)
                    .ok_or("gx index out of range")?;
                if !slot.is_nan() {
                    return Err("GX row written twice".into());
                }
                *slot = v;
            }
        }
    }
    put_row(plan, cv.node_out, unit, &gx, bufs)
}

/// [`interpret_conv_backward`] of a lane-grouped backward ([`ChannelConv::lanes`]): lane
/// `(group, r)` does its group's paths on row `r` of its `x` block over the unit's edges in
/// view order; per edge the lanes' `gy` partials are summed in chunks of [`LANE_CHUNK`]
/// lanes ([`chunk_sum`]), the chunk sums in ascending order from `0`; after the edges
/// each row's slices' `gx` partials are added to slice 0's in slice order.
fn interpret_conv_backward_lanes(
    plan: &crate::KernelPlan,
    c: &ChannelWork,
    node: u64,
    unit: u64,
    edges: &[(u64, u64)],
    bufs: &mut Bufs,
) -> Result<(), String> {
    use crate::Tensor::*;
    let d = &plan.dims;
    let cv = c.conv.as_ref().ok_or("not a convolution channel kernel")?;
    let weighted = d.weight_numel > 0;
    let x = sample_row(plan, X, node, bufs)?;
    // Per lane: (group, row) and its gx partial (one row of its block).
    let mut lanes: Vec<(usize, u32)> = vec![];
    for (gi, g) in cv.lanes.iter().enumerate() {
        for r in 0..c.lane_group_rows(g) {
            lanes.push((gi, r));
        }
    }
    let blank = || -> Vec<Vec<f64>> {
        c.x_blocks
            .iter()
            .map(|b| vec![0.0; b.row_len as usize])
            .collect()
    };
    let mut gxa: Vec<Vec<Vec<f64>>> = lanes.iter().map(|_| blank()).collect();
    for &(e, recv) in edges {
        let y = sample_row(plan, Y, e, bufs)?;
        let gz = sample_row(plan, GZ, recv, bufs)?;
        let w = if weighted {
            sample_row(plan, W, e, bufs)?
        } else {
            vec![]
        };
        let mut gw = vec![f64::NAN; d.weight_numel as usize];
        let mut parts = vec![vec![0.0; c.y_len as usize]; lanes.len()];
        for (l, &(gi, r)) in lanes.iter().enumerate() {
            let g = &cv.lanes[gi];
            let ps = g.paths.iter().map(|&i| {
                c.paths
                    .get(i as usize)
                    .filter(|p| p.x_block == g.x_block)
                    .ok_or_else(|| format!("lane group path {i} is not of block {}", g.x_block))
            });
            let ps: Vec<&ChannelPath> = ps.collect::<Result<_, _>>()?;
            paths_backward(
                c,
                ps.into_iter(),
                r,
                &x,
                &y,
                &w,
                &gz,
                &mut gxa[l],
                &mut parts[l],
                &mut gw,
            )?;
        }
        let mut gy = vec![0.0; c.y_len as usize];
        for (j, o) in gy.iter_mut().enumerate() {
            for chunk in parts.chunks(LANE_CHUNK as usize) {
                let vals: Vec<f64> = chunk.iter().map(|p| p[j]).collect();
                *o += chunk_sum(&vals);
            }
        }
        put_row(plan, GY, e, &gy, bufs)?;
        if c.write_gw {
            put_row(plan, GW, e, &gw, bufs)?;
        }
    }
    // Each (block, row): slice 0's partial plus the later slices' in order.
    let (layout, _) = c.lane_layout();
    let mut gx = vec![f64::NAN; d.dim_in1 as usize];
    for (bi, blk) in c.x_blocks.iter().enumerate() {
        let groups: Vec<usize> = (0..cv.lanes.len())
            .filter(|&gi| cv.lanes[gi].x_block as usize == bi)
            .collect();
        if groups.is_empty() {
            return Err(format!("x block {bi} has no lane group"));
        }
        for r in 0..c.block_mul(blk) {
            let mut acc = vec![0.0; blk.row_len as usize];
            for (n, &gi) in groups.iter().enumerate() {
                let l = (layout[gi].0 + r) as usize;
                let part = &gxa[l][bi];
                if n == 0 {
                    acc.copy_from_slice(part);
                } else {
                    for (a, v) in acc.iter_mut().zip(part) {
                        *a += v;
                    }
                }
            }
            for (i, v) in acc.into_iter().enumerate() {
                let slot = gx
                    .get_mut((blk.offset + r * blk.row_len) as usize + i)
                    .ok_or("gx index out of range")?;
                if !slot.is_nan() {
                    return Err("GX row written twice".into());
                }
                *slot = v;
            }
        }
    }
    put_row(plan, cv.node_out, unit, &gx, bufs)
}

/// Runs unit `unit` of a convolution channel forward on the CPU in the GPU's order: per
/// group and channel `u`, the unit's edges in view order (`edges`: `(edge id, sender)`), per
/// edge the group's blocks, their paths, `v` and terms in order, each path's `w·zv` added into
/// the block's running row; the rows go to row `unit` of the kernel's node output (every
/// element written once; it must be unwritten (NaN) before).
pub(crate) fn interpret_conv_forward(
    plan: &crate::KernelPlan,
    c: &ChannelWork,
    unit: u64,
    edges: &[(u64, u64)],
    bufs: &mut Bufs,
) -> Result<(), String> {
    use crate::Tensor::*;
    let d = &plan.dims;
    let cv = c.conv.as_ref().ok_or("not a convolution channel kernel")?;
    if c.z_blocks.iter().any(|b| c.block_mul(b) > c.channels) {
        return Err("z block with more rows than channels".into());
    }
    let weighted = d.weight_numel > 0;
    let get = |v: &[f64], i: u32| -> Result<f64, String> {
        v.get(i as usize)
            .copied()
            .ok_or_else(|| format!("index {i} out of bounds"))
    };
    let mut z = vec![f64::NAN; d.dim_out as usize];
    for grp in c.conv_groups() {
        for u in 0..c.group_lanes(&grp) {
            // Mixed multiplicities: channel `u` works on (and stores) only the blocks with a
            // row `u`.
            let has_row = |b: usize| u < c.block_mul(&c.z_blocks[b]);
            let mut acc: Vec<Vec<f64>> = grp
                .iter()
                .map(|&b| vec![0.0; c.z_blocks[b].row_len as usize])
                .collect();
            for &(e, snd) in edges {
                let x = sample_row(plan, X, snd, bufs)?;
                let y = sample_row(plan, Y, e, bufs)?;
                let w = if weighted {
                    sample_row(plan, W, e, bufs)?
                } else {
                    vec![]
                };
                for (&b, za) in grp.iter().zip(acc.iter_mut()) {
                    if !has_row(b) {
                        continue;
                    }
                    for p in c.paths.iter().filter(|p| p.z_block as usize == b) {
                        if u >= c.path_mul(p) {
                            return Err(format!("path {}: x block has no row {u}", p.path));
                        }
                        let xb = p.x_offset + u * p.x_len;
                        for v in 0..p.y_mul {
                            let yb = p.y_offset + v * p.y_len;
                            let mut zv = vec![0.0; p.z_len as usize];
                            for t in &p.terms {
                                zv[t.k as usize] +=
                                    t.coeff * get(&x, xb + t.i)? * get(&y, yb + t.j)?;
                            }
                            let wv = match p.w_offset {
                                Some(o) => Some(get(&w, o + u * p.y_mul + v)?),
                                None => None,
                            };
                            for (a, v) in za.iter_mut().zip(&zv) {
                                *a += wv.map_or(*v, |wv| wv * v);
                            }
                        }
                    }
                }
            }
            for (blk, za) in grp.iter().map(|&b| &c.z_blocks[b]).zip(acc) {
                if u >= c.block_mul(blk) {
                    continue;
                }
                for (k, v) in za.into_iter().enumerate() {
                    let idx = (blk.offset + u * blk.row_len) as usize + k;
                    let slot = z.get_mut(idx).ok_or("z index out of range")?;
                    if !slot.is_nan() {
                        return Err(format!("Z[{idx}] written twice"));
                    }
                    *slot = v;
                }
            }
        }
    }
    put_row(plan, cv.node_out, unit, &z, bufs)
}

/// Runs sample `s` (global index) of a channel kernel on the CPU in the GPU's order:
/// channels in ascending `u` for the `gy` sum; per channel, paths and `v` in order, terms in
/// order. Outputs must be unwritten (NaN) before.
pub(crate) fn interpret_sample(
    plan: &crate::KernelPlan,
    c: &ChannelWork,
    s: u64,
    bufs: &mut std::collections::BTreeMap<crate::Tensor, Vec<f64>>,
) -> Result<(), String> {
    if c.pass != ChannelPass::Backward && !c.uniform() {
        return Err("blocks of different multiplicities outside a backward".into());
    }
    match c.pass {
        ChannelPass::Backward => interpret_backward(plan, c, s, bufs),
        ChannelPass::Forward => interpret_forward(plan, c, s, bufs),
        ChannelPass::DoubleBackward => interpret_double_backward(plan, c, s, bufs),
    }
}

type Bufs = std::collections::BTreeMap<crate::Tensor, Vec<f64>>;

/// Sample `s`'s row of a per-sample tensor (or the whole tensor when not per-sample).
pub(crate) fn sample_row(
    plan: &crate::KernelPlan,
    t: crate::Tensor,
    s: u64,
    b: &Bufs,
) -> Result<Vec<f64>, String> {
    let v = b.get(&t).ok_or_else(|| format!("{t:?} is not bound"))?;
    let len = plan.dims.per_sample_len(t) as usize;
    if len == 0 {
        return Ok(v.clone());
    }
    let lo = s as usize * len;
    v.get(lo..lo + len)
        .map(|r| r.to_vec())
        .ok_or_else(|| format!("{t:?} sample {s} out of bounds"))
}

/// Writes sample `s`'s row of an output that must still be unwritten (NaN).
pub(crate) fn put_row(
    plan: &crate::KernelPlan,
    t: crate::Tensor,
    s: u64,
    vals: &[f64],
    b: &mut Bufs,
) -> Result<(), String> {
    let len = plan.dims.per_sample_len(t) as usize;
    let buf = b.get_mut(&t).ok_or_else(|| format!("{t:?} is not bound"))?;
    let lo = s as usize * len;
    let dst = buf
        .get_mut(lo..lo + len)
        .ok_or_else(|| format!("{t:?} sample {s} out of bounds"))?;
    if dst.iter().any(|v| !v.is_nan()) || vals.len() != len || vals.iter().any(|v| v.is_nan()) {
        return Err(format!("{t:?} sample {s} written twice or not fully"));
    }
    dst.copy_from_slice(vals);
    Ok(())
}

/// Double backward of sample `s`: per channel, output blocks in order and their paths in
/// order (the order the printers use); `dy` partials summed in ascending channel order.
fn interpret_double_backward(
    plan: &crate::KernelPlan,
    c: &ChannelWork,
    s: u64,
    bufs: &mut Bufs,
) -> Result<(), String> {
    use crate::Tensor::*;
    let d = &plan.dims;
    let weighted = d.weight_numel > 0;
    let (x, y, gz) = (
        sample_row(plan, X, s, bufs)?,
        sample_row(plan, Y, s, bufs)?,
        sample_row(plan, GZ, s, bufs)?,
    );
    let (hx, hy) = (
        sample_row(plan, HX, s, bufs)?,
        sample_row(plan, HY, s, bufs)?,
    );
    let (w, hw) = if weighted {
        (
            sample_row(plan, W, s, bufs)?,
            sample_row(plan, HW, s, bufs)?,
        )
    } else {
        (vec![], vec![])
    };
    let get = |v: &[f64], i: u32| -> Result<f64, String> {
        v.get(i as usize)
            .copied()
            .ok_or_else(|| format!("index {i} out of bounds"))
    };
    let mut dx = vec![f64::NAN; d.dim_in1 as usize];
    let mut dgz = vec![f64::NAN; d.dim_out as usize];
    let mut dw = vec![f64::NAN; d.weight_numel as usize];
    let mut dy_parts = vec![vec![0.0; c.y_len as usize]; c.channels as usize];
    for u in 0..c.channels {
        let mut dxa: Vec<Vec<f64>> = c
            .x_blocks
            .iter()
            .map(|b| vec![0.0; b.row_len as usize])
            .collect();
        let dyp = &mut dy_parts[u as usize];
        for (b, blk) in c.z_blocks.iter().enumerate() {
            let mut za = vec![0.0; blk.row_len as usize];
            for p in c.paths.iter().filter(|p| p.z_block as usize == b) {
                let xb = p.x_offset + u * p.x_len;
                let zb = p.z_offset + u * p.z_len;
                for v in 0..p.y_mul {
                    let yb = p.y_offset + v * p.y_len;
                    let widx = p.w_offset.map(|o| o + u * p.y_mul + v);
                    let (wv, hwv) = match widx {
                        Some(i) => (get(&w, i)?, get(&hw, i)?),
                        None => (1.0, 0.0),
                    };
                    let (lx, ly, lz) = (p.x_len as usize, p.y_len as usize, p.z_len as usize);
                    let (mut zv, mut zh) = (vec![0.0; lz], vec![0.0; lz]);
                    let (mut dxv, mut dxh) = (vec![0.0; lx], vec![0.0; lx]);
                    let (mut dyv, mut dyh) = (vec![0.0; ly], vec![0.0; ly]);
                    let mut a = 0.0;
                    for t in &p.terms {
                        let (xi, hxi) = (get(&x, xb + t.i)?, get(&hx, xb + t.i)?);
                        let (yj, hyj) = (get(&y, yb + t.j)?, get(&hy, yb + t.j)?);
                        let g = t.coeff * get(&gz, zb + t.k)?;
                        zv[t.k as usize] += t.coeff * (hxi * yj + xi * hyj);
                        zh[t.k as usize] += t.coeff * (xi * yj);
                        dxv[t.i as usize] += g * hyj;
                        dxh[t.i as usize] += g * yj;
                        dyv[t.j as usize] += g * hxi;
                        dyh[t.j as usize] += g * xi;
                        a += g * (hxi * yj + xi * hyj);
                    }
                    for k in 0..lz {
                        za[k] += wv * zv[k] + hwv * zh[k];
                    }
                    let acc = &mut dxa[p.x_block as usize];
                    for i in 0..lx {
                        acc[i] += wv * dxv[i] + hwv * dxh[i];
                    }
                    for j in 0..ly {
                        dyp[yb as usize + j] += wv * dyv[j] + hwv * dyh[j];
                    }
                    if let (true, Some(i)) = (c.write_gw, widx) {
                        let slot = dw.get_mut(i as usize).ok_or("dw index out of range")?;
                        if !slot.is_nan() {
                            return Err(format!("DW[{i}] written twice"));
                        }
                        *slot = a;
                    }
                }
            }
            for (k, v) in za.into_iter().enumerate() {
                dgz[(blk.offset + u * blk.row_len) as usize + k] = v;
            }
        }
        for (b, acc) in c.x_blocks.iter().zip(dxa) {
            for (i, v) in acc.into_iter().enumerate() {
                dx[(b.offset + u * b.row_len) as usize + i] = v;
            }
        }
    }
    let mut dy = vec![0.0; c.y_len as usize];
    for part in &dy_parts {
        for (o, v) in dy.iter_mut().zip(part) {
            *o += v;
        }
    }
    put_row(plan, DX, s, &dx, bufs)?;
    put_row(plan, DY, s, &dy, bufs)?;
    if c.write_gw {
        put_row(plan, DW, s, &dw, bufs)?;
    }
    put_row(plan, DGZ, s, &dgz, bufs)?;
    Ok(())
}

/// Forward of sample `s`: per channel, output blocks in order, the block's paths in order.
fn interpret_forward(
    plan: &crate::KernelPlan,
    c: &ChannelWork,
    s: u64,
    bufs: &mut std::collections::BTreeMap<crate::Tensor, Vec<f64>>,
) -> Result<(), String> {
    use crate::Tensor::*;
    let d = &plan.dims;
    let slice = |t: crate::Tensor, len: usize, b: &std::collections::BTreeMap<_, Vec<f64>>| {
        let v: &Vec<f64> = b.get(&t).ok_or_else(|| format!("{t:?} is not bound"))?;
        let lo = s as usize * len;
        v.get(lo..lo + len)
            .map(|r| r.to_vec())
            .ok_or_else(|| format!("{t:?} sample {s} out of bounds"))
    };
    let x = slice(X, d.dim_in1 as usize, bufs)?;
    let y = slice(Y, d.dim_in2 as usize, bufs)?;
    let w: Vec<f64> = match (d.weight_numel > 0, d.shared_weights) {
        (false, _) => vec![],
        (true, false) => slice(W, d.weight_numel as usize, bufs)?,
        (true, true) => bufs.get(&W).ok_or("W is not bound")?.clone(),
    };
    let get = |v: &[f64], i: u32| -> Result<f64, String> {
        v.get(i as usize)
            .copied()
            .ok_or_else(|| format!("index {i} out of bounds"))
    };
    let mut z = vec![f64::NAN; d.dim_out as usize];
    for u in 0..c.channels {
        for (b, blk) in c.z_blocks.iter().enumerate() {
            let mut acc = vec![0.0; blk.row_len as usize];
            for p in c.paths.iter().filter(|p| p.z_block as usize == b) {
                let xb = p.x_offset + u * p.x_len;
                for v in 0..p.y_mul {
                    let yb = p.y_offset + v * p.y_len;
                    let wv = match p.w_offset {
                        Some(o) => get(&w, o + u * p.y_mul + v)?,
                        None => 1.0,
                    };
                    let mut zv = vec![0.0; p.z_len as usize];
                    for t in &p.terms {
                        zv[t.k as usize] += t.coeff * get(&x, xb + t.i)? * get(&y, yb + t.j)?;
                    }
                    for (a, v) in acc.iter_mut().zip(&zv) {
                        *a += wv * v;
                    }
                }
            }
            for (k, v) in acc.into_iter().enumerate() {
                let idx = (blk.offset + u * blk.row_len) as usize + k;
                let slot = z.get_mut(idx).ok_or("z index out of range")?;
                if !slot.is_nan() {
                    return Err(format!("Z[{idx}] written twice"));
                }
                *slot = v;
            }
        }
    }
    let len = d.dim_out as usize;
    let b = bufs.get_mut(&Z).ok_or("Z is not bound")?;
    let lo = s as usize * len;
    let dst = b
        .get_mut(lo..lo + len)
        .ok_or_else(|| format!("Z sample {s} out of bounds"))?;
    if dst.iter().any(|v| !v.is_nan()) {
        return Err(format!("Z sample {s} written twice"));
    }
    dst.copy_from_slice(&z);
    Ok(())
}

fn interpret_backward(
    plan: &crate::KernelPlan,
    c: &ChannelWork,
    s: u64,
    bufs: &mut std::collections::BTreeMap<crate::Tensor, Vec<f64>>,
) -> Result<(), String> {
    use crate::Tensor::*;
    let d = &plan.dims;
    let row = |t: crate::Tensor, bufs: &std::collections::BTreeMap<crate::Tensor, Vec<f64>>| {
        let len = d.per_sample_len(t) as usize;
        let b = bufs.get(&t).ok_or_else(|| format!("{t:?} is not bound"))?;
        let lo = s as usize * len;
        b.get(lo..lo + len)
            .map(|r| r.to_vec())
            .ok_or_else(|| format!("{t:?} sample {s} out of bounds"))
    };
    let x = row(X, bufs)?;
    let y = row(Y, bufs)?;
    let gz = row(GZ, bufs)?;
    let weighted = d.weight_numel > 0;
    let w: Vec<f64> = match (weighted, d.shared_weights) {
        (false, _) => vec![],
        (true, false) => row(W, bufs)?,
        (true, true) => bufs.get(&W).ok_or("W is not bound")?.clone(),
    };
    let m = c.channels as usize;
    let mut gx = vec![f64::NAN; d.dim_in1 as usize];
    let mut gw = vec![f64::NAN; d.weight_numel as usize];
    let mut gy_parts = vec![vec![0.0; c.y_len as usize]; m];
    for (u, gyp) in gy_parts.iter_mut().enumerate() {
        let u = u as u32;
        let mut gxa: Vec<Vec<f64>> = c
            .x_blocks
            .iter()
            .map(|b| vec![0.0; b.row_len as usize])
            .collect();
        channel_backward(c, u, &x, &y, &w, &gz, &mut gxa, gyp, &mut gw)?;
        for (b, acc) in c.x_blocks.iter().zip(gxa) {
            if u >= c.block_mul(b) {
                continue;
            }
            for (i, v) in acc.into_iter().enumerate() {
                let idx = (b.offset + u * b.row_len) as usize + i;
                let slot = gx.get_mut(idx).ok_or("gx index out of range")?;
                if !slot.is_nan() {
                    return Err(format!("GX[{idx}] written twice"));
                }
                *slot = v;
            }
        }
    }
    let mut gy = vec![0.0; c.y_len as usize];
    for part in &gy_parts {
        for (o, v) in gy.iter_mut().zip(part) {
            *o += v;
        }
    }
    let mut put = |t: crate::Tensor, vals: Vec<f64>| -> Result<(), String> {
        let len = d.per_sample_len(t) as usize;
        let b = bufs
            .get_mut(&t)
            .ok_or_else(|| format!("{t:?} is not bound"))?;
        let lo = s as usize * len;
        let dst = b
            .get_mut(lo..lo + len)
            .ok_or_else(|| format!("{t:?} sample {s} out of bounds"))?;
        if dst.iter().any(|v| !v.is_nan()) {
            return Err(format!("{t:?} sample {s} written twice"));
        }
        dst.copy_from_slice(&vals);
        Ok(())
    };
    put(GX, gx)?;
    put(GY, gy)?;
    if c.write_gw {
        put(GW, gw)?;
    }
    Ok(())
}
