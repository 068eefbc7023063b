//! Building a convolution's CSR tables on the GPU from `u32` receiver/sender buffers already
//! on the device, **identical to [`equikern_core::conv::Csr::packed`]** (within a node,
//! ascending edge id). Two algorithms, one result:
//!
//! * **counting sort** (the usual case): per-node counts (`atomicAdd`; an index ≥ nodes sets
//!   `err[array] = min(position)` instead), an exclusive scan of the counts in chunks of
//!   [`SCAN_CHUNK`] nodes (chunk sums, one scan of the sums, chunk scans), each edge into its
//!   node's range through an atomic cursor (any order), then each range insertion-sorted by
//!   edge id, which is the stable order. ~16 launches per graph, one read back (errors and the
//!   largest degree). The range sort is one thread per node, so it is only used while the
//!   largest degree is ≤ [`SEGMENT_SORT_MAX`] (neighbour lists; hubs would serialise);
//! * **bitonic sort** of `(key, edge id)` pairs (padded to a power of two; ~`log²(edges)/2`
//!   launches; the wgpu runtime's `build_csr_tables` algorithm): graphs with a larger degree,
//!   e.g. power-law hubs; then `offsets[n]` = first sorted position with key ≥ n (binary
//!   search) and the packed view `[offsets | edge ids in view order | other end of each]`.
//!
//! Every kernel is a grid-stride loop whose iterations are independent within a launch (the
//! bitonic stage's pairs are disjoint; atomics commute), so the source also runs as plain C++
//! one thread at a time (`tests/csr_cpu_emulation.rs`).

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg};
use equikern_core::conv::ConvError;

use crate::device::CudaDevice;
use crate::{compile, CudaError, Result};

/// The kernels (CUDA C++; also compiled as host C++ by the emulation test).
pub const CSR_SOURCE: &str = r#"
extern "C" __global__ void ek_csr_init(const unsigned* __restrict__ key_in,
    const unsigned* __restrict__ other_in, unsigned* keys, unsigned* ids, unsigned* err,
    unsigned n, unsigned nodes, unsigned edges, unsigned which) {
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    if (i < edges) {
      unsigned v = key_in[i];
      keys[i] = v;
      ids[i] = (unsigned)i;
      if (v >= nodes) atomicMin(&err[which], (unsigned)i);
      if (other_in[i] >= nodes) atomicMin(&err[1u - which], (unsigned)i);
    } else {
      keys[i] = 0xffffffffu;
      ids[i] = 0xffffffffu;
    }
  }
}

extern "C" __global__ void ek_csr_bitonic(unsigned* keys, unsigned* ids, unsigned n,
    unsigned j, unsigned k) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned i = (unsigned)t;
    unsigned m = i ^ j;
    if (m <= i) continue;
    unsigned ka = keys[i], kb = keys[m], ia = ids[i], ib = ids[m];
    bool a_gt_b = ka > kb || (ka == kb && ia > ib);
    bool up = (i & k) == 0u;
    if (a_gt_b == up) {
      keys[i] = kb; keys[m] = ka;
      ids[i] = ib; ids[m] = ia;
    }
  }
}

extern "C" __global__ void ek_csr_offsets(const unsigned* __restrict__ keys,
    unsigned* packed, unsigned nodes, unsigned edges) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       t <= nodes; t += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned n = (unsigned)t, lo = 0u, hi = edges;
    while (lo < hi) {
      unsigned mid = lo + (hi - lo) / 2u;
      if (keys[mid] < n) lo = mid + 1u; else hi = mid;
    }
    packed[n] = lo;
  }
}

extern "C" __global__ void ek_csr_finish(const unsigned* __restrict__ ids,
    const unsigned* __restrict__ other_in, unsigned* packed, unsigned nodes, unsigned edges) {
  for (unsigned long long k = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       k < edges; k += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned e = ids[k];
    packed[(unsigned long long)nodes + 1ull + k] = e;
    packed[(unsigned long long)nodes + 1ull + edges + k] = other_in[e];
  }
}

