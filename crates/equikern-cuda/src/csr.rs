//! Building a convolution's CSR tables on the GPU from `u32` receiver/sender buffers already
//! on the device, **identical to [`equikern_core::conv::Csr::packed`]** (the same algorithm
//! as the wgpu runtime's `build_csr_tables`):
//!
//! 1. validate: an index ≥ nodes sets `err[array] = min(position)` (`atomicMin`); the host
//!    reads it back and reports `receiver[pos] = value` before the tables are returned;
//! 2. bitonic sort of `(key, edge id)` pairs (padded to a power of two). Edge ids are unique,
//!    so the sorted order is the stable one: within a node, ascending edge id;
//! 3. `offsets[n]` = first sorted position with key ≥ n (binary search per node);
//! 4. the packed view `[offsets | edge ids in view order | other end of each]`.
//!
//! Every kernel is a grid-stride loop whose iterations are independent within a launch (the
//! bitonic stage's pairs are disjoint), so the source also runs as plain C++ one thread at a
//! time (`tests/csr_cpu_emulation.rs`).

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
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

fn functions(dev: &CudaDevice) -> Result<[CudaFunction; 4]> {
    let key = format!("equikern-csr-v1-{}", dev.arch());
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
    Ok([
        f("ek_csr_init")?,
        f("ek_csr_bitonic")?,
        f("ek_csr_offsets")?,
        f("ek_csr_finish")?,
    ])
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
        for (what, n) in [("nodes", nodes), ("edges", edges)] {
            if n == u32::MAX {
                return Err(ConvError::TooLarge {
                    what,
                    n: n as usize,
                }
                .into());
            }
        }
        for (arg, b) in [("receiver", receiver), ("sender", sender)] {
            if b.len() < edges as usize {
                return Err(CudaError::Length {
                    arg,
                    expected: edges as usize,
                    actual: b.len(),
                });
            }
        }
        let padded = (edges.max(1) as u64).next_power_of_two();
        if padded > 1 << 31 {
            return Err(ConvError::TooLarge {
                what: "edges",
                n: edges as usize,
            }
            .into());
        }
        let n = padded as u32;
        let [f_init, f_sort, f_off, f_fin] = functions(self)?;
        let stream = self.stream().clone();
        let mut keys = stream.alloc_zeros::<u32>(padded as usize)?;
        let mut ids = stream.alloc_zeros::<u32>(padded as usize)?;
        let mut err = stream.alloc_zeros::<u32>(2)?;
        stream.memcpy_htod(&[u32::MAX, u32::MAX], &mut err)?;
        let len = nodes as usize + 1 + 2 * edges as usize;
        let mut recv = stream.alloc_zeros::<u32>(len)?;
        let mut send = stream.alloc_zeros::<u32>(len)?;
        for (key, other, packed, which) in [
            (receiver, sender, &mut recv, 0u32),
            (sender, receiver, &mut send, 1u32),
        ] {
            let mut b = stream.launch_builder(&f_init);
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
            let mut k = 2u64;
            while k <= padded {
                let mut j = k / 2;
                while j >= 1 {
                    let (j32, k32) = (j as u32, k as u32);
                    let mut b = stream.launch_builder(&f_sort);
                    b.arg(&mut keys).arg(&mut ids).arg(&n).arg(&j32).arg(&k32);
                    // SAFETY: indices i and i ^ j are both < n (n a power of two, j < n).
                    unsafe { b.launch(cfg(padded)) }?;
                    j /= 2;
                }
                k *= 2;
            }
            let mut b = stream.launch_builder(&f_off);
            b.arg(&keys).arg(&mut *packed).arg(&nodes).arg(&edges);
            // SAFETY: packed holds nodes + 1 + 2 edges words; keys ≥ edges.
            unsafe { b.launch(cfg(nodes as u64 + 1)) }?;
            let mut b = stream.launch_builder(&f_fin);
            b.arg(&ids)
                .arg(other)
                .arg(&mut *packed)
                .arg(&nodes)
                .arg(&edges);
            // SAFETY: ids[k] < edges for k < edges once sorted (padding sorts last).
            unsafe { b.launch(cfg(edges as u64)) }?;
        }
        let bad = stream.clone_dtoh(&err)?;
        for (which, array, buf) in [(0usize, "receiver", receiver), (1, "sender", sender)] {
            let pos = bad.get(which).copied().unwrap_or(u32::MAX);
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
        Ok(CudaCsrTables {
            nodes,
            edges,
            recv,
            send,
        })
    }
}
