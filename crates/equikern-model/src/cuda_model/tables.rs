//! Host side of the CUDA evaluator that needs no GPU: the kernel source with its generated
//! prelude, and the small integer tables the kernels read (Linear paths, Gate layout). The
//! CPU-emulation test (`tests/cuda_kernels_cpu.rs`) compiles exactly this source and these
//! tables as C++.

use super::radial_conv::RadialConvKernels;
use crate::error::{ModelError, Result};
use crate::nn::{FullyConnectedNet, Gate, Linear};
use crate::scalar::Scalar;
use crate::sevennet::SevenNet;
use std::fmt::Write as _;

/// The hand-written kernels (see the file's header).
pub const KERNELS_CU: &str = include_str!("kernels.cu");

/// Rows one `ek_linear` iteration computes (`EK_LIN_NODES`): a launch over `n` rows has
/// `ceil(n / LINEAR_ROWS) · LinearTable::cols` iterations.
pub const LINEAR_ROWS: usize = 4;

/// Output channels (`w`) one `ek_linear` iteration computes (`EK_LIN_COLS`).
pub const LINEAR_COLS: usize = 4;

/// Iterations of an `ek_gemm` launch for `C [m, n]` (its register tiles).
pub fn gemm_iterations(m: usize, n: usize) -> u64 {
    (m.div_ceil(LINEAR_ROWS) * n.div_ceil(LINEAR_COLS)) as u64
}

/// Threads per block of every launch (`cuda_model::BLOCK`; `EK_BLOCK`, the fused MLP
/// kernels' `__launch_bounds__`).
pub const BLOCK_THREADS: u32 = 256;
/// Shared-memory stages of `ek_gemm_tf32x3_nt_pipe`'s rings (per stage: each warp's 32 rows
/// × 32 columns of A, the block's chunk of the B pack: `NT_PIPE_STAGES − 1` chunks in
/// flight while one computes).
pub const NT_PIPE_STAGES: u32 = 4;
/// `ek_mlp_backward_tc_smem`'s dynamic shared memory per block: [`mlp_tc_pack`]'s 144 (k
/// step, n tile) pairs × 32 lanes × a float4.
pub const MLP_TC_PACK_BYTES: u32 = 144 * 32 * 16;
/// `ek_mlp_forward_tc_smem`'s: the pack's first 72 pairs (W1, W2).
pub const MLP_TC_PACK_FWD_BYTES: u32 = 72 * 32 * 16;
/// `ek_gemm_tf32x3_nt_pipe`'s dynamic shared memory per block: the rings of A and B
/// (192 KB: H100's 227 KB per block allow it, sm_86/89's 99 KB do not).
pub const NT_PIPE_SMEM_BYTES: u32 =
    NT_PIPE_STAGES * (BLOCK_THREADS / 32 * 32 * 32 + TC_CHUNK as u32) * 4;

/// Largest spherical-harmonics degree the edge kernels are generated for.
pub const MAX_SH_L: u32 = 6;

/// The spherical-harmonics recursion: `(start per l, (c, a, b) per entry, w per entry)`.
pub type ShSteps = (Vec<usize>, Vec<[i32; 3]>, Vec<f64>);

/// `(c, a, b, w)` of the recursion `Y^{l+1}_c += w · Y^l_a · u_b`, for `l < lmax`, with the
/// first entry of each `l` (`start[l]`, `start[lmax]` = total): the same table and order as
/// `equikern_core::so3::spherical_harmonics` (component normalisation).
pub fn sh_steps(lmax: u32) -> Result<ShSteps> {
    let mut start = vec![0];
    let mut cab = Vec::new();
    let mut w = Vec::new();
    for l in 0..lmax {
        let c = equikern_core::so3::wigner_3j(l + 1, l, 1)
            .map_err(|e| ModelError::Tp(format!("spherical harmonics l = {}: {e}", l + 1)))?;
        let k = f64::from(2 * l + 3).sqrt()
            / (f64::from(2 * l + 1).sqrt() * c.get(l as usize + 1, l as usize, 1));
        for &(i, j, b, v) in &c.nonzeros {
            cab.push([i as i32, j as i32, b as i32]);
            w.push(k * v);
        }
        start.push(cab.len());
    }
    Ok((start, cab, w))
}

/// The kernel source for `real` = `f32`/`f64` (by [`Scalar::NAME`]) and spherical harmonics
/// `0..=lmax`: a generated prelude (`real`, `EK_EXP`, the SH recursion table) + `kernels.cu`.
/// Constants depend on the model only, never on atom or edge counts.
pub fn kernel_source<T: Scalar>(lmax: u32) -> Result<String> {
    kernel_source_with::<T>(lmax, &MlpKernels::none::<T>())
}

/// [`kernel_source_with`] followed by the fused convolution backward's variants
/// ([`RadialConvKernels::source`]).
pub fn kernel_source_full<T: Scalar>(
    lmax: u32,
    mlp: &MlpKernels,
    rcb: &RadialConvKernels,
) -> Result<String> {
    let mut s = base_source::<T>(lmax, mlp)?;
    s.push_str(&rcb.source());
    Ok(s)
}

/// The kernel source of `model` in `T`: [`kernel_source_with`] for the model's lmax and the
/// radial-MLP shapes of its layers ([`MlpKernels::of`]).
pub fn model_kernel_source<T: Scalar>(model: &SevenNet<T>) -> Result<String> {
    let lmax = model.sh_ls.iter().copied().max().unwrap_or(0);
    kernel_source_full::<T>(lmax, &MlpKernels::of(model), &RadialConvKernels::of(model))
}

/// [`kernel_source`] with the fused radial-MLP kernels (`ek_mlp_hidden`,
/// `ek_mlp_hidden_backward`) specialised on the hidden shapes of `mlp`.
/// (`ek_conv_radial_bwd` without variants.)
pub fn kernel_source_with<T: Scalar>(lmax: u32, mlp: &MlpKernels) -> Result<String> {
    kernel_source_full::<T>(lmax, mlp, &RadialConvKernels::none())
}