// ---- counting sort
extern "C" __global__ void ek_csr_count(const unsigned* __restrict__ key_in, unsigned* counts,
    unsigned* err, unsigned nodes, unsigned edges, unsigned which) {
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       i < edges; i += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned v = key_in[i];
    if (v < nodes) atomicAdd(&counts[v], 1u);
    else atomicMin(&err[which], (unsigned)i);
  }
}

#define EK_CSR_CHUNK 256u

// Per chunk of EK_CSR_CHUNK nodes: the sum of its counts, and the largest count (maxdeg).
extern "C" __global__ void ek_csr_chunk_sums(const unsigned* __restrict__ counts,
    unsigned* sums, unsigned* maxdeg, unsigned nodes) {
  unsigned chunks = (nodes + EK_CSR_CHUNK - 1u) / EK_CSR_CHUNK;
  for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       c < chunks; c += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned lo = (unsigned)c * EK_CSR_CHUNK;
    unsigned hi = nodes - lo < EK_CSR_CHUNK ? nodes : lo + EK_CSR_CHUNK;
    unsigned s = 0u, m = 0u;
    for (unsigned k = lo; k < hi; ++k) {
      unsigned v = counts[k];
      s += v;
      m = v > m ? v : m;
    }
    sums[c] = s;
    atomicMax(maxdeg, m);
  }
}

// Exclusive scan of the chunk sums, by one thread (nodes / EK_CSR_CHUNK values).
extern "C" __global__ void ek_csr_scan_sums(unsigned* sums, unsigned chunks) {
  if (blockIdx.x != 0u || threadIdx.x != 0u) return;
  unsigned acc = 0u;
  for (unsigned c = 0; c < chunks; ++c) {
    unsigned v = sums[c];
    sums[c] = acc;
    acc += v;
  }
}

// offsets[k] = the chunk's start + the counts before k in it; offsets[nodes] = edges.
extern "C" __global__ void ek_csr_chunk_scan(const unsigned* __restrict__ counts,
    const unsigned* __restrict__ sums, unsigned* packed, unsigned nodes, unsigned edges) {
  unsigned chunks = (nodes + EK_CSR_CHUNK - 1u) / EK_CSR_CHUNK;
  for (unsigned long long c = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       c <= chunks; c += (unsigned long long)gridDim.x * blockDim.x) {
    if (c == chunks) {
      packed[nodes] = edges;
      continue;
    }
    unsigned lo = (unsigned)c * EK_CSR_CHUNK;
    unsigned hi = nodes - lo < EK_CSR_CHUNK ? nodes : lo + EK_CSR_CHUNK;
    unsigned acc = sums[c];
    for (unsigned k = lo; k < hi; ++k) {
      packed[k] = acc;
      acc += counts[k];
    }
  }
}

// Each edge into its node's range, in whatever order the cursor's atomics give.
extern "C" __global__ void ek_csr_scatter(const unsigned* __restrict__ key_in,
    unsigned* cursor, unsigned* packed, unsigned nodes, unsigned edges) {
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       i < edges; i += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned v = key_in[i];
    unsigned pos = packed[v] + atomicAdd(&cursor[v], 1u);
    packed[(unsigned long long)nodes + 1ull + pos] = (unsigned)i;
  }
}

// Each node's range sorted by edge id (the stable order, whatever the scatter's), then the
// other end of each of its edges.
extern "C" __global__ void ek_csr_segment_sort(const unsigned* __restrict__ other_in,
    unsigned* packed, unsigned nodes, unsigned edges) {
  unsigned* ids = packed + nodes + 1u;
  unsigned* oth = ids + edges;
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       t < nodes; t += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned lo = packed[t], hi = packed[t + 1ull];
    for (unsigned a = lo + 1u; a < hi; ++a) {
      unsigned v = ids[a], b = a;
      while (b > lo && ids[b - 1u] > v) {
        ids[b] = ids[b - 1u];
        --b;
      }
      ids[b] = v;
    }
    for (unsigned a = lo; a < hi; ++a) oth[a] = other_in[ids[a]];
  }
}
"#;

