//! Layout of the run-time parameter block every emitted kernel reads.
//!
//! Words: `[num_samples, chunk_base, num_chunks, 0, base_0 .. base_{n-1}, 0-padding to 4]`.
//! `base_i` is the element offset added to every index into storage binding `i`: buffers are
//! bound at offsets aligned to the device's storage-offset alignment, so a dispatch that starts
//! at an arbitrary sample passes the remainder here.

/// Where each run-time parameter sits in the uniform block (all `u32` words).
/// Convolution kernels (`conv`) have an 8-word header: the TP's 4 words (`num_samples` counts
/// the dispatch's units: nodes, edges or pieces; word 3 is `weight_fold`), then `unit_base`
/// (global id of the first unit), `num_nodes`, `num_edges`, `num_pieces` (of the table the
/// kernel binds, else 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamsLayout {
    pub binding: u32,
    pub num_bases: u32,
    pub conv: bool,
}

/// Run-time graph values of one convolution dispatch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvParams {
    pub unit_base: u32,
    pub num_nodes: u32,
    pub num_edges: u32,
    pub num_pieces: u32,
    /// Edges `≥ weight_fold` read weight row `e − weight_fold` (0: none; see
    /// `equikern_plan::conv::GraphSize::weight_fold`). Word 3 of the conv header.
    pub weight_fold: u32,
}

/// Run-time values for one dispatch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchParams {
    /// Samples this dispatch covers (Rows kernels).
    pub num_samples: u32,
    /// Global index of the first chunk of this dispatch (Chunk kernels).
    pub chunk_base: u32,
    /// Chunks to reduce (ReduceChunks kernels).
    pub num_chunks: u32,
}

impl ParamsLayout {
    pub const HEADER_WORDS: u32 = 4;

    /// Header words: 4, or 8 for convolution kernels.
    pub fn header_words(&self) -> u32 {
        if self.conv {
            8
        } else {
            Self::HEADER_WORDS
        }
    }

    /// Words in the uniform block (a multiple of 4, so 16-byte sized).
    pub fn words(&self) -> u32 {
        (self.header_words() + self.num_bases).div_ceil(4) * 4
    }

    pub fn bytes(&self) -> u64 {
        self.words() as u64 * 4
    }

    /// The uniform block's contents; `bases` has one element offset per storage binding.
    pub fn encode(&self, p: DispatchParams, bases: &[u32]) -> Vec<u32> {
        let mut v = vec![0u32; self.words() as usize];
        v[0] = p.num_samples;
        v[1] = p.chunk_base;
        v[2] = p.num_chunks;
        for (i, b) in bases.iter().take(self.num_bases as usize).enumerate() {
            v[self.header_words() as usize + i] = *b;
        }
        v
    }

    /// The uniform block of a convolution kernel's dispatch.
    pub fn encode_conv(&self, p: DispatchParams, c: ConvParams, bases: &[u32]) -> Vec<u32> {
        let mut v = self.encode(p, bases);
        if self.conv {
            v[3] = c.weight_fold;
            v[4] = c.unit_base;
            v[5] = c.num_nodes;
            v[6] = c.num_edges;
            v[7] = c.num_pieces;
        }
        v
    }
}