fn base_source<T: Scalar>(lmax: u32, mlp: &MlpKernels) -> Result<String> {
    if lmax > MAX_SH_L {
        return Err(ModelError::Unsupported(format!(
            "spherical harmonics up to l = {lmax}: the CUDA evaluator supports l ≤ {MAX_SH_L}"
        )));
    }
    let (start, cab, w) = sh_steps(lmax)?;
    let mut s = String::new();
    let (real, exp) = if T::NAME == "f64" {
        ("double", "exp")
    } else {
        ("float", "expf")
    };
    let _ = writeln!(s, "// generated prelude: dtype {} lmax {lmax}", T::NAME);
    let _ = writeln!(s, "typedef {real} real;");
    let _ = writeln!(s, "#define EK_EXP(x) {exp}(x)");
    if T::NAME == "f32" {
        let _ = writeln!(s, "#define EK_REAL_F32 1");
    }
    let _ = writeln!(s, "#define EK_SH_LMAX {lmax}");
    let _ = writeln!(s, "#define EK_LIN_NODES {LINEAR_ROWS}");
    let _ = writeln!(s, "#define EK_LIN_COLS {LINEAR_COLS}");
    let _ = writeln!(s, "#define EK_BLOCK {BLOCK_THREADS}");
    let _ = writeln!(s, "#define EK_NTP_STAGES {NT_PIPE_STAGES}");
    mlp.prelude::<T>(&mut s)?;
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "0".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(
        s,
        "__constant__ int ek_sh_start[{}] = {{{}}};",
        start.len(),
        list(start.iter().map(|x| x.to_string()).collect())
    );
    let _ = writeln!(
        s,
        "__constant__ int ek_sh_cab[{}] = {{{}}};",
        (3 * cab.len()).max(1),
        list(cab.iter().flatten().map(|x| x.to_string()).collect())
    );
    let _ = writeln!(
        s,
        "__constant__ double ek_sh_w[{}] = {{{}}};",
        w.len().max(1),
        // `{:e}` prints the shortest representation that reads back exactly.
        list(w.iter().map(|x| format!("{x:e}")).collect())
    );
    s.push_str(KERNELS_CU);
    Ok(s)
}

/// A Linear (or its transpose) as `ek_linear` reads it: `tab` (blocks and paths, see
/// `kernels.cu`), per-path coefficients and the weights (`W`, or `Wᵀ` per path).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearTable {
    pub tab: Vec<i32>,
    pub coef: Vec<f64>,
    pub weight: Vec<f64>,
    pub dim_in: usize,
    pub dim_out: usize,
    /// Column groups of one row group (`ek_linear`'s `cols`): `Σ_blocks ceil(mul_out /
    /// LINEAR_COLS) · dim`.
    pub cols: usize,
    /// The same map as dense products, one per path (see [`KronGemm`]), in output-block
    /// order; `None` when some output block has no path (it must be written as zeros: the
    /// kernel does that).
    pub kron: Option<(Vec<KronGemm>, Vec<f64>)>,
}

/// One path of an e3nn Linear as a row-major product over the `mul_ir` layout:
/// `y[:, out_off .. out_off + n] (+)= alpha · x[:, in_off .. in_off + k] · K`, with
/// `K = W_path ⊗ I_dim` (`k = mul_in·dim`, `n = mul_out·dim`) stored at `k_off` of the kron
/// buffer and `alpha` = the path's coefficient. Multiplying by the identity's zeros costs
/// `dim` times the path's multiply-adds, but the whole linear becomes a few library
/// products (cuBLAS) instead of one hand-written kernel: measured 3.4 TFLOP/s for
/// `ek_linear` at 32 768 atoms on the H100.
#[derive(Clone, Debug, PartialEq)]
pub struct KronGemm {
    pub in_off: usize,
    pub out_off: usize,
    pub k: usize,
    pub n: usize,
    pub k_off: usize,
    pub coef: f64,
    /// The first product into its output block (overwrites; later ones accumulate).
    pub first: bool,
    /// The path itself (`ek_linear_path`, which skips the identity's zeros): irrep
    /// dimension, multiplicities, and its `[mul_in, mul_out]` weights' offset in
    /// [`LinearTable::weight`].
    pub dim: usize,
    pub mul_in: usize,
    pub mul_out: usize,
    pub w_off: usize,
}

/// Irrep dimensions `ek_linear_path<dim>` is compiled for (l = 1, 2, 3; `exec::Kern::
/// linear_path`).
pub const LINEAR_PATH_DIMS: [usize; 3] = [3, 5, 7];

/// Output channels one `ek_linear_path` iteration computes (`EK_LP_TN`).
pub const LINEAR_PATH_COLS: usize = 8;

/// Iterations of an `ek_linear_path` launch over `nodes` rows into `mul_out` channels
/// (`ek_lp_iterations`): warps of column groups × nodes.
pub fn linear_path_iterations(nodes: usize, mul_out: usize) -> u64 {
    let cgs = mul_out.div_ceil(LINEAR_PATH_COLS);
    let lc = match cgs {
        8.. => 8,
        4..=7 => 4,
        2..=3 => 2,
        _ => 1,
    };
    (nodes.div_ceil(32 / lc) * cgs.div_ceil(lc) * 32) as u64
}

