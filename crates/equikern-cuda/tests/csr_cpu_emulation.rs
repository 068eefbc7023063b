//! The CUDA source of the device CSR builder (`CSR_SOURCE`), compiled as C++ with a host
//! harness that runs each launch's grid one thread at a time (the kernels are grid-stride
//! loops with independent iterations; `atomicMin` becomes a plain min), in the launch order of
//! `CudaDevice::build_csr_tables`, against `Csr::packed` element for element. Skips where no
//! C++ compiler (`c++`) is found. The GPU itself runs it in `tests/conv_cuda_api.rs` (root).

#[path = "../../equikern-core/tests/conv_common/mod.rs"]
mod conv_common;

use std::path::PathBuf;
use std::process::Command;

use equikern_core::conv::{Csr, End};
use equikern_core::graph::{diamond, radius_graph, random_skewed, SplitMix64, DIAMOND_A};

const HARNESS: &str = r#"#include <cstdio>
#include <vector>
struct ek_dim3 { unsigned x, y, z; };
static ek_dim3 blockIdx, gridDim, threadIdx, blockDim;
#define __global__
#define __restrict__
static unsigned atomicMin(unsigned* p, unsigned v) { unsigned o = *p; if (v < o) *p = v; return o; }
static unsigned atomicMax(unsigned* p, unsigned v) { unsigned o = *p; if (v > o) *p = v; return o; }
static unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p = o + v; return o; }
"#;

const MAIN: &str = r#"
template <class F> static void grid(unsigned long long n, F f) {
  unsigned long long b = (n + 255) / 256; if (b < 1) b = 1; if (b > 65535) b = 65535;
  gridDim.x = (unsigned)b; blockDim.x = 256;
  for (unsigned bx = 0; bx < b; ++bx) for (unsigned tx = 0; tx < 256; ++tx) {
    blockIdx.x = bx; threadIdx.x = tx; f();
  }
}
template <class F> static void grid_reversed(unsigned long long n, F f) {
  unsigned long long b = (n + 255) / 256; if (b < 1) b = 1; if (b > 65535) b = 65535;
  gridDim.x = (unsigned)b; blockDim.x = 256;
  for (unsigned bx = (unsigned)b; bx-- > 0;) for (unsigned tx = 256; tx-- > 0;) {
    blockIdx.x = bx; threadIdx.x = tx; f();
  }
}
// The host's launch order (`build_csr_tables`); `segmax` is its SEGMENT_SORT_MAX (the test
// also sets it low to run the bitonic fallback on the same graphs). With reversed = 1 the
// scatter's grid runs last thread first (another order of the cursor's atomics).
int main() {
  unsigned nodes, edges, segmax, reversed;
  if (scanf("%u %u %u %u", &nodes, &edges, &segmax, &reversed) != 4) return 2;
  std::vector<unsigned> r(edges + 1), s(edges + 1);
  for (unsigned i = 0; i < edges; ++i) if (scanf("%u", &r[i]) != 1) return 2;
  for (unsigned i = 0; i < edges; ++i) if (scanf("%u", &s[i]) != 1) return 2;
  size_t len = (size_t)nodes + 1 + 2 * (size_t)edges;
  std::vector<unsigned> views[2] = {std::vector<unsigned>(len), std::vector<unsigned>(len)};
  std::vector<unsigned> stat = {0xffffffffu, 0xffffffffu, 0u, 0u};
  unsigned chunks = (nodes + 255) / 256;
  std::vector<unsigned> counts(nodes ? nodes : 1), sums(chunks ? chunks : 1);
  for (unsigned which = 0; which < 2; ++which) {
    unsigned* key = which == 0 ? r.data() : s.data();
    unsigned* packed = views[which].data();
    std::fill(counts.begin(), counts.end(), 0u);
    grid(edges, [&] { ek_csr_count(key, counts.data(), stat.data(), nodes, edges, which); });
    grid(chunks, [&] { ek_csr_chunk_sums(counts.data(), sums.data(), &stat[2 + which], nodes); });
    grid(1, [&] { ek_csr_scan_sums(sums.data(), chunks); });
    grid((unsigned long long)chunks + 1, [&] { ek_csr_chunk_scan(counts.data(), sums.data(), packed, nodes, edges); });
  }
  printf("err %u %u\n", stat[0], stat[1]);
  if (stat[0] != 0xffffffffu || stat[1] != 0xffffffffu) return 0;
  for (unsigned which = 0; which < 2; ++which) {
    unsigned* key = which == 0 ? r.data() : s.data();
    unsigned* other = which == 0 ? s.data() : r.data();
    unsigned* packed = views[which].data();
    if (stat[2 + which] <= segmax) {
      std::fill(counts.begin(), counts.end(), 0u);
      if (reversed) grid_reversed(edges, [&] { ek_csr_scatter(key, counts.data(), packed, nodes, edges); });
      else grid(edges, [&] { ek_csr_scatter(key, counts.data(), packed, nodes, edges); });
      grid(nodes, [&] { ek_csr_segment_sort(other, packed, nodes, edges); });
    } else {
      unsigned long long padded = 1; while (padded < (edges ? edges : 1)) padded *= 2;
      unsigned n = (unsigned)padded;
      std::vector<unsigned> keys(padded), ids(padded), err(2, 0xffffffffu);
      grid(padded, [&] { ek_csr_init(key, other, keys.data(), ids.data(), err.data(), n, nodes, edges, which); });
      for (unsigned long long k = 2; k <= padded; k *= 2)
        for (unsigned long long j = k / 2; j >= 1; j /= 2)
          grid(padded, [&] { ek_csr_bitonic(keys.data(), ids.data(), n, (unsigned)j, (unsigned)k); });
      grid((unsigned long long)nodes + 1, [&] { ek_csr_offsets(keys.data(), packed, nodes, edges); });
      grid(edges, [&] { ek_csr_finish(ids.data(), other, packed, nodes, edges); });
    }
  }
  printf("maxdeg %u %u\n", stat[2], stat[3]);
  for (int v = 0; v < 2; ++v) { for (size_t i = 0; i < len; ++i) printf("%u ", views[v][i]); printf("\n"); }
  return 0;
}
"#;

