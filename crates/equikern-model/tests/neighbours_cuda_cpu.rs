//! The CUDA neighbour list (`src/neighbours_cuda/neighbours.cu`) run on the CPU: the source is
//! compiled as C++ (g++, FMA contraction off) with a few lines standing in for the CUDA
//! built-ins, each launch's grid is walked thread by thread (the scan's one block on real
//! threads, `__syncthreads` a barrier), in the launch order of `CudaNeighbourList::build` and
//! with the same host-side parameters (`neighbours_cuda::Setup`), and the result is compared
//! with `Graph::build`: the same edges in the same order, the same shifts, the same edge
//! vectors bit for bit. Grids are also run with fewer blocks than the device would launch (the
//! grid-stride loops) and with a tiny bin budget (merged bins). Skips where no `g++` is found.

mod common;
mod neighbours_common;

use equikern_model::neighbours_cuda::{
    bin_budget, Setup, BLOCK, BOUNDS_INIT, SCAN_THREADS, SOURCE,
};
use equikern_model::{Graph, Structure};
use neighbours_common::{cases, random, Lcg};
use std::path::Path;
use std::process::Command;

const SHIM: &str = r#"
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
struct ek_dim3 { unsigned x, y, z; };
static ek_dim3 blockIdx, gridDim, blockDim;
static thread_local ek_dim3 threadIdx;
static std::barrier<>* ek_bar = nullptr;
static inline void __syncthreads() { if (ek_bar) ek_bar->arrive_and_wait(); }
#define __shared__ static
#define __global__
#define __device__
#define __forceinline__ inline
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline long long __double_as_longlong(double x) { long long r; std::memcpy(&r, &x, 8); return r; }
static inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { auto o = *p; if (v < o) *p = v; return o; }
static inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { auto o = *p; if (v > o) *p = v; return o; }
static inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
"#;

const LAUNCH: &str = r#"
template <class F> static void ek_grid(unsigned blocks, F f) {
  gridDim = {blocks, 1, 1}; blockDim = {EK_BLOCK, 1, 1};
  for (unsigned b = 0; b < blocks; ++b) { blockIdx = {b, 0, 0};
    for (unsigned t = 0; t < EK_BLOCK; ++t) { threadIdx = {t, 0, 0}; f(); } }
}
extern "C" void run_bounds(const double* pos, const double* P, const long long* Q, unsigned n,
    unsigned long long* mm, unsigned g) { ek_grid(g, [&] { ek_nl_bounds(pos, P, Q, n, mm); }); }
extern "C" void run_bin(const double* pos, const double* P, const long long* Q, unsigned n,
    long long* wrap, unsigned* bin, unsigned* bcount, unsigned g) {
  ek_grid(g, [&] { ek_nl_bin(pos, P, Q, n, wrap, bin, bcount); }); }
extern "C" void run_scan(const unsigned* in, unsigned* out, unsigned n, unsigned long long* total,
    unsigned threads) {
  gridDim = {1, 1, 1}; blockDim = {threads, 1, 1}; blockIdx = {0, 0, 0};
  std::barrier<> bar(threads); ek_bar = &bar; std::vector<std::thread> th;
  for (unsigned t = 0; t < threads; ++t)
    th.emplace_back([=] { threadIdx = {t, 0, 0}; ek_nl_scan(in, out, n, total); });
  for (auto& h : th) h.join();
  ek_bar = nullptr;
}
extern "C" void run_fill(const unsigned* bin, const unsigned* bstart, unsigned n, unsigned* cursor,
    unsigned* members, unsigned g) { ek_grid(g, [&] { ek_nl_fill(bin, bstart, n, cursor, members); }); }
extern "C" void run_sort_bins(const unsigned* bstart, unsigned nb, unsigned* members, unsigned g) {
  ek_grid(g, [&] { ek_nl_sort_bins(bstart, nb, members); }); }
extern "C" void run_count(const double* pos, const double* P, const long long* Q, unsigned n,
    const long long* wrap, const unsigned* bin, const unsigned* bstart, const unsigned* members,
    unsigned* counts, unsigned g) {
  ek_grid(g, [&] { ek_nl_count(pos, P, Q, n, wrap, bin, bstart, members, counts); }); }