/// Both CSR views built on the device (`[offsets | edge ids | other end]`, `u32`).
pub struct CudaCsrTables {
    pub nodes: u32,
    pub edges: u32,
    /// Grouped by receiver (`RecvCsr`).
    pub recv: CudaSlice<u32>,
    /// Grouped by sender (`SendCsr`, the transpose).
    pub send: CudaSlice<u32>,
}

/// Nodes per chunk of the counting sort's scan (`EK_CSR_CHUNK` in [`CSR_SOURCE`]).
pub const SCAN_CHUNK: u32 = 256;

/// The largest degree the counting sort's per-node range sort takes (one thread per node,
/// insertion sort: `O(degree²)`); a larger one sorts the graph with the bitonic network.
pub const SEGMENT_SORT_MAX: u32 = 256;

/// The builder's kernels, in [`CSR_SOURCE`] order of use.
struct Kernels {
    init: CudaFunction,
    bitonic: CudaFunction,
    offsets: CudaFunction,
    finish: CudaFunction,
    count: CudaFunction,
    chunk_sums: CudaFunction,
    scan_sums: CudaFunction,
    chunk_scan: CudaFunction,
    scatter: CudaFunction,
    segment_sort: CudaFunction,
}

fn functions(dev: &CudaDevice) -> Result<Kernels> {
    let key = format!("equikern-csr-v2-{}", dev.arch());
    let cached = dev
        .inner
        .modules
        .lock()
        .ok()
        .and_then(|m| m.get(&key).cloned());
    let module = match cached {
        Some(m) => m,
        None => {
            let bin = compile::nvrtc_cubin(CSR_SOURCE, &dev.arch())?;
            let m = compile::load_cubin(dev, bin)?;
            if let Ok(mut map) = dev.inner.modules.lock() {
                map.insert(key, m.clone());
            }
            m
        }
    };
    let f = |n: &str| module.load_function(n).map_err(CudaError::from);
    Ok(Kernels {
        init: f("ek_csr_init")?,
        bitonic: f("ek_csr_bitonic")?,
        offsets: f("ek_csr_offsets")?,
        finish: f("ek_csr_finish")?,
        count: f("ek_csr_count")?,
        chunk_sums: f("ek_csr_chunk_sums")?,
        scan_sums: f("ek_csr_scan_sums")?,
        chunk_scan: f("ek_csr_chunk_scan")?,
        scatter: f("ek_csr_scatter")?,
        segment_sort: f("ek_csr_segment_sort")?,
    })
}

/// The counting sort's scratch (grow-only): per-node counts / cursors, chunk sums, and
/// `[err receiver, err sender, largest degree receiver, sender]`.
struct CsrScratch {
    counts: CudaSlice<u32>,
    sums: CudaSlice<u32>,
    stat: CudaSlice<u32>,
}

impl CsrScratch {
    fn new(dev: &CudaDevice) -> Result<Self> {
        let s = dev.stream();
        Ok(CsrScratch {
            counts: s.alloc_zeros::<u32>(1)?,
            sums: s.alloc_zeros::<u32>(1)?,
            stat: s.alloc_zeros::<u32>(4)?,
        })
    }
}

/// Makes `b` hold at least `n` words (a new, larger buffer when it is shorter).
fn grow(stream: &Arc<CudaStream>, b: &mut CudaSlice<u32>, n: usize) -> Result<()> {
    if b.len() < n {
        *b = stream.alloc_zeros::<u32>(n)?;
    }
    Ok(())
}

