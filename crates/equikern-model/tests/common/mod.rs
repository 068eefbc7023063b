//! Shared helpers for the model tests.
#![allow(dead_code)]

use equikern_model::sevennet::Options;
use equikern_model::{Checkpoint, SevenNet, Structure, Value};
use std::path::PathBuf;

/// A file of the repository, `rel` from its root: under `$EQUIKERN_REPO` if set, else in the
/// source tree this test was built from, else under the working directory (a test binary
/// carried to another machine and run from a checkout's root). The first that exists; else the
/// source-tree path (for the skip message).
pub fn repo_file(rel: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    let mut candidates = Vec::new();
    if let Some(r) = std::env::var_os("EQUIKERN_REPO") {
        candidates.push(PathBuf::from(r).join(rel));
    }
    candidates.push(built.clone());
    candidates.push(PathBuf::from(rel));
    candidates.into_iter().find(|p| p.exists()).unwrap_or(built)
}

pub fn checkpoint_path() -> Option<PathBuf> {
    checkpoint_named("checkpoint_sevennet_0.pth")
}

/// `models/<file>` if present (fetched by `crates/equikern-model/fetch_checkpoint.sh`), else
/// a printed skip reason and `None`.
pub fn checkpoint_named(file: &str) -> Option<PathBuf> {
    let p = repo_file(&format!("models/{file}"));
    if p.exists() {
        Some(p)
    } else {
        println!(
            "SKIP: {} absent (run crates/equikern-model/fetch_checkpoint.sh)",
            p.display()
        );
        None
    }
}

pub fn real_model() -> Option<SevenNet> {
    let ck = Checkpoint::load(checkpoint_path()?).expect("checkpoint loads");
    Some(SevenNet::from_checkpoint(&ck, Options::default()).expect("model builds"))
}

fn s(x: &str) -> Value {
    Value::Str(x.to_string())
}
fn kv(k: &str, v: Value) -> (Value, Value) {
    (s(k), v)
}

/// A SevenNet-style config, small: 4 species (H C N O), 3 layers, `4x0e → 6x0e+3x1e+2x2e → … → 6x0e`.
pub fn small_config(cutoff_function: &str) -> Value {
    let cf = if cutoff_function == "XPLOR" {
        Value::Dict(vec![
            kv("cutoff_function_name", s("XPLOR")),
            kv("cutoff_on", Value::Float(3.2)),
        ])
    } else {
        Value::Dict(vec![
            kv("cutoff_function_name", s("poly_cut")),
            kv("poly_cut_p_value", Value::Int(6)),
        ])
    };
    Value::Dict(vec![
        kv("cutoff", Value::Float(3.7)),
        kv("_number_of_species", Value::Int(4)),
        kv(
            "_type_map",
            Value::Dict(vec![
                (Value::Int(1), Value::Int(0)),
                (Value::Int(6), Value::Int(1)),
                (Value::Int(7), Value::Int(2)),
                (Value::Int(8), Value::Int(3)),
            ]),
        ),
        kv(
            "radial_basis",
            Value::Dict(vec![
                kv("radial_basis_name", s("bessel")),
                kv("bessel_basis_num", Value::Int(8)),
            ]),
        ),
        kv("cutoff_function", cf),
        kv("lmax", Value::Int(2)),
        kv("lmax_edge", Value::Int(-1)),
        kv("is_parity", Value::Bool(false)),
        kv("num_convolution_layer", Value::Int(3)),
        kv(
            "irreps_manual",
            Value::List(vec![
                s("4x0e"),
                s("6x0e+3x1e+2x2e"),
                s("6x0e+3x1e+2x2e"),
                s("6x0e"),
            ]),
        ),
        kv(
            "weight_nn_hidden_neurons",
            Value::List(vec![Value::Int(5), Value::Int(7)]),
        ),
        kv("act_radial", s("silu")),
        kv(
            "act_scalar",
            Value::Dict(vec![kv("e", s("silu")), kv("o", s("tanh"))]),
        ),
        kv(
            "act_gate",
            Value::Dict(vec![kv("e", s("silu")), kv("o", s("tanh"))]),
        ),
        kv("self_connection_type", s("linear")),
        kv("interaction_type", s("nequip")),
        kv("use_bias_in_linear", Value::Bool(false)),
        kv("readout_as_fcn", Value::Bool(false)),
        kv("_normalize_sph", Value::Bool(true)),
    ])
}

