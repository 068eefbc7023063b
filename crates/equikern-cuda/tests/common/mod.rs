//! Shared helpers: device-or-skip, specs for every connection mode, data, error norms.
#![allow(dead_code)]

use equikern_core::{ConnectionMode, Instruction, Irreps, TensorProduct, TpSpec};
use equikern_cuda::{CudaDevice, CudaError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The first CUDA device, or `None` after printing why the test is skipped.
pub fn device() -> Option<CudaDevice> {
    match CudaDevice::new(0) {
        Ok(d) => {
            // A private disk cache unless the caller names one (to observe cached compiles).
            let dir = std::env::var_os("EQUIKERN_CACHE_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("equikern-cuda-tests-{}", std::process::id()))
                });
            Some(d.with_cache_dir(Some(dir)))
        }
        Err(CudaError::NotAvailable(why)) => {
            println!("skipped: CUDA not available ({why})");
            None
        }
        Err(e) => panic!("CUDA present but unusable: {e}"),
    }
}

pub const MODES: [ConnectionMode; 8] = [
    ConnectionMode::Uvw,
    ConnectionMode::Uvu,
    ConnectionMode::Uvv,
    ConnectionMode::Uuw,
    ConnectionMode::Uuu,
    ConnectionMode::Uvuv,
    ConnectionMode::UvuLtV,
    ConnectionMode::ULtVw,
];

/// A small tensor product exercising `mode`: one output block per allowed `(i1, i2, l_out)`
/// (at most `max_paths`), with the multiplicity the mode dictates.
pub fn mode_spec(
    mode: ConnectionMode,
    weighted: bool,
    shared: bool,
    max_paths: usize,
) -> TensorProduct {
    use ConnectionMode::*;
    let in1 = Irreps::parse("3x0e+2x1o+2x2e").unwrap();
    let in2 = Irreps::parse("3x0e+2x1o+1x1e+2x2o").unwrap();
    let mut out = String::new();
    let mut ins = Vec::new();
    for (i1, a) in in1.iter().enumerate() {
        for (i2, b) in in2.iter().enumerate() {
            let (m1, m2) = (a.mul, b.mul);
            let same = matches!(mode, Uuw | Uuu | UvuLtV | ULtVw);
            if same && m1 != m2 {
                continue;
            }
            let mo = match mode {
                // Unweighted uuw sums into a single channel.
                Uuw if !weighted => 1,
                Uvw | Uuw | ULtVw => 2,
                Uvu | Uuu => m1,
                Uvv => m2,
                Uvuv => m1 * m2,
                UvuLtV => m1 * (m1 - 1) / 2,
            };
            if mo == 0 {
                continue;
            }
            for ir in a.ir.product(b.ir) {
                if ins.len() >= max_paths {
                    break;
                }
                if !out.is_empty() {
                    out.push('+');
                }
                out.push_str(&format!("{mo}x{ir}"));
                let w = weighted || mode.requires_weight();
                ins.push(
                    Instruction::new(i1, i2, ins.len(), mode, w)
                        .with_path_weight(0.5 + 0.25 * ins.len() as f64),
                );
            }
        }
    }
    TpSpec {
        irreps_in1: in1,
        irreps_in2: in2,
        irreps_out: Irreps::parse(&out).unwrap(),
        instructions: ins,
        shared_weights: shared,
        irrep_normalization: Default::default(),
        path_normalization: Default::default(),
    }
    .build()
    .unwrap()
}

pub fn rand_vec(n: usize, seed: u64) -> Vec<f64> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

pub fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&a| a as f32).collect()
}

/// ‖a − b‖ / ‖b‖ (0 when both are empty or zero).
pub fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Per-sample length of `w` as the oracle expects it.
pub fn w_len(tp: &TensorProduct, batch: usize) -> usize {
    if tp.spec.shared_weights {
        tp.weight_numel
    } else {
        batch * tp.weight_numel
    }
}

/// The paper-suite problems shipped with the tests.
pub fn paper_suite() -> Vec<(String, TensorProduct)> {
    let text = include_str!("../data/paper_suite.json");
    equikern_core::spec::load_suite(text)
        .unwrap()
        .into_iter()
        .map(|(label, spec)| (label, spec.build().unwrap()))
        .collect()
}