/// Grow-only device buffers for building one graph after another on the device
/// ([`CsrPool::build`]): the index copies, both packed views and the builder's scratch.
/// A structure no larger than an earlier one allocates nothing, and the tables keep their
/// addresses (what a captured CUDA graph of the work on them needs).
pub struct CsrPool {
    receiver: Arc<CudaSlice<u32>>,
    sender: Arc<CudaSlice<u32>>,
    recv: Arc<CudaSlice<u32>>,
    send: Arc<CudaSlice<u32>>,
    scratch: CsrScratch,
}

impl CsrPool {
    pub fn new(dev: &CudaDevice) -> Result<Self> {
        let s = dev.stream();
        let one = || -> Result<Arc<CudaSlice<u32>>> { Ok(Arc::new(s.alloc_zeros::<u32>(1)?)) };
        Ok(CsrPool {
            receiver: one()?,
            sender: one()?,
            recv: one()?,
            send: one()?,
            scratch: CsrScratch::new(dev)?,
        })
    }

    /// Copies the graph's `edges` receiver/sender indices (device views) into the pool and
    /// builds both CSR views there (as [`CudaDevice::build_csr_tables`]: an index ≥ nodes is
    /// [`CudaError::Conv`] naming it). Returns the graph, which shares the pool's buffers:
    /// it must be dropped before the next build (else an error says so).
    pub fn build(
        &mut self,
        dev: &CudaDevice,
        nodes: u32,
        edges: u32,
        receiver: &CudaView<'_, u32>,
        sender: &CudaView<'_, u32>,
    ) -> Result<crate::CudaGraph> {
        check_sizes(nodes, edges, receiver.len(), sender.len())?;
        let stream = dev.stream().clone();
        let len = nodes as usize + 1 + 2 * edges as usize;
        let e = edges as usize;
        let mut bufs = [
            (&mut self.receiver, e.max(1)),
            (&mut self.sender, e.max(1)),
            (&mut self.recv, len),
            (&mut self.send, len),
        ];
        for (b, need) in &mut bufs {
            if Arc::get_mut(b).is_none() {
                return Err(CudaError::Plan(
                    "CsrPool::build: a graph of the previous build is still alive".into(),
                ));
            }
            if b.len() < *need {
                **b = Arc::new(stream.alloc_zeros::<u32>(*need)?);
            }
        }
        let [r, s, recv, send] = bufs.map(|(b, _)| Arc::get_mut(b).expect("unique: checked"));
        if e > 0 {
            stream.memcpy_dtod(&receiver.slice(0..e), &mut r.slice_mut(0..e))?;
            stream.memcpy_dtod(&sender.slice(0..e), &mut s.slice_mut(0..e))?;
        }
        dev.fill_csr_tables(nodes, edges, r, s, recv, send, &mut self.scratch)?;
        Ok(crate::CudaGraph::from_device_tables(
            dev,
            nodes,
            edges,
            [
                self.recv.clone(),
                self.send.clone(),
                self.receiver.clone(),
                self.sender.clone(),
            ],
        ))
    }
}

/// The builders' argument checks: counts below `u32::MAX`, index buffers of `edges` or more.
fn check_sizes(nodes: u32, edges: u32, receiver: usize, sender: usize) -> Result<()> {
    for (what, n) in [("nodes", nodes), ("edges", edges)] {
        if n == u32::MAX {
            return Err(ConvError::TooLarge {
                what,
                n: n as usize,
            }
            .into());
        }
    }
    for (arg, len) in [("receiver", receiver), ("sender", sender)] {
        if len < edges as usize {
            return Err(CudaError::Length {
                arg,
                expected: edges as usize,
                actual: len,
            });
        }
    }
    Ok(())
}