pub fn small_model(cutoff_function: &str, seed: u64) -> SevenNet {
    SevenNet::random(
        &small_config(cutoff_function),
        Options {
            silu_cst: 1.679176792398926,
        },
        seed,
    )
    .unwrap()
}

/// A model whose convolutions take the fused backward with several slices and n tiles per
/// slice (`64x0e`: 2 slices of 4 n tiles; `16x1e`: 1 of 2; `8x2e`: 1 of 1), radial hidden
/// width 16.
pub fn rcb_model() -> SevenNet {
    let equikern_model::Value::Dict(mut d) = small_config("XPLOR") else {
        unreachable!("a dict")
    };
    let st = |x: &str| equikern_model::Value::Str(x.to_string());
    for (k, v) in d.iter_mut() {
        match k {
            equikern_model::Value::Str(n) if n == "irreps_manual" => {
                *v = equikern_model::Value::List(vec![
                    st("8x0e"),
                    st("64x0e+16x1e+8x2e"),
                    st("64x0e+16x1e+8x2e"),
                    st("8x0e"),
                ])
            }
            equikern_model::Value::Str(n) if n == "weight_nn_hidden_neurons" => {
                *v = equikern_model::Value::List(vec![
                    equikern_model::Value::Int(16),
                    equikern_model::Value::Int(16),
                ])
            }
            _ => {}
        }
    }
    SevenNet::random(
        &equikern_model::Value::Dict(d),
        equikern_model::sevennet::Options {
            silu_cst: 1.679176792398926,
        },
        7,
    )
    .unwrap()
}

/// Triclinic cell smaller than 2·cutoff (several images of every pair), H/C/N/O.
pub fn triclinic() -> Structure {
    Structure {
        positions: vec![
            [0.1, 0.2, 0.3],
            [1.3, 0.9, 0.4],
            [0.7, 1.8, 1.6],
            [2.1, 1.2, 2.0],
        ],
        numbers: vec![1, 6, 7, 8],
        cell: [[2.9, 0.0, 0.0], [0.6, 2.7, 0.0], [-0.4, 0.5, 3.1]],
        pbc: [true; 3],
    }
}

/// A small open-boundary molecule (roughly methylamine-like coordinates).
pub fn molecule() -> Structure {
    Structure {
        positions: vec![
            [0.0, 0.0, 0.0],
            [1.47, 0.0, 0.0],
            [-0.36, 1.02, 0.05],
            [-0.37, -0.52, 0.88],
            [-0.36, -0.5, -0.9],
            [1.8, 0.95, 0.1],
            [1.82, -0.45, -0.83],
        ],
        numbers: vec![6, 7, 1, 1, 1, 1, 1],
        cell: [[0.0; 3]; 3],
        pbc: [false; 3],
    }
}

pub fn si_diamond() -> Structure {
    let a = 5.43;
    let basis = [
        [0.0, 0.0, 0.0],
        [0.0, 0.5, 0.5],
        [0.5, 0.0, 0.5],
        [0.5, 0.5, 0.0],
        [0.25, 0.25, 0.25],
        [0.25, 0.75, 0.75],
        [0.75, 0.25, 0.75],
        [0.75, 0.75, 0.25],
    ];
    Structure {
        positions: basis.iter().map(|f| f.map(|x| x * a)).collect(),
        numbers: vec![14; 8],
        cell: [[a, 0.0, 0.0], [0.0, a, 0.0], [0.0, 0.0, a]],
        pbc: [true; 3],
    }
}

/// Rotation matrix from a unit quaternion-ish parametrisation.
pub fn rotation(a: f64, b: f64, c: f64) -> [[f64; 3]; 3] {
    equikern_core::so3::angles_to_matrix(a, b, c)
}

pub fn apply(r: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|i| r[i][0] * v[0] + r[i][1] * v[1] + r[i][2] * v[2])
}

/// One structure of `tests/data/sevennet/sevenn_refs.json` with sevenn's float64 results.
pub struct Reference {
    pub name: String,
    pub structure: Structure,
    pub energy: f64,
    pub forces: Vec<[f64; 3]>,
    pub stress: Option<Vec<f64>>,
    pub num_edges: usize,
}