/// Kronecker products `W ⊗ I_dim` of `paths` (each with `w(a, b)`, its weight from source
/// row `a` to target row `b`), grouped by output block (`blocks`: offsets of the nonzero
/// output blocks in order); `None` if a block has no path.
#[allow(clippy::type_complexity)]
fn kron_gemms(
    blocks: &[usize],
    paths: &[(&Oriented, Box<dyn Fn(usize, usize) -> f64 + '_>)],
) -> Option<(Vec<KronGemm>, Vec<f64>)> {
    let mut out = Vec::new();
    let mut kron = Vec::new();
    for &b in blocks {
        let mut first = true;
        for (p, w) in paths.iter().filter(|p| p.0.dst == b) {
            let (mi, mo, dim) = (p.mul_src, p.mul_dst, p.dim);
            let (k, n) = (mi * dim, mo * dim);
            let k_off = kron.len();
            kron.resize(k_off + k * n, 0.0);
            for u in 0..mi {
                for v in 0..mo {
                    let wv = w(u, v);
                    for m in 0..dim {
                        kron[k_off + (u * dim + m) * n + v * dim + m] = wv;
                    }
                }
            }
            out.push(KronGemm {
                in_off: p.src,
                out_off: p.dst,
                k,
                n,
                k_off,
                coef: p.coef,
                first,
                dim,
                mul_in: mi,
                mul_out: mo,
                w_off: p.w_off,
            });
            first = false;
        }
        if first {
            return None;
        }
    }
    Some((out, kron))
}

/// Column groups of a table's blocks (see [`LinearTable::cols`]).
fn column_groups(blocks: &[(usize, usize, usize)]) -> usize {
    blocks
        .iter()
        .map(|&(_, mul, dim)| mul.div_ceil(LINEAR_COLS) * dim)
        .sum()
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| ModelError::Unsupported(format!("{what} {v} exceeds i32")))
}

/// One path of a Linear seen from the side being computed: reads input block `src` (`mul_src`
/// rows), writes output block `dst` (`mul_dst` rows), weight `w(u_src, u_dst)` at `w_off`.
struct Oriented {
    src: usize,
    dst: usize,
    mul_src: usize,
    mul_dst: usize,
    dim: usize,
    w_off: usize,
    coef: f64,
}

impl LinearTable {
    /// `y = Linear(x)`.
    pub fn forward<T: Scalar>(l: &Linear<T>) -> Result<Self> {
        Self::build(l, false)
    }

    /// `gx = Linearᵀ(gy)` (the backward: the map is linear), with `Wᵀ` per path.
    pub fn transpose<T: Scalar>(l: &Linear<T>) -> Result<Self> {
        Self::build(l, true)
    }

    /// The table of `l` (`transpose`: of its transpose, every path read backwards with its
    /// weight block transposed, `w[p, dst, src]`).
    fn build<T: Scalar>(l: &Linear<T>, transpose: bool) -> Result<Self> {
        let paths: Vec<Oriented> = l
            .paths()
            .into_iter()
            .filter(|p| p.mul_in > 0 && p.mul_out > 0)
            .map(|p| {
                let (src, dst, mul_src, mul_dst) = if transpose {
                    (p.out_off, p.in_off, p.mul_out, p.mul_in)
                } else {
                    (p.in_off, p.out_off, p.mul_in, p.mul_out)
                };
                Oriented {
                    src,
                    dst,
                    mul_src,
                    mul_dst,
                    dim: p.dim,
                    w_off: p.w_off,
                    coef: p.coef.to_f64(),
                }
            })
            .collect();
        // weight(p, a, b): the forward weight of row a of the source, row b of the target.
        let weight_at = |p: &Oriented, a: usize, b: usize| -> f64 {
            let (u, w, mul_out) = if transpose {
                (b, a, p.mul_src)
            } else {
                (a, b, p.mul_dst)
            };
            l.weight[p.w_off + u * mul_out + w].to_f64()
        };
        let out_irreps = if transpose {
            &l.irreps_in
        } else {
            &l.irreps_out
        };
        let blocks: Vec<(usize, usize, usize)> = out_irreps
            .iter()
            .zip(out_irreps.slices())
            .filter(|(m, _)| m.mul > 0)
            .map(|(m, s)| (s.start, m.mul, m.ir.dim()))
            .collect();
        // `ek_linear` reads each path's weights as [mul_src, mul_dst] from its offset.
        let mut weight = vec![0.0; l.weight.len()];
        for p in &paths {
            for a in 0..p.mul_src {
                for b in 0..p.mul_dst {
                    weight[p.w_off + a * p.mul_dst + b] = weight_at(p, a, b);
                }
            }
        }
        let mut tab = vec![i32_of(blocks.len(), "blocks")?];
        let mut ptab = Vec::new();
        let mut coef = Vec::new();
        for &(off, mul, dim) in &blocks {
            let first = coef.len();
            for p in paths.iter().filter(|p| p.dst == off) {
                ptab.extend([
                    i32_of(p.src, "offset")?,
                    i32_of(p.mul_src, "mul")?,
                    i32_of(p.w_off, "weight offset")?,
                ]);
                coef.push(p.coef);
            }
            tab.extend([
                i32_of(off, "offset")?,
                i32_of(mul, "mul")?,
                i32_of(dim, "dim")?,
                i32_of(first, "path")?,
                i32_of(coef.len() - first, "paths")?,
            ]);
        }
        tab.extend(ptab);
        let kp: Vec<_> = paths
            .iter()
            .map(|p| {
                let f: Box<dyn Fn(usize, usize) -> f64 + '_> =
                    Box::new(move |a, b| weight_at(p, a, b));
                (p, f)
            })
            .collect();
        let offs: Vec<usize> = blocks.iter().map(|b| b.0).collect();
        let (dim_in, dim_out) = if transpose {
            (l.dim_out, l.dim_in)
        } else {
            (l.dim_in, l.dim_out)
        };
        Ok(LinearTable {
            tab,
            coef,
            weight,
            dim_in,
            dim_out,
            cols: column_groups(&blocks),
            kron: kron_gemms(&offs, &kp),
        })
    }
}

/// A Gate as `ek_gate` reads it: `(ns, ng, [nblocks, (mul, d)...], din, dout)`.
#[derive(Clone, Debug, PartialEq)]
pub struct GateTable {
    pub ns: i32,
    pub ng: i32,
    pub tab: Vec<i32>,
    pub din: i32,
    pub dout: i32,
}

impl GateTable {
    pub fn new<T: Scalar>(g: &Gate<T>) -> Result<Self> {
        let mut tab = vec![i32_of(g.gated.len(), "gated blocks")?];
        for &(mul, d) in &g.gated {
            tab.extend([i32_of(mul, "mul")?, i32_of(d, "dim")?]);
        }
        let ng: usize = g.gated.iter().map(|x| x.0).sum();
        Ok(GateTable {
            ns: i32_of(g.n_scalars, "scalars")?,
            ng: i32_of(ng, "gates")?,
            tab,
            din: i32_of(g.dim_in, "gate input")?,
            dout: i32_of(g.dim_out, "gate output")?,
        })
    }
}

/// `x` rounded to TF32 (10 mantissa bits, nearest; `ek_tf32` of kernels.cu).
pub fn tf32(x: f32) -> f32 {
    f32::from_bits((x.to_bits().wrapping_add(0x1000)) & 0xffff_e000)
}

/// `B [k, n]` (row-major) as the `[3k, n]` right factor of the 3xTF32 product
/// `[a_hi | a_hi | a_lo] · [b_hi ; b_lo ; b_hi]`.
pub fn tf32x3_right(b: &[f32], k: usize, n: usize) -> Vec<f32> {
    let hi: Vec<f32> = b[..k * n].iter().map(|&v| tf32(v)).collect();
    let lo: Vec<f32> = b[..k * n]
        .iter()
        .zip(&hi)
        .map(|(&v, &h)| tf32(v - h))
        .collect();
    [hi.as_slice(), lo.as_slice(), hi.as_slice()].concat()
}

/// `B [k, n]` (row-major; `k`, `n` multiples of 8) as `ek_radial_last_tf32x3` loads it: per
/// 8-column tile `c`, 8-deep step `s` and lane `l` (`g = l / 4`, `t = l % 4`) the four
/// values `hi(B[8s+t][8c+g])`, `hi(B[8s+t+4][8c+g])`, `lo(B[8s+t][8c+g])`,
/// `lo(B[8s+t+4][8c+g])` (the `mma.sync` m16n8k8 B fragments of both TF32 parts), i.e.
/// `[n/8][k/8][32][4]`.
pub fn tf32x3_mma_fragments(b: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(2 * k * n);
    for c in 0..n / 8 {
        for s in 0..k / 8 {
            for l in 0..32 {
                let (g, t) = (l / 4, l % 4);
                let col = 8 * c + g;
                let (v0, v1) = (b[(8 * s + t) * n + col], b[(8 * s + t + 4) * n + col]);
                let (h0, h1) = (tf32(v0), tf32(v1));
                out.extend([h0, h1, tf32(v0 - h0), tf32(v1 - h1)]);
            }
        }
    }
    out
}

/// Columns (`n`) `ek_gemm_tf32x3_nt` computes: the right factor `B [n, k]` needs `n ≤` this.
pub const TC_MAX_N: usize = 64;

/// `k` per chunk of `ek_gemm_tf32x3_nt` (four `m16n8k8` steps).
pub const TC_KC: usize = 32;

/// Floats of one chunk of the [`tf32x3_nt_pack`]: 4 k steps × 8 n-tiles × 32 lanes × 4.
pub const TC_CHUNK: usize = 4096;

/// The position in a `k` chunk of `ek_gemm_tf32x3_nt`'s k step `s` (0..4), fragment column
/// `c` (0..8): lane `t = c % 4` holds the chunk's `4t..4t+4` and `16+4t..16+4t+4` (two 16-byte
/// loads per row) and k step `s` uses its values `2s` (column `t`) and `2s + 1` (`t + 4`).
pub fn tc_k_order(s: usize, c: usize) -> usize {
    let t = c % 4;
    let idx = 2 * s + usize::from(c >= 4);
    if idx < 4 {
        4 * t + idx
    } else {
        16 + 4 * t + idx - 4
    }
}

/// `B [n, k]` (row-major, `n ≤ TC_MAX_N`) as `ek_gemm_tf32x3_nt` reads it: `ceil(k / 32)`
/// chunks of [`TC_CHUNK`] floats, per (k step `s`, n-tile `j`, lane `4g + t`) the four
/// values `[b0_hi, b1_hi, b0_lo, b1_lo]` with `b0 = B[8j + g, 32c + tc_k_order(s, t)]`,
/// `b1 = B[8j + g, 32c + tc_k_order(s, t + 4)]`, `hi = tf32(b)`, `lo = tf32(b − hi)`; zeros
/// past `n` and `k`. `lo_terms = false` zeroes every `lo` (tests: the product without
/// `A_hi · B_lo`).
pub fn tf32x3_nt_pack(b: &[f32], n: usize, k: usize, lo_terms: bool) -> Result<Vec<f32>> {
    if n == 0 || n > TC_MAX_N {
        return Err(ModelError::Unsupported(format!(
            "tf32x3_nt_pack: n = {n} columns (1..={TC_MAX_N})"
        )));
    }
    if k == 0 || b.len() < n * k {
        return Err(ModelError::input(
            "tf32x3_nt_pack",
            format!("B of {} values for n = {n}, k = {k}", b.len()),
        ));
    }
    let chunks = k.div_ceil(TC_KC);
    let mut out = vec![0.0f32; chunks * TC_CHUNK];
    for ch in 0..chunks {
        for s in 0..4 {
            for j in 0..8 {
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    let row = 8 * j + g;
                    let base = ch * TC_CHUNK + ((s * 8 + j) * 32 + lane) * 4;
                    for (q, c) in [(0, t), (1, t + 4)] {
                        let kk = ch * TC_KC + tc_k_order(s, c);
                        let v = if row < n && kk < k {
                            b[row * k + kk]
                        } else {
                            0.0
                        };
                        let hi = tf32(v);
                        out[base + q] = hi;
                        out[base + 2 + q] = if lo_terms { tf32(v - hi) } else { 0.0 };
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Hidden widths `ek_mlp_backward_tc` takes: `[nb ≤ 8, 64, 64]`.
pub fn mlp_tc_fits(widths: &[usize]) -> bool {
    matches!(widths, [nb, 64, 64] if (1..=8).contains(nb))
}

/// `ek_mlp_backward_tc`'s right factors from a radial MLP with hidden widths `[nb ≤ 8, 64,
/// 64]` (`layers[0]`: `W1 [nb, 64]`, `layers[1]`: `W2 [64, 64]`): `W1 / √nb` (k padded to 8,
/// one k step × 8 n tiles), `W2 / 8` (8 × 8), `W2ᵀ / 8` (8 × 8), `W1ᵀ / √nb` (8 k steps × one
/// n tile, n padded to 8), each (k step, n tile) as 32 lanes' `[b0 hi, b1 hi, b0 lo, b1 lo]`
/// with `b0 = B[8ks + t, 8nt + g]`, `b1 = B[8ks + t + 4, 8nt + g]` (lane `4g + t`, the PTX
/// m16n8k8 B layout), `hi = tf32(b)`, `lo = tf32(b − hi)`. `Err` names another shape.
pub fn mlp_tc_pack<T: Scalar>(net: &FullyConnectedNet<T>) -> Result<Vec<f32>> {
    let widths = mlp_hidden_shape(net).map_err(ModelError::Unsupported)?;
    if !mlp_tc_fits(&widths) {
        return Err(ModelError::Unsupported(format!(
            "ek_mlp_backward_tc: hidden widths {widths:?} (needs [nb <= 8, 64, 64])"
        )));
    }
    let nb = widths[0];
    let (w1, w2) = (&net.layers[0].2, &net.layers[1].2);
    let s1 = 1.0 / (nb as f64).sqrt();
    let s2 = 1.0 / 8.0;
    // B [k, n] of each factor as a function (zero outside the weights)
    let b_w1 = |k: usize, n: usize| {
        if k < nb {
            w1[k * 64 + n].to_f64() * s1
        } else {
            0.0
        }
    };
    let b_w2 = |k: usize, n: usize| w2[k * 64 + n].to_f64() * s2;
    let b_w2t = |k: usize, n: usize| w2[n * 64 + k].to_f64() * s2;
    let b_w1t = |k: usize, n: usize| {
        if n < nb {
            w1[n * 64 + k].to_f64() * s1
        } else {
            0.0
        }
    };
    let mut out = Vec::with_capacity(144 * 32 * 4);
    let mut push = |ksteps: usize, ntiles: usize, b: &dyn Fn(usize, usize) -> f64| {
        for ks in 0..ksteps {
            for nt in 0..ntiles {
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    let b0 = b(8 * ks + t, 8 * nt + g) as f32;
                    let b1 = b(8 * ks + t + 4, 8 * nt + g) as f32;
                    let (h0, h1) = (tf32(b0), tf32(b1));
                    out.extend_from_slice(&[h0, h1, tf32(b0 - h0), tf32(b1 - h1)]);
                }
            }
        }
    };
    push(1, 8, &b_w1);
    push(8, 8, &b_w2);
    push(8, 8, &b_w2t);
    push(8, 1, &b_w1t);
    Ok(out)
}

/// Threads of an `ek_mlp_backward_tc` launch over `edges`: a warp per 16 edges.
pub fn mlp_tc_iterations(edges: usize) -> u64 {
    (edges.div_ceil(16) * 32) as u64
}

/// Iterations (threads) of an `ek_gemm_tf32x3_nt` launch for `m` rows: one CTA of
/// [`BLOCK_THREADS`] threads per as many rows.
pub fn tc_gemm_iterations(m: usize) -> u64 {
    (m.div_ceil(BLOCK_THREADS as usize) * BLOCK_THREADS as usize) as u64
}

/// The 3xTF32 right factors of a Linear's products ([`KronGemm`]s over the `kron` buffer):
/// product `i`'s `K [k, n]` (in f32) as `[K_hi; K_lo; K_hi]` (`[3k, n]`,
/// [`tf32x3_right`]) from element `off[i]` of the returned buffer, one after the other.
/// `Err` names a product that reaches past `kron`.
pub fn kron_tf32x3_right(gemms: &[KronGemm], kron: &[f64]) -> Result<(Vec<usize>, Vec<f32>)> {
    let mut off = Vec::with_capacity(gemms.len());
    let mut out = Vec::new();
    for (i, g) in gemms.iter().enumerate() {
        let k = kron.get(g.k_off..g.k_off + g.k * g.n).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "linear product {i}: K [{}, {}] at {} past the kron buffer ({})",
                g.k,
                g.n,
                g.k_off,
                kron.len()
            ))
        })?;
        let k32: Vec<f32> = k.iter().map(|&v| v as f32).collect();
        off.push(out.len());
        out.extend(tf32x3_right(&k32, g.k, g.n));
    }
    Ok((off, out))
}

/// Floats of the input rows in one of `ek_linear_tc`'s stages (`EK_LTC_A`).
pub const LINEAR_TC_STAGE: usize = 4608;

/// Floats of one `ek_linear_tc` stage: the input rows and a chunk of the B pack (4 k steps ×
/// 8 n tiles × 32 lanes × a float4); `EK_LTC_STAGE`.
const LINEAR_TC_STAGE_FLOATS: usize = LINEAR_TC_STAGE + 4 * 8 * 32 * 4;

/// `ek_linear_tc`'s ring of stages (`EK_LTC_STAGES`).
const LINEAR_TC_STAGES: usize = 3;

/// `ek_linear_tc`'s dynamic shared memory per block (its ring; the output tile reuses it):
/// 104,448 bytes, two blocks per SM on sm_80/90.
pub const LINEAR_TC_SMEM_BYTES: u32 = (LINEAR_TC_STAGES * LINEAR_TC_STAGE_FLOATS * 4) as u32;

/// Input channels per stage of `ek_linear_tc` (its k chunk).
const LINEAR_TC_KC: usize = 32;

/// Output channels per `ek_linear_tc` job (a column tile: 8 n tiles of 8).
const LINEAR_TC_COLS: usize = 64;

/// `ek_linear_tc`'s row padding (`ek_ltc_pad`): strides ≡ 4·dim (mod 32 words).
fn linear_tc_pad(dim: usize) -> usize {
    (4 * dim) & 31
}

/// Nodes per block item of `ek_linear_tc` for blocks of irrep dimension `dim`: 16 per warp
/// and component, as many 16-node sub-tiles as fill the block's 8 warps, if the input stage
/// and the output tile fit; `None` beyond (dim > 8: the host keeps the library products).
pub fn linear_tc_nodes(dim: usize) -> Option<usize> {
    let warps = (BLOCK_THREADS / 32) as usize;
    if dim == 0 || dim > warps {
        return None;
    }
    let nb = 16 * (warps / dim);
    let stage = nb * (LINEAR_TC_KC * dim + linear_tc_pad(dim));
    let tile = nb * (LINEAR_TC_COLS * dim + linear_tc_pad(dim));
    (stage <= LINEAR_TC_STAGE && tile <= LINEAR_TC_STAGES * LINEAR_TC_STAGE_FLOATS).then_some(nb)
}

/// A Linear as `ek_linear_tc` runs it (see kernels.cu): the job and path table, the B pack
/// (`coef · W` per path, per k step, n tile and lane the float4 `hi(b0), hi(b1), lo(b0),
/// lo(b1)` of `b0 = B[8s + t][8c + g]`, `b1 = B[8s + t + 4][8c + g]`; k steps padded to
/// whole 32-channel chunks and n tiles to whole 64-column tiles, with zeros) and each job's
/// nodes per item.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearTc {
    pub tab: Vec<i32>,
    pub pack: Vec<f32>,
    pub nodes_per_item: Vec<usize>,
}