fn cfg(n: u64) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    /// Builds both CSR views of the graph whose `u32` index arrays (`edges` entries each) are
    /// on this device. An index ≥ `nodes` is [`CudaError::Conv`] naming the array, the
    /// smallest bad position and its value, reported before the tables are returned.
    pub fn build_csr_tables(
        &self,
        nodes: u32,
        edges: u32,
        receiver: &CudaSlice<u32>,
        sender: &CudaSlice<u32>,
    ) -> Result<CudaCsrTables> {
        check_sizes(nodes, edges, receiver.len(), sender.len())?;
        let stream = self.stream().clone();
        let len = nodes as usize + 1 + 2 * edges as usize;
        let mut recv = stream.alloc_zeros::<u32>(len)?;
        let mut send = stream.alloc_zeros::<u32>(len)?;
        let mut scratch = CsrScratch::new(self)?;
        self.fill_csr_tables(
            nodes,
            edges,
            receiver,
            sender,
            &mut recv,
            &mut send,
            &mut scratch,
        )?;
        Ok(CudaCsrTables {
            nodes,
            edges,
            recv,
            send,
        })
    }

    /// Both packed views of a valid-length graph into `recv`/`send` (each at least
    /// `nodes + 1 + 2·edges` words), with `scratch` grown as needed.
    #[allow(clippy::too_many_arguments)]
    fn fill_csr_tables(
        &self,
        nodes: u32,
        edges: u32,
        receiver: &CudaSlice<u32>,
        sender: &CudaSlice<u32>,
        recv: &mut CudaSlice<u32>,
        send: &mut CudaSlice<u32>,
        scratch: &mut CsrScratch,
    ) -> Result<()> {
        let k = functions(self)?;
        let stream = self.stream().clone();
        let chunks = nodes.div_ceil(SCAN_CHUNK);
        grow(&stream, &mut scratch.counts, nodes.max(1) as usize)?;
        grow(&stream, &mut scratch.sums, chunks.max(1) as usize)?;
        let CsrScratch { counts, sums, stat } = scratch;
        // [err receiver, err sender, largest degree receiver, sender]
        stream.memcpy_htod(&[u32::MAX, u32::MAX, 0, 0], &mut *stat)?;
        // Pass 1 for both views: counts → offsets, largest degree, bad indices.
        for (key, packed, which) in [(receiver, &mut *recv, 0u32), (sender, &mut *send, 1u32)] {
            stream.memset_zeros(&mut *counts)?;
            let mut b = stream.launch_builder(&k.count);
            b.arg(key)
                .arg(&mut *counts)
                .arg(&mut *stat)
                .arg(&nodes)
                .arg(&edges)
                .arg(&which);
            // SAFETY: key ≥ edges words (checked); counts[v] only for v < nodes; stat 4.
            unsafe { b.launch(cfg(edges as u64)) }?;
            let mut deg = stat.slice_mut(2 + which as usize..3 + which as usize);
            let mut b = stream.launch_builder(&k.chunk_sums);
            b.arg(&*counts).arg(&mut *sums).arg(&mut deg).arg(&nodes);
            // SAFETY: counts has nodes words, sums ⌈nodes / SCAN_CHUNK⌉.
            unsafe { b.launch(cfg(chunks as u64)) }?;
            let mut b = stream.launch_builder(&k.scan_sums);
            b.arg(&mut *sums).arg(&chunks);
            // SAFETY: sums has `chunks` words (one thread).
            unsafe { b.launch(cfg(1)) }?;
            let mut b = stream.launch_builder(&k.chunk_scan);
            b.arg(&*counts)
                .arg(&*sums)
                .arg(&mut *packed)
                .arg(&nodes)
                .arg(&edges);
            // SAFETY: packed[0..=nodes] written; counts/sums as above.
            unsafe { b.launch(cfg(chunks as u64 + 1)) }?;
        }
        let st = stream.clone_dtoh(&*stat)?;
        for (which, array, buf) in [(0usize, "receiver", receiver), (1, "sender", sender)] {
            let pos = st.get(which).copied().unwrap_or(u32::MAX);
            if pos != u32::MAX {
                let v = stream.clone_dtoh(&buf.slice(pos as usize..pos as usize + 1))?;
                return Err(ConvError::Index {
                    array,
                    position: pos as usize,
                    value: v.first().copied().unwrap_or(0) as i128,
                    nodes: nodes as usize,
                }
                .into());
            }
        }
        // Pass 2 (every index < nodes): the edge ids of each view, then the other ends.
        for (key, other, packed, which) in [
            (receiver, sender, &mut *recv, 0usize),
            (sender, receiver, &mut *send, 1usize),
        ] {
            if st[2 + which] <= SEGMENT_SORT_MAX {
                stream.memset_zeros(&mut *counts)?;
                let mut b = stream.launch_builder(&k.scatter);
                b.arg(key)
                    .arg(&mut *counts)
                    .arg(&mut *packed)
                    .arg(&nodes)
                    .arg(&edges);
                // SAFETY: key[i] < nodes (validated); offsets + cursor < edges.
                unsafe { b.launch(cfg(edges as u64)) }?;
                let mut b = stream.launch_builder(&k.segment_sort);
                b.arg(other).arg(&mut *packed).arg(&nodes).arg(&edges);
                // SAFETY: ranges within [0, edges); ids < edges; other ≥ edges words.
                unsafe { b.launch(cfg(nodes as u64)) }?;
            } else {
                self.bitonic_view(&k, nodes, edges, key, other, packed, which as u32)?;
            }
        }
        Ok(())
    }

    /// One view by the bitonic network (degrees above [`SEGMENT_SORT_MAX`]); indices valid.
    #[allow(clippy::too_many_arguments)]
    fn bitonic_view(
        &self,
        k: &Kernels,
        nodes: u32,
        edges: u32,
        key: &CudaSlice<u32>,
        other: &CudaSlice<u32>,
        packed: &mut CudaSlice<u32>,
        which: u32,
    ) -> Result<()> {
        let padded = (edges.max(1) as u64).next_power_of_two();
        if padded > 1 << 31 {
            return Err(ConvError::TooLarge {
                what: "edges",
                n: edges as usize,
            }
            .into());
        }
        let n = padded as u32;
        let stream = self.stream().clone();
        let mut keys = stream.alloc_zeros::<u32>(padded as usize)?;
        let mut ids = stream.alloc_zeros::<u32>(padded as usize)?;
        let mut err = stream.alloc_zeros::<u32>(2)?;
        let mut b = stream.launch_builder(&k.init);
        b.arg(key)
            .arg(other)
            .arg(&mut keys)
            .arg(&mut ids)
            .arg(&mut err)
            .arg(&n)
            .arg(&nodes)
            .arg(&edges)
            .arg(&which);
        // SAFETY: keys/ids hold `padded` ≥ n words; key/other ≥ edges (checked); err 2.
        unsafe { b.launch(cfg(padded)) }?;
        let mut kk = 2u64;
        while kk <= padded {
            let mut j = kk / 2;
            while j >= 1 {
                let (j32, k32) = (j as u32, kk as u32);
                let mut b = stream.launch_builder(&k.bitonic);
                b.arg(&mut keys).arg(&mut ids).arg(&n).arg(&j32).arg(&k32);
                // SAFETY: indices i and i ^ j are both < n (n a power of two, j < n).
                unsafe { b.launch(cfg(padded)) }?;
                j /= 2;
            }
            kk *= 2;
        }
        let mut b = stream.launch_builder(&k.offsets);
        b.arg(&keys).arg(&mut *packed).arg(&nodes).arg(&edges);
        // SAFETY: packed holds nodes + 1 + 2 edges words; keys ≥ edges.
        unsafe { b.launch(cfg(nodes as u64 + 1)) }?;
        let mut b = stream.launch_builder(&k.finish);
        b.arg(&ids)
            .arg(other)
            .arg(&mut *packed)
            .arg(&nodes)
            .arg(&edges);
        // SAFETY: ids[k] < edges for k < edges once sorted (padding sorts last).
        unsafe { b.launch(cfg(edges as u64)) }?;
        Ok(())
    }
}