fn v3(v: &serde_json::Value) -> [f64; 3] {
    [0, 1, 2].map(|i| v[i].as_f64().expect("number"))
}

/// sevenn's float64 references (`gen_sevenn_refs.py`), or `None` (printed skip reason).
pub fn sevenn_references() -> Option<Vec<Reference>> {
    let json = repo_file("tests/data/sevennet/sevenn_refs.json");
    if !json.exists() {
        println!(
            "SKIP: {} absent (generate with gen_sevenn_refs.py on a machine with torch)",
            json.display()
        );
        return None;
    }
    let refs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let mut out = Vec::new();
    for s in refs["structures"].as_array().unwrap() {
        let Some(r) = s.get("f64") else { continue };
        out.push(Reference {
            name: s["name"].as_str().unwrap().to_string(),
            structure: Structure {
                positions: s["positions"].as_array().unwrap().iter().map(v3).collect(),
                numbers: s["numbers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|z| z.as_u64().unwrap() as u32)
                    .collect(),
                cell: {
                    let c = s["cell"].as_array().unwrap();
                    [v3(&c[0]), v3(&c[1]), v3(&c[2])]
                },
                pbc: {
                    let p = s["pbc"].as_array().unwrap();
                    [0, 1, 2].map(|i| p[i].as_bool().unwrap())
                },
            },
            energy: r["energy"].as_f64().unwrap(),
            forces: r["forces"].as_array().unwrap().iter().map(v3).collect(),
            stress: r["stress"]
                .as_array()
                .map(|v| v.iter().map(|x| x.as_f64().unwrap()).collect()),
            num_edges: r["num_edges"].as_u64().unwrap() as usize,
        });
    }
    Some(out)
}

/// What the CUDA kernel text of `cuda_model` needs to compile as plain C++ (the CPU emulation
/// tests): the CUDA built-ins it uses, as host stand-ins.
pub const KERNEL_SHIM: &str = r#"
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
struct ek_dim3 { unsigned x, y, z; };
static ek_dim3 blockIdx, gridDim, blockDim;
static thread_local ek_dim3 threadIdx;
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
struct double2 { double x, y; };
// __syncthreads: a barrier over the block's threads while `grid_threads` runs them
struct ek_barrier {
  std::mutex m; std::condition_variable cv; unsigned n, count = 0, gen = 0;
  explicit ek_barrier(unsigned n) : n(n) {}
  void wait() {
    std::unique_lock<std::mutex> l(m); unsigned g = gen;
    if (++count == n) { count = 0; ++gen; cv.notify_all(); } else cv.wait(l, [&] { return gen != g; });
  }
};
static ek_barrier* ek_bar = nullptr;
static int ek_unsynced_barriers = 0;
static inline void __syncthreads() { if (ek_bar) ek_bar->wait(); else ++ek_unsynced_barriers; }
// __syncwarp: a barrier over the 32 threads of the caller's warp (`grid_threads`)
static ek_barrier** ek_warp_bar = nullptr;
static inline void __syncwarp(unsigned = 0xffffffffu) {
  if (ek_warp_bar) ek_warp_bar[threadIdx.x / 32]->wait(); else ++ek_unsynced_barriers;
}
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 of one warp, as the PTX ISA lays out
// its fragments (lane = 4g + t): a0 (row g, col t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
// b0 (k t, col g), b1 (k t+4, col g); d0 (g, 2t), d1 (g, 2t+1), d2 (g+8, 2t), d3 (g+8, 2t+1).
// Every lane posts its fragments to the warp's staging slot, waits for the other 31, and
// forms its own four outputs from the whole 16×8 and 8×8 tiles it rebuilds from them. Each
// operand's low 13 bits are dropped (the tensor cores read TF32: a value that was not split
// loses them, as on the GPU); products exact, the sum in double, rounded to float. Two
// slots alternate, so one barrier per call suffices (a lane can only overwrite a slot after
// the next call's barrier, which every reader of it has reached).
#define EK_HOST_MMA 1
static unsigned ek_mma_a[32][2][32][4], ek_mma_b[32][2][32][2];
static thread_local int ek_mma_slot = 0;
static inline double ek_tf32_in(unsigned u) { return (double)__uint_as_float(u & 0xffffe000u); }
static inline void ek_mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2]) {
  unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  int s = ek_mma_slot;
  ek_mma_slot ^= 1;
  for (int i = 0; i < 4; ++i) ek_mma_a[w][s][l][i] = a[i];
  for (int i = 0; i < 2; ++i) ek_mma_b[w][s][l][i] = b[i];
  __syncwarp();
  unsigned g = l / 4, t = l % 4;
  for (int i = 0; i < 4; ++i) {
    unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    double acc = d[i];
    for (unsigned k = 0; k < 8; ++k) {
      unsigned a_lane = (row % 8) * 4 + k % 4, a_reg = (row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0);
      unsigned b_lane = col * 4 + k % 4, b_reg = k >= 4 ? 1 : 0;
      acc += ek_tf32_in(ek_mma_a[w][s][a_lane][a_reg]) * ek_tf32_in(ek_mma_b[w][s][b_lane][b_reg]);
    }
    d[i] = (float)acc;
  }
}
// __shfl_xor_sync of one warp: each lane posts its value, waits for the other 31 and reads
// its partner's (two alternating slots, as the mma's staging above).
static float ek_shfl_v[32][2][32];
static thread_local int ek_shfl_slot = 0;
static inline float __shfl_xor_sync(unsigned, float v, int o) {
  unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  int s = ek_shfl_slot;
  ek_shfl_slot ^= 1;
  ek_shfl_v[w][s][l] = v;
  __syncwarp();
  return ek_shfl_v[w][s][l ^ (unsigned)o];
}
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __constant__ static const
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__
#define EK_UNROLL
#define EK_NO_UNROLL
"#;