impl LinearTc {
    /// Jobs in the table.
    pub fn jobs(&self) -> usize {
        self.nodes_per_item.len()
    }

    /// Grid-stride iterations of a launch over `nodes` rows: a block per item.
    pub fn iterations(&self, nodes: usize) -> u64 {
        Self::iterations_of(&self.nodes_per_item, nodes)
    }

    /// [`Self::iterations`] from the jobs' nodes per item.
    pub fn iterations_of(nodes_per_item: &[usize], nodes: usize) -> u64 {
        let items: usize = nodes_per_item.iter().map(|&nb| nodes.div_ceil(nb)).sum();
        (items * BLOCK_THREADS as usize) as u64
    }

    /// The table of the products `gemms` (in output-block order, [`LinearTable::kron`]) over
    /// the `kron` buffer (the path weights are read back from `W ⊗ I` at `m = 0`); `None`
    /// if some block's dimension has no [`linear_tc_nodes`].
    pub fn new(gemms: &[KronGemm], kron: &[f64]) -> Result<Option<Self>> {
        let mut jobs: Vec<[i32; 8]> = Vec::new();
        let mut paths: Vec<[i32; 4]> = Vec::new();
        let mut pack: Vec<f32> = Vec::new();
        let mut nodes_per_item = Vec::new();
        let mut i = 0;
        while i < gemms.len() {
            let g0 = &gemms[i];
            let end = i + 1 + gemms[i + 1..].iter().take_while(|g| !g.first).count();
            let Some(nb) = linear_tc_nodes(g0.dim) else {
                return Ok(None);
            };
            let p0 = paths.len();
            for (j, g) in gemms[i..end].iter().enumerate() {
                if g.out_off != g0.out_off || g.dim != g0.dim || g.mul_out != g0.mul_out {
                    return Err(ModelError::Unsupported(format!(
                        "linear product {}: output block {} differs from its group's {}",
                        i + j,
                        g.out_off,
                        g0.out_off
                    )));
                }
                if kron.len() < g.k_off + g.k * g.n || g.k != g.mul_in * g.dim {
                    return Err(ModelError::Unsupported(format!(
                        "linear product {}: K [{}, {}] at {} past the kron buffer ({})",
                        i + j,
                        g.k,
                        g.n,
                        g.k_off,
                        kron.len()
                    )));
                }
                let w = |u: usize, v: usize| -> f32 {
                    if u < g.mul_in && v < g.mul_out {
                        (g.coef * kron[g.k_off + u * g.dim * g.n + v * g.dim]) as f32
                    } else {
                        0.0
                    }
                };
                let off = pack.len() / 4;
                for s in 0..4 * g.mul_in.div_ceil(LINEAR_TC_KC) {
                    for c in 0..8 * g.mul_out.div_ceil(LINEAR_TC_COLS) {
                        for l in 0..32 {
                            let (gg, t) = (l / 4, l % 4);
                            let (b0, b1) = (w(8 * s + t, 8 * c + gg), w(8 * s + t + 4, 8 * c + gg));
                            let (h0, h1) = (tf32(b0), tf32(b1));
                            pack.extend([h0, h1, tf32(b0 - h0), tf32(b1 - h1)]);
                        }
                    }
                }
                paths.push([
                    i32_of(g.in_off, "linear input offset")?,
                    i32_of(g.mul_in, "linear multiplicity")?,
                    i32_of(g.mul_out, "linear multiplicity")?,
                    i32_of(off, "linear pack offset")?,
                ]);
            }
            for v0 in (0..g0.mul_out).step_by(LINEAR_TC_COLS) {
                jobs.push([
                    i32_of(g0.out_off, "linear output offset")?,
                    g0.dim as i32,
                    v0 as i32,
                    (g0.mul_out - v0).min(LINEAR_TC_COLS) as i32,
                    nb as i32,
                    p0 as i32,
                    paths.len() as i32,
                    0,
                ]);
                nodes_per_item.push(nb);
            }
            i = end;
        }
        let mut tab: Vec<i32> = jobs.concat();
        tab.extend(paths.concat());
        Ok(Some(LinearTc {
            tab,
            pack,
            nodes_per_item,
        }))
    }
}

