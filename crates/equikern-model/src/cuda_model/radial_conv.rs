//! The convolution backward with the radial network's last product fused in
//! (`ek_conv_radial_bwd`): the per-edge weights `w = α·h·W` and the input gradient of that
//! product `g_h = α·g_w·Wᵀ` never reach device memory.
//!
//! Why: unfused, each interaction layer's backward writes `w` `[E, b]` (the recomputed last
//! product), reads it in the convolution backward, writes `g_w` `[E, b]` there and reads it
//! again for `g_h`: four passes over `E·b` floats (SevenNet-0, `b = 960`: 440 MB each at Si
//! 4,096 atoms), ≈ 1.27 ms of a 9.2 ms step per layer on the H100 (session 15's profile).
//!
//! How (one launch per `x` block "group"; the groups run one after another, so the `g_y` and
//! `g_h` rows they share are written by the first and added to by the next, in a fixed
//! order): a warp owns a sender node (the `SendCsr` view, as the emitted backward) and walks
//! its edges 16 at a time — the rows of one `mma.m16n8k8` tile. Per path of the group and
//! slice of `8·nt` channels it computes the tile's `w` columns on tensor cores (3xTF32, `h`
//! split in registers, `W` from shared memory), does the path's terms on the `mma` result
//! fragments in place (a lane holds rows `g`, `g+8` and channels `2t`, `2t+1` of each n
//! tile), which leaves `g_w` in the same fragments, and multiplies them by `Wᵀ` into the
//! tile's `g_h` accumulators (a fragment's columns `2t, 2t+1` serve as the A operand's
//! `t, t+4`: the product sums over them, so `Wᵀ`'s rows are read in that order). `g_x`
//! partials are summed over the row lanes and kept per warp in shared memory until the
//! node's row is stored; `g_y` partials are summed over the four channel lanes of a row.
//!
//! This module holds the decisions (which layers qualify, groups, slice widths) in
//! [`RcbShape`] and prints them ([`RadialConvKernels::source`]); the evaluator launches.

use std::fmt::Write as _;

use equikern::plan::{
    lower_conv, Capabilities, ChannelPass, ChannelWork, ConvOptions, Direction, Dtype, Work,
};
use equikern::TensorProduct;

use crate::sevennet::SevenNet;
use crate::Scalar;

/// Most weight columns of one group (its `W` columns live in shared memory).
pub const RCB_MAX_COLS: usize = 384;
/// Most rows of `W` (the hidden width `a`).
pub const RCB_MAX_HIDDEN: usize = 64;
/// Floats per warp for the sender's `x` block row and its `g_x` accumulators (each).
pub const RCB_ROW_FLOATS: usize = 224;
/// Warps per block (the kernels' `EK_BLOCK` threads).
const RCB_WARPS: usize = super::tables::BLOCK_THREADS as usize / 32;
/// Dynamic shared memory of `ek_conv_radial_bwd`: `W` (`a × (C + 8)` floats at most) and per
/// warp the row and its accumulators; two blocks fit on an H100 SM.
pub const RCB_SMEM_BYTES: u32 =
    ((RCB_MAX_HIDDEN * (RCB_MAX_COLS + 8) + RCB_WARPS * 2 * RCB_ROW_FLOATS) * 4) as u32;

/// One path of a group: its weight columns, `y` and `g_z` blocks and CG terms (path
/// coefficient folded in), as the channel plan of the convolution backward gives them.
#[derive(Clone, Debug, PartialEq)]
pub struct RcbPath {
    pub w_offset: u32,
    pub y_offset: u32,
    pub y_len: u32,
    pub z_offset: u32,
    pub z_len: u32,
    /// `(i, j, k, coeff)`: `z[k] += coeff · x[i] · y[j]` (times the weight).
    pub terms: Vec<(u32, u32, u32, f64)>,
}

/// The paths reading one `x` block (multiplicity `mul`, rows `dx` wide): one launch.
#[derive(Clone, Debug, PartialEq)]
pub struct RcbGroup {
    pub x_offset: u32,
    pub mul: u32,
    pub dx: u32,
    /// n tiles (8 channels each) per slice: bounds the per-lane `g_x` partials
    /// (`2·nt·dx` floats) and `w` fragments (`4·nt`).
    pub nt: u32,
    pub paths: Vec<RcbPath>,
}