fn compiler() -> Option<&'static str> {
    ["c++", "g++", "clang++"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn build(dir: &std::path::Path) -> Option<PathBuf> {
    let cxx = compiler()?;
    let src = dir.join("csr.cpp");
    std::fs::write(
        &src,
        format!("{HARNESS}{}{MAIN}", equikern_cuda::CSR_SOURCE),
    )
    .unwrap();
    let exe = dir.join("csr");
    let o = Command::new(cxx)
        .args(["-std=c++17", "-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some(exe)
}

/// Runs the emulated builder: `(err, [recv view, send view])`.
fn run(
    exe: &std::path::Path,
    nodes: usize,
    r: &[u32],
    s: &[u32],
    segmax: u32,
    reversed: bool,
) -> ([u32; 2], Vec<Vec<u32>>) {
    use std::io::Write;
    let mut input = format!("{nodes} {} {segmax} {}\n", r.len(), u8::from(reversed));
    for v in r.iter().chain(s) {
        input.push_str(&format!("{v} "));
    }
    let mut child = Command::new(exe)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let e: Vec<u32> = lines.next().unwrap()[4..]
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let views = lines
        .skip(1)
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect();
    ([e[0], e[1]], views)
}

#[test]
fn emulated_device_csr_equals_the_cpu_builder() {
    let dir = std::env::temp_dir().join(format!("equikern-csr-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(exe) = build(&dir) else {
        println!("skipped: no C++ compiler");
        return;
    };
    let (n, r, s) = conv_common::directed();
    let u = |v: Vec<i64>| v.into_iter().map(|a| a as u32).collect::<Vec<u32>>();
    let (rr, ss) = random_skewed(300, 7000, 1.3, 11).unwrap();
    let d = radius_graph(&diamond([3, 3, 3], DIAMOND_A), 3.0).unwrap();
    let mut idx: Vec<usize> = (0..d.receiver.len()).collect();
    let mut rng = SplitMix64(9);
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    let shuf = |v: &[u32]| idx.iter().map(|&i| v[i]).collect::<Vec<u32>>();
    let graphs: Vec<(&str, usize, Vec<u32>, Vec<u32>)> = vec![
        ("directed", n, u(r), u(s)),
        ("skewed", 300, rr, ss),
        ("diamond shuffled", 216, shuf(&d.receiver), shuf(&d.sender)),
        ("diamond", 216, d.receiver.clone(), d.sender.clone()),
        (
            "1000 nodes",
            1000,
            (0..5000).map(|e| (e * 7919) % 1000).collect(),
            (0..5000).map(|e| (e * 104_729 + 3) % 1000).collect(),
        ),
        ("isolated", 20, vec![3, 3, 1, 7, 3], vec![1, 7, 7, 3, 3]),
        ("empty", 4, vec![], vec![]),
    ];
    for (name, n, r, s) in graphs {
        let want = Csr::build(n, &r, &s).unwrap();
        // Counting sort (cursor atomics in two orders), and the bitonic fallback forced.
        for (segmax, reversed) in [(256, false), (256, true), (0, false)] {
            let (err, views) = run(&exe, n, &r, &s, segmax, reversed);
            let how = format!("{name}, segment-sort max {segmax}, reversed {reversed}");
            assert_eq!(err, [u32::MAX; 2], "{how}");
            assert_eq!(views[0], want.packed(End::Receiver), "{how}: receiver view");
            assert_eq!(views[1], want.packed(End::Sender), "{how}: sender view");
        }
        println!("{name}: {} edges, both views equal", r.len());
    }
    // The smallest bad position per array.
    let mut r: Vec<u32> = (0..100).map(|e| e % 7).collect();
    let mut s = r.clone();
    r[60] = 7;
    r[13] = 99;
    s[40] = 8;
    let (err, _) = run(&exe, 7, &r, &s, 256, false);
    assert_eq!(err, [13, 40]);
    let _ = std::fs::remove_dir_all(&dir);
}