/// Widest radial-MLP layer (input or hidden) the fused kernels are generated for.
pub const MLP_MAX_WIDTH: usize = 128;

/// Static shared memory the staged hidden weights of one launch may take; beyond it the
/// kernels read them from global memory (uniform, L1-cached loads).
pub const MLP_SMEM_BYTES: usize = 40 << 10;

/// Elements per vector load of `real` (`float4`, `double2`: 16 bytes).
pub fn mlp_vector_width<T: Scalar>() -> usize {
    if T::NAME == "f32" {
        4
    } else {
        2
    }
}

/// The hidden part of a radial MLP as the fused kernels see it: widths `[nb, h1, …, hK]`
/// (`K ≥ 1` hidden layers, each `c · silu(x · W / √a)`; the last product stays a library
/// product). `Err` says why the net has no fused kernel.
pub fn mlp_hidden_shape<T: Scalar>(
    net: &FullyConnectedNet<T>,
) -> std::result::Result<Vec<usize>, String> {
    let k = net.layers.len().saturating_sub(1);
    if k == 0 {
        return Err("radial MLP without a hidden layer: the fused kernels need one".into());
    }
    let mut w = vec![net.layers[0].0];
    w.extend(net.layers[..k].iter().map(|l| l.1));
    if let Some((i, v)) = w
        .iter()
        .enumerate()
        .find(|(_, v)| **v == 0 || **v > MLP_MAX_WIDTH)
    {
        let what = if i == 0 {
            "input width".to_string()
        } else {
            format!("hidden layer {i} width")
        };
        return Err(format!(
            "radial MLP {what} {v}: the fused kernels support 1..={MLP_MAX_WIDTH}"
        ));
    }
    Ok(w)
}