impl RcbGroup {
    /// Weight columns of the group (its paths' `mul` each).
    pub fn cols(&self) -> u32 {
        self.mul * self.paths.len() as u32
    }
}

/// A convolution whose backward can run fused with its radial network's last product.
#[derive(Clone, Debug, PartialEq)]
pub struct RcbShape {
    /// Rows of `W` (`a`, the last hidden width) and its columns (`b`, the weight count).
    pub hidden: u32,
    pub numel: u32,
    pub dim_x: u32,
    pub dim_y: u32,
    pub dim_z: u32,
    pub groups: Vec<RcbGroup>,
}

impl RcbShape {
    /// The fused backward's shape for convolution `tp` after a last product of `hidden`
    /// inputs, or why it has none.
    pub fn of(tp: &TensorProduct, hidden: usize) -> Result<RcbShape, String> {
        if hidden == 0 || !hidden.is_multiple_of(8) || hidden > RCB_MAX_HIDDEN {
            return Err(format!(
                "hidden width {hidden} (a multiple of 8 up to {RCB_MAX_HIDDEN})"
            ));
        }
        let plan = lower_conv(
            tp,
            Direction::Backward,
            Dtype::F32,
            &Capabilities::cuda_sm90(),
            ConvOptions::default(),
        )
        .map_err(|e| format!("the convolution backward's plan: {e}"))?;
        let c: &ChannelWork = match plan.kernels.as_slice() {
            [k] => match &k.work {
                Work::Channels(c) if c.pass == ChannelPass::Backward => c,
                _ => return Err("the convolution backward is not one channel kernel".into()),
            },
            _ => return Err("the convolution backward is not one kernel".into()),
        };
        let mut groups: Vec<(u32, RcbGroup)> = vec![];
        for p in &c.paths {
            let Some(w_offset) = p.w_offset else {
                return Err(format!("path {}: unweighted", p.path));
            };
            if p.y_mul != 1 {
                return Err(format!(
                    "path {}: y multiplicity {} (1 only)",
                    p.path, p.y_mul
                ));
            }
            let xb = c
                .x_blocks
                .get(p.x_block as usize)
                .ok_or_else(|| format!("path {}: no x block {}", p.path, p.x_block))?;
            let mul = c.block_mul(xb);
            let path = RcbPath {
                w_offset,
                y_offset: p.y_offset,
                y_len: p.y_len,
                z_offset: p.z_offset,
                z_len: p.z_len,
                terms: p.terms.iter().map(|t| (t.i, t.j, t.k, t.coeff)).collect(),
            };
            match groups.iter_mut().find(|(b, _)| *b == p.x_block) {
                Some((_, g)) => g.paths.push(path),
                None => groups.push((
                    p.x_block,
                    RcbGroup {
                        x_offset: xb.offset,
                        mul,
                        dx: p.x_len,
                        nt: 0,
                        paths: vec![path],
                    },
                )),
            }
        }
        let mut out = vec![];
        for (_, mut g) in groups {
            if g.mul % 8 != 0 {
                return Err(format!(
                    "x block at {}: multiplicity {} (multiples of 8)",
                    g.x_offset, g.mul
                ));
            }
            if (g.mul * g.dx) as usize > RCB_ROW_FLOATS {
                return Err(format!(
                    "x block at {}: {} × {} floats per row",
                    g.x_offset, g.mul, g.dx
                ));
            }
            if g.cols() as usize > RCB_MAX_COLS {
                return Err(format!(
                    "x block at {}: {} weight columns (at most {RCB_MAX_COLS})",
                    g.x_offset,
                    g.cols()
                ));
            }
            // the widest slice (≤ 4 n tiles) whose g_x partials stay within 16 registers
            g.nt = [4u32, 2, 1]
                .into_iter()
                .find(|&nt| (g.mul / 8) % nt == 0 && 2 * nt * g.dx <= 16)
                .unwrap_or(1);
            out.push(g);
        }
        // every x block has paths (the launches write each g_x row once)
        if out.len() != c.x_blocks.len()
            || out.iter().map(|g| (g.mul * g.dx) as usize).sum::<usize>() != tp.dim_in1
        {
            return Err("an x block without paths".into());
        }
        let dims = [tp.dim_in1, tp.dim_in2, tp.dim_out, tp.weight_numel];
        if dims.iter().any(|&d| d == 0 || d > i32::MAX as usize) {
            return Err(format!("dimensions {dims:?}"));
        }
        Ok(RcbShape {
            hidden: hidden as u32,
            numel: tp.weight_numel as u32,
            dim_x: tp.dim_in1 as u32,
            dim_y: tp.dim_in2 as u32,
            dim_z: tp.dim_out as u32,
            groups: out,
        })
    }
}