/// A NequIP-like all-`uvu` product with `m` channels (qualifies for the channel-fused
/// backward when `m >= 8`).
pub fn uvu_spec(m: usize, weighted: bool, shared: bool) -> TensorProduct {
    let ins = [
        (0, 0, 0, 1.0),
        (0, 1, 1, 1.0),
        (1, 0, 2, 0.5),
        (2, 1, 2, 1.0),
        (1, 2, 3, 2.0),
        (1, 1, 4, 1.0),
    ];
    TpSpec {
        irreps_in1: Irreps::parse(&format!("{m}x0e+{m}x1o+{m}x2e")).unwrap(),
        irreps_in2: Irreps::parse("1x0e+1x1o+1x2e").unwrap(),
        irreps_out: Irreps::parse(&format!("{m}x0e+{m}x1o+{m}x1o+{m}x2o+{m}x1e")).unwrap(),
        instructions: ins
            .iter()
            .map(|&(a, b, c, pw)| Instruction {
                i_in1: a,
                i_in2: b,
                i_out: c,
                mode: ConnectionMode::Uvu,
                has_weight: weighted,
                path_weight: pw,
            })
            .collect(),
        shared_weights: shared,
        irrep_normalization: Default::default(),
        path_normalization: Default::default(),
    }
    .build()
    .unwrap()
}

/// DiffDock-shaped (fully connected `uvw`, per-sample weights): `a` vectors and `b` scalars
/// per parity, `y = 0e + 1o`; lowered to the weight-staged kernels.
#[allow(dead_code)]
/// A `uvu` product whose `x` blocks have multiplicities `a`, `b`, `c` (`0e`, `1o`, `2e`;
/// each path's output block has its `x` block's), a mul-2 `y` block: with different
/// multiplicities its backward is a channel kernel of `max(a, b, c)` channels with guarded
/// rows (SevenNet-like); its forward and double backward stay on row kernels.
pub fn uvu_mixed_spec(a: usize, b: usize, c: usize, weighted: bool, shared: bool) -> TensorProduct {
    let ins = [
        (0, 0, 0, 1.0),
        (0, 1, 1, 1.0),
        (1, 0, 2, 0.5),
        (1, 2, 3, 2.0),
        (1, 1, 4, 1.0),
        (2, 1, 5, 1.0),
        (2, 0, 6, 0.5),
        (2, 2, 6, 1.0),
    ];
    TpSpec {
        irreps_in1: Irreps::parse(&format!("{a}x0e+{b}x1o+{c}x2e")).unwrap(),
        irreps_in2: Irreps::parse("2x0e+1x1o+1x2e").unwrap(),
        irreps_out: Irreps::parse(&format!("{a}x0e+{a}x1o+{b}x1o+{b}x2o+{b}x1e+{c}x1o+{c}x2e"))
            .unwrap(),
        instructions: ins
            .iter()
            .map(|&(i, j, k, pw)| Instruction {
                i_in1: i,
                i_in2: j,
                i_out: k,
                mode: ConnectionMode::Uvu,
                has_weight: weighted,
                path_weight: pw,
            })
            .collect(),
        shared_weights: shared,
        irrep_normalization: Default::default(),
        path_normalization: Default::default(),
    }
    .build()
    .unwrap()
}

pub fn uvw_staged_spec(a: usize, b: usize) -> TensorProduct {
    let ins = [
        (0, 0, 0),
        (0, 1, 1),
        (0, 1, 2),
        (1, 0, 1),
        (1, 1, 0),
        (1, 1, 3),
        (2, 0, 2),
        (2, 1, 0),
        (3, 0, 3),
        (3, 1, 1),
    ]
    .iter()
    .map(|&(x, y, o)| Instruction::new(x, y, o, ConnectionMode::Uvw, true))
    .collect();
    let irreps = format!("{a}x1o+{a}x1e+{b}x0e+{b}x0o");
    TpSpec {
        irreps_in1: Irreps::parse(&irreps).unwrap(),
        irreps_in2: Irreps::parse("1x0e+1x1o").unwrap(),
        irreps_out: Irreps::parse(&irreps).unwrap(),
        instructions: ins,
        shared_weights: false,
        irrep_normalization: Default::default(),
        path_normalization: Default::default(),
    }
    .build()
    .unwrap()
}