/// The hidden weights of `net` as the fused kernels read them: hidden layer `k` (`a` → `b`)
/// as `[a][bp]` row-major, `bp` = `b` rounded up to the vector width `vw` (zero padding),
/// scaled by `1/√a`; layers one after the other (every offset a multiple of `vw`).
pub fn mlp_pack<T: Scalar>(net: &FullyConnectedNet<T>, vw: usize) -> Vec<f64> {
    let k = net.layers.len().saturating_sub(1);
    let mut out = Vec::new();
    for (a, b, w) in &net.layers[..k] {
        let bp = b.div_ceil(vw) * vw;
        let s = 1.0 / (*a as f64).sqrt();
        for i in 0..*a {
            for j in 0..bp {
                out.push(if j < *b {
                    w[i * b + j].to_f64() * s
                } else {
                    0.0
                });
            }
        }
    }
    out
}

/// Length of [`mlp_pack`]'s output for hidden widths `w`.
fn packed_len(w: &[usize], vw: usize) -> usize {
    w.windows(2).map(|p| p[0] * p[1].div_ceil(vw) * vw).sum()
}

/// The fused radial-MLP kernels of one kernel source: the distinct hidden shapes (`shape`
/// argument = index here), the vector width and whether the weights are staged in shared
/// memory (all shapes' packed weights within [`MLP_SMEM_BYTES`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MlpKernels {
    pub shapes: Vec<Vec<usize>>,
    pub vw: usize,
    pub smem: bool,
}