/// The fused backward's variants for a model: one per (distinct layer shape, group);
/// variant ids number them in this order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RadialConvKernels {
    pub shapes: Vec<RcbShape>,
}

impl RadialConvKernels {
    pub fn none() -> Self {
        Self::default()
    }

    /// The distinct shapes of `model`'s layers that qualify (see [`RcbShape::of`]).
    pub fn of<T: Scalar>(model: &SevenNet<T>) -> Self {
        let mut shapes: Vec<RcbShape> = vec![];
        for l in &model.layers {
            if let Some(s) = Self::layer_shape(l) {
                if !shapes.contains(&s) {
                    shapes.push(s);
                }
            }
        }
        RadialConvKernels { shapes }
    }

    fn layer_shape<T: Scalar>(l: &crate::sevennet::Interaction<T>) -> Option<RcbShape> {
        let (a, b, _) = l.weight_nn.layers.last()?;
        if *b != l.product.weight_numel {
            return None;
        }
        RcbShape::of(&l.product, *a).ok()
    }

    /// The variant ids of layer `l`'s groups, in launch order; `None` where it has none.
    pub fn variants<T: Scalar>(&self, l: &crate::sevennet::Interaction<T>) -> Option<Vec<i32>> {
        let s = Self::layer_shape(l)?;
        let mut base = 0usize;
        for sh in &self.shapes {
            if *sh == s {
                return Some((0..sh.groups.len()).map(|g| (base + g) as i32).collect());
            }
            base += sh.groups.len();
        }
        None
    }

    /// The group of variant `v`.
    pub fn group(&self, v: usize) -> Option<(&RcbShape, &RcbGroup)> {
        self.shapes
            .iter()
            .flat_map(|s| s.groups.iter().map(move |g| (s, g)))
            .nth(v)
    }

    /// CUDA text (after `kernels.cu`): one device function per variant and the kernel
    /// dispatching on `variant` (empty without tensor cores or in f64).
    pub fn source(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "#define EK_RCB_SMEM_FLOATS {}", RCB_SMEM_BYTES / 4);
        s.push_str(RCB_HEAD);
        let mut v = 0usize;
        for sh in &self.shapes {
            for g in &sh.groups {
                print_variant(&mut s, v, sh, g);
                v += 1;
            }
        }
        let _ = writeln!(
            s,
            "#endif\n\nextern \"C\" __global__ void __launch_bounds__(EK_BLOCK, 2)\n\
             ek_conv_radial_bwd(int variant, u64 nodes, u64 edges, const unsigned* __restrict__ csr,\n\
             \x20   const real* __restrict__ x, const real* __restrict__ y, const real* __restrict__ h,\n\
             \x20   const real* __restrict__ w2, const real* __restrict__ gz, real alpha, int first,\n\
             \x20   real* __restrict__ gx, real* __restrict__ gy, real* __restrict__ gh) {{\n\
             #if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)\n\
             \x20 EK_DYN_SHARED(float, ek_rcb_smem, EK_RCB_SMEM_FLOATS);\n\
             \x20 switch (variant) {{"
        );
        for i in 0..v {
            let _ = writeln!(
                s,
                "    case {i}: ek_rcb_v{i}(nodes, edges, csr, x, y, h, w2, gz, alpha, first, gx, gy, gh, ek_rcb_smem); break;"
            );
        }
        s.push_str("    default: break;\n  }\n#endif\n}\n");
        s
    }
}