extern "C" void run_write(const double* pos, const double* P, const long long* Q, unsigned n,
    const long long* wrap, const unsigned* bin, const unsigned* bstart, const unsigned* members,
    const unsigned* offsets, unsigned* ssrc, unsigned* sdst, long long* sshift, unsigned g) {
  ek_grid(g, [&] { ek_nl_write(pos, P, Q, n, wrap, bin, bstart, members, offsets, ssrc, sdst, sshift); }); }
extern "C" void run_order(const double* pos, const double* P, unsigned e, const unsigned* offsets,
    const unsigned* ssrc, const unsigned* sdst, const long long* sshift, unsigned* src,
    unsigned* dst, long long* shift, double* vec, unsigned g) {
  ek_grid(g, [&] { ek_nl_order(pos, P, e, offsets, ssrc, sdst, sshift, src, dst, shift, vec); }); }
"#;

type FBounds = unsafe extern "C" fn(*const f64, *const f64, *const i64, u32, *mut u64, u32);
type FBin = unsafe extern "C" fn(
    *const f64,
    *const f64,
    *const i64,
    u32,
    *mut i64,
    *mut u32,
    *mut u32,
    u32,
);
type FScan = unsafe extern "C" fn(*const u32, *mut u32, u32, *mut u64, u32);
type FFill = unsafe extern "C" fn(*const u32, *const u32, u32, *mut u32, *mut u32, u32);
type FSort = unsafe extern "C" fn(*const u32, u32, *mut u32, u32);
type FCount = unsafe extern "C" fn(
    *const f64,
    *const f64,
    *const i64,
    u32,
    *const i64,
    *const u32,
    *const u32,
    *const u32,
    *mut u32,
    u32,
);
type FWrite = unsafe extern "C" fn(
    *const f64,
    *const f64,
    *const i64,
    u32,
    *const i64,
    *const u32,
    *const u32,
    *const u32,
    *const u32,
    *mut u32,
    *mut u32,
    *mut i64,
    u32,
);
type FOrder = unsafe extern "C" fn(
    *const f64,
    *const f64,
    u32,
    *const u32,
    *const u32,
    *const u32,
    *const i64,
    *mut u32,
    *mut u32,
    *mut i64,
    *mut f64,
    u32,
);

struct Emu {
    _lib: libloading::Library,
    bounds: FBounds,
    bin: FBin,
    scan: FScan,
    fill: FFill,
    sort_bins: FSort,
    count: FCount,
    write: FWrite,
    order: FOrder,
}

fn build_lib(dir: &Path) -> Option<Emu> {
    let ok = Command::new("g++")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return None;
    }
    let cpp = dir.join("nl.cpp");
    let so = dir.join("nl.so");
    std::fs::write(
        &cpp,
        format!("{SHIM}\n#define EK_BLOCK {BLOCK}u\n{SOURCE}\n{LAUNCH}"),
    )
    .unwrap();
    let o = Command::new("g++")
        .args([
            "-std=c++20",
            "-O2",
            "-ffp-contract=off",
            "-shared",
            "-fPIC",
            "-pthread",
            "-Wall",
            "-o",
        ])
        .arg(&so)
        .arg(&cpp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // SAFETY: a library just built from the source above; no initialisers.
    unsafe {
        let lib = libloading::Library::new(&so).unwrap();
        macro_rules! sym {
            ($n:literal) => {
                *lib.get($n).unwrap()
            };
        }
        Some(Emu {
            bounds: sym!(b"run_bounds"),
            bin: sym!(b"run_bin"),
            scan: sym!(b"run_scan"),
            fill: sym!(b"run_fill"),
            sort_bins: sym!(b"run_sort_bins"),
            count: sym!(b"run_count"),
            write: sym!(b"run_write"),
            order: sym!(b"run_order"),
            _lib: lib,
        })
    }
}

const POISON: u32 = 0xdead_beef;

/// How a build is emulated: `max_blocks` caps the grids (grid-stride loops then take several
/// turns), `max_bins` is the bin budget, `scan_threads` the scan's block (the device's
/// `SCAN_THREADS`, or fewer: one OS thread each).
#[derive(Clone, Copy)]
struct Run {
    max_blocks: u32,
    max_bins: Option<u64>,
    scan_threads: u32,
}