impl MlpKernels {
    /// No fused kernels (they exist and do nothing).
    pub fn none<T: Scalar>() -> Self {
        Self::new::<T>(vec![])
    }

    /// The given shapes (each `[nb, h1, …]`, validated when the source is generated),
    /// shared-memory staging where it fits.
    pub fn new<T: Scalar>(shapes: Vec<Vec<usize>>) -> Self {
        let vw = mlp_vector_width::<T>();
        let es = std::mem::size_of::<T>();
        let smem = shapes
            .iter()
            .all(|w| packed_len(w, vw) * es <= MLP_SMEM_BYTES);
        MlpKernels { shapes, vw, smem }
    }

    /// The distinct hidden shapes of `model`'s layers that the fused kernels support (the
    /// others, see [`mlp_hidden_shape`], get none: such a model runs the cuBLAS MLP only).
    pub fn of<T: Scalar>(model: &SevenNet<T>) -> Self {
        let mut shapes: Vec<Vec<usize>> = vec![];
        for l in &model.layers {
            if let Ok(w) = mlp_hidden_shape(&l.weight_nn) {
                if !shapes.contains(&w) {
                    shapes.push(w);
                }
            }
        }
        Self::new::<T>(shapes)
    }

    /// The `shape` argument for hidden widths `w`.
    pub fn index(&self, w: &[usize]) -> Option<usize> {
        self.shapes.iter().position(|s| s == w)
    }

    /// Packed weight elements of shape `s` (the `wlen` argument).
    pub fn packed_len(&self, s: usize) -> usize {
        packed_len(&self.shapes[s], self.vw)
    }