/// Helpers of every variant.
const RCB_HEAD: &str = r#"
// ---------------------------------------------------------------------------------------
// ek_conv_radial_bwd (generated by cuda_model::radial_conv): the convolution backward with
// the radial network's last product fused in. See radial_conv.rs for the method.
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
// d += a·b in 3xTF32 (b split here: the W columns stay f32 in shared memory), the three
// products into a fresh partial added in FP32: the tensor cores' chained sums truncate, and
// g_h chains every path of the group (H100, session 15: chained, the step's triclinic stress
// came out 3.9e-6 from sevenn float64 against 1.8e-6 unfused)
__device__ __forceinline__ void ek_rcb_mma3(float d[4], const unsigned ah[4], const unsigned al[4],
                                            float b0, float b1) {
  unsigned bh[2], bl[2];
  ek_tc_split(b0, &bh[0], &bl[0]);
  ek_tc_split(b1, &bh[1], &bl[1]);
  float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  ek_mma_m16n8k8_tf32(p, al, bh);
  ek_mma_m16n8k8_tf32(p, ah, bl);
  ek_mma_m16n8k8_tf32(p, ah, bh);
  d[0] += p[0];
  d[1] += p[1];
  d[2] += p[2];
  d[3] += p[3];
}
__device__ __forceinline__ float ek_rcb_xor(float v, int o) {
  return __shfl_xor_sync(0xffffffffu, v, o);
}
"#;

fn lit(c: f64) -> String {
    let f = c as f32;
    if f == f.trunc() && f.abs() < 1e6 {
        format!("{f:.1}f")
    } else {
        format!("{f:e}f")
    }
}

