//! Building a convolution's CSR tables on the GPU from `u32` receiver/sender buffers already
//! on the device (graphs rebuilt every step need not travel to the host). The tables are
//! integer-exact and **identical to [`equikern_core::conv::Csr::packed`]**:
//!
//! 1. validate: an index ≥ nodes sets `err[array] = min(position)` (atomicMin: the smallest bad
//!    position, whatever the order); the host reads it back and reports `receiver[pos] = value`
//!    before any table is used;
//! 2. sort `(key, edge id)` pairs with a bitonic network (padded to a power of two). Edge ids
//!    are unique, so the sorted order is the stable order: within a node, ascending edge id;
//! 3. `offsets[n]` = first sorted position with key ≥ n (a binary search per node: no scan, no
//!    atomics);
//! 4. `[offsets | edge ids in view order | other end of each]`, the packed layout kernels bind.
//!
//! Both views (by receiver, by sender) run the same kernels with the key swapped. Pieces
//! (`max_piece_edges`) are not built here: graphs made this way run the CSR modes.

use equikern_core::conv::ConvError;
use wgpu::util::DeviceExt;

use crate::{Result, Runtime, WgpuError};

const WG: u32 = 256;

const SHADER: &str = r#"
struct P { n: u32, nodes: u32, edges: u32, j: u32, k: u32, nx: u32, which: u32, pad: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> key_in: array<u32>;
@group(0) @binding(2) var<storage, read> other_in: array<u32>;
@group(0) @binding(3) var<storage, read_write> keys: array<u32>;
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> packed: array<u32>;
@group(0) @binding(6) var<storage, read_write> err: array<atomic<u32>>;

fn gid(g: vec3<u32>, l: u32) -> u32 { return (g.x + g.y * p.nx) * 256u + l; }

// keys/ids <- (key, edge id), padding past the edges sorts last; bad indices recorded.
@compute @workgroup_size(256)
fn init(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let i = gid(g, l);
  if (i >= p.n) { return; }
  if (i < p.edges) {
    let v = key_in[i];
    keys[i] = v;
    ids[i] = i;
    if (v >= p.nodes) { atomicMin(&err[p.which], i); }
    if (other_in[i] >= p.nodes) { atomicMin(&err[1u - p.which], i); }
  } else {
    keys[i] = 0xffffffffu;
    ids[i] = 0xffffffffu;
  }
}

// One compare-exchange stage (j, k) of the bitonic network over (key, id).
@compute @workgroup_size(256)
fn bitonic(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let i = gid(g, l);
  if (i >= p.n) { return; }
  let m = i ^ p.j;
  if (m <= i) { return; }
  let ka = keys[i]; let kb = keys[m];
  let ia = ids[i]; let ib = ids[m];
  let a_gt_b = ka > kb || (ka == kb && ia > ib);
  let up = (i & p.k) == 0u;
  if (a_gt_b == up) {
    keys[i] = kb; keys[m] = ka;
    ids[i] = ib; ids[m] = ia;
  }
}

// packed[n] = first position whose key >= n, for n in 0..=nodes.
@compute @workgroup_size(256)
fn offsets(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let n = gid(g, l);
  if (n > p.nodes) { return; }
  var lo = 0u;
  var hi = p.edges;
  loop {
    if (lo >= hi) { break; }
    let mid = lo + (hi - lo) / 2u;
    if (keys[mid] < n) { lo = mid + 1u; } else { hi = mid; }
  }
  packed[n] = lo;
}

// packed[nodes+1+k] = edge id at view position k; packed[nodes+1+edges+k] = its other end.
@compute @workgroup_size(256)
fn finish(@builtin(workgroup_id) g: vec3<u32>, @builtin(local_invocation_index) l: u32) {
  let k = gid(g, l);
  if (k >= p.edges) { return; }
  let e = ids[k];
  packed[p.nodes + 1u + k] = e;
  packed[p.nodes + 1u + p.edges + k] = other_in[e];
}
"#;

/// Both CSR views of a graph, built on the device (`[offsets | edge ids | other end]`).
pub struct DeviceCsr {
    pub nodes: u32,
    pub edges: u32,
    /// Grouped by receiver (`RecvCsr`).
    pub recv: wgpu::Buffer,
    /// Grouped by sender (`SendCsr`, the transpose).
    pub send: wgpu::Buffer,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    nodes: u32,
    edges: u32,
    j: u32,
    k: u32,
    nx: u32,
    which: u32,
    pad: u32,
}

impl Runtime {
    /// Builds both CSR views of the graph whose `u32` index arrays `receiver` and `sender`
    /// (`edges` entries each, `STORAGE` usage, `COPY_SRC` for error reports) are on this
    /// device. An index ≥ `nodes` is [`WgpuError::Conv`] naming the array, the smallest bad
    /// position and its value, reported before the tables are returned.
    pub async fn build_csr_tables(
        &self,
        nodes: u32,
        edges: u32,
        receiver: &wgpu::Buffer,
        sender: &wgpu::Buffer,
    ) -> Result<DeviceCsr> {
        if nodes == u32::MAX {
            return Err(ConvError::TooLarge {
                what: "nodes",
                n: nodes as usize,
            }
            .into());
        }
        if edges == u32::MAX {
            return Err(ConvError::TooLarge {
                what: "edges",
                n: edges as usize,
            }
            .into());
        }
        for (name, b) in [("receiver", receiver), ("sender", sender)] {
            if b.size() < edges as u64 * 4 {
                return Err(WgpuError::Binding {
                    tensor: name.into(),
                    why: format!("{} bytes, expected at least {}", b.size(), edges as u64 * 4),
                });
            }
        }
        let padded = (edges.max(1) as u64).next_power_of_two();
        let packed_len = nodes as u64 + 1 + 2 * edges as u64;
        let max_binding = self.limits.max_storage_buffer_binding_size;
        if padded * 4 > max_binding || packed_len * 4 > max_binding {
            return Err(WgpuError::Binding {
                tensor: "graph".into(),
                why: format!(
                    "{edges} edges need {} bytes of sort keys, over the binding limit {max_binding}",
                    padded * 4
                ),
            });
        }
        let dev = &self.device;
        let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("equikern csr"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let pipe = |entry: &str| {
            dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let (p_init, p_sort, p_off, p_fin) = (
            pipe("init"),
            pipe("bitonic"),
            pipe("offsets"),
            pipe("finish"),
        );
        let storage = |label: &str, words: u64, extra: wgpu::BufferUsages| {
            dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: words.max(1) * 4,
                usage: wgpu::BufferUsages::STORAGE | extra,
                mapped_at_creation: false,
            })
        };
        let keys = storage("csr keys", padded, wgpu::BufferUsages::empty());
        let ids = storage("csr ids", padded, wgpu::BufferUsages::empty());
        let err = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("csr err"),
            contents: bytemuck::cast_slice(&[u32::MAX; 2]),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        let out_usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let recv = storage("RecvCsr", packed_len, out_usage);
        let send = storage("SendCsr", packed_len, out_usage);
        let maxg = self.caps.max_workgroups_per_dim.max(1);
        let grid = |n: u64| -> (u32, u32, u32) {
            let groups = n.div_ceil(WG as u64).max(1);
            let x = groups.min(maxg as u64);
            (x as u32, groups.div_ceil(x) as u32, x as u32)
        };
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("equikern csr"),
        });
        let mut uniforms = vec![];
        // (key, other, packed, which): the receiver view, then the sender view.
        for (key, other, packed, which) in [
            (receiver, sender, &recv, 0u32),
            (sender, receiver, &send, 1),
        ] {
            // `used`: the bindings the entry point reads (its derived layout has only those).
            let mut pass = |pl: &wgpu::ComputePipeline, used: &[u32], n: u64, j: u32, k: u32| {
                let (gx, gy, nx) = grid(n);
                let prm = Params {
                    n: padded as u32,
                    nodes,
                    edges,
                    j,
                    k,
                    nx,
                    which,
                    pad: 0,
                };
                let ubuf = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("csr params"),
                    contents: bytemuck::bytes_of(&prm),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                let layout = pl.get_bind_group_layout(0);
                let all: [(u32, &wgpu::Buffer); 7] = [
                    (0, &ubuf),
                    (1, key),
                    (2, other),
                    (3, &keys),
                    (4, &ids),
                    (5, packed),
                    (6, &err),
                ];
                let entries: Vec<wgpu::BindGroupEntry> = all
                    .iter()
                    .filter(|(b, _)| used.contains(b))
                    .map(|(b, buf)| wgpu::BindGroupEntry {
                        binding: *b,
                        resource: buf.as_entire_binding(),
                    })
                    .collect();
                let bg = dev.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("csr"),
                    layout: &layout,
                    entries: &entries,
                });
                let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("csr"),
                    timestamp_writes: None,
                });
                cp.set_pipeline(pl);
                cp.set_bind_group(0, &bg, &[]);
                cp.dispatch_workgroups(gx, gy, 1);
                drop(cp);
                uniforms.push(ubuf);
            };
            pass(&p_init, &[0, 1, 2, 3, 4, 6], padded, 0, 0);
            let mut k = 2u64;
            while k <= padded {
                let mut j = k / 2;
                while j >= 1 {
                    pass(&p_sort, &[0, 3, 4], padded, j as u32, k as u32);
                    j /= 2;
                }
                k *= 2;
            }
            pass(&p_off, &[0, 3, 5], nodes as u64 + 1, 0, 0);
            pass(&p_fin, &[0, 2, 4, 5], edges as u64, 0, 0);
        }
        self.queue.submit([enc.finish()]);
        // The smallest bad position per array, then its value.
        let bad = self.read_f32(&err, 0, 2).await?;
        for (which, name, buf) in [(0usize, "receiver", receiver), (1, "sender", sender)] {
            let pos = bad[which].to_bits();
            if pos != u32::MAX {
                let v = self.read_f32(buf, pos as u64 * 4, 1).await?;
                return Err(ConvError::Index {
                    array: name,
                    position: pos as usize,
                    value: v[0].to_bits() as i128,
                    nodes: nodes as usize,
                }
                .into());
            }
        }
        drop(uniforms);
        Ok(DeviceCsr {
            nodes,
            edges,
            recv,
            send,
        })
    }

    /// Blocking [`Runtime::build_csr_tables`] (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn build_csr_tables_blocking(
        &self,
        nodes: u32,
        edges: u32,
        receiver: &wgpu::Buffer,
        sender: &wgpu::Buffer,
    ) -> Result<DeviceCsr> {
        pollster::block_on(self.build_csr_tables(nodes, edges, receiver, sender))
    }

    /// Reads `words` u32 of a buffer (needs `COPY_SRC`) back to the host.
    pub async fn read_u32(&self, buffer: &wgpu::Buffer, words: u64) -> Result<Vec<u32>> {
        Ok(self
            .read_f32(buffer, 0, words)
            .await?
            .into_iter()
            .map(f32::to_bits)
            .collect())
    }
}