    /// `EK_MLP_SMEM_VECS` and the per-shape bodies of the two kernels (`EK_MLP_FWD_CASES`,
    /// `EK_MLP_BWD_CASES`: one `case` per shape, expanded inside `ek_mlp_hidden[_backward]`
    /// after the templates they call are defined).
    fn prelude<T: Scalar>(&self, s: &mut String) -> Result<()> {
        let vw = self.vw;
        if vw != mlp_vector_width::<T>() {
            return Err(ModelError::Unsupported(format!(
                "radial MLP kernels packed for vector width {vw}, dtype {} needs {}",
                T::NAME,
                mlp_vector_width::<T>()
            )));
        }
        for (i, w) in self.shapes.iter().enumerate() {
            if w.len() < 2 || w.iter().any(|v| *v == 0 || *v > MLP_MAX_WIDTH) {
                return Err(ModelError::Unsupported(format!(
                    "radial MLP shape {i} {w:?}: needs ≥ 1 hidden layer, widths 1..={MLP_MAX_WIDTH}"
                )));
            }
        }
        let vecs = if self.smem {
            (0..self.shapes.len())
                .map(|i| self.packed_len(i) / vw)
                .max()
                .unwrap_or(0)
        } else {
            0
        };
        let _ = writeln!(s, "#define EK_MLP_SMEM_VECS {vecs}");
        // Outputs per register chunk of the last hidden layer: forward 4 vectors
        // (`ek_mlp_last_fwd`), backward one (`ek_mlp_last_bwd` also holds the layer's input
        // and input gradient): f32 16 / 4, f64 8 / 2 (ptxas, sm_90: the fewest spills).
        let _ = writeln!(s, "#define EK_MLP_CH_FWD {}", 4 * vw);
        let _ = writeln!(s, "#define EK_MLP_CH_BWD {vw}");
        // the two-pass backward's first pass holds only h1 and the chunk
        let _ = writeln!(s, "#define EK_MLP_CH_BWD2 {}", 4 * vw);
        let mut fwd = String::new();
        let mut bwd = String::new();
        let mut bwd2 = String::new();
        for (i, w) in self.shapes.iter().enumerate() {
            let kk = w.len() - 1;
            // padded widths (inputs unpadded) and weight offsets of hidden layer k = 1..=K
            let p: Vec<usize> = (0..=kk)
                .map(|k| if k == 0 { w[0] } else { w[k].div_ceil(vw) * vw })
                .collect();
            let mut o = vec![0usize; kk + 1];
            for k in 1..kk {
                o[k + 1] = o[k] + w[k - 1] * p[k];
            }
            // x0 ← emb row; x1..x{upto} (full layers) in registers
            let chain = |upto: usize| {
                let mut c = format!(
                    "real x0[{}]; ek_mlp_load<{}>(emb + e * {}ull, x0); ",
                    w[0], w[0], w[0]
                );
                for k in 1..=upto {
                    let _ = write!(
                        c,
                        "real x{k}[{}]; ek_mlp_full<{}, {}>(x{}, W + {}, c, x{k}); ",
                        p[k],
                        w[k - 1],
                        p[k],
                        k - 1,
                        o[k]
                    );
                }
                c
            };
            let _ = write!(
                fwd,
                "case {i}: EK_FOR_WARP(e0, edges) {{ const u64 e = e0 < edges ? e0 : edges - 1; {}ek_mlp_last_fwd<{}, {}, {}, EK_MLP_CH_FWD>(x{}, W + {}, c, out, cat, e0, edges, tile); }} break; ",
                chain(kk - 1),
                w[kk - 1],
                w[kk],
                p[kk],
                kk - 1,
                o[kk],
            );
            let mut b = format!(
                "case {i}: EK_FOR(e, edges) {{ real g{}[{}]; {{ {}ek_mlp_last_bwd<{}, {}, {}, {}, EK_MLP_CH_BWD>(x{}, W + {}, c, g_last + e * {}ull, g{}); }} ",
                kk - 1,
                p[kk - 1],
                chain(kk - 1),
                w[kk - 1],
                p[kk - 1],
                w[kk],
                p[kk],
                kk - 1,
                o[kk],
                w[kk],
                kk - 1
            );
            for k in (1..kk).rev() {
                let _ = write!(
                    b,
                    "real g{}[{}]; {{ {}ek_mlp_mid_bwd<{}, {}, {}>(x{}, W + {}, c, g{k}, g{}); }} ",
                    k - 1,
                    p[k - 1],
                    chain(k - 1),
                    w[k - 1],
                    p[k - 1],
                    p[k],
                    k - 1,
                    o[k],
                    k - 1
                );
            }
            let _ = write!(
                b,
                "ek_mlp_store_grad<{}>(g_emb + e * {}ull, g0, accumulate); }} break; ",
                w[0], w[0]
            );
            if kk == 2 {
                // two passes through the g_last row (`ek_mlp_last_bwd_to_row`)
                let _ = write!(
                    bwd2,
                    "case {i}: EK_FOR(e, edges) {{ {{ {}ek_mlp_last_bwd_to_row<{}, {}, {}, EK_MLP_CH_BWD2>(x1, W + {}, c, g_last + e * {}ull); }} real g0[{}]; {{ real x0[{}]; ek_mlp_load<{}>(emb + e * {}ull, x0); ek_mlp_first_from_row<{}, {}, {}, {}, {}>(x0, W + {}, W + {}, c, g_last + e * {}ull, g0); }} ek_mlp_store_grad<{}>(g_emb + e * {}ull, g0, accumulate); }} break; ",
                    chain(1),
                    w[1],
                    w[2],
                    p[2],
                    o[2],
                    w[2],
                    w[0],
                    w[0],
                    w[0],
                    w[0],
                    w[0],
                    w[1],
                    p[1],
                    w[2],
                    p[2],
                    o[1],
                    o[2],
                    w[2],
                    w[0],
                    w[0]
                );
            } else {
                bwd2.push_str(&b);
            }
            bwd.push_str(&b);
        }
        let _ = writeln!(s, "#define EK_MLP_FWD_CASES {fwd}");
        let _ = writeln!(s, "#define EK_MLP_BWD_CASES {bwd}");
        let _ = writeln!(s, "#define EK_MLP_BWD2_CASES {bwd2}");
        Ok(())
    }
}