/// Prints variant `v`: the group's launch over every sender node.
fn print_variant(s: &mut String, v: usize, sh: &RcbShape, g: &RcbGroup) {
    let a = sh.hidden;
    let cols = g.cols();
    let ld = cols + 8; // ≡ 8 (mod 32) for the loads' banks when cols ≡ 0 (mod 32); any even works
    let (m, dx, nt) = (g.mul, g.dx, g.nt);
    let slices = m / (8 * nt);
    let (dy, dxr, dz, b) = (sh.dim_y, sh.dim_x, sh.dim_z, sh.numel);
    let _ = writeln!(
        s,
        "// variant {v}: x block at {} ({m} × {dx}), {} paths, {cols} weight columns, slices of {} channels",
        g.x_offset,
        g.paths.len(),
        8 * nt
    );
    let _ = writeln!(
        s,
        "__device__ __forceinline__ void ek_rcb_v{v}(u64 nodes, u64 edges, const unsigned* __restrict__ csr,\n\
         \x20   const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ h,\n\
         \x20   const float* __restrict__ w2, const float* __restrict__ gz, float alpha, int first,\n\
         \x20   float* __restrict__ gx, float* __restrict__ gy, float* __restrict__ gh, float* sm) {{"
    );
    // stage W's group columns: path q's m columns at q·m
    let _ = writeln!(s, "  float* W = sm;");
    let _ = writeln!(
        s,
        "  float* xs = sm + {} + (threadIdx.x >> 5) * {};",
        a * ld,
        2 * RCB_ROW_FLOATS
    );
    let _ = writeln!(s, "  float* gxs = xs + {RCB_ROW_FLOATS};");
    let mut off = String::new();
    for (q, p) in g.paths.iter().enumerate() {
        if q + 1 == g.paths.len() {
            let _ = write!(off, "{}", p.w_offset);
        } else {
            let _ = write!(off, "q == {q} ? {} : ", p.w_offset);
        }
    }
    let _ = writeln!(
        s,
        "  for (int i = threadIdx.x; i < {}; i += blockDim.x) {{\n\
         \x20   const int k = i / {cols}, c = i - k * {cols}, q = c / {m};\n\
         \x20   W[k * {ld} + c] = w2[(u64)k * {b}u + (u64)({off}) + (u64)(c - q * {m})];\n\
         \x20 }}\n\
         \x20 __syncthreads();",
        a * cols
    );
    let _ = writeln!(
        s,
        "  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;\n\
         \x20 const unsigned* ids = csr + nodes + 1;\n\
         \x20 const unsigned* oth = ids + edges;\n\
         \x20 const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);\n\
         \x20 for (u64 node = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); node < nodes; node += warps) {{\n\
         \x20   const unsigned lo = csr[node], hi = csr[node + 1];\n\
         \x20   for (int i = lane; i < {xw}; i += 32) {{\n\
         \x20     xs[i] = x[node * {dxr}u + {xo}u + i];\n\
         \x20     gxs[i] = 0.0f;\n\
         \x20   }}\n\
         \x20   __syncwarp();\n\
         \x20   for (unsigned c0 = lo; c0 < hi; c0 += 16) {{\n\
         \x20     const unsigned ra = c0 + g, rb = ra + 8;\n\
         \x20     const bool va = ra < hi, vb = rb < hi;\n\
         \x20     const u64 ea = va ? ids[ra] : 0u, eb = vb ? ids[rb] : 0u;\n\
         \x20     const u64 qa = va ? oth[ra] : 0u, qb = vb ? oth[rb] : 0u;\n\
         \x20     const float* ha = h + ea * {a}u;\n\
         \x20     const float* hb = h + eb * {a}u;\n\
         \x20     const float* ya = y + ea * {dy}u;\n\
         \x20     const float* yb = y + eb * {dy}u;\n\
         \x20     const float* za = gz + qa * {dz}u;\n\
         \x20     const float* zb = gz + qb * {dz}u;\n\
         \x20     float ghc[{nta}][4];\n\
         \x20     EK_UNROLL\n\
         \x20     for (int n2 = 0; n2 < {nta}; ++n2) ghc[n2][0] = ghc[n2][1] = ghc[n2][2] = ghc[n2][3] = 0.0f;\n\
         \x20     float gya[{dy}], gyb[{dy}];\n\
         \x20     EK_UNROLL\n\
         \x20     for (int j = 0; j < {dy}; ++j) gya[j] = gyb[j] = 0.0f;\n\
         \x20     EK_NO_UNROLL\n\
         \x20     for (int s = 0; s < {slices}; ++s) {{\n\
         \x20       float gxp[{nt}][2][{dx}];\n\
         \x20       EK_UNROLL\n\
         \x20       for (int n = 0; n < {nt}; ++n)\n\
         \x20         EK_UNROLL\n\
         \x20         for (int q = 0; q < 2; ++q)\n\
         \x20           EK_UNROLL\n\
         \x20           for (int i = 0; i < {dx}; ++i) gxp[n][q][i] = 0.0f;",
        xw = m * dx,
        xo = g.x_offset,
        nta = a / 8,
    );
    for (pi, p) in g.paths.iter().enumerate() {
        print_path(s, pi as u32, p, g, a, ld);
    }
    // g_x partials: summed over the row lanes (xor over g), added by the lanes of g = 0
    let _ = writeln!(
        s,
        "        EK_UNROLL\n\
         \x20       for (int n = 0; n < {nt}; ++n)\n\
         \x20         EK_UNROLL\n\
         \x20         for (int q = 0; q < 2; ++q)\n\
         \x20           EK_UNROLL\n\
         \x20           for (int i = 0; i < {dx}; ++i) {{\n\
         \x20             float v = gxp[n][q][i];\n\
         \x20             v += ek_rcb_xor(v, 4);\n\
         \x20             v += ek_rcb_xor(v, 8);\n\
         \x20             v += ek_rcb_xor(v, 16);\n\
         \x20             if (g == 0) gxs[(s * {w} + 8 * n + 2 * t + q) * {dx} + i] += v;\n\
         \x20           }}\n\
         \x20     }}",
        w = 8 * nt
    );
    // g_y rows (summed over the four channel lanes of a row) and g_h rows
    let _ = writeln!(
        s,
        "      EK_UNROLL\n\
         \x20     for (int j = 0; j < {dy}; ++j) {{\n\
         \x20       float va_ = gya[j], vb_ = gyb[j];\n\
         \x20       va_ += ek_rcb_xor(va_, 1);\n\
         \x20       va_ += ek_rcb_xor(va_, 2);\n\
         \x20       vb_ += ek_rcb_xor(vb_, 1);\n\
         \x20       vb_ += ek_rcb_xor(vb_, 2);\n\
         \x20       if (t == 0) {{\n\
         \x20         if (va) {{ float* d = gy + ea * {dy}u + j; *d = first ? va_ : *d + va_; }}\n\
         \x20         if (vb) {{ float* d = gy + eb * {dy}u + j; *d = first ? vb_ : *d + vb_; }}\n\
         \x20       }}\n\
         \x20     }}\n\
         \x20     EK_UNROLL\n\
         \x20     for (int n2 = 0; n2 < {nta}; ++n2) {{\n\
         \x20       if (va) {{\n\
         \x20         float* d = gh + ea * {a}u + 8 * n2 + 2 * t;\n\
         \x20         d[0] = first ? alpha * ghc[n2][0] : d[0] + alpha * ghc[n2][0];\n\
         \x20         d[1] = first ? alpha * ghc[n2][1] : d[1] + alpha * ghc[n2][1];\n\
         \x20       }}\n\
         \x20       if (vb) {{\n\
         \x20         float* d = gh + eb * {a}u + 8 * n2 + 2 * t;\n\
         \x20         d[0] = first ? alpha * ghc[n2][2] : d[0] + alpha * ghc[n2][2];\n\
         \x20         d[1] = first ? alpha * ghc[n2][3] : d[1] + alpha * ghc[n2][3];\n\
         \x20       }}\n\
         \x20     }}\n\
         \x20   }}\n\
         \x20   __syncwarp();\n\
         \x20   for (int i = lane; i < {xw}; i += 32) gx[node * {dxr}u + {xo}u + i] = gxs[i];\n\
         \x20   __syncwarp();\n\
         \x20 }}\n\
         }}\n",
        nta = a / 8,
        xw = m * dx,
        xo = g.x_offset,
    );
}