/// Walks the grid of a launch of `n` iterations (after the kernel text): at most 3 blocks of
/// 256 threads, so every grid-stride loop wraps at least once on large inputs.
pub const GRID_WALKER: &str = r#"
template <class F> static void grid(u64 n, F f) {
  u64 b = (n + 255) / 256; if (b < 1) b = 1; if (b > 3) b = 3;
  gridDim.x = (unsigned)b; gridDim.y = 1; gridDim.z = 1;
  blockDim.x = 256; blockDim.y = 1; blockDim.z = 1;
  for (unsigned bx = 0; bx < b; ++bx) for (unsigned tx = 0; tx < 256; ++tx) {
    blockIdx.x = bx; blockIdx.y = 0; blockIdx.z = 0; threadIdx.x = tx; threadIdx.y = 0; threadIdx.z = 0;
    f();
  }
}
"#;

/// Like `grid`, with each block's 256 threads run concurrently (real threads, `__syncthreads`
/// a barrier over the block, `__syncwarp` over the caller's 32, `__shared__` one copy per
/// block): for kernels that stage data per block or exchange it within a warp (the emulated
/// `mma`). `grid` on such a kernel counts its barriers in `ek_unsynced_barriers` instead.
pub const GRID_THREADS: &str = r#"
template <class F> static void grid_threads(u64 n, F f) {
  u64 b = (n + 255) / 256; if (b < 1) b = 1; if (b > 3) b = 3;
  gridDim.x = (unsigned)b; gridDim.y = 1; gridDim.z = 1;
  blockDim.x = 256; blockDim.y = 1; blockDim.z = 1;
  for (unsigned bx = 0; bx < b; ++bx) {
    blockIdx.x = bx; blockIdx.y = 0; blockIdx.z = 0;
    ek_barrier bar(256);
    ek_bar = &bar;
    std::vector<std::unique_ptr<ek_barrier>> warps;
    std::vector<ek_barrier*> warp_ptrs;
    for (unsigned w = 0; w < 256 / 32; ++w) {
      warps.emplace_back(new ek_barrier(32));
      warp_ptrs.push_back(warps.back().get());
    }
    ek_warp_bar = warp_ptrs.data();
    std::vector<std::thread> th;
    for (unsigned tx = 0; tx < 256; ++tx)
      th.emplace_back([&f, tx] { threadIdx.x = tx; threadIdx.y = 0; threadIdx.z = 0; f(); });
    for (auto& t : th) t.join();
    ek_bar = nullptr;
    ek_warp_bar = nullptr;
  }
}
"#;

/// The largest force component, |F|.
pub fn fmax(p: &equikern_model::Prediction) -> f64 {
    p.forces
        .iter()
        .flatten()
        .fold(0.0f64, |m, x| m.max(x.abs()))
}

/// The largest force component difference between two lists, |F_a − F_b|.
pub fn force_gap(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
}