/// What the device does.
const DEVICE: Run = Run {
    max_blocks: u32::MAX,
    max_bins: None,
    scan_threads: SCAN_THREADS,
};

/// `CudaNeighbourList::build`'s launches, on the emulated device.
fn emulate(emu: &Emu, s: &Structure, cutoff: f64, run: Run) -> equikern_model::Result<Graph> {
    let Run {
        max_blocks,
        max_bins,
        scan_threads,
    } = run;
    s.validate()?;
    let setup = Setup::new(s.cell, s.pbc, cutoff)?;
    let n = s.positions.len();
    if n == 0 {
        return Ok(Graph::default());
    }
    let n32 = n as u32;
    let grid = |k: usize| (k.div_ceil(BLOCK as usize).clamp(1, 65535) as u32).min(max_blocks);
    let pos: Vec<f64> = s.positions.iter().flatten().copied().collect();
    let mut bounds = BOUNDS_INIT;
    if setup.needs_bounds() {
        let prm = setup.bounds_params();
        // SAFETY (all calls below): every buffer is at least as long as the device's.
        unsafe {
            (emu.bounds)(
                pos.as_ptr(),
                prm.p.as_ptr(),
                prm.q.as_ptr(),
                n32,
                bounds.as_mut_ptr(),
                grid(n),
            )
        };
    }
    let prm = setup.params(&bounds, max_bins.unwrap_or(bin_budget(n)))?;
    let (p, q) = (prm.p.as_ptr(), prm.q.as_ptr());
    let nb = prm.bins;
    let mut wrap = vec![i64::MIN; 3 * n];
    let mut bin = vec![POISON; n];
    let mut bcount = vec![0u32; nb];
    let mut bstart = vec![POISON; nb + 1];
    let mut total = [u64::MAX];
    let mut cursor = vec![0u32; nb];
    let mut members = vec![POISON; n];
    let mut counts = vec![POISON; n];
    let mut offsets = vec![POISON; n + 1];
    unsafe {
        (emu.bin)(
            pos.as_ptr(),
            p,
            q,
            n32,
            wrap.as_mut_ptr(),
            bin.as_mut_ptr(),
            bcount.as_mut_ptr(),
            grid(n),
        );
        (emu.scan)(
            bcount.as_ptr(),
            bstart.as_mut_ptr(),
            nb as u32,
            total.as_mut_ptr(),
            scan_threads,
        );
        assert_eq!(total[0], n as u64);
        (emu.fill)(
            bin.as_ptr(),
            bstart.as_ptr(),
            n32,
            cursor.as_mut_ptr(),
            members.as_mut_ptr(),
            grid(n),
        );
        (emu.sort_bins)(bstart.as_ptr(), nb as u32, members.as_mut_ptr(), grid(nb));
        (emu.count)(
            pos.as_ptr(),
            p,
            q,
            n32,
            wrap.as_ptr(),
            bin.as_ptr(),
            bstart.as_ptr(),
            members.as_ptr(),
            counts.as_mut_ptr(),
            grid(n),
        );
        (emu.scan)(
            counts.as_ptr(),
            offsets.as_mut_ptr(),
            n32,
            total.as_mut_ptr(),
            scan_threads,
        );
    }
    // bins hold their atoms in ascending order
    for b in 0..nb {
        let m = &members[bstart[b] as usize..bstart[b + 1] as usize];
        assert!(m.windows(2).all(|w| w[0] < w[1]), "bin {b}: {m:?}");
    }
    // the scan counts the lead edges; the list is them and their reverses
    let l = total[0] as usize;
    assert_eq!(offsets[n] as usize, l);
    let e = 2 * l;
    let mut ssrc = vec![POISON; l];
    let mut sdst = vec![POISON; l];
    let mut sshift = vec![i64::MIN; 3 * l];
    let mut src = vec![POISON; e];
    let mut dst = vec![POISON; e];
    let mut shift = vec![i64::MIN; 3 * e];
    let mut vec = vec![f64::NAN; 3 * e];
    if e > 0 {
        unsafe {
            (emu.write)(
                pos.as_ptr(),
                p,
                q,
                n32,
                wrap.as_ptr(),
                bin.as_ptr(),
                bstart.as_ptr(),
                members.as_ptr(),
                offsets.as_ptr(),
                ssrc.as_mut_ptr(),
                sdst.as_mut_ptr(),
                sshift.as_mut_ptr(),
                grid(n),
            );
            (emu.order)(
                pos.as_ptr(),
                p,
                l as u32,
                offsets.as_ptr(),
                ssrc.as_ptr(),
                sdst.as_ptr(),
                sshift.as_ptr(),
                src.as_mut_ptr(),
                dst.as_mut_ptr(),
                shift.as_mut_ptr(),
                vec.as_mut_ptr(),
                grid(l),
            );
        }
    }
    Ok(Graph {
        src: src.into_iter().map(|i| i as usize).collect(),
        dst: dst.into_iter().map(|j| j as usize).collect(),
        shift: shift.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
        vec: vec.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
        pairs: l,
    })
}