/// One path inside the slice loop: `w` fragments, the terms in place (→ `g_w`), `g_h`.
fn print_path(s: &mut String, pi: u32, p: &RcbPath, g: &RcbGroup, a: u32, ld: u32) {
    let (m, dx, nt) = (g.mul, g.dx, g.nt);
    let col0 = pi * m; // the path's first column in W
    let _ = writeln!(
        s,
        "        {{ // path at w {}: y {}+{}, g_z {}+{}·u, {} terms\n\
         \x20         float acc[{nt}][4];\n\
         \x20         EK_UNROLL\n\
         \x20         for (int n = 0; n < {nt}; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;\n\
         \x20         EK_NO_UNROLL\n\
         \x20         for (int ks = 0; ks < {ksn}; ++ks) {{\n\
         \x20           unsigned ah[4], al[4];\n\
         \x20           ek_tc_split(va ? ha[8 * ks + t] : 0.0f, &ah[0], &al[0]);\n\
         \x20           ek_tc_split(vb ? hb[8 * ks + t] : 0.0f, &ah[1], &al[1]);\n\
         \x20           ek_tc_split(va ? ha[8 * ks + t + 4] : 0.0f, &ah[2], &al[2]);\n\
         \x20           ek_tc_split(vb ? hb[8 * ks + t + 4] : 0.0f, &ah[3], &al[3]);\n\
         \x20           const float* Wk = W + (8 * ks + t) * {ld} + {col0} + s * {w} + g;\n\
         \x20           EK_UNROLL\n\
         \x20           for (int n = 0; n < {nt}; ++n) ek_rcb_mma3(acc[n], ah, al, Wk[8 * n], Wk[4 * {ld} + 8 * n]);\n\
         \x20         }}",
        p.w_offset,
        p.y_offset,
        p.y_len,
        p.z_offset,
        p.z_len,
        p.terms.len(),
        ksn = a / 8,
        w = 8 * nt,
    );
    // the terms, per row (a: fragment values 0, 1; b: 2, 3) and channel
    let _ = writeln!(
        s,
        "          EK_UNROLL\n\
         \x20         for (int n = 0; n < {nt}; ++n)\n\
         \x20           EK_UNROLL\n\
         \x20           for (int q = 0; q < 2; ++q) {{\n\
         \x20             const int u = s * {w} + 8 * n + 2 * t + q;\n\
         \x20             const float* xu = xs + u * {dx};",
        w = 8 * nt
    );
    let used_i: Vec<u32> = (0..dx)
        .filter(|i| p.terms.iter().any(|t| t.0 == *i))
        .collect();
    for i in &used_i {
        let _ = writeln!(s, "              const float x{i} = xu[{i}];");
    }
    for (row, valid, fi, ys, zs, gys) in [
        ("a", "va", "q", "ya", "za", "gya"),
        ("b", "vb", "2 + q", "yb", "zb", "gyb"),
    ] {
        let _ = writeln!(
            s,
            "              if ({valid}) {{ // row {row}\n\
             \x20               const float wv = alpha * acc[n][{fi}];\n\
             \x20               const float* zr = {zs} + {} + u * {};",
            p.z_offset, p.z_len
        );
        let used_j: Vec<u32> = (0..p.y_len)
            .filter(|j| p.terms.iter().any(|t| t.1 == *j))
            .collect();
        let used_k: Vec<u32> = (0..p.z_len)
            .filter(|k| p.terms.iter().any(|t| t.2 == *k))
            .collect();
        for j in &used_j {
            let _ = writeln!(
                s,
                "                const float y{j} = {ys}[{}];",
                p.y_offset + j
            );
        }
        for k in &used_k {
            let _ = writeln!(s, "                const float z{k} = zr[{k}];");
        }
        let _ = writeln!(s, "                float gw_ = 0.0f;");
        for i in &used_i {
            let _ = writeln!(s, "                float gx{i} = 0.0f;");
        }
        for j in &used_j {
            let _ = writeln!(s, "                float gy{j} = 0.0f;");
        }
        for &(i, j, k, c) in &p.terms {
            let _ = writeln!(
                s,
                "                {{ const float tt = {} * z{k}; gw_ += tt * x{i} * y{j}; gx{i} += tt * y{j}; gy{j} += tt * x{i}; }}",
                lit(c)
            );
        }
        for i in &used_i {
            let _ = writeln!(s, "                gxp[n][q][{i}] += wv * gx{i};");
        }
        for j in &used_j {
            let _ = writeln!(
                s,
                "                {gys}[{}] += wv * gy{j};",
                p.y_offset + j
            );
        }
        let _ = writeln!(s, "                acc[n][{fi}] = gw_;\n              }}");
    }
    // g_h += g_w · Wᵀ over the slice's columns (fragment columns 2t, 2t+1 as A's t, t+4)
    let _ = writeln!(
        s,
        "            }}\n\
         \x20         EK_UNROLL\n\
         \x20         for (int k2 = 0; k2 < {nt}; ++k2) {{\n\
         \x20           unsigned ah[4], al[4];\n\
         \x20           ek_tc_split(acc[k2][0], &ah[0], &al[0]);\n\
         \x20           ek_tc_split(acc[k2][2], &ah[1], &al[1]);\n\
         \x20           ek_tc_split(acc[k2][1], &ah[2], &al[2]);\n\
         \x20           ek_tc_split(acc[k2][3], &ah[3], &al[3]);\n\
         \x20           const float* Wc = W + g * {ld} + {col0} + s * {w} + 8 * k2 + 2 * t;\n\
         \x20           EK_UNROLL\n\
         \x20           for (int n2 = 0; n2 < {nta}; ++n2) {{\n\
         \x20             const float2 bb = *(const float2*)(Wc + 8 * n2 * {ld});\n\
         \x20             ek_rcb_mma3(ghc[n2], ah, al, bb.x, bb.y);\n\
         \x20           }}\n\
         \x20         }}\n\
         \x20       }}",
        w = 8 * nt,
        nta = a / 8,
    );
}