fn assert_same(name: &str, got: &Graph, want: &Graph) {
    assert_eq!(got.len(), want.len(), "{name}: edge count");
    assert_eq!(got.src, want.src, "{name}: centres");
    assert_eq!(got.dst, want.dst, "{name}: neighbours");
    assert_eq!(got.shift, want.shift, "{name}: shifts");
    assert_eq!(got.pairs, want.pairs, "{name}: pairs");
    let bits = |g: &Graph| -> Vec<[u64; 3]> { g.vec.iter().map(|v| v.map(f64::to_bits)).collect() };
    assert_eq!(bits(got), bits(want), "{name}: edge vectors");
}

fn lib_or_skip() -> Option<(Emu, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!(
        "equikern-nl-emu-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    match build_lib(&dir) {
        Some(e) => Some((e, dir)),
        None => {
            println!("skipped: no g++");
            None
        }
    }
}

#[test]
fn emulated_list_equals_the_host_list() {
    let Some((emu, dir)) = lib_or_skip() else {
        return;
    };
    let mut total = 0;
    for (name, s, rc) in cases() {
        let want = Graph::build(&s, rc).unwrap();
        // the device's launches (its 1024-thread scan: for the large cases only, as each
        // emulated thread is an OS thread), then fewer blocks (grid-stride turns), merged bins
        let scan_threads = if want.len() > 2000 { SCAN_THREADS } else { 32 };
        let got = emulate(
            &emu,
            &s,
            rc,
            Run {
                scan_threads,
                ..DEVICE
            },
        )
        .unwrap();
        assert_same(&name, &got, &want);
        let few = Run {
            max_blocks: 2,
            max_bins: Some(7),
            scan_threads: 8,
        };
        let got = emulate(&emu, &s, rc, few).unwrap();
        assert_same(&format!("{name} (2 blocks, 7 bins)"), &got, &want);
        total += want.len();
        println!(
            "{name}: {} atoms, {} edges, equal",
            s.positions.len(),
            want.len()
        );
    }
    assert!(total > 10_000, "the cases hold {total} edges");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn emulated_list_on_random_structures() {
    let Some((emu, dir)) = lib_or_skip() else {
        return;
    };
    let mut r = Lcg(2026);
    for case in 0..40 {
        // a random lattice: lengths 2–14 Å, shears up to half a length
        let mut cell = [[0.0; 3]; 3];
        for (k, row) in cell.iter_mut().enumerate() {
            row[k] = 2.0 + 12.0 * r.next();
            for (d, x) in row.iter_mut().enumerate() {
                if d != k {
                    *x = (r.next() - 0.5) * 0.5 * (2.0 + 10.0 * r.next());
                }
            }
        }
        let pbc = [r.next() < 0.7, r.next() < 0.7, r.next() < 0.7];
        let n = (r.next() * 90.0) as usize;
        let rc = 1.5 + 4.5 * r.next();
        let s = random(cell, pbc, n, -0.5, 1.5, 1000 + case);
        let name = format!("random {case}: {pbc:?} n={n} rc={rc:.2}");
        let want = Graph::build(&s, rc);
        let run = Run {
            max_blocks: 1 + (case as u32 % 3),
            max_bins: (case % 2 == 0).then_some(5),
            scan_threads: 16 << (case % 3),
        };
        let got = emulate(&emu, &s, rc, run);
        match (got, want) {
            (Ok(g), Ok(w)) => {
                assert_same(&name, &g, &w);
                assert!(g.is_empty() || g.paired(), "{name}: pair order");
                assert_same(&name, &g.sorted(), &Graph::build_all_pairs(&s, rc).unwrap());
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
            (a, b) => panic!(
                "{name}: emulated {:?} vs host {:?}",
                a.map(|g| g.len()),
                b.map(|g| g.len())
            ),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn emulated_errors_match_the_host() {
    let Some((emu, dir)) = lib_or_skip() else {
        return;
    };
    let si = equikern_model::systems::si_diamond(1);
    let flat = Structure {
        cell: [[5.43, 0.0, 0.0], [0.0, 5.43, 0.0], [0.0, 0.0, 0.0]],
        ..si.clone()
    };
    let thin = Structure {
        cell: [[1e-3, 0.0, 0.0], [0.0, 1e-3, 0.0], [0.0, 0.0, 1e-3]],
        positions: vec![[0.0; 3]],
        numbers: vec![14],
        pbc: [true; 3],
    };
    let nan = Structure {
        positions: vec![[f64::NAN, 0.0, 0.0]],
        numbers: vec![14],
        ..thin.clone()
    };
    for (name, s, rc) in [
        ("negative cutoff", &si, -1.0),
        ("nan cutoff", &si, f64::NAN),
        ("singular periodic cell", &flat, 5.0),
        ("cutoff spanning too many cells", &thin, 5.0),
        ("non-finite position", &nan, 5.0),
    ] {
        let a = emulate(&emu, s, rc, DEVICE).map(|g| g.len());
        let b = Graph::build(s, rc).map(|g| g.len());
        assert!(a.is_err() && b.is_err(), "{name}: {a:?} {b:?}");
        assert_eq!(
            a.unwrap_err().to_string(),
            b.unwrap_err().to_string(),
            "{name}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An offline check of the CUDA text as GPU code: it compiles as HIP for gfx90a with clang-15
/// (`-Wall -Werror`; HIP offers the same intrinsics and atomics). Skips where clang-15 or the
/// ROCm device libraries are missing, unless `REQUIRE_HIP_CHECK=1`.
#[test]
fn source_compiles_as_hip() {
    const BITCODE: &str = "/usr/lib/x86_64-linux-gnu/amdgcn/bitcode";
    let have = Command::new("clang++-15")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new(BITCODE).is_dir()
        && Path::new("/usr/include/hip/hip_runtime.h").is_file();
    if !have {
        assert_ne!(
            std::env::var("REQUIRE_HIP_CHECK").as_deref(),
            Ok("1"),
            "HIP check required but clang-15 / ROCm device libraries are missing"
        );
        println!("SKIP: clang-15 with the ROCm device libraries not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("equikern-nl-hip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("nl.hip");
    std::fs::write(&src, SOURCE).unwrap();
    let o = Command::new("clang++-15")
        .args([
            "-x",
            "hip",
            "--cuda-device-only",
            "--no-gpu-bundle-output",
            "--offload-arch=gfx90a",
            "-O3",
            "-std=c++17",
            "-Wall",
            "-Werror",
            "--rocm-path=/usr",
        ])
        .arg(format!("--rocm-device-lib-path={BITCODE}"))
        .args(["-include", "hip/hip_runtime.h", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(dir.join("nl.hsaco"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

/// sevenn's reference structures (its graph: ASE/matscipy's neighbour list at SevenNet-0's
/// 5 Å): the emulated list has sevenn's edge count and is the host's, edge for edge.
#[test]
fn emulated_list_on_sevenn_reference_structures() {
    let Some(refs) = common::sevenn_references() else {
        return;
    };
    let Some((emu, dir)) = lib_or_skip() else {
        return;
    };
    assert!(!refs.is_empty());
    for r in refs {
        let got = emulate(&emu, &r.structure, 5.0, DEVICE).unwrap();
        assert_eq!(got.len(), r.num_edges, "{}: sevenn's edge count", r.name);
        assert_same(&r.name, &got, &Graph::build(&r.structure, 5.0).unwrap());
        println!("{}: {} edges, as sevenn's", r.name, got.len());
    }
    let _ = std::fs::remove_dir_all(dir);
}
